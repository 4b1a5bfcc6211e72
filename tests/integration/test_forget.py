"""Erasure end to end (issue 17): a person identified through the real collector and worker, listed by
`leadstream leads serve`, then `leadstream forget`: nothing about them remains in Redis (every key and
value scanned), in the latest values of the compacted topics (lead-scores and the worker's table
changelogs, read as compaction will leave them), or in the prospect list, while everyone else stays."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any, Iterable

import pytest
import redis

from pipeline.core.identity import hash_email
from pipeline.ops.forget import ErasureSubject, audit_key, forget
from pipeline.settings import load_settings
from pipeline.topology import changelog_topic

from .pipeline_harness import DAY, Pipeline, Visitor, now_ms
from .stagekit import REPO, read_all, wait_until
from .test_leads import BRIGHTPATH, BRIGHTPATH_IP, Leads, buyers

pytestmark = pytest.mark.integration

BROADBAND_IP = "198.51.100.10"     # Example Broadband: residential ISP, no company: the visitor is its own account
MOBILE_IP = "198.51.100.140"       # Example Mobile
EMAIL = "erin.fictional@gmail.com"
NAME = "Erin Fictional"


def redis_contents(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key of the database with all of its value's bytes (strings, hashes, sets, sorted sets,
    lists, streams) joined, so a substring search covers keys, fields, members and values."""
    out: dict[bytes, bytes] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        parts: list[Any]
        if kind == b"string":
            parts = [client.get(key)]
        elif kind == b"hash":
            parts = [x for kv in client.hgetall(key).items() for x in kv]
        elif kind == b"set":
            parts = list(client.smembers(key))
        elif kind == b"zset":
            parts = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"list":
            parts = list(client.lrange(key, 0, -1))
        elif kind == b"stream":
            parts = [x for _, fields in client.xrange(key) for kv in fields.items() for x in kv]
        else:
            parts = [kind]
        out[key] = b"\x00".join(p if isinstance(p, bytes) else str(p).encode() for p in parts if p is not None)
    return out


def latest_values(p: Pipeline, topics: Iterable[str]) -> dict[tuple[str, int, bytes], bytes | None]:
    """What compaction leaves of each topic: the last value of every key per partition (None: tombstone)."""
    out: dict[tuple[str, int, bytes], bytes | None] = {}
    for topic in topics:
        for rec in read_all(p.broker.bootstrap, topic):
            if rec.key is not None:
                out[(topic, rec.partition, rec.key)] = rec.value
    return out


def found(needles: dict[str, bytes], haystack: dict[Any, Any]) -> dict[str, list[str]]:
    """Which needles occur in which entries (key or value) of ``haystack``."""
    hits: dict[str, list[str]] = {}
    for where, value in haystack.items():
        text = repr(where).encode() + b"\x00" + (value or b"")
        for name, needle in needles.items():
            if needle in text or needle.lower() in text.lower():
                hits.setdefault(name, []).append(repr(where)[:120])
    return hits


class Erasure:
    def __init__(self, p: Pipeline, leads: Leads) -> None:
        self.p = p
        self.leads = leads
        self.client = redis.Redis.from_url(p.config["redis"]["url"])
        app_id = p.config["stages"]["app_id"]
        self.compacted = [p.topics["lead_scores"], changelog_topic(app_id, "visitor"),
                          changelog_topic(app_id, "account")]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "forget", "-c", str(self.leads.config_path),
                               *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    def doc(self, account: str) -> dict[str, Any] | None:
        raw = self.client.hget("ls:lv:{acme}:doc", account)
        return json.loads(raw) if raw else None

    def leftovers(self, needles: dict[str, bytes]) -> dict[str, dict[str, list[str]]]:
        return {"redis": found(needles, redis_contents(self.client)),
                "compacted topics": found(needles, {k: v for k, v in latest_values(self.p, self.compacted).items()
                                                    if v is not None})}


@pytest.fixture
def erasure(pipeline: Pipeline) -> Erasure:
    return Erasure(pipeline, Leads(pipeline).start())


