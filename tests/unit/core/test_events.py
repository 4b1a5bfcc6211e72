from __future__ import annotations

from pipeline.core.events import (TimeConfig, build_event, derived_tstamp, event_fingerprint, parse_payload,
                                  tracker_user_agent, validate_event)

from .helpers import T0, payload, raw


class TestDerivedTstamp:
    def test_true_tstamp_wins(self) -> None:
        assert derived_tstamp(T0, dtm=T0 - 50, stm=T0 - 10, ttm=T0 - 5000) == T0 - 5000

    def test_collector_minus_device_delay(self) -> None:
        # device clock is an hour off; only the delay (stm - dtm) matters
        assert derived_tstamp(T0, dtm=T0 + 3_600_000 - 2000, stm=T0 + 3_600_000) == T0 - 2000

    def test_collector_when_no_device_stamps(self) -> None:
        assert derived_tstamp(T0) == T0
        assert derived_tstamp(T0, dtm=T0 - 10) == T0

    def test_negative_delay_is_zero(self) -> None:
        assert derived_tstamp(T0, dtm=T0, stm=T0 - 5000) == T0

    def test_huge_delay_is_clamped(self) -> None:
        cfg = TimeConfig(max_device_delay_ms=1000)
        assert derived_tstamp(T0, dtm=0, stm=T0, cfg=cfg) == T0 - 1000

    def test_future_true_tstamp_ignored(self) -> None:
        assert derived_tstamp(T0, dtm=T0 - 300, stm=T0, ttm=T0 + 3_600_000) == T0 - 300

    def test_default_clamp_is_seven_days_of_send_delay(self) -> None:
        week = 7 * 86_400_000
        assert derived_tstamp(T0, dtm=T0 - 3 * 86_400_000, stm=T0) == T0 - 3 * 86_400_000
        assert derived_tstamp(T0, dtm=T0 - 30 * 86_400_000, stm=T0) == T0 - week

    def test_clamp_from_the_setting_in_days(self) -> None:
        thirty = TimeConfig.from_days(30)
        assert thirty.max_device_delay_ms == 30 * 86_400_000
        assert derived_tstamp(T0, dtm=T0 - 20 * 86_400_000, stm=T0, cfg=thirty) == T0 - 20 * 86_400_000
        assert derived_tstamp(T0, dtm=T0 - 40 * 86_400_000, stm=T0, cfg=thirty) == T0 - 30 * 86_400_000

    def test_zero_days_means_no_limit(self) -> None:
        unlimited = TimeConfig.from_days(0)
        assert unlimited.max_device_delay_ms is None
        assert derived_tstamp(T0, dtm=T0 - 400 * 86_400_000, stm=T0, cfg=unlimited) == T0 - 400 * 86_400_000

    def test_an_old_true_tstamp_is_honoured_not_clamped(self) -> None:
        backfill = T0 - 60 * 86_400_000
        assert derived_tstamp(T0, dtm=T0 - 10, stm=T0, ttm=backfill) == backfill
        e = raw(device_created_tstamp=T0 - 10, device_sent_tstamp=T0, true_tstamp=backfill)
        assert build_event(e, payload([e])).tstamp == backfill

    def test_parse_payload_applies_the_time_config(self) -> None:
        e = raw(device_created_tstamp=T0 - 10 * 86_400_000, device_sent_tstamp=T0)
        assert parse_payload(payload([e]))[0][0].tstamp == T0 - 7 * 86_400_000
        assert parse_payload(payload([e]), TimeConfig.from_days(0))[0][0].tstamp == T0 - 10 * 86_400_000


class TestFingerprint:
    def test_ignores_event_id_and_sent_tstamp(self) -> None:
        a = raw(device_created_tstamp=T0, device_sent_tstamp=T0 + 1)
        b = dict(a, event_id="other", device_sent_tstamp=T0 + 999)
        assert event_fingerprint(a, "s1", "v1") == event_fingerprint(b, "s1", "v1")

    def test_differs_on_content_site_visitor(self) -> None:
        a = raw(device_created_tstamp=T0)
        fa = event_fingerprint(a, "s1", "v1")
        assert fa != event_fingerprint(dict(a, url="https://x.com/b"), "s1", "v1")
        assert fa != event_fingerprint(a, "s2", "v1")
        assert fa != event_fingerprint(a, "s1", "v2")
        assert fa != event_fingerprint(dict(a, device_created_tstamp=T0 + 1), "s1", "v1")

    def test_without_device_time_event_id_counts(self) -> None:
        a = raw()
        assert event_fingerprint(a, "s1", "v1") != event_fingerprint(dict(a, event_id="z"), "s1", "v1")

    def test_key_order_irrelevant(self) -> None:
        a = raw(device_created_tstamp=T0, page_title="t")
        b = dict(reversed(list(a.items())))
        assert event_fingerprint(a, "s1", "v1") == event_fingerprint(b, "s1", "v1")
        assert len(event_fingerprint(a, "s1", "v1")) == 16


