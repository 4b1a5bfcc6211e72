"""Erasure (``leadstream forget``): remove one person from everything Leadstream keeps about them.

Given a site and one identifier (an email, a visitor id or a person id), :func:`forget` looks the
person up in the site's identity graph (their person id, visitor ids and email hashes; a visitor
id no person owns is erased on its own), then

1. removes them from the prospect list (the ``v:<visitor>`` accounts, the person from every
   account's people, their visitors' sessions from company accounts);
2. publishes one erasure record per visitor to ``pixel-events`` (:func:`erasure_records`), on the
   partition of the visitor's ``site|visitor`` key. The running workers apply it in order with the
   visitor's events (:mod:`pipeline.stages.erasure`): the visitor stage deletes the visitor's state
   and forwards the erasure to every account the visitor contributed to; the account stage removes
   the visitor's share and the person from each, re-scores it or deletes it. Their table deletions
   are the changelog tombstones, and the account stage writes the ``lead-scores`` tombstones or
   new scores: the workers' live tables, their changelogs and ``lead-scores`` change together
   (a tombstone written into a changelog from outside would not reach a running worker, which
   would write the old value back). Workers that are down apply it when they are back;
3. asks every registered :class:`ErasureHook` (the sinks' email sequences) to stop what it runs
   for the person;
4. erases the person from the identity graph in Redis
   (:meth:`~pipeline.enrich.identity_store.IdentityStore.forget`): every identifier link, the
   profile, the id set, and every identity-log entry naming them. Last, so that a run that fails
   half way (Kafka or Redis away) finds everything again when run again;
5. appends an audit entry to ``ls:{<site>}:audit`` (a Redis stream): time, site, the kind of
   identifier, an HMAC of it under the site's salt (so "was X erased?" can be answered by
   whoever holds the salt and X) and counts of what was removed. No email, visitor or person id
   in clear. :func:`read_audit` lists it (``leadstream forget --audit``).

Idempotent: forgetting again finds nothing in Redis, publishes erasures again for the visitors it
still finds (harmless: nothing is left to remove) and adds one more audit entry. The append-only
topics (``pixel-events``, ``visits``, ``qualified-leads``, ``bad-events``) cannot be rewritten:
the person's records stay there until the topic's retention deletes them (README, "Erasure").

The hook interface for sinks: a sink that keeps per-person state (an email sequence) implements
:class:`ErasureHook` and registers a factory with :func:`register_hook` from a module
``pipeline.sinks.erasure`` (imported here when present), e.g.::

    # pipeline/sinks/erasure.py
    from pipeline.ops.forget import ErasureSubject, register_hook

    class StopSequences:
        name = "email-sequences"
        def __init__(self, settings): ...
        async def forget(self, subject: ErasureSubject) -> int:
            ...  # stop and delete every sequence of subject.person_id / subject.email_hashes
            return stopped

    register_hook(lambda settings: StopSequences(settings))
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from ..codec import Codec, make_codec
from ..core.erasure import person_token
from ..core.identity import IdType, hash_email, normalize_email
from ..redis_client import async_client, sync_client
from ..settings import Settings, SettingsError
from ..topology import partition_for, topic_specs, visitor_key

__all__ = ["Kind", "KINDS", "ErasureSubject", "ErasureHook", "register_hook", "load_hooks", "ErasureRecord",
           "erasure_records", "write_records", "audit_key", "audit_hash", "ForgetReport", "forget", "read_audit",
           "ForgetError"]

log = logging.getLogger(__name__)

Kind = Literal["email", "visitor", "person"]
KINDS: tuple[Kind, ...] = ("email", "visitor", "person")
HOOKS_MODULE = "pipeline.sinks.erasure"


class ForgetError(ValueError):
    """The request cannot be run (unknown site, bad identifier, missing settings): a clear message."""


# ---- the hook a sink implements ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ErasureSubject:
    """Who is being erased, as the sinks may have stored them. ``email`` only when the request
    named one (normalised); ``email_hashes``: the salted hashes the identity graph held."""
    site_id: str
    person_id: str | None
    visitor_ids: tuple[str, ...]
    email: str | None = None
    email_hashes: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()          # the person's own accounts (``v:<visitor>``)


class ErasureHook(Protocol):
    """Stops whatever a sink runs for a person (an email sequence). Must be idempotent."""
    name: str

    async def forget(self, subject: ErasureSubject) -> int:
        """Stop and delete the person's state; return how many items (sequences) were stopped."""
        ...


