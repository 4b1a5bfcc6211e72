"""What each process measures about itself on a timer (every ``metrics_interval_s``).

The counters of ``pipeline.metrics`` move where the work happens; what no single record
changes is measured here, by periodic tasks, each in its own error boundary (a probe that
fails never stops the others, or the process):

* **Redis and broker health** (:class:`DependencyProbe`): a Redis ``PING`` and a broker
  metadata request, each with a timeout: ``leadstream_dependency_up``,
  ``leadstream_dependency_ping_seconds`` and ``leadstream_dependency_errors_total``.
* **Consumer lag** per topic and partition (``leadstream_consumer_lag_records``): for a worker
  stage, the high watermark minus the next record the stage must apply, from its own
  progress (:func:`stage_lag`, the partitions this worker owns); for the sinks and the leads
  view updater, the high watermark minus the group's committed offset (:class:`GroupLag`).
* **State size and open sessions** of the worker's tables (:class:`StateCensus`).

The worker runs these as Faust timers (:func:`watch_worker`), the leads service as a task
(:func:`run_periodically`), the sinks process in a thread of its own (:func:`start_thread`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from .metrics import (CONSUMER_LAG, DEPENDENCY_ERRORS, DEPENDENCY_PING, DEPENDENCY_UP, OPEN_SESSIONS, STATE_BYTES,
                      STATE_KEYS)
from .settings import Settings

log = logging.getLogger(__name__)

Task = Callable[[], Awaitable[None]]

#: values whose JSON size is measured per census to estimate a table's bytes
SAMPLE_VALUES = 200
#: longest wait for the offsets of one lag measurement
LAG_TIMEOUT_S = 30.0
#: keys read between two yields to the event loop, so a census never holds the stages up
CHUNK_KEYS = 2000


class LagSeries:
    """The lag series one consumer exports: set per partition, the partitions it no longer reports removed."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self._labels: set[tuple[str, str]] = set()

    def update(self, lags: Mapping[tuple[str, int], int]) -> None:
        now = {(topic, str(partition)) for topic, partition in lags}
        for topic, label in self._labels - now:
            try:
                CONSUMER_LAG.remove(self.consumer, topic, label)
            except KeyError:
                pass
        for (topic, partition), lag in lags.items():
            CONSUMER_LAG.labels(self.consumer, topic, str(partition)).set(max(0, lag))
        self._labels = now


def lag_of(ends: Mapping[int, int], next_offsets: Mapping[int, int]) -> dict[int, int]:
    """Records not processed per partition: the high watermark minus the next offset to process (never < 0)."""
    return {p: max(0, end - next_offsets[p]) for p, end in ends.items() if p in next_offsets}


