"""Outages cost time, never data: Redis and the broker go away in the middle of a counted stream.

Real processes throughout: `leadstream collector` and `leadstream worker` on a broker and a Redis
server of the test's own (its own port and data directory, so the other tests are unaffected).
A sender thread posts one page view per new visitor through the collector, steadily, and notes
each answer. In the middle of the stream the test takes one dependency away for
``LEADSTREAM_OUTAGE_S`` seconds (default 30, as issue 13 asks) and brings it back on the same port
and data directory:

- Redis stopped (``SHUTDOWN SAVE``, then started again on its dump);
- Redis hung (SIGSTOP, then SIGCONT): a server that accepts connections and never answers;
- the broker stopped (SIGTERM) and started again.

Then it asserts that the worker waited without exiting or storming rebalances, that the
collector answered 503 while the broker was away (and ``/sink-health`` said so), and that every
acknowledged (2xx) event is in ``visits`` under exactly one update id. The figures (sent,
acknowledged, 503s, recovered, duplicates, time to recover) are printed (run with ``-s``) and
appended to ``$LEADSTREAM_OUTAGE_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import redis

from pipeline.local.kafka import KafkaBroker
from pipeline.local.redis import RedisServer, find_system_redis_server

from .pipeline_harness import CODEC, Pipeline, _CliProcess, load_reference_data, now_ms

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("LEADSTREAM_OUTAGE_S", "30"))
SEND_EVERY_S = 0.05          # at most ~20 requests a second from one sender thread
BEFORE_S = 4.0               # steady traffic before the outage
AFTER_S = 4.0                # and after the dependency is back
RECOVERY_TIMEOUT_S = 60.0
MAX_REBALANCES = 3           # a broker restart costs a rejoin or two, never a storm
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
      "Version/17.5 Safari/605.1.15")


@dataclass
class Sent:
    visitor_id: str
    url: str
    at: float
    status: int            # 0: no answer (connection error or client timeout)


@dataclass
class Sender:
    """Posts one page view of a new visitor per request until stopped; notes every answer."""
    pipeline: Pipeline
    sent: list[Sent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Sender:
        self.thread = threading.Thread(target=self._run, name="outage-sender", daemon=True)
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.pipeline.url, timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                self.sent.append(self.post(client, n))
                time.sleep(SEND_EVERY_S)

    def post(self, client: httpx.Client, n: int) -> Sent:
        visitor = str(uuid.uuid4())
        url = f"https://www.acme.example/outage/{n}"
        t = now_ms()
        body = {"site_id": "acme", "visitor_id": visitor, "sent_at": t,
                "events": [{"type": "page_view", "id": str(uuid.uuid4()), "url": url, "ts": t, "title": f"p{n}",
                            "screen": "1920x1080", "viewport": "1440x900"}]}
        try:
            resp = client.post("/collect", content=json.dumps(body),
                               headers={"X-Forwarded-For": f"198.51.100.{n % 250 + 1}", "User-Agent": UA,
                                        "Accept-Language": "en-US,en;q=0.9", "Content-Type": "text/plain"})
            status = resp.status_code
        except httpx.HTTPError:
            status = 0
        return Sent(visitor, url, time.monotonic(), status)

    def acknowledged(self) -> list[Sent]:
        return [s for s in list(self.sent) if 200 <= s.status < 300]


@dataclass
class Figures:
    outage: str
    outage_s: float
    sent: int = 0
    acknowledged: int = 0
    unavailable_503: int = 0
    other: dict[int, int] = field(default_factory=dict)
    recovered: int = 0
    duplicates: int = 0
    time_to_recover_s: float = 0.0     # from the dependency back to every acknowledged event in visits
    resumed_s: float = 0.0             # from the dependency back to the worker's first visits record
    drained_s: float = 0.0             # from the dependency back to the last acknowledged event's visits record
    collector_back_s: float = 0.0      # from the dependency back to the collector's next 2xx
    rebalances: int = 0              # counted by the broker's group coordinator
    dependency_retries: float = 0.0
    stalls: float = 0.0              # partitions the stall watchdog took for stalled (must stay 0)
    worker_exits: int = 0

    def report(self) -> None:
        line = json.dumps(self.__dict__, sort_keys=True)
        print(f"\nOUTAGE FIGURES {line}")
        target = os.environ.get("LEADSTREAM_OUTAGE_REPORT")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(line + "\n")


def metric(p: _CliProcess, name: str) -> float:
    """The sum of one metric's samples on the worker's /metrics page (0 when absent)."""
    text = httpx.get(p.metrics_url, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def group_rebalances(broker: KafkaBroker, group: str, since: int) -> int:
    """Rebalances of consumer group ``group`` the broker's coordinator logged past byte ``since``."""
    with open(broker.log_path, "rb") as log:
        log.seek(since)
        text = log.read().decode("utf-8", "replace")
    return text.count(f"Preparing to rebalance group {group} ")


