"""A real Apache Kafka broker (KRaft, one node) on 127.0.0.1, started from Maven jars.

The integration tests and `leadstream up` (when Java and Maven are present) run
the same broker production runs, without Docker: `ensure_jars` fetches
`org.apache.kafka:kafka_2.13` and its runtime dependencies from Maven Central
once, into a per-user cache, and `KafkaBroker` formats a data directory and runs
`kafka.Kafka` in a child JVM.

A broker keeps its ports and data directory across `stop()` / `start()`, so a
restarted broker answers on the same address with the same records.

The process lifecycle (`ServerProcess`) and the small helpers (`free_port`,
`terminate_process`, `log_tail`, `log_errors`, `track_process`) live in
`pipeline.local.process`, shared with the Tansu, Redis and registry launchers;
they are re-exported here under their old names.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import pipeline
from pipeline.local.maven import MavenRunner, cache_root, cached_build, find_executable
from pipeline.local.process import (
    DataDirServer,
    free_port,
    log_errors,
    log_tail,
    terminate_process,
    track_process,
    wait_until_ready,
)

__all__ = [
    "KAFKA_VERSION",
    "POM_XML",
    "KafkaBroker",
    "KafkaUnavailable",
    "LocalBroker",
    "MavenRunner",
    "cache_root",
    "ensure_jars",
    "find_pom",
    "free_port",
    "log_errors",
    "log_tail",
    "terminate_process",
    "track_process",
    "wait_for_kafka_metadata",
]

log = logging.getLogger(__name__)

#: The Kafka release the suite and production images are pinned to.
KAFKA_VERSION = "4.1.1"

#: Fallback for an installed package that has no `deploy/kafka/pom.xml` next to it.
#: Keep in sync with that file (a test compares them).
POM_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!--
  The Apache Kafka broker the test suite and `leadstream up` run with the
  machine's Java, fetched from Maven Central (no Docker, no tarball):

    mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=<dir>
    java -cp "<dir>/*" kafka.Kafka server.properties

  pipeline/local/kafka.py runs this and caches the jars under
  ~/.cache/leadstream/kafka-<version>/. Keep it in sync with POM_XML there.
-->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.leadstream</groupId>
  <artifactId>leadstream-kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>

  <properties>
    <kafka.version>4.1.1</kafka.version>
    <!-- The log4j2 release kafka-server 4.1.1 itself depends on. -->
    <log4j2.version>2.24.3</log4j2.version>
  </properties>

  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${kafka.version}</version>
    </dependency>
    <!-- SLF4J 1.7 binding to log4j2 (as the Kafka distribution ships it):
         without a binding the broker logs nothing at all. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${log4j2.version}</version>
    </dependency>
  </dependencies>
</project>
"""

