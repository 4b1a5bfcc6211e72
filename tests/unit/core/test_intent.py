from __future__ import annotations

import json
import math

import pytest

from pipeline.core.intent import (AccountState, apply_visits, decay_factor, merge_accounts, saturate,
                                  score_intent)
from pipeline.core.model import Company
from pipeline.core.scoring_model import Activity, Breadth, IntentModel, PageSignal, default_scoring_model

from .helpers import DAY, MIN, T0, visit

U = "https://www.acme-saas.com"
ZERO = Activity(points=0)
BARE = IntentModel(page_view=ZERO, session=ZERO, repeat_visit=ZERO, active_day=0, engaged_minute=ZERO,
                   deep_scroll=ZERO, conversion=ZERO, bounce=ZERO, support_only=ZERO,
                   breadth=Breadth(points_per_visitor=0),
                   page_signals=(PageSignal(name="pricing", patterns=("/pricing*",), points=10, daily_cap=3),
                                 PageSignal(name="careers", patterns=("/careers*",), points=-10, daily_cap=3)))


def new() -> AccountState:
    return AccountState.new("s1", "c:acme.com")


def contrib(score, rule: str) -> float:  # type: ignore[no-untyped-def]
    return next((c.points for c in score.contributions if c.rule == rule), 0.0)


