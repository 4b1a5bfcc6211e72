from __future__ import annotations

import json
from datetime import datetime, timezone

from pipeline.core.intent import AccountState, apply_visits
from pipeline.core.model import Company, Evidence, NetworkClass as N, Sector
from pipeline.core.qualify import QuotaClaim, lead_id, month_of, over_quota, qualify, quota_claim, tier_of, tier_rank
from pipeline.core.scoring_model import (Qualification, SiteRules, Thresholds, Tiering, default_scoring_model,
                                         effective_rules)

from .helpers import DAY, MIN, visit

MODEL = default_scoring_model()
# Qualification mechanics on one warm visit: one visitor's single-day signals are not capped here
# (the buying-stage rule has its own tests in test_intent.py).
NO_SINGLE_CAP = {"buying_stage": {"unstaged_cap": None}}
RULES = effective_rules(MODEL, SiteRules(intent=NO_SINGLE_CAP))


def site_rules(**sections: object) -> object:
    return effective_rules(MODEL, SiteRules(intent=NO_SINGLE_CAP, **sections))  # type: ignore[arg-type]
U = "https://www.acme-saas.com"
ACME = Company("acme.com", name="Acme", industry="software", employees=300, revenue=2e7, country="GB")
T1 = int(datetime(2024, 3, 10, 9, tzinfo=timezone.utc).timestamp() * 1000)
WARM = [f"{U}/pricing", f"{U}/demo", f"{U}/contact"]            # intent 55.1 -> digit 2


def warm(t: int = T1, **kw: object) -> object:
    base: dict[str, object] = dict(company=ACME, company_conf=0.9, network_class=N.business)
    base.update(kw)
    return visit(t, WARM, **base)  # type: ignore[arg-type]


def run(updates: list, state: AccountState | None = None, rules=RULES):  # type: ignore[no-untyped-def]
    st, score = apply_visits(state or AccountState.new("s1", "c:acme.com"), updates, rules.intent)
    return qualify(st, score, rules)


class TestTiers:
    def test_grid(self) -> None:
        t = Tiering()
        assert tier_of(90, 90, t) == "A1" and tier_of(60, 50, t) == "B2" and tier_of(10, 10, t) == "C3"
        assert tier_rank("A1") == 0 and tier_rank("A3") < tier_rank("B1") and tier_rank("C3") == 8


