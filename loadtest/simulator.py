"""Simulated visitors for the demo (`leadstream demo-traffic`, started by `leadstream up --demo`).

Realistic browsers sending the pixel's own protocol (``POST /collect``) to a
collector on 127.0.0.1, each from a synthetic address of the demo address plan
(``pipeline/ops/demo_data/README.md``) carried in ``X-Forwarded-For``, so the
collector must trust 127.0.0.1 as a proxy (``prepare_demo`` configures that).

Who visits (:data:`PERSONAS`): a buying committee at each of two target
companies (pricing, demo, case studies, repeat sessions, a form fill that
identifies a demo person and a demo request), researchers at companies
outside the ICP, a keen buyer in a denied country, ISP and mobile readers,
crawlers (Googlebot, HeadlessChrome, a scraper on a cloud network), the
government department, the university, job seekers on the careers pages, a
VPN user and an unlisted consultancy; plus anonymous background readers on
ISP and mobile networks at random.

Time: the collector derives an event's time as ``collector time - (sent_at -
ts)``. Earlier visits of a persona (days ago) go in one request with
``sent_at`` just after its last event, as a tracker's offline queue would
flush them, so they keep their spacing in event time and the history ends
"now"; live page views then follow in real time, one request each, with
``sent_at`` a few ms after ``ts``. The buyers' histories alone reach the demo
site's thresholds, so leads appear seconds after the worker is ready.

Bounded: at most ``rate`` requests per second, at most ``duration`` seconds
(and ``max_requests`` requests); it stops by itself. Refuses any host but
127.0.0.1.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

__all__ = ["PERSONAS", "Persona", "Session", "SimulationReport", "run_simulation", "check_local_url"]

log = logging.getLogger(__name__)

SITE_ORIGIN = "https://www.leadstream-demo.example"
DAY_MS = 86_400_000
MINUTE_MS = 60_000

# User agents of current browsers and crawlers.
MAC_SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.5 Safari/605.1.15")
WIN_CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36")
WIN_EDGE = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87")
MAC_CHROME = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36")
LINUX_FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
IPHONE_SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                 "Version/17.5 Mobile/15E148 Safari/604.1")
ANDROID_CHROME = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/126.0.6478.71 Mobile Safari/537.36")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS_CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "HeadlessChrome/126.0.6478.126 Safari/537.36")

SCREENS = {MAC_SAFARI: ("2560x1440", "1512x860"), WIN_CHROME: ("1920x1080", "1903x947"),
           WIN_EDGE: ("1920x1080", "1880x940"), MAC_CHROME: ("1728x1117", "1728x980"),
           LINUX_FIREFOX: ("1920x1080", "1920x960"), IPHONE_SAFARI: ("390x844", "390x664"),
           ANDROID_CHROME: ("412x915", "412x780"), GOOGLEBOT: ("1024x768", "1024x768"),
           HEADLESS_CHROME: ("800x600", "800x600")}

TITLES = {"/": "Leadstream demo: revenue analytics for B2B teams", "/pricing": "Pricing", "/demo": "Book a demo",
          "/contact": "Talk to sales", "/product": "Product", "/security": "Security and compliance",
          "/integrations": "Integrations"}


@dataclass(frozen=True)
class Session:
    """One earlier visit: ``pages`` read ``days_ago`` days before now (fractions allowed)."""
    days_ago: float
    pages: tuple[str, ...]
    referrer: str = "https://www.google.com/"


@dataclass(frozen=True)
class Persona:
    """One simulated visitor. ``expect`` says what the demo should show for them."""
    key: str
    who: str
    ip: str
    ua: str
    expect: str
    history: tuple[Session, ...] = ()
    live: tuple[str, ...] = ()
    identify: str | None = None          # email given in a form during the live visit
    identify_after: int | None = None    # ... after this many live pages (default: after all of them)
    title: str | None = None             # the form's job title trait
    conversion: str | None = None        # a `track` event sent after the form (a demo request)
    language: str = "en-US,en;q=0.9"
    timezone: str = "America/Chicago"
    start_s: float = 0.0                 # when the live visit begins, seconds after the start


PERSONAS: tuple[Persona, ...] = (
    # --- target accounts: these qualify ------------------------------------------------------
    Persona("brightpath-buyer", "Brightpath Analytics (US software): VP Engineering, signs in, reads pricing, requests a demo",
            "203.0.113.5", MAC_SAFARI, "qualifies: A2 from the committee's reading, then A1 naming her once she signs in and reads on",
            history=(Session(3, ("/", "/customers/northwind-freight"), referrer="https://www.linkedin.com/"),),
            live=("/pricing", "/demo"), identify="ada.fictional@brightpath-analytics.example", identify_after=0,
            title="VP Engineering", conversion="demo_request", start_s=4),
    Persona("brightpath-colleague", "Brightpath Analytics: a colleague comparing vendors",
            "203.0.113.9", WIN_CHROME, "adds buying-group breadth to Brightpath",
            history=(Session(2, ("/pricing", "/compare/leadstream-vs-spreadsheet", "/case-studies/ironvale")),),
            live=("/pricing", "/security"), start_s=12),
    Persona("cobalt-buyer", "Cobalt Ledger Financial (US fintech): procurement on pricing and demo",
            "203.0.113.50", WIN_EDGE, "qualifies",
            history=(Session(2, ("/", "/pricing", "/customers/brightpath-analytics", "/product")),
                     Session(0.5, ("/pricing", "/demo", "/contact"), referrer="")),
            live=("/pricing", "/demo"), identify="erin.testperson@cobalt-ledger.example",
            title="Procurement Manager", timezone="America/New_York", start_s=8),
    # --- companies that do not (yet) qualify --------------------------------------------------
    Persona("ironvale-researcher", "Ironvale Manufacturing (GB, 5,200 staff): reading the blog",
            "203.0.113.40", MAC_CHROME, "company resolved; fit and intent too low",
            history=(Session(5, ("/blog/intent-data-explained", "/blog/account-scoring")),),
            live=("/blog/first-party-data", "/product"), language="en-GB,en;q=0.9",
            timezone="Europe/London", start_s=15),
    Persona("meridian-researcher", "Meridian Health Systems (US, 12,000 staff, IPv6): one product page",
            "2001:db8:200::1a", WIN_CHROME, "company resolved over IPv6; outside the ICP's size",
            live=("/blog/hipaa-and-analytics", "/product", "/security"), timezone="America/New_York", start_s=20),
    Persona("polder-visitor", "Polder Foods (NL): a short visit",
            "203.0.113.118", LINUX_FIREFOX, "company from a start-end range; a bounce, low intent",
            live=("/",), language="nl-NL,nl;q=0.9,en;q=0.8", timezone="Europe/Amsterdam", start_s=25),
    Persona("sakura-buyer", "Sakura Robotics (JP): a keen buyer",
            "203.0.113.150", MAC_SAFARI, "filtered: country_denied:JP",
            history=(Session(1, ("/pricing", "/demo", "/contact")),),
            live=("/pricing", "/demo"), language="ja-JP,ja;q=0.9,en;q=0.7", timezone="Asia/Tokyo", start_s=10),
    Persona("unlisted-consultant", "Unlisted Consulting (a business network nobody imported)",
            "203.0.113.210", MAC_CHROME, "filtered: unresolved (no firmographics)",
            live=("/pricing", "/demo"), timezone="America/Los_Angeles", start_s=18),
    # --- networks that name no employer -----------------------------------------------------
    Persona("broadband-buyer", "A home broadband visitor reading pricing",
            "198.51.100.20", WIN_CHROME, "filtered: isp_traffic:isp",
            history=(Session(1, ("/pricing", "/demo")),), live=("/pricing", "/contact"),
            timezone="America/Los_Angeles", start_s=6),
    Persona("mobile-reader", "A phone on a mobile network",
            "198.51.100.140", IPHONE_SAFARI, "filtered: isp_traffic:mobile",
            live=("/", "/blog/intent-data-explained", "/pricing"), language="en-GB,en;q=0.9",
            timezone="Europe/London", start_s=14),
    Persona("vpn-user", "A visitor behind a VPN (privacy relay)",
            "192.0.2.10", MAC_CHROME, "filtered: unresolved (privacy network)",
            live=("/pricing", "/demo", "/contact"), start_s=22),
    # --- bots -----------------------------------------------------------------------------
    Persona("googlebot", "Googlebot crawling", "198.51.100.200", GOOGLEBOT, "filtered: bot",
            live=("/", "/pricing", "/demo", "/contact", "/product", "/blog/account-scoring"), start_s=3),
    Persona("headless", "HeadlessChrome on a cloud server", "198.51.100.210", HEADLESS_CHROME, "filtered: bot",
            live=("/pricing", "/demo", "/contact"), start_s=9),
    Persona("cloud-scraper", "A Chrome UA from a hosting network", "198.51.100.220", WIN_CHROME,
            "filtered: bot (hosting network)", live=("/pricing", "/demo", "/contact", "/pricing"), start_s=16),
    # --- public sector and education --------------------------------------------------------
    Persona("government", "Department for Digital Services (GB government)", "203.0.113.165", WIN_EDGE,
            "filtered: sector_excluded:government",
            history=(Session(1, ("/pricing", "/security", "/demo")),), live=("/pricing", "/contact"),
            language="en-GB,en;q=0.9", timezone="Europe/London", start_s=7),
    Persona("university", "Example State University (US college)", "203.0.113.180", LINUX_FIREFOX,
            "filtered: sector_excluded:education",
            live=("/pricing", "/demo", "/integrations"), timezone="America/New_York", start_s=11),
    # --- job seekers ------------------------------------------------------------------------
    Persona("job-seeker", "A Northwind Freight employee looking for a job", "203.0.113.20", WIN_CHROME,
            "filtered: only_excluded_pages (careers)",
            live=("/careers", "/careers/engineering", "/careers/engineering/backend-developer"),
            language="de-DE,de;q=0.9,en;q=0.8", timezone="Europe/Berlin", start_s=5),
    Persona("job-seeker-home", "A job seeker at home", "198.51.100.77", ANDROID_CHROME,
            "filtered: isp_traffic / careers pages", live=("/careers", "/jobs/sales-engineer"), start_s=19),
)

_BACKGROUND_IPS = ("198.51.100.{}", "198.51.100.{}")  # broadband 1-126, mobile 129-190
_BACKGROUND_PAGES = ("/", "/blog/intent-data-explained", "/blog/account-scoring", "/blog/first-party-data",
                     "/product", "/integrations", "/pricing", "/docs/getting-started", "/about")
_BACKGROUND_UAS = (WIN_CHROME, MAC_SAFARI, IPHONE_SAFARI, ANDROID_CHROME, LINUX_FIREFOX, MAC_CHROME)


@dataclass
class SimulationReport:
    """What was sent: requests by persona, failures, and the duration."""
    site_id: str
    requests: Counter[str] = field(default_factory=Counter)
    events: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    background_visitors: int = 0
    duration_s: float = 0.0
    stopped_by: str = "schedule done"

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def summary(self) -> str:
        failed = sum(self.failures.values())
        return (f"sent {self.total_requests} requests ({self.events} events, {self.background_visitors} background "
                f"visitors) to site {self.site_id!r} in {self.duration_s:.1f} s; {failed} failed; "
                f"stopped: {self.stopped_by}")


def check_local_url(url: str) -> str:
    """``url`` without a trailing slash, with ``localhost`` as 127.0.0.1; ValueError for any other host.

    The collector trusts X-Forwarded-For only from 127.0.0.1 in the demo, and
    the simulator must never send synthetic traffic anywhere else.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: give the collector's URL, like http://127.0.0.1:8080")
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    if host != "127.0.0.1":
        raise ValueError(f"{url!r}: the simulator only sends to a collector on 127.0.0.1")
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class _Browser:
    """One visitor's browser: id, address, UA; builds and sends /collect requests."""

    def __init__(self, rng: random.Random, ip: str, ua: str, language: str, timezone: str, key: str) -> None:
        self.visitor_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.ip, self.ua, self.language, self.timezone, self.key = ip, ua, language, timezone, key
        self.screen, self.viewport = SCREENS.get(ua, ("1920x1080", "1903x947"))
        self.session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.last_url: str | None = None

    def page_view(self, path: str, ts: int, referrer: str | None) -> dict[str, Any]:
        url = SITE_ORIGIN + path
        event = {"type": "page_view", "url": url, "ts": ts, "title": _title(path), "screen": self.screen,
                 "viewport": self.viewport, "timezone": self.timezone, "language": self.language.split(",")[0]}
        ref = referrer if referrer is not None else self.last_url
        if ref:
            event["referrer"] = ref
        self.last_url = url
        return event

    def ping(self, ts: int, engaged_ms: int, scroll: int) -> dict[str, Any]:
        return {"type": "page_ping", "url": self.last_url or SITE_ORIGIN + "/", "ts": ts,
                "engaged_ms": engaged_ms, "scroll_depth": scroll}

    def body(self, site_id: str, events: list[dict[str, Any]], sent_at: int) -> bytes:
        return json.dumps({"site_id": site_id, "visitor_id": self.visitor_id, "session_id": self.session_id,
                           "sent_at": sent_at, "tracker": "leadstream-simulator/1.0", "events": events},
                          separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        return {"X-Forwarded-For": self.ip, "User-Agent": self.ua, "Accept-Language": self.language,
                "Origin": SITE_ORIGIN, "Referer": self.last_url or SITE_ORIGIN + "/",
                "Content-Type": "text/plain;charset=UTF-8"}


def _title(path: str) -> str:
    if path in TITLES:
        return TITLES[path]
    return path.strip("/").split("/")[-1].replace("-", " ").capitalize() or "Home"


def _now_ms() -> int:
    return int(time.time() * 1000)


# A step returns the events to send now, given the current time; None ends the visitor.
Step = Callable[[int], list[dict[str, Any]]]


def _history_events(b: _Browser, persona: Persona, rng: random.Random, now: int) -> list[dict[str, Any]]:
    """Every earlier session of ``persona`` as events, the last one ending a little before ``now``."""
    events: list[dict[str, Any]] = []
    latest = now - 5_000  # the queue is flushed a few seconds after the last of it happened
    for s in sorted(persona.history, key=lambda s: -s.days_ago):
        dwells = [rng.randint(25_000, 70_000) for _ in s.pages]
        t = min(now - int(s.days_ago * DAY_MS), latest) - sum(dwells)
        b.last_url = None
        for i, (path, dwell) in enumerate(zip(s.pages, dwells)):
            events.append(b.page_view(path, t, s.referrer if i == 0 else None))
            for k in range(1, 3):
                events.append(b.ping(t + k * dwell // 3, dwell // 3, min(100, 35 + 30 * k + rng.randint(0, 10))))
            t += dwell
    return events


def _schedule(personas: tuple[Persona, ...], rng: random.Random, duration_s: float,
              background_every_s: float) -> Iterator[tuple[float, str, _Browser, Any]]:
    """(seconds after start, persona key, browser, what) for every request, in no particular order.

    ``what`` is "history", ("view", path, referrer), ("ping", engaged_ms, scroll),
    ("identify", email, title) or ("track", name).
    """
    # the scripted visits take about a minute; a shorter run plays them faster
    scale = min(1.0, duration_s / 60.0)
    for p in personas:
        b = _Browser(rng, p.ip, p.ua, p.language, p.timezone, p.key)
        if p.history:
            yield ((0.2 + rng.random() * 2.0) * scale, p.key, b, "history")
        t = (p.start_s + rng.random()) * scale
        form_after = len(p.live) if p.identify_after is None else p.identify_after
        for i, path in enumerate(p.live):
            if p.identify and i == form_after:
                yield (t, p.key, b, ("identify", p.identify, p.title))
                t += 0.5 * scale
            yield (t, p.key, b, ("view", path, "https://www.google.com/" if i == 0 and not p.history else None))
            dwell = rng.uniform(2.5, 6.0)
            yield (t + dwell * 0.6 * scale, p.key, b, ("ping", int(dwell * 600), rng.randint(40, 100)))
            t += dwell * scale
        if p.identify and form_after >= len(p.live):
            yield (t, p.key, b, ("identify", p.identify, p.title))
            t += 0.5 * scale
        if p.conversion:
            yield (t, p.key, b, ("track", p.conversion))
    # anonymous background readers on broadband and mobile networks
    t = rng.expovariate(1.0 / background_every_s)
    n = 0
    while t < duration_s - 1:
        n += 1
        mobile = rng.random() < 0.35
        ip = f"198.51.100.{rng.randint(129, 190) if mobile else rng.randint(1, 126)}"
        ua = rng.choice((IPHONE_SAFARI, ANDROID_CHROME) if mobile else _BACKGROUND_UAS)
        b = _Browser(rng, ip, ua, "en-US,en;q=0.9", "America/Chicago", f"background-{n}")
        pages = rng.sample(_BACKGROUND_PAGES, rng.randint(1, 3))
        s = t
        for i, path in enumerate(pages):
            yield (s, "background", b, ("view", path, "https://www.google.com/" if i == 0 else None))
            s += rng.uniform(2.0, 5.0)
        t += rng.expovariate(1.0 / background_every_s)


def _events_for(b: _Browser, persona: Persona | None, what: Any, rng: random.Random, now: int) -> list[dict[str, Any]]:
    if what == "history":
        assert persona is not None
        events = _history_events(b, persona, rng, now)
        b.last_url = None
        return events
    kind = what[0]
    ts = now - rng.randint(5, 80)
    if kind == "view":
        return [b.page_view(what[1], ts, what[2])]
    if kind == "ping":
        return [b.ping(ts, what[1], what[2])]
    if kind == "identify":
        traits = {"title": what[2]} if what[2] else {}
        return [{"type": "identify", "email": what[1], "ts": ts, "traits": traits, "url": b.last_url}]
    if kind == "track":
        return [{"type": "track", "name": what[1], "ts": ts, "url": b.last_url, "props": {"form": "demo"}}]
    raise ValueError(f"unknown step {what!r}")


def run_simulation(url: str, *, site_id: str = "demo", duration_s: float = 90.0, rate: float = 5.0,
                   seed: int | None = None, max_requests: int = 5000, personas: tuple[Persona, ...] = PERSONAS,
                   wait_ready_s: float = 60.0, on_progress: Callable[[str], None] | None = None,
                   client: httpx.Client | None = None) -> SimulationReport:
    """Send the demo's visitors to the collector at ``url`` (127.0.0.1 only) and return what was sent.

    Never sends faster than ``rate`` requests/s, stops after ``duration_s``
    seconds or ``max_requests`` requests, whichever comes first. Waits up to
    ``wait_ready_s`` for the collector's /health first. A request answered 503
    (broker not ready) is retried a few times; other failures are counted.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    base = check_local_url(url)
    rng = random.Random(seed)
    by_key = {p.key: p for p in personas}
    report = SimulationReport(site_id)
    own_client = client is None
    http = client or httpx.Client(timeout=10.0)
    say = on_progress or (lambda _msg: None)
    started = time.monotonic()
    try:
        _wait_healthy(http, base, wait_ready_s)
        queue = [(due, seq, key, b, what) for seq, (due, key, b, what)
                 in enumerate(_schedule(personas, rng, duration_s, background_every_s=max(1.0, 10.0 / rate)))]
        heapq.heapify(queue)
        gap = 1.0 / rate
        next_slot = time.monotonic()
        seen_background: set[str] = set()
        last_report = started
        while queue:
            due, _, key, browser, what = heapq.heappop(queue)
            now_s = time.monotonic()
            if now_s - started >= duration_s:
                report.stopped_by = f"duration {duration_s:g} s"
                break
            if report.total_requests >= max_requests:
                report.stopped_by = f"max_requests {max_requests}"
                break
            wait = max(started + due, next_slot) - now_s
            if wait > 0:
                time.sleep(min(wait, max(0.0, started + duration_s - now_s)))
                if time.monotonic() - started >= duration_s:
                    report.stopped_by = f"duration {duration_s:g} s"
                    break
            next_slot = time.monotonic() + gap
            persona = by_key.get(key)
            now = _now_ms()
            events = _events_for(browser, persona, what, rng, now)
            if key == "background" and browser.visitor_id not in seen_background:
                seen_background.add(browser.visitor_id)
                report.background_visitors += 1
            ok = _post(http, base, browser, site_id, events, now, report)
            if ok:
                report.requests[key] += 1
                report.events += len(events)
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                say(f"{time.monotonic() - started:5.0f} s  {report.total_requests} requests sent")
    finally:
        report.duration_s = time.monotonic() - started
        if own_client:
            http.close()
    return report


def _wait_healthy(http: httpx.Client, base: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http.get(f"{base}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the collector at {base} did not answer /health within {timeout_s:g} s")
        time.sleep(0.3)


def _post(http: httpx.Client, base: str, b: _Browser, site_id: str, events: list[dict[str, Any]], now: int,
          report: SimulationReport) -> bool:
    body = b.body(site_id, events, sent_at=now)
    for attempt in itertools.count():
        try:
            resp = http.post(f"{base}/collect", content=body, headers=b.headers())
        except httpx.HTTPError as exc:
            report.failures[type(exc).__name__] += 1
            log.warning("POST /collect failed: %s", exc)
            return False
        if resp.status_code in (200, 204):
            return True
        if resp.status_code == 503 and attempt < 5:
            time.sleep(float(resp.headers.get("Retry-After", "1")) if attempt > 2 else 0.5)
            continue
        report.failures[f"http_{resp.status_code}"] += 1
        log.warning("POST /collect answered %d: %s", resp.status_code, resp.text[:300])
        return False
    return False  # pragma: no cover - the loop returns


def expectations(personas: tuple[Persona, ...] = PERSONAS) -> list[tuple[str, str]]:
    """(who, what the demo shows for them), for printing."""
    return [(p.who, p.expect) for p in personas]
