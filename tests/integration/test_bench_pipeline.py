"""`bench pipeline` end to end on a small input (slow: run with -m bench)."""

from __future__ import annotations

import shutil

import pytest

from loadtest.bench_pipeline import bench

pytestmark = [pytest.mark.integration, pytest.mark.bench]


def test_bench_pipeline_reports_every_figure_with_the_generator_not_the_bottleneck() -> None:
    assert shutil.which("wrk"), "bench pipeline needs wrk: scripts/bootstrap --test installs it"
    report = bench(events=4000, latency_seconds=3, load_seconds=3)
    e2e = report["end_to_end"]
    assert e2e["group_1"]["events_per_s"] > 0 and e2e["group_100"]["events_per_s"] > 0
    assert e2e["group_1"]["records_per_group"]['{stage="visitor"}'] == 1.0
    assert report["replay_prebatched"]["leadstream_worker"]["events_per_s"] > 0
    assert report["replay_prebatched"]["baseline_raw_aiokafka"]["commit_records"] == 100
    assert report["latency_at_half_max"]["probes"] > 0
    assert report["checks"]["generator_not_the_bottleneck"], report
    summary = report["summary"]
    assert summary["worker_vs_raw_ratio"] == report["replay_prebatched"]["throughput_ratio"]
    assert summary["end_to_end_events_per_s_group_1"] == e2e["group_1"]["events_per_s"]
    assert summary["p99_ms_at_half_max"] == report["latency_at_half_max"]["p99_ms"]
    assert e2e["group_100"]["events_per_record"]['{stage="visitor"}'] >= 1
    assert 0 < e2e["group_100"]["worker_cpu_share"] <= 2.5
