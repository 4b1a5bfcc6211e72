"""``leadstream sinks`` on the real broker and Redis, delivering to local receivers.

- leads reach the webhook (verified with the `standardwebhooks` package), Slack (Web API and
  incoming webhook), HubSpot and JSONL;
- ``kill -9`` in the middle of a burst of 500 leads, then a restart: every lead reaches every sink
  once, counted at the receivers: effects (the webhook receiver applies each webhook-id once, as
  the Standard Webhooks docs say) and raw requests;
- a failing receiver: the lead goes to sink-dead-letter after the configured attempts, the other
  sinks are not held up, and ``sinks retry-dead-letter`` delivers it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from kafka import KafkaProducer

from pipeline.codec import SingleObjectCodec, schemas_dir
from pipeline.enrich.identity_store import IdentityKeys
from pipeline.local.kafka import KafkaBroker, free_port
from pipeline.local.redis import RedisServer
from pipeline.settings import load_settings
from pipeline.topology import create_topics

from ..sink_receivers import HUBSPOT_TOKEN, SLACK_BOT_TOKEN, SLACK_CHANNEL, WEBHOOK_SECRET, Receivers
from .pipeline_harness import Pipeline, Visitor, _CliProcess, _healthy, now_ms
from .stagekit import REPO, read_all, wait_until

pytestmark = pytest.mark.integration

CODEC = SingleObjectCodec()
EXAMPLE = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())
SINKS = ("webhook", "slack", "slack_webhook", "hubspot", "jsonl")
#: sinks that promise one effect per lead even across kill -9 (the Slack incoming webhook cannot: see README)
EXACTLY_ONCE = ("webhook", "slack", "hubspot", "jsonl")


def make_lead(n: int, person_every: int = 5) -> dict[str, Any]:
    lead = json.loads(json.dumps(EXAMPLE))
    domain = f"company-{n}.example"
    lead.update(lead_id=str(uuid.uuid4()), account=f"c:{domain}", tstamp=int(time.time() * 1000))
    lead["company"]["domain"], lead["company"]["name"] = domain, f"Company {n}"
    if person_every and n % person_every == 0:
        lead["person"] = {"person_id": f"p-{n}", "confidence": 0.9, "seniority": "director",
                          "department": "engineering", "evidence": []}
        lead["identity_level"] = "person"
    return lead


class SinksRig:
    """Topics, a settings file with all four sinks, and the ``leadstream sinks`` process."""

    def __init__(self, broker: KafkaBroker, redis_url: str, tmp: Path, name: str, receivers: Receivers,
                 retry: dict[str, Any] | None = None) -> None:
        self.broker, self.tmp, self.name, self.receivers = broker, tmp, name, receivers
        self.jsonl = tmp / f"{name}-leads.jsonl"
        self.port = free_port()
        retry = retry or {"attempts": 3, "initial_backoff_s": 0.2, "multiplier": 2.0, "jitter": 0.1}
        common = {"retry": retry, "timeout_s": 3.0}
        self.topics = {k: f"{name}-{k.replace('_', '-')}" for k in
                       ("pixel_events", "bad_events", "visits", "lead_scores", "qualified_leads", "sink_dead_letter")}
        config = {
            "kafka": {"bootstrap_servers": broker.bootstrap}, "redis": {"url": redis_url}, "topics": self.topics,
            "stages": {"app_id": f"{name}-app", "session_timeout_s": 6.0, "heartbeat_interval_s": 1.0},
            "sinks": {"group_id": f"{name}-sinks", "port": self.port, "namespace": f"{name}:sinks", "lease_s": 3.0,
                      "retry_poll_s": 0.2, "commit_interval_s": 0.5},
            "log_level": "info", "data_dir": str(tmp / f"{name}-data"),
            "sites": [{"site_id": "acme", "allowed_origins": ["*"], "sinks": [
                {"type": "webhook", "name": "webhook", "url": f"{receivers.url}/webhook",
                 "secrets": [WEBHOOK_SECRET], **common},
                {"type": "slack", "name": "slack", "bot_token": SLACK_BOT_TOKEN, "channel": SLACK_CHANNEL,
                 "api_url": f"{receivers.url}/slack-api", **common},
                {"type": "slack", "name": "slack-hook", "webhook_url": f"{receivers.url}/slack", **common},
                {"type": "hubspot", "name": "hubspot", "token": HUBSPOT_TOKEN, "base_url": receivers.url,
                 "portal_id": 42, **common},
                {"type": "jsonl", "name": "jsonl", "path": str(self.jsonl), **common},
            ]}],
        }
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.settings = load_settings(self.config_path)
        create_topics(self.settings)
        self.processes: list[_CliProcess] = []

    def start(self, tag: str = "sinks", port: int | None = None) -> _CliProcess:
        """A sinks process; ``port`` for its /metrics other than the config's (a second process)."""
        config = self.config_path
        if port is not None:
            data = yaml.safe_load(self.config_path.read_text())
            data["sinks"]["port"] = port
            config = self.tmp / f"{self.name}-{tag}.yaml"
            config.write_text(yaml.safe_dump(data))
        p = _CliProcess(["sinks", "-c", str(config)], self.tmp, f"{self.name}-{tag}").start()
        self.processes.append(p)
        wait_until(lambda: _healthy(f"http://127.0.0.1:{port or self.port}/health"), 60, "the sinks process",
                   p.log_tail)
        return p

    def produce(self, leads: list[dict[str, Any]], per_second: float = 0) -> dict[str, float]:
        """Write ``leads`` to qualified-leads; returns lead id -> send time (epoch s)."""
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all", linger_ms=2)
        sent = {}
        try:
            for lead in leads:
                sent[lead["lead_id"]] = time.time()
                producer.send(self.topics["qualified_leads"], CODEC.encode("QualifiedLead", lead),
                              key=f"{lead['site_id']}|{lead['account']}".encode())
                if per_second:
                    time.sleep(1 / per_second)
        finally:
            producer.flush()
            producer.close()
        return sent

    def jsonl_ids(self) -> list[str]:
        if not self.jsonl.exists():
            return []
        ids = []
        for line in self.jsonl.read_text().splitlines():
            try:
                ids.append(json.loads(line)["lead_id"])
            except ValueError:  # a line cut by kill -9
                pass
        return ids

    def delivered(self) -> dict[str, list[str]]:
        """Lead ids as each receiver applied them (effects), repeats included: the webhook receiver
        applies a webhook-id once; a Slack message, a HubSpot company write, a JSONL line each count."""
        r = self.receivers
        with r.lock:
            return {"webhook": [i for i, _ in r.webhook], "slack": [i for i, _ in r.slack_api],
                    "slack_webhook": [i for i, _ in r.slack], "hubspot": [i for i, _ in r.hubspot_leads],
                    "jsonl": self.jsonl_ids()}

    def requests(self) -> dict[str, list[str]]:
        """Lead ids of every request that reached a receiver (raw, before de-duplication)."""
        effects = self.delivered()
        with self.receivers.lock:
            return {**effects, "webhook": list(self.receivers.webhook_requests)}

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log_tail(40)}" for p in self.processes)

    def stop(self) -> None:
        for p in self.processes:
            if p.alive():
                p.terminate()


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    r = Receivers().start_thread()
    try:
        yield r
    finally:
        r.stop_thread()


