"""Stage 2, account: visits (VisitBatch) -> lead-scores (LeadScore) and qualified-leads (QualifiedLead).

Keyed by site and account. Per input record: decode once, group updates by
account, fold each account's updates into its state once (intent, the core),
evaluate fit, filters and thresholds, and qualify. Every changed account gets
a ``LeadScore``; an account that qualifies gets one ``QualifiedLead`` with its
explanation. The site's monthly quota is shared by all partitions, so it is
kept in Redis (a set of lead ids per site and month: a replayed lead finds its
id already counted).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Protocol

from ..codec import Codec, CodecError
from ..core.failures import FailureType
from ..core.intent import AccountState, apply_visits
from ..core.qualify import Decision, over_quota, qualify, quota_claim
from ..core.scoring_model import EffectiveRules, ScoringModel, effective_rules
from ..core.sessions import DAY_MS
from ..core.visit import VisitUpdate
from ..metrics import (EVENT_TIME, FILTERED, LEAD_SCORES, LEADS, STAGE_BAD_ROWS, STAGE_BATCH_SIZE, STAGE_EVENTS,
                       record_scores)
from ..settings import Settings
from ..topology import account_key, partition_for, site_of_key
from .erasure import erase_accounts, erasures_of
from .expiry import IdleKeys
from .messages import bad_row, lead_score_record, qualified_lead_record, split_bad_row, visit_from_record
from .runtime import HandlerResult, Output, StateView

log = logging.getLogger(__name__)

STAGE = "account"


class QuotaPort(Protocol):
    async def claim(self, site_id: str, month: str, lead_id: str, quota: int) -> bool:
        """True when ``lead_id`` fits in the site's quota for ``month`` (idempotent per lead id)."""
        ...


class AccountTopics:
    def __init__(self, lead_scores: str, lead_scores_partitions: int, qualified_leads: str,
                 qualified_leads_partitions: int, bad_events: str) -> None:
        self.lead_scores = lead_scores
        self.lead_scores_partitions = lead_scores_partitions
        self.qualified_leads = qualified_leads
        self.qualified_leads_partitions = qualified_leads_partitions
        self.bad_events = bad_events


