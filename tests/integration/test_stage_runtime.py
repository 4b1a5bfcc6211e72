"""The record runner on the real broker: crash, restart, rebalance and Faust's skipped record lose nothing.

A counting stage (tests/integration/apps/counting.py) runs as real worker
processes. Every input record is counted through to the output topic and the
final table state (read back from the changelog) and compared with what a
clean run must give.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest
from kafka import KafkaProducer

from pipeline.local.kafka import KafkaBroker
from pipeline.topology import partition_for

from .stagekit import WorkerProcess, read_all, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 8
RECORDS = 1600
KEYS = 300


def make_input(seed: int = 7) -> list[tuple[int, list[list[Any]]]]:
    """(partition, [[key, amount], ...]) records whose keys all map to their partition."""
    rng = random.Random(seed)
    by_partition: dict[int, list[str]] = defaultdict(list)
    for i in range(KEYS):
        key = f"site|visitor-{i}"
        by_partition[partition_for(key, PARTITIONS)].append(key)
    records = []
    for _ in range(RECORDS):
        p = rng.randrange(PARTITIONS)
        keys = rng.sample(by_partition[p], k=min(4, len(by_partition[p])))
        records.append((p, [[k, rng.randint(1, 9)] for k in keys]))
    return records


def expected(records: list[tuple[int, list[list[Any]]]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"sum": 0, "count": 0})
    for _, pairs in records:
        for key, amount in pairs:
            totals[key]["sum"] += amount
            totals[key]["count"] += 1
    return dict(totals)


class Run:
    def __init__(self, broker: KafkaBroker, new_topic: Callable[..., str], unique_name: Callable[[str], str],
                 tmp_path: Path, **cfg: Any) -> None:
        self.broker = broker
        self.source = new_topic(broker, PARTITIONS)
        self.sink = new_topic(broker, PARTITIONS)
        self.app_id = unique_name("counting")
        self.tmp = tmp_path
        self.cfg = {"bootstrap": broker.bootstrap, "app_id": self.app_id, "source": self.source, "sink": self.sink,
                    "partitions": PARTITIONS, "session_timeout_s": 6.0, "stall_after_s": 5.0, **cfg}
        self.records = make_input()
        self.workers: list[WorkerProcess] = []

    def produce(self, part: slice = slice(None)) -> None:
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all", enable_idempotence=True)
        for p, pairs in self.records[part]:
            producer.send(self.source, json.dumps(pairs).encode(), partition=p)
        producer.flush()
        producer.close()

    def worker(self, name: str, **extra: Any) -> WorkerProcess:
        cfg = {**self.cfg, "data_dir": str(self.tmp / name), **extra}
        w = WorkerProcess("tests.integration.apps.counting", cfg, self.tmp, name).start()
        self.workers.append(w)
        return w

    def outputs(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in read_all(self.broker.bootstrap, self.sink)]

    def expected_ids(self) -> set[str]:
        # the offset of each input record is its index within its partition
        ids, seen = set(), defaultdict(int)
        for p, pairs in self.records:
            offset = seen[p]
            seen[p] += 1
            ids.update(f"{p}:{offset}:{k}" for k, _ in pairs)
        return ids

    def output_ids(self) -> set[str]:
        return {o["id"] for o in self.outputs()}

    def logs(self) -> str:
        return "\n\n".join(f"--- {w.log_path.name}\n{w.log_tail()}" for w in self.workers)

    def stuck(self) -> str:
        """The logs of a run that stopped making progress, with every live worker's task stacks."""
        for w in self.workers:
            w.dump_stacks()
        time.sleep(3)
        return "\n\n".join(f"--- {w.log_path.name}\n{w.log_tail(300)}" for w in self.workers)

    def wait_for_outputs(self, fraction: float, timeout_s: float = 120) -> None:
        target = int(len(self.expected_ids()) * fraction)
        def done() -> bool:
            if not any(w.alive() for w in self.workers):
                raise AssertionError(f"every worker has exited\n{self.logs()}")
            return len(self.output_ids()) >= target

        wait_until(done, timeout_s, f"{fraction:.0%} of the outputs", self.stuck)

    def applied_everything(self) -> bool:
        """Every partition's progress in the changelog is its last input offset: the state of every
        record is written (outputs are acknowledged before it, so all outputs alone do not say that)."""
        last: dict[int, int] = defaultdict(lambda: -1)
        for p, _ in self.records:
            last[p] += 1
        progress: dict[int, int] = {}
        for rec in read_all(self.broker.bootstrap, f"{self.app_id}-counting-state-changelog"):
            key = json.loads(rec.key)
            if str(key).startswith("~progress/") and rec.value:
                progress[int(key.split("/")[1])] = json.loads(rec.value)
        return all(progress.get(p) == offset for p, offset in last.items())

    def wait_until_applied(self, timeout_s: float = 120) -> None:
        def done() -> bool:
            if not any(w.alive() for w in self.workers):
                raise AssertionError(f"every worker has exited\n{self.logs()}")
            return self.applied_everything()

        wait_until(done, timeout_s, "every record's state in the changelog", self.stuck)

    def final_state(self) -> dict[str, dict[str, int]]:
        state: dict[str, Any] = {}
        for rec in read_all(self.broker.bootstrap, f"{self.app_id}-counting-state-changelog"):
            key = json.loads(rec.key)
            if not str(key).startswith("~"):
                state[key] = json.loads(rec.value)["s"] if rec.value else None
        return state

    def check(self) -> dict[str, int]:
        """Zero input records unhandled, zero wrong final states, duplicates only as identical copies."""
        outputs = self.outputs()
        by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for o in outputs:
            by_id[o["id"]].append(o)
        want = self.expected_ids()
        missing = want - set(by_id)
        differing = [i for i, copies in by_id.items() if any(c != copies[0] for c in copies)]
        state = self.final_state()
        wrong = [k for k, v in expected(self.records).items() if state.get(k) != v]
        assert not missing, f"{len(missing)} outputs missing, e.g. {sorted(missing)[:5]}\n{self.logs()}"
        assert not differing, f"duplicates that differ: {differing[:5]}"
        want_state = expected(self.records)
        assert not wrong, (f"{len(wrong)} keys with a wrong final state, e.g. "
                           f"{[(k, state.get(k), want_state[k]) for k in wrong[:3]]}\n{self.logs()}")
        return {"outputs": len(outputs), "duplicates": len(outputs) - len(by_id)}


