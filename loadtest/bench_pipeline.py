"""Pipeline benchmark: events/s end to end and on a replay, against baselines measured in the same run.

On one real Kafka broker and Redis, in order:

0. **The load generator's own maximum**: ``wrk`` with ``loadtest/pipeline.lua``
   (Snowplow GET pixel hits of the bench site from 2,000 visitors) against the
   null app (the collector's app shape doing nothing). The live runs below
   must stay well under it, or they measure the generator.
1. **Replay, raw baseline**: a raw aiokafka loop (no Faust) applying the
   *same* stage handlers through the same :class:`RecordRunner` group commit
   (state in dicts, no changelog) to pre-batched ``pixel-events`` records.
2. **Replay, worker**: one ``leadstream worker`` process (Faust, tables with
   changelogs, offset guards, group commit) on the same records. Rate =
   events / (first record applied -> everything applied through both stages),
   read from the worker's /metrics. Ratio = (2) / (1).
3. **End to end, live**: collector + one worker on fresh topics, at group
   size 1 and at the default ``stages.commit_records``: ``wrk`` as fast as the
   collector answers for ``load_seconds``; rate = hits acknowledged / time
   until the worker applied all of them through both stages.
4. **Latency**: on the default group size's live pipeline, ``wrk`` paced at
   half of (3)'s maximum while a probe visitor is sent every 100 ms; latency
   = probe hit sent -> its ``lead-scores`` record read back. p50 and p99.

    leadstream bench pipeline [--events 60000] [--payloads-per-record 20] [--latency-seconds 20]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _settings_doc(bootstrap: str, redis_url: str, geoip: dict[str, str], name: str, work: Path,
                  pixel_topic: str | None = None, port: int = 0, metrics_port: int = 0,
                  commit_records: int | None = None) -> dict[str, Any]:
    topics = {k: f"{name}-{k.replace('_', '-')}" for k in
              ("pixel_events", "bad_events", "visits", "lead_scores", "qualified_leads", "sink_dead_letter")}
    if pixel_topic:
        topics["pixel_events"] = pixel_topic
    return {"kafka": {"bootstrap_servers": bootstrap}, "redis": {"url": redis_url}, "topics": topics,
            "geoip": geoip, "identity_salt": "bench", "data_dir": str(work / f"{name}-data"), "log_level": "warn",
            "metrics_port": metrics_port,
            "collector": {"port": port, "trusted_proxies": ["127.0.0.1/32"], "rate_limit_ip_per_s": 0,
                          "rate_limit_site_per_s": 0},  # one load generator, one site: throughput is measured
            "stages": {"app_id": f"{name}-app", "commit_interval_s": 1.0,
                       **({} if commit_records is None else {"commit_records": commit_records})},
            "sites": [{"site_id": "acme", "allowed_origins": ["*"], "hosts": ["www.acme.example"]}]}


def _metric(url: str, name: str) -> dict[str, float]:
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name):]] = float(value)
    return out


def _metric_line(url: str, name: str) -> float | None:
    """The value of an unlabelled series (``name value``) on a /metrics page."""
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _end_offsets(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


# -- 1. the raw aiokafka loop --------------------------------------------------------------------

async def raw_loop(settings: Any, events: int, records: int) -> dict[str, Any]:
    """Both stages' handlers in a bare aiokafka consume/produce loop, state in dicts, with the same
    group commit as the worker: the same :class:`RecordRunner` (no Faust, no changelog, no gap reader)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from pipeline.stages.main import build_handlers
    from pipeline.stages.runtime import RecordRunner
    from pipeline.topology import topic_specs

    visitor, account = build_handlers(settings)
    topics = settings.topics
    group = settings.stages.commit_records
    partitions = {s.name: s.partitions for s in topic_specs(settings)}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all",
                                enable_idempotence=True, linger_ms=0, max_request_size=4 * 1024 * 1024)
    await producer.start()

    async def send(outputs: Any) -> None:
        futures = [await producer.send(o.topic, o.value, key=o.key, partition=o.partition,
                                       headers=list(o.headers) or None) for o in outputs]
        await asyncio.gather(*futures)

    done = {"visitor": 0, "account": 0}
    first_applied: list[float] = []
    first_cpu: list[float] = []

    async def run(stage: str, topic: str, handler: Any, on_error: Any, stop: asyncio.Event,
                  expected: list[int]) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(partitions[topic])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        runner = RecordRunner({}, handler, send, None, name=f"raw-{stage}", on_error=on_error, max_group=group)
        try:
            while not (stop.is_set() and done[stage] >= expected[0]):
                batch = await consumer.getmany(timeout_ms=200, max_records=group)
                items = [(rec.partition, rec.offset, rec.value or b"") for recs in batch.values() for rec in recs]
                if not items:
                    continue
                if not first_applied:
                    first_applied.append(time.perf_counter())
                    first_cpu.append(time.process_time())
                await runner.handle_group(items)
                done[stage] += len(items)
        finally:
            await consumer.stop()

    stop_visitor, stop_account = asyncio.Event(), asyncio.Event()
    stop_visitor.set()
    visits_expected = [10**12]
    t_visitor = asyncio.create_task(run("visitor", topics.pixel_events, visitor, visitor.failed, stop_visitor,
                                        [records]))
    t_account = asyncio.create_task(run("account", topics.visits, account, account.failed, stop_account,
                                        visits_expected))
    await t_visitor
    visits_expected[0] = _end_offsets(settings.kafka.bootstrap_servers, topics.visits)
    stop_account.set()
    await t_account
    elapsed = time.perf_counter() - first_applied[0]
    cpu = time.process_time() - first_cpu[0]
    await producer.stop()
    return {"events_per_s": round(events / elapsed), "seconds": round(elapsed, 2),
            "events_per_cpu_s": round(events / max(cpu, 1e-6)), "cpu_share": round(cpu / elapsed, 2),
            "visits_records": visits_expected[0], "commit_records": group}


