"""Nurture sequences in Redis: the schedule survives restarts, and no step is sent twice.

Keys under ``<sinks.namespace>:nurture`` (``<sink>`` is ``<site>/<name>``):

- ``seq:<id>``: hash: site, sink, person, email, email_hash, lead (JSON), profile (JSON),
  ``step`` (the next step, 0-based), ``status`` (active | stopped | done), ``reason``,
  ``attempts`` (of the next step), and per sent step ``sent:<n>`` (its Message-ID),
  ``at:<n>``, ``subject:<n>``, ``text:<n>`` (the thread a hand-off shows).
- ``due:<sink>``: sorted set of sequence ids by the epoch ms their next step is due.
- ``claim:<id>:<n>``: the process sending step n now (expires after the lease).
- ``person:<site>:<person id>`` and ``email:<site>:<email hash>``: sets of sequence ids
  (erasure and unsubscribe find every sequence of a person with them).
- ``suppressed:<site>``: set of salted email hashes (the site's ``email_salt``, the same
  hash as the identity graph's email identifiers) that no sequence may write to.
- ``handoff:<id>:<reply digest>:<destination>``: a hand-off already made (a redelivered
  reply does not hand off twice).

Sending a step (see :meth:`SequenceStore.take` and :meth:`SequenceStore.record_sent`):

1. the poller moves due ids forward by the lease (``claim_due``), so a process that dies
   leaves them due again when the lease ends;
2. ``take`` atomically checks the sequence is active, still at that step, the step not
   yet sent, the address not suppressed, and sets ``claim:<id>:<n>`` (NX, with the lease);
3. the message goes out over SMTP;
4. ``record_sent`` atomically writes ``sent:<n>`` and schedules the next step (or ends).

The one window: the process dies after the SMTP server accepted the message (3) and
before ``record_sent`` (4). The claim then expires and the step is sent again. It lasts
one Redis round trip; everything else is idempotent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

import redis.asyncio

from ..enrich.identity_store import _decode_hash

ACTIVE, STOPPED, DONE = "active", "stopped", "done"

_START = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SISMEMBER', KEYS[5], ARGV[3]) == 1 then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""

# KEYS: seq, due, claim, suppressed. ARGV: id, step, owner, lease ms, now ms
_TAKE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then redis.call('ZREM', KEYS[2], ARGV[1]); return 'gone' end
if status ~= 'active' then redis.call('ZREM', KEYS[2], ARGV[1]); return status end
if redis.call('HGET', KEYS[1], 'step') ~= ARGV[2] then return 'moved' end
if redis.call('HEXISTS', KEYS[1], 'sent:' .. ARGV[2]) == 1 then return 'sent' end
if tonumber(redis.call('HGET', KEYS[1], 'due_at') or '0') > tonumber(ARGV[5]) then return 'early' end
if redis.call('SISMEMBER', KEYS[4], redis.call('HGET', KEYS[1], 'email_hash')) == 1 then
  redis.call('HSET', KEYS[1], 'status', 'stopped', 'reason', 'suppressed')
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'suppressed'
end
if redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', tonumber(ARGV[4])) then return 'ok' end
if redis.call('GET', KEYS[3]) == ARGV[3] then return 'ok' end
return 'busy'
"""

# KEYS: seq, due, claim. ARGV: id, step, message id, at ms, subject, text, next due ms or ''
_RECORD = """
local n = ARGV[2]
redis.call('HSET', KEYS[1], 'sent:' .. n, ARGV[3], 'at:' .. n, ARGV[4], 'subject:' .. n, ARGV[5], 'text:' .. n, ARGV[6],
           'attempts', 0)
redis.call('DEL', KEYS[3])
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then redis.call('ZREM', KEYS[2], ARGV[1]); return 0 end
if ARGV[7] == '' then
  redis.call('HSET', KEYS[1], 'status', 'done', 'reason', 'completed')
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'step', tonumber(n) + 1, 'due_at', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
return 1
"""

# KEYS: seq, due. ARGV: id, reason
_STOP = """
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'stopped', 'reason', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Sequence:
    """One person's sequence of one sink, as stored."""
    seq_id: str
    site_id: str
    sink: str                      # <site>/<name>
    person_id: str
    email: str
    email_hash: str
    lead: Mapping[str, Any]
    profile: Mapping[str, str]
    step: int
    status: str
    reason: str
    attempts: int
    sent: tuple[tuple[int, str, int, str, str], ...]   # (step, message id, at ms, subject, text)

    @property
    def message_ids(self) -> list[str]:
        return [m for _, m, _, _, _ in self.sent]


