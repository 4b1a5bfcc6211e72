"""The bot verdict against corpora we did not write: the maintained crawler list's own examples
(PyPI ``crawler-user-agents``, every ``instances`` entry is a bot) and real browsers' UAs
(``tests/unit/data/human_user_agents.txt``, none is)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.core.bots import BotSignals, BotVerdict, bot_verdict
from pipeline.enrich.crawler_list import CrawlerMatcher, crawler_instances, crawler_match, crawler_patterns
from pipeline.enrich.useragent import analyze_user_agent

HUMANS = [line.strip() for line in
          (Path(__file__).parents[1] / "data" / "human_user_agents.txt").read_text("utf-8").splitlines()
          if line.strip() and not line.startswith("#")]


def verdict(ua: str, accept_language: str | None = "en-US,en;q=0.9", relayed: bool = False) -> BotVerdict:
    """The verdict as the visitor stage reaches it: the UA adapter's library verdicts, then the core."""
    info = analyze_user_agent(ua)
    return bot_verdict(BotSignals(user_agent=ua, ua_is_crawler=info.is_crawler, ua_crawler_name=info.crawler_name,
                                  ua_device_family=info.device_family, accept_language=accept_language,
                                  screen_resolution="1920x1080", viewport="1400x900", relayed=relayed))


def test_the_installed_list_is_loaded() -> None:
    assert len(crawler_patterns()) > 1000
    assert len(crawler_instances()) > 2000


def test_every_example_of_the_crawler_list_is_a_bot() -> None:
    missed = [ua for ua in crawler_instances() if not verdict(ua).is_bot]
    assert missed == [], f"{len(missed)} crawler examples not flagged, e.g. {missed[:5]}"


def test_the_matcher_agrees_with_each_pattern_of_the_list() -> None:
    import re
    patterns = [re.compile(p) for p in crawler_patterns()]
    samples = crawler_instances()[::7] + HUMANS
    for ua in samples:
        assert (crawler_match(ua) is not None) == any(p.search(ua) for p in patterns), ua


@pytest.mark.parametrize("ua", HUMANS)
def test_real_browsers_are_people(ua: str) -> None:
    assert crawler_match(ua) is None
    v = verdict(ua)
    assert not v.is_bot, v.reason
    assert not verdict(ua, accept_language=None).is_bot, "a missing Accept-Language alone must not decide"


def test_the_human_corpus_is_large_and_varied() -> None:
    assert len(HUMANS) >= 50
    assert {"desktop", "mobile", "tablet"} <= {analyze_user_agent(ua).device.device_class for ua in HUMANS}


def test_a_human_through_a_server_side_tracker_is_not_a_bot() -> None:
    # The header UA is the tracker's (python-requests); `ua` carries the browser's: the core sees the
    # browser's UA with relayed=True, and no Accept-Language.
    for ua in HUMANS:
        assert not verdict(ua, accept_language=None, relayed=True).is_bot, ua


def test_literal_and_regex_patterns_both_match() -> None:
    m = CrawlerMatcher(["Googlebot\\/", "^curl", "S[eE][mM]rushBot", "bot\\.example"])
    assert m.match("Mozilla/5.0 (compatible; Googlebot/2.1)") == "Googlebot/"
    assert m.match("curl/8.0") == "curl"
    assert m.match("x SemrushBot/7") == "SemrushBot"
    assert m.match("see bot.example") == "bot.example"
    assert m.match("xcurl/8.0") is None and m.match("Mozilla/5.0 Chrome/131") is None
    assert m.match("googlebot/2.1") is None  # the list is case-sensitive


@pytest.mark.bench
def test_cost_per_user_agent() -> None:
    """Uncached cost of the crawler-list match per UA (printed; run with -m bench -s)."""
    crawler_match("warm up")
    uas = HUMANS + crawler_instances()[:200]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for ua in uas:
            crawler_match(ua)
    per_ua_us = (time.perf_counter() - started) / (rounds * len(uas)) * 1e6
    print(f"crawler-user-agents match: {per_ua_us:.1f} µs per UA ({len(crawler_patterns())} patterns)")
    assert per_ua_us < 200
