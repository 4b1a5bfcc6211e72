"""Webhook sink following Standard Webhooks (standardwebhooks.com).

Each lead is one signed JSON POST::

    webhook-id: <lead id>            (the idempotency key: retries and replays send the same one)
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> [v1,<second secret's>]

with the body ``{"type": "lead.qualified", "timestamp": <lead time, ISO 8601>, "data": <the lead>}``.
Receivers verify it with any Standard Webhooks library (see README).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

from ..settings import WebhookSinkSettings
from .base import Delivered, Failed, Http, Outcome, TransportError, http_outcome, transport_failure

SECRET_PREFIX = "whsec_"
EVENT_TYPE = "lead.qualified"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret."""
    return base64.b64decode(secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret)


def sign(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    """One ``v1,<base64>`` signature of ``msg_id.timestamp.body``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """Every secret's signature, space-separated (two during a rotation)."""
    return " ".join(sign(msg_id, timestamp, body, s) for s in secrets)


def webhook_body(lead: Mapping[str, Any]) -> bytes:
    """The request body: the Standard Webhooks envelope around the full lead (deterministic)."""
    when = datetime.fromtimestamp(int(lead.get("tstamp") or 0) / 1000, tz=timezone.utc)
    envelope = {"type": EVENT_TYPE, "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "data": dict(lead)}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signed_headers(msg_id: str, body: bytes, secrets: Sequence[str], now: int) -> dict[str, str]:
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(now),
            "webhook-signature": signature_header(msg_id, now, body, secrets)}


class WebhookSink:
    kind = "webhook"

    def __init__(self, config: WebhookSinkSettings, client: Http | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._secrets = [s.get_secret_value() for s in config.secrets]
        self._client = client or Http(config.timeout_s)
        self._clock = clock

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        body = webhook_body(lead)
        headers = {**self.config.headers,
                   **signed_headers(str(lead["lead_id"]), body, self._secrets, int(self._clock()))}
        try:
            response = await self._client.request("POST", self.config.url, content=body, headers=headers)
        except TransportError as exc:
            return transport_failure(exc)
        return http_outcome(response)

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = ["Delivered", "Failed", "WebhookSink", "sign", "signature_header", "webhook_body"]
