"""One bad hit costs nothing else; bad rows come back with `bad-rows replay`; big hits do not crash the worker.

Through the real collector and worker on the real broker and Redis, counting outputs.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import yaml

from pipeline.core.failures import FailureType
from pipeline.local.kafka import KafkaBroker
from pipeline.local.redis import RedisServer
from pipeline.settings import load_settings

from .pipeline_harness import Pipeline, _CliProcess, load_reference_data, now_ms
from .stagekit import REPO

pytestmark = pytest.mark.integration

SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Safari/605.1.15")
FAILURE_TYPES = {t.value for t in FailureType}


def configured(p: Pipeline, **changes: Any) -> None:
    """Rewrite the pipeline's settings file with ``changes`` merged into its sections."""
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(p.config.get(section), dict):
            p.config[section] = {**p.config[section], **values}
        else:
            p.config[section] = values
    p.config_path.write_text(yaml.safe_dump(p.config))
    p.settings = load_settings(p.config_path)


@pytest.fixture
def make_pipeline(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
                  unique_name: Callable[[str], str]) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(**changes: Any) -> Pipeline:
        load_reference_data(redis_server.url)
        p = Pipeline(kafka_broker, redis_server.url, tmp_path, unique_name("iso"))
        configured(p, **changes)
        p.create_topics()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def visit_hits(p: Pipeline) -> list[dict[str, Any]]:
    return [h | {"visitor_id": u["visitor_id"]} for batch in p.decoded("visits") for u in batch["updates"]
            for h in u["hits"]]


def visit_visitors(p: Pipeline) -> set[str]:
    return {u["visitor_id"] for batch in p.decoded("visits") for u in batch["updates"]}


def test_a_hit_without_user_agent_costs_none_of_its_neighbours(make_pipeline: Callable[..., Pipeline]) -> None:
    """Regression: ten concurrent GET /i hits in one pixel-events record, one without a User-Agent: only
    one visitor reached visits and the record became one processing_failure bad row."""
    p = make_pipeline(topics={"partitions": {"pixel_events": 1}}, collector={"linger_ms": 300})
    worker = p.start_worker()
    p.start_collector()
    ids = [str(uuid.uuid4()) for _ in range(10)]
    t = now_ms()

    def hit(i: int) -> int:
        headers = {"X-Forwarded-For": f"198.51.100.{30 + i}"}
        with httpx.Client(base_url=p.url, timeout=10) as client:
            if i == 3:
                client.headers.pop("user-agent")
            else:
                headers["User-Agent"] = SAFARI
            r = client.get("/i", params={"e": "pv", "aid": "acme", "duid": ids[i], "dtm": t, "stm": t,
                                         "url": f"https://www.acme.example/pricing?v={i}"}, headers=headers)
            return r.status_code

    with ThreadPoolExecutor(11) as pool:
        statuses = list(pool.map(hit, range(10)))
        bare = pool.submit(lambda: httpx.get(f"{p.url}/p.gif", params={"site_id": "acme"}, timeout=10)).result()
    assert statuses == [200] * 10 and bare.status_code == 200
    p.wait_for(lambda: set(ids) <= visit_visitors(p), "all ten visitors in visits")
    p.wait_for(lambda: any(r["failure_type"] == "schema_violation" for r in p.decoded("bad_events")),
               "the bare pixel's schema_violation row")
    rows = p.decoded("bad_events")
    assert [r["failure_type"] for r in rows] == ["schema_violation"], rows
    assert "page_view without url" in rows[0]["message"]
    # Whether the hits share a record depends on timing (the collector writes at once to an idle
    # partition); tests/unit/stages/test_visitor_stage.py puts the ten in one record deterministically.
    assert worker.alive()


