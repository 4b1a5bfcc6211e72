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
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

from pipeline.local.kafka import KafkaBroker, free_port
from pipeline.local.redis import RedisServer
from pipeline.settings import load_settings

from .pipeline_harness import DAY, Pipeline, Visitor, _CliProcess, _healthy, load_reference_data, now_ms
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
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([_promtool(), *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_promtool_test_that_makes_it_fire() -> None:
    """alerts_test.yml holds, for every rule of alerts.yml, a case where it fires (and quiet neighbours)."""
    shipped = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    firing = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert shipped == firing, f"alerts without a firing test: {shipped - firing}; tests of no alert: {firing - shipped}"


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


class Observed:
    """The pipeline's collector and worker, with ``leadstream sinks`` (a JSONL sink) and ``leadstream leads
    serve`` beside them, every process measuring each second (``metrics_interval_s``)."""

    def __init__(self, pipeline: Pipeline, sinks_port: int, leads_port: int) -> None:
        self.pipeline = pipeline
        self.sinks_port = sinks_port
        self.leads_port = leads_port

    @property
    def targets(self) -> dict[str, str]:
        """Prometheus job -> the host:port of its process's /metrics."""
        worker = self.pipeline.processes[0].metrics_url.removeprefix("http://").removesuffix("/metrics")
        return {"leadstream-collector": f"127.0.0.1:{self.pipeline.port}", "leadstream-worker": worker,
                "leadstream-sinks": f"127.0.0.1:{self.sinks_port}", "leadstream-leads": f"127.0.0.1:{self.leads_port}"}


def observed_pipeline(kafka_broker: KafkaBroker, redis_url: str, tmp: Path, name: str,
                      **config: Any) -> Pipeline:
    """A Pipeline (not started) whose config also carries ``config``."""
    load_reference_data(redis_url)
    p = Pipeline(kafka_broker, redis_url, tmp, name)
    p.config.update(config)
    p.config_path.write_text(yaml.safe_dump(p.config))
    p.settings = load_settings(p.config_path)
    p.create_topics()
    return p


@pytest.fixture
def observed(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
             unique_name: Callable[[str], str]) -> Iterator[Observed]:
    name = unique_name("obs")
    sinks_port, leads_port = free_port(), free_port()
    p = observed_pipeline(kafka_broker, redis_server.url, tmp_path, name, metrics_interval_s=1.0,
                          sinks={"group_id": f"{name}-sinks", "port": sinks_port, "namespace": f"{name}:sinks"},
                          leads={"port": leads_port})
    p.config["sites"][0]["sinks"] = [{"type": "jsonl", "name": "jsonl", "path": str(tmp_path / "leads.jsonl")}]
    p.config_path.write_text(yaml.safe_dump(p.config))
    try:
        p.start_worker()
        others = {port: _CliProcess(args, tmp_path, f"{name}-{args[0]}").start()   # they start meanwhile
                  for args, port in ((["sinks", "-c", str(p.config_path)], sinks_port),
                                     (["leads", "-c", str(p.config_path), "serve"], leads_port))}
        p.processes.extend(others.values())
        p.start_collector()
        for port, proc in others.items():
            wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health"), 60, proc.log_path.stem, proc.log_tail)
        yield Observed(p, sinks_port, leads_port)
    finally:
        p.stop()


@pytest.fixture
def prometheus(observed: Observed, tmp_path: Path) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path, {job: [target] for job, target in observed.targets.items()}).start()
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
         "Worker rebalances (1 h)", "Waiting for Redis or the broker by stage",
         "Tries failed on an unreachable dependency/s by stage",
         "Visitor: bad rows/s by type", "Account: bad rows/s by type",
         "Visitor: lag by partition (records not applied)", "Account: lag by partition (records not applied)",
         "Consumer lag by consumer and topic", "Consumer lag by partition (top 10)", "Failed probes/s by dependency",
         "Failed attempts and retries/s by sink", "Dead-lettered leads (1 h) by sink",
         "Queue depth and scheduled by sink", "Skipped leads/s by reason", "Sinks lag on qualified-leads",
         "In-doubt deliveries after a crash or timeout, by resolution"}