def test_forget_by_email_leaves_nothing_about_the_person(erasure: Erasure) -> None:
    p, leads, client = erasure.p, erasure.leads, erasure.client
    t0 = now_ms() - DAY
    buyers(p, t0)                                          # Ada at Brightpath: must stay
    bystander = Visitor(p, BROADBAND_IP)                   # another anonymous visitor on the same ISP: must stay
    bystander.browse(t0, ["/", "/pricing"])
    laptop, phone = Visitor(p, BROADBAND_IP), Visitor(p, MOBILE_IP)
    for n, erin in enumerate((laptop, phone)):
        t = erin.browse(t0 + n * 3_600_000, ["/", "/pricing", "/demo"])
        erin.send([{"type": "identify", "email": EMAIL.upper() if n else EMAIL, "ts": t + 1000,
                    "traits": {"name": NAME, "title": "Head of Data"}}], sent_at=t + 1000)
    erins = [f"v:{laptop.visitor_id}", f"v:{phone.visitor_id}"]
    email_hash = hash_email(EMAIL, p.config["identity_salt"])
    person_id = ""

    def everything_written() -> bool:
        nonlocal person_id
        person_id = (client.hget(f"ls:{{acme}}:id:email:{email_hash}", "p") or b"").decode()
        docs = [erasure.doc(a) for a in [*erins, f"v:{bystander.visitor_id}", f"c:{BRIGHTPATH}"]]
        latest = latest_values(p, erasure.compacted)
        keys = {k for (_, _, k), v in latest.items() if v is not None}
        return (bool(person_id) and all(docs)
                and all(any(pp["person_id"] == person_id for pp in (erasure.doc(a) or {}).get("people") or ())
                        for a in erins)
                and all(f"acme|{a}".encode() in keys and json.dumps(f"acme|{a}").encode() in keys for a in erins)
                and all(json.dumps(f"acme|{a[2:]}").encode() in keys for a in erins))

    p.wait_for(everything_written, "the person's accounts in lead-scores, the changelogs and the list")
    needles = {"email": EMAIL.encode(), "email hash": email_hash.encode(), "person id": person_id.encode(),
               "name": NAME.encode(), "laptop visitor": laptop.visitor_id.encode(),
               "phone visitor": phone.visitor_id.encode()}
    before = erasure.leftovers(needles)
    # the scans can see the person (else the checks below prove nothing)
    assert {"email hash", "person id", "name", "laptop visitor", "phone visitor"} <= set(before["redis"]), before
    assert {"person id", "email hash", "laptop visitor", "phone visitor"} <= set(before["compacted topics"]), before
    ada = client.hget(f"ls:{{acme}}:id:email:{hash_email('ada.fictional@brightpath-analytics.example', 'test-salt')}", "p")
    assert ada

    done = erasure.cli("--site", "acme", "--email", f"  {EMAIL.title()} ")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "forgot a person" in done.stdout and "2 erasure records for 2 visitor ids" in done.stdout, done.stdout
    for secret in (EMAIL, email_hash, person_id, laptop.visitor_id, phone.visitor_id):
        assert secret not in done.stdout + done.stderr

    # the worker applies the erasure records in band (its tables, their changelogs, lead-scores) and the view's
    # updater sees the account stage's tombstones; wait for that, then nothing may remain
    wait_until(lambda: not any(erasure.leftovers(needles).values()), 30, "nothing left about the person",
               lambda: json.dumps(erasure.leftovers(needles), indent=1))
    assert all(erasure.doc(a) is None for a in erins)
    assert all(leads.row(a[2:]) is None and leads.row(a[2:], tier="filtered") is None for a in erins)
    # tombstones, not missing keys: compaction replaces the old values (the two visitors' states, their
    # accounts' states and their accounts' scores)
    latest = latest_values(p, erasure.compacted)
    assert sum(1 for v in latest.values() if v is None) == 6

    # everyone else stays
    assert client.hget(f"ls:{{acme}}:id:email:{hash_email('ada.fictional@brightpath-analytics.example', 'test-salt')}",
                       "p") == ada
    brightpath = erasure.doc(f"c:{BRIGHTPATH}")
    assert brightpath and brightpath["people"] and brightpath["people"][0]["person_id"] == ada.decode()
    assert erasure.doc(f"v:{bystander.visitor_id}") is not None
    assert latest[(p.topics["lead_scores"], *_where(p, f"acme|v:{bystander.visitor_id}"))] is not None

    # forgetting again is harmless: nothing found, nothing to publish, one more audit entry
    again = erasure.cli("--site", "acme", "--email", EMAIL)
    assert again.returncode == 0 and "no person in the identity graph" in again.stdout, again.stdout + again.stderr
    assert not any(erasure.leftovers(needles).values())
    audit = erasure.cli("--site", "acme", "--audit")
    assert audit.returncode == 0, audit.stderr
    entries = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [(e["kind"], e["person_found"], e["visitors"], e["erasure_records"]) for e in entries] == [
        ("email", "0", "0", "0"), ("email", "1", "2", "2")]
    assert entries[0]["subject"] == entries[1]["subject"] and len(entries[0]["subject"]) == 64
    assert int(entries[1]["identifiers_removed"]) >= 3 and int(entries[1]["view_accounts_removed"]) == 2
    assert client.xlen(audit_key("acme")) == 2