def visits_by_visitor(p: Pipeline) -> dict[str, list[dict[str, Any]]]:
    """Every visit update (each copy) per visitor id."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for batch in p.decoded("visits"):
        for u in batch["updates"]:
            if u["visitor_id"]:
                out[u["visitor_id"]].append(u)
    return out


def visits_written_at(p: Pipeline) -> dict[str, int]:
    """The broker timestamp (ms) of each visitor's first visits record."""
    out: dict[str, int] = {}
    for record in p.records("visits"):
        for u in CODEC.decode(record.value)["updates"]:
            if u["visitor_id"]:
                out[u["visitor_id"]] = min(out.get(u["visitor_id"], record.timestamp), record.timestamp)
    return out


def missing(p: Pipeline, acked: list[Sent]) -> list[Sent]:
    found = visits_by_visitor(p)
    return [s for s in acked if s.visitor_id not in found]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if find_system_redis_server() is None:
        pytest.fail("the outage tests need Debian's redis-server (scripts/bootstrap installs it)", pytrace=False)
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)   # a failed hung test must not leave it stopped
        server.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "kafka", heap="384m")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


def start_pipeline(broker: KafkaBroker, redis_url: str, tmp: Path, name: str) -> tuple[Pipeline, _CliProcess]:
    load_reference_data(redis_url)
    p = Pipeline(broker, redis_url, tmp, name)
    p.create_topics()
    worker = p.start_worker()
    p.start_collector()
    # the worker is up once a first visitor made it to visits
    warm = Sender(p)
    with httpx.Client(base_url=p.url, timeout=10) as client:
        first = warm.post(client, 0)
    assert first.status == 200, first
    p.wait_for(lambda: first.visitor_id in visits_by_visitor(p), "the worker's first visit", 90)
    return p, worker


