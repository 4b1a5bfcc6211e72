"""Erasure (``leadstream forget``): remove one person from everything Leadstream keeps about them.

Given a site and one identifier (an email, a visitor id or a person id), :func:`forget` looks the
person up in the site's identity graph (their person id, visitor ids and email hashes; a visitor
id no person owns is erased on its own), then

1. removes them from the prospect list (the ``v:<visitor>`` accounts, the person from every
   account's people, their visitors' sessions from company accounts);
2. writes tombstones (null values) for the keys that are the person's own in the compacted
   topics, so compaction replaces their latest values (:func:`tombstones`):
   ``lead-scores`` keyed ``site|v:<visitor>`` (an unresolved visitor's own account) and the
   worker's table changelogs ``<app_id>-visitor-state-changelog`` (``site|<visitor>``) and
   ``<app_id>-account-state-changelog`` (``site|v:<visitor>``), keys encoded as the Faust
   table writes them, each to the partition the table writes it to;
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

Idempotent: forgetting again finds nothing in Redis, writes the same tombstones again and adds
one more audit entry. The append-only topics (``pixel-events``, ``visits``, ``qualified-leads``,
``bad-events``) cannot be rewritten: the person's records stay there until the topic's retention
deletes them (README, "Erasure").

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

import hashlib
import hmac
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from ..redis_client import async_client, sync_client
from ..core.identity import IdType, hash_email, normalize_email
from ..settings import Settings, SettingsError
from ..topology import changelog_topic, partition_for, topic_specs, visitor_key

__all__ = ["Kind", "KINDS", "ErasureSubject", "ErasureHook", "register_hook", "load_hooks", "Tombstone",
           "tombstones", "faust_table_key", "audit_key", "audit_hash", "ForgetReport", "forget", "read_audit",
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


# ---- tombstones ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tombstone:
    topic: str
    partition: int
    key: bytes


def faust_table_key(key: str) -> bytes:
    """A table key as the stages' Faust tables write it to their changelog (the ``json`` codec:
    ``app.Table`` without a key type), so a tombstone replaces exactly that key."""
    from faust.serializers import codecs
    encoded: bytes = codecs.dumps("json", key)
    return encoded


def tombstones(settings: Settings, site_id: str, visitor_ids: Sequence[str]) -> list[Tombstone]:
    """The compacted-topic keys that are the visitors' own, each on the partition it is written to:
    ``lead-scores`` (raw key ``site|v:<visitor>``, partitioned like the account stage sends it) and
    the two table changelogs (the source record's partition: ``site|<visitor>`` for the visitor
    table, ``site|v:<visitor>`` for the account table, as the collector and the visitor stage
    partition them)."""
    specs = {s.logical: s for s in topic_specs(settings)}
    app_id = settings.stages.app_id
    out: list[Tombstone] = []
    for vid in dict.fromkeys(v for v in visitor_ids if v):
        vkey = visitor_key(site_id, vid)
        akey = f"{site_id}|v:{vid}"
        out.append(Tombstone(specs["lead_scores"].name, partition_for(akey, specs["lead_scores"].partitions),
                             akey.encode()))
        out.append(Tombstone(changelog_topic(app_id, "visitor"),
                             partition_for(vkey, specs["pixel_events"].partitions), faust_table_key(vkey)))
        out.append(Tombstone(changelog_topic(app_id, "account"),
                             partition_for(akey, specs["visits"].partitions), faust_table_key(akey)))
    return out


async def write_tombstones(settings: Settings, stones: Sequence[Tombstone]) -> int:
    """Send every tombstone (acks=all) and wait for all of them; returns how many were sent."""
    if not stones:
        return 0
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", request_timeout_ms=30_000)
    await producer.start()
    try:
        futures = [await producer.send(s.topic, value=None, key=s.key, partition=s.partition) for s in stones]
        for f in futures:
            await f
        await producer.flush()
    finally:
        await producer.stop()
    return len(stones)


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
    tombstones: int = 0
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
                 f"  compacted topics: {self.tombstones} tombstones for {self.visitors} visitor ids",
                 f"  prospect list: {self.view_accounts_removed} accounts removed, "
                 f"{self.view_accounts_updated} accounts updated",
                 f"  sinks: {self.sequences_stopped} sequences stopped"
                 + (f" ({', '.join(self.hooks)})" if self.hooks else " (no erasure hooks registered)"),
                 f"  audit: {audit_key(self.site_id)} subject {self.subject[:16]}..."]
        lines += [f"  hook failed: {e}" for e in self.hook_errors]
        return "\n".join(lines)


def read_audit(redis_url: str, site_id: str, count: int = 100) -> list[dict[str, Any]]:
    """The newest ``count`` audit entries of a site, newest first."""
    import redis

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


async def _downstream(settings: Settings, redis_url: str, subject: ErasureSubject, report: ForgetReport) -> None:
    """The prospect list, then the tombstones (``leads serve`` also drops an account on its tombstone:
    clearing the list first keeps the counts exact)."""
    import redis.asyncio as aredis

    from ..leads.store import LeadsView

    view = LeadsView(async_client(redis_url, socket_timeout=10, socket_connect_timeout=10))
    try:
        report.view_accounts_removed += await view.remove(subject.site_id, list(subject.accounts))
        if subject.person_id:
            report.view_accounts_updated += await view.forget_person(subject.site_id, subject.person_id)
        report.view_accounts_updated += await view.forget_visitors(subject.site_id, subject.visitor_ids)
    finally:
        await view.aclose()
    report.visitors += len(subject.visitor_ids)
    report.tombstones += await write_tombstones(settings, tombstones(settings, subject.site_id, subject.visitor_ids))


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
        raise ForgetError("kafka.bootstrap_servers is not set: tombstones go to the compacted topics")
    try:
        salt = settings.email_salt(site)
    except SettingsError as exc:
        raise ForgetError(str(exc)) from None
    target, normalised = _target(kind, value)
    t = int(time.time() * 1000) if now_ms is None else now_ms
    report = ForgetReport(site_id, kind, audit_hash(salt, kind, normalised), t)
    hooks = list(load_hooks(settings) if hooks is None else hooks)

    import redis.asyncio as aredis

    from ..enrich.identity_store import IdentityStore

    identity = IdentityStore.from_url(redis_url)
    try:
        # Downstream first, the graph last: until the graph forgets, running again finds everything again.
        found = await identity.lookup_person(site_id, target, salt=salt)
        subject = _subject(site_id, kind, normalised, salt, found.person_id, found.visitor_ids, found.identifiers)
        await _downstream(settings, redis_url, subject, report)
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
                                                              accounts=tuple(f"v:{v}" for v in late)), report)

    client = async_client(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        await client.xadd(audit_key(site_id), report.fields())  # type: ignore[arg-type]
    finally:
        await client.aclose()
    log.info("forget %s on %s: %s", kind, site_id, report.fields())
    return report
