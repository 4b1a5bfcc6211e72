"""The email sink: starts a nurture sequence per eligible lead, sends its due steps, handles replies.

    qualified-leads ─▶ NurtureSink.deliver: eligible? (filter, person + email, consent, suppression)
                             │ yes: sequence started in Redis, step 1 due after its delay
                             ▼
                       NurtureSink.run_background: due steps ─▶ render ─▶ DKIM ─▶ SMTP (aiosmtplib)
                             ▲
    reply+<t>@ / unsubscribe+<t>@ / bounce+<t>@ ─▶ ReplyDesk (inbound SMTP listener or inbound-parse
    webhook) ─▶ classify ─▶ stop; unsubscribe ─▶ suppress; positive ─▶ hand-off (owner, Slack, CRM)
    GET/POST /unsubscribe/<t> (sinks HTTP server) ─▶ suppress + stop

``deliver`` is what the runner's delivery state makes happen once per lead; a person gets
one sequence per sink, ever (the sequence id is derived from site, sink and person). The
schedule and the rule that no step is sent twice live in :mod:`.sequences`.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage, Message
from email.utils import format_datetime
from typing import Any, Awaitable, Callable, Mapping, Sequence as Seq

from ..core.identity import hash_email, normalize_email
from ..metrics import NURTURE_INBOUND, NURTURE_SCHEDULED, NURTURE_SENT, NURTURE_STOPPED, SINK_SKIPPED
from ..settings import (HubSpotSinkSettings, NurtureSinkSettings, Settings, SiteSettings, SlackSinkSettings,
                        SmtpSettings)
from .base import Delivered, Failed, NoProfiles, Outcome, ProfilePort, person_profile
from .email import (Addresses, HandOff, as_bytes, build_message, dkim_sign, hand_off, new_message_id,
                    nurture_refusal, read_address, recipients, render_step, reply_text, sequence_id,
                    template_context)
from .replies import ReplyClass, ReplyRules, classify_message
from .rules import backoff_s
from .sequences import Sequence, SequenceStore, now_ms

log = logging.getLogger(__name__)


class SendError(Exception):
    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class SmtpMailer:
    """Sends one message over SMTP with aiosmtplib (STARTTLS or implicit TLS, optional auth)."""

    def __init__(self, smtp: SmtpSettings) -> None:
        self.smtp = smtp

    async def send(self, sender: str, recipient: str, message: bytes,
                   accepted: Callable[[], Awaitable[None]] | None = None) -> None:
        """Raises :class:`SendError`; ``permanent`` for a 5xx refusal (a hard bounce). ``accepted`` runs
        as soon as the server has taken the message, before QUIT, so the caller records it one round
        trip sooner; once the server has the message nothing raises SendError any more (that would
        send it again)."""
        import aiosmtplib
        s = self.smtp
        client = aiosmtplib.SMTP(hostname=s.host, port=s.port, use_tls=s.tls,
                                 start_tls=s.starttls if not s.tls else False, timeout=s.timeout_s)
        taken = False
        try:
            async with client:
                if s.username:
                    await client.login(s.username, s.password.get_secret_value() if s.password else "")
                await client.sendmail(sender, [recipient], message)
                taken = True
                if accepted is not None:
                    await accepted()
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise SendError(f"recipient refused: {'; '.join(str(r) for r in exc.recipients)}"[:500],
                            all(c >= 500 for c in codes)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            if taken:
                log.warning("SMTP %s: message to %s accepted, then: %s", s.host, recipient, exc)
                return
            raise SendError(f"SMTP {exc.code}: {exc.message}"[:500], exc.code >= 500) from exc
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            if taken:
                log.warning("SMTP %s: message to %s accepted, then: %s", s.host, recipient, exc)
                return
            raise SendError(f"{type(exc).__name__}: {exc}"[:500], False) from exc


Mailer = SmtpMailer


def email_hash_for(settings: Settings, site: SiteSettings, address: str) -> str:
    """The salted hash of ``address`` the site's identity graph and suppression list use."""
    normal = normalize_email(address)
    if normal is None:
        raise ValueError(f"{address!r} is not an email address")
    return hash_email(normal, settings.email_salt(site))


