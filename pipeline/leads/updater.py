"""Keeps the prospect list current: ``lead-scores`` in, the Redis view (``store.LeadsView``) out.

- Every ``LeadScore`` of the live topic becomes its account's document (``view.account_doc``),
  with the people's names and titles from the site owner's identity graph. Only the live topic
  is read: a replay writes its scores to topics of its own, so it never reaches this view.
- Suppressed domains (the site's ``filters.suppressed_domains``) never show.
- Imported companies that fit the site's ICP and have not visited are listed as ``not_seen``
  (:func:`seed_not_seen`), ranked by fit; their first visit replaces them.
- An empty view (first start, or Redis lost) is rebuilt from the beginning of ``lead-scores``,
  a compacted topic holding every account's latest score, whatever the group committed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..codec import Codec, CodecError, make_codec
from ..core.fit import score_fit
from ..core.scoring_model import ScoringModel, effective_rules
from ..enrich.identity_store import PROFILE_PREFIX, IdentityKeys
from ..enrich.redis_store import COMPANY_FIELDS, GLOBAL_SCOPE, company_from_hash, scope_for
from ..metrics import LEADS_VIEW_WRITES
from ..settings import Settings, SiteSettings
from ..topology import split_account_key
from .store import LeadsView
from .view import account_doc, domain_of, not_seen_doc

__all__ = ["apply_scores", "seed_not_seen", "ViewUpdater"]

log = logging.getLogger(__name__)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _suppressed(site: SiteSettings | None, model: ScoringModel) -> frozenset[str]:
    rules = effective_rules(model, site.rules if site else None)
    return frozenset(rules.filters.suppressed_domains)


async def _profiles(view: LeadsView, site_id: str, person_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Profile fields (name, title, seniority, department...) of each person, one pipeline."""
    if not person_ids:
        return {}
    keys = IdentityKeys(site_id)
    pipe = view.client.pipeline(transaction=False)
    for pid in person_ids:
        pipe.hgetall(keys.person(pid))
    out: dict[str, dict[str, str]] = {}
    for pid, raw in zip(person_ids, await pipe.execute()):
        fields = {_s(k): _s(v) for k, v in (raw or {}).items()}
        profile = {k[len(PROFILE_PREFIX):]: v for k, v in fields.items() if k.startswith(PROFILE_PREFIX)}
        name = profile.get("name") or " ".join(p for p in (profile.get("first_name"), profile.get("last_name")) if p)
        out[pid] = {**profile, "name": name or profile.get("email_domain") or ""}
    return out


async def apply_scores(view: LeadsView, scores: Iterable[Mapping[str, Any]], settings: Settings,
                       model: ScoringModel) -> int:
    """Fold decoded ``LeadScore`` records into the view (later records of an account win)."""
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for score in scores:
        latest[(score["site_id"], score["account"])] = score
    by_site: dict[str, list[Mapping[str, Any]]] = {}
    for (site_id, _), score in latest.items():
        by_site.setdefault(site_id, []).append(score)
    written = 0
    for site_id, site_scores in by_site.items():
        suppressed = _suppressed(settings.site(site_id), model)
        gone = [s["account"] for s in site_scores
                if (s.get("company_domain") or domain_of(s["account"])) in suppressed]
        keep = [s for s in site_scores if s["account"] not in gone]
        if gone:
            await view.remove(site_id, gone)
        accounts = [s["account"] for s in keep]
        previous = await view.docs(site_id, accounts)
        # a person's profile is read once per account: until it has a name, or when first seen there
        known = {a: {p["person_id"]: p for p in d.get("people") or () if p.get("name")} for a, d in previous.items()}
        wanted = sorted({p["person_id"] for s in keep for p in s.get("persons") or ()
                         if p["person_id"] not in known.get(s["account"], {})})
        fetched = await _profiles(view, site_id, wanted)
        docs = [account_doc(s, previous.get(s["account"]), {**known.get(s["account"], {}), **fetched}) for s in keep]
        written += await view.put(docs, previous)
    return written