_LIBS = "libs"


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, the jars cannot be fetched, or the broker did not start."""


class LocalBroker(Protocol):
    """What the tests and `leadstream up` need from a broker they start themselves."""

    supports_idempotence: bool
    durable: bool

    @property
    def bootstrap(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: Runs one Maven command line; raises on failure. Injected by tests.
# --------------------------------------------------------------------------- jars


def find_pom() -> Path | None:
    """`deploy/kafka/pom.xml` of the checkout this package runs from, if there is one."""
    repo_root = Path(pipeline.__file__).resolve().parent.parent
    pom = repo_root / "deploy" / "kafka" / "pom.xml"
    return pom if pom.is_file() else None


def _pom_text() -> str:
    pom = find_pom()
    return pom.read_text(encoding="utf-8") if pom is not None else POM_XML


def _java() -> str:
    java = find_executable("java", "JAVA_HOME")
    if java is None:
        raise KafkaUnavailable(
            "Java 17+ is needed to run the real Apache Kafka broker but `java` is not on "
            "PATH (nor in $JAVA_HOME/bin). Install it, e.g. `apt-get install "
            "openjdk-17-jre-headless`."
        )
    return java


def ensure_jars(
    version: str = KAFKA_VERSION,
    cache_dir: Path | None = None,
    *,
    run: MavenRunner | None = None,
) -> Path:
    """Return a directory holding the Kafka broker jars, fetching them only when not cached.

    The jars live in `<cache>/kafka-<version>/libs-<pom hash>/` (see
    `pipeline.local.maven.cached_build`: marker written last, file lock across
    processes). Raises `KafkaUnavailable` when Maven is missing or fails.
    """

    def maven_args(staging: Path, _pom: Path) -> list[str]:
        return ["dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={staging / _LIBS}", f"-Dkafka.version={version}"]

    def collect(staging: Path, out: Path) -> None:
        fetched = staging / _LIBS
        if not any(fetched.glob("kafka_2.13-*.jar")):
            raise KafkaUnavailable(f"Maven ran but left no kafka_2.13 jar in {fetched}")
        for jar in fetched.iterdir():
            jar.rename(out / jar.name)

    return cached_build(
        product=f"kafka-{version}", name=_LIBS, pom_text=_pom_text(), maven_args=maven_args, collect=collect,
        complete=lambda libs: any(libs.glob("kafka_2.13-*.jar")), meta={"version": version},
        error=KafkaUnavailable, what=f"fetching the Apache Kafka {version} jars", timeout_s=900,
        cache_dir=cache_dir, run=run)


# --------------------------------------------------------------------------- broker


def _kafka_uuid() -> str:
    """A cluster id in Kafka's `Uuid.toString()` form (what `StorageTool random-uuid` prints).

    Generated here to save a JVM start; like Kafka, never starts with '-'.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


