"""Qualification: whether an account becomes a lead now, and the lead's explanation.

A lead needs, in this order of reporting (all failures are listed, not just the first):
every filter passed; every required ICP rule met (``fit_requirement_failed:<rule>:<why>``,
and a failed ``icp`` filter entry); fit >= ``fit_min`` and intent >= ``intent_min``; the
required identity level (``company`` or ``person``) at or above ``min_confidence``; then
not an existing customer, outside the cool-down and inside the quota.

**Existing customers** (a company tag in ``qualification.customer_tags``, ``customer`` by
default) never become a new lead (reason ``existing_customer``). When such an account
passes everything else its decision carries ``expansion=True`` and a reason: a signal
for the account team, not a lead.

Tiers (HubSpot's grid): fit letter A (>= fit_a), B (>= fit_b), C; intent digit
1 (>= intent_1), 2 (>= intent_2), 3. Rank A1 < A2 < A3 < B1 < ... < C3 (lower is better).
**Cool-down:** one lead per account (or, at identity level ``person``, per person) per
``cooldown_days`` from the lead's event time. A tier strictly better than the lead's
current tier inside the cool-down **updates** that lead: same ``lead_id`` and
``sequence``, ``version`` + 1 and an ``update_reason`` (``tier_rise:B2->A1``).
**Quota:** at most ``monthly_quota`` leads per site per event-time calendar month (UTC).
The quota is shared by every partition, so its count lives in a ledger outside the
account state (``pipeline.stages.account.RedisQuota``); the rule is here:
:func:`quota_claim` is what a qualified decision claims (its lead id in the lead's
month), the ledger admits a lead id it already counted in that month (an update of a
lead counts once) or while fewer than ``monthly_quota`` are counted, and
:func:`over_quota` is the decision when it refuses.

Lead ids are uuid5 of site, account, model version and the account's qualification
sequence number: a replay from the same input with the same model gives the same ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Mapping

from .filters import FilterResult, LeadFacts, run_filters
from .fit import FitScore, score_fit
from .intent import AccountState, IntentScore
from .model import NetworkClass
from .scoring_model import EffectiveRules, Tiering
from .sessions import DAY_MS
from .visit import company_from_dict

__all__ = ["QuotaClaim", "quota_claim", "over_quota", "Decision", "QualifiedLead", "tier_of", "tier_rank",
           "lead_id", "lead_facts", "best_person", "evaluate", "qualify", "month_of", "is_customer",
           "recent_conversions", "describe_conversion"]

_LEAD_NS = uuid.UUID("0e0b6c55-3f61-4a8e-a7c1-5b7f1f0d9a42")


def month_of(tstamp: int) -> str:
    """UTC calendar month of an epoch-ms event time, ``YYYY-MM``."""
    return datetime.fromtimestamp(tstamp / 1000, tz=timezone.utc).strftime("%Y-%m")


def tier_of(fit: float, intent: float, t: Tiering) -> str:
    letter = "A" if fit >= t.fit_a else "B" if fit >= t.fit_b else "C"
    digit = "1" if intent >= t.intent_1 else "2" if intent >= t.intent_2 else "3"
    return letter + digit


def tier_rank(tier: str) -> int:
    """0 for A1 ... 8 for C3; lower is better."""
    return "ABC".index(tier[0]) * 3 + int(tier[1]) - 1


def lead_id(site_id: str, account: str, model_version: str, sequence: int) -> str:
    return str(uuid.uuid5(_LEAD_NS, f"{site_id}|{account}|{model_version}|{sequence}"))


def best_person(state: AccountState) -> tuple[str, Mapping[str, Any]] | None:
    """The account's most confident person (ties: most recent, then id)."""
    if not state.persons:
        return None
    pid, rec = sorted(state.persons.items(), key=lambda kv: (-float(kv[1].get("conf", 0)),
                                                            -int(kv[1].get("ts", 0)), kv[0]))[0]
    return pid, rec


