"""The whole pipeline as real processes for the integration tests: collector and worker(s) on the real
broker and Redis, the demo reference data and GeoIP databases, fresh topics and app id per test."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
import redis
import yaml

from pipeline.codec import SingleObjectCodec
from pipeline.enrich.redis_store import ReferenceStore
from pipeline.local.kafka import KafkaBroker, free_port
from pipeline.ops.geoip_build import build_demo_databases
from pipeline.ops.importer import import_demo_data
from pipeline.settings import load_settings
from pipeline.topology import create_topics

from .stagekit import WorkerProcess, read_all, wait_until

CODEC = SingleObjectCodec()
DAY = 86_400_000

SITE_RULES: dict[str, Any] = {
    "thresholds": {"fit_min": 50, "intent_min": 40, "identity_level": "company", "min_confidence": 0.6},
    "filters": {"pages_exclude": ["/careers*"], "exclude_sectors": ["government", "public_sector", "education",
                                                                    "military"]},
}


class Pipeline:
    """Collector + worker processes on fresh topics; helpers to send hits and read outputs."""

    def __init__(self, broker: KafkaBroker, redis_url: str, tmp: Path, name: str, *,
                 topics: dict[str, str] | None = None, site_rules: dict[str, Any] | None = None,
                 stages: dict[str, Any] | None = None) -> None:
        self.broker = broker
        self.tmp = tmp
        self.name = name
        geoip = build_demo_databases(tmp / "geoip")
        self.topics = topics or {k: f"{name}-{k.replace('_', '-')}" for k in
                                 ("pixel_events", "bad_events", "visits", "lead_scores", "qualified_leads",
                                  "sink_dead_letter")}
        self.port = free_port()
        self.config = {
            "kafka": {"bootstrap_servers": broker.bootstrap},
            "redis": {"url": redis_url},
            "topics": self.topics,
            "geoip": {k: str(v) for k, v in geoip.items()},
            "collector": {"port": self.port, "trusted_proxies": ["127.0.0.1/32"], "linger_ms": 2},
            "stages": {"app_id": f"{name}-app", "session_timeout_s": 6.0, "heartbeat_interval_s": 1.0,
                       "commit_interval_s": 1.0, "stall_after_s": 10.0, **(stages or {})},
            "identity_salt": "test-salt",
            "data_dir": str(tmp / f"{name}-data"),
            "log_level": "warn",
            "metrics_port": free_port(),
            "sites": [{"site_id": "acme", "allowed_origins": ["http://127.0.0.1:*", "*"], "hosts": ["www.acme.example"],
                       "rules": site_rules if site_rules is not None else SITE_RULES}],
        }
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.settings = load_settings(self.config_path)
        self.processes: list[WorkerProcess] = []

    def create_topics(self) -> None:
        create_topics(self.settings)

    def start_worker(self, name: str = "worker") -> "_CliProcess":
        """A worker process with its own /metrics port (``.metrics_url``)."""
        port = free_port()
        w = _CliProcess(["worker", "-c", str(self.config_path)], self.tmp, f"{self.name}-{name}",
                        env={"LEADSTREAM_METRICS_PORT": str(port)}).start()
        w.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.processes.append(w)
        return w

    def start_collector(self) -> WorkerProcess:
        c = _CliProcess(["collector", "-c", str(self.config_path)], self.tmp, f"{self.name}-collector").start()
        self.processes.append(c)
        wait_until(lambda: _healthy(f"{self.url}/health"), 60, "the collector", c.log_tail)
        return c

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for p in self.processes:
            if p.alive():
                p.terminate()

    def logs(self) -> str:
        return "\n\n".join(f"--- {p.log_path.name}\n{p.log_tail(60)}" for p in self.processes)

    # -- reading outputs --------------------------------------------------------------------
    def records(self, logical: str) -> list[Any]:
        return read_all(self.broker.bootstrap, self.topics[logical])

    def decoded(self, logical: str) -> list[dict[str, Any]]:
        return [CODEC.decode(r.value) for r in self.records(logical)]

    def leads(self) -> list[dict[str, Any]]:
        return self.decoded("qualified_leads")

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
        wait_until(predicate, timeout_s, what, self.logs)


class _CliProcess(WorkerProcess):
    """A ``leadstream`` command as a process."""

    def __init__(self, args: list[str], workdir: Path, name: str, env: dict[str, str] | None = None) -> None:
        super().__init__("pipeline.cli", {}, workdir, name)
        self.args = args
        self.env = env or {}
        self.metrics_url = ""

    def records_applied(self) -> float:
        """The worker's leadstream_stage_records_total summed over stages (0 until it serves metrics)."""
        try:
            text = httpx.get(self.metrics_url, timeout=1).text
        except httpx.HTTPError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("leadstream_stage_records_total{"))

    def start(self) -> "_CliProcess":
        import os
        import subprocess
        import sys

        from .stagekit import REPO
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *self.args], cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(REPO), **self.env})
        return self


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def load_reference_data(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    import_demo_data(ReferenceStore.from_url(redis_url))


class Visitor:
    """A browser on one IP sending the pixel's own protocol (POST /collect)."""

    def __init__(self, pipeline: Pipeline, ip: str, ua: str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) "
                 "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                 visitor_id: str | None = None) -> None:
        self.p = pipeline
        self.ip = ip
        self.ua = ua
        self.visitor_id = visitor_id or str(uuid.uuid4())
        self.client = httpx.Client(base_url=pipeline.url, timeout=10)

    def send(self, events: list[dict[str, Any]], sent_at: int) -> httpx.Response:
        body = {"site_id": "acme", "visitor_id": self.visitor_id, "sent_at": sent_at, "events": events}
        resp = self.client.post("/collect", content=json.dumps(body),
                                headers={"X-Forwarded-For": self.ip, "User-Agent": self.ua,
                                         "Accept-Language": "en-US,en;q=0.9", "Content-Type": "text/plain"})
        assert resp.status_code in (200, 204), resp.text
        return resp

    def browse(self, start: int, paths: list[str], step_ms: int = 40_000, pings: int = 2) -> int:
        """Page views (with engaged-time pings) at event times from ``start``; returns the last time."""
        t = start
        events: list[dict[str, Any]] = []
        for path in paths:
            events.append({"type": "page_view", "url": f"https://www.acme.example{path}", "ts": t,
                           "title": path.strip("/") or "home", "referrer": "https://www.google.com/",
                           "screen": "1920x1080", "viewport": "1440x900"})
            for i in range(pings):
                t += 10_000
                events.append({"type": "page_ping", "url": f"https://www.acme.example{path}", "ts": t,
                               "engaged_ms": 10_000, "scroll_depth": min(100, 40 + 30 * i)})
            t += step_ms
        self.send(events, sent_at=t)
        return t

    def identify(self, t: int, email: str) -> None:
        self.send([{"type": "identify", "email": email, "ts": t, "traits": {"title": "VP Marketing"}}], sent_at=t)


def now_ms() -> int:
    return int(time.time() * 1000)