class NurtureSink:
    """One ``type: email`` sink of one site (see module doc)."""

    kind = "email"

    def __init__(self, site: SiteSettings, config: NurtureSinkSettings, settings: Settings, store: SequenceStore,
                 profiles: ProfilePort | None = None, mailer: Mailer | None = None, owner: str | None = None) -> None:
        self.site, self.config, self.settings, self.store = site, config, settings, store
        self.profiles = profiles or NoProfiles()
        self.mailer = mailer or SmtpMailer(config.smtp)
        self.key = f"{site.site_id}/{config.name}"
        self.owner = owner or uuid.uuid4().hex
        secret = settings.sinks.email.token_secret
        assert secret is not None, "settings validation requires sinks.email.token_secret with an email sink"
        self.secret = secret.get_secret_value()
        self.public_url = (settings.sinks.email.public_url
                           or f"http://{settings.sinks.host}:{settings.sinks.port}").rstrip("/")
        rules = config.reply_rules
        default = ReplyRules()
        self.reply_rules = ReplyRules(
            out_of_office=tuple(rules.out_of_office) if rules.out_of_office is not None else default.out_of_office,
            unsubscribe=tuple(rules.unsubscribe) if rules.unsubscribe is not None else default.unsubscribe,
            negative=tuple(rules.negative) if rules.negative is not None else default.negative,
            positive=tuple(rules.positive) if rules.positive is not None else default.positive)
        self.lease_ms = int(settings.sinks.lease_s * 1000)

    # -- starting a sequence (the runner calls this once per lead) ---------------------------------
    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        profile = await person_profile(lead, self.profiles)
        address = normalize_email(profile.get("email"))
        email_hash = email_hash_for(self.settings, self.site, address) if address else ""
        suppressed = bool(address) and await self.store.is_suppressed(self.site.site_id, email_hash)
        refusal = nurture_refusal(lead, profile, self.site.consent.email, suppressed)
        if refusal is not None:
            SINK_SKIPPED.labels(self.key, f"nurture_{refusal}").inc()
            return Delivered(f"no sequence: {refusal}")
        assert address is not None
        person_id = str(lead["person"]["person_id"])
        seq_id = sequence_id(self.site.site_id, self.config.name, person_id)
        result = await self.store.start(seq_id, self.site.site_id, self.key, person_id, address, email_hash, lead,
                                        profile, now_ms() + int(self.config.steps[0].delay * 1000))
        return Delivered(f"sequence {seq_id}: {result}", already=result == "exists")

    # -- sending due steps -------------------------------------------------------------------------
    async def run_background(self) -> None:
        """Send due steps forever (``sinks.email.poll_s``); a Redis or SMTP outage is retried."""
        while True:
            try:
                await self.send_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("email %s: cannot send due steps: %s: %s", self.key, type(exc).__name__, exc)
            await asyncio.sleep(self.settings.sinks.email.poll_s)

    async def send_due(self) -> int:
        """Send every step due now (``concurrency`` at a time); returns how many went out."""
        ids = await self.store.claim_due(self.key, 100, self.lease_ms)
        NURTURE_SCHEDULED.labels(self.key).set(await self.store.scheduled(self.key))
        if not ids:
            return 0
        gate = asyncio.Semaphore(self.config.concurrency)

        async def one(seq_id: str) -> bool:
            async with gate:
                return await self.send_step(seq_id)

        return sum(await asyncio.gather(*(one(i) for i in ids)))

    async def send_step(self, seq_id: str) -> bool:
        seq = await self.store.get(seq_id)
        if seq is None or seq.step >= len(self.config.steps):
            return False
        taken = await self.store.take(seq, self.owner, self.lease_ms)
        if taken != "ok":
            if taken == "suppressed":
                NURTURE_STOPPED.labels(self.key, "suppressed").inc()
            return False
        step = self.config.steps[seq.step]
        addresses = Addresses.of(self.secret, seq.seq_id, self.config.reply_domain, self.public_url)
        try:
            rendered = render_step(step, template_context(seq.lead, seq.profile, addresses.unsubscribe_url,
                                                          seq.step + 1))
        except Exception as exc:  # a template that fails on this lead's data: never retried into a loop
            log.error("email %s: step %d of %s does not render (%s: %s); sequence stopped", self.key, seq.step + 1,
                      seq.seq_id, type(exc).__name__, exc)
            await self.store.stop(seq.seq_id, f"template error in step {seq.step + 1}: {exc}"[:300])
            NURTURE_STOPPED.labels(self.key, "template_error").inc()
            return False
        message_id = new_message_id(seq.seq_id, seq.step, self.config.from_domain)
        name = seq.profile.get("name") or " ".join(
            p for p in (seq.profile.get("first_name"), seq.profile.get("last_name")) if p)
        msg = build_message(self.config, rendered, seq.email, name, addresses, message_id, seq.message_ids)
        following = seq.step + 1
        next_due = now_ms() + int(self.config.steps[following].delay * 1000) if following < len(self.config.steps) \
            else None

        async def record() -> None:
            # the one window: a crash between the server's 250 and this write sends the step again
            # after the lease (see the sequences module doc); recorded before QUIT to keep it short,
            # and a failed write is retried (never the send) while the claim lasts
            for attempt in range(max(1, int(self.settings.sinks.lease_s / 0.5))):
                try:
                    await self.store.record_sent(seq, message_id, rendered.subject, rendered.text, next_due)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("email %s: cannot record step %d of %s (%s); trying again", self.key,
                                seq.step + 1, seq.seq_id, exc)
                    await asyncio.sleep(0.5)

        try:
            await self.mailer.send(addresses.bounce, seq.email, self.signed(msg), record)
        except SendError as exc:
            if exc.permanent:
                await self.store.stop(seq.seq_id, f"bounce: {exc}"[:300])
                NURTURE_STOPPED.labels(self.key, "bounce").inc()
            else:
                wait = backoff_s(seq.attempts + 1, self.config.retry)
                if not await self.store.retry_later(seq, now_ms() + int(wait * 1000), self.config.send_attempts,
                                                    str(exc)):
                    NURTURE_STOPPED.labels(self.key, "failed").inc()
            log.warning("email %s: step %d of %s not sent: %s", self.key, seq.step + 1, seq.seq_id, exc)
            return False
        NURTURE_SENT.labels(self.key, str(seq.step + 1)).inc()
        return True

    def signed(self, msg: EmailMessage) -> bytes:
        raw = as_bytes(msg)
        dk = self.config.dkim
        if dk is None:
            return raw
        return dkim_sign(raw, dk.selector, self.config.dkim_domain, dk.key_bytes(), dk.algorithm)

    # -- replies -----------------------------------------------------------------------------------
    async def handle_reply(self, seq: Sequence, message: Message, desk: "ReplyDesk") -> str:
        """Classify a reply to ``seq`` and act: automatic ignored; unsubscribe suppresses; any other
        reply stops the sequence; a positive one is handed off (owner, Slack, CRM), another human
        reply goes to the owner. Returns the class. Raises when a hand-off could not be made
        (the sender retries; hand-offs already made are not repeated)."""
        kind = classify_message(message, self.reply_rules).kind
        NURTURE_INBOUND.labels(self.key, kind.value).inc()
        if kind is ReplyClass.automatic:
            return str(kind.value)
        if kind is ReplyClass.unsubscribe:
            await self.store.unsubscribe(seq.seq_id)
            NURTURE_STOPPED.labels(self.key, "unsubscribed").inc()
            return str(kind.value)
        if await self.store.stop(seq.seq_id, f"reply: {kind.value}"):
            NURTURE_STOPPED.labels(self.key, "reply").inc()
        if kind is ReplyClass.negative:
            return str(kind.value)
        sent = [(format_datetime(datetime.fromtimestamp(at / 1000, timezone.utc)), subject, text)
                for _, _, at, subject, text in seq.sent]
        handoff = hand_off(seq.lead, seq.profile, seq.email, sent, message, kind.value)
        digest = hashlib.sha256(str(message.get("Message-ID") or reply_text(message)).encode()).hexdigest()[:16]
        targets: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("owner", lambda: self._to_owner(handoff, message))]
        if kind is ReplyClass.positive:
            targets += desk.handoff_targets(self.site, seq, handoff)
        for name, action in targets:
            if await self.store.handed_off(seq.seq_id, digest, name):
                continue
            await action()
            await self.store.mark_handed_off(seq.seq_id, digest, name)
        return str(kind.value)

    async def _to_owner(self, handoff: HandOff, reply: Message) -> None:
        msg = EmailMessage()
        msg["From"] = self.config.from_address
        msg["To"] = self.config.owner_address
        msg["Subject"] = handoff.subject
        msg["Reply-To"] = str(reply.get("From") or "")
        msg["Message-ID"] = new_message_id(uuid.uuid4().hex[:20], 0, self.config.from_domain)
        msg["Auto-Submitted"] = "auto-generated"   # RFC 3834: a machine wrote it
        msg.set_content(handoff.text)
        raw = self.signed(_with_original(msg, reply))
        try:
            await self.mailer.send(_bare(self.config.from_address), _bare(self.config.owner_address), raw)
        except SendError as exc:
            raise RuntimeError(f"hand-off to {self.config.owner_address} failed: {exc}") from exc

    async def aclose(self) -> None:
        return None


