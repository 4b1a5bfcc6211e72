"""The prospect list's rules, pure: an account's row from its latest ``LeadScore``, its priority,
its 7-day trend, its status and the one-line reason a salesperson reads.

**Priority** (higher is worked first) is a documented function of fit, intent and recency:

    base     = 0.4 * fit + 0.6 * intent                      (0-100)
    priority = base * 0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS)

where ``age_days`` is the time since the account's last activity (event time). An account
not seen yet (an imported ICP company) has ``base = NOT_SEEN_WEIGHT * fit`` and no age. A
filtered account has priority 0 (it is listed only when asked for). The view stores the
order-preserving key ``log2(base) + last_activity_days / RECENCY_HALF_LIFE_DAYS``: for any
"now", ordering by it equals ordering by ``priority``, so the stored order never goes stale
as time passes and no account needs re-scoring to age.

**Status**: ``filtered`` (with the first failed filter's name) when a filter stopped the
account, ``customer`` for an existing customer, ``qualified`` once it produced a lead,
``warming`` with intent at or above :data:`WARMING_INTENT`, ``cold`` otherwise, and
``not_seen`` for an imported ICP company without a visit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["DAY_MS", "RECENCY_HALF_LIFE_DAYS", "NOT_SEEN_WEIGHT", "WARMING_INTENT", "TREND_DAYS", "STATUSES",
           "base_priority", "priority_key", "priority_at", "status_of", "trend", "reason_line", "account_doc",
           "not_seen_doc", "domain_of", "Filter", "matches"]

DAY_MS = 86_400_000
RECENCY_HALF_LIFE_DAYS = 7.0
NOT_SEEN_WEIGHT = 0.2
WARMING_INTENT = 40.0
TREND_DAYS = 7
STATUSES = ("qualified", "warming", "cold", "filtered", "customer", "not_seen")
_MIN_BASE = 1e-3          # log2 needs a positive base; 0.001 sorts below every real account
_FILTERED_KEY = -1e9      # filtered accounts sort last, whatever their age


def base_priority(fit: float, intent: float) -> float:
    return 0.4 * fit + 0.6 * intent


def priority_key(base: float, last_activity_ms: int | None) -> float:
    """The stored sort key (see module doc); larger sorts first."""
    days = (last_activity_ms or 0) / DAY_MS
    return math.log2(max(base, _MIN_BASE)) + days / RECENCY_HALF_LIFE_DAYS


def priority_at(key: float, now_ms: int) -> float:
    """The priority (0-100) that ``key`` stands for at ``now_ms``."""
    if key <= _FILTERED_KEY:
        return 0.0
    return round(2 ** (key - now_ms / DAY_MS / RECENCY_HALF_LIFE_DAYS), 1)


def domain_of(account: str) -> str:
    """An account key (``c:<domain>`` for a company, ``v:<visitor>`` otherwise) as the list shows it."""
    return account[2:] if account.startswith(("c:", "v:")) else account


def status_of(score: Mapping[str, Any]) -> tuple[str, str | None]:
    """(status, the filter that stopped it) of a ``LeadScore``."""
    failed = [f["name"] for f in score.get("filters") or () if not f.get("passed")]
    if score.get("expansion") or any(r.startswith(("existing_customer", "customer"))
                                     for r in score.get("reasons") or ()):
        return "customer", None
    if failed:
        return "filtered", failed[0]
    if score.get("qualified") or score.get("last_lead_id"):
        return "qualified", None
    if float(score.get("intent") or 0.0) >= WARMING_INTENT:
        return "warming", None
    return "cold", None


def _day(ms: int) -> int:
    return ms // DAY_MS


def trend(history: Sequence[Sequence[float]], fit: float, intent: float, now_ms: int) -> tuple[list[list[float]],
                                                                                                dict[str, float]]:
    """Record today's (fit, intent) in ``history`` ([day, fit, intent], oldest first, the last
    :data:`TREND_DAYS` + 1 days kept) and return it with the change over the last 7 days:
    now minus the oldest sample inside the window (0 when there is none)."""
    today = _day(now_ms)
    kept = [list(h) for h in history if today - TREND_DAYS <= int(h[0]) < today]
    kept.append([today, fit, intent])
    first = kept[0]
    return kept, {"fit": round(fit - float(first[1]), 1), "intent": round(intent - float(first[2]), 1)}


_SIGNAL_WORDS = {"pricing": "pricing", "demo": "demo", "contact": "contact", "case_study": "case studies",
                 "trial": "trial", "careers": "careers", "docs": "docs"}


def _count_words(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _employees(n: int | None) -> str:
    return f"{n:,}-employee " if n else ""


def reason_line(score: Mapping[str, Any]) -> str:
    """One line from the score's explanation, e.g. "3 visitors, pricing twice on 2 days,
    demo request, 250-employee software in DE"."""
    parts: list[str] = []
    status, filtered_by = status_of(score)
    visitors = int(score.get("visitors") or 0)
    if visitors:
        parts.append(f"{visitors} visitor{'s' if visitors != 1 else ''}")
    contributions = {c["rule"]: c for c in score.get("intent_contributions") or ()}
    days = int((contributions.get("active_day") or {}).get("count") or 0)
    for rule, c in sorted(contributions.items(), key=lambda kv: -float(kv[1].get("points") or 0)):
        if not rule.startswith("page:") or float(c.get("points") or 0) <= 0:
            continue
        name = rule.split(":", 1)[1]
        text = f"{_SIGNAL_WORDS.get(name, name.replace('_', ' '))} {_count_words(int(c.get('count') or 1))}"
        if days > 1 and not any(" days" in p for p in parts):
            text += f" on {days} days"
        parts.append(text)
        if len([p for p in parts if "visitor" not in p]) >= 2:
            break
    conversion = contributions.get("conversion")
    if conversion and float(conversion.get("points") or 0) > 0:
        detail = str(conversion.get("detail") or "").strip()
        parts.append(detail or "form conversion")
    company = score.get("company") or {}
    industry = str(company.get("industry") or "").lower()
    country = company.get("country") or score.get("country")
    who = f"{_employees(company.get('employees'))}{industry}".strip()
    if who or country:
        parts.append(" ".join(p for p in (who or "company", f"in {country}" if country else "") if p))
    if status == "filtered":
        parts.append(f"filtered: {filtered_by}")
    if status == "customer":
        parts.append(f"existing customer{': ' + str(score['expansion_reason']) if score.get('expansion_reason') else ''}")
    return ", ".join(parts) or "no activity yet"


