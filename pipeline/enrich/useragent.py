"""User agent parsing and bot detection: ``parse_device(user_agent, headers) -> Device``.

Browser, OS and device family come from ua-parser's fast API (``ua_parser.parse``, the
Rust-backed resolver when ``ua-parser-rs`` is installed). A visit is a bot when any of:

1. the user agent is empty (browsers always send one);
2. a headless or automation browser: ``HeadlessChrome``, ``PhantomJS``, ``SlimerJS``, or
   ``Electron/`` without a known desktop app token (Nightmare.js and similar drivers);
3. ua-parser's device family is ``Spider``;
4. crawlerdetect (the CrawlerDetect pattern list) matches: search engines, SEO tools,
   monitors, HTTP libraries (curl, python-requests, Go-http-client, ...);
4b. the maintained ``crawler-user-agents`` list matches (``pipeline.enrich.crawler_list``:
   CDN and feed fetchers, fediverse servers, link previewers ... that crawlerdetect misses);
5. a request header says so: ``Sec-CH-UA`` naming ``HeadlessChrome``.

Everything derived from the UA string is cached (bounded LRU), since a site sees few
distinct user agents; headers are checked per call (cheap). Never raises.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace

import ua_parser
from crawlerdetect import CrawlerDetect

from pipeline.core.bots import ELECTRON_APPS as _ELECTRON_APPS
from pipeline.core.model import Device
from pipeline.enrich.crawler_list import crawler_match as _crawler_list_match

log = logging.getLogger(__name__)

CACHE_SIZE = 16_384
MAX_UA_CHARS = 2_048  # longer strings are cut before parsing (regex cost grows with length)

_HEADLESS = re.compile(r"HeadlessChrome|PhantomJS|SlimerJS|\bNightmare\b", re.IGNORECASE)
_ELECTRON = re.compile(r"\bElectron/\d")

_TABLET_FAMILIES = frozenset({"iPad", "Kindle", "Kindle Fire", "Nexus 7", "Nexus 9", "Nexus 10", "Xoom",
                              "Galaxy Tab", "Surface", "Generic Tablet", "BlackBerry Playbook"})
_TABLET_BRANDS = frozenset({"Generic_Android_Tablet"})
_MOBILE_FAMILIES = frozenset({"iPhone", "iPod", "Generic Smartphone", "Generic Feature Phone",
                              "Generic_Android", "PlayStation Vita", "iTouch"})
_MOBILE_OS = frozenset({"iOS", "Android", "Windows Phone", "Windows Mobile", "BlackBerry OS", "BlackBerry",
                        "Symbian OS", "KaiOS", "Firefox OS", "Tizen", "HarmonyOS", "webOS", "Bada", "Maemo"})
_DESKTOP_OS = frozenset({"Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Debian", "Chrome OS",
                         "FreeBSD", "OpenBSD", "NetBSD", "Solaris", "Kubuntu", "Mint", "Arch Linux",
                         "SUSE", "Red Hat", "CentOS", "Gentoo", "Slackware", "Mageia", "Chromecast"})

_crawler_lock = threading.Lock()
_crawler = CrawlerDetect()


def _crawler_match(user_agent: str) -> str | None:
    # CrawlerDetect keeps the last match on the instance, so a check and its read go together.
    with _crawler_lock:
        if _crawler.is_crawler(user_agent):
            return _crawler.get_matches() or "crawler"
    return _crawler_list_match(user_agent)


def _version(major: str | None, minor: str | None) -> str | None:
    if not major:
        return None
    return f"{major}.{minor}" if minor else major


def _device_class(ua: str, os_family: str | None, device_family: str | None, device_brand: str | None,
                  browser: str | None) -> str:
    if device_family in _TABLET_FAMILIES or device_brand in _TABLET_BRANDS or "Tablet" in ua:
        return "tablet"
    if os_family == "Android" and "Mobile" not in ua:
        return "tablet"   # Android tablets drop the "Mobile" token (Google's own guidance to vendors)
    if device_family in _MOBILE_FAMILIES or (browser or "").endswith("Mobile") or "Mobile Safari" == browser:
        return "mobile"
    if os_family in _MOBILE_OS:
        return "mobile"
    if os_family in _DESKTOP_OS or device_family == "Mac":
        return "desktop"
    return "unknown"


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What the UA string alone says: the Device plus the raw library verdicts that
    ``pipeline.core.bots.BotSignals`` takes (``ua_is_crawler``, ``ua_crawler_name``,
    ``ua_device_family``)."""
    device: Device
    is_crawler: bool = False           # crawlerdetect or the crawler-user-agents list matched
    crawler_name: str | None = None    # the pattern it matched, e.g. "Googlebot", "curl"
    device_family: str | None = None   # ua-parser's device family ("Spider" for known bots)


