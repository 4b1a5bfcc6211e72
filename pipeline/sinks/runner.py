"""The ``leadstream sinks`` process: consume qualified-leads, deliver to each site's sinks.

Crash safety (why a lead is delivered once per sink, and never lost):

1. A ``qualified-leads`` record's offset is committed only when every sink the lead
   goes to has *settled* it: delivered (``done`` key written), refused or out of
   attempts (dead-letter record acknowledged by the broker, then ``done``), or
   scheduled for a later attempt (job and due time written to Redis in one
   transaction). A sink whose in-memory queue is full settles by scheduling the lead
   in Redis at once, so a slow or down sink never holds the others' offsets or memory.
2. Before sending, a process takes a short lock on (lead, sink); the ``done`` key is
   checked first. A restart, a rebalance or a replay re-reads uncommitted (or old)
   records and skips every (lead, sink) already done.
3. Scheduled attempts live in Redis and are claimed with a lease; a process killed
   while holding one leaves it to be claimed again when the lease ends.
4. In flight: before each send the process writes ``inflight:<sink>:<lead>`` (Redis
   acknowledges it first); ``done`` deletes it. A receiver may have applied a lead whose
   ``done`` was never written (kill -9 between its answer and our write, a timeout, a lost
   answer). The next attempt then finds the marker: the delivery is *in doubt*, and the
   sink resolves it instead of blindly sending again (:class:`.base.ResolvesInDoubt`):

   - webhook: sent again with the same ``webhook-id``, the Standard Webhooks idempotency
     key receivers de-duplicate on (one more request on the wire, no second effect);
   - HubSpot: reads the company (search by domain) and the contact (by email) and skips
     each write whose record already holds this lead id and version;
   - Slack Web API mode: reads ``conversations.history`` (with message metadata) for a
     message carrying this lead id before posting; the incoming-webhook mode has neither an
     idempotency key nor a read API, so it stays at-least-once: at most one duplicate
     message per crash per sink (its concurrency is 1);
   - JSONL: the file is its own record; email: starting a sequence is idempotent, and a step
     carries a stable Message-ID (see :mod:`.sequences` for the step window).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from ..redis_client import async_client
from ..codec import Codec, CodecError, make_codec
from ..metrics import (SINK_DEAD_LETTERED, SINK_DELIVERED, SINK_DELIVERY_SECONDS, SINK_FAILED, SINK_IN_DOUBT,
                       SINK_QUEUE_DEPTH, SINK_RETRIED, SINK_SCHEDULED, SINK_SKIPPED, SINK_UNDECODABLE)
from ..stopping import exit_after
from ..settings import (HubSpotSinkSettings, JsonlSinkSettings, NurtureSinkSettings, Settings, SinkSettings,
                        SlackSinkSettings, WebhookSinkSettings)
from .base import Delivered, Failed, LinksPort, Outcome, ProfilePort, Sink, lead_json
from .rules import filter_reason, next_due_s
from .state import DEAD, DELIVERED, DeliveryState, Job, now_ms

log = logging.getLogger(__name__)

Settle = Callable[[], None]


def _nothing() -> None:
    return None


class DeadLetterPort(Protocol):
    async def send(self, record: Mapping[str, Any]) -> None: ...


def sink_key(site_id: str, name: str) -> str:
    return f"{site_id}/{name}"


def make_sink(config: SinkSettings, profiles: ProfilePort | None, links: LinksPort | None) -> Sink:
    """The sink a config describes (one place that knows every type)."""
    if isinstance(config, WebhookSinkSettings):
        from .webhook import WebhookSink
        return WebhookSink(config)
    if isinstance(config, SlackSinkSettings):
        from .slack import SlackSink
        return SlackSink(config, profiles, links)
    if isinstance(config, HubSpotSinkSettings):
        from .hubspot import CrmSink
        return CrmSink.hubspot(config, profiles, links)
    if isinstance(config, JsonlSinkSettings):
        from .jsonl import JsonlSink
        return JsonlSink(config)
    if isinstance(config, NurtureSinkSettings):
        raise TypeError("email sinks need their site and the sequence store: build_runtimes makes them")
    raise TypeError(f"unknown sink type {type(config).__name__}")


@dataclass
class SinkRuntime:
    """One configured sink of one site, with its own bounded queue."""
    site_id: str
    config: SinkSettings
    sink: Sink
    queue: asyncio.Queue[tuple[Job, Settle]] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.config.queue_size)
        self.key = sink_key(self.site_id, self.config.name)
        labels = (self.key, self.config.type)
        self.delivered, self.retried = SINK_DELIVERED.labels(*labels), SINK_RETRIED.labels(*labels)
        self.failed, self.dead = SINK_FAILED.labels(*labels), SINK_DEAD_LETTERED.labels(*labels)
        self.latency = SINK_DELIVERY_SECONDS.labels(*labels)
        self.in_doubt = {r: SINK_IN_DOUBT.labels(*labels, r) for r in ("already_applied", "sent")}
        self.depth, self.scheduled = SINK_QUEUE_DEPTH.labels(self.key), SINK_SCHEDULED.labels(self.key)


class PartitionProgress:
    """Offsets of one assigned partition still waiting for their sinks; the position safe to commit."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}
        self.next: int | None = None

    def add(self, offset: int, jobs: int) -> None:
        self.next = offset + 1
        if jobs:
            self.pending[offset] = self.pending.get(offset, 0) + jobs

    def settle(self, offset: int) -> None:
        left = self.pending.get(offset, 0) - 1
        if left > 0:
            self.pending[offset] = left
        else:
            self.pending.pop(offset, None)

    def position(self) -> int | None:
        """The next offset to commit: the oldest unsettled record, else the one after the last read."""
        return min(self.pending) if self.pending else self.next


