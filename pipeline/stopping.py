"""A graceful stop that cannot hang: the long-running processes end themselves after a deadline.

The stage worker (faust-streaming seen stuck in its shutdown) and the sinks process (seen once
stuck for minutes after SIGTERM, its pollers still running) arm this when a stop signal
arrives. Exiting is safe for both by design: the worker commits an offset only after a record's
outputs and state are on the broker, the sinks commit only settled leads and resolve in-flight
deliveries after a restart (the kill -9 tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Callable

log = logging.getLogger(__name__)


def _exit(code: int) -> None:
    logging.shutdown()
    os._exit(code)


def exit_after(seconds: float, what: str, loop: asyncio.AbstractEventLoop | None = None,
               exit: Callable[[int], object] = _exit) -> threading.Timer:
    """Start a timer that ends the process with code 0 unless it exits within ``seconds``.

    With ``loop``, the stack of each of its tasks goes to the log first: what the stop waited for.
    """

    def force() -> None:
        log.warning("%s: graceful stop did not finish in %.0f s; exiting anyway (nothing is lost)", what, seconds)
        if loop is not None:
            try:
                for task in list(asyncio.all_tasks(loop)):
                    frames = task.get_stack(limit=3)
                    where = " <- ".join(f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in frames)
                    log.warning("%s: still running: %s at %s", what, task.get_name(), where or "?")
            except Exception:  # diagnostics only: the loop's task set may change under us
                pass
        exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
    return timer