def analyze_user_agent(user_agent: str | None) -> UserAgentInfo:
    """Parse one user-agent string and run the UA-based bot checks. Cached; never raises.

    A missing header (None) is an empty user agent. The string is cut to ``MAX_UA_CHARS``
    before it reaches the cache, so the cache holds at most ``CACHE_SIZE`` keys of that size.
    """
    return analyze_clipped_user_agent((user_agent or "").strip()[:MAX_UA_CHARS])


@functools.lru_cache(maxsize=CACHE_SIZE)
def analyze_clipped_user_agent(ua: str) -> UserAgentInfo:
    """:func:`analyze_user_agent` of a stripped string of at most ``MAX_UA_CHARS`` characters (the cache)."""
    if not ua:
        return UserAgentInfo(Device(device_class="bot", is_bot=True, bot_reason="empty user agent"))
    try:
        parsed = ua_parser.parse(ua)
    except Exception:  # a parser bug must not drop the event; the UA is still checked for bots below
        log.exception("useragent: ua-parser failed on %r", ua[:200])
        parsed = None
    browser = version = os_family = device_family = device_brand = None
    if parsed is not None:
        if parsed.user_agent is not None and parsed.user_agent.family != "Other":
            browser = parsed.user_agent.family
            version = _version(parsed.user_agent.major, parsed.user_agent.minor)
        if parsed.os is not None and parsed.os.family != "Other":
            os_family = parsed.os.family
        if parsed.device is not None and parsed.device.family != "Other":
            device_family = parsed.device.family
            device_brand = parsed.device.brand

    crawler = _crawler_match(ua)
    reason: str | None = None
    headless = _HEADLESS.search(ua)
    if headless:
        reason = f"headless browser: {headless.group(0)}"
    elif _ELECTRON.search(ua) and not _ELECTRON_APPS.search(ua):
        reason = "automation: Electron without a known desktop app"
    elif device_family == "Spider":
        reason = f"ua-parser: spider ({browser or 'unknown'})"
    elif crawler:
        reason = f"crawler pattern: {crawler}"
    if reason:
        device = Device(browser=browser, browser_version=version, os=os_family, device_class="bot",
                        is_bot=True, bot_reason=reason)
    else:
        device = Device(browser=browser, browser_version=version, os=os_family,
                        device_class=_device_class(ua, os_family, device_family, device_brand, browser))
    return UserAgentInfo(device=device, is_crawler=crawler is not None, crawler_name=crawler,
                         device_family=device_family)


def parse_user_agent(user_agent: str) -> Device:
    """The Device a user-agent string describes (no header signals). Cached; never raises."""
    return analyze_user_agent(user_agent).device


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():
        if key.lower() == name:
            return val
    return None


def parse_device(user_agent: str | None, headers: Mapping[str, str] | None = None) -> Device:
    """Parse a user agent plus request headers into a Device; ``is_bot`` with a reason for bots.

    ``headers`` are the request's (any key case). Never raises; the UA part is cached.
    """
    device = analyze_user_agent(user_agent or "").device
    if headers and not device.is_bot:
        ch_ua = _header(headers, "sec-ch-ua")
        if ch_ua and "headless" in ch_ua.lower():
            return replace(device, device_class="bot", is_bot=True, bot_reason="headless browser: Sec-CH-UA")
    return device
