"""parse_device on real user-agent strings: browsers, devices and bots."""

from __future__ import annotations

import pytest

from pipeline.enrich.useragent import analyze_clipped_user_agent, analyze_user_agent, parse_device

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like "
                        "Gecko) Chrome/120.0.6099.216 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
                        "+http://www.google.com/bot.html)")
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
HEADLESS_CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "HeadlessChrome/120.0.6099.28 Safari/537.36")
PHANTOMJS = ("Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 "
             "Safari/538.1")
ELECTRON = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Electron/28.1.0 Safari/537.36")
CHROME_WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0.0.0 Safari/537.36")
EDGE_WINDOWS = CHROME_WINDOWS + " Edg/120.0.2210.91"
SAFARI_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.2 Safari/605.1.15")
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0"
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
CHROME_ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0.6099.144 Mobile Safari/537.36")
SAFARI_IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                 "Version/17.2 Mobile/15E148 Safari/604.1")
FIREFOX_ANDROID = "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0"
IPAD = ("Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 "
        "Mobile/15E148 Safari/604.1")
GALAXY_TAB = ("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/120.0.0.0 Safari/537.36")
SLACK_DESKTOP = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
                 "Slack/4.36.140 Chrome/120.0.6099.56 Electron/28.0.0 Safari/537.36 Sonic Slack_SSB/4.36.140")


@pytest.mark.parametrize(("ua", "browser", "os", "device_class"), [
    (CHROME_WINDOWS, "Chrome", "Windows", "desktop"),
    (EDGE_WINDOWS, "Edge", "Windows", "desktop"),
    (SAFARI_MAC, "Safari", "Mac OS X", "desktop"),
    (FIREFOX_WINDOWS, "Firefox", "Windows", "desktop"),
    (FIREFOX_LINUX, "Firefox", "Ubuntu", "desktop"),
    (CHROME_ANDROID, "Chrome Mobile", "Android", "mobile"),
    (SAFARI_IPHONE, "Mobile Safari", "iOS", "mobile"),
    (FIREFOX_ANDROID, "Firefox Mobile", "Android", "mobile"),
    (IPAD, "Mobile Safari", "iOS", "tablet"),
    (GALAXY_TAB, "Chrome", "Android", "tablet"),
])
def test_real_browsers_are_people_with_the_right_device_class(ua: str, browser: str, os: str,
                                                              device_class: str) -> None:
    device = parse_device(ua, {"Accept-Language": "en-US"})
    assert not device.is_bot, device.bot_reason
    assert device.bot_reason is None
    assert (device.browser, device.os, device.device_class) == (browser, os, device_class)
    assert device.browser_version and device.browser_version[0].isdigit()


@pytest.mark.parametrize(("ua", "reason_part"), [
    (GOOGLEBOT, "spider"),
    (GOOGLEBOT_SMARTPHONE, "spider"),
    (BINGBOT, "spider"),
    ("curl/8.4.0", "curl"),
    ("python-requests/2.31.0", "python-requests"),
    ("Go-http-client/1.1", "Go-http-client"),
    (HEADLESS_CHROME, "HeadlessChrome"),
    (PHANTOMJS, "PhantomJS"),
    (ELECTRON, "Electron"),
    ("", "empty"),
    ("   ", "empty"),
])
def test_bots_are_flagged_with_a_reason(ua: str, reason_part: str) -> None:
    device = parse_device(ua)
    assert device.is_bot
    assert device.device_class == "bot"
    assert device.bot_reason is not None and reason_part.lower() in device.bot_reason.lower()


def test_none_user_agent_is_a_bot_not_an_error() -> None:
    assert parse_device(None).is_bot


def test_raw_library_verdicts_are_exposed_for_the_core_bot_signals() -> None:
    info = analyze_user_agent(GOOGLEBOT)
    assert info.is_crawler and info.crawler_name == "Googlebot"
    assert info.device_family == "Spider"
    curl = analyze_user_agent("curl/8.4.0")
    assert curl.is_crawler and curl.crawler_name == "curl"
    assert not analyze_user_agent(CHROME_WINDOWS).is_crawler


def test_headless_client_hint_header_marks_an_ordinary_ua_as_bot() -> None:
    hint = '"Chromium";v="120", "HeadlessChrome";v="120", "Not?A_Brand";v="99"'
    for key in ("Sec-CH-UA", "sec-ch-ua", "SEC-CH-UA"):
        device = parse_device(CHROME_WINDOWS, {key: hint})
        assert device.is_bot and device.bot_reason == "headless browser: Sec-CH-UA", key
    normal = '"Chromium";v="120", "Google Chrome";v="120", "Not?A_Brand";v="99"'
    assert not parse_device(CHROME_WINDOWS, {"Sec-CH-UA": normal}).is_bot


def test_electron_desktop_apps_people_use_are_not_automation() -> None:
    device = parse_device(SLACK_DESKTOP)
    assert device.bot_reason is None or "Electron" not in device.bot_reason


def test_parsing_is_cached_by_ua_string() -> None:
    analyze_clipped_user_agent.cache_clear()
    parse_device(SAFARI_MAC)
    parse_device(SAFARI_MAC, {"Sec-CH-UA": "x"})
    info = analyze_clipped_user_agent.cache_info()
    assert info.misses == 1 and info.hits == 1


def test_a_missing_user_agent_is_an_empty_one() -> None:
    """Regression: analyze_user_agent(None) raised AttributeError and cost the whole pixel-events record."""
    assert analyze_user_agent(None) == analyze_user_agent("")
    assert analyze_user_agent(None).device.is_bot


def test_huge_user_agents_are_cached_cut() -> None:
    analyze_clipped_user_agent.cache_clear()
    analyze_user_agent("Mozilla/5.0 " + "x" * 100_000)
    analyze_user_agent("Mozilla/5.0 " + "x" * 200_000)  # the same first MAX_UA_CHARS characters
    assert analyze_clipped_user_agent.cache_info().hits == 1


def test_garbage_and_huge_strings_never_raise() -> None:
    for ua in ("\x00\x01\x02", "Mozilla/5.0 (" * 5000, "💥" * 100, "Mozilla/5.0"):
        device = parse_device(ua, {"Sec-CH-UA": "\ud800"})
        assert device.device_class in {"desktop", "mobile", "tablet", "bot", "unknown"}
