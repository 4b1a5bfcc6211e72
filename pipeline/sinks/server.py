"""The sinks process's small HTTP server: ``/metrics`` (Prometheus), ``/health``, and the routes the
email sinks add (unsubscribe pages, the inbound-parse webhook: :mod:`.inbound`)."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Health = Callable[[], tuple[bool, dict[str, Any]]]


Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


async def serve_http(host: str, port: int, health: Health, routes: list[Route] | None = None,
                     max_body_bytes: int = 1024 ** 2) -> Callable[[], Awaitable[None]]:
    """Start serving; returns the coroutine function that stops it."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        ok, detail = health()
        return web.Response(status=200 if ok else 503, text=json.dumps({"ok": ok, **detail}),
                            content_type="application/json")

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", healthz)
    for method, path, handler in routes or ():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner.cleanup
