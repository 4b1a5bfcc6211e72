"""Group commit in the record runner: the overlay, the order of sends and writes, the group bounds.

The table is a dict and the sender records what it is given (the broker side is tested in
tests/integration/test_stage_runtime.py); the handler is a counting stage.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Sequence

import pytest

from pipeline.stages.runtime import HandlerResult, Output, RecordRunner, StateView


async def counting(partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
    result = HandlerResult()
    for key in json.loads(value):
        if states.applied(key, offset):
            continue
        count = (result.states.get(key) or states.get(key) or 0) + 1
        result.states[key] = count
        result.outputs.append(Output("out", partition, key.encode(), f"{partition}:{offset}:{key}:{count}".encode()))
    return result


class Sender:
    """Records each send with a copy of the table at that moment; fails when told to."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.sends: list[tuple[list[Output], dict[str, Any]]] = []
        self.fail: BaseException | None = None

    async def __call__(self, outputs: Sequence[Output]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sends.append((list(outputs), dict(self.table)))


class GapReader:
    def __init__(self, log: dict[int, list[bytes]]) -> None:
        self.log = log

    async def start_offset(self, partition: int) -> int:
        return 0

    async def read(self, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        return [(o, self.log[partition][o]) for o in range(start, end)]


def runner(max_group: int, gap_reader: Any = None) -> tuple[RecordRunner, dict[str, Any], Sender]:
    table: dict[str, Any] = {}
    send = Sender(table)
    return RecordRunner(table, counting, send, gap_reader, name="test", max_group=max_group), table, send


def rec(partition: int, offset: int, *keys: str) -> tuple[int, int, bytes]:
    return partition, offset, json.dumps(list(keys)).encode()


def test_the_overlay_is_read_before_the_table_with_its_offsets() -> None:
    table = {"a": {"o": 3, "s": "old"}, "b": {"o": 5, "s": "kept"}}
    view = StateView(table, {"a": {"o": 9, "s": "new"}})
    assert view.get("a") == "new" and view.get("b") == "kept" and view.get("c") is None
    assert view.applied("a", 9) and not view.applied("a", 10)
    assert view.applied("b", 5) and not view.applied("b", 6)
    assert not view.applied("c", 0)


def test_later_records_of_a_group_read_the_earlier_writes_and_one_send_carries_all_outputs() -> None:
    r, table, send = runner(max_group=100)
    asyncio.run(r.handle_group([rec(0, 0, "k"), rec(0, 1, "k"), rec(1, 0, "j"), rec(0, 2, "k", "j2")]))
    assert len(send.sends) == 1
    outputs, table_at_send = send.sends[0]
    assert [o.value for o in outputs] == [b"0:0:k:1", b"0:1:k:2", b"1:0:j:1", b"0:2:k:3", b"0:2:j2:1"]
    assert table_at_send == {}, "state was written before the group's outputs were acknowledged"
    assert table["k"] == {"o": 2, "s": 3} and table["j"] == {"o": 0, "s": 1}
    assert table["~progress/0"] == 2 and table["~progress/1"] == 0
    assert r.stats.records == 4 and r.stats.groups == 1


def test_a_failed_send_writes_no_state_and_the_retry_of_the_group_applies_it_once() -> None:
    r, table, send = runner(max_group=100)
    group = [rec(0, 0, "k"), rec(0, 1, "k")]
    send.fail = RuntimeError("broker gone, process dies")
    with pytest.raises(RuntimeError):
        asyncio.run(r.handle_group(group))
    assert table == {}
    send.fail = None
    asyncio.run(r.handle_group(group))            # the replay after the restart
    asyncio.run(r.handle_group(group))            # and a redelivery: skipped, nothing sent
    assert table["k"] == {"o": 1, "s": 2}
    assert [o.value for o in send.sends[0][0]] == [b"0:0:k:1", b"0:1:k:2"] and len(send.sends) == 1
    assert r.stats.replayed_skipped == 2


def test_retryable_send_errors_are_retried_until_the_outputs_are_acknowledged() -> None:
    r, table, send = runner(max_group=10)
    r.max_backoff_s = 0.01
    calls = 0

    async def flaky(outputs: Sequence[Output]) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("broker away")
        await send(outputs)

    r.send = flaky
    asyncio.run(r.handle_group([rec(0, 0, "k")]))
    assert calls == 3 and table["k"] == {"o": 0, "s": 1}


def test_a_group_is_cut_at_max_group_records() -> None:
    r, table, send = runner(max_group=2)
    asyncio.run(r.handle_group([rec(0, o, "k") for o in range(5)]))
    assert [len(outputs) for outputs, _ in send.sends] == [2, 2, 1]
    # each group's send saw the previous groups' state, never its own
    assert [t.get("~progress/0") for _, t in send.sends] == [None, 1, 3]
    assert table["k"] == {"o": 4, "s": 5}


def test_a_group_of_one_is_the_record_at_a_time_rule() -> None:
    r, table, send = runner(max_group=1)
    asyncio.run(r.handle_group([rec(0, 0, "k"), rec(0, 1, "k")]))
    assert [t.get("k") for _, t in send.sends] == [None, {"o": 0, "s": 1}]


def test_records_faust_skipped_inside_a_group_are_read_and_applied_in_order() -> None:
    log = {0: [json.dumps([f"k{o}", "k"]).encode() for o in range(6)]}
    r, table, send = runner(max_group=100, gap_reader=GapReader(log))
    asyncio.run(r.handle_group([(0, 0, log[0][0]), (0, 3, log[0][3]), (0, 5, log[0][5])]))
    keys = [o.key for outputs, _ in send.sends for o in outputs]
    assert keys == [b"k0", b"k", b"k1", b"k", b"k2", b"k", b"k3", b"k", b"k4", b"k", b"k5", b"k"]
    assert table["k"] == {"o": 5, "s": 6} and r.stats.gaps_repaired == 3 and r.stats.gap_events == 2


class Prefetching:
    """The counting stage with a read-ahead: records what each prefetch was given, fails when told to."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []
        self.handled_before: list[int] = []
        self.handled = 0
        self.fail: list[BaseException] = []

    async def prefetch(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        self.handled_before.append(self.handled)
        if self.fail:
            raise self.fail.pop(0)
        self.calls.append([(p, o) for p, o, _ in records])

    async def __call__(self, partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        self.handled += 1
        return await counting(partition, offset, value, states)


def test_the_handler_reads_ahead_once_per_group_before_any_of_its_records() -> None:
    handler = Prefetching()
    table: dict[str, Any] = {"~progress/0": 0}
    r = RecordRunner(table, handler, Sender(table), None, name="test", max_group=2)
    asyncio.run(r.handle_group([rec(0, 0, "k"), rec(0, 1, "k"), rec(0, 2, "k"), rec(1, 0, "j")]))
    # the replayed record 0:0 is not read ahead; the group is cut at two records, each part read ahead first
    assert handler.calls == [[(0, 1), (0, 2)], [(1, 0)]]
    assert handler.handled_before == [0, 2]
    assert table["k"] == {"o": 2, "s": 2}


def test_a_failed_read_ahead_costs_only_the_read_ahead() -> None:
    handler = Prefetching()
    table: dict[str, Any] = {}
    r = RecordRunner(table, handler, Sender(table), None, name="test", max_group=10, max_backoff_s=0.01)
    handler.fail = [ConnectionError("redis away"), ConnectionError("redis away")]   # retried like a record
    asyncio.run(r.handle_group([rec(0, 0, "k")]))
    assert handler.calls == [[(0, 0)]] and r.stats.retries == 2 and table["k"] == {"o": 0, "s": 1}
    handler.fail = [ValueError("a bug in the read-ahead")]                            # the records still apply
    asyncio.run(r.handle_group([rec(0, 1, "k")]))
    assert table["k"] == {"o": 1, "s": 2}
