"""The collector benchmark's baseline: the collector's own app shape, doing nothing.

A :class:`~pipeline.collector.app.HotPathStarlette` (Starlette, whose exact
ingest paths are dispatched to raw ASGI endpoints ahead of its middleware and
router, as the collector's are) on the same server stack (uvicorn, uvloop,
httptools, the same uvicorn options as ``pipeline.collector.server``). Its
``/i`` and ``/p.gif`` answer the same 1x1 GIF with the same headers through
the same ``send`` calls and read nothing: no parsing, no Kafka. The ratio
collector / null app is then the cost of the collector's own work, not of a
difference in framework path.
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pipeline.collector.app import PIXEL_GIF, HotPathStarlette

HEADERS = [(b"content-type", b"image/gif"), (b"cache-control", b"no-cache, no-store, must-revalidate"),
           (b"content-length", str(len(PIXEL_GIF)).encode())]


async def pixel(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": list(HEADERS)})
    await send({"type": "http.response.body", "body": PIXEL_GIF})


class _Pixel:  # a class instance, so Starlette's Route treats it as a raw ASGI app (as the collector's)
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await pixel(scope, receive, send)


class _WaitingPixel:
    """The same answer after waiting, like the collector, for an acknowledgement that costs nothing.

    Each request parks on a future; the futures of all requests parked in one event-loop pass
    are resolved together on the next pass (an instant, perfectly batched "broker"). Its rate is
    the ceiling of any collector that answers only after an acknowledgement, on this stack.
    """

    def __init__(self) -> None:
        self._parked: list[asyncio.Future[None]] = []

    def _release(self) -> None:
        parked, self._parked = self._parked, []
        for future in parked:
            future.set_result(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        future = asyncio.get_running_loop().create_future()
        if not self._parked:
            asyncio.get_running_loop().call_soon(self._release)
        self._parked.append(future)
        await future
        await pixel(scope, receive, send)


def make_app(waiting: bool = False) -> HotPathStarlette:
    endpoint = _WaitingPixel() if waiting else _Pixel()
    get = ["GET", "HEAD"]
    routes = [Route("/i", endpoint, methods=get), Route("/p.gif", endpoint, methods=get)]
    return HotPathStarlette(routes=routes,
                            hot_routes={r.path: (r.endpoint, frozenset(r.methods or ())) for r in routes})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wait", action="store_true", help="park each request until the next loop pass")
    args = parser.parse_args()
    uvicorn.run(make_app(args.wait), host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, proxy_headers=False, server_header=False, date_header=False,
                timeout_keep_alive=30)