class DependencyProbe:
    """Pings Redis and the broker (each when configured), sets the ``leadstream_dependency_*`` series."""

    def __init__(self, settings: Settings, redis: bool = True, broker: bool = True, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.redis_url = settings.redis.url_value if redis else None
        self.broker = broker and bool(settings.kafka.bootstrap_servers)
        self._redis: Any = None
        self._admin: Any = None
        for dependency in self.dependencies:
            DEPENDENCY_ERRORS.labels(dependency)   # at zero from the start, so the first error shows in rate()

    @property
    def dependencies(self) -> list[str]:
        return ([] if self.redis_url is None else ["redis"]) + (["broker"] if self.broker else [])

    async def probe(self) -> None:
        if self.redis_url is not None:
            await self._measure("redis", self._ping_redis)
        if self.broker:
            await self._measure("broker", self._ping_broker)

    async def _measure(self, dependency: str, ping: Task) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(ping(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
            DEPENDENCY_UP.labels(dependency).set(0)
            DEPENDENCY_ERRORS.labels(dependency).inc()
            log.debug("health probe of %s failed: %s: %s", dependency, type(exc).__name__, exc)
            await self._reset(dependency)
            return
        DEPENDENCY_PING.labels(dependency).set(time.perf_counter() - started)
        DEPENDENCY_UP.labels(dependency).set(1)

    async def _ping_redis(self) -> None:
        if self._redis is None:
            from .redis_client import async_client
            assert self.redis_url is not None
            self._redis = async_client(self.redis_url, **self.settings.redis.client_options())
        await self._redis.ping()

    async def _ping_broker(self) -> None:
        if self._admin is None:
            from aiokafka.admin import AIOKafkaAdminClient
            admin = AIOKafkaAdminClient(**_admin_options(self.settings, self.timeout_s))
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        await self._admin.describe_cluster()

    async def _reset(self, dependency: str) -> None:
        """A failed probe starts over with a new client next time (aiokafka's may be stuck in a bad state)."""
        if dependency == "broker" and self._admin is not None:
            admin, self._admin = self._admin, None
            try:
                await admin.close()
            except Exception:  # noqa: BLE001
                pass

    async def close(self) -> None:
        await self._reset("broker")
        if self._redis is not None:
            client, self._redis = self._redis, None
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001
                pass


def _admin_options(settings: Settings, timeout_s: float) -> dict[str, Any]:
    opts = settings.kafka.client_options()
    return {**opts, "client_id": f"{opts.get('client_id') or 'leadstream'}-probe",
            "request_timeout_ms": int(timeout_s * 1000)}


class GroupLag:
    """A consumer group's lag on one topic, from the broker: end offsets minus committed offsets.

    Every replica of the process reports every partition of the group (read it with
    ``max by (consumer, topic, partition)``). A partition the group never committed counts from
    the log start (its consumers start at ``earliest``).
    """

    def __init__(self, settings: Settings, consumer: str, group_id: str, topic: str, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topic = topic
        self.timeout_s = timeout_s
        self.series = LagSeries(consumer)
        self._admin: Any = None
        self._reader: Any = None

    async def poll(self) -> dict[int, int]:
        try:
            lags = await asyncio.wait_for(self._lags(), self.timeout_s)
        except Exception:
            await self.close()  # new clients next time
            raise
        self.series.update({(self.topic, p): lag for p, lag in lags.items()})
        return lags

    async def _lags(self) -> dict[int, int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            admin = AIOKafkaAdminClient(**_admin_options(self.settings, self.timeout_s))
            await admin.start()
            self._admin = admin
        if self._reader is None:
            opts = self.settings.kafka.client_options()
            reader = AIOKafkaConsumer(**{**opts, "client_id": f"{opts.get('client_id') or 'leadstream'}-lag"},
                                      group_id=None, enable_auto_commit=False)
            await reader.start()
            self._reader = reader
        described = await self._admin.describe_topics([self.topic])
        partitions = sorted(p["partition"] for t in described if t["topic"] == self.topic
                            for p in t.get("partitions", ()))
        if not partitions:
            return {}
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends = await self._reader.end_offsets(tps)
        committed = await self._committed(tps)
        missing = [tp for tp in tps if committed.get(tp) is None or committed[tp].offset < 0]
        starts = await self._reader.beginning_offsets(missing) if missing else {}
        next_offsets = {tp.partition: (int(starts[tp]) if tp in starts else int(committed[tp].offset)) for tp in tps}
        return lag_of({tp.partition: int(ends[tp]) for tp in tps}, next_offsets)

    async def _committed(self, tps: list[Any]) -> dict[Any, Any]:
        """The group's committed offsets; retried while the broker says to (its group coordinator is being
        elected or loaded, e.g. on a new cluster), within the poll's timeout."""
        from aiokafka.errors import KafkaError

        while True:
            try:
                offsets: dict[Any, Any] = await self._admin.list_consumer_group_offsets(self.group_id, partitions=tps)
                return offsets
            except KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        for name in ("_admin", "_reader"):
            client = getattr(self, name)
            setattr(self, name, None)
            if client is None:
                continue
            try:
                await (client.close() if name == "_admin" else client.stop())
            except Exception:  # noqa: BLE001
                pass


async def stage_lag(runner: Any, topic: str, series: LagSeries) -> dict[int, int]:
    """A worker stage's lag on its source partitions: the high watermark minus the next record to apply
    (the stage's own progress, so records Faust fetched but the stage has not applied count)."""
    owned = sorted(runner.owned)
    if runner.gap_reader is None or not owned:
        series.update({})
        return {}
    ends = await runner.gap_reader.end_offsets(owned)
    next_offsets = {p: await runner.expected_offset(p) for p in owned}
    lags = lag_of(ends, next_offsets)
    series.update({(topic, p): lag for p, lag in lags.items()})
    return lags


@dataclass
class Census:
    """What a pass over one table found."""
    keys: int = 0
    bytes: int = 0
    open_sessions: dict[str, int] = field(default_factory=dict)   # site -> visitors with an open session


class StateCensus:
    """Counts a stage's table: keys, estimated bytes and (visitor stage) open sessions per site.

    A visitor's session is open while its last event is within the site's session gap of now
    (``session_gap_ms``: site -> gap). Keys are read in chunks with a yield to the event loop
    between them; bytes are the mean JSON size of up to ``SAMPLE_VALUES`` values times the keys.
    """

    def __init__(self, table_name: str, session_gap_ms: Mapping[str, int] | None = None,
                 clock: Callable[[], float] = time.time, cpu_share: float = 0.02) -> None:
        self.table_name = table_name
        self.session_gap_ms = session_gap_ms
        self.clock = clock
        #: a pass that took T seconds is followed by at least T / cpu_share seconds without one: on a table
        #: of millions of keys the census spaces itself out instead of taking the worker's time
        self.cpu_share = cpu_share
        self._next_at = 0.0

    async def count(self, table: Any) -> Census:
        from .stages.runtime import PROGRESS_PREFIX

        keys = [k for k in list(table.keys()) if isinstance(k, str) and not k.startswith(PROGRESS_PREFIX)]
        census = Census(keys=len(keys))
        step = max(1, len(keys) // SAMPLE_VALUES)
        sampled = sampled_bytes = 0
        now_ms = int(self.clock() * 1000)
        for start in range(0, len(keys), CHUNK_KEYS):
            if start:
                await asyncio.sleep(0)
            for i in range(start, min(start + CHUNK_KEYS, len(keys))):
                if self.session_gap_ms is None and i % step:
                    continue
                stored = table.get(keys[i])
                if stored is None:
                    continue
                if i % step == 0 and sampled < SAMPLE_VALUES:
                    sampled += 1
                    sampled_bytes += len(json.dumps(stored, separators=(",", ":")))
                if self.session_gap_ms is not None:
                    site = open_session_site(stored, now_ms, self.session_gap_ms)
                    if site is not None:
                        census.open_sessions[site] = census.open_sessions.get(site, 0) + 1
        census.bytes = sampled_bytes * census.keys // sampled if sampled else 0
        return census

    async def measure_when_due(self, table: Any) -> Census | None:
        """:meth:`measure`, unless the last pass was too recent for its cost (see ``cpu_share``)."""
        if time.monotonic() < self._next_at:
            return None
        started = time.monotonic()
        census = await self.measure(table)
        ended = time.monotonic()
        self._next_at = ended + (ended - started) / self.cpu_share
        return census

    async def measure(self, table: Any) -> Census:
        census = await self.count(table)
        STATE_KEYS.labels(self.table_name).set(census.keys)
        STATE_BYTES.labels(self.table_name).set(census.bytes)
        if self.session_gap_ms is not None:
            for site in self.session_gap_ms:
                OPEN_SESSIONS.labels(site).set(census.open_sessions.get(site, 0))
        return census


def open_session_site(stored: Any, now_ms: int, session_gap_ms: Mapping[str, int]) -> str | None:
    """The site of a stored visitor state (``{"o": offset, "s": {"vs": VisitorState}}``) whose session is
    open at ``now_ms``, else None."""
    state = stored.get("s") if isinstance(stored, Mapping) else None
    vs = state.get("vs") if isinstance(state, Mapping) else None
    if not isinstance(vs, Mapping) or not vs.get("open"):
        return None
    site, last = vs.get("site"), vs.get("ls")
    gap = session_gap_ms.get(site) if isinstance(site, str) else None
    if gap is None or not isinstance(last, int):
        return None
    return site if now_ms - last <= gap else None


def session_gaps(settings: Settings) -> dict[str, int]:
    """Each site's session gap in ms: the one its effective rules hold (``SiteSettings.effective_rules``)."""
    model = settings.load_scoring_model()
    return {s.site_id: s.effective_rules(model).intent.session_gap_minutes * 60_000 for s in settings.sites}


async def run_guarded(name: str, task: Task, failures: dict[str, int]) -> None:
    """One pass of ``task``; a failure is logged (once per run of failures) and never raised."""
    try:
        await task()
    except Exception as exc:  # noqa: BLE001 - a failed measurement is retried on the next pass
        if not failures.get(name):
            log.warning("metrics: %s failed (%s: %s); retrying every pass", name, type(exc).__name__, exc)
        failures[name] = failures.get(name, 0) + 1
        return
    if failures.pop(name, 0):
        log.info("metrics: %s works again", name)


async def run_periodically(tasks: Mapping[str, Task], interval_s: float, stop: asyncio.Event) -> None:
    """Run every task each ``interval_s`` until ``stop`` is set."""
    failures: dict[str, int] = {}
    while not stop.is_set():
        for name, task in tasks.items():
            await run_guarded(name, task, failures)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except asyncio.TimeoutError:
            pass


def start_thread(make_tasks: Callable[[], Mapping[str, Task]], interval_s: float,
                 closers: Callable[[], Sequence[Callable[[], Awaitable[None]]]] = lambda: (),
                 name: str = "leadstream-metrics") -> threading.Thread:
    """Run the tasks in a daemon thread with an event loop of its own (for a process whose loop this
    module does not own, e.g. ``leadstream sinks``). The thread ends with the process."""

    def main() -> None:
        async def go() -> None:
            tasks = make_tasks()
            try:
                await run_periodically(tasks, interval_s, asyncio.Event())
            finally:
                for close in closers():
                    await close()
        asyncio.run(go())

    thread = threading.Thread(target=main, name=name, daemon=True)
    thread.start()
    return thread


def group_watch(settings: Settings, consumer: str, group_id: str, topic: str,
                redis: bool = True) -> tuple[Callable[[], dict[str, Task]], Callable[[], list[Callable[[], Awaitable[None]]]]]:
    """The tasks of a process that consumes ``topic`` in ``group_id``: its dependencies' health and the
    group's lag; and what closes their clients. Build the tasks in the loop that runs them."""
    made: list[Any] = []

    def tasks() -> dict[str, Task]:
        probe = DependencyProbe(settings, redis=redis)
        lag = GroupLag(settings, consumer, group_id, topic)
        made.extend((probe, lag))

        async def poll_lag() -> None:
            await lag.poll()

        return {"health probe": probe.probe, f"{consumer} lag": poll_lag}

    def closers() -> list[Callable[[], Awaitable[None]]]:
        return [m.close for m in made]

    return tasks, closers


def watch_sinks(settings: Settings) -> threading.Thread:
    """``leadstream sinks``: Redis and broker health and the sinks group's lag on qualified-leads, in a thread."""
    tasks, closers = group_watch(settings, "sinks", settings.sinks.group_id, settings.topics.qualified_leads)
    return start_thread(tasks, settings.metrics_interval_s, closers, name="leadstream-sinks-metrics")


def watch_worker(app: Any, settings: Settings, stages: Iterable[Any]) -> None:
    """Register the worker's periodic measurements as Faust timers: health, each stage's lag, state census."""
    interval = settings.metrics_interval_s
    failures: dict[str, int] = {}
    probe = DependencyProbe(settings)
    gaps = session_gaps(settings)

    async def health() -> None:
        await run_guarded("health probe", probe.probe, failures)

    app.timer(interval, name="metrics-health")(health)
    for stage in stages:
        series = LagSeries(stage.name)
        census = StateCensus(f"{stage.name}-state", gaps if stage.name == "visitor" else None)

        async def lag(stage: Any = stage, series: LagSeries = series) -> None:
            async def once() -> None:
                # bounded: while the broker is away the next pass tries again
                await asyncio.wait_for(stage_lag(stage.runner, stage.source_topic, series), LAG_TIMEOUT_S)
            await run_guarded(f"{stage.name} lag", once, failures)

        async def state(stage: Any = stage, census: StateCensus = census) -> None:
            async def once() -> None:
                await census.measure_when_due(stage.table)
            await run_guarded(f"{stage.name} state census", once, failures)

        app.timer(interval, name=f"metrics-{stage.name}-lag")(_no_args(lag))
        app.timer(interval, name=f"metrics-{stage.name}-state")(_no_args(state))

    async def _close(_app: Any, /, *_args: Any, **_kw: Any) -> None:
        await probe.close()

    app.on_before_shutdown.connect(_close)


def _no_args(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer callback without the default arguments that bind the loop variables (Faust inspects them)."""
    async def call() -> None:
        await fn()
    call.__name__ = getattr(fn, "__name__", "metrics")
    return call
