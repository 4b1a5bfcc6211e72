from __future__ import annotations

import pytest

from pipeline.core.filters import (LeadFacts, bot_filter, country_filter, internal_filter, page_filter,
                                   resolution_filter, run_filters, sector_filter, suppression_filter)
from pipeline.core.fit import score_fit
from pipeline.core.model import Company, NetworkClass as N, Sector
from pipeline.core.pages import compile_pattern, matches_any
from pipeline.core.scoring_model import Filters, FitModel, FitRule

ACME = Company("acme.com", name="Acme", industry="Software", employees=300, revenue=2e7, country="GB",
               tags=("saas", "b2b"))
ICP = FitModel(rules=(
    FitRule(name="industry", attribute="industry", values=("software",), weight=30),
    FitRule(name="size", attribute="employees", min=50, max=500, weight=20),
    FitRule(name="revenue", attribute="revenue", min=1e7, weight=10),
    FitRule(name="country", attribute="country", values=("gb", "US"), weight=10),
    FitRule(name="sector", attribute="sector", values=("private",), weight=10),
    FitRule(name="seniority", attribute="seniority", values=("vp", "c_level"), weight=10),
    FitRule(name="department", attribute="department", values=("marketing",), weight=10),
))


class TestFit:
    def test_all_rules_match(self) -> None:
        s = score_fit(ACME, ICP, seniority="VP", department="marketing")
        assert s.score == 100 and len(s.contributions) == 7
        assert {c.rule: c.points for c in s.contributions}["industry"] == 30

    @pytest.mark.parametrize("rule, company, points", [
        ("industry", Company("x.com", industry="Retail"), 0),
        ("size", Company("x.com", employees=50), 20), ("size", Company("x.com", employees=501), 0),
        ("revenue", Company("x.com", revenue=9e6), 0),
        ("country", Company("x.com", country="DE"), 0),
        ("sector", Company("x.com", sector=Sector.government), 0),
    ])
    def test_each_rule(self, rule: str, company: Company, points: float) -> None:
        got = {c.rule: c for c in score_fit(company, ICP).contributions}[rule]
        assert got.points == points

    def test_unknown_is_not_a_match(self) -> None:
        s = score_fit(None, ICP)
        assert s.score == 0 and all("unknown" in c.detail for c in s.contributions)

    def test_person_only_rules(self) -> None:
        assert score_fit(None, ICP, seniority="c_level").score == 10

    def test_negative_weight_and_tags(self) -> None:
        m = FitModel(rules=(FitRule(name="saas", attribute="tag", values=("SaaS",), weight=50),
                            FitRule(name="no_retail", attribute="industry", values=("software",), weight=-100),
                            FitRule(name="size", attribute="employees", min=1, weight=50)))
        assert score_fit(ACME, m).score == 0       # clamped at 0
        assert score_fit(Company("y.com", tags=("saas",)), m).score == 50

    def test_no_rules(self) -> None:
        assert score_fit(ACME, FitModel()).score == 0

    def test_rule_validation(self) -> None:
        with pytest.raises(ValueError):
            FitRule(name="x", attribute="employees", weight=1)
        with pytest.raises(ValueError):
            FitRule(name="x", attribute="industry", weight=1)
        with pytest.raises(ValueError):
            FitRule(name="x", attribute="revenue", min=5, max=1, weight=1)


class TestPatterns:
    @pytest.mark.parametrize("pattern, url, ok", [
        ("/pricing*", "https://www.acme.com/pricing", True),
        ("/pricing*", "https://www.acme.com/pricing/enterprise?x=1", True),
        ("/pricing*", "https://www.acme.com/blog/pricing", False),
        ("*.example.com/careers/*", "https://jobs.example.com/careers/eng", True),
        ("*.example.com/careers/*", "https://example.com/careers", True),
        ("*.example.com/careers/*", "https://example.org/careers/eng", False),
        ("*.example.com/careers/*", "https://badexample.com/careers/eng", False),
        ("docs.example.com", "https://docs.example.com/a/b", True),
        ("https://www.example.com/PRICING", "http://www.example.com/pricing/", True),
        ("*/kb/*", "https://x.com/help/kb/article", True),
        ("*-vs-*", "https://x.com/acme-vs-other", True),
        ("/blog/*/pricing", "https://x.com/blog/2024/pricing", True),
    ])
    def test_matching(self, pattern: str, url: str, ok: bool) -> None:
        assert compile_pattern(pattern).matches(url) is ok

    def test_host_pattern_never_matches_bare_path(self) -> None:
        assert not matches_any("/careers/x", ["*.example.com/careers/*"])
        assert matches_any("/careers/x", ["/careers/*"])


