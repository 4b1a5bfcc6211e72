"""`leadstream up` restarts a worker that exits asking for it, and stops on any other death."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.local import up


class FakeProc:
    def __init__(self, codes: list[int | None]) -> None:
        self.codes = codes

    def poll(self) -> int | None:
        if not self.codes:
            raise KeyboardInterrupt  # ends the watch loop once the script is played
        return self.codes.pop(0)


def watch(monkeypatch: pytest.MonkeyPatch, first: FakeProc, after: list[FakeProc]) -> tuple[up.Stack, list[Any]]:
    monkeypatch.setattr(up.time, "sleep", lambda _s: None)
    stack = up.Stack()
    stack.children.append(("worker", first, Path("worker.log")))  # type: ignore[arg-type]
    started: list[Any] = []

    def restart() -> None:
        proc = after.pop(0)
        started.append(proc)
        stack.children.append(("worker", proc, Path("worker.log")))  # type: ignore[arg-type]

    stack.restarters["worker"] = restart
    return stack, started


@pytest.mark.parametrize("code", [70, 75])
def test_a_worker_asking_for_a_restart_is_restarted(monkeypatch: pytest.MonkeyPatch, code: int,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    stack, started = watch(monkeypatch, FakeProc([None, code]), [FakeProc([None, None])])
    with pytest.raises(KeyboardInterrupt):
        up._watch(stack)
    assert len(started) == 1 and [c[1] for c in stack.children] == started
    assert "restarting it" in capsys.readouterr().out


def test_any_other_exit_stops_up(monkeypatch: pytest.MonkeyPatch) -> None:
    stack, started = watch(monkeypatch, FakeProc([1]), [FakeProc([None])])
    with pytest.raises(up.UpError, match="exited with 1"):
        up._watch(stack)
    assert not started


def test_restarts_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    procs = [FakeProc([75]) for _ in range(up.RESTARTS_PER_10_MIN)]
    stack, started = watch(monkeypatch, FakeProc([75]), procs)
    with pytest.raises(up.UpError, match="exited with 75"):
        up._watch(stack)
    assert len(started) == up.RESTARTS_PER_10_MIN
