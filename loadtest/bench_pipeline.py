"""Pipeline benchmark: events/s through both stages on one worker, and pixel-hit-to-output latency.

Three measurements in one run, on one real Kafka broker and Redis:

1. **Baseline**: a raw aiokafka loop (no Faust) applying the *same* stage
   handlers (``VisitorStage``, ``AccountStage``: decode, enrich, Redis
   lookups, sessionize, score, encode, send) to the same batched
   ``pixel-events`` records, state in a plain dict.
2. **Leadstream**: one ``leadstream worker`` process (Faust, tables with
   changelogs, offset guards, outputs acknowledged before state) on the same
   records. Rate = events / (last record applied - first record applied), read
   from the worker's /metrics.
3. **Latency**: collector + worker under paced HTTP load at half of (2)'s
   rate; probe visitors sent every 100 ms; latency = probe request sent ->
   its account's ``lead-scores`` record read back (qualified-leads are
   emitted by the same call). p50 and p99.

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

REPO = Path(__file__).resolve().parent.parent


def _settings_doc(bootstrap: str, redis_url: str, geoip: dict[str, str], name: str, work: Path,
                  pixel_topic: str | None = None, port: int = 0, metrics_port: int = 0) -> dict[str, Any]:
    topics = {k: f"{name}-{k.replace('_', '-')}" for k in
              ("pixel_events", "bad_events", "visits", "lead_scores", "qualified_leads", "sink_dead_letter")}
    if pixel_topic:
        topics["pixel_events"] = pixel_topic
    return {"kafka": {"bootstrap_servers": bootstrap}, "redis": {"url": redis_url}, "topics": topics,
            "geoip": geoip, "identity_salt": "bench", "data_dir": str(work / f"{name}-data"), "log_level": "warn",
            "metrics_port": metrics_port,
            "collector": {"port": port, "trusted_proxies": ["127.0.0.1/32"], "rate_limit_ip_per_s": 0,
                          "rate_limit_site_per_s": 0},  # one load generator, one site: throughput is measured
            "stages": {"app_id": f"{name}-app", "commit_interval_s": 1.0},
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
    """Both stages' handlers in a bare aiokafka consume/produce loop; state in dicts."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from pipeline.stages.runtime import HandlerResult, StateView
    from pipeline.stages.main import build_handlers

    from pipeline.topology import topic_specs
    visitor, account = build_handlers(settings)
    topics = settings.topics
    partitions = {s.name: s.partitions for s in topic_specs(settings)}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all",
                                enable_idempotence=True, linger_ms=0)
    await producer.start()
    tables: dict[str, dict[str, Any]] = {"visitor": {}, "account": {}}
    done = {"visitor": 0, "account": 0}
    first_applied: list[float] = []

    async def run(stage: str, topic: str, handler: Any, stop: asyncio.Event, expected: list[int]) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(partitions[topic])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        table = tables[stage]
        view = StateView(table)
        try:
            while not (stop.is_set() and done[stage] >= expected[0]):
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                for tp, recs in batch.items():
                    for rec in recs:
                        if not first_applied:
                            first_applied.append(time.perf_counter())
                        result: HandlerResult = await handler(rec.partition, rec.offset, rec.value, view)
                        futures = [await producer.send(o.topic, o.value, key=o.key, partition=o.partition,
                                                       headers=list(o.headers) or None) for o in result.outputs]
                        if futures:
                            await asyncio.gather(*futures)
                        for key, state in result.states.items():
                            table[key] = {"o": rec.offset, "s": state}
                        done[stage] += 1
        finally:
            await consumer.stop()

    stop_visitor, stop_account = asyncio.Event(), asyncio.Event()
    stop_visitor.set()
    visits_expected = [10**12]
    t_visitor = asyncio.create_task(run("visitor", topics.pixel_events, visitor, stop_visitor, [records]))
    t_account = asyncio.create_task(run("account", topics.visits, account, stop_account, visits_expected))
    await t_visitor
    visits_expected[0] = _end_offsets(settings.kafka.bootstrap_servers, topics.visits)
    stop_account.set()
    await t_account
    elapsed = time.perf_counter() - first_applied[0]
    await producer.stop()
    return {"events_per_s": round(events / elapsed), "seconds": round(elapsed, 2),
            "visits_records": visits_expected[0]}