def run_outage(p: Pipeline, worker: _CliProcess, figures: Figures, take_away: Callable[[], None],
               bring_back: Callable[[], None], during: Callable[[], None] = lambda: None) -> tuple[Sender, float]:
    """Traffic before, during and after one outage; fills ``figures`` and asserts no loss."""
    log_start = p.broker.log_path.stat().st_size
    sender = Sender(p).start()
    time.sleep(BEFORE_S)
    take_away()
    away_until = time.monotonic() + OUTAGE_S
    during()
    time.sleep(max(0.0, away_until - time.monotonic()))
    bring_back()
    back, back_wall_ms = time.monotonic(), now_ms()
    time.sleep(AFTER_S)
    sender.finish()
    acked = sender.acknowledged()
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    lost = missing(p, acked)
    while lost and time.monotonic() < deadline:
        time.sleep(1)
        lost = missing(p, acked)
    recovered_at = time.monotonic()

    statuses = Counter(s.status for s in sender.sent)
    found = visits_by_visitor(p)
    figures.sent = len(sender.sent)
    figures.acknowledged = len(acked)
    figures.unavailable_503 = statuses.get(503, 0)
    figures.other = {k: v for k, v in statuses.items() if not 200 <= k < 300 and k != 503}
    figures.recovered = sum(1 for s in acked if s.visitor_id in found)
    figures.duplicates = sum(len(found[s.visitor_id]) - 1 for s in acked if s.visitor_id in found)
    figures.time_to_recover_s = round(recovered_at - back, 1)
    first_ack = min((s.at for s in acked if s.at > back), default=float("nan"))
    written = visits_written_at(p)
    figures.resumed_s = round((min((t for t in written.values() if t >= back_wall_ms), default=0) - back_wall_ms)
                              / 1000, 1)
    figures.drained_s = round((max((written.get(s.visitor_id, 0) for s in acked), default=0) - back_wall_ms) / 1000, 1)
    figures.collector_back_s = round(first_ack - back, 1)
    figures.worker_exits = 0 if worker.alive() else 1
    figures.rebalances = group_rebalances(p.broker, p.config["stages"]["app_id"], log_start)
    if worker.alive():
        figures.dependency_retries = metric(worker, "leadstream_stage_dependency_retries_total")
        figures.stalls = metric(worker, "leadstream_stage_stalls_total")
    figures.report()

    assert worker.alive(), f"the worker exited during the outage\n{p.logs()}"
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged events never reached visits, e.g. {lost[:3]}\n{p.logs()}"
    for s in acked:
        updates = found[s.visitor_id]
        ids = {u["update_id"] for u in updates}
        assert len(ids) == 1, f"visitor {s.visitor_id} is in visits under {len(ids)} update ids: {sorted(ids)}"
        copies = {json.dumps(u, sort_keys=True) for u in updates}
        assert len(copies) == 1, f"the copies of update {ids} differ"
        assert [h["url"] for h in updates[0]["hits"]] == [s.url]
    assert figures.rebalances <= MAX_REBALANCES, f"{figures.rebalances} rebalances: a storm\n{p.logs()}"
    assert figures.stalls == 0, f"the stall watchdog took waiting on the outage for a stall\n{p.logs()}"
    # the stream really went on around the outage
    assert sum(1 for s in acked if s.at < back - OUTAGE_S) > 10 and sum(1 for s in acked if s.at > back) > 10
    return sender, back


def test_redis_stopped_for_the_outage_then_restarted_loses_nothing(
        kafka_broker: KafkaBroker, own_redis: RedisServer, tmp_path: Path,
        unique_name: Callable[[str], str]) -> None:
    p, worker = start_pipeline(kafka_broker, own_redis.url, tmp_path, unique_name("redis-out"))
    figures = Figures("redis stopped", OUTAGE_S)
    try:
        def take_away() -> None:
            client = redis.Redis.from_url(own_redis.url, socket_timeout=5)
            try:
                client.shutdown(save=True)      # a maintenance stop: the data comes back from the dump
            except redis.ConnectionError:
                pass
            own_redis.stop()

        waiting: list[float] = []

        def during() -> None:
            time.sleep(min(8.0, OUTAGE_S / 2))
            waiting.append(metric(worker, "leadstream_stage_waiting_seconds"))

        run_outage(p, worker, figures, take_away, own_redis.start, during)
        assert figures.dependency_retries > 0, "the worker never noticed Redis was away"
        assert waiting[0] > 0, "leadstream_stage_waiting_seconds did not show the wait"
        assert figures.unavailable_503 == 0, "the collector does not need Redis"
    finally:
        p.stop()


def test_redis_hung_for_the_outage_neither_freezes_the_worker_nor_loses_anything(
        kafka_broker: KafkaBroker, own_redis: RedisServer, tmp_path: Path,
        unique_name: Callable[[str], str]) -> None:
    """A Redis that accepts connections and never answers: before async Redis with timeouts, the
    worker's event loop blocked in a lookup, heartbeats stopped and the group rebalanced."""
    p, worker = start_pipeline(kafka_broker, own_redis.url, tmp_path, unique_name("redis-hung"))
    figures = Figures("redis hung", OUTAGE_S)
    assert own_redis.process is not None
    pid = own_redis.process.pid
    try:
        run_outage(p, worker, figures, lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT))
        assert figures.rebalances == 0, "the worker stopped heartbeating while Redis hung"
        assert figures.dependency_retries > 0, "no lookup timed out: the worker waited on the hung Redis"
    finally:
        p.stop()


