"""Slack sink: one Block Kit message per lead, through an incoming webhook or the Web API.

Incoming webhook (``webhook_url``): a POST of ``{text, blocks}``. It has no idempotency key and
no way to read what was posted, so a message whose answer was lost in a crash is posted again:
at-least-once, at most one duplicate per crash (the sink's concurrency is 1).

Web API (``bot_token`` + ``channel``): ``chat.postMessage`` with the lead in the message's
metadata (``event_type`` ``leadstream_lead``, ``event_payload`` ``{lead_id, version}``). A
delivery in doubt reads ``conversations.history`` (``include_all_metadata=true``) from the
earlier attempt's start and posts only when no message carries this lead: exactly one message.
Both honour 429 and ``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping
from urllib.parse import urlencode

from ..settings import SlackSinkSettings
from .base import (Delivered, Failed, Http, HttpResponse, LinksPort, NoProfiles, Outcome, ProfilePort,
                   TransportError, http_outcome, person_profile, retry_after_s, transport_failure)

log = logging.getLogger(__name__)

METADATA_EVENT = "leadstream_lead"
HISTORY_PAGE = 200            # conversations.history messages per page (Slack allows up to 999)
HISTORY_MAX_PAGES = 25        # beyond this a doubt is resolved by posting (at-least-once)
HISTORY_SKEW_S = 60           # read from this long before the earlier attempt (clock skew)
#: Web API errors worth another attempt; every other ``ok: false`` is a refusal (bad token, channel...)
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable",
                              "request_timeout", "team_added_to_org"})

TOP_REASONS = 3
MAX_PAGES = 5
_TEXT_LIMIT = 2900  # Slack rejects section text over 3000 characters


def _clip(text: str, limit: int = _TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(text: Any) -> str:
    """Slack mrkdwn escaping of &, < and >."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def top_reasons(contributions: Any, n: int = TOP_REASONS) -> list[str]:
    """The ``n`` rules that gave the most points, as ``rule (+points)``, best first."""
    ranked = sorted((c for c in contributions or () if float(c.get("points") or 0) > 0),
                    key=lambda c: (-float(c["points"]), str(c["rule"])))
    return [f"{c['rule']} (+{float(c['points']):g})" for c in ranked[:n]]


def _company_line(company: Mapping[str, Any] | None, account: str) -> str:
    if not company:
        return f"Unknown company ({_esc(account)})"
    parts = [f"*{_esc(company.get('name') or company['domain'])}* ({_esc(company['domain'])})"]
    details = [str(v) for v in (company.get("industry"), company.get("employee_range") and
                                f"{company['employee_range']} employees", company.get("country")) if v]
    if details:
        parts.append(_esc(", ".join(details)))
    return " · ".join(parts)


def _person_line(lead: Mapping[str, Any], profile: Mapping[str, str]) -> str | None:
    person = lead.get("person")
    if not person:
        return None
    who = profile.get("name") or " ".join(p for p in (profile.get("first_name"), profile.get("last_name")) if p)
    bits = [f"*{_esc(who)}*" if who else "an identified visitor"]
    title = profile.get("title") or " ".join(p for p in (person.get("seniority"), person.get("department")) if p)
    if title:
        bits.append(_esc(title))
    if profile.get("email"):
        bits.append(_esc(profile["email"]))
    return f"{', '.join(bits)} (identity confidence {float(person.get('confidence') or 0):.0%})"


def _pages_line(pages: Mapping[str, Any], intent_contributions: Any) -> str:
    """The pages behind the intent signals that gave the most points first."""
    points = {str(c["rule"]): float(c.get("points") or 0) for c in intent_contributions or ()}
    seen: list[str] = []
    for signal in sorted(pages, key=lambda s: (-points.get(f"page:{s}", 0.0), s)):
        for url in pages[signal]:
            if len(seen) < MAX_PAGES and url not in seen:
                seen.append(f"• {_esc(signal)}: {_esc(url)}")
    return "\n".join(seen)


