"""The prospect list as a materialised view in Redis, kept current from ``lead-scores``.

Key layout, per site (``{site}`` is a Redis Cluster hash tag, so one site's view lives in one slot):

- ``ls:lv:{site}:rank``            sorted set, every listed account by priority key (``view.priority_key``)
- ``ls:lv:{site}:st:<status>``     sorted set per status (qualified, warming, ...), same scores
- ``ls:lv:{site}:cc:<CC>``         sorted set per country, same scores
- ``ls:lv:{site}:sum``             hash, account -> the row as the list shows it (compact JSON)
- ``ls:lv:{site}:doc``             hash, account -> the full document (detail panel, ``leads show``)
- ``ls:lv:{site}:person:<id>``     set of the accounts where a person was seen (erasure)
- ``ls:lv:{site}:changes``         pub/sub channel: one JSON message per changed account (the page's live updates)
- ``ls:lv:meta``                   hash: ``built`` once the view has been filled from the topic's beginning

A request reads one index page by page and the rows' summaries with one ``HMGET`` per page:
never a scan of a topic, never a scan of all keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..redis_client import AsyncRedisClient, async_client
from .view import STATUSES, Filter, matches, priority_at

__all__ = ["ViewKeys", "LeadsView", "Page", "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ("account", "domain", "name", "status", "filtered_by", "seen", "tier", "fit", "intent", "trend",
                  "last_activity", "country", "industry", "employees", "visitors", "people", "reason",
                  "priority_key")
_PAGE = 256


@dataclass(frozen=True, slots=True)
class ViewKeys:
    site_id: str
    namespace: str = "ls"

    @property
    def prefix(self) -> str:
        return f"{self.namespace}:lv:{{{self.site_id}}}:"

    @property
    def rank(self) -> str:
        return self.prefix + "rank"

    def status(self, status: str) -> str:
        return f"{self.prefix}st:{status}"

    def country(self, cc: str) -> str:
        return f"{self.prefix}cc:{cc.upper()}"

    @property
    def summaries(self) -> str:
        return self.prefix + "sum"

    @property
    def docs(self) -> str:
        return self.prefix + "doc"

    def person(self, person_id: str) -> str:
        return f"{self.prefix}person:{person_id}"

    @property
    def changes(self) -> str:
        return self.prefix + "changes"


def summary_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    row = {k: doc.get(k) for k in SUMMARY_FIELDS}
    row["people"] = [{"name": p.get("name"), "title": p.get("title"), "confidence": p.get("confidence"),
                      "person_id": p.get("person_id")} for p in doc.get("people") or ()]
    return row


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class LeadsView:
    """Reads and writes the view (see module doc). Every method is a few pipelined round trips."""

    def __init__(self, client: AsyncRedisClient, namespace: str = "ls") -> None:
        self.client = client
        self.namespace = namespace

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "LeadsView":
        # a redis+cluster:// URL gives a Redis Cluster client (pipeline.redis_client)
        return cls(async_client(url, socket_timeout=5, socket_connect_timeout=5, **kwargs))

    async def aclose(self) -> None:
        await self.client.aclose()

    def keys(self, site_id: str) -> ViewKeys:
        return ViewKeys(site_id, self.namespace)

    # -- writes ---------------------------------------------------------------------------------
    async def docs(self, site_id: str, accounts: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not accounts:
            return {}
        raw = await self.client.hmget(self.keys(site_id).docs, list(accounts))
        return {a: json.loads(r) for a, r in zip(accounts, raw) if r is not None}

    async def put(self, docs: Iterable[Mapping[str, Any]], previous: Mapping[str, Mapping[str, Any]]) -> int:
        """Write each document and its index entries (one pipeline); publish one change per account."""
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for doc in docs:
            k = self.keys(doc["site_id"])
            account = doc["account"]
            old = previous.get(account)
            if old is not None:
                self._unindex(pipe, k, old)
            score = float(doc["priority_key"])
            pipe.zadd(k.rank, {account: score})
            pipe.zadd(k.status(doc["status"]), {account: score})
            if doc.get("country"):
                pipe.zadd(k.country(doc["country"]), {account: score})
            for p in doc.get("people") or ():
                pipe.sadd(k.person(p["person_id"]), account)
            summary = summary_of(doc)
            pipe.hset(k.summaries, account, json.dumps(summary, separators=(",", ":")))
            pipe.hset(k.docs, account, json.dumps(doc, separators=(",", ":")))
            pipe.publish(k.changes, json.dumps(summary, separators=(",", ":")))
            n += 1
        await pipe.execute()
        return n

    @staticmethod
    def _unindex(pipe: Any, k: ViewKeys, old: Mapping[str, Any]) -> None:
        pipe.zrem(k.status(old["status"]), old["account"])
        if old.get("country"):
            pipe.zrem(k.country(old["country"]), old["account"])

    async def remove(self, site_id: str, accounts: Sequence[str]) -> int:
        """Drop accounts from the view (a suppressed domain, an erased person's own account)."""
        k = self.keys(site_id)
        old = await self.docs(site_id, accounts)
        pipe = self.client.pipeline(transaction=False)
        for account, doc in old.items():
            self._unindex(pipe, k, doc)
            pipe.zrem(k.rank, account)
            pipe.hdel(k.summaries, account)
            pipe.hdel(k.docs, account)
            for p in doc.get("people") or ():
                pipe.srem(k.person(p["person_id"]), account)
            pipe.publish(k.changes, json.dumps({"account": account, "removed": True}))
        await pipe.execute()
        return len(old)

    async def forget_person(self, site_id: str, person_id: str) -> int:
        """Remove a person from every account of the view where they were seen; returns how many."""
        k = self.keys(site_id)
        accounts = sorted(_s(a) for a in await self.client.smembers(k.person(person_id)))
        docs = await self.docs(site_id, accounts)
        changed = []
        for doc in docs.values():
            doc["people"] = [p for p in doc.get("people") or () if p.get("person_id") != person_id]
            changed.append(doc)
        if changed:
            await self.put(changed, docs)
        await self.client.delete(k.person(person_id))
        return len(changed)

    async def mark_built(self) -> None:
        await self.client.hset(f"{self.namespace}:lv:meta", "built", "1")

    async def built(self) -> bool:
        return bool(await self.client.hget(f"{self.namespace}:lv:meta", "built"))

    # -- reads ----------------------------------------------------------------------------------
    async def account(self, site_id: str, domain: str) -> dict[str, Any] | None:
        docs = await self.docs(site_id, [f"c:{domain}", domain, f"v:{domain}"])
        return next(iter(docs.values()), None)

    async def count(self, site_id: str) -> int:
        return int(await self.client.zcard(self.keys(site_id).rank))

    async def list(self, site_id: str, f: Filter, limit: int = 50, cursor: str | None = None,
                   now_ms: int | None = None) -> Page:
        """Up to ``limit`` rows in priority order that pass ``f``, from ``cursor`` on.

        The cursor is the last row's (score, account): the next page starts after that account.
        The most selective index among status, country and not-seen is read page by page.
        """
        k = self.keys(site_id)
        index = (k.status(f.status) if f.status in STATUSES else
                 k.country(f.country) if f.country else
                 k.status("not_seen") if f.seen is False else k.rank)
        start = 0
        if cursor:
            score_text, _, account = cursor.partition("|")
            rank: Any = await self.client.zrevrank(index, account)
            if rank is not None:
                start = int(rank) + 1
            else:  # the cursor's account left this index: go on from its score
                start = int(await self.client.zcount(index, score_text, "+inf"))
        rows: list[dict[str, Any]] = []
        while len(rows) < limit:
            batch: list[Any] = await self.client.zrevrange(index, start, start + _PAGE - 1,
                                                          withscores=True)
            if not batch:
                break
            start += len(batch)
            members = [(_s(m), float(sc)) for m, sc in batch]
            summaries = await self.client.hmget(k.summaries, [m for m, _ in members])
            for (member, score), raw in zip(members, summaries):
                if raw is None:
                    continue
                row = json.loads(raw)
                if not matches(row, f):
                    continue
                if now_ms is not None:
                    row["priority"] = priority_at(score, now_ms)
                row["cursor"] = f"{score!r}|{member}"
                rows.append(row)
                if len(rows) >= limit:
                    break
            if len(batch) < _PAGE:
                break
        next_cursor = rows[-1]["cursor"] if len(rows) >= limit else None
        return Page(rows, next_cursor)
