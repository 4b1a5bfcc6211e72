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
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable, Mapping

from ..metrics import STAGE_STALLS
from .faust_adapter import consumer_paused_or_rebalancing, consumer_state, unstick
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
                 max_repairs: int = 3) -> None:
        self.app = app
        self.runner = runner
        self.source_topic = source_topic
        self.stall_after_s = stall_after_s
        self.max_repairs = max_repairs
        #: partition -> (the offset it was stalled at, repairs made there in a row)
        self._repairs: dict[int, tuple[int, int]] = {}

    async def check(self) -> None:
        """One pass: find stalled partitions and repair them."""
        app, runner = self.app, self.runner
        if runner.busy or consumer_paused_or_rebalancing(app) or runner.gap_reader is None:
            return
        owned = runner.owned
        if not owned:
            return
        ends = await runner.gap_reader.end_offsets(owned)
        expected = {p: await runner.expected_offset(p) for p in owned}
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
