"""Bot verdict from independent signals; the first signal that fires names the reason.

Signal order (cheapest and most certain first): the UA library's verdict
(``crawlerdetect`` / ``ua-parser`` spider family, passed in by the adapter), headless
browser markers in the UA, a webdriver hint, impossible screen sizes, a desktop UA
without ``Accept-Language`` (real browsers always send it), a search-spider or
hosting network (configurable: corporate VPNs egressing through clouds are real
people, so ``hosting_is_bot`` can be switched off), then a page rate no human reaches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .model import Device, NetworkClass, NetworkInfo

__all__ = ["BotConfig", "BotSignals", "BotVerdict", "bot_verdict", "apply_verdict", "parse_size"]

_HEADLESS = re.compile(r"headlesschrome|phantomjs|slimerjs|electron/|puppeteer|playwright|selenium|"
                       r"webdriver|lighthouse|chrome-lighthouse|pagespeed|htmlunit|jsdom|"
                       r"python-requests|python-urllib|go-http-client|curl/|wget/|okhttp|axios/|node-fetch|"
                       r"java/|libwww-perl|scrapy|httpclient", re.IGNORECASE)
_DESKTOP_BROWSER = re.compile(r"(windows nt|macintosh|x11; linux).*(chrome|firefox|safari|edg)/", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class BotConfig:
    hosting_is_bot: bool = True
    max_pages_per_minute: int = 30
    min_screen_px: int = 200
    max_screen_px: int = 16_384


@dataclass(frozen=True, slots=True)
class BotSignals:
    """Inputs the adapter gathers per visitor batch (all optional)."""
    user_agent: str | None = None
    ua_is_crawler: bool = False              # crawlerdetect's verdict
    ua_crawler_name: str | None = None
    ua_device_family: str | None = None      # ua-parser device family ("Spider" for bots)
    accept_language: str | None = None
    screen_resolution: str | None = None     # "WxH"
    viewport: str | None = None
    webdriver: bool = False                  # navigator.webdriver reported by pixel.js
    network: NetworkInfo | None = None
    pages_per_minute: int = 0                # peak page views in one minute (SessionSummary.peak_pages_per_minute)


@dataclass(frozen=True, slots=True)
class BotVerdict:
    is_bot: bool
    reason: str | None = None


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


def bot_verdict(s: BotSignals, cfg: BotConfig = BotConfig()) -> BotVerdict:
    """Combine the signals (order in the module doc); pure."""
    if s.ua_is_crawler:
        return BotVerdict(True, f"ua_crawler:{s.ua_crawler_name or 'crawlerdetect'}")
    if s.ua_device_family and s.ua_device_family.lower() == "spider":
        return BotVerdict(True, "ua_spider")
    ua = s.user_agent or ""
    if not ua.strip():
        return BotVerdict(True, "ua_missing")
    m = _HEADLESS.search(ua)
    if m:
        return BotVerdict(True, f"headless:{m.group(0).lower().rstrip('/')}")
    if s.webdriver:
        return BotVerdict(True, "webdriver")
    screen = _impossible_screen(s, cfg)
    if screen:
        return BotVerdict(True, screen)
    if not (s.accept_language or "").strip() and _DESKTOP_BROWSER.search(ua):
        return BotVerdict(True, "no_accept_language")
    net = s.network
    if net is not None:
        if (net.user_type or "").lower() == "search_engine_spider":
            return BotVerdict(True, "spider_network")
        if cfg.hosting_is_bot and net.network_class is NetworkClass.hosting:
            return BotVerdict(True, f"hosting_network:AS{net.asn}" if net.asn else "hosting_network")
    if s.pages_per_minute > cfg.max_pages_per_minute:
        return BotVerdict(True, f"page_rate:{s.pages_per_minute}/min")
    return BotVerdict(False)


def apply_verdict(device: Device, verdict: BotVerdict) -> Device:
    """``device`` with the verdict applied; a bot's ``device_class`` becomes ``bot``."""
    if not verdict.is_bot:
        return device
    return replace(device, is_bot=True, bot_reason=verdict.reason, device_class="bot")