@pytest.fixture
def run(kafka_broker: KafkaBroker, new_topic: Callable[..., str], unique_name: Callable[[str], str],
        tmp_path: Path) -> Callable[..., Run]:
    runs: list[Run] = []

    def make(**cfg: Any) -> Run:
        r = Run(kafka_broker, new_topic, unique_name, tmp_path, **cfg)
        runs.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in runs:
        for w in r.workers:
            if w.alive():
                w.kill()


def finish(run: Run, name: str, **extra: Any) -> dict[str, int]:
    run.worker(name, **extra)
    run.wait_for_outputs(1.0)
    run.wait_until_applied()
    return run.check()


def test_clean_run(run: Callable[..., Run]) -> None:
    r = run()
    r.produce()
    result = finish(r, "w1")
    assert result["duplicates"] == 0


GROUPS = pytest.mark.parametrize("group", [1, 100], ids=["group1", "group100"])


@GROUPS
def test_kill_9_mid_stream_and_restart(run: Callable[..., Run], group: int) -> None:
    r = run(commit_records=group)
    r.produce()
    first = r.worker("w1")
    r.wait_for_outputs(0.4)
    first.kill()
    finish(r, "w2")


@GROUPS
def test_sigterm_mid_stream_and_restart(run: Callable[..., Run], group: int) -> None:
    r = run(commit_records=group)
    r.produce()
    first = r.worker("w1")
    r.wait_for_outputs(0.4)
    assert first.terminate() == 0, r.logs()
    finish(r, "w2")


@GROUPS
def test_second_worker_joins_then_leaves(run: Callable[..., Run], group: int) -> None:
    """Input arrives in three parts: before the second worker, while both run, after it left.

    Faust sometimes drops the records in flight around these rebalances (see pipeline/stages/watchdog.py);
    the stall watchdog brings them back, so nothing is missing at the end.
    """
    r = run(commit_records=group)
    third = RECORDS // 3
    r.produce(slice(0, third))
    first = r.worker("w1")
    r.wait_for_outputs(0.25)
    second = r.worker("w2")
    wait_until(lambda: "assigned" in second.log_path.read_text(errors="replace"), 90,
               "the second worker's partitions", r.logs)
    r.produce(slice(third, 2 * third))
    r.wait_for_outputs(0.6)
    assert second.terminate() == 0, r.logs()
    r.produce(slice(2 * third, None))
    r.wait_for_outputs(1.0)
    r.wait_until_applied()
    assert first.alive()
    r.check()


@GROUPS
def test_crash_between_outputs_acknowledged_and_state_written(run: Callable[..., Run], group: int,
                                                              tmp_path: Path) -> None:
    """The worker dies right after a group's outputs are acknowledged, before its state is written:
    the restart applies the group again (same output ids, identical copies) and nothing twice in state."""
    marker = tmp_path / "crashed"
    r = run(commit_records=group, crash_after_ack=5, crash_marker=str(marker))
    r.produce()
    first = r.worker("w1")
    assert first.proc is not None
    assert first.proc.wait(120) == 9, r.logs()
    sent = int(marker.read_text())
    assert sent > 0
    before = r.output_ids()
    result = finish(r, "w2")
    assert result["duplicates"] >= sent, "the crashed group's outputs were not sent again"
    assert len(before) < len(r.expected_ids())