class Deliveries:
    """Dispatch and delivery, without Kafka: testable with a fake dead-letter port and any Redis."""

    def __init__(self, settings: Settings, state: DeliveryState, sinks: Mapping[str, list[SinkRuntime]],
                 dead_letter: DeadLetterPort, owner: str | None = None) -> None:
        self.settings = settings
        self.state = state
        self.sinks = sinks
        self.dead_letter = dead_letter
        self.owner = owner or uuid.uuid4().hex
        self.lease_ms = int(settings.sinks.lease_s * 1000)
        self.inflight = 0
        self.redis_ok_at = time.monotonic()  # the last time the pollers reached Redis
        self._accounts: dict[tuple[str, str], asyncio.Lock] = {}

    def runtimes(self) -> list[SinkRuntime]:
        return [rt for rts in self.sinks.values() for rt in rts]

    async def dispatch(self, lead: Mapping[str, Any], received: int, settle_one: Settle,
                       progress: PartitionProgress | None = None, offset: int = 0) -> int:
        """Offer ``lead`` to each of its site's sinks; returns the jobs created (each calls ``settle_one``).

        Never blocks on a sink: a full queue schedules the lead in Redis (due now) instead.
        """
        targets = []
        for rt in self.sinks.get(str(lead.get("site_id")), ()):
            reason = filter_reason(lead, rt.config.filter)
            if reason is not None:
                SINK_SKIPPED.labels(rt.key, reason).inc()
                continue
            targets.append(rt)
        if progress is not None:
            progress.add(offset, len(targets))
        for rt in targets:
            job = Job(rt.key, lead, received=received)
            if rt.queue.full():
                await self._overflow(rt, job)
                settle_one()
            else:
                rt.queue.put_nowait((job, settle_one))
                rt.depth.set(rt.queue.qsize())
        return len(targets)

    async def _overflow(self, rt: SinkRuntime, job: Job) -> None:
        """Schedule ``job`` in Redis, due now; waits out a Redis outage (the record stays uncommitted)."""
        while True:
            try:
                await self.state.schedule(job, now_ms(), release_lock=False)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sink %s: cannot schedule lead %s (%s: %s); trying again", rt.key, job.lead_id,
                            type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def run_job(self, rt: SinkRuntime, job: Job) -> None:
        """Deliver once or settle otherwise (see module doc). Raises only when Redis or the broker fails.

        One account's leads go to a sink one at a time, in the order they were queued (the
        order of the account's partition), so a CRM record ends with the newest lead.
        """
        key = (rt.key, str(job.lead.get("account")))
        lock = self._accounts.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                await self._run_job(rt, job)
        finally:
            if not lock.locked() and self._accounts.get(key) is lock:
                del self._accounts[key]

    async def _run_job(self, rt: SinkRuntime, job: Job) -> None:
        status = await self.state.status(rt.key, job.lead_id)
        if status is not None:
            SINK_SKIPPED.labels(rt.key, "already_delivered" if status == DELIVERED else "dead_lettered").inc()
            await self.state.mark(rt.key, job.lead_id, status)  # drops a leftover schedule
            return
        if not await self.state.acquire(rt.key, job.lead_id, self.owner, self.lease_ms):
            await self.state.schedule(job, now_ms() + self.lease_ms, release_lock=False)  # another is sending it
            return
        at = now_ms()
        since = await self.state.begin(rt.key, job.lead_id, at)
        outcome = await self._attempt(rt, job, since)
        if since is not None:
            rt.in_doubt["already_applied" if isinstance(outcome, Delivered) and outcome.already else "sent"].inc()
        while True:  # the attempt is made: only its recording is retried, never the delivery
            try:
                await self._record(rt, job, outcome, at)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sink %s: cannot record the outcome for lead %s (%s: %s); trying again", rt.key,
                            job.lead_id, type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def _record(self, rt: SinkRuntime, job: Job, outcome: Outcome, at: int) -> None:
        """Settle one attempt: delivered, scheduled again, or dead-lettered."""
        if isinstance(outcome, Delivered):
            await self.state.mark(rt.key, job.lead_id, DELIVERED)
            rt.delivered.inc()
            if job.received:
                rt.latency.observe(max(0.0, (now_ms() - job.received) / 1000))
            return
        rt.failed.inc()
        job = job.attempted(at, outcome.error)
        wait = next_due_s(job.attempts, rt.config.retry, outcome.retry_after_s) if outcome.retryable else None
        if wait is not None:
            await self.state.schedule(job, now_ms() + int(wait * 1000))
            rt.retried.inc()
            log.info("sink %s: lead %s attempt %d failed (%s); next in %.1f s", rt.key, job.lead_id, job.attempts,
                     outcome.error, wait)
            return
        await self.dead_letter.send(dead_letter_record(rt, job, outcome, now_ms()))
        await self.state.mark(rt.key, job.lead_id, DEAD)
        rt.dead.inc()
        log.warning("sink %s: lead %s dead-lettered after %d attempt(s): %s", rt.key, job.lead_id, job.attempts,
                    outcome.error)

    async def _attempt(self, rt: SinkRuntime, job: Job, in_doubt_since: int | None = None) -> Outcome:
        """One attempt; ``in_doubt_since`` (an earlier send's start) makes the sink resolve the doubt first."""
        limit = rt.config.timeout_s * 3 + 5  # a sink makes a few requests, each with the timeout
        resolve = getattr(rt.sink, "deliver_in_doubt", None) if in_doubt_since is not None else None
        try:
            if resolve is not None:
                return await asyncio.wait_for(resolve(job.lead, in_doubt_since), limit + rt.config.timeout_s * 2)
            return await asyncio.wait_for(rt.sink.deliver(job.lead), limit)
        except asyncio.TimeoutError:
            return Failed(f"timeout after {limit:g} s")
        except Exception as exc:  # a sink bug must not stop the others; it is retried, then dead-lettered
            log.exception("sink %s raised on lead %s", rt.key, job.lead_id)
            return Failed(f"{type(exc).__name__}: {exc}")

    async def worker(self, rt: SinkRuntime) -> None:
        """Deliver from ``rt``'s queue forever; a Redis or broker outage retries the same job."""
        while True:
            job, settle = await rt.queue.get()
            rt.depth.set(rt.queue.qsize())
            self.inflight += 1
            try:
                while True:
                    try:
                        await self.run_job(rt, job)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("sink %s: cannot settle lead %s (%s: %s); trying again", rt.key, job.lead_id,
                                    type(exc).__name__, exc)
                        await asyncio.sleep(1.0)
                settle()
            finally:
                self.inflight -= 1
                rt.queue.task_done()

    async def poll_scheduled(self, rt: SinkRuntime) -> int:
        """Move due scheduled attempts into the queue, as many as it has room for."""
        room = rt.queue.maxsize - rt.queue.qsize()
        jobs = await self.state.claim(rt.key, room, self.lease_ms)
        for job in jobs:
            if rt.queue.full():  # new leads took the room meanwhile: due again now, not after the lease
                await self.state.schedule(job, now_ms(), release_lock=False)
            else:
                rt.queue.put_nowait((job, _nothing))
        rt.depth.set(rt.queue.qsize())
        rt.scheduled.set(await self.state.scheduled(rt.key))
        self.redis_ok_at = time.monotonic()
        return len(jobs)

    async def poller(self, rt: SinkRuntime) -> None:
        while True:
            try:
                await self.poll_scheduled(rt)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sink %s: cannot read scheduled attempts: %s", rt.key, exc)
            await asyncio.sleep(self.settings.sinks.retry_poll_s)

    def idle(self) -> bool:
        return self.inflight == 0 and all(rt.queue.empty() for rt in self.runtimes())


