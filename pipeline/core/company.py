"""Company resolution: a waterfall over lookups the adapter already fetched.

Sources, in waterfall order, each recorded as :class:`Evidence` with a confidence:

1. ``ip_range``: the client IP is inside a CIDR the owner imported for a company (0.9).
2. ``ip_org``: the IP database's domain / organisation field matched a known company (0.8).
3. ``identity``: the person resolved for this visitor works there (0.95 x the person
   resolution's confidence: 0.95 for a deterministic link).
4. ``asn_org``: the ASN's organisation matched a known company, on business networks only (0.5).

**Never from the network alone on anonymous networks:** on ``isp``, ``mobile``,
``hosting`` and ``privacy`` networks (``CompanyRules.no_network_attribution``) sources
1, 2 and 4 are ignored; only the identity path can name a company there. Sources that
name the same domain reinforce each other: confidence = 1 - prod(1 - c_i), capped at
0.99. Different domains compete: the highest combined confidence wins, ties go to the
earlier source. Only the winner's evidence is returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Company, CompanyResolution, Evidence, NetworkClass, NetworkInfo, PersonResolution

__all__ = ["RangeMatch", "CompanyLookups", "CompanyRules", "resolve_company", "confidence_tier"]


@dataclass(frozen=True, slots=True)
class RangeMatch:
    """An imported CIDR containing the client IP, and its company."""
    company: Company
    cidr: str
    source: str = "import"


@dataclass(frozen=True, slots=True)
class CompanyLookups:
    """Candidate answers the adapter fetched for one visit (one pipelined round trip)."""
    ip_range: RangeMatch | None = None
    ip_org_company: Company | None = None   # known company matched from NetworkInfo.domain / .organization
    ip_org_field: str = "domain"            # which field matched: "domain" | "organization"
    asn_company: Company | None = None      # known company matched from NetworkInfo.asn_org
    person: PersonResolution | None = None
    person_company: Company | None = None   # firmographics of person.company_domain, when known


@dataclass(frozen=True, slots=True)
class CompanyRules:
    ip_range_confidence: float = 0.9
    ip_org_confidence: float = 0.8
    identity_confidence: float = 0.95
    asn_org_confidence: float = 0.5
    max_confidence: float = 0.99
    no_network_attribution: frozenset[NetworkClass] = field(default_factory=lambda: frozenset(
        {NetworkClass.isp, NetworkClass.mobile, NetworkClass.hosting, NetworkClass.privacy}))
    asn_org_classes: frozenset[NetworkClass] = field(default_factory=lambda: frozenset({NetworkClass.business}))


def _norm(domain: str) -> str:
    return domain.strip().lower().removeprefix("www.")


def resolve_company(network: NetworkInfo, lookups: CompanyLookups,
                    rules: CompanyRules = CompanyRules()) -> CompanyResolution:
    """The visit's company with confidence and evidence; ``company=None`` when nothing
    qualifies. ``network.network_class`` must already be classified
    (:func:`pipeline.core.network.classify_network`); it is carried in the result."""
    cls = network.network_class
    network_ok = cls not in rules.no_network_attribution
    cands: list[tuple[Company, Evidence]] = []
    if network_ok and lookups.ip_range is not None:
        r = lookups.ip_range
        cands.append((r.company, Evidence("ip_range", f"{network.ip or 'ip'} in {r.cidr} ({r.source})",
                                          rules.ip_range_confidence)))
    if network_ok and lookups.ip_org_company is not None:
        value = network.domain if lookups.ip_org_field == "domain" else network.organization
        cands.append((lookups.ip_org_company, Evidence(
            "ip_org", f"IP database {lookups.ip_org_field} {value or lookups.ip_org_company.domain!r}",
            rules.ip_org_confidence)))
    p = lookups.person
    if p is not None and p.person is not None and p.confidence > 0:
        domain = lookups.person_company.domain if lookups.person_company else p.person.company_domain
        if domain:
            company = lookups.person_company or Company(domain=_norm(domain))
            cands.append((company, Evidence("identity", f"person {p.person.person_id} works at {_norm(domain)}",
                                            round(rules.identity_confidence * p.confidence, 4))))
    if network_ok and cls in rules.asn_org_classes and lookups.asn_company is not None:
        cands.append((lookups.asn_company, Evidence(
            "asn_org", f"AS{network.asn} {network.asn_org or ''}".strip(), rules.asn_org_confidence)))
    if not cands:
        return CompanyResolution(company=None, confidence=0.0, network_class=cls)

    by_domain: dict[str, list[tuple[Company, Evidence]]] = {}
    for company, evidence in cands:
        by_domain.setdefault(_norm(company.domain), []).append((company, evidence))
    best_domain, best_conf = "", -1.0
    for domain, items in by_domain.items():  # dict keeps waterfall order: ties go to the earlier source
        miss = 1.0
        for _, evidence in items:
            miss *= 1.0 - evidence.confidence
        conf = min(round(1.0 - miss, 4), rules.max_confidence)
        if conf > best_conf:
            best_domain, best_conf = domain, conf
    items = by_domain[best_domain]
    richest = max((c for c, _ in items), key=lambda c: sum(
        v is not None for v in (c.industry, c.employees, c.revenue, c.country)) + bool(c.name))
    return CompanyResolution(company=richest, confidence=best_conf,
                             evidence=tuple(e for _, e in items), network_class=cls)


def confidence_tier(confidence: float) -> str:
    """``high`` (>= 0.85), ``medium`` (>= 0.6), ``low`` (> 0) or ``none``."""
    if confidence >= 0.85:
        return "high"
    if confidence >= 0.6:
        return "medium"
    return "low" if confidence > 0 else "none"
