"""Nurture sequences on a real Redis, with aiosmtpd as the SMTP server, without Kafka: scheduling
across a restart, never a step twice, stops (reply, unsubscribe, bounce, suppression), erasure's hook."""

from __future__ import annotations

import asyncio
import email
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from pipeline.codec import schemas_dir
from pipeline.enrich.identity_store import IdentityKeys
from pipeline.local.redis import RedisServer
from pipeline.settings import NurtureSinkSettings, Settings
from pipeline.sinks.nurture import NurtureSink, ReplyDesk, email_hash_for
from pipeline.sinks.sequences import SequenceStore
from pipeline.sinks.state import PersonProfiles

from ..sink_receivers import MailReceiver

KEY_PATH = Path(__file__).parents[1] / "unit" / "sinks" / "data" / "dkim-test.pem"
EXAMPLE = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())


def person_lead(pid: str) -> dict[str, Any]:
    lead = json.loads(json.dumps(EXAMPLE))
    lead.update(lead_id=str(uuid.uuid4()), identity_level="person",
                person={"person_id": pid, "confidence": 0.9, "seniority": "c_level", "department": "finance",
                        "evidence": []})
    return lead


@pytest.fixture
def mail() -> Iterator[MailReceiver]:
    m = MailReceiver().start()
    try:
        yield m
    finally:
        m.stop()


def settings_for(mail: MailReceiver, delays: tuple[float, ...] = (0, 0.5), inbound_token: str | None = None) -> Settings:
    steps = [{"delay": d, "subject": f"Step {i + 1} for {{{{ company.name }}}}", "text": f"Hello {{{{ person.first_name }}}}, "
              f"step {i + 1}."} for i, d in enumerate(delays)]
    return Settings.model_validate({
        "identity_salt": "salt-for-the-nurture-tests", "sinks": {"lease_s": 2.0, "email": {
            "token_secret": "nurture-test-secret-0123456789", "public_url": "http://127.0.0.1:1",
            "inbound_token": inbound_token}},
        "sites": [{"site_id": "acme", "hosts": ["www.acme.example"], "sinks": [{
            "type": "email", "name": "nurture", "from_address": "Sam <sam@acme.example>",
            "reply_domain": "reply.acme.example", "owner_address": "sales@acme.example", "steps": steps,
            "smtp": {"host": "127.0.0.1", "port": mail.port, "starttls": False},
            "retry": {"initial_backoff_s": 0.1, "jitter": 0},
            "dkim": {"selector": "ls1", "private_key_path": str(KEY_PATH)}}]}]})


class Rig:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url, self.settings = url, settings
        self.ns = f"t{uuid.uuid4().hex[:8]}"
        self.client = redis.asyncio.Redis.from_url(url)

    def sink(self) -> NurtureSink:
        """A fresh sink and store, as after a restart of the process."""
        site = self.settings.sites[0]
        config = site.sinks[0]
        assert isinstance(config, NurtureSinkSettings)
        store = SequenceStore(redis.asyncio.Redis.from_url(self.url), self.ns)
        return NurtureSink(site, config, self.settings, store, PersonProfiles(self.client))

    async def profile(self, pid: str, **fields: str) -> str:
        address = f"{pid}@brightpath-analytics.example"
        await self.client.hset(IdentityKeys("acme").person(pid), mapping={
            "created": 1, "f:email": address, "f:name": f"Dana {pid}", "f:email_consent": "granted",
            **{f"f:{k}": v for k, v in fields.items()}})
        return address


