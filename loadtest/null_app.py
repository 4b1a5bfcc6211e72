"""The collector benchmark's baseline: the same server stack (uvicorn, uvloop, httptools,
Starlette) answering the same 1x1 GIF with the same headers, doing nothing else."""

from __future__ import annotations

import argparse
import base64

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
HEADERS = {"Cache-Control": "no-cache, no-store, must-revalidate"}


async def pixel(request: object) -> Response:
    return Response(GIF, media_type="image/gif", headers=HEADERS)


app = Starlette(routes=[Route("/i", pixel), Route("/p.gif", pixel)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, server_header=False, date_header=False)
