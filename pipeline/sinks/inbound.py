"""Mail coming back to the sequences: the inbound SMTP listener, the inbound-parse webhook and the
unsubscribe pages, all served by ``leadstream sinks`` and handled by :class:`.nurture.ReplyDesk`.

- SMTP (aiosmtpd, on ``sinks.email.inbound_port``; the reply domain's MX points here): only our
  token addresses are accepted (550 for any other: never an open relay); a hand-off that
  fails answers 451, so the sending server tries again (hand-offs already made are not repeated).
- ``POST /email/inbound`` (``Authorization: Bearer <sinks.email.inbound_token>`` or ``?token=``):
  the raw MIME as the body (``message/rfc822``), or a form with the MIME in ``email``
  (SendGrid Inbound Parse, raw mode) or ``body-mime`` (Mailgun routes); recipients from the
  form's ``to``/``recipient``/``envelope`` fields and the message's headers. 503 when a hand-off
  failed (the provider retries).
- ``GET /unsubscribe/<token>`` shows a confirm page; ``POST /unsubscribe/<token>`` (the page's
  button, or a mail client's RFC 8058 one-click ``List-Unsubscribe=One-Click``) unsubscribes:
  the address joins the site's suppression list and every sequence to it stops.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import html
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..settings import Settings
from .email import read_token
from .nurture import ReplyDesk
from .sequences import SequenceStore

log = logging.getLogger(__name__)

Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


class SmtpHandler:
    """aiosmtpd handler: accept our token addresses, hand each message to the desk."""

    def __init__(self, desk: ReplyDesk) -> None:
        self.desk = desk

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if not self.desk.ours(address):
            return "550 5.1.1 No such recipient here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        try:
            result = await self.desk.receive(bytes(raw), list(envelope.rcpt_tos))
        except Exception as exc:
            log.warning("inbound mail to %s: %s: %s; asked the sender to retry", envelope.rcpt_tos,
                        type(exc).__name__, exc)
            return "451 4.3.0 Temporary failure, please try again later"
        log.info("inbound mail to %s: %s", envelope.rcpt_tos, result.status)
        return "250 2.0.0 OK"


async def serve_smtp(desk: ReplyDesk, host: str, port: int, max_bytes: int) -> Callable[[], Awaitable[None]]:
    """Run the inbound SMTP listener in this loop; returns the coroutine function that stops it."""
    from aiosmtpd.smtp import SMTP
    loop = asyncio.get_running_loop()
    factory = functools.partial(SMTP, SmtpHandler(desk), data_size_limit=max_bytes, hostname=host,
                                ident="leadstream inbound", enable_SMTPUTF8=True)
    server = await loop.create_server(factory, host, port)

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return stop


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport"
content="width=device-width,initial-scale=1"><title>{title}</title><style>body{{font-family:system-ui,sans-serif;
max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}button{{font-size:1rem;padding:.6rem 1.2rem}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=_PAGE.format(title=html.escape(title), body=body),
                        content_type="text/html", headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex",
                                                           "Referrer-Policy": "no-referrer"})


def email_routes(settings: Settings, store: SequenceStore, desk: ReplyDesk) -> list[Route]:
    """The unsubscribe pages, and the inbound-parse webhook when ``sinks.email.inbound_token`` is set."""
    secret = settings.sinks.email.token_secret.get_secret_value() if settings.sinks.email.token_secret else ""

    def site_name(site_id: str) -> str:
        site = settings.site(site_id)
        return (site.name if site and site.name else site_id)

    async def confirm(request: web.Request) -> web.Response:
        seq_id = read_token(secret, "unsubscribe", request.match_info["token"])
        seq = await store.get(seq_id) if seq_id else None
        if seq is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid or has expired. Reply to the "
                         "email with &ldquo;unsubscribe&rdquo; instead.</p>", 404)
        return _page(f"Unsubscribe from {site_name(seq.site_id)}",
                     f"<p>Stop all emails from {html.escape(site_name(seq.site_id))} to "
                     f"<strong>{html.escape(_masked(seq.email))}</strong>?</p>"
                     '<form method="post"><button type="submit">Unsubscribe</button></form>')

    async def unsubscribe(request: web.Request) -> web.Response:
        seq_id = read_token(secret, "unsubscribe", request.match_info["token"])
        seq = await store.unsubscribe(seq_id) if seq_id else None
        if seq is None:
            return _page("Link not valid", "<p>This unsubscribe link is not valid or has expired.</p>", 404)
        log.info("unsubscribed sequence %s of %s (%s)", seq_id, seq.sink, request.headers.get("user-agent", "?"))
        return _page("You are unsubscribed", f"<p>{html.escape(site_name(seq.site_id))} will not email "
                     f"{html.escape(_masked(seq.email))} again.</p>")

    routes: list[Route] = [("GET", "/unsubscribe/{token}", confirm), ("POST", "/unsubscribe/{token}", unsubscribe)]
    token = settings.sinks.email.inbound_token
    if token is not None:
        routes.append(("POST", "/email/inbound", functools.partial(_inbound, desk, token.get_secret_value(),
                                                                    settings.sinks.email.max_message_bytes)))
    return routes


async def _inbound(desk: ReplyDesk, token: str, max_bytes: int, request: web.Request) -> web.Response:
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.query.get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return web.json_response({"error": "unauthorized"}, status=401)
    if (request.content_length or 0) > max_bytes:
        return web.json_response({"error": "too large"}, status=413)
    envelope: list[str] = []
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.post()
        mime = form.get("email") or form.get("body-mime")
        raw = mime.encode() if isinstance(mime, str) else (mime.file.read() if mime is not None and
                                                             hasattr(mime, "file") else b"")
        for name in ("recipient", "to"):
            value = form.get(name)
            if isinstance(value, str):
                envelope += [v.strip() for v in value.split(",") if v.strip()]
        env = form.get("envelope")
        if isinstance(env, str):
            try:
                envelope += list(json.loads(env).get("to") or [])
            except (ValueError, AttributeError):
                pass
    else:
        raw = await request.read()
    if not raw:
        return web.json_response({"error": "no message: send the raw MIME, or a form with `email`/`body-mime`"},
                                 status=400)
    try:
        result = await desk.receive(raw, envelope)
    except Exception as exc:
        log.warning("inbound webhook: %s: %s", type(exc).__name__, exc)
        return web.json_response({"error": "hand-off failed, retry later"}, status=503)
    return web.json_response({"status": result.status})


def _masked(address: str) -> str:
    """d***@brightpath-analytics.example: enough to recognise, not to harvest."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"
