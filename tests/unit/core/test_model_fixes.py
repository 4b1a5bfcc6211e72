"""The scoring-model rules of issue 12: required ICP rules, conversions classified per site,
buying-stage intent, existing customers, identity evidence on any network, explanations."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

import pytest

from pipeline.core.actions import classify_action
from pipeline.core.fit import describe_icp, score_fit
from pipeline.core.intent import AccountState, apply_visits, merge_accounts
from pipeline.core.model import Company, Evidence, NetworkClass as N
from pipeline.core.qualify import qualify
from pipeline.core.scoring_model import (ActionRule, FitModel, FitRule, SiteRules, Thresholds, default_scoring_model,
                                         effective_rules)
from pipeline.core.sessions import Hit

from .helpers import DAY, MIN, visit

MODEL = default_scoring_model()
RULES = effective_rules(MODEL)
U = "https://www.acme-saas.com"
T1 = int(datetime(2024, 3, 10, 9, tzinfo=timezone.utc).timestamp() * 1000)
ACME = Company("acme.com", name="Acme", industry="software", employees=300, revenue=2e7, country="GB")


def run(updates: list, state: AccountState | None = None, rules=RULES):  # type: ignore[no-untyped-def]
    st, score = apply_visits(state or AccountState.new("s1", "c:acme.com"), updates, rules.intent)
    return qualify(st, score, rules)


def action(t: int, url: str, *, form_id: str | None = None, event: str | None = None, visitor: str = "v1",
           index: int = 1, company: Company = ACME, **kw: object) -> object:
    """A visit of one page with one action (a form submit or a custom event) on it."""
    u = visit(t, [url], visitor=visitor, index=index, sid=f"{visitor}-{index}", company=company, company_conf=0.9,
              **kw)  # type: ignore[arg-type]
    hit = Hit(t + 30_000, "action", url, form_id or event, form_id=form_id, event=event)
    return replace(u, hits=(*u.hits, hit))  # type: ignore[type-var]


def points(decision: object, rule: str) -> float:
    return sum(c.points for c in decision.intent.contributions if c.rule == rule)  # type: ignore[attr-defined]


# -- 1. required ICP rules ------------------------------------------------------------------------------

class TestRequiredRules:
    def test_a_non_icp_company_is_not_a_lead_at_any_fit_score(self) -> None:
        retailer = Company("shop.com", name="Shop", industry="retail", employees=300, revenue=2e7, country="GB")
        fit = score_fit(retailer, MODEL.fit, seniority="vp", department="marketing")
        assert fit.score >= MODEL.thresholds.fit_min            # partial weights alone would pass
        assert fit.unmet == ("target_industry: industry retail does not match",)
        detail = {c.rule: c.detail for c in fit.contributions}["target_industry"]
        assert detail == "required: industry retail does not match"
        d = run([action(T1, f"{U}/demo", form_id="demo-request", company=retailer, person_id="p1", person_conf=1.0,
                        seniority="vp")])
        assert not d.qualified and d.lead is None
        assert "fit_requirement_failed:target_industry:industry retail does not match" in d.reasons
        icp = [f for f in d.filters if f.name == "icp"]
        assert icp and not icp[0].passed and icp[0].reason == "required_rule_failed:target_industry"

    def test_unknown_value_fails_a_requirement(self) -> None:
        fit = score_fit(Company("x.com", industry="software", employees=300), MODEL.fit)
        assert fit.unmet == ("target_country: country unknown",)

    def test_required_flag_overrides_the_model_default(self) -> None:
        m = FitModel(required_attributes=("industry",), rules=(
            FitRule(name="industry", attribute="industry", values=("software",), weight=30, required=False),
            FitRule(name="seniority", attribute="seniority", values=("vp",), weight=10, required=True),
            FitRule(name="no_retail", attribute="industry", values=("retail",), weight=-50),
        ))
        assert score_fit(Company("x.com", industry="retail"), m, seniority="vp").unmet == ()
        assert score_fit(ACME, m, seniority="manager").unmet == ("seniority: seniority manager does not match",)

    def test_an_icp_company_meets_every_requirement(self) -> None:
        d = run([action(T1, f"{U}/demo", form_id="demo-request")])
        assert d.qualified and d.fit.unmet == ()
        assert [f.passed for f in d.filters if f.name == "icp"] == [True]

    def test_icp_in_plain_words(self) -> None:
        icp = FitModel(rules=(
            FitRule(name="industry", attribute="industry", values=("software", "fintech"), weight=40),
            FitRule(name="size", attribute="employees", min=50, max=1000, weight=30),
            FitRule(name="country", attribute="country", values=("DE", "FR", "NL"), weight=20, required=False),
            FitRule(name="seniority", attribute="seniority", values=("vp", "director"), weight=10),
        ))
        assert describe_icp(icp) == ("Companies in software or fintech, 50-1000 employees, in DE, FR, NL; "
                                     "people: vp or director; required: industry, employees")


# -- 2. conversions classified per site -------------------------------------------------------------------

DEMO = (ActionRule(name="demo", forms=("*demo*",), events=("demo_*",), pages=("/demo*",)),
        ActionRule(name="contact", pages=("/contact*",)))
NON = (ActionRule(name="support", forms=("*support*",), pages=("/support*",)),
       ActionRule(name="careers", forms=("*job*", "*apply*"), pages=("/careers*",)))


class TestActions:
    @pytest.mark.parametrize("form_id, event, page, kind, rule, on", [
        ("demo-request", None, f"{U}/demo", "conversion", "demo", "form"),
        (None, "demo_booked", f"{U}/", "conversion", "demo", "event"),
        ("newsletter", None, f"{U}/contact", "conversion", "contact", "page"),
        ("support-request", None, f"{U}/contact", "non_conversion", "support", "form"),   # the form id is more specific
        ("Job-Application", None, f"{U}/demo", "non_conversion", "careers", "form"),     # case-insensitive
        (None, None, f"{U}/careers/apply", "non_conversion", "careers", "page"),
        ("x", None, f"{U}/support/contact", "non_conversion", "support", "page"),
        ("newsletter", None, f"{U}/blog", "other", None, None),
    ])
    def test_classification(self, form_id: str | None, event: str | None, page: str, kind: str, rule: str | None,
                            on: str | None) -> None:
        got = classify_action(form_id, event, page, DEMO, NON)
        assert (got.kind, got.rule, got.matched_on) == (kind, rule, on)

    def test_only_conversions_score_as_conversions(self) -> None:
        scores = {}
        for form in ("demo-request", "support-ticket", "job-application", "whitepaper-download", "feedback"):
            d = run([action(T1, f"{U}/resources/x" if "download" in form else f"{U}/", form_id=form)])
            scores[form] = (points(d, "conversion"), points(d, "non_conversion"), points(d, "other_action"))
        assert scores == {"demo-request": (50, 0, 0), "support-ticket": (0, 0, 0), "job-application": (0, 0, 0),
                          "whitepaper-download": (0, 0, 0), "feedback": (0, 0, 3)}

    def test_a_site_sets_its_own_conversions(self) -> None:
        rules = effective_rules(MODEL, SiteRules(intent={"conversions": [{"name": "quote", "forms": ["rfq-*"]}]}))
        assert points(run([action(T1, f"{U}/", form_id="rfq-2")], rules=rules), "conversion") == 50
        assert points(run([action(T1, f"{U}/demo", form_id="demo-request")], rules=rules), "conversion") == 0

    def test_conversion_names_setting_keeps_working(self) -> None:
        rules = effective_rules(MODEL, None, ["hubspot_meeting"])
        assert rules.intent.conversions[0].name == "conversion_names"
        assert points(run([action(T1, f"{U}/", event="hubspot_meeting")], rules=rules), "conversion") == 50
        old_hit = replace(visit(T1, [f"{U}/"], company=ACME, company_conf=0.9), hits=(  # type: ignore[type-var]
            Hit(T1, "conversion", f"{U}/", "hubspot_meeting"),))
        assert points(run([old_hit], rules=rules), "conversion") == 50   # a version-1 record's hit

    def test_the_lead_names_the_form_and_its_page(self) -> None:
        d = run([action(T1, f"{U}/book-a-demo", form_id="demo-request", visitor="v7")])
        assert d.lead is not None
        ex = d.lead.explanation
        assert ex["cause"] == f"conversion: demo form 'demo-request' on {U}/book-a-demo"
        assert ex["conversions"][0] | {"tstamp": 0} == {
            "tstamp": 0, "rule": "demo", "matched_on": "form", "form_id": "demo-request", "event": None,
            "page": f"{U}/book-a-demo", "visitor_id": "v7"}
        assert ex["summary"].endswith(f"conversion: demo form 'demo-request' on {U}/book-a-demo")
        assert isinstance(ex["thresholds"]["fit_min"], float)

    def test_no_cause_without_a_conversion(self) -> None:
        ups = [visit(T1 + i * DAY, [f"{U}/pricing"] * 3 + [f"{U}/demo"], visitor=f"v{i}", index=1, sid=f"s{i}",
                     company=ACME, company_conf=0.9) for i in range(2)]
        d = run(ups)
        assert d.qualified and d.lead is not None and d.lead.explanation["cause"] is None


# -- 3. buying-stage intent -----------------------------------------------------------------------------------

class TestBuyingStage:
    @pytest.mark.parametrize("pages", [
        [f"{U}/support/a", f"{U}/support/b", f"{U}/help/c", f"{U}/kb/d"] * 3,
        [f"{U}/docs/api", f"{U}/docs/sdk", f"{U}/docs/auth"] * 4,
        [f"{U}/careers", f"{U}/careers/eng", f"{U}/jobs/1"] * 3,
    ], ids=["support", "docs", "careers"])
    def test_reading_without_buying_signals_contributes_little(self, pages: list[str]) -> None:
        ups = [visit(T1 + d * DAY + p * 60 * MIN, pages, visitor=f"v{p}", index=d + 1, sid=f"v{p}-{d}",
                     engaged_delta=10 * MIN, scroll=90, company=ACME, company_conf=0.9)
               for d in range(3) for p in range(2)]
        d = run(ups)
        assert round(d.intent.raw, 2) <= MODEL.intent.buying_stage.ambient_cap  # type: ignore[operator]
        assert d.intent.score < 30 and not d.qualified

    def test_a_single_bounce_is_nearly_nothing(self) -> None:
        d = run([visit(T1, [f"{U}/"], engaged=False, company=ACME, company_conf=0.9)])
        assert d.intent.score < 20

    def test_one_visitor_on_one_day_needs_more_than_pages(self) -> None:
        d = run([visit(T1, [f"{U}/pricing"] * 3 + [f"{U}/demo"] * 2 + [f"{U}/contact"] * 2 + [f"{U}/compare"],
                       engaged_delta=10 * MIN, company=ACME, company_conf=0.9)])
        assert points(d, "buying_stage") < 0 and not d.qualified
        assert any(r.startswith("intent_below_threshold") for r in d.reasons)

    def test_a_researchers_two_pricing_views_are_no_buying_stage(self) -> None:
        ups = [visit(T1, [f"{U}/pricing", f"{U}/compare", f"{U}/blog/a"], engaged_delta=5 * MIN, company=ACME,
                     company_conf=0.9),
               visit(T1 + 2 * DAY, [f"{U}/pricing", f"{U}/product", f"{U}/blog/b"], index=2, sid="v1-2",
                     engaged_delta=5 * MIN, company=ACME, company_conf=0.9)]
        d = run(ups)
        assert points(d, "buying_stage") < 0 and not d.qualified
        third = visit(T1 + 2 * DAY + 5 * MIN, [f"{U}/demo"], index=2, sid="v1-2", company=ACME, company_conf=0.9)
        d = run([third], d.state)          # the third pricing/demo/contact hit, on a second day: buying stage
        assert points(d, "buying_stage") == MODEL.intent.buying_stage.points_per_day and d.qualified

    def test_signals_on_two_days_qualify(self) -> None:
        ups = [visit(T1, [f"{U}/pricing"] * 2, company=ACME, company_conf=0.9),
               visit(T1 + DAY, [f"{U}/pricing", f"{U}/demo"], index=2, sid="v1-2", company=ACME, company_conf=0.9)]
        d = run(ups)
        assert points(d, "buying_stage") == MODEL.intent.buying_stage.points_per_day
        assert d.qualified

    def test_signals_from_two_people_qualify(self) -> None:
        ups = [visit(T1, [f"{U}/pricing"] * 2, company=ACME, company_conf=0.9),
               visit(T1 + 5 * MIN, [f"{U}/pricing", f"{U}/demo"], visitor="v2", sid="v2-1", company=ACME,
                     company_conf=0.9)]
        d = run(ups)
        assert points(d, "buying_stage") == MODEL.intent.buying_stage.points_per_person
        assert d.qualified


# -- 4. existing customers --------------------------------------------------------------------------------------

class TestCustomers:
    CUSTOMER = replace(ACME, tags=("saas", "Customer"))

    def test_a_customer_is_an_expansion_signal_not_a_lead(self) -> None:
        d = run([action(T1, f"{U}/demo", form_id="demo-request", company=self.CUSTOMER)])
        assert not d.qualified and d.lead is None and d.reasons == ("existing_customer",)
        assert d.expansion and d.expansion_reason is not None and "existing customer" in d.expansion_reason
        assert d.state.lead == {}

    def test_a_customer_below_the_thresholds_is_no_expansion(self) -> None:
        d = run([visit(T1, [f"{U}/"], company=self.CUSTOMER, company_conf=0.9)])
        assert not d.expansion and "existing_customer" in d.reasons

    def test_customer_tags_are_configurable(self) -> None:
        rules = effective_rules(MODEL, SiteRules(qualification={"customer_tags": ["client"]}))
        assert run([action(T1, f"{U}/demo", form_id="demo-request", company=self.CUSTOMER)], rules=rules).qualified


# -- 5. identity evidence on any network --------------------------------------------------------------------------

class TestIdentityOnAnyNetwork:
    IDENTITY = (Evidence("identity", "person p1 works at acme.com", 0.95),)
    OFFICE = (Evidence("ip_range", "in 198.51.100.0/24", 0.9), Evidence("ip_org", "Acme", 0.8))

    def remote(self, t: int, index: int) -> object:
        u = action(t, f"{U}/demo", form_id="demo-request", index=index, network_class=N.isp, person_id="p1",
                   person_conf=1.0)
        return replace(u, company_confidence=0.95, company_evidence=self.IDENTITY)  # type: ignore[type-var]

    def test_remote_buyer_after_an_office_colleague(self) -> None:
        office = replace(visit(T1 - 10 * DAY, [f"{U}/"], visitor="v2", sid="v2-1", company=ACME, company_conf=0.98),
                         company_evidence=self.OFFICE)  # type: ignore[type-var]
        first = run([self.remote(T1 - 20 * DAY, 1), office])
        assert first.state.company is not None and first.state.company["ev"][0][0] == "ip_range"
        d = run([self.remote(T1, 2)], first.state)      # the latest visit is from home; the company from office evidence
        assert d.qualified, d.reasons
        assert [f.passed for f in d.filters if f.name == "resolution"] == [True]

    def test_without_identity_home_traffic_still_fails(self) -> None:
        office = replace(visit(T1 - DAY, [f"{U}/"], visitor="v2", sid="v2-1", company=ACME, company_conf=0.98),
                         company_evidence=self.OFFICE)  # type: ignore[type-var]
        home = action(T1, f"{U}/demo", form_id="demo-request", visitor="v3", network_class=N.isp)
        d = run([office, replace(home, company=ACME, company_confidence=0.5)])  # type: ignore[type-var]
        assert "filter:resolution:isp_traffic:isp" in d.reasons

    def test_the_flag_survives_an_account_merge(self) -> None:
        a, _ = apply_visits(AccountState.new("s1", "v:x"), [self.remote(T1, 1)], RULES.intent)
        b = AccountState.new("s1", "c:acme.com")
        assert merge_accounts(b, a, RULES.intent).company["idv"]  # type: ignore[index]


# -- 7. site sections merge key by key -------------------------------------------------------------------------------

class TestSiteMerge:
    def test_a_site_filter_keeps_the_models_other_filters(self) -> None:
        r = effective_rules(MODEL, SiteRules.model_validate({"filters": {"countries_allow": ["de", "FR"]}}))
        assert r.filters.countries_allow == ("DE", "FR")
        assert r.filters.pages_exclude == MODEL.filters.pages_exclude      # the careers exclusion stays

    def test_nested_sections_and_model_instances(self) -> None:
        r = effective_rules(MODEL, SiteRules(thresholds=Thresholds(fit_min=70),
                                             qualification={"tiers": {"fit_a": 90}}))
        assert r.thresholds.fit_min == 70 and r.thresholds.intent_min == MODEL.thresholds.intent_min
        assert r.qualification.tiers.fit_a == 90 and r.qualification.tiers.intent_1 == MODEL.qualification.tiers.intent_1
        assert r.qualification.cooldown_days == MODEL.qualification.cooldown_days

    def test_a_site_overrides_intent_signals_by_name(self) -> None:
        r = effective_rules(MODEL, SiteRules.model_validate({"intent": {"half_life_days": 7, "page_signals": [
            {"name": "pricing", "patterns": ["/preise*"], "points": 20},
            {"name": "roi", "patterns": ["/roi-calculator*"], "points": 12}]}}))
        signals = {s.name: s for s in r.intent.page_signals}
        assert signals["pricing"].patterns == ("/preise*",) and signals["pricing"].points == 20
        assert signals["roi"].points == 12 and "demo" in signals and r.intent.half_life_days == 7
        assert r.intent.conversions == MODEL.intent.conversions

    def test_an_icp_replaces_the_rules_but_keeps_required_attributes(self) -> None:
        r = effective_rules(MODEL, SiteRules.model_validate({"icp": {"rules": [
            {"name": "industry", "attribute": "industry", "values": ["fintech"], "weight": 1}]}}))
        assert [x.name for x in r.fit.rules] == ["industry"]
        assert r.fit.required_attributes == MODEL.fit.required_attributes

    @pytest.mark.parametrize("doc, where", [
        ({"filters": {"countrys": ["DE"]}}, "filters.countrys: unknown key"),
        ({"thresholds": {"fit_min": 200}}, "thresholds.fit_min"),
        ({"intent": {"conversions": [{"name": "x"}]}}, "needs forms, events or pages"),
    ])
    def test_errors_name_the_path(self, doc: dict, where: str) -> None:  # type: ignore[type-arg]
        with pytest.raises(ValueError) as exc:
            SiteRules.model_validate(doc)
        assert where in str(exc.value)


# -- 6. one lead per cool-down, per person at identity level person ---------------------------------------------------

def test_person_level_tier_rise_updates_that_persons_lead() -> None:
    rules = effective_rules(MODEL, SiteRules(thresholds={"identity_level": "person"},
                                             intent={"buying_stage": {"unstaged_cap": None}}))
    warm = [f"{U}/pricing", f"{U}/demo", f"{U}/contact"]
    d1 = run([visit(T1, warm, company=ACME, company_conf=0.9, person_id="p1", person_conf=1.0)], rules=rules)
    assert d1.lead is not None and d1.lead.version == 1
    d2 = run([visit(T1 + MIN, warm, visitor="v2", sid="v2-1", company=ACME, company_conf=0.9, person_id="p2",
                    person_conf=1.0)], d1.state, rules=rules)
    assert d2.lead is not None and d2.lead.lead_id != d1.lead.lead_id and d2.lead.version == 1
    assert d1.lead.tier == "A2"
    hot = action(T1 + 2 * MIN, f"{U}/demo", form_id="demo-request", index=2, person_id="p1", person_conf=1.0)
    d3 = run([hot], d2.state, rules=rules)     # p1's tier rises from A2: p1's lead is updated
    assert d3.lead is not None and d3.lead.lead_id == d1.lead.lead_id and d3.lead.version == 2
    assert d3.lead.update_reason == "tier_rise:A2->A1"


def test_a_model_without_action_lists_uses_the_default_classification() -> None:
    from pipeline.core.scoring_model import IntentModel, load_scoring_model
    assert MODEL.intent.conversions == IntentModel().conversions        # the YAML and the class agree
    assert MODEL.intent.non_conversions == IntentModel().non_conversions
    assert MODEL.intent.buying_stage == IntentModel().buying_stage and MODEL.fit.required_attributes == \
        FitModel().required_attributes
    old = effective_rules(load_scoring_model({"version": "my-2024"}))   # a model file written before actions
    assert points(run([action(T1, f"{U}/demo", form_id="demo-request")], rules=old), "conversion") == 50
    assert points(run([action(T1, f"{U}/", form_id="support-ticket")], rules=old), "conversion") == 0
