"""What makes a Faust agent safe to crash, restart and rebalance: the record runner.

Faust is at-least-once, and faust-streaming 0.15.3 was measured dropping the
record at the committed offset after a graceful restart (REFERENCE.md). A
:class:`RecordRunner` wraps one stage's handler and guarantees, per input
partition:

* **No gap.** The table keeps, per partition, the offset of the last record
  applied (``~progress/<partition>``). A record that arrives past the next
  expected offset means Faust skipped records: the runner reads the missing
  ones itself (:class:`GapReader`, a plain consumer outside the group) and
  applies them first, in order.
* **Idempotent state.** Every stored value carries the offset that last
  changed it; a record at or below it changes nothing for that key, so the
  replay after a crash (table restored ahead of the committed offsets) is
  harmless.
* **Outputs before state.** A record's outputs are sent and acknowledged by
  the broker before the state that marks it applied is written to the table
  (whose changelog goes out through Faust's buffered producer). A crash in
  between replays the record: outputs are sent again with the same ids, which
  consumers de-duplicate.
* **Group commit.** The rule holds per group of records: a group (up to
  ``stages.commit_records`` records or ``stages.commit_ms``) is applied
  against an overlay of the table, so later records read earlier ones'
  writes; all its outputs are sent and acknowledged together, then its
  states and progress are written. Faust acks (and may commit) a record's
  offset only after its group's table writes (see ``app.add_stage``).

The handler is a plain function of (records, current states) returning
outputs and new states: no Kafka in it. A handler may also have
``prefetch(records)``, awaited before each group: it reads ahead what the
group's records will look up (one round trip instead of one per record);
it must not change what the handler computes, only how fast.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping, Protocol, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..metrics import (STAGE_DEPENDENCY_RETRIES, STAGE_GAPS, STAGE_GROUP_RECORDS, STAGE_GROUP_SECONDS,
                       STAGE_RECORD_SECONDS, STAGE_RECORDS, STAGE_REPLAYED, STAGE_WAITING)

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "~progress/"


@dataclass(frozen=True, slots=True)
class Output:
    """One record to send: explicit partition, raw bytes."""
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class HandlerResult:
    outputs: list[Output] = field(default_factory=list)
    states: dict[str, Any] = field(default_factory=dict)   # key -> new state (JSON-able), written once
    deletes: list[str] = field(default_factory=list)       # keys to delete (idle state: a changelog tombstone)


class Handler(Protocol):
    def __call__(self, partition: int, offset: int, value: bytes,
                 states: "StateView") -> Awaitable[HandlerResult]: ...


#: every runner of this process (the stages share one consumer: see ``RecordRunner._not_idle``)
_RUNNERS: "weakref.WeakSet[RecordRunner]" = weakref.WeakSet()

#: an overlay entry for a key the group deleted: no state, applied at no offset
_DELETED: dict[str, Any] = {"o": -1, "s": None}


class StateView:
    """The handler's read access to the table, with the per-key offset guard applied.

    ``get`` returns the stored state of a key, ``applied(key, offset)`` whether
    the record at ``offset`` has already been applied to it. ``overlay`` holds
    the writes of the group being applied, not yet in the table: a key there
    reads its overlay value (group commit, see :class:`RecordRunner`).
    """

    __slots__ = ("_table", "_overlay")

    def __init__(self, table: Mapping[str, Any], overlay: Mapping[str, Any] | None = None) -> None:
        self._table = table
        self._overlay: Mapping[str, Any] = {} if overlay is None else overlay

    def _stored(self, key: str) -> Any:
        stored = self._overlay.get(key)
        return self._table.get(key) if stored is None else stored

    def get(self, key: str) -> Any:
        stored = self._stored(key)
        return None if stored is None else stored["s"]

    def applied(self, key: str, offset: int) -> bool:
        stored = self._stored(key)
        return stored is not None and stored["o"] >= offset

    def keys(self) -> list[str]:
        """Every state key held here (all partitions this process owns), progress keys left out."""
        return [k for k in list(self._table.keys()) if isinstance(k, str) and not k.startswith(PROGRESS_PREFIX)]


class OutputSender(Protocol):
    async def __call__(self, outputs: Sequence[Output]) -> None: ...


class GapReader:
    """Reads a range of offsets of one partition outside the consumer group (no commits)."""

    def __init__(self, topic: str, group_id: str, client_options: Mapping[str, Any],
                 start_at_ms: int | None = None) -> None:
        self.topic = topic
        self.group_id = group_id
        #: a partition without progress starts at this broker time instead of the log start (a replay)
        self.start_at_ms = start_at_ms
        self._options = dict(client_options)
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(group_id=self.group_id, enable_auto_commit=False,
                                        auto_offset_reset="earliest", **self._options)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def start_offset(self, partition: int) -> int:
        """Where a partition with no applied offset in the table starts: the log start.

        A partition without progress has no state either (progress and state travel in the
        same changelog), so every record the log still holds must be applied, whatever the
        group committed: a commit past records whose state is not in the table would be a loss.
        A replay (``start_at_ms``) starts instead at the first record at or after that time.
        """
        async with self._lock:
            consumer = await self._ensure()
            tp = TopicPartition(self.topic, partition)
            if self.start_at_ms is not None:
                found = (await consumer.offsets_for_times({tp: self.start_at_ms})).get(tp)
                if found is not None:
                    return int(found.offset)
                return int((await consumer.end_offsets([tp]))[tp])  # nothing at or after it yet
            starts = await consumer.beginning_offsets([tp])
            return int(starts[tp])

    async def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The next offset to be written in each partition (its high watermark)."""
        async with self._lock:
            consumer = await self._ensure()
            tps = [TopicPartition(self.topic, p) for p in partitions]
            if not tps:
                return {}
            ends = await consumer.end_offsets(tps)
            return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def read(self, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """Records at offsets ``start`` <= offset < ``end`` (those the log still holds)."""
        async with self._lock:
            consumer = await self._ensure()
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            first = (await consumer.beginning_offsets([tp]))[tp]
            position = max(start, int(first))
            consumer.seek(tp, position)
            out: list[tuple[int, bytes]] = []
            while position < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
                records = batch.get(tp, [])
                if not records:
                    if await consumer.position(tp) >= end:
                        break
                    continue
                for rec in records:
                    if rec.offset >= end:
                        position = end
                        break
                    out.append((rec.offset, rec.value if rec.value is not None else b""))
                    position = rec.offset + 1
            consumer.unsubscribe()
            return out

    async def last_values(self, topic: str, partition: int, timeout_s: float = 60.0) -> dict[bytes, bytes | None]:
        """The latest value of every key in one partition of ``topic`` (a compacted changelog),
        read at least up to the partition's end offset when called.

        Uses a consumer of its own (no group, closed after), so it never disturbs the gap reader's.
        """
        consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", group_id=None,
                                    **self._options)
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            start = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            out: dict[bytes, bytes | None] = {}
            if end <= start:
                return out
            consumer.seek(tp, start)
            deadline = asyncio.get_running_loop().time() + timeout_s
            last = start - 1
            while last < end - 1:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"reading {topic}[{partition}] stopped at offset {last + 1} of {end}")
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=5000)
                # Every record fetched counts, also past ``end``: later values are the latest ones,
                # and Tansu reports the end as the last batch's first offset + 1.
                for rec in batch.get(tp, []):
                    last = rec.offset
                    if rec.key is not None:
                        out[rec.key] = rec.value
            return out
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


