"""Email nurture, the pure part: who may get a sequence, tokens, rendering, headers, DKIM, the hand-off text.

Nothing here does I/O (DKIM signing reads only the key bytes it is given), so every rule
is tested without SMTP or Redis: :mod:`.sequences` keeps the schedule in Redis and
:mod:`.nurture` sends.

Addresses carry a token: ``reply+<token>@<reply domain>`` (Reply-To),
``unsubscribe+<token>@<reply domain>`` (List-Unsubscribe mailto) and
``bounce+<token>@<reply domain>`` (the envelope sender, so bounces come back to us).
A token is the sequence id (20 hex) and 16 hex of HMAC-SHA256 over the purpose and the id:
lower-case hex, because mail systems may change the case of a local part, and 42
characters with ``reply+``, under the 64 a local part may have.
"""

from __future__ import annotations

import email.policy
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses, parseaddr
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import jinja2
import jinja2.sandbox
import markupsafe

from ..core.email_consent import DENIED, GRANTED
from ..core.identity import normalize_email
from ..settings import EmailBasis, EmailConsent, NurtureSinkSettings, NurtureStep
from .replies import new_text

PURPOSES = ("reply", "unsubscribe", "bounce")
# CRLF, and lines up to RFC 5322's 998: a List-Unsubscribe URL longer than 78 characters must stay
# one word, never RFC 2047-encoded (mail clients would not find the link)
WIRE = email.policy.SMTP.clone(max_line_length=998)
_TOKEN = re.compile(r"^[0-9a-f]{36}$")
_LOCAL = re.compile(r"^(reply|unsubscribe|bounce)\+([0-9A-Fa-f]{36})$")


# -- who gets a sequence ---------------------------------------------------------------------------
def nurture_refusal(lead: Mapping[str, Any], profile: Mapping[str, str], consent: EmailConsent,
                    suppressed: bool) -> str | None:
    """None when the lead's person may get the sequence; else why not.

    The sink's ``filter`` (identity confidence, tier) was applied before. Here: a known
    person with an email from the owner's data, not suppressed, not opted out, and the
    site's consent basis met (``opt_in``: the profile says granted; ``legitimate_interest``:
    anyone not opted out, except companies in ``opt_in_countries``, who need opt-in).
    """
    if not lead.get("person") or not (lead["person"] or {}).get("person_id"):
        return "no_person"
    if normalize_email(profile.get("email")) is None:
        return "no_email"
    if suppressed:
        return "suppressed"
    said = str(profile.get("email_consent") or "").strip().lower()
    if said in DENIED:
        return "consent_denied"
    if said in GRANTED:
        return None
    if consent.basis is EmailBasis.opt_in:
        return "no_opt_in"
    country = str((lead.get("company") or {}).get("country") or "").upper()
    if country and country in consent.opt_in_countries:
        return "no_opt_in"
    return None


# -- tokens ----------------------------------------------------------------------------------------
def sequence_id(site_id: str, sink: str, person_id: str) -> str:
    """One sequence per person and sink, ever: a later lead of the same person does not restart it."""
    return hashlib.sha256(f"{site_id}\0{sink}\0{person_id}".encode()).hexdigest()[:20]


