"""The visitor stage's handler through its Kafka-free contract: one bad event or visitor costs nothing else,
outputs and state stay under their byte bounds, idle visitors are evicted on event time."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from typing import Any

import pytest

from pipeline.core.limits import MAX_TITLE_CHARS, MAX_URL_CHARS, json_size
from pipeline.stages import visitor as visitor_module
from pipeline.stages.messages import join_bad_row_parts

from .stage_fakes import (CODEC, COMPANY_IP, T0, FakeIdentity, Table, bad_rows, event, event_ids, make_settings,
                          payload, record, visit_updates, visitor_stage)

DAY = 86_400_000


def run(stage: Any, table: Table, value: bytes, offset: int = 0, partition: int = 0) -> Any:
    result = asyncio.run(stage(partition, offset, value, table.view))
    table.apply(offset, result)
    return result


def original(row: dict[str, Any]) -> Any:
    """A bad row's payload as the replay reads it."""
    assert row["details"]["payload_encoding"] == "json"
    return json.loads(row["payload"])


def test_a_visitor_without_a_user_agent_costs_no_other_visitor() -> None:
    """Regression: ten visitors in one record, one without a User-Agent: analyze_user_agent(None) raised and
    the whole record became one processing_failure bad row."""
    ids = [f"visitor-{i}" for i in range(10)]
    payloads = [payload(v, [event()], user_agent=None if i == 3 else payload(v, [])["user_agent"])
                for i, v in enumerate(ids)]
    result = run(visitor_stage(), Table(), record(*payloads))
    assert {u["visitor_id"] for u in visit_updates(result)} == set(ids)
    assert bad_rows(result) == []
    no_ua = [u for u in visit_updates(result) if u["visitor_id"] == "visitor-3"]
    assert no_ua[0]["is_bot"] and no_ua[0]["bot_reason"] == "ua_missing"


def test_a_visitor_whose_events_are_all_rejected_costs_nothing_else() -> None:
    """Regression: a bare <img> pixel (no url) and a foreign-scheme URL left a visitor with no events and the
    stage failed at ``v.events[-1]``, losing the record and the per-event schema_violation rows."""
    bare = event(url=None)
    ftp = event(url="ftp://www.acme.example/file")
    payloads = [payload("good-1", [event()]), payload("bare", [bare]), payload("ftp", [ftp]),
                payload("good-2", [event(), event("https://www.acme.example/demo")])]
    table = Table()
    result = run(visitor_stage(), table, record(*payloads))
    assert {u["visitor_id"] for u in visit_updates(result)} == {"good-1", "good-2"}
    rows = bad_rows(result)
    assert sorted(r["failure_type"] for r in rows) == ["schema_violation", "schema_violation"]
    by_event = {r["details"]["event_id"]: r for r in rows}
    assert set(by_event) == {bare["event_id"], ftp["event_id"]}
    # each row carries its event's original payload, replayable as a CollectorBatch
    replay = original(by_event[ftp["event_id"]])
    assert replay["payloads"][0]["visitor_id"] == "ftp" and event_ids(replay) == [ftp["event_id"]]
    assert replay["payloads"][0]["events"][0]["url"] == ftp["url"]
    assert "acme|bare" not in table.data and "acme|ftp" not in table.data


def test_one_bad_event_leaves_the_rest_of_its_visitor() -> None:
    good = [event("https://www.acme.example/"), event("https://www.acme.example/pricing", t=T0 + 1000)]
    bad = event("https://www.acme.example/x", scroll_depth=900)
    result = run(visitor_stage(), Table(), record(payload("v", [good[0], bad, good[1]])))
    hits = [h["url"] for u in visit_updates(result) for h in u["hits"]]
    assert hits == [g["url"] for g in good]
    assert [r["failure_type"] for r in bad_rows(result)] == ["schema_violation"]