def lead_facts(state: AccountState, *, is_bot: bool = False, bot_reason: str | None = None) -> LeadFacts:
    """Filter inputs from the account state: company and its evidence, the latest visit's
    network class, country (company's, else the visit's geo), IP, pages, email hashes."""
    co = state.company
    company = company_from_dict(co) if co else None
    seen = state.seen
    return LeadFacts(
        company=company, company_evidence_sources=tuple(str(e[0]) for e in (co or {}).get("ev", ()))
        + (("identity",) if (co or {}).get("idv") else ()),
        network_class=NetworkClass(seen.get("nc", (co or {}).get("nc", "unknown"))),
        country=(company.country if company and company.country else seen.get("country")),
        client_ip=seen.get("ip"), pages=tuple(state.pages),
        email_hashes=tuple(sorted(str(p["eh"]) for p in state.persons.values() if p.get("eh"))),
        is_bot=is_bot, bot_reason=bot_reason)


@dataclass(frozen=True, slots=True)
class QualifiedLead:
    """The product's main output, with its explanation."""
    lead_id: str
    site_id: str
    account: str
    tstamp: int
    sequence: int
    tier: str
    fit: float
    intent: float
    model_version: str
    model_digest: str
    explanation: Mapping[str, Any]
    version: int = 1                     # > 1: an update of the same lead (a tier rise inside the cool-down)
    update_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"lead_id": self.lead_id, "site_id": self.site_id, "account": self.account, "tstamp": self.tstamp,
                "sequence": self.sequence, "tier": self.tier, "fit": self.fit, "intent": self.intent,
                "model_version": self.model_version, "model_digest": self.model_digest,
                "explanation": dict(self.explanation), "version": self.version,
                "update_reason": self.update_reason}


@dataclass(frozen=True, slots=True)
class Decision:
    qualified: bool
    reasons: tuple[str, ...]            # why not (empty when qualified)
    tier: str
    fit: FitScore
    intent: IntentScore
    filters: tuple[FilterResult, ...]
    state: AccountState                  # with the lead memory updated when qualified
    lead: QualifiedLead | None = None
    expansion: bool = False              # an existing customer that would otherwise qualify
    expansion_reason: str | None = None


def is_customer(state: AccountState, rules: EffectiveRules) -> bool:
    """The account's company carries one of ``qualification.customer_tags`` (case-insensitive)."""
    tags = {str(t).strip().lower() for t in (state.company or {}).get("tags", ())}
    return bool(tags & {t.strip().lower() for t in rules.qualification.customer_tags})


def evaluate(state: AccountState, intent: IntentScore, rules: EffectiveRules, *, is_bot: bool = False,
             bot_reason: str | None = None, extra_suppressed_hashes: frozenset[str] = frozenset(),
             extra_suppressed_domains: frozenset[str] = frozenset()
             ) -> tuple[FitScore, tuple[FilterResult, ...], list[str]]:
    """Fit, filters and threshold / identity reasons (no cool-down or quota): what a
    ``lead-scores`` record reports for any account."""
    facts = lead_facts(state, is_bot=is_bot, bot_reason=bot_reason)
    person = best_person(state)
    fit = score_fit(facts.company, rules.fit, seniority=person[1].get("sen") if person else None,
                    department=person[1].get("dep") if person else None)
    results = run_filters(facts, rules.filters, extra_suppressed_hashes, extra_suppressed_domains)
    reasons = [f"filter:{r.name}:{r.reason}" for r in results if not r.passed]
    unmet_rules = [u.split(":", 1)[0] for u in fit.unmet]
    results += (FilterResult("icp", not fit.unmet, f"required_rule_failed:{','.join(unmet_rules)}" if fit.unmet
                             else None),)
    reasons += [f"fit_requirement_failed:{u.replace(': ', ':', 1)}" for u in fit.unmet]
    th = rules.thresholds
    if fit.score < th.fit_min:
        reasons.append(f"fit_below_threshold:{fit.score}<{th.fit_min}")
    if intent.score < th.intent_min:
        reasons.append(f"intent_below_threshold:{intent.score}<{th.intent_min}")
    if th.identity_level == "person":
        conf = float(person[1].get("conf", 0)) if person else 0.0
    else:
        conf = float(state.company.get("conf", 0)) if state.company else 0.0
    if conf < th.min_confidence:
        reasons.append(f"identity_below_minimum:{th.identity_level}:{conf}<{th.min_confidence}")
    return fit, results, reasons


