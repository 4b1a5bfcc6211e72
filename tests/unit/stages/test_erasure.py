"""Erasure records through the stage handlers (Kafka-free): the visitor stage deletes the visitor and forwards
the erasure to the accounts it fed; the account stage takes the visitor and the person out and re-scores, or
deletes the account and tombstones its score. The rule underneath: erasing a visitor leaves an account as if
it had never visited."""

from __future__ import annotations

import asyncio
import random
import json
from typing import Any

from pipeline.core.erasure import erase_from_account, is_empty, person_token, visitor_accounts
from pipeline.core.intent import AccountState, apply_visits, score_intent
from pipeline.stages.messages import visit_from_record
from pipeline.topology import partition_for

from .stage_fakes import (CODEC, COMPANY_IP, T0, VISITS_PARTITIONS, Table, account_stage, bad_rows, event,
                          make_settings, outputs, payload, record, visit_updates, visitor_stage)

BRIGHTPATH = "c:brightpath-analytics.example"
SALT = "unit-salt"


def erasure(visitor_id: str, person_id: str | None = None, *, site_id: str = "acme",
            accounts: list[str] | None = None) -> dict[str, Any]:
    return {"erasure_id": f"e-{visitor_id}", "site_id": site_id, "visitor_id": visitor_id,
            "person_token": person_token(SALT, person_id) if person_id else None, "accounts": accounts or [],
            "requested_at": T0 + 10 * 86_400_000}


def erasure_record(*erasures: dict[str, Any], payloads: list[Any] | None = None) -> bytes:
    return CODEC.encode("CollectorBatch", {"erasures": list(erasures), "payloads": payloads or []})


def run(stage: Any, table: Table, value: bytes, offset: int, partition: int = 0) -> Any:
    result = asyncio.run(stage(partition, offset, value, table.view))
    table.apply(offset, result)
    return result


def ada_and_bob() -> tuple[list[dict[str, Any]], Table, list[dict[str, Any]]]:
    """Ada (identified, person found) and Bob browse from Brightpath's network; Ada also from home first."""
    stage, table = visitor_stage(), Table()
    home = run(stage, table, record(payload("ada", [event(t=T0), event("https://www.acme.example/demo", t=T0 + 60_000)])),
               0)
    work = run(stage, table, record(
        payload("ada", [event("https://www.acme.example/pricing", t=T0 + 3_600_000),
                        event(None, t=T0 + 3_610_000, event_type="identify", email="ada@brightpath-analytics.example"),
                        event("https://www.acme.example/contact", t=T0 + 3_700_000)], ip=COMPANY_IP),
        payload("bob", [event("https://www.acme.example/pricing", t=T0 + 7_200_000),
                        event("https://www.acme.example/docs", t=T0 + 7_300_000)], ip=COMPANY_IP)), 1)
    return visit_updates(home) + visit_updates(work), table, visit_updates(work)


def fold(updates: list[dict[str, Any]], account: str) -> AccountState:
    rules = make_settings().load_scoring_model()
    from pipeline.core.scoring_model import effective_rules
    model = effective_rules(rules, None).intent
    state = AccountState.new("acme", account)
    for i, u in enumerate(u for u in updates if u["account"] == account):
        state, _ = apply_visits(state, [visit_from_record(u)], model, offset=i)
    return state


def test_erasing_a_visitor_leaves_the_account_as_if_they_never_visited() -> None:
    updates, _, _ = ada_and_bob()
    person = next(u["person_id"] for u in updates if u["person_id"])
    both = fold(updates, BRIGHTPATH)
    only_bob = fold([u for u in updates if u["visitor_id"] == "bob"], BRIGHTPATH)
    assert set(both.visitors) == {"ada", "bob"} and person in both.persons
    erased = erase_from_account(both, "ada", {person})
    for field in ("days", "sessions", "visitors", "by_visitor", "persons", "conversions", "last_ts", "seen"):
        assert getattr(erased, field) == getattr(only_bob, field), field
    from pipeline.core.scoring_model import effective_rules
    model = effective_rules(make_settings().load_scoring_model(), None).intent
    assert score_intent(erased, model) == score_intent(only_bob, model)
    assert person not in json.dumps(erased.to_dict()) and '"ada"' not in json.dumps(erased.to_dict())
    assert not is_empty(erased)
    assert is_empty(erase_from_account(fold(updates, "v:ada"), "ada", {person}))


