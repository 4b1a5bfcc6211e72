"""The stall watchdog: source partitions with records waiting that Faust no longer delivers.

faust-streaming 0.15.3 was seen, about one run in twenty of the join/leave
fault test, to stop handing over the records of some partitions after a
second worker joined and left: the partitions stayed assigned and active, the
flow was on, nothing was paused, but the aiokafka consumer's position was at
the log end while Faust's read offset stayed at the last record the agent got.
The records in between had been fetched and dropped on their way to the agent
(Faust drops fetched records whose generation is no longer current and an
in-flight batch when the generation changes), and nothing rewinds the position
until the next rebalance: no error, an idle event loop, the records wait forever.

A partition is *stalled* when this process owns it, the log holds records
past the partition's progress (the offset of the last record applied, kept in
the table), the stage is idle (not inside a record: it may be waiting on Redis
or the broker for a long time, legitimately), and no record of that partition
was handled for ``stall_after_s``. The watchdog then logs what Faust's consumer
says about the partition (active, paused, buffered, flow), clears whatever
holds it, and seeks it to the next offset to apply, which makes Faust fetch
from there. Re-delivery is harmless (the runner skips what it has applied).
If the same partition is still stalled after ``max_repairs`` repairs in a row,
the worker exits with code 75 so its supervisor restarts it: a restart is
lossless by design, a silent stall is not.

The same drop hits a table's changelog partition while Faust recovers the
table after a rebalance (seen about once in 25 join/leave runs, when partitions
came back to the worker that had them before): recovery waits for records the
consumer already passed, and with it every stage of the worker. While the
consumer rebalances the watchdog looks at the recovery instead
(:meth:`StallWatchdog.check_recovery`), and the passes run from the first
assignment on, not as a Faust timer (those start only after the first
recovery). The paused source partitions' idle clocks do not run meanwhile.

Waiting on a dependency is not a stall. While Redis or the broker is
unreachable the runner retries its record with backoff, or waits for the
producer to deliver its outputs (``RecordRunner.busy`` is set, and
``waiting_since`` while it retries): the watchdog does nothing then. A record
that took ``RecordRunner.slow_record_s`` (1 s) or more was waiting, not
working, and no partition could be delivered meanwhile (the agent is
serial), so the runner moves every owned partition's idle clock forward by
that time: the partitions that queued up behind an outage are not taken for
stalled the moment it ends. (Records of normal speed move nothing, so a real
stall is still found under full load; while every record is slow, say a
Redis answering in seconds, a stall is found only once that ends.)

Likewise, when the watchdog itself cannot reach the broker (its end-offset
query fails, possibly after its whole request timeout), it logs one line and
skips the pass (a query that got through only after seconds counts the same), and once the broker answers again it moves the idle clocks
forward by the time since the last pass that reached it: the consumer gets ``stall_after_s`` to fetch again before anything
counts as a stall. Each outage therefore costs time, never a repair or a
restart of the worker.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable, Mapping

from ..metrics import STAGE_STALLS
from .faust_adapter import consumer_paused_or_rebalancing, consumer_state, stalled_recovery, unstick
from .runtime import RecordRunner

log = logging.getLogger(__name__)

EXIT_STALLED = 75  # EX_TEMPFAIL: restart me


def stalled_partitions(owned: Iterable[int], ends: Mapping[int, int], expected: Mapping[int, int],
                       last_activity: Mapping[int, float], now: float, stall_after_s: float) -> list[int]:
    """Owned partitions with records at or past ``expected`` and nothing handled for ``stall_after_s``."""
    out = []
    for partition in sorted(owned):
        end = ends.get(partition)
        want = expected.get(partition)
        if end is None or want is None or end <= want:
            continue
        if now - last_activity.get(partition, now) >= stall_after_s:
            out.append(partition)
    return out


class StallWatchdog:
    """Checks one stage's partitions every ``check_every_s`` (run by a Faust timer)."""

    def __init__(self, app: Any, runner: RecordRunner, source_topic: str, stall_after_s: float,
                 max_repairs: int = 3, changelog_topic: str | None = None) -> None:
        self.app = app
        self.runner = runner
        self.source_topic = source_topic
        #: the stage table's changelog, whose recovery after a rebalance is watched too (None: not)
        self.changelog_topic = changelog_topic
        #: changelog partition -> (the offset its recovery was stalled at, repairs there in a row, when)
        self._recovery_repairs: dict[int, tuple[int, int, float]] = {}
        self.stall_after_s = stall_after_s
        self.max_repairs = max_repairs
        #: partition -> (the offset it was stalled at, repairs made there in a row)
        self._repairs: dict[int, tuple[int, int]] = {}
        #: since when the broker may have been unreachable: the end of the last pass that reached it
        #: before a pass that could not (None: the last pass reached it)
        self.broker_unreachable_since: float | None = None
        self._last_reached: float | None = None
        #: end-offset queries this slow waited for an unreachable broker (they take milliseconds)
        self.slow_query_s = 2.0
        #: a pass skipped for the same reason this long is reported (then again each time as long)
        self.report_after_s = max(30.0, 4 * stall_after_s)
        self._skipping: tuple[str, float, float] | None = None   # (reason, since, last reported)

    def skip_reason(self) -> str | None:
        """Why this pass does not look for stalls (None: it does)."""
        app, runner = self.app, self.runner
        if runner.gap_reader is None:
            return "no gap reader"
        if runner.any_waiting():
            return "a stage waits for an unreachable dependency"
        if runner.busy:
            return (f"a group is being applied: {runner.step} for "
                    f"{time.monotonic() - runner.step_since:.0f} s")
        if consumer_paused_or_rebalancing(app):
            return "the consumer is rebalancing or its flow is off (Faust recovery)"
        return None

    def _report_skip(self, reason: str | None) -> None:
        """Log a reason to skip that lasts: a worker that quietly does nothing says why."""
        if reason is None:
            self._skipping = None
            return
        now = time.monotonic()
        kind = reason.split(":")[0]
        if self._skipping is None or self._skipping[0] != kind:
            self._skipping = (kind, now, now)
            return
        _, since, reported = self._skipping
        if now - reported >= self.report_after_s:
            self._skipping = (kind, since, now)
            try:
                state: Any = consumer_state(self.app, self.source_topic, min(self.runner.owned))
            except Exception as exc:   # diagnostics only (no partition owned, or Faust's layout moved)
                state = f"unknown ({type(exc).__name__})"
            log.warning("%s: stall watchdog has not checked for %.0f s: %s; consumer state of its first "
                        "partition: %s", self.runner.name, now - since, reason, state)

    async def check_recovery(self) -> None:
        """Re-seek changelog partitions Faust's table recovery waits for and receives nothing from.

        Faust drops the records it fetched when the group's generation changes under them (see the
        module doc); for a changelog partition being recovered that leaves recovery, and so every
        stage of the worker, waiting for records the consumer already moved past. Seen about once
        in 25 join/leave runs when a partition came back to the worker that had it before. The repair
        is the source partitions' one, at the offset recovery needs next; the same offset still
        stalled after ``max_repairs`` repairs makes the worker exit for a restart.
        """
        if self.changelog_topic is None:
            return
        now = time.monotonic()
        stalled = stalled_recovery(self.app, self.changelog_topic, now, self.stall_after_s)
        for partition in [p for p in self._recovery_repairs if p not in stalled]:
            del self._recovery_repairs[partition]   # it moved on, or recovery is over
        for partition, offset in stalled.items():
            last_offset, count, at = self._recovery_repairs.get(partition, (offset, 0, 0.0))
            if last_offset != offset:
                count = 0
            elif now - at < self.stall_after_s:
                continue   # give the last repair time to take effect
            if count >= self.max_repairs:
                log.critical("%s: recovery of %s[%d] still receives nothing at offset %d after %d repairs; "
                             "exiting so the worker is restarted", self.runner.name, self.changelog_topic,
                             partition, offset, count)
                logging.shutdown()
                os._exit(EXIT_STALLED)
            log.warning("%s: table recovery has received nothing from %s[%d] for %.0f s with records left; "
                        "seeking it to %d, the offset it needs next", self.runner.name, self.changelog_topic,
                        partition, self.stall_after_s, offset)
            await unstick(self.app, self.changelog_topic, partition, offset)
            self._recovery_repairs[partition] = (offset, count + 1, time.monotonic())
            STAGE_STALLS.labels(self.runner.name).inc()

    async def check(self) -> None:
        """One pass: find stalled partitions and repair them."""
        app, runner = self.app, self.runner
        reason = self.skip_reason()
        self._report_skip(reason)
        if reason is not None and not (runner.busy or runner.any_waiting()) and consumer_paused_or_rebalancing(app):
            # the source partitions wait for the rebalance (or a table recovery): not idle time
            now = time.monotonic()
            for partition in runner.owned:
                runner.last_activity[partition] = now
            await self.check_recovery()
        if reason is not None or runner.gap_reader is None:
            return   # any stage waiting on a dependency holds the shared consumer: not a stall
        owned = runner.owned
        if not owned:
            return
        began = time.monotonic()
        try:
            ends = await runner.gap_reader.end_offsets(owned)
            expected = {p: await runner.expected_offset(p) for p in owned}
        except runner.retryable as exc:
            if self.broker_unreachable_since is None:
                # the query may have waited its whole request timeout: the broker may have been away
                # since the last pass that reached it
                self.broker_unreachable_since = self._last_reached if self._last_reached is not None else began
                log.warning("%s: stall watchdog cannot reach the broker (%s: %s); not a stall, checking again "
                            "later", runner.name, type(exc).__name__, exc)
            return
        if self.broker_unreachable_since is None and time.monotonic() - began >= self.slow_query_s:
            # the queries waited for the broker and got through once it was back: same as a failed pass
            self.broker_unreachable_since = self._last_reached if self._last_reached is not None else began
        if self.broker_unreachable_since is not None:
            now = time.monotonic()
            away = now - self.broker_unreachable_since
            self.broker_unreachable_since = None
            for partition in owned:   # nothing could be delivered while the broker was away
                if partition in runner.last_activity:
                    runner.last_activity[partition] = min(now, runner.last_activity[partition] + away)
            log.warning("%s: stall watchdog reaches the broker again after %.0f s", runner.name, away)
        self._last_reached = time.monotonic()
        # the records handled during the awaits above make their partitions active again
        stalled = stalled_partitions(runner.owned, ends, expected, runner.last_activity, time.monotonic(),
                                     self.stall_after_s)
        for partition, (offset, _) in list(self._repairs.items()):
            if expected.get(partition) != offset:
                del self._repairs[partition]   # it moved on (the repair worked), or is no longer ours
        for partition in stalled:
            offset = expected[partition]
            _, count = self._repairs.get(partition, (offset, 0))
            state = consumer_state(app, self.source_topic, partition)
            if count >= self.max_repairs:
                log.critical("%s: partition %d still stalled at offset %d (log end %d) after %d repairs; "
                             "exiting so the worker is restarted. Consumer state: %s", runner.name, partition,
                             offset, ends[partition], count, state)
                logging.shutdown()
                os._exit(EXIT_STALLED)
            log.warning("%s: partition %d stalled: offset %d is next, the log ends at %d, nothing delivered "
                        "for %.0f s; consumer state: %s. Seeking it to %d.", runner.name, partition, offset,
                        ends[partition], time.monotonic() - runner.last_activity.get(partition, 0), state, offset)
            await unstick(app, self.source_topic, partition, offset)
            self._repairs[partition] = (offset, count + 1)
            STAGE_STALLS.labels(runner.name).inc()
            runner.last_activity[partition] = time.monotonic()  # give the repair time to take effect
