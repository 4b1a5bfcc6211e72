"""Fixtures of the collector's unit tier: the app on an in-memory sink, driven through httpx's ASGI transport."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from pipeline.collector import create_app
from pipeline.settings import Settings

from .memory_sink import MemorySink, make_settings

Client = tuple[httpx.AsyncClient, MemorySink]
MakeClient = Callable[..., Awaitable[Client]]
PEER = ("203.0.113.9", 5000)


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """``await make_client(settings=None, peer=PEER)`` -> (client on the started app, its MemorySink)."""
    async with contextlib.AsyncExitStack() as stack:

        async def build(settings: Settings | None = None, peer: tuple[str, int] = PEER) -> Client:
            sinks: list[MemorySink] = []

            def factory(s: Settings) -> MemorySink:
                sinks.append(MemorySink(s))
                return sinks[-1]

            app = create_app(settings or make_settings(), producer_factory=factory)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app, client=peer)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://collector.test"))
            return client, sinks[0]

        yield build


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()