# -- 2. the Faust worker ------------------------------------------------------------------------

def faust_worker(config: Path, metrics_url: str, events: int, records: int, bootstrap: str, visits_topic: str,
                 log: Path, timeout_s: float = 600) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "-c", str(config)], cwd=REPO,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        start = end = None
        cpu_start = 0.0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-3000:]}")
            applied = _metric(metrics_url, "leadstream_stage_records_total")
            visitor = applied.get('{stage="visitor"}', 0.0)
            account = applied.get('{stage="account"}', 0.0)
            now = time.perf_counter()
            if start is None and visitor > 0:
                start = now
                cpu_start = _metric_line(metrics_url, "process_cpu_seconds_total") or 0.0
            if visitor >= records and account > 0 and account >= _end_offsets(bootstrap, visits_topic):
                end = now
                break
            time.sleep(0.05)
        if start is None or end is None:
            raise RuntimeError(f"the worker did not finish in {timeout_s} s: {log.read_text()[-3000:]}")
        sizes = _metric(metrics_url, "leadstream_stage_record_events_sum")
        counts = _metric(metrics_url, "leadstream_stage_record_events_count")
        per_record = {k: round(sizes[k] / counts[k], 1) for k in sizes if counts.get(k)}
        cpu = (_metric_line(metrics_url, "process_cpu_seconds_total") or 0.0) - cpu_start
        return {"events_per_s": round(events / (end - start)), "seconds": round(end - start, 2),
                "events_per_cpu_s": round(events / max(cpu, 1e-6)), "cpu_share": round(cpu / (end - start), 2),
                "events_per_record": per_record}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- 3. live: wrk -> collector -> worker -> lead-scores ------------------------------------------

def run_wrk(url: str, seconds: float, connections: int, delay_ms: float = 0) -> dict[str, Any]:
    """wrk with loadtest/pipeline.lua (pixel hits of the bench site) for ``seconds``; paced when ``delay_ms``."""
    from loadtest.bench_collector import parse_wrk
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (scripts/bootstrap installs it)")
    env = {**os.environ, "LEADSTREAM_WRK_DELAY_MS": str(int(delay_ms))}
    cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s",
           str(HERE / "pipeline.lua"), url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    r = parse_wrk(out)
    return {"requests": r.requests, "rps": round(r.rps), "ok": r.requests - r.non_2xx, "non_2xx": r.non_2xx,
            "errors": r.errors, "p99_ms": r.p99_ms}


def generator_max(work: Path, seconds: float, connections: int) -> dict[str, Any]:
    """What wrk itself reaches against the null app (the collector's app shape doing nothing)."""
    from loadtest.bench_collector import _serve, _stop
    from pipeline.local.kafka import free_port
    port = free_port()
    server = _serve([sys.executable, "-m", "loadtest.null_app", "--port", str(port)],
                    f"http://127.0.0.1:{port}/i", work / "null-app.log")
    try:
        return run_wrk(f"http://127.0.0.1:{port}", seconds, connections)
    finally:
        _stop(server)


class Live:
    """Collector + one worker on fresh topics, started from a settings document."""

    def __init__(self, work: Path, name: str, doc: dict[str, Any]) -> None:
        from pipeline.settings import load_settings
        from pipeline.topology import create_topics
        self.name = name
        (work / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        self.settings = load_settings(work / f"{name}.yaml")
        create_topics(self.settings)
        self.url = f"http://127.0.0.1:{doc['collector']['port']}"
        self.metrics_url = f"http://127.0.0.1:{doc['metrics_port']}/metrics"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        config = str(work / f"{name}.yaml")
        self.worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "-c", config], cwd=REPO,
                                       env=env, stdout=open(work / f"{name}-worker.log", "wb"),
                                       stderr=subprocess.STDOUT)
        self.collector = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "collector", "-c", config],
                                          cwd=REPO, env=env, stdout=open(work / f"{name}-collector.log", "wb"),
                                          stderr=subprocess.STDOUT)
        self.log = work / f"{name}-worker.log"

    def wait_ready(self, timeout_s: float = 90) -> None:
        """The collector answers and the worker applied a first hit (it holds its partitions)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            try:
                httpx.get(self.url + "/i?e=pv&aid=acme&p=web&duid=warmup&url=https%3A%2F%2Fwww.acme.example%2F",
                          headers={"X-Forwarded-For": "198.51.100.1"}, timeout=2)
            except httpx.HTTPError:
                pass
            if self.applied("account") > 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: the worker applied nothing in {timeout_s} s: {self.log.read_text()[-3000:]}")

    def applied(self, stage: str) -> float:
        return _metric(self.metrics_url, "leadstream_stage_records_total").get(f'{{stage="{stage}"}}', 0.0)

    def wait_drained(self, timeout_s: float) -> None:
        """Until every pixel-events record and then every visits record is applied (the load has stopped,
        so each topic's end is read once, when the stage before it is done; polled every 0.2 s)."""
        bootstrap = self.settings.kafka.bootstrap_servers or ""
        deadline = time.monotonic() + timeout_s
        for stage, topic in (("visitor", self.settings.topics.pixel_events), ("account", self.settings.topics.visits)):
            end = _end_offsets(bootstrap, topic)
            while self.applied(stage) < end:
                if time.monotonic() > deadline or self.worker.poll() is not None:
                    raise RuntimeError(f"{self.name}: not drained in {timeout_s} s: {self.log.read_text()[-3000:]}")
                time.sleep(0.2)

    def saturate(self, seconds: float, connections: int, timeout_s: float = 300) -> dict[str, Any]:
        """End-to-end maximum: wrk as fast as the collector answers for ``seconds``; rate = hits acknowledged /
        time until the worker applied all of them through both stages (it drains after the load stops)."""
        cpu_before = self.cpu_seconds()
        sizes_before = _metric(self.metrics_url, "leadstream_stage_record_events_sum")
        counts_before = _metric(self.metrics_url, "leadstream_stage_record_events_count")
        started = time.perf_counter()
        load = run_wrk(self.url, seconds, connections)
        loaded = time.perf_counter() - started
        self.wait_drained(timeout_s)
        elapsed = time.perf_counter() - started
        groups = _metric(self.metrics_url, "leadstream_stage_group_records_sum")
        counts = _metric(self.metrics_url, "leadstream_stage_group_records_count")
        sizes = _metric(self.metrics_url, "leadstream_stage_record_events_sum")
        n = _metric(self.metrics_url, "leadstream_stage_record_events_count")
        per_record = {k: round((sizes[k] - sizes_before.get(k, 0)) / (n[k] - counts_before.get(k, 0)), 1)
                      for k in sizes if n.get(k, 0) > counts_before.get(k, 0)}
        return {"events_per_s": round(load["ok"] / elapsed), "hits": load["ok"], "collector_rps": load["rps"],
                "load_seconds": round(loaded, 1), "seconds_to_drain": round(elapsed, 1),
                "records_per_group": {k: round(groups[k] / counts[k], 1) for k in groups if counts.get(k)},
                # events per input record: the collector batches hits per partition, more under load
                "events_per_record": per_record,
                # the worker's CPU seconds per wall second while loaded and draining: ~1 is CPU bound
                "worker_cpu_share": round((cpu := self.cpu_seconds() - cpu_before) / elapsed, 2),
                # hits per second of worker CPU: what the worker costs, whatever else shares the machine
                "events_per_worker_cpu_s": round(load["ok"] / max(cpu, 1e-6))}

    def cpu_seconds(self) -> float:
        text = _metric_line(self.metrics_url, "process_cpu_seconds_total")
        return text if text is not None else 0.0

    def stop(self) -> None:
        for proc in (self.collector, self.worker):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def probe_latency(url: str, seconds: float, lead_scores: str, bootstrap: str,
                        lead_score_partitions: int = 8) -> dict[str, Any]:
    """A probe visitor every 100 ms; latency = its hit sent -> its ``lead-scores`` record read back."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest")
    await consumer.start()
    tps = [TopicPartition(lead_scores, p) for p in range(lead_score_partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    sent: dict[bytes, float] = {}
    latencies: list[float] = []

    async def read() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for recs in batch.values():
                for rec in recs:
                    t = sent.pop(rec.key, None) if rec.key else None
                    if t is not None:
                        latencies.append(now - t)

    reader = asyncio.create_task(read())
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        async def probe() -> None:
            visitor = f"probe-{uuid.uuid4()}"
            sent[f"acme|v:{visitor}".encode()] = time.perf_counter()
            query = (f"/i?e=pv&aid=acme&p=web&tv=js-3.0.0&eid={uuid.uuid4()}&duid={visitor}"
                     f"&url=https%3A%2F%2Fwww.acme.example%2Fpricing&dtm={int(time.time() * 1000)}")
            await client.get(query, headers={"X-Forwarded-For": "198.51.100.7", "Accept-Language": "en",
                                             "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36"})

        tasks = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.create_task(probe()))
            await asyncio.sleep(0.1)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(3)
    reader.cancel()
    await consumer.stop()
    latencies.sort()
    if not latencies:
        raise RuntimeError("no probe came back on lead-scores")
    return {"probes": len(latencies), "lost_probes": len(sent),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1)}


def latency_at(live: Live, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    """p50/p99 hit-to-score latency while wrk paces ``rate`` hits/s into the collector."""
    delay_ms = connections * 1000 / max(1.0, rate)
    result: dict[str, Any] = {}

    def load() -> None:
        result["load"] = run_wrk(live.url, seconds + 2, connections, delay_ms=delay_ms)

    import threading
    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(1)
    latency = asyncio.run(probe_latency(live.url, seconds, live.settings.topics.lead_scores,
                                        live.settings.kafka.bootstrap_servers or ""))
    thread.join()
    return {**latency, "target_hits_per_s": round(rate), "achieved_hits_per_s": result["load"]["rps"]}


def bench(events: int = 60_000, payloads_per_record: int = 20, latency_seconds: float = 20,
          load_seconds: float = 10, connections: int = 32) -> dict[str, Any]:
    from kafka import KafkaProducer

    from loadtest.traffic import batch_records, visitor_payloads
    from pipeline.codec import SingleObjectCodec
    from pipeline.enrich.redis_store import ReferenceStore
    from pipeline.local.kafka import KafkaBroker, free_port
    from pipeline.local.redis import EmbeddedRedis, RedisServer, find_system_redis_server
    from pipeline.ops.geoip_build import build_demo_databases
    from pipeline.ops.importer import import_demo_data
    from pipeline.settings import StageSettings, load_settings
    from pipeline.topology import create_topics

    default_group = StageSettings().commit_records
    work = Path(tempfile.mkdtemp(prefix="leadstream-bench-pipeline-"))
    broker = KafkaBroker(work / "kafka")
    broker.start()
    redis_server: RedisServer = RedisServer() if find_system_redis_server() else EmbeddedRedis()
    redis_server.start()
    try:
        import_demo_data(ReferenceStore.from_url(redis_server.url))
        geoip = {k: str(v) for k, v in build_demo_databases(work / "geoip").items()}
        stamp = str(int(time.time()))

        # 0. the load generator's own maximum, against the null app
        generator = generator_max(work, load_seconds, connections)

        # 1-2. a replay of pre-batched pixel-events: raw loop and worker, same group commit
        events_per_visitor = 20
        payloads = list(visitor_payloads(max(1, events // events_per_visitor), events_per_visitor, seed=5,
                                         t0=int(time.time() * 1000) - 86_400_000, one_visitor_per_company=False))
        total_events = sum(len(p["events"]) for p in payloads)
        base = _settings_doc(broker.bootstrap, redis_server.url, geoip, f"raw-{stamp}", work)
        (work / "raw.yaml").write_text(yaml.safe_dump(base))
        raw_settings = load_settings(work / "raw.yaml")
        create_topics(raw_settings)
        records = batch_records(iter(payloads), raw_settings.topics.partitions.get("pixel_events", 8),
                                payloads_per_record)
        codec = SingleObjectCodec()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True,
                                 max_request_size=4 * 1024 * 1024)
        for r in records:
            producer.send(raw_settings.topics.pixel_events, codec.encode("CollectorBatch", r.value), key=r.key,
                          partition=r.partition)
        producer.flush()
        producer.close()

        raw = asyncio.run(raw_loop(raw_settings, total_events, len(records)))

        metrics_port = free_port()
        doc = _settings_doc(broker.bootstrap, redis_server.url, geoip, f"faust-{stamp}", work,
                            pixel_topic=raw_settings.topics.pixel_events, metrics_port=metrics_port)
        (work / "faust.yaml").write_text(yaml.safe_dump(doc))
        faust_settings = load_settings(work / "faust.yaml")
        create_topics(faust_settings)
        faust = faust_worker(work / "faust.yaml", f"http://127.0.0.1:{metrics_port}/metrics", total_events,
                             len(records), broker.bootstrap, faust_settings.topics.visits, work / "worker.log")

        # 3. live end to end at group size 1 and at the default, then latency at half the default's maximum
        live_results: dict[str, Any] = {}
        latency: dict[str, Any] = {}
        for group in (1, default_group):
            name = f"live{group}-{stamp}"
            doc = _settings_doc(broker.bootstrap, redis_server.url, geoip, name, work, port=free_port(),
                                metrics_port=free_port(), commit_records=group)
            live = Live(work, name, doc)
            try:
                live.wait_ready()
                live_results[f"group_{group}"] = live.saturate(load_seconds, connections)
                if group == default_group:
                    latency = latency_at(live, live_results[f"group_{group}"]["events_per_s"] / 2,
                                         latency_seconds, connections)
            finally:
                live.stop()

        e2e_1 = live_results["group_1"]["events_per_s"]
        e2e_default = live_results[f"group_{default_group}"]["events_per_s"]
        ratio = round(faust["events_per_s"] / raw["events_per_s"], 3)
        report = {
            "load_generator_max_rps": generator["rps"],
            "end_to_end": {**live_results, "speedup_default_vs_1": round(e2e_default / max(1, e2e_1), 1)},
            "replay_prebatched": {"events": total_events, "records": len(records),
                                  "payloads_per_record": payloads_per_record, "leadstream_worker": faust,
                                  "baseline_raw_aiokafka": raw, "throughput_ratio": ratio},
            "latency_at_half_max": latency,
            "settings": {"commit_records": default_group, "commit_ms": StageSettings().commit_ms,
                         "connections": connections, "load_seconds": load_seconds, "cpus": os.cpu_count()},
            "targets": {"speedup_default_vs_1": ">= 8", "throughput_ratio": ">= 0.5", "p99_ms": "< 1000",
                        "replay_events_per_s": ">= 15000"},
        }
        checks = {"speedup_default_vs_1": e2e_default >= 8 * e2e_1, "throughput_ratio": ratio >= 0.5,
                  "p99_ms": latency["p99_ms"] < 1000, "replay_events_per_s": faust["events_per_s"] >= 15_000,
                  "generator_not_the_bottleneck": generator["rps"] > 1.5 * max(
                      r["collector_rps"] for r in live_results.values())}
        report["checks"] = checks
        report["pass"] = all(checks.values())
        # every headline figure in one place, first in the printed report
        report = {"summary": {
            "end_to_end_events_per_s_group_1": e2e_1,
            f"end_to_end_events_per_s_group_{default_group}": e2e_default,
            "speedup_default_vs_1": report["end_to_end"]["speedup_default_vs_1"],
            "replay_worker_events_per_s": faust["events_per_s"],
            "replay_raw_loop_events_per_s": raw["events_per_s"],
            "worker_vs_raw_ratio": ratio,
            "end_to_end_events_per_worker_cpu_s": {k: v["events_per_worker_cpu_s"] for k, v in live_results.items()},
            "replay_events_per_cpu_s": {"worker": faust["events_per_cpu_s"], "raw_loop": raw["events_per_cpu_s"]},
            "replay_cpu_share": {"worker": faust["cpu_share"], "raw_loop": raw["cpu_share"]},
            "p50_ms_at_half_max": latency.get("p50_ms"), "p99_ms_at_half_max": latency.get("p99_ms"),
            "half_max_hits_per_s": latency.get("achieved_hits_per_s"),
            "load_generator_max_rps": generator["rps"],
            "failed_checks": [k for k, ok in checks.items() if not ok]}, **report}
        return report
    finally:
        redis_server.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(bench(), indent=2))
