"""The identity graph in Redis: the adapter for :mod:`pipeline.core.identity`.

The rules live in core as pure functions over an :class:`IdentitySnapshot`; this module
loads snapshots and applies the :data:`IdentityOp` lists they return. Every operation is
written once, as a *plan* (a generator that yields the commands of one round trip and
receives their replies), and run by one of two thin clients: :class:`IdentityStore`
(``redis.asyncio``, for the stage workers) and :class:`SyncIdentityStore` (``redis``, for
the CLI: import, forget). Both expose the same methods and count their round trips in
``round_trips``.

Key layout per site ``S`` (namespace ``ls``; ``{S}`` is a Redis Cluster hash tag, so one
site's graph lives in one slot and MULTI / Lua stay legal on a cluster)::

    ls:{S}:id:<type>:<value>       hash    p: person id, s: link source (identify | login |
                                           form | import | email_click | merge)
    ls:{S}:person:<pid>            hash    created (ms), merges, f:<profile field> ...,
                                           v:<profile field> = 1 when a verified source (import,
                                           signed call) set it: browser traits never overwrite it
    ls:{S}:person:<pid>:ids        set     <type>:<value> of every identifier of the person
    ls:{S}:identity-log            stream  kind, t, detail, ids (JSON list of "<type>:<value>"),
                                           persons (JSON list); MAXLEN ~ 100000
    ls:{S}:identity-log:applied:<sha256>   string  replay guard of one applied op list (TTL)

``<type>`` is an :class:`IdType` value (user_id, crm_id, email, email_click, visitor).
Email identifiers are always salted sha256 hex (core hashes them); a plain address is
stored only as the ``f:email`` profile field of a person imported from the site
owner's own data (``apply(..., allow_plain_email=True)``).

Contracts:

- :meth:`load_snapshot`: at most two pipelined round trips per batch (links, then the
  persons they point to), never one per identifier; none for an empty batch.
- :meth:`apply`: one ``MULTI``/``EXEC`` round trip per op list; atomic; idempotent under
  replay (applying the same op list twice leaves the same graph, and the log entries
  are appended once while the replay guard lives). Writes are guarded: a link is
  only (re)pointed when it is free, already this person's, or dangling, so a
  concurrent writer on another partition cannot split an identifier between two
  persons (first writer wins; the loser is logged as a conflict and self-heals on
  the next identify).
- :meth:`resolve_visitors`: the two round trips of :meth:`load_snapshot`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.core.identity import (
    DEFAULT_IDENTITY,
    CreatePerson,
    ForgetPerson,
    Identifier,
    IdentityConfig,
    IdentityOp,
    IdentityResult,
    IdentitySnapshot,
    IdType,
    Link,
    LinkRecord,
    LogEntry,
    Merge,
    PersonRecord,
    SetProfile,
    apply_identity_events,
    forget_person,
    hash_email,
    identifiers_to_load,
    is_blocked,
    normalize_email,
    resolve_visitor,
)
from pipeline.core.events import TrackedEvent
from pipeline.core.model import PersonResolution
from pipeline.redis_client import AsyncRedisClient, RedisClient, async_client, sync_client

__all__ = [
    "IdentityKeys", "RoundTrip", "ForgetResult", "IdentityStore", "SyncIdentityStore",
    "DEFAULT_LOG_MAXLEN", "DEFAULT_REPLAY_GUARD_TTL_S", "LOG_KINDS", "MERGE_LOG_KINDS",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LOG_MAXLEN = 100_000
DEFAULT_REPLAY_GUARD_TTL_S = 7 * 24 * 3600
LOG_KINDS = frozenset({"merge", "blocked", "limit", "double_identified", "merge_cap", "unknown_click",
                       "invalid_email", "forget"})
MERGE_LOG_KINDS = frozenset({"merge", "double_identified", "merge_cap", "limit"})
PROFILE_PREFIX = "f:"
VERIFIED_PREFIX = "v:"
_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_EMAIL_HASH = re.compile(r"^[0-9a-f]{64}$")
_LOG_PAGE = 1000

# ---- Lua, run inside the MULTI (atomic with the rest; the keys share the site's slot) -----------

# KEYS: id key, person hash, person id set. ARGV: pid, source, member, person key prefix.
# Points the identifier at pid unless it belongs to another *existing* person.
_LINK_LUA = """
local cur = redis.call('HGET', KEYS[1], 'p')
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. cur) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[1], 's', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
"""

# KEYS: src hash, src ids, dst hash, dst ids, id key of each moved identifier.
# ARGV: from pid, into pid, merges_after, member of each moved identifier (KEYS[i] <-> ARGV[i-1]).
_MERGE_LUA = """
local moved = 0
for i = 5, #KEYS do
  local cur = redis.call('HGET', KEYS[i], 'p')
  if (not cur) or cur == ARGV[1] or cur == ARGV[2] then
    redis.call('HSET', KEYS[i], 'p', ARGV[2])
    redis.call('HSETNX', KEYS[i], 's', 'merge')
    redis.call('SADD', KEYS[4], ARGV[i - 1])
    moved = moved + 1
  end
