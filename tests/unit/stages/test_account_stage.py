"""The account stage's handler through its Kafka-free contract: one bad update or account costs nothing
else, idle accounts are evicted on event time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pipeline.settings import load_settings

from .stage_fakes import (CODEC, COMPANY_IP, T0, Table, account_stage, bad_rows, event, make_settings, outputs,
                          payload, record, visitor_stage)

DAY = 86_400_000


def visits_from(*payloads: dict[str, Any], offset: int = 0) -> list[dict[str, Any]]:
    """Visit updates the real visitor stage makes of ``payloads``."""
    result = asyncio.run(visitor_stage()(0, offset, record(*payloads), Table().view))
    return [u for batch in outputs(result, "visits") for u in batch["updates"]]


def run(stage: Any, table: Table, updates: list[dict[str, Any]], offset: int = 0) -> Any:
    result = asyncio.run(stage(0, offset, CODEC.encode("VisitBatch", {"updates": updates}), table.view))
    table.apply(offset, result)
    return result


def scores(result: Any) -> dict[str, dict[str, Any]]:
    return {s["account"]: s for s in outputs(result, "lead-scores")}


def test_accounts_of_a_record_are_scored() -> None:
    updates = visits_from(payload("a", [event()], ip=COMPANY_IP), payload("b", [event()]))
    result = run(account_stage(), Table(), updates)
    assert set(scores(result)) == {"c:brightpath-analytics.example", "v:b"}
    assert bad_rows(result) == []


def test_an_account_that_raises_is_one_bad_row_and_the_others_go_on() -> None:
    table = Table()
    table.data["acme|v:b"] = {"o": -1, "s": {"a": {"v": 99}}}  # a state this version cannot read
    updates = visits_from(payload("a", [event()], ip=COMPANY_IP), payload("b", [event()]), payload("c", [event()]))
    result = run(account_stage(), table, updates)
    assert set(scores(result)) == {"c:brightpath-analytics.example", "v:c"}
    rows = bad_rows(result)
    assert [r["failure_type"] for r in rows] == ["processing_failure"]
    assert [u["visitor_id"] for u in json.loads(rows[0]["payload"])["updates"]] == ["b"]
    assert table.data["acme|v:b"]["s"] == {"a": {"v": 99}}


def test_an_unreadable_update_is_one_bad_row() -> None:
    updates = visits_from(payload("a", [event()]), payload("b", [event()]))
    updates[0] = {**updates[0], "update_id": "not-an-id"}
    result = run(account_stage(), Table(), updates)
    assert set(scores(result)) == {"v:b"}
    assert [r["failure_type"] for r in bad_rows(result)] == ["schema_violation"]


def test_garbage_record_is_a_bad_row() -> None:
    result = run_raw(b"garbage")
    assert [r["failure_type"] for r in bad_rows(result)] == ["schema_violation"]


def run_raw(value: bytes) -> Any:
    return asyncio.run(account_stage()(0, 0, value, Table().view))


def test_idle_accounts_are_evicted_on_event_time() -> None:
    stage, table = account_stage(make_settings(stages={"state_retention_days": 7})), Table()
    run(stage, table, visits_from(payload("old", [event()])), 0)
    run(stage, table, visits_from(payload("new", [event(t=T0 + 8 * DAY)]), offset=1), 1)
    assert "acme|v:old" not in table.data and "acme|v:new" in table.data


def bounce_after(site_gap: int, idle_minutes: int) -> bool:
    """Whether the account stage scores a bounce for a one-page session idle ``idle_minutes`` (event time),
    on a site whose ``session_gap_minutes`` is ``site_gap``: visitor a views one page, visitor b of the
    same company views one ``idle_minutes`` later (the account's "now")."""
    settings = load_settings(None, sites=[{"site_id": "acme", "allowed_origins": ["*"],
                                           "hosts": ["www.acme.example"], "session_gap_minutes": site_gap}],
                             identity_salt="unit-salt")
    visitor, account, vt, at = visitor_stage(settings), account_stage(settings), Table(), Table()
    for offset, p in enumerate([payload("a", [event("https://www.acme.example/", T0)], ip=COMPANY_IP),
                                payload("b", [event("https://www.acme.example/", T0 + idle_minutes * 60_000)],
                                        ip=COMPANY_IP)]):
        result = asyncio.run(visitor(0, offset, record(p), vt.view))
        vt.apply(offset, result)
        scored = run(account, at, [u for b in outputs(result, "visits") for u in b["updates"]], offset)
    [score] = outputs(scored, "lead-scores")
    return any(c["rule"] == "bounce" for c in score["intent_contributions"])


def test_bounces_are_judged_at_the_sites_session_gap() -> None:
    """Regression: the account stage judged bounces at the model's 30 minutes whatever the site's
    ``session_gap_minutes`` (the gap that ends the visitor's session)."""
    assert bounce_after(site_gap=10, idle_minutes=20)        # the session is over: a bounce
    assert not bounce_after(site_gap=60, idle_minutes=40)    # the session may still go on
    assert bounce_after(site_gap=30, idle_minutes=40) and not bounce_after(site_gap=30, idle_minutes=20)
