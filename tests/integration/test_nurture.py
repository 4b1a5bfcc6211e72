"""Email nurture through ``leadstream sinks`` on the real broker and Redis, aiosmtpd as the SMTP server:

- a person lead with an email gets step 1 at once and step 2 after its delay; DKIM verifies; the
  List-Unsubscribe headers are there;
- ``kill -9`` of the process between the steps, then a restart: step 1 is not sent again, step 2 is sent;
- a positive reply through the inbound SMTP listener stops the sequence and hands off to the owner's
  mailbox, Slack and a HubSpot note on the contact;
- the unsubscribe link (one-click POST) suppresses the person and stops their sequence.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import httpx
import pytest
import redis
import yaml
from kafka import KafkaProducer

from pipeline.codec import SingleObjectCodec, schemas_dir
from pipeline.core.identity import hash_email
from pipeline.enrich.identity_store import IdentityKeys
from pipeline.local.kafka import KafkaBroker, free_port
from pipeline.local.redis import RedisServer
from pipeline.settings import load_settings
from pipeline.topology import create_topics

from ..sink_receivers import HUBSPOT_TOKEN, MailReceiver, Receivers
from .pipeline_harness import _CliProcess, _healthy
from .stagekit import wait_until

pytestmark = pytest.mark.integration

CODEC = SingleObjectCodec()
DATA = Path(__file__).parents[1] / "unit" / "sinks" / "data"
PUBLIC = (DATA / "dkim-test.pub.b64").read_text().strip()
EXAMPLE = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())
SALT = "nurture-integration-salt"
OWNER = "sales@acme.example"
STEP2_DELAY, STEP3_DELAY = 8.0, 6.0


def _dns(name: bytes, timeout: int = 5) -> bytes:
    return f"v=DKIM1; k=rsa; p={PUBLIC}".encode() if name == b"ls1._domainkey.acme.example." else b""


class NurtureRig:
    def __init__(self, broker: KafkaBroker, redis_url: str, tmp: Path, name: str, receivers: Receivers,
                 mail: MailReceiver) -> None:
        self.broker, self.redis_url, self.tmp, self.name = broker, redis_url, tmp, name
        self.receivers, self.mail = receivers, mail
        self.port, self.inbound_port = free_port(), free_port()
        self.topics = {k: f"{name}-{k.replace('_', '-')}" for k in
                       ("pixel_events", "bad_events", "visits", "lead_scores", "qualified_leads", "sink_dead_letter")}
        steps = [{"delay": 0, "subject": "{{ company.name }}: a question", "text": "Hi {{ person.first_name }},\n\n"
                  "you looked at our pricing. Worth a call?", "html": "<p>Hi {{ person.first_name }},</p>"
                  "<p>you looked at our pricing.</p>"},
                 {"delay": STEP2_DELAY, "subject": "Following up", "text": "Hi {{ person.first_name }}, any thoughts?"},
                 {"delay": STEP3_DELAY, "subject": "Last note", "text": "Closing the loop."}]
        config = {
            "kafka": {"bootstrap_servers": broker.bootstrap}, "redis": {"url": redis_url}, "topics": self.topics,
            "identity_salt": SALT,
            "stages": {"app_id": f"{name}-app", "session_timeout_s": 6.0, "heartbeat_interval_s": 1.0},
            "sinks": {"group_id": f"{name}-sinks", "port": self.port, "namespace": f"{name}:sinks", "lease_s": 3.0,
                      "retry_poll_s": 0.2, "commit_interval_s": 0.5,
                      "email": {"token_secret": "integration-token-secret-0123456789", "poll_s": 0.2,
                                "inbound_port": self.inbound_port, "public_url": f"http://127.0.0.1:{self.port}"}},
            "log_level": "info", "data_dir": str(tmp / f"{name}-data"),
            "sites": [{"site_id": "acme", "name": "Acme", "hosts": ["www.acme.example"], "sinks": [
                {"type": "email", "name": "nurture", "from_address": "Sam at Acme <sam@acme.example>",
                 "reply_domain": "reply.acme.example", "owner_address": OWNER, "steps": steps,
                 "smtp": {"host": "127.0.0.1", "port": mail.port, "starttls": False},
                 "dkim": {"selector": "ls1", "private_key_path": str(DATA / "dkim-test.pem")},
                 "filter": {"min_identity_confidence": 0.8, "min_tier": "B1"}},
                {"type": "slack", "name": "slack", "webhook_url": f"{receivers.url}/slack"},
                {"type": "hubspot", "name": "hubspot", "token": HUBSPOT_TOKEN, "base_url": receivers.url},
            ]}],
        }
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        create_topics(load_settings(self.config_path))
        self.processes: list[_CliProcess] = []
        self.redis = redis.Redis.from_url(redis_url)

    def start(self, tag: str) -> _CliProcess:
        p = _CliProcess(["sinks", "-c", str(self.config_path)], self.tmp, f"{self.name}-{tag}").start()
        self.processes.append(p)
        wait_until(lambda: _healthy(f"http://127.0.0.1:{self.port}/health"), 60, "the sinks process", p.log_tail)
        return p

    def person(self, pid: str, consent: str = "granted") -> str:
        address = f"{pid}@brightpath-analytics.example"
        self.redis.hset(IdentityKeys("acme").person(pid), mapping={
            "created": 1, "f:email": address, "f:name": f"Dana {pid.upper()}", "f:title": "CFO",
            "f:email_consent": consent})
        return address

    def produce(self, leads: list[dict[str, Any]]) -> None:
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
        for lead in leads:
            producer.send(self.topics["qualified_leads"], CODEC.encode("QualifiedLead", lead),
                          key=f"{lead['site_id']}|{lead['account']}".encode())
        producer.flush()
        producer.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log_tail(40)}" for p in self.processes)

    def stop(self) -> None:
        for p in self.processes:
            if p.alive():
                p.terminate()


def lead_for(pid: str, confidence: float = 0.9, tier: str = "A2") -> dict[str, Any]:
    lead = json.loads(json.dumps(EXAMPLE))
    lead.update(lead_id=str(uuid.uuid4()), identity_level="person", tier=tier, tstamp=int(time.time() * 1000),
                account=f"c:brightpath-analytics.example:{pid}",
                person={"person_id": pid, "confidence": confidence, "seniority": "c_level", "department": "finance",
                        "evidence": []})
    return lead


@pytest.fixture
def rig(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
        unique_name: Any) -> Iterator[NurtureRig]:
    receivers = Receivers().start_thread()
    mail = MailReceiver().start()
    r = NurtureRig(kafka_broker, redis_server.url, tmp_path, unique_name("nurture"), receivers, mail)
    try:
        yield r
    finally:
        r.stop()
        mail.stop()
        receivers.stop_thread()


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_sequence_survives_kill_9_and_a_positive_reply_hands_off_everywhere(rig: NurtureRig) -> None:
    dana = rig.person("p-dana")
    low = rig.person("p-low")                 # below the sequence's minimum identity confidence
    no_consent = rig.person("p-noc", consent="")
    first = rig.start("first")
    t0 = time.monotonic()
    rig.produce([lead_for("p-dana"), lead_for("p-low", confidence=0.5), lead_for("p-noc"),
                 lead_for("p-dana")])         # a second lead of Dana: no second sequence
    wait_until(lambda: len(rig.mail.to(dana)) >= 1, 30, "step 1", rig.logs)
    step1_after = time.monotonic() - t0
    seq_key = f"{rig.name}:sinks:nurture:seq:" + str(_parse(rig.mail.to(dana)[0])["Reply-To"])[6:26]
    wait_until(lambda: rig.redis.hexists(seq_key, "sent:0"), 10, "step 1 recorded", rig.logs)
    first.kill()                              # kill -9 between step 1 and step 2
    [raw1] = rig.mail.to(dana)
    assert dkim.verify(raw1, dnsfunc=_dns), "the DKIM signature must verify against the site's key"
    m1 = _parse(raw1)
    assert m1["Subject"] == "Brightpath Analytics Inc.: a question"
    assert m1["From"] == "Sam at Acme <sam@acme.example>"
    assert m1["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = "".join(str(m1["List-Unsubscribe"]).split())
    assert unsub.startswith("<mailto:unsubscribe+") and f"<http://127.0.0.1:{rig.port}/unsubscribe/" in unsub
    assert "Unsubscribe: http://127.0.0.1:" in m1.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    reply_to = str(m1["Reply-To"])
    assert reply_to.startswith("reply+") and reply_to.endswith("@reply.acme.example")

    rig.start("second")
    wait_until(lambda: len(rig.mail.to(dana)) >= 2, 60, "step 2 after the restart", rig.logs)
    step2_after = time.monotonic() - t0
    m2 = _parse(rig.mail.to(dana)[1])
    assert m2["Subject"] == "Following up" and m2["In-Reply-To"] == m1["Message-ID"]
    assert step2_after - step1_after >= STEP2_DELAY - 1.0, (step1_after, step2_after)

    # Dana answers through the inbound listener (what the reply domain's MX points at)
    reply = (f"From: Dana P-DANA <{dana}>\r\nTo: {reply_to}\r\nSubject: Re: Following up\r\n"
             f"In-Reply-To: {m2['Message-ID']}\r\nMessage-ID: <r1@brightpath-analytics.example>\r\n"
             f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\n\r\n"
             "Yes, interested. Can you send pricing for 50 seats and book a call next week?\r\n\r\n"
             "On Fri, Sam wrote:\r\n> Hi Dana, any thoughts?\r\n")
    with smtplib.SMTP("127.0.0.1", rig.inbound_port, timeout=30) as smtp:
        refused = smtp.sendmail(dana, [reply_to], reply.encode())
        assert refused == {}
        smtp.mail(dana)
        code, _ = smtp.rcpt("stranger@elsewhere.example")    # never an open relay
        assert code == 550
        smtp.rset()

    # 1. the owner's mailbox
    wait_until(lambda: len(rig.mail.to(OWNER)) == 1, 30, "the hand-off email", rig.logs)
    handoff = _parse(rig.mail.to(OWNER)[0])
    text = handoff.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert handoff["Subject"].startswith("Positive reply from Dana P-DANA (Brightpath Analytics Inc.")
    assert "Who: Dana P-DANA, CFO, p-dana@brightpath-analytics.example" in text
    assert "What they asked: Yes, interested. Can you send pricing for 50 seats and book a call next week?" in text
    assert f"Why they were a lead: {EXAMPLE['summary']}" in text
    assert "you looked at our pricing" in text and "any thoughts?" in text      # the whole thread
    assert dkim.verify(rig.mail.to(OWNER)[0], dnsfunc=_dns)
    # 2. Slack
    wait_until(lambda: any("Positive reply" in p["text"] for p in rig.receivers.slack_payloads), 30,
               "the Slack hand-off", rig.logs)
    [slack] = [p for p in rig.receivers.slack_payloads if "Positive reply" in p["text"]]
    assert "50 seats" in json.dumps(slack["blocks"])
    # 3. the HubSpot note on the contact
    wait_until(lambda: len(rig.receivers.notes) == 1, 30, "the HubSpot note", rig.logs)
    [note] = rig.receivers.notes
    assert rig.receivers.contacts[note["contact"]]["email"] == dana
    assert "50 seats" in note["hs_note_body"] and not rig.receivers.hubspot_errors

    # the sequence stopped: step 3 never comes
    time.sleep(STEP3_DELAY + 2)
    assert len(rig.mail.to(dana)) == 2, [(_parse(r)["Subject"]) for r in rig.mail.to(dana)]
    assert rig.mail.to(low) == [] and rig.mail.to(no_consent) == []
    metrics = httpx.get(f"http://127.0.0.1:{rig.port}/metrics", timeout=5).text
    assert 'leadstream_sink_nurture_inbound_total{kind="positive",sink="acme/nurture"} 1.0' in metrics
    print("NURTURE", json.dumps({"step1_s": round(step1_after, 2), "step2_s": round(step2_after, 2),
                                 "messages_to_dana": len(rig.mail.to(dana))}))


def test_the_unsubscribe_link_suppresses_the_person_and_stops_the_sequence(rig: NurtureRig) -> None:
    ann = rig.person("p-ann")
    rig.start("only")
    rig.produce([lead_for("p-ann")])
    wait_until(lambda: len(rig.mail.to(ann)) >= 1, 30, "step 1", rig.logs)
    m1 = _parse(rig.mail.to(ann)[0])
    url = "".join(str(m1["List-Unsubscribe"]).split()).split(",<")[1].rstrip(">")
    page = httpx.get(url, timeout=5)
    assert page.status_code == 200 and "<form method=\"post\">" in page.text and "p***@" in page.text
    assert httpx.get(url[:-1] + ("0" if url[-1] != "0" else "1"), timeout=5).status_code == 404  # tampered
    one_click = httpx.post(url, content=b"List-Unsubscribe=One-Click", timeout=5,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert one_click.status_code == 200 and "unsubscribed" in one_click.text
    suppressed = {m.decode() for m in rig.redis.smembers(f"{rig.name}:sinks:nurture:suppressed:acme")}
    assert hash_email(ann, SALT) in suppressed
    time.sleep(STEP2_DELAY + 2)
    assert len(rig.mail.to(ann)) == 1          # step 2 never sent
    rig.produce([lead_for("p-ann")])           # nor a new sequence from a later lead
    time.sleep(3)
    assert len(rig.mail.to(ann)) == 1