class TestFilters:
    def test_country_allow_deny(self) -> None:
        f = Filters(countries_allow=("gb", "us"), countries_deny=("RU",))
        assert country_filter("GB", f).passed
        assert country_filter("DE", f).reason == "country_not_allowed:DE"
        assert country_filter("ru", Filters(countries_deny=("RU",))).reason == "country_denied:RU"
        assert country_filter(None, f).passed
        assert country_filter(None, Filters(allow_unknown_country=False)).reason == "country_unknown"
        with pytest.raises(ValueError):
            Filters(countries_allow=("GBR",))

    def test_pages_include_exclude_wildcards(self) -> None:
        f = Filters(pages_include=("/pricing*", "*.acme.com/demo*"), pages_exclude=("/careers*",))
        assert page_filter(["https://www.acme.com/pricing"], f).passed
        assert page_filter(["https://app.acme.com/demo/book"], f).passed
        assert page_filter(["https://www.acme.com/blog"], f).reason == "no_included_page"
        assert page_filter(["https://www.acme.com/careers/x"], f).reason == "only_excluded_pages"
        assert page_filter([], f).reason == "no_pages"
        assert page_filter(["https://www.acme.com/blog"], Filters()).passed

    @pytest.mark.parametrize("sector", [Sector.government, Sector.public_sector, Sector.education, Sector.military])
    def test_sector_exclusion(self, sector: Sector) -> None:
        assert not sector_filter(Company("x.gov", sector=sector), N.business, Filters()).passed
        assert sector_filter(Company("x.gov", sector=sector), N.business, Filters(exclude_sectors=())).passed

    def test_sector_by_network(self) -> None:
        assert sector_filter(None, N.education, Filters()).reason == "sector_excluded:education_network"
        assert sector_filter(ACME, N.business, Filters()).passed

    def test_resolution_isp_and_unresolved(self) -> None:
        f = Filters()
        assert resolution_filter(None, (), N.business, f).reason == "unresolved"
        assert resolution_filter(None, (), N.isp, f).reason == "isp_traffic:isp"
        assert resolution_filter(ACME, ("ip_org",), N.mobile, f).reason == "isp_traffic:mobile"
        assert resolution_filter(ACME, ("identity",), N.isp, f).passed
        assert resolution_filter(None, (), N.isp, Filters(exclude_isp=False, exclude_unresolved=False)).passed

    def test_internal(self) -> None:
        f = Filters(internal_cidrs=("10.0.0.0/8", "2001:db8::/32"), internal_domains=("www.mysite.com",))
        assert internal_filter("10.1.2.3", None, f).reason == "internal_ip"
        assert internal_filter("2001:db8::1", None, f).reason == "internal_ip"
        assert internal_filter("203.0.113.1", "mysite.com", f).reason == "internal_domain"
        assert internal_filter("203.0.113.1", "acme.com", f).passed
        assert internal_filter("garbage", None, f).passed
        with pytest.raises(ValueError):
            Filters(internal_cidrs=("10.0.0.0/99",))

    def test_suppression(self) -> None:
        f = Filters(suppressed_email_hashes=("h1",), suppressed_domains=("competitor.com",))
        assert suppression_filter(["h0", "h1"], None, f).reason == "suppressed_email"
        assert suppression_filter([], "eu.competitor.com", f).reason == "suppressed_domain"
        assert suppression_filter([], "acme.com", f, extra_domains=frozenset({"acme.com"})).reason == \
            "suppressed_domain"
        assert suppression_filter(["h2"], "acme.com", f).passed

    def test_bots(self) -> None:
        assert bot_filter(True, "webdriver", Filters()).reason == "bot:webdriver"
        assert bot_filter(True, None, Filters(exclude_bots=False)).passed

    def test_run_filters_order(self) -> None:
        facts = LeadFacts(ACME, ("ip_range",), N.business, "GB", "203.0.113.1", ("https://acme.com/pricing",), ())
        results = run_filters(facts, Filters())
        assert [r.name for r in results] == ["bots", "internal", "suppression", "resolution", "sector", "country",
                                             "pages"]
        assert all(r.passed for r in results)