@pytest.fixture
def rig(redis_server: RedisServer, mail: MailReceiver) -> Rig:
    return Rig(redis_server.url, settings_for(mail))


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_steps_follow_their_delays_across_a_restart_and_none_is_sent_twice(rig: Rig,
                                                                                 mail: MailReceiver) -> None:
    address = await rig.profile("p-1")
    first = rig.sink()
    outcome = await first.deliver(person_lead("p-1"))
    assert "started" in outcome.detail  # type: ignore[union-attr]
    assert await first.send_due() == 1
    assert len(mail.to(address)) == 1
    assert await first.send_due() == 0                          # step 2 is not due yet
    again = await first.deliver(person_lead("p-1"))             # a later lead of the same person
    assert "exists" in again.detail  # type: ignore[union-attr]
    second = rig.sink()                                         # "restart": nothing in memory
    assert await second.send_due() == 0
    await asyncio.sleep(0.6)
    assert await second.send_due() == 1
    assert await second.send_due() == 0 and await first.send_due() == 0
    msgs = [email.message_from_bytes(raw) for raw in mail.to(address)]
    assert [m["Subject"] for m in msgs] == ["Step 1 for Brightpath Analytics Inc.",
                                            "Step 2 for Brightpath Analytics Inc."]
    assert msgs[1]["In-Reply-To"] == msgs[0]["Message-ID"]
    seq = await second.store.get(msgs[0]["Reply-To"].split("+")[1][:20])
    assert seq is not None and seq.status == "done" and len(seq.sent) == 2


async def test_two_processes_racing_for_a_due_step_send_it_once(rig: Rig, mail: MailReceiver) -> None:
    address = await rig.profile("p-2")
    a, b = rig.sink(), rig.sink()
    await a.deliver(person_lead("p-2"))
    assert await a.store.claim_due(a.key, 10, 1000, at=0) == []          # nothing due before it was started
    [seq_id] = await a.store.claim_due(a.key, 10, 1000)
    sent = await asyncio.gather(a.send_step(seq_id), b.send_step(seq_id), b.send_step(seq_id))
    assert sum(sent) == 1 and len(mail.to(address)) == 1


async def test_reply_unsubscribe_bounce_and_suppression_stop_sequences(rig: Rig, mail: MailReceiver) -> None:
    sink = rig.sink()
    desk = ReplyDesk(rig.settings, sink.store, {sink.key: sink})
    addresses = {pid: await rig.profile(pid) for pid in ("p-3", "p-4", "p-5", "p-6")}
    for pid in addresses:
        await sink.deliver(person_lead(pid))
    assert await sink.send_due() == 4
    reply_to = {pid: email.message_from_bytes(mail.to(a)[0])["Reply-To"] for pid, a in addresses.items()}
    list_unsub = email.message_from_bytes(mail.to(addresses["p-4"])[0])["List-Unsubscribe"]
    unsub_mailto = "".join(list_unsub.split()).split("<mailto:")[1].split("?")[0]
    # p-3 replies "not interested", p-4 writes to the unsubscribe address, p-5's mail bounces back,
    # p-6 sends an out-of-office (ignored: the sequence goes on)
    negative = f"From: {addresses['p-3']}\r\nSubject: Re: x\r\n\r\nNo thanks, not interested.\r\n".encode()
    assert (await desk.receive(negative, [reply_to["p-3"]])).status == "negative"
    assert (await desk.receive(b"Subject: unsubscribe\r\n\r\n", [unsub_mailto])).status == "unsubscribe"
    bounce = (b"From: MAILER-DAEMON@mx.example\r\nContent-Type: multipart/report; report-type=delivery-status; "
              b"boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nUser unknown\r\n--b--\r\n")
    assert (await desk.receive(bounce, [reply_to["p-5"].replace("reply+", "bounce+")])).status == "unknown_recipient"
    assert (await desk.receive(bounce, [reply_to["p-5"]])).status == "bounce"
    ooo = b"Auto-Submitted: auto-replied\r\nSubject: Out of office\r\n\r\nBack Monday.\r\n"
    assert (await desk.receive(ooo, [reply_to["p-6"]])).status == "automatic"
    assert (await desk.receive(b"Subject: hi\r\n\r\nhi", ["someone@reply.acme.example"])).status == "unknown_recipient"
    await asyncio.sleep(0.6)
    assert await sink.send_due() == 1                           # only p-6 gets step 2
    assert [len(mail.to(a)) for a in addresses.values()] == [1, 1, 1, 2]
    h4 = email_hash_for(rig.settings, rig.settings.sites[0], addresses["p-4"])
    assert await sink.store.is_suppressed("acme", h4)
    # a suppressed person never gets a new sequence, from this or any later lead
    assert "suppressed" in (await sink.deliver(person_lead("p-4"))).detail  # type: ignore[union-attr]