def test_forget_reaches_the_running_workers_tables_and_a_restart_brings_nothing_back(erasure: Erasure) -> None:
    """A person who shares a company account with a colleague: forget runs while the worker runs. The worker's
    live tables lose her (the colleague's next visit is scored without her), their changelogs and lead-scores
    hold nothing about her, the company stays listed without her, and a restart (tables recovered from the
    changelogs) writes nothing about her back."""
    p, leads, client = erasure.p, erasure.leads, erasure.client
    email, name = "ada.fictional@brightpath-analytics.example", "Ada Fictional"
    t0 = now_ms() - DAY
    ada, colleague = Visitor(p, BRIGHTPATH_IP), Visitor(p, BRIGHTPATH_IP)
    t = ada.browse(t0, ["/", "/product", "/pricing"])
    t = ada.browse(t + 45 * 60_000, ["/demo", "/contact"])
    colleague.browse(t0 + 600_000, ["/pricing", "/security"])
    ada.send([{"type": "identify", "email": email, "ts": t + 1000, "traits": {"name": name, "title": "VP Marketing"}}],
             sent_at=t + 1000)
    email_hash = hash_email(email, p.config["identity_salt"])
    account, key = f"c:{BRIGHTPATH}", f"acme|c:{BRIGHTPATH}"
    state_key = json.dumps(key).encode()
    person_id = ""

    def latest_state() -> bytes:
        return next((v or b"" for (topic, _, k), v in latest_values(p, erasure.compacted[2:]).items()
                     if k == state_key), b"")

    def ada_counted() -> bool:
        nonlocal person_id
        person_id = (client.hget(f"ls:{{acme}}:id:email:{email_hash}", "p") or b"").decode()
        doc = erasure.doc(account) or {}
        state = latest_state()
        return (bool(person_id) and any(pp.get("person_id") == person_id for pp in doc.get("people") or ())
                and ada.visitor_id.encode() in state and colleague.visitor_id.encode() in state
                and person_id.encode() in state)

    p.wait_for(ada_counted, "Ada and her colleague in Brightpath's state, its changelog and the list")
    needles = {"email": email.encode(), "email hash": email_hash.encode(), "person id": person_id.encode(),
               "name": name.encode(), "visitor": ada.visitor_id.encode()}
    assert set(erasure.leftovers(needles)["compacted topics"]) >= {"person id", "email hash", "visitor"}

    done = erasure.cli("--site", "acme", "--email", email)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 erasure records for 1 visitor ids" in done.stdout, done.stdout
    wait_until(lambda: not any(erasure.leftovers(needles).values()), 60, "nothing left about Ada",
               lambda: json.dumps(erasure.leftovers(needles), indent=1) + p.logs())
    # her visitor state was deleted from the running worker's table: the delete is its changelog's tombstone
    visitor_state = json.dumps(f"acme|{ada.visitor_id}").encode()
    assert [v for (_, _, k), v in latest_values(p, erasure.compacted[1:2]).items() if k == visitor_state] == [None]
    # the company stays, re-scored from the colleague alone, in its state, its score and the list
    assert colleague.visitor_id.encode() in latest_state()
    score = scores(p, key)[-1]
    assert score["visitors"] == 1 and score["person_id"] is None and score["persons"] == []
    assert {s["visitor_id"] for s in score["sessions"]} == {colleague.visitor_id}
    wait_until(lambda: bool((leads.row(BRIGHTPATH) or {}).get("domain")) and not (leads.row(BRIGHTPATH) or {})
               .get("people"), 30, "Brightpath listed without Ada", lambda: json.dumps(leads.row(BRIGHTPATH)))

    # the live table: the colleague's next visit is scored on what the running worker holds
    def next_score(after: int) -> dict[str, Any] | None:
        later = scores(p, key)
        return later[-1] if len(later) > after and later[-1]["tstamp"] > score["tstamp"] else None

    seen = len(scores(p, key))
    colleague.browse(t + 2 * 3_600_000, ["/pricing", "/docs"])
    p.wait_for(lambda: next_score(seen) is not None, "the colleague's next visit scored")
    live = next_score(seen)
    assert live is not None and live["visitors"] == 1 and live["person_id"] is None
    assert not found(needles, {"live score": json.dumps(live).encode()})

    # a restart: the tables are recovered from their changelogs, nothing about Ada comes back
    before = {(r.topic, r.partition, r.offset) for topic in erasure.compacted for r in read_all(p.broker.bootstrap, topic)}
    worker = next(w for w in p.processes if "worker" in w.log_path.name)
    assert worker.terminate() == 0
    p.start_worker("worker-2")
    seen = len(scores(p, key))
    colleague.browse(t + 3 * 3_600_000, ["/security"])
    p.wait_for(lambda: next_score(seen) is not None, "the colleague's visit after the restart scored", 120)
    after = next_score(seen)
    assert after is not None and after["visitors"] == 1 and after["person_id"] is None
    written = {(r.topic, r.partition, r.offset): r.value or b"" for topic in erasure.compacted
               for r in read_all(p.broker.bootstrap, topic) if (r.topic, r.partition, r.offset) not in before}
    assert written, "the restarted worker wrote its state and scores"
    assert not found(needles, written), found(needles, written)
    assert not any(erasure.leftovers(needles).values()), erasure.leftovers(needles)

    # her browser comes back (new data): the recovered visitor table has no state for her (a new first session,
    # where a kept state would continue her session), and the graph no person
    def hers() -> dict[str, dict[str, Any]]:
        return {u["update_id"]: u for batch in p.decoded("visits") for u in batch["updates"]
                if u["visitor_id"] == ada.visitor_id}

    old = set(hers())
    ada.browse(now_ms(), ["/back"], step_ms=0, pings=0)
    p.wait_for(lambda: bool(set(hers()) - old), "her new visit")
    new = [u for i, u in hers().items() if i not in old]
    assert {(u["new_session"], u["session"]["index"], u["person_id"], u["person_email_hash"]) for u in new} == {
        (True, 1, None, None)}, new


