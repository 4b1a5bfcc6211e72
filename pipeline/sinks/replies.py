"""Classify a reply to a nurture email (pure; groundwork for the email sinks, not wired yet).

Classes, checked in this order (the first that matches wins):

1. ``automatic``: RFC 3834 ``Auto-Submitted`` other than ``no``, the usual auto-responder
   headers (``X-Autoreply``, ``X-Autorespond``, ``Precedence: auto_reply|bulk|junk``,
   ``X-Auto-Response-Suppress``) or an out-of-office subject;
2. ``unsubscribe``: the person asks to stop getting email;
3. ``negative``: not interested, no need, bad timing;
4. ``positive``: wants to talk, a demo, pricing, a call;
5. ``other``: none of the above (a human should read it).

Only the new text of the reply is read: quoted lines (``>``) and everything from an
``On ... wrote:`` or ``-----Original Message-----`` line down are dropped first, so our
own email quoted back never decides the class. The patterns are configurable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from enum import Enum
from typing import Mapping


class ReplyClass(str, Enum):
    automatic = "automatic"
    unsubscribe = "unsubscribe"
    negative = "negative"
    positive = "positive"
    other = "other"


DEFAULT_OUT_OF_OFFICE = (
    r"\bout of (the )?office\b", r"\bautomatic reply\b", r"\bauto(matic)?[- ]?(reply|response)\b",
    r"\bautoreply\b", r"\bon (annual |parental |sick )?leave\b", r"\bon vacation\b", r"\babwesenheitsnotiz\b",
    r"\bautomatische antwort\b", r"\br[ée]ponse automatique\b", r"\babsence\b",
)
DEFAULT_UNSUBSCRIBE = (
    r"\bunsubscribe\b", r"\bremove me\b", r"\btake me off\b", r"\bstop (emailing|e-mailing|contacting|sending)\b",
    r"\bdo not (email|contact)\b", r"\bdon'?t (email|contact) me\b", r"\bopt[- ]?out\b",
)
DEFAULT_NEGATIVE = (
    r"\bnot interested\b", r"\bno thanks?\b", r"\bno,? thank you\b", r"\bnot (a )?(good )?fit\b",
    r"\bnot (right )?now\b", r"\bwe (already )?(use|have) (a|an|another)\b", r"\bno need\b", r"\bno budget\b",
    r"\bnot looking\b", r"\bpass\b",
)
DEFAULT_POSITIVE = (
    r"\binterested\b", r"\blet'?s (talk|chat|meet|connect)\b", r"\b(book|schedule|set up) a (call|meeting|demo)\b",
    r"\bsend (me |us )?(the )?(pricing|a quote|more (info|information|details))\b", r"\bdemo\b",
    r"\bsounds (good|great|interesting)\b", r"\bhappy to (talk|chat|meet)\b", r"\bcall me\b",
    r"\bwhen are you (free|available)\b", r"\bcan we (talk|meet|chat)\b",
)
_AUTO_PRECEDENCE = {"auto_reply", "bulk", "junk", "list"}
_QUOTE_START = re.compile(r"^(on .+wrote:|-{2,}\s*original message\s*-{2,}|from: .+|am .+schrieb .+:|le .+a écrit\s*:)\s*$",
                          re.IGNORECASE)


@dataclass(frozen=True)
class ReplyRules:
    """The patterns (case-insensitive regular expressions) for each class."""
    out_of_office: tuple[str, ...] = DEFAULT_OUT_OF_OFFICE
    unsubscribe: tuple[str, ...] = DEFAULT_UNSUBSCRIBE
    negative: tuple[str, ...] = DEFAULT_NEGATIVE
    positive: tuple[str, ...] = DEFAULT_POSITIVE
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, compare=False, repr=False)

    def pattern(self, name: str) -> re.Pattern[str]:
        found = self._compiled.get(name)
        if found is None:
            found = re.compile("|".join(f"(?:{p})" for p in getattr(self, name)) or r"(?!)", re.IGNORECASE)
            self._compiled[name] = found
        return found


@dataclass(frozen=True)
class Classification:
    kind: ReplyClass
    reason: str


def new_text(body: str) -> str:
    """The reply's own words: quoted lines and the quoted original dropped."""
    kept = []
    for line in body.splitlines():
        if _QUOTE_START.match(line.strip()):
            break
        if not line.lstrip().startswith(">"):
            kept.append(line)
    return "\n".join(kept).strip()


def _automatic(headers: Mapping[str, str]) -> str | None:
    lower = {k.lower(): v.strip().lower() for k, v in headers.items()}
    auto = lower.get("auto-submitted")
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in ("x-autoreply", "x-autorespond", "x-auto-response-suppress"):
        if name in lower:
            return f"{name} header"
    if lower.get("precedence") in _AUTO_PRECEDENCE:
        return f"Precedence: {lower['precedence']}"
    return None


def classify_reply(headers: Mapping[str, str], subject: str, body: str,
                   rules: ReplyRules = ReplyRules()) -> Classification:
    """The class of one reply and why (see module doc)."""
    why = _automatic(headers)
    if why:
        return Classification(ReplyClass.automatic, why)
    found = rules.pattern("out_of_office").search(subject)
    if found:
        return Classification(ReplyClass.automatic, f"subject: {found.group(0)!r}")
    text = new_text(body)
    for kind, name in ((ReplyClass.unsubscribe, "unsubscribe"), (ReplyClass.negative, "negative"),
                       (ReplyClass.positive, "positive")):
        found = rules.pattern(name).search(text) or (rules.pattern(name).search(subject)
                                                     if kind is ReplyClass.unsubscribe else None)
        if found:
            return Classification(kind, f"{name}: {found.group(0)!r}")
    found = rules.pattern("out_of_office").search(text)
    if found:
        return Classification(ReplyClass.automatic, f"body: {found.group(0)!r}")
    return Classification(ReplyClass.other, "no rule matched")


def classify_message(message: Message, rules: ReplyRules = ReplyRules()) -> Classification:
    """:func:`classify_reply` of a parsed email (its first text/plain part)."""
    body = ""
    for part in message.walk() if message.is_multipart() else [message]:
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                body = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
                break
    headers = {k: str(v) for k, v in message.items()}
    return classify_reply(headers, str(message.get("Subject", "")), body, rules)
