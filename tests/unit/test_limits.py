"""kafka.max_message_bytes is the one message-size bound: topics, producers and the stages use it."""

from __future__ import annotations

import pytest

from pipeline.core.limits import chunk_by_bytes, clip, trim_by_bytes
from pipeline.core.pages import URL_CACHE_MAX_CHARS, _url_host_path_cached, url_host_path
from pipeline.settings import SettingsError, load_settings
from pipeline.topology import changelog_specs, topic_specs


def test_topics_get_the_configured_max_message_bytes() -> None:
    settings = load_settings(None, kafka={"max_message_bytes": 2_000_000})
    specs = topic_specs(settings)
    for spec in specs + changelog_specs(settings, specs):
        assert spec.config()["max.message.bytes"] == "2000000", spec.name


def test_collector_records_must_fit_below_the_message_size() -> None:
    with pytest.raises(SettingsError, match="max_record_bytes"):
        load_settings(None, kafka={"max_message_bytes": 500_000})  # the default max_record_bytes is 900,000
    assert load_settings(None, kafka={"max_message_bytes": 500_000}, collector={"max_record_bytes": 400_000})


def test_clip_trim_and_chunk() -> None:
    assert clip("abcdef", 3) == "abc" and clip(None, 3) is None and clip("ab", 3) == "ab"
    items = [{"u": "x" * 100, "i": i} for i in range(50)]
    kept = trim_by_bytes(items, 1000)
    assert kept == items[-len(kept):] and 0 < len(kept) < 50
    chunks = list(chunk_by_bytes(range(10), [40] * 10, 100))
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 2]
    assert list(chunk_by_bytes(["big"], [500], 100)) == [["big"]]


def test_url_cache_holds_only_short_urls() -> None:
    _url_host_path_cached.cache_clear()
    long_url = "https://www.acme.example/" + "p" * 8000
    assert url_host_path(long_url) == ("www.acme.example", "/" + "p" * 8000)
    assert _url_host_path_cached.cache_info().currsize == 0
    url_host_path("https://www.acme.example/pricing")
    assert _url_host_path_cached.cache_info().currsize == 1 and URL_CACHE_MAX_CHARS <= 512