def test_the_visitor_stage_deletes_the_visitor_and_forwards_to_every_account_it_fed() -> None:
    updates, table, _ = ada_and_bob()
    assert {u["account"] for u in updates if u["visitor_id"] == "ada"} == {"v:ada", BRIGHTPATH}
    assert table.data["acme|ada"]["s"]["accts"] == ["v:ada", BRIGHTPATH]
    person = next(u["person_id"] for u in updates if u["person_id"])
    result = run(visitor_stage(), table, erasure_record(erasure("ada", person)), 2)
    assert "acme|ada" not in table.data and "acme|bob" in table.data
    assert bad_rows(result) == []
    forwarded: dict[int, list[dict[str, Any]]] = {}
    for o in result.outputs:
        batch = CODEC.decode(o.value, "VisitBatch")
        assert o.topic == "visits" and batch["updates"] == []
        forwarded.setdefault(o.partition, []).extend(batch["erasures"])
    accounts = {a: partition_for(f"acme|{a}", VISITS_PARTITIONS) for a in ("v:ada", BRIGHTPATH)}
    assert {p: sorted(a for e in es for a in e["accounts"]) for p, es in forwarded.items()} == {
        p: sorted(a for a, q in accounts.items() if q == p) for p in set(accounts.values())}
    assert all(e["person_token"] == person_token(SALT, person) and e["visitor_id"] == "ada"
               for es in forwarded.values() for e in es)
    # a visitor whose state is gone (evicted) still reaches the accounts the erasure names (forget's list)
    gone = run(visitor_stage(), Table(), erasure_record(erasure("ada", person, accounts=[BRIGHTPATH])), 3)
    assert sorted(a for o in gone.outputs for e in CODEC.decode(o.value, "VisitBatch")["erasures"]
                  for a in e["accounts"]) == sorted(["v:ada", BRIGHTPATH])
    # a visitor state without the account list (written before it existed) still reaches its current account
    assert visitor_accounts("x", {"acct": BRIGHTPATH}) == ["v:x", BRIGHTPATH]
    assert visitor_accounts("x", None) == ["v:x"]


def test_the_account_stage_rescores_or_deletes_and_tombstones() -> None:
    updates, vtable, _ = ada_and_bob()
    person = next(u["person_id"] for u in updates if u["person_id"])
    stage, table = account_stage(), Table()
    for offset, u in enumerate(updates):
        table.apply(offset, asyncio.run(stage(0, offset, CODEC.encode("VisitBatch", {"updates": [u]}), table.view)))
    assert person in json.dumps(table.data[f"acme|{BRIGHTPATH}"])
    forwarded = run(visitor_stage(), vtable, erasure_record(erasure("ada", person)), 2)
    outs = []
    for i, o in enumerate(forwarded.outputs):
        outs.extend(run(stage, table, o.value, 100 + i, partition=o.partition).outputs)
    assert "acme|v:ada" not in table.data
    left = json.dumps(table.data[f"acme|{BRIGHTPATH}"])
    assert person not in left and '"ada"' not in left and '"bob"' in left
    by_key = {o.key: o for o in outs}
    assert set(by_key) == {b"acme|v:ada", f"acme|{BRIGHTPATH}".encode()}
    assert by_key[b"acme|v:ada"].value is None                               # tombstone
    assert by_key[b"acme|v:ada"].partition == partition_for("acme|v:ada", 4)
    score = CODEC.decode(by_key[f"acme|{BRIGHTPATH}".encode()].value, "LeadScore")
    assert score["visitors"] == 1 and score["person_id"] is None and score["persons"] == []
    assert {s["visitor_id"] for s in score["sessions"]} == {"bob"} and not score["qualified"]
    assert person not in json.dumps(score) and "ada" not in json.dumps(score)
    assert not outputs(forwarded, "qualified-leads")
    # again (a replay): nothing more to remove, the same outcome
    again = run(visitor_stage(), Table(), erasure_record(erasure("ada", person)), 3)
    for i, o in enumerate(again.outputs):
        run(stage, table, o.value, 200 + i, partition=o.partition)
    assert json.loads(left)["s"]["a"]["vis"] == table.data[f"acme|{BRIGHTPATH}"]["s"]["a"]["vis"]


def test_an_account_without_state_gets_a_tombstone() -> None:
    stage, table = account_stage(), Table()
    key = f"acme|{BRIGHTPATH}"
    value = CODEC.encode("VisitBatch", {"updates": [], "erasures": [erasure("ada", accounts=[BRIGHTPATH])]})
    result = run(stage, table, value, 0, partition=partition_for(key, VISITS_PARTITIONS))
    assert [(o.topic, o.key, o.value) for o in result.outputs] == [("lead-scores", key.encode(), None)]


