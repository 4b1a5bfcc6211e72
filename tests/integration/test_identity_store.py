"""IdentityStore on a real Redis: pipelined loads, ops == core.apply_ops, idempotent replay,
merge rules end to end, blocked values, erasure, and the people / identities imports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from pipeline.core.events import TrackedEvent
from pipeline.core.identity import (
    CreatePerson,
    ForgetPerson,
    IdentityOp,
    IdentitySnapshot,
    IdType,
    Link,
    LogEntry,
    Merge,
    SetProfile,
    apply_identity_events,
    apply_ops,
    hash_email,
)
from pipeline.enrich.identity_store import MERGE_LOG_KINDS, IdentityKeys, IdentityStore, SyncIdentityStore
from pipeline.local.redis import RedisServer
from pipeline.ops.identity_import import IMPORT_KINDS, IdentityRow, PersonRow, import_identity_file

SITE = "site-1"
SALT = "s3cret-salt"


@pytest.fixture
async def store(redis_client: redis.Redis, redis_server: RedisServer) -> AsyncIterator[IdentityStore]:
    s = IdentityStore(redis.asyncio.Redis.from_url(redis_server.url))
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture
def sync_store(redis_client: redis.Redis) -> Iterator[SyncIdentityStore]:
    yield SyncIdentityStore(redis_client)


def ev(visitor: str | None, t: int, event_type: str = "identify", **kw: Any) -> TrackedEvent:
    return TrackedEvent(site_id=SITE, visitor_id=visitor, event_id=f"e{t}", event_type=event_type, tstamp=t,
                        collector_tstamp=t, fingerprint=f"f{t}", **kw)


def norm(snap: IdentitySnapshot) -> dict[str, Any]:
    """A comparable form (identifier order within a type is not part of the graph)."""
    return {
        "links": {f"{t.value}:{v}": (l.person_id, l.source) for (t, v), l in snap.links.items()},
        "persons": {pid: ({t.value: sorted(vs) for t, vs in p.identifiers.items() if vs}, p.merges, p.created,
                          dict(p.profile), sorted(p.verified_fields)) for pid, p in snap.persons.items()},
    }


async def check_apply(store: IdentityStore, ops: Sequence[IdentityOp], **kw: Any) -> IdentitySnapshot:
    """Apply ops and assert the Redis graph equals core.apply_ops on the full graph before."""
    before = await store.dump_site(SITE)
    await store.apply(SITE, ops, **kw)
    after = await store.dump_site(SITE)
    assert norm(after) == norm(apply_ops(before, ops))
    return after


class Counter:
    """Counts pipelines executed and single commands sent through an async client."""

    def __init__(self, client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pipelines = 0
        self.commands = 0
        self.sizes: list[int] = []
        real_pipeline: Any = client.pipeline
        real_execute_command: Any = client.execute_command
        counter = self

        def pipeline(*a: Any, **k: Any) -> Any:
            pipe = real_pipeline(*a, **k)
            real = pipe.execute

            async def execute(*ea: Any, **ek: Any) -> Any:
                counter.pipelines += 1
                counter.sizes.append(len(pipe.command_stack))
                return await real(*ea, **ek)

            pipe.execute = execute
            return pipe

        async def execute_command(*a: Any, **k: Any) -> Any:
            counter.commands += 1
            return await real_execute_command(*a, **k)

        monkeypatch.setattr(client, "pipeline", pipeline)
        monkeypatch.setattr(client, "execute_command", execute_command)

    @property
    def round_trips(self) -> int:
        return self.pipelines + self.commands


def raw_keys(client: redis.Redis) -> list[bytes]:
    keys: list[bytes] = list(client.keys("*"))  # type: ignore[arg-type]
    return keys


def commandstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


# ---- round trips -------------------------------------------------------------------------------

async def test_load_snapshot_is_two_pipelined_round_trips(store: IdentityStore, redis_client: redis.Redis,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):
        await store.process_events(SITE, [ev(f"v{i}", 1000 + i, identify_user_id=f"u{i}",
                                             email=f"p{i}@acme.example")], SALT)
    counter = Counter(store.client, monkeypatch)
    stats = commandstats(redis_client)
    wanted = [(IdType.visitor, f"v{i}") for i in range(30)] + [(IdType.user_id, f"u{i}") for i in range(30)]
    wanted += [(IdType.visitor, f"unknown{i}") for i in range(20)] + [(IdType.email_click, "c-1")]
    snap = await store.load_snapshot(SITE, wanted)
    assert counter.round_trips == 2
    assert counter.sizes == [82, 60]        # 81 identifiers + the email hash a click id may be; 30 persons x 2
    delta = {k: v - stats.get(k, 0) for k, v in commandstats(redis_client).items()}
    assert delta["hmget"] == 82 and delta["hgetall"] == 30 and delta["smembers"] == 30
    assert len(snap.persons) == 30 and len(snap.links) == 60
    # nothing known: one round trip; nothing asked: none
    counter.pipelines = 0
    await store.load_snapshot(SITE, [(IdType.visitor, "nobody")])
    await store.load_snapshot(SITE, [])
    assert counter.round_trips == 1


async def test_apply_is_one_multi_exec(store: IdentityStore, redis_client: redis.Redis,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ops: list[IdentityOp] = [CreatePerson("p1", 5), Link(IdType.user_id, "u1", "p1", "identify"),
                             Link(IdType.visitor, "v1", "p1", "identify"), SetProfile("p1", {"title": "CTO"}),
                             LogEntry("blocked", 5, "blocked visitor value 'null'", ((IdType.visitor, "null"),))]
    counter = Counter(store.client, monkeypatch)
    stats = commandstats(redis_client)
    await store.apply(SITE, ops)
    delta = {k: v - stats.get(k, 0) for k, v in commandstats(redis_client).items()}
    assert counter.round_trips == 1 and store.round_trips == 1
    assert delta["multi"] == 1 and delta["exec"] == 1
    await store.apply(SITE, [])
    assert counter.round_trips == 1


async def test_resolve_visitors_pipelined(store: IdentityStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.process_events(SITE, [ev("v1", 10, identify_user_id="u1", email="ada@brightpath.example",
                                         properties_json=json.dumps({"name": "Ada", "title": "VP Eng"}))], SALT)
    counter = Counter(store.client, monkeypatch)
    res = await store.resolve_visitors(SITE, ["v1", "v2", "v1"])
    assert counter.round_trips == 2
    assert res["v2"].person is None and res["v2"].confidence == 0.0
    person = res["v1"].person
    assert person is not None and res["v1"].confidence == 0.5  # a browser identify is a claim
    assert person.user_id == "u1" and person.name == "Ada" and person.title == "VP Eng"
    assert person.email is None and person.email_hash == hash_email("ada@brightpath.example", SALT)
    assert person.company_domain == "brightpath.example"


# ---- ops round-trip: Redis == core.apply_ops ------------------------------------------------------

async def test_every_op_type_matches_core(store: IdentityStore) -> None:
    h1, h2 = hash_email("a@x.example", SALT), hash_email("b@x.example", SALT)
    await check_apply(store, [CreatePerson("p1", 100), Link(IdType.email, h1, "p1", "identify"),
                              Link(IdType.visitor, "v1", "p1", "identify"), SetProfile("p1", {"title": "CTO"})])
    await check_apply(store, [CreatePerson("p2", 50), Link(IdType.visitor, "v2", "p2", "form"),
                              Link(IdType.email_click, "c2", "p2", "email_click"),
                              SetProfile("p2", {"title": "ignored", "department": "it"})])
    await check_apply(store, [SetProfile("p1", {"seniority": "c_level", "title": "CEO"})])
    moved = ((IdType.email_click, "c2"), (IdType.visitor, "v2"))
    after = await check_apply(store, [Merge("p2", "p1", moved, 1, 200),
                                      LogEntry("merge", 200, "merged p2 into p1", moved, ("p2", "p1")),
                                      Link(IdType.email, h2, "p1", "identify")])
    p1 = after.persons["p1"]
    assert "p2" not in after.persons and p1.merges == 1
    assert dict(p1.profile) == {"title": "CEO", "seniority": "c_level", "department": "it"}   # into wins
    assert after.links[(IdType.visitor, "v2")].source == "form"                                # source kept
    forget_ids = tuple((t, v) for t in IdType for v in p1.identifiers.get(t, ()))
    after = await check_apply(store, [ForgetPerson("p1", forget_ids), LogEntry("forget", 300, "erased", (), ("p1",))])
    assert not after.links and not after.persons
    log = await store.merge_log(SITE, 10)
    assert [e["kind"] for e in log] == ["forget", "merge"]
    assert log[1]["ids"] == ["email_click:c2", "visitor:v2"] and log[1]["persons"] == ["p2", "p1"]


async def test_browser_traits_never_overwrite_verified_fields_in_redis(store: IdentityStore) -> None:
    """Issue 13: a claimed (unverified) profile write leaves every imported field alone, also across a merge."""
    await check_apply(store, [CreatePerson("p1", 1), Link(IdType.crm_id, "c1", "p1", "import"),
                              SetProfile("p1", {"company_domain": "acme.com", "seniority": "director"})])
    after = await check_apply(store, [SetProfile("p1", {"company_domain": "evil.example", "seniority": "c_level",
                                                        "department": "sales"}, verified=False)])
    p1 = after.persons["p1"]
    assert dict(p1.profile) == {"company_domain": "acme.com", "seniority": "director", "department": "sales"}
    assert p1.verified_fields == {"company_domain", "seniority"}
    # an unverified person absorbs the imported one: the imported values win over its claims
    await check_apply(store, [CreatePerson("p0", 0), Link(IdType.user_id, "u0", "p0", "identify"),
                              SetProfile("p0", {"company_domain": "claimed.example", "title": "x"}, verified=False)])
    moved = ((IdType.crm_id, "c1"),)
    after = await check_apply(store, [Merge("p1", "p0", moved, 1, 5)])
    p0 = after.persons["p0"]
    assert p0.profile["company_domain"] == "acme.com" and p0.profile["title"] == "x"
    assert p0.verified_fields == {"company_domain", "seniority"}


async def test_claimed_and_signed_identities_through_the_store(store: IdentityStore) -> None:
    """A browser identify resolves with the claim confidence, a signed one with the verified confidence."""
    from pipeline.core.events import VERIFIED_BY_SIGNATURE, VERIFIED_HEADER
    await store.process_events(SITE, [ev("v1", 10, email="jane@x.example")], SALT)
    await store.process_events(SITE, [ev("v2", 11, email="joe@x.example",
                                         headers={VERIFIED_HEADER: VERIFIED_BY_SIGNATURE}, verified=True)], SALT)
    res = await store.resolve_visitors(SITE, ["v1", "v2"])
    assert (res["v1"].source, res["v1"].confidence) == ("identify", 0.5)
    assert (res["v2"].source, res["v2"].confidence) == ("server", 1.0)


async def test_key_layout(store: IdentityStore, redis_client: redis.Redis) -> None:
    h = hash_email("a@x.example", SALT)
    await store.apply(SITE, [CreatePerson("p1", 7), Link(IdType.email, h, "p1", "import"),
                             SetProfile("p1", {"email": "a@x.example"}), LogEntry("merge", 7, "d")],
                      allow_plain_email=True)
    keys = {k.decode() for k in raw_keys(redis_client)}
    guard = [k for k in keys if k.startswith(f"ls:{{{SITE}}}:identity-log:applied:")]
    assert keys - set(guard) == {f"ls:{{{SITE}}}:id:email:{h}", f"ls:{{{SITE}}}:identity-log",
                                 f"ls:{{{SITE}}}:person:p1", f"ls:{{{SITE}}}:person:p1:ids"}
    assert len(guard) == 1 and 0 < redis_client.ttl(guard[0]) <= 7 * 24 * 3600
    assert redis_client.hgetall(f"ls:{{{SITE}}}:person:p1") == {b"created": b"7", b"merges": b"0",
                                                                  b"f:email": b"a@x.example",
                                                                  b"v:email": b"1"}  # set by a verified source
    assert redis_client.hgetall(IdentityKeys(SITE).link((IdType.email, h))) == {b"p": b"p1", b"s": b"import"}
    with pytest.raises(ValueError):
        store.keys("bad}site")


# ---- idempotent replay ---------------------------------------------------------------------------

async def test_replaying_ops_is_idempotent(store: IdentityStore, redis_client: redis.Redis) -> None:
    # an old unidentified person (p-old, visitor v9), then batches that create, link, merge and refuse
    seed: list[IdentityOp] = [CreatePerson("p-old", 1), Link(IdType.visitor, "v9", "p-old", "identify"),
                              SetProfile("p-old", {"department": "sales"})]
    await store.apply(SITE, seed)
    batches = [[ev("v1", 10, identify_user_id="u1", email="ada@acme.example")],
               [ev("v9", 20, email="ada@acme.example", event_type="form_submit",
                   properties_json=json.dumps({"title": "CTO"}))],
               [ev("v2", 30, identify_user_id="u2"), ev("v2", 31, email="ada@acme.example")],
               [ev("v3", 40, identify_user_id="null", email="undefined")]]
    results = [await store.process_events(SITE, b, SALT) for b in batches]
    kinds = [type(op).__name__ for r in results for op in r.ops]
    assert "Merge" in kinds and "CreatePerson" in kinds and "SetProfile" in kinds and "LogEntry" in kinds
    graph, log_len = norm(await store.dump_site(SITE)), redis_client.xlen(IdentityKeys(SITE).log)
    for r in results:                      # each batch replayed right after itself...
        await store.apply(SITE, r.ops)
    for r in results:                      # ...and the whole suffix again, in order
        await store.apply(SITE, r.ops)
    assert norm(await store.dump_site(SITE)) == graph
    assert redis_client.xlen(IdentityKeys(SITE).log) == log_len     # log entries appended once


# ---- merge rules end to end ---------------------------------------------------------------------

async def test_two_visitors_same_email_become_one_person(store: IdentityStore) -> None:
    r1 = await store.process_events(SITE, [ev("v1", 10, email="Ada@Acme.example ")], SALT)
    r2 = await store.process_events(SITE, [ev("v2", 20, event_type="form_submit", email="ada@acme.example")], SALT)
    assert r1.person_id is not None and r2.person_id == r1.person_id and r2.linked_visitors == ("v2",)
    res = await store.resolve_visitors(SITE, ["v1", "v2"])
    assert res["v1"].person == res["v2"].person and res["v2"].confidence == 0.5  # a form is a browser claim


async def test_unidentified_person_is_merged_and_logged(store: IdentityStore) -> None:
    await store.apply(SITE, [CreatePerson("anon", 1), Link(IdType.visitor, "v9", "anon", "identify"),
                             Link(IdType.visitor, "v8", "anon", "identify")])
    r1 = await store.process_events(SITE, [ev("v1", 10, identify_user_id="u1")], SALT)
    r2 = await store.process_events(SITE, [ev("v9", 20, identify_user_id="u1")], SALT)
    assert r2.person_id == r1.person_id and set(r2.linked_visitors) == {"v9", "v8"}
    graph = await store.dump_site(SITE)
    assert "anon" not in graph.persons and graph.persons[r1.person_id or ""].merges == 1
    entry = (await store.merge_log(SITE, 5, kinds={"merge"}))[0]
    assert entry["persons"] == ["anon", r1.person_id] and set(entry["ids"]) == {"visitor:v8", "visitor:v9"}


async def test_two_identified_persons_are_never_merged(store: IdentityStore) -> None:
    r1 = await store.process_events(SITE, [ev("v1", 10, identify_user_id="u1", email="a@acme.example")], SALT)
    r2 = await store.process_events(SITE, [ev("v2", 20, identify_user_id="u2")], SALT)
    r3 = await store.process_events(SITE, [ev("v2", 30, email="a@acme.example")], SALT)
    assert r1.person_id != r2.person_id and r3.person_id == r2.person_id
    graph = await store.dump_site(SITE)
    assert set(graph.persons) == {r1.person_id, r2.person_id}
    assert graph.links[(IdType.visitor, "v2")].person_id == r2.person_id
    refused = await store.merge_log(SITE, 10, kinds=MERGE_LOG_KINDS)
    assert [e["kind"] for e in refused] == ["double_identified"]
    assert set(refused[0]["persons"]) == {r1.person_id, r2.person_id} and refused[0]["ids"] == ["visitor:v2"]


async def test_merge_cap_of_100(store: IdentityStore) -> None:
    target = await store.process_events(SITE, [ev("v0", 1, identify_user_id="boss")], SALT)
    seed: list[IdentityOp] = []
    for i in range(1, 102):
        seed += [CreatePerson(f"anon{i}", 2), Link(IdType.visitor, f"v{i}", f"anon{i}", "identify")]
    await store.apply(SITE, seed)
    for i in range(1, 102):
        r = await store.process_events(SITE, [ev(f"v{i}", 10 + i, identify_user_id="boss")], SALT)
        assert r.person_id == (target.person_id if i <= 100 else f"anon{i}")
    graph = await store.dump_site(SITE)
    boss = graph.persons[target.person_id or ""]
    assert boss.merges == 100 and len(boss.identifiers[IdType.visitor]) == 101
    assert "anon101" in graph.persons and graph.links[(IdType.visitor, "v101")].person_id == "anon101"
    log = await store.merge_log(SITE, 200, kinds=MERGE_LOG_KINDS)
    assert [e["kind"] for e in log].count("merge") == 100 and log[0]["kind"] == "merge_cap"


async def test_concurrent_writers_do_not_split_an_email(store: IdentityStore) -> None:
    """Two partitions identify the same new email at once: the first link wins, the loser
    keeps an unidentified person that the next identify merges (self-healing)."""
    from pipeline.core.identity import apply_identity_events
    from pipeline.core.identity import identifiers_to_load as event_identifiers

    a, b = [ev("va", 10, email="x@acme.example")], [ev("vb", 11, email="x@acme.example")]
    snap_a = await store.load_snapshot(SITE, event_identifiers(a, SALT))
    snap_b = await store.load_snapshot(SITE, event_identifiers(b, SALT))
    ra, rb = apply_identity_events(snap_a, a, SALT), apply_identity_events(snap_b, b, SALT)
    await store.apply(SITE, ra.ops)
    await store.apply(SITE, rb.ops)
    graph = await store.dump_site(SITE)
    h = hash_email("x@acme.example", SALT)
    assert graph.links[(IdType.email, h)].person_id == ra.person_id
    assert graph.persons[rb.person_id or ""].identifiers == {IdType.visitor: ("vb",)}
    healed = await store.process_events(SITE, [ev("vb", 20, email="x@acme.example")], SALT)
    assert healed.person_id == ra.person_id
    assert rb.person_id not in (await store.dump_site(SITE)).persons


# ---- blocked values ------------------------------------------------------------------------------

async def test_blocked_values_are_never_stored(store: IdentityStore, redis_client: redis.Redis) -> None:
    r = await store.process_events(SITE, [ev("anonymous", 10, identify_user_id="undefined", email="null"),
                                          ev("v1", 11, identify_user_id="0", email="ok@acme.example"),
                                          ev("v2", 12, identify_user_id="--", email="not-an-email")], SALT)
    graph = await store.dump_site(SITE)
    values = {v for (_, v) in graph.links}
    # v2: core links the visitor id alone when the event's only other identifier is blocked
    assert values == {"v1", "v2", hash_email("ok@acme.example", SALT)}
    everything = b" ".join(raw_keys(redis_client))
    for junk in (b"undefined", b"anonymous", b"user_id:0", b"not-an-email", b"ok@acme"):
        assert junk not in everything
    kinds = [e["kind"] for e in await store.merge_log(SITE, 20)]
    assert kinds.count("blocked") >= 3 and "invalid_email" in kinds and r.person_id is None
    with pytest.raises(ValueError, match="blocked"):
        await store.apply(SITE, [CreatePerson("p", 1), Link(IdType.visitor, "null", "p", "identify")])
    with pytest.raises(ValueError, match="sha256"):
        await store.apply(SITE, [CreatePerson("p", 1), Link(IdType.email, "a@b.example", "p", "identify")])
    with pytest.raises(ValueError, match="plain email"):
        await store.apply(SITE, [CreatePerson("p", 1), SetProfile("p", {"email": "a@b.example"})])
    assert "p" not in (await store.dump_site(SITE)).persons      # refused before anything was sent


# ---- erasure -------------------------------------------------------------------------------------

async def test_forget_removes_everything_for_a_person(store: IdentityStore, sync_store: SyncIdentityStore,
                                                      redis_client: redis.Redis) -> None:
    await store.apply(SITE, [CreatePerson("anon", 1), Link(IdType.visitor, "v9", "anon", "identify")])
    await store.process_events(SITE, [ev("v1", 10, identify_user_id="u1", email="ada@acme.example",
                                         properties_json=json.dumps({"name": "Ada"}))], SALT)
    await store.process_events(SITE, [ev("v9", 20, identify_user_id="u1")], SALT)            # merge
    await store.process_events(SITE, [ev("v2", 30, email="ada@acme.example")], SALT)
    await store.process_events(SITE, [ev("v2", 31, identify_user_id="u1", email_click_id="c1")], SALT)
    other = await store.process_events(SITE, [ev("w1", 40, identify_user_id="u2")], SALT)
    await store.process_events(SITE, [ev("w1", 41, identify_user_id="u1")], SALT)             # refused: logs u1's person
    with pytest.raises(ValueError, match="salt"):
        await store.forget(SITE, "ada@acme.example")
    result = await store.forget(SITE, " ADA@acme.example", salt=SALT)
    assert result.person_id is not None and set(result.visitor_ids) == {"v1", "v2", "v9"}
    assert result.links_removed == 6 and result.log_entries_removed >= 2
    graph = await store.dump_site(SITE)
    assert set(graph.persons) == {other.person_id}
    assert {f"{t.value}:{v}" for t, v in graph.links} == {"user_id:u2", "visitor:w1"}
    entries: Any = redis_client.xrange(IdentityKeys(SITE).log)
    raw = b" ".join([*raw_keys(redis_client), *(v for _, f in entries for v in f.values())])
    for gone in (result.person_id.encode(), b"u1", b"v9", b"ada", hash_email("ada@acme.example", SALT).encode()):
        assert gone not in raw   # the forget entry itself names no one
    assert [e["kind"] for e in await store.merge_log(SITE, 50)].count("forget") == 1
    again = sync_store.forget(SITE, "ada@acme.example", salt=SALT)
    assert again.person_id is None
    by_type = sync_store.forget(SITE, "user_id:u2")
    by_id = sync_store.forget(SITE, other.person_id or "")
    assert by_type.person_id == other.person_id and by_type.visitor_ids == ("w1",) and by_id.person_id is None
    assert not sync_store.dump_site(SITE).persons


# ---- imports -------------------------------------------------------------------------------------

def test_import_kinds_registry_shape() -> None:
    assert IMPORT_KINDS["people"].row_model is PersonRow and IMPORT_KINDS["identities"].row_model is IdentityRow
    assert callable(IMPORT_KINDS["people"].import_rows)


def test_import_people_and_identities(tmp_path: Path, sync_store: SyncIdentityStore,
                                      redis_client: redis.Redis) -> None:
    people = tmp_path / "people.csv"
    people.write_text(
        "Email,user_id,crm_id,name,title,seniority,department,company_domain,visitor_ids,email_click_ids\n"
        "ada@brightpath.example,bp-1,,Ada Fictional,VP Engineering,VP,Engineering,,v-1;v-2,c-1\n"   # 2
        "not-an-email,,,Bad,,,,,,\n"                                                                # 3
        ",,,Nobody,,,,,,\n"                                                                         # 4
        "ben@gmail.com,,crm-7,Ben,Analyst,entry,,,undefined,\n"                                     # 5
        "dan@ironvale.example,,,Dan,CIO,C-Level,IT,https://www.IronVale.example/x,v-4,\n"           # 6
        "dan@ironvale.example,bp-1,,Mallory,Intruder,,,,v-3,\n")                                   # 7 double
    report = import_identity_file("people", people, sync_store, site_id=SITE, salt=SALT)
    lines = {line: reason for line, reason in report.errors}
    assert set(lines) == {3, 4, 5, 7}
    assert "not an email address" in lines[3] and "email, user_id or crm_id" in lines[4]
    assert "blocked" in lines[5] and lines[7].startswith("partly imported: double_identified")
    assert "profile not applied" in lines[7]
    assert report.imported == 3 and report.skipped == 3
    graph = sync_store.dump_site(SITE)
    first = norm(graph)
    res = sync_store.resolve_visitors(SITE, ["v-1", "v-2", "v-4"])
    ada, dan = res["v-1"].person, res["v-4"].person
    assert ada is not None and dan is not None and res["v-2"].person == ada and res["v-1"].confidence == 1.0
    assert ada.email == "ada@brightpath.example" and ada.user_id == "bp-1" and ada.seniority == "vp"
    assert ada.name == "Ada Fictional" and dan.name == "Dan" and dan.title == "CIO"   # row 7 changed no one
    assert ada.company_domain == "brightpath.example" and ada.department == "engineering"
    assert dan.seniority == "c_level" and dan.company_domain == "ironvale.example"
    assert graph.links[(IdType.email_click, "c-1")].person_id == ada.person_id
    assert graph.links[(IdType.email, hash_email("ada@brightpath.example", SALT))].source == "import"
    assert not any(b"ada@" in k for k in raw_keys(redis_client))    # plain email only inside the profile
    # the whole file again: same graph, same report
    again = import_identity_file("people", people, sync_store, site_id=SITE, salt=SALT)
    assert norm(sync_store.dump_site(SITE)) == first and again.errors == report.errors

    links = tmp_path / "identities.jsonl"
    links.write_text("\n".join([
        json.dumps({"id_type": "visitor_id", "id_value": "v-9", "user_id": "bp-1"}),                 # 1
        json.dumps({"id_type": "email", "id_value": "ada.alt@brightpath.example", "crm_id": ""}),     # 2 no target
        json.dumps({"id_type": "email_click", "id_value": "c-2", "email": "new@polder.example"}),     # 3 creates
        json.dumps({"id_type": "fax", "id_value": "1", "email": "new@polder.example"}),              # 4
        json.dumps({"id_type": "visitor", "id_value": "null", "email": "new@polder.example"}),       # 5
        "{not json",                                                                                  # 6
        json.dumps({"id_type": "email", "id_value": "ada.alt@brightpath.example", "user_id": "bp-1"}),  # 7
        json.dumps({"id_type": "user_id", "id_value": "x", "user_id": "bp-1"}),                      # 8
    ]) + "\n")
    report = import_identity_file("identities", links, sync_store, site_id=SITE, salt=SALT)
    assert sorted(line for line, _ in report.errors) == [2, 4, 5, 6, 8] and report.imported == 3
    graph = sync_store.dump_site(SITE)
    assert graph.links[(IdType.visitor, "v-9")].person_id == ada.person_id
    assert graph.links[(IdType.email, hash_email("ada.alt@brightpath.example", SALT))].person_id == ada.person_id
    new = graph.links[(IdType.email_click, "c-2")].person_id
    assert graph.persons[new].profile["email"] == "new@polder.example"
    second = norm(graph)
    import_identity_file("identities", links, sync_store, site_id=SITE, salt=SALT)
    assert norm(sync_store.dump_site(SITE)) == second


def test_import_demo_people_in_chunks(sync_store: SyncIdentityStore) -> None:
    demo = Path(__file__).parents[2] / "pipeline" / "ops" / "demo_data" / "people.jsonl"
    report = import_identity_file("people", demo, sync_store, site_id=SITE, salt=SALT, chunk_rows=3)
    assert report.errors == [] and report.imported == sum(1 for line in demo.read_text().splitlines() if line)
    assert len(sync_store.dump_site(SITE).persons) == report.imported
    with pytest.raises(ValueError):
        import_identity_file("companies", demo, sync_store, site_id=SITE, salt=SALT)


def test_register_plugs_into_the_importer(tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`leadstream import people --site S` path: importer.import_file on a ReferenceStore
    connection (decoded responses), salt from the site's settings."""
    from pipeline.enrich.redis_store import ReferenceStore
    from pipeline.ops import importer
    from pipeline.ops.identity_import import register
    from pipeline.settings import Settings, SiteSettings

    monkeypatch.setattr(importer, "KINDS", dict(importer.KINDS))
    settings = Settings(sites=[SiteSettings(site_id=SITE, email_salt=SALT)])
    register(settings)
    assert {"people", "identities"} <= set(importer.KINDS)
    people = tmp_path / "people.jsonl"
    people.write_text(json.dumps({"email": "ada@brightpath.example", "visitor_ids": ["v-1"], "name": "Ada"}) + "\n"
                      + json.dumps({"email": "nope"}) + "\n"
                      + json.dumps({"email": "ben@gmail.com", "crm_id": "crm-7", "visitor_ids": ["undefined"]}) + "\n")  # refused
    ref = ReferenceStore.from_url(redis_server.url)
    try:
        no_site = importer.import_file("people", people, ref, progress=False)
        assert no_site.errors[-1][0] == 1 and "--site" in no_site.errors[-1][1]
        report = importer.import_file("people", people, ref, site=SITE, progress=False)
        assert [line for line, _ in report.errors] == [2, 3] and report.imported == 1
        assert "blocked" in report.errors[1][1]  # the rules' refusal, with its line number
        store = SyncIdentityStore(ref)
        person = store.resolve_visitors(SITE, ["v-1"])["v-1"].person
        assert person is not None and person.name == "Ada"
        assert person.email_hash == hash_email("ada@brightpath.example", SALT)
        assert store.dump_site(SITE) == SyncIdentityStore(redis_client).dump_site(SITE)   # str and bytes replies
    finally:
        ref.close()


