"""Email nurture rules without SMTP or Redis: eligibility, tokens, rendering, headers, DKIM, the hand-off."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import dkim
import pytest

from pipeline.codec import schemas_dir
from pipeline.settings import EmailBasis, EmailConsent, NurtureSinkSettings, NurtureStep
from pipeline.sinks.email import (Addresses, as_bytes, build_message, dkim_sign, hand_off, make_token,
                                  new_message_id, nurture_refusal, read_address, read_token, recipients,
                                  render_step, sequence_id, template_context, token_address)

DATA = Path(__file__).parent / "data"
KEY = (DATA / "dkim-test.pem").read_bytes()
PUBLIC = (DATA / "dkim-test.pub.b64").read_text().strip()
SECRET = "test-token-secret-0123456789"
LEAD: dict[str, Any] = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())
LEAD = {**LEAD, "identity_level": "person",
        "person": {"person_id": "p-1", "confidence": 0.9, "seniority": "c_level", "department": "finance",
                   "evidence": []}}
PROFILE = {"email": "dana@brightpath-analytics.example", "name": "Dana Smith", "title": "CFO",
           "email_consent": "granted"}


def sink(**changes: Any) -> NurtureSinkSettings:
    data: dict[str, Any] = {
        "name": "nurture", "from_address": "Sam at Acme <sam@acme.example>", "reply_domain": "reply.acme.example",
        "owner_address": "sales@acme.example",
        "steps": [{"subject": "{{ company.name }} and {{ lead.tier }}", "text": "Hi {{ person.first_name }},\n"
                   "saw {{ company.name }} looking at pricing.", "html": "<p>Hi {{ person.first_name }}</p>"},
                  {"delay": "2d", "subject": "Following up", "text": "Still there?"}],
        "dkim": {"selector": "ls1", "private_key": KEY.decode()}}
    data.update(changes)
    return NurtureSinkSettings.model_validate(data)


# -- who gets a sequence ---------------------------------------------------------------------------
OPT_IN, LI = EmailConsent(), EmailConsent(basis=EmailBasis.legitimate_interest, opt_in_countries=["DE"])


@pytest.mark.parametrize("lead, profile, consent, suppressed, refusal", [
    (LEAD, PROFILE, OPT_IN, False, None),
    ({**LEAD, "person": None}, PROFILE, OPT_IN, False, "no_person"),
    (LEAD, {**PROFILE, "email": ""}, OPT_IN, False, "no_email"),
    (LEAD, {**PROFILE, "email": "not-an-address"}, OPT_IN, False, "no_email"),
    (LEAD, PROFILE, OPT_IN, True, "suppressed"),
    (LEAD, {**PROFILE, "email_consent": "denied"}, LI, False, "consent_denied"),
    (LEAD, {**PROFILE, "email_consent": ""}, OPT_IN, False, "no_opt_in"),
    (LEAD, {**PROFILE, "email_consent": ""}, LI, False, None),
    ({**LEAD, "company": {**LEAD["company"], "country": "DE"}}, {**PROFILE, "email_consent": ""}, LI, False,
     "no_opt_in"),
    ({**LEAD, "company": {**LEAD["company"], "country": "DE"}}, PROFILE, LI, False, None),
])
def test_who_gets_a_sequence(lead: Any, profile: Any, consent: EmailConsent, suppressed: bool,
                             refusal: str | None) -> None:
    assert nurture_refusal(lead, profile, consent, suppressed) == refusal


# -- tokens ----------------------------------------------------------------------------------------
def test_tokens_name_their_sequence_and_refuse_tampering_and_other_purposes() -> None:
    seq = sequence_id("acme", "nurture", "p-1")
    assert seq == sequence_id("acme", "nurture", "p-1") != sequence_id("acme", "nurture", "p-2")
    token = make_token(SECRET, "unsubscribe", seq)
    assert read_token(SECRET, "unsubscribe", token) == seq
    assert read_token(SECRET, "unsubscribe", token.upper()) == seq       # a mail system changed the case
    assert read_token(SECRET, "reply", token) is None                    # another purpose
    assert read_token("other-secret-0123456789", "unsubscribe", token) is None
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert read_token(SECRET, "unsubscribe", tampered) is None
    assert read_token(SECRET, "unsubscribe", "../../etc") is None
    reply = token_address(SECRET, "reply", seq, "reply.acme.example")
    assert len(reply.split("@")[0]) <= 64
    assert read_address(SECRET, f"Dana <{reply}>") == ("reply", seq)
    assert read_address(SECRET, "dana@brightpath-analytics.example") is None


# -- the message -----------------------------------------------------------------------------------
def _message(config: NurtureSinkSettings, step: int = 0, thread: tuple[str, ...] = ()) -> tuple[bytes, Addresses]:
    seq = sequence_id("acme", config.name, "p-1")
    addresses = Addresses.of(SECRET, seq, config.reply_domain, "https://leads.acme.example")
    rendered = render_step(config.steps[step], template_context(LEAD, PROFILE, addresses.unsubscribe_url, step + 1))
    msg = build_message(config, rendered, PROFILE["email"], PROFILE["name"], addresses,
                        new_message_id(seq, step, config.from_domain), thread)
    raw = as_bytes(msg)
    assert config.dkim is not None
    return dkim_sign(raw, config.dkim.selector, config.dkim_domain, config.dkim.key_bytes()), addresses


def _dns(name: bytes, timeout: int = 5) -> bytes:
    assert name == b"ls1._domainkey.acme.example."
    return f"v=DKIM1; k=rsa; p={PUBLIC}".encode()


def test_a_step_renders_the_lead_and_carries_the_unsubscribe_headers_and_link() -> None:
    raw, addresses = _message(sink())
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Brightpath Analytics Inc. and A2"
    assert msg["From"] == "Sam at Acme <sam@acme.example>"
    assert msg["To"] == "Dana Smith <dana@brightpath-analytics.example>"
    assert msg["Reply-To"] == addresses.reply_to and addresses.reply_to.startswith("reply+")
    assert msg["List-Unsubscribe"] == (f"<mailto:{addresses.unsubscribe_mailto}?subject=unsubscribe>, "
                                       f"<{addresses.unsubscribe_url}>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"List-Unsubscribe: <mailto:{addresses.unsubscribe_mailto}?".encode() in raw   # as is, not RFC 2047
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content()
    assert text.startswith("Hi Dana,\nsaw Brightpath Analytics Inc. looking at pricing.")
    assert f"Unsubscribe: {addresses.unsubscribe_url}" in text
    assert f'href="{addresses.unsubscribe_url}"' in html and "<p>Hi Dana</p>" in html
    assert msg["Message-ID"].endswith("@acme.example>")


def test_a_steps_message_id_is_the_same_on_every_attempt_and_differs_per_step() -> None:
    """A step sent again after a crash is the same message to receivers that de-duplicate by Message-ID."""
    seq = sequence_id("acme", "nurture", "p-1")
    first, again = _message(sink(), 0)[0], _message(sink(), 0)[0]
    ids = [email.message_from_bytes(raw)["Message-ID"] for raw in (first, again, _message(sink(), 1)[0])]
    assert ids[0] == ids[1] == new_message_id(seq, 0, "acme.example") and ids[2] != ids[0]
    assert ids[0].startswith("<") and ids[0].endswith("@acme.example>") and " " not in ids[0]


def test_dkim_signature_verifies_and_covers_the_unsubscribe_headers() -> None:
    raw, _ = _message(sink())
    assert dkim.verify(raw, dnsfunc=_dns)
    signature = email.message_from_bytes(raw)["DKIM-Signature"]
    signed = "".join(signature.split()).split("h=")[1].split(";")[0].lower().split(":")
    assert {"from", "list-unsubscribe", "list-unsubscribe-post", "reply-to", "subject"} <= set(signed)
    assert not dkim.verify(raw.replace(b"Following", b"x").replace(b"pricing", b"prices"), dnsfunc=_dns)


def test_a_later_step_is_threaded_on_the_earlier_ones() -> None:
    raw, _ = _message(sink(), step=1, thread=("<a@acme.example>", "<b@acme.example>"))
    msg = email.message_from_bytes(raw)
    assert msg["In-Reply-To"] == "<b@acme.example>" and msg["References"] == "<a@acme.example> <b@acme.example>"
    assert msg.get_content_type() == "text/plain"  # no html template: text only


def test_html_is_escaped_and_subjects_stay_on_one_line() -> None:
    config = sink(steps=[{"subject": "Hi\n{{ person.name }}", "text": "x", "html": "<b>{{ person.name }}</b>"}])
    ctx = template_context(LEAD, {**PROFILE, "name": "<script>Dana</script>"}, "https://u", 1)
    rendered = render_step(config.steps[0], ctx)
    assert "\n" not in rendered.subject and "<script>" not in (rendered.html or "")
    assert "&lt;script&gt;" in (rendered.html or "")


# -- the hand-off ----------------------------------------------------------------------------------
def test_the_hand_off_names_who_which_company_what_they_asked_and_why() -> None:
    reply = email.message_from_bytes(
        b"From: Dana Smith <dana@brightpath-analytics.example>\r\nSubject: Re: pricing\r\nDate: Sat, 5 Dec 2026 "
        b"10:00:00 +0000\r\n\r\nYes, can we book a call on Tuesday?\r\n\r\nOn Fri, Sam wrote:\r\n> Hi Dana\r\n")
    h = hand_off(LEAD, PROFILE, PROFILE["email"], [("Fri", "Brightpath", "Hi Dana, pricing?")], reply, "positive")
    assert h.who == "Dana Smith, CFO, dana@brightpath-analytics.example"
    assert h.company == "Brightpath Analytics Inc. (brightpath-analytics.example)"
    assert h.asked == "Yes, can we book a call on Tuesday?"
    assert h.reason == LEAD["summary"]
    assert "Hi Dana, pricing?" in h.thread and "book a call" in h.thread
    assert h.subject.startswith("Positive reply from Dana Smith")


def test_recipients_come_from_the_envelope_then_the_headers() -> None:
    msg = email.message_from_bytes(b"To: a@x.example\r\nCc: Bee <b@x.example>\r\n\r\nhi")
    assert recipients(msg, ["r@y.example"]) == ["r@y.example", "a@x.example", "b@x.example"]


# -- settings ---------------------------------------------------------------------------------------
def test_settings_parse_delays_and_refuse_bad_templates_and_misaligned_dkim() -> None:
    config = sink()
    assert [s.delay for s in config.steps] == [0.0, 172800.0]
    assert NurtureStep(delay="1.5s", subject="s", text="t").delay == 1.5
    with pytest.raises(ValueError, match="Jinja"):
        sink(steps=[{"subject": "{{ oops", "text": "t"}])
    with pytest.raises(ValueError, match="align"):
        sink(dkim={"selector": "s", "private_key": "x", "domain": "other.example"})
    with pytest.raises(ValueError, match="exactly one"):
        sink(dkim={"selector": "s"})
    assert "BEGIN" not in json.dumps(config.model_dump(mode="json"))  # the key is masked


def test_the_people_import_reads_email_consent_in_the_vocabulary_the_sink_uses() -> None:
    from pydantic import ValidationError

    from pipeline.ops.identity_import import PersonRow
    row = PersonRow.model_validate({"email": "dana@brightpath-analytics.example", "email_consent": "Opt-In"})
    assert row.to_identity().profile["email_consent"] == "granted"
    assert PersonRow.model_validate({"email": "a@b.example", "email_consent": "no"}).email_consent == "denied"
    assert PersonRow.model_validate({"email": "a@b.example", "email_consent": ""}).email_consent is None
    with pytest.raises(ValidationError, match="email_consent"):
        PersonRow.model_validate({"email": "a@b.example", "email_consent": "maybe"})


def _site_settings(tmp_path: Path, site: dict[str, Any], email: dict[str, Any] | None = None,
                   salt: bool = True) -> Any:
    import yaml

    from pipeline.settings import load_settings
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"sinks": {"email": email if email is not None else {"token_secret": "x" * 32}},
                                    "sites": [site], **({"identity_salt": "s" * 20} if salt else {})}))
    return load_settings(path)


EMAIL_SINK = {"type": "email", "name": "nurture", "from_address": "sam@acme.example", "reply_domain": "reply.acme.example",
              "owner_address": "sales@acme.example", "steps": [{"subject": "s", "text": "t"}],
              "smtp": {"password": "smtp-secret-value"}}


def test_the_from_address_must_be_on_the_sites_own_domain_and_a_token_secret_and_salt_are_required(tmp_path: Path) -> None:
    from pipeline.settings import SettingsError
    ok = _site_settings(tmp_path, {"site_id": "acme", "allowed_origins": ["https://www.acme.example"],
                                   "sinks": [EMAIL_SINK]})
    assert ok.sites[0].sinks[0].type == "email"
    assert "smtp-secret-value" not in json.dumps(ok.model_dump(mode="json"))
    assert _site_settings(tmp_path, {"site_id": "acme", "hosts": ["acme.example"],
                                     "sinks": [{**EMAIL_SINK, "type": "nurture",
                                                "from_address": "Sam <sam@mail.acme.example>"}]})
    with pytest.raises(SettingsError, match="not one of the site's own domains"):
        _site_settings(tmp_path, {"site_id": "acme", "hosts": ["www.acme.example"],
                                  "sinks": [{**EMAIL_SINK, "from_address": "sam@gmail.example"}]})
    with pytest.raises(SettingsError, match="token_secret"):
        _site_settings(tmp_path, {"site_id": "acme", "hosts": ["www.acme.example"], "sinks": [EMAIL_SINK]}, email={})
    with pytest.raises(SettingsError, match="identity_salt"):
        _site_settings(tmp_path, {"site_id": "acme", "hosts": ["www.acme.example"], "sinks": [EMAIL_SINK]},
                       salt=False)


def test_configured_reply_rules_replace_the_built_in_ones() -> None:
    from pipeline.settings import Settings
    from pipeline.sinks.nurture import NurtureSink
    from pipeline.sinks.replies import ReplyClass, classify_reply
    settings = Settings.model_validate({"identity_salt": "s" * 20, "sinks": {"email": {"token_secret": "x" * 32}},
                                        "sites": [{"site_id": "acme", "hosts": ["acme.example"], "sinks": [
                                            {**EMAIL_SINK, "reply_rules": {"positive": [r"\bja\b", "gerne"]}}]}]})
    site = settings.sites[0]
    config = site.sinks[0]
    assert isinstance(config, NurtureSinkSettings)
    sink_ = NurtureSink(site, config, settings, store=None)  # type: ignore[arg-type]
    assert classify_reply({}, "Re: x", "Ja, gerne!", sink_.reply_rules).kind is ReplyClass.positive
    assert classify_reply({}, "Re: x", "Let's book a demo", sink_.reply_rules).kind is ReplyClass.other
    assert classify_reply({}, "Re: x", "Not interested", sink_.reply_rules).kind is ReplyClass.negative


def test_the_slack_and_crm_hand_offs_carry_the_summary() -> None:
    from pipeline.sinks.nurture import handoff_blocks, note_body
    reply = email.message_from_bytes(b"From: dana@b.example\r\nSubject: Re: x\r\n\r\nSend pricing <now> please\r\n")
    h = hand_off(LEAD, PROFILE, PROFILE["email"], [], reply, "positive")
    blocks = handoff_blocks(h)
    assert blocks["text"] == h.subject and len(blocks["blocks"]) == 3
    assert "*What they asked:* Send pricing &lt;now&gt; please" in blocks["blocks"][1]["text"]["text"]
    body = note_body(h)
    assert "Send pricing &lt;now&gt; please" in body and "<script" not in body