class TestDecay:
    def test_half_life_math(self) -> None:
        assert decay_factor(0, 14) == 1 and decay_factor(14, 14) == 0.5 and decay_factor(28, 14) == 0.25
        assert decay_factor(-3, 14) == 1

    def test_activity_one_half_life_old_counts_half(self) -> None:
        st, s0 = apply_visits(new(), [visit(T0, [f"{U}/pricing"])], BARE)
        assert contrib(s0, "page:pricing") == 10
        later = score_intent(st, BARE, now=T0 + 14 * DAY)
        assert contrib(later, "page:pricing") == 5
        assert contrib(score_intent(st, BARE, now=T0 + 7 * DAY), "page:pricing") == pytest.approx(10 / math.sqrt(2), abs=1e-4)

    def test_decay_by_whole_days_and_now_is_event_time(self) -> None:
        st, _ = apply_visits(new(), [visit(T0, [f"{U}/pricing"])], BARE)
        st, s = apply_visits(st, [visit(T0 + 14 * DAY, [f"{U}/pricing"], index=2)], BARE)
        assert s.now == st.last_ts and contrib(s, "page:pricing") == 15

    def test_window_forgets(self) -> None:
        model = BARE.model_copy(update={"window_days": 30})
        st, _ = apply_visits(new(), [visit(T0, [f"{U}/pricing"])], model)
        st, s = apply_visits(st, [visit(T0 + 31 * DAY, [f"{U}/"], index=2)], model)
        assert contrib(s, "page:pricing") == 0 and str(T0 // DAY) not in st.days


class TestCapsAndSignals:
    def test_daily_cap(self) -> None:
        st, s = apply_visits(new(), [visit(T0, [f"{U}/pricing"] * 5)], BARE)
        assert contrib(s, "page:pricing") == 30
        st, s = apply_visits(st, [visit(T0 + DAY, [f"{U}/pricing/x"] * 2, index=2)], BARE)
        assert contrib(s, "page:pricing") == pytest.approx(30 * decay_factor(1, 14) + 20)

    def test_uncapped(self) -> None:
        m = BARE.model_copy(update={"page_signals": (PageSignal(name="pricing", patterns=("/pricing*",), points=1,
                                                                daily_cap=None),)})
        assert contrib(apply_visits(new(), [visit(T0, [f"{U}/pricing"] * 50)], m)[1], "page:pricing") == 50

    def test_default_model_points(self) -> None:
        model = default_scoring_model().intent
        _, s = apply_visits(new(), [visit(T0, [f"{U}/pricing", f"{U}/demo"], conversions=["demo_request"],
                                           engaged_delta=3 * MIN, scroll=80)], model)
        got = {c.rule: c.points for c in s.contributions}
        assert got == {"active_day": 5, "conversion": 50, "deep_scroll": 2, "engaged_minute": 3,
                       "page:demo": 15, "page:pricing": 10, "page_view": 2, "session": 3,
                       "buying_stage": -5}    # one visitor, one day: page signals count at most 20
        assert s.raw == 85 and s.score == saturate(85, 60) == 75.7
        assert s.top_pages == {"demo": (f"{U}/demo",), "pricing": (f"{U}/pricing",)}
        assert s.top_sessions[0]["session_id"] == "v1-1"

    def test_repeat_visits_and_engaged_cap(self) -> None:
        model = default_scoring_model().intent
        _, s = apply_visits(new(), [visit(T0, index=1), visit(T0 + 40 * MIN, index=2, engaged_delta=30 * MIN)],
                            model)
        assert contrib(s, "session") == 6 and contrib(s, "repeat_visit") == 2
        assert contrib(s, "engaged_minute") == 10      # capped at 10 minutes a day

    def test_deep_scroll_once_per_session(self) -> None:
        model = default_scoring_model().intent
        st, _ = apply_visits(new(), [visit(T0, scroll=80)], model)
        _, s = apply_visits(st, [visit(T0, scroll=90)], model)
        assert contrib(s, "deep_scroll") == 2


class TestNegatives:
    def test_careers_negative(self) -> None:
        _, s = apply_visits(new(), [visit(T0, [f"{U}/careers/eng"])], BARE)
        assert contrib(s, "page:careers") == -10 and s.score == 0 and s.raw == -10

    def test_bounce_only_after_idle_gap(self) -> None:
        m = BARE.model_copy(update={"bounce": Activity(points=-3, daily_cap=5)})
        st, s = apply_visits(new(), [visit(T0, [f"{U}/"])], m)
        assert contrib(s, "bounce") == 0          # the session may still go on
        assert contrib(score_intent(st, m, now=T0 + 30 * MIN), "bounce") == -3
        engaged, _ = apply_visits(new(), [visit(T0, [f"{U}/"], engaged=True)], m)
        assert contrib(score_intent(engaged, m, now=T0 + 30 * MIN), "bounce") == 0

    def test_support_only_visit(self) -> None:
        m = BARE.model_copy(update={"support_only": Activity(points=-5, daily_cap=3)})
        _, s = apply_visits(new(), [visit(T0, [f"{U}/support/reset", f"{U}/help/x"])], m)
        assert contrib(s, "support_only") == -5
        _, s2 = apply_visits(new(), [visit(T0, [f"{U}/support/reset", f"{U}/pricing"])], m)
        assert contrib(s2, "support_only") == 0


class TestBreadth:
    def test_distinct_visitors(self) -> None:
        m = BARE.model_copy(update={"breadth": Breadth(points_per_visitor=8, max_visitors=3, window_days=30)})
        _, s = apply_visits(new(), [visit(T0, visitor="a")], m)
        assert contrib(s, "breadth") == 0
        _, s = apply_visits(new(), [visit(T0, visitor=v) for v in "abcde"], m)
        assert contrib(s, "breadth") == 16           # capped at 3 visitors: 2 extra

    def test_breadth_window(self) -> None:
        m = BARE.model_copy(update={"breadth": Breadth(points_per_visitor=8, max_visitors=5, window_days=30)})
        st, _ = apply_visits(new(), [visit(T0, visitor="a")], m)
        _, s = apply_visits(st, [visit(T0 + 31 * DAY, visitor="b")], m)
        assert contrib(s, "breadth") == 0


class TestStateBehaviour:
    def test_saturate(self) -> None:
        assert saturate(0, 60) == 0 and saturate(-5, 60) == 0 and saturate(60, 60) == 63.2
        assert saturate(10_000, 60) == 100.0 and saturate(30, 60) < saturate(31, 60)

    def test_bots_score_nothing(self) -> None:
        st, s = apply_visits(new(), [visit(T0, [f"{U}/pricing"], is_bot=True)], BARE)
        assert s.raw == 0 and st.bot_visits == 1 and st.sessions == {}

    def test_offset_guard(self) -> None:
        st, _ = apply_visits(new(), [visit(T0, [f"{U}/pricing"])], BARE, offset=3)
        st2, s = apply_visits(st, [visit(T0, [f"{U}/pricing"], sid="x")], BARE, offset=3)
        assert st2 is st and contrib(s, "page:pricing") == 10

    def test_identity_kept(self) -> None:
        acme = Company("acme.com", name="Acme")
        st, _ = apply_visits(new(), [visit(T0, company=acme, company_conf=0.5),
                                     visit(T0 + MIN, company=acme, company_conf=0.9, visitor="b",
                                           person_id="p1", person_conf=1.0, seniority="vp")], BARE)
        assert st.company is not None and st.company["conf"] == 0.9
        assert st.persons["p1"]["sen"] == "vp" and st.seen["vis"] == "b" and st.seen["country"] == "GB"

    def test_roundtrip_and_determinism(self) -> None:
        model = default_scoring_model().intent
        ups = [visit(T0 + i * DAY, [f"{U}/pricing", f"{U}/careers/x"], visitor=f"v{i % 3}", index=i + 1,
                     engaged_delta=MIN) for i in range(6)]
        a, sa = apply_visits(new(), ups, model)
        b, sb = apply_visits(new(), list(ups), model)
        assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True) and sa == sb
        restored = AccountState.from_dict(json.loads(json.dumps(a.to_dict())))
        assert restored == a and score_intent(restored, model) == sa
        with pytest.raises(ValueError):
            AccountState.from_dict({"v": 0})

    def test_batching_invariance(self) -> None:
        model = default_scoring_model().intent
        ups = [visit(T0 + i * 3 * 3_600_000, [f"{U}/pricing"], index=i + 1) for i in range(8)]
        one, s1 = apply_visits(new(), ups, model)
        many = new()
        for u in ups:
            many, s2 = apply_visits(many, [u], model)
        assert one == many and s1 == s2

    def test_merge_accounts(self) -> None:
        anon, _ = apply_visits(AccountState.new("s1", "v:v9"), [visit(T0, [f"{U}/pricing"], visitor="v9",
                                                                      account="v:v9")], BARE)
        known, _ = apply_visits(new(), [visit(T0 + MIN, [f"{U}/pricing"], visitor="v1",
                                              company=Company("acme.com"), company_conf=0.9)], BARE)
        merged = merge_accounts(known, anon, BARE)
        s = score_intent(merged, BARE)
        assert contrib(s, "page:pricing") == 20 and set(merged.visitors) == {"v1", "v9"}
        assert merged.account == "c:acme.com" and merged.company is not None


