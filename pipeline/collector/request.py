"""What the collector reads from an HTTP request besides its events (pure, no I/O).

Headers, the client IP (``X-Forwarded-For`` only from trusted proxies), the
first-party network user id cookie, the consent signals and the action a
site's policy takes on them. Each function is small and allocation-light: it
runs once per request on the collector's hot path.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..settings import CollectorSettings, ConsentAction, ConsentSettings, IPNetwork

#: Headers the collector reads (uvicorn gives lower-case names).
_READ: Final = frozenset({
    b"origin", b"cookie", b"user-agent", b"referer", b"accept-language", b"sec-gpc", b"dnt",
    b"sp-anonymous", b"x-leadstream-anonymous", b"x-forwarded-for", b"content-length", b"host",
    b"x-leadstream-timestamp", b"x-leadstream-signature",
})
#: Headers copied into ``CollectorPayload.headers`` for later stages (besides client hints ``sec-ch-*``).
KEPT_HEADERS: Final = frozenset({"sec-gpc", "dnt", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest",
                                 "save-data", "x-forwarded-proto", "content-type"})
_KEPT_BYTES: Final = frozenset(h.encode() for h in KEPT_HEADERS)


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers the collector uses, by lower-case name. Repeated headers are joined as HTTP allows."""
    out: dict[str, str] = {}
    for name, value in raw:
        if name in _READ or name in _KEPT_BYTES or name.startswith(b"sec-ch-"):
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            previous = out.get(key)
            if previous is None:
                out[key] = text
            elif key == "cookie":
                out[key] = f"{previous}; {text}"
            else:
                out[key] = f"{previous}, {text}"
    return out


def oversized_header(raw: Iterable[tuple[bytes, bytes]], max_chars: int, max_total: int) -> tuple[str, int] | None:
    """(name, length) of the first header value longer than ``max_chars`` (``Cookie``: four times
    that, browsers send every cookie of the domain), or ("(all headers)", total) when the headers
    together pass ``max_total`` bytes; None when every header fits. Every header counts, read or not."""
    total = 0
    for name, value in raw:
        n = len(value)
        total += n + len(name)
        if n > (max_chars * 4 if name == b"cookie" else max_chars):
            return name.decode("latin-1"), n
    if total > max_total:
        return "(all headers)", total
    return None


def kept_headers(headers: dict[str, str]) -> dict[str, str]:
    """The subset of ``headers`` stored on the payload (client hints, consent and fetch metadata)."""
    return {k: v for k, v in headers.items() if k in KEPT_HEADERS or k.startswith("sec-ch-")}


# --------------------------------------------------------------------------------------------
# client IP
# --------------------------------------------------------------------------------------------

def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from an XFF hop or a socket peer: tolerates ``[v6]:port``, ``v4:port`` and zone ids."""
    text = text.strip().strip('"')
    if not text:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    if "%" in text:
        text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


#: An address from a header value or a tracker's ``ip`` field (public name for :func:`_parse_ip`).
parse_ip = _parse_ip


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str | None:
    """The client's IP address.

    The socket peer, unless the peer is a trusted proxy: then ``X-Forwarded-For``
    is walked right to left, skipping trusted proxies, and the first address
    that is not one is the client (the hops left of it were written by the
    client and are not believed). If every hop is trusted, the leftmost is
    the client. A malformed hop stops the walk at the last good address.
    """
    if not trusted or not forwarded_for or peer is None:
        return peer
    peer_address = _parse_ip(peer)
    if peer_address is None or not _trusted(peer_address, trusted):
        return peer
    client = peer_address
    for hop in reversed(forwarded_for.split(",")):
        address = _parse_ip(hop)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return str(client)


# --------------------------------------------------------------------------------------------
# network user id cookie
# --------------------------------------------------------------------------------------------

_COOKIE_VALUE: Final = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def read_cookie(cookie_header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` if it is a well-formed id (8-64 of ``[A-Za-z0-9_-]``), else None."""
    if not cookie_header:
        return None
    prefix = name + "="
    for part in cookie_header.split(";"):
        part = part.strip()
        if part.startswith(prefix):
            value = part[len(prefix):].strip('"')
            return value if _COOKIE_VALUE.match(value) else None
    return None


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """Builds the ``Set-Cookie`` header for the network user id (its attributes computed once)."""
    name: str
    attributes: str

    @classmethod
    def from_settings(cls, settings: CollectorSettings) -> "CookiePolicy":
        parts = [f"Max-Age={settings.cookie_max_age_days * 86400}", "Path=/"]
        if settings.cookie_domain:
            parts.append(f"Domain={settings.cookie_domain}")
        # Cross-site requests (the collector on another site than the page) need SameSite=None,
        # which browsers accept only with Secure; over plain HTTP only Lax works.
        parts.append("SameSite=None; Secure" if settings.cookie_secure else "SameSite=Lax")
        parts.append("HttpOnly")
        return cls(settings.cookie_name, "; ".join(parts))

    def header(self, value: str) -> bytes:
        return f"{self.name}={value}; {self.attributes}".encode("latin-1")