def qualify(state: AccountState, intent: IntentScore, rules: EffectiveRules, *,
            is_bot: bool = False, bot_reason: str | None = None,
            extra_suppressed_hashes: frozenset[str] = frozenset(),
            extra_suppressed_domains: frozenset[str] = frozenset()) -> Decision:
    """Decide at event time ``intent.now`` whether ``state``'s account is a lead now.

    Pure and deterministic. When qualified, the returned ``state`` carries the new lead
    memory (sequence, time, tier, person); the caller writes it. Otherwise it comes back
    unchanged. The monthly quota is not checked here: the caller claims
    :func:`quota_claim` of the decision on the shared ledger (:func:`over_quota` when refused).
    """
    now = intent.now
    fit, results, reasons = evaluate(state, intent, rules, is_bot=is_bot, bot_reason=bot_reason,
                                     extra_suppressed_hashes=extra_suppressed_hashes,
                                     extra_suppressed_domains=extra_suppressed_domains)
    q = rules.qualification
    tier = tier_of(fit.score, intent.score, q.tiers)
    person = best_person(state)

    def decision(why: list[str]) -> Decision:
        return Decision(False, tuple(why), tier, fit, intent, results, state)

    if is_customer(state, rules):
        if reasons:
            return decision([*reasons, "existing_customer"])
        why = (f"existing customer with intent {intent.score:g} (>= {rules.thresholds.intent_min:g}) and fit "
               f"{fit.score:g}: expansion signal, not a new lead")
        return replace(decision(["existing_customer"]), expansion=True, expansion_reason=why)
    if reasons:
        return decision(reasons)
    lead = state.lead
    person_level = rules.thresholds.identity_level == "person" and person is not None
    persons_mem = {k: dict(v) for k, v in (lead.get("persons") or {}).items()}
    current: Mapping[str, Any] = persons_mem.get(person[0], {}) if person_level and person is not None else lead
    last_ts, last_tier = current.get("ts" if person_level else "last_ts"), current.get("tier")
    update_of: Mapping[str, Any] | None = None
    if last_ts is not None and now - int(last_ts) < q.cooldown_days * DAY_MS:
        if last_tier is None or tier_rank(tier) >= tier_rank(str(last_tier)):
            return decision([f"cooldown:{last_tier}->{tier}"])
        update_of = current

    if update_of is not None:          # a tier rise inside the cool-down: the same lead, next version
        seq = int(update_of.get("seq", lead.get("seq", 1)))
        lid = str(update_of.get("id") or update_of.get("last_id")
                  or lead_id(state.site_id, state.account, rules.model_version, seq))
        version = int(update_of.get("ver", 1)) + 1
        update_reason: str | None = f"tier_rise:{last_tier}->{tier}"
        issued = int(last_ts) if last_ts is not None else now
        new_seq = int(lead.get("seq", seq))
    else:
        seq = new_seq = int(lead.get("seq", 0)) + 1
        lid = lead_id(state.site_id, state.account, rules.model_version, seq)
        version, update_reason, issued = 1, None, now
    if person is not None:
        persons_mem[person[0]] = {"ts": issued if person_level else now, "tier": tier, "id": lid, "seq": seq,
                                  "ver": version}
    # the account's cool-down runs from the lead's first issue; an update keeps that time
    new_state = replace(state, lead={"seq": new_seq, "last_ts": now if person_level else issued, "tier": tier,
                                     "persons": persons_mem, "last_id": lid, "ver": version})
    co = state.company or {}
    conversions = recent_conversions(state, rules)
    cause = _cause(conversions, intent)
    explanation: dict[str, Any] = {
        "summary": _summary(tier, fit, intent, co, person, cause),
        "cause": cause,
        "conversions": conversions,
        "model": {"version": rules.model_version, "digest": rules.model_digest},
        "thresholds": rules.thresholds.model_dump(mode="json"),
        "fit": {"score": fit.score, "contributions": [c.to_dict() for c in fit.contributions]},
        "intent": {"score": intent.score, "raw": intent.raw, "contributions": [c.to_dict() for c in intent.contributions],
                   "sessions": [dict(s) for s in intent.top_sessions],
                   "pages": {k: list(v) for k, v in intent.top_pages.items()}},
        "identity": {
            "level": rules.thresholds.identity_level,
            "company": {k: v for k, v in co.items() if k not in ("ev", "src", "conf", "nc", "idv")} or None,
            "company_confidence": co.get("conf", 0.0),
            "company_evidence": [list(e) for e in co.get("ev", ())],
            "network_class": co.get("nc", state.seen.get("nc", "unknown")),
            "person": ({"person_id": person[0], "confidence": person[1].get("conf"),
                        "seniority": person[1].get("sen"), "department": person[1].get("dep"),
                        "evidence": [list(e) for e in person[1].get("ev", ())]} if person else None),
        },
        "enrichment_sources": sorted(set(co.get("src", ())) | {str(e[0]) for e in co.get("ev", ())}),
        "filters": [r.to_dict() for r in results],
        "previous_lead": {"tier": lead.get("tier"), "tstamp": lead.get("last_ts")} if lead.get("seq") else None,
    }
    ql = QualifiedLead(lead_id=lid, site_id=state.site_id, account=state.account, tstamp=now, sequence=seq, tier=tier,
                       fit=fit.score, intent=intent.score, model_version=rules.model_version,
                       model_digest=rules.model_digest, explanation=explanation, version=version,
                       update_reason=update_reason)
    return Decision(True, (), tier, fit, intent, results, new_state, ql)


