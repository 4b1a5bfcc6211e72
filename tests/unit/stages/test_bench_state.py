"""The state benchmark: with eviction, live state stays bounded by the active visitors (slow: ``-m bench``)."""

from __future__ import annotations

import pytest

from loadtest.bench_state import bench


@pytest.mark.bench
def test_state_follows_the_active_visitors() -> None:
    report = bench(visitors=30_000, retention_days=1.0, checkpoints=6)
    assert report["bounded_by_active"] and report["flat_over_second_half"], report
    kept = bench(visitors=6_000, retention_days=0, checkpoints=2)  # no eviction: state grows with history
    assert kept["checkpoints"][-1]["live_keys"] == 6_000
