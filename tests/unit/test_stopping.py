"""A graceful stop that cannot hang (pipeline.stopping): the exit comes after the deadline, with the
stacks of what the stop still waits for."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from pipeline.stopping import exit_after


def test_the_process_exits_after_the_deadline_and_logs_what_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    async def main() -> None:
        async def stuck_commit() -> None:
            await asyncio.sleep(30)

        task = asyncio.create_task(stuck_commit(), name="committer")
        await asyncio.sleep(0)
        exit_after(0.2, "sinks", asyncio.get_running_loop(), exit=fake_exit)
        await asyncio.get_running_loop().run_in_executor(None, exited.wait, 5)
        task.cancel()

    with caplog.at_level(logging.WARNING, "pipeline.stopping"):
        asyncio.run(main())
    assert codes == [0]
    assert "sinks: graceful stop did not finish in 0 s" in caplog.text
    assert "still running: committer at" in caplog.text and "stuck_commit" in caplog.text


def test_a_stop_that_finishes_in_time_is_not_cut_short() -> None:
    codes: list[int] = []
    timer = exit_after(5, "worker", exit=codes.append)
    timer.cancel()   # the process exited first: a daemon timer dies with it
    assert codes == []