class TestThresholds:
    def test_qualifies_with_explanation(self) -> None:
        d = run([warm()])
        assert d.qualified and d.reasons == () and d.tier == "A2" and d.lead is not None
        lead = d.lead
        assert lead.lead_id == lead_id("s1", "c:acme.com", MODEL.version, 1) and lead.sequence == 1
        ex = lead.explanation
        # these rules override the model's intent: the digest names the rules in effect
        assert ex["model"] == {"version": MODEL.version, "digest": RULES.model_digest} and RULES.model_digest != MODEL.digest
        assert {c["rule"] for c in ex["intent"]["contributions"]} >= {"page:pricing", "page:demo", "page:contact"}
        assert {c["rule"] for c in ex["fit"]["contributions"]} == {r.name for r in MODEL.fit.rules}
        assert ex["intent"]["pages"]["pricing"] == [f"{U}/pricing"]
        assert ex["intent"]["sessions"][0]["session_id"] == "v1-1"
        assert ex["identity"]["company"]["domain"] == "acme.com" and ex["identity"]["company_confidence"] == 0.9
        assert all(f["passed"] for f in ex["filters"])
        assert ex["summary"].startswith("A2: Acme")
        json.dumps(lead.to_dict())   # plain JSON-able
        assert d.state.lead["seq"] == 1 and d.state.lead["tier"] == "A2"

    def test_evidence_and_sources_in_explanation(self) -> None:
        from dataclasses import replace
        u = replace(warm(), company_evidence=(Evidence("ip_range", "in 198.51.100.0/24", 0.9),),  # type: ignore[type-var]
                    enrichment_sources=("GeoIP2-Enterprise",))
        ex = run([u]).lead.explanation  # type: ignore[union-attr]
        assert ex["identity"]["company_evidence"] == [["ip_range", "in 198.51.100.0/24", 0.9]]
        assert ex["enrichment_sources"] == ["GeoIP2-Enterprise", "ip_range"]

    def test_intent_below(self) -> None:
        d = run([visit(T1, [f"{U}/pricing"], company=ACME, company_conf=0.9)])
        assert not d.qualified and any(r.startswith("intent_below_threshold") for r in d.reasons)
        assert d.lead is None and d.state.lead == {}

    def test_fit_below(self) -> None:
        d = run([warm(company=Company("tiny.com", industry="retail", employees=3, country="BR"))])
        assert any(r.startswith("fit_below_threshold") for r in d.reasons)

    def test_company_confidence_below(self) -> None:
        d = run([warm(company_conf=0.5)])
        assert d.reasons == ("identity_below_minimum:company:0.5<0.6",)

    def test_person_level(self) -> None:
        rules = site_rules(thresholds=Thresholds(identity_level="person", min_confidence=0.9))
        assert any(r.startswith("identity_below_minimum:person") for r in run([warm()], rules=rules).reasons)
        d = run([warm(person_id="p1", person_conf=1.0, seniority="vp")], rules=rules)
        assert d.qualified and d.lead is not None
        assert d.lead.explanation["identity"]["person"]["person_id"] == "p1"

    def test_all_failures_listed(self) -> None:
        d = run([visit(T1, [f"{U}/careers/x"], network_class=N.isp)])
        assert {r.split(":")[1] for r in d.reasons if r.startswith("filter:")} == {"resolution", "pages"}
        assert any(r.startswith("fit_below") for r in d.reasons) and any(r.startswith("intent_below") for r in d.reasons)

    def test_sector_filter_blocks(self) -> None:
        gov = Company("agency.gov", industry="software", employees=300, country="GB", sector=Sector.government)
        assert "filter:sector:sector_excluded:government" in run([warm(company=gov)]).reasons

    def test_bot_flag(self) -> None:
        st, score = apply_visits(AccountState.new("s1", "c:acme.com"), [warm()], RULES.intent)
        d = qualify(st, score, RULES, is_bot=True, bot_reason="webdriver")
        assert "filter:bots:bot:webdriver" in d.reasons


