"""The real Snowplow trackers against the real collector and worker, scored as people.

(a) ``@snowplow/browser-tracker`` 4.10 from npm (its browser build, ``dist/index.umd.min.js``,
    global ``snowplowBrowserTracking``) in headless Chromium, on a page served from 127.0.0.1:
    page views, page pings, ``setUserId``, a structured and a self-describing event, over POST
    and GET. The browser context carries a real Chrome UA (headless Chromium's own says
    ``HeadlessChrome``, which is automation and rightly a bot).
(b) ``snowplow-tracker`` from PyPI, server-side: it sends its own UA (``python-requests``) and no
    ``Accept-Language`` from a hosting network, and forwards the browser's UA in ``ua``; old
    events carry a true timestamp (``ttm``) beyond the 7-day send-delay clamp. POST and GET.
    A control tracker that forwards no ``ua`` is a bot, so the test can tell.

Both go through the ``pipeline`` fixture (collector and worker processes, real Kafka and Redis)
to ``visits`` and ``lead-scores``: no visit is a bot, every account passes the bots filter, and
the event times are the ones the trackers meant.

The npm package is installed on first use into ``~/.cache/leadstream/npm`` (``npm install``;
``scripts/bootstrap --test`` does it ahead): reruns do not touch the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from .pipeline_harness import Pipeline
from .test_browser import StaticSite

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BROWSER_TRACKER = "@snowplow/browser-tracker"
BROWSER_TRACKER_VERSION = "4.10.1"
NPM_CACHE = Path(os.environ.get("LEADSTREAM_CACHE", Path.home() / ".cache" / "leadstream")) / "npm"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
CHROME_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/131.0.0.0 Safari/537.36")
SAFARI_UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Version/18.1 Safari/605.1.15")
BRIGHTPATH_IP = "203.0.113.5"        # demo data: Brightpath Analytics, a business network with an imported range
CLOUD_IP = "198.51.100.200"          # demo data: Example Cloud (AS64498), a hosting network
DAY = 86_400_000
TP2 = "/com.snowplowanalytics.snowplow/tp2"


# ---- the npm package -----------------------------------------------------------------------------------

def browser_tracker_js(version: str = BROWSER_TRACKER_VERSION) -> Path:
    """``dist/index.umd.min.js`` of the browser tracker, installed with npm into the cache on first use."""
    prefix = NPM_CACHE / f"browser-tracker-{version}"
    js = prefix / "node_modules" / "@snowplow" / "browser-tracker" / "dist" / "index.umd.min.js"
    if js.is_file():
        return js
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is missing: apt-get install -y npm (scripts/bootstrap --test does it)")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(prefix),
                           f"{BROWSER_TRACKER}@{version}"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not js.is_file():
        raise RuntimeError(f"npm install {BROWSER_TRACKER}@{version} failed: {done.stderr[-2000:]}")
    return js


def tracker_page(collector: str, method: str, title: str) -> bytes:
    """A page that starts the browser tracker with ``method`` (post or get) and tracks a page view."""
    config = {"appId": "acme", "eventMethod": method, "bufferSize": 1, "cookieSameSite": "Lax",
              "contexts": {"webPage": True}}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script src="/sp.js"></script>
<script>
  const sp = window.snowplowBrowserTracking;
  sp.newTracker("sp", {json.dumps(collector)}, {json.dumps(config)});
  sp.enableActivityTracking({{minimumVisitLength: 1, heartbeatDelay: 1}});
  sp.setUserId("ada.fictional@brightpath-analytics.example");
  sp.trackPageView();
  window.trackerReady = true;
</script>
<style>body{{margin:2rem}} section{{height:1500px}}</style>
</head><body><h1>{title}</h1><section>Plans</section><section>FAQ</section></body></html>
""".encode()


# ---- reading the outputs -------------------------------------------------------------------------------

def visit_updates(p: Pipeline, visitor_id: str) -> list[dict[str, Any]]:
    return [u for batch in p.decoded("visits") for u in batch["updates"] if u["visitor_id"] == visitor_id]


