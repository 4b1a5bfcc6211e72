"""The Faust workarounds in pipeline/stages/faust_adapter.py, one test each, on Faust's own objects where
they can run without a broker (the consumer-side ones run on the real broker in
tests/integration/test_stage_runtime.py: the stall tests for consumer_state/unstick, the group tests for
commit_groups)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import faust
from faust.stores.memory import Store
from faust.streams import current_event

from pipeline.stages.faust_adapter import EventScope, commit_groups, replace_partition_state


class _Event:
    """What the adapter reads of a faust Event: its message (Faust keeps a weak reference to it)."""

    def __init__(self, message: Any) -> None:
        self.message = message


def _event(partition: int, offset: int) -> Any:
    return _Event(SimpleNamespace(partition=partition, offset=offset, value=b"v%d" % offset, topic="t"))


def test_event_scope_makes_the_partitions_latest_event_current_and_restores_the_previous_one() -> None:
    scope = EventScope()
    first, later, other = _event(3, 10), _event(3, 11), _event(5, 2)
    scope.remember([first, other, later])
    assert current_event() is None
    with scope.of(3):
        assert current_event() is later          # a Faust table write here goes to partition 3's changelog
        with scope.of(5):
            assert current_event() is other
        assert current_event() is later
    assert current_event() is None
    with scope.of(7):                            # never taken: no current event, Faust refuses the write
        assert current_event() is None


def test_commit_groups_yields_partition_offset_value_of_each_taken_event_and_remembers_them() -> None:
    events = [_event(0, 4), _event(1, 9)]
    events[1].message.value = None

    class Stream:
        async def take_events(self, max_: int, within: float) -> Any:
            assert (max_, within) == (100, 0.05)
            yield events

    async def collect() -> list[Any]:
        scope = EventScope()
        out = [g async for g in commit_groups(Stream(), 100, 0.05, scope)]
        with scope.of(1):
            assert current_event() is events[1]
        return out

    assert asyncio.run(collect()) == [[(0, 4, b"v4"), (1, 9, b"")]]


def test_replace_partition_state_rewrites_one_partition_of_the_memory_store_and_its_key_index() -> None:
    app = faust.App("adapter-test", broker="memory://", store="memory://")
    table = app.Table("t", default=None, partitions=4)
    store: Store = table.data
    store.data.update({"a": {"o": 1, "s": 1}, "b": {"o": 2, "s": 2}, "c": {"o": 3, "s": 3}})
    store._key_partition.update({"a": 0, "b": 0, "c": 1})
    replaced = replace_partition_state(table, 0, {json.dumps("a").encode(): json.dumps({"o": 9, "s": 9}).encode(),
                                                  json.dumps("d").encode(): json.dumps({"o": 5, "s": 5}).encode(),
                                                  json.dumps("e").encode(): None})
    assert replaced == 3
    assert dict(store.data) == {"a": {"o": 9, "s": 9}, "c": {"o": 3, "s": 3}, "d": {"o": 5, "s": 5}}
    assert store._key_partition == {"a": 0, "c": 1, "d": 0}   # "b" (gone from the changelog) is dropped


def test_stalled_recovery_names_changelog_partitions_that_recovery_needs_and_receives_nothing_from() -> None:
    """On Faust's own Recovery object, so a Faust upgrade that renames its private clocks fails here."""
    from faust.types import TP

    from pipeline.stages.faust_adapter import stalled_recovery

    app = faust.App("adapter-recovery-test", broker="memory://", store="memory://")
    recovery = app.tables.recovery
    log = "adapter-recovery-test-t-changelog"
    assert stalled_recovery(app, log, now=1000.0, stall_after_s=30) == {}   # no recovery running
    recovery.in_recovery = True
    recovery._recovery_started_at = 900.0
    recovery.active_highwaters.update({TP(log, 0): 649, TP(log, 1): 500, TP(log, 2): 80, TP("other", 0): 9})
    recovery.active_offsets.update({TP(log, 0): -1, TP(log, 1): 200, TP(log, 2): 80, TP("other", 0): -1})
    recovery._active_events_received_at.update({TP(log, 1): 990.0})
    # 0: nothing received since the start, 100 s ago; 1: a record 10 s ago; 2: complete; other: not ours
    assert stalled_recovery(app, log, now=1000.0, stall_after_s=30) == {0: 0}
    assert stalled_recovery(app, log, now=1030.0, stall_after_s=30) == {0: 0, 1: 201}