# ---- the commit group's read-ahead (GroupPrefetch) -------------------------------------------------

async def test_group_prefetch_answers_as_redis_would_and_sees_earlier_writes_of_the_group(
        store: IdentityStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One load for the group's visitors; each record's load is what Redis would answer then, also after
    an earlier record of the same group wrote links (a write drops the prefetch)."""
    from pipeline.enrich.identity_store import GroupPrefetch

    await store.process_events(SITE, [ev("v1", 10, identify_user_id="u1", email="ada@brightpath.example")], SALT)
    group = GroupPrefetch(store)
    await group.prefetch({SITE: [(IdType.visitor, v) for v in ("v1", "v2", "v3")]})
    counter = Counter(store.client, monkeypatch)
    # record 1: v1 (linked) and v2 (not): served, restricted to what it asked, equal to a fresh load
    got = await group.load_snapshot(SITE, [(IdType.visitor, "v1"), (IdType.visitor, "v2")])
    assert counter.round_trips == 0 and group.served == 1
    assert norm(got) == norm(await store.load_snapshot(SITE, [(IdType.visitor, "v1"), (IdType.visitor, "v2")]))
    assert set(got.links) == {(IdType.visitor, "v1")} and len(got.persons) == 1
    counter.pipelines = 0
    # a record asking for more than the prefetch holds (a user id) loads from Redis
    await group.load_snapshot(SITE, [(IdType.visitor, "v2"), (IdType.user_id, "u1")])
    assert counter.round_trips >= 1 and group.served == 1
    # record 2 identifies v2 as u1: its write drops the prefetch ...
    snap = await group.load_snapshot(SITE, [(IdType.visitor, "v2"), (IdType.user_id, "u1")])
    result = apply_identity_events(snap, [ev("v2", 20, identify_user_id="u1")], SALT)
    assert result.ops
    await group.apply(SITE, list(result.ops))
    # ... so record 3's load of v2 sees v2 linked to u1's person (the prefetch had it unlinked)
    served = group.served
    after = await group.load_snapshot(SITE, [(IdType.visitor, "v2")])
    assert group.served == served
    assert after.links[(IdType.visitor, "v2")].person_id == got.links[(IdType.visitor, "v1")].person_id
    # the next group starts from a fresh prefetch
    await group.prefetch({SITE: [(IdType.visitor, "v2")]})
    again = await group.load_snapshot(SITE, [(IdType.visitor, "v2")])
    assert group.served == served + 1 and norm(again) == norm(after)


async def test_group_prefetch_is_not_served_past_its_age(store: IdentityStore) -> None:
    """A record retried long after the group started (Redis was away) loads afresh."""
    from pipeline.enrich.identity_store import GroupPrefetch

    now = [0.0]
    group = GroupPrefetch(store, max_age_s=1.0, clock=lambda: now[0])
    await group.prefetch({SITE: [(IdType.visitor, "v9")]})
    assert not (await group.load_snapshot(SITE, [(IdType.visitor, "v9")])).links and group.served == 1
    await store.process_events(SITE, [ev("v9", 10, identify_user_id="u9")], SALT)  # another writer
    now[0] = 2.0
    assert (IdType.visitor, "v9") in (await group.load_snapshot(SITE, [(IdType.visitor, "v9")])).links
    assert group.served == 1
