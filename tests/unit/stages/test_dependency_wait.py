"""Waiting on an unreachable Redis or broker: the runner retries the record, never skips it, and the
wait is not idle time for the stall watchdog (the Faust side is tested in tests/integration/test_outages.py)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import pytest
import redis.exceptions

from pipeline.settings import RedisSettings, StageSettings
from pipeline.stages.main import retryable_errors
from pipeline.stages.runtime import HandlerResult, Output, RecordRunner, StateView
from pipeline.stages.watchdog import StallWatchdog, stalled_partitions


class Flaky:
    """A handler whose dependency is away for the first ``failures`` tries."""

    def __init__(self, failures: int, error: type[Exception]) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self, partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("dependency away")
        return HandlerResult(outputs=[Output("out", 0, None, value)], states={"k": {"v": offset}})


class Sink:
    def __init__(self) -> None:
        self.sent: list[Output] = []

    async def __call__(self, outputs: Sequence[Output]) -> None:
        self.sent.extend(outputs)


def runner(handler: Any, sink: Sink) -> RecordRunner:
    return RecordRunner({}, handler, sink, None, name="visitor", retryable=retryable_errors(), max_backoff_s=0.01)


@pytest.mark.parametrize("error", [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                                   redis.exceptions.BusyLoadingError, ConnectionRefusedError, TimeoutError])
async def test_a_record_whose_dependency_is_away_is_retried_until_it_applies(error: type[Exception]) -> None:
    handler, sink = Flaky(3, error), Sink()
    r = runner(handler, sink)
    r.assigned([0])
    await r.handle(0, 5, b"x")
    assert handler.calls == 4
    assert [o.value for o in sink.sent] == [b"x"]
    assert r.table["k"] == {"o": 5, "s": {"v": 5}} and r.progress(0) == 5
    assert r.stats.retries == 3 and r.stats.records == 1
    assert r.waiting_since is None and r.stats.waited_s > 0


async def test_the_wait_moves_every_owned_partitions_idle_clock_forward() -> None:
    """Without this, the partitions that queued up behind an outage look stalled the moment it ends."""
    handler, sink = Flaky(2, redis.exceptions.ConnectionError), Sink()
    r = runner(handler, sink)
    r.assigned([0, 1, 2])
    long_ago = time.monotonic() - 100.0
    r.last_activity.update({0: long_ago, 1: long_ago, 2: long_ago})
    r.max_backoff_s = 0.2
    r.slow_record_s = 0.3
    before = time.monotonic()
    await r.handle(0, 1, b"x")
    waited = r.stats.waited_s
    assert waited >= 0.4
    assert r.last_activity[1] == pytest.approx(long_ago + waited, abs=0.05)
    assert r.last_activity[0] >= before   # the partition whose record applied is fresh anyway
    # same verdict as before the outage for the other partitions: idle for 100 s, not 100 s + the wait
    now = time.monotonic()
    assert stalled_partitions({1}, {1: 9}, {1: 3}, r.last_activity, now, stall_after_s=100.0 + waited / 2) == []


class SlowSend(Sink):
    """A producer that holds the outputs while the broker is away (nothing raises)."""

    async def __call__(self, outputs: Sequence[Output]) -> None:
        import asyncio
        await asyncio.sleep(0.4)
        await super().__call__(outputs)


async def test_a_record_slowed_by_its_outputs_does_not_make_the_other_partitions_look_stalled() -> None:
    r = runner(Flaky(0, ValueError), SlowSend())
    r.slow_record_s = 0.3
    r.assigned([0, 1])
    r.last_activity[1] = time.monotonic() - 9.8
    await r.handle(0, 1, b"x")
    assert stalled_partitions({1}, {1: 5}, {1: 0}, r.last_activity, time.monotonic(), stall_after_s=10.0) == []


async def test_records_of_normal_speed_leave_a_stalled_partitions_clock_alone() -> None:
    r = runner(Flaky(0, ValueError), Sink())
    r.assigned([0, 1])
    r.last_activity[1] = stalled_since = time.monotonic() - 50.0
    for offset in range(1, 50):
        await r.handle(0, offset, b"x")
    assert r.last_activity[1] == stalled_since
    assert stalled_partitions({1}, {1: 5}, {1: 0}, r.last_activity, time.monotonic(), stall_after_s=30.0) == [1]


async def test_an_error_that_is_no_outage_is_not_retried() -> None:
    handler, sink = Flaky(1, ValueError), Sink()
    r = runner(handler, sink)
    with pytest.raises(ValueError):
        await r.handle(0, 1, b"x")
    assert r.stats.retries == 0


class _Consumer:
    flow_active = True


class _App:
    rebalancing = False
    consumer = _Consumer()


class _GapReader:
    def __init__(self) -> None:
        self.down = True

    async def end_offsets(self, partitions: Any) -> dict[int, int]:
        if self.down:
            raise redis.exceptions.ConnectionError("not the broker, but retryable like it")
        return {p: 10 for p in partitions}


async def test_the_watchdog_skips_while_the_broker_is_away_and_then_restarts_the_idle_clocks() -> None:
    gaps = _GapReader()
    r = RecordRunner({RecordRunner.progress_key(0): 9}, Flaky(0, ValueError), Sink(), gaps,  # type: ignore[arg-type]
                     retryable=retryable_errors())
    r.assigned([0])
    r.last_activity[0] = time.monotonic() - 1000.0
    dog = StallWatchdog(_App(), r, "pixel-events", stall_after_s=30.0)
    await dog.check()                       # broker away: no repair, no exit
    assert dog.broker_unreachable_since is not None
    dog.broker_unreachable_since -= 60.0    # it stayed away a minute
    gaps.down = False
    before = r.last_activity[0]
    await dog.check()
    assert dog.broker_unreachable_since is None
    assert r.last_activity[0] == pytest.approx(before + 60.0, abs=1.0)


def test_redis_client_options_carry_the_timeouts() -> None:
    opts = RedisSettings(url="redis://127.0.0.1:6379/0", socket_timeout_s=0.75, connect_timeout_s=1.5,
                         health_check_interval_s=4).client_options()
    assert opts["socket_timeout"] == 0.75 and opts["socket_connect_timeout"] == 1.5
    assert opts["health_check_interval"] == 4
    assert RedisSettings().client_options()["socket_timeout"] == 2.0
    assert StageSettings().retry_backoff_max_s == 5.0


def test_redis_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RedisSettings(socket_timeout_s=0)


def test_repeated_broker_client_errors_are_logged_once_per_window_with_a_count() -> None:
    import logging

    from pipeline.stages.worker import RepeatFilter

    now = [0.0]
    flt = RepeatFilter(10.0, clock=lambda: now[0])

    def rec(msg: str, *args: Any) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, args, None)

    passed = [flt.filter(rec("Unable connect to node with id %s: %s", 1, "refused")) for _ in range(500)]
    assert passed.count(True) == 1
    assert flt.filter(rec("Unable to update metadata from %s", 1))          # another kind is its own
    now[0] = 10.5
    later = rec("Unable connect to node with id %s: %s", 1, "refused")
    assert flt.filter(later)
    assert later.getMessage() == ("Unable connect to node with id 1: refused "
                                  "[499 more like this in the last 10 s not logged]")


async def test_the_waiting_gauge_clears_when_another_error_ends_the_wait() -> None:
    class AwayThenBroken:
        calls = 0

        async def __call__(self, outputs: Sequence[Output]) -> None:
            self.calls += 1
            raise (redis.exceptions.ConnectionError if self.calls == 1 else RuntimeError)("x")

    r = RecordRunner({}, Flaky(0, ValueError), AwayThenBroken(), None, retryable=retryable_errors(),
                     max_backoff_s=0.01)
    with pytest.raises(RuntimeError):
        await r.handle(0, 1, b"x")
    assert r.waiting_since is None and r.stats.retries == 1


async def test_the_broker_counts_as_away_since_the_last_pass_that_reached_it() -> None:
    """A failing end-offset query can take its whole request timeout (40 s): the outage began before."""
    gaps = _GapReader()
    gaps.down = False
    r = RecordRunner({RecordRunner.progress_key(0): 9}, Flaky(0, ValueError), Sink(), gaps,  # type: ignore[arg-type]
                     retryable=retryable_errors())
    r.assigned([0])
    dog = StallWatchdog(_App(), r, "pixel-events", stall_after_s=30.0)
    await dog.check()
    reached = time.monotonic()
    gaps.down = True
    await dog.check()
    assert dog.broker_unreachable_since is not None and dog.broker_unreachable_since <= reached


async def test_a_query_that_waited_for_the_broker_counts_as_an_outage() -> None:
    import asyncio

    class SlowGaps(_GapReader):
        async def end_offsets(self, partitions: Any) -> dict[int, int]:
            await asyncio.sleep(0.3)           # waited for the broker, then got through
            return {p: 10 for p in partitions}

    r = RecordRunner({RecordRunner.progress_key(0): 8}, Flaky(0, ValueError), Sink(), SlowGaps(),  # type: ignore[arg-type]
                     retryable=retryable_errors())
    r.assigned([0])
    dog = StallWatchdog(_App(), r, "pixel-events", stall_after_s=30.0)
    dog.slow_query_s = 0.2
    r.last_activity[0] = time.monotonic() - 29.9   # one more second and it is stalled, unless the wait counts
    await dog.check()
    assert dog._repairs == {}
    assert time.monotonic() - r.last_activity[0] < 30.0


async def test_a_wait_in_one_stage_is_no_stall_of_the_other() -> None:
    """Regression (Redis hung for 30 s): the visitor stage waited, Faust's shared consumer handed the
    account stage nothing meanwhile, and the account stage's watchdog took that for a stall."""
    import asyncio

    visitor = runner(Flaky(2, redis.exceptions.TimeoutError), Sink())
    account = RecordRunner({}, Flaky(0, ValueError), Sink(), None, name="account", retryable=retryable_errors())
    visitor.max_backoff_s = 0.2
    visitor.slow_record_s = 0.3
    visitor.assigned([0])
    account.assigned([0, 1])
    long_ago = time.monotonic() - 100.0
    account.last_activity.update({0: long_ago, 1: long_ago})
    waiting = asyncio.create_task(visitor.handle(0, 1, b"x"))
    await asyncio.sleep(0.1)
    assert RecordRunner.any_waiting()          # every stage's watchdog skips its pass now
    await waiting
    assert not RecordRunner.any_waiting()
    waited = visitor.stats.waited_s
    assert account.last_activity[1] == pytest.approx(long_ago + waited, abs=0.1)


async def test_a_group_stuck_in_one_step_is_reported_with_the_step(caplog: pytest.LogCaptureFixture) -> None:
    """A worker that quietly does nothing says why: the watchdog logs what the group it waits for is doing."""
    import asyncio
    import logging

    release = asyncio.Event()

    class Hanging:
        async def __call__(self, partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
            await release.wait()
            return HandlerResult()

    gaps = _GapReader()
    gaps.down = False
    r = RecordRunner({RecordRunner.progress_key(0): 2}, Hanging(), Sink(), gaps, name="visitor",  # type: ignore[arg-type]
                     retryable=retryable_errors())
    r.assigned([0])
    dog = StallWatchdog(_App(), r, "pixel-events", stall_after_s=30.0)
    dog.report_after_s = 0.0
    task = asyncio.create_task(r.handle(0, 3, b"x"))
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, "pipeline.stages.watchdog"):
        await dog.check()                    # the first pass only notes the reason
        assert "has not checked" not in caplog.text
        await dog.check()
    assert "visitor: stall watchdog has not checked for" in caplog.text
    assert "a group is being applied: handling 1 records" in caplog.text
    release.set()
    await task
    assert r.step == "idle" and dog.skip_reason() is None
