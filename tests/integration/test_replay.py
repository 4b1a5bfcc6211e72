"""Replay, compare, promote and rollback through the real processes, broker and Redis.

A replay reads the live ``pixel-events`` between two broker times into topics of its own,
with its own quota namespace and without writing the identity graph; two replays of one range
with one model give byte-identical leads; ``compare`` reports what the model changed. A running
worker switches model on ``model promote`` and back on ``model rollback``, without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from pipeline.core.scoring_model import default_scoring_model, effective_rules, load_scoring_model

from .pipeline_harness import CODEC, Pipeline, Visitor, now_ms
from .stagekit import REPO

pytestmark = pytest.mark.integration

BUYING_PATHS = ["/", "/product", "/pricing", "/customers/acme-co", "/demo", "/pricing", "/contact"]
BUSINESS_IPS = ("203.0.113.5", "203.0.113.50", "203.0.113.100", "203.0.113.135")
NORTHWIND_IP = "203.0.113.20"
GOVERNMENT_IP = "203.0.113.165"


def cli(p: Pipeline, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "-c", str(p.config_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def model_file(tmp: Path, name: str, **changes: Any) -> Path:
    """The built-in model with ``changes`` merged into its sections and a new version."""
    from importlib import resources
    doc = yaml.safe_load(resources.files("pipeline.core").joinpath("default_model.yaml").read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            doc.setdefault(section, {}).update(values)
        else:
            doc[section] = values
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    load_scoring_model(path.read_text())  # valid
    return path


def json_line(out: str) -> Any:
    """The JSON document on the output's last line that has one (a terminal may get control codes first)."""
    line = next(line for line in reversed(out.splitlines()) if "{" in line)
    return json.loads(line[line.index("{"):])


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def records(p: Pipeline, topic: str) -> list[Any]:
    from .stagekit import read_all
    return read_all(p.broker.bootstrap, topic)


def leads_by_account(p: Pipeline, topic: str) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for r in records(p, topic):
        out.setdefault(r.key, []).append(r.value)
    return out


def redis_state(url: str) -> dict[bytes, bytes]:
    """Every key outside the replays' namespace with a dump of its value."""
    client = redis.Redis.from_url(url)
    try:
        return {k: client.dump(k) or b"" for k in client.scan_iter(count=1000) if not k.startswith(b"ls:replay:")}
    finally:
        client.close()