class TestValidation:
    def test_valid(self) -> None:
        e = raw()
        assert validate_event(e, payload([e])) == []

    def test_reasons_are_values(self) -> None:
        e = {"event_id": "", "event_type": "bogus", "device_created_tstamp": "x", "scroll_depth": 140,
             "engaged_ms": -1}
        errors = validate_event(e, payload([e], site_id="", collector_tstamp=0))
        joined = "; ".join(errors)
        for part in ("site_id missing", "collector_tstamp", "event_id missing", "unknown event_type 'bogus'",
                     "device_created_tstamp", "scroll_depth outside", "engaged_ms is negative"):
            assert part in joined

    def test_page_view_needs_http_url(self) -> None:
        e = raw(url="javascript:alert(1)")
        assert "url is not http(s)" in validate_event(e, payload([e]))
        e2 = raw(url=None)
        assert "page_view without url" in validate_event(e2, payload([e2]))

    def test_non_mapping_event(self) -> None:
        assert validate_event("nope", payload([])) == ["event is not an object"]  # type: ignore[arg-type]

    def test_parse_payload_splits_good_and_bad(self) -> None:
        good, bad_ev = raw(), raw("nonsense")
        events, bad = parse_payload(payload([good, bad_ev, 42]))  # type: ignore[list-item]
        assert [e.event_id for e in events] == [good["event_id"]]
        assert len(bad) == 2 and bad[0].event_id == bad_ev["event_id"]
        assert bad[1].reasons == ("event is not an object",)

    def test_parse_payload_without_events(self) -> None:
        events, bad = parse_payload({"payload_id": "x"})
        assert events == [] and bad[0].reasons == ("payload has no events list",)


class TestBuild:
    def test_context_fields(self) -> None:
        e = raw(device_created_tstamp=T0 - 1000, device_sent_tstamp=T0 - 500, scroll_depth=40)
        t = build_event(e, payload([e]))
        assert (t.site_id, t.visitor_id, t.client_ip, t.tstamp, t.scroll_depth) == ("s1", "v1", "203.0.113.7",
                                                                                    T0 - 500, 40)

    def test_visitor_fallbacks(self) -> None:
        e = raw(domain_user_id="d1")
        assert build_event(e, payload([e], visitor_id=None)).visitor_id == "d1"
        e2 = raw()
        assert build_event(e2, payload([e2], visitor_id=None)).visitor_id == "n1"

    def test_tracker_ua_field_stands_in_for_the_http_user_agent(self) -> None:
        browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0.0.0 Safari/537.36"
        e = raw(extra={"ua": browser})
        t = build_event(e, payload([e], user_agent="python-requests/2.32.3", accept_language=None))
        assert t.user_agent == browser and t.ua_relayed
        assert tracker_user_agent(e, payload([e], user_agent="python-requests/2.32.3")) == (browser, True)

    def test_without_ua_field_the_header_is_the_user_agent(self) -> None:
        e = raw()
        t = build_event(e, payload([e], user_agent="Mozilla/5.0 Header"))
        assert t.user_agent == "Mozilla/5.0 Header" and not t.ua_relayed
        blank = raw(extra={"ua": "  "})
        assert build_event(blank, payload([blank], user_agent="H")).user_agent == "H"

    def test_ua_field_equal_to_the_header_is_not_relayed(self) -> None:
        e = raw(extra={"ua": "Mozilla/5.0 Same"})
        t = build_event(e, payload([e], user_agent="Mozilla/5.0 Same"))
        assert t.user_agent == "Mozilla/5.0 Same" and not t.ua_relayed

    def test_anonymous_consent_drops_ip_and_ids(self) -> None:
        e = raw(domain_user_id="d1")
        t = build_event(e, payload([e], consent="anonymous"))
        assert t.anonymous and t.visitor_id is None and t.client_ip is None and t.network_user_id is None