def render_blocks(lead: Mapping[str, Any], profile: Mapping[str, str] | None = None,
                  links: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The incoming-webhook payload (``text`` fallback + ``blocks``) for ``lead``. Pure."""
    profile = profile or {}
    links = links or {}
    company = lead.get("company")
    name = (company or {}).get("name") or (company or {}).get("domain") or lead.get("account", "")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(f"{lead['tier']} lead: {name}", 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_company_line(company, str(lead["account"])))}},
    ]
    person = _person_line(lead, profile)
    if person:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"Person: {person}")}})
    fit = ", ".join(top_reasons(lead.get("fit_contributions"))) or "no rule matched"
    intent = ", ".join(top_reasons(lead.get("intent_contributions"))) or "no signal"
    blocks.append({"type": "section", "fields": [
        {"type": "mrkdwn", "text": _clip(f"*Fit {float(lead['fit']):g}*\n{_esc(fit)}", 1900)},
        {"type": "mrkdwn", "text": _clip(f"*Intent {float(lead['intent']):g}*\n{_esc(intent)}", 1900)},
    ]})
    pages = _pages_line(lead.get("pages") or {}, lead.get("intent_contributions"))
    if pages:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"*Pages that mattered*\n{pages}")}})
    url = links.get("contact_url") or links.get("company_url")
    if url:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in CRM"}, "url": url,
             "action_id": "open_crm"}]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(
        f"{_esc(lead['summary'])} · model {_esc(lead['model_version'])} · lead {lead['lead_id']}")}]})
    return {"text": _clip(str(lead["summary"]), 3000), "blocks": blocks}


def lead_metadata(lead: Mapping[str, Any]) -> dict[str, Any]:
    """The message metadata that names the lead (what an in-doubt delivery looks for). Pure."""
    return {"event_type": METADATA_EVENT,
            "event_payload": {"lead_id": str(lead["lead_id"]), "version": int(lead.get("version") or 1)}}


def carries(message: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    """True when a ``conversations.history`` message carries ``metadata`` (same event and payload)."""
    found = message.get("metadata")
    return isinstance(found, Mapping) and found.get("event_type") == metadata["event_type"] and \
        dict(found.get("event_payload") or {}) == dict(metadata["event_payload"])


class SlackClient:
    """Posts a message in either mode; in Web API mode also finds a posted message by its metadata."""

    def __init__(self, config: SlackSinkSettings, client: Http | None = None) -> None:
        self.config = config
        self.api = config.bot_token is not None
        headers = {"authorization": f"Bearer {config.bot_token.get_secret_value()}"} if config.bot_token else {}
        self._client = client or Http(config.timeout_s, headers=headers)
        self._api_url = config.api_url.rstrip("/")

    async def post(self, payload: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Outcome:
        """Post ``{text, blocks}`` (with ``metadata`` in Web API mode)."""
        try:
            if not self.api:
                assert self.config.webhook_url is not None
                response = await self._client.request("POST", self.config.webhook_url.get_secret_value(),
                                                      json_body=dict(payload))
            else:
                body = {"channel": self.config.channel, **payload, **({"metadata": metadata} if metadata else {})}
                response = await self._client.request(
                    "POST", f"{self._api_url}/chat.postMessage", json_body=body,
                    headers={"content-type": "application/json; charset=utf-8"})
        except TransportError as exc:
            return transport_failure(exc)
        return self._outcome(response)

    def _outcome(self, response: HttpResponse) -> Outcome:
        if response.status_code == 429:  # Slack rate limit: wait what it says
            return Failed(f"HTTP 429: {response.text[:200]}", True, 429, retry_after_s(response) or 1.0)
        outcome = http_outcome(response)
        if not self.api or not isinstance(outcome, Delivered):
            return outcome
        try:  # the Web API answers 200 with {"ok": false, "error": ...} for most failures
            body = response.json()
        except ValueError:
            return Failed(f"Slack answered HTTP {response.status_code} without JSON: {response.text[:200]}")
        if isinstance(body, Mapping) and body.get("ok") is True:
            return Delivered(f"ts {body.get('ts')}")
        error = str(body.get("error") if isinstance(body, Mapping) else body)
        return Failed(f"Slack: {error}", error in RETRYABLE_ERRORS, response.status_code)

    async def find(self, metadata: Mapping[str, Any], since_ms: int) -> Outcome | None:
        """``Delivered(already=True)`` when the channel has a message carrying ``metadata`` posted since
        ``since_ms`` (less the clock skew allowance), None when it has none, ``Failed`` when the
        history cannot be read now (the delivery stays in doubt and is tried again)."""
        cursor = ""
        for _ in range(HISTORY_MAX_PAGES):
            args = {"channel": self.config.channel, "oldest": f"{max(0.0, since_ms / 1000 - HISTORY_SKEW_S):.6f}",
                    "inclusive": "true", "include_all_metadata": "true", "limit": str(HISTORY_PAGE)}
            if cursor:
                args["cursor"] = cursor
            try:
                response = await self._client.request("GET", f"{self._api_url}/conversations.history?"
                                                      f"{urlencode(args)}")
            except TransportError as exc:
                return transport_failure(exc)
            outcome = self._outcome(response)
            if isinstance(outcome, Failed):
                return Failed(f"reading the history: {outcome.error}", outcome.retryable, outcome.status_code,
                              outcome.retry_after_s)
            body = response.json()
            if any(carries(m, metadata) for m in body.get("messages") or () if isinstance(m, Mapping)):
                return Delivered("already posted (found in conversations.history)", already=True)
            cursor = str((body.get("response_metadata") or {}).get("next_cursor") or "")
            if not body.get("has_more") or not cursor:
                return None
        log.warning("slack %s: more than %d history pages since the earlier attempt; posting (at-least-once)",
                    self.config.name, HISTORY_MAX_PAGES)
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


class SlackSink:
    kind = "slack"

    def __init__(self, config: SlackSinkSettings, profiles: ProfilePort | None = None,
                 links: LinksPort | None = None, client: Http | None = None) -> None:
        self.config = config
        self.profiles = profiles or NoProfiles()
        self.links = links
        self.slack = SlackClient(config, client)

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        profile = await person_profile(lead, self.profiles)
        links = await self.links.crm_links(str(lead["site_id"]), str(lead["account"])) if self.links else {}
        return await self.slack.post(render_blocks(lead, profile, links),
                                     lead_metadata(lead) if self.slack.api else None)

    async def deliver_in_doubt(self, lead: Mapping[str, Any], since_ms: int) -> Outcome:
        """Web API: post only if the channel has no message carrying this lead since the earlier
        attempt. Incoming webhook: nothing to read, so post again (at-least-once)."""
        if self.slack.api:
            found = await self.slack.find(lead_metadata(lead), since_ms)
            if found is not None:
                return found
        return await self.deliver(lead)

    async def aclose(self) -> None:
        await self.slack.aclose()
