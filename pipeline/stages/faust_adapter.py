"""Every place Leadstream reaches into Faust or aiokafka beyond their public API, in one module.

faust-streaming 0.15.3 needs workarounds (REFERENCE.md, DESIGN.md "Crash
safety"); each one lives here, named and tested (tests/unit/stages/
test_faust_adapter.py, and on the real broker in
tests/integration/test_stage_runtime.py), so a Faust upgrade has one file
to check:

* :func:`commit_groups` -- records in groups whose offsets Faust acks (and so
  may commit) only after the group is applied: ``Stream.take_events`` with
  its manual acks. Its :class:`EventScope` puts back, while a partition's
  table writes run, the stream event Faust reads the changelog partition
  from (the private context variable ``faust.streams._current_event``).
* :func:`replace_partition_state` -- the changelog reload of a partition that
  came back stale: writes the table's store directly, including the memory
  store's private ``_key_partition`` index.
* :func:`consumer_paused_or_rebalancing`, :func:`consumer_state` and
  :func:`unstick` -- the stall watchdog's view of the consumer (private
  sets of active/paused/buffered partitions, the read offset, the aiokafka
  consumer inside Faust's consumer thread and its subscription state) and the
  repair (clear the buffered mark, resume, seek).
* :func:`stalled_recovery` -- changelog partitions Faust's table recovery
  waits for and receives nothing from (its private ``_recovery_started_at``
  and ``_active_events_received_at``): the same drop of fetched records, during
  a rebalance that hands a partition back, leaves recovery, and with it the
  whole worker, waiting forever. The repair is :func:`unstick` at the offset
  recovery needs next.
* :func:`faust_sender` -- outputs through the app's producer, every
  acknowledgement awaited.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

from aiokafka import TopicPartition
from faust.streams import _current_event
from faust.types import TP

from .runtime import Output, OutputSender

Record = tuple[int, int, bytes]   # (partition, offset, value)


class EventScope:
    """The changelog partition of a table write, for writes made after the stream moved on.

    A Faust table sends each write's changelog record to the partition of the *current
    event*, a context variable the stream iteration sets for the agent's task; outside it
    the write raises. A group's states are written after the whole group was taken, so the
    runner wraps each partition's writes in :meth:`of`, which sets the latest event taken
    from that partition as current.
    """

    def __init__(self) -> None:
        self._latest: dict[int, Any] = {}

    def remember(self, events: Sequence[Any]) -> None:
        for event in events:
            self._latest[event.message.partition] = event

    @contextmanager
    def of(self, partition: int) -> Iterator[None]:
        event = self._latest.get(partition)
        token = _current_event.set(None if event is None else weakref.ref(event))
        try:
            yield
        finally:
            _current_event.reset(token)


async def commit_groups(stream: Any, max_records: int, within_s: float,
                        scope: EventScope | None = None) -> AsyncIterator[list[Record]]:
    """The stream's records in groups of at most ``max_records``, a group closing after ``within_s``.

    ``Stream.take_events`` disables the stream's automatic acks and acks a group's events
    when the consumer asks for the next group, i.e. after the caller applied it: Faust
    commits an offset only once it is acked, so never past a record whose state is not in
    the table. Records Faust drops (an old generation, flow control off) never reach a group
    and are acked by Faust itself; the runner's gap repair re-reads them when needed.
    """
    async for events in stream.take_events(max_records, within=within_s):
        if scope is not None:
            scope.remember(events)
        yield [(e.message.partition, e.message.offset, e.message.value if e.message.value is not None else b"")
               for e in events]


def replace_partition_state(table: Any, partition: int, values: Mapping[bytes, bytes | None]) -> int:
    """Replace ``table``'s keys of ``partition`` with ``values`` (raw changelog key -> value, None deletes).

    Writes the store under the table (``table.data``) so nothing goes back to the changelog, and
    keeps the memory store's key -> partition index (``_key_partition``, private) in step: Faust
    uses it to drop a revoked partition's keys, and a reloaded key missing from it would stay.
    """
    store = table.data
    index = getattr(store, "_key_partition", None)
    if index is not None:
        for key in [k for k, p in index.items() if p == partition]:
            store.pop(key, None)
            index.pop(key, None)
    for raw_key, raw_value in values.items():
        key = json.loads(raw_key)
        if raw_value is None:
            store.pop(key, None)
            continue
        store[key] = json.loads(raw_value)
        if index is not None:
            index[key] = partition
    return len(values)


def consumer_paused_or_rebalancing(app: Any) -> bool:
    """The app is rebalancing or its flow is off: partitions are legitimately quiet."""
    return bool(app.rebalancing or not app.consumer.flow_active)


def _aiokafka(app: Any) -> Any:
    """The aiokafka consumer inside Faust's consumer thread (private), or None."""
    thread = getattr(app.consumer, "_thread", None)
    return getattr(thread, "_consumer", None)