def _sequence(seq_id: str, f: Mapping[str, str]) -> Sequence:
    sent = []
    for key, value in f.items():
        if key.startswith("sent:"):
            n = key[5:]
            sent.append((int(n), value, int(f.get(f"at:{n}") or 0), f.get(f"subject:{n}", ""), f.get(f"text:{n}", "")))
    return Sequence(seq_id, f.get("site", ""), f.get("sink", ""), f.get("person", ""), f.get("email", ""),
                    f.get("email_hash", ""), json.loads(f.get("lead") or "{}"), json.loads(f.get("profile") or "{}"),
                    int(f.get("step") or 0), f.get("status", ""), f.get("reason", ""), int(f.get("attempts") or 0),
                    tuple(sorted(sent)))


class SequenceStore:
    """The Redis side of nurture (see module doc). Every state change is one script (atomic)."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str = "ls:sinks", ttl_s: int = 400 * 86400) -> None:
        self.client = client
        self.ns = f"{namespace}:nurture"
        self.ttl_s = ttl_s
        self._start = client.register_script(_START)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._take = client.register_script(_TAKE)
        self._record = client.register_script(_RECORD)
        self._stop = client.register_script(_STOP)

    @classmethod
    def from_url(cls, url: str, namespace: str = "ls:sinks", ttl_s: int = 400 * 86400) -> "SequenceStore":
        try:  # the project's client factory where it exists (it knows the cluster settings)
            from ..redis_client import async_client  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            return cls(redis.asyncio.Redis.from_url(url), namespace, ttl_s)
        return cls(async_client(url), namespace, ttl_s)  # type: ignore[arg-type, unused-ignore]

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- keys ---------------------------------------------------------------------------------------
    def _seq(self, seq_id: str) -> str:
        return f"{self.ns}:seq:{seq_id}"

    def _due(self, sink: str) -> str:
        return f"{self.ns}:due:{sink}"

    def _claim(self, seq_id: str, step: int) -> str:
        return f"{self.ns}:claim:{seq_id}:{step}"

    def _person(self, site_id: str, person_id: str) -> str:
        return f"{self.ns}:person:{site_id}:{person_id}"

    def _email(self, site_id: str, email_hash: str) -> str:
        return f"{self.ns}:email:{site_id}:{email_hash}"

    def _suppressed(self, site_id: str) -> str:
        return f"{self.ns}:suppressed:{site_id}"

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self, seq_id: str, site_id: str, sink: str, person_id: str, email: str, email_hash: str,
                    lead: Mapping[str, Any], profile: Mapping[str, str], first_due_ms: int) -> str:
        """Create the sequence with its first step due at ``first_due_ms``: ``started``, ``exists``
        (this person already has one from this sink: it is never restarted) or ``suppressed``."""
        fields = {"site": site_id, "sink": sink, "person": person_id, "email": email, "email_hash": email_hash,
                  "lead": json.dumps(lead, separators=(",", ":")), "profile": json.dumps(dict(profile)),
                  "step": 0, "status": ACTIVE, "reason": "", "attempts": 0, "started": now_ms(),
                  "due_at": first_due_ms}
        flat: list[Any] = [x for kv in fields.items() for x in kv]
        result = await self._start(
            keys=[self._seq(seq_id), self._due(sink), self._person(site_id, person_id),
                  self._email(site_id, email_hash), self._suppressed(site_id)],
            args=[seq_id, first_due_ms, email_hash, self.ttl_s, *flat])
        return {1: "started", 0: "exists", -1: "suppressed"}[int(result)]

    async def get(self, seq_id: str) -> Sequence | None:
        fields = _decode_hash(await self.client.hgetall(self._seq(seq_id)))
        return _sequence(seq_id, fields) if fields else None

    async def claim_due(self, sink: str, limit: int, lease_ms: int, at: int | None = None) -> list[str]:
        """Up to ``limit`` sequence ids whose next step is due; each is due again after the lease
        unless recorded or stopped first."""
        if limit <= 0:
            return []
        at = now_ms() if at is None else at
        members = await self._claim_due(keys=[self._due(sink)], args=[at, at + lease_ms, limit])
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def take(self, seq: Sequence, owner: str, lease_ms: int) -> str:
        """``ok`` when this process may send ``seq``'s next step now; else why not (``stopped``,
        ``done``, ``moved``, ``sent``, ``early``: not due yet, ``suppressed``, ``busy``: another
        process holds the claim, ``gone``)."""
        result = await self._take(keys=[self._seq(seq.seq_id), self._due(seq.sink), self._claim(seq.seq_id, seq.step),
                                        self._suppressed(seq.site_id)],
                                  args=[seq.seq_id, seq.step, owner, lease_ms, now_ms()])
        return result.decode() if isinstance(result, bytes) else str(result)

    async def record_sent(self, seq: Sequence, message_id: str, subject: str, text: str,
                          next_due_ms: int | None) -> None:
        """Step ``seq.step`` was accepted by the SMTP server: record it, schedule the next one (or finish)."""
        await self._record(keys=[self._seq(seq.seq_id), self._due(seq.sink), self._claim(seq.seq_id, seq.step)],
                           args=[seq.seq_id, seq.step, message_id, now_ms(), subject, text,
                                 "" if next_due_ms is None else next_due_ms])

    async def retry_later(self, seq: Sequence, due_ms: int, max_attempts: int, error: str) -> bool:
        """A temporary failure: due again at ``due_ms``; False (and stopped as ``failed``) after the last attempt."""
        attempts = int(await self.client.hincrby(self._seq(seq.seq_id), "attempts", 1))
        await self.client.delete(self._claim(seq.seq_id, seq.step))
        if attempts >= max_attempts:
            await self.stop(seq.seq_id, f"failed: {error}"[:300])
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._seq(seq.seq_id), "due_at", due_ms)
        pipe.zadd(self._due(seq.sink), {seq.seq_id: due_ms}, xx=True)
        await pipe.execute()
        return True

    async def stop(self, seq_id: str, reason: str) -> bool:
        """Stop a sequence (reply, unsubscribe, bounce, suppression...); True when it was active."""
        sink = await self.client.hget(self._seq(seq_id), "sink")
        if sink is None:
            return False
        sink_name = sink.decode() if isinstance(sink, bytes) else str(sink)
        return bool(await self._stop(keys=[self._seq(seq_id), self._due(sink_name)], args=[seq_id, reason]))

    async def stop_sequences(self, site_id: str, person_id: str | None = None, email_hash: str | None = None,
                             reason: str = "stopped", forget: bool = False) -> int:
        """Stop every sequence of a person (by person id and/or salted email hash) on one site;
        returns how many were active. ``forget=True`` (erasure) also deletes their records
        (the plain email with them) and puts the salted email hashes (``email_hash`` and each
        sequence's) on the site's suppression list, so a person the owner's data brings back
        after the erasure gets no new sequence; the list keeps only hashes."""
        keys = ([self._person(site_id, person_id)] if person_id else []) + \
               ([self._email(site_id, email_hash)] if email_hash else [])
        if not keys:
            raise ValueError("give person_id or email_hash")
        ids: set[str] = set()
        for key in keys:
            ids |= {m.decode() if isinstance(m, bytes) else str(m) for m in await self.client.smembers(key)}
        stopped = 0
        for seq_id in sorted(ids):
            stopped += await self.stop(seq_id, reason)
        if forget:
            if email_hash:
                await self.suppress(site_id, email_hash)
            for seq_id in ids:
                seq = await self.get(seq_id)
                if seq is not None:
                    await self.suppress(site_id, seq.email_hash)
                    await self.client.delete(self._seq(seq_id), self._person(site_id, seq.person_id),
                                             self._email(site_id, seq.email_hash))
            await self.client.delete(*keys)
        return stopped

    # -- suppression --------------------------------------------------------------------------------
    async def suppress(self, site_id: str, email_hash: str) -> None:
        await self.client.sadd(self._suppressed(site_id), email_hash)

    async def is_suppressed(self, site_id: str, email_hash: str) -> bool:
        return bool(await self.client.sismember(self._suppressed(site_id), email_hash))

    async def suppressed(self, site_id: str) -> set[str]:
        """The site's suppression list (salted email hashes)."""
        return {m.decode() if isinstance(m, bytes) else str(m)
                for m in await self.client.smembers(self._suppressed(site_id))}

    async def unsubscribe(self, seq_id: str) -> Sequence | None:
        """Suppress the sequence's address on its site and stop every sequence to it; None for an unknown id."""
        seq = await self.get(seq_id)
        if seq is None:
            return None
        await self.suppress(seq.site_id, seq.email_hash)
        await self.stop_sequences(seq.site_id, email_hash=seq.email_hash, reason="unsubscribed")
        return seq

    # -- hand-offs ----------------------------------------------------------------------------------
    async def handed_off(self, seq_id: str, digest: str, destination: str) -> bool:
        return bool(await self.client.exists(f"{self.ns}:handoff:{seq_id}:{digest}:{destination}"))

    async def mark_handed_off(self, seq_id: str, digest: str, destination: str) -> None:
        await self.client.set(f"{self.ns}:handoff:{seq_id}:{digest}:{destination}", now_ms(), ex=self.ttl_s)

    async def scheduled(self, sink: str) -> int:
        return int(await self.client.zcard(self._due(sink)))


def stop_sequences_sync(redis_url: str, site_id: str, person_id: str | None = None, email_hash: str | None = None,
                        namespace: str = "ls:sinks", reason: str = "erased", forget: bool = True) -> int:
    """:meth:`SequenceStore.stop_sequences` for synchronous callers (the ``forget`` CLI); not from a running loop."""
    import asyncio

    async def run() -> int:
        store = SequenceStore.from_url(redis_url, namespace)
        try:
            return await store.stop_sequences(site_id, person_id, email_hash, reason, forget)
        finally:
            await store.aclose()

    return asyncio.run(run())