def dead_letter_record(rt: SinkRuntime, job: Job, outcome: Failed, at: int) -> dict[str, Any]:
    """The ``SinkDeadLetter`` record of a job that will not be attempted again."""
    return {"lead_id": job.lead_id, "site_id": rt.site_id, "sink": rt.config.name, "sink_type": rt.config.type,
            "attempts": job.attempts, "first_attempt": job.first_attempt or at, "last_attempt": at,
            "error": outcome.error[:2000], "status_code": outcome.status_code, "permanent": not outcome.retryable,
            "lead": lead_json(job.lead)}


def build_runtimes(settings: Settings, profiles: ProfilePort | None, links: LinksPort | None,
                   sequences: Any = None) -> dict[str, list[SinkRuntime]]:
    """Every enabled sink of every site (email sinks need ``sequences``, a :class:`.sequences.SequenceStore`)."""
    nurture: dict[tuple[str, str], Sink] = {}
    if sequences is not None:
        from .nurture import make_nurture_sinks
        nurture.update(make_nurture_sinks(settings, sequences, profiles))

    def sink_of(site_id: str, cfg: SinkSettings) -> Sink:
        if isinstance(cfg, NurtureSinkSettings):
            return nurture[(site_id, cfg.name)]
        return make_sink(cfg, profiles, links)

    return {site.site_id: [SinkRuntime(site.site_id, cfg, sink_of(site.site_id, cfg))
                           for cfg in site.sinks if cfg.enabled]
            for site in settings.sites if any(cfg.enabled for cfg in site.sinks)}


