"""Running a Faust app as a worker process (what `leadstream worker` does)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, NoReturn

import faust

log = logging.getLogger(__name__)


class _Worker(faust.Worker):
    """faust.Worker whose graceful stop cannot hang.

    faust-streaming 0.15.3 was seen stuck in ``stop_and_shutdown`` after SIGTERM while still
    a member of its consumer group, so its partitions never moved to the other workers. A
    stop that has not finished in ``shutdown_timeout_s`` ends the process; that is safe by
    design (offsets only commit after a record's outputs and state are on the broker).
    """

    shutdown_timeout_s = 20.0

    def _arm_watchdog(self) -> None:
        def force() -> None:
            log.warning("graceful stop did not finish in %.0f s; exiting anyway (no state is lost)",
                        self.shutdown_timeout_s)
            logging.shutdown()
            os._exit(0)

        timer = threading.Timer(self.shutdown_timeout_s, force)
        timer.daemon = True
        timer.start()

    def _on_sigterm(self) -> None:
        self._arm_watchdog()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_watchdog()
        super()._on_sigint()


def run_worker(app: faust.App, loglevel: str = "info", stdout: Any = None) -> NoReturn:
    """Run ``app`` until SIGTERM/SIGINT; a graceful stop finishes the records in flight.
    ``stdout``: where Faust writes its terminal spinner (default: standard output)."""
    level = {"warning": "warn"}.get(loglevel, loglevel)  # Faust spells it `warn`
    extra = {"stdout": stdout} if stdout is not None else {}
    worker: Any = _Worker(app, loglevel=level, quiet=True, redirect_stdouts=False, **extra)
    worker.execute_from_commandline()
    raise SystemExit(0)  # execute_from_commandline exits itself; keeps the NoReturn contract
