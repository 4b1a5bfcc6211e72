"""Bot verdict from independent signals: strong signals decide alone, weak ones only together.

No single missing header makes a visitor a bot: server-side trackers and server-side
tag managers send no ``Accept-Language``, and corporate VPNs egress through clouds.

Strong signals (any one is a bot; checked cheapest and most certain first):

* ``ua_crawler:<name>``: the UA is on a crawler list (crawlerdetect, or the maintained
  ``crawler-user-agents`` list; the adapter passes the match in);
* ``ua_spider``: ua-parser's device family is ``Spider``;
* ``ua_missing``: no user agent at all (every browser sends one);
* ``headless:<marker>``: a headless or automation browser, or an HTTP library, in the UA
  (``HeadlessChrome``, ``PhantomJS``, ``puppeteer``, ``python-requests``, ``curl/``, ...;
  ``Electron/`` only without a desktop app people use, like Slack or Teams);
* ``webdriver``: ``navigator.webdriver`` reported by pixel.js;
* ``spider_network``: the network is a search engine's crawler network;
* ``page_rate:<n>/min``: more page views in one minute than ``max_pages_per_minute``.

Weak signals (each alone is ordinary; ``weak_signals_for_bot`` of them together, 2 by
default, make a bot):

* ``no_accept_language``: a desktop browser UA without ``Accept-Language``. Not counted
  when the UA came from the tracker's ``ua`` field (``relayed``): a relay (server-side
  tracker, server-side tag manager) forwards the browser's UA, not its headers;
* ``hosting_network[:AS<n>]``: a cloud or hosting network (``hosting_is_bot: false``
  drops this signal);
* ``screen:<WxH>`` / ``screen:malformed`` / ``viewport_larger_than_screen:...``: a screen
  no real device has.

The reason names every signal that fired: a strong one alone (``headless:curl``), weak
ones joined (``weak:no_accept_language+hosting_network:AS16509``). ``BotVerdict.weak``
lists the weak signals seen, also for a human (one weak signal is not enough).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

from .model import Device, NetworkClass, NetworkInfo

__all__ = ["BotConfig", "BotSignals", "BotVerdict", "bot_verdict", "apply_verdict", "parse_size",
           "ELECTRON_APPS"]

_HEADLESS = re.compile(r"headlesschrome|phantomjs|slimerjs|\bnightmare\b|puppeteer|playwright|selenium|"
                       r"webdriver|lighthouse|chrome-lighthouse|pagespeed|htmlunit|jsdom|"
                       r"python-requests|python-urllib|go-http-client|curl/|wget/|okhttp|axios/|node-fetch|"
                       r"java/|libwww-perl|scrapy|httpclient", re.IGNORECASE)
_ELECTRON = re.compile(r"\bElectron/\d")
#: Electron desktop apps that real people use; without one of these, ``Electron/`` means automation.
ELECTRON_APPS = re.compile(
    r"\b(?:Slack|Discord|Teams|Code|Notion|Figma|Obsidian|Spotify|WhatsApp|Signal|Zoom|Mattermost|"
    r"Postman|Linear|Loom|Miro|Asana|ClickUp|1Password|Bitwarden|Cursor)/", re.IGNORECASE)
_DESKTOP_BROWSER = re.compile(r"(windows nt|macintosh|x11; linux|x11; cros).*(chrome|firefox|safari|edg)/",
                              re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class BotConfig:
    hosting_is_bot: bool = True          # a hosting network counts as a weak signal
    max_pages_per_minute: int = 30
    min_screen_px: int = 200
    max_screen_px: int = 16_384
    weak_signals_for_bot: int = 2        # weak signals that together make a bot


@dataclass(frozen=True, slots=True)
class BotSignals:
    """Inputs the adapter gathers per visitor batch (all optional)."""
    user_agent: str | None = None
    ua_is_crawler: bool = False              # on a crawler list (crawlerdetect or crawler-user-agents)
    ua_crawler_name: str | None = None
    ua_device_family: str | None = None      # ua-parser device family ("Spider" for bots)
    accept_language: str | None = None
    screen_resolution: str | None = None     # "WxH"
    viewport: str | None = None
    webdriver: bool = False                  # navigator.webdriver reported by pixel.js
    network: NetworkInfo | None = None
    pages_per_minute: int = 0                # peak page views in one minute (SessionSummary.peak_pages_per_minute)
    relayed: bool = False                    # the UA came from the tracker's ``ua`` field (a server-side relay)


@dataclass(frozen=True, slots=True)
class BotVerdict:
    is_bot: bool
    reason: str | None = None
    weak: tuple[str, ...] = ()               # weak signals seen (also when they were too few for a bot)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"1920x1080"`` -> (1920, 1080); None when absent or malformed."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d{1,6})\s*[xX*]\s*(\d{1,6})\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _impossible_screen(s: BotSignals, cfg: BotConfig) -> str | None:
    screen = parse_size(s.screen_resolution)
    if s.screen_resolution and screen is None:
        return "screen:malformed"
    if screen is not None:
        w, h = screen
        if min(w, h) < cfg.min_screen_px or max(w, h) > cfg.max_screen_px:
            return f"screen:{w}x{h}"
        view = parse_size(s.viewport)
        if view is not None and (view[0] > w * 1.5 + 50 or view[1] > h * 1.5 + 50):
            return f"viewport_larger_than_screen:{view[0]}x{view[1]}>{w}x{h}"
    return None


@functools.lru_cache(maxsize=4096)
def _ua_automation(ua: str) -> str | None:
    """A headless browser, HTTP library or automation Electron named in the UA (cached: a site sees
    few distinct UAs, and these searches were 4% of the worker's CPU under load)."""
    m = _HEADLESS.search(ua)
    if m:
        return f"headless:{m.group(0).lower().rstrip('/')}"
    if _ELECTRON.search(ua) and not ELECTRON_APPS.search(ua):
        return "headless:electron"
    return None


def _strong(s: BotSignals, cfg: BotConfig) -> str | None:
    """The first strong signal, or None."""
    if s.ua_is_crawler:
        return f"ua_crawler:{s.ua_crawler_name or 'crawler list'}"
    if s.ua_device_family and s.ua_device_family.lower() == "spider":
        return "ua_spider"
    ua = s.user_agent or ""
    if not ua.strip():
        return "ua_missing"
    automation = _ua_automation(ua)
    if automation:
        return automation
    if s.webdriver:
        return "webdriver"
    if s.network is not None and (s.network.user_type or "").lower() == "search_engine_spider":
        return "spider_network"
    if s.pages_per_minute > cfg.max_pages_per_minute:
        return f"page_rate:{s.pages_per_minute}/min"
    return None


def _weak(s: BotSignals, cfg: BotConfig) -> tuple[str, ...]:
    """Every weak signal that fires, in a fixed order."""
    found: list[str] = []
    if not s.relayed and not (s.accept_language or "").strip() and _DESKTOP_BROWSER.search(s.user_agent or ""):
        found.append("no_accept_language")
    net = s.network
    if cfg.hosting_is_bot and net is not None and net.network_class is NetworkClass.hosting:
        found.append(f"hosting_network:AS{net.asn}" if net.asn else "hosting_network")
    screen = _impossible_screen(s, cfg)
    if screen:
        found.append(screen)
    return tuple(found)


def bot_verdict(s: BotSignals, cfg: BotConfig = BotConfig()) -> BotVerdict:
    """Combine the signals (rules in the module doc); pure."""
    weak = _weak(s, cfg)
    strong = _strong(s, cfg)
    if strong:
        return BotVerdict(True, strong, weak)
    if weak and len(weak) >= cfg.weak_signals_for_bot:
        return BotVerdict(True, "weak:" + "+".join(weak), weak)
    return BotVerdict(False, None, weak)


def apply_verdict(device: Device, verdict: BotVerdict) -> Device:
    """``device`` with the verdict applied; a bot's ``device_class`` becomes ``bot``."""
    if not verdict.is_bot:
        return device
    return replace(device, is_bot=True, bot_reason=verdict.reason, device_class="bot")
