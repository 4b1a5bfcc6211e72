"""The prospect list's rules: priority, trend, status and the reason line."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.leads.view import (DAY_MS, RECENCY_HALF_LIFE_DAYS, Filter, account_doc, matches, not_seen_doc,
                                 priority_at, priority_key, reason_line, status_of, trend)

NOW = 20_000 * DAY_MS


def score(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "site_id": "acme", "account": "c:brightpath.example", "tstamp": NOW, "fit": 80.0, "intent": 60.0,
        "tier": "A2", "qualified": False, "reasons": [], "company_domain": "brightpath.example",
        "company_name": "Brightpath", "visitors": 3, "last_lead_id": None,
        "company": {"industry": "Fintech", "employees": 250, "country": "DE", "sector": "private"},
        "intent_contributions": [
            {"rule": "active_day", "points": 10.0, "count": 2, "detail": ""},
            {"rule": "page:pricing", "points": 20.0, "count": 2, "detail": ""},
            {"rule": "page:careers", "points": -4.0, "count": 1, "detail": ""}],
        "fit_contributions": [], "filters": [{"name": "bots", "passed": True, "reason": None}],
        "persons": [{"person_id": "p1", "confidence": 0.9, "seniority": "vp", "department": None, "last_seen": NOW}],
        "sessions": [], "pages": {"pricing": ["https://acme.example/pricing"]},
    }
    base.update(over)
    return base


def test_priority_halves_every_half_life_and_keeps_order_at_any_now() -> None:
    fresh = priority_key(60.0, NOW)
    week_old = priority_key(60.0, NOW - int(RECENCY_HALF_LIFE_DAYS * DAY_MS))
    assert priority_at(fresh, NOW) == pytest.approx(60.0, abs=0.1)
    assert priority_at(week_old, NOW) == pytest.approx(30.0, abs=0.1)
    # a stronger but older account against a weaker fresh one: the order is the same a month later
    strong_old = priority_key(90.0, NOW - 10 * DAY_MS)
    weak_fresh = priority_key(40.0, NOW)
    for later in (NOW, NOW + 30 * DAY_MS):
        assert (priority_at(strong_old, later) > priority_at(weak_fresh, later)) == (strong_old > weak_fresh)


def test_filtered_accounts_sort_last_and_show_only_when_asked() -> None:
    doc = account_doc(score(filters=[{"name": "sector", "passed": False, "reason": "government"}]), None)
    assert doc["status"] == "filtered" and doc["filtered_by"] == "sector"
    assert priority_at(doc["priority_key"], NOW) == 0.0
    assert doc["priority_key"] < account_doc(score(intent=0.0, fit=0.0), None)["priority_key"]
    assert not matches(doc, Filter())
    assert matches(doc, Filter(status="filtered"))


def test_status() -> None:
    assert status_of(score(last_lead_id="x")) == ("qualified", None)
    assert status_of(score(intent=45.0)) == ("warming", None)
    assert status_of(score(intent=10.0)) == ("cold", None)
    assert status_of(score(reasons=["existing_customer"], last_lead_id="x"))[0] == "customer"
    assert status_of(score(expansion=True, expansion_reason="3 visitors on pricing"))[0] == "customer"


def test_trend_is_the_change_over_seven_days() -> None:
    history: list[list[float]] = []
    for day, intent in ((0, 10.0), (3, 30.0), (8, 50.0)):
        history, change = trend(history, 80.0, intent, NOW + day * DAY_MS)
    # on day 8 the window holds days 1..8: the oldest sample in it is day 3 (30)
    assert change == {"fit": 0.0, "intent": 20.0}
    assert [int(h[0]) - NOW // DAY_MS for h in history] == [3, 8]
    # the same day twice keeps one sample, the latest
    history, change = trend(history, 80.0, 55.0, NOW + 8 * DAY_MS)
    assert [h[2] for h in history] == [30.0, 55.0] and change["intent"] == 25.0


def test_reason_line_names_visitors_signals_days_and_firmographics() -> None:
    line = reason_line(score())
    assert line == "3 visitors, pricing twice on 2 days, 250-employee fintech in DE"
    conv = score(intent_contributions=[{"rule": "conversion", "points": 50.0, "count": 1,
                                        "detail": "form demo-request on /demo"}])
    assert "form demo-request on /demo" in reason_line(conv)
    assert reason_line(score(filters=[{"name": "country", "passed": False, "reason": "RU"}])).endswith(
        "filtered: country")


def test_account_doc_carries_people_with_profiles_and_keeps_history() -> None:
    first = account_doc(score(intent=40.0, tstamp=NOW - 2 * DAY_MS), None)
    doc = account_doc(score(), first, {"p1": {"name": "Ada Lovelace", "title": "VP Finance"}})
    assert doc["people"][0] | {} == {"person_id": "p1", "confidence": 0.9, "name": "Ada Lovelace",
                                     "title": "VP Finance", "seniority": "vp", "department": None,
                                     "last_seen": NOW}
    assert doc["trend"]["intent"] == 20.0
    assert doc["domain"] == "brightpath.example" and doc["country"] == "DE"


def test_not_seen_accounts_rank_by_fit_below_active_ones() -> None:
    unseen = not_seen_doc("acme", {"domain": "new.example", "name": "New", "employees": 300,
                                   "industry": "Software", "country": "FR"}, 90.0, [])
    assert unseen["status"] == "not_seen" and not unseen["seen"]
    assert unseen["reason"] == "not yet seen: 300-employee software in FR, fit 90"
    active = account_doc(score(), None)
    assert active["priority_key"] > unseen["priority_key"]
    assert unseen["priority_key"] > not_seen_doc("acme", {"domain": "b.example"}, 60.0, [])["priority_key"]
    assert matches(unseen, Filter(seen=False)) and not matches(unseen, Filter(seen=True))


def test_filter_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="tier must be one of"):
        Filter(status="hot")
    with pytest.raises(ValueError, match="alpha-2"):
        Filter(country="Germany")
    row = account_doc(score(), None)
    assert matches(row, Filter(min_fit=80, min_intent=60, country="de"))
    assert not matches(row, Filter(min_intent=61))