def account_doc(score: Mapping[str, Any], previous: Mapping[str, Any] | None,
                people: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The list's document for one account from its latest ``LeadScore`` (decoded), keeping the
    trend history of ``previous``. ``people``: profile fields (name, title) by person id, from the
    site owner's identity graph."""
    now = int(score.get("tstamp") or 0)
    fit, intent = float(score.get("fit") or 0.0), float(score.get("intent") or 0.0)
    history, change = trend((previous or {}).get("history") or (), fit, intent, now)
    status, filtered_by = status_of(score)
    base = base_priority(fit, intent)
    company = score.get("company") or {}
    people = people or {}
    persons = []
    for p in score.get("persons") or ():
        profile = people.get(p["person_id"]) or {}
        persons.append({"person_id": p["person_id"], "confidence": p.get("confidence"),
                        "name": profile.get("name"), "title": profile.get("title"),
                        "seniority": p.get("seniority") or profile.get("seniority"),
                        "department": p.get("department") or profile.get("department"),
                        "last_seen": p.get("last_seen")})
    return {
        "site_id": score["site_id"], "account": score["account"],
        "domain": score.get("company_domain") or domain_of(score["account"]),
        "name": score.get("company_name") or (previous or {}).get("name") or None,
        "status": status, "filtered_by": filtered_by, "seen": True,
        "tier": score.get("tier"), "fit": fit, "intent": intent, "trend": change, "history": history,
        "priority_key": _FILTERED_KEY if status == "filtered" else priority_key(base, now),
        "last_activity": now, "first_seen": score.get("first_seen"),
        "country": company.get("country") or score.get("country"), "industry": company.get("industry"),
        "employees": company.get("employees"), "visitors": int(score.get("visitors") or 0),
        "people": persons, "sessions": list(score.get("sessions") or ()), "pages": dict(score.get("pages") or {}),
        "reason": reason_line(score), "reasons": list(score.get("reasons") or ()),
        "fit_contributions": list(score.get("fit_contributions") or ()),
        "intent_contributions": list(score.get("intent_contributions") or ()),
        "filters": list(score.get("filters") or ()), "company_confidence": score.get("company_confidence"),
        "company_evidence": list(score.get("company_evidence") or ()),
        "network_class": score.get("network_class"), "model_version": score.get("model_version"),
        "model_digest": score.get("model_digest"), "last_lead_id": score.get("last_lead_id"),
    }


def not_seen_doc(site_id: str, company: Mapping[str, Any], fit: float,
                 fit_contributions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An imported company that fits the ICP and has not visited: ranked by fit alone."""
    employees = company.get("employees")
    industry = str(company.get("industry") or "").lower()
    country = company.get("country")
    who = f"{_employees(employees)}{industry}".strip() or "company"
    return {
        "site_id": site_id, "account": f"c:{company['domain']}", "domain": company["domain"],
        "name": company.get("name") or None, "status": "not_seen", "filtered_by": None, "seen": False,
        "tier": None, "fit": fit, "intent": 0.0, "trend": {"fit": 0.0, "intent": 0.0}, "history": [],
        "priority_key": math.log2(max(NOT_SEEN_WEIGHT * fit, _MIN_BASE)), "last_activity": None,
        "first_seen": None, "country": country, "industry": company.get("industry"), "employees": employees,
        "visitors": 0, "people": [], "sessions": [], "pages": {},
        "reason": f"not yet seen: {who}{f' in {country}' if country else ''}, fit {fit:.0f}",
        "reasons": [], "fit_contributions": list(fit_contributions), "intent_contributions": [], "filters": [],
        "company_confidence": None, "network_class": None, "model_version": None, "model_digest": None,
        "last_lead_id": None,
    }


@dataclass(frozen=True, slots=True)
class Filter:
    """What the list may be narrowed to (CLI options and API query parameters alike)."""
    status: str | None = None
    min_fit: float | None = None
    min_intent: float | None = None
    country: str | None = None
    seen: bool | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"tier must be one of {', '.join(STATUSES)}, not {self.status!r}")
        if self.country is not None and not re.fullmatch(r"[A-Za-z]{2}", self.country):
            raise ValueError(f"country must be an ISO 3166-1 alpha-2 code such as DE, not {self.country!r}")


def matches(doc: Mapping[str, Any], f: Filter) -> bool:
    """Whether one account's summary passes ``f``. Filtered accounts show only when asked for."""
    status = doc.get("status")
    if f.status is not None:
        if status != f.status:
            return False
    elif status == "filtered":
        return False
    if f.min_fit is not None and float(doc.get("fit") or 0) < f.min_fit:
        return False
    if f.min_intent is not None and float(doc.get("intent") or 0) < f.min_intent:
        return False
    if f.country is not None and (doc.get("country") or "").upper() != f.country.upper():
        return False
    if f.seen is not None and bool(doc.get("seen")) != f.seen:
        return False
    if f.query:
        q = f.query.lower()
        if q not in str(doc.get("domain") or "").lower() and q not in str(doc.get("name") or "").lower():
            return False
    return True