class TestCooldownAndQuota:
    def test_cooldown_same_tier_then_expiry(self) -> None:
        d1 = run([warm()])
        blog = visit(T1 + DAY, [f"{U}/blog"], index=2, sid="s2", company=ACME, company_conf=0.9)
        d2 = run([blog], d1.state)
        assert not d2.qualified and d2.reasons == ("cooldown:A2->A2",)
        later = T1 + 31 * DAY
        d3 = run([warm(later, index=3, sid="s3")], d2.state)
        assert d3.qualified and d3.lead is not None and d3.lead.sequence == 2
        assert d3.lead.lead_id == lead_id("s1", "c:acme.com", MODEL.version, 2)
        assert d3.lead.explanation["previous_lead"]["tier"] == "A2"

    def test_tier_rise_inside_cooldown_updates_the_same_lead(self) -> None:
        rules = site_rules(qualification=Qualification(monthly_quota=1))
        d1 = run([warm()], rules=rules)
        assert d1.lead is not None and d1.lead.version == 1 and d1.lead.update_reason is None
        hot = visit(T1 + 40 * MIN, [f"{U}/demo"], conversions=["demo_request"], index=2, sid="s2", company=ACME,
                    company_conf=0.9)
        d2 = run([hot], d1.state, rules=rules)
        assert d2.tier == "A1" and d2.qualified and d2.lead is not None
        assert d2.lead.lead_id == d1.lead.lead_id and d2.lead.sequence == 1      # one lead, not a second one
        assert d2.lead.version == 2 and d2.lead.update_reason == "tier_rise:A2->A1"
        # the quota counts it once: the update claims the lead id already counted this month
        assert quota_claim(d2, rules) == quota_claim(d1, rules) == QuotaClaim("s1", "2024-03", d1.lead.lead_id, 1)
        d3 = run([visit(T1 + 2 * DAY, [f"{U}/blog"], index=3, sid="s3", company=ACME, company_conf=0.9)], d2.state)
        assert d3.reasons == ("cooldown:A1->A1",)
        # the cool-down runs from the lead's first issue, not from its update
        later = run([warm(T1 + 30 * DAY + MIN, index=4, sid="s4")], d3.state)
        assert later.qualified and later.lead is not None and later.lead.sequence == 2 and later.lead.version == 1

    def test_person_cooldown_is_per_person(self) -> None:
        rules = site_rules(thresholds=Thresholds(identity_level="person"))
        d1 = run([warm(person_id="p1", person_conf=1.0)], rules=rules)
        assert d1.qualified
        d2 = run([warm(T1 + MIN, visitor="v2", sid="x2", person_id="p2", person_conf=1.0)], d1.state, rules=rules)
        assert d2.qualified     # a different, equally confident and more recent person
        d3 = run([warm(T1 + 2 * MIN, visitor="v2", sid="x3", person_id="p2", person_conf=1.0)], d2.state, rules=rules)
        assert d3.reasons[0].startswith("cooldown")

    def test_quota_claims_the_lead_in_its_event_time_month(self) -> None:
        rules = site_rules(qualification=Qualification(monthly_quota=1))
        d1 = run([warm()], rules=rules)
        assert d1.qualified and d1.lead is not None
        assert quota_claim(d1, rules) == QuotaClaim("s1", "2024-03", d1.lead.lead_id, 1)
        assert quota_claim(d1, RULES) is None                        # no monthly_quota: nothing to claim
        blocked = run([visit(T1, [f"{U}/pricing"], company=ACME, company_conf=0.9)], rules=rules)
        assert not blocked.qualified and quota_claim(blocked, rules) is None   # not a lead: nothing to claim

    def test_refused_claim_is_not_a_lead_and_keeps_the_lead_memory(self) -> None:
        rules = site_rules(qualification=Qualification(monthly_quota=1))
        other = AccountState.new("s1", "c:other.com")
        co = Company("other.com", industry="software", employees=300, country="GB")
        st, score = apply_visits(other, [warm(company=co)], rules.intent)
        d = qualify(st, score, rules)
        claim = quota_claim(d, rules)
        assert claim is not None and d.state.lead["seq"] == 1
        refused = over_quota(d, st, claim)
        assert not refused.qualified and refused.lead is None
        assert refused.reasons == ("quota_exhausted:2024-03:1",) and refused.state.lead == {} == st.lead
        april = int(datetime(2024, 4, 1, tzinfo=timezone.utc).timestamp() * 1000)
        later = run([warm(april, index=2, sid="s2", company=co)], refused.state, rules=rules)
        assert later.qualified and later.lead is not None and later.lead.sequence == 1   # the refused one never was
        assert quota_claim(later, rules) == QuotaClaim("s1", "2024-04", later.lead.lead_id, 1)

    def test_month_boundary(self) -> None:
        end_of_march = int(datetime(2024, 3, 31, 23, 59, 59, 999000, tzinfo=timezone.utc).timestamp() * 1000)
        assert month_of(end_of_march) == "2024-03" and month_of(end_of_march + 1) == "2024-04"


class TestReplay:
    def test_replay_gives_identical_leads(self) -> None:
        ups = [warm(T1 + i * DAY * 10, index=i + 1, sid=f"s{i}", visitor=f"v{i % 2}") for i in range(8)]

        def replay() -> list[str]:
            st = AccountState.new("s1", "c:acme.com")
            out = []
            for i, u in enumerate(ups):
                st, score = apply_visits(st, [u], RULES.intent, offset=i)
                d = qualify(st, score, RULES)
                st = d.state
                if d.lead:
                    out.append(json.dumps(d.lead.to_dict(), sort_keys=True))
            return out

        first, second = replay(), replay()
        assert first == second and len(first) >= 2
        assert len({(json.loads(x)["lead_id"], json.loads(x)["version"]) for x in first}) == len(first)

    def test_model_version_changes_ids(self) -> None:
        other = effective_rules(MODEL.model_copy(update={"version": "v-next"}), SiteRules(intent=NO_SINGLE_CAP))
        assert run([warm()]).lead.lead_id != run([warm()], rules=other).lead.lead_id  # type: ignore[union-attr]