def scores_for(p: Pipeline, account: str) -> list[dict[str, Any]]:
    return [s for s in p.decoded("lead_scores") if s["account"] == account]


def tracked(p: Pipeline, visitor_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(payload source, event) of every event the collector wrote for ``visitor_id``."""
    return [(payload["source"], event) for batch in p.decoded("pixel_events") for payload in batch["payloads"]
            if payload["visitor_id"] == visitor_id for event in payload["events"]]


def hit_times(updates: list[dict[str, Any]]) -> list[int]:
    return sorted({h["tstamp"] for u in updates for h in u["hits"]})


def assert_scored_as_a_person(p: Pipeline, visitor_id: str, page_views: int) -> list[dict[str, Any]]:
    """Wait for the visitor's visits and lead scores; no visit is a bot, every score passes the bots filter."""
    p.wait_for(lambda: sum(h["kind"] == "page_view" for u in visit_updates(p, visitor_id) for h in u["hits"])
               >= page_views, f"{page_views} page views of {visitor_id} on visits")
    updates = visit_updates(p, visitor_id)
    assert all(not u["is_bot"] for u in updates), [(u["bot_reason"]) for u in updates]
    accounts = {u["account"] for u in updates}
    p.wait_for(lambda: all(scores_for(p, a) for a in accounts), f"lead scores for {accounts}")
    for account in accounts:
        for score in scores_for(p, account):
            bots = [f for f in score["filters"] if f["name"] == "bots"]
            assert bots and bots[0]["passed"], score["filters"]
            assert not any(r.startswith("bot") for r in score["reasons"]), score["reasons"]
    return updates


# ---- (a) the browser tracker in Chromium ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tracker_js() -> bytes:
    return browser_tracker_js().read_bytes()


@pytest.mark.browser
def test_browser_tracker_in_chromium_is_scored_as_a_person(pipeline: Pipeline, tracker_js: bytes) -> None:
    from playwright.sync_api import Route, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)
    p = pipeline
    collector_port = urlsplit(p.url).port
    started = int(time.time() * 1000)
    files = {"/sp.js": ("application/javascript", tracker_js),
             "/pricing": ("text/html; charset=utf-8", tracker_page(p.url, "post", "Pricing")),
             "/demo": ("text/html; charset=utf-8", tracker_page(p.url, "get", "Book a demo"))}
    answers: list[tuple[str, str, int]] = []

    def from_brightpath(route: Route) -> None:
        # The visitor sits on Brightpath's office network: the collector trusts 127.0.0.1 as a proxy.
        route.continue_(headers={**route.request.headers, "x-forwarded-for": BRIGHTPATH_IP})

    def to_collector(url: str, path: str) -> bool:
        parts = urlsplit(url)
        return parts.port == collector_port and parts.path == path

    with StaticSite(files) as site, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(user_agent=CHROME_UA, locale="en-US", viewport={"width": 1280, "height": 720},
                                          screen={"width": 1920, "height": 1080})
            context.route(f"{p.url}/**", from_brightpath)
            page = context.new_page()
            page.on("response", lambda r: answers.append((r.request.method, urlsplit(r.url).path, r.status))
                    if urlsplit(r.url).port == collector_port else None)

            # POST: page view, page pings while scrolling, a structured and a self-describing event
            with page.expect_request(lambda r: to_collector(r.url, TP2) and r.method == "POST"
                                     and '"e":"pv"' in (r.post_data or "")):
                page.goto(f"{site.origin}/pricing")
            page.wait_for_function("window.trackerReady === true")
            with page.expect_request(lambda r: to_collector(r.url, TP2) and '"e":"pp"' in (r.post_data or ""),
                                     timeout=20_000):
                for y in range(6):
                    page.mouse.move(100 + 40 * y, 200)
                    page.mouse.wheel(0, 300)
                    page.wait_for_timeout(300)
            with page.expect_request(lambda r: to_collector(r.url, TP2) and '"e":"se"' in (r.post_data or "")):
                page.evaluate("""() => window.snowplowBrowserTracking.trackStructEvent(
                    {category: "pricing", action: "compare", label: "pro", value: 49})""")
            with page.expect_request(lambda r: to_collector(r.url, TP2) and '"e":"ue"' in (r.post_data or "")):
                page.evaluate("""() => window.snowplowBrowserTracking.trackSelfDescribingEvent({event: {
                    schema: "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0",
                    data: {formId: "demo-request", formClasses: [], elements: [
                        {name: "email", value: "ada.fictional@brightpath-analytics.example",
                         nodeName: "INPUT", type: "email"}]}}})""")

            # GET: a second page with a tracker that sends GET /i
            with page.expect_request(lambda r: to_collector(r.url, "/i") and r.method == "GET"
                                     and "e=pv" in r.url):
                page.goto(f"{site.origin}/demo")
            page.wait_for_function("window.trackerReady === true")
            with page.expect_request(lambda r: to_collector(r.url, "/i") and "e=se" in r.url):
                page.evaluate("""() => window.snowplowBrowserTracking.trackStructEvent(
                    {category: "demo", action: "open", label: "calendar"})""")
            duid_cookie = [c for c in context.cookies(site.origin) if c["name"].startswith("_sp_id")]
            context.close()
        finally:
            browser.close()
    finished = int(time.time() * 1000)

    assert answers and all(status in (200, 204) for _, _, status in answers), answers
    assert {(m, path) for m, path, _ in answers} >= {("POST", TP2), ("GET", "/i")}, answers
    assert duid_cookie, "the tracker's first-party cookie"
    duid = duid_cookie[0]["value"].split(".")[0]

    updates = assert_scored_as_a_person(p, duid, page_views=2)
    assert {u["account"] for u in updates} == {"c:brightpath-analytics.example"}
    events = tracked(p, duid)
    by_source: dict[str, set[str]] = {}
    for source, event in events:
        by_source.setdefault(source, set()).add(event["event_type"])
    assert by_source["snowplow_post"] >= {"page_view", "page_ping", "structured", "form_submit"}, by_source
    assert by_source["snowplow_get"] >= {"page_view", "structured"}, by_source
    assert {e.get("user_id") for _, e in events} == {"ada.fictional@brightpath-analytics.example"}
    hits = {(h["kind"], h["name"]) for u in updates for h in u["hits"]}
    assert ("action", "demo-request") in hits, hits
    # the demo-request form is classified as a conversion (the default model's `demo` rule)
    p.wait_for(lambda: any(c["rule"] == "conversion" and c["points"] > 0 for s in p.decoded("lead_scores")
                           if s["account"] == "c:brightpath-analytics.example" for c in s["intent_contributions"]),
               "the demo-request form scored as a conversion")
    assert sum(u["engaged_ms_delta"] for u in updates) > 0, "page pings measured engaged time"
    # event time: the browser's own stamps, derived as collector_tstamp - (stm - dtm), inside the test run
    times = hit_times(updates)
    assert times and all(started - 2_000 <= t <= finished + 2_000 for t in times), (started, times, finished)
    for u in updates:
        assert started - 2_000 <= u["session"]["start"] <= u["session"]["end"] <= finished + 2_000