def scores(p: Pipeline, key: str) -> list[dict[str, Any]]:
    """Every LeadScore written for ``key``, oldest first (tombstones left out)."""
    from .pipeline_harness import CODEC
    return [CODEC.decode(r.value) for r in read_all(p.broker.bootstrap, p.topics["lead_scores"])
            if r.key == key.encode() and r.value is not None]


def _where(p: Pipeline, key: str) -> tuple[int, bytes]:
    """(partition, raw key) of a lead-scores record."""
    from pipeline.topology import partition_for, topic_specs
    partitions = next(s.partitions for s in topic_specs(p.settings) if s.logical == "lead_scores")
    return partition_for(key, partitions), key.encode()


def test_forget_an_anonymous_visitor_twice(erasure: Erasure) -> None:
    p = erasure.p
    visitor, other = Visitor(p, BROADBAND_IP), Visitor(p, BROADBAND_IP)
    t0 = now_ms() - DAY
    visitor.browse(t0, ["/", "/pricing"])
    other.browse(t0, ["/", "/docs"])
    accounts = [f"v:{visitor.visitor_id}", f"v:{other.visitor_id}"]
    p.wait_for(lambda: all(erasure.doc(a) for a in accounts), "both visitors in the list")
    needles = {"visitor": visitor.visitor_id.encode()}
    assert set(erasure.leftovers(needles)["compacted topics"]) == {"visitor"}

    done = erasure.cli("--site", "acme", "--visitor", visitor.visitor_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 erasure records for 1 visitor ids" in done.stdout and "no person" in done.stdout, done.stdout
    wait_until(lambda: not any(erasure.leftovers(needles).values()), 30, "the visitor gone",
               lambda: json.dumps(erasure.leftovers(needles)))

    # again, in process, with a sink's erasure hook: it is told whom to stop sequences for
    hook = Sequences()
    report = asyncio.run(forget(load_settings(erasure.leads.config_path), "acme", "visitor", visitor.visitor_id,
                                hooks=[hook]))
    assert (report.person_found, report.erasure_records, report.view_accounts_removed, report.sequences_stopped) == (
        False, 1, 0, 1)
    assert [(s.person_id, s.visitor_ids, s.accounts) for s in hook.subjects] == [
        (None, (visitor.visitor_id,), (accounts[0],))]
    assert not any(erasure.leftovers(needles).values())
    assert erasure.doc(accounts[0]) is None and erasure.doc(accounts[1]) is not None
    assert found({"other": other.visitor_id.encode()}, redis_contents(erasure.client))
    audit = [json.loads(line) for line in erasure.cli("--site", "acme", "--audit").stdout.splitlines()]
    assert [(e["kind"], e["view_accounts_removed"], e["hooks"], e["sequences_stopped"]) for e in audit] == [
        ("visitor", "0", ["test-sequences"], "1"), ("visitor", "1", [], "0")]


class Sequences:
    """A sink's erasure hook (the interface pipeline.sinks implements), recording whom it was asked to stop."""
    name = "test-sequences"

    def __init__(self) -> None:
        self.subjects: list[ErasureSubject] = []

    async def forget(self, subject: ErasureSubject) -> int:
        self.subjects.append(subject)
        return 1


def test_tombstones_replace_the_latest_value_on_both_brokers(any_broker: Any, new_topic: Any,
                                                             unique_name: Any) -> None:
    """`leadstream up` runs the embedded broker: the stages' tombstones (a null value, which the Faust
    producer sends through aiokafka as below) must replace the latest value there too."""
    from aiokafka import AIOKafkaProducer
    from kafka import KafkaProducer

    topic = new_topic(any_broker, 2, config={"cleanup.policy": "compact"})
    producer = KafkaProducer(bootstrap_servers=any_broker.bootstrap, acks="all")
    for partition, key in ((0, b"acme|v:a"), (1, b"acme|v:b"), (1, b"acme|v:c")):
        producer.send(topic, key=key, value=b"state", partition=partition).get(30)
    producer.close()

    async def tombstones() -> None:
        aio = AIOKafkaProducer(bootstrap_servers=any_broker.bootstrap, acks="all")
        await aio.start()
        try:
            for partition, key in ((0, b"acme|v:a"), (1, b"acme|v:c")):
                await (await aio.send(topic, key=key, value=None, partition=partition))
        finally:
            await aio.stop()

    asyncio.run(tombstones())
    latest = {(r.partition, r.key): r.value for r in read_all(any_broker.bootstrap, topic)}
    assert latest == {(0, b"acme|v:a"): None, (1, b"acme|v:b"): b"state", (1, b"acme|v:c"): None}


def test_a_run_that_fails_half_way_finds_the_person_again(redis_server: Any, redis_client: redis.Redis,
                                                          tmp_path: Any) -> None:
    """Kafka away: the erasure records cannot be written, so the identity graph must still hold the person
    (erased last), and the CLI says to run it again."""
    import yaml

    from pipeline.core.identity import CreatePerson, IdType, Link
    from pipeline.enrich.identity_store import SyncIdentityStore

    store = SyncIdentityStore.from_url(redis_server.url)
    salt = "test-salt"
    store.apply("acme", [CreatePerson("p-erin", 1), Link(IdType.email, hash_email(EMAIL, salt), "p-erin", "identify"),
                         Link(IdType.visitor, "v-erin", "p-erin", "identify")])
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "redis": {"url": redis_server.url},
                                    "identity_salt": salt, "sites": [{"site_id": "acme"}]}))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "forget", "-c", str(path), "--site", "acme",
                           "--email", EMAIL], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1 and "erasure not finished" in done.stderr, done.stdout + done.stderr
    assert store.lookup_person("acme", EMAIL, salt=salt).visitor_ids == ("v-erin",)
    assert not redis_client.exists(audit_key("acme"))
    store.close()