@dataclass(frozen=True, slots=True)
class QuotaClaim:
    """What a qualified lead claims on its site's monthly quota ledger: ``lead_id`` in ``month``.

    The ledger admits the claim when ``lead_id`` is already counted in ``month`` (a replay,
    or an update of the same lead) or fewer than ``quota`` lead ids are; otherwise it
    refuses. Admission is idempotent per lead id."""
    site_id: str
    month: str
    lead_id: str
    quota: int


def quota_claim(decision: Decision, rules: EffectiveRules) -> QuotaClaim | None:
    """The claim ``decision`` makes on its site's monthly quota, or None when it needs none
    (not a lead, or no ``monthly_quota``). The month is the lead's event-time month (UTC)."""
    quota = rules.qualification.monthly_quota
    lead = decision.lead
    if not decision.qualified or lead is None or quota is None:
        return None
    return QuotaClaim(lead.site_id, month_of(lead.tstamp), lead.lead_id, quota)


def over_quota(decision: Decision, before: AccountState, claim: QuotaClaim) -> Decision:
    """``decision`` once the ledger refused ``claim``: not a lead (reason
    ``quota_exhausted:<month>:<quota>``), the account's lead memory as it was in ``before``
    (the state :func:`qualify` was given), so a later month can still issue the lead."""
    return replace(decision, qualified=False, lead=None, state=replace(decision.state, lead=dict(before.lead)),
                   reasons=(f"quota_exhausted:{claim.month}:{claim.quota}",))


def recent_conversions(state: AccountState, rules: EffectiveRules) -> list[dict[str, Any]]:
    """The account's conversions inside the intent window, newest first, as plain data."""
    horizon = (state.last_ts // DAY_MS - rules.intent.window_days) * DAY_MS
    return [{"tstamp": int(c["t"]), "rule": c.get("rule"), "matched_on": c.get("on"), "form_id": c.get("f"),
             "event": c.get("e"), "page": c.get("u"), "visitor_id": c.get("vis")}
            for c in sorted(state.conversions, key=lambda c: -int(c["t"])) if int(c["t"]) >= horizon]


def describe_conversion(c: Mapping[str, Any]) -> str:
    """``demo form 'demo-request' on https://x.example/demo`` (or ``event 'trial_started'``)."""
    what = (f"form '{c['form_id']}'" if c.get("form_id") and c.get("matched_on") != "event"
            else f"event '{c['event']}'" if c.get("event") else "form")
    page = f" on {c['page']}" if c.get("page") else ""
    return f"{c.get('rule') or 'conversion'} {what}{page}"


def _cause(conversions: list[dict[str, Any]], intent: IntentScore) -> str | None:
    """The conversion that drove the lead, when conversions scored."""
    scored = any(c.rule == "conversion" and c.points > 0 for c in intent.contributions)
    if not (scored and conversions):
        return None
    return "conversion: " + describe_conversion(conversions[0])


def _summary(tier: str, fit: FitScore, intent: IntentScore, co: Mapping[str, Any],
             person: tuple[str, Mapping[str, Any]] | None, cause: str | None = None) -> str:
    top = sorted((c for c in intent.contributions if c.points > 0), key=lambda c: (-c.points, c.rule))[:3]
    name = co.get("name") or co.get("domain") or "unknown account"
    who = f", {person[1].get('sen') or 'a known person'}" if person else ""
    drivers = ", ".join(c.rule for c in top) or "no positive signals"
    because = f"; {cause}" if cause else ""
    return f"{tier}: {name}{who}; fit {fit.score:g}, intent {intent.score:g} from {drivers}{because}"