# ---- (b) the Python tracker, server-side ---------------------------------------------------------------

def relay_session(ip: str) -> requests.Session:
    """How a server-side relay reaches the collector: from its own (hosting) network, no Accept-Language."""
    session = requests.Session()
    session.headers["X-Forwarded-For"] = ip
    session.headers.pop("Accept-Language", None)
    return session


def python_tracker(p: Pipeline, method: str, duid: str, ua: str | None, failures: list[Any]) -> Any:
    """A server-side Snowplow tracker for one visitor (``duid``), forwarding ``ua`` when given."""
    from snowplow_tracker import Emitter, Subject, Tracker

    port = urlsplit(p.url).port
    emitter = Emitter("127.0.0.1", protocol="http", port=port, method=method, batch_size=1 if method == "get" else 10,
                      session=relay_session(CLOUD_IP), on_failure=lambda n, failed: failures.append(failed))
    subject = Subject().set_domain_user_id(duid)
    if ua is not None:
        subject.set_useragent(ua)
    return Tracker("relay", emitter, subject=subject, app_id="acme")


def test_python_tracker_server_side_forwarding_the_browser_ua_is_scored_as_a_person(pipeline: Pipeline) -> None:
    from snowplow_tracker import PageView, SelfDescribing, SelfDescribingJson, StructuredEvent

    p = pipeline
    post_duid, get_duid, control_duid = (str(uuid.uuid4()) for _ in range(3))
    now = int(time.time() * 1000)
    # An offline queue or a backfill: events that really happened 10 and 9 days ago (beyond the 7-day
    # send-delay clamp), sent now with their true timestamps.
    old = [now - 10 * DAY, now - 10 * DAY + 60_000, now - 9 * DAY]

    started = int(time.time() * 1000)
    failures: list[Any] = []
    post = python_tracker(p, "post", post_duid, CHROME_UA, failures)
    post.track(PageView(page_url="https://www.acme.example/pricing", page_title="Pricing", true_timestamp=old[0]))
    post.track(PageView(page_url="https://www.acme.example/security", page_title="Security",
                        true_timestamp=old[1]))
    post.track(StructuredEvent(category="pricing", action="compare", label="pro", true_timestamp=old[2]))
    post.flush()
    post.track(PageView(page_url="https://www.acme.example/demo", page_title="Book a demo"))
    post.track(SelfDescribing(SelfDescribingJson(
        "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0",
        {"formId": "demo-request", "formClasses": [], "elements": []})))
    post.flush()

    get = python_tracker(p, "get", get_duid, SAFARI_UA, failures)
    get.track(PageView(page_url="https://www.acme.example/pricing", page_title="Pricing", true_timestamp=old[0]))
    get.track(PageView(page_url="https://www.acme.example/contact", page_title="Contact"))
    get.track(StructuredEvent(category="contact", action="open"))
    get.flush()

    control = python_tracker(p, "post", control_duid, None, failures)  # no ua: only python-requests is known
    control.track(PageView(page_url="https://www.acme.example/pricing", page_title="Pricing"))
    control.flush()
    finished = int(time.time() * 1000)
    assert failures == []

    # the page views' times: ttm honoured exactly, even 10 days back; the others at their arrival
    for duid, views, old_views in ((post_duid, 3, old[:2]), (get_duid, 2, old[:1])):
        updates = assert_scored_as_a_person(p, duid, page_views=views)
        times = sorted(h["tstamp"] for u in updates for h in u["hits"] if h["kind"] == "page_view")
        assert [t for t in times if t < started - 60_000] == old_views, (old_views, times)
        recent = [t for t in times if t >= started - 60_000]
        assert recent and all(started - 2_000 <= t <= finished + 2_000 for t in recent), (started, recent)

    # what arrived: the relay's own UA in the header, the browser's in `ua`, over POST and GET
    for duid, ua, source in ((post_duid, CHROME_UA, "snowplow_post"), (get_duid, SAFARI_UA, "snowplow_get")):
        events = tracked(p, duid)
        assert events and {s for s, _ in events} == {source}
        assert all(e["extra"].get("ua") == ua for _, e in events)

    p.wait_for(lambda: bool(visit_updates(p, control_duid)), "the control visitor's visit")
    control_updates = visit_updates(p, control_duid)
    assert all(u["is_bot"] and "python-requests" in (u["bot_reason"] or "") for u in control_updates), [
        u["bot_reason"] for u in control_updates]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The trackers talk to 127.0.0.1 only; a proxy from the environment must not get in between."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield
