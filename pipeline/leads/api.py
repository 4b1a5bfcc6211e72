"""The prospect list's HTTP API and page (``leadstream leads serve``), on a port of its own.

- ``GET /api/sites/{site}/leads``: the ranked list; query parameters ``tier`` (a status:
  qualified, warming, cold, filtered, customer, not_seen), ``min_fit``, ``min_intent``,
  ``country``, ``seen`` (true/false), ``q`` (domain or name contains), ``limit`` (1-200,
  default 50) and ``cursor`` (the previous answer's ``next_cursor``).
- ``GET /api/sites/{site}/accounts/{domain}``: one account in full.
- ``GET /api/sites/{site}/stream``: server-sent events, one ``change`` event per account update.
- ``GET /api/openapi.json``: this API's OpenAPI 3.1 description.
- ``GET /``: the page a salesperson opens (no build chain, nothing loaded from elsewhere).

Every ``/api/sites/...`` request needs ``Authorization: Bearer <token>`` (or, for the event
stream, which a browser's EventSource opens without headers, ``?access_token=<token>``) where the
token's sha256 is in the site's ``api_tokens``: none or an unknown token gets 401, another site's
token 403, each with a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from importlib import resources
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..settings import Settings
from .store import LeadsView
from .view import STATUSES, Filter

__all__ = ["create_api", "new_token", "token_hash", "OPENAPI"]

MAX_LIMIT = 200


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A new API token and the hash to put in the site's ``api_tokens``."""
    token = "lsk_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def _authorize(settings: Settings, request: Request, site_id: str) -> JSONResponse | None:
    """None when the bearer token may read ``site_id``, else the 401/403/404 answer."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and request.query_params.get("access_token"):
        # RFC 6750's query parameter: EventSource cannot send headers
        scheme, token = "bearer", request.query_params["access_token"]
    if scheme.lower() != "bearer" or not token.strip():
        return _error(401, "send the site's API token as 'Authorization: Bearer <token>' "
                           "(make one with `leadstream leads token --site SITE`)")
    digest = token_hash(token.strip())
    site = settings.site(site_id)
    if site is not None and any(hmac.compare_digest(digest, h) for h in site.api_tokens):
        return None
    if any(hmac.compare_digest(digest, h) for s in settings.sites for h in s.api_tokens):
        return _error(403, f"this token belongs to another site; it may not read {site_id!r}")
    return _error(401, "unknown API token")


def _filter(request: Request) -> tuple[Filter, int, str | None] | JSONResponse:
    q = request.query_params
    try:
        def number(name: str) -> float | None:
            text = q.get(name)
            if text is None or text == "":
                return None
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{name} must be a number between 0 and 100, not {text!r}") from None
            if not 0 <= value <= 100:
                raise ValueError(f"{name} must be between 0 and 100")
            return value

        seen_text = q.get("seen")
        seen = None if seen_text in (None, "") else {"true": True, "false": False}.get(seen_text.lower())
        if seen_text not in (None, "") and seen is None:
            raise ValueError("seen must be true or false")
        limit = int(q.get("limit") or 50)
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        f = Filter(status=q.get("tier") or None, min_fit=number("min_fit"), min_intent=number("min_intent"),
                   country=q.get("country") or None, seen=seen, query=q.get("q") or None)
        cursor = q.get("cursor") or None
        if cursor is not None:
            score, sep, account = cursor.partition("|")
            try:
                cursor_score = float(score)
            except ValueError:
                cursor_score = float("nan")
            if not sep or not account or cursor_score != cursor_score:
                raise ValueError("cursor must be the next_cursor of a previous answer")
    except ValueError as exc:
        return _error(400, str(exc))
    return f, limit, cursor


def create_api(settings: Settings, view: LeadsView) -> Starlette:
    Handler = Callable[[Request, str], Awaitable[Response]]

    def site_route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            site_id = request.path_params["site"]
            denied = _authorize(settings, request, site_id)
            if denied is not None:
                return denied
            if settings.site(site_id) is None:
                return _error(404, f"site {site_id!r} is not configured")
            return await handler(request, site_id)
        return endpoint

    async def leads(request: Request, site_id: str) -> Response:
        parsed = _filter(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        f, limit, cursor = parsed
        page = await view.list(site_id, f, limit=limit, cursor=cursor, now_ms=int(time.time() * 1000))
        rank0 = int(request.query_params.get("rank_from") or 0)
        for i, row in enumerate(page.rows, start=rank0 + 1):
            row["rank"] = i
            row.pop("cursor", None)
            row.pop("priority_key", None)
        return JSONResponse({"site_id": site_id, "count": len(page.rows), "next_cursor": page.next_cursor,
                             "total": await view.count(site_id), "leads": page.rows})

    async def account(request: Request, site_id: str) -> Response:
        domain = request.path_params["domain"].lower()
        doc = await view.account(site_id, domain)
        if doc is None:
            return _error(404, f"no account {domain!r} in {site_id}'s list")
        doc.pop("priority_key", None)
        return JSONResponse(doc)

    async def stream(request: Request, site_id: str) -> Response:
        async def events() -> AsyncIterator[bytes]:
            pubsub = view.client.pubsub()
            await pubsub.subscribe(view.keys(site_id).changes)
            try:
                yield b": connected\n\n"
                last_ping = time.monotonic()
                while True:
                    if await request.is_disconnected():
                        break
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        data = message["data"]
                        rows = json.loads(data.decode() if isinstance(data, bytes) else str(data))
                        for row in rows:  # one message per update batch, one event per account
                            row.pop("priority_key", None)
                            yield f"event: change\ndata: {json.dumps(row, separators=(',', ':'))}\n\n".encode()
                    elif time.monotonic() - last_ping > 15:
                        last_ping = time.monotonic()
                        yield b": ping\n\n"
            finally:
                await pubsub.unsubscribe()
                await pubsub.aclose()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def page(request: Request) -> Response:
        html = resources.files("pipeline.leads").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": "default-src 'self'; style-src 'self' "
                                                                      "'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    async def health(request: Request) -> Response:
        try:
            await asyncio.wait_for(view.client.ping(), 2)
        except Exception as exc:  # noqa: BLE001 - any Redis failure is "unhealthy"
            return JSONResponse({"status": "redis unavailable", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics_page(request: Request) -> Response:
        from ..metrics import exposition
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/sites/{site}/leads", site_route(leads), methods=["GET"]),
        Route("/api/sites/{site}/accounts/{domain}", site_route(account), methods=["GET"]),
        Route("/api/sites/{site}/stream", site_route(stream), methods=["GET"]),
    ]
    return Starlette(routes=routes)


_ERR = {"description": "An error, with a message", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}
_SITE = {"name": "site", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Leadstream prospect list", "version": "1",
             "description": "Ranked accounts per site, with the people seen and the reason. Authenticate with "
                            "`Authorization: Bearer <token>`, a token whose sha256 is in the site's api_tokens."},
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Person": {"type": "object", "properties": {
                "person_id": {"type": "string"}, "name": {"type": ["string", "null"]},
                "title": {"type": ["string", "null"]}, "confidence": {"type": ["number", "null"]}}},
            "Row": {"type": "object", "required": ["rank", "account", "domain", "status", "fit", "intent", "reason"],
                    "properties": {
                        "rank": {"type": "integer"}, "account": {"type": "string"}, "domain": {"type": "string"},
                        "name": {"type": ["string", "null"]}, "status": {"type": "string", "enum": list(STATUSES)},
                        "filtered_by": {"type": ["string", "null"]}, "seen": {"type": "boolean"},
                        "tier": {"type": ["string", "null"]}, "fit": {"type": "number"},
                        "intent": {"type": "number"}, "priority": {"type": "number"},
                        "trend": {"type": "object", "properties": {"fit": {"type": "number"},
                                                                   "intent": {"type": "number"}}},
                        "last_activity": {"type": ["integer", "null"], "description": "event time, epoch ms"},
                        "country": {"type": ["string", "null"]}, "industry": {"type": ["string", "null"]},
                        "employees": {"type": ["integer", "null"]}, "visitors": {"type": "integer"},
                        "people": {"type": "array", "items": {"$ref": "#/components/schemas/Person"}},
                        "reason": {"type": "string"}}},
            "Page": {"type": "object", "required": ["site_id", "count", "leads", "next_cursor"], "properties": {
                "site_id": {"type": "string"}, "count": {"type": "integer"}, "total": {"type": "integer"},
                "next_cursor": {"type": ["string", "null"]},
                "leads": {"type": "array", "items": {"$ref": "#/components/schemas/Row"}}}},
            "Account": {"type": "object", "description": "A row plus the score's full explanation: "
                        "fit_contributions, intent_contributions, filters, sessions, pages, people, "
                        "model_version, history.", "additionalProperties": True},
        }},
    "security": [{"token": []}],
    "paths": {
        "/api/sites/{site}/leads": {"get": {
            "summary": "The ranked prospect list", "operationId": "listLeads",
            "parameters": [_SITE] + [
                {"name": n, "in": "query", "required": False, "schema": sch, "description": d} for n, sch, d in (
                    ("tier", {"type": "string", "enum": list(STATUSES)}, "only this status"),
                    ("min_fit", {"type": "number", "minimum": 0, "maximum": 100}, "fit at least"),
                    ("min_intent", {"type": "number", "minimum": 0, "maximum": 100}, "intent at least"),
                    ("country", {"type": "string", "pattern": "^[A-Za-z]{2}$"}, "ISO country code"),
                    ("seen", {"type": "boolean"}, "false: only ICP accounts not seen yet"),
                    ("q", {"type": "string"}, "domain or name contains"),
                    ("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "rows per page"),
                    ("cursor", {"type": "string"}, "next_cursor of the previous page"))],
            "responses": {"200": {"description": "A page of the list", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Page"}}}}, "400": _ERR, "401": _ERR, "403": _ERR,
                "404": _ERR}}},
        "/api/sites/{site}/accounts/{domain}": {"get": {
            "summary": "One account in full", "operationId": "getAccount",
            "parameters": [_SITE, {"name": "domain", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The account", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Account"}}}}, "401": _ERR, "403": _ERR, "404": _ERR}}},
        "/api/sites/{site}/stream": {"get": {
            "summary": "Server-sent events: one `change` event (a Row without rank) per account update",
            "operationId": "streamChanges", "parameters": [_SITE],
            "responses": {"200": {"description": "text/event-stream", "content": {"text/event-stream": {
                "schema": {"type": "string"}}}}, "401": _ERR, "403": _ERR, "404": _ERR}}},
    },
}