def test_every_panel_returns_data_and_every_alert_rule_evaluates(observed: Observed,
                                                                 prometheus: Prometheus) -> None:
    pipeline = observed.pipeline
    wait_until(lambda: len([t for t in prometheus.api("targets")["activeTargets"] if t["health"] == "up"]) == 4,
               30, "Prometheus to scrape the collector, worker, sinks and leads API",
               lambda: str(prometheus.api("targets")))
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

    # every consumer reports its lag, every process that uses Redis and the broker probes both, and they answer
    def instant(expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {tuple(r["metric"][k] for k in labels): float(r["value"][1])
                for r in prometheus.api("query", query=expr)["result"]}

    assert set(instant("count by (consumer) (leadstream_consumer_lag_records)", "consumer")) == {
        ("visitor",), ("account",), ("sinks",), ("leads",)}
    # once the traffic is through, every consumer has caught up: lag 0 on every partition (an off-by-one
    # in "next offset to process" would leave 1 per partition)
    wait_until(lambda: set(instant("max by (consumer) (leadstream_consumer_lag_records)", "consumer").values())
               == {0.0}, 30, "every consumer to catch up",
               lambda: str(instant("leadstream_consumer_lag_records", "consumer", "topic", "partition")))
    probes = instant("min by (job, dependency) (leadstream_dependency_up)", "job", "dependency")
    assert set(probes) == {(job, dep) for job in ("leadstream-worker", "leadstream-sinks", "leadstream-leads")
                           for dep in ("redis", "broker")}, probes
    assert all(v == 1 for v in probes.values()), probes

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
    for url in [f"http://{target}/metrics" for target in observed.targets.values()]:
        page = httpx.get(url, timeout=5).text
        lint = subprocess.run([_promtool(), "check", "metrics"], input=page, capture_output=True, text=True)
        assert lint.returncode == 0, f"{url}: {lint.stdout}{lint.stderr}"

    _render(prometheus, queries, started, time.time(), ARTIFACTS / "dashboard.png")


def _render(prometheus: Prometheus, queries: list[tuple[str, str]], start: float, end: float, path: Path) -> None:
    """Every panel's query over the run, one small plot each, into one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[str]] = {}   # title -> its queries (a panel's targets share one plot)
    for title, expr in queries:
        panels.setdefault(title, []).append(expr)
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5, rows * 3.2), squeeze=False)
    for ax, (title, exprs) in zip(axes.flat, panels.items()):
        plotted = False
        for n, expr in enumerate(exprs):
            data = prometheus.api("query_range", query=expr, start=start, end=end, step=1)
            for series in data["result"]:
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                label = ",".join(f"{k}={v}" for k, v in series["metric"].items() if k not in ("job", "instance"))
                ax.plot(xs, ys, label=(f"{chr(65 + n)}: " if len(exprs) > 1 else "") + (label[:40] or "value"))
                plotted = True
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if plotted:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Leadstream dashboard queries over the test run (x: seconds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    assert path.stat().st_size > 10_000


def _pixel_requests_by_pid(directory: Path) -> dict[int, float]:
    """What each collector worker wrote to the multiprocess directory: its GET /pixel.js count, by pid."""
    from prometheus_client.mmap_dict import MmapedDict

    out: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            name, sample, labels, _ = json.loads(key)
            if sample == "leadstream_collector_requests_total" and labels.get("endpoint") == "pixel.js":
                out[pid] = out.get(pid, 0.0) + value
    return out


def _previous_run(directory: Path, pid: int = 1) -> None:
    """A previous run's metric file in ``directory``: 1000 GET /pixel.js counted by process ``pid``."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    name = "leadstream_collector_requests_total"
    values = MmapedDict(str(directory / f"counter_{pid}.db"))
    values.write_value(mmap_key(name, name, ["endpoint", "status"], ["pixel.js", "200"], "HTTP requests"), 1000.0, 0)
    values.close()


def _scraped_pixel_requests(url: str) -> float:
    page = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
               if line.startswith("leadstream_collector_requests_total{") and 'endpoint="pixel.js"' in line)