def _bare(address: str) -> str:
    from email.utils import parseaddr
    return parseaddr(address)[1]


def _with_original(msg: EmailMessage, reply: Message) -> EmailMessage:
    """``msg`` with the reply attached as it arrived (message/rfc822)."""
    original = email.message_from_bytes(reply.as_bytes(), policy=email.policy.default)
    msg.add_attachment(original, disposition="attachment", filename="reply.eml")
    return msg


@dataclass
class InboundResult:
    status: str           # the class, or why nothing was done: unknown_recipient, unknown_sequence
    detail: str = ""


class ReplyDesk:
    """Routes inbound mail to the sequence its token names (inbound SMTP listener and webhook)."""

    def __init__(self, settings: Settings, store: SequenceStore, sinks: Mapping[str, NurtureSink],
                 profiles: ProfilePort | None = None) -> None:
        self.settings, self.store, self.sinks = settings, store, sinks
        secret = settings.sinks.email.token_secret
        self.secret = secret.get_secret_value() if secret else ""
        self.profiles = profiles or NoProfiles()
        self._slack_clients: dict[str, Any] = {}

    def ours(self, address: str) -> bool:
        return read_address(self.secret, address) is not None

    async def receive(self, raw: bytes, envelope_recipients: Seq[str] = ()) -> InboundResult:
        """Handle one inbound message. Raises when a hand-off failed (answer 4xx/5xx so it is sent again)."""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        for address in recipients(message, envelope_recipients):
            found = read_address(self.secret, address)
            if found is None:
                continue
            purpose, seq_id = found
            seq = await self.store.get(seq_id)
            sink = self.sinks.get(seq.sink) if seq else None
            if seq is None or sink is None:
                return InboundResult("unknown_sequence", seq_id)
            if purpose == "unsubscribe":
                await self.store.unsubscribe(seq_id)
                NURTURE_INBOUND.labels(sink.key, "unsubscribe").inc()
                NURTURE_STOPPED.labels(sink.key, "unsubscribed").inc()
                return InboundResult("unsubscribe", seq_id)
            if purpose == "bounce" or _is_bounce(message):
                if await self.store.stop(seq_id, "bounce"):
                    NURTURE_STOPPED.labels(sink.key, "bounce").inc()
                NURTURE_INBOUND.labels(sink.key, "bounce").inc()
                return InboundResult("bounce", seq_id)
            return InboundResult(await sink.handle_reply(seq, message, self), seq_id)
        return InboundResult("unknown_recipient")

    # -- hand-off targets beyond the owner ---------------------------------------------------------
    def handoff_targets(self, site: SiteSettings, seq: Sequence, handoff: HandOff,
                        ) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        targets: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for cfg in site.sinks:
            if not cfg.enabled:
                continue
            if isinstance(cfg, SlackSinkSettings):
                targets.append((f"slack:{cfg.name}", lambda c=cfg: self._slack(c, handoff)))  # type: ignore[misc]
            elif isinstance(cfg, HubSpotSinkSettings):
                targets.append((f"crm:{cfg.name}", lambda c=cfg: self._crm_note(c, seq, handoff)))  # type: ignore[misc]
        return targets

    async def _slack(self, cfg: SlackSinkSettings, handoff: HandOff) -> None:
        from .slack import SlackClient
        client = self._slack_clients.get(cfg.name)
        if client is None:
            client = self._slack_clients[cfg.name] = SlackClient(cfg)
        outcome = await client.post(handoff_blocks(handoff))
        if isinstance(outcome, Failed):
            raise RuntimeError(f"hand-off to Slack failed: {outcome.error}")

    async def _crm_note(self, cfg: HubSpotSinkSettings, seq: Sequence, handoff: HandOff) -> None:
        from .hubspot import CRMError, HubSpot
        crm = HubSpot(cfg.token.get_secret_value(), cfg.base_url, cfg.portal_id, cfg.timeout_s)
        try:
            contact_id, _ = await crm.upsert_contact(seq.email, {"email": seq.email})
            await crm.add_note(contact_id, note_body(handoff), now_ms())
        except CRMError as exc:
            raise RuntimeError(f"hand-off to HubSpot failed: {exc}") from exc
        finally:
            await crm.aclose()

    async def aclose(self) -> None:
        for client in self._slack_clients.values():
            await client.aclose()


