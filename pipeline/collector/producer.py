"""The collector's batching producer: accepted payloads to ``pixel-events``, bad rows to ``bad-events``.

Records carry batches (DESIGN.md): pending payloads are grouped by their target partition
(:func:`~pipeline.topology.partition_for` of the site+visitor key, the same
murmur2 the stages' tables use) and each group is written as ONE
``CollectorBatch`` record, explicitly to that partition. Each payload is
encoded once, when it is submitted (a compiled writer, see avro_writer), and a
record's value is the concatenation of its payloads' encodings. A
record's key is the shared visitor key when every payload in it has the same
key, else None. Records are split so none exceeds ``max_record_bytes``.
A partition's group is sent at the end of the loop iteration when the
partition has nothing in flight, else when its record in flight is
acknowledged, and at the latest ``collector.linger_ms`` after it was queued
(Nagle's algorithm: one round trip when quiet, large records under load; see
:meth:`BatchingProducer._flush_idle`).

Delivery: an aiokafka producer with ``acks=all`` and, unless the settings turn
it off (the embedded Tansu broker), idempotence. A request's future resolves
only when the broker acknowledged the record carrying it; it fails with
:class:`BrokerUnavailable` on a send error or after ``ack_timeout_s``.

Broker health is a state, not a per-request discovery: a background monitor
probes the cluster metadata while the broker is up and, once it is down, tries
to connect a NEW producer every ``probe_interval_s`` (a fresh producer id and
sequence numbers: the old one may hold expired batches that would otherwise
break idempotent sequencing). While down, :meth:`BatchingProducer.submit`
fails at once, so the HTTP layer answers 503 without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import fastavro
import fastavro.schema
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from .. import metrics
from ..codec import Codec, SchemaCatalogue, make_codec
from ..settings import Settings
from ..topology import partition_for
from .avro_writer import UnsupportedSchema, compile_writer, write_long

log = logging.getLogger(__name__)

Record = dict[str, Any]


class BrokerUnavailable(Exception):
    """The broker did not (or cannot now) acknowledge the payload: answer 503 with Retry-After."""


class RecordTooLarge(Exception):
    """A single event does not fit in ``max_record_bytes``: a size violation, not a broker problem."""


class PayloadSink(Protocol):
    """What the HTTP layer needs from the producer (the unit tests implement it in memory)."""

    @property
    def broker_up(self) -> bool:
        """False while the broker is known to be unreachable: requests get 503 at once."""

    def submit(self, payload: Record, key: str, want_ack: bool = True) -> asyncio.Future[None] | None:
        """Queue one ``CollectorPayload`` under the partition key ``key``; never blocks.

        Returns a future that resolves when the broker acknowledged the record
        carrying the payload (or fails with BrokerUnavailable), or None when
        ``want_ack`` is False. Raises at once: BrokerUnavailable while the
        broker is known to be down, RecordTooLarge for an event that cannot
        fit a record, ValueError for a payload that does not fit the schema.
        """

    def send_bad_row(self, row: Record) -> None:
        """Write a ``BadRow`` to bad-events, fire and forget (failures are logged); never blocks."""

    async def start(self) -> None:
        """Connect (or begin retrying in the background); returns even if the broker is down."""

    async def stop(self) -> None:
        """Flush what is queued (bounded by ack_timeout_s) and disconnect."""


@dataclass(slots=True)
class _Item:
    payload: Record
    key: str
    future: asyncio.Future[None] | None
    data: bytes = b""  # the payload's Avro binary encoding (an element of CollectorBatch.payloads)


@dataclass(slots=True)
class PlannedRecord:
    """One ``pixel-events`` record about to be sent: its partition, key, encoded value and payloads."""
    partition: int
    key: bytes | None
    value: bytes
    items: list[_Item] = field(default_factory=list)


#: Bytes an encoded CollectorBatch adds around its payloads: the array's block count (a varint,
#: at most 10 bytes) and its terminating zero.
BATCH_OVERHEAD = 11


def plan_records(partition: int, items: list[_Item], header: bytes, max_bytes: int) -> list[PlannedRecord]:
    """Pack one partition's encoded items, in arrival order, into records of at most ``max_bytes``.

    A record's value is ``header`` + the Avro array of the items' encodings:
    built by concatenation, no re-encoding. Every item must fit alone (the
    producer checks that when the payload is submitted).
    """
    records: list[PlannedRecord] = []
    budget = max_bytes - len(header) - BATCH_OVERHEAD
    group: list[_Item] = []
    size = 0
    for item in items:
        if group and size + len(item.data) > budget:
            records.append(_record(partition, group, header))
            group, size = [], 0
        group.append(item)
        size += len(item.data)
    if group:
        records.append(_record(partition, group, header))
    return records


def _record(partition: int, group: list[_Item], header: bytes) -> PlannedRecord:
    out = bytearray(header)
    write_long(len(group), out)
    for item in group:
        out += item.data
    out.append(0)
    first = group[0].key
    shared = all(item.key == first for item in group)
    return PlannedRecord(partition, first.encode("utf-8") if shared else None, bytes(out), group)


def _join_futures(parent: asyncio.Future[None] | None, count: int,
                  loop: asyncio.AbstractEventLoop) -> list[asyncio.Future[None] | None]:
    """``count`` child futures whose joint success resolves ``parent`` (the first failure fails it)."""
    if parent is None:
        return [None] * count
    remaining = [count]

    def child_done(child: asyncio.Future[None]) -> None:
        if child.cancelled():
            exc: BaseException | None = BrokerUnavailable("cancelled")
        else:
            exc = child.exception()
        if parent.done():
            return
        if exc is not None:
            parent.set_exception(exc)
            return
        remaining[0] -= 1
        if remaining[0] == 0:
            parent.set_result(None)

    children: list[asyncio.Future[None] | None] = []
    for _ in range(count):
        child: asyncio.Future[None] = loop.create_future()
        child.add_done_callback(child_done)
        children.append(child)
    return children


def _fail(item: _Item, exc: BaseException) -> None:
    if item.future is not None and not item.future.done():
        item.future.set_exception(exc)


def payload_encoder(codec: Codec) -> Callable[[Record], bytes]:
    """Avro binary of one ``CollectorPayload``: the compiled writer, else fastavro (same bytes)."""
    catalogue = getattr(codec, "catalogue", None) or SchemaCatalogue()
    parsed = catalogue.current["CollectorPayload"].parsed
    expanded = fastavro.schema.expand_schema(parsed)
    try:
        if not isinstance(expanded, dict):
            raise UnsupportedSchema("CollectorPayload is not a record schema")
        write = compile_writer(expanded)
    except UnsupportedSchema as exc:
        log.warning("CollectorPayload is encoded with fastavro's generic writer (slower): %s", exc)

        def encode_generic(payload: Record) -> bytes:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, payload)
            return buf.getvalue()

        return encode_generic

    def encode(payload: Record) -> bytes:
        out = bytearray()
        try:
            write(payload, out)
        except (KeyError, TypeError, AttributeError, UnicodeError, OverflowError) as exc:
            raise ValueError(f"payload does not fit the CollectorPayload schema: {exc!r}") from exc
        return bytes(out)

    return encode


class BatchingProducer:
    """The real :class:`PayloadSink`: linger-batched ``CollectorBatch`` records on an aiokafka producer.

    One instance per collector process, used from the event loop only (not thread-safe).
    ``producer_options`` overrides aiokafka options (tests use it for short timeouts).
    """

    def __init__(self, settings: Settings, codec: Codec | None = None, *, probe_interval_s: float = 1.0,
                 connect_timeout_s: float = 5.0, producer_options: dict[str, Any] | None = None) -> None:
        self._settings = settings
        self._cfg = settings.collector
        self._codec = codec or make_codec(settings.kafka.schema_registry_url)
        self._topic = settings.topics.pixel_events
        self._bad_topic = settings.topics.bad_events
        self._linger_s = self._cfg.linger_ms / 1000.0
        self._probe_interval_s = probe_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._producer_options = producer_options or {}
        self._producer: AIOKafkaProducer | None = None
        self._partitions = 0
        self._up = False
        self._closing = False
        self._groups: dict[int, list[_Item]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None  # the linger bound
        self._flush_soon: asyncio.Handle | None = None  # the end-of-iteration flush of idle partitions
        self._inflight_records: dict[int, PlannedRecord] = {}
        self._busy: dict[int, int] = {}  # partition -> records sent and not yet settled
        self._next_record_id = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._site_events: dict[str, Any] = {}
        self._record_payloads = metrics.COLLECTOR_RECORD_PAYLOADS
        self._down_reason = "not started"
        self._encode_payload = payload_encoder(self._codec)
        self._batch_header = b""  # the codec's framing of a CollectorBatch value, read at start
        self._payload_budget = self._cfg.max_record_bytes - BATCH_OVERHEAD - 64

    # ---- state -------------------------------------------------------------------------

    @property
    def broker_up(self) -> bool:
        return self._up

    @property
    def down_reason(self) -> str:
        """Why the broker is considered down (empty while up)."""
        return "" if self._up else self._down_reason

    @property
    def partitions(self) -> int:
        """Partition count of pixel-events, read from the broker's metadata (0 until connected)."""
        return self._partitions

    def _idempotence(self) -> bool:
        idem = self._settings.kafka.idempotence
        return True if idem is None else idem

    def _make_producer(self) -> AIOKafkaProducer:
        options: dict[str, Any] = dict(self._settings.kafka.client_options())
        options.update(
            acks="all",
            enable_idempotence=self._idempotence(),
            linger_ms=0,  # batching happens here, per partition, before encoding
            max_request_size=self._settings.kafka.max_message_bytes,  # settings: max_record_bytes fits below it
            max_batch_size=max(16_384, min(self._cfg.max_record_bytes, self._settings.kafka.max_message_bytes)),
            request_timeout_ms=max(1_000, int(self._cfg.ack_timeout_s * 1000)),
            retry_backoff_ms=100,
            metadata_max_age_ms=60_000,
        )
        options.update(self._producer_options)
        return AIOKafkaProducer(**options)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = False
        # The framing of a CollectorBatch value (single-object header, or Confluent's with the schema
        # id, which may ask the registry once): an empty batch is the header and one zero byte.
        empty = await asyncio.to_thread(self._codec.encode, "CollectorBatch", {"payloads": []}, self._topic)
        self._batch_header = empty[:-1]
        self._payload_budget = self._cfg.max_record_bytes - len(self._batch_header) - BATCH_OVERHEAD
        try:
            await self._connect()
        except Exception as exc:
            self._down_reason = f"cannot connect: {exc!r}"
            log.warning("broker unavailable at start (%s); answering 503 and retrying every %.1fs",
                        self._down_reason, self._probe_interval_s)
        metrics.COLLECTOR_BROKER_UP.set(1 if self._up else 0)
        self._monitor = asyncio.create_task(self._watch(), name="collector-broker-monitor")

    async def stop(self) -> None:
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._monitor
        self._flush()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._cfg.ack_timeout_s)
        # what is still unacknowledged gets its ack (or not) within ack_timeout_s
        deadline = time.monotonic() + self._cfg.ack_timeout_s
        while self._inflight_records and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for record in list(self._inflight_records.values()):
            for item in record.items:
                _fail(item, BrokerUnavailable("collector stopping"))
        self._inflight_records.clear()
        self._busy.clear()
        producer, self._producer = self._producer, None
        self._up = False
        self._down_reason = "stopped"
        if producer is not None:
            await self._discard(producer, graceful=True)

    async def _connect(self) -> None:
        """Start a new aiokafka producer and read the partition counts; on success it becomes current."""
        producer = self._make_producer()
        try:
            await asyncio.wait_for(producer.start(), self._connect_timeout_s)
            partitions = await asyncio.wait_for(producer.partitions_for(self._topic), self._connect_timeout_s)
            bad_partitions = await asyncio.wait_for(producer.partitions_for(self._bad_topic),
                                                    self._connect_timeout_s)
            if not partitions or not bad_partitions:
                raise BrokerUnavailable(
                    f"topic {self._topic if not partitions else self._bad_topic} has no partitions; "
                    "create the topics with `leadstream topics create`")
        except BaseException:
            await self._discard(producer, graceful=False)
            raise
        old, self._producer = self._producer, producer
        if self._partitions and self._partitions != len(partitions):
            log.warning("%s now has %d partitions (was %d)", self._topic, len(partitions), self._partitions)
        self._partitions = len(partitions)
        self._up = True
        self._down_reason = ""
        metrics.COLLECTOR_BROKER_UP.set(1)
        log.info("connected to Kafka: %s has %d partitions (idempotence %s)", self._topic, self._partitions,
                 "on" if self._idempotence() else "off")
        if old is not None:
            self._spawn(self._discard(old, graceful=False))

    async def _discard(self, producer: AIOKafkaProducer, graceful: bool) -> None:
        """Stop a producer, bounded in time: a producer facing a dead broker would wait for its batches."""
        timeout = self._cfg.ack_timeout_s if graceful else 0.2
        try:
            await asyncio.wait_for(producer.stop(), timeout)
        except BaseException as exc:  # noqa: BLE001 - a stuck or broken producer is torn down below
            if isinstance(exc, asyncio.CancelledError) and not self._closing:
                raise
            sender = getattr(producer, "_sender", None)
            task = getattr(sender, "sender_task", None)
            if task is not None and not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(producer.client.close(), 1.0)

    def _mark_down(self, reason: str) -> None:
        """Enter the down state: fail everything queued or in flight, let the monitor reconnect."""
        if not self._up:
            return
        self._up = False
        self._down_reason = reason
        metrics.COLLECTOR_BROKER_UP.set(0)
        log.warning("broker unavailable: %s; answering 503 until it is back", reason)
        exc = BrokerUnavailable(reason)
        self._cancel_flushes()
        groups, self._groups = self._groups, {}
        for items in groups.values():
            for item in items:
                _fail(item, exc)
        records, self._inflight_records = self._inflight_records, {}
        self._busy.clear()
        for record in records.values():
            for item in record.items:
                _fail(item, exc)
        metrics.COLLECTOR_PENDING.set(0)
        # The old producer goes: its idempotent sequence may now have gaps, and a producer left
        # retrying against a dead broker only floods the log. The monitor connects a new one.
        producer, self._producer = self._producer, None
        if producer is not None:
            self._spawn(self._discard(producer, graceful=False))

    async def _watch(self) -> None:
        """Background: probe while up, reconnect (with a new producer) while down."""
        while not self._closing:
            try:
                if self._up:
                    await asyncio.sleep(self._probe_interval_s)
                    producer = self._producer
                    if producer is None or not self._up:
                        continue
                    try:
                        await asyncio.wait_for(producer.client.fetch_all_metadata(),
                                               max(1.0, self._probe_interval_s * 2))
                    except Exception as exc:
                        if producer is self._producer:
                            self._mark_down(f"metadata probe failed: {exc!r}")
                else:
                    if not await self._any_bootstrap_reachable():
                        self._down_reason = "no bootstrap server accepts connections"
                        await asyncio.sleep(self._probe_interval_s)
                        continue
                    try:
                        await self._connect()
                        log.info("broker is back; accepting requests again")
                    except Exception as exc:
                        self._down_reason = f"reconnect failed: {exc!r}"
                        log.debug("reconnect failed: %r", exc)
                        await asyncio.sleep(self._probe_interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the monitor for good
                log.exception("broker monitor error")
                await asyncio.sleep(self._probe_interval_s)

    async def _any_bootstrap_reachable(self) -> bool:
        """A TCP connect to a bootstrap server: cheap, and spares the logs a full client's connect errors."""
        servers = self._settings.kafka.bootstrap_servers or ""
        for server in servers.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                return True  # not host:port: let the Kafka client judge it
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 1.0)
            except (OSError, asyncio.TimeoutError):
                continue
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return True
        return False

    # ---- pixel-events --------------------------------------------------------------------

    def submit(self, payload: Record, key: str, want_ack: bool = True) -> asyncio.Future[None] | None:
        if not self._up:
            raise BrokerUnavailable(self._down_reason)
        data = self._encode_payload(payload)  # raises ValueError for a payload that does not fit the schema
        parts = None if len(data) <= self._payload_budget else self._split(payload)  # may raise RecordTooLarge
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[None] | None = loop.create_future() if want_ack else None
        partition = partition_for(key, self._partitions)
        group = self._groups.get(partition)
        if group is None:
            group = self._groups[partition] = []
        if parts is None:
            group.append(_Item(payload, key, future, data))
            metrics.COLLECTOR_PENDING.inc()
        else:
            for (part, part_data), part_future in zip(parts, _join_futures(future, len(parts), loop)):
                group.append(_Item(part, key, part_future, part_data))
            metrics.COLLECTOR_PENDING.inc(len(parts))
        if self._linger_s <= 0:
            self._flush()
        elif partition not in self._busy:
            if self._flush_soon is None:
                self._flush_soon = loop.call_soon(self._flush_idle)
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self._linger_s, self._flush)
        return future

    def _split(self, payload: Record) -> list[tuple[Record, bytes]]:
        """A payload too large for one record, as parts (same payload id) that each fit.

        Raises RecordTooLarge when a single event does not fit (a size violation).
        """
        events = payload["events"]
        if len(events) <= 1:
            raise RecordTooLarge(f"an event of {self._cfg.max_record_bytes} bytes or more does not fit a record")
        half = len(events) // 2
        parts: list[tuple[Record, bytes]] = []
        for part_events in (events[:half], events[half:]):
            part = dict(payload, events=part_events)
            data = self._encode_payload(part)
            parts.extend([(part, data)] if len(data) <= self._payload_budget else self._split(part))
        return parts

    def _cancel_flushes(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None

    def _flush(self) -> None:
        """Send every pending group now (the linger bound ran out, or the producer is stopping)."""
        self._cancel_flushes()
        groups, self._groups = self._groups, {}
        if groups:
            self._send_groups(groups)

    def _flush_idle(self) -> None:
        """Send the pending groups of partitions with nothing in flight; the others wait for their ack.

        Nagle's algorithm per partition: an idle partition's payloads go at the
        end of the loop iteration that queued them (every request parsed in that
        iteration rides along), so a quiet collector answers in one broker round
        trip; a partition with a record in flight gathers until it is
        acknowledged (:meth:`_settle`) or ``linger_ms`` passes, whichever is
        first, so a busy one still writes few, large records.
        """
        self._flush_soon = None
        busy = self._busy
        ready = {p: items for p, items in self._groups.items() if p not in busy}
        if ready:
            for partition in ready:
                del self._groups[partition]
            self._send_groups(ready)
        if not self._groups:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
        elif self._flush_handle is None:
            loop = self._loop or asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self._linger_s, self._flush)

    def _send_groups(self, groups: dict[int, list[_Item]]) -> None:
        """Turn pending groups into records and hand them to one sender task."""
        records: list[PlannedRecord] = []
        for partition, items in groups.items():
            records.extend(plan_records(partition, items, self._batch_header, self._cfg.max_record_bytes))
        producer = self._producer
        if producer is None or not self._up:
            for record in records:
                metrics.COLLECTOR_PENDING.dec(len(record.items))
                for item in record.items:
                    _fail(item, BrokerUnavailable(self._down_reason))
            return
        ids = []
        busy = self._busy
        for record in records:
            record_id = self._next_record_id
            self._next_record_id += 1
            self._inflight_records[record_id] = record
            busy[record.partition] = busy.get(record.partition, 0) + 1
            ids.append(record_id)
        self._spawn(self._send_records(producer, ids))
        loop = self._loop or asyncio.get_running_loop()
        loop.call_later(self._cfg.ack_timeout_s, self._expire, ids)

    async def _send_records(self, producer: AIOKafkaProducer, ids: list[int]) -> None:
        for record_id in ids:
            record = self._inflight_records.get(record_id)
            if record is None:  # already expired or failed
                continue
            try:
                ack = await producer.send(self._topic, record.value, key=record.key, partition=record.partition)
            except MessageSizeTooLargeError as exc:
                self._settle(record_id, RecordTooLarge(str(exc)))
                continue
            except Exception as exc:
                self._settle(record_id, BrokerUnavailable(f"send failed: {exc!r}"))
                if producer is self._producer:
                    self._mark_down(f"send failed: {exc!r}")
                continue
            ack.add_done_callback(partial(self._on_ack, record_id, producer))

    def _on_ack(self, record_id: int, producer: AIOKafkaProducer, ack: asyncio.Future[Any]) -> None:
        if ack.cancelled():
            self._settle(record_id, BrokerUnavailable("send cancelled"))
            return
        exc = ack.exception()
        if exc is None:
            self._settle(record_id, None)
        elif isinstance(exc, MessageSizeTooLargeError):
            self._settle(record_id, RecordTooLarge(str(exc)))
        else:
            self._settle(record_id, BrokerUnavailable(f"not acknowledged: {exc!r}"))
            if producer is self._producer:
                self._mark_down(f"not acknowledged: {exc!r}")

    def _settle(self, record_id: int, exc: BaseException | None) -> None:
        record = self._inflight_records.pop(record_id, None)
        if record is None:
            return
        partition = record.partition
        left = self._busy.get(partition, 0) - 1
        if left > 0:
            self._busy[partition] = left
        else:
            self._busy.pop(partition, None)
            if partition in self._groups and self._flush_soon is None and self._loop is not None:
                self._flush_soon = self._loop.call_soon(self._flush_idle)
        items = record.items
        metrics.COLLECTOR_PENDING.dec(len(items))
        if exc is not None:
            for item in items:
                _fail(item, exc)
            return
        self._record_payloads.observe(len(items))
        for item in items:
            payload = item.payload
            site = payload["site_id"]
            counter = self._site_events.get(site)
            if counter is None:
                counter = self._site_events[site] = metrics.COLLECTOR_EVENTS.labels(site)
            counter.inc(len(payload["events"]))
            future = item.future
            if future is not None and not future.done():
                future.set_result(None)

    def _expire(self, ids: list[int]) -> None:
        """ack_timeout_s passed: whatever of these records is still unacknowledged fails, the broker is down."""
        expired = [record_id for record_id in ids if record_id in self._inflight_records]
        if not expired:
            return
        reason = f"no acknowledgement within {self._cfg.ack_timeout_s:g}s"
        for record_id in expired:
            self._settle(record_id, BrokerUnavailable(reason))
        self._mark_down(reason)

    # ---- bad-events ----------------------------------------------------------------------

    def send_bad_row(self, row: Record) -> None:
        failure_type = str(row.get("failure_type", "unknown"))
        producer = self._producer
        if producer is None or not self._up:
            log.warning("bad row not written, broker unavailable: %s %s", failure_type, row.get("message"))
            return
        try:
            value = self._codec.encode("BadRow", row, self._bad_topic)
        except Exception:  # a bug in the bad row builder: log it, never fail the request
            log.exception("cannot encode bad row %r", {k: v for k, v in row.items() if k != "payload"})
            return
        self._spawn(self._send_bad_row(producer, value, failure_type))

    async def _send_bad_row(self, producer: AIOKafkaProducer, value: bytes, failure_type: str) -> None:
        try:
            ack = await producer.send(self._bad_topic, value)
            await asyncio.wait_for(ack, self._cfg.ack_timeout_s)
        except Exception as exc:
            log.warning("bad row (%s) not written: %r", failure_type, exc)
            return
        metrics.COLLECTOR_BAD_ROWS.labels(failure_type).inc()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