def test_bad_erasures_are_bad_rows_and_the_good_ones_apply() -> None:
    _, table, _ = ada_and_bob()
    stage = visitor_stage(pixel_partitions=1)
    result = run(stage, table, erasure_record(erasure("bob", site_id="nowhere"), erasure("ada")), 2)
    assert [r["failure_type"] for r in bad_rows(result)] == ["site_violation"]
    assert "acme|ada" not in table.data and "acme|bob" in table.data
    # on the wrong partition: the state is not there; a record that mixes payloads in: they are kept as a bad row
    wrong = visitor_stage(pixel_partitions=8)
    vid = next(v for v in ("b1", "b2", "b3", "b4") if partition_for(f"acme|{v}", 8) != 0)
    mixed = run(wrong, Table(), erasure_record(erasure(vid), payloads=[payload("zed", [event()])]), 3)
    rows = bad_rows(mixed)
    assert sorted(r["failure_type"] for r in rows) == ["schema_violation", "schema_violation"]
    replayable = next(r for r in rows if r["details"].get("payload_schema") == "CollectorBatch")
    assert json.loads(replayable["payload"])["payloads"][0]["visitor_id"] == "zed"
    assert visit_updates(mixed) == [] and not [o for o in mixed.outputs if o.topic == "visits"]
    acct = account_stage()
    key = f"acme|{BRIGHTPATH}"
    wrong_p = (partition_for(key, VISITS_PARTITIONS) + 1) % VISITS_PARTITIONS
    value = CODEC.encode("VisitBatch", {"updates": [], "erasures": [erasure("ada", accounts=[BRIGHTPATH])]})
    assert [r["failure_type"] for r in bad_rows(run(acct, Table(), value, 0, partition=wrong_p))] == [
        "schema_violation"]


def test_fuzzed_erasures_among_events_erase_exactly_their_visitors() -> None:
    """Erasure records mixed into the event stream, some with junk erasures: after every record the table
    holds exactly the visitors that sent events and were not erased since; junk is one bad row each."""
    rnd = random.Random(7)
    stage, table = visitor_stage(), Table()
    alive: set[str] = set()
    junk = [([], 0), ([erasure("ghost")], 0), ([erasure("x", site_id="nowhere")], 1),
            ([{**erasure("y"), "visitor_id": ""}], 1)]
    for offset in range(80):
        if alive and rnd.random() < 0.3:
            victims = rnd.sample(sorted(alive), k=min(len(alive), rnd.randint(1, 3)))
            extra, bad = rnd.choice(junk)
            result = run(stage, table, erasure_record(*[erasure(v) for v in victims], *extra), offset)
            alive -= set(victims)
            assert len(bad_rows(result)) == bad and visit_updates(result) == []
            forwarded = [e for o in result.outputs if o.topic == "visits"
                         for e in CODEC.decode(o.value, "VisitBatch")["erasures"]]
            assert {e["visitor_id"] for e in forwarded} >= set(victims)
        else:
            vids = [f"v{rnd.randint(0, 15)}" for _ in range(rnd.randint(1, 4))]
            run(stage, table, record(*[payload(v, [event(t=T0 + offset * 60_000)]) for v in vids]), offset)
            alive |= set(vids)
        assert {k.split("|", 1)[1] for k in table.data} == alive


def test_an_account_state_that_cannot_be_read_costs_only_that_account() -> None:
    stage, table = account_stage(), Table()
    p = partition_for(f"acme|{BRIGHTPATH}", VISITS_PARTITIONS)
    other = next(f"c:{n}.example" for n in range(100) if partition_for(f"acme|c:{n}.example", VISITS_PARTITIONS) == p)
    table.data[f"acme|{BRIGHTPATH}"] = {"o": -1, "s": {"a": {"v": 99}}}   # a state this version cannot read
    value = CODEC.encode("VisitBatch", {"updates": [], "erasures": [erasure("ada", accounts=[BRIGHTPATH, other])]})
    result = run(stage, table, value, 0, partition=p)
    assert [(r["failure_type"], r["details"].get("account")) for r in bad_rows(result)] == [
        ("processing_failure", f"acme|{BRIGHTPATH}")]
    assert [(o.key, o.value) for o in result.outputs if o.topic == "lead-scores"] == [(f"acme|{other}".encode(), None)]
    assert table.data[f"acme|{BRIGHTPATH}"]["s"] == {"a": {"v": 99}}
