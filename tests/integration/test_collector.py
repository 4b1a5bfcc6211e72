"""The collector with its real batching producer against the real Apache Kafka broker (and the embedded one).

Every test makes its own pixel-events and bad-events topics. The app runs in
this test's event loop through httpx's ASGI transport with its lifespan, so
the producer, its broker monitor and the requests share one loop; one test
runs it on uvicorn (uvloop + httptools) over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.applications import Starlette

from pipeline.codec import SingleObjectCodec
from pipeline.collector import BatchingProducer, create_app
from pipeline.collector.app import SNOWPLOW_TP2_PATH
from pipeline.collector.server import _config
from pipeline.local.kafka import KafkaBroker, LocalBroker
from pipeline.settings import CollectorSettings, KafkaSettings, Settings, SiteSettings, TopicSettings
from pipeline.topology import create_topics, partition_for, topic_specs, visitor_key

pytestmark = pytest.mark.timeout(240)

CODEC = SingleObjectCodec()
ACME = {"origin": "https://www.acme.com"}
TP2_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
SITES = [SiteSettings(site_id="acme", allowed_origins=["https://www.acme.com"])]


def make_settings(bootstrap: str, unique_name: Callable[[str], str], idempotence: bool | None = None,
                  **collector: Any) -> Settings:
    settings = Settings(
        topics=TopicSettings(pixel_events=unique_name("pixel"), bad_events=unique_name("bad")),
        kafka=KafkaSettings(bootstrap_servers=bootstrap, idempotence=idempotence),
        sites=SITES,
        collector=CollectorSettings(**{"linger_ms": 5, "ack_timeout_s": 3, "retry_after_s": 2, **collector}),
    )
    create_topics(settings, [s for s in topic_specs(settings) if s.logical in ("pixel_events", "bad_events")])
    return settings


@contextlib.asynccontextmanager
async def running(settings: Settings, probe_interval_s: float = 0.5) -> AsyncIterator[
        tuple[httpx.AsyncClient, BatchingProducer]]:
    producers: list[BatchingProducer] = []

    def factory(s: Settings) -> BatchingProducer:
        producers.append(BatchingProducer(s, probe_interval_s=probe_interval_s, connect_timeout_s=3.0))
        return producers[0]

    app: Starlette = create_app(settings, producer_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://collector.test") as client:
            yield client, producers[0]


async def read_topic(bootstrap: str, topic: str, count: int = 8) -> list[tuple[int, bytes | None, dict[str, Any]]]:
    """Every record of ``topic`` (``count`` partitions) from the beginning to the current end.

    Returns (partition, key, decoded value) tuples.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        out: list[tuple[int, bytes | None, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "timed out reading the topic"
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    assert record.value is not None
                    out.append((tp.partition, record.key, CODEC.decode(record.value)))
        return out
    finally:
        await consumer.stop()


def payloads_of(records: list[tuple[int, bytes | None, dict[str, Any]]]) -> list[tuple[int, bytes | None,
                                                                                       dict[str, Any]]]:
    return [(partition, key, payload) for partition, key, value in records for payload in value["payloads"]]


def assert_partitioned(records: list[tuple[int, bytes | None, dict[str, Any]]], partitions: int) -> None:
    """Every payload sits in the partition of its site+visitor key; a record's key is that key when shared."""
    for partition, key, value in records:
        keys = set()
        for payload in value["payloads"]:
            visitor = payload["visitor_id"] or payload["payload_id"]
            expected = visitor_key(payload["site_id"], visitor)
            keys.add(expected)
            assert partition == partition_for(expected, partitions), payload
        assert key == (keys.pop().encode() if len(keys) == 1 else None)


def b64url(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def test_each_endpoint_becomes_a_record_in_the_right_partition(
        kafka_broker: KafkaBroker, unique_name: Callable[[str], str]) -> None:
    settings = make_settings(kafka_broker.bootstrap, unique_name)
    envelope = {"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                "data": {"schema": "iglu:com.acme/signup/jsonschema/1-0-0", "data": {"plan": "pro"}}}
    async with running(settings) as (http, producer):
        assert producer.broker_up and producer.partitions == 8
        responses = await asyncio.gather(
            http.post("/collect", headers={**ACME, "content-type": "text/plain"}, content=json.dumps({
                "site_id": "acme", "visitor_id": "v-collect", "sent_at": 1_700_000_000_500, "events": [
                    {"type": "page_view", "id": "collect-1", "url": "https://www.acme.com/pricing?utm_source=x"},
                    {"type": "page_ping", "id": "collect-2", "engaged_ms": 5000, "scroll_depth": 40}]})),
            http.get("/p.gif?" + urlencode({"site_id": "acme", "visitor_id": "v-gif", "id": "gif-1",
                                             "type": "link_click", "name": "Book a demo",
                                             "target_url": "https://www.acme.com/demo"})),
            http.get("/i?" + urlencode({"e": "pv", "aid": "acme", "duid": "d-i", "eid": "i-1", "page": "Home"})),
            http.get("/ice.png?" + urlencode({"e": "se", "aid": "acme", "duid": "d-ice", "eid": "ice-1",
                                              "se_ca": "video", "se_ac": "play"})),
            http.post(SNOWPLOW_TP2_PATH, headers=ACME, content=json.dumps({"schema": TP2_SCHEMA, "data": [
                {"e": "pv", "aid": "acme", "duid": "d-tp2-a", "eid": "tp2-1", "dtm": "1700000000000"},
                {"e": "ue", "aid": "acme", "duid": "d-tp2-a", "eid": "tp2-2", "ue_px": b64url(envelope)},
                {"e": "pv", "aid": "acme", "duid": "d-tp2-b", "eid": "tp2-3"}]})),
        )
        assert [r.status_code for r in responses] == [200] * 5
        nuid = responses[1].cookies.get(settings.collector.cookie_name)
        assert nuid

        # each kind of bad input: the status and a BadRow on bad-events
        bad = await asyncio.gather(
            http.post("/collect", content=b"{not json"),
            http.post("/collect", content=json.dumps({"site_id": "acme", "events": [{"type": "bogus"}]})),
            http.post("/collect", content=json.dumps({"site_id": "nope", "events": [{"type": "page_view"}]})),
            http.post("/collect", headers={"origin": "https://evil.example"},
                      content=json.dumps({"site_id": "acme", "events": [{"type": "page_view"}]})),
            http.post("/collect", content=b"x" * (settings.collector.max_request_bytes + 1)),
            http.get("/p.gif?" + urlencode({"site_id": "acme", "title": "t" * 9000})),
        )
        assert [r.status_code for r in bad] == [400, 400, 403, 403, 413, 400]

    records = await read_topic(kafka_broker.bootstrap, settings.topics.pixel_events)
    events = payloads_of(records)
    assert_partitioned(records, 8)
    by_event = {e["event_id"]: (payload, e) for _, _, payload in events for e in payload["events"]}
    assert sorted(by_event) == sorted(["collect-1", "collect-2", "gif-1", "i-1", "ice-1", "tp2-1", "tp2-2", "tp2-3"])
    payload, event = by_event["collect-1"]
    assert (payload["source"], payload["visitor_id"], payload["client_ip"], payload["origin"]) == (
        "collect", "v-collect", "198.51.100.7", "https://www.acme.com")
    assert event["url"] == "https://www.acme.com/pricing?utm_source=x" and event["device_sent_tstamp"] == 1_700_000_000_500
    assert by_event["collect-2"][1]["engaged_ms"] == 5000 and by_event["collect-2"][1]["scroll_depth"] == 40
    payload, event = by_event["gif-1"]
    assert payload["source"] == "pixel_gif" and payload["network_user_id"] == nuid
    assert (event["event_type"], event["name"], event["target_url"]) == (
        "link_click", "Book a demo", "https://www.acme.com/demo")
    assert by_event["i-1"][0]["source"] == "snowplow_get" and by_event["i-1"][1]["page_title"] == "Home"
    assert by_event["ice-1"][1]["se_action"] == "play"
    assert by_event["tp2-2"][0]["source"] == "snowplow_post" and by_event["tp2-2"][0]["visitor_id"] == "d-tp2-a"
    assert json.loads(by_event["tp2-2"][1]["properties_json"]) == envelope
    assert by_event["tp2-3"][0]["visitor_id"] == "d-tp2-b"

    rows = [value for _, _, value in await read_topic(kafka_broker.bootstrap, settings.topics.bad_events, 4)]
    assert sorted(row["failure_type"] for row in rows) == sorted(
        ["malformed_request", "protocol_violation", "site_violation", "origin_violation", "size_violation",
         "size_violation"])
    assert all(row["stage"] == "collector" and row["payload"] for row in rows)
    oversized = next(r for r in rows if r["payload_size"] > settings.collector.max_request_bytes)
    assert oversized["payload_truncated"] and len(oversized["payload"]) <= settings.collector.bad_row_payload_limit


async def test_linger_groups_requests_per_partition(kafka_broker: KafkaBroker,
                                                    unique_name: Callable[[str], str]) -> None:
    settings = make_settings(kafka_broker.bootstrap, unique_name, linger_ms=50)
    async with running(settings) as (http, _):
        visitors = [f"v{n}" for n in range(40)]
        responses = await asyncio.gather(*[
            http.get("/p.gif?" + urlencode({"site_id": "acme", "visitor_id": v, "id": f"{v}-{i}"}))
            for v in visitors for i in range(3)])
        assert all(r.status_code == 200 for r in responses)
    records = await read_topic(kafka_broker.bootstrap, settings.topics.pixel_events)
    assert_partitioned(records, 8)
    assert sum(len(v["payloads"]) for _, _, v in records) == 120
    assert len(records) < 60, "requests within the linger should share records"


async def test_broker_outage_503_then_recovery_and_exactly_once(kafka_broker: KafkaBroker,
                                                                unique_name: Callable[[str], str]) -> None:
    # one client sends as fast as it can on purpose: the outage is under test here, not the per-IP rate limit
    settings = make_settings(kafka_broker.bootstrap, unique_name, ack_timeout_s=2, retry_after_s=3,
                             rate_limit_ip_per_s=0)
    answered_200: list[str] = []
    statuses: Counter[int] = Counter()
    counter = iter(range(10**9))

    async def hit(http: httpx.AsyncClient) -> httpx.Response:
        n = next(counter)
        event_id = f"hit-{n}"
        r = await http.get("/p.gif?" + urlencode({"site_id": "acme", "visitor_id": f"v{n % 17}", "id": event_id}))
        statuses[r.status_code] += 1
        if r.status_code == 200:
            answered_200.append(event_id)
        else:
            assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
        return r

    async def traffic(http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.gather(*[hit(http) for _ in range(5)])
            await asyncio.sleep(0.02)

    async with running(settings) as (http, producer):
        stop_traffic = asyncio.Event()
        background = asyncio.create_task(traffic(http, stop_traffic))
        try:
            await asyncio.sleep(1.0)
            assert statuses[200] > 0 and statuses[503] == 0

            await asyncio.to_thread(kafka_broker.stop)
            deadline = time.monotonic() + settings.collector.ack_timeout_s + 10
            while (await http.get("/sink-health")).status_code != 503:
                assert time.monotonic() < deadline, "the collector did not notice the broker is down"
                await asyncio.sleep(0.1)
            # known down: every hit is refused at once, without waiting for the ack timeout
            for _ in range(10):
                started = time.monotonic()
                r = await hit(http)
                assert r.status_code == 503 and time.monotonic() - started < 0.25
            assert not producer.broker_up

            await asyncio.to_thread(kafka_broker.start)
            deadline = time.monotonic() + 90
            while (await http.get("/sink-health")).status_code != 200:
                assert time.monotonic() < deadline, "the collector did not recover by itself"
                await asyncio.sleep(0.2)
            ok_before = statuses[200]
            await asyncio.sleep(1.5)
            assert statuses[200] > ok_before
        finally:
            stop_traffic.set()
            await background
            if not kafka_broker.running:
                await asyncio.to_thread(kafka_broker.start)
        for _ in range(20):
            assert (await hit(http)).status_code == 200

    assert statuses[503] > 0
    records = await read_topic(kafka_broker.bootstrap, settings.topics.pixel_events)
    assert_partitioned(records, 8)
    on_topic = Counter(e["event_id"] for _, _, v in records for p in v["payloads"] for e in p["events"])
    missing = [e for e in answered_200 if on_topic[e] == 0]
    duplicated = [e for e in answered_200 if on_topic[e] > 1]
    assert not missing and not duplicated, (missing[:5], duplicated[:5])
    assert len(answered_200) == len(set(answered_200))


async def test_embedded_broker_without_idempotence(embedded_broker: LocalBroker,
                                                   unique_name: Callable[[str], str]) -> None:
    settings = make_settings(embedded_broker.bootstrap, unique_name, idempotence=False)
    async with running(settings) as (http, producer):
        assert producer.broker_up, producer.down_reason
        r = await http.get("/p.gif?" + urlencode({"site_id": "acme", "visitor_id": "v-1", "id": "tansu-1"}))
        assert r.status_code == 200
        r = await http.post("/collect", content=b"{")
        assert r.status_code == 400
    records = await read_topic(embedded_broker.bootstrap, settings.topics.pixel_events)
    assert_partitioned(records, 8)
    assert [e["event_id"] for _, _, v in records for p in v["payloads"] for e in p["events"]] == ["tansu-1"]
    rows = await read_topic(embedded_broker.bootstrap, settings.topics.bad_events, 4)
    assert [v["failure_type"] for _, _, v in rows] == ["malformed_request"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_on_uvicorn_over_http(kafka_broker: KafkaBroker, unique_name: Callable[[str], str]) -> None:
    settings = make_settings(kafka_broker.bootstrap, unique_name, host="127.0.0.1", port=_free_port())
    server = uvicorn.Server(_config(settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{settings.collector.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/sink-health")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "collector did not start"
                await asyncio.sleep(0.1)
            r = await http.get("/i?" + urlencode({"e": "pv", "aid": "acme", "duid": "d-1", "eid": "http-1"}),
                               headers={"x-forwarded-for": "1.2.3.4"})
            assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
            assert (await http.get("/pixel.js")).status_code == 200
            assert "leadstream_collector_requests_total" in (await http.get("/metrics")).text
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15)
    ((partition, key, value),) = await read_topic(kafka_broker.bootstrap, settings.topics.pixel_events)
    (payload,) = value["payloads"]
    assert payload["client_ip"] == "127.0.0.1"  # XFF from an untrusted peer is ignored
    assert key == visitor_key("acme", "d-1").encode() and partition == partition_for("acme|d-1", 8)
