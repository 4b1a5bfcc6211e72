"""Core values <-> the Avro records of the stage topics (visits, lead-scores, qualified-leads, bad-events).

Pure conversions: the core speaks compact dicts and dataclasses, the topics
speak the typed schemas in ``schemas/`` that any Kafka client can read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any, Mapping

from ..core.campaign import Campaign
from ..core.fit import FitScore
from ..core.intent import AccountState, IntentScore
from ..core.model import Company, Evidence, NetworkClass, Sector
from ..core.qualify import QualifiedLead, best_person
from ..core.sessions import DAY_MS, Hit, SessionSummary
from ..core.visit import VisitUpdate
from ..core.failures import FailureType
from ..core.filters import FilterResult

_BAD_ROW_NS = uuid.UUID("4b8a2f0e-6c1d-4e5f-9a7b-3c2d1e0f9a8b")


def _company(c: Company) -> dict[str, Any]:
    return {"domain": c.domain, "name": c.name, "industry": c.industry, "employees": c.employees,
            "employee_range": c.employee_range, "revenue": c.revenue, "revenue_range": c.revenue_range,
            "country": c.country, "sector": c.sector.value, "tags": list(c.tags)}


def _company_from(d: Mapping[str, Any]) -> Company:
    return Company(domain=d["domain"], name=d.get("name") or "", industry=d.get("industry"),
                   employees=d.get("employees"), employee_range=d.get("employee_range"), revenue=d.get("revenue"),
                   revenue_range=d.get("revenue_range"), country=d.get("country"),
                   sector=Sector(d.get("sector") or "private"), tags=tuple(d.get("tags") or ()))


def _evidence(ev: tuple[Evidence, ...]) -> list[dict[str, Any]]:
    return [{"source": e.source, "detail": e.detail, "confidence": float(e.confidence)} for e in ev]


def _evidence_from(items: Any) -> tuple[Evidence, ...]:
    return tuple(Evidence(e["source"], e["detail"], float(e["confidence"])) for e in items or ())


def _session(s: SessionSummary) -> dict[str, Any]:
    camp = None
    if s.campaign is not None:
        c = s.campaign
        camp = {"source": c.source, "medium": c.medium, "name": c.name, "term": c.term, "content": c.content,
                "click_id_param": c.click_id_param, "click_network": c.click_network, "paid": c.paid}
    return {"session_id": s.session_id, "index": s.index, "start": s.start, "end": s.end,
            "duration_ms": s.duration_ms, "page_views": s.page_views, "entry_url": s.entry_url,
            "exit_url": s.exit_url, "max_scroll": s.max_scroll, "engaged_ms": s.engaged_ms, "engaged": s.engaged,
            "conversions": s.conversions, "events": s.events, "referrer_class": s.referrer_class,
            "referrer_host": s.referrer_host, "campaign": camp, "pages": list(s.pages),
            "peak_pages_per_minute": s.peak_pages_per_minute}


def _session_from(d: Mapping[str, Any]) -> SessionSummary:
    camp = d.get("campaign")
    data = dict(d)
    data["campaign"] = Campaign(**camp) if camp else None
    data["pages"] = tuple(d.get("pages") or ())
    return SessionSummary(**data)


def visit_to_record(u: VisitUpdate, update_id: str, backfill: bool = False) -> dict[str, Any]:
    """A core VisitUpdate as a ``VisitUpdate`` Avro record."""
    tstamp = max([u.session.end, *(h.tstamp for h in u.hits)])
    return {
        "update_id": update_id, "site_id": u.site_id, "account": u.account, "visitor_id": u.visitor_id,
        "tstamp": tstamp, "new_session": u.new_session, "backfill": backfill,
        "engaged_ms_delta": int(u.engaged_ms_delta), "session": _session(u.session),
        "hits": [{"tstamp": h.tstamp, "kind": h.kind, "url": h.url, "name": h.name, "scroll": h.scroll,
                  "form_id": h.form_id, "event": h.event} for h in u.hits],
        "company": _company(u.company) if u.company else None, "company_confidence": float(u.company_confidence),
        "company_evidence": _evidence(u.company_evidence), "network_class": u.network_class.value,
        "country": u.country, "client_ip": u.client_ip, "person_id": u.person_id,
        "person_confidence": float(u.person_confidence), "person_evidence": _evidence(u.person_evidence),
        "person_seniority": u.person_seniority, "person_department": u.person_department,
        "person_email_hash": u.person_email_hash, "is_bot": u.is_bot, "bot_reason": u.bot_reason,
        "enrichment_sources": list(u.enrichment_sources),
    }


def visit_from_record(r: Mapping[str, Any]) -> VisitUpdate:
    return VisitUpdate(
        site_id=r["site_id"], account=r["account"], visitor_id=r.get("visitor_id"),
        session=_session_from(r["session"]),
        hits=tuple(Hit(h["tstamp"], h["kind"], h.get("url"), h.get("name"), h.get("scroll", 0), h.get("form_id"),
                       h.get("event")) for h in r["hits"]),
        engaged_ms_delta=r["engaged_ms_delta"], new_session=r["new_session"],
        company=_company_from(r["company"]) if r.get("company") else None,
        company_confidence=r.get("company_confidence", 0.0), company_evidence=_evidence_from(r.get("company_evidence")),
        network_class=NetworkClass(r.get("network_class") or "unknown"), country=r.get("country"),
        client_ip=r.get("client_ip"), person_id=r.get("person_id"),
        person_confidence=r.get("person_confidence", 0.0), person_evidence=_evidence_from(r.get("person_evidence")),
        person_seniority=r.get("person_seniority"), person_department=r.get("person_department"),
        person_email_hash=r.get("person_email_hash"), is_bot=r.get("is_bot", False), bot_reason=r.get("bot_reason"),
        enrichment_sources=tuple(r.get("enrichment_sources") or ()))


def _contrib(items: Any) -> list[dict[str, Any]]:
    return [{"rule": c.rule, "points": float(c.points), "count": float(c.count), "detail": c.detail} for c in items]


def _filters(results: tuple[FilterResult, ...]) -> list[dict[str, Any]]:
    return [{"name": r.name, "passed": r.passed, "reason": r.reason} for r in results]


def lead_score_record(state: AccountState, intent: IntentScore, fit: FitScore, filters: tuple[FilterResult, ...],
                      tier: str, qualified: bool, reasons: tuple[str, ...], model_version: str,
                      model_digest: str, *, expansion: bool = False, expansion_reason: str | None = None,
                      fit_min: float | None = None, intent_min: float | None = None) -> dict[str, Any]:
    co = state.company or {}
    person = best_person(state)
    return {
        "site_id": state.site_id, "account": state.account, "tstamp": state.last_ts,
        "model_version": model_version, "model_digest": model_digest, "fit": float(fit.score),
        "intent": float(intent.score), "tier": tier, "qualified": qualified, "reasons": list(reasons),
        "company_domain": co.get("domain"), "company_name": co.get("name") or None,
        "company_confidence": float(co.get("conf", 0.0)),
        "network_class": str(co.get("nc") or state.seen.get("nc") or "unknown"),
        "person_id": person[0] if person else None,
        "person_confidence": float(person[1].get("conf", 0.0)) if person else 0.0,
        "visitors": len(state.visitors), "fit_contributions": _contrib(fit.contributions),
        "intent_contributions": _contrib(intent.contributions), "filters": _filters(filters),
        "last_lead_id": state.lead.get("last_id"),
        "expansion": expansion, "expansion_reason": expansion_reason,
        "fit_min": float(fit_min) if fit_min is not None else None,
        "intent_min": float(intent_min) if intent_min is not None else None,
        "company": ({"industry": co.get("industry"), "employees": co.get("employees"),
                     "revenue": (float(co["revenue"]) if co.get("revenue") is not None else None),
                     "country": co.get("country"), "sector": co.get("sector") or "private"} if co else None),
        "country": state.seen.get("country"),
        "first_seen": _first_seen(state),
        "persons": [{"person_id": pid, "confidence": float(p.get("conf", 0.0)), "seniority": p.get("sen"),
                     "department": p.get("dep"), "last_seen": int(p.get("ts", 0))}
                    for pid, p in sorted(state.persons.items(),
                                         key=lambda kv: (-float(kv[1].get("conf", 0)), -int(kv[1].get("ts", 0)),
                                                         kv[0]))],
        "sessions": [{"session_id": str(s["session_id"]), "visitor_id": s.get("visitor_id"),
                      "page_views": int(s.get("page_views") or 0), "end": int(s.get("end") or 0),
                      "signal_pages": int(s.get("signal_pages") or 0)} for s in intent.top_sessions],
        "pages": {k: list(v) for k, v in intent.top_pages.items()},
        "company_evidence": _ev_list(co.get("ev")),
    }


def _first_seen(state: AccountState) -> int | None:
    """Start of the first UTC day of the account's kept activity (epoch ms)."""
    first_day = min((int(d) for d in state.days), default=None)
    return first_day * DAY_MS if first_day is not None else None


