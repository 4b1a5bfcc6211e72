"""``leadstream leads`` and ``leads show``: the view read from Redis, as a table, JSON or CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from .store import LeadsView
from .view import Filter

__all__ = ["fetch_rows", "fetch_account", "table", "as_json", "as_csv", "account_text", "CSV_COLUMNS"]

CSV_COLUMNS = ("rank", "domain", "name", "status", "filtered_by", "tier", "fit", "intent", "trend_intent",
               "people", "visitors", "last_activity", "country", "industry", "employees", "reason")


def fetch_rows(redis_url: str, site_id: str, f: Filter, limit: int) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        view = LeadsView.from_url(redis_url)
        try:
            page = await view.list(site_id, f, limit=limit, now_ms=int(time.time() * 1000))
        finally:
            await view.aclose()
        for rank, row in enumerate(page.rows, start=1):
            row["rank"] = rank
            row.pop("cursor", None)
            row.pop("priority_key", None)
        return page.rows

    return asyncio.run(run())


def fetch_account(redis_url: str, site_id: str, domain: str) -> dict[str, Any] | None:
    async def run() -> dict[str, Any] | None:
        view = LeadsView.from_url(redis_url)
        try:
            return await view.account(site_id, domain.lower())
        finally:
            await view.aclose()

    return asyncio.run(run())


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _people(row: Mapping[str, Any]) -> str:
    names = [str(p.get("name") or "unnamed") + (f" ({p['title']})" if p.get("title") else "")
             for p in row.get("people") or ()]
    return "; ".join(names) or (f"{row.get('visitors') or 0} anonymous" if row.get("seen") else "-")


def _status(row: Mapping[str, Any]) -> str:
    if row.get("status") == "filtered":
        return f"filtered: {row.get('filtered_by')}"
    return "not yet seen" if row.get("status") == "not_seen" else str(row.get("status"))


def _trend(value: float | None) -> str:
    if not value:
        return "±0"
    return f"{'+' if value > 0 else ''}{value:.1f}"


def table(rows: Sequence[Mapping[str, Any]], site_id: str, width: int | None = None) -> str:
    t = Table(title=f"Prospects for {site_id}", show_lines=False, expand=False)
    for name, kw in (("#", {"justify": "right"}), ("Account", {}), ("Status", {}), ("Fit", {"justify": "right"}),
                     ("Intent", {"justify": "right"}), ("Trend 7d", {"justify": "right"}), ("People seen", {}),
                     ("Last activity", {}), ("Why", {})):
        t.add_column(name, **kw)  # type: ignore[arg-type]
    for row in rows:
        t.add_row(str(row["rank"]), f"{row.get('name') or row['domain']}\n{row['domain']}", _status(row)
                  + (f" {row['tier']}" if row.get("tier") else ""), f"{float(row.get('fit') or 0):.0f}",
                  f"{float(row.get('intent') or 0):.1f}", _trend((row.get("trend") or {}).get("intent")),
                  _people(row), _when(row.get("last_activity")), str(row.get("reason") or ""))
    console = Console(file=io.StringIO(), width=width or 160, force_terminal=False)
    console.print(t if rows else "No account matches these filters.")
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def as_json(rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(list(rows), indent=2)


def as_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r.get("rank"), r.get("domain"), r.get("name") or "", r.get("status"), r.get("filtered_by") or "",
                    r.get("tier") or "", r.get("fit"), r.get("intent"), (r.get("trend") or {}).get("intent"),
                    _people(r), r.get("visitors"), _when(r.get("last_activity")), r.get("country") or "",
                    r.get("industry") or "", r.get("employees") or "", r.get("reason")])
    return out.getvalue()


def account_text(a: Mapping[str, Any]) -> str:
    """One account in full: each rule's contribution, people, sessions, pages, filters, model."""
    lines = [f"{a.get('name') or a['domain']} ({a['domain']})",
             f"  status: {_status(a)}   tier: {a.get('tier') or '-'}   fit {float(a.get('fit') or 0):.0f}   "
             f"intent {float(a.get('intent') or 0):.1f} (7-day change {_trend((a.get('trend') or {}).get('intent'))})",
             f"  why: {a.get('reason')}",
             f"  firmographics: {', '.join(str(x) for x in (a.get('industry'), a.get('employees') and str(a['employees']) + ' employees', a.get('country')) if x) or 'unknown'}",
             f"  last activity: {_when(a.get('last_activity'))}   first seen: {_when(a.get('first_seen'))}   "
             f"visitors: {a.get('visitors') or 0}",
             "", "Fit, rule by rule:"]
    lines += [f"  {c['rule']:<24} {c['points']:>+7.1f}  {c.get('detail') or ''}" for c in a.get("fit_contributions") or ()]
    lines += ["", "Intent, rule by rule:"]
    lines += [f"  {c['rule']:<24} {c['points']:>+7.1f}  x{c.get('count', 0):g}  {c.get('detail') or ''}"
              for c in a.get("intent_contributions") or ()]
    lines += ["", "People seen:"]
    lines += [f"  {p.get('name') or 'unnamed person'}{', ' + p['title'] if p.get('title') else ''}"
              f"{' · ' + p['seniority'] if p.get('seniority') else ''}{' · ' + p['department'] if p.get('department') else ''}"
              f"  identity confidence {float(p.get('confidence') or 0):.2f}  (person {p['person_id']})"
              for p in a.get("people") or ()] or ["  none identified"]
    lines += ["", "Sessions that drove intent:"]
    lines += [f"  {s['session_id']}: {s.get('page_views')} page views, {s.get('signal_pages')} on buying pages, "
              f"ended {_when(s.get('end'))}" for s in a.get("sessions") or ()] or ["  none"]
    lines += ["", "Pages:"]
    lines += [f"  {k}: {', '.join(v)}" for k, v in (a.get("pages") or {}).items()] or ["  none"]
    lines += ["", f"Identity: company confidence {a.get('company_confidence')}, network {a.get('network_class')}"]
    lines += [f"  {e.get('source')}: {e.get('detail')} (confidence {float(e.get('confidence') or 0):.2f})"
              for e in a.get("company_evidence") or ()]
    lines += ["", "Filters:"]
    lines += [f"  {f['name']:<12} {'passed' if f['passed'] else 'FAILED ' + str(f.get('reason') or '')}"
              for f in a.get("filters") or ()] or ["  none evaluated"]
    lines += ["", f"Model: {a.get('model_version') or '-'} ({a.get('model_digest') or '-'})"
                  f"   last lead: {a.get('last_lead_id') or '-'}"]
    return "\n".join(lines)
