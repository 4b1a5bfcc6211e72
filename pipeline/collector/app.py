"""The collector's HTTP app: pixel and Snowplow protocols in, ``CollectorPayload``\\ s out.

:func:`create_app` builds a Starlette app. The ingest routes are raw ASGI
endpoints (no Request/Response objects) because they are the hot path: read
the headers once, parse with the stdlib, build Avro-ready dicts, hand them to
the :class:`~pipeline.collector.producer.PayloadSink`, and answer when the
broker has them (``collector.wait_for_broker``). :class:`HotPathStarlette`
dispatches them by exact path and method ahead of Starlette's middleware and
router (one dict lookup instead of six stack frames that every resumption of
the waiting request passes through again); every other request, and an
ingest path with a method it does not take (405), goes through Starlette.

For every request the collector:

1. checks every header's length (431) and, for an unsigned request, the
   client IP's rate limit (429 + ``Retry-After``, no bad row); reads the body
   within ``collector.body_timeout_s`` (408);
2. parses the protocol (:mod:`pipeline.collector.protocol`); malformed input,
   protocol and size violations get a 4xx with a JSON message and a ``BadRow``;
3. checks the site id, then either the signature (:mod:`.signing`: a signed
   request is verified and may set the client IP with the ``ip`` field) or
   the Origin and the site's ``require`` (403 + ``site_violation`` /
   ``origin_violation`` bad row), then the site's rate limit (429);
4. applies the site's consent policy: ``drop`` answers as if accepted and
   writes nothing (a metric counts it), ``anonymize`` keeps the events without
   any personal field (:func:`~.request.anonymize_event`) and sets no cookie;
5. reads the client IP (XFF only through trusted proxies) and the network
   user id cookie (set or refreshed on the answer);
6. queues one payload per (site, tracker visitor) under the key
   ``site_id|visitor_id`` (the payload id when anonymous) and waits for the
   acknowledgement: 200 (or the GIF), else 503 with ``Retry-After``.

No input makes it answer 500: an unexpected error while handling a request
is logged and answered 400 with a ``processing_failure`` bad row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import metrics
from ..core.events import VERIFIED_BY_SIGNATURE, VERIFIED_HEADER
from ..core.failures import FailureType
from ..settings import ConsentAction, RequireMode, Settings, SiteSettings
from ..stages.messages import split_bad_row
from ..topology import visitor_key
from .producer import BatchingProducer, BrokerUnavailable, PayloadSink, RecordTooLarge
from .protocol import (EventGroup, Limits, PayloadError, fast_uuid4, parse_collect, parse_pixel_query,
                       parse_snowplow_get, parse_snowplow_post)
from .request import (ANONYMOUS_HEADERS, CookiePolicy, ConsentSignals, TokenBuckets, anonymize_event, client_ip,
                      consent_action, kept_headers, oversized_header, read_cookie, read_headers, retry_after,
                      parse_ip, scrub_url)
from .signing import Verdict, verify
from .snippet import demo_page

log = logging.getLogger(__name__)

COLLECTOR_VERSION: Final = "0.1.0"

#: A transparent 1x1 GIF (43 bytes).
PIXEL_GIF: Final = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
                    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
SNOWPLOW_TP2_PATH: Final = "/com.snowplowanalytics.snowplow/tp2"

ProducerFactory = Callable[[Settings], PayloadSink]

_NO_CACHE: Final = (b"cache-control", b"no-cache, no-store, must-revalidate")
_GIF_HEADERS: Final = [(b"content-type", b"image/gif"), _NO_CACHE, (b"content-length", str(len(PIXEL_GIF)).encode())]
_JSON: Final = (b"content-type", b"application/json")
_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")
_OK_JSON: Final = b'{"ok":true}'
_ALLOW_HEADERS: Final = b"Content-Type, SP-Anonymous, X-Leadstream-Anonymous"


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


class _Kind:
    """One ingest endpoint: its protocol, its bad-row source name and how it answers success."""
    __slots__ = ("name", "source", "parse", "reads_body", "gif", "ok_body", "ok_type")

    def __init__(self, name: str, source: str, parse: Callable[[str, bytes, Limits], list[EventGroup]],
                 reads_body: bool, gif: bool, ok_body: bytes, ok_type: tuple[bytes, bytes]) -> None:
        self.name = name
        self.source = source
        self.parse = parse
        self.reads_body = reads_body
        self.gif = gif
        self.ok_body = ok_body
        self.ok_type = ok_type


PIXEL_GIF_KIND: Final = _Kind("p.gif", "pixel_gif", lambda q, b, lim: parse_pixel_query(q, lim), False, True,
                              PIXEL_GIF, (b"content-type", b"image/gif"))
COLLECT_KIND: Final = _Kind("collect", "collect", lambda q, b, lim: parse_collect(b, lim), True, False, _OK_JSON,
                            _JSON)
SNOWPLOW_GET_KIND: Final = _Kind("i", "snowplow_get", lambda q, b, lim: parse_snowplow_get(q, lim), False, True,
                                 PIXEL_GIF, (b"content-type", b"image/gif"))
SNOWPLOW_POST_KIND: Final = _Kind("tp2", "snowplow_post", lambda q, b, lim: parse_snowplow_post(b, lim), True,
                                  False, b"ok", _TEXT)


class _Entropy:
    """Bytes from ``os.urandom`` drawn 4 KiB at a time: one system call per 256 ids instead of one each.

    The buffer is dropped in a forked child (``os.register_at_fork``), so two
    processes never hand out the same bytes.
    """

    __slots__ = ("_buf", "_pos")
    SIZE: Final = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def reset(self) -> None:
        self._buf, self._pos = b"", 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf, self._pos = os.urandom(self.SIZE), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out


_ENTROPY: Final = _Entropy()
os.register_at_fork(after_in_child=_ENTROPY.reset)


def random_uuid4() -> str:
    """A version 4 UUID string from the OS's CSPRNG (like ``uuid.uuid4()``), without the UUID object.

    For the network user id cookie: an identifier a third party must not be
    able to guess, so ``os.urandom`` (buffered) rather than :func:`fast_uuid4`.
    """
    b = bytearray(_ENTROPY.take(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class HotPathStarlette(Starlette):
    """Starlette with a table of raw ASGI endpoints served ahead of its middleware and router.

    ``hot_routes`` maps an exact path to (endpoint, methods). A request whose
    path and method match goes straight to the endpoint, which must answer
    every request and never raise (no ServerErrorMiddleware catches it);
    anything else takes Starlette's usual way. The benchmark's null app is
    built the same way (loadtest/null_app.py), so the comparison stays like
    for like.
    """

    def __init__(self, *args: Any, hot_routes: dict[str, tuple[ASGIApp, frozenset[str]]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_routes: dict[str, tuple[ASGIApp, frozenset[str]]] = dict(hot_routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hot = self.hot_routes.get(scope["path"])
            if hot is not None and scope["method"] in hot[1]:
                await hot[0](scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _truncate_utf8(data: bytes, limit: int) -> tuple[str, bool]:
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), False
    return data[:limit].decode("utf-8", "ignore"), True


class Collector:
    """Shared state of one collector app (settings, sink, cached metric children) and the request handling.

    Contract: :meth:`handle` answers every request; no exception escapes it.
    """

    def __init__(self, settings: Settings, sink: PayloadSink) -> None:
        self.settings = settings
        self.cfg = settings.collector
        self.sink = sink
        self.limits = Limits(self.cfg.max_events_per_request, self.cfg.max_field_chars)
        self.cookie = CookiePolicy.from_settings(self.cfg)
        self.trusted = list(self.cfg.trusted_proxies)
        self.collector_name = f"leadstream-collector/{COLLECTOR_VERSION} {socket.gethostname()}"
        self.retry_after = str(self.cfg.retry_after_s).encode()
        self._requests: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}
        self._consent: dict[tuple[str, str, str], Any] = {}
        self._max_header = self.cfg.max_field_chars
        self._bad_row_part_bytes = settings.kafka.max_message_bytes // 2
        # a plain dict: Settings.site() goes through a pydantic private attribute (~2 us a lookup)
        self._sites: dict[str, SiteSettings] = {site.site_id: site for site in settings.sites}
        self._write_keys: dict[str, list[str]] = {
            site.site_id: [k.get_secret_value() for k in site.write_keys] for site in settings.sites}
        self._any_site_open = any("*" in site.allowed_origins for site in settings.sites)
        self._ip_buckets = TokenBuckets(self.cfg.rate_limit_ip_per_s, self.cfg.rate_limit_ip_burst,
                                        self.cfg.rate_limit_max_clients)
        self._site_buckets = TokenBuckets(self.cfg.rate_limit_site_per_s, self.cfg.rate_limit_site_burst,
                                          max(len(self._sites), 1) + 1)
        self._limited: dict[tuple[str, str], Any] = {}
        self._cors_grants: dict[tuple[str, str | None], tuple[bool, bool]] = {}

    # ---- metrics (children cached: labels() takes a lock and a dict lookup) ----------------

    def _observe(self, endpoint: str, status: int, started: float) -> None:
        counter = self._requests.get((endpoint, status))
        if counter is None:
            counter = self._requests[(endpoint, status)] = metrics.COLLECTOR_REQUESTS.labels(endpoint, str(status))
        counter.inc()
        histogram = self._durations.get(endpoint)
        if histogram is None:
            histogram = self._durations[endpoint] = metrics.COLLECTOR_REQUEST_SECONDS.labels(endpoint)
        histogram.observe(time.perf_counter() - started)

    def _count_consent(self, site: str, signal: str, action: str) -> None:
        counter = self._consent.get((site, signal, action))
        if counter is None:
            counter = self._consent[(site, signal, action)] = metrics.COLLECTOR_CONSENT.labels(site, signal, action)
        counter.inc()

    def _count_limited(self, scope_name: str, site: str) -> None:
        counter = self._limited.get((scope_name, site))
        if counter is None:
            counter = self._limited[(scope_name, site)] = metrics.COLLECTOR_RATE_LIMITED.labels(scope_name, site)
        counter.inc()

    # ---- answers -----------------------------------------------------------------------------

    def _cors_grant(self, origin: str | None, sites: list[SiteSettings] | None) -> tuple[bool, bool]:
        """(reflect the origin, with credentials) for ``origin`` answering for ``sites`` (None: not known yet).

        Only an origin a site lists gets credentials; an origin only a ``*`` site admits is
        reflected without them (never a wildcard with credentials); any other gets no CORS headers.
        """
        if not origin:
            return False, False
        key = (origin, None if sites is None else sites[0].site_id if len(sites) == 1 else
               "|".join(site.site_id for site in sites))
        grant = self._cors_grants.get(key)
        if grant is None:
            candidates = list(self._sites.values()) if sites is None else sites
            if any(site.lists_origin(origin) for site in candidates):
                grant = (True, True)
            elif any("*" in site.allowed_origins for site in candidates):
                grant = (True, False)
            else:
                grant = (False, False)
            if len(self._cors_grants) >= 4096:  # origins are few; a client inventing them cannot grow this
                self._cors_grants.clear()
            self._cors_grants[key] = grant
        return grant

    def _cors(self, headers: list[tuple[bytes, bytes]], origin: str | None,
              sites: list[SiteSettings] | None = None) -> None:
        headers.append((b"vary", b"Origin"))
        reflect, credentials = self._cors_grant(origin, sites)
        if reflect and origin:
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
            if credentials:
                headers.append((b"access-control-allow-credentials", b"true"))

    async def _send(self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Send, status: int, failure_type: str, message: str, origin: str | None,
                     extra: list[tuple[bytes, bytes]] | None = None, sites: list[SiteSettings] | None = None) -> None:
        body = json.dumps({"error": failure_type, "message": message}).encode()
        headers = [_JSON, _NO_CACHE]
        if extra:
            headers.extend(extra)
        self._cors(headers, origin, sites)
        await self._send(send, status, body, headers)

    def bad_row(self, failure_type: str, message: str, site_id: str | None, source: str, raw: bytes,
                details: dict[str, str] | None = None, size: int | None = None) -> None:
        """Write a ``BadRow`` with the whole original request (in parts when larger than half of
        ``kafka.max_message_bytes``).

        ``size`` is the original request's size when it was refused for its size: then only its
        first ``bad_row_payload_limit`` bytes are kept.
        """
        truncated = size is not None  # a body refused for its size: its first bad_row_payload_limit bytes
        if truncated:
            payload, _ = _truncate_utf8(raw, self.cfg.bad_row_payload_limit)
        else:  # whole, split into parts below the topic's maximum message size
            payload = raw.decode("utf-8", "replace")
        row = {
            "bad_row_id": str(uuid.uuid4()), "stage": "collector", "failure_type": FailureType(failure_type).value,
            "message": message, "site_id": site_id, "source": source, "tstamp": int(time.time() * 1000),
            "payload": payload, "payload_size": max(len(raw), size or 0), "payload_truncated": truncated,
            "details": details or {}, "part": 0, "parts": 1,
        }
        for part in split_bad_row(row, self._bad_row_part_bytes):
            self.sink.send_bad_row(part)

    async def _reject(self, send: Send, kind: _Kind, err: PayloadError, scope: Scope, body: bytes,
                      origin: str | None, site_id: str | None = None, size: int | None = None) -> int:
        details = {"field": err.field} if err.field else {}
        raw = _raw_request(scope, body)
        self.bad_row(err.failure_type, err.message, site_id or err.site_id, kind.source, raw, details,
                     None if size is None else len(raw) - len(body) + size)
        site = self._sites.get(site_id or err.site_id or "")
        await self._error(send, err.status, err.failure_type, err.message, origin,
                          sites=None if site is None else [site])
        return err.status

    async def _limited_answer(self, send: Send, scope_name: str, site: str, wait_s: float,
                              origin: str | None) -> int:
        self._count_limited(scope_name, site)
        what = "this client" if scope_name == "ip" else f"site '{site}'"
        await self._error(send, 429, "rate_limited", f"too many requests from {what}; retry later", origin,
                          [(b"retry-after", retry_after(wait_s).encode())],
                          sites=None if scope_name == "ip" else [self._sites[site]])
        return 429

    # ---- the ingest path ---------------------------------------------------------------------

    async def handle(self, kind: _Kind, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status = await self._handle(kind, scope, receive, send)
        except ClientDisconnected:
            status = 499
        except RecursionError:  # input nested too deeply for the stdlib: a clean refusal, no stack trace
            status = 400
            with contextlib.suppress(Exception):
                self.bad_row("malformed_request", "the request is nested too deeply", None, kind.source,
                             _raw_request(scope, b""))
            with contextlib.suppress(Exception):
                await self._error(send, 400, "malformed_request", "the request is nested too deeply", None)
        except Exception as exc:  # a bug: never a 500 for input, always a bad row to replay
            log.exception("error handling %s", kind.name)
            status = 400
            with contextlib.suppress(Exception):
                self.bad_row("processing_failure", f"collector error: {exc!r}", None, kind.source,
                             _raw_request(scope, b""))
            with contextlib.suppress(Exception):
                await self._error(send, 400, "processing_failure", "the collector could not process this request",
                                  None)
        self._observe(kind.name, status, started)

    async def _handle(self, kind: _Kind, scope: Scope, receive: Receive, send: Send) -> int:
        oversized = oversized_header(scope["headers"], self.cfg.max_header_chars, self.cfg.max_headers_bytes)
        if oversized is not None:
            name, length = oversized
            err = PayloadError("size_violation", f"header '{name}' is {length} bytes long; the limit is "
                               f"{self.cfg.max_header_chars if name != '(all headers)' else self.cfg.max_headers_bytes}",
                               431, name)
            body = b""
            if kind.reads_body:  # the bad row keeps what was sent, so the events can be replayed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.cfg.body_timeout_s):
                        body, _, _ = await _read_body(receive, self.cfg.max_request_bytes, None,
                                                      self.cfg.bad_row_payload_limit)
            return await self._reject(send, kind, err, scope, body, None)
        headers = read_headers(scope["headers"])
        origin = headers.get("origin")
        method = scope["method"]
        if method == "OPTIONS":
            return await self._preflight(send, origin)
        if method == "HEAD":  # link checkers and previews: answer, record nothing
            await self._send(send, 200, b"", [kind.ok_type, _NO_CACHE])
            return 200
        ip = client_ip(_peer(scope), headers.get("x-forwarded-for"), self.trusted)
        signed = "x-leadstream-signature" in headers or "x-leadstream-timestamp" in headers
        if not signed and self._ip_buckets.enabled:
            wait = self._ip_buckets.take(ip or "")
            if wait:
                return await self._limited_answer(send, "ip", "", wait, origin)
        body = b""
        if kind.reads_body:
            try:
                async with asyncio.timeout(self.cfg.body_timeout_s):
                    body, complete, size = await _read_body(receive, self.cfg.max_request_bytes,
                                                            headers.get("content-length"),
                                                            self.cfg.bad_row_payload_limit)
            except TimeoutError:
                await self._error(send, 408, "malformed_request",
                                  f"the request body did not arrive within {self.cfg.body_timeout_s:g} s", origin)
                return 408
            if not complete:
                message = f"the request body ({size} bytes) is larger than {self.cfg.max_request_bytes} bytes"
                return await self._reject(send, kind, PayloadError("size_violation", message, 413), scope, body,
                                          origin, size=size)
        elif len(scope.get("query_string", b"")) > self.cfg.max_request_bytes:
            message = f"the query string is longer than {self.cfg.max_request_bytes} bytes"
            return await self._reject(send, kind, PayloadError("size_violation", message, 413), scope, b"", origin)
        for name in ("user-agent", "referer", "accept-language", "origin"):  # stored as fields: the field limit
            value = headers.get(name)
            if value is not None and len(value) > self._max_header:
                err = PayloadError("size_violation", f"header '{name}' is {len(value)} characters long; "
                                   f"the limit is {self._max_header}", 400, name)
                return await self._reject(send, kind, err, scope, body, origin)
        try:
            try:
                query = scope.get("query_string", b"").decode("utf-8")
            except UnicodeDecodeError:
                raise PayloadError("malformed_request", "the query string is not UTF-8") from None
            groups = kind.parse(query, body, self.limits)
        except PayloadError as err:
            return await self._reject(send, kind, err, scope, body, origin)

        # site, signature and origin checks come before anything is written: a refused request writes no payload
        sites: list[SiteSettings] = []
        verified = False
        for group in groups:
            site = self._sites.get(group.site_id)
            if site is None:
                refused = PayloadError("site_violation", f"unknown site id '{group.site_id}'", 403, "site_id")
                return await self._reject(send, kind, refused, scope, body, origin, group.site_id)
            if signed:
                verdict = verify(self._write_keys[site.site_id], body if kind.reads_body else scope.get(
                    "query_string", b""), headers.get("x-leadstream-timestamp"), headers.get("x-leadstream-signature"),
                    window_s=self.cfg.signature_window_s)
                if verdict is not Verdict.valid:  # a failed signature counts against the client IP's limit
                    wait = self._ip_buckets.take(ip or "") if self._ip_buckets.enabled else 0.0
                    if wait:
                        return await self._limited_answer(send, "ip", "", wait, origin)
                    refused = PayloadError("origin_violation", _SIGNATURE_PROBLEM[verdict].format(
                        site=site.site_id, window=self.cfg.signature_window_s), 403)
                    return await self._reject(send, kind, refused, scope, body, origin, site.site_id)
                verified = True
            elif not site.allows_origin(origin) and not _same_origin(origin, headers.get("host")):
                refused = PayloadError("origin_violation",
                                       f"origin '{origin}' may not send events for site '{group.site_id}'", 403)
                return await self._reject(send, kind, refused, scope, body, origin, group.site_id)
            elif site.require is RequireMode.signature:
                refused = PayloadError("origin_violation", f"site '{site.site_id}' accepts only requests signed "
                                       "with its write key (X-Leadstream-Signature)", 403)
                return await self._reject(send, kind, refused, scope, body, origin, site.site_id)
            elif site.require is RequireMode.origin and origin is None:
                refused = PayloadError("origin_violation", f"site '{site.site_id}' requires an Origin header from "
                                       "its allowed origins, or a signed request", 403)
                return await self._reject(send, kind, refused, scope, body, origin, site.site_id)
            sites.append(site)
        if self._site_buckets.enabled:
            for site_id in dict.fromkeys(site.site_id for site in sites):
                wait = self._site_buckets.take(site_id)
                if wait:
                    return await self._limited_answer(send, "site", site_id, wait, origin)

        now = int(time.time() * 1000)
        nuid: str | None = None
        set_cookie = False
        futures: list[asyncio.Future[None]] = []
        want_ack = self.cfg.wait_for_broker
        for group, site in zip(groups, sites):
            signals = ConsentSignals.from_headers(headers, group.anonymous)
            action, signal = consent_action(site.consent, signals) if signals.any else (ConsentAction.ignore, None)
            if action is ConsentAction.drop:
                self._count_consent(site.site_id, signal or "", "drop")
                self.bad_row(FailureType.consent_dropped.value, f"consent signal '{signal}' is set to drop: "
                             "nothing of this hit is recorded", site.site_id, kind.source, b"",
                             {"signal": signal or ""})
                continue
            anonymous = action is ConsentAction.anonymize
            payload_id = fast_uuid4()
            # the tracker protocol's `ip`: a signed (server-side) request names its user's address
            claimed_ip = _take_ip_field(group)
            kept = kept_headers(headers)
            if anonymous:
                self._count_consent(site.site_id, signal or "", "anonymize")
                for event in group.events:
                    anonymize_event(event)
                visitor_id = None
                network_user_id = None
                client = None
                referer = scrub_url(headers.get("referer"))
                kept = {k: v for k, v in kept.items() if k in ANONYMOUS_HEADERS}
                key = visitor_key(group.site_id, payload_id)
            else:
                if nuid is None:
                    nuid = read_cookie(headers.get("cookie"), self.cookie.name)
                    if nuid is None:
                        nuid = random_uuid4()
                set_cookie = True
                network_user_id = nuid
                visitor_id = group.domain_user_id or nuid
                client = claimed_ip if verified and claimed_ip else ip
                referer = headers.get("referer")
                key = visitor_key(group.site_id, visitor_id)
            if verified:
                kept[VERIFIED_HEADER] = VERIFIED_BY_SIGNATURE
            payload = {
                "payload_id": payload_id, "site_id": group.site_id, "visitor_id": visitor_id,
                "network_user_id": network_user_id, "client_ip": client,
                "user_agent": headers.get("user-agent"), "referer": referer, "origin": origin,
                "accept_language": headers.get("accept-language"), "headers": kept,
                "collector_tstamp": now, "source": kind.source, "consent": "anonymous" if anonymous else "full",
                "collector": self.collector_name, "events": group.events,
            }
            try:
                future = self.sink.submit(payload, key, want_ack)
            except BrokerUnavailable:
                return await self._unavailable(send, origin, sites)
            except RecordTooLarge as exc:
                too_large = PayloadError("size_violation", f"an event is too large to store: {exc}", 413)
                return await self._reject(send, kind, too_large, scope, body, origin, group.site_id)
            except ValueError as exc:
                invalid = PayloadError("schema_violation", f"the events do not fit the Event schema: {exc}", 400)
                return await self._reject(send, kind, invalid, scope, body, origin, group.site_id)
            if future is not None:
                futures.append(future)
        for future in futures:
            try:
                await future
            except BrokerUnavailable:
                return await self._unavailable(send, origin, sites)
            except RecordTooLarge as exc:
                too_large = PayloadError("size_violation", f"an event is too large to store: {exc}", 413)
                return await self._reject(send, kind, too_large, scope, body, origin)
        answer: list[tuple[bytes, bytes]] = [kind.ok_type, _NO_CACHE]
        if set_cookie and nuid is not None:
            answer.append((b"set-cookie", self.cookie.header(nuid)))
        self._cors(answer, origin, sites)
        await self._send(send, 200, kind.ok_body, answer)
        return 200

    async def _preflight(self, send: Send, origin: str | None) -> int:
        headers = [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                   (b"access-control-allow-headers", _ALLOW_HEADERS), (b"access-control-max-age", b"86400")]
        self._cors(headers, origin)
        await self._send(send, 204, b"", headers)
        return 204

    async def _unavailable(self, send: Send, origin: str | None, sites: list[SiteSettings] | None = None) -> int:
        await self._error(send, 503, "broker_unavailable",
                          f"the event store is unavailable; retry in {self.cfg.retry_after_s}s", origin,
                          [(b"retry-after", self.retry_after)], sites)
        return 503


_SIGNATURE_PROBLEM: Final = {
    Verdict.invalid: "the request signature is not valid for site '{site}' (X-Leadstream-Timestamp and "
                     "X-Leadstream-Signature: sha256=HMAC of '<timestamp>.<body or query string>')",
    Verdict.expired: "the request signature expired: X-Leadstream-Timestamp is more than {window} s from the "
                     "collector's clock",
    Verdict.no_key: "site '{site}' has no write_keys: it cannot accept signed requests",
    Verdict.unsigned: "the request is not signed",
}


def _take_ip_field(group: EventGroup) -> str | None:
    """The tracker protocol's ``ip`` field (Snowplow ``ip``), removed from every event's ``extra``.

    Only a signed request may use it (the caller decides); a value that is not an IP address is ignored.
    """
    found: str | None = None
    for event in group.events:
        extra = event.get("extra")
        if extra and "ip" in extra:
            value = extra.pop("ip")
            if found is None and isinstance(value, str):
                address = parse_ip(value)
                found = str(address) if address is not None else None
    return found


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _same_origin(origin: str | None, host: str | None) -> bool:
    """A page served by the collector itself (the demo page) posting back to it."""
    if not origin or not host:
        return False
    _, _, rest = origin.partition("://")
    return rest.lower() == host.lower()


def _raw_request(scope: Scope, body: bytes) -> bytes:
    """The original request as a bad row keeps it: request line, then the body."""
    query: bytes = scope.get("query_string", b"")
    path: bytes = scope.get("raw_path") or str(scope.get("path", "")).encode("utf-8", "replace")
    line = str(scope.get("method", "GET")).encode() + b" " + path
    if query and b"?" not in line:
        line += b"?" + query
    return line + b"\n\n" + body if body else line


async def _read_body(receive: Receive, limit: int, content_length: str | None,
                     keep: int) -> tuple[bytes, bool, int]:
    """The request body, whether it is complete, and its size.

    A body larger than ``limit`` (declared or streamed) is not read past the
    first ``keep`` bytes (what a bad row keeps); the size is then the declared
    one, or what was read before giving up.
    """
    declared = -1
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            declared = -1
    if declared > limit:
        limit = -1  # refused already: read only what the bad row keeps
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            chunks.append(chunk)
            if limit < 0 and size >= keep:
                return b"".join(chunks), False, max(declared, size)
            if 0 <= limit < size:
                return b"".join(chunks), False, max(declared, size)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body, limit >= 0, max(declared, size)


class _IngestEndpoint:
    """A raw ASGI endpoint for one protocol (Starlette routes a class instance to it as an ASGI app)."""

    def __init__(self, collector: Collector, kind: _Kind) -> None:
        self.collector = collector
        self.kind = kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.collector.handle(self.kind, scope, receive, send)


def _static_pixel_js() -> bytes:
    data: bytes = resources.files("pipeline.collector").joinpath("static/pixel.js").read_bytes()
    return data


class _PixelJs:
    """``GET /pixel.js``: the tracking snippet, cacheable, with an ETag for revalidation."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.body = _static_pixel_js()
        self.etag = b'"' + hashlib.sha256(self.body).hexdigest()[:16].encode() + b'"'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = [(b"content-type", b"application/javascript; charset=utf-8"),
                   (b"cache-control", b"public, max-age=3600, stale-while-revalidate=86400"),
                   (b"etag", self.etag), (b"access-control-allow-origin", b"*")]
        inm = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        if inm is not None and self.etag in inm:
            await self.collector._send(send, 304, b"", headers)
            self.collector._observe("pixel.js", 304, started)
            return
        await self.collector._send(send, 200, self.body if scope["method"] != "HEAD" else b"", headers)
        self.collector._observe("pixel.js", 200, started)


