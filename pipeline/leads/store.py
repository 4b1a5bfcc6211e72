"""The prospect list as a materialised view in Redis, kept current from ``lead-scores``.

Key layout, per site (``{site}`` is a Redis Cluster hash tag, so one site's view lives in one slot):

- ``ls:lv:{site}:rank``            sorted set, every listed account by priority key (``view.priority_key``)
- ``ls:lv:{site}:st:<status>``     sorted set per status (qualified, warming, ...), same scores
- ``ls:lv:{site}:cc:<CC>``         sorted set per country, same scores
- ``ls:lv:{site}:fit``, ``:intent`` sorted sets of every account by its fit / intent (``--min-fit``,
                                   ``--min-intent``: a selective threshold reads only the accounts above it)
- ``ls:lv:{site}:sum``             hash, account -> the row as the list shows it (compact JSON)
- ``ls:lv:{site}:facts``           hash, account -> the fields filters read, tab-separated (a scan reads these,
                                   and the summaries of the rows it keeps only)
- ``ls:lv:{site}:doc``             hash, account -> the full document (detail panel, ``leads show``)
- ``ls:lv:{site}:person:<id>``     set of the accounts where a person was seen (erasure)
- ``ls:lv:{site}:changes``         pub/sub channel: a JSON list of the changed rows per update batch (the page's live updates)
- ``ls:lv:meta``                   hash: ``built`` once the view has been filled from the topic's beginning

A request reads one index page by page and the rows' summaries with one ``HMGET`` per page:
never a scan of a topic, never a scan of all keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Sequence

from ..redis_client import AsyncRedisClient, async_client
from .view import STATUSES, Filter, matches, priority_at

__all__ = ["ViewKeys", "LeadsView", "Page", "SUMMARY_FIELDS"]

SUMMARY_FIELDS = ("account", "domain", "name", "status", "filtered_by", "seen", "tier", "fit", "intent", "trend",
                  "last_activity", "country", "industry", "employees", "visitors", "people", "reason",
                  "priority_key")
_PAGE = 2048
Candidates = List[tuple[float, str]]   # (priority key, account), in list order
_SELECTIVE = 5000   # a fit/intent threshold with at most this many accounts above it is read by its index


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
    def fit(self) -> str:
        return self.prefix + "fit"

    @property
    def intent(self) -> str:
        return self.prefix + "intent"

    @property
    def summaries(self) -> str:
        return self.prefix + "sum"

    @property
    def facts(self) -> str:
        return self.prefix + "facts"

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


def facts_of(doc: Mapping[str, Any]) -> str:
    """What the filters read of one account (``view.matches``), tab-separated: cheap to scan."""
    return "\t".join((str(doc.get("status") or ""), repr(float(doc.get("fit") or 0.0)),
                      repr(float(doc.get("intent") or 0.0)), str(doc.get("country") or ""),
                      "1" if doc.get("seen") else "0", str(doc.get("domain") or "").replace("\t", " "),
                      str(doc.get("name") or "").replace("\t", " ")))


def _facts(raw: Any) -> dict[str, Any]:
    status, fit, intent, country, seen, domain, name = _s(raw).split("\t", 6)
    return {"status": status, "fit": float(fit), "intent": float(intent), "country": country or None,
            "seen": seen == "1", "domain": domain, "name": name}


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
        """Write each document and its index entries, and publish the changes: one pipeline of a few
        multi-member commands per site and key (not one command per account), so a batch of a
        thousand scores costs about as many round trips as one."""
        by_site: dict[str, list[Mapping[str, Any]]] = {}
        for doc in docs:
            by_site.setdefault(doc["site_id"], []).append(doc)
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for site_id, site_docs in by_site.items():
            k = self.keys(site_id)
            removals: dict[str, list[str]] = {}
            additions: dict[str, dict[str, float]] = {}
            people: dict[str, list[str]] = {}
            summaries: dict[Any, Any] = {}
            full: dict[Any, Any] = {}
            facts: dict[Any, Any] = {}
            for doc in site_docs:
                account = doc["account"]
                old = previous.get(account)
                if old is not None:
                    for key in self._index_keys(k, old):
                        removals.setdefault(key, []).append(account)
                score = float(doc["priority_key"])
                for key in (k.rank, *self._index_keys(k, doc)):
                    additions.setdefault(key, {})[account] = score
                    if account in removals.get(key, ()):
                        removals[key].remove(account)
                additions.setdefault(k.fit, {})[account] = float(doc.get("fit") or 0.0)
                additions.setdefault(k.intent, {})[account] = float(doc.get("intent") or 0.0)
                for p in doc.get("people") or ():
                    people.setdefault(k.person(p["person_id"]), []).append(account)
                summaries[account] = json.dumps(summary_of(doc), separators=(",", ":"))
                facts[account] = facts_of(doc)
                full[account] = json.dumps(doc, separators=(",", ":"))
                n += 1
            for key, members in removals.items():
                if members:
                    pipe.zrem(key, *members)
            for key, mapping in additions.items():
                pipe.zadd(key, mapping)
            for key, accounts in people.items():
                pipe.sadd(key, *accounts)
            pipe.hset(k.summaries, mapping=summaries)
            pipe.hset(k.facts, mapping=facts)
            pipe.hset(k.docs, mapping=full)
            # one message per batch: a JSON list of the changed rows
            pipe.publish(k.changes, "[" + ",".join(summaries.values()) + "]")
        if n:
            await pipe.execute()
        return n

    @staticmethod
    def _index_keys(k: ViewKeys, doc: Mapping[str, Any]) -> tuple[str, ...]:
        """The status and country indexes ``doc`` belongs to."""
        keys = [k.status(doc["status"])]
        if doc.get("country"):
            keys.append(k.country(doc["country"]))
        return tuple(keys)

    async def remove(self, site_id: str, accounts: Sequence[str]) -> int:
        """Drop accounts from the view (a suppressed domain, an erased person's own account)."""
        k = self.keys(site_id)
        old = await self.docs(site_id, accounts)
        pipe = self.client.pipeline(transaction=False)
        for account, doc in old.items():
            for key in self._index_keys(k, doc):
                pipe.zrem(key, account)
            pipe.zrem(k.rank, account)
            pipe.zrem(k.fit, account)
            pipe.zrem(k.intent, account)
            pipe.hdel(k.summaries, account)
            pipe.hdel(k.facts, account)
            pipe.hdel(k.docs, account)
            for p in doc.get("people") or ():
                pipe.srem(k.person(p["person_id"]), account)
            pipe.publish(k.changes, json.dumps([{"account": account, "removed": True}]))
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

    async def accounts_naming(self, site_id: str, person_id: str | None, visitor_ids: Sequence[str]) -> list[str]:
        """The accounts whose documents list the person or a session of ``visitor_ids`` (what an erasure
        must reach in the stages too). Reads every document of the site (HSCAN): an erasure, never a
        request path."""
        k = self.keys(site_id)
        found = {_s(a) for a in await self.client.smembers(k.person(person_id))} if person_id else set()
        wanted = set(visitor_ids)
        if wanted:
            async for account, raw in self.client.hscan_iter(k.docs, count=500):
                if any(s.get("visitor_id") in wanted for s in json.loads(raw).get("sessions") or ()):
                    found.add(_s(account))
        return sorted(found)

    async def forget_visitors(self, site_id: str, visitor_ids: Sequence[str]) -> int:
        """Drop the sessions of ``visitor_ids`` from every account document that lists them (an
        erased person's visits to a company account); returns how many accounts changed.
        Reads every document of the site (HSCAN): an erasure, never a request path."""
        wanted = set(visitor_ids)
        if not wanted:
            return 0
        k = self.keys(site_id)
        docs: dict[str, dict[str, Any]] = {}
        async for account, raw in self.client.hscan_iter(k.docs, count=500):
            doc = json.loads(raw)
            if any(s.get("visitor_id") in wanted for s in doc.get("sessions") or ()):
                docs[_s(account)] = doc
        changed = []
        for doc in docs.values():
            changed.append({**doc, "sessions": [s for s in doc.get("sessions") or ()
                                                if s.get("visitor_id") not in wanted]})
        if changed:
            previous = {a: d for a, d in docs.items()}
            await self.put(changed, previous)
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
        selective = await self._selective_candidates(k, f, limit)
        if selective is not None:
            return await self._list_candidates(k, f, selective, limit, cursor, now_ms)
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
        page = max(2 * limit, 32)  # grows while a filter keeps few rows of each page
        while len(rows) < limit:
            batch: list[Any] = await self.client.zrevrange(index, start, start + page - 1, withscores=True)
            if not batch:
                break
            start += len(batch)
            await self._collect(k, f, [(float(sc), _s(m)) for m, sc in batch], limit, now_ms, rows)
            if len(batch) < page:
                break
            page = min(page * 4, _PAGE)
        next_cursor = rows[-1]["cursor"] if len(rows) >= limit else None
        return Page(rows, next_cursor)

    async def _selective_candidates(self, k: ViewKeys, f: Filter, limit: int) -> Candidates | None:
        """The accounts above the more selective of ``min_fit`` / ``min_intent``, in priority order,
        when there are at most :data:`_SELECTIVE` of them (else None: scanning the priority order
        finds ``limit`` rows sooner)."""
        picks = [(index, low) for index, low in ((k.fit, f.min_fit), (k.intent, f.min_intent)) if low is not None]
        if not picks:
            return None
        counts = [int(await self.client.zcount(index, low, "+inf")) for index, low in picks]
        best = min(range(len(picks)), key=counts.__getitem__)
        # Reading n candidates costs about n; scanning the priority order for ``limit`` rows costs about
        # limit * total / n: read the candidates when they are the fewer (and never more than _SELECTIVE).
        total = int(await self.client.zcard(k.rank))
        if counts[best] > min(_SELECTIVE, max(4 * limit, math.isqrt(limit * max(total, 1)))):
            return None
        index, low = picks[best]
        members = [_s(m) for m in await self.client.zrangebyscore(index, low, "+inf")]
        if not members:
            return []
        scores = await self.client.zmscore(k.rank, members)
        # the order of ZREVRANGE: score descending, then member descending
        return sorted(((float(sc), m) for m, sc in zip(members, scores) if sc is not None), reverse=True)

    async def _list_candidates(self, k: ViewKeys, f: Filter, ordered: Candidates, limit: int,
                               cursor: str | None, now_ms: int | None) -> Page:
        start = 0
        if cursor:
            score_text, _, account = cursor.partition("|")
            after = (float(score_text), account)
            start = next((i + 1 for i, item in enumerate(ordered) if item[1] == account),
                         next((i for i, item in enumerate(ordered) if item < after), len(ordered)))
        rows: List[dict[str, Any]] = []
        while len(rows) < limit and start < len(ordered):
            chunk = ordered[start:start + 256]
            start += len(chunk)
            await self._collect(k, f, chunk, limit, now_ms, rows)
        return Page(rows, rows[-1]["cursor"] if len(rows) >= limit else None)

    async def _collect(self, k: ViewKeys, f: Filter, items: Candidates, limit: int, now_ms: int | None,
                       rows: List[dict[str, Any]]) -> None:
        """Append to ``rows`` (up to ``limit``) the rows of ``items`` ((priority key, account), in order)
        that pass ``f``: the filters read each account's facts; only kept rows' summaries are read."""
        facts = await self.client.hmget(k.facts, [m for _, m in items])
        kept = [(score, member) for (score, member), raw in zip(items, facts)
                if raw is not None and matches(_facts(raw), f)][:limit - len(rows)]
        if not kept:
            return
        summaries = await self.client.hmget(k.summaries, [m for _, m in kept])
        for (score, member), raw in zip(kept, summaries):
            if raw is None:
                continue
            row = json.loads(raw)
            if now_ms is not None:
                row["priority"] = priority_at(score, now_ms)
            row["cursor"] = f"{score!r}|{member}"
            rows.append(row)
