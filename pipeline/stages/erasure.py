"""Erasure records in the stages: `leadstream forget` reaches the workers' live state in band.

The workers' tables live in memory (or RocksDB) and Faust reads their changelogs only on recovery,
so a tombstone written into a changelog from outside would not change a running worker, which
would write the old value back. Instead ``forget`` publishes an ``Erasure`` (schemas/Erasure.avsc)
to ``pixel-events``, as a ``CollectorBatch`` with erasures and no payloads, on the partition of the
visitor's ``site|visitor`` key (:func:`pipeline.ops.forget.erasure_records`). Each stage handles
it as one more record of its input, in order with the visitor's events and with the runner's
crash safety (the group's outputs acknowledged, then its state writes):

1. the visitor stage (:func:`erase_visitors`) deletes the visitor's state (a changelog tombstone)
   and forwards the erasure to ``visits``: one ``VisitBatch`` with erasures per partition of the
   accounts the visitor contributed to (:func:`pipeline.core.erasure.visitor_accounts`) and those
   the erasure names (``forget`` adds the prospect list's accounts naming the person or visitor),
   each naming that partition's accounts;
2. the account stage (:func:`erase_accounts`) takes the visitor's share and the person out of each
   account (:func:`pipeline.core.erasure.erase_from_account`) and writes its new ``LeadScore``, or
   deletes it and writes a ``lead-scores`` tombstone when nothing is left (also when it holds no
   state for the account: its last score may name the person). No ``QualifiedLead`` is written.

A record that carries erasures is handled here whole: payloads or updates in the same record (no
writer does that) become bad rows, as do erasures for an unconfigured site or on the wrong partition.
Handling an erasure again (a replay after a crash) finds nothing more to remove.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from ..core.erasure import erase_from_account, is_empty, person_ids_of, visitor_accounts
from ..core.failures import FailureType
from ..core.intent import AccountState, score_intent
from ..core.qualify import qualify
from ..metrics import STAGE_EVENTS
from ..topology import account_key, partition_for, visitor_key
from .messages import lead_score_record
from .runtime import HandlerResult, Output, StateView

if TYPE_CHECKING:
    from .account import AccountStage
    from .visitor import VisitorStage

__all__ = ["erasures_of", "erase_visitors", "erase_accounts", "ERASED"]

log = logging.getLogger(__name__)

#: the ``leadstream_stage_events_total`` outcome of an erased visitor or account
ERASED = "erased"


def erasures_of(batch: Any) -> list[Any]:
    """The erasures a decoded ``CollectorBatch`` or ``VisitBatch`` carries ([] for ordinary records)."""
    erasures = batch.get("erasures") if isinstance(batch, Mapping) else None
    return erasures if isinstance(erasures, list) else []


class BadRows(Protocol):
    def __call__(self, failure_type: FailureType, message: str, payload: Any, site_id: str | None,
                 details: Mapping[str, str] | None = None) -> None: ...


def _begin(stage: "VisitorStage | AccountStage", batch: Mapping[str, Any], other: str, record: str,
           schema: str) -> tuple[HandlerResult, BadRows]:
    """The result of an erasure record and its bad rows (written by the stage's own ``_bad``); the
    record's ``other`` field (payloads, updates), which no writer sets beside erasures, is refused."""
    result = HandlerResult()

    def bad(failure_type: FailureType, message: str, payload: Any, site_id: str | None,
            details: Mapping[str, str] | None = None) -> None:
        stage._bad(result, failure_type, message, payload, site_id, details)

    if batch.get(other):
        bad(FailureType.schema_violation, f"{record} carries erasures and {other}: the {other} were not applied",
            {other: batch[other]}, None, {"payload_schema": schema})
    return result, bad


def erase_visitors(stage: "VisitorStage", partition: int, offset: int, batch: Mapping[str, Any],
                   states: StateView) -> HandlerResult:
    """A ``pixel-events`` record with erasures: delete each visitor's state, forward to its accounts."""
    result, bad = _begin(stage, batch, "payloads", f"pixel-events record {partition}:{offset}", "CollectorBatch")
    visits_partitions = stage.topics.visits_partitions
    forward: dict[int, dict[str, tuple[dict[str, Any], list[str]]]] = {}  # partition -> erasure id -> its accounts
    for erasure in erasures_of(batch):
        try:
            site_id, visitor_id = _subject(stage, erasure, bad)
            if site_id is None or visitor_id is None:
                continue
            key = visitor_key(site_id, visitor_id)
            owner = partition_for(key, stage.topics.pixel_events_partitions)
            if owner != partition:
                bad(FailureType.schema_violation, f"erasure of {key} on pixel-events partition {partition}: its "
                        f"state is on partition {owner} (run `leadstream forget` again)", erasure, site_id)
                continue
            named = [str(a) for a in erasure.get("accounts") or ()]
            for account in dict.fromkeys([*visitor_accounts(visitor_id, states.get(key)), *named]):
                p = partition_for(account_key(site_id, account), visits_partitions)
                entry = forward.setdefault(p, {}).setdefault(str(erasure["erasure_id"]), (dict(erasure), []))
                entry[1].append(account)
            result.deletes.append(key)
            STAGE_EVENTS.labels("visitor", ERASED).inc()
        except stage.retryable:
            raise
        except Exception as exc:
            log.exception("visitor: an erasure failed")
            bad(FailureType.processing_failure, f"an erasure failed in the visitor stage: {type(exc).__name__}: "
                    f"{exc}", erasure, None)
    for p, entries in sorted(forward.items()):
        erasures = [{**e, "accounts": list(dict.fromkeys(accounts))} for e, accounts in entries.values()]
        keys = {account_key(e["site_id"], a) for e in erasures for a in e["accounts"]}
        value = stage.codec.encode("VisitBatch", {"updates": [], "erasures": erasures}, topic=stage.topics.visits)
        result.outputs.append(Output(stage.topics.visits, p, next(iter(keys)).encode() if len(keys) == 1 else None,
                                     value))
    return result


def erase_accounts(stage: "AccountStage", partition: int, offset: int, batch: Mapping[str, Any],
                   states: StateView) -> HandlerResult:
    """A ``visits`` record with erasures: take the visitor and the person out of each named account."""
    result, bad = _begin(stage, batch, "updates", f"visits record {partition}:{offset}", "VisitBatch")
    for erasure in erasures_of(batch):
        site_id, visitor_id = _subject(stage, erasure, bad)
        if site_id is None or visitor_id is None:
            continue
        for account in dict.fromkeys(str(a) for a in erasure.get("accounts") or ()):
            key = account_key(site_id, account)
            owner = partition_for(key, stage.idle.partitions)  # the idle index knows the visits partitions
            if owner != partition:
                bad(FailureType.schema_violation, f"erasure of {key} on visits partition {partition}: its "
                        f"state is on partition {owner}", erasure, site_id)
                continue
            try:
                _erase_account(stage, key, erasure, visitor_id, states.get(key), offset, result)
            except stage.retryable:
                raise
            except Exception as exc:  # one account's state that cannot be read costs only that account
                log.exception("account: erasing from %s failed", key)
                bad(FailureType.processing_failure, f"erasing from account {key} failed in the account stage: "
                        f"{type(exc).__name__}: {exc}", erasure, site_id, {"account": key})
    return result


def _erase_account(stage: "AccountStage", key: str, erasure: Mapping[str, Any], visitor_id: str,
                   stored: Mapping[str, Any] | None, offset: int, result: HandlerResult) -> None:
    topic, partitions = stage.topics.lead_scores, stage.topics.lead_scores_partitions
    tombstone = Output(topic, partition_for(key, partitions), key.encode(), None)
    if not stored or not stored.get("a"):
        result.outputs.append(tombstone)  # no state here, but the last score may still name the person
        return
    state = AccountState.from_dict(stored["a"])
    site = stage.settings.site(state.site_id)
    salt = stage.settings.email_salt(site) if site is not None else ""
    token = erasure.get("person_token")
    state = erase_from_account(state, visitor_id, person_ids_of(state, token if isinstance(token, str) else None,
                                                                salt))
    STAGE_EVENTS.labels("account", ERASED).inc()
    if is_empty(state):
        result.deletes.append(key)
        result.outputs.append(tombstone)
        return
    rules = stage.rules.get(state.site_id, stage.default_rules)
    intent = score_intent(state, rules.intent)
    decision = qualify(state, intent, rules)
    # A re-score is not a new lead: the lead memory stays as the erasure left it.
    reasons = decision.reasons if not decision.qualified else ("rescored_after_erasure",)
    score = lead_score_record(state, intent, decision.fit, decision.filters, decision.tier, False, reasons,
                              rules.model_version, rules.model_digest, expansion=decision.expansion,
                              expansion_reason=decision.expansion_reason, fit_min=rules.thresholds.fit_min,
                              intent_min=rules.thresholds.intent_min)
    result.outputs.append(Output(topic, tombstone.partition, tombstone.key,
                                 stage.codec.encode("LeadScore", score, topic=topic)))
    result.states[key] = {"a": _at(state, offset).to_dict(), "src": dict(stored.get("src") or {})}


def _at(state: AccountState, offset: int) -> AccountState:
    return replace(state, offset=max(offset, state.offset))


def _subject(stage: "VisitorStage | AccountStage", erasure: Any, bad: "BadRows") -> tuple[str | None, str | None]:
    """(site id, visitor id) of an erasure of a configured site; else a bad row and (None, None)."""
    if not isinstance(erasure, Mapping) or not erasure.get("visitor_id") or not erasure.get("erasure_id"):
        bad(FailureType.schema_violation, "an erasure without a visitor id", erasure, None)
        return None, None
    site_id = str(erasure.get("site_id"))
    if stage.settings.site(site_id) is None:
        bad(FailureType.site_violation, f"erasure for site {site_id!r}, which is not configured in the worker's "
                "settings (run `leadstream forget` again after adding it)", erasure, site_id)
        return None, None
    return site_id, str(erasure["visitor_id"])