end
local src = redis.call('HGETALL', KEYS[1])
local h = {}
for j = 1, #src, 2 do h[src[j]] = src[j + 1] end
for k, val in pairs(h) do
  if string.sub(k, 1, 2) == 'f:' then
    local mark = 'v:' .. string.sub(k, 3)
    if h[mark] and redis.call('HEXISTS', KEYS[3], mark) == 0 then
      redis.call('HSET', KEYS[3], k, val, mark, '1')
    else
      redis.call('HSETNX', KEYS[3], k, val)
    end
  end
end
redis.call('HSET', KEYS[3], 'merges', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
return moved
"""

# KEYS: person hash. ARGV: field, value pairs. Browser traits: sets each profile field a verified
# source has not set (no v:<field> mark), atomically with the check.
_CLAIM_PROFILE_LUA = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], 'v:' .. ARGV[i]) == 0 then
    redis.call('HSET', KEYS[1], 'f:' .. ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: person hash, person ids, id keys listed by the op. ARGV: pid, id key prefix.
# Deletes the listed and the set's identifiers that still point at pid, then the person.
_FORGET_LUA = """
local removed = 0
local function drop(k)
  if redis.call('HGET', k, 'p') == ARGV[1] then removed = removed + redis.call('DEL', k) end
end
for i = 3, #KEYS do drop(KEYS[i]) end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do drop(ARGV[2] .. m) end
redis.call('DEL', KEYS[1], KEYS[2])
return removed
"""

# KEYS: replay guard, log stream. ARGV: guard ttl, maxlen, then 5 per entry.
_LOG_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local n = 0
for i = 3, #ARGV, 5 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'kind', ARGV[i], 't', ARGV[i + 1],
             'detail', ARGV[i + 2], 'ids', ARGV[i + 3], 'persons', ARGV[i + 4])
  n = n + 1
end
return n
"""


# ---- key layout and encoding ----------------------------------------------------------------------

def check_site(site_id: str) -> str:
    """The site id, or ValueError when it cannot be part of a key (``[A-Za-z0-9_.-]``, 1-64)."""
    if not _SITE_ID.match(site_id):
        raise ValueError(f"invalid site id {site_id!r}")
    return site_id


def member(identifier: Identifier) -> str:
    """``<type>:<value>``: an identifier as a set member and id-key suffix."""
    return f"{identifier[0].value}:{identifier[1]}"


def parse_member(raw: str) -> Identifier | None:
    """The identifier of a ``<type>:<value>`` member; None for an unknown type."""
    kind, _, value = raw.partition(":")
    try:
        return IdType(kind), value
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class IdentityKeys:
    """The Redis key layout of one site's identity graph (see the module docstring)."""
    site_id: str
    namespace: str = "ls"

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:{{{self.site_id}}}:"

    @property
    def id_prefix(self) -> str:
        return f"{self.prefix}id:"

    @property
    def person_prefix(self) -> str:
        return f"{self.prefix}person:"

    def link(self, identifier: Identifier) -> str:
        return f"{self.id_prefix}{member(identifier)}"

    def person(self, person_id: str) -> str:
        return f"{self.person_prefix}{person_id}"

    def person_ids(self, person_id: str) -> str:
        return f"{self.person_prefix}{person_id}:ids"

    @property
    def log(self) -> str:
        return f"{self.prefix}identity-log"

    def replay_guard(self, digest: str) -> str:
        return f"{self.prefix}identity-log:applied:{digest}"


def _s(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _decode_hash(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {_s(k): _s(v) for k, v in raw.items()}
    items = list(raw or [])  # a flat [k, v, k, v] reply
    return {_s(items[i]): _s(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def decode_person(person_id: str, fields: Mapping[str, str], members: Iterable[Any]) -> PersonRecord:
    """A :class:`PersonRecord` from its hash and id set (identifier values sorted per type)."""
    ids: dict[IdType, list[str]] = {}
    for raw in members:
        parsed = parse_member(_s(raw))
        if parsed is None:
            log.warning("person %s: ignoring identifier of unknown type %r", person_id, _s(raw))
            continue
        ids.setdefault(parsed[0], []).append(parsed[1])
    profile = {k[len(PROFILE_PREFIX):]: v for k, v in fields.items() if k.startswith(PROFILE_PREFIX)}
    verified = frozenset(k[len(VERIFIED_PREFIX):] for k in fields if k.startswith(VERIFIED_PREFIX))
    return PersonRecord(person_id, {t: tuple(sorted(vs)) for t, vs in ids.items()},
                        int(fields.get("merges") or 0), int(fields.get("created") or 0), profile, verified)


def _ids_json(ids: Iterable[Identifier]) -> str:
    return json.dumps([member(i) for i in ids], separators=(",", ":"))


def op_to_json(op: IdentityOp) -> dict[str, Any]:
    """A canonical, JSON-able form of one op (used for the replay guard digest)."""
    if isinstance(op, CreatePerson):
        return {"op": "create", "p": op.person_id, "t": op.tstamp}
    if isinstance(op, Link):
        return {"op": "link", "id": member((op.id_type, op.value)), "p": op.person_id, "s": op.source}
    if isinstance(op, Merge):
        return {"op": "merge", "from": op.from_person, "into": op.into_person, "moved": [member(i) for i in op.moved],
                "merges": op.merges_after, "t": op.tstamp}
    if isinstance(op, SetProfile):
        return {"op": "profile", "p": op.person_id, "f": dict(sorted(op.fields.items())), "v": op.verified}
    if isinstance(op, ForgetPerson):
        return {"op": "forget", "p": op.person_id, "ids": [member(i) for i in op.identifiers]}
    return {"op": "log", **op.to_dict()}


def ops_digest(site_id: str, ops: Sequence[IdentityOp]) -> str:
    """sha256 of the site and the canonical op list: equal for a replay of the same list."""
    body = json.dumps([site_id, [op_to_json(op) for op in ops]], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def decode_log_entry(entry_id: Any, fields: Any) -> dict[str, Any]:
    """One stream entry as ``{id, kind, t, detail, ids, persons}``."""
    data = _decode_hash(fields)
    return {"id": _s(entry_id), "kind": data.get("kind", ""), "t": int(data.get("t") or 0),
            "detail": data.get("detail", ""), "ids": json.loads(data.get("ids") or "[]"),
            "persons": json.loads(data.get("persons") or "[]")}


# ---- plans: each yields the commands of one round trip and receives their replies -------------

Command = tuple[str | int | float | bytes, ...]


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """The commands sent in one pipeline; ``transaction`` wraps them in MULTI/EXEC."""
    commands: tuple[Command, ...]
    transaction: bool = False


Plan = Generator[RoundTrip, list[Any], T]


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What an erasure removed. ``person_id`` None: nothing matched."""
    person_id: str | None
    visitor_ids: tuple[str, ...] = ()
    identifiers: tuple[Identifier, ...] = ()
    links_removed: int = 0
    log_entries_removed: int = 0


@dataclass(frozen=True, slots=True)
class _Settings:
    cfg: IdentityConfig = DEFAULT_IDENTITY
    namespace: str = "ls"
    log_maxlen: int = DEFAULT_LOG_MAXLEN
    replay_guard_ttl_s: int = DEFAULT_REPLAY_GUARD_TTL_S


def _expand(identifiers: Iterable[Identifier]) -> list[Identifier]:
    """The links a load reads for ``identifiers``: an email click id may also be the email hash."""
    wanted: dict[Identifier, None] = {}
    for t, v in identifiers:
        for ident in ((t, v), (IdType.email, v)) if t is IdType.email_click else ((t, v),):
            wanted[ident] = None
    return list(wanted)


def _plan_load(keys: IdentityKeys, identifiers: Iterable[Identifier]) -> Plan[IdentitySnapshot]:
    wanted = _expand(identifiers)
    if not wanted:
        return IdentitySnapshot(keys.site_id)
    replies = yield RoundTrip(tuple(("HMGET", keys.link(i), "p", "s") for i in wanted))
    links: dict[Identifier, LinkRecord] = {}
    for ident, reply in zip(wanted, replies):
        pid, source = (list(reply) + [None, None])[:2]
        if pid is not None:
            links[ident] = LinkRecord(_s(pid), _s(source) if source is not None else "unknown")
    pids = list(dict.fromkeys(link.person_id for link in links.values()))
    persons = yield from _plan_persons(keys, pids)
    return IdentitySnapshot(keys.site_id, links, persons)


def _plan_persons(keys: IdentityKeys, pids: Sequence[str]) -> Plan[dict[str, PersonRecord]]:
    if not pids:
        return {}
    commands: list[Command] = []
    for pid in pids:
        commands += [("HGETALL", keys.person(pid)), ("SMEMBERS", keys.person_ids(pid))]
    replies = yield RoundTrip(tuple(commands))
    persons: dict[str, PersonRecord] = {}
    for n, pid in enumerate(pids):
        fields = _decode_hash(replies[2 * n])
        if fields:  # a link to a missing person hash is dangling: core treats it as unlinked
            persons[pid] = decode_person(pid, fields, replies[2 * n + 1] or ())
    return persons


def _check_ops(ops: Sequence[IdentityOp], allow_plain_email: bool) -> None:
    for op in ops:
        if isinstance(op, Link):
            if is_blocked(op.value):
                raise ValueError(f"refusing to store blocked {op.id_type.value} value {op.value!r}")
            if op.id_type is IdType.email and not _EMAIL_HASH.match(op.value):
                raise ValueError("email identifiers must be salted sha256 hex, never plain addresses")
        elif isinstance(op, SetProfile) and "email" in op.fields and not allow_plain_email:
            raise ValueError("a plain email may be stored only from the site owner's import "
                             "(apply(..., allow_plain_email=True))")


def _apply_commands(keys: IdentityKeys, ops: Sequence[IdentityOp], st: _Settings) -> list[Command]:
    commands: list[Command] = []
    entries: list[LogEntry] = []
    for op in ops:
        if isinstance(op, CreatePerson):
            ph = keys.person(op.person_id)
            commands += [("HSETNX", ph, "created", op.tstamp), ("HSETNX", ph, "merges", 0)]
        elif isinstance(op, Link):
            ident = (op.id_type, op.value)
            commands.append(("EVAL", _LINK_LUA, 3, keys.link(ident), keys.person(op.person_id),
                             keys.person_ids(op.person_id), op.person_id, op.source, member(ident),
                             keys.person_prefix))
        elif isinstance(op, Merge):
            commands.append(("EVAL", _MERGE_LUA, 4 + len(op.moved), keys.person(op.from_person),
                             keys.person_ids(op.from_person), keys.person(op.into_person),
                             keys.person_ids(op.into_person), *(keys.link(i) for i in op.moved),
                             op.from_person, op.into_person, op.merges_after, *(member(i) for i in op.moved)))
        elif isinstance(op, SetProfile):
            if op.fields and op.verified:
                flat: list[str] = []
                for k, v in sorted(op.fields.items()):
                    flat += [PROFILE_PREFIX + k, v, VERIFIED_PREFIX + k, "1"]
                commands.append(("HSET", keys.person(op.person_id), *flat))
            elif op.fields:
                pairs: list[str] = []
                for k, v in sorted(op.fields.items()):
                    pairs += [k, v]
                commands.append(("EVAL", _CLAIM_PROFILE_LUA, 1, keys.person(op.person_id), *pairs))
        elif isinstance(op, ForgetPerson):
            commands.append(("EVAL", _FORGET_LUA, 2 + len(op.identifiers), keys.person(op.person_id),
                             keys.person_ids(op.person_id), *(keys.link(i) for i in op.identifiers),
                             op.person_id, keys.id_prefix))
        else:
            entries.append(op)
    if entries:
        args: list[str | int] = [st.replay_guard_ttl_s, st.log_maxlen]
        for e in entries:
            args += [e.kind, e.tstamp, e.detail, _ids_json(e.identifiers), json.dumps(list(e.persons))]
        commands.append(("EVAL", _LOG_LUA, 2, keys.replay_guard(ops_digest(keys.site_id, ops)), keys.log, *args))
    return commands


def _plan_apply(keys: IdentityKeys, ops: Sequence[IdentityOp], st: _Settings,
                allow_plain_email: bool) -> Plan[int]:
    """Returns the number of refused writes (conflicts with a concurrent writer or a replay)."""
    _check_ops(ops, allow_plain_email)
    commands = _apply_commands(keys, ops, st)
    if not commands:
        return 0
    replies = yield RoundTrip(tuple(commands), transaction=True)
    conflicts = sum(1 for cmd, reply in zip(commands, replies) if cmd[1] == _LINK_LUA and reply == 0)
    if conflicts:
        log.warning("identity %s: %d link(s) left alone: the identifier belongs to another existing person "
                    "(a replay, or a concurrent writer won)", keys.site_id, conflicts)
    return conflicts


def _plan_log(keys: IdentityKeys, count: int, kinds: Collection[str] | None) -> Plan[list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    end = "+"
    while len(out) < count:
        page = count if kinds is None else max(count, _LOG_PAGE)
        (reply,) = yield RoundTrip((("XREVRANGE", keys.log, end, "-", "COUNT", page),))
        for entry_id, fields in reply or ():
            entry = decode_log_entry(entry_id, fields)
            if kinds is None or entry["kind"] in kinds:
                out.append(entry)
        if not reply or len(reply) < page:
            break
        end = "(" + _s(reply[-1][0])
    return out[:count]


def _plan_scrub_log(keys: IdentityKeys, person_ids: Collection[str],
                    identifiers: Collection[Identifier]) -> Plan[int]:
    """XDEL every log entry that names one of ``person_ids`` or ``identifiers`` (paged scan)."""
    names = {member(i) for i in identifiers}
    removed = 0
    start = "-"
    while True:
        (reply,) = yield RoundTrip((("XRANGE", keys.log, start, "+", "COUNT", _LOG_PAGE),))
        doomed = [entry["id"] for entry in (decode_log_entry(i, f) for i, f in reply or ())
                  if entry["kind"] != "forget"
                  and (set(entry["persons"]) & set(person_ids) or set(entry["ids"]) & names)]
        if doomed:
            (n,) = yield RoundTrip((("XDEL", keys.log, *doomed),))
            removed += int(n)
        if not reply or len(reply) < _LOG_PAGE:
            return removed
        start = "(" + _s(reply[-1][0])


def _target(value: str, salt: str | None) -> tuple[Identifier | None, str | None]:
    """(identifier, person id) named by ``forget``'s argument."""
    value = value.strip()
    if "@" in value:
        email = normalize_email(value)
        if email is None:
            raise ValueError(f"{value!r} is not an email address")
        if salt is None:
            raise ValueError("forgetting by email needs the site's email salt")
        return (IdType.email, hash_email(email, salt)), None
    kind, sep, rest = value.partition(":")
    if sep and kind in IdType._value2member_map_:
        return (IdType(kind), rest), None
    return None, value


def _plan_subject(keys: IdentityKeys, target: str, salt: str | None) -> Plan[tuple[str, IdentitySnapshot] | None]:
    """The person ``forget``'s argument names and a snapshot holding them; None: no one."""
    ident, pid = _target(target, salt)
    if ident is not None:
        snap = yield from _plan_load(keys, [ident])
        link = snap.links.get(ident) or (snap.links.get((IdType.email, ident[1]))
                                         if ident[0] is IdType.email_click else None)
        if link is None:
            return None
        pid = link.person_id
    assert pid is not None
    persons = yield from _plan_persons(keys, [pid])
    record = persons.get(pid)
    links = {ident: LinkRecord(pid, "unknown")} if ident is not None and record is None else {}
    if record is None and not links:
        return None
    return pid, IdentitySnapshot(keys.site_id, links, persons)


def _plan_lookup(keys: IdentityKeys, target: str, salt: str | None) -> Plan[ForgetResult]:
    """What :func:`_plan_forget` would erase, erasing nothing (counts 0)."""
    found = yield from _plan_subject(keys, target, salt)
    if found is None:
        return ForgetResult(None)
    pid, snapshot = found
    forget_op = next(op for op in forget_person(snapshot, pid, 0).ops if isinstance(op, ForgetPerson))
    return ForgetResult(pid, tuple(v for t, v in forget_op.identifiers if t is IdType.visitor), forget_op.identifiers)


def _plan_forget(keys: IdentityKeys, target: str, salt: str | None, st: _Settings, tstamp: int,
                 scrub_log: bool) -> Plan[ForgetResult]:
    found = yield from _plan_subject(keys, target, salt)
    if found is None:
        return ForgetResult(None)
    pid, snapshot = found
    result = forget_person(snapshot, pid, tstamp)
    forget_op = next(op for op in result.ops if isinstance(op, ForgetPerson))
    commands = _apply_commands(keys, result.ops, st)
    replies = yield RoundTrip(tuple(commands), transaction=True)
    removed = sum(int(r or 0) for c, r in zip(commands, replies) if c[1] == _FORGET_LUA)
    scrubbed = 0
    if scrub_log:
        scrubbed = yield from _plan_scrub_log(keys, [pid], forget_op.identifiers)
    visitors = tuple(v for t, v in forget_op.identifiers if t is IdType.visitor)
    log.info("identity %s: forgot person %s (%d identifiers, %d log entries)", keys.site_id, pid,
             len(forget_op.identifiers), scrubbed)
    return ForgetResult(pid, visitors, forget_op.identifiers, removed, scrubbed)


def _plan_dump(keys: IdentityKeys) -> Plan[IdentitySnapshot]:
    """The whole site's graph (SCAN: for tests, audits and exports, never per event)."""
    found: list[str] = []
    cursor: Any = 0
    while True:
        (reply,) = yield RoundTrip((("SCAN", cursor, "MATCH", f"{keys.prefix}*", "COUNT", 1000),))
        cursor, batch = reply
        found += [_s(k) for k in batch]
        if int(cursor) == 0:
            break
    id_keys = sorted({k for k in found if k.startswith(keys.id_prefix)})
    pids = sorted({k[len(keys.person_prefix):].removesuffix(":ids") for k in found
                   if k.startswith(keys.person_prefix)})
    links: dict[Identifier, LinkRecord] = {}
    if id_keys:
        replies = yield RoundTrip(tuple(("HMGET", k, "p", "s") for k in id_keys))
        for k, (p, s) in zip(id_keys, replies):
            ident = parse_member(k[len(keys.id_prefix):])
            if ident is not None and p is not None:
                links[ident] = LinkRecord(_s(p), _s(s) if s is not None else "unknown")
    persons = yield from _plan_persons(keys, pids)
    return IdentitySnapshot(keys.site_id, links, persons)


# ---- the two clients ----------------------------------------------------------------------------

class _Base:
    """Configuration and key layout shared by the async and the sync client."""

    def __init__(self, *, cfg: IdentityConfig = DEFAULT_IDENTITY, namespace: str = "ls",
                 log_maxlen: int = DEFAULT_LOG_MAXLEN,
                 replay_guard_ttl_s: int = DEFAULT_REPLAY_GUARD_TTL_S) -> None:
        self.settings = _Settings(cfg, namespace, log_maxlen, replay_guard_ttl_s)
        self.round_trips = 0

    @property
    def cfg(self) -> IdentityConfig:
        return self.settings.cfg

    def keys(self, site_id: str) -> IdentityKeys:
        return IdentityKeys(check_site(site_id), self.settings.namespace)


class IdentityStore(_Base):
    """The identity graph over ``redis.asyncio.Redis`` (stage workers). See the module docstring."""

    def __init__(self, client: AsyncRedisClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> IdentityStore:
        return cls(async_client(url), **kwargs)  # redis+cluster://: a Redis Cluster client

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _run(self, plan: Plan[T]) -> T:
        try:
            trip = next(plan)
            while True:
                pipe = self.client.pipeline(transaction=trip.transaction)
                for command in trip.commands:
                    pipe.execute_command(*command)
                self.round_trips += 1
                replies = await pipe.execute()
                trip = plan.send(replies)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def load_snapshot(self, site_id: str, identifiers: Iterable[Identifier]) -> IdentitySnapshot:
        """The links of ``identifiers`` (and, for email click ids, of the email hash they may
        be) and the persons they point to. At most two pipelined round trips; none when empty."""
        return await self._run(_plan_load(self.keys(site_id), identifiers))

    async def apply(self, site_id: str, ops: Sequence[IdentityOp], *, allow_plain_email: bool = False) -> None:
        """Apply ``ops`` atomically in one MULTI/EXEC round trip (none for an empty list).
        Idempotent: replaying the same list leaves the same graph and logs once.
        ``allow_plain_email`` only for the site owner's import (core puts the address on
        the profile); otherwise a plain email raises ValueError before anything is sent."""
        await self._run(_plan_apply(self.keys(site_id), ops, self.settings, allow_plain_email))

    async def process_events(self, site_id: str, events: Sequence[TrackedEvent], salt: str) -> IdentityResult:
        """Run one batch's identity signals: load (two round trips), core's
        :func:`apply_identity_events`, apply (one MULTI, skipped when there are no ops). The
        visitors are always loaded, so ``person_id`` of the result is the visitor's person
        even for a batch without identity signals. Replaying a batch after a crash is safe."""
        snapshot = await self.load_snapshot(site_id, identifiers_to_load(events, salt))
        result = apply_identity_events(snapshot, events, salt, self.cfg)
        await self.apply(site_id, result.ops)
        return result

    async def resolve_visitors(self, site_id: str, visitor_ids: Iterable[str]) -> dict[str, PersonResolution]:
        """Each visitor's person (confidence 0 and no person when unlinked). Two round trips."""
        vids = list(dict.fromkeys(v for v in visitor_ids if v))
        snap = await self.load_snapshot(site_id, [(IdType.visitor, v) for v in vids])
        return {v: resolve_visitor(snap, v, self.cfg) for v in vids}

    async def merge_log(self, site_id: str, count: int = 100, *,
                        kinds: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The newest ``count`` identity-log entries, newest first, as
        ``{id, kind, t, detail, ids, persons}``; only ``kinds`` when given (e.g. MERGE_LOG_KINDS)."""
        return await self._run(_plan_log(self.keys(site_id), count, kinds))

    async def forget(self, site_id: str, person_id_or_email: str, *, salt: str | None = None,
                     tstamp: int | None = None, scrub_log: bool = True) -> ForgetResult:
        """Erase one person: every identifier link, the profile and id set (one MULTI), then
        the log entries naming the person or its identifiers. The argument is a person id, an
        email (needs ``salt``) or ``<type>:<value>`` (``user_id:42``, ``visitor:abc``).
        Idempotent; returns what was removed (visitor ids: write tombstones for them)."""
        stamp = int(time.time() * 1000) if tstamp is None else tstamp
        return await self._run(_plan_forget(self.keys(site_id), person_id_or_email, salt, self.settings, stamp,
                                            scrub_log))

    async def lookup_person(self, site_id: str, person_id_or_email: str, *, salt: str | None = None) -> ForgetResult:
        """Who :meth:`forget` would erase (person id, visitor ids, identifiers), erasing nothing:
        an erasure clears everything downstream first, so a failure there can be run again."""
        return await self._run(_plan_lookup(self.keys(site_id), person_id_or_email, salt))

    async def dump_site(self, site_id: str) -> IdentitySnapshot:
        """The site's whole graph (SCAN based; tests, audits, exports)."""
        return await self._run(_plan_dump(self.keys(site_id)))


class GroupPrefetch:
    """The stage's identity port for a commit group: one load for the visitors of the whole group.

    The visitor stage loads the links of each record's identifiers before applying it (one
    round trip per record). Before a group, :meth:`prefetch` loads the links of every visitor
    of the group's records in one round trip per site (two when some are linked); a record's
    :meth:`load_snapshot` is then answered from that snapshot when it asks for nothing else,
    restricted to what it asked for, exactly what a load from Redis at the group's start
    would return. The rules that keep it so:

    * **A write invalidates.** :meth:`apply` drops the site's prefetched snapshot before
      writing: later records of the group load from Redis and see the earlier ones' writes.
    * **Bounded age.** A snapshot older than ``max_age_s`` is not served (a record retried
      after Redis was away loads afresh).
    * **Fallback.** Identifiers outside the prefetch (user ids, emails, click ids of the
      record's events) are loaded from Redis as before.
    """

    def __init__(self, inner: Any, max_age_s: float = 10.0, clock: Any = time.monotonic) -> None:
        self.inner = inner
        self.max_age_s = max_age_s
        self._clock = clock
        self._loaded: dict[str, tuple[float, frozenset[Identifier], IdentitySnapshot]] = {}
        self.served = 0   # loads answered from a prefetch (tests and the benchmark read it)

    async def prefetch(self, wanted: Mapping[str, Iterable[Identifier]]) -> None:
        """Load the links (and persons) of ``wanted`` identifiers per site; forget the previous group's."""
        self._loaded = {}
        for site_id, identifiers in wanted.items():
            ids = _expand(identifiers)
            if not ids:
                continue
            at = self._clock()
            snapshot = await self.inner.load_snapshot(site_id, ids)
            self._loaded[site_id] = (at, frozenset(ids), snapshot)

    def clear(self) -> None:
        self._loaded = {}

    async def load_snapshot(self, site_id: str, identifiers: Sequence[Identifier]) -> IdentitySnapshot:
        entry = self._loaded.get(site_id)
        if entry is not None:
            at, known, snapshot = entry
            ids = _expand(identifiers)
            if self._clock() - at <= self.max_age_s and known.issuperset(ids):
                self.served += 1
                links = {i: snapshot.links[i] for i in ids if i in snapshot.links}
                pids = {link.person_id for link in links.values()}
                return IdentitySnapshot(site_id, links,
                                        {p: r for p, r in snapshot.persons.items() if p in pids})
        result: IdentitySnapshot = await self.inner.load_snapshot(site_id, identifiers)
        return result

    async def apply(self, site_id: str, ops: Sequence[Any]) -> None:
        if ops:
            self._loaded.pop(site_id, None)   # later loads read the graph with these writes
        await self.inner.apply(site_id, ops)


class SyncIdentityStore(_Base):
    """The same store over a blocking ``redis.Redis`` (CLI import and forget)."""

    def __init__(self, client: RedisClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SyncIdentityStore:
        return cls(sync_client(url), **kwargs)  # redis+cluster://: a Redis Cluster client

    def close(self) -> None:
        self.client.close()

    def _run(self, plan: Plan[T]) -> T:
        try:
            trip = next(plan)
            while True:
                pipe = self.client.pipeline(transaction=trip.transaction)
                for command in trip.commands:
                    pipe.execute_command(*command)
                self.round_trips += 1
                replies = pipe.execute()
                trip = plan.send(replies)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def load_snapshot(self, site_id: str, identifiers: Iterable[Identifier]) -> IdentitySnapshot:
        """See :meth:`IdentityStore.load_snapshot` (at most two round trips)."""
        return self._run(_plan_load(self.keys(site_id), identifiers))

    def apply(self, site_id: str, ops: Sequence[IdentityOp], *, allow_plain_email: bool = False) -> None:
        """See :meth:`IdentityStore.apply` (one MULTI/EXEC round trip, idempotent)."""
        self._run(_plan_apply(self.keys(site_id), ops, self.settings, allow_plain_email))

    def process_events(self, site_id: str, events: Sequence[TrackedEvent], salt: str) -> IdentityResult:
        """See :meth:`IdentityStore.process_events`."""
        snapshot = self.load_snapshot(site_id, identifiers_to_load(events, salt))
        result = apply_identity_events(snapshot, events, salt, self.cfg)
        self.apply(site_id, result.ops)
        return result

    def resolve_visitors(self, site_id: str, visitor_ids: Iterable[str]) -> dict[str, PersonResolution]:
        """See :meth:`IdentityStore.resolve_visitors`."""
        vids = list(dict.fromkeys(v for v in visitor_ids if v))
        snap = self.load_snapshot(site_id, [(IdType.visitor, v) for v in vids])
        return {v: resolve_visitor(snap, v, self.cfg) for v in vids}

    def merge_log(self, site_id: str, count: int = 100, *,
                  kinds: Collection[str] | None = None) -> list[dict[str, Any]]:
        """See :meth:`IdentityStore.merge_log`."""
        return self._run(_plan_log(self.keys(site_id), count, kinds))

    def forget(self, site_id: str, person_id_or_email: str, *, salt: str | None = None,
               tstamp: int | None = None, scrub_log: bool = True) -> ForgetResult:
        """See :meth:`IdentityStore.forget`."""
        stamp = int(time.time() * 1000) if tstamp is None else tstamp
        return self._run(_plan_forget(self.keys(site_id), person_id_or_email, salt, self.settings, stamp,
                                      scrub_log))

    def lookup_person(self, site_id: str, person_id_or_email: str, *, salt: str | None = None) -> ForgetResult:
        """See :meth:`IdentityStore.lookup_person`."""
        return self._run(_plan_lookup(self.keys(site_id), person_id_or_email, salt))

    def dump_site(self, site_id: str) -> IdentitySnapshot:
        """See :meth:`IdentityStore.dump_site`."""
        return self._run(_plan_dump(self.keys(site_id)))