def stalled_run(run: Callable[..., Run], stall_after_s: float) -> Run:
    """All the input, and a worker that loses partition 0's records after its 20th as Faust did."""
    r = run(stall_partition_after=20, stall_after_s=stall_after_s)
    r.produce()
    w = r.worker("w1")
    wait_until(lambda: "injected: partition 0 records dropped" in w.log_path.read_text(errors="replace"), 90,
               "the injected stall", r.logs)
    return r


def test_partition_faust_stops_fetching_is_resumed(run: Callable[..., Run]) -> None:
    """A partition still assigned but no longer fetched (seen after a join/leave) is found and re-seeked."""
    r = stalled_run(run, stall_after_s=3.0)
    r.wait_for_outputs(1.0)
    r.wait_until_applied()
    r.check()
    assert "partition 0 stalled" in r.workers[0].log_path.read_text(errors="replace"), r.logs()


def test_without_the_watchdog_a_stalled_partition_stays_stalled(run: Callable[..., Run]) -> None:
    """The test above fails without the watchdog: the same fault with it off leaves partition 0's records."""
    r = stalled_run(run, stall_after_s=0)
    r.wait_for_outputs(0.8)
    time.sleep(8)
    r.workers[0].terminate()
    missing = r.expected_ids() - r.output_ids()
    assert missing, "the injected stall lost nothing: this test no longer proves the watchdog"
    assert {m.split(":")[0] for m in missing} == {"0"}  # only partition 0 is behind


def test_a_partition_that_stays_stalled_makes_the_worker_exit_for_a_restart(run: Callable[..., Run]) -> None:
    """Repairs that do not help end in exit code 75 (a restart is lossless; a silent stall is not)."""
    r = run(stall_partition_after=20, stall_after_s=2.0, stall_forever=True)
    r.produce()
    w = r.worker("w1")
    assert w.proc is not None
    code = w.proc.wait(90)
    log = w.log_path.read_text(errors="replace")
    assert code == 75, log[-3000:]
    assert log.count("partition 0 stalled") >= 3 and "still stalled" in log, log[-3000:]


def recovery_stall_run(run: Callable[..., Run], stall_after_s: float) -> Run:
    """Half the input applied by a first worker; a second one whose table recovery loses the records
    it fetches from changelog partition 0, as Faust did when a partition came back after a join/leave."""
    r = run(stall_after_s=stall_after_s)
    half = RECORDS // 2
    r.produce(slice(0, half))
    first = r.worker("w1")
    r.wait_for_outputs(0.45)
    assert first.terminate() == 0, r.logs()
    second = r.worker("w2", stall_recovery=True)
    r.produce(slice(half, None))
    wait_until(lambda: "injected: recovery records" in second.log_path.read_text(errors="replace"), 90,
               "the injected recovery stall", r.logs)
    return r


def test_a_table_recovery_that_receives_nothing_is_resumed(run: Callable[..., Run]) -> None:
    """Recovery waiting forever for changelog records the consumer already dropped (seen once in 25
    join/leave runs, the whole worker idle) is found and re-seeked; nothing is lost."""
    r = recovery_stall_run(run, stall_after_s=3.0)
    r.wait_for_outputs(1.0)
    r.wait_until_applied()
    r.check()
    assert "table recovery has received nothing" in r.workers[-1].log_path.read_text(errors="replace"), r.logs()


def test_without_the_watchdog_a_stalled_recovery_stays_stalled(run: Callable[..., Run]) -> None:
    """The test above fails without the repair: the same fault with the watchdog off stops the worker."""
    r = recovery_stall_run(run, stall_after_s=0)
    time.sleep(15)
    before = len(r.output_ids())
    time.sleep(5)
    assert len(r.output_ids()) == before, "the worker made progress: this test no longer proves the repair"
    assert r.expected_ids() - r.output_ids(), "the injected stall lost nothing"
    r.workers[-1].terminate()


def test_record_faust_skips_is_repaired(run: Callable[..., Run]) -> None:
    """Faust 0.15.3 acked the record at the committed offset without handing it over; the runner re-reads it."""
    r = run(skip_first_per_partition=True)
    r.produce()
    finish(r, "w1")


def test_without_gap_repair_the_skipped_records_are_lost(run: Callable[..., Run]) -> None:
    """The test above fails without the fix: the same fault with gap repair off loses records."""
    r = run(skip_first_per_partition=True, gap_repair=False)
    r.produce()
    r.worker("w1")
    r.wait_for_outputs(0.95)
    r.workers[0].terminate()
    missing = r.expected_ids() - r.output_ids()
    assert missing, "the injected fault lost nothing: this test no longer proves the repair"
    assert {m.split(":")[1] for m in missing} == {"0"}  # exactly the first record of each partition