def test_replay_of_a_time_range_is_isolated_and_deterministic_and_compare_reports_it(
        pipeline: Pipeline, redis_server: Any, tmp_path: Path) -> None:
    p = pipeline
    t0 = now_ms() - 3_600_000
    # Before --since: a job seeker. Inside the range: four buying committees of one visitor each
    # (one visitor per account: see README "Crash safety, replay and determinism"). After --until:
    # a public-sector reader.
    before = Visitor(p, NORTHWIND_IP)
    before.browse(t0, ["/careers", "/pricing"])
    time.sleep(1.5)
    since = now_ms()
    time.sleep(0.5)
    for ip in BUSINESS_IPS:
        v = Visitor(p, ip)
        t = v.browse(t0, BUYING_PATHS[:4])
        v.browse(t + 45 * 60_000, BUYING_PATHS[4:])
    time.sleep(1.0)
    until = now_ms()
    time.sleep(0.5)
    Visitor(p, GOVERNMENT_IP).browse(t0, BUYING_PATHS)
    p.wait_for(lambda: len({lead["account"] for lead in p.leads()}) >= 2, "live leads")
    p.wait_for(lambda: len({s["account"] for s in p.decoded("lead_scores")}) >= 6, "every live account scored")
    time.sleep(1.5)
    live_scores = len(p.records("lead_scores"))
    live_leads = len(p.records("qualified_leads"))
    redis_before = redis_state(redis_server.url)

    # a model that weighs intent differently (more generous), with a quota (the replay's quota must be its own)
    strict = model_file(tmp_path, "strict", version="strict-1",
                        intent={"saturation_points": 50}, qualification={"cooldown_days": 30, "monthly_quota": 50})
    strict_model = load_scoring_model(strict.read_text())
    names = [f"r{i}-{uuid.uuid4().hex[:8]}" for i in range(2)]
    summaries = []
    for i, name in enumerate(names):  # the second one with its progress bar (on stderr)
        run = cli(p, "replay", "--since", iso(since), "--until", iso(until), "--model", str(strict), "--name", name,
                  "--json", *(["--no-progress"] if i == 0 else []))
        assert run.returncode == 0, run.stdout + run.stderr
        summaries.append(json.loads(run.stdout))  # stdout holds the summary and nothing else
    first, second = (leads_by_account(p, f"{n}.qualified-leads") for n in names)
    assert first, (summaries, p.logs())
    assert first == second, "the same range and model must give byte-identical leads"

    s = summaries[0]
    assert s["model_version"] == "strict-1" and s["model_digest"] == strict_model.digest
    assert s["events"] > 0 and s["records"] > 0 and s["leads"] == sum(map(len, first.values()))
    assert s["events_per_s"] > 0

    # only the range: no job seeker (before), no public sector (after)
    scores = [CODEC.decode(r.value) for r in records(p, f"{names[0]}.lead-scores")]
    accounts = {x["account"] for x in scores}
    assert accounts and not any("northwind" in a or "digital-services" in a for a in accounts), accounts
    assert {x["model_version"] for x in scores} == {"strict-1"}
    assert all(CODEC.decode(v)["model_version"] == "strict-1" for vs in first.values() for v in vs)

    # the live topics, live quota and identity graph are untouched; the replay counted its own quota
    assert len(p.records("lead_scores")) == live_scores and len(p.records("qualified_leads")) == live_leads
    assert not any(CODEC.decode(r.value)["model_version"] == "strict-1" for r in p.records("lead_scores"))
    assert redis_state(redis_server.url) == redis_before
    client = redis.Redis.from_url(redis_server.url)
    quota_keys = list(client.scan_iter(f"ls:replay:{names[0]}:quota:*"))
    assert quota_keys and client.scard(quota_keys[0]) == s["leads"]

    # the name is taken now
    again = cli(p, "replay", "--since", iso(since), "--model", str(strict), "--name", names[0], "--no-progress")
    assert again.returncode != 0 and "used before" in again.stderr

    # compare: the JSON agrees with the topics, the table is readable
    run = cli(p, "compare", "live", names[0], "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    site = report["sites"]["acme"]
    live_latest = {CODEC.decode(r.value)["account"] for r in p.records("qualified_leads")}
    replay_latest = {CODEC.decode(v)["account"] for vs in first.values() for v in vs}
    assert site["accounts"] == len(accounts)
    assert site["live_only"] >= 2  # the job seeker and the public-sector reader lie outside the range
    assert {c["account"] for c in site["gained"]} == (replay_latest - live_latest) & accounts
    assert {c["account"] for c in site["lost"]} == (live_latest - replay_latest) & accounts
    assert site["score_changes"], "a model with a lower saturation scores intent higher"
    assert all(c["intent_delta"] > 0 for c in site["score_changes"])
    site_rules = p.settings.site("acme").rules  # type: ignore[union-attr]
    acme_digest = effective_rules(strict_model, site_rules).model_digest  # the site's overrides are in it
    assert acme_digest != strict_model.digest
    assert report["replay"]["models"] == [f"strict-1 ({acme_digest})"]
    table = cli(p, "compare", "live", names[0])
    assert table.returncode == 0 and "site acme" in table.stdout and "Δ intent" in table.stdout
    print(table.stdout)
    print(json.dumps(summaries[0]))


def test_running_worker_follows_promote_and_rollback(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    default = default_scoring_model()
    t0 = now_ms() - 3_600_000
    v = Visitor(p, BUSINESS_IPS[0])
    t = v.browse(t0, ["/", "/pricing"])

    def versions() -> list[str]:
        return [s["model_version"] for s in p.decoded("lead_scores")]

    p.wait_for(lambda: bool(versions()) and set(versions()) == {default.version}, "a score from the configured model")
    promoted = model_file(tmp_path, "next", version="next-2")
    run = cli(p, "model", "promote", str(promoted), "--by", "tester")
    assert run.returncode == 0, run.stderr
    assert "promoted next-2" in run.stdout
    switched = time.monotonic()
    # keep browsing until a score carries the new version: it must within a few seconds
    while "next-2" not in versions():
        assert time.monotonic() - switched < 20, (versions(), p.logs())
        t = v.browse(t + 60_000, ["/product"])
        time.sleep(1)
    assert versions()[-1] == "next-2"

    run = cli(p, "model", "rollback", "--by", "tester")
    assert run.returncode == 0, run.stderr
    assert f"rolled back to {default.version}" in run.stdout
    n = len(versions())
    switched = time.monotonic()
    while default.version not in versions()[n:]:
        assert time.monotonic() - switched < 20, (versions(), p.logs())
        t = v.browse(t + 60_000, ["/product"])
        time.sleep(1)
    assert versions()[-1] == default.version

    status = cli(p, "model", "status")
    assert status.returncode == 0 and default.version in status.stdout
    history = [json.loads(line) for line in cli(p, "model", "list", "--json").stdout.splitlines()]
    assert [h["action"] for h in history] == ["rollback", "promote", "baseline"]
    assert [h["version"] for h in history] == [default.version, "next-2", default.version]
    assert history[0]["previous_version"] == "next-2" and all(h["by"] == "tester" and h["at"] > 0 for h in history)
    nothing = cli(p, "model", "rollback")
    assert nothing.returncode != 0 and "nothing to roll back to" in nothing.stderr


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_replay_rate(kafka_broker: Any, redis_server: Any, tmp_path: Path) -> None:
    """Events/s of `leadstream replay` over 30,000 events (1,500 visitors, 20 events each, 20 requests
    per record), with the built-in model, then with a stricter one, and what `compare` says of the two.

        ./scripts/test tests/integration/test_replay.py -m bench -s
    """
    from kafka import KafkaProducer

    from loadtest.traffic import batch_records, visitor_payloads

    from .pipeline_harness import load_reference_data

    load_reference_data(redis_server.url)
    p = Pipeline(kafka_broker, redis_server.url, tmp_path, f"bench-{uuid.uuid4().hex[:8]}")
    p.create_topics()
    since = now_ms()
    payloads = list(visitor_payloads(1500, 20, seed=11, t0=now_ms() - 86_400_000, one_visitor_per_company=False))
    events = sum(len(x["events"]) for x in payloads)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    for r in batch_records(iter(payloads), 8, 20):
        producer.send(p.topics["pixel_events"], CODEC.encode("CollectorBatch", r.value), key=r.key,
                      partition=r.partition)
    producer.flush()
    producer.close()
    default = REPO / "pipeline" / "core" / "default_model.yaml"
    strict = model_file(tmp_path, "strict", version="strict-1", intent={"saturation_points": 120},
                        fit={"rules": [{"name": "big", "attribute": "employees", "min": 1000, "weight": 50},
                                       {"name": "software", "attribute": "industry", "values": ["software"],
                                        "weight": 50}]})
    summaries = {}
    for name, model in (("base", default), ("strict", strict)):
        run = cli(p, "replay", "--since", iso(since), "--model", str(model), "--name", f"{p.name}-{name}",
                  "--no-progress", "--json", timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        summaries[name] = json_line(run.stdout)
        assert summaries[name]["events"] == events, summaries[name]
        print(json.dumps(summaries[name]))
    table = cli(p, "compare", f"{p.name}-base", f"{p.name}-strict", "--limit", "12")
    assert table.returncode == 0, table.stderr
    print(table.stdout)
    assert summaries["base"]["events_per_s"] > 0