def test_fuzz_every_good_event_reaches_visits_and_every_bad_one_is_a_typed_bad_row(
        make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline(collector={"linger_ms": 20})
    worker = p.start_worker()
    p.start_collector()
    rnd = random.Random(2026)
    t0 = now_ms() - 600_000
    good: set[str] = set()      # markers of events that must reach visits
    rejected: set[str] = set()  # markers of events or requests that must be bad rows
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=p.url, timeout=30)
        c: httpx.Client = local.client
        return c

    def page(marker: str, ts: int, **kw: Any) -> dict[str, Any]:
        return {"type": "page_view", "url": f"https://www.acme.example/{marker}", "ts": ts, "title": marker, **kw}

    def post(body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
             marker: str = "") -> Callable[[], int]:
        h = {"User-Agent": SAFARI, "X-Forwarded-For": f"198.51.100.{rnd.randint(1, 250)}", **(headers or {})}
        content = raw if raw is not None else json.dumps(body)
        return lambda: client().post(f"/collect?m={marker}", content=content, headers=h).status_code

    # (the event, headers, whether the stage must reject the event)
    garbage: list[Callable[[str, int], tuple[dict[str, Any], dict[str, str], bool]]] = [
        lambda m, ts: (page(m, ts), {"User-Agent": ""}, False),
        lambda m, ts: (page(m, ts), {"User-Agent": "() { :; }; echo pwned"}, False),
        lambda m, ts: (page(m, ts), {"User-Agent": ("Mozilla/5.0 " * 500).strip()}, False),
        lambda m, ts: (page(m, ts), {"Accept-Language": "x" * 7000}, False),
        lambda m, ts: (page(m, 946_684_800_000), {}, False),           # ancient: 2000-01-01
        lambda m, ts: (page(m, ts + 400 * 86_400_000), {}, False),      # a year ahead: clamped
        lambda m, ts: (page(m, ts, title="T" * 8000), {}, False),
        lambda m, ts: ({"type": "page_view", "url": "", "ts": ts, "title": m}, {}, True),
        lambda m, ts: ({"type": "page_view", "url": f"ftp://files.acme.example/{m}", "ts": ts}, {}, True),
        lambda m, ts: ({"type": "page_view", "url": f"javascript:alert('{m}')", "ts": ts}, {}, True),
        lambda m, ts: ({"type": "page_view", "url": f"https://www.acme.example/{m}/" + "u" * 9000, "ts": ts},
                       {}, True),
        lambda m, ts: (page(m, ts, props={"deep": json.loads("[" * 200 + "]" * 200)}), {}, False),
    ]
    # each request: (send it, the good markers it carries, the (marker, rejected) garbage it carries)
    requests: list[tuple[Callable[[], int], list[str], list[tuple[str, bool]]]] = []
    for n in range(300):
        vid = str(uuid.uuid4())
        ts = t0 + n * 1000
        events = [page(f"good-{n}-{i}", ts + i) for i in range(10)]
        headers: dict[str, str] = {}
        odd: list[tuple[str, bool]] = []
        if n % 2 == 0:
            marker = f"odd-{n}"
            event, headers, is_rejected = rnd.choice(garbage)(marker, ts + 20)
            events.insert(rnd.randint(0, len(events)), event)
            odd.append((marker, is_rejected))
        requests.append((post({"site_id": "acme", "visitor_id": vid, "sent_at": ts + 30, "events": events}, headers),
                         [f"good-{n}-{i}" for i in range(10)], odd))
        if n % 10 == 5:  # whole-request garbage: unknown site, huge header, deep JSON, deep pixel query
            kind = n // 10 % 4
            marker = f"junk-{n}"
            if kind == 0:
                send = post({"site_id": "nowhere", "visitor_id": vid, "events": [page(marker, ts)]})
            elif kind == 1:
                send = post({"site_id": "acme", "visitor_id": vid, "events": [page(marker, ts)]},
                            {"User-Agent": "A" * 20_000})
            elif kind == 2:
                send = post(None, raw=(f'{{"site_id":"acme","m":"{marker}","events":' + "[" * 5000).encode(),
                            marker=marker)
            else:
                params = {"site_id": "acme", "props": "[" * 5000, "url": marker}
                send = (lambda q=params: client().get("/p.gif", params=q,  # type: ignore[misc]
                                                      headers={"User-Agent": SAFARI}).status_code)
            requests.append((send, [], [(marker, True)]))
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda r: r[0](), requests))
    print(f"sent {len(requests)} requests in {time.monotonic() - started:.1f} s")
    for status, (_, goods, odd) in zip(statuses, requests):
        if 200 <= status < 300:
            good.update(goods)
            for marker, is_rejected in odd:
                (rejected if is_rejected else good).add(marker)
        else:
            assert status in (400, 403, 413, 431), status
            rejected.update(goods)
            rejected.update(marker for marker, _ in odd)
    assert len(good) >= 2500  # a few requests carry garbage the collector refuses whole

    def reached() -> set[str]:
        hits = visit_hits(p)
        return {h["name"] or "" for h in hits} | {(h["url"] or "").rsplit("/", 1)[-1] for h in hits}

    started = time.monotonic()
    p.wait_for(lambda: good <= reached(), f"{len(good)} good events in visits", timeout_s=120)
    print(f"visits complete after {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    def all_rejected_have_rows() -> bool:
        text = "\n".join(r["payload"] for r in p.decoded("bad_events"))
        return all(m in text for m in rejected)

    p.wait_for(all_rejected_have_rows, "a bad row for every rejected event")
    print(f"bad rows complete after {time.monotonic() - started:.1f} s")
    assert {r["failure_type"] for r in p.decoded("bad_events")} <= FAILURE_TYPES
    assert not good & rejected
    assert worker.alive(), worker.log_tail()
    assert "agent crashed" not in worker.log_path.read_text()


def test_big_urls_and_titles_do_not_crash_the_worker(make_pipeline: Callable[..., Pipeline]) -> None:
    """Regression: two requests of 25 events with 8 KB URLs and titles took one visitor's state past 1 MB:
    ProducerSendError, exit 70, restart, the same record again."""
    p = make_pipeline()
    worker = p.start_worker()
    p.start_collector()
    vid = str(uuid.uuid4())
    t = now_ms() - 100_000
    client = httpx.Client(base_url=p.url, timeout=15)
    for batch in range(2):
        events = [{"type": "page_view", "url": f"https://www.acme.example/{batch}-{i}/" + "u" * 8000,
                   "title": "T" * 8000, "ts": t + batch * 30_000 + i * 100} for i in range(25)]
        r = client.post("/collect", content=json.dumps({"site_id": "acme", "visitor_id": vid, "events": events}),
                        headers={"User-Agent": SAFARI, "X-Forwarded-For": "198.51.100.9"})
        assert r.status_code == 200, r.text
    after = str(uuid.uuid4())
    client.post("/collect", content=json.dumps({"site_id": "acme", "visitor_id": after, "events": [
        {"type": "page_view", "url": "https://www.acme.example/after", "ts": t + 90_000}]}),
        headers={"User-Agent": SAFARI, "X-Forwarded-For": "198.51.100.10"})
    p.wait_for(lambda: after in visit_visitors(p), "the visitor after the heavy one")
    heavy = [h for h in visit_hits(p) if h["visitor_id"] == vid]
    assert len(heavy) == 50 and all(len(h["url"]) <= 2048 and len(h["name"]) <= 512 for h in heavy)
    assert worker.alive() and "agent crashed" not in worker.log_path.read_text()


def cli(p: Pipeline, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "-c", str(p.config_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO),
                                                                           "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bad_rows_replay_after_the_fix_once(make_pipeline: Callable[..., Pipeline], tmp_path: Path) -> None:
    """A worker without site `beta` writes its hits as site_violation rows; after the fix, `bad-rows replay`
    brings them to visits, and a second replay adds nothing (idempotent by event)."""
    sites = [{"site_id": "acme", "allowed_origins": ["*"], "hosts": ["www.acme.example"]},
             {"site_id": "beta", "allowed_origins": ["*"], "hosts": ["www.beta.example"]}]
    p = make_pipeline(sites=sites)
    old = tmp_path / "worker-without-beta.yaml"
    old.write_text(yaml.safe_dump({**p.config, "sites": sites[:1]}))
    stale = _CliProcess(["worker", "-c", str(old)], tmp_path, f"{p.name}-stale").start()
    p.processes.append(stale)
    p.start_collector()
    client = httpx.Client(base_url=p.url, timeout=10)
    t = now_ms() - 60_000
    urls = [f"https://www.beta.example/page-{i}" for i in range(6)]
    for i in range(3):
        client.post("/collect", content=json.dumps({"site_id": "beta", "visitor_id": f"b-{i}", "events": [
            {"type": "page_view", "url": u, "ts": t + j} for j, u in enumerate(urls[i * 2:i * 2 + 2])]}),
            headers={"User-Agent": SAFARI}).raise_for_status()
    p.wait_for(lambda: len([r for r in p.decoded("bad_events") if r["failure_type"] == "site_violation"]) >= 3,
               "the site_violation rows of the stale worker")
    listed = [json.loads(line) for line in cli(p, "bad-rows", "list", "--type", "site_violation").splitlines()]
    assert len(listed) == 3 and all(r["site_id"] == "beta" for r in listed)
    stale.terminate()

    p.start_worker("fixed")
    assert "3 replayed" in cli(p, "bad-rows", "replay", "--type", "site_violation", "--since", "1h")
    p.wait_for(lambda: set(urls) <= {h["url"] for h in visit_hits(p)}, "the replayed hits in visits")
    cli(p, "bad-rows", "replay", "--type", "site_violation", "--since", "1h")
    assert len(p.records("pixel_events")) >= 3 + 2  # the original requests and the two replays' records
    time.sleep(8)  # the second replay's records go through the worker
    hits = [h["url"] for h in visit_hits(p) if h["url"] in urls]
    assert sorted(hits) == sorted(urls), "each replayed event counted once"


def test_idle_visitors_are_deleted_with_a_changelog_tombstone(make_pipeline: Callable[..., Pipeline]) -> None:
    """Retention on event time: a visitor idle longer than stages.state_retention_days is deleted from the
    table while a later record of its partition is handled, and its changelog key gets a tombstone."""
    from pipeline.topology import changelog_topic
    from .stagekit import read_all

    p = make_pipeline(topics={"partitions": {"pixel_events": 1}}, stages={"state_retention_days": 0.01})  # 14.4 min
    worker = p.start_worker()
    p.start_collector()
    client = httpx.Client(base_url=p.url, timeout=10)

    def visit(vid: str, age_ms: int) -> None:
        """A hit whose tracker queued it ``age_ms`` before sending (event time = now - age_ms)."""
        t = now_ms()
        client.post("/collect", content=json.dumps({"site_id": "acme", "visitor_id": vid, "sent_at": t,
                                                    "events": [{"type": "page_view", "ts": t - age_ms,
                                                                "url": "https://www.acme.example/"}]}),
                    headers={"User-Agent": SAFARI}).raise_for_status()

    visit("idle", 30 * 60_000)
    p.wait_for(lambda: "idle" in visit_visitors(p), "the first visitor")
    visit("later", 0)  # 30 minutes of event time later: 'idle' is past the retention
    p.wait_for(lambda: "later" in visit_visitors(p), "the later visitor")
    changelog = changelog_topic(p.settings.stages.app_id, "visitor")

    def tombstone() -> bool:
        values = {r.key: r.value for r in read_all(p.broker.bootstrap, changelog)}
        return json.dumps("acme|idle").encode() in values and values[json.dumps("acme|idle").encode()] is None

    p.wait_for(tombstone, "the tombstone of the idle visitor in the changelog")
    values = {r.key: r.value for r in read_all(p.broker.bootstrap, changelog)}
    assert values[json.dumps("acme|later").encode()] is not None
    assert worker.alive()