@dataclass
class RunnerStats:
    records: int = 0
    groups: int = 0               # groups committed (outputs acknowledged, then states written)
    replayed_skipped: int = 0     # records at or below the partition's progress (after a crash)
    gaps_repaired: int = 0        # records Faust skipped that the runner read itself
    gap_events: int = 0           # times a gap was detected
    reloads: int = 0              # partitions reloaded from their changelog after a rebalance
    retries: int = 0              # tries that failed because Redis or the broker was unreachable
    waited_s: float = 0.0         # seconds spent waiting for an unreachable dependency, in total


class RecordRunner:
    """Applies each input record exactly once to the table, outputs first (see module doc).

    Records are applied in groups (:meth:`handle_group`): every record of a group
    is handled against an overlay of the table holding the group's earlier
    writes, the outputs of the whole group are sent and acknowledged together,
    and only then are the group's states and each partition's progress written.
    A group of one record is the record-at-a-time rule; a crash anywhere
    before the table write replays the whole group, whose outputs carry the
    same ids. ``max_group`` bounds a group (gap repairs are split to it).
    """

    def __init__(self, table: MutableMapping[str, Any], handler: Handler, send: OutputSender,
                 gap_reader: GapReader | None, name: str = "stage",
                 retryable: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError),
                 on_error: Callable[[int, int, bytes, Exception], HandlerResult] | None = None,
                 max_backoff_s: float = 30.0, max_group: int = 1) -> None:
        self.table = table
        self.handler = handler
        self.send = send
        self.gap_reader = gap_reader
        self.name = name
        self.retryable = retryable
        self.on_error = on_error
        self.max_backoff_s = max_backoff_s
        self.max_group = max(1, max_group)
        self.stats = RunnerStats()
        self.on_gap: Callable[[int, int, int], None] | None = None
        # Set by the stage: reloads a partition's table state from its changelog (see ``assigned``).
        self.reload: Callable[[int], Awaitable[int]] | None = None
        self._owned: set[int] = set()
        self._ever_owned: set[int] = set()
        self._to_reload: set[int] = set()
        #: monotonic time of the last record handled per partition (or of its assignment)
        self.last_activity: dict[int, float] = {}
        #: a group is being applied (the stage may be waiting on Redis or the broker)
        self.busy = False
        #: what the group being applied is doing now, and since when (monotonic): the stall
        #: watchdog reports a group that stays in one step for long
        self.step = "idle"
        self.step_since = time.monotonic()
        #: monotonic time since which the stage waits for an unreachable dependency (None: it does not)
        self.waiting_since: float | None = None
        #: a record that takes this long was waiting, not working (see ``_not_idle``)
        self.slow_record_s = 1.0
        self._metrics = _RunnerMetrics(name)
        _RUNNERS.add(self)
        STAGE_WAITING.labels(name).set_function(self._waiting_s)
        #: the context a partition's table writes run in (Faust: that partition's event, see faust_adapter)
        self.write_scope: Callable[[int], AbstractContextManager[None]] = _no_scope

    def assigned(self, partitions: Iterable[int]) -> None:
        """The consumer now owns ``partitions`` of the source topic (called on every rebalance).

        A partition this worker owned earlier, lost and got back may have stale table state:
        with the in-memory store, faust-streaming 0.15.3 was seen resuming a partition handed
        back after another worker had advanced it without replaying that worker's changelog
        entries. Such partitions are reloaded from their changelog before their next record.
        """
        now = set(partitions)
        # Only partitions this process held before can come back stale; a first assignment is
        # recovered by Faust from the changelog's beginning.
        self._to_reload |= (now - self._owned) & self._ever_owned
        self._to_reload &= now
        started = time.monotonic()
        for partition in now - self._owned:
            self.last_activity[partition] = started
        self._owned = now
        self._ever_owned |= now

    @property
    def owned(self) -> frozenset[int]:
        """The source partitions this process holds now."""
        return frozenset(self._owned)

    async def expected_offset(self, partition: int) -> int:
        """The offset of the next record ``partition`` must apply."""
        done = self.progress(partition)
        return done + 1 if done is not None else await self._log_start(partition)

    async def _log_start(self, partition: int) -> int:
        """Where a partition without progress starts (see ``GapReader.start_offset``)."""
        if self.gap_reader is None:
            raise RuntimeError("a partition without progress needs the gap reader to find its start")
        return await asyncio.wait_for(self.gap_reader.start_offset(partition), 60)

    @staticmethod
    def progress_key(partition: int) -> str:
        return f"{PROGRESS_PREFIX}{partition}"

    def progress(self, partition: int) -> int | None:
        value = self.table.get(self.progress_key(partition))
        return None if value is None else int(value)

    async def handle(self, partition: int, offset: int, value: bytes) -> None:
        """Apply one input record (and any records Faust skipped before it): a group of one."""
        await self.handle_group([(partition, offset, value)])

    async def handle_group(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Apply ``records`` ((partition, offset, value), in delivery order) as one group.

        Records at or below a partition's progress are skipped (a replay); records
        Faust skipped before one are read and applied first, in order.
        """
        if not records:
            return
        self.busy = True
        started = time.monotonic()
        self._step("planning the group")
        try:
            todo = await self._plan(records)
            for start in range(0, len(todo), self.max_group):
                await self._apply_group(todo[start:start + self.max_group])
        finally:
            self.busy = False
            self._step("idle")
            now = time.monotonic()
            for partition, _, _ in records:
                self.last_activity[partition] = now
            if now - started >= self.slow_record_s:
                self._not_idle(now - started, now)

    def _step(self, what: str) -> None:
        self.step = what
        self.step_since = time.monotonic()

    def _not_idle(self, waited: float, now: float) -> None:
        """A group took ``waited`` seconds: the stage was waiting (on Redis, or on the broker to take
        its outputs), and no partition could be delivered meanwhile, to this stage or to the others
        of the process (they share one consumer, which stops handing records over while one agent
        is stuck). That is not idle time: every owned partition's idle clock of every runner of the
        process, which the stall watchdogs read, moves forward by it."""
        for runner in list(_RUNNERS):
            for partition in runner._owned:
                if partition in runner.last_activity:
                    runner.last_activity[partition] = min(now, runner.last_activity[partition] + waited)

    @staticmethod
    def any_waiting() -> bool:
        """True while a runner of this process waits for an unreachable dependency."""
        return any(r.waiting_since is not None for r in list(_RUNNERS))

    async def _plan(self, records: Sequence[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
        """The records to apply, in order: replays dropped, gaps filled from the log."""
        todo: list[tuple[int, int, bytes]] = []
        next_of: dict[int, int | None] = {}   # partition -> the next offset to apply (None: not known)
        for partition, offset, value in records:
            if partition not in next_of:
                await self._maybe_reload(partition)
                done = self.progress(partition)
                if done is None and self.gap_reader is not None:
                    self._step(f"finding the log start of partition {partition}")
                    next_of[partition] = await self._log_start(partition)
                else:
                    next_of[partition] = None if done is None else done + 1
            expected = next_of[partition]
            if expected is not None and offset < expected:
                self.stats.replayed_skipped += 1
                self._metrics.replayed.inc()
                continue
            if self.gap_reader is not None and expected is not None and offset > expected:
                self._step(f"reading the skipped records {expected}-{offset - 1} of partition {partition}")
                missing = await asyncio.wait_for(self.gap_reader.read(partition, expected, offset), 120)
                self.stats.gap_events += 1
                self.stats.gaps_repaired += len(missing)
                self._metrics.gaps.inc(len(missing))
                log.warning("%s: partition %d jumped from offset %d to %d; applying %d skipped records first",
                            self.name, partition, expected, offset, len(missing))
                if self.on_gap is not None:
                    self.on_gap(partition, expected, offset)
                todo.extend((partition, o, v) for o, v in missing)
            todo.append((partition, offset, value))
            next_of[partition] = offset + 1
        return todo

    async def _maybe_reload(self, partition: int) -> None:
        if partition in self._to_reload and self.reload is not None:
            reload = self.reload
            self._step(f"reloading partition {partition} from its changelog")
            keys = await self._retrying(f"reloading partition {partition}", lambda: reload(partition))
            self._to_reload.discard(partition)
            self.stats.reloads += 1
            log.info("%s: partition %d state reloaded from its changelog (%d keys)", self.name, partition, keys)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]],
                        failed: BaseException | None = None) -> Any:
        """``call()`` until it succeeds, backing off on errors of ``retryable`` types (Redis or the
        broker unreachable): a record is never skipped because a dependency was down. ``failed``:
        the error a first try made outside this loop (it counts as the first failure)."""
        delay = 0.25
        began: float | None = None
        try:
            while True:
                try:
                    if failed is not None:
                        first, failed = failed, None
                        raise first
                    result = await call()
                except self.retryable as exc:
                    if began is None:
                        began = self.waiting_since = time.monotonic()
                    self.stats.retries += 1
                    self._metrics.retries.inc()
                    log.warning("%s: %s failed (%s: %s); retrying in %.1f s", self.name, what,
                                type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
                    continue
                if began is not None:
                    self._dependency_back(what, began)
                return result
        finally:
            if began is not None:   # also when another error (or a cancel) ends the wait
                self.waiting_since = None

    def _waiting_s(self) -> float:
        """Seconds the stage has been waiting for an unreachable dependency (0: it is not)."""
        since = self.waiting_since
        return 0.0 if since is None else time.monotonic() - since

    def _dependency_back(self, what: str, began: float) -> None:
        """A wait for an unreachable dependency ended (``handle`` then moves the idle clocks past it)."""
        waited = time.monotonic() - began
        self.waiting_since = None
        self.stats.waited_s += waited
        log.warning("%s: %s succeeded after waiting %.1f s for an unreachable dependency", self.name, what, waited)

    async def _handle_once(self, partition: int, offset: int, value: bytes, view: StateView) -> HandlerResult:
        try:
            return await self.handler(partition, offset, value, view)
        except self.retryable:
            raise
        except Exception as exc:
            if self.on_error is None:
                raise
            # A record the stage cannot process (a bug, or input the core rejects) must not stall
            # the partition: it becomes a bad row that can be replayed after the fix.
            log.exception("%s: record %d:%d failed; writing it as a bad row", self.name, partition, offset)
            return self.on_error(partition, offset, value, exc)

    async def _prefetch(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Let the handler read ahead for the whole group (``handler.prefetch(records)``, optional): one
        round trip for what each record would load by itself. Waits like a record while a dependency
        is away; any other failure only costs the read-ahead (each record then loads its own)."""
        prefetch: Callable[[Sequence[tuple[int, int, bytes]]], Awaitable[None]] | None = getattr(
            self.handler, "prefetch", None)
        if prefetch is None:
            return
        first = records[0]
        try:
            await self._retrying(f"reading ahead for the group from {first[0]}:{first[1]}",
                                 lambda: prefetch(records))
        except Exception:
            log.warning("%s: reading ahead for the group from %d:%d failed; its records load one by one",
                        self.name, first[0], first[1], exc_info=True)

    async def _apply_group(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Handle every record against the overlay, send all outputs, await them, then write the table."""
        started = time.perf_counter()
        self._step(f"reading ahead for {len(records)} records")
        await self._prefetch(records)
        self._step(f"handling {len(records)} records")
        overlay: dict[str, Any] = {}
        view = StateView(self.table, overlay)
        outputs: list[Output] = []
        written: dict[int, dict[str, None]] = {}   # partition -> its keys in the overlay, in order
        last: dict[int, int] = {}
        handled = self._metrics.handled
        for partition, offset, value in records:
            t0 = time.perf_counter()
            try:  # the common case without the retry loop's closure and extra coroutine per record
                result = await self._handle_once(partition, offset, value, view)
            except self.retryable as exc:
                result = await self._retrying(
                    f"record {partition}:{offset}", lambda: self._handle_once(partition, offset, value, view), exc)
            handled.observe(time.perf_counter() - t0)
            outputs.extend(result.outputs)
            if result.states or result.deletes:
                keys = written.setdefault(partition, {})
                for key, state in result.states.items():
                    overlay[key] = {"o": offset, "s": state}
                    keys[key] = None
                for key in result.deletes:
                    overlay[key] = _DELETED   # reads as no state; a tombstone once written
                    keys[key] = None
            last[partition] = offset
        if outputs:
            # every output of the group acknowledged by the broker before any state write
            first = records[0]
            self._step(f"sending {len(outputs)} outputs")
            await self._retrying(f"sending the outputs of the group from {first[0]}:{first[1]}",
                                 lambda: self.send(outputs))
        self._step("writing the group's states")
        table = self.table
        for partition, offset in last.items():
            with self.write_scope(partition):
                for key in written.get(partition, ()):
                    value = overlay[key]
                    if value is _DELETED:
                        if key in table:
                            del table[key]  # Faust writes a tombstone to the changelog
                    else:
                        table[key] = value
                table[self.progress_key(partition)] = offset
        self.stats.records += len(records)
        self.stats.groups += 1
        self._metrics.applied.inc(len(records))
        self._metrics.group_records.observe(len(records))
        self._metrics.group_seconds.observe(time.perf_counter() - started)


def _no_scope(partition: int) -> AbstractContextManager[None]:
    return nullcontext()


class _RunnerMetrics:
    """The runner's Prometheus series (declared in ``pipeline.metrics``), labelled once."""

    __slots__ = ("applied", "replayed", "gaps", "handled", "group_records", "group_seconds", "retries")

    def __init__(self, stage: str) -> None:
        self.retries = STAGE_DEPENDENCY_RETRIES.labels(stage)
        self.applied = STAGE_RECORDS.labels(stage)
        self.replayed = STAGE_REPLAYED.labels(stage)
        self.gaps = STAGE_GAPS.labels(stage)
        self.handled = STAGE_RECORD_SECONDS.labels(stage)
        self.group_records = STAGE_GROUP_RECORDS.labels(stage)
        self.group_seconds = STAGE_GROUP_SECONDS.labels(stage)


def group_by_partition(items: Iterable[tuple[int, Any]]) -> dict[int, list[Any]]:
    """Items grouped by target partition, order kept within each group."""
    groups: dict[int, list[Any]] = {}
    for partition, item in items:
        groups.setdefault(partition, []).append(item)
    return groups