def make_token(secret: str, purpose: str, seq_id: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(purpose)
    mac = hmac.new(secret.encode(), f"{purpose}:{seq_id}".encode(), hashlib.sha256).hexdigest()[:16]
    return seq_id + mac


def read_token(secret: str, purpose: str, token: str) -> str | None:
    """The sequence id a genuine ``purpose`` token names, else None (tampered, other purpose, garbage)."""
    token = token.strip().lower()
    if not _TOKEN.match(token):
        return None
    seq_id = token[:20]
    return seq_id if hmac.compare_digest(make_token(secret, purpose, seq_id), token) else None


def token_address(secret: str, purpose: str, seq_id: str, reply_domain: str) -> str:
    return f"{purpose}+{make_token(secret, purpose, seq_id)}@{reply_domain}"


def read_address(secret: str, address: str) -> tuple[str, str] | None:
    """(purpose, sequence id) of one of our token addresses, else None."""
    local, _, _domain = parseaddr(address)[1].rpartition("@")
    found = _LOCAL.match(local)
    if found is None:
        return None
    seq_id = read_token(secret, found.group(1), found.group(2))
    return (found.group(1), seq_id) if seq_id else None


def unsubscribe_url(public_url: str, secret: str, seq_id: str) -> str:
    return f"{public_url.rstrip('/')}/unsubscribe/{make_token(secret, 'unsubscribe', seq_id)}"


# -- rendering -------------------------------------------------------------------------------------
_TEXT_ENV = jinja2.sandbox.SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_HTML_ENV = jinja2.sandbox.SandboxedEnvironment(autoescape=True, keep_trailing_newline=True)


def first_name(profile: Mapping[str, str]) -> str:
    return profile.get("first_name") or (profile.get("name") or "").split(" ", 1)[0]


def template_context(lead: Mapping[str, Any], profile: Mapping[str, str], unsubscribe: str,
                     step: int) -> dict[str, Any]:
    """What a template sees: ``lead`` (every field), ``company``, ``person`` (the profile, plus
    ``first_name``), ``unsubscribe_url`` and ``step`` (1-based)."""
    person = {**profile, "first_name": first_name(profile)}
    person.pop("email_consent", None)
    return {"lead": dict(lead), "company": dict(lead.get("company") or {}), "person": person,
            "unsubscribe_url": unsubscribe, "step": step}


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def render_step(step: NurtureStep, context: Mapping[str, Any]) -> Rendered:
    """The step's subject and bodies, with the unsubscribe link appended to each body."""
    subject = " ".join(_TEXT_ENV.from_string(step.subject).render(context).split())  # one line, no CR/LF
    url = str(context["unsubscribe_url"])
    text = _TEXT_ENV.from_string(step.text).render(context).rstrip() + f"\n\n--\nUnsubscribe: {url}\n"
    html = None
    if step.html is not None:
        html = _HTML_ENV.from_string(step.html).render(context)
        link = f'<p style="font-size:12px;color:#666"><a href="{markupsafe.escape(url)}">Unsubscribe</a></p>'
        html = html.replace("</body>", link + "</body>") if "</body>" in html else html + link
    return Rendered(subject, text, html)


@dataclass(frozen=True)
class Addresses:
    """The token addresses and link of one sequence."""
    reply_to: str
    unsubscribe_mailto: str
    bounce: str
    unsubscribe_url: str

    @classmethod
    def of(cls, secret: str, seq_id: str, reply_domain: str, public_url: str) -> "Addresses":
        return cls(token_address(secret, "reply", seq_id, reply_domain),
                   token_address(secret, "unsubscribe", seq_id, reply_domain),
                   token_address(secret, "bounce", seq_id, reply_domain),
                   unsubscribe_url(public_url, secret, seq_id))


def build_message(config: NurtureSinkSettings, rendered: Rendered, to: str, to_name: str, addresses: Addresses,
                  message_id: str, thread: Iterable[str] = (), now: float | None = None) -> EmailMessage:
    """One step as a MIME message: From the site's domain, Reply-To the sequence's reply address,
    RFC 8058 one-click unsubscribe headers, threaded (In-Reply-To/References) on the earlier steps."""
    msg = EmailMessage(policy=WIRE)
    msg["From"] = config.from_address
    msg["To"] = formataddr((to_name, to)) if to_name else to
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(time.time() if now is None else now, timezone.utc))
    msg["Message-ID"] = message_id
    msg["Reply-To"] = addresses.reply_to
    earlier = list(thread)
    if earlier:
        msg["In-Reply-To"] = earlier[-1]
        msg["References"] = " ".join(earlier)
    msg["List-Unsubscribe"] = (f"<mailto:{addresses.unsubscribe_mailto}?subject=unsubscribe>, "
                               f"<{addresses.unsubscribe_url}>")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text)
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html")
    return msg


def new_message_id(seq_id: str, step: int, domain: str) -> str:
    """The Message-ID of step ``step`` (0-based) of sequence ``seq_id``: stable, the same on every
    attempt, so a step sent again after a crash (see :mod:`.sequences`) is the same message to
    the receiving mail systems and clients that de-duplicate by Message-ID. Pure."""
    return f"<ls.{seq_id}.{step + 1}@{domain}>"


SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to", b"references",
                  b"list-unsubscribe", b"list-unsubscribe-post", b"mime-version", b"content-type")


def dkim_sign(message: bytes, selector: str, domain: str, private_key: bytes,
              algorithm: str = "rsa-sha256") -> bytes:
    """``message`` with a DKIM-Signature header prepended (dkimpy). The List-Unsubscribe headers are
    signed, as RFC 8058 requires for one-click unsubscribe."""
    import dkim
    present = {line.split(b":", 1)[0].strip().lower() for line in message.split(b"\r\n\r\n", 1)[0].splitlines()
               if b":" in line and not line[:1].isspace()}
    headers = [h for h in SIGNED_HEADERS if h in present]
    if algorithm == "ed25519-sha256":
        signature = dkim.sign(message, selector.encode(), domain.encode(), private_key, include_headers=headers,
                              signature_algorithm=b"ed25519-sha256")
    else:
        signature = dkim.sign(message, selector.encode(), domain.encode(), private_key, include_headers=headers)
    return bytes(signature) + message


def as_bytes(msg: EmailMessage) -> bytes:
    """The wire form (CRLF line ends, what DKIM signs and SMTP sends)."""
    return msg.as_bytes(policy=WIRE)


# -- the hand-off ----------------------------------------------------------------------------------
def reply_text(message: EmailMessage | Any) -> str:
    """The first text/plain part of a parsed reply (HTML only: its text with the tags dropped)."""
    html = ""
    for part in message.walk() if message.is_multipart() else [message]:
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
        if part.get_content_type() == "text/plain":
            return text
        if part.get_content_type() == "text/html" and not html:
            html = re.sub(r"<[^>]+>", " ", text)
    return html


def what_they_asked(body: str, limit: int = 300) -> str:
    """The reply's own words (quotes dropped), on one line, clipped."""
    words = " ".join(new_text(body).split())
    return words if len(words) <= limit else words[: limit - 1] + "…"


@dataclass(frozen=True)
class HandOff:
    """What a positive reply hands to people: a summary and the whole thread."""
    subject: str
    who: str
    company: str
    asked: str
    reason: str
    thread: str

    @property
    def summary(self) -> str:
        return (f"Who: {self.who}\nCompany: {self.company}\nWhat they asked: {self.asked}\n"
                f"Why they were a lead: {self.reason}")

    @property
    def text(self) -> str:
        return f"{self.summary}\n\n===== The whole thread =====\n\n{self.thread}"


def hand_off(lead: Mapping[str, Any], profile: Mapping[str, str], email: str,
             sent: list[tuple[str, str, str]], reply: Any, kind: str) -> HandOff:
    """The hand-off of ``reply`` (a parsed message) to the sequence ``sent`` = [(date, subject, text)]."""
    name = profile.get("name") or " ".join(p for p in (profile.get("first_name"), profile.get("last_name")) if p)
    who = ", ".join(p for p in (name, profile.get("title"), email) if p)
    company = lead.get("company") or {}
    company_line = (f"{company.get('name') or company.get('domain')} ({company.get('domain')})" if company
                    else str(lead.get("account", "")))
    body = reply_text(reply)
    parts = [f"--- {date}: we wrote ---\nSubject: {subject}\n\n{text.strip()}" for date, subject, text in sent]
    parts.append(f"--- {reply.get('Date', '')}: {parseaddr(str(reply.get('From', '')))[1] or email} replied ---\n"
                 f"Subject: {reply.get('Subject', '')}\n\n{body.strip()}")
    label = "Positive reply" if kind == "positive" else "Reply"
    return HandOff(subject=f"{label} from {name or email} ({company_line}): {reply.get('Subject', '')}"[:250],
                   who=who, company=company_line, asked=what_they_asked(body), reason=str(lead.get("summary", "")),
                   thread="\n\n".join(parts))


def recipients(message: Any, envelope: Iterable[str] = ()) -> list[str]:
    """Every address a message was delivered to: the envelope's first, then the usual headers."""
    found = [a for a in envelope]
    for header in ("Delivered-To", "X-Original-To", "To", "Cc"):
        found += [addr for _, addr in getaddresses([str(v) for v in message.get_all(header, [])]) if addr]
    return list(dict.fromkeys(found))
