"""Collector benchmark: requests/s and p50/p99 latency with durable writes, as a ratio to a null app.

Both servers run one process on the same stack (uvicorn + uvloop + httptools,
a ``HotPathStarlette`` app: Starlette whose ingest paths are dispatched to raw
ASGI endpoints ahead of its middleware and router), pinned to CPU 0 when
`taskset` exists; `wrk` drives Snowplow GET pixel hits from CPU 1. The null
app (loadtest/null_app.py) is that same app shape answering the same GIF and
headers and doing nothing else, so the ratio is the cost of the collector's
own work. A second null app (``null_app --wait``) parks every request until
the next event-loop pass before answering, as the collector waits for its
acknowledgement: its rate shows what that shape costs by itself (measured
here: nothing). The collector writes to a real Apache Kafka broker with acks=all and
an idempotent producer, answering each hit only after the broker has it; the
broker this benchmark starts has all its JVM threads pinned to CPU 1 beside
wrk, so each server under test has CPU 0 to itself (a broker given with
``--bootstrap`` is left where it runs). Afterwards every payload on the topic
is counted: at least as many as the 2xx answers (wrk may abandon requests in
flight when it stops, which the collector still writes), none twice.

The machine may be shared: repeat runs and compare medians.

    leadstream bench collector [--duration 15] [--connections 64] [--bootstrap HOST:PORT]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, output)
        if m is None:
            raise RuntimeError(f"unexpected wrk output:\n{output}")
        return m

    p50 = find(r"50%\s+([\d.]+)(us|ms|s|m)\b")
    p99 = find(r"99%\s+([\d.]+)(us|ms|s|m)\b")
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(requests=int(find(r"(\d+) requests in")[1]), rps=float(find(r"Requests/sec:\s+([\d.]+)")[1]),
                     p50_ms=_ms(p50[1], p50[2]), p99_ms=_ms(p99[1], p99[2]), non_2xx=int(non[1]) if non else 0,
                     errors=sum(int(x) for x in errors.groups()) if errors else 0)


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def _wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def run_wrk(url: str, duration_s: int, connections: int) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    cmd = [*_pin(1), wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s",
           str(HERE / "pixel.lua"), url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


def _serve(cmd: list[str], url: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*_pin(0), *cmd], cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    try:
        _wait_http(url)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"server did not start: {log.read_text(errors='replace')[-2000:]}") from None
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def count_topic(bootstrap: str, topic: str) -> tuple[int, int, int]:
    """(records, payloads, distinct event ids) on ``topic``."""
    from kafka import KafkaConsumer, TopicPartition

    from pipeline.codec import SingleObjectCodec

    codec = SingleObjectCodec()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    records = payloads = 0
    ids: set[str] = set()
    while any(consumer.position(tp) < end[tp] for tp in tps):
        for batch in consumer.poll(timeout_ms=1000, max_records=5000).values():
            for rec in batch:
                records += 1
                value = codec.decode(rec.value, "CollectorBatch")
                for payload in value["payloads"]:
                    payloads += 1
                    ids.update(e["event_id"] for e in payload["events"])
    consumer.close()
    return records, payloads, len(ids)


NULL_APP = ("HotPathStarlette (the collector's app shape) on uvicorn+uvloop+httptools, /i and /p.gif "
            "answering the same GIF and headers, no work")


def _pin_all_threads(pid: int, cpu: int) -> bool:
    """Pin every thread of a running process (a JVM) to ``cpu``; False when it cannot be done."""
    if not _pin(cpu):
        return False
    return subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], capture_output=True).returncode == 0


def bench(duration_s: int = 15, connections: int = 64, bootstrap: str | None = None,
          linger_ms: float = 5.0) -> dict[str, Any]:
    from pipeline.local.kafka import KafkaBroker, free_port
    from pipeline.settings import KafkaSettings, Settings, TopicSettings
    from pipeline.topology import create_topics

    work = Path(tempfile.mkdtemp(prefix="leadstream-bench-"))
    broker = None
    broker_cpu = "not pinned (external broker)"
    if bootstrap is None:
        broker = KafkaBroker(work / "kafka")
        broker.start()
        bootstrap = broker.bootstrap
        pinned = broker.process is not None and _pin_all_threads(broker.process.pid, 1)
        broker_cpu = "CPU 1, all threads, beside wrk" if pinned else "not pinned (no taskset or one CPU)"
    suffix = str(int(time.time()))
    topics = {"pixel_events": f"bench-pixel-events-{suffix}", "bad_events": f"bench-bad-events-{suffix}"}
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=bootstrap), topics=TopicSettings(**topics))
    try:
        create_topics(settings)
        coll_port = free_port()

        def null_app(name: str, *flags: str) -> WrkResult:
            port = free_port()
            server = _serve([sys.executable, "-m", "loadtest.null_app", "--port", str(port), *flags],
                            f"http://127.0.0.1:{port}/i", work / f"{name}.log")
            try:
                run_wrk(f"http://127.0.0.1:{port}", 2, connections)  # warm-up
                return run_wrk(f"http://127.0.0.1:{port}", duration_s, connections)
            finally:
                _stop(server)

        baseline = null_app("null")
        # the same null app answering only after an (instant, batched) acknowledgement: what the
        # answer-after-ack shape of the collector costs by itself
        waiting_baseline = null_app("null-wait", "--wait")
        # one load generator is one client: the rate limits are off, the hot path is what is measured
        config = {"kafka": {"bootstrap_servers": bootstrap}, "topics": topics, "log_level": "warn",
                  "identity_salt": "bench",
                  "collector": {"port": coll_port, "linger_ms": linger_ms, "rate_limit_ip_per_s": 0,
                                "rate_limit_site_per_s": 0},
                  "sites": [{"site_id": "bench", "allowed_origins": ["*"]}]}
        (work / "collector.yaml").write_text(yaml.safe_dump(config))
        collector = _serve([sys.executable, "-m", "pipeline.cli", "collector", "-c", str(work / "collector.yaml")],
                           f"http://127.0.0.1:{coll_port}/health", work / "collector.log")
        try:
            run_wrk(f"http://127.0.0.1:{coll_port}", 2, connections)  # warm-up: connections, metadata
            warm_records, warm_payloads, _ = count_topic(bootstrap, topics["pixel_events"])
            result = run_wrk(f"http://127.0.0.1:{coll_port}", duration_s, connections)
        finally:
            _stop(collector)
        records, payloads, distinct = count_topic(bootstrap, topics["pixel_events"])
        run_payloads = payloads - warm_payloads
        report: dict[str, Any] = {
            "baseline": asdict(baseline), "waiting_null_app": asdict(waiting_baseline),
            "collector": asdict(result),
            "throughput_ratio": round(result.rps / baseline.rps, 3),
            # one core each: the server's cost per request, and what the collector's own work adds to it
            "null_app_us_per_request": round(1e6 / baseline.rps, 1),
            "collector_work_us_per_request": round(1e6 / result.rps - 1e6 / baseline.rps, 1),
            "p99_ms": result.p99_ms,
            "acknowledged": result.requests - result.non_2xx,
            "payloads_on_topic": run_payloads,
            "records_on_topic": records - warm_records,
            "payloads_per_record": round(run_payloads / max(1, records - warm_records), 1),
            "duplicates": payloads - distinct,
            "lost": max(0, (result.requests - result.non_2xx) - run_payloads),
            "settings": {"duration_s": duration_s, "connections": connections, "linger_ms": linger_ms,
                         "null_app": NULL_APP, "servers_cpu": "CPU 0" if _pin(0) else "not pinned",
                         "wrk_cpu": "CPU 1" if _pin(1) else "not pinned", "broker_cpu": broker_cpu},
            "targets": {"throughput_ratio": ">= 0.7", "p99_ms": "< 25", "lost": "0"},
        }
        report["pass"] = (report["throughput_ratio"] >= 0.7 and result.p99_ms < 25 and report["lost"] == 0
                          and report["duplicates"] == 0 and result.non_2xx == 0)
        return report
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(bench(), indent=2))
