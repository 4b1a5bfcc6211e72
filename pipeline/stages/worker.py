"""Running a Faust app as a worker process (what `leadstream worker` does)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, NoReturn

import faust

from ..stopping import exit_after

log = logging.getLogger(__name__)


#: aiokafka's loggers that repeat one line many times a second while the broker is away
BROKER_CLIENT_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.producer.sender",
                         "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator")


class RepeatFilter(logging.Filter):
    """Lets one record per logger and message template through every ``window_s`` seconds.

    While the broker is away, aiokafka logs each failed connect, metadata update, fetch and
    produce attempt (thousands of ERROR lines in a 30 s outage). The first record of a kind is
    kept, the repeats within the window are counted, and the next record let through says how
    many were left out.
    """

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self.clock()
        with self._lock:
            first, dropped = self._seen.get(key, (None, 0))
            if first is not None and now - first < self.window_s:
                self._seen[key] = (first, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:   # templates are few; bound it anyway
                self._seen = {key: (now, 0)}
        if dropped:
            record.msg = f"{record.msg} [{dropped} more like this in the last {self.window_s:.0f} s not logged]"
        return True


def quiet_broker_client_logs(window_s: float = 10.0) -> RepeatFilter:
    """Install one :class:`RepeatFilter` on aiokafka's loggers (idempotent per logger)."""
    flt = RepeatFilter(window_s)
    for name in BROKER_CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(flt)
    return flt


class _Worker(faust.Worker):
    """faust.Worker whose graceful stop cannot hang.

    faust-streaming 0.15.3 was seen stuck in ``stop_and_shutdown`` after SIGTERM while still
    a member of its consumer group, so its partitions never moved to the other workers. A
    stop that has not finished in ``shutdown_timeout_s`` ends the process; that is safe by
    design (offsets only commit after a record's outputs and state are on the broker).
    """

    shutdown_timeout_s = 20.0

    def _arm_watchdog(self) -> None:
        exit_after(self.shutdown_timeout_s, "worker")

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """No terminal spinner. At ``warn`` and above, faust.Worker adds a spinner handler at DEBUG
        and sets the root logger to DEBUG, so every debug line of aiokafka and Faust (a few per
        message sent or fetched) became a LogRecord handed to the handlers: 5-7% of the worker's
        CPU under load (py-spy, ``bench pipeline``). The root logger keeps the configured level."""
        self.spinner = None
        super().on_setup_root_logger(logger, level)

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
    quiet_broker_client_logs()
    extra = {"stdout": stdout} if stdout is not None else {}
    worker: Any = _Worker(app, loglevel=level, quiet=True, redirect_stdouts=False, **extra)
    worker.execute_from_commandline()
    raise SystemExit(0)  # execute_from_commandline exits itself; keeps the NoReturn contract