def _is_bounce(message: Message) -> bool:
    """A delivery status notification (RFC 3464) or a mailer-daemon message."""
    if message.get_content_type() == "multipart/report" and \
            str(message.get_param("report-type") or "").lower() == "delivery-status":
        return True
    sender = str(message.get("From") or "").lower()
    return "mailer-daemon@" in sender or "postmaster@" in sender


def handoff_blocks(handoff: HandOff) -> dict[str, Any]:
    """The Slack message of a hand-off (Block Kit). Pure."""
    from .slack import _clip, _esc
    return {"text": _clip(handoff.subject, 3000), "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(handoff.subject, 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(
            f"*Who:* {_esc(handoff.who)}\n*Company:* {_esc(handoff.company)}\n"
            f"*What they asked:* {_esc(handoff.asked)}\n*Why they were a lead:* {_esc(handoff.reason)}")}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"```{_esc(handoff.thread)}```")}},
    ]}


def note_body(handoff: HandOff) -> str:
    """The CRM note (HubSpot notes take HTML)."""
    import html
    return (f"<p><strong>{html.escape(handoff.subject)}</strong></p>"
            f"<p>{html.escape(handoff.summary).replace(chr(10), '<br>')}</p>"
            f"<pre>{html.escape(handoff.thread)}</pre>")[:60000]


def make_nurture_sinks(settings: Settings, store: SequenceStore, profiles: ProfilePort | None,
                       ) -> dict[tuple[str, str], NurtureSink]:
    """Every enabled email sink, by (site id, sink name)."""
    return {(site.site_id, cfg.name): NurtureSink(site, cfg, settings, store, profiles)
            for site in settings.sites for cfg in site.sinks
            if isinstance(cfg, NurtureSinkSettings) and cfg.enabled}


__all__ = ["NurtureSink", "ReplyDesk", "SmtpMailer", "SendError", "InboundResult", "handoff_blocks", "note_body",
           "email_hash_for", "make_nurture_sinks", "Failed"]