def test_the_list_names_the_accounts_an_erasure_must_reach(redis_server: Any, redis_client: redis.Redis) -> None:
    """What `forget` adds to its erasure records besides what the visitors' states list (a visitor state that
    was evicted, or written before it listed accounts): every account of the list naming the person or
    showing a session of one of their visitors."""
    from pipeline.leads.store import LeadsView

    def doc(account: str, people: list[str], visitors: list[str]) -> dict[str, object]:
        return {"site_id": "acme", "account": account, "domain": account[2:], "name": account, "status": "warming",
                "priority_key": 1.0, "country": "US", "seen": True, "tier": "C", "fit": 50, "intent": 20,
                "people": [{"person_id": p} for p in people],
                "sessions": [{"session_id": f"s-{v}", "visitor_id": v} for v in visitors]}

    async def run() -> list[list[str]]:
        view = LeadsView.from_url(redis_server.url)
        try:
            await view.put([doc("c:a.example", ["p1"], ["v9"]), doc("c:b.example", [], ["v1"]),
                            doc("c:c.example", ["p2"], ["v2"]), doc("v:v1", [], ["v1"])], {})
            return [await view.accounts_naming("acme", "p1", ["v1"]), await view.accounts_naming("acme", None, []),
                    await view.accounts_naming("acme", "p3", ["v3"]), await view.accounts_naming("other", "p1", ["v1"])]
        finally:
            await view.aclose()

    assert asyncio.run(run()) == [["c:a.example", "c:b.example", "v:v1"], [], [], []]
