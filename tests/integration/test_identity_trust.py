"""Issue 13 through the real collector and worker: a browser identity is a claim, a signed one is verified,
browser traits never overwrite the CRM's fields, and the site's confidences apply."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

from pipeline.collector.signing import sign_headers
from pipeline.core.identity import IdType, ImportedIdentity, hash_email, import_identity
from pipeline.enrich.identity_store import IdentityKeys, SyncIdentityStore
from pipeline.local.kafka import KafkaBroker
from pipeline.local.redis import RedisServer
from pipeline.settings import load_settings

from .pipeline_harness import Pipeline, Visitor, load_reference_data, now_ms

pytestmark = pytest.mark.integration

WRITE_KEY = "integration-write-key-0123456789"
CRM = {"company_domain": "brightpath-analytics.example", "seniority": "director", "title": "Head of Data"}
CLAIMED = "dana.crm@brightpath-analytics.example"
SIGNED = "erin.server@brightpath-analytics.example"


@pytest.fixture
def trust_pipeline(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
                   unique_name: Callable[[str], str]) -> Iterator[Pipeline]:
    load_reference_data(redis_server.url)
    p = Pipeline(kafka_broker, redis_server.url, tmp_path, unique_name("trust"))
    p.config["sites"][0].update({"write_keys": [WRITE_KEY], "identity": {"browser_confidence": 0.4}})
    p.config_path.write_text(yaml.safe_dump(p.config))
    p.settings = load_settings(p.config_path)
    store = SyncIdentityStore.from_url(redis_server.url)
    try:  # the site owner's CRM export: Dana, with her real company and seniority
        result = import_identity(store.load_snapshot("acme", [(IdType.email, hash_email(CLAIMED, "test-salt"))]),
                                 ImportedIdentity(email=CLAIMED, profile=CRM), tstamp=now_ms(), salt="test-salt")
        store.apply("acme", result.ops, allow_plain_email=True)
    finally:
        store.close()
    p.create_topics()
    p.start_worker()
    p.start_collector()
    try:
        yield p
    finally:
        p.stop()


def updates_of(p: Pipeline, visitor_id: str) -> list[dict[str, Any]]:
    return [u for batch in p.decoded("visits") for u in batch["updates"]
            if u["visitor_id"] == visitor_id and u["person_id"]]


def test_claimed_and_signed_identities_end_to_end(trust_pipeline: Pipeline, redis_server: RedisServer) -> None:
    p = trust_pipeline
    t = now_ms() - 600_000
    # a script claims to be Dana from the browser, with forged traits
    forger = Visitor(p, "198.51.100.20")
    forger.browse(t, ["/pricing"])
    forger.send([{"type": "identify", "email": CLAIMED, "ts": t + 60_000,
                  "traits": {"company_domain": "evil.example", "seniority": "c_level", "title": "CEO"}}],
                sent_at=t + 60_000)
    # the site's backend says who Erin is, signed with the write key
    erin = Visitor(p, "198.51.100.21")
    body = json.dumps({"site_id": "acme", "visitor_id": erin.visitor_id, "sent_at": t + 61_000,
                       "events": [{"type": "identify", "email": SIGNED, "user_id": "erin-1", "ts": t + 61_000,
                                   "traits": {"title": "CFO"}}]}).encode()
    r = httpx.post(f"{p.url}/collect", content=body, headers={**sign_headers(WRITE_KEY, body),
                                                              "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    # a forged signature is refused and writes nothing
    r = httpx.post(f"{p.url}/collect", content=body, headers=sign_headers("not-the-key-0123456789", body))
    assert r.status_code == 403

    p.wait_for(lambda: bool(updates_of(p, forger.visitor_id)) and bool(updates_of(p, erin.visitor_id)),
               "both visitors resolved to persons")
    claimed = updates_of(p, forger.visitor_id)[-1]
    signed = updates_of(p, erin.visitor_id)[-1]
    assert claimed["person_confidence"] == 0.4                     # the site's browser_confidence
    assert [e["source"] for e in claimed["person_evidence"]] == ["identity:identify"]
    assert signed["person_confidence"] == 1.0
    assert [e["source"] for e in signed["person_evidence"]] == ["identity:server"]

    # the CRM's fields are intact; a field the CRM lacks was not there to protect
    import redis
    client = redis.Redis.from_url(redis_server.url)
    link = client.hgetall(IdentityKeys("acme").link((IdType.email, hash_email(CLAIMED, "test-salt"))))
    person = {k.decode(): v.decode() for k, v in
              client.hgetall(IdentityKeys("acme").person(link[b"p"].decode())).items()}
    assert person["f:company_domain"] == CRM["company_domain"] and person["f:seniority"] == "director"
    assert person["f:title"] == "Head of Data"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not p.decoded("bad_events"):
        time.sleep(0.2)
    bad = p.decoded("bad_events")
    assert [b["failure_type"] for b in bad] == ["origin_violation"] and "signature" in bad[0]["message"]


@pytest.fixture
def guarded_collector(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
                      unique_name: Callable[[str], str]) -> Iterator[Pipeline]:
    """The real collector process for a site that requires an Origin, with small rate limits."""
    p = Pipeline(kafka_broker, redis_server.url, tmp_path, unique_name("guard"))
    p.config["sites"][0].update({"allowed_origins": ["https://www.acme.example"], "require": "origin",
                                 "write_keys": [WRITE_KEY]})
    p.config["collector"].update({"rate_limit_ip_per_s": 1, "rate_limit_ip_burst": 5, "body_timeout_s": 1})
    p.config_path.write_text(yaml.safe_dump(p.config))
    p.settings = load_settings(p.config_path)
    p.create_topics()
    p.start_collector()
    try:
        yield p
    finally:
        p.stop()


def test_the_real_collector_refuses_floods_and_forgeries(guarded_collector: Pipeline) -> None:
    p = guarded_collector
    page = {"site_id": "acme", "visitor_id": "v-1", "events": [{"type": "page_view",
                                                                 "url": "https://www.acme.example/"}]}
    with httpx.Client(base_url=p.url, timeout=10) as http:
        origin = {"Origin": "https://www.acme.example", "X-Forwarded-For": "198.51.100.50"}
        r = http.get("/p.gif?site_id=acme", headers={"X-Forwarded-For": "198.51.100.51"})   # curl / <img>: no Origin
        assert r.status_code == 403 and "requires an Origin" in r.json()["message"]
        r = http.post("/collect", json=page, headers={**origin, "Origin": "https://evil.example"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        r = http.get("/p.gif?site_id=acme", headers={**origin, "sec-ch-ua": "x" * 60_000})
        assert r.status_code == 431
        r = http.get("/p.gif?site_id=acme&props=" + "[" * 5000, headers=origin)
        assert r.status_code == 400 and "nested too deeply" in r.json()["message"]
        body = json.dumps(page).encode()
        r = http.post("/collect", content=body, headers={**sign_headers(WRITE_KEY, body),
                                                         "X-Forwarded-For": "198.51.100.52"})
        assert r.status_code == 200                                           # a signed server call
        statuses = [http.post("/collect", json=page, headers=origin).status_code for _ in range(8)]
        # burst 5: the forged origin and the deep JSON took one token each (the 431 came before the limit)
        assert statuses[:3] == [200] * 3 and statuses[3] == 429 and statuses[-1] == 429, statuses
        limited = http.post("/collect", json=page, headers=origin)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.headers["access-control-allow-origin"] == "https://www.acme.example"
        metrics = http.get("/metrics").text
        assert 'leadstream_collector_rate_limited_total{scope="ip",site=""}' in metrics
    log = "\n".join(proc.log_tail(200) for proc in p.processes)
    assert "Traceback" not in log and "RecursionError" not in log
    kinds = [row["failure_type"] for row in p.decoded("bad_events")]
    assert kinds.count("origin_violation") == 2 and "size_violation" in kinds and "rate_limited" not in kinds