class AccountStage:
    """The account stage's handler (see module doc)."""

    def __init__(self, settings: Settings, codec: Codec, topics: AccountTopics, model: ScoringModel,
                 quota: QuotaPort | None,
                 retryable: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError),
                 visits_partitions: int = 1) -> None:
        self.settings = settings
        self.codec = codec
        self.topics = topics
        self.quota = quota
        self.rules: dict[str, EffectiveRules] = {}
        self.use_model(model)
        self.retryable = retryable
        self.bad_row_bytes = settings.kafka.max_message_bytes // 2
        self.idle = IdleKeys(int(settings.stages.state_retention_days * DAY_MS), visits_partitions,
                             _account_last_seen)

    def use_model(self, model: ScoringModel) -> None:
        """Score with ``model`` (and each site's overrides) from the next record on: a model switch
        (``leadstream model promote``) takes effect without a restart."""
        self.rules = {s.site_id: s.effective_rules(model) for s in self.settings.sites}
        self.default_rules = effective_rules(model, None)

    async def __call__(self, partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        result = HandlerResult()
        try:
            batch = self.codec.decode(value, "VisitBatch")
        except CodecError as exc:
            self._bad(result, FailureType.schema_violation, f"visits record {partition}:{offset} is not a "
                      f"VisitBatch: {exc}", value, None)
            return result
        if erasures_of(batch):  # `leadstream forget`, in band after the visitor's earlier updates
            return erase_accounts(self, partition, offset, batch, states)
        by_account = self._split(batch.get("updates") if isinstance(batch, Mapping) else None, offset, states,
                                 result)
        STAGE_BATCH_SIZE.labels(STAGE).observe(sum(len(v) for v in by_account.values()))
        processed_at = str(int(time.time() * 1000))
        for key, items in by_account.items():
            try:
                outcome = await self._account(key, items, states.get(key) or {}, offset, processed_at)
            except self.retryable:
                raise
            except Exception as exc:
                log.exception("account: %s failed", key)
                self._bad(result, FailureType.processing_failure, f"account {key} failed in the account stage: "
                          f"{type(exc).__name__}: {exc}", {"updates": [r for _, _, r in items]},
                          site_of_key(key), {"payload_schema": "VisitBatch", "account": key})
                continue
            if outcome is None:
                continue
            state, outputs, last_ts = outcome
            result.states[key] = state
            result.outputs.extend(outputs)
            self.idle.touch(partition, key, last_ts)
            self.idle.advance(partition, last_ts)
        for key in self.idle.expired(partition, states, keep=set(result.states)):
            result.deletes.append(key)
            STAGE_EVENTS.labels(STAGE, "evicted").inc()
        return result

    def _split(self, records: Any, offset: int, states: StateView, result: HandlerResult
               ) -> dict[str, list[tuple[VisitUpdate, tuple[str, int, int], Mapping[str, Any]]]]:
        """The record's updates by account key; each unreadable update is its own bad row."""
        by_account: dict[str, list[tuple[VisitUpdate, tuple[str, int, int], Mapping[str, Any]]]] = {}
        if not isinstance(records, list):
            return by_account
        for record in records:
            try:
                key = account_key(record["site_id"], record["account"])
                if states.applied(key, offset):
                    continue
                by_account.setdefault(key, []).append((visit_from_record(record), _source(record["update_id"]),
                                                       record))
            except self.retryable:
                raise
            except Exception as exc:
                site = record.get("site_id") if isinstance(record, Mapping) else None
                self._bad(result, FailureType.schema_violation, f"unreadable visit update: {type(exc).__name__}: "
                          f"{exc}", {"updates": [record]}, site if isinstance(site, str) else None,
                          {"payload_schema": "VisitBatch"})
        return by_account

    async def _account(self, key: str, items: list[tuple[VisitUpdate, tuple[str, int, int], Mapping[str, Any]]],
                 stored: Mapping[str, Any], offset: int, processed_at: str
                 ) -> tuple[dict[str, Any], list[Output], int] | None:
        """One account's updates: fold into its state, score, qualify; (state, outputs, last event time)."""
        seen: dict[str, list[int]] = dict(stored.get("src") or {})
        updates = []
        for update, (src, src_offset, index), _ in items:
            # The visitor stage re-sends updates after a crash (same ids, new visits offsets):
            # apply each source position once.
            last = seen.get(src)
            if last is not None and (src_offset, index) <= (last[0], last[1]):
                STAGE_EVENTS.labels(STAGE, "duplicate").inc()
                continue
            seen[src] = [src_offset, index]
            updates.append(update)
        if not updates:
            return None
        site_id, account = updates[0].site_id, updates[0].account
        rules = self.rules.get(site_id, self.default_rules)
        state = (AccountState.from_dict(stored["a"]) if stored.get("a")
                 else AccountState.new(site_id, account))
        state, intent = apply_visits(state, updates, rules.intent, offset=offset)
        human = [u for u in updates if not u.is_bot]
        is_bot = not human
        decision = qualify(state, intent, rules, is_bot=is_bot,
                           bot_reason=updates[-1].bot_reason if is_bot else None)
        decision = await self._apply_quota(decision, rules, state)
        STAGE_EVENTS.labels(STAGE, "bot" if is_bot else "processed").inc(len(updates))
        for f in decision.filters:
            if not f.passed:
                FILTERED.labels(site_id, f.name).inc()
        new_state = decision.state
        outputs: list[Output] = []
        score = lead_score_record(new_state, intent, decision.fit, decision.filters, decision.tier,
                                  decision.qualified, decision.reasons, rules.model_version, rules.model_digest,
                                  expansion=decision.expansion, expansion_reason=decision.expansion_reason,
                                  fit_min=rules.thresholds.fit_min, intent_min=rules.thresholds.intent_min)
        LEAD_SCORES.labels(site_id).inc()
        record_scores(site_id, decision.fit.score, intent.score)
        EVENT_TIME.applied(STAGE, new_state.last_ts)
        outputs.append(Output(self.topics.lead_scores, partition_for(key, self.topics.lead_scores_partitions),
                              key.encode(), self.codec.encode("LeadScore", score, topic=self.topics.lead_scores)))
        if decision.qualified and decision.lead is not None:
            LEADS.labels(site_id, decision.tier).inc()
            lead = qualified_lead_record(decision.lead, new_state)
            outputs.append(Output(
                self.topics.qualified_leads, partition_for(key, self.topics.qualified_leads_partitions),
                key.encode(), self.codec.encode("QualifiedLead", lead, topic=self.topics.qualified_leads),
                headers=(("processed_at", processed_at.encode()),)))
        return {"a": new_state.to_dict(), "src": seen}, outputs, new_state.last_ts

    def failed(self, partition: int, offset: int, value: bytes, exc: Exception) -> HandlerResult:
        """The last resort: the record failed outside every per-account boundary (``unknown``)."""
        result = HandlerResult()
        self._bad(result, FailureType.unknown, f"visits record {partition}:{offset} failed in the account stage: "
                  f"{type(exc).__name__}: {exc}", value, None)
        return result

    async def _apply_quota(self, decision: Decision, rules: EffectiveRules, before: AccountState) -> Decision:
        """The quota rule of :mod:`pipeline.core.qualify`, claimed on the shared ledger (``self.quota``)."""
        claim = quota_claim(decision, rules)
        if claim is None:
            return decision
        if self.quota is None:
            log.warning("monthly_quota is set but no Redis is configured: the quota is not enforced")
            return decision
        if await self.quota.claim(claim.site_id, claim.month, claim.lead_id, claim.quota):
            return decision
        return over_quota(decision, before, claim)

    def _bad(self, result: HandlerResult, failure_type: FailureType, message: str, payload: Any,
             site_id: str | None, details: Mapping[str, str] | None = None) -> None:
        STAGE_BAD_ROWS.labels(STAGE, failure_type.value).inc()
        row = bad_row(STAGE, failure_type, message, payload, site_id=site_id, source="visits", details=details)
        for part in split_bad_row(row, self.bad_row_bytes):
            result.outputs.append(Output(self.topics.bad_events, None, None,
                                         self.codec.encode("BadRow", part, topic=self.topics.bad_events)))


def _account_last_seen(stored: object) -> int | None:
    if not isinstance(stored, Mapping):
        return None
    a = stored.get("a")
    last = a.get("ts") if isinstance(a, Mapping) else None
    return int(last) if isinstance(last, int) else None


def _source(update_id: str) -> tuple[str, int, int]:
    """(source partition, source offset, index) of a visit update id ``<partition>:<offset>:<index>``."""
    partition, offset, index = update_id.split(":")
    return partition, int(offset), int(index)


class RedisQuota:
    """The per-site monthly lead quota ledger in Redis: ``<prefix>:<site>:<YYYY-MM>`` is the set of lead ids
    (prefix ``stages.quota_prefix``, ``ls:quota`` live; a replay counts in its own namespace). The script
    admits a claim as :class:`pipeline.core.qualify.QuotaClaim` states, atomically across partitions.

    ``client`` is a ``redis.asyncio.Redis`` (with the timeouts of ``RedisSettings``): a claim awaits
    Redis, it never blocks the event loop."""

    _SCRIPT = """
    if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
    if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
      redis.call('SADD', KEYS[1], ARGV[1])
      redis.call('EXPIRE', KEYS[1], 5356800)
      return 1
    end
    return 0
    """

    def __init__(self, client: Any, prefix: str = "ls:quota") -> None:
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(self._SCRIPT)

    def key(self, site_id: str, month: str) -> str:
        return f"{self.prefix}:{site_id}:{month}"

    async def claim(self, site_id: str, month: str, lead_id: str, quota: int) -> bool:
        return bool(await self._claim(keys=[self.key(site_id, month)], args=[lead_id, quota]))