@pytest.fixture
def rig(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path, receivers: Receivers,
        unique_name: Callable[[str], str]) -> Iterator[SinksRig]:
    r = SinksRig(kafka_broker, redis_server.url, tmp_path, unique_name("sinks"), receivers)
    try:
        yield r
    finally:
        r.stop()


def _profiles(redis_url: str, leads: list[dict[str, Any]]) -> None:
    client = redis.Redis.from_url(redis_url)
    for lead in leads:
        if lead["person"]:
            pid = lead["person"]["person_id"]
            client.hset(IdentityKeys("acme").person(pid), mapping={
                "created": 1, "f:email": f"{pid}@{lead['company']['domain']}", "f:name": f"Person {pid}",
                "f:title": "VP Engineering"})


def _all_delivered(rig: SinksRig, ids: set[str]) -> Callable[[], bool]:
    return lambda: all(ids <= set(v) for v in rig.delivered().values())


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _in_doubt(port: int) -> dict[str, float]:
    """``leadstream_sink_in_doubt_total`` by sink and resolution, from a sinks process's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("leadstream_sink_in_doubt_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            value = float(line.rsplit(" ", 1)[1])
            if value:
                found[f"{labels['sink'].strip(chr(34))}:{labels['resolution'].strip(chr(34))}"] = value
    return found


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def test_leads_reach_all_four_sinks(rig: SinksRig, receivers: Receivers, redis_server: RedisServer) -> None:
    leads = [make_lead(n) for n in range(1, 11)]
    _profiles(redis_server.url, leads)
    rig.start()
    rig.produce(leads)
    ids = {lead["lead_id"] for lead in leads}
    wait_until(_all_delivered(rig, ids), 60, "the leads at every receiver", rig.logs)
    assert receivers.webhook_rejected == 0
    lead = leads[4]  # n=5: has a person with a profile
    assert receivers.webhook_bodies[lead["lead_id"]]["data"]["lead_id"] == lead["lead_id"]
    contact = next(c for c in receivers.contacts.values() if c["email"] == f"p-5@{lead['company']['domain']}")
    assert contact["leadstream_tier"] == "A2" and contact["firstname"] == "Person"
    assert len(receivers.associations) == 2 and not receivers.hubspot_errors
    metrics = httpx.get(f"http://127.0.0.1:{rig.port}/metrics").text
    assert 'leadstream_sink_delivered_total{sink="acme/webhook",type="webhook"} 10.0' in metrics
    lint = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert rig.processes[0].terminate() == 0  # a graceful stop


def test_a_pixel_driven_lead_reaches_all_four_sinks(pipeline: Pipeline, receivers: Receivers,
                                                    tmp_path: Path) -> None:
    """Hits through the collector and the worker qualify Brightpath; `leadstream sinks` delivers the lead."""
    from .test_pipeline import BRIGHTPATH_IP, BUYING_PATHS
    p = pipeline
    jsonl = tmp_path / "pixel-leads.jsonl"
    port = free_port()
    config = {**p.config, "sinks": {"group_id": f"{p.name}-sinks", "port": port, "namespace": f"{p.name}:sinks"},
              "sites": [{**p.config["sites"][0], "sinks": [
                  {"type": "webhook", "name": "webhook", "url": f"{receivers.url}/webhook",
                   "secrets": [WEBHOOK_SECRET]},
                  {"type": "slack", "name": "slack", "webhook_url": f"{receivers.url}/slack"},
                  {"type": "hubspot", "name": "hubspot", "token": HUBSPOT_TOKEN, "base_url": receivers.url},
                  {"type": "jsonl", "name": "jsonl", "path": str(jsonl)}]}]}
    path = tmp_path / "with-sinks.yaml"
    path.write_text(yaml.safe_dump(config))
    sinks = _CliProcess(["sinks", "-c", str(path)], tmp_path, f"{p.name}-sinks").start()
    p.processes.append(sinks)
    wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health"), 60, "the sinks process", sinks.log_tail)
    t0 = now_ms() - 3_600_000
    buyer = Visitor(p, BRIGHTPATH_IP)
    t = buyer.browse(t0, BUYING_PATHS[:4])
    buyer.browse(t + 45 * 60_000, BUYING_PATHS[4:])
    p.wait_for(lambda: len(p.leads()) >= 1, "a qualified lead")

    def everywhere(lead_id: str) -> bool:
        return (lead_id in receivers.webhook_bodies and lead_id in dict(receivers.slack)
                and lead_id in dict(receivers.hubspot_leads) and jsonl.exists() and lead_id in jsonl.read_text())

    while True:  # the second session may raise the tier: a second lead of the account
        time.sleep(3)
        leads = p.leads()
        p.wait_for(lambda: all(everywhere(lead["lead_id"]) for lead in leads), "the leads at every receiver", 60)
        if p.leads() == leads:
            break
    lead = leads[0]
    assert receivers.webhook_bodies[lead["lead_id"]]["data"] == lead   # the full lead, signature verified
    assert json.loads(jsonl.read_text().splitlines()[0]) == lead
    [company] = receivers.companies.values()
    assert company["domain"] == "brightpath-analytics.example"
    assert company["leadstream_tier"] == leads[-1]["tier"]               # the CRM ends with the newest lead
    assert "Brightpath" in json.dumps(receivers.slack_payloads[0]["blocks"])


def test_kill_9_mid_burst_delivers_every_lead_once(rig: SinksRig, receivers: Receivers,
                                                   redis_server: RedisServer) -> None:
    first = rig.start("first")
    warm = rig.produce([make_lead(-1, person_every=0)])  # the group join is over once this one is delivered
    wait_until(_all_delivered(rig, set(warm)), 60, "the first lead", rig.logs)
    # steady phase: latency from the write to qualified-leads to each receiver
    steady = [make_lead(n, person_every=0) for n in range(100)]
    sent = rig.produce(steady, per_second=20)
    wait_until(_all_delivered(rig, set(sent)), 60, "the steady leads", rig.logs)
    with receivers.lock:
        arrival = {name: dict(reversed(items)) for name, items in (
            ("webhook", list(receivers.webhook)), ("slack", list(receivers.slack_api)),
            ("slack_webhook", list(receivers.slack)), ("hubspot", list(receivers.hubspot_leads)))}
    latencies = [arrival[s][i] - sent[i] for s in arrival for i in sent]
    per_sink = {s: sorted(arrival[s][i] - sent[i] for i in sent) for s in arrival}
    # burst: 500 leads, kill -9 once a part is delivered, restart
    burst = [make_lead(1000 + n) for n in range(500)]
    _profiles(redis_server.url, burst)
    ids = {lead["lead_id"] for lead in burst}
    # slow receivers, so the kill lands with requests in flight: the webhook (500 leads over 4 slots
    # take >= 2.5 s), and Slack and HubSpot, which apply a write and answer it 20 ms later: a request
    # in flight at the kill has taken effect but its answer is never recorded (in doubt)
    receivers.webhook_delay_s = receivers.answer_delay_s = 0.02
    rig.produce(burst)
    wait_until(lambda: len(ids & set(rig.delivered()["webhook"])) >= 150, 60, "a part of the burst", rig.logs,
               every_s=0.05)
    first.kill()
    time.sleep(0.1)  # the receivers finish the requests that were in flight
    receivers.webhook_delay_s = receivers.answer_delay_s = 0.0
    at_kill = {k: len(ids & set(v)) for k, v in rig.delivered().items()}
    rig.start("second")
    wait_until(_all_delivered(rig, ids | set(sent) | set(warm)), 120, "every lead at every receiver", rig.logs)
    time.sleep(4)  # longer than the lease: anything left locked by the killed process is resolved by now
    got, raw = rig.delivered(), rig.requests()
    report: dict[str, Any] = {
        name: {"sent": len(ids), "delivered": len(ids & set(v)), "at_kill": at_kill[name],
               "duplicate_effects": len([i for i in v if i in ids]) - len(ids & set(v)),
               "duplicate_requests": len([i for i in raw[name] if i in ids]) - len(ids & set(raw[name]))}
        for name, v in got.items()}
    with receivers.lock:
        contacts = [i for i in receivers.hubspot_contact_leads if i in ids]
    report["hubspot"]["duplicate_contact_writes"] = len(contacts) - len(set(contacts))
    report["in_doubt"] = _in_doubt(rig.port)
    report["latency_ms"] = {"p50": round(statistics.median(latencies) * 1000, 1),
                            "p99": round(_percentile(latencies, 0.99) * 1000, 1)}
    report["latency_ms_per_sink"] = {s: {"p50": round(statistics.median(v) * 1000, 1),
                                         "p99": round(_percentile(v, 0.99) * 1000, 1)} for s, v in per_sink.items()}
    report["hubspot_objects"] = {"companies": len(receivers.companies), "contacts": len(receivers.contacts)}
    cpu = _metric(rig.port, "process_cpu_seconds_total")
    report["second_process_cpu_ms_per_lead"] = round(cpu * 1000 / (600 - min(at_kill.values())), 2)
    print("SINKS-EXACTLY-ONCE", json.dumps(report))
    for name in SINKS:
        assert report[name]["delivered"] == 500, report
    assert 0 < report["webhook"]["at_kill"] < 500, report  # the kill landed mid-burst
    # Exactly one effect per lead and sink, kill -9 or not: a request the killed process had in
    # flight is resolved on restart (read back at HubSpot and Slack's Web API, resent with the same
    # webhook-id to the webhook, whose receiver applies an id once).
    for name in EXACTLY_ONCE:
        assert report[name]["duplicate_effects"] == 0, report
    assert report["hubspot"]["duplicate_requests"] == 0 and report["hubspot"]["duplicate_contact_writes"] == 0
    assert report["slack"]["duplicate_requests"] == 0, report
    # the webhook may see the in-flight requests again (same webhook-id): at most its concurrency
    assert report["webhook"]["duplicate_requests"] <= 4, report
    # the Slack incoming webhook has no idempotency key and no read API: at-least-once, at most
    # one duplicate message per crash (concurrency 1), reported, not hidden
    assert report["slack_webhook"]["duplicate_effects"] <= 1, report
    assert sum(report["in_doubt"].values()) >= 1, report  # the kill did leave deliveries in doubt
    assert report["hubspot_objects"] == {"companies": 601, "contacts": 100}, report  # upserts: one object each
    assert receivers.webhook_rejected == 0 and not receivers.hubspot_errors and not receivers.slack_api_errors


def test_two_processes_share_the_partitions_and_a_rebalance_sends_nothing_twice(
        rig: SinksRig, receivers: Receivers) -> None:
    first = rig.start("a")
    rig.start("b", port=free_port())  # joining moves partitions while the first is delivering
    leads = [make_lead(n, person_every=0) for n in range(300)]
    ids = {lead["lead_id"] for lead in leads}
    rig.produce(leads[:150], per_second=100)
    assert first.terminate() == 0      # a graceful stop: its partitions move to the second process
    rig.produce(leads[150:])
    wait_until(_all_delivered(rig, ids), 120, "every lead at every receiver", rig.logs)
    time.sleep(4)  # longer than the lease
    got = rig.delivered()
    duplicates = {name: len([i for i in v if i in ids]) - len(ids & set(v)) for name, v in got.items()}
    print("SINKS-REBALANCE", json.dumps({"sent": len(ids), "duplicates": duplicates}))
    assert duplicates == {name: 0 for name in SINKS}, duplicates


def test_failing_receiver_dead_letters_then_redrive_delivers(rig: SinksRig, receivers: Receivers) -> None:
    receivers.webhook_status = 503
    rig.start()
    lead = make_lead(7, person_every=0)
    rig.produce([lead])
    wait_until(lambda: len(read_all(rig.broker.bootstrap, rig.topics["sink_dead_letter"])) >= 1, 60,
               "the dead letter", rig.logs)
    # the other sinks were not held up by the failing one
    assert lead["lead_id"] in rig.delivered()["jsonl"] and lead["lead_id"] in rig.delivered()["slack"]
    [record] = read_all(rig.broker.bootstrap, rig.topics["sink_dead_letter"])
    dl = CODEC.decode(record.value, "SinkDeadLetter")
    assert (dl["lead_id"], dl["sink"], dl["attempts"], dl["status_code"]) == (lead["lead_id"], "webhook", 3, 503)
    assert dl["error"].startswith("HTTP 503") and json.loads(dl["lead"])["lead_id"] == lead["lead_id"]
    assert receivers.webhook == []
    metrics = httpx.get(f"http://127.0.0.1:{rig.port}/metrics").text
    assert 'leadstream_sink_dead_lettered_total{sink="acme/webhook",type="webhook"} 1.0' in metrics
    assert 'leadstream_sink_retried_total{sink="acme/webhook",type="webhook"} 2.0' in metrics
    receivers.webhook_status = 200
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "sinks", "retry-dead-letter", "-c",
                          str(rig.config_path)], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "scheduled again: 1" in out.stdout
    wait_until(lambda: lead["lead_id"] in rig.delivered()["webhook"], 30, "the re-driven lead", rig.logs)
    time.sleep(1)
    assert rig.delivered()["webhook"] == [lead["lead_id"]]
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "sinks", "retry-dead-letter", "-c",
                            str(rig.config_path)], cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert "dead letters read: 0" in again.stdout, again.stdout
