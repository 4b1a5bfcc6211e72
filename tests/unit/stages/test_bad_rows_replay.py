"""Replaying bad rows: the visitor stage's rows become pixel-events records that a fixed stage processes once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.ops.bad_rows import join_parts, parse_since, replay_plan
from pipeline.settings import load_settings
from pipeline.stages.messages import split_bad_row
from pipeline.topology import partition_for

from .stage_fakes import CODEC, Table, bad_rows, event, payload, record, visit_updates, visitor_stage


def test_parse_since() -> None:
    now = 1_800_000_000_000
    assert parse_since("2h", now) == now - 7_200_000
    assert parse_since("7d", now) == now - 7 * 86_400_000
    assert parse_since("1795000000000", now) == 1795000000000
    assert parse_since("2026-12-01T00:00:00Z") == parse_since("2026-12-01T00:00:00")
    with pytest.raises(ValueError):
        parse_since("yesterday-ish")


def test_rows_of_an_unknown_site_replay_once_after_the_site_is_added() -> None:
    before = visitor_stage()  # knows only "acme"
    events = [event("https://www.beta.example/"), event("https://www.beta.example/pricing")]
    rows = bad_rows(asyncio.run(before(0, 0, record(payload("b-1", events, site_id="beta"),
                                                     payload("a-1", [event()])), Table().view)))
    assert [r["failure_type"] for r in rows] == ["site_violation"]

    plan, report = replay_plan(rows, 4, CODEC, "pixel-events")
    assert report.replayed_rows == 1 and report.payloads == 1
    assert list(plan) == [partition_for("beta|b-1", 4)]

    sites = [{"site_id": "acme", "allowed_origins": ["*"]}, {"site_id": "beta", "allowed_origins": ["*"]}]
    fixed, table = visitor_stage(load_settings(None, sites=sites, identity_salt="s")), Table()
    (value,) = plan[partition_for("beta|b-1", 4)]
    first = asyncio.run(fixed(0, 10, value, table.view))
    table.apply(10, first)
    assert [h["url"] for u in visit_updates(first) for h in u["hits"]] == [e["url"] for e in events]
    again = asyncio.run(fixed(0, 11, value, table.view))  # replayed twice: nothing new
    assert visit_updates(again) == [] and bad_rows(again) == []


def test_split_rows_are_joined_and_other_stages_are_reported() -> None:
    rows = bad_rows(asyncio.run(visitor_stage()(0, 0, record(payload("v", [event(url="ftp://x/" + "y" * 5000)])),
                                                Table().view)))
    parts = split_bad_row(rows[0], 1000)
    joined = join_parts(parts + parts[:2])  # parts delivered twice are counted once
    assert len(joined) == 1 and joined[0]["payload"] == rows[0]["payload"]
    collector_row: dict[str, Any] = {**rows[0], "bad_row_id": "c", "stage": "collector"}
    _, report = replay_plan([*joined, collector_row], 4, CODEC, "pixel-events")
    assert report.replayed_rows == 1 and report.skipped == {"collector rows": 1}
