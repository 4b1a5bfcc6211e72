"""Idle state eviction on event time (DESIGN "Bounded state").

A stage's table keeps one value per key. A key that saw no event for
``retention_ms`` of event time is deleted while a record of its own partition
is handled (Faust then writes the tombstone to that partition of the
changelog), so memory, changelog and recovery time follow the active keys.

:class:`IdleKeys` is a per-process index over the table: a heap of (last event
time, key) pushed on every write. It holds no truth of its own: each candidate
is checked against the table's stored value before it is deleted, and the first
record of a partition this process handles seeds the index from the table's
keys (state recovered from the changelog). Event time only moves the watermark,
never the wall clock, so a replay evicts what the live run evicted.
"""

from __future__ import annotations

import heapq
from typing import Callable

from ..topology import partition_for
from .runtime import StateView

__all__ = ["IdleKeys"]


class IdleKeys:
    """Which keys of one stage's table went idle; see the module doc."""

    def __init__(self, retention_ms: int, partitions: int, last_seen: Callable[[object], int | None],
                 max_per_record: int = 1000) -> None:
        self.retention_ms = retention_ms
        self.partitions = partitions
        self.last_seen = last_seen          # the stored state -> its last event time
        self.max_per_record = max_per_record  # deletes per record, so one record never stalls on a sweep
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._watermark: dict[int, int] = {}
        self._seeded: set[int] = set()

    @property
    def enabled(self) -> bool:
        return self.retention_ms > 0

    def touch(self, partition: int, key: str, last_event_ms: int) -> None:
        """``key`` was written with ``last_event_ms`` as its latest event time."""
        if not self.enabled:
            return
        heapq.heappush(self._heaps.setdefault(partition, []), (last_event_ms, key))

    def advance(self, partition: int, event_ms: int) -> None:
        """Event time reached ``event_ms`` in ``partition`` (the watermark only moves forward)."""
        if event_ms > self._watermark.get(partition, 0):
            self._watermark[partition] = event_ms

    def size(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def expired(self, partition: int, states: StateView, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Keys of ``partition`` idle past the retention, to delete now (at most ``max_per_record``)."""
        if not self.enabled:
            return []
        if partition not in self._seeded:
            self._seed(partition, states)
        watermark = self._watermark.get(partition)
        if watermark is None:
            return []
        cutoff = watermark - self.retention_ms
        heap = self._heaps[partition]
        out: list[str] = []
        while heap and heap[0][0] < cutoff and len(out) < self.max_per_record:
            ts, key = heapq.heappop(heap)
            if key in keep:
                continue
            stored = states.get(key)
            if stored is None:
                continue
            last = self.last_seen(stored)
            if last is not None and last < cutoff:  # a state it cannot read is left alone
                out.append(key)
            # else: written again since (a newer entry is in the heap), or unreadable
        return out

    def _seed(self, partition: int, states: StateView) -> None:
        self._seeded.add(partition)
        heap: list[tuple[int, str]] = self._heaps.get(partition, [])
        for key in states.keys():
            if partition_for(key, self.partitions) != partition:
                continue
            stored = states.get(key)
            last = self.last_seen(stored) if stored is not None else None
            if last is not None:
                heap.append((last, key))
        heapq.heapify(heap)
        self._heaps[partition] = heap