_LOG4J2 = """\
# Written by leadstream: the broker's own log, appended across restarts.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_path}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
# Per-request and per-partition chatter that buries what matters.
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""


class KafkaBroker(DataDirServer):
    """One Apache Kafka broker+controller (KRaft) on 127.0.0.1 in a child JVM.

    Contracts:
    - `start()` returns only when an admin client can list topics, else raises
      `KafkaUnavailable` with the tail of the broker's log (default 60 s).
    - The data directory is formatted only once; a later `start()` on it keeps
      every topic and record. Ports are picked once and kept for restarts, and
      read back from `server.properties` when an existing data dir is reused.
    - `stop()` is graceful (SIGTERM, then SIGKILL after `stop_timeout`);
      `kill()` is SIGKILL, for crash tests. Both are idempotent.
    - Without a `data_dir` a temporary one is made and removed by `close()`.
    """

    supports_idempotence = True
    durable = True

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        log_level: str = "INFO",
        startup_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        extra_config: Mapping[str, str] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            temp_prefix="leadstream-kafka-",
            port=port,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
        )
        self.controller_port = controller_port
        self.version = version
        self.heap = heap
        self.log_level = log_level
        self.extra_config = dict(extra_config or {})
        self.cache_dir = cache_dir

    # -- paths -----------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:<port>`; valid once `start()` picked the port."""
        return self.address

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        """The broker's log4j log (appended across restarts)."""
        return self.data_dir / "kafka.log"

    @property
    def console_path(self) -> Path:
        """The JVM's stdout/stderr (crashes before log4j starts end up here)."""
        return self.data_dir / "kafka.out"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "logs"

    def ensure_jars(self) -> Path:
        """The cached broker jars for `self.version` (see the module function)."""
        return ensure_jars(self.version, self.cache_dir)

    # -- lifecycle -------------------------------------------------------------

    def start(
        self,
        data_dir: Path | str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
    ) -> None:
        """Start the broker and wait until it serves metadata. Raises `KafkaUnavailable`."""
        if self.running:
            raise RuntimeError(f"Kafka broker already running on {self.bootstrap}")
        if data_dir is not None and Path(data_dir) != self.data_dir:
            if self._owned_dir:  # the caller's directory replaces our unused temp dir
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self._owned_dir = False
            self.data_dir = Path(data_dir)
        self.port = port or self.port
        self.controller_port = controller_port or self.controller_port
        began = time.monotonic()
        java = _java()
        jars = self.ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._choose_ports()
        self._write_config()
        classpath = f"{jars}{os.sep}*"
        if not (self.log_dirs / "meta.properties").exists():
            self._format(java, classpath)
        cmd = [
            java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.config_path),
        ]
        process = self._spawn(cmd, self.console_path, cwd=self.data_dir)
        log.info(
            "starting Kafka %s broker pid %d on %s (data %s)",
            self.version,
            process.pid,
            self.bootstrap,
            self.data_dir,
        )
        self._await_ready(self._wait_for_metadata, began)
        log.info("Kafka broker on %s ready in %.1f s", self.bootstrap, self.startup_seconds)

    # -- internals -------------------------------------------------------------

    def _choose_ports(self) -> None:
        if (self.port is None or self.controller_port is None) and self.config_path.exists():
            props = _read_properties(self.config_path)
            for listener in props.get("listeners", "").split(","):
                name, _, address = listener.partition("://")
                _, _, port = address.rpartition(":")
                if name == "PLAINTEXT" and self.port is None and port.isdigit():
                    self.port = int(port)
                if name == "CONTROLLER" and self.controller_port is None and port.isdigit():
                    self.controller_port = int(port)
        if self.port is None:
            self.port = free_port()
        if self.controller_port is None:
            self.controller_port = free_port(avoid={self.port})

    def _write_config(self) -> None:
        config: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            # 8 instead of 50: the first consumer group waits for these to be created.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Let tests use short consumer sessions so a killed worker's partitions move fast.
            "group.min.session.timeout.ms": "500",
            # A broker restarted after SIGKILL cannot re-register until its old session
            # expires (default 9 s); heartbeats stay on loopback, so a shorter one is safe.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "4000",
            "message.max.bytes": str(2 * 1024 * 1024),
            "replica.fetch.max.bytes": str(2 * 1024 * 1024),
        }
        config.update(self.extra_config)
        lines = ["# Written by leadstream (pipeline/local/kafka.py) on every start."]
        lines += [f"{key}={value}" for key, value in config.items()]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log_path=self.log_path, level=self.log_level), encoding="utf-8"
        )

    def _format(self, java: str, classpath: str) -> None:
        cluster_id = _kafka_uuid()
        cmd = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_path),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise KafkaUnavailable(
                f"formatting Kafka storage in {self.log_dirs} failed (exit "
                f"{done.returncode}):\n{(done.stdout + done.stderr).strip()}"
            )
        log.info("formatted Kafka storage %s (cluster id %s)", self.log_dirs, cluster_id)

    def _wait_for_metadata(self) -> None:
        wait_for_kafka_metadata(
            self.bootstrap,
            timeout=self.startup_timeout,
            process=self.process,
            describe=self._describe_failure,
        )

    def _describe_failure(self) -> str:
        return (
            f"--- {self.log_path} (errors) ---\n{log_errors(self.log_path)}\n"
            f"--- {self.log_path} (tail) ---\n{log_tail(self.log_path)}\n"
            f"--- {self.console_path} (tail) ---\n{log_tail(self.console_path)}"
        )


def wait_for_kafka_metadata(
    bootstrap: str,
    *,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    describe: Callable[[], str] | None = None,
) -> None:
    """Block until a Kafka admin client on `bootstrap` can list topics.

    Raises `KafkaUnavailable` when `timeout` passes or `process` exits first,
    with `describe()` (e.g. a log tail) appended to the message.
    """
    host, _, port_text = bootstrap.rpartition(":")
    port = int(port_text)

    def probe() -> str | None:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError as exc:
            return f"connect: {exc}"
        ok, error = _list_topics(bootstrap)
        return None if ok else error

    wait_until_ready(
        probe,
        what=f"broker on {bootstrap}",
        awaiting="a metadata request",
        timeout=timeout,
        process=process,
        unavailable=KafkaUnavailable,
        describe=describe,
    )


def _list_topics(bootstrap: str) -> tuple[bool, str]:
    from kafka.admin import KafkaAdminClient  # kafka-python; imported late: slow import

    # kafka-python logs every failed connection attempt at ERROR while we poll.
    quiet = logging.getLogger("kafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="leadstream-readiness-probe",
            request_timeout_ms=3000,
            bootstrap_timeout_ms=3000,  # something else on the port must not stall us 30 s
        )
        try:
            admin.list_topics()
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        quiet.setLevel(level)
    return True, ""