def test_an_event_that_raises_in_parsing_is_its_own_bad_row(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = event("https://www.acme.example/broken")
    real = visitor_module.build_event

    def build(ev: Any, p: Any, *a: Any) -> Any:
        if ev.get("event_id") == broken["event_id"]:
            raise RuntimeError("a parser bug")
        return real(ev, p, *a)

    monkeypatch.setattr(visitor_module, "build_event", build)
    result = run(visitor_stage(), Table(), record(payload("a", [event(), broken]), payload("b", [event()])))
    assert {u["visitor_id"] for u in visit_updates(result)} == {"a", "b"}
    rows = bad_rows(result)
    assert [r["failure_type"] for r in rows] == ["processing_failure"]
    assert event_ids(original(rows[0])) == [broken["event_id"]]


def test_a_visitor_that_raises_is_one_bad_row_with_its_events_and_the_others_go_on() -> None:
    table = Table()
    table.data["acme|corrupt"] = {"o": -1, "s": {"vs": {"v": 99}}}  # a state this version cannot read
    mine = [event(), event("https://www.acme.example/demo", t=T0 + 5000)]
    result = run(visitor_stage(), table, record(payload("ok", [event()]), payload("corrupt", mine)))
    assert {u["visitor_id"] for u in visit_updates(result)} == {"ok"}
    rows = bad_rows(result)
    assert [r["failure_type"] for r in rows] == ["processing_failure"]
    assert "acme|corrupt" in rows[0]["message"] and "ValueError" in rows[0]["message"]
    assert event_ids(original(rows[0])) == [e["event_id"] for e in mine]
    assert table.data["acme|corrupt"]["s"] == {"vs": {"v": 99}}  # its state is left as it was


def test_an_identity_failure_costs_only_its_visitor() -> None:
    identity = FakeIdentity(fail_for={"cursed"})
    result = run(visitor_stage(identity=identity), Table(),
                 record(payload("fine", [event()]), payload("cursed", [event()]), payload("fine-2", [event()])))
    assert {u["visitor_id"] for u in visit_updates(result)} == {"fine", "fine-2"}
    assert [r["failure_type"] for r in bad_rows(result)] == ["enrichment_failure"]


def test_retryable_errors_are_not_swallowed() -> None:
    identity = FakeIdentity()

    async def down(*_: Any) -> Any:
        raise ConnectionError("redis is away")

    identity.load_snapshot = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        asyncio.run(visitor_stage(identity=identity)(0, 0, record(payload("v", [event()])), Table().view))


def test_garbage_records_and_unknown_sites_are_typed_bad_rows() -> None:
    stage, table = visitor_stage(), Table()
    rows = bad_rows(run(stage, table, b"\xc3\x01not avro at all"))
    assert [r["failure_type"] for r in rows] == ["schema_violation"]
    assert base64.b64decode(rows[0]["payload"]) == b"\xc3\x01not avro at all"
    result = run(stage, table, record(payload("v", [event()], site_id="nowhere"), payload("w", [event()])), 1)
    assert [r["failure_type"] for r in bad_rows(result)] == ["site_violation"]
    assert {u["visitor_id"] for u in visit_updates(result)} == {"w"}


def test_fuzzed_records_lose_no_good_event() -> None:
    """Random garbage among good events: every good visitor's events reach visits, every bad event is one row."""
    rnd = random.Random(13)
    stage, table = visitor_stage(), Table()
    garbage = [  # (event, rejected)
        lambda: (event(url=""), True), lambda: (event(url=None), True),
        lambda: (event(url="javascript:alert(1)"), True), lambda: (event(event_type="warp_drive"), True),
        lambda: (event(scroll_depth=-5), True), lambda: (event(engaged_ms=-1), True),
        lambda: ({"event_id": "", "event_type": "page_view", "url": "https://www.acme.example/"}, True),
        lambda: (event("https://www.acme.example/" + "x" * 60_000, page_title="t" * 50_000), False),
        lambda: (event(t=T0 - 400 * DAY), False), lambda: (event(t=T0 + 400 * DAY), False),
    ]
    for offset in range(40):
        payloads, good_visitors, bad_events = [], set(), 0
        for i in range(rnd.randint(1, 12)):
            vid = f"v{offset}-{i}"
            events = [event(f"https://www.acme.example/p{rnd.randint(0, 9)}", t=T0 + offset * 1000 + j)
                      for j in range(rnd.randint(0, 4))]
            if events:
                good_visitors.add(vid)
            for _ in range(rnd.randint(0, 3)):
                g, rejected = rnd.choice(garbage)()
                events.insert(rnd.randint(0, len(events)), g)
                bad_events += rejected
                if not rejected:
                    good_visitors.add(vid)
            ua = rnd.choice([None, "", "x" * 20_000, "curl/8.0", "Mozilla/5.0 💥", payload("a", [])["user_agent"]])
            payloads.append(payload(vid, events, user_agent=ua, collector_tstamp=T0 + offset * 1000 + 10,
                                    ip=rnd.choice([None, "999.1.1.1", "::1", COMPANY_IP])))
        result = run(stage, table, record(*payloads), offset)
        assert {u["visitor_id"] for u in visit_updates(result)} == good_visitors
        rows = bad_rows(result)
        assert len(rows) == bad_events and {r["failure_type"] for r in rows} <= {"schema_violation"}
        for o in result.outputs:
            assert len(o.value or b"") <= stage.output_bytes


def test_long_urls_and_titles_are_cut_and_state_stays_bounded() -> None:
    """Regression: two accepted requests of 25 events with 8 KB URLs and titles took one visitor's stored state
    past 1 MB (Faust's maximum message size): ProducerSendError and a crash loop."""
    settings = make_settings()
    stage, table = visitor_stage(settings), Table()
    for offset in range(2):
        events = [event(f"https://www.acme.example/{offset}-{i}/" + "u" * 8192, t=T0 + offset * 60_000 + i * 1000,
                        page_title="T" * 8192, referrer="https://ref.example/" + "r" * 8192) for i in range(25)]
        result = run(stage, table, record(payload("heavy", events)), offset)
        for o in result.outputs:
            assert len(o.value or b"") <= settings.kafka.max_message_bytes * 9 // 10
        for u in visit_updates(result):
            assert all(len(h["url"]) <= MAX_URL_CHARS and len(h["name"] or "") <= MAX_TITLE_CHARS for h in u["hits"])
    state = table.data["acme|heavy"]
    assert json_size(state) <= settings.kafka.max_message_bytes // 2
    assert json_size(state["s"]["h"]) <= settings.stages.history_max_bytes


def test_history_is_trimmed_by_bytes() -> None:
    settings = make_settings(stages={"history_max_bytes": 4096})
    stage, table = visitor_stage(settings), Table()
    for offset in range(30):
        run(stage, table, record(payload("v", [event(f"https://www.acme.example/{offset}/" + "p" * 500,
                                                     t=T0 + offset * 1000)])), offset)
    history = table.data["acme|v"]["s"]["h"]
    assert 0 < json_size(history) <= 4096
    assert history[-1]["u"].startswith("https://www.acme.example/29/")  # the newest are kept


def test_visit_batches_are_split_below_the_message_size() -> None:
    settings = make_settings(kafka={"max_message_bytes": 100_000}, collector={"max_record_bytes": 80_000})
    stage = visitor_stage(settings)
    payloads = [payload(f"v{i}", [event(f"https://www.acme.example/{i}/{j}/" + "x" * 1500, t=T0 + j * 1000,
                                        page_title="y" * 400) for j in range(20)]) for i in range(30)]
    result = run(stage, Table(), record(*payloads))
    visits = [o for o in result.outputs if o.topic == "visits"]
    assert len(visits) > 4  # more than one record per target partition
    assert all(len(o.value or b"") <= 90_000 for o in visits)
    assert len({u["visitor_id"] for u in visit_updates(result)}) == 30
    assert sum(len(u["hits"]) for u in visit_updates(result)) == 30 * 20
    assert bad_rows(result) == []


def test_one_visitors_huge_update_is_split_into_parts() -> None:
    settings = make_settings(kafka={"max_message_bytes": 100_000}, collector={"max_record_bytes": 80_000})
    events = [event(f"https://www.acme.example/{j}/" + "x" * 2000, t=T0 + j * 1000) for j in range(120)]
    result = run(visitor_stage(settings), Table(), record(payload("big", events)))
    updates = visit_updates(result)
    assert len(updates) > 1 and sum(len(u["hits"]) for u in updates) == 120
    assert len({u["update_id"] for u in updates}) == len(updates)
    assert [u["new_session"] for u in updates] == [True] + [False] * (len(updates) - 1)


def test_idle_visitors_are_evicted_on_event_time() -> None:
    settings = make_settings(stages={"state_retention_days": 7})
    stage, table = visitor_stage(settings), Table()
    run(stage, table, record(payload("old", [event()])), 0)
    run(stage, table, record(payload("recent", [event(t=T0 + 5 * DAY)])), 1)
    assert {"acme|old", "acme|recent"} <= set(table.data)
    result = run(stage, table, record(payload("new", [event(t=T0 + 8 * DAY)])), 2)
    assert result.deletes == ["acme|old"]
    assert set(table.data) == {"acme|recent", "acme|new"}
    # a stage started later (state recovered from the changelog) finds idle keys too
    fresh = visitor_stage(settings)
    result = run(fresh, table, record(payload("newer", [event(t=T0 + 13 * DAY)])), 3)
    assert result.deletes == ["acme|recent"]


def test_a_replayed_payload_is_not_counted_twice() -> None:
    """Replay is idempotent by event: the same events at a later offset are duplicates."""
    stage, table = visitor_stage(), Table()
    p = payload("v", [event(), event("https://www.acme.example/demo", t=T0 + 1000)])
    assert len(visit_updates(run(stage, table, record(p), 0))) == 1
    assert visit_updates(run(stage, table, record(p), 7)) == []
    assert table.data["acme|v"]["s"]["vs"]["pv"] == 2


def test_bad_rows_keep_the_whole_payload_split_in_parts() -> None:
    settings = make_settings(kafka={"max_message_bytes": 100_000}, collector={"max_record_bytes": 80_000})
    huge = event("ftp://www.acme.example/" + "é" * 120_000)
    rows = bad_rows(run(visitor_stage(settings), Table(), record(payload("v", [huge]))))
    assert len(rows) > 1 and {r["parts"] for r in rows} == {len(rows)}
    assert len({r["bad_row_id"] for r in rows}) == 1
    assert json.loads(join_bad_row_parts(rows))["payloads"][0]["events"][0]["url"] == huge["url"]
    assert all(len(r["payload"].encode()) <= 50_000 for r in rows)
    assert CODEC  # the rows decoded with the real codec above


def test_a_late_event_is_a_late_event_row_with_its_payload() -> None:
    stage, table = visitor_stage(), Table()
    run(stage, table, record(payload("v", [event(t=T0 + DAY)])), 0)
    late = event("https://www.acme.example/old", t=T0)
    result = run(stage, table, record(payload("v", [late]), payload("v", [event(t=T0 + DAY + 1000)])), 1)
    rows = bad_rows(result)
    assert [r["failure_type"] for r in rows] == ["late_event"]
    assert event_ids(original(rows[0])) == [late["event_id"]] and rows[0]["details"]["event_id"] == late["event_id"]
    assert len(visit_updates(result)) == 1


def test_the_stage_loads_the_identifiers_the_identity_rule_names() -> None:
    """One rule for what to load per visitor (core ``identifiers_to_load``, also what the identity store's
    ``process_events`` loads): the stage asks the graph for exactly those, for all visitors of a site at once."""
    from pipeline.core.events import parse_payload
    from pipeline.core.identity import Identifier, IdentitySnapshot, identifiers_to_load

    class Recording(FakeIdentity):
        def __init__(self) -> None:
            super().__init__()
            self.loads: list[list[Identifier]] = []

        async def load_snapshot(self, site_id: str, identifiers: Any) -> IdentitySnapshot:
            self.loads.append(list(identifiers))
            return await super().load_snapshot(site_id, identifiers)

    payloads = [payload("v1", [event(), event(event_type="identify", identify_user_id="u-7", email="Ada@Acme.example")]),
                payload("v2", [event("https://www.acme.example/?ls_eid=click-9", email_click_id="click-9")]),
                payload("v3", [event(event_type="form_submit", email="cto@brightpath.example", name="demo")])]
    identity = Recording()
    run(visitor_stage(identity=identity), Table(), record(*payloads))
    events = [e for p in payloads for e in parse_payload(p)[0]]
    expected = identifiers_to_load(events, make_settings().email_salt(make_settings().sites[0]))
    assert len(identity.loads) == 1 and sorted(identity.loads[0]) == sorted(expected)
    kinds = {k.value for k, _ in expected}
    assert kinds == {"visitor", "user_id", "email", "email_click"}


def test_the_stage_runs_the_core_visitor_chain() -> None:
    """One chain (sessions -> network -> company -> bots -> visit): the stage's visit updates and stored
    state are what ``pipeline.core.visitor.process_visitor`` makes of the same events and enrichment."""
    from pipeline.core.events import parse_payload
    from pipeline.core.model import NetworkInfo, PersonResolution
    from pipeline.core.sessions import VisitorState
    from pipeline.core.visitor import process_visitor
    from pipeline.enrich.useragent import analyze_user_agent
    from pipeline.stages.messages import visit_from_record

    from .stage_fakes import FakeReference

    stage, table = visitor_stage(), Table()
    run(stage, table, record(payload("v1", [event("https://www.acme.example/", T0)])), offset=1)  # anonymous
    stored = json.loads(json.dumps(table.data["acme|v1"]["s"]))
    p = payload("v1", [event("https://www.acme.example/pricing", T0 + 30_000),
                       event("https://www.acme.example/demo", T0 + 60_000)], ip=COMPANY_IP)
    result = run(stage, table, record(p), offset=2)
    lookup = asyncio.run(FakeReference().resolve_networks([]))
    out = process_visitor(VisitorState.from_dict(stored["vs"]), parse_payload(p, stage.time_cfg)[0],
                          stage.session_cfg["acme"], person=PersonResolution(None, 0.0),
                          network=NetworkInfo(ip=COMPANY_IP), reference=lookup, user_agent=analyze_user_agent,
                          bot_config=stage.bot_config, offset=2, account=stored["acct"], history=stored["h"],
                          history_bytes=stage.history_bytes)
    assert out is not None and [b for _, b in out.updates] == [True, False]   # the move backfills the new account
    assert [(visit_from_record(u), u["backfill"]) for u in visit_updates(result)] == out.updates
    assert table.data["acme|v1"]["s"] == {"vs": out.state.to_dict(), "acct": out.account, "h": out.history,
                                          "accts": ["v:v1", out.account]}   # the accounts an erasure must reach
    assert stored["acct"] == "v:v1" and out.account == "c:brightpath-analytics.example"


def test_a_group_read_ahead_changes_nothing_but_the_number_of_identity_loads() -> None:
    """VisitorStage.prefetch (decode once, one identity load per group and site) gives the outputs and
    states of record-at-a-time, a corrupt record of the group included."""
    import asyncio

    from pipeline.enrich.identity_store import GroupPrefetch
    from pipeline.stages.runtime import RecordRunner

    class Counting(FakeIdentity):
        loads = 0

        async def load_snapshot(self, site_id: str, identifiers: Any) -> Any:
            self.loads += 1
            return await super().load_snapshot(site_id, identifiers)

    records = [(0, 0, record(payload("v1", [event(t=T0)]), payload("v2", [event(t=T0 + 1)]))),
               (0, 1, b"\x00not avro"),
               (0, 2, record(payload("v1", [event(t=T0 + 60_000)]), payload(None, [event(t=T0 + 2)]))),
               (0, 3, record(payload("v3", [event(t=T0 + 3, event_type="identify", identify_user_id="u-3")])))]

    def run(group: int, prefetching: bool) -> tuple[list[Any], dict[str, Any], int]:
        identity = Counting()
        stage = visitor_stage(identity=GroupPrefetch(identity) if prefetching else identity)
        table: dict[str, Any] = {}
        sent: list[Any] = []

        async def send(outputs: Any) -> None:
            sent.extend(outputs)

        r = RecordRunner(table, stage, send, None, name="v", on_error=stage.failed, max_group=group)
        if group == 1:
            for rec_ in records:
                asyncio.run(r.handle_group([rec_]))
        else:
            asyncio.run(r.handle_group(records))
        decoded = [(o.topic, o.partition, o.key, CODEC.decode(o.value)) for o in sent]
        for _, _, _, value in decoded:   # bad rows carry the time they were written (tstamp)
            value.pop("tstamp", None)
        return decoded, table, identity.loads

    one_by_one, table_1, loads_1 = run(1, False)
    grouped, table_g, loads_g = run(10, True)
    assert grouped == one_by_one and table_g == table_1
    assert any(o[0] == "bad-events" for o in grouped)
    assert loads_1 == 3 and loads_g == 2   # v3's user id is not in the read-ahead: loaded with its record
