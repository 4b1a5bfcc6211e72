"""The pure parts of a replay: times, names, the offset range, the settings it runs with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.ops.replay import (FirstRecord, ReplayError, ReplayRange, bounded, default_name, parse_time,
                                 range_from_offsets, replay_settings, replay_topic_specs, replay_topics,
                                 validate_name)
from pipeline.settings import Settings
from pipeline.stages.runtime import HandlerResult, Output, StateView

NOW = 1_733_356_800_000  # 2024-12-05T00:00:00Z


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("90s", NOW - 90_000),
    ("30m", NOW - 1_800_000),
    ("2h", NOW - 7_200_000),
    ("1.5d", NOW - 129_600_000),
    ("1w", NOW - 604_800_000),
    ("1733300000000", 1_733_300_000_000),
    ("2024-12-04", 1_733_270_400_000),
    ("2024-12-04T08:00:00Z", 1_733_299_200_000),
    ("2024-12-04T09:00:00+01:00", 1_733_299_200_000),
    ("2024-12-04T08:00:00", 1_733_299_200_000),  # no zone: UTC
])
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-5m", "2024-13-01"])
def test_parse_time_says_what_it_reads(text: str) -> None:
    with pytest.raises(ReplayError, match="ISO 8601"):
        parse_time(text, NOW)


def test_names() -> None:
    assert validate_name("rescore_v2-1") == "rescore_v2-1"
    for bad in ("", "a.b", "-a", "a b", "x" * 65, "qualified-leads/x"):
        with pytest.raises(ReplayError):
            validate_name(bad)
    assert default_name(NOW) == "replay-20241205-000000"
    validate_name(default_name(NOW))


class _Offset:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_range_from_offsets_times_and_ends() -> None:
    ends = {0: 100, 1: 50, 2: 0}
    since = {0: _Offset(10), 1: None, 2: None}        # nothing at or after --since in 1 (and 2 is empty)
    until = {0: _Offset(40), 1: None, 2: None}
    rng = range_from_offsets([0, 1, 2], since, until, ends)
    assert dict(rng.start) == {0: 10, 1: 50, 2: 0} and dict(rng.stop) == {0: 40, 1: 50, 2: 0}
    assert rng.records == 30
    open_ended = range_from_offsets([0, 1, 2], since, None, ends)
    assert dict(open_ended.stop) == {0: 100, 1: 50, 2: 0} and open_ended.records == 90
    # --until before the first record at --since: nothing, never a negative range
    empty = range_from_offsets([0], {0: _Offset(10)}, {0: _Offset(5)}, {0: 100})
    assert empty.records == 0 and empty.done({})


def test_range_progress_and_done() -> None:
    rng = ReplayRange(start={0: 10, 1: 5, 2: 7}, stop={0: 20, 1: 5, 2: 9})
    assert rng.contains(0, 10) and rng.contains(0, 19) and not rng.contains(0, 9) and not rng.contains(0, 20)
    assert not rng.contains(1, 5) and not rng.contains(3, 0)
    assert rng.applied({}) == 0 and not rng.done({})
    assert rng.applied({0: 14, 2: 7}) == 6 and not rng.done({0: 14, 2: 8})
    assert rng.done({0: 19, 2: 8}) and rng.applied({0: 19, 2: 8}) == 12
    assert rng.done({0: 250, 2: 300}) and rng.applied({0: 250, 2: 300}) == 12  # records past the stop


def test_bounded_handler_applies_only_the_range() -> None:
    calls: list[tuple[int, int]] = []

    async def handler(partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        calls.append((partition, offset))
        return HandlerResult(outputs=[Output("t", partition, None, value)], states={"k": offset})

    first = FirstRecord()
    within = bounded(handler, ReplayRange(start={0: 3}, stop={0: 5}), first)
    results = [asyncio.run(within(0, o, b"x", StateView({}))) for o in range(7)]
    assert calls == [(0, 3), (0, 4)] and first.at is not None
    assert [bool(r.outputs or r.states) for r in results] == [False, False, False, True, True, False, False]


def _settings(tmp_path: Path) -> Settings:
    return Settings(kafka={"bootstrap_servers": "127.0.0.1:9092"}, redis={"url": "redis://127.0.0.1:6379/0"},
                    data_dir=tmp_path / "state", topics={"qualified_leads": "leads", "partitions": {"visits": 4}},
                    stages={"app_id": "ls-prod"})


def test_replay_settings_keep_the_input_and_change_everything_it_writes(tmp_path: Path) -> None:
    live = _settings(tmp_path)
    model = tmp_path / "m.yaml"
    model.write_text("version: m2\n")
    r = replay_settings(live, "rescore", model, since_ms=NOW)
    assert r.topics.pixel_events == live.topics.pixel_events
    assert (r.topics.visits, r.topics.lead_scores, r.topics.qualified_leads, r.topics.bad_events) == (
        "rescore.visits", "rescore.lead-scores", "rescore.qualified-leads", "rescore.bad-events")
    assert r.topics.partitions == live.topics.partitions
    assert r.stages.app_id == "ls-prod-replay-rescore" and r.stages.source_start_ms == NOW
    assert r.stages.quota_prefix == "ls:replay:rescore:quota" != live.stages.quota_prefix
    assert not r.stages.identity_writes and live.stages.identity_writes
    assert r.stages.model_poll_s == 0 and r.stages.web_port is None
    assert r.load_scoring_model().version == "m2"
    assert Path(r.data_dir) == tmp_path / "state" / "replay" / "rescore"
    assert r.kafka == live.kafka and r.redis == live.redis and r.sites == live.sites
    assert replay_topics("rescore")["sink_dead_letter"] == "rescore.sink-dead-letter"
    # what the command creates: its outputs and changelogs; the live source only checked, no live output
    names = {s.name for s in replay_topic_specs(r)}
    assert names == {"pixel-events", "rescore.visits", "rescore.lead-scores", "rescore.qualified-leads",
                     "rescore.bad-events", "ls-prod-replay-rescore-visitor-state-changelog",
                     "ls-prod-replay-rescore-account-state-changelog"}
    assert not names & {live.topics.visits, live.topics.lead_scores, live.topics.qualified_leads,
                        live.topics.bad_events}
    with pytest.raises(ReplayError):
        replay_settings(live, "a.b", model, NOW)


def test_a_bad_model_file_is_refused_with_its_key_path(tmp_path: Path) -> None:
    from pipeline.ops.replay import run_replay
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v9\nintnet: {}\n")
    with pytest.raises(ReplayError, match="intnet"):
        run_replay(_settings(tmp_path), bad, NOW, name="x")
    with pytest.raises(ReplayError, match="no such model file"):
        run_replay(_settings(tmp_path), tmp_path / "missing.yaml", NOW, name="x")
    with pytest.raises(ReplayError, match="--until must be after --since"):
        run_replay(_settings(tmp_path), bad, NOW, NOW - 1, name="x")
