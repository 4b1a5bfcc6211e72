"""The visit update: what stage 1 tells stage 2 about one session of one visitor.

Built from a :class:`~pipeline.core.sessions.SessionUpdate` plus the resolutions of the
same batch; keyed by site and account. ``to_dict``/``from_dict`` give plain JSON-able
values (the ``visits`` topic's schema is the adapter's concern).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .model import Company, CompanyResolution, Evidence, NetworkClass, PersonResolution, Sector
from .sessions import Hit, SessionSummary, SessionUpdate

__all__ = ["VisitUpdate", "account_key", "build_visit_update", "company_to_dict", "company_from_dict",
           "evidence_to_list", "evidence_from_list"]


def account_key(company_domain: str | None, visitor_id: str | None) -> str:
    """``c:<domain>`` when the company is resolved, else ``v:<visitor>`` (``v:`` when anonymous).
    The topic key is ``site_id|account``."""
    if company_domain:
        return "c:" + company_domain.strip().lower().removeprefix("www.")
    return "v:" + (visitor_id or "")


def company_to_dict(c: Company) -> dict[str, Any]:
    d: dict[str, Any] = {"domain": c.domain}
    for k in ("name", "industry", "employees", "employee_range", "revenue", "revenue_range", "country"):
        v = getattr(c, k)
        if v not in (None, ""):
            d[k] = v
    if c.sector is not Sector.private:
        d["sector"] = c.sector.value
    if c.tags:
        d["tags"] = list(c.tags)
    return d


def company_from_dict(d: Mapping[str, Any]) -> Company:
    return Company(domain=d["domain"], name=d.get("name", ""), industry=d.get("industry"),
                   employees=d.get("employees"), employee_range=d.get("employee_range"), revenue=d.get("revenue"),
                   revenue_range=d.get("revenue_range"), country=d.get("country"),
                   sector=Sector(d.get("sector", "private")), tags=tuple(d.get("tags", ())))


def evidence_to_list(ev: tuple[Evidence, ...]) -> list[list[Any]]:
    return [[e.source, e.detail, e.confidence] for e in ev]


def evidence_from_list(items: Any) -> tuple[Evidence, ...]:
    return tuple(Evidence(str(s), str(d), float(c)) for s, d, c in items or ())


@dataclass(frozen=True, slots=True)
class VisitUpdate:
    """One session's progress with everything stage 2 scores and filters on."""
    site_id: str
    account: str
    visitor_id: str | None
    session: SessionSummary
    hits: tuple[Hit, ...]
    engaged_ms_delta: int
    new_session: bool
    company: Company | None = None
    company_confidence: float = 0.0
    company_evidence: tuple[Evidence, ...] = ()
    network_class: NetworkClass = NetworkClass.unknown
    country: str | None = None                  # geo country of the visit
    client_ip: str | None = None                # for the internal-traffic filter (before anonymisation)
    person_id: str | None = None
    person_confidence: float = 0.0
    person_evidence: tuple[Evidence, ...] = ()
    person_seniority: str | None = None
    person_department: str | None = None
    person_email_hash: str | None = None
    is_bot: bool = False
    bot_reason: str | None = None
    enrichment_sources: tuple[str, ...] = ()    # databases that answered, e.g. ("GeoIP2-Enterprise", "ranges.csv")

    def to_dict(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id, "account": self.account, "visitor_id": self.visitor_id,
            "session": self.session.to_dict(), "hits": [h.to_dict() for h in self.hits],
            "engaged_ms_delta": self.engaged_ms_delta, "new_session": self.new_session,
            "company": company_to_dict(self.company) if self.company else None,
            "company_confidence": self.company_confidence, "company_evidence": evidence_to_list(self.company_evidence),
            "network_class": self.network_class.value, "country": self.country, "client_ip": self.client_ip,
            "person_id": self.person_id, "person_confidence": self.person_confidence,
            "person_evidence": evidence_to_list(self.person_evidence), "person_seniority": self.person_seniority,
            "person_department": self.person_department, "person_email_hash": self.person_email_hash,
            "is_bot": self.is_bot, "bot_reason": self.bot_reason, "enrichment_sources": list(self.enrichment_sources),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VisitUpdate":
        return cls(
            site_id=d["site_id"], account=d["account"], visitor_id=d.get("visitor_id"),
            session=SessionSummary.from_dict(d["session"]), hits=tuple(Hit.from_dict(h) for h in d.get("hits", ())),
            engaged_ms_delta=d.get("engaged_ms_delta", 0), new_session=d.get("new_session", False),
            company=company_from_dict(d["company"]) if d.get("company") else None,
            company_confidence=d.get("company_confidence", 0.0),
            company_evidence=evidence_from_list(d.get("company_evidence")),
            network_class=NetworkClass(d.get("network_class", "unknown")), country=d.get("country"),
            client_ip=d.get("client_ip"), person_id=d.get("person_id"),
            person_confidence=d.get("person_confidence", 0.0),
            person_evidence=evidence_from_list(d.get("person_evidence")),
            person_seniority=d.get("person_seniority"), person_department=d.get("person_department"),
            person_email_hash=d.get("person_email_hash"), is_bot=d.get("is_bot", False),
            bot_reason=d.get("bot_reason"), enrichment_sources=tuple(d.get("enrichment_sources", ())))


def build_visit_update(update: SessionUpdate, company: CompanyResolution, person: PersonResolution, *,
                       country: str | None = None, client_ip: str | None = None, is_bot: bool = False,
                       bot_reason: str | None = None, enrichment_sources: tuple[str, ...] = ()) -> VisitUpdate:
    """Combine a session update with the batch's resolutions; the account follows the company."""
    c = company.company
    p = person.person
    return VisitUpdate(
        site_id=update.site_id, account=account_key(c.domain if c else None, update.visitor_id),
        visitor_id=update.visitor_id, session=update.summary, hits=update.hits,
        engaged_ms_delta=update.engaged_ms_delta, new_session=update.new_session, company=c,
        company_confidence=company.confidence, company_evidence=company.evidence,
        network_class=company.network_class, country=country, client_ip=client_ip,
        person_id=p.person_id if p else None, person_confidence=person.confidence if p else 0.0,
        person_evidence=person.evidence if p else (), person_seniority=p.seniority if p else None,
        person_department=p.department if p else None, person_email_hash=p.email_hash if p else None,
        is_bot=is_bot, bot_reason=bot_reason, enrichment_sources=enrichment_sources)
