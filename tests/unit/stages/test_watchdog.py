"""Which partitions the stall watchdog calls stalled (the Faust side is tested on the real broker)."""

from __future__ import annotations

from pipeline.stages.watchdog import stalled_partitions


def test_records_waiting_and_nothing_handled_for_long_enough_is_a_stall() -> None:
    assert stalled_partitions({0, 1}, ends={0: 50, 1: 10}, expected={0: 40, 1: 10},
                              last_activity={0: 100.0, 1: 100.0}, now=131.0, stall_after_s=30) == [0]


def test_a_partition_that_applied_everything_is_not_stalled_however_quiet() -> None:
    assert stalled_partitions({3}, ends={3: 7}, expected={3: 7}, last_activity={3: 0.0}, now=10_000.0,
                              stall_after_s=30) == []


def test_recent_activity_or_a_fresh_assignment_gets_time() -> None:
    assert stalled_partitions({0}, ends={0: 9}, expected={0: 2}, last_activity={0: 100.0}, now=129.0,
                              stall_after_s=30) == []
    # no activity recorded at all: counted from now, so not stalled yet
    assert stalled_partitions({0}, ends={0: 9}, expected={0: 2}, last_activity={}, now=129.0,
                              stall_after_s=30) == []


def test_partitions_without_offsets_are_skipped_and_the_answer_is_sorted() -> None:
    assert stalled_partitions({5, 2, 7}, ends={5: 3, 2: 4}, expected={5: 1, 2: 0, 7: 0},
                              last_activity={5: 0.0, 2: 0.0, 7: 0.0}, now=100.0, stall_after_s=30) == [2, 5]
