"""Process management shared by the local servers (Kafka, Tansu, Redis, the registry).

- `ServerProcess`: the lifecycle every launcher in this package has in common —
  spawn one child process with its output appended to a log file, wait until it
  answers (killing it if it never does), `stop()` (SIGTERM, then SIGKILL after
  `stop_timeout`), `kill()`, `restart()`, `close()` and use as a context manager.
  Subclasses write `start()` (build the command line, call `_spawn` and
  `_await_ready`) and, when they own files, `_remove_files()`.
- `DataDirServer`: a `ServerProcess` with a data directory (temporary unless given).
- `wait_until_ready`: the poll loop behind "wait until it answers".
- `free_port`, `terminate_process`, `log_tail`, `log_errors`, `track_process`:
  small helpers; every child started here is stopped at interpreter exit so an
  aborted test run leaves no server behind.

`pipeline.local.kafka` re-exports the helpers under their old names.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "DataDirServer",
    "ServerProcess",
    "free_port",
    "log_errors",
    "log_tail",
    "terminate_process",
    "track_process",
    "wait_until_ready",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(avoid: set[int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now, chosen below the ephemeral range.

    Outgoing connections take their local port from the ephemeral range, so a
    server port picked there can be taken by some client while its server is
    down for a restart; ports below it are only ever taken by explicit binds.
    """
    avoid = avoid or set()
    low, _ = _ephemeral_range()
    if low > 12000:
        for _ in range(100):
            port = random.randint(10000, low - 1)
            if port in avoid:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    while True:  # fall back to the kernel's pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            picked: int = sock.getsockname()[1]
        if picked not in avoid:
            return picked


def terminate_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM `process` and wait up to `timeout` s, then SIGKILL. `timeout=0`: SIGKILL now."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if timeout > 0:
                process.send_signal(signal.SIGTERM)
            else:
                process.kill()
        try:
            process.wait(timeout=timeout if timeout > 0 else 10.0)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s: killing it", process.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10.0)
    _LIVE.discard(process)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file, or a note that it does not exist."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def log_errors(path: Path, lines: int = 12) -> str:
    """The last ERROR/FATAL lines and exception causes of a log4j file (stack frames dropped)."""
    picked = [
        line
        for line in log_tail(path, 100_000).splitlines()
        if " ERROR " in line or " FATAL " in line or line.startswith("Caused by:")
    ]
    return "\n".join(picked[-lines:]) or "(none)"


#: Child processes started by this package, stopped at interpreter exit
#: so an aborted test run leaves no broker behind.
_LIVE: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()


def track_process(process: subprocess.Popen[bytes]) -> None:
    """Have `process` stopped (SIGTERM, then SIGKILL) when the interpreter exits."""
    _LIVE.add(process)


def _stop_all_at_exit() -> None:
    for process in list(_LIVE):
        with contextlib.suppress(Exception):
            terminate_process(process, 5.0)


atexit.register(_stop_all_at_exit)


def wait_until_ready(
    probe: Callable[[], str | None],
    *,
    what: str,
    awaiting: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None,
    unavailable: type[Exception],
    describe: Callable[[], str] | None = None,
    interval: float = 0.1,
    first_error: str = "port never opened",
) -> None:
    """Poll `probe()` (None: ready, else why not) every `interval` s until it answers.

    Raises `unavailable` when `timeout` passes or `process` exits first (also
    when it exited although something answered: that is another process on its
    port), naming `what` (e.g. "broker on 127.0.0.1:9092") and what it did not
    answer (`awaiting`), with the last probe error and `describe()` (a log tail).
    """
    deadline = time.monotonic() + timeout
    last_error = first_error

    def fail(reason: str) -> Exception:
        detail = describe() if describe is not None else ""
        return unavailable(f"{what} {reason} ({last_error})\n{detail}")

    while True:
        if process is not None and process.poll() is not None:
            raise fail(f"exited with code {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise fail(f"did not answer {awaiting} within {timeout:.0f} s")
        error = probe()
        if error is None and process is not None and process.poll() is not None:
            raise fail("exited; whatever answers on its port is another process")
        if error is None:
            return
        last_error = error
        time.sleep(interval)


# --------------------------------------------------------------------------- base class


class ServerProcess(abc.ABC):
    """One server child process on 127.0.0.1 and its lifecycle.

    Contracts: `stop()` is graceful (SIGTERM, then SIGKILL after `stop_timeout`)
    and `kill()` is SIGKILL; both are idempotent and keep the port for a later
    `start()`. `close()` stops and then removes whatever files this object
    created (`_remove_files`). As a context manager it starts the server unless
    it is already running, and closes it on exit (also when the start fails).
    """

    process: subprocess.Popen[bytes] | None

    def __init__(
        self, *, port: int | None, startup_timeout: float, stop_timeout: float
    ) -> None:
        self.port = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.process = None
        #: Seconds the last `start()` took until the server answered.
        self.startup_seconds: float | None = None

    @property
    def address(self) -> str:
        """`127.0.0.1:<port>`; valid once `start()` picked the port."""
        if self.port is None:
            raise RuntimeError(f"{type(self).__name__} has no port yet: call start() first")
        return f"127.0.0.1:{self.port}"

    # -- for subclasses -----------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> None:
        """Start the server and return once it answers (each server defines how)."""

    def _remove_files(self) -> None:
        """Remove what this object created on disk; called by `close()` after `stop()`."""

    def _spawn(
        self, cmd: Sequence[str], output: Path, *, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `cmd` in its own session, stdout+stderr appended to `output`; tracked for atexit."""
        with open(output, "ab") as out:
            self.process = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C meant for the caller does not hit it
            )
        track_process(self.process)
        return self.process

    def _await_ready(
        self, wait: Callable[[], None], began: float, *, graceful: bool = False
    ) -> None:
        """Run `wait()` and set `startup_seconds` (since `began`, a `time.monotonic()`).

        If `wait()` raises, kill the server (or stop it, `graceful`) and re-raise.
        """
        try:
            wait()
        except BaseException:
            if graceful:
                self.stop()
            else:
                self.kill()
            raise
        self.startup_seconds = time.monotonic() - began

    # -- lifecycle ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Graceful shutdown: SIGTERM, then SIGKILL after `stop_timeout`."""
        self._terminate(self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        self._terminate(0.0)

    def _terminate(self, timeout: float) -> None:
        if self.process is not None:
            terminate_process(self.process, timeout)
            self.process = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the files this object created."""
        self.stop()
        self._remove_files()

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()  # __exit__ will not run: do not leak the temp files
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DataDirServer(ServerProcess):
    """A `ServerProcess` whose files live in `data_dir`.

    Without a `data_dir` a temporary one (named `temp_prefix...`) is made and
    removed by `close()`; a given one is kept.
    """

    def __init__(
        self,
        data_dir: Path | str | None,
        *,
        temp_prefix: str,
        port: int | None,
        startup_timeout: float,
        stop_timeout: float,
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self._owned_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix=temp_prefix)) if data_dir is None else Path(data_dir)
        )

    def _remove_files(self) -> None:
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
