"""Signed requests from server-side trackers: HMAC-SHA256 with a site's write key.

A server-side tracker (your backend, which knows who the user is) signs each
request so the collector can believe it. The scheme (README "Trust model")::

    X-Leadstream-Timestamp: <unix seconds>
    X-Leadstream-Signature: sha256=<hex HMAC-SHA256(write key, "<timestamp>." + message)>

The message is the request body for POST (``/collect``, Snowplow ``tp2``) and the
raw query string (the bytes after ``?``) for GET. The collector refuses a
signature whose timestamp is more than ``collector.signature_window_s`` (300 s)
from its clock, so a captured request cannot be replayed later.

Only a signed request may assert a verified identity (its identify / user id
links get the site's ``verified_confidence``) and set the client IP with the
tracker protocol's ``ip`` field. :func:`sign_headers` is the helper to copy into
a tracker; it needs only the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from enum import Enum

TIMESTAMP_HEADER = "X-Leadstream-Timestamp"
SIGNATURE_HEADER = "X-Leadstream-Signature"
_PREFIX = "sha256="


def sign_headers(write_key: str, message: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two headers that sign ``message`` (the POST body, or the GET query string) with ``write_key``.

    Copy this function into a server-side tracker::

        import hashlib, hmac, time
        def sign_headers(write_key: str, message: bytes, timestamp: int | None = None) -> dict[str, str]:
            ts = str(int(time.time()) if timestamp is None else timestamp)
            mac = hmac.new(write_key.encode(), ts.encode() + b"." + message, hashlib.sha256).hexdigest()
            return {"X-Leadstream-Timestamp": ts, "X-Leadstream-Signature": "sha256=" + mac}
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(write_key.encode(), ts.encode() + b"." + message, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: _PREFIX + mac}


class Verdict(str, Enum):
    unsigned = "unsigned"      # no signature headers
    valid = "valid"
    invalid = "invalid"        # malformed, or no write key of the site made it
    expired = "expired"        # the timestamp is outside the replay window
    no_key = "no_key"          # the site has no write keys


def verify(write_keys: Iterable[str], message: bytes, timestamp: str | None, signature: str | None, *,
           window_s: int, now: float | None = None) -> Verdict:
    """Whether ``signature`` signs ``message`` at ``timestamp`` with one of ``write_keys`` (constant time)."""
    if timestamp is None and signature is None:
        return Verdict.unsigned
    if timestamp is None or signature is None:
        return Verdict.invalid
    ts = timestamp.strip()
    if not ts.isdigit() or len(ts) > 12:
        return Verdict.invalid
    sig = signature.strip()
    if sig.startswith(_PREFIX):
        sig = sig[len(_PREFIX):]
    sig = sig.lower()
    if len(sig) != 64:
        return Verdict.invalid
    keys = list(write_keys)
    if not keys:
        return Verdict.no_key
    current = time.time() if now is None else now
    if abs(current - int(ts)) > window_s:
        return Verdict.expired
    signed = ts.encode() + b"." + message
    ok = False
    for key in keys:  # every key is tried: the time taken does not tell which one matched
        mac = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(mac, sig) or ok
    return Verdict.valid if ok else Verdict.invalid


__all__ = ["sign_headers", "verify", "Verdict", "TIMESTAMP_HEADER", "SIGNATURE_HEADER"]
