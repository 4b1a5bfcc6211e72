"""Slack sink: one Block Kit message per lead through an incoming webhook."""

from __future__ import annotations

from typing import Any, Mapping

from ..settings import SlackSinkSettings
from .base import (Failed, Http, LinksPort, NoProfiles, Outcome, ProfilePort, TransportError, http_outcome,
                   person_profile, retry_after_s, transport_failure)

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


class SlackSink:
    kind = "slack"

    def __init__(self, config: SlackSinkSettings, profiles: ProfilePort | None = None,
                 links: LinksPort | None = None, client: Http | None = None) -> None:
        self.config = config
        self.profiles = profiles or NoProfiles()
        self.links = links
        self._client = client or Http(config.timeout_s)

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        profile = await person_profile(lead, self.profiles)
        links = await self.links.crm_links(str(lead["site_id"]), str(lead["account"])) if self.links else {}
        try:
            response = await self._client.request("POST", self.config.webhook_url.get_secret_value(),
                                                  json_body=render_blocks(lead, profile, links))
        except TransportError as exc:
            return transport_failure(exc)
        if response.status_code == 429:  # Slack rate limit: wait what it says
            return Failed(f"HTTP 429: {response.text[:200]}", True, 429, retry_after_s(response) or 1.0)
        return http_outcome(response)

    async def aclose(self) -> None:
        await self._client.aclose()
