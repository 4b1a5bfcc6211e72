"""Standard Webhooks signing, verified with the receivers' own library (PyPI `standardwebhooks`)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pipeline.codec import schemas_dir
from pipeline.settings import WebhookSinkSettings
from pipeline.sinks.base import Delivered, Failed
from pipeline.sinks.webhook import WebhookSink, signed_headers, webhook_body

LEAD = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()


def test_signature_verifies_with_standardwebhooks() -> None:
    body = webhook_body(LEAD)
    headers = signed_headers(LEAD["lead_id"], body, [NEW], now=int(__import__("time").time()))
    payload = Webhook(NEW).verify(body, headers)
    assert payload["type"] == "lead.qualified" and payload["data"] == LEAD
    assert headers["webhook-id"] == LEAD["lead_id"] and headers["webhook-signature"].startswith("v1,")


def test_during_a_rotation_both_secrets_verify_and_a_third_does_not() -> None:
    import time
    body = webhook_body(LEAD)
    headers = signed_headers(LEAD["lead_id"], body, [OLD, NEW], now=int(time.time()))
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(OLD).verify(body, headers)
    Webhook(NEW).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)


def test_a_changed_body_or_an_old_timestamp_fails_verification() -> None:
    import time
    body = webhook_body(LEAD)
    headers = signed_headers(LEAD["lead_id"], body, [NEW], now=int(time.time()))
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(body.replace(b"A2", b"A1"), headers)
    stale = signed_headers(LEAD["lead_id"], body, [NEW], now=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(body, stale)


def test_body_is_deterministic_for_retries() -> None:
    assert webhook_body(LEAD) == webhook_body(json.loads(json.dumps(LEAD)))


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[int]]]:
    """A receiver answering the statuses queued in the list (204 when empty), or hanging on 0."""
    import asyncio

    from aiohttp import web
    answers: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        Webhook(NEW).verify(await request.read(), dict(request.headers))
        status = answers.pop(0) if answers else 204
        if status == 0:
            await asyncio.sleep(1)
        return web.Response(status=status or 204, headers={"Retry-After": "7"} if status == 429 else {})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", answers
    await runner.cleanup()


@pytest.mark.parametrize("status, retryable", [(408, True), (429, True), (500, True), (503, True),
                                               (400, False), (401, False), (404, False), (410, False)])
async def test_retries_on_408_429_and_5xx_only(endpoint: tuple[str, list[int]], status: int,
                                               retryable: bool) -> None:
    url, answers = endpoint
    sink = WebhookSink(WebhookSinkSettings(name="w", url=url, secrets=[NEW]))  # type: ignore[list-item]
    answers.append(status)
    outcome = await sink.deliver(LEAD)
    assert isinstance(outcome, Failed) and outcome.retryable is retryable and outcome.status_code == status
    assert (outcome.retry_after_s == 7) if status == 429 else outcome.retry_after_s is None
    assert isinstance(await sink.deliver(LEAD), Delivered)
    await sink.aclose()


async def test_a_timeout_is_a_retryable_failure(endpoint: tuple[str, list[int]]) -> None:
    url, answers = endpoint
    sink = WebhookSink(WebhookSinkSettings(name="w", url=url, secrets=[NEW], timeout_s=0.3))  # type: ignore[list-item]
    answers.append(0)
    outcome = await sink.deliver(LEAD)
    assert isinstance(outcome, Failed) and outcome.retryable and "timeout" in outcome.error
    await sink.aclose()


async def test_connection_refused_is_retryable() -> None:
    from pipeline.local.kafka import free_port
    sink = WebhookSink(WebhookSinkSettings(name="w", url=f"http://127.0.0.1:{free_port()}/x",  # type: ignore[list-item]
                                           secrets=[NEW]))
    outcome = await sink.deliver(LEAD)
    assert isinstance(outcome, Failed) and outcome.retryable
    await sink.aclose()
