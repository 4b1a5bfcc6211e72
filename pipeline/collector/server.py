"""Running the collector: uvicorn (uvloop + httptools), one or more worker processes.

With ``collector.workers`` > 1 the parent binds the listening socket once and
forks the workers, which share it (the kernel spreads connections). Forking,
rather than uvicorn's own ``--workers`` (which spawns fresh interpreters that
re-import the app from a string), lets every worker inherit the already
validated settings object unchanged. The parent restarts a worker that dies
and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from types import FrameType

import uvicorn
from prometheus_client import multiprocess

from .. import metrics
from ..settings import Settings
from .app import create_app

log = logging.getLogger(__name__)

_UVICORN_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "error": "error"}


def _config(settings: Settings) -> uvicorn.Config:
    cfg = settings.collector
    return uvicorn.Config(
        create_app(settings),
        host=cfg.host,
        port=cfg.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=_UVICORN_LEVELS[settings.log_level],
        access_log=False,          # one log line per hit would cost more than the hit
        proxy_headers=False,       # X-Forwarded-For is handled by the app, from trusted proxies only
        server_header=False,
        date_header=False,
        timeout_keep_alive=30,
        # beyond this many connections and requests at once uvicorn answers 503 instead of queueing without bound
        limit_concurrency=cfg.limit_concurrency,
    )


class RepeatThrottle(logging.Filter):
    """Lets the same message template through at most once per ``interval_s``.

    aiokafka logs every failed reconnect, thousands a second while a broker
    goes away; the collector's own state changes are logged once anyway.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, _UVICORN_LEVELS[settings.log_level].upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    kafka_log = logging.getLogger("aiokafka")
    kafka_log.setLevel(max(level, logging.WARNING))
    kafka_log.addFilter(RepeatThrottle())


def serve(settings: Settings) -> None:
    """Serve the collector until SIGINT/SIGTERM (blocks). Called by ``leadstream collector`` and ``up``."""
    configure_logging(settings)
    metrics.serve_only("collector", [s.site_id for s in settings.sites])
    cfg = settings.collector
    if cfg.workers <= 1:
        given = metrics.multiprocess_dir()
        if given:  # PROMETHEUS_MULTIPROC_DIR set for one process: only this run's values count
            _remove_values(given, keep_pid=os.getpid())
        log.info("collector listening on http://%s:%d", cfg.host, cfg.port)
        uvicorn.Server(_config(settings)).run()
        return
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    log.info("collector listening on http://%s:%d with %d workers", cfg.host, cfg.port, cfg.workers)
    directory, owned = _multiprocess_dir()
    try:
        _supervise(settings, sock, directory)
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def _multiprocess_dir() -> tuple[str, bool]:
    """The directory the workers' metrics go to (prometheus-client's multiprocess mode), emptied:
    ``PROMETHEUS_MULTIPROC_DIR`` when set, else a new temporary one (True: removed at exit)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        return tempfile.mkdtemp(prefix="leadstream-collector-metrics-"), True
    os.makedirs(given, exist_ok=True)
    _remove_values(given)   # the parent's own (it serves nothing) and a previous run's
    return given, False


def _remove_values(directory: str, keep_pid: int | None = None) -> None:
    """Remove the metric files of ``directory`` (a previous run's would be counted again), but this process's."""
    for name in os.listdir(directory):
        if name.endswith(".db") and (keep_pid is None or not name.endswith(f"_{keep_pid}.db")):
            os.remove(os.path.join(directory, name))


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _run_worker(settings: Settings, sock: socket.socket, metrics_dir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # the parent forked with them blocked
    try:
        # every worker writes its metrics to files there: a scrape answered by any worker sees all of them
        metrics.enable_multiprocess(metrics_dir, "collector", [s.site_id for s in settings.sites])
        uvicorn.Server(_config(settings)).run(sockets=[sock])
    except BaseException:  # noqa: BLE001 - a worker must exit, never return into the parent's loop
        log.exception("collector worker failed")
        os._exit(1)
    os._exit(0)


def _supervise(settings: Settings, sock: socket.socket, metrics_dir: str) -> None:
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        # SIGINT/SIGTERM wait while forking: a stop that arrived between the fork and the bookkeeping
        # would miss the new worker, and the supervisor would wait on it forever
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            if stopping:
                return
            pid = os.fork()
            if pid == 0:
                _run_worker(settings, sock, metrics_dir)
            children[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                children.pop(pid, None)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for _ in range(settings.collector.workers):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, None)
        # its gauges go; its counters keep counting in the sum
        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
        if stopping or started is None:
            continue
        log.warning("collector worker %d exited (status %d); starting another", pid, status)
        if time.monotonic() - started < 1.0:
            time.sleep(1.0)  # a worker that dies at start would otherwise be restarted in a tight loop
        spawn()
    sock.close()
    sys.exit(0)