async def seed_not_seen(view: LeadsView, settings: Settings, model: ScoringModel) -> int:
    """List every imported company (global and the site's own) that meets the site's fit threshold
    and has no document yet, as ``not_seen``. Idempotent; returns how many were added."""
    added = 0
    for site in settings.sites:
        rules = effective_rules(model, site.rules)
        if not rules.fit.rules:
            continue  # no ICP: nothing to prospect
        suppressed = frozenset(rules.filters.suppressed_domains)
        companies: dict[str, Any] = {}
        for scope in (GLOBAL_SCOPE, scope_for(site.site_id)):
            prefix = f"ls:{scope}:company:"
            async for key in view.client.scan_iter(match=prefix + "*", count=1000):
                domain = _s(key)[len(prefix):]
                if domain not in suppressed:
                    companies[domain] = key
        domains = sorted(companies)
        for i in range(0, len(domains), 500):
            chunk = domains[i:i + 500]
            existing = await view.docs(site.site_id, [f"c:{d}" for d in chunk])
            pipe = view.client.pipeline(transaction=False)
            for d in chunk:
                pipe.hmget(companies[d], list(COMPANY_FIELDS))
            docs = []
            for d, values in zip(chunk, await pipe.execute()):
                if f"c:{d}" in existing:
                    continue
                company = company_from_hash(d, {f: _s(v) for f, v in zip(COMPANY_FIELDS, values) if v is not None})
                if company is None:
                    continue
                fit = score_fit(company, rules.fit)
                if fit.score < rules.thresholds.fit_min or fit.score <= 0:
                    continue
                docs.append(not_seen_doc(site.site_id, {"domain": d, "name": company.name,
                                                        "industry": company.industry,
                                                        "employees": company.employees, "country": company.country},
                                         fit.score, [c.to_dict() for c in fit.contributions]))
            if docs:
                added += await view.put(docs, {})
    return added


class ViewUpdater:
    """Consumes ``lead-scores`` in its own consumer group and keeps the view current."""

    def __init__(self, settings: Settings, model: ScoringModel, view: LeadsView, codec: Codec | None = None,
                 group_id: str | None = None) -> None:
        self.settings = settings
        self.model = model
        self.view = view
        self.codec = codec or make_codec(settings.kafka.schema_registry_url)
        self.topic = settings.topics.lead_scores
        self.group_id = group_id or f"{settings.stages.app_id}-leads"
        self.applied = 0
        self.caught_up = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(self.topic, group_id=self.group_id, enable_auto_commit=False,
                                    auto_offset_reset="earliest", **self.settings.kafka.client_options())
        await consumer.start()
        try:
            rebuild = not await self.view.built()
            ends: dict[TopicPartition, int] = {}
            while not stop.is_set():
                if not consumer.assignment():
                    await asyncio.sleep(0.1)
                    batch = await consumer.getmany(timeout_ms=100)
                else:
                    if rebuild or not ends:
                        parts = list(consumer.assignment())
                        if rebuild:
                            await consumer.seek_to_beginning(*parts)
                            log.info("leads view: rebuilding from the beginning of %s", self.topic)
                            rebuild = False
                        ends = await consumer.end_offsets(parts)
                    batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                latest: dict[tuple[str, str], Any] = {}   # (site, account) -> its last score, None: tombstone
                for records in batch.values():
                    for rec in records:
                        if rec.value is None:
                            # a tombstone (erasure): the account leaves the view
                            site_account = split_account_key((rec.key or b"").decode("utf-8", "replace"))
                            if site_account is not None:
                                latest[site_account] = None
                            continue
                        try:
                            score = self.codec.decode(rec.value, "LeadScore")
                        except CodecError as exc:
                            log.warning("leads view: skipping unreadable lead-scores record %s:%d (%s)",
                                        rec.partition, rec.offset, exc)
                            continue
                        latest[(score["site_id"], score["account"])] = score
                scores = [s for s in latest.values() if s is not None]
                gone: dict[str, list[str]] = {}
                for (site_id, account), score in latest.items():
                    if score is None:
                        gone.setdefault(site_id, []).append(account)
                for site_id, accounts in gone.items():
                    await self.view.remove(site_id, accounts)
                if scores:
                    written = await apply_scores(self.view, scores, self.settings, self.model)
                    self.applied += written
                    LEADS_VIEW_WRITES.inc(written)
                if batch:
                    await consumer.commit()
                if ends and not self.caught_up.is_set():
                    positions = {tp: await consumer.position(tp) for tp in ends}
                    if all(positions[tp] >= end for tp, end in ends.items()):
                        await self.view.mark_built()
                        self.caught_up.set()
        finally:
            await consumer.stop()