@pytest.mark.parametrize("metrics_dir", ["given", "temporary"])
def test_one_scrape_of_a_multi_worker_collector_counts_the_hits_of_every_worker(
        kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
        unique_name: Callable[[str], str], metrics_dir: str) -> None:
    """collector.workers: 2 — hits spread over both processes; any one scrape (answered by either) counts
    them all, and a worker that dies keeps its counts while its gauges go (prometheus-client multiprocess).
    The directory is PROMETHEUS_MULTIPROC_DIR when given (emptied at start), else a temporary one."""
    from concurrent.futures import ThreadPoolExecutor

    p = observed_pipeline(kafka_broker, redis_server.url, tmp_path, unique_name("mp"))
    p.config["collector"]["workers"] = 2
    p.config_path.write_text(yaml.safe_dump(p.config))
    temp = tmp_path / "tmp"
    temp.mkdir()
    if metrics_dir == "given":
        directory = tmp_path / "collector-metrics"
        directory.mkdir()
        _previous_run(directory)
        env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    else:
        env = {"TMPDIR": str(temp)}
    collector = _CliProcess(["collector", "-c", str(p.config_path)], tmp_path, "mp-collector", env=env).start()
    p.processes.append(collector)
    try:
        wait_until(lambda: _healthy(f"{p.url}/health"), 60, "the collector", collector.log_tail)
        if metrics_dir == "temporary":
            [directory] = temp.glob("leadstream-collector-metrics-*")
        hits = 0

        def hit(_: int) -> int:
            with httpx.Client() as client:  # a connection of its own: the kernel hands it to either worker
                return client.get(f"{p.url}/pixel.js").status_code

        with ThreadPoolExecutor(8) as pool:
            while len([n for n in _pixel_requests_by_pid(directory).values() if n > 0]) < 2:
                assert hits < 2000, f"every hit went to one worker: {_pixel_requests_by_pid(directory)}"
                assert set(pool.map(hit, range(50))) == {200}
                hits += 50
        by_pid = _pixel_requests_by_pid(directory)
        assert sum(by_pid.values()) == hits, by_pid
        for _ in range(6):   # each scrape is answered by one worker or the other: all see every hit
            assert _scraped_pixel_requests(p.url) == hits

        # a worker that dies: the supervisor starts another; its hits stay counted, its live gauges go
        victim = next(iter(by_pid))
        wait_until(lambda: (directory / f"gauge_livemin_{victim}.db").exists(), 30, "the worker's broker gauge",
                   collector.log_tail)
        os.kill(victim, 9)
        wait_until(lambda: not (directory / f"gauge_livemin_{victim}.db").exists(), 30,
                   "the dead worker's gauges to be removed", collector.log_tail)
        assert _scraped_pixel_requests(p.url) == hits
        with httpx.Client() as client:
            assert client.get(f"{p.url}/pixel.js").status_code == 200
        assert _scraped_pixel_requests(p.url) == hits + 1
        page = httpx.get(f"{p.url}/metrics", timeout=5).text
        assert "leadstream_collector_broker_up 1.0" in page, page
        assert collector.terminate() == 0
        assert directory.exists() == (metrics_dir == "given")  # a temporary directory goes with the collector
    finally:
        p.stop()