def _ev_list(items: Any) -> list[dict[str, Any]]:
    return [{"source": str(e[0]), "detail": str(e[1]), "confidence": float(e[2])} for e in items or ()]


def qualified_lead_record(lead: QualifiedLead, state: AccountState) -> dict[str, Any]:
    """The ``QualifiedLead`` Avro record; deterministic (no processing time in it)."""
    ex = lead.explanation
    ident = ex["identity"]
    company = ident.get("company")
    person = ident.get("person")
    first_seen = _first_seen(state)
    prev = ex.get("previous_lead") or {}
    return {
        "lead_id": lead.lead_id, "site_id": lead.site_id, "account": lead.account, "sequence": lead.sequence,
        "tstamp": lead.tstamp, "first_seen": first_seen, "tier": lead.tier, "fit": float(lead.fit),
        "intent": float(lead.intent), "intent_raw": float(ex["intent"]["raw"]), "summary": ex["summary"],
        "model_version": lead.model_version, "model_digest": lead.model_digest,
        "identity_level": ident["level"],
        "company": ({"domain": company["domain"], "name": company.get("name") or "",
                     "industry": company.get("industry"), "employees": company.get("employees"),
                     "employee_range": company.get("employee_range"), "revenue": company.get("revenue"),
                     "revenue_range": company.get("revenue_range"), "country": company.get("country"),
                     "sector": company.get("sector") or "private", "tags": list(company.get("tags") or ())}
                    if company else None),
        "company_confidence": float(ident.get("company_confidence") or 0.0),
        "company_evidence": _ev_list(ident.get("company_evidence")),
        "network_class": str(ident.get("network_class") or "unknown"),
        "person": ({"person_id": person["person_id"], "confidence": float(person.get("confidence") or 0.0),
                    "seniority": person.get("seniority"), "department": person.get("department"),
                    "evidence": _ev_list(person.get("evidence"))} if person else None),
        "fit_contributions": [{"rule": c["rule"], "points": float(c["points"]), "count": float(c["count"]),
                               "detail": c["detail"]} for c in ex["fit"]["contributions"]],
        "intent_contributions": [{"rule": c["rule"], "points": float(c["points"]), "count": float(c["count"]),
                                  "detail": c["detail"]} for c in ex["intent"]["contributions"]],
        "sessions": [{"session_id": s["session_id"], "visitor_id": s.get("visitor_id"),
                      "page_views": int(s.get("page_views") or 0), "end": int(s.get("end") or 0),
                      "signal_pages": int(s.get("signal_pages") or 0)} for s in ex["intent"]["sessions"]],
        "pages": {k: list(v) for k, v in ex["intent"]["pages"].items()},
        "filters": [{"name": f["name"], "passed": bool(f["passed"]), "reason": f.get("reason")} for f in ex["filters"]],
        "thresholds": {k: str(v) for k, v in ex["thresholds"].items()},
        "enrichment_sources": list(ex.get("enrichment_sources") or ()),
        "previous_tier": prev.get("tier"), "previous_tstamp": prev.get("tstamp"),
        "version": int(lead.version), "update_reason": lead.update_reason, "cause": ex.get("cause"),
        "conversions": [{"tstamp": int(c["tstamp"]), "rule": c.get("rule"), "matched_on": c.get("matched_on"),
                         "form_id": c.get("form_id"), "event": c.get("event"), "page": c.get("page"),
                         "visitor_id": c.get("visitor_id")} for c in ex.get("conversions") or ()],
        "fit_min": _number(ex["thresholds"].get("fit_min")), "intent_min": _number(ex["thresholds"].get("intent_min")),
        "min_confidence": _number(ex["thresholds"].get("min_confidence")),
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def bad_row(stage: str, failure_type: FailureType | str, message: str, payload: Any, *, site_id: str | None = None,
            source: str | None = None, details: Mapping[str, str] | None = None,
            row_id: str | None = None, tstamp: int | None = None) -> dict[str, Any]:
    """A ``BadRow`` record with the whole original ``payload`` (bytes or a JSON-able value).

    ``details["payload_encoding"]`` says how to get the original back: ``json`` (a JSON
    document: a ``CollectorPayload`` when ``details["payload_schema"]`` says so), ``utf8``
    (the record's bytes were UTF-8) or ``base64``. The id is deterministic (stage, type,
    message and payload), so a replayed failure writes the same id again.
    """
    extra: dict[str, str] = {}
    if isinstance(payload, (bytes, bytearray)):
        try:
            text = bytes(payload).decode("utf-8")
            extra["payload_encoding"] = "utf8"
        except UnicodeDecodeError:
            text = base64.b64encode(bytes(payload)).decode("ascii")
            extra["payload_encoding"] = "base64"
    else:
        text = json.dumps(payload, default=str, sort_keys=True)
        extra["payload_encoding"] = "json"
    raw = text.encode("utf-8")
    kind = FailureType(failure_type).value
    digest = hashlib.sha256(raw).hexdigest()
    return {"bad_row_id": row_id or str(uuid.uuid5(_BAD_ROW_NS, f"{stage}|{kind}|{message}|{digest}")),
            "stage": stage, "failure_type": kind, "message": message, "site_id": site_id, "source": source,
            "tstamp": tstamp if tstamp is not None else int(time.time() * 1000), "payload": text,
            "payload_size": len(raw), "payload_truncated": False, "details": {**extra, **dict(details or {})},
            "part": 0, "parts": 1}


def split_bad_row(row: Mapping[str, Any], max_payload_bytes: int) -> list[dict[str, Any]]:
    """``row`` as one or more rows whose ``payload`` holds at most ``max_payload_bytes`` bytes each.

    The parts share ``bad_row_id`` and carry ``part`` (0-based) and ``parts``; joining their
    payloads in part order gives the original payload back (cuts fall between UTF-8 characters).
    """
    raw = str(row["payload"]).encode("utf-8")
    if len(raw) <= max_payload_bytes:
        return [dict(row)]
    pieces: list[str] = []
    start = 0
    while start < len(raw):
        end = min(start + max_payload_bytes, len(raw))
        while end < len(raw) and end > start and (raw[end] & 0xC0) == 0x80:  # not inside a character
            end -= 1
        pieces.append(raw[start:end].decode("utf-8"))
        start = end
    return [{**row, "payload": piece, "part": i, "parts": len(pieces)} for i, piece in enumerate(pieces)]


def join_bad_row_parts(rows: list[Mapping[str, Any]]) -> str:
    """The original payload of a row split by :func:`split_bad_row` (all its parts, any order)."""
    ordered = sorted(rows, key=lambda r: int(r.get("part") or 0))
    return "".join(str(r["payload"]) for r in ordered)
