"""The demo's site rules and the traffic simulator, without a broker or Redis."""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from loadtest.simulator import (GOOGLEBOT, HEADLESS_CHROME, PERSONAS, _schedule, check_local_url,
                                run_simulation)
from pipeline.collector.protocol import Limits, parse_collect
from pipeline.core.events import derived_tstamp
from pipeline.core.scoring_model import SiteRules, default_scoring_model, effective_rules
from pipeline.ops.demo import DEMO_SITE, DEMO_SITE_RULES, demo_site
from pipeline.ops.geoip_build import demo_network_rows
from pipeline.settings import SiteSettings


def test_demo_site_accepts_any_origin_and_carries_rules_every_filter_can_trip() -> None:
    site = demo_site()
    assert site.site_id == DEMO_SITE and site.allowed_origins == ["*"] and site.capture_forms
    assert "demo_request" in site.conversion_names
    rules = effective_rules(default_scoring_model(), SiteRules.model_validate(DEMO_SITE_RULES))
    assert "JP" in rules.filters.countries_deny
    assert {s.value for s in rules.filters.exclude_sectors} >= {"government", "public_sector", "education"}
    assert any(p.startswith("/careers") for p in rules.filters.pages_exclude)
    assert rules.thresholds.fit_min <= 50 and rules.thresholds.intent_min <= 40


def test_demo_site_keeps_rules_the_user_set() -> None:
    own = SiteSettings(site_id=DEMO_SITE, allowed_origins=["https://a.example"],
                       rules=SiteRules.model_validate({"thresholds": {"fit_min": 90}}))
    site = demo_site(own)
    assert site.allowed_origins == ["*"]
    assert site.rules is not None and effective_rules(default_scoring_model(), site.rules).thresholds.fit_min == 90


def test_the_simulator_only_talks_to_loopback() -> None:
    assert check_local_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert check_local_url("http://localhost:9000") == "http://127.0.0.1:9000"
    for url in ("http://10.0.0.5:8080", "https://collector.example.com", "http://[::1]:8080", "ftp://127.0.0.1"):
        with pytest.raises(ValueError):
            check_local_url(url)


def _network(ip: str) -> dict[str, str] | None:
    addr = ipaddress.ip_address(ip)
    for row in demo_network_rows():
        net = ipaddress.ip_network(row["network"])
        if addr.version == net.version and addr in net:
            return row
    return None


def test_personas_come_from_the_demo_address_plan() -> None:
    types = {p.key: (_network(p.ip) or {}).get("user_type") for p in PERSONAS}
    assert all(types.values()), types  # every persona's address is in networks.csv
    assert types["brightpath-buyer"] == types["cobalt-buyer"] == "business"
    assert types["broadband-buyer"] == "residential" and types["mobile-reader"] == "cellular"
    assert types["government"] == "government" and types["university"] == "college"
    assert types["vpn-user"] == "consumer_privacy_network" and types["cloud-scraper"] == "hosting"
    assert {p.ua for p in PERSONAS} >= {GOOGLEBOT, HEADLESS_CHROME}
    assert any(p.identify for p in PERSONAS) and any(p.conversion for p in PERSONAS)
    assert all(p.live[0].startswith("/careers") for p in PERSONAS if p.key.startswith("job-seeker"))


def test_the_schedule_is_bounded_and_reproducible() -> None:
    import random

    def plan(seed: int) -> list[tuple[float, str, Any]]:
        return sorted((round(due, 6), key, what) for due, key, _b, what
                      in _schedule(PERSONAS, random.Random(seed), 30.0, background_every_s=2.0))

    first = plan(3)
    assert first == plan(3)
    assert first != plan(4)
    assert all(0 <= due < 45 for due, _, _ in first)
    assert all(due < 3 for due, _, what in first if what == "history")  # histories first: leads come early
    short = [due for due, key, _b, _w in _schedule(PERSONAS, random.Random(3), 5.0, background_every_s=2.0)
             if key != "background"]
    assert max(short) < 5.0  # a short run plays the whole script, faster
    assert Counter(key for _, key, what in first if what == "history")["brightpath-buyer"] == 1


class _Recorder:
    """A collector stand-in: checks every body with the collector's own parser."""

    def __init__(self, status: list[int] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.groups: list[Any] = []
        self.status = status or []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        self.requests.append(request)
        if self.status:
            return httpx.Response(self.status.pop(0))
        self.groups.extend(parse_collect(request.content, Limits()))
        return httpx.Response(204)


def test_requests_follow_the_pixel_protocol_and_the_time_contract() -> None:
    recorder = _Recorder()
    client = httpx.Client(transport=httpx.MockTransport(recorder))
    report = run_simulation("http://127.0.0.1:1", site_id="demo", duration_s=4.0, rate=200.0, seed=1, client=client)
    assert not report.failures
    assert report.total_requests == len(recorder.requests) > len(PERSONAS)
    for req in recorder.requests:
        assert req.url.path == "/collect"
        assert ipaddress.ip_address(req.headers["X-Forwarded-For"])
        assert req.headers["User-Agent"].startswith("Mozilla/5.0")
        body = json.loads(req.content)
        assert body["site_id"] == "demo"
        assert max(e["ts"] for e in body["events"]) <= body["sent_at"]  # sent after its last event
    assert all(g.site_id == "demo" for g in recorder.groups)
    # earlier visits keep their spacing in event time: the collector's derivation puts them days back
    history = [json.loads(r.content) for r in recorder.requests if len(json.loads(r.content)["events"]) > 3]
    assert history
    now = int(time.time() * 1000)
    oldest = min(derived_tstamp(now, e["ts"], body["sent_at"]) for body in history for e in body["events"])
    assert now - oldest > 2 * 86_400_000
    types = Counter(e["type"] for r in recorder.requests for e in json.loads(r.content)["events"])
    assert types["page_view"] and types["page_ping"]


def test_the_simulator_stops_at_its_duration_and_respects_the_rate() -> None:
    recorder = _Recorder()
    client = httpx.Client(transport=httpx.MockTransport(recorder))
    began = time.monotonic()
    report = run_simulation("http://127.0.0.1:1", duration_s=1.5, rate=4.0, seed=2, client=client)
    elapsed = time.monotonic() - began
    assert elapsed < 3.0
    assert report.stopped_by.startswith("duration")
    assert report.total_requests <= 1.5 * 4 + 1


def test_the_simulator_stops_at_max_requests() -> None:
    client = httpx.Client(transport=httpx.MockTransport(_Recorder()))
    report = run_simulation("http://127.0.0.1:1", duration_s=30, rate=500.0, seed=2, max_requests=5, client=client)
    assert report.total_requests == 5 and report.stopped_by.startswith("max_requests")


def test_a_busy_broker_is_retried_and_a_rejection_counted() -> None:
    recorder = _Recorder(status=[503, 503, 400])
    client = httpx.Client(transport=httpx.MockTransport(recorder))
    report = run_simulation("http://127.0.0.1:1", duration_s=30, rate=500.0, seed=5, max_requests=3,
                            client=client)
    assert report.failures == Counter({"http_400": 1})
