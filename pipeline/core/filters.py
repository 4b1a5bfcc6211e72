"""Lead filters: each a pure predicate returning a :class:`FilterResult` (pass, or a named reason).

A lead must pass all of them (:func:`run_filters`). Every predicate takes plain
values, so the adapter or a test can call one alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from .model import Company, NetworkClass, Sector
from .pages import matches_any
from .scoring_model import Filters

__all__ = ["FilterResult", "LeadFacts", "country_filter", "page_filter", "sector_filter", "resolution_filter",
           "internal_filter", "suppression_filter", "bot_filter", "run_filters"]

_NETWORK_SECTORS = {NetworkClass.government: Sector.government, NetworkClass.education: Sector.education,
                    NetworkClass.military: Sector.military}


@dataclass(frozen=True, slots=True)
class FilterResult:
    name: str
    passed: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason}


def _ok(name: str) -> FilterResult:
    return FilterResult(name, True)


def country_filter(country: str | None, f: Filters) -> FilterResult:
    """Deny list first, then the allow list (when set); an unknown country passes only
    when ``allow_unknown_country`` (and fails any allow list otherwise)."""
    name = "country"
    if country is None:
        return _ok(name) if f.allow_unknown_country else FilterResult(name, False, "country_unknown")
    c = country.strip().upper()
    if c in f.countries_deny:
        return FilterResult(name, False, f"country_denied:{c}")
    if f.countries_allow and c not in f.countries_allow:
        return FilterResult(name, False, f"country_not_allowed:{c}")
    return _ok(name)


def page_filter(urls: Sequence[str], f: Filters) -> FilterResult:
    """Pages matching ``pages_exclude`` are ignored; at least one page must remain and,
    when ``pages_include`` is set, one remaining page must match it (wildcards and
    hosts: :mod:`pipeline.core.pages`). No pages at all fails as ``no_pages``."""
    name = "pages"
    if not urls:
        return FilterResult(name, False, "no_pages")
    kept = [u for u in urls if not matches_any(u, f.pages_exclude)]
    if not kept:
        return FilterResult(name, False, "only_excluded_pages")
    if f.pages_include and not any(matches_any(u, f.pages_include) for u in kept):
        return FilterResult(name, False, "no_included_page")
    return _ok(name)


def sector_filter(company: Company | None, network_class: NetworkClass, f: Filters) -> FilterResult:
    """Excluded sectors by the company's sector or, without a company, by a government,
    education or military network."""
    name = "sector"
    excluded = set(f.exclude_sectors)
    if company is not None and company.sector in excluded:
        return FilterResult(name, False, f"sector_excluded:{company.sector.value}")
    net_sector = _NETWORK_SECTORS.get(network_class)
    if company is None and net_sector is not None and net_sector in excluded:
        return FilterResult(name, False, f"sector_excluded:{net_sector.value}_network")
    return _ok(name)


def resolution_filter(company: Company | None, evidence_sources: Iterable[str], network_class: NetworkClass,
                      f: Filters) -> FilterResult:
    """Unresolved traffic and ISP traffic: with ``exclude_isp`` a visit from an isp or
    mobile network passes only when identity named its company (an ``identity`` source in
    ``evidence_sources``: any evidence, not only the winning one, and for the account
    once an identified person's company named it on any visit); with
    ``exclude_unresolved`` a visit without a company fails."""
    name = "resolution"
    from_identity = any(s == "identity" or s.startswith("identity:") for s in evidence_sources)
    if f.exclude_isp and network_class in (NetworkClass.isp, NetworkClass.mobile) and not from_identity:
        return FilterResult(name, False, f"isp_traffic:{network_class.value}")
    if f.exclude_unresolved and company is None:
        return FilterResult(name, False, "unresolved")
    return _ok(name)


@lru_cache(maxsize=256)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def internal_filter(client_ip: str | None, company_domain: str | None, f: Filters) -> FilterResult:
    """The site owner's own traffic: an IP inside ``internal_cidrs`` or a company domain
    in ``internal_domains``."""
    name = "internal"
    if client_ip and f.internal_cidrs:
        try:
            ip = ipaddress.ip_address(client_ip.strip())
        except ValueError:
            ip = None
        if ip is not None and any(ip.version == n.version and ip in n for n in _networks(f.internal_cidrs)):
            return FilterResult(name, False, "internal_ip")
    if company_domain and company_domain.strip().lower().removeprefix("www.") in f.internal_domains:
        return FilterResult(name, False, "internal_domain")
    return _ok(name)


def suppression_filter(email_hashes: Iterable[str], company_domain: str | None, f: Filters,
                       extra_hashes: frozenset[str] = frozenset(),
                       extra_domains: frozenset[str] = frozenset()) -> FilterResult:
    """Opted-out people (salted email hashes) and suppressed domains, from the model's
    filters plus the adapter's lists (``extra_*``, e.g. loaded from Redis)."""
    name = "suppression"
    hashes = set(f.suppressed_email_hashes) | extra_hashes
    if any(h in hashes for h in email_hashes):
        return FilterResult(name, False, "suppressed_email")
    domains = set(f.suppressed_domains) | extra_domains
    if company_domain:
        d = company_domain.strip().lower().removeprefix("www.")
        if d in domains or any(d.endswith("." + s) for s in domains):
            return FilterResult(name, False, "suppressed_domain")
    return _ok(name)


def bot_filter(is_bot: bool, bot_reason: str | None, f: Filters) -> FilterResult:
    name = "bots"
    if f.exclude_bots and is_bot:
        return FilterResult(name, False, f"bot:{bot_reason}" if bot_reason else "bot")
    return _ok(name)


@dataclass(frozen=True, slots=True)
class LeadFacts:
    """What the filters look at for one account (see :func:`pipeline.core.qualify.lead_facts`)."""
    company: Company | None
    company_evidence_sources: tuple[str, ...]
    network_class: NetworkClass
    country: str | None
    client_ip: str | None
    pages: tuple[str, ...]
    email_hashes: tuple[str, ...]
    is_bot: bool = False
    bot_reason: str | None = None


def run_filters(facts: LeadFacts, f: Filters, extra_hashes: frozenset[str] = frozenset(),
                extra_domains: frozenset[str] = frozenset()) -> tuple[FilterResult, ...]:
    """Every filter's result, in a fixed order."""
    domain = facts.company.domain if facts.company else None
    return (
        bot_filter(facts.is_bot, facts.bot_reason, f),
        internal_filter(facts.client_ip, domain, f),
        suppression_filter(facts.email_hashes, domain, f, extra_hashes, extra_domains),
        resolution_filter(facts.company, facts.company_evidence_sources, facts.network_class, f),
        sector_filter(facts.company, facts.network_class, f),
        country_filter(facts.country, f),
        page_filter(facts.pages, f),
    )