def test_group_lag_is_the_end_offset_minus_the_committed_offset_per_partition(
        kafka_broker: KafkaBroker, new_topic: Any, unique_name: Callable[[str], str]) -> None:
    """GroupLag (the sinks' and the leads view's lag) against the real broker: a partition the group committed
    counts from its commit, one it never committed from the log start."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata
    from prometheus_client import REGISTRY

    from pipeline.observe import GroupLag

    topic = new_topic(kafka_broker, 2)
    group = unique_name("group")
    settings = load_settings(None, kafka={"bootstrap_servers": kafka_broker.bootstrap})

    async def go() -> tuple[dict[int, int], dict[int, int]]:
        await _five_and_three(kafka_broker.bootstrap, topic)
        lag = GroupLag(settings, "unit-group", group, topic)
        try:
            before = await lag.poll()
            consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=group,
                                        enable_auto_commit=False)
            await consumer.start()
            try:
                tp = TopicPartition(topic, 0)
                consumer.assign([tp])
                await consumer.commit({tp: OffsetAndMetadata(2, "")})
            finally:
                await consumer.stop()
            return before, await lag.poll()
        finally:
            await lag.close()

    before, after = asyncio.run(go())
    assert before == {0: 5, 1: 3}
    assert after == {0: 3, 1: 3}
    labels = {"consumer": "unit-group", "topic": topic}
    assert REGISTRY.get_sample_value("leadstream_consumer_lag_records", {**labels, "partition": "0"}) == 3


def test_dependency_probe_reports_up_with_its_round_trip_and_down_with_an_error(
        kafka_broker: KafkaBroker, redis_server: RedisServer) -> None:
    """DependencyProbe on the real Redis and broker, then on ports where nothing listens."""
    import asyncio

    from prometheus_client import REGISTRY

    from pipeline.observe import DependencyProbe

    def value(name: str, dependency: str) -> float:
        return REGISTRY.get_sample_value(name, {"dependency": dependency}) or 0.0

    def probe_once(redis_url: str, bootstrap: str) -> None:
        settings = load_settings(None, kafka={"bootstrap_servers": bootstrap}, redis={"url": redis_url})
        probe = DependencyProbe(settings, timeout_s=3.0)

        async def go() -> None:
            try:
                await probe.probe()
            finally:
                await probe.close()
        asyncio.run(go())

    probe_once(redis_server.url, kafka_broker.bootstrap)
    for dependency in ("redis", "broker"):
        assert value("leadstream_dependency_up", dependency) == 1
        assert 0 < value("leadstream_dependency_ping_seconds", dependency) < 3
    errors = {d: value("leadstream_dependency_errors_total", d) for d in ("redis", "broker")}
    started = time.monotonic()
    probe_once(f"redis://127.0.0.1:{free_port()}/0", f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 8   # bounded by the probe's timeout, never hanging
    for dependency in ("redis", "broker"):
        assert value("leadstream_dependency_up", dependency) == 0
        assert value("leadstream_dependency_errors_total", dependency) == errors[dependency] + 1


def test_a_single_collector_given_a_metrics_directory_counts_only_its_own_run(
        kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
        unique_name: Callable[[str], str]) -> None:
    """PROMETHEUS_MULTIPROC_DIR set for a one-process collector (e.g. in a shared environment): a previous
    run's files there are not added to this run's counts."""
    p = observed_pipeline(kafka_broker, redis_server.url, tmp_path, unique_name("mp1"))
    directory = tmp_path / "collector-metrics"
    directory.mkdir()
    _previous_run(directory)
    collector = _CliProcess(["collector", "-c", str(p.config_path)], tmp_path, "mp1-collector",
                            env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}).start()
    p.processes.append(collector)
    try:
        wait_until(lambda: _healthy(f"{p.url}/health"), 60, "the collector", collector.log_tail)
        for _ in range(3):
            assert httpx.get(f"{p.url}/pixel.js").status_code == 200
        assert _scraped_pixel_requests(p.url) == 3
    finally:
        p.stop()


def test_a_stage_lag_counts_from_the_next_record_it_must_apply(
        kafka_broker: KafkaBroker, new_topic: Any, unique_name: Callable[[str], str]) -> None:
    """stage_lag with a real RecordRunner and gap reader on the real broker: records past the stage's progress
    (or past the log start, for a partition without progress) count; a partition it no longer owns goes."""
    import asyncio

    from prometheus_client import REGISTRY

    from pipeline.observe import LagSeries, stage_lag
    from pipeline.stages.runtime import GapReader, HandlerResult, RecordRunner

    topic = new_topic(kafka_broker, 2)

    async def nothing(outputs: Any) -> None:
        return None

    async def handler(partition: int, offset: int, value: bytes, states: Any) -> HandlerResult:
        return HandlerResult()

    async def go() -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        await _five_and_three(kafka_broker.bootstrap, topic)
        reader = GapReader(topic, unique_name("app"), {"bootstrap_servers": kafka_broker.bootstrap})
        table: dict[str, Any] = {}
        runner = RecordRunner(table, handler, nothing, reader, name="unit-stage")
        runner.assigned([0, 1])
        series = LagSeries("unit-stage")
        try:
            first = await stage_lag(runner, topic, series)
            await runner.handle_group([(0, 0, b"r0"), (0, 1, b"r1")])   # applies offsets 0 and 1 of partition 0
            second = await stage_lag(runner, topic, series)
            runner.assigned([1])   # partition 0 moved to another worker
            third = await stage_lag(runner, topic, series)
            return first, second, third
        finally:
            await reader.stop()

    first, second, third = asyncio.run(go())
    assert first == {0: 5, 1: 3}
    assert second == {0: 3, 1: 3}
    assert third == {1: 3}
    labels = {"consumer": "unit-stage", "topic": topic}
    assert REGISTRY.get_sample_value("leadstream_consumer_lag_records", {**labels, "partition": "0"}) is None
    assert REGISTRY.get_sample_value("leadstream_consumer_lag_records", {**labels, "partition": "1"}) == 3


def test_a_stop_while_a_worker_is_replaced_stops_every_worker(kafka_broker: KafkaBroker, redis_server: RedisServer,
                                                              tmp_path: Path,
                                                              unique_name: Callable[[str], str]) -> None:
    """collector.workers: 2 — SIGTERM right after a worker died, while the supervisor replaces it: the stop
    reaches the new worker too and the collector exits (before the fix it could fork the replacement after
    the stop had signalled the old workers, then wait on it forever)."""
    import signal as _signal

    p = observed_pipeline(kafka_broker, redis_server.url, tmp_path, unique_name("mpstop"))
    p.config["collector"]["workers"] = 2
    p.config_path.write_text(yaml.safe_dump(p.config))
    for attempt, delay_s in enumerate((0.0, 0.001, 0.003, 0.01, 0.03)):
        collector = _CliProcess(["collector", "-c", str(p.config_path)], tmp_path, f"mpstop-{attempt}").start()
        p.processes.append(collector)
        wait_until(lambda: _healthy(f"{p.url}/health"), 60, "the collector", collector.log_tail)
        workers = [int(x) for x in subprocess.run(["pgrep", "-P", str(collector.proc.pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(workers) == 2, workers
        os.kill(workers[0], _signal.SIGKILL)
        time.sleep(delay_s)
        collector.proc.send_signal(_signal.SIGTERM)
        try:
            assert collector.proc.wait(20) == 0, collector.log_tail()
        finally:  # a worker left behind outlives its parent (re-parented): find it by its config path
            leftover = subprocess.run(["pgrep", "-f", f"collector -c {p.config_path}"], capture_output=True,
                                      text=True).stdout.split()
            for pid in leftover:
                os.kill(int(pid), _signal.SIGKILL)
        assert not leftover, f"workers left behind after the stop: {leftover}"


async def _five_and_three(bootstrap: str, topic: str) -> None:
    """Five records on partition 0 of ``topic`` and three on partition 1."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, count in ((0, 5), (1, 3)):
            for i in range(count):
                await producer.send_and_wait(topic, f"r{i}".encode(), partition=partition)
    finally:
        await producer.stop()