def test_broker_stopped_for_the_outage_then_restarted_loses_nothing(
        own_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
        unique_name: Callable[[str], str]) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    p, worker = start_pipeline(own_broker, url, tmp_path, unique_name("broker-out"))
    figures = Figures("broker stopped", OUTAGE_S)
    sink_health: list[int] = []

    def during() -> None:
        time.sleep(min(8.0, OUTAGE_S / 2))
        sink_health.append(httpx.get(f"{p.url}/sink-health", timeout=10).status_code)

    try:
        sender, back = run_outage(p, worker, figures, own_broker.stop, own_broker.start, during)
        assert sink_health == [503], f"/sink-health answered {sink_health} while the broker was away"
        assert figures.unavailable_503 > 0, "the collector never answered 503 while the broker was away"
        assert set(figures.other) <= {0} and figures.other.get(0, 0) <= 2, figures.other
        late = [s.status for s in sender.sent if s.at > back + AFTER_S - 1.5]
        assert late and all(200 <= st < 300 for st in late), f"the collector still refuses: {Counter(late)}"
    finally:
        p.stop()



def test_every_redis_port_of_the_worker_fails_fast_on_a_hung_redis_without_blocking_the_loop(
        own_redis: RedisServer, tmp_path: Path) -> None:
    """Regression: reference lookups and quota claims were blocking calls on the event loop, on
    clients without timeouts. Each port the worker wires must await Redis, and give up after
    ``redis.socket_timeout_s`` with an error the runner retries, while the loop keeps running."""
    from pipeline.core.identity import IdType
    from pipeline.core.model import NetworkInfo
    from pipeline.settings import load_settings
    from pipeline.stages.main import build_handlers, retryable_errors

    config = tmp_path / "worker.yaml"
    config.write_text(json.dumps({"redis": {"url": own_redis.url, "socket_timeout_s": 0.5, "connect_timeout_s": 0.5},
                                  "kafka": {"bootstrap_servers": "127.0.0.1:1"}, "identity_salt": "s",
                                  "sites": [{"site_id": "acme", "allowed_origins": ["*"]}]}))
    visitor, account = build_handlers(load_settings(config))
    assert visitor.reference is not None and visitor.identity is not None and account.quota is not None
    # the worker caches each network it resolved: the probe asks for one it has not seen, so it needs Redis
    ips = iter(["203.0.113.7", "203.0.113.8"])
    calls: dict[str, Callable[[], Any]] = {
        "reference": lambda: visitor.reference.resolve_networks([NetworkInfo(ip=next(ips))]),  # type: ignore[union-attr]
        "identity": lambda: visitor.identity.load_snapshot("acme", [(IdType.visitor, "v1")]),  # type: ignore[union-attr]
        "quota": lambda: account.quota.claim("acme", "2026-12", "lead-1", 10),  # type: ignore[union-attr]
    }
    import asyncio

    async def probe(call: Callable[[], Any]) -> tuple[float, int, BaseException | None]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        began = time.monotonic()
        error: BaseException | None = None
        try:
            result = call()
            if asyncio.iscoroutine(result):
                await asyncio.wait_for(result, 10)
        except BaseException as exc:  # noqa: BLE001 - what it raised is the point
            error = exc
        took = time.monotonic() - began
        ticker.cancel()
        return took, ticks, error

    async def warm_then_hang() -> dict[str, tuple[float, int, BaseException | None]]:
        for call in calls.values():       # connections open while Redis answers
            result = call()
            if asyncio.iscoroutine(result):
                await result
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            return {name: await probe(call) for name, call in calls.items()}
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)

    load_reference_data(own_redis.url)
    outcomes = asyncio.run(warm_then_hang())
    for name, (took, ticks, error) in outcomes.items():
        assert isinstance(error, retryable_errors()), f"{name}: {error!r} is not retried by the runner"
        assert took < 3.0, f"{name} waited {took:.1f} s on a hung Redis (socket_timeout_s is 0.5)"
        assert ticks >= 0.6 * took / 0.05, f"{name} blocked the event loop: {ticks} ticks in {took:.1f} s"