def create_app(settings: Settings, producer_factory: ProducerFactory | None = None) -> Starlette:
    """The collector app. ``producer_factory(settings)`` builds its sink (default: :class:`BatchingProducer`).

    The sink is started and stopped by the app's lifespan; while the broker is
    unreachable the app still serves, answering ingest requests 503.
    """
    sink = (producer_factory or BatchingProducer)(settings)
    collector = Collector(settings, sink)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sink.start()
        try:
            yield
        finally:
            await sink.stop()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def sink_health(request: Request) -> Response:
        if sink.broker_up:
            return JSONResponse({"status": "ok"})
        reason = getattr(sink, "down_reason", "") or "unreachable"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503,
                            headers={"Retry-After": str(settings.collector.retry_after_s)})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def demo(request: Request) -> Response:
        site_id = request.path_params["site_id"]
        if settings.site(site_id) is None:
            return JSONResponse({"error": "site_violation", "message": f"unknown site id '{site_id}'"},
                                status_code=404)
        return HTMLResponse(demo_page(settings, site_id, collector_url=str(request.base_url).rstrip("/")))

    post = ["POST", "OPTIONS"]
    get = ["GET", "HEAD"]
    ingest_routes = [
        Route("/collect", _IngestEndpoint(collector, COLLECT_KIND), methods=post),
        Route("/p.gif", _IngestEndpoint(collector, PIXEL_GIF_KIND), methods=get),
        Route("/i", _IngestEndpoint(collector, SNOWPLOW_GET_KIND), methods=get),
        Route(SNOWPLOW_TP2_PATH, _IngestEndpoint(collector, SNOWPLOW_POST_KIND), methods=post),
        Route("/ice.png", _IngestEndpoint(collector, SNOWPLOW_GET_KIND), methods=get),
    ]
    routes = [
        *ingest_routes,
        Route("/pixel.js", _PixelJs(collector), methods=get),
        Route("/health", health, methods=get),
        Route("/sink-health", sink_health, methods=get),
        Route("/metrics", metrics_endpoint, methods=get),
        Route("/demo/{site_id}", demo, methods=get),
    ]
    hot: dict[str, tuple[ASGIApp, frozenset[str]]] = {
        route.path: (route.endpoint, frozenset(route.methods or ())) for route in ingest_routes}
    app = HotPathStarlette(routes=routes, lifespan=lifespan, hot_routes=hot)
    app.state.collector = collector
    app.state.sink = sink
    return app


__all__ = ["create_app", "Collector", "HotPathStarlette", "ProducerFactory", "PIXEL_GIF", "SNOWPLOW_TP2_PATH"]
