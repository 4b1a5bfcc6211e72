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

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import pipeline
from pipeline.local.maven import MavenRunner, cached_build, find_executable
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


def ensure_registry_app(
    cache_dir: Path | None = None, *, run: MavenRunner | None = None
) -> Path:
    """Return a directory holding the packaged registry (runner jar + lib/), building it once.

    Lives in `<cache>/apicurio-registry-<version>/app-<pom hash>/` (see
    `pipeline.local.maven.cached_build`: marker written last, file lock across processes).
    """

    def collect(staging: Path, out: Path) -> None:
        target = staging / "target"
        if not (target / RUNNER_JAR).is_file():
            raise RegistryUnavailable(f"Maven ran but left no {RUNNER_JAR} in {target}")
        (target / RUNNER_JAR).rename(out / RUNNER_JAR)
        (target / "lib").rename(out / "lib")

    return cached_build(
        product=f"apicurio-registry-{APICURIO_VERSION}", name=_APP,
        pom_text=find_registry_pom().read_text(encoding="utf-8"), maven_args=lambda _staging, _pom: ["package"],
        collect=collect, complete=lambda app: (app / RUNNER_JAR).is_file() and (app / "lib").is_dir(),
        meta={"version": APICURIO_VERSION}, error=RegistryUnavailable,
        what=f"packaging Apicurio Registry {APICURIO_VERSION}", timeout_s=1200, cache_dir=cache_dir, run=run)


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
        java = find_executable("java", "JAVA_HOME")
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
