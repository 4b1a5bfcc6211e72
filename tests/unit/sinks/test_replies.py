"""Reply classification: a test per class, quoted text ignored, rules configurable."""

from __future__ import annotations

from email import message_from_string

import pytest

from pipeline.sinks.replies import ReplyClass, ReplyRules, classify_message, classify_reply, new_text

QUOTED = "\n\nOn Tue, 3 Dec 2026 at 10:00, Acme <hello@acme.example> wrote:\n> Interested in a demo? Reply to unsubscribe.\n"


@pytest.mark.parametrize("headers, subject, body, kind", [
    ({"Auto-Submitted": "auto-replied"}, "Re: your visit", "Thanks, I will get back to you.", ReplyClass.automatic),
    ({"Auto-Submitted": "no"}, "Re: your visit", "Let's talk next week.", ReplyClass.positive),
    ({"X-Autoreply": "yes"}, "Re: hi", "hello", ReplyClass.automatic),
    ({"Precedence": "auto_reply"}, "Re: hi", "hello", ReplyClass.automatic),
    ({}, "Out of Office: Re: your visit", "I am away until Monday.", ReplyClass.automatic),
    ({}, "Automatic reply: hello", "", ReplyClass.automatic),
    ({}, "Re: hi", "I'm out of the office until 12 Jan with limited access to email.", ReplyClass.automatic),
    ({}, "Re: hi", "Please remove me from your list.", ReplyClass.unsubscribe),
    ({}, "unsubscribe", "", ReplyClass.unsubscribe),
    ({}, "Re: hi", "Not interested, thanks.", ReplyClass.negative),
    ({}, "Re: hi", "We already use another vendor for this.", ReplyClass.negative),
    ({}, "Re: hi", "Sounds interesting, can we talk Thursday?", ReplyClass.positive),
    ({}, "Re: hi", "Please send me the pricing for 200 seats.", ReplyClass.positive),
    ({}, "Re: hi", "Who gave you my address?", ReplyClass.other),
])
def test_each_class(headers: dict[str, str], subject: str, body: str, kind: ReplyClass) -> None:
    assert classify_reply(headers, subject, body).kind is kind


def test_our_own_quoted_email_never_decides_the_class() -> None:
    assert new_text("Who is this?" + QUOTED) == "Who is this?"
    assert classify_reply({}, "Re: hi", "Who is this?" + QUOTED).kind is ReplyClass.other
    assert classify_reply({}, "Re: hi", "> Interested in a demo?\nno thanks").kind is ReplyClass.negative


def test_unsubscribe_wins_over_positive_words_and_negative_over_positive() -> None:
    assert classify_reply({}, "Re", "Interesting, but please unsubscribe me.").kind is ReplyClass.unsubscribe
    assert classify_reply({}, "Re", "Not interested.").kind is ReplyClass.negative


def test_rules_are_configurable() -> None:
    rules = ReplyRules(positive=(r"\bja\b", r"\bgerne\b"), negative=(r"\bkein interesse\b",))
    assert classify_reply({}, "AW: Hallo", "Ja, gerne!", rules).kind is ReplyClass.positive
    assert classify_reply({}, "AW: Hallo", "Kein Interesse.", rules).kind is ReplyClass.negative
    assert classify_reply({}, "AW: Hallo", "Ja, gerne!", ReplyRules(positive=())).kind is ReplyClass.other


def test_a_parsed_multipart_message() -> None:
    raw = ("From: dana@brightpath.example\nTo: reply+abc@reply.acme.example\nSubject: Re: Brightpath and Acme\n"
           "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n\n--b\n"
           "Content-Type: text/plain; charset=utf-8\n\nYes, let's set up a call." + QUOTED +
           "\n--b\nContent-Type: text/html\n\n<p>Yes</p>\n--b--\n")
    result = classify_message(message_from_string(raw))
    assert result.kind is ReplyClass.positive and "set up a call" in result.reason
