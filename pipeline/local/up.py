"""`leadstream up`: everything on one machine, on embedded defaults unless Kafka and Redis are configured.

Starts (in order) Redis, a broker, the topics, the stream worker and the
collector, each stage as its own process so a newcomer sees the same shape as
production; prints the pixel snippet and the demo page URL; stops everything
in reverse order on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from ..settings import Settings, SiteSettings, with_overrides
from ..topology import create_topics
from .kafka import KafkaBroker, free_port, log_tail
from .redis import EmbeddedRedis, RedisServer, find_system_redis_server
from .tansu import EmbeddedBroker

log = logging.getLogger(__name__)

DEMO_SITE = "demo"
EMBEDDED_WARNING = (
    "Using the embedded Tansu broker: data lives in memory only and is gone when `up` stops, and it has no "
    "idempotent producer. It is for trying Leadstream out. Pass --real-kafka (needs Java and Maven) to run a real "
    "Apache Kafka broker whose data survives restarts, or set kafka.bootstrap_servers.")


class Stack:
    """The processes `up` started, stopped in reverse order."""

    def __init__(self) -> None:
        self.stoppers: list[tuple[str, Any]] = []
        self.children: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def stop(self) -> None:
        for name, proc, _ in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, _ in reversed(self.children):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 30 s; killing it", name)
                proc.kill()
        for name, stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %s failed", name)


def prepare(settings: Settings, stack: Stack, real_kafka: bool = False) -> Settings:
    """Start what settings do not point at; return settings that point at everything."""
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    changes: dict[str, Any] = {}
    if not settings.redis.url:
        server: RedisServer = RedisServer() if find_system_redis_server() else EmbeddedRedis()
        server.start()
        stack.stoppers.append(("redis", server.close))
        changes["redis"] = {"url": server.url}
        print(f"redis      {server.url} (embedded, in memory)")
    kafka = settings.kafka.model_dump()
    stages = settings.stages.model_dump()
    if not settings.kafka.bootstrap_servers:
        if real_kafka:
            broker: Any = KafkaBroker(data_dir / "kafka")
            print("kafka      starting a real Apache Kafka broker (first run fetches it from Maven Central)...")
        else:
            broker = EmbeddedBroker(log_path=data_dir / "tansu.log")
            print(f"warning    {EMBEDDED_WARNING}")
            kafka["idempotence"] = False
            # Tansu's group joins wait for half the session timeout: keep it short
            stages.update(session_timeout_s=6.0, heartbeat_interval_s=1.0)
        broker.start()
        stack.stoppers.append(("kafka", broker.close))
        kafka["bootstrap_servers"] = broker.bootstrap
        print(f"kafka      {broker.bootstrap}")
    changes["kafka"] = kafka
    changes["stages"] = stages
    if not settings.sites:
        changes["sites"] = [SiteSettings(site_id=DEMO_SITE, name="Demo site", allowed_origins=["*"],
                                         capture_forms=True).model_dump()]
    collector = settings.collector.model_dump()
    if collector["port"] == 0:
        collector["port"] = free_port()
    changes["collector"] = collector
    effective = with_overrides(settings, **changes)
    create_topics(effective)
    return effective


def write_config(settings: Settings, path: Path) -> Path:
    """The effective settings as YAML for the child processes (secrets included: the file is 0600)."""
    data = settings.model_dump(mode="python")

    def plain(value: Any) -> Any:
        if hasattr(value, "get_secret_value"):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
            return value.value
        if not isinstance(value, (int, float, str, bool, type(None))):
            return str(value)
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(plain(data), fh, sort_keys=False)
    return path


def spawn(stack: Stack, name: str, args: list[str], config: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, "LEADSTREAM_CONFIG": str(config)}
    for key in list(env):
        if key.startswith("LEADSTREAM_") and key != "LEADSTREAM_CONFIG" and key != "LEADSTREAM_SCHEMAS_DIR":
            env.pop(key)  # the effective config file already holds them
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack.children.append((name, proc, log_path))
    return proc


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} process exited:\n{log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s:\n{log_tail(log_path)}")


def run_up(settings: Settings, demo: bool = False, real_kafka: bool = False) -> None:
    """Run the whole stack until Ctrl-C. Blocks."""
    stack = Stack()
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        effective = prepare(settings, stack, real_kafka=real_kafka)
        data_dir = Path(effective.data_dir).resolve()
        if demo:
            from ..ops.demo import prepare_demo
            effective = prepare_demo(effective, data_dir / "demo")
        config = write_config(effective, data_dir / "up.yaml")
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        worker = spawn(stack, "worker", ["worker"], config, logs)
        collector = spawn(stack, "collector", ["collector"], config, logs)
        base = effective.collector.public_url or f"http://{effective.collector.host}:{effective.collector.port}"
        wait_http(f"{base}/health", collector, logs / "collector.log")
        from ..collector.app import snippet
        site = effective.sites[0].site_id
        print(f"collector  {base}  (metrics: {base}/metrics)")
        print(f"logs       {logs}/")
        print(f"\nPaste this into the pages of site {site!r}:\n\n{snippet(effective, site)}\n")
        print(f"Demo page with the pixel:  {base}/demo/{site}\n")
        if demo:
            from ..ops.demo import run_simulator
            sim = spawn(stack, "simulator", ["demo-traffic", "--url", base], config, logs)
            print(f"Simulated visitors are arriving ({logs}/simulator.log); qualified leads follow within a minute:")
            print(f"  leadstream tail qualified-leads -c {config}\n")
            del run_simulator, sim
        print("Ctrl-C stops everything.")
        while True:
            for name, proc, log_path in stack.children:
                if proc.poll() is not None and name != "simulator":
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_tail(log_path)}")
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping...")
    finally:
        stack.stop()
