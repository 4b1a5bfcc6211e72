"""Delivery state and the retry schedule in Redis: what makes each (lead, sink) delivery happen once.

Keys, under ``sinks.namespace`` (default ``ls:sinks``), ``<sink>`` being ``<site>/<name>``:

- ``done:<sink>:<lead id>``: ``delivered`` or ``dead``, kept ``state_ttl_days``. A lead
  with this key is never delivered to that sink again (restart, rebalance, replay).
- ``lock:<sink>:<lead id>``: the process delivering it now (expires after ``lease_s``),
  so two processes never send the same lead at once during a rebalance.
- ``inflight:<sink>:<lead id>``: epoch ms the first send of this (lead, sink) started. Written
  (and acknowledged by Redis) before each send, deleted with ``done``. Found before a send,
  it says an earlier attempt may have reached the receiver: the delivery is *in doubt* and the
  sink resolves it (see :meth:`DeliveryState.begin` and ``runner``'s module doc). Deleted
  with ``done`` = delivered; a dead letter keeps it (a re-drive is in doubt too).
- ``due:<sink>``: sorted set of lead ids by the epoch ms of their next attempt.
- ``job:<sink>:<lead id>``: hash with the lead (JSON), attempts made, first attempt and
  when the lead was first seen. Written with its ``due`` entry in one transaction.
- ``crm:<site>:<account>``: links to the CRM records a CRM sink wrote (Slack shows them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping

import redis.asyncio

from ..redis_client import async_client
from ..enrich.identity_store import PROFILE_PREFIX, IdentityKeys, _decode_hash

DELIVERED = "delivered"
DEAD = "dead"

# KEYS: inflight. ARGV: now ms, ttl s. Returns the earlier start (in doubt) or nil (first send).
_BEGIN = """
local started = redis.call('GET', KEYS[1])
if started then return started end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return false
"""

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Job:
    """One lead for one sink. ``attempts`` counts the attempts already made."""
    sink: str                       # <site>/<name>
    lead: Mapping[str, Any]
    attempts: int = 0
    first_attempt: int = 0          # epoch ms, 0 before the first
    received: int = 0               # epoch ms the lead was written to qualified-leads (latency origin)
    last_error: str = ""

    @property
    def lead_id(self) -> str:
        return str(self.lead["lead_id"])

    def attempted(self, at: int, error: str = "") -> "Job":
        return replace(self, attempts=self.attempts + 1, first_attempt=self.first_attempt or at, last_error=error)


class DeliveryState:
    """The Redis side of delivery (see module doc). Every write that settles a job is one transaction."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str = "ls:sinks", ttl_s: int = 400 * 86400) -> None:
        self.client = client
        self.ns = namespace
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)
        self._begin = client.register_script(_BEGIN)

    @classmethod
    def from_url(cls, url: str, namespace: str = "ls:sinks", ttl_s: int = 400 * 86400) -> "DeliveryState":
        return cls(async_client(url), namespace, ttl_s)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.client.aclose()

    def _done(self, sink: str, lead_id: str) -> str:
        return f"{self.ns}:done:{sink}:{lead_id}"

    def _lock(self, sink: str, lead_id: str) -> str:
        return f"{self.ns}:lock:{sink}:{lead_id}"

    def _due(self, sink: str) -> str:
        return f"{self.ns}:due:{sink}"

    def _job(self, sink: str, lead_id: str) -> str:
        return f"{self.ns}:job:{sink}:{lead_id}"

    def _inflight(self, sink: str, lead_id: str) -> str:
        return f"{self.ns}:inflight:{sink}:{lead_id}"

    async def begin(self, sink: str, lead_id: str, at: int) -> int | None:
        """Record that a send of (lead, sink) starts now, before it starts. Returns None for the
        first send, else the epoch ms an earlier send started: that one may have reached the
        receiver without being recorded (a crash, a timeout, a lost answer), so this delivery is
        *in doubt*. The marker stays until :meth:`mark` settles the delivery."""
        started = await self._begin(keys=[self._inflight(sink, lead_id)], args=[at, self.ttl_s])
        if not started:
            return None
        return int(started.decode() if isinstance(started, bytes) else started)

    async def status(self, sink: str, lead_id: str) -> str | None:
        """``delivered``, ``dead`` or None (not settled for good yet)."""
        value = await self.client.get(self._done(sink, lead_id))
        return value.decode() if isinstance(value, bytes) else value

    async def acquire(self, sink: str, lead_id: str, owner: str, lease_ms: int) -> bool:
        """Take the right to deliver now; False while another process holds it."""
        key = self._lock(sink, lead_id)
        if await self.client.set(key, owner, nx=True, px=lease_ms):
            return True
        held = await self.client.get(key)
        return (held.decode() if isinstance(held, bytes) else held) == owner

    async def mark(self, sink: str, lead_id: str, value: str) -> None:
        """Settle for good (delivered or dead): record it, drop any schedule, release the lock."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._done(sink, lead_id), value, ex=self.ttl_s)
        pipe.zrem(self._due(sink), lead_id)
        pipe.delete(self._job(sink, lead_id), self._lock(sink, lead_id))
        if value == DELIVERED:  # a dead letter keeps it: a re-drive of a lead that timed out is in doubt
            pipe.delete(self._inflight(sink, lead_id))
        await pipe.execute()

    async def schedule(self, job: Job, due_ms: int, release_lock: bool = True) -> None:
        """Durably schedule ``job``'s next attempt at ``due_ms`` (the job and its due time in one transaction)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._job(job.sink, job.lead_id), mapping={
            "lead": json.dumps(job.lead, separators=(",", ":")), "attempts": job.attempts,
            "first_attempt": job.first_attempt, "received": job.received, "last_error": job.last_error})
        pipe.expire(self._job(job.sink, job.lead_id), self.ttl_s)
        pipe.zadd(self._due(job.sink), {job.lead_id: due_ms})
        if release_lock:
            pipe.delete(self._lock(job.sink, job.lead_id))
        await pipe.execute()

    async def claim(self, sink: str, limit: int, lease_ms: int, at: int | None = None) -> list[Job]:
        """Up to ``limit`` jobs due now; each is leased (due again after ``lease_ms`` unless settled)."""
        if limit <= 0:
            return []
        at = now_ms() if at is None else at
        members = await self._claim(keys=[self._due(sink)], args=[at, at + lease_ms, limit])
        jobs = []
        for raw in members:
            lead_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            fields = _decode_hash(await self.client.hgetall(self._job(sink, lead_id)))
            if not fields.get("lead"):
                await self.client.zrem(self._due(sink), lead_id)
                continue
            jobs.append(Job(sink, json.loads(fields["lead"]), int(fields.get("attempts") or 0),
                            int(fields.get("first_attempt") or 0), int(fields.get("received") or 0),
                            fields.get("last_error", "")))
        return jobs

    async def scheduled(self, sink: str) -> int:
        return int(await self.client.zcard(self._due(sink)))

    async def redrive(self, job: Job, due_ms: int | None = None) -> bool:
        """Schedule a dead-lettered job again from attempt 0; False when it was delivered since."""
        if await self.status(job.sink, job.lead_id) == DELIVERED:
            return False
        await self.client.delete(self._done(job.sink, job.lead_id))
        await self.schedule(replace(job, attempts=0, first_attempt=0), now_ms() if due_ms is None else due_ms,
                            release_lock=False)
        return True

    # -- links and profiles that Slack and the CRM share -----------------------------------------
    def _crm(self, site_id: str, account: str) -> str:
        return f"{self.ns}:crm:{site_id}:{account}"

    async def crm_links(self, site_id: str, account: str) -> dict[str, str]:
        return _decode_hash(await self.client.hgetall(self._crm(site_id, account)))

    async def set_crm_links(self, site_id: str, account: str, links: Mapping[str, str]) -> None:
        if links:
            mapping: dict[Any, Any] = dict(links)
            await self.client.hset(self._crm(site_id, account), mapping=mapping)


class PersonProfiles:
    """Reads an identified person's profile (email, name, title: the owner's import) from the identity graph."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str = "ls") -> None:
        self.client = client
        self.namespace = namespace

    async def profile(self, site_id: str, person_id: str) -> dict[str, str]:
        fields = _decode_hash(await self.client.hgetall(IdentityKeys(site_id, self.namespace).person(person_id)))
        return {k[len(PROFILE_PREFIX):]: v for k, v in fields.items() if k.startswith(PROFILE_PREFIX)}
