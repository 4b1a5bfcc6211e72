"""Local receivers for the sinks' tests: a Standard Webhooks endpoint, a Slack incoming webhook, a fake
HubSpot that checks each request against HubSpot's documented shapes and answers as HubSpot does, and
(``MailReceiver``) an SMTP server that records every message (aiosmtpd).

One aiohttp app on 127.0.0.1 serves all three; ``Receivers`` runs it in a thread (integration tests,
where ``leadstream sinks`` is another process) or in the test's own loop (``start_async``).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HUBSPOT_TOKEN = "pat-na1-test-token"
SLACK_BOT_TOKEN = "xoxb-1234-5678-testtoken"
SLACK_CHANNEL = "C0LEADSTRM"
_LEAD_IN_CONTEXT = re.compile(r"lead ([0-9a-f-]{36})")


class Receivers:
    def __init__(self, webhook_secret: str = WEBHOOK_SECRET, hubspot_token: str = HUBSPOT_TOKEN) -> None:
        self.verifier = Webhook(webhook_secret)
        self.hubspot_token = hubspot_token
        self.lock = threading.Lock()
        self.webhook: list[tuple[str, float]] = []      # effects: (webhook-id, arrival epoch s), first per id
        self.webhook_requests: list[str] = []            # every verified request's webhook-id (raw, repeats too)
        self.webhook_bodies: dict[str, dict[str, Any]] = {}
        self.webhook_rejected = 0
        self.webhook_status = 200                        # what the endpoint answers
        self.webhook_delay_s = 0.0                       # a slow receiver (the burst then takes a while)
        self.answer_delay_s = 0.0                        # Slack and HubSpot writes: applied, then answered this late
        self.slack: list[tuple[str, float]] = []
        self.slack_payloads: list[dict[str, Any]] = []
        self.slack_429 = 0                               # answer this many 429s first
        self.slack_api: list[tuple[str, float]] = []     # chat.postMessage: (metadata lead id, arrival)
        self.slack_messages: list[dict[str, Any]] = []   # the channel's history, oldest first
        self.slack_api_calls: list[tuple[str, dict[str, Any]]] = []  # (method, arguments)
        self.slack_api_errors: list[str] = []            # requests Slack would refuse (shape violations)
        self.slack_api_429 = 0                           # answer this many 429s to chat.postMessage first
        self._slack_ts = 0.0
        self.hubspot_requests: list[tuple[str, str, Any]] = []
        self.hubspot_errors: list[str] = []              # shape violations found
        self.hubspot_fail: list[tuple[int, dict[str, str]]] = []  # next answers to give instead
        self.companies: dict[str, dict[str, Any]] = {}   # id -> properties
        self.contacts: dict[str, dict[str, Any]] = {}
        self.associations: set[tuple[str, str]] = set()
        self.notes: list[dict[str, Any]] = []           # notes on contacts: id, contact, hs_note_body, hs_timestamp
        self.hubspot_leads: list[tuple[str, float]] = []  # leadstream_lead_id written to a company, arrival
        self.hubspot_contact_leads: list[str] = []        # leadstream_lead_id written to a contact
        self.properties: dict[str, set[str]] = {"companies": set(), "contacts": set()}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- counts ------------------------------------------------------------------------------------
    @staticmethod
    def counts(items: list[tuple[str, float]]) -> Counter[str]:
        return Counter(i for i, _ in items)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- handlers ----------------------------------------------------------------------------------
    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = self.verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            with self.lock:
                self.webhook_rejected += 1
            return web.Response(status=400, text="bad signature")
        if self.webhook_status != 200:
            return web.Response(status=self.webhook_status, text="receiver failing on purpose")
        if self.webhook_delay_s:
            await asyncio.sleep(self.webhook_delay_s)
        msg_id = request.headers["webhook-id"]
        with self.lock:  # as the Standard Webhooks docs tell receivers: apply each webhook-id once
            self.webhook_requests.append(msg_id)
            if msg_id not in self.webhook_bodies:
                self.webhook.append((msg_id, time.time()))
                self.webhook_bodies[msg_id] = payload
        return web.Response(status=204)

    async def _slack(self, request: web.Request) -> web.Response:
        payload = await request.json()
        if self.slack_429 > 0:
            self.slack_429 -= 1
            return web.Response(status=429, text="rate_limited", headers={"Retry-After": "1"})
        if not isinstance(payload.get("blocks"), list) or not payload.get("text"):
            return web.Response(status=400, text="invalid_blocks")
        context = json.dumps(payload["blocks"][-1])
        found = _LEAD_IN_CONTEXT.search(context)
        with self.lock:
            self.slack.append((found.group(1) if found else "?", time.time()))
            self.slack_payloads.append(payload)
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        return web.Response(text="ok")

    def _hubspot_check(self, request: web.Request) -> web.Response | None:
        if request.headers.get("authorization") != f"Bearer {self.hubspot_token}":
            return web.json_response({"status": "error", "category": "INVALID_AUTHENTICATION",
                                      "message": "Authentication credentials not found."}, status=401)
        if self.hubspot_fail:
            status, headers = self.hubspot_fail.pop(0)
            return web.json_response({"status": "error", "message": "injected", "category": "RATE_LIMITS"
                                      if status == 429 else "INTERNAL_ERROR"}, status=status, headers=headers)
        return None

    def _bad(self, request: web.Request, why: str) -> web.Response:
        self.hubspot_errors.append(f"{request.method} {request.path}: {why}")
        return web.json_response({"status": "error", "category": "VALIDATION_ERROR", "message": why}, status=400)

    async def _hubspot(self, request: web.Request) -> web.Response:
        refused = self._hubspot_check(request)
        if refused is not None:
            return refused
        body = await request.json() if request.can_read_body else None
        path, method = request.path, request.method
        with self.lock:
            self.hubspot_requests.append((method, path, body))
        response = self._hubspot_answer(request, method, path, body)
        if self.answer_delay_s and method in ("POST", "PATCH", "PUT") and not path.endswith("/search"):
            await asyncio.sleep(self.answer_delay_s)
        return response

    def _hubspot_answer(self, request: web.Request, method: str, path: str, body: Any) -> web.Response:
        if method == "POST" and path == "/crm/v3/objects/companies/search":
            try:
                f = body["filterGroups"][0]["filters"][0]
                assert f["propertyName"] == "domain" and f["operator"] == "EQ"
            except (KeyError, IndexError, TypeError, AssertionError):
                return self._bad(request, "search needs filterGroups[0].filters[0] domain EQ")
            wanted = body.get("properties") or []
            if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
                return self._bad(request, "properties must be a list of property names")
            found = [self._object(i, p, wanted) for i, p in self.companies.items() if p.get("domain") == f["value"]]
            return web.json_response({"total": len(found), "results": found[:int(body.get("limit") or 10)]})
        if method == "POST" and path == "/crm/v3/objects/companies":
            props = (body or {}).get("properties")
            if not isinstance(props, dict) or not props.get("domain"):
                return self._bad(request, "properties.domain required")
            if any(p.get("domain") == props["domain"] for p in self.companies.values()):
                return web.json_response({"status": "error", "category": "CONFLICT",
                                          "message": "A company with this domain already exists"}, status=409)
            return self._write_company(str(len(self.companies) + 1001), props, 201)
        m = re.fullmatch(r"/crm/v3/objects/companies/(\d+)", path)
        if method == "PATCH" and m:
            if m.group(1) not in self.companies:
                return web.json_response({"status": "error", "category": "OBJECT_NOT_FOUND"}, status=404)
            props = (body or {}).get("properties")
            if not isinstance(props, dict):
                return self._bad(request, "properties required")
            return self._write_company(m.group(1), props, 200)
        m = re.fullmatch(r"/crm/v3/objects/contacts/([^/]+)", path)
        if method == "GET" and m and m.group(1) != "batch":
            # GET /crm/v3/objects/contacts/{contactId}?idProperty=email&properties=a,b: by email when idProperty
            # says so, else by record id; 404 OBJECT_NOT_FOUND when there is none
            key, by = m.group(1), request.query.get("idProperty")
            if by not in (None, "email"):
                return self._bad(request, "idProperty must be a unique property (email)")
            if by is None and not key.isdigit():
                return self._bad(request, "an email as contactId needs idProperty=email")
            cid = next((k for k, v in self.contacts.items() if v.get("email") == key), None) if by else \
                (key if key in self.contacts else None)
            if cid is None:
                return web.json_response({"status": "error", "category": "OBJECT_NOT_FOUND",
                                          "message": "Object not found."}, status=404)
            wanted = [w for w in request.query.get("properties", "").split(",") if w]
            return web.json_response(self._object(cid, self.contacts[cid], wanted))
        if method == "POST" and path == "/crm/v3/objects/contacts/batch/upsert":
            try:
                inputs = body["inputs"]
                assert all(i["idProperty"] == "email" and "@" in i["id"] and isinstance(i["properties"], dict)
                           for i in inputs)
            except (KeyError, TypeError, AssertionError):
                return self._bad(request, "inputs[] of {idProperty: email, id, properties}")
            results = []
            for item in inputs:
                cid = next((k for k, v in self.contacts.items() if v.get("email") == item["id"]),
                           str(len(self.contacts) + 5001))
                self.contacts[cid] = {**self.contacts.get(cid, {}), **item["properties"], "email": item["id"]}
                if item["properties"].get("leadstream_lead_id"):
                    with self.lock:
                        self.hubspot_contact_leads.append(item["properties"]["leadstream_lead_id"])
                results.append({"id": cid, "properties": self.contacts[cid], "new": False})
            return web.json_response({"status": "COMPLETE", "results": results})
        m = re.fullmatch(r"/crm/v4/objects/contacts/(\d+)/associations/default/companies/(\d+)", path)
        if method == "PUT" and m:
            if m.group(1) not in self.contacts or m.group(2) not in self.companies:
                return web.json_response({"status": "error", "category": "OBJECT_NOT_FOUND"}, status=404)
            self.associations.add((m.group(1), m.group(2)))
            return web.json_response({"status": "COMPLETE", "results": []})
        if method == "POST" and path == "/crm/v3/objects/notes":
            try:
                props = body["properties"]
                assert props["hs_timestamp"] and isinstance(props["hs_note_body"], str) and props["hs_note_body"]
                [assoc] = body["associations"]
                [kind] = assoc["types"]
                assert kind["associationCategory"] == "HUBSPOT_DEFINED" and kind["associationTypeId"] == 202
                contact = str(assoc["to"]["id"])
            except (KeyError, TypeError, ValueError, AssertionError):
                return self._bad(request, "properties.hs_timestamp, hs_note_body and one association to a "
                                 "contact (HUBSPOT_DEFINED 202) required")
            if contact not in self.contacts:
                return web.json_response({"status": "error", "category": "OBJECT_NOT_FOUND"}, status=404)
            note_id = str(len(self.notes) + 9001)
            with self.lock:
                self.notes.append({"id": note_id, "contact": contact, **props})
            return web.json_response({"id": note_id, "properties": props}, status=201)
        m = re.fullmatch(r"/crm/v3/properties/(companies|contacts)(/groups)?", path)
        if method == "POST" and m:
            name = (body or {}).get("name")
            if not name or (not m.group(2) and not all(body.get(k) for k in ("label", "type", "fieldType",
                                                                              "groupName"))):
                return self._bad(request, "name, label, type, fieldType, groupName required")
            key = f"group:{name}" if m.group(2) else name
            if key in self.properties[m.group(1)]:
                return web.json_response({"status": "error", "category": "OBJECT_ALREADY_EXISTS"}, status=409)
            self.properties[m.group(1)].add(key)
            return web.json_response({"name": name}, status=201)
        return web.json_response({"status": "error", "message": f"no route {method} {path}"}, status=404)

    @staticmethod
    def _object(cid: str, props: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
        """A CRM object as HubSpot returns it: the requested properties (null when unset), as strings."""
        shown = {k: (None if props.get(k) is None else str(props[k])) for k in wanted}
        return {"id": cid, "properties": {**shown, "hs_object_id": cid}, "archived": False,
                "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"}

    # -- Slack Web API: chat.postMessage and conversations.history ----------------------------------
    def _slack_error(self, error: str, status: int = 200, **headers: str) -> web.Response:
        return web.json_response({"ok": False, "error": error}, status=status, headers=headers)

    async def _slack_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.headers.get("authorization") != f"Bearer {SLACK_BOT_TOKEN}":
            return self._slack_error("not_authed" if "authorization" not in request.headers else "invalid_auth")
        if method == "chat.postMessage":
            return await self._slack_post(request)
        if method == "conversations.history":
            return await self._slack_history(request)
        return self._slack_error("unknown_method", 404)

    async def _slack_post(self, request: web.Request) -> web.Response:
        if request.method != "POST" or request.content_type != "application/json":
            with self.lock:
                self.slack_api_errors.append(f"chat.postMessage: {request.method} {request.content_type}")
            return self._slack_error("invalid_arguments")
        if request.charset is None:  # Slack accepts it and warns "missing_charset"
            with self.lock:
                self.slack_api_errors.append("chat.postMessage: JSON without charset")
        args = await request.json()
        with self.lock:
            self.slack_api_calls.append(("chat.postMessage", args))
        if self.slack_api_429 > 0:
            self.slack_api_429 -= 1
            return self._slack_error("ratelimited", 429, **{"Retry-After": "1"})
        if args.get("channel") != SLACK_CHANNEL:
            return self._slack_error("channel_not_found")
        if not args.get("text") and not args.get("blocks"):
            return self._slack_error("no_text")
        if "blocks" in args and not isinstance(args["blocks"], list):
            return self._slack_error("invalid_blocks")
        metadata = args.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and isinstance(metadata.get("event_type"), str)
                                         and isinstance(metadata.get("event_payload"), dict)):
            with self.lock:
                self.slack_api_errors.append(f"chat.postMessage: metadata {metadata!r}")
            return self._slack_error("invalid_metadata_format")
        with self.lock:
            self._slack_ts = max(time.time(), self._slack_ts + 0.000001)
            ts = f"{self._slack_ts:.6f}"
            message = {"type": "message", "subtype": "bot_message", "text": args.get("text", ""),
                       "ts": ts, "bot_id": "B0LEADSTRM", "app_id": "A0LEADSTRM", "blocks": args.get("blocks", [])}
            if metadata is not None:
                message["metadata"] = metadata
            self.slack_messages.append(message)
            lead_id = (metadata or {}).get("event_payload", {}).get("lead_id", "?")
            self.slack_api.append((str(lead_id), time.time()))
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        return web.json_response({"ok": True, "channel": SLACK_CHANNEL, "ts": ts,
                                  "message": {k: v for k, v in message.items() if k != "metadata"}})

    async def _slack_history(self, request: web.Request) -> web.Response:
        # a read method: arguments as a query string (GET) or a form (POST), never JSON
        if request.method == "POST" and request.content_type == "application/json":
            with self.lock:
                self.slack_api_errors.append("conversations.history: JSON body")
            return self._slack_error("invalid_arguments")
        args = dict(request.query) if request.method == "GET" else dict(await request.post())
        with self.lock:
            self.slack_api_calls.append(("conversations.history", args))
        if args.get("channel") != SLACK_CHANNEL:
            return self._slack_error("channel_not_found")
        try:
            limit = min(999, int(args.get("limit") or 100))
            oldest, latest = float(args.get("oldest") or 0), float(args.get("latest") or time.time() + 1)
            start = int(args.get("cursor") or 0)
        except ValueError:
            return self._slack_error("invalid_arguments")
        inclusive = args.get("inclusive") in ("true", "1")
        metadata = args.get("include_all_metadata") in ("true", "1")
        with self.lock:
            newest_first = [m for m in reversed(self.slack_messages)
                            if (oldest <= float(m["ts"]) if inclusive else oldest < float(m["ts"]))
                            and float(m["ts"]) < latest]
        page = newest_first[start:start + limit]
        more = start + limit < len(newest_first)
        messages = [m if metadata else {k: v for k, v in m.items() if k != "metadata"} for m in page]
        return web.json_response({"ok": True, "messages": messages, "has_more": more, "pin_count": 0,
                                  "response_metadata": {"next_cursor": str(start + limit) if more else ""}})

    def _write_company(self, cid: str, props: dict[str, Any], status: int) -> web.Response:
        with self.lock:
            self.companies[cid] = {**self.companies.get(cid, {}), **props}
            if props.get("leadstream_lead_id"):
                self.hubspot_leads.append((props["leadstream_lead_id"], time.time()))
        return web.json_response({"id": cid, "properties": self.companies[cid]}, status=status)

    # -- running -----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/webhook", self._webhook)
        app.router.add_post("/slack", self._slack)
        app.router.add_route("*", "/slack-api/{method}", self._slack_api)
        app.router.add_route("*", "/crm/{tail:.*}", self._hubspot)
        return app

    async def start_async(self) -> "Receivers":
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start_thread(self) -> "Receivers":
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        assert ready.wait(10), "receivers did not start"
        return self

    def stop_thread(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.stop_async(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)


class MailReceiver:
    """An SMTP server on 127.0.0.1 (aiosmtpd, its own thread) that records every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []   # (envelope from, envelope to, raw)
        self.lock = threading.Lock()
        self.refuse: dict[str, str] = {}                          # rcpt -> SMTP answer (e.g. a 550)
        self._controller: Any = None
        self.port = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content
                                                                                   or envelope.content)))
        return "250 Message accepted"

    def to(self, address: str) -> list[bytes]:
        with self.lock:
            return [raw for _, rcpts, raw in self.messages if address in rcpts]

    def start(self) -> "MailReceiver":
        from aiosmtpd.controller import Controller
        from pipeline.local.kafka import free_port
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