async def test_suppression_added_elsewhere_stops_the_next_step(rig: Rig, mail: MailReceiver) -> None:
    sink = rig.sink()
    address = await rig.profile("p-7")
    await sink.deliver(person_lead("p-7"))
    assert await sink.send_due() == 1
    await sink.store.suppress("acme", email_hash_for(rig.settings, rig.settings.sites[0], address))
    await asyncio.sleep(0.6)
    assert await sink.send_due() == 0 and len(mail.to(address)) == 1


async def test_erasure_hook_stops_and_forgets_a_persons_sequences(rig: Rig, mail: MailReceiver) -> None:
    sink = rig.sink()
    address = await rig.profile("p-8")
    await sink.deliver(person_lead("p-8"))
    assert await sink.store.stop_sequences("acme", person_id="p-8", reason="erased", forget=True) == 1
    assert await sink.send_due() == 0 and mail.to(address) == []
    keys = [k async for k in sink.store.client.scan_iter(f"{sink.store.ns}:*")]
    assert not [k for k in keys if b"p-8" in k or b":seq:" in k], keys


def test_the_sync_erasure_hook_by_email_hash(redis_server: RedisServer, mail: MailReceiver) -> None:
    from pipeline.sinks.sequences import stop_sequences_sync
    rig = Rig(redis_server.url, settings_for(mail))

    async def start() -> str:
        address = await rig.profile("p-10")
        await rig.sink().deliver(person_lead("p-10"))
        return email_hash_for(rig.settings, rig.settings.sites[0], address)

    email_hash = asyncio.run(start())
    assert stop_sequences_sync(redis_server.url, "acme", email_hash=email_hash, namespace=rig.ns) == 1
    assert stop_sequences_sync(redis_server.url, "acme", email_hash=email_hash, namespace=rig.ns) == 0


async def test_a_hard_bounce_at_send_time_stops_the_sequence(rig: Rig, mail: MailReceiver) -> None:
    sink = rig.sink()
    address = await rig.profile("p-9")
    mail.refuse[address] = "550 5.1.1 User unknown"
    await sink.deliver(person_lead("p-9"))
    assert await sink.send_due() == 0
    seq_ids = [k async for k in sink.store.client.scan_iter(f"{sink.store.ns}:seq:*")]
    [seq] = [await sink.store.get(k.decode().rsplit(":", 1)[1]) for k in seq_ids]
    assert seq is not None and seq.status == "stopped" and seq.reason.startswith("bounce")


