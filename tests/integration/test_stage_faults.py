"""Both stages through crashes, graceful restarts and a rebalance lose nothing (real broker, Redis, workers).

A counted stream of pixel-events records goes through `leadstream worker`
processes. Each fault run is compared with a clean run of the same input:
every visits update, lead score and qualified lead (by id, duplicates only as
identical copies) and the final state of both tables (from their changelogs).
One visitor per company, so each account's updates come from one stage-1
partition and the account stage sees them in the same order in every run.
"""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from kafka import KafkaProducer

from loadtest.traffic import batch_records, visitor_payloads
from pipeline.codec import SingleObjectCodec
from pipeline.local.kafka import KafkaBroker
from pipeline.local.redis import RedisServer

from .pipeline_harness import Pipeline, load_reference_data, now_ms
from .stagekit import read_all

pytestmark = pytest.mark.integration

CODEC = SingleObjectCodec()
VISITORS = 240
EVENTS_PER_VISITOR = 20
PAYLOADS_PER_RECORD = 6


@pytest.fixture(scope="module")
def source(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One pixel-events topic with the counted input, shared by every run of this module."""
    tmp = tmp_path_factory.mktemp("faults-source")
    base = Pipeline(kafka_broker, "redis://127.0.0.1:1/0", tmp, f"faults-{int(time.time())}")
    base.create_topics()
    records = batch_records(visitor_payloads(VISITORS, EVENTS_PER_VISITOR, seed=11, t0=now_ms() - 86_400_000),
                            partitions=base.settings.topics.partitions.get("pixel_events", 8),
                            payloads_per_record=PAYLOADS_PER_RECORD)
    produce(kafka_broker.bootstrap, base.topics["pixel_events"], records)
    yield {"topic": base.topics["pixel_events"], "records": records, "events": sum(r.events for r in records)}


def produce(bootstrap: str, topic: str, records: list[Any]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    for r in records:
        producer.send(topic, CODEC.encode("CollectorBatch", r.value), key=r.key, partition=r.partition)
    producer.flush()
    producer.close()


class Run:
    def __init__(self, kafka_broker: KafkaBroker, redis_server: RedisServer, tmp: Path, name: str,
                 source: dict[str, Any], db: int, own_source: bool = False, group: int | None = None) -> None:
        url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
        load_reference_data(url)
        topics = {k: f"{name}-{k.replace('_', '-')}" for k in
                  ("bad_events", "visits", "lead_scores", "qualified_leads", "sink_dead_letter")}
        topics["pixel_events"] = f"{name}-pixel-events" if own_source else source["topic"]
        self.p = Pipeline(kafka_broker, url, tmp, name, topics=topics,
                          stages=None if group is None else {"commit_records": group})
        self.p.create_topics()
        self.app_id = self.p.config["stages"]["app_id"]
        self.bootstrap = kafka_broker.bootstrap

    def visit_ids(self) -> dict[str, bytes]:
        out = {}
        for batch in self.p.decoded("visits"):
            for u in batch["updates"]:
                out[u["update_id"]] = json.dumps(u, sort_keys=True).encode()
        return out

    def progress(self) -> int:
        return len(self.visit_ids())

    def scored(self) -> int:
        return len({r.key for r in self.p.records("lead_scores")})

    def outputs(self) -> dict[str, Any]:
        visits: dict[str, set[bytes]] = defaultdict(set)
        for batch in self.p.decoded("visits"):
            for u in batch["updates"]:
                visits[u["update_id"]].add(json.dumps(u, sort_keys=True).encode())
        scores: dict[bytes, set[bytes]] = defaultdict(set)
        latest: dict[bytes, bytes] = {}
        for r in self.p.records("lead_scores"):
            scores[r.key].add(r.value)
            latest[r.key] = r.value
        leads: dict[str, set[bytes]] = defaultdict(set)
        for r in self.p.records("qualified_leads"):
            leads[CODEC.decode(r.value)["lead_id"]].add(r.value)
        return {"visits": visits, "scores": scores, "latest": latest, "leads": leads,
                "bad": len(self.p.records("bad_events"))}

    def tables(self) -> dict[str, dict[str, Any]]:
        out = {}
        for table in ("visitor", "account"):
            state: dict[str, Any] = {}
            for rec in read_all(self.bootstrap, f"{self.app_id}-{table}-state-changelog"):
                key = json.loads(rec.key)
                state[key] = json.loads(rec.value) if rec.value else None
            out[table] = state
        return out


@pytest.fixture
def make_run(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path, source: dict[str, Any],
             unique_name: Callable[[str], str]) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(db: int, own_source: bool = False, group: int | None = None) -> Run:
        run = Run(kafka_broker, redis_server, tmp_path, unique_name("faults"), source, db, own_source, group)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.p.stop()


@pytest.fixture(scope="module")
def clean(kafka_broker: KafkaBroker, redis_server: RedisServer, source: dict[str, Any],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The reference: the same input through one worker that is never disturbed."""
    run = Run(kafka_broker, redis_server, tmp_path_factory.mktemp("clean"), f"clean-{int(time.time())}", source, 3)
    run.p.start_worker()
    try:
        wait_settled(run)
        yield {"outputs": run.outputs(), "tables": run.tables(), "updates": run.progress()}
    finally:
        run.p.stop()


def wait_settled(run: Run, expected: int | None = None, timeout_s: float = 180) -> None:
    """Until the visits output stops growing (and reaches ``expected`` updates when given)."""
    last: tuple[int, int] = (-1, -1)
    stable_since = time.monotonic()
    deadline = time.monotonic() + timeout_s
    while True:
        n = run.progress()
        now = (n, run.scored())
        if now != last:
            last, stable_since = now, time.monotonic()
        settled = time.monotonic() - stable_since > 6 and n > 0
        if settled and (expected is None or n >= expected):
            return
        if time.monotonic() > deadline:
            dump_tasks(run)
            bad = [(b["failure_type"], b["message"][:300]) for b in run.p.decoded("bad_events")[:3]]
            raise AssertionError(f"visits stopped at {n} updates (expected {expected}); bad rows: {bad}\n"
                                 f"{run.p.logs()}")
        time.sleep(1)


def dump_tasks(run: Run) -> None:
    """Ask every live worker for the stacks of its threads and asyncio tasks (SIGUSR1, into its log)."""
    for proc in run.p.processes:
        if proc.alive() and proc.proc is not None:
            proc.proc.send_signal(signal.SIGUSR1)
    time.sleep(2)


def wait_progress(run: Run, target: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while run.progress() < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"no progress to {target}\n{run.p.logs()}")
        time.sleep(0.3)


def comparable(table: str, value: Any) -> Any:
    """A table value without the input offsets that legitimately differ between runs: the visits
    topic of a faulted run holds the re-sent copies too, so its offsets are shifted."""
    if table != "account" or value is None:
        return value
    state = dict(value["s"])
    state["a"] = {k: v for k, v in state["a"].items() if k != "off"}
    return state


def compare(run: Run, clean: dict[str, Any]) -> dict[str, int]:
    """Zero inputs unhandled, zero wrong final states, duplicates only as identical copies."""
    got, want = run.outputs(), clean["outputs"]
    for name in ("visits", "leads"):
        missing = set(want[name]) - set(got[name])
        extra = set(got[name]) - set(want[name])
        assert not missing, f"{len(missing)} {name} missing, e.g. {sorted(missing)[:3]}"
        assert not extra, f"{len(extra)} unexpected {name}, e.g. {sorted(extra)[:3]}"
        differing = [k for k, copies in got[name].items() if len(copies) > 1 or copies != want[name][k]]
        if differing:
            k = differing[0]
            mine = [json.loads(c) if name == "visits" else CODEC.decode(c) for c in got[name][k]]
            theirs = [json.loads(c) if name == "visits" else CODEC.decode(c) for c in want[name][k]]
            diff = {f: [m.get(f) for m in mine] + ["clean:"] + [x.get(f) for x in theirs]
                    for f in set(mine[0]) if any(m.get(f) != theirs[0].get(f) for m in mine)}
            raise AssertionError(f"{len(differing)} {name} whose copies differ from the clean run, e.g. {k}: {diff}")
    assert {k: v for k, v in got["latest"].items()} == want["latest"], "final lead scores differ"
    for key, values in got["scores"].items():
        assert values <= want["scores"][key] | {got["latest"][key]}, f"a lead score for {key!r} the clean run never had"
    # With group commit a group's state reaches the changelog after its outputs (by design), through
    # Faust's buffered producer: wait up to 30 s for the tables to match, then judge them.
    deadline = time.monotonic() + 30
    while True:
        tables = run.tables()
        problems = []
        for table in ("visitor", "account"):
            mine = {k: comparable(table, v) for k, v in tables[table].items() if not k.startswith("~")}
            theirs = {k: comparable(table, v) for k, v in clean["tables"][table].items() if not k.startswith("~")}
            wrong = [k for k in theirs if mine.get(k) != theirs[k]]
            if set(mine) != set(theirs) or wrong:
                problems.append(f"{len(wrong)} wrong {table} states, e.g. {wrong[:3]}")
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not problems, "; ".join(problems)
    return {"visits": len(got["visits"]), "leads": len(got["leads"]), "scores": len(got["latest"])}


def test_clean_run_counts_every_event(clean: dict[str, Any], source: dict[str, Any]) -> None:
    assert clean["updates"] > 0
    assert clean["outputs"]["bad"] == 0
    # every visitor's events went somewhere: one account state per visitor (one visitor per account)
    assert len([k for k in clean["tables"]["visitor"] if not k.startswith("~")]) == VISITORS
    assert len(clean["outputs"]["latest"]) == VISITORS


GROUPS = pytest.mark.parametrize("group", [1, 100], ids=["group1", "group100"])


@GROUPS
def test_kill_9_mid_stream_then_restart(make_run: Callable[..., Run], clean: dict[str, Any], group: int) -> None:
    run = make_run(4, group=group)
    first = run.p.start_worker("w1")
    wait_progress(run, int(clean["updates"] * 0.4))
    first.kill()
    run.p.start_worker("w2")
    wait_settled(run, clean["updates"])
    compare(run, clean)


@GROUPS
def test_sigterm_mid_stream_then_restart(make_run: Callable[..., Run], clean: dict[str, Any], group: int) -> None:
    run = make_run(5, group=group)
    first = run.p.start_worker("w1")
    wait_progress(run, int(clean["updates"] * 0.4))
    assert first.terminate() == 0, run.p.logs()
    run.p.start_worker("w2")
    wait_settled(run, clean["updates"])
    compare(run, clean)


@GROUPS
def test_second_worker_joins_then_leaves(make_run: Callable[..., Run], clean: dict[str, Any],
                                         source: dict[str, Any], group: int) -> None:
    """The input arrives in three parts: before the second worker, while both run, after it left."""
    run = make_run(6, own_source=True, group=group)
    records = source["records"]
    thirds = [records[: len(records) // 3], records[len(records) // 3: 2 * len(records) // 3],
              records[2 * len(records) // 3:]]
    topic = run.p.topics["pixel_events"]
    produce(run.bootstrap, topic, thirds[0])
    first = run.p.start_worker("w1")
    second = run.p.start_worker("w2")
    deadline = time.monotonic() + 90
    while second.records_applied() == 0:  # it joined the group and took partitions over
        if time.monotonic() > deadline:
            raise AssertionError(f"the second worker never processed a record\n{run.p.logs()}")
        assert second.alive() and first.alive(), run.p.logs()
        produce(run.bootstrap, topic, thirds[1][:1])
        thirds[1] = thirds[1][1:]
        time.sleep(0.5)
    produce(run.bootstrap, topic, thirds[1])
    assert second.terminate() == 0, run.p.logs()
    produce(run.bootstrap, topic, thirds[2])
    wait_settled(run, clean["updates"])
    assert first.alive()
    compare(run, clean)