def consumer_state(app: Any, topic: str, partition: int) -> dict[str, Any]:
    """What Faust's consumer (and the aiokafka consumer under it) says about one partition."""
    consumer = app.consumer
    tp = TP(topic, partition)
    state: dict[str, Any] = {
        "assigned": tp in consumer.assignment(),
        "active": tp in (getattr(consumer, "_active_partitions", None) or ()),
        "paused": tp in getattr(consumer, "_paused_partitions", ()),
        "buffered": tp in getattr(consumer, "_buffered_partitions", ()),
        "flow_active": consumer.flow_active,
        "read_offset": getattr(consumer, "_read_offset", {}).get(tp),
    }
    inner = _aiokafka(app)
    if inner is not None:
        state["aiokafka_paused"] = tp in inner.paused()
        try:
            state["aiokafka_position"] = inner._subscription.subscription.assignment.state_value(tp).position
        except Exception:  # internal layout of aiokafka: diagnostics only
            pass
    return state


async def unstick(app: Any, topic: str, partition: int, offset: int) -> None:
    """Make Faust fetch ``partition`` again from ``offset``: clear the buffered mark, resume, seek."""
    consumer = app.consumer
    tp = TP(topic, partition)
    getattr(consumer, "_buffered_partitions", set()).discard(tp)
    consumer.resume_partitions([tp])
    inner = _aiokafka(app)
    if inner is not None and tp in inner.paused():
        inner.resume(TopicPartition(topic, partition))
    await consumer.seek(tp, offset)


def stalled_recovery(app: Any, topic: str, now: float, stall_after_s: float) -> dict[int, int]:
    """Partitions of the changelog ``topic`` an active table recovery still needs records of and has
    received none from for ``stall_after_s`` (since recovery began, or since their last record):
    partition -> the offset recovery needs next. Empty while no recovery runs. ``now``:
    ``time.monotonic()``, Faust's clock for these times."""
    recovery = app.tables.recovery
    started = getattr(recovery, "_recovery_started_at", None)
    if not recovery.in_recovery or started is None:
        return {}
    received = getattr(recovery, "_active_events_received_at", {})
    out: dict[int, int] = {}
    for tp, remaining in recovery.active_remaining().items():
        if tp.topic != topic or remaining <= 0:
            continue
        if now - received.get(tp, started) >= stall_after_s:
            out[tp.partition] = max(0, int(recovery.active_offsets[tp]) + 1)   # -1: nothing read yet
    return out


def faust_sender(app: Any) -> OutputSender:
    """Sends outputs through the Faust app's producer and waits for every acknowledgement."""

    async def send(outputs: Sequence[Output]) -> None:
        producer = app.producer
        futures = [await producer.send(o.topic, o.key, o.value, o.partition, None, list(o.headers) or None)
                   for o in outputs]
        await asyncio.gather(*futures)

    return send
