"""Dispatch and delivery (pipeline.sinks.runner.Deliveries) on the real Redis, with fake sinks: no broker.

The rules that make a (lead, sink) delivery happen once: skip what is done, defer what another
process is sending, schedule failures durably, dead-letter after the last attempt, and never let
one sink's full queue hold up the others.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Mapping

import pytest

from pipeline.codec import schemas_dir
from pipeline.local.redis import RedisServer
from pipeline.settings import JsonlSinkSettings, Settings, SinkRetry
from pipeline.sinks.base import Delivered, Failed, Outcome
from pipeline.sinks.runner import Deliveries, PartitionProgress, SinkRuntime
from pipeline.sinks.state import DEAD, DELIVERED, DeliveryState

pytestmark = pytest.mark.integration

EXAMPLE = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())


def lead() -> dict[str, Any]:
    return {**EXAMPLE, "lead_id": str(uuid.uuid4())}


class FakeSink:
    kind = "fake"

    def __init__(self, outcomes: list[Outcome] | None = None, gate: asyncio.Event | None = None) -> None:
        self.outcomes = outcomes or []
        self.gate = gate
        self.got: list[str] = []
        self.active: dict[str, int] = {}
        self.most_at_once: dict[str, int] = {}

    async def deliver(self, lead: Mapping[str, Any]) -> Outcome:
        account = str(lead["account"])
        self.active[account] = self.active.get(account, 0) + 1
        self.most_at_once[account] = max(self.most_at_once.get(account, 0), self.active[account])
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0.01)
        self.active[account] -= 1
        self.got.append(str(lead["lead_id"]))
        return self.outcomes.pop(0) if self.outcomes else Delivered()

    async def aclose(self) -> None:
        return None


class DeadLetters:
    def __init__(self) -> None:
        self.records: list[Mapping[str, Any]] = []

    async def send(self, record: Mapping[str, Any]) -> None:
        self.records.append(record)


@pytest.fixture
async def state(redis_server: RedisServer) -> AsyncIterator[DeliveryState]:
    s = DeliveryState.from_url(redis_server.url, f"t{uuid.uuid4().hex[:8]}:sinks")
    yield s
    await s.aclose()


def runtime(name: str, sink: FakeSink, queue_size: int = 10, attempts: int = 3) -> SinkRuntime:
    cfg = JsonlSinkSettings(name=name, path="unused", queue_size=queue_size,  # type: ignore[arg-type]
                            retry=SinkRetry(attempts=attempts, initial_backoff_s=0, jitter=0))
    return SinkRuntime("acme", cfg, sink)


def deliveries(state: DeliveryState, *rts: SinkRuntime, owner: str = "me") -> tuple[Deliveries, DeadLetters]:
    dl = DeadLetters()
    settings = Settings(sinks={"lease_s": 0.5})  # type: ignore[arg-type]
    return Deliveries(settings, state, {"acme": list(rts)}, dl, owner), dl


async def drain(d: Deliveries, rt: SinkRuntime, polls: int = 0) -> None:
    for _ in range(polls + 1):
        while not rt.queue.empty():
            job, settle = rt.queue.get_nowait()
            await d.run_job(rt, job)
            settle()
        if polls:
            await d.poll_scheduled(rt)


async def test_a_full_queue_schedules_in_redis_and_never_blocks_the_other_sinks(state: DeliveryState) -> None:
    slow, fast = runtime("slow", FakeSink(), queue_size=2), runtime("fast", FakeSink(), queue_size=100)
    d, _ = deliveries(state, slow, fast)
    progress = PartitionProgress()
    leads = [lead() for _ in range(10)]
    for n, item in enumerate(leads):
        await asyncio.wait_for(d.dispatch(item, 0, lambda n=n: progress.settle(n), progress, n), 1)
    assert slow.queue.qsize() == 2 and fast.queue.qsize() == 10
    assert await state.scheduled(slow.key) == 8           # settled durably: the records may be committed
    assert progress.position() == 0                        # ... but not before the in-memory jobs settle
    await drain(d, fast)
    await drain(d, slow, polls=5)
    assert sorted(slow.sink.got) == sorted(fast.sink.got) == sorted(x["lead_id"] for x in leads)  # type: ignore[attr-defined]
    assert progress.position() == 10 and await state.scheduled(slow.key) == 0


async def test_failures_are_retried_then_dead_lettered_and_never_attempted_again(state: DeliveryState) -> None:
    failing = FakeSink([Failed("HTTP 503: down", True, 503)] * 3)
    rt = runtime("hook", failing, attempts=3)
    d, dl = deliveries(state, rt)
    item = lead()
    await d.dispatch(item, 0, lambda: None)
    await drain(d, rt, polls=4)
    assert failing.got == [item["lead_id"]] * 3
    [record] = dl.records
    assert (record["attempts"], record["status_code"], record["permanent"]) == (3, 503, False)
    assert await state.status(rt.key, item["lead_id"]) == DEAD
    await d.dispatch(item, 0, lambda: None)  # a replay of the topic
    await drain(d, rt)
    assert len(failing.got) == 3 and len(dl.records) == 1


async def test_a_refusal_is_dead_lettered_at_once(state: DeliveryState) -> None:
    rt = runtime("hook", FakeSink([Failed("HTTP 400: bad", False, 400)]))
    d, dl = deliveries(state, rt)
    await d.dispatch(lead(), 0, lambda: None)
    await drain(d, rt)
    assert len(dl.records) == 1 and dl.records[0]["permanent"] and dl.records[0]["attempts"] == 1


async def test_a_delivered_lead_is_not_delivered_again_after_a_replay(state: DeliveryState) -> None:
    sink = FakeSink()
    rt = runtime("hook", sink)
    d, _ = deliveries(state, rt)
    item = lead()
    for _ in range(3):
        await d.dispatch(item, 0, lambda: None)
        await drain(d, rt)
    assert sink.got == [item["lead_id"]] and await state.status(rt.key, item["lead_id"]) == DELIVERED


async def test_a_lead_another_process_is_sending_is_deferred_not_sent(state: DeliveryState) -> None:
    sink = FakeSink()
    rt = runtime("hook", sink)
    d, _ = deliveries(state, rt, owner="me")
    item = lead()
    assert await state.acquire(rt.key, item["lead_id"], "other", 300)
    await d.dispatch(item, 0, lambda: None)
    await drain(d, rt)
    assert sink.got == [] and await state.scheduled(rt.key) == 1
    await state.mark(rt.key, item["lead_id"], DELIVERED)  # the other process finished it
    await asyncio.sleep(0.6)
    await drain(d, rt, polls=2)
    assert sink.got == [] and await state.scheduled(rt.key) == 0


async def test_a_claimed_retry_is_leased_then_claimable_again(state: DeliveryState) -> None:
    rt = runtime("hook", FakeSink([Failed("HTTP 500", True, 500)]))
    d, _ = deliveries(state, rt)
    await d.dispatch(lead(), 0, lambda: None)
    await drain(d, rt)
    assert len(await state.claim(rt.key, 10, 300)) == 1
    assert await state.claim(rt.key, 10, 300) == []       # leased to the first claimer
    await asyncio.sleep(0.35)
    assert len(await state.claim(rt.key, 10, 300)) == 1   # the claimer died: it comes back


async def test_one_accounts_leads_reach_a_sink_one_at_a_time_in_order(state: DeliveryState) -> None:
    gate = asyncio.Event()
    sink = FakeSink(gate=gate)
    rt = runtime("crm", sink)
    d, _ = deliveries(state, rt)
    first, second, other = lead(), lead(), {**lead(), "account": "c:other.example"}
    for item in (first, second, other):
        await d.dispatch(item, 0, lambda: None)
    workers = [asyncio.create_task(d.worker(rt)) for _ in range(3)]
    await asyncio.sleep(0.2)
    gate.set()
    for _ in range(50):
        if len(sink.got) == 3:
            break
        await asyncio.sleep(0.05)
    for w in workers:
        w.cancel()
    assert sink.got.index(first["lead_id"]) < sink.got.index(second["lead_id"])
    assert len(sink.got) == 3
    assert sink.most_at_once == {first["account"]: 1, "c:other.example": 1}


async def test_health_turns_503_when_redis_stops_answering_the_pollers(state: DeliveryState) -> None:
    import time

    from pipeline.sinks.runner import SinksProcess
    rt = runtime("hook", FakeSink())
    d, _ = deliveries(state, rt)
    process = SinksProcess(d.settings)
    process.deliveries, process.ready = d, True
    d.redis_ok_at = time.monotonic() - 60
    ok, detail = process.health()
    assert not ok and detail["redis_ok"] is False
    await d.poll_scheduled(rt)  # Redis answers again
    assert process.health()[0]


async def test_a_redis_failure_after_delivery_retries_the_recording_not_the_delivery(
        state: DeliveryState) -> None:
    sink = FakeSink()
    rt = runtime("hook", sink)
    d, _ = deliveries(state, rt)
    real_mark, failures = state.mark, [1]

    async def flaky_mark(*args: Any) -> None:
        if failures:
            failures.pop()
            raise ConnectionError("redis went away")
        await real_mark(*args)

    state.mark = flaky_mark  # type: ignore[method-assign]
    item = lead()
    await d.dispatch(item, 0, lambda: None)
    worker = asyncio.create_task(d.worker(rt))
    for _ in range(60):
        if await state.status(rt.key, item["lead_id"]) == DELIVERED:
            break
        await asyncio.sleep(0.05)
    worker.cancel()
    assert sink.got == [item["lead_id"]] and await state.status(rt.key, item["lead_id"]) == DELIVERED


class DoubtingSink(FakeSink):
    """A sink that resolves doubt: records each call and what it was told."""

    def __init__(self, applied: set[str]) -> None:
        super().__init__()
        self.applied = applied                      # lead ids the "receiver" already holds
        self.in_doubt: list[tuple[str, int]] = []

    async def deliver_in_doubt(self, lead: Mapping[str, Any], since_ms: int) -> Outcome:
        self.in_doubt.append((str(lead["lead_id"]), since_ms))
        if str(lead["lead_id"]) in self.applied:
            return Delivered("found at the receiver", already=True)
        return await self.deliver(lead)


async def test_an_in_flight_delivery_left_by_a_crash_is_resolved_not_resent(state: DeliveryState) -> None:
    """kill -9 after the receiver applied a lead, before ``done``: the in-flight marker makes the next
    attempt ask the sink to resolve the doubt (read back) instead of sending the lead again."""
    applied, fresh = lead(), lead()
    sink = DoubtingSink({applied["lead_id"]})
    rt = runtime("crm", sink)
    # the killed process: marker written, request sent and applied at the receiver, never recorded
    assert await state.begin(rt.key, applied["lead_id"], 1_000) is None
    assert await state.begin(rt.key, applied["lead_id"], 2_000) == 1_000     # a later start sees the first
    d2, _ = deliveries(state, rt, owner="restarted")
    for item in (applied, fresh):
        await d2.dispatch(item, 0, lambda: None)
    await drain(d2, rt)
    assert sink.in_doubt == [(applied["lead_id"], 1_000)]        # resolved from the first attempt's start
    assert sink.got == [fresh["lead_id"]]                        # only the lead never sent goes out
    assert await state.status(rt.key, applied["lead_id"]) == DELIVERED
    assert await state.client.exists(f"{state.ns}:inflight:{rt.key}:{applied['lead_id']}") == 0
    # settled: a replay skips both without asking the sink anything
    for item in (applied, fresh):
        await d2.dispatch(item, 0, lambda: None)
    await drain(d2, rt)
    assert sink.got == [fresh["lead_id"]] and len(sink.in_doubt) == 1


async def test_a_failed_attempt_leaves_the_next_one_in_doubt(state: DeliveryState) -> None:
    """A timeout may have reached the receiver: the retry resolves first (the marker stays until done)."""
    item = lead()
    sink = DoubtingSink(set())
    sink.outcomes = [Failed("timeout after 3 s")]
    rt = runtime("crm", sink)
    d, _ = deliveries(state, rt)
    await d.dispatch(item, 0, lambda: None)
    await drain(d, rt)
    assert sink.got == [item["lead_id"]] and sink.in_doubt == []
    await asyncio.sleep(0.05)
    await d.poll_scheduled(rt)
    await drain(d, rt)
    assert [i for i, _ in sink.in_doubt] == [item["lead_id"]] and sink.got == [item["lead_id"]] * 2
    assert await state.status(rt.key, item["lead_id"]) == DELIVERED