M = default_scoring_model().intent


class TestBotWithdrawal:
    """A visitor found to be a bot after some of its pages were counted: those pages stop counting."""

    def test_a_visitor_found_to_be_a_bot_has_its_earlier_activity_withdrawn(self) -> None:
        human = visit(T0, [f"{U}/pricing", f"{U}/docs"], visitor="human", sid="h1")
        bot_early = visit(T0 + MIN, [f"{U}/pricing", f"{U}/demo", f"{U}/contact"] * 3, visitor="crawler", sid="b1")
        alone, alone_score = apply_visits(new(), [human], M)
        st, before = apply_visits(alone, [bot_early], M)
        assert before.score > alone_score.score          # counted while it looked human
        st, after = apply_visits(st, [visit(T0 + 2 * MIN, [f"{U}/pricing"], visitor="crawler", sid="b1",
                                            is_bot=True)], M)
        assert after.score == alone_score.score           # withdrawn: only the human's activity counts
        assert "crawler" not in st.visitors and "crawler" in st.bot_visitors
        assert all(rec.get("vis") != "crawler" for rec in st.sessions.values())
        # later updates of that visitor never count again, even if one looks human
        st, later = apply_visits(st, [visit(T0 + 3 * MIN, [f"{U}/demo"], visitor="crawler", sid="b2")], M)
        assert later.score == alone_score.score

    def test_state_round_trips_with_the_per_visitor_counts(self) -> None:
        st, _ = apply_visits(new(), [visit(T0, [f"{U}/pricing"], visitor="a", sid="s")], M)
        assert st.by_visitor["a"]
        assert AccountState.from_dict(json.loads(json.dumps(st.to_dict()))) == st