# --------------------------------------------------------------------------------------------
# consent
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConsentSignals:
    """Which privacy signals a request carries."""
    gpc: bool = False
    dnt: bool = False
    anonymous: bool = False

    @classmethod
    def from_headers(cls, headers: dict[str, str], body_flag: bool = False) -> "ConsentSignals":
        """``Sec-GPC: 1``, ``DNT: 1``, ``SP-Anonymous: *`` / ``X-Leadstream-Anonymous: 1`` (or the body flag)."""
        gpc = headers.get("sec-gpc", "").strip() == "1"
        dnt = headers.get("dnt", "").strip() == "1"
        anonymous = (body_flag or headers.get("sp-anonymous", "").strip() == "*"
                     or headers.get("x-leadstream-anonymous", "").strip().lower() in ("1", "true"))
        return cls(gpc, dnt, anonymous)

    @property
    def any(self) -> bool:
        return self.gpc or self.dnt or self.anonymous


NO_SIGNALS: Final = ConsentSignals()


def consent_action(policy: ConsentSettings, signals: ConsentSignals) -> tuple[ConsentAction, str | None]:
    """The strictest action the site's policy takes on the signals present, and the signal that chose it.

    ``drop`` beats ``anonymize`` beats ``ignore``; no signal (or only ignored
    ones) gives ``ignore`` and None.
    """
    best, signal = ConsentAction.ignore, None
    for present, action, name in ((signals.gpc, policy.gpc, "gpc"), (signals.dnt, policy.dnt, "dnt"),
                                  (signals.anonymous, policy.anonymous_header, "anonymous_header")):
        if not present:
            continue
        if action is ConsentAction.drop:
            return action, name
        if action is ConsentAction.anonymize and best is ConsentAction.ignore:
            best, signal = action, name
    return best, signal


# --------------------------------------------------------------------------------------------
# anonymize: every personal field out
# --------------------------------------------------------------------------------------------

#: Event fields that identify a person or a browser: removed when a request is anonymized.
PERSONAL_EVENT_FIELDS: Final = ("domain_user_id", "session_id", "user_id", "email", "identify_user_id",
                                "email_click_id", "properties_json", "contexts_json")
#: Event fields holding URLs: identifying query parameters are removed from them.
URL_EVENT_FIELDS: Final = ("url", "referrer", "target_url")
#: Free-text event fields: an email address in them is redacted.
TEXT_EVENT_FIELDS: Final = ("page_title", "se_category", "se_action", "se_label", "se_property", "name")
#: Query parameters that carry a person's identity (besides any parameter whose value is an email).
IDENTIFYING_PARAMS: Final = frozenset({
    "ls_eid", "email", "e-mail", "mail", "uid", "user_id", "userid", "user", "mc_eid", "_hsenc",
    "_hsmi", "mkt_tok", "vero_id", "ck_subscriber_id", "sc_eh", "customer_id", "contact_id", "lead_id",
})
_EMAIL_TEXT: Final = re.compile(r"[^\s@/?&=#:;,'\"<>]+@[^\s@/?&=#;,'\"<>]+\.[A-Za-z]{2,}")
REDACTED: Final = "(redacted)"


def scrub_url(url: str | None) -> str | None:
    """``url`` without identifying query parameters and with no email address anywhere in it."""
    if not url:
        return url
    if "?" not in url and "@" not in url and "%40" not in url.lower():
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    query = parts.query
    if query:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                if k.lower() not in IDENTIFYING_PARAMS and not _EMAIL_TEXT.search(v)]
        query = urlencode(kept)
    fragment = "" if _EMAIL_TEXT.search(unquote(parts.fragment)) else parts.fragment
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user:password@host
    path = _EMAIL_TEXT.sub(REDACTED, unquote(parts.path)) if "@" in unquote(parts.path) else parts.path
    return urlunsplit((parts.scheme, netloc, path, query, fragment))


def anonymize_event(event: dict[str, Any]) -> None:
    """Remove every personal field of one event dict in place (see README "Consent")."""
    for key in PERSONAL_EVENT_FIELDS:
        event.pop(key, None)
    for key in URL_EVENT_FIELDS:
        value = event.get(key)
        if isinstance(value, str):
            event[key] = scrub_url(value)
    for key in TEXT_EVENT_FIELDS:
        value = event.get(key)
        if isinstance(value, str) and "@" in value:
            event[key] = _EMAIL_TEXT.sub(REDACTED, value)
    if event.get("extra"):
        event["extra"] = {}


#: Request headers an anonymized payload keeps (the consent signals; no client hints).
ANONYMOUS_HEADERS: Final = frozenset({"sec-gpc", "dnt", "content-type"})


# --------------------------------------------------------------------------------------------
# rate limits
# --------------------------------------------------------------------------------------------

class TokenBuckets:
    """One token bucket per key (a client IP, a site): ``rate`` tokens a second, at most ``burst``.

    In memory, per collector process. At most ``max_keys`` buckets are kept; the least
    recently used goes first (a full bucket is what a new key gets anyway).
    """

    __slots__ = ("rate", "burst", "max_keys", "clock", "_buckets")

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0.0 when a token was taken, else the seconds until the next one (the caller answers 429)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        found = self._buckets.pop(key, None)
        if found is None:
            tokens = self.burst
            if len(self._buckets) >= self.max_keys:
                del self._buckets[next(iter(self._buckets))]
        else:
            tokens = min(self.burst, found[0] + (now - found[1]) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
