"""pixel.js in a real browser: headless Chromium, the collector on uvicorn, the real Kafka broker.

A page served from its own origin (a small static server on another port of
127.0.0.1) carries the snippet of ``pipeline.collector.snippet``; Playwright
drives Debian's Chromium through a visit (page view, scroll and engaged time,
a CTA click that is also an SPA navigation, identify, track, leaving the page)
and the test reads what arrived on ``pixel-events``. A second test loads the
snippet from an origin the site does not allow: 403, nothing on
``pixel-events``, an ``origin_violation`` bad row.

Chromium is ``/usr/bin/chromium`` (Debian's package); ``playwright install``
is never used. Nothing here sleeps for a fixed time: the browser side waits
on requests and page state, the Kafka side polls the topics with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Request, sync_playwright

from pipeline.codec import SingleObjectCodec
from pipeline.collector.server import _config
from pipeline.collector.snippet import snippet
from pipeline.local.kafka import KafkaBroker
from pipeline.settings import CollectorSettings, KafkaSettings, Settings, SiteSettings, TopicSettings
from pipeline.topology import create_topics, topic_specs

from .stagekit import read_all, wait_until

if TYPE_CHECKING:
    from playwright._impl._api_structures import ScreenSize, ViewportSize

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
CODEC = SingleObjectCodec()
SITE = "acme"
# What the browser context pretends to be; every page_view must report exactly this.
VIEWPORT: ViewportSize = {"width": 1024, "height": 700}
SCREEN: ScreenSize = {"width": 1280, "height": 800}
LOCALE = "de-DE"
TIMEZONE = "Europe/Berlin"
REFERRER = "http://www.linkedin.example/feed/"
SCREENSHOT_DIR = os.environ.get("LEADSTREAM_BROWSER_SCREENSHOTS")  # set to a directory to keep a screenshot


# ---- servers -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class StaticSite:
    """A tiny HTTP server on 127.0.0.1 serving fixed HTML pages (the site owner's pages, on their own origin)
    and ``files`` (path -> (content type, bytes)), such as a tracker's script."""

    def __init__(self, files: dict[str, tuple[str, bytes]] | None = None) -> None:
        self.pages: dict[str, str] = {}
        self.files = dict(files or {})
        pages, served = self.pages, self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = urlsplit(self.path).path
                page = pages.get(path)
                ctype, body = served.get(path) or ("text/html; charset=utf-8", (
                    page if page is not None else "<!doctype html><title>Not found</title>").encode())
                self.send_response(200 if page is not None or path in served else 404)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "StaticSite":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@contextlib.contextmanager
def collector(settings: Settings) -> Iterator[str]:
    """The collector on uvicorn (uvloop + httptools, as ``serve`` runs it) in a thread; yields its base URL."""
    server = uvicorn.Server(_config(settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.collector.port}"
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=base, timeout=5) as http:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/sink-health").status_code == 200:
                        break
                assert thread.is_alive(), "the collector stopped while starting"
                assert time.monotonic() < deadline, "the collector did not become healthy"
                time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(15)


def make_settings(bootstrap: str, unique_name: Callable[[str], str], allowed_origin: str) -> Settings:
    settings = Settings(
        topics=TopicSettings(pixel_events=unique_name("pixel"), bad_events=unique_name("bad")),
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        sites=[SiteSettings(site_id=SITE, name="Acme", allowed_origins=[allowed_origin])],
        collector=CollectorSettings(host="127.0.0.1", port=free_port(), linger_ms=2, ack_timeout_s=5),
        log_level="warn",
    )
    create_topics(settings, [s for s in topic_specs(settings) if s.logical in ("pixel_events", "bad_events")])
    return settings


def tracked_page(tag: str, title: str) -> str:
    """A long page (so scrolling means something) with the snippet, a CTA that is an SPA router link,
    and one ``leadstream`` call made before pixel.js has loaded (kept by the stub's queue)."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
{tag}
<script>leadstream('track', 'queued_before_load', {{step: 1}});</script>
<style>body{{font-family:sans-serif;margin:2rem}} section{{height:1200px;border-top:1px solid #ccc}}</style>
</head>
<body>
<h1>Acme pricing</h1>
<nav><a id="toc" href="#faq">FAQ</a></nav>
<p><a id="cta" href="/demo?plan=pro" data-ls-cta="book-demo"
      onclick="event.preventDefault(); history.pushState({{}}, '', this.href); document.title = 'Book a demo';">
   Book a demo</a></p>
<section><h2>Plans</h2></section>
<section id="faq"><h2>FAQ</h2></section>
<footer>The end.</footer>
</body>
</html>
"""


LEAVE_PAGE = "<!doctype html><html><head><title>Elsewhere</title></head><body>No snippet here.</body></html>"


# ---- the browser ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (Debian's package; "
                    "never `playwright install`)", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_context(chromium: Browser) -> Iterator[BrowserContext]:
    context = chromium.new_context(viewport=VIEWPORT, screen=SCREEN, locale=LOCALE, timezone_id=TIMEZONE)
    try:
        yield context
    finally:
        context.close()


# ---- reading the topics --------------------------------------------------------------------------------

def payloads(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every ``CollectorPayload`` on ``topic`` so far."""
    return [payload for record in read_all(bootstrap, topic)
            for payload in CODEC.decode(record.value, "CollectorBatch")["payloads"]]


def bad_rows(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [CODEC.decode(record.value, "BadRow") for record in read_all(bootstrap, topic)]


def by_type(found: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for payload in found:
        for event in payload["events"]:
            out.setdefault(event["event_type"], []).append(event)
    return out


def is_collect(request: Request) -> bool:
    return request.method == "POST" and urlsplit(request.url).path == "/collect"


# ---- the tests -----------------------------------------------------------------------------------------

def test_a_visit_in_chromium_lands_on_pixel_events(kafka_broker: KafkaBroker, unique_name: Callable[[str], str],
                                                    browser_context: BrowserContext) -> None:
    started = time.monotonic()
    with StaticSite() as site:
        settings = make_settings(kafka_broker.bootstrap, unique_name, site.origin)
        bootstrap, topic = kafka_broker.bootstrap, settings.topics.pixel_events
        with collector(settings) as base:
            tag = snippet(settings, SITE, heartbeat_s=1)
            assert f'src="{base}/pixel.js"' in tag and 'data-heartbeat="1"' in tag
            site.pages["/pricing"] = tracked_page(tag, "Acme pricing")
            site.pages["/elsewhere"] = LEAVE_PAGE
            first_url = f"{site.origin}/pricing?utm_source=linkedin&gclid=abc"
            spa_url = f"{site.origin}/demo?plan=pro"

            page = browser_context.new_page()
            answers: list[tuple[str, int]] = []
            page.on("response", lambda r: answers.append((r.request.method + " " + urlsplit(r.url).path, r.status))
                    if urlsplit(r.url).port == settings.collector.port else None)

            # 1. the page view (sent within pixel.js's 1 s batch delay)
            with page.expect_request(lambda r: is_collect(r) and "page_view" in (r.post_data or "")) as pv:
                page.goto(first_url, referer=REFERRER)
                page.wait_for_function("window.leadstream && window.leadstream.loaded === true")
            answer = pv.value.response()
            assert answer is not None and answer.status == 200

            # 2. scroll while active: a heartbeat (1 s) sends a page_ping with engaged time and scroll depth
            with page.expect_request(lambda r: is_collect(r) and "page_ping" in (r.post_data or ""),
                                     timeout=15_000) as ping:
                page.mouse.move(200, 200)
                page.mouse.wheel(0, 1400)
                page.wait_for_function("window.scrollY > 0")
                page.mouse.move(300, 250)
            sent = json.loads(ping.value.post_data or "{}")
            heartbeat = next(e for e in sent["events"] if e["type"] == "page_ping")
            assert heartbeat["engaged_ms"] > 0 and heartbeat["scroll_depth"] > 50, heartbeat

            # an in-page anchor: a link_click, but not a page view (Chromium fires popstate for it)
            page.click("#toc")
            page.wait_for_function("location.hash === '#faq'")
            # 3. the CTA: a link_click, and (being a router link) an SPA navigation -> a second page_view
            page.click("#cta")
            page.wait_for_function(f"location.href === {json.dumps(spa_url)}")
            # 4. identify and track through the public API
            page.evaluate("""() => {
                leadstream('identify', {email: 'ada@example.com', traits: {plan: 'pro', role: 'CTO'}});
                leadstream('track', 'signup_started', {plan: 'pro', seats: 5});
            }""")
            if SCREENSHOT_DIR:
                page.screenshot(path=str(Path(SCREENSHOT_DIR) / "browser-test-page.png"))
            # 5. leave at once (well inside the batch delay): pagehide must flush the queue with sendBeacon
            cookies = {c["name"]: c for c in browser_context.cookies(base)}
            page.goto(f"{site.origin}/elsewhere")

            wanted = {"page_view": 2, "page_ping": 1, "link_click": 2, "identify": 1, "track": 2}

            def arrived() -> bool:
                have = by_type(payloads(bootstrap, topic))
                return all(len(have.get(kind, [])) >= n for kind, n in wanted.items())

            wait_until(arrived, 20, "the visit's events on pixel-events",
                       lambda: json.dumps({k: len(v) for k, v in by_type(payloads(bootstrap, topic)).items()})
                       + f"\ncollector answers: {answers}", every_s=0.25)
            page.close()

    found = payloads(bootstrap, topic)
    events = by_type(found)
    # the collector answered every request from pixel.js with 200 (keepalive fetch; the beacon is not observable)
    assert answers and all(status == 200 for _, status in answers), answers

    # one visitor: pixel.js's first-party cookie, and the collector's own cookie on every payload
    visitor = cookies["_ls_id"]["value"]
    nuid = cookies[settings.collector.cookie_name]
    assert nuid["httpOnly"] and nuid["value"] and nuid["domain"] == "127.0.0.1"
    for payload in found:
        assert payload["site_id"] == SITE and payload["source"] == "collect" and payload["consent"] == "full"
        assert payload["visitor_id"] == visitor, payload
        assert payload["network_user_id"] == nuid["value"], payload
        assert payload["origin"] == site.origin and payload["client_ip"] == "127.0.0.1"
        assert "Chrome/" in (payload["user_agent"] or "")
        for event in payload["events"]:
            assert event["app_id"] == SITE and event["tracker_name"] == "leadstream-js"
    all_events = [e for p in found for e in p["events"]]
    assert len({e["event_id"] for e in all_events}) == len(all_events), "event ids repeat"
    assert len({e["session_id"] for e in all_events}) == 1 and {e["session_index"] for e in all_events} == {1}

    # page views: the landing page with its campaign parameters, then the SPA route
    first, second = sorted(events["page_view"], key=lambda e: e["device_created_tstamp"])
    assert (first["url"], first["page_title"], first["referrer"]) == (first_url, "Acme pricing", REFERRER)
    assert (second["url"], second["page_title"], second["referrer"]) == (spa_url, "Book a demo", first_url)
    for view in (first, second):
        assert view["screen_resolution"] == f"{SCREEN['width']}x{SCREEN['height']}"
        assert view["viewport"] == f"{VIEWPORT['width']}x{VIEWPORT['height']}"
        assert (view["timezone"], view["language"]) == (TIMEZONE, LOCALE)

    # engagement: pings carry engaged time and the deepest scroll, each on the page view it measures; the
    # SPA navigation closes the landing page's engagement with a ping for the landing page, not the new route
    pings = events["page_ping"]
    assert all(p["engaged_ms"] > 0 and 0 < p["scroll_depth"] <= 100 for p in pings), pings
    assert {p["url"] for p in pings} <= {first_url, spa_url}, [(p["url"], p["engaged_ms"]) for p in pings]
    landing = [p for p in pings if p["url"] == first_url]
    assert max(p["scroll_depth"] for p in landing) > 50 and sum(p["engaged_ms"] for p in landing) >= 900
    clicks = {c["name"]: c for c in events["link_click"]}
    assert sorted(clicks) == ["FAQ", "book-demo"]
    assert any(p["device_created_tstamp"] >= clicks["book-demo"]["device_created_tstamp"] for p in landing)

    click = clicks["book-demo"]
    assert (click["target_url"], click["url"]) == (spa_url, first_url + "#faq")  # the page's URL when clicked
    assert json.loads(click["properties_json"]) == {"cta": "book-demo"}
    assert clicks["FAQ"]["target_url"] == first_url + "#faq" and clicks["FAQ"]["properties_json"] is None

    (identify,) = events["identify"]
    assert identify["email"] == "ada@example.com" and identify["url"] == spa_url
    assert json.loads(identify["properties_json"]) == {"plan": "pro", "role": "CTO"}

    tracks = {t["name"]: t for t in events["track"]}
    assert json.loads(tracks["signup_started"]["properties_json"]) == {"plan": "pro", "seats": 5}
    assert json.loads(tracks["queued_before_load"]["properties_json"]) == {"step": 1}
    assert tracks["signup_started"]["url"] == spa_url and tracks["queued_before_load"]["url"] == first_url

    # identify and track were still queued when the page went away: they came in one request, sent on pagehide
    (last,) = [p for p in found if any(e["event_type"] == "identify" for e in p["events"])]
    assert any(e["event_type"] == "track" and e["name"] == "signup_started" for e in last["events"])
    # ... by navigator.sendBeacon: a text/plain beacon is a no-cors request, pixel.js's keepalive fetches are cors
    assert last["headers"]["sec-fetch-mode"] == "no-cors", last["headers"]
    assert {p["headers"]["sec-fetch-mode"] for p in found if p is not last} == {"cors"}
    assert time.monotonic() - started < 60


def test_an_origin_the_site_does_not_allow_gets_403(kafka_broker: KafkaBroker, unique_name: Callable[[str], str],
                                                    browser_context: BrowserContext) -> None:
    with StaticSite() as allowed, StaticSite() as other:
        settings = make_settings(kafka_broker.bootstrap, unique_name, allowed.origin)
        bootstrap = kafka_broker.bootstrap
        with collector(settings) as base:
            other.pages["/pricing"] = tracked_page(snippet(settings, SITE, heartbeat_s=0), "Not allowed")
            page = browser_context.new_page()
            # the collector answers 403 without CORS headers, so the browser reports the request failed
            with page.expect_event("requestfailed", lambda r: is_collect(r)):
                page.goto(f"{other.origin}/pricing")
            # the 403 carries no CORS headers for an origin no site lists: the refused page cannot read
            # the answer (issue 13: CORS reflects only a site's allowed origins, on errors too)
            reason = page.evaluate("""async (url) => {
                try {
                    const r = await fetch(url, {method: 'POST', credentials: 'include', body: JSON.stringify(
                        {site_id: 'acme', events: [{type: 'page_view', url: location.href}]})});
                    return [r.status, await r.text()];
                } catch (e) { return ['blocked', String(e)]; }
            }""", f"{base}/collect")
            assert reason[0] == "blocked", reason
            # the refusal came from the collector, after which no cookie of its own was set
            assert settings.collector.cookie_name not in {c["name"] for c in browser_context.cookies()}

            def refused() -> bool:
                rows = bad_rows(bootstrap, settings.topics.bad_events)
                return any("queued_before_load" in r["payload"] for r in rows)

            wait_until(refused, 15, "the bad row of pixel.js's refused request", every_s=0.25)
            page.close()
        rows = bad_rows(bootstrap, settings.topics.bad_events)
        assert rows and all(r["failure_type"] == "origin_violation" for r in rows), rows
        for row in rows:
            assert (row["stage"], row["site_id"], row["source"]) == ("collector", SITE, "collect")
            assert other.origin in row["message"] and row["payload"].startswith("POST /collect")
        # pixel.js's own request is kept whole, for a replay once the site allows the origin
        assert any('"queued_before_load"' in row["payload"] for row in rows)
        # nothing for the refused origin reached pixel-events (a 403 is answered before anything is written)
        assert payloads(bootstrap, settings.topics.pixel_events) == []


def test_the_collectors_demo_page_same_origin_with_form_capture(
        kafka_broker: KafkaBroker, unique_name: Callable[[str], str], browser_context: BrowserContext) -> None:
    """The page ``leadstream up`` points newcomers at: served by the collector, so same-origin (its origin is in
    no ``allowed_origins``); its email form becomes an identify event."""
    settings = make_settings(kafka_broker.bootstrap, unique_name, "https://www.acme.example")
    bootstrap, topic = kafka_broker.bootstrap, settings.topics.pixel_events
    with collector(settings) as base:
        page = browser_context.new_page()
        page.goto(f"{base}/demo/{SITE}")
        page.wait_for_function("window.leadstream && window.leadstream.loaded === true")
        page.fill("input[type=email]", "grace@example.com")
        page.click("form button[type=submit]")
        page.wait_for_selector("form p:not([hidden])")

        def arrived() -> bool:
            kinds = by_type(payloads(bootstrap, topic))
            return "page_view" in kinds and "identify" in kinds

        wait_until(arrived, 15, "the demo page's page view and identify", every_s=0.25)
        page.close()
    found = payloads(bootstrap, topic)
    assert {p["origin"] for p in found} == {base} and {p["site_id"] for p in found} == {SITE}
    events = by_type(found)
    (view,) = events["page_view"]
    assert view["url"] == f"{base}/demo/{SITE}" and view["page_title"] == "Acme: Leadstream demo"
    (identify,) = events["identify"]
    assert identify["email"] == "grace@example.com"
    assert json.loads(identify["properties_json"]) == {"form_id": "contact", "source": "form"}
    assert bad_rows(bootstrap, settings.topics.bad_events) == []