# -- 2. the Faust worker ------------------------------------------------------------------------

def faust_worker(config: Path, metrics_url: str, events: int, records: int, bootstrap: str, visits_topic: str,
                 log: Path, timeout_s: float = 600) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "-c", str(config)], cwd=REPO,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        start = end = None
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
            if visitor >= records and account > 0 and account >= _end_offsets(bootstrap, visits_topic):
                end = now
                break
            time.sleep(0.05)
        if start is None or end is None:
            raise RuntimeError(f"the worker did not finish in {timeout_s} s: {log.read_text()[-3000:]}")
        sizes = _metric(metrics_url, "leadstream_stage_record_events_sum")
        counts = _metric(metrics_url, "leadstream_stage_record_events_count")
        per_record = {k: round(sizes[k] / counts[k], 1) for k in sizes if counts.get(k)}
        return {"events_per_s": round(events / (end - start)), "seconds": round(end - start, 2),
                "events_per_record": per_record}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- 3. latency under paced load ----------------------------------------------------------------

async def paced_load(url: str, rate_events: float, seconds: float, lead_scores: str, bootstrap: str,
                     lead_score_partitions: int = 8, probes: bool = True) -> dict[str, Any]:
    """Background visitors at ``rate_events`` events/s plus a probe every 100 ms; latency per probe."""
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
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for recs in batch.values():
                for rec in recs:
                    t = sent.pop(rec.key, None) if rec.key else None
                    if t is not None:
                        latencies.append(now - t)

    reader = asyncio.create_task(read())
    events_per_request = 5
    interval = events_per_request / rate_events
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        def body(visitor: str, t: int) -> str:
            return json.dumps({"site_id": "acme", "visitor_id": visitor, "sent_at": t, "events": [
                {"type": "page_view", "url": f"https://www.acme.example/p{i}", "ts": t} for i in range(events_per_request)]})

        async def hit(visitor: str, ip: str) -> None:
            t = int(time.time() * 1000)
            await client.post("/collect", content=body(visitor, t),
                              headers={"X-Forwarded-For": ip, "Content-Type": "text/plain",
                                       "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36",
                                       "Accept-Language": "en"})

        async def probe() -> None:
            visitor = str(uuid.uuid4())
            sent[f"acme|v:{visitor}".encode()] = time.perf_counter()
            await hit(visitor, "198.51.100.7")

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        n = 0
        next_probe = start
        while time.perf_counter() - start < seconds:
            now = time.perf_counter()
            if probes and now >= next_probe:
                probe_task = asyncio.create_task(probe())
                tasks.add(probe_task)
                probe_task.add_done_callback(tasks.discard)
                next_probe += 0.1
            if len(tasks) > 256:  # saturation: never more than 256 requests in flight
                await asyncio.sleep(0.001)
                continue
            task = asyncio.create_task(hit(f"bg-{n % 2000}", f"198.51.100.{n % 100 + 1}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(3)
    reader.cancel()
    await consumer.stop()
    latencies.sort()
    if not probes:
        return {"requests": n}
    if not latencies:
        raise RuntimeError("no probe came back on lead-scores")
    return {"probes": len(latencies), "lost_probes": len(sent), "requests": n,
            "achieved_events_per_s": round(n * events_per_request / seconds),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1)}


def _processed(metrics_url: str) -> float:
    return _metric(metrics_url, "leadstream_stage_events_total").get('{stage="account",outcome="processed"}', 0.0)


def saturate(url: str, seconds: float, lead_scores: str, bootstrap: str, metrics_url: str) -> dict[str, Any]:
    """The end-to-end maximum: as many hits as the collector takes for ``seconds``; rate = events the
    account stage applied / time until it has applied all of them (it drains after the load stops)."""
    before = _processed(metrics_url)
    started = time.perf_counter()
    sent = asyncio.run(paced_load(url, 1_000_000, seconds, lead_scores, bootstrap, probes=False))
    target = before + sent["requests"]   # one visit update per request (5 page views of one session)
    deadline = time.monotonic() + 300
    last, last_change = _processed(metrics_url), time.monotonic()
    while time.monotonic() < deadline:
        now = _processed(metrics_url)
        if now >= target or time.monotonic() - last_change > 10:
            break
        if now != last:
            last, last_change = now, time.monotonic()
        time.sleep(0.2)
    elapsed = time.perf_counter() - started
    return {"events_per_s": round(sent["requests"] * 5 / elapsed), "requests": sent["requests"],
            "seconds_to_drain": round(elapsed, 1)}


def bench(events: int = 60_000, payloads_per_record: int = 20, latency_seconds: float = 20) -> dict[str, Any]:
    from kafka import KafkaProducer

    from loadtest.traffic import batch_records, visitor_payloads
    from pipeline.codec import SingleObjectCodec
    from pipeline.enrich.redis_store import ReferenceStore
    from pipeline.local.kafka import KafkaBroker, free_port
    from pipeline.local.redis import EmbeddedRedis, RedisServer, find_system_redis_server
    from pipeline.ops.geoip_build import build_demo_databases
    from pipeline.ops.importer import import_demo_data
    from pipeline.settings import load_settings
    from pipeline.topology import create_topics

    work = Path(tempfile.mkdtemp(prefix="leadstream-bench-pipeline-"))
    broker = KafkaBroker(work / "kafka")
    broker.start()
    redis_server: RedisServer = RedisServer() if find_system_redis_server() else EmbeddedRedis()
    redis_server.start()
    try:
        import_demo_data(ReferenceStore.from_url(redis_server.url))
        geoip = {k: str(v) for k, v in build_demo_databases(work / "geoip").items()}
        stamp = str(int(time.time()))
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

        # latency at half of the worker's maximum rate, through the collector
        port, metrics_port = free_port(), free_port()
        doc = _settings_doc(broker.bootstrap, redis_server.url, geoip, f"live-{stamp}", work, port=port,
                            metrics_port=metrics_port)
        (work / "live.yaml").write_text(yaml.safe_dump(doc))
        live = load_settings(work / "live.yaml")
        create_topics(live)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "-c", str(work / "live.yaml")],
                                  cwd=REPO, env=env, stdout=open(work / "live-worker.log", "wb"),
                                  stderr=subprocess.STDOUT)
        collector = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "collector", "-c",
                                      str(work / "live.yaml")], cwd=REPO, env=env,
                                     stdout=open(work / "live-collector.log", "wb"), stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200 and _metric(
                            f"http://127.0.0.1:{metrics_port}/metrics", "leadstream_stage_records_total") is not None:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            time.sleep(8)  # the worker joins its group and gets its partitions
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            live_max = saturate(url, latency_seconds, live.topics.lead_scores, broker.bootstrap, metrics_url)
            latency = asyncio.run(paced_load(url, live_max["events_per_s"] / 2, latency_seconds,
                                             live.topics.lead_scores, broker.bootstrap))
            latency["live_max"] = live_max
        finally:
            for proc in (collector, worker):
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

        ratio = round(faust["events_per_s"] / raw["events_per_s"], 3)
        report = {"events": total_events, "records": len(records), "payloads_per_record": payloads_per_record,
                  "baseline_raw_aiokafka": raw, "leadstream_worker": faust, "throughput_ratio": ratio,
                  "latency_at_half_rate": latency,
                  "targets": {"throughput_ratio": ">= 0.5", "p99_ms": "< 1000"}}
        report["pass"] = ratio >= 0.5 and latency["p99_ms"] < 1000
        return report
    finally:
        redis_server.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(bench(), indent=2))
