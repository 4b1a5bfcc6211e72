"""A real Apicurio Registry on 127.0.0.1, built from Maven Central artifacts.

Apicurio serves the Confluent schema-registry API under `/apis/ccompat/v7`, so
`ConfluentCodec` can be tested against a real registry without Docker.
`ensure_registry_app` packages `io.apicurio:apicurio-registry-app` with
`deploy/registry/pom.xml` once (Maven + the Quarkus plugin; the published jar
is not runnable on its own) into a per-user cache, and `SchemaRegistry` runs
the resulting runner jar in a child JVM with in-memory (H2) storage: every
start is an empty registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pipeline
from pipeline.local.kafka import MavenRunner, _file_lock, _find_executable, cache_root
from pipeline.local.process import DataDirServer, free_port, log_tail, wait_until_ready

__all__ = [
    "APICURIO_VERSION",
    "RegistryUnavailable",
    "SchemaRegistry",
    "ensure_registry_app",
    "find_registry_pom",
]

log = logging.getLogger(__name__)

#: The Apicurio Registry release deploy/registry/pom.xml packages (keep in sync).
APICURIO_VERSION = "2.4.2.Final"

#: The runner jar `mvn package` leaves in target/ (its manifest points at lib/).
RUNNER_JAR = "leadstream-schema-registry-1-runner.jar"

_MARKER = "complete.json"
_APP = "app"


class RegistryUnavailable(RuntimeError):
    """The schema registry could not be built, started or reached."""


def find_registry_pom() -> Path:
    """`deploy/registry/pom.xml` of the checkout this package runs from."""
    repo_root = Path(pipeline.__file__).resolve().parent.parent
    pom = repo_root / "deploy" / "registry" / "pom.xml"
    if not pom.is_file():
        raise RegistryUnavailable(f"{pom} is missing: the registry is built from it")
    return pom


def _run_maven(cmd: Sequence[str]) -> None:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=1200, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RegistryUnavailable(f"Maven did not finish in 1200 s: {' '.join(cmd)}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        raise RegistryUnavailable(
            f"Maven failed (exit {done.returncode}) packaging Apicurio Registry: "
            f"{' '.join(cmd)}\n" + "\n".join(output[-40:])
        )


def ensure_registry_app(
    cache_dir: Path | None = None, *, run: MavenRunner | None = None
) -> Path:
    """Return a directory holding the packaged registry (runner jar + lib/), building it once.

    Lives in `<cache>/apicurio-registry-<version>/app-<pom hash>/`; a
    `complete.json` marker is written only after Maven succeeded and the files
    were moved into place. Serialised across processes by a file lock.
    """
    pom = find_registry_pom()
    pom_text = pom.read_text(encoding="utf-8")
    pom_sha = hashlib.sha256(pom_text.encode("utf-8")).hexdigest()
    root = (cache_dir or cache_root()) / f"apicurio-registry-{APICURIO_VERSION}"
    app = root / f"{_APP}-{pom_sha[:12]}"
    marker = app / _MARKER

    def cached() -> bool:
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            isinstance(meta, dict)
            and meta.get("pom_sha256") == pom_sha
            and (app / RUNNER_JAR).is_file()
            and (app / "lib").is_dir()
        )

    if cached():
        return app
    with _file_lock(root.parent / f"apicurio-registry-{APICURIO_VERSION}.lock"):
        if cached():
            return app
        mvn = _find_executable("mvn", "MAVEN_HOME")
        if run is None and mvn is None:
            raise RegistryUnavailable(
                "Maven is needed once to build Apicurio Registry from Maven Central "
                "but `mvn` is not on PATH. Install it, e.g. `apt-get install maven`."
            )
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            (staging / "pom.xml").write_text(pom_text, encoding="utf-8")
            cmd = [mvn or "mvn", "-q", "-B", "-Dstyle.color=never",
                   "-f", str(staging / "pom.xml"), "package"]
            log.info("building Apicurio Registry %s with Maven into %s", APICURIO_VERSION, app)
            started = time.monotonic()
            (run or _run_maven)(cmd)
            target = staging / "target"
            if not (target / RUNNER_JAR).is_file():
                raise RegistryUnavailable(f"Maven ran but left no {RUNNER_JAR} in {target}")
            if app.exists():  # unmarked: a build that died before its marker
                shutil.rmtree(app)
            out = staging / _APP
            out.mkdir()
            (target / RUNNER_JAR).rename(out / RUNNER_JAR)
            (target / "lib").rename(out / "lib")
            out.rename(app)
            marker.write_text(
                json.dumps({"version": APICURIO_VERSION, "pom_sha256": pom_sha}, indent=1),
                encoding="utf-8",
            )
            log.info("built Apicurio Registry in %.1f s", time.monotonic() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return app


class SchemaRegistry(DataDirServer):
    """Apicurio Registry with in-memory storage on 127.0.0.1, in a child JVM.

    - `start()` returns once the Confluent-compatible API answers, else raises
      `RegistryUnavailable` with the tail of its log (default 120 s).
    - `url` is the Confluent-compatible base URL (`.../apis/ccompat/v7`), what
      `ConfluentCodec` takes.
    - Storage is in memory: a stopped registry forgets every schema.
    - `stop()` is SIGTERM, then SIGKILL after `stop_timeout`; idempotent.
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        heap: str = "384m",
        startup_timeout: float = 120.0,
        stop_timeout: float = 20.0,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            temp_prefix="leadstream-registry-",
            port=port,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
        )
        self.heap = heap
        self.cache_dir = cache_dir

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API's base URL."""
        return f"{self.base_url}/apis/ccompat/v7"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "registry.log"

    def start(self) -> None:
        """Start the registry and wait until it answers. Raises `RegistryUnavailable`."""
        if self.running:
            raise RuntimeError(f"schema registry already running on {self.base_url}")
        began = time.monotonic()
        java = _find_executable("java", "JAVA_HOME")
        if java is None:
            raise RegistryUnavailable(
                "Java 17+ is needed to run Apicurio Registry but `java` is not on PATH "
                "(nor in $JAVA_HOME/bin). Install it, e.g. `apt-get install openjdk-17-jre-headless`."
            )
        app = ensure_registry_app(self.cache_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        cmd = [
            java,
            f"-Xmx{self.heap}",
            "-Djava.awt.headless=true",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={self.port}",
            f"-Djava.io.tmpdir={self.data_dir}",
            "-jar",
            str(app / RUNNER_JAR),
        ]
        process = self._spawn(cmd, self.log_path, cwd=self.data_dir)
        log.info("starting Apicurio Registry pid %d on %s", process.pid, self.base_url)
        self._await_ready(self._wait_ready, began, graceful=True)
        log.info("schema registry on %s ready in %.1f s", self.base_url, self.startup_seconds)

    def _wait_ready(self) -> None:
        def subjects() -> str | None:
            try:
                with urllib.request.urlopen(f"{self.url}/subjects", timeout=2.0) as resp:
                    return None if resp.status == 200 else f"HTTP {resp.status}"
            except (OSError, urllib.error.URLError) as exc:
                return f"{type(exc).__name__}: {exc}"

        wait_until_ready(
            subjects,
            what=f"registry on {self.base_url}",
            awaiting="its Confluent-compatible API",
            timeout=self.startup_timeout,
            process=self.process,
            unavailable=RegistryUnavailable,
            describe=lambda: log_tail(self.log_path),
            interval=0.2,
            first_error="no answer yet",
        )
