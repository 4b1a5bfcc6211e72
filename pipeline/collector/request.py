"""What the collector reads from an HTTP request besides its events (pure, no I/O).

Headers, the client IP (``X-Forwarded-For`` only from trusted proxies), the
first-party network user id cookie, the consent signals and the action a
site's policy takes on them. Each function is small and allocation-light: it
runs once per request on the collector's hot path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ..settings import CollectorSettings, ConsentAction, ConsentSettings, IPNetwork

#: Headers the collector reads (uvicorn gives lower-case names).
_READ: Final = frozenset({
    b"origin", b"cookie", b"user-agent", b"referer", b"accept-language", b"sec-gpc", b"dnt",
    b"sp-anonymous", b"x-leadstream-anonymous", b"x-forwarded-for", b"content-length", b"host",
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
