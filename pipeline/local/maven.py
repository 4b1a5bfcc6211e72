"""Building something once with Maven into the per-user cache (the Kafka jars, the schema registry).

:func:`cached_build` runs Maven on a pom in a staging directory, moves what it
produced to ``<cache>/<product>/<name>-<pom hash>/`` and writes a
``complete.json`` marker last, so a changed pom gets a fresh directory (never
pulled from under a running process) and an interrupted build runs again. A
file lock serialises concurrent builders across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Runs a Maven command line (tests pass a fake). Raises on failure.
MavenRunner = Callable[[Sequence[str]], None]

MARKER = "complete.json"


def cache_root() -> Path:
    """`$LEADSTREAM_CACHE`, else `$XDG_CACHE_HOME/leadstream`, else `~/.cache/leadstream`."""
    explicit = os.environ.get("LEADSTREAM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "leadstream"


def find_executable(name: str, home_var: str | None = None) -> str | None:
    """``$<home_var>/bin/<name>`` when set and executable, else ``name`` on PATH."""
    if home_var:
        home = os.environ.get(home_var)
        if home:
            candidate = Path(home) / "bin" / name
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which(name)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def maven_runner(error: type[Exception], what: str, timeout_s: float) -> MavenRunner:
    """A runner that raises ``error`` with the tail of Maven's output when it fails or times out."""

    def run(cmd: Sequence[str]) -> None:
        try:
            done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise error(f"Maven did not finish in {timeout_s:.0f} s: {' '.join(cmd)}") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()
            raise error(f"Maven failed (exit {done.returncode}) {what}: {' '.join(cmd)}\n"
                        + "\n".join(output[-40:]))

    return run


def cached_build(*, product: str, name: str, pom_text: str, maven_args: Callable[[Path, Path], list[str]],
                 collect: Callable[[Path, Path], None], complete: Callable[[Path], bool],
                 meta: Mapping[str, Any], error: type[Exception], what: str, timeout_s: float,
                 cache_dir: Path | None = None, run: MavenRunner | None = None) -> Path:
    """The directory ``<cache>/<product>/<name>-<pom hash>``, built with Maven when not cached.

    - ``maven_args(staging, pom)``: Maven's arguments after ``mvn -q -B -f POM``;
    - ``collect(staging, out)``: moves what Maven produced into the new directory ``out``
      (raises ``error`` when something is missing);
    - ``complete(dir)``: whether a marked directory really holds the result;
    - ``meta``: written to the marker with the pom's hash.
    """
    pom_sha = hashlib.sha256(pom_text.encode("utf-8")).hexdigest()
    root = (cache_dir or cache_root()) / product
    target = root / f"{name}-{pom_sha[:12]}"
    marker = target / MARKER

    def cached() -> bool:
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (isinstance(recorded, dict) and recorded.get("pom_sha256") == pom_sha
                and all(recorded.get(k) == v for k, v in meta.items()) and complete(target))

    if cached():
        return target
    with file_lock(root.parent / f"{product}.lock"):
        if cached():  # another process built it while we waited for the lock
            return target
        mvn = find_executable("mvn", "MAVEN_HOME")
        if run is None and mvn is None:
            raise error(f"Maven is needed once for {what} from Maven Central but `mvn` is not on PATH. "
                        "Install it, e.g. `apt-get install maven`.")
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            pom = staging / "pom.xml"
            pom.write_text(pom_text, encoding="utf-8")
            cmd = [mvn or "mvn", "-q", "-B", "-Dstyle.color=never", "-f", str(pom), *maven_args(staging, pom)]
            log.info("%s with Maven into %s", what, target)
            started = time.monotonic()
            (run or maven_runner(error, what, timeout_s))(cmd)
            out = staging / "out"
            out.mkdir()
            collect(staging, out)
            if target.exists():  # unmarked: a build that died before its marker; nobody uses it
                shutil.rmtree(target)
            out.rename(target)
            marker.write_text(json.dumps({**meta, "pom_sha256": pom_sha}, indent=1), encoding="utf-8")
            log.info("%s: done in %.1f s", what, time.monotonic() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
