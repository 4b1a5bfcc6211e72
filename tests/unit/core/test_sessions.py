from __future__ import annotations

import json
from dataclasses import replace

from pipeline.core.sessions import SessionConfig, VisitorState, apply_events, session_id_for

from .helpers import DAY, MIN, T0, ev

CFG = SessionConfig(site_hosts=("acme-saas.com",),
                    page_classes=(("pricing", ("/pricing*",)), ("careers", ("/careers/*",))))
U = "https://www.acme-saas.com"


def run(events: list, state: VisitorState | None = None, cfg: SessionConfig = CFG, offset: int | None = None):  # type: ignore[no-untyped-def]
    return apply_events(state or VisitorState.new("s1", "v1"), events, cfg, offset=offset)


class TestBoundaries:
    def test_gap_just_under_30_min_same_session(self) -> None:
        st, out = run([ev(T0), ev(T0 + 30 * MIN - 1)])
        assert st.session_count == 1 and len(out.updates) == 1

    def test_exactly_30_min_starts_new_session(self) -> None:
        st, out = run([ev(T0), ev(T0 + 30 * MIN)])
        assert st.session_count == 2
        assert [u.summary.index for u in out.updates] == [1, 2]
        assert out.updates[0].closed and not out.updates[1].closed
        assert out.updates[0].new_session and out.updates[1].new_session

    def test_page_pings_extend(self) -> None:
        evs = [ev(T0)] + [ev(T0 + i * 20 * MIN, "page_ping") for i in range(1, 6)] + [ev(T0 + 110 * MIN)]
        st, _ = run(evs)
        assert st.session_count == 1 and st.open_session is not None
        assert st.open_session.end - st.open_session.start == 110 * MIN

    def test_no_midnight_split(self) -> None:
        midnight = (T0 // DAY + 1) * DAY
        st, _ = run([ev(midnight - 5 * MIN), ev(midnight + 5 * MIN)])
        assert st.session_count == 1
        assert len(st.active_days) == 2

    def test_no_campaign_split_keeps_first_campaign(self) -> None:
        st, out = run([ev(T0, url=f"{U}/?utm_source=a&utm_medium=cpc"),
                       ev(T0 + MIN, url=f"{U}/?utm_source=b&utm_medium=email")])
        s = out.updates[-1].summary
        assert st.session_count == 1 and s.campaign is not None and s.campaign.source == "a"
        assert s.referrer_class == "paid"

    def test_configurable_gap(self) -> None:
        st, _ = run([ev(T0), ev(T0 + 10 * MIN)], cfg=replace(CFG, gap_ms=5 * MIN))
        assert st.session_count == 2

    def test_session_index_continues_across_batches(self) -> None:
        st, _ = run([ev(T0)])
        st, out = run([ev(T0 + 2 * 3_600_000)], st)
        assert out.updates[0].summary.index == 2
        assert out.updates[0].summary.session_id == session_id_for("s1", "v1", 2)

    def test_continuing_session_across_batches(self) -> None:
        st, _ = run([ev(T0)])
        st, out = run([ev(T0 + 5 * MIN, url=f"{U}/pricing")], st)
        u = out.updates[0]
        assert not u.new_session and u.summary.page_views == 2 and u.summary.index == 1


class TestSummary:
    def test_aggregates(self) -> None:
        evs = [ev(T0, url=f"{U}/", referrer="https://www.google.com/search?q=x"),
               ev(T0 + 10_000, "page_ping", url=f"{U}/", scroll_depth=40),
               ev(T0 + 60_000, url=f"{U}/pricing"),
               ev(T0 + 70_000, "page_ping", url=f"{U}/pricing", engaged_ms=4000, scroll_depth=90)]
        _, out = run(evs)
        s = out.updates[0].summary
        assert (s.page_views, s.entry_url, s.exit_url, s.duration_ms, s.max_scroll) == (
            2, f"{U}/", f"{U}/pricing", 70_000, 90)
        assert s.engaged_ms == 10_000 + 4000
        assert s.referrer_class == "search" and s.referrer_host == "google.com"
        assert s.pages == (f"{U}/", f"{U}/pricing") and s.engaged
        assert [h.kind for h in out.updates[0].hits] == ["page_view", "page_view"]

    def test_engaged_rules(self) -> None:
        one_quick = run([ev(T0)])[1].updates[0].summary
        assert not one_quick.engaged
        assert run([ev(T0), ev(T0 + 10_001, "page_ping", engaged_ms=0)])[1].updates[0].summary.engaged
        assert not run([ev(T0), ev(T0 + 10_000, "page_ping", engaged_ms=0)])[1].updates[0].summary.engaged
        assert run([ev(T0), ev(T0 + 1000, url=f"{U}/b")])[1].updates[0].summary.engaged
        conv = run([ev(T0), ev(T0 + 1000, "form_submit", name="demo-request")])[1].updates[0]
        assert conv.summary.engaged and conv.summary.conversions == 1
        assert [h.kind for h in conv.hits] == ["page_view", "action"]
        assert conv.hits[1].form_id == "demo-request" and conv.hits[1].event is None and conv.hits[1].url

    def test_named_conversion(self) -> None:
        cfg = replace(CFG, conversion_names=frozenset({"demo_request"}))
        _, out = run([ev(T0, "track", name="demo_request")], cfg=cfg)
        assert out.updates[0].summary.conversions == 1

    def test_direct_referrer_and_page_rate(self) -> None:
        evs = [ev(T0 + i * 1000, url=f"{U}/p{i}") for i in range(8)]
        s = run(evs)[1].updates[0].summary
        assert s.referrer_class == "direct" and s.peak_pages_per_minute == 8

    def test_pages_by_class_feature(self) -> None:
        st, _ = run([ev(T0, url=f"{U}/pricing"), ev(T0 + 1000, url=f"{U}/pricing/enterprise"),
                     ev(T0 + 2000, url=f"{U}/careers/eng")])
        assert st.pages_by_class == {"pricing": 2, "careers": 1} and st.page_views == 3


class TestOrderAndDuplicates:
    def test_out_of_order_within_batch(self) -> None:
        evs = [ev(T0 + 2 * MIN, url=f"{U}/b"), ev(T0, url=f"{U}/a"), ev(T0 + MIN, url=f"{U}/c")]
        _, out = run(evs)
        s = out.updates[0].summary
        assert (s.entry_url, s.exit_url, s.start) == (f"{U}/a", f"{U}/b", T0)

    def test_out_of_order_across_session_gap(self) -> None:
        st, out = run([ev(T0 + 2 * 3_600_000), ev(T0)])
        assert st.session_count == 2 and out.updates[0].summary.start == T0

    def test_early_event_within_gap_extends_start_back(self) -> None:
        st, _ = run([ev(T0, url=f"{U}/b")])
        st, out = run([ev(T0 - 10 * MIN, url=f"{U}/a", referrer="https://www.linkedin.com/")], st)
        s = out.updates[0].summary
        assert st.session_count == 1 and s.start == T0 - 10 * MIN and s.entry_url == f"{U}/a"
        assert s.referrer_class == "social"

    def test_late_event_before_open_session_is_reported(self) -> None:
        st, _ = run([ev(T0)])
        st2, out = run([ev(T0 - 31 * MIN), ev(T0 + MIN)], st)
        assert len(out.late) == 1 and st2.session_count == 1
        assert st2.open_session is not None and st2.open_session.start == T0
        assert out.late[0].fingerprint in st2.fingerprints

    def test_duplicates_dropped_in_batch_and_across_batches(self) -> None:
        a = ev(T0)
        st, out = run([a, a])
        assert out.duplicates == 1
        st, out = run([a], st)
        assert out.duplicates == 1 and out.updates == () and st.open_session is not None
        assert st.open_session.page_views == 1

    def test_fingerprint_window_is_bounded(self) -> None:
        cfg = replace(CFG, max_fingerprints=3)
        st, _ = run([ev(T0 + i * 1000, url=f"{U}/{i}") for i in range(10)], cfg=cfg)
        assert len(st.fingerprints) == 3


class TestStateAndReplay:
    def test_offset_guard(self) -> None:
        st, _ = run([ev(T0)], offset=5)
        assert st.offset == 5
        st2, out = run([ev(T0 + MIN)], st, offset=5)
        assert out.skipped and st2 is st
        st3, out3 = run([ev(T0 + MIN)], st, offset=6)
        assert not out3.skipped and st3.offset == 6

    def test_input_state_not_mutated(self) -> None:
        st, _ = run([ev(T0)])
        before = st.to_dict()
        run([ev(T0 + MIN), ev(T0 + 3 * 3_600_000)], st)
        assert st.to_dict() == before

    def test_roundtrip_json(self) -> None:
        st, _ = run([ev(T0, url=f"{U}/pricing?utm_source=x&gclid=1"), ev(T0 + MIN, "page_ping", scroll_depth=50)])
        d = json.loads(json.dumps(st.to_dict()))
        assert d["v"] == 1
        assert VisitorState.from_dict(d) == st

    def test_unknown_version_rejected(self) -> None:
        import pytest
        with pytest.raises(ValueError):
            VisitorState.from_dict({"v": 99, "site": "s1"})

    def test_batching_invariance(self) -> None:
        """One batch or many batches of the same events give the same final state."""
        evs = [ev(T0 + i * 7 * MIN, url=f"{U}/p{i % 3}") for i in range(20)]
        one, _ = run(evs)
        many = VisitorState.new("s1", "v1")
        for i in range(0, 20, 3):
            many, _ = run(evs[i:i + 3], many)
        assert one.to_dict() == many.to_dict()

    def test_deterministic(self) -> None:
        evs = [ev(T0 + i * 13 * MIN) for i in range(12)]
        a = run(evs)
        b = run(list(evs))
        assert a[0].to_dict() == b[0].to_dict()
        assert [u.summary.to_dict() for u in a[1].updates] == [u.summary.to_dict() for u in b[1].updates]


class TestPageRate:
    def test_peak_page_rate_counts_every_view_in_the_minute(self) -> None:
        # 45 page views 1.3 s apart: a crawler's pace. Keeping only the last 10 view times capped the
        # peak at 10, so no page-rate rule above 10/min could ever fire.
        views = [ev(T0 + i * 1300, url=f"{U}/p{i}") for i in range(45)]
        st, out = run(views)
        assert max(u.summary.peak_pages_per_minute for u in out.updates) >= 45

    def test_page_rate_state_is_bounded(self) -> None:
        views = [ev(T0 + i * 100, url=f"{U}/p{i}") for i in range(500)]
        st, out = run(views)
        assert st.open_session is not None and len(st.open_session.recent_pv) <= 120
        assert max(u.summary.peak_pages_per_minute for u in out.updates) >= 120