async def test_the_inbound_parse_webhook_takes_raw_mime_and_provider_forms(redis_server: RedisServer,
                                                                          mail: MailReceiver) -> None:
    import aiohttp

    from pipeline.local.kafka import free_port
    from pipeline.sinks.inbound import email_routes
    from pipeline.sinks.server import serve_http
    rig = Rig(redis_server.url, settings_for(mail, inbound_token="inbound-token-123"))
    sink = rig.sink()
    desk = ReplyDesk(rig.settings, sink.store, {sink.key: sink})
    port = free_port()
    stop = await serve_http("127.0.0.1", port, lambda: (True, {}), email_routes(rig.settings, sink.store, desk))
    try:
        addresses = {pid: await rig.profile(pid) for pid in ("w-1", "w-2")}
        for pid in addresses:
            await sink.deliver(person_lead(pid))
        assert await sink.send_due() == 2
        reply_to = {pid: email.message_from_bytes(mail.to(a)[0])["Reply-To"] for pid, a in addresses.items()}
        url = f"http://127.0.0.1:{port}/email/inbound"
        raw = f"To: {reply_to['w-1']}\r\nSubject: Re: hi\r\n\r\nPlease remove me from your list.\r\n".encode()
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=raw, headers={"content-type": "message/rfc822"}) as r:
                assert r.status == 401                                        # no token
            async with http.post(url, data=raw, headers={"content-type": "message/rfc822",
                                                         "authorization": "Bearer inbound-token-123"}) as r:
                assert r.status == 200 and (await r.json())["status"] == "unsubscribe"
            form = aiohttp.FormData()                                         # SendGrid Inbound Parse, raw mode
            form.add_field("email", "Subject: Re: hi\r\n\r\nNot interested, thanks.\r\n")
            form.add_field("envelope", json.dumps({"to": [reply_to["w-2"]], "from": addresses["w-2"]}))
            async with http.post(url + "?token=inbound-token-123", data=form) as r:
                assert r.status == 200 and (await r.json())["status"] == "negative"
            async with http.get(f"http://127.0.0.1:{port}/unsubscribe/{'0' * 36}") as r:
                assert r.status == 404
        seqs = {pid: await sink.store.get(email.message_from_bytes(mail.to(a)[0])["Reply-To"][6:26])
                for pid, a in addresses.items()}
        assert [(s.status, s.reason) for s in seqs.values() if s] == [("stopped", "unsubscribed"),
                                                                      ("stopped", "reply: negative")]
    finally:
        await stop()


async def test_a_template_that_fails_on_a_leads_data_stops_that_sequence_only(redis_server: RedisServer,
                                                                              mail: MailReceiver) -> None:
    settings = settings_for(mail)
    data = settings.model_dump(mode="python")
    data["sinks"]["email"]["token_secret"] = "nurture-test-secret-0123456789"
    data["identity_salt"] = "salt-for-the-nurture-tests"
    data["sites"][0]["sinks"][0]["steps"][0]["subject"] = "{{ lead.company.name.upper() }} {{ 1 // person.zero }}"
    rig = Rig(redis_server.url, Settings.model_validate(data))
    sink = rig.sink()
    address = await rig.profile("p-11", zero="0")
    await sink.deliver(person_lead("p-11"))
    assert await sink.send_due() == 0 and mail.to(address) == []
    [key] = [k async for k in sink.store.client.scan_iter(f"{sink.store.ns}:seq:*")]
    seq = await sink.store.get(key.decode().rsplit(":", 1)[1])
    assert seq is not None and seq.status == "stopped" and seq.reason.startswith("template error in step 1")
    assert await sink.store.scheduled(sink.key) == 0


async def test_the_erasure_hook_stops_by_person_id_email_hash_or_the_email_itself(redis_server: RedisServer,
                                                                                 mail: MailReceiver) -> None:
    from types import SimpleNamespace

    from pipeline.sinks.erasure import StopSequences, stop_sequences_hook
    base = settings_for(mail)
    data = base.model_dump(mode="python")
    data["redis"] = {"url": redis_server.url}
    data["sinks"]["email"]["token_secret"] = "nurture-test-secret-0123456789"
    data["identity_salt"] = "salt-for-the-nurture-tests"
    rig = Rig(redis_server.url, Settings.model_validate(data))
    data["sinks"]["namespace"] = rig.ns
    settings = Settings.model_validate(data)
    sink = rig.sink()
    for pid in ("e-1", "e-2", "e-3"):
        await rig.profile(pid)
        await sink.deliver(person_lead(pid))
    hook = stop_sequences_hook(settings)
    assert isinstance(hook, StopSequences) and hook.name == "email-sequences"
    assert stop_sequences_hook(Settings.model_validate({**data, "sites": []})) is None
    site = settings.sites[0]
    e2_hash = email_hash_for(settings, site, "e-2@brightpath-analytics.example")
    subjects = [SimpleNamespace(site_id="acme", person_id="e-1", email_hashes=(), email=None),
                SimpleNamespace(site_id="acme", person_id=None, email_hashes=(e2_hash,), email=None),
                SimpleNamespace(site_id="acme", person_id=None, email_hashes=(), email="E-3@Brightpath-Analytics.example")]
    assert [await hook.forget(s) for s in subjects] == [1, 1, 1]
    assert [await hook.forget(s) for s in subjects] == [0, 0, 0]             # idempotent
    assert await sink.send_due() == 0 and await sink.store.scheduled(sink.key) == 0
    assert [k async for k in sink.store.client.scan_iter(f"{rig.ns}:nurture:seq:*")] == []


