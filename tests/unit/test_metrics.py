"""The metrics catalogue's rules (pipeline/metrics.py) and the periodic measurements (pipeline/observe.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from pipeline import metrics
from pipeline.core.model import Company, CompanyResolution, Evidence, Person, PersonResolution
from pipeline.observe import LagSeries, StateCensus, lag_of, open_session_site

REPO = Path(__file__).resolve().parents[2]


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# --- ownership: which process exports what -------------------------------------------------------------

def test_each_metric_has_one_owner_and_the_shared_ones_are_kept_by_every_consuming_process() -> None:
    assert metrics.owner("leadstream_collector_requests_total") == "collector"
    assert metrics.owner("leadstream_sink_delivered_total") == "sinks"
    assert metrics.owner("leadstream_leads_view_writes_total") == "leads"
    assert metrics.owner("leadstream_stage_event_time_lag_seconds") == "worker"
    assert metrics.owner("leadstream_consumer_lag_records") == "shared"
    assert metrics.owner("leadstream_dependency_up") == "shared"


@pytest.mark.parametrize("process, kept, dropped", [
    ("sinks", ["leadstream_sink_delivered", "leadstream_consumer_lag_records", "leadstream_dependency_up"],
     ["leadstream_stage_records", "leadstream_collector_requests"]),
    ("leads", ["leadstream_leads_view_writes", "leadstream_consumer_lag_records", "leadstream_dependency_errors"],
     ["leadstream_sink_delivered", "leadstream_stage_records"]),
    ("worker", ["leadstream_stage_records", "leadstream_state_keys", "leadstream_consumer_lag_records"],
     ["leadstream_sink_delivered", "leadstream_leads_view_writes"]),
    ("collector", ["leadstream_collector_requests"],
     ["leadstream_consumer_lag_records", "leadstream_dependency_up", "leadstream_stage_records"]),
])
def test_serve_only_keeps_a_process_own_and_shared_metrics(process: str, kept: list[str], dropped: list[str]) -> None:
    # in a process of its own: serve_only changes the default registry for good
    code = ("import sys\nfrom prometheus_client import REGISTRY\nfrom pipeline import metrics\n"
            f"metrics.serve_only({process!r})\n"
            "print('\\n'.join(REGISTRY._names_to_collectors))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    names = set(done.stdout.split())
    assert set(kept) <= names, set(kept) - names
    assert not set(dropped) & names


# --- resolution by source, scores, event time ---------------------------------------------------------

ACME = Company(domain="acme.example")


def test_company_resolution_counts_the_strongest_evidence_source_and_the_confidence_tier() -> None:
    both = CompanyResolution(ACME, 0.93, (Evidence("ip_range", "", 0.9), Evidence("identity", "", 0.3)))
    assert metrics.company_source(both) == ("ip_range", "high")
    person_led = CompanyResolution(ACME, 0.7, (Evidence("asn_org", "", 0.3), Evidence("identity", "", 0.6)))
    assert metrics.company_source(person_led) == ("identity", "medium")
    assert metrics.company_source(CompanyResolution(None, 0.0)) == ("none", "none")


def test_person_resolution_counts_the_link_source_and_whether_it_is_verified() -> None:
    person = Person(person_id="p1")
    assert metrics.person_source(PersonResolution(person, 0.6, (), "identify")) == ("identify", "claimed")
    assert metrics.person_source(PersonResolution(person, 0.9, (), "import")) == ("import", "verified")
    assert metrics.person_source(PersonResolution(None, 0.0)) == ("none", "none")


def test_record_resolution_and_scores_move_their_series() -> None:
    before = sample("leadstream_company_resolutions_total", source="ip_org", confidence="medium") or 0.0
    metrics.record_resolution(CompanyResolution(ACME, 0.65, (Evidence("ip_org", "", 0.65),)),
                              PersonResolution(Person(person_id="p2"), 0.9, (), "email_click"))
    assert sample("leadstream_company_resolutions_total", source="ip_org", confidence="medium") == before + 1
    assert (sample("leadstream_person_resolutions_total", source="email_click", trust="verified") or 0) >= 1

    count = sample("leadstream_account_fit_score_count", site="unit-site") or 0.0
    metrics.record_scores("unit-site", 72.5, 15.0)
    assert sample("leadstream_account_fit_score_count", site="unit-site") == count + 1
    assert sample("leadstream_account_fit_score_bucket", site="unit-site", le="70.0") == \
        sample("leadstream_account_fit_score_bucket", site="unit-site", le="60.0")   # 72.5 is above 70
    assert sample("leadstream_account_intent_score_bucket", site="unit-site", le="20.0") == count + 1


def test_event_time_lag_is_now_minus_the_newest_event_applied_never_negative() -> None:
    now = [1_000.0]
    lag = metrics.EventTimeLag(clock=lambda: now[0])
    assert lag.lag_s("unit-stage") == 0.0
    lag.applied("unit-stage", 990_000)
    lag.applied("unit-stage", 950_000)   # older: the newest stays
    assert lag.lag_s("unit-stage") == 10.0
    now[0] = 1_030.0
    assert sample("leadstream_stage_event_time_lag_seconds", stage="unit-stage") == 40.0  # computed at scrape
    lag.applied("unit-stage", 2_000_000)  # a skewed clock in the future reads as no lag
    assert lag.lag_s("unit-stage") == 0.0


# --- consumer lag ----------------------------------------------------------------------------------------

def test_lag_is_the_high_watermark_minus_the_next_offset_to_process() -> None:
    assert lag_of({0: 10, 1: 5, 2: 7}, {0: 4, 1: 5, 2: 9}) == {0: 6, 1: 0, 2: 0}
    assert lag_of({0: 10}, {}) == {}   # a partition whose next offset is unknown is not reported


def test_lag_series_of_partitions_no_longer_reported_are_removed() -> None:
    series = LagSeries("unit-consumer")
    series.update({("t", 0): 3, ("t", 1): 0})
    assert sample("leadstream_consumer_lag_records", consumer="unit-consumer", topic="t", partition="0") == 3
    series.update({("t", 1): 2})   # partition 0 went to another worker
    assert sample("leadstream_consumer_lag_records", consumer="unit-consumer", topic="t", partition="0") is None
    assert sample("leadstream_consumer_lag_records", consumer="unit-consumer", topic="t", partition="1") == 2


# --- state census ----------------------------------------------------------------------------------------

GAPS = {"acme": 30 * 60_000, "other": 10 * 60_000}
NOW_MS = 1_700_000_000_000


def visitor(site: str, last_ms: int, open_: bool = True) -> dict[str, Any]:
    return {"o": 5, "s": {"vs": {"site": site, "ls": last_ms, "open": {"start": last_ms} if open_ else None},
                          "acct": None, "h": []}}


def test_a_session_is_open_while_its_last_event_is_within_the_site_gap() -> None:
    assert open_session_site(visitor("acme", NOW_MS - 29 * 60_000), NOW_MS, GAPS) == "acme"
    assert open_session_site(visitor("acme", NOW_MS - 31 * 60_000), NOW_MS, GAPS) is None
    assert open_session_site(visitor("other", NOW_MS - 11 * 60_000), NOW_MS, GAPS) is None  # its own gap
    assert open_session_site(visitor("acme", NOW_MS, open_=False), NOW_MS, GAPS) is None
    assert open_session_site(visitor("gone", NOW_MS), NOW_MS, GAPS) is None   # a site no longer configured
    assert open_session_site({"o": 1, "s": None}, NOW_MS, GAPS) is None


def test_state_census_counts_keys_bytes_and_open_sessions_leaving_progress_out() -> None:
    table: dict[str, Any] = {f"acme|v{i}": visitor("acme", NOW_MS - i * 60_000) for i in range(50)}
    table.update({f"other|v{i}": visitor("other", NOW_MS - 60_000) for i in range(5)})
    table["~progress/0"] = 123
    census = asyncio.run(StateCensus("unit-visitor-state", GAPS, clock=lambda: NOW_MS / 1000).measure(table))
    assert census.keys == 55
    assert census.open_sessions == {"acme": 31, "other": 5}   # 0..30 minutes ago
    import json
    exact = sum(len(json.dumps(v, separators=(",", ":"))) for k, v in table.items() if not k.startswith("~"))
    assert census.bytes == pytest.approx(exact, rel=0.1)
    assert sample("leadstream_state_keys", table="unit-visitor-state") == 55
    assert sample("leadstream_visitor_open_sessions", site="other") == 5


def test_state_census_of_a_large_table_samples_its_bytes() -> None:
    table = {f"k{i}": {"o": i, "s": {"x": "y" * (i % 7)}} for i in range(10_000)}
    census = asyncio.run(StateCensus("unit-account-state").count(table))
    import json
    exact = sum(len(json.dumps(v, separators=(",", ":"))) for v in table.values())
    assert census.keys == 10_000 and census.open_sessions == {}
    assert census.bytes == pytest.approx(exact, rel=0.1)


def test_a_costly_census_spaces_itself_out() -> None:
    census = StateCensus("unit-spaced-state", cpu_share=0.5)
    table = {f"k{i}": {"o": i, "s": {}} for i in range(100)}
    assert asyncio.run(census.measure_when_due(table)) is not None
    census._next_at = float("inf")   # as after a pass that took long
    assert asyncio.run(census.measure_when_due(table)) is None
    census._next_at = 0.0
    assert asyncio.run(census.measure_when_due(table)) is not None
