"""What a deployment file may name, checked against the project itself: CLI commands (the typer
app), settings environment variables (pydantic-settings naming), HTTP paths each process serves,
files the image carries. Shared by the docker-compose and the Kubernetes tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main
from pydantic import BaseModel
from starlette.routing import Route

from pipeline.cli import app as cli_app
from pipeline.settings import CONFIG_ENV, Settings

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENV_PREFIX = "LEADSTREAM_"
#: Variables the code reads besides the settings fields.
OTHER_ENV = {CONFIG_ENV, "LEADSTREAM_SCHEMAS_DIR"}
#: The image the Dockerfile builds, as compose and the manifests name it.
IMAGE_NAMES = {"leadstream"}


def cli_command_exists(words: list[str]) -> bool:
    """True when ``leadstream WORDS...`` names a command (options after it are not checked)."""
    command: Any = typer.main.get_command(cli_app)
    for word in words:
        if word.startswith("-"):
            break
        sub = getattr(command, "commands", None)
        if sub is None:
            break  # an argument of a leaf command
        if word not in sub:
            return False
        command = sub[word]
    # a group runs only if it has its own callback without a subcommand (`leadstream sinks`)
    return getattr(command, "commands", None) is None or bool(getattr(command, "invoke_without_command", False))


def settings_field_for_env(name: str) -> tuple[type[BaseModel], str] | None:
    """The (model, field) a LEADSTREAM_<SECTION>__<FIELD> variable sets, or None."""
    if not name.startswith(ENV_PREFIX):
        return None
    model: type[BaseModel] = Settings
    parts = name[len(ENV_PREFIX):].lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if i == len(parts) - 1:
            return model, part
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None


def env_var_known(name: str) -> bool:
    return name in OTHER_ENV or settings_field_for_env(name) is not None


def dockerfile_installed_commands() -> set[str]:
    """Executables the image adds besides ``leadstream``: the targets of its COPY lines into /usr/local/bin."""
    found = set()
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"COPY\s+(?:--\S+\s+)*(\S+)\s+/usr/local/bin/(\S+)$", line.strip())
        if m:
            assert (ROOT / m.group(1)).is_file(), f"Dockerfile copies a missing file: {m.group(1)}"
            found.add(m.group(2))
    return found


def dockerfile_exposed_ports() -> set[int]:
    ports: set[int] = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("EXPOSE"):
            ports.update(int(p.split("/")[0]) for p in line.split()[1:])
    return ports


def http_paths(command: list[str]) -> set[str]:
    """Paths the process started by ``leadstream COMMAND`` serves (exact routes only)."""
    if command[:1] == ["collector"]:
        from pipeline.collector import create_app
        routes = create_app(Settings()).routes
    elif command[:2] == ["leads", "serve"]:
        from pipeline.leads.api import create_api
        from pipeline.leads.store import LeadsView
        routes = create_api(Settings(), LeadsView.from_url("redis://127.0.0.1:1/0")).routes
    elif command[:1] == ["worker"]:
        return {"/metrics"}  # prometheus_client's start_http_server (metrics_port)
    elif command[:1] == ["sinks"]:
        return {"/metrics", "/health"}  # pipeline/sinks/server.py (sinks.port)
    else:
        return set()
    return {r.path for r in routes if isinstance(r, Route) and "{" not in r.path}


def listen_port(command: list[str], env: dict[str, str]) -> int | None:
    """The port ``leadstream COMMAND`` listens on given its environment (settings defaults otherwise)."""
    settings = Settings.model_construct()
    if command[:1] == ["collector"]:
        return int(env.get("LEADSTREAM_COLLECTOR__PORT", settings.collector.port))
    if command[:2] == ["leads", "serve"]:
        return int(env.get("LEADSTREAM_LEADS__PORT", settings.leads.port))
    if command[:1] == ["worker"]:
        return int(env.get("LEADSTREAM_METRICS_PORT", settings.metrics_port))
    if command[:1] == ["sinks"]:
        default = getattr(getattr(settings, "sinks", None), "port", None)
        return int(env.get("LEADSTREAM_SINKS__PORT", default or 0))
    return None


def check_settings_file(text: str, env: dict[str, str], monkeypatch: Any, tmp_path: Path) -> Settings:
    """Load ``text`` as leadstream.yaml under ``env`` exactly as a process would (fails on any unknown key)."""
    from pipeline.settings import load_settings
    for name in list(__import__("os").environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name != CONFIG_ENV:
            monkeypatch.setenv(name, value)
    path = tmp_path / "leadstream.yaml"
    path.write_text(text)
    return load_settings(path)