async def test_an_erased_person_found_again_gets_no_new_sequence(rig: Rig, mail: MailReceiver) -> None:
    """Erasure deletes the sequences and puts the salted email hashes on the site's suppression list:
    when the owner's next import brings the person back (any person id), no sequence starts again."""
    sink = rig.sink()
    address = await rig.profile("p-12")
    await sink.deliver(person_lead("p-12"))
    assert await sink.store.stop_sequences("acme", person_id="p-12", reason="erased", forget=True) == 1
    h = email_hash_for(rig.settings, rig.settings.sites[0], address)
    assert await sink.store.is_suppressed("acme", h)
    # erased by the email hash alone, before any sequence: suppressed as well
    other = await rig.profile("p-13")
    h13 = email_hash_for(rig.settings, rig.settings.sites[0], other)
    assert await sink.store.stop_sequences("acme", email_hash=h13, reason="erased", forget=True) == 0
    assert await sink.store.is_suppressed("acme", h13)
    # re-imported under new person ids with the same addresses
    for pid, addr in (("p-12b", address), ("p-13b", other)):
        await rig.client.hset(IdentityKeys("acme").person(pid), mapping={
            "created": 1, "f:email": addr, "f:name": "Dana Again", "f:email_consent": "granted"})
        outcome = await sink.deliver(person_lead(pid))
        assert "suppressed" in outcome.detail, outcome  # type: ignore[union-attr]
    assert await sink.send_due() == 0 and mail.to(address) == [] and mail.to(other) == []


async def test_a_step_sent_again_after_a_crash_keeps_its_message_id(rig: Rig, mail: MailReceiver) -> None:
    """SMTP has no idempotency key and no read-back: a crash between the server's 250 and the
    record of the step sends it again once the claim's lease ends. Measured here: two messages
    on the wire, one Message-ID (receivers that de-duplicate by Message-ID show one)."""
    from pipeline.sinks.nurture import SmtpMailer

    class KilledAfterAccept(SmtpMailer):
        async def send(self, sender: str, recipient: str, message: bytes, accepted: Any = None) -> None:
            async def die() -> None:   # kill -9 right after the server took the message
                raise asyncio.CancelledError
            await super().send(sender, recipient, message, die)

    address = await rig.profile("p-11")
    crashing = rig.sink()
    await crashing.deliver(person_lead("p-11"))
    crashing.mailer = KilledAfterAccept(crashing.config.smtp)
    [seq_id] = await crashing.store.claim_due(crashing.key, 10, int(rig.settings.sinks.lease_s * 1000))
    with pytest.raises(asyncio.CancelledError):
        await crashing.send_step(seq_id)
    restarted = rig.sink()
    assert await restarted.send_due() == 0          # the dead process's claim holds until its lease ends
    await asyncio.sleep(rig.settings.sinks.lease_s + 0.2)
    assert await restarted.send_due() == 1
    msgs = [email.message_from_bytes(raw) for raw in mail.to(address)]
    ids = {m["Message-ID"] for m in msgs}
    print("NURTURE-IN-DOUBT", json.dumps({"messages_on_the_wire": len(msgs), "distinct_message_ids": len(ids)}))
    assert len(msgs) == 2 and len(ids) == 1
    seq = await restarted.store.get(seq_id)
    assert seq is not None and len(seq.sent) == 1    # recorded once: step 2 follows as usual
