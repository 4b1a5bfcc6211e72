"""docker-compose.yml names only things that exist: every Leadstream service runs a real CLI command
with known LEADSTREAM_* variables, files mounted from the repository exist, healthchecks hit paths
and ports the process serves, the required secrets are required, Kafka is published on 127.0.0.1
only; the mounted example settings load; scaled workers each get
their own state directory (deploy/worker-slot.sh, run here for real)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .checks import (IMAGE_NAMES, ROOT, check_settings_file, cli_command_exists,
                     dockerfile_exposed_ports, dockerfile_installed_commands, env_var_known, http_paths, listen_port)

COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE = ROOT / "deploy" / "leadstream.example.yaml"
REQUIRED = {"LEADSTREAM_IDENTITY_SALT", "GRAFANA_ADMIN_PASSWORD"}
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${V}, ${V:-default}, ${V:?error} (missing -> ValueError), $$."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and (env[name] or not op or not op.startswith(":")):
            return env[name]
        if op and op.endswith("?"):
            raise ValueError(f"{name}: {arg}")
        if op and op.endswith("-"):
            return arg
        return ""
    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {"LEADSTREAM_IDENTITY_SALT": "test-salt", "GRAFANA_ADMIN_PASSWORD": "pw"} if env is None else env
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return data


def leadstream_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services running the Leadstream image (the sinks only once `leadstream sinks` is here)."""
    return {name: svc for name, svc in compose["services"].items()
            if str(svc.get("image", "")).split(":")[0] in IMAGE_NAMES}


def leadstream_argv(svc: dict[str, Any]) -> list[str]:
    """The `leadstream ...` words a service runs (through an entrypoint wrapper, if any)."""
    entry = svc.get("entrypoint")
    command = list(svc.get("command", []))
    if entry is None:
        return command
    assert command[:1] == ["leadstream"], f"the wrapper {entry} must run `leadstream ...`"
    return command[1:]


def container_env(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def test_the_secrets_are_required() -> None:
    text = COMPOSE.read_text()
    for name in REQUIRED:
        assert re.search(r"\$\{" + name + r":\?[^}]+\}", text), f"{name} must use ${{{name}:?message}}"
        with pytest.raises(ValueError, match=name):
            load_compose({n: "x" for n in REQUIRED - {name}})
    assert "GRAFANA_ADMIN_PASSWORD:-" not in text


def test_services_run_real_commands_with_known_settings() -> None:
    compose = load_compose()
    services = leadstream_services(compose)
    assert {"topics", "collector", "worker", "leads"} <= set(services)
    installed = dockerfile_installed_commands()
    for name, svc in services.items():
        argv = leadstream_argv(svc)
        assert cli_command_exists(argv), f"{name}: `leadstream {' '.join(argv)}` is not a command"
        if "entrypoint" in svc:
            assert svc["entrypoint"][0] in installed, f"{name}: entrypoint {svc['entrypoint'][0]} is not in the image"
        for var in container_env(svc):
            assert env_var_known(var), f"{name}: {var} is no setting (LEADSTREAM_<SECTION>__<FIELD>)"
        for dep in svc.get("depends_on", {}):
            assert dep in compose["services"], f"{name} depends on unknown service {dep}"


def test_every_process_loads_its_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each service's environment plus the mounted example file make valid settings (unknown keys fail)."""
    for name, svc in leadstream_services(load_compose()).items():
        env = container_env(svc)
        settings = check_settings_file(EXAMPLE.read_text(), env, monkeypatch, tmp_path)
        assert settings.identity_salt is not None and settings.identity_salt.get_secret_value() == "test-salt", name
        assert settings.redis.url_value and settings.kafka.bootstrap_servers, name
        assert env["LEADSTREAM_CONFIG"] == "/etc/leadstream/leadstream.yaml"


def test_mounted_files_exist_and_the_config_is_mounted_everywhere() -> None:
    compose = load_compose()
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name} uses undeclared volume {source}"
    for name, svc in leadstream_services(compose).items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}
        assert mounts.get("/etc/leadstream/leadstream.yaml") == "./deploy/leadstream.example.yaml", name


def test_healthchecks_hit_what_each_process_serves() -> None:
    compose = load_compose()
    services = leadstream_services(compose)
    installed = dockerfile_installed_commands()
    exposed = dockerfile_exposed_ports()
    for name in ("collector", "worker", "leads", "sinks"):
        svc = services[name]
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] in installed, f"{name}: healthcheck runs {test[1]}, not in the image"
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\S*)", test[2])
        assert m, test
        argv = leadstream_argv(svc)
        port = listen_port(argv, container_env(svc))
        assert int(m.group(1)) == port and port in exposed, f"{name}: healthcheck port {m.group(1)} != {port}"
        assert m.group(2) in http_paths(argv), f"{name}: the process serves no {m.group(2)}"
    for name, svc in services.items():
        for mapping in svc.get("ports", []):
            container = int(str(mapping).rsplit(":", 1)[1])
            assert container == listen_port(leadstream_argv(svc), container_env(svc)), f"{name}: {mapping}"
    for name, svc in services.items():
        if name not in ("topics",):
            assert "healthcheck" in svc, f"{name} has no healthcheck"


def test_the_sinks_process_is_deployed() -> None:
    svc = load_compose()["services"]["sinks"]
    assert svc["command"] == ["sinks"] and "healthcheck" in svc
    assert "sinks" in leadstream_services(load_compose())


def test_kafka_is_published_on_loopback_only() -> None:
    kafka = load_compose()["services"]["kafka"]
    assert kafka["ports"] and all(str(p).startswith("127.0.0.1:") for p in kafka["ports"])
    assert "HOST://127.0.0.1:29092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_prometheus_scrapes_the_compose_services() -> None:
    compose = load_compose()
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in scrape["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                assert host in compose["services"], f"prometheus job {job['job_name']} scrapes unknown {host}"


def test_scaled_workers_get_their_own_state_dirs(tmp_path: Path) -> None:
    """Three workers on one volume: three slots; a stopped worker's slot is taken by the next one."""
    script = ROOT / "deploy" / "worker-slot.sh"
    root = tmp_path / "data"
    report = tmp_path / "dirs"
    report.mkdir()
    cmd = 'echo "$LEADSTREAM_DATA_DIR" > "$0/$$"; exec sleep 30'

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(script), str(root), "sh", "-c", cmd, str(report)],
                                stderr=subprocess.DEVNULL)

    def dirs(n: int) -> dict[int, str]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = {int(p.name): p.read_text().strip() for p in report.iterdir() if p.read_text().strip()}
            if len(found) >= n:
                return found
            time.sleep(0.05)
        raise AssertionError(f"only {len(list(report.iterdir()))} of {n} workers started")

    procs = [start() for _ in range(3)]
    try:
        first = dirs(3)
        assert sorted(first.values()) == [str(root / f"slot-{i}") for i in range(3)]
        victim = procs[1]
        freed = first[victim.pid]
        victim.kill()
        victim.wait()
        for p in report.iterdir():
            p.unlink()
        procs.append(start())
        again = dirs(1)
        assert list(again.values()) == [freed], "the restarted worker takes the freed slot, not a new one"
        assert not (root / "slot-3").exists()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert os.access(script, os.X_OK)