HookFactory = Callable[[Settings], "ErasureHook | None"]
_HOOK_FACTORIES: list[HookFactory] = []


def register_hook(factory: HookFactory) -> None:
    """Register a factory called with the settings at each ``forget`` (None: not configured)."""
    if factory not in _HOOK_FACTORIES:
        _HOOK_FACTORIES.append(factory)


def load_hooks(settings: Settings) -> list[ErasureHook]:
    """The hooks of every registered factory, after importing :data:`HOOKS_MODULE` when it exists."""
    try:
        importlib.import_module(HOOKS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in (HOOKS_MODULE, HOOKS_MODULE.rsplit(".", 1)[0]):
            raise
    hooks = [factory(settings) for factory in _HOOK_FACTORIES]
    return [h for h in hooks if h is not None]


# ---- erasure records -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """An ``Erasure`` in a ``CollectorBatch``, to send to the visitor's partition of ``pixel-events``."""
    topic: str
    partition: int
    key: bytes
    value: bytes


def erasure_records(settings: Settings, site_id: str, visitor_ids: Sequence[str], person_id: str | None, *,
                    salt: str, now_ms: int, accounts: Sequence[str] = (),
                    codec: Codec | None = None) -> list[ErasureRecord]:
    """One erasure record per visitor, keyed ``site|visitor`` on the ``pixel-events`` partition that
    holds the visitor's events and state (:func:`~pipeline.topology.partition_for`, as the collector
    writes it). The stages apply it in order (:mod:`pipeline.stages.erasure`); the person is named
    by their token, never by id (:func:`~pipeline.core.erasure.person_token`). ``accounts``: more
    accounts to erase the visitor and the person from (the prospect list's), besides those the
    visitor's state lists."""
    spec = next(s for s in topic_specs(settings) if s.logical == "pixel_events")
    codec = codec or make_codec(settings.kafka.schema_registry_url)
    token = person_token(salt, person_id) if person_id else None
    out: list[ErasureRecord] = []
    for vid in dict.fromkeys(v for v in visitor_ids if v):
        key = visitor_key(site_id, vid)
        erasure: dict[str, Any] = {"erasure_id": str(uuid.uuid4()), "site_id": site_id, "visitor_id": vid,
                                   "person_token": token, "accounts": list(dict.fromkeys(accounts)),
                                   "requested_at": now_ms}
        value = codec.encode("CollectorBatch", {"erasures": [erasure], "payloads": []}, topic=spec.name)
        out.append(ErasureRecord(spec.name, partition_for(key, spec.partitions), key.encode(), value))
    return out


async def write_records(settings: Settings, records: Sequence[ErasureRecord]) -> int:
    """Send every record (acks=all) and wait for all of them; returns how many were sent."""
    if not records:
        return 0
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", request_timeout_ms=30_000)
    await producer.start()
    try:
        futures = [await producer.send(r.topic, value=r.value, key=r.key, partition=r.partition) for r in records]
        for f in futures:
            await f
        await producer.flush()
    finally:
        await producer.stop()
    return len(records)


# ---- audit ----------------------------------------------------------------------------------------

def audit_key(site_id: str, namespace: str = "ls") -> str:
    """The site's erasure audit stream (same hash tag as its identity graph)."""
    return f"{namespace}:{{{site_id}}}:audit"


def audit_hash(salt: str, kind: Kind, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` under the site's salt: not the graph's email hash, so the
    audit never holds a value the graph used; reproducible by whoever has the salt and the value."""
    return hmac.new(salt.encode("utf-8"), f"audit:{kind}:{value}".encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass
class ForgetReport:
    """What one erasure did (the audit entry, without personal data)."""
    site_id: str
    kind: Kind
    subject: str                     # audit_hash of the identifier
    t: int
    person_found: bool = False
    identifiers_removed: int = 0
    log_entries_removed: int = 0
    visitors: int = 0
    erasure_records: int = 0
    view_accounts_removed: int = 0
    view_accounts_updated: int = 0
    sequences_stopped: int = 0
    hooks: list[str] = field(default_factory=list)
    hook_errors: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, str]:
        return {k: json.dumps(v) if isinstance(v, list) else str(int(v) if isinstance(v, bool) else v)
                for k, v in asdict(self).items()}

    def summary(self) -> str:
        found = "a person" if self.person_found else "no person in the identity graph"
        lines = [f"forgot {found} ({self.kind}) on site {self.site_id}",
                 f"  identity graph: {self.identifiers_removed} identifier links, "
                 f"{self.log_entries_removed} log entries removed",
                 f"  stages: {self.erasure_records} erasure records for {self.visitors} visitor ids on "
                 "pixel-events (the workers delete their state and scores, in order)",
                 f"  prospect list: {self.view_accounts_removed} accounts removed, "
                 f"{self.view_accounts_updated} accounts updated",
                 f"  sinks: {self.sequences_stopped} sequences stopped"
                 + (f" ({', '.join(self.hooks)})" if self.hooks else " (no erasure hooks registered)"),
                 f"  audit: {audit_key(self.site_id)} subject {self.subject[:16]}..."]
        lines += [f"  hook failed: {e}" for e in self.hook_errors]
        return "\n".join(lines)


def read_audit(redis_url: str, site_id: str, count: int = 100) -> list[dict[str, Any]]:
    """The newest ``count`` audit entries of a site, newest first."""

    client = sync_client(redis_url, decode_responses=True)
    try:
        entries: Any = client.xrevrange(audit_key(site_id), "+", "-", count=count)
    finally:
        client.close()
    out = []
    for entry_id, fields in entries:
        row: dict[str, Any] = {"id": entry_id}
        for k, v in fields.items():
            row[k] = json.loads(v) if k in ("hooks", "hook_errors") else v
        out.append(row)
    return out


# ---- the erasure -----------------------------------------------------------------------------------

def _target(kind: Kind, value: str) -> tuple[str, str]:
    """(argument for IdentityStore.forget, normalised value for the audit hash)."""
    value = value.strip()
    if not value:
        raise ForgetError(f"--{kind} is empty")
    if kind == "email":
        email = normalize_email(value)
        if email is None:
            raise ForgetError(f"{value!r} is not an email address")
        return email, email
    if kind == "visitor":
        return f"{IdType.visitor.value}:{value}", value
    if "@" in value:
        raise ForgetError("--person takes a person id; use --email for an address")
    return value, value


def _subject(site_id: str, kind: Kind, normalised: str, salt: str, person_id: str | None,
             visitor_ids: Sequence[str], identifiers: Sequence[tuple[IdType, str]]) -> ErasureSubject:
    visitors = tuple(dict.fromkeys([*visitor_ids, *([normalised] if kind == "visitor" else [])]))
    email_hashes = tuple(dict.fromkeys([*([hash_email(normalised, salt)] if kind == "email" else []),
                                        *(v for ty, v in identifiers if ty is IdType.email)]))
    return ErasureSubject(site_id, person_id or (normalised if kind == "person" else None), visitors,
                          normalised if kind == "email" else None, email_hashes, tuple(f"v:{v}" for v in visitors))


async def _downstream(settings: Settings, redis_url: str, subject: ErasureSubject, report: ForgetReport,
                      salt: str, now_ms: int) -> None:
    """The prospect list, then the erasure records (``leads serve`` drops an account on the
    tombstone the account stage writes for it: clearing the list first keeps the counts exact)."""

    from ..leads.store import LeadsView

    view = LeadsView(async_client(redis_url, socket_timeout=10, socket_connect_timeout=10))
    try:
        # the stages also erase from these (a visitor state that no longer lists them: evicted, or older)
        listed = await view.accounts_naming(subject.site_id, subject.person_id, subject.visitor_ids)
        report.view_accounts_removed += await view.remove(subject.site_id, list(subject.accounts))
        if subject.person_id:
            report.view_accounts_updated += await view.forget_person(subject.site_id, subject.person_id)
        report.view_accounts_updated += await view.forget_visitors(subject.site_id, subject.visitor_ids)
    finally:
        await view.aclose()
    report.visitors += len(subject.visitor_ids)
    records = await asyncio.to_thread(erasure_records, settings, subject.site_id, subject.visitor_ids,
                                      subject.person_id, salt=salt, now_ms=now_ms, accounts=listed)
    report.erasure_records += await write_records(settings, records)


async def forget(settings: Settings, site_id: str, kind: Kind, value: str, *,
                 hooks: Sequence[ErasureHook] | None = None, now_ms: int | None = None) -> ForgetReport:
    """Erase one person (see the module doc). Raises :class:`ForgetError` before touching
    anything when the request cannot run. Hook failures do not stop the erasure: they are
    recorded in the report and the audit (run ``forget`` again once the sink is back)."""
    site = settings.site(site_id)
    if site is None:
        known = ", ".join(s.site_id for s in settings.sites) or "none configured"
        raise ForgetError(f"unknown site {site_id!r} (sites: {known})")
    if kind not in KINDS:
        raise ForgetError(f"unknown identifier kind {kind!r}: one of {', '.join(KINDS)}")
    redis_url = settings.redis.url_value
    if not redis_url:
        raise ForgetError("redis.url is not set (LEADSTREAM_REDIS__URL): the identity graph lives in Redis")
    if not settings.kafka.bootstrap_servers:
        raise ForgetError("kafka.bootstrap_servers is not set: the erasure records go to pixel-events")
    try:
        salt = settings.email_salt(site)
    except SettingsError as exc:
        raise ForgetError(str(exc)) from None
    target, normalised = _target(kind, value)
    t = int(time.time() * 1000) if now_ms is None else now_ms
    report = ForgetReport(site_id, kind, audit_hash(salt, kind, normalised), t)
    hooks = list(load_hooks(settings) if hooks is None else hooks)


    from ..enrich.identity_store import IdentityStore

    identity = IdentityStore.from_url(redis_url)
    try:
        # Downstream first, the graph last: until the graph forgets, running again finds everything again.
        found = await identity.lookup_person(site_id, target, salt=salt)
        subject = _subject(site_id, kind, normalised, salt, found.person_id, found.visitor_ids, found.identifiers)
        await _downstream(settings, redis_url, subject, report, salt, t)
        for hook in hooks:
            report.hooks.append(hook.name)
            try:
                report.sequences_stopped += int(await hook.forget(subject))
            except Exception as exc:  # one sink down must not leave the rest of the erasure undone
                log.error("erasure hook %s failed", hook.name, exc_info=True)
                report.hook_errors.append(f"{hook.name}: {type(exc).__name__}")
        result = await identity.forget(site_id, target, salt=salt, tstamp=t)
    finally:
        await identity.aclose()
    report.person_found = result.person_id is not None
    report.identifiers_removed = result.links_removed
    report.log_entries_removed = result.log_entries_removed
    late = [v for v in result.visitor_ids if v not in subject.visitor_ids]
    if late:  # linked to the person while this ran: erase those downstream too
        await _downstream(settings, redis_url, ErasureSubject(site_id, result.person_id, tuple(late),
                                                              accounts=tuple(f"v:{v}" for v in late)), report, salt, t)

    client = async_client(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        await client.xadd(audit_key(site_id), report.fields())  # type: ignore[arg-type]
    finally:
        await client.aclose()
    log.info("forget %s on %s: %s", kind, site_id, report.fields())
    return report