def has_email_sinks(settings: Settings) -> bool:
    return any(isinstance(cfg, NurtureSinkSettings) and cfg.enabled for site in settings.sites for cfg in site.sinks)


class KafkaDeadLetter:
    """Writes SinkDeadLetter records and waits for the broker's acknowledgement."""

    def __init__(self, producer: Any, codec: Codec, topic: str) -> None:
        self.producer, self.codec, self.topic = producer, codec, topic

    async def send(self, record: Mapping[str, Any]) -> None:
        value = self.codec.encode("SinkDeadLetter", record, self.topic)
        await self.producer.send_and_wait(self.topic, value, key=str(record["lead_id"]).encode())


def producer_options(settings: Settings) -> dict[str, Any]:
    idempotence = settings.kafka.idempotence if settings.kafka.idempotence is not None else True
    return {**settings.kafka.client_options(), "acks": "all", "enable_idempotence": idempotence}


class SinksProcess:
    """Kafka consumer + Deliveries + /metrics and /health; :meth:`run` until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = make_codec(settings.kafka.schema_registry_url)
        self.topic = settings.topics.qualified_leads
        self.progress: dict[Any, PartitionProgress] = {}
        self.committed: dict[Any, int] = {}
        self.stopping = asyncio.Event()
        #: a stop that takes longer ends the process (see pipeline.stopping; the idle wait is 15 s)
        self.shutdown_timeout_s = 40.0
        self.ready = False
        self.consumer: Any = None
        self.deliveries: Deliveries | None = None

    async def _commit(self, partitions: Any = None) -> None:
        from aiokafka.structs import OffsetAndMetadata
        offsets = {}
        for tp, progress in list(self.progress.items()):
            if partitions is not None and tp not in partitions:
                continue
            pos = progress.position()
            if pos is not None and pos != self.committed.get(tp):
                offsets[tp] = OffsetAndMetadata(pos, "")
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self.committed.update({tp: om.offset for tp, om in offsets.items()})
        except Exception as exc:  # a rebalance in progress: the next owner re-reads, done keys skip
            log.warning("offset commit failed (%s); records since the last commit will be re-read", exc)

    async def _committer(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sinks.commit_interval_s)
            await self._commit()

    def _listener(self) -> Any:
        from aiokafka import ConsumerRebalanceListener
        process = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await process._commit(set(revoked))
                for tp in revoked:
                    process.progress.pop(tp, None)
                    process.committed.pop(tp, None)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                for tp in assigned:
                    process.progress[tp] = PartitionProgress()

        return Listener()

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from .server import serve_http
        from .state import PersonProfiles

        s = self.settings
        if not s.redis.url_value:
            raise RuntimeError("redis.url is not set: the sinks keep their delivery state in Redis")
        state = DeliveryState.from_url(s.redis.url_value, s.sinks.namespace, s.sinks.state_ttl_days * 86400)
        profiles = PersonProfiles(async_client(s.redis.url_value))  # type: ignore[arg-type]
        sequences = None
        if has_email_sinks(s):
            from .sequences import SequenceStore
            sequences = SequenceStore.from_url(s.redis.url_value, s.sinks.namespace, s.sinks.state_ttl_days * 86400)
        runtimes = build_runtimes(s, profiles, state, sequences)
        producer = AIOKafkaProducer(**producer_options(s))
        self.consumer = AIOKafkaConsumer(**s.kafka.client_options(), group_id=s.sinks.group_id,
                                         enable_auto_commit=False, auto_offset_reset="earliest",
                                         max_poll_records=500, session_timeout_ms=int(s.stages.session_timeout_s * 1000),
                                         heartbeat_interval_ms=int(s.stages.heartbeat_interval_s * 1000))
        self.consumer.subscribe([self.topic], listener=self._listener())
        await producer.start()
        await self.consumer.start()
        self.deliveries = d = Deliveries(s, state, runtimes, KafkaDeadLetter(producer, self.codec,
                                                                               s.topics.sink_dead_letter))
        tasks = [asyncio.create_task(d.worker(rt)) for rt in d.runtimes() for _ in range(rt.config.concurrency)]
        tasks += [asyncio.create_task(d.poller(rt)) for rt in d.runtimes()]
        tasks.append(asyncio.create_task(self._committer()))
        routes: list[Any] = []
        stop_smtp = None
        desk = None
        if sequences is not None:
            from .inbound import email_routes, serve_smtp
            from .nurture import NurtureSink, ReplyDesk
            nurture = {rt.key: rt.sink for rt in d.runtimes() if isinstance(rt.sink, NurtureSink)}
            tasks += [asyncio.create_task(sink.run_background()) for sink in nurture.values()]
            desk = ReplyDesk(s, sequences, nurture, profiles)
            routes = email_routes(s, sequences, desk)
            if s.sinks.email.inbound_port:
                stop_smtp = await serve_smtp(desk, s.sinks.email.inbound_host, s.sinks.email.inbound_port,
                                             s.sinks.email.max_message_bytes)
                log.info("sinks: inbound SMTP listener on %s:%d", s.sinks.email.inbound_host,
                         s.sinks.email.inbound_port)
        http = await serve_http(s.sinks.host, s.sinks.port, self.health, routes,
                                max(1024 ** 2, s.sinks.email.max_message_bytes if routes else 0)) \
            if s.sinks.port else None
        loop = asyncio.get_running_loop()
        def stop() -> None:
            if not self.stopping.is_set():
                self.stopping.set()
                exit_after(self.shutdown_timeout_s, "sinks", loop)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        log.info("sinks: %d sink(s) on %d site(s), consuming %s as %s", len(d.runtimes()), len(runtimes),
                 self.topic, s.sinks.group_id)
        self.ready = True
        try:
            while not self.stopping.is_set():
                batches = await self.consumer.getmany(timeout_ms=500, max_records=500)
                for tp, records in batches.items():
                    progress = self.progress.setdefault(tp, PartitionProgress())
                    for record in records:
                        await self._dispatch(d, progress, record)
        finally:
            self.ready = False
            deadline = time.monotonic() + 15
            while not d.idle() and time.monotonic() < deadline:  # finish what is in memory
                await asyncio.sleep(0.1)
            await self._commit()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if http is not None:
                await http()
            if stop_smtp is not None:
                await stop_smtp()
            if desk is not None:
                await desk.aclose()
            if sequences is not None:
                await sequences.aclose()
            await self.consumer.stop()
            await producer.stop()
            for rt in d.runtimes():
                await rt.sink.aclose()
            await state.aclose()
            await profiles.client.aclose()

    async def _dispatch(self, d: Deliveries, progress: PartitionProgress, record: Any) -> None:
        try:
            lead = self.codec.decode(record.value, "QualifiedLead")
        except CodecError as exc:
            SINK_UNDECODABLE.inc()
            log.warning("qualified-leads %d@%d: not a QualifiedLead (%s); skipped", record.partition,
                        record.offset, exc)
            progress.add(record.offset, 0)
            return
        offset = record.offset
        await d.dispatch(lead, int(record.timestamp or now_ms()), lambda: progress.settle(offset), progress, offset)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while consuming and Redis answered the pollers recently (503 otherwise)."""
        d = self.deliveries
        detail: dict[str, Any] = {"consuming": self.ready, "topic": self.topic, "group": self.settings.sinks.group_id}
        ok = self.ready
        if d is not None:
            silent = time.monotonic() - d.redis_ok_at
            detail["redis_ok"] = silent < 10 * self.settings.sinks.retry_poll_s + 5
            ok = ok and detail["redis_ok"]
            detail["sinks"] = {rt.key: {"type": rt.config.type, "queue": rt.queue.qsize()} for rt in d.runtimes()}
            detail["partitions"] = {f"{tp.topic}:{tp.partition}": {"pending": len(p.pending), "position": p.position()}
                                    for tp, p in self.progress.items()}
        return ok, detail


def run(settings: Settings) -> None:
    """Run the sinks process until SIGTERM/SIGINT (blocks)."""
    from .. import metrics
    metrics.serve_only("sinks")
    asyncio.run(SinksProcess(settings).run())

