"""The dashboard and the alerts, proven on a real Prometheus (Debian's ``prometheus`` package).

A Prometheus server scrapes a running collector and worker fed with pixel traffic, with the
project's own alert rules (``deploy/prometheus/alerts.yml``). Through its HTTP API the test
checks that every query of every panel of ``deploy/grafana/dashboards/*.json`` returns data and
that every alert rule evaluates without error; ``promtool check config`` and ``check rules``
pass on ``deploy/prometheus/``. The panels' queries over the run are drawn into one PNG
(``dashboard.png`` in ``$LEADSTREAM_ARTIFACTS``, else ``tests/artifacts/``) so a reviewer sees
the dashboard's content without Grafana.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from pipeline.local.kafka import free_port

from .pipeline_harness import DAY, Pipeline, Visitor, now_ms
from .stagekit import REPO, wait_until

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ARTIFACTS = Path(os.environ.get("LEADSTREAM_ARTIFACTS") or REPO / "tests" / "artifacts")


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel of every provisioned dashboard."""
    out: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", ()):
                out.append((panel["title"], target["expr"]))
    return out


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/bootstrap --test installs Debian's prometheus package",
                    pytrace=False)
    return path


def test_promtool_accepts_the_shipped_config_and_rules(tmp_path: Path) -> None:
    # prometheus.yml names its rule file relatively, as it is mounted in docker-compose.yml
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        done = subprocess.run([_promtool(), *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def catalogued_series() -> set[str]:
    """Every series name the metrics catalogue (pipeline/metrics.py) can export."""
    import pipeline.metrics as catalogue
    from prometheus_client.metrics import MetricWrapperBase

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "summary": ("_sum", "_count", "")}
    out: set[str] = set()
    for value in vars(catalogue).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                out.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return out


def test_every_dashboard_names_only_catalogued_metrics() -> None:
    known = catalogued_series()
    for title, expr in panel_queries():
        for name in re.findall(r"\b(leadstream_[a-z_]+)", expr):
            assert name in known, f"panel {title!r} queries {name}, which pipeline/metrics.py does not declare"
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            for name in re.findall(r"\b(leadstream_[a-z_]+)", rule["expr"]):
                assert name in known, f"alert {rule['alert']} uses {name}, which pipeline/metrics.py does not declare"


class Prometheus:
    """A Prometheus server of the test's own, scraping ``targets`` every second."""

    def __init__(self, workdir: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = workdir
        shutil.copy(ALERTS, workdir / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                               for job, hosts in targets.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Prometheus":
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: scripts/bootstrap --test installs Debian's prometheus package",
                        pytrace=False)
        self.proc = subprocess.Popen(
            [binary, "--config.file=prometheus.yml", f"--storage.tsdb.path={self.dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], cwd=self.dir, stdout=self.log,
            stderr=subprocess.STDOUT)
        wait_until(self._ready, 60, "Prometheus", lambda: (self.dir / "prometheus.log").read_text()[-3000:])
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        resp = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def prometheus(pipeline: Pipeline, tmp_path: Path) -> Iterator[Prometheus]:
    worker = pipeline.processes[0]
    worker_target = worker.metrics_url.removeprefix("http://").removesuffix("/metrics")
    prom = Prometheus(tmp_path, {"leadstream-collector": [f"127.0.0.1:{pipeline.port}"],
                                 "leadstream-worker": [worker_target]}).start()
    try:
        yield prom
    finally:
        prom.stop()


def _traffic(pipeline: Pipeline, wave: int) -> None:
    """Buyers at two demo companies (leads, one identified), an ISP reader, the government, a crawler,
    and one malformed hit."""
    now = now_ms()
    for i, ip in enumerate(("203.0.113.5", "203.0.113.5", "203.0.113.20")):  # Brightpath twice, Northwind
        v = Visitor(pipeline, ip)
        t = v.browse(now - 3 * DAY, ["/", "/product", "/pricing"])
        t = v.browse(max(t, now - 2 * DAY), ["/pricing", "/demo", "/customers"])
        t = v.browse(max(t, now - 60_000), ["/pricing", "/contact"])
        if i == 0:
            v.identify(t + 1000, f"buyer{wave}@brightpath.example")
    Visitor(pipeline, "198.51.100.20").browse(now - 30_000, ["/blog/post"])   # Example Broadband (ISP)
    Visitor(pipeline, "203.0.113.165").browse(now - 25_000, ["/pricing"])     # a government department
    Visitor(pipeline, "203.0.113.6", ua="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
            ).browse(now - 20_000, ["/", "/pricing"])
    httpx.post(f"{pipeline.url}/collect", content=b"{not json", headers={"Content-Type": "text/plain"})


#: Panels that stay at zero in a healthy run: they must answer, but need not move.
QUIET = {"Waiting for the broker", "Replayed, gap and stall repairs (15 m)", "Worker restarts (1 h)",
         "Stage bad rows/s by type"}


def test_every_panel_returns_data_and_every_alert_rule_evaluates(pipeline: Pipeline,
                                                                 prometheus: Prometheus) -> None:
    wait_until(lambda: len([t for t in prometheus.api("targets")["activeTargets"] if t["health"] == "up"]) == 2,
               30, "Prometheus to scrape the collector and the worker", lambda: str(prometheus.api("targets")))
    started = time.time()
    for wave in range(4):  # spread over a few scrapes, so every rate has points of change
        _traffic(pipeline, wave)
        time.sleep(2.5)
    pipeline.wait_for(lambda: len(pipeline.decoded("lead_scores")) >= 3, "lead scores from the traffic")
    queries = panel_queries()
    assert queries, f"no dashboard panels found in {DASHBOARDS}"

    missing: list[str] = []

    def all_answer() -> bool:
        missing.clear()
        for title, expr in queries:
            values = [float(v) for series in prometheus.api(
                "query_range", query=expr, start=started, end=time.time(), step=1)["result"]
                for _, v in series["values"]]
            real = [v for v in values if v == v]  # not NaN
            if not real or (title not in QUIET and not any(real)):
                missing.append(f"{title}: {expr} -> {values[-5:]}")
        return not missing

    wait_until(all_answer, 90, "every dashboard query to return data",
               lambda: "panels without data:\n" + "\n".join(missing))

    shipped = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(not r["lastEvaluation"].startswith("0001") for r in rules) else []

    wait_until(lambda: bool(evaluated()), 30, "every rule to be evaluated", lambda: str(prometheus.api("rules")))
    rules = evaluated()
    assert sorted(r["name"] for r in rules) == sorted(shipped)
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

    # Nothing is wrong in this run: no alert may be pending or firing.
    active = [a for a in prometheus.api("alerts")["alerts"]]
    assert not active, active

    # each /metrics page passes Prometheus's own lint
    for url in (f"{pipeline.url}/metrics", pipeline.processes[0].metrics_url):
        page = httpx.get(url, timeout=5).text
        lint = subprocess.run([_promtool(), "check", "metrics"], input=page, capture_output=True, text=True)
        assert lint.returncode == 0, f"{url}: {lint.stdout}{lint.stderr}"

    _render(prometheus, queries, started, time.time(), ARTIFACTS / "dashboard.png")


def _render(prometheus: Prometheus, queries: list[tuple[str, str]], start: float, end: float, path: Path) -> None:
    """Every panel's query over the run, one small plot each, into one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = (len(queries) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5, rows * 3.2), squeeze=False)
    for ax, (title, expr) in zip(axes.flat, queries):
        data = prometheus.api("query_range", query=expr, start=start, end=end, step=1)
        for series in data["result"]:
            xs = [float(t) - start for t, _ in series["values"]]
            ys = [float(v) for _, v in series["values"]]
            label = ",".join(f"{k}={v}" for k, v in series["metric"].items() if k not in ("job", "instance"))
            ax.plot(xs, ys, label=label[:40] or "value")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if data["result"]:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(queries):]:
        ax.axis("off")
    fig.suptitle("Leadstream dashboard queries over the test run (x: seconds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    assert path.stat().st_size > 10_000
