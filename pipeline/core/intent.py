"""Purchase intent (0-100) of an account over event time, and the account's state.

Counting: every visit update adds activities to per-UTC-day counters (page views,
sessions, repeat visits, page-signal hits, actions, engaged time, deep scrolls)
and refreshes a compact per-session record (for bounces and support-only visits) and
the account's visitors (buying-group breadth). Bot visits are counted apart and score
nothing.

Scoring at "now" = the latest event time the account has seen (never the wall clock):

- per day and activity: ``min(count, daily_cap) * points * 0.5 ** (age_days / half_life_days)``
  where ``age_days`` is whole UTC days between the activity's day and now's day
  (today's activity counts fully; one half-life ago counts half);
- ``active_day`` points for each day with activity, decayed the same way;
- negatives, decayed by the session's day and capped per day: ``bounce`` (one page
  view, not engaged, no conversion, idle for ``session_gap_minutes``) and
  ``support_only`` (every page view of the session matched ``support_patterns``);
  page signals with negative points (careers) count the same way as positive ones;
- breadth, not decayed but windowed: ``points_per_visitor * (min(n, max_visitors) - 1)``
  for ``n`` distinct visitors seen in the last ``breadth.window_days``;
- actions (form submits, custom events) are classified per site
  (:mod:`pipeline.core.actions`): a **conversion** scores ``conversion`` points (50), a
  **non-conversion** (support, careers, downloads) ``non_conversion`` (0), any other
  ``other_action`` (3); the latest conversions (rule, form id or event, page) are kept
  for the lead's explanation;
- **ambient cap**: everything that is not a buying signal (page views, sessions, repeat
  visits, active days, engaged minutes, deep scrolls, other actions, breadth) adds up
  to at most ``buying_stage.ambient_cap`` (20) raw points (contribution ``ambient_cap``);
- **buying stage**: with ``H`` hits of the buying signals (``buying_stage.signals``:
  pricing, demo, contact) on ``D`` distinct UTC days from ``P`` distinct visitors in
  the last ``buying_stage.window_days``: the account is in the buying stage when
  ``H >= min_hits`` (3) and ``D >= 2`` or ``P >= 2``. Until then the positive
  page-signal points count at most ``unstaged_cap`` (20); once there,
  ``points_per_day * (min(D, max_days) - 1) + points_per_person * (min(P, max_people) - 1)``
  is added (contribution ``buying_stage``). So one person's single visit or a
  researcher's two pricing views need a conversion to reach intent 50, while pricing,
  demo or contact pages seen three times on two days or by two people get there;
- ``score = 100 * (1 - exp(-max(raw, 0) / saturation_points))``, rounded to 0.1: a
  saturating map, monotonic, 0 for no or net-negative activity, approaching 100.

Everything iterates in sorted order, so the same inputs give identical output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .actions import classify_action
from .pages import first_match, matches_any
from .scoring_model import Activity, IntentModel
from .sessions import DAY_MS
from .visit import VisitUpdate, company_to_dict, evidence_to_list

__all__ = ["AccountState", "Contribution", "IntentScore", "apply_visits", "score_intent", "merge_accounts",
           "saturate", "decay_factor", "withdraw_visitor", "ACCOUNT_STATE_VERSION"]

ACCOUNT_STATE_VERSION = 1
_SIG = "sig:"
_MAX_SIGNAL_PAGES = 5
_MAX_PAGES = 50
_MAX_BOT_VISITORS = 100
_MAX_CONVERSIONS = 10
_AMBIENT = frozenset({"page_view", "session", "repeat_visit", "active_day", "engaged_minute", "deep_scroll",
                      "other_action", "breadth"})


@dataclass(frozen=True, slots=True)
class Contribution:
    """One rule's share of a score: ``points`` after caps and decay, ``count`` occurrences counted."""
    rule: str
    points: float
    count: float = 0
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "points": self.points, "count": self.count, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class IntentScore:
    score: float
    raw: float
    now: int
    contributions: tuple[Contribution, ...]
    top_sessions: tuple[Mapping[str, Any], ...] = ()
    top_pages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AccountState:
    """Everything stage 2 keeps per (site, account); Faust table value via to_dict()/from_dict().

    ``days``: {"<utc day>": {activity: count}}; ``sessions``: {session_id: record};
    ``visitors``: {visitor_id: last utc day}; ``company`` / ``persons``: best identity
    seen (``company["idv"]``: an identified person's company evidence named it once); ``seen``: the latest human visit's country, IP and network class; ``lead``: qualification memory (``seq``, ``last_ts``, ``tier``, ``persons``);
    ``offset``: last input offset applied (-1: none).
    """
    site_id: str
    account: str
    last_ts: int = 0
    days: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    sessions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    visitors: Mapping[str, int] = field(default_factory=dict)
    signal_pages: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pages: tuple[str, ...] = ()                               # recent distinct page URLs, oldest first
    company: Mapping[str, Any] | None = None
    persons: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bot_visits: int = 0
    seen: Mapping[str, Any] = field(default_factory=dict)    # latest human visit: ts, country, ip, nc, vis
    lead: Mapping[str, Any] = field(default_factory=dict)
    #: each visitor's own share of ``days`` ({visitor: {day: {activity: count}}}), so a visitor later
    #: found to be a bot can have its earlier activity withdrawn
    by_visitor: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    #: visitors found to be bots here (newest last, bounded): their activity never counts again
    bot_visitors: tuple[str, ...] = ()
    offset: int = -1
    conversions: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def new(cls, site_id: str, account: str) -> "AccountState":
        return cls(site_id=site_id, account=account)

    def to_dict(self) -> dict[str, Any]:
        return {"v": ACCOUNT_STATE_VERSION, "site": self.site_id, "acct": self.account, "ts": self.last_ts,
                "days": {d: dict(c) for d, c in self.days.items()},
                "sess": {k: dict(v) for k, v in self.sessions.items()}, "vis": dict(self.visitors),
                "sigp": {k: list(v) for k, v in self.signal_pages.items()}, "pages": list(self.pages),
                "co": dict(self.company) if self.company else None,
                "ppl": {k: dict(v) for k, v in self.persons.items()}, "bots": self.bot_visits,
                "seen": dict(self.seen), "lead": dict(self.lead), "off": self.offset,
                "conv": [dict(c) for c in self.conversions],
                "bv": {v: {d: dict(c) for d, c in days.items()} for v, days in self.by_visitor.items()},
                "bvs": list(self.bot_visitors)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AccountState":
        if d.get("v") != ACCOUNT_STATE_VERSION:
            raise ValueError(f"unsupported AccountState version {d.get('v')!r}")
        return cls(site_id=d["site"], account=d["acct"], last_ts=d.get("ts", 0),
                   days={k: dict(v) for k, v in d.get("days", {}).items()},
                   sessions={k: dict(v) for k, v in d.get("sess", {}).items()}, visitors=dict(d.get("vis", {})),
                   signal_pages={k: tuple(v) for k, v in d.get("sigp", {}).items()},
                   pages=tuple(d.get("pages", ())), company=dict(d["co"]) if d.get("co") else None,
                   persons={k: dict(v) for k, v in d.get("ppl", {}).items()}, bot_visits=d.get("bots", 0),
                   seen=dict(d.get("seen", {})), lead=dict(d.get("lead", {})), offset=d.get("off", -1),
                   conversions=tuple(dict(c) for c in d.get("conv", ())),
                   by_visitor={v: {day: dict(c) for day, c in days.items()} for v, days in d.get("bv", {}).items()},
                   bot_visitors=tuple(d.get("bvs", ())))


def decay_factor(age_days: int, half_life_days: float) -> float:
    """``0.5 ** (age_days / half_life_days)``; ages below 0 (future days) count fully."""
    return float(0.5 ** (max(age_days, 0) / half_life_days))


def saturate(raw: float, saturation_points: float) -> float:
    """Raw points to 0-100: ``100 * (1 - exp(-raw / saturation_points))``, negatives to 0, one decimal."""
    return round(100.0 * (1.0 - math.exp(-max(raw, 0.0) / saturation_points)), 1)


def _capped(count: float, activity: Activity) -> float:
    return count if activity.daily_cap is None else min(count, activity.daily_cap)


def _better_company(old: Mapping[str, Any] | None, u: VisitUpdate) -> bool:
    return u.company is not None and (old is None or u.company_confidence >= old.get("conf", 0.0))


def apply_visits(state: AccountState, updates: Sequence[VisitUpdate], model: IntentModel,
                 offset: int | None = None) -> tuple[AccountState, IntentScore]:
    """Fold one record's visit updates for this account into ``state`` and score it.

    Pure: ``state`` is not mutated. When ``offset`` is given and not above
    ``state.offset`` the record was applied before; the state is returned unchanged
    (with its current score). Old days, sessions and visitors beyond ``window_days``
    or the ``max_*_kept`` bounds are pruned.
    """
    if offset is not None and offset <= state.offset:
        return state, score_intent(state, model)
    days: dict[str, dict[str, float]] = {k: dict(v) for k, v in state.days.items()}
    sessions: dict[str, dict[str, Any]] = {k: dict(v) for k, v in state.sessions.items()}
    visitors = dict(state.visitors)
    signal_pages = {k: list(v) for k, v in state.signal_pages.items()}
    recent_pages = list(state.pages)
    company = dict(state.company) if state.company else None
    persons = {k: dict(v) for k, v in state.persons.items()}
    bots = state.bot_visits
    last_ts = state.last_ts
    seen: dict[str, Any] = dict(state.seen)
    conversions = [dict(c) for c in state.conversions]

    by_visitor = {v: {d: dict(c) for d, c in vd.items()} for v, vd in state.by_visitor.items()}
    bot_visitors = list(state.bot_visitors)
    current: str | None = None   # the visitor of the update being folded

    def bump(ts: int, key: str, n: float = 1) -> None:
        day = str(ts // DAY_MS)
        c = days.setdefault(day, {})
        c[key] = c.get(key, 0) + n
        if current is not None:
            vc = by_visitor.setdefault(current, {}).setdefault(day, {})
            vc[key] = vc.get(key, 0) + n

    def withdraw(visitor: str) -> None:
        """A visitor found to be a bot: what it added before the verdict no longer counts."""
        withdraw_visitor(visitor, days, by_visitor, sessions, visitors, conversions)

    for u in updates:
        current = u.visitor_id
        if u.is_bot or (u.visitor_id is not None and u.visitor_id in bot_visitors):
            bots += 1
            if u.visitor_id is not None and u.visitor_id not in bot_visitors:
                withdraw(u.visitor_id)
                bot_visitors.append(u.visitor_id)
            continue
        s = u.session
        last_ts = max(last_ts, s.end)
        if u.visitor_id is not None:
            visitors[u.visitor_id] = max(visitors.get(u.visitor_id, 0), s.end // DAY_MS)
        rec = sessions.get(s.session_id)
        if rec is None:
            rec = {"d": s.start // DAY_MS, "vis": u.visitor_id, "i": s.index, "hpv": 0, "spv": 0, "sig": 0,
                   "ds": 0}
            sessions[s.session_id] = rec
            bump(s.start, "session")
            if s.index > 1:
                bump(s.start, "repeat_visit")
        for h in u.hits:
            if h.kind in ("action", "conversion"):
                form_id = h.form_id if h.kind == "action" else h.name
                event = h.event if h.kind == "action" else h.name
                cls = classify_action(form_id, event, h.url, model.conversions, model.non_conversions)
                bump(h.tstamp, "other_action" if cls.kind == "other" else cls.kind)
                if cls.kind == "conversion":
                    conversions.append({"t": h.tstamp, "rule": cls.rule, "on": cls.matched_on, "f": form_id,
                                        "e": event, "u": h.url, "vis": u.visitor_id})
                continue
            bump(h.tstamp, "page_view")
            rec["hpv"] += 1
            url = h.url or ""
            if url:
                if url in recent_pages:
                    recent_pages.remove(url)
                recent_pages.append(url)
            if url and matches_any(url, model.support_patterns):
                rec["spv"] += 1
            for sig in model.page_signals:
                if url and first_match(url, sig.patterns):
                    bump(h.tstamp, _SIG + sig.name)
                    if sig.points > 0:
                        rec["sig"] += 1
                        if sig.name in model.buying_stage.signals:
                            rec["bsig"] = rec.get("bsig", 0) + 1
                    pages = signal_pages.setdefault(sig.name, [])
                    if url in pages:
                        pages.remove(url)
                    pages.append(url)
                    del pages[:-_MAX_SIGNAL_PAGES]
                    break
        if u.engaged_ms_delta:
            bump(s.end, "engaged_ms", u.engaged_ms_delta)
        rec.update({"pv": s.page_views, "eng": int(s.engaged), "sc": s.max_scroll, "end": s.end,
                    "cv": s.conversions, "d": min(rec["d"], s.start // DAY_MS)})
        if not rec["ds"] and s.max_scroll >= model.deep_scroll_percent:
            rec["ds"] = 1
            bump(s.end, "deep_scroll")
        if _better_company(company, u):
            assert u.company is not None
            verified = bool(company and company.get("idv") and company.get("domain") == u.company.domain)
            company = {**company_to_dict(u.company), "conf": u.company_confidence,
                       "ev": evidence_to_list(u.company_evidence), "nc": u.network_class.value,
                       "src": list(u.enrichment_sources)}
            if verified:
                company["idv"] = True
        if (company is not None and u.company is not None and u.company.domain == company.get("domain")
                and any(e.source == "identity" for e in u.company_evidence)):
            company["idv"] = True   # an identified person works here: evidence on any network, for good
        if u.person_id is not None:
            persons[u.person_id] = {"conf": u.person_confidence, "sen": u.person_seniority,
                                    "dep": u.person_department, "eh": u.person_email_hash,
                                    "ev": evidence_to_list(u.person_evidence), "ts": s.end}
        if s.end >= seen.get("ts", -1):
            seen = {"ts": s.end, "country": u.country, "ip": u.client_ip, "nc": u.network_class.value,
                    "vis": u.visitor_id}

    new = replace(state, last_ts=last_ts, days=days, sessions=sessions, visitors=visitors,
                  signal_pages={k: tuple(v) for k, v in signal_pages.items()},
                  pages=tuple(recent_pages[-_MAX_PAGES:]), company=company, persons=persons, bot_visits=bots, seen=seen,
                  offset=offset if offset is not None else state.offset,
                  conversions=tuple(sorted(conversions, key=lambda c: int(c["t"]))[-_MAX_CONVERSIONS:]),
                  by_visitor=by_visitor, bot_visitors=tuple(bot_visitors[-_MAX_BOT_VISITORS:]))
    new = _prune(new, model)
    return new, score_intent(new, model)


def withdraw_visitor(visitor: str, days: dict[str, dict[str, float]],
                     by_visitor: dict[str, dict[str, dict[str, float]]], sessions: dict[str, dict[str, Any]],
                     visitors: dict[str, int], conversions: list[dict[str, Any]]) -> None:
    """Take ``visitor``'s own share out of an account's counters (in place): its per-day counts
    (``by_visitor``), sessions, breadth entry and conversions. A bot verdict withdraws a visitor's
    earlier activity; an erasure (:mod:`pipeline.core.erasure`) withdraws a person's."""
    for day, counts in by_visitor.pop(visitor, {}).items():
        c = days.get(day, {})
        for key, n in counts.items():
            left = c.get(key, 0) - n
            if left > 1e-9:
                c[key] = left
            else:
                c.pop(key, None)
        if day in days and not c:
            del days[day]
    for sid in [k for k, rec in sessions.items() if rec.get("vis") == visitor]:
        del sessions[sid]
    visitors.pop(visitor, None)
    conversions[:] = [c for c in conversions if c.get("vis") != visitor]


def _prune(state: AccountState, model: IntentModel) -> AccountState:
    now_day = state.last_ts // DAY_MS
    keep_from = now_day - model.window_days
    days = {d: c for d, c in state.days.items() if int(d) >= keep_from}
    recent = sorted(((v.get("end", 0), k) for k, v in state.sessions.items() if v.get("d", 0) >= keep_from),
                    reverse=True)[:model.max_sessions_kept]
    sessions = {k: state.sessions[k] for _, k in sorted(recent, key=lambda x: x[1])}
    vis = sorted(((day, v) for v, day in state.visitors.items() if day >= keep_from), reverse=True)
    visitors = {v: day for day, v in sorted(vis[:model.max_visitors_kept], key=lambda x: x[1])}
    persons = dict(sorted(state.persons.items(), key=lambda kv: (-int(kv[1].get("ts", 0)), kv[0]))[:20])
    by_visitor = {v: {d: c for d, c in sorted(vd.items()) if int(d) >= keep_from}
                  for v, vd in sorted(state.by_visitor.items()) if v in visitors}
    return replace(state, days=dict(sorted(days.items())), sessions=sessions, visitors=visitors, persons=persons,
                   by_visitor={v: vd for v, vd in by_visitor.items() if vd})


def score_intent(state: AccountState, model: IntentModel, now: int | None = None) -> IntentScore:
    """The account's intent at event time ``now`` (default: its latest event time)."""
    now = state.last_ts if now is None else now
    now_day = now // DAY_MS
    totals: dict[str, list[float]] = {}

    def add(rule: str, points: float, count: float) -> None:
        t = totals.setdefault(rule, [0.0, 0.0])
        t[0] += points
        t[1] += count

    simple = {"page_view": model.page_view, "session": model.session, "repeat_visit": model.repeat_visit,
              "conversion": model.conversion, "deep_scroll": model.deep_scroll,
              "non_conversion": model.non_conversion, "other_action": model.other_action}
    signals = {_SIG + s.name: s for s in model.page_signals}
    for day_key in sorted(state.days, key=int):
        day = int(day_key)
        age = now_day - day
        if age > model.window_days:
            continue
        f = decay_factor(age, model.half_life_days)
        counters = state.days[day_key]
        if any(v > 0 for v in counters.values()):
            add("active_day", model.active_day * f, 1)
        for key in sorted(counters):
            n = counters[key]
            if key in simple:
                c = _capped(n, simple[key])
                add(key, c * simple[key].points * f, c)
            elif key == "engaged_ms":
                minutes = _capped(n / 60_000.0, model.engaged_minute)
                add("engaged_minute", minutes * model.engaged_minute.points * f, minutes)
            elif key in signals:
                sig = signals[key]
                c = n if sig.daily_cap is None else min(n, sig.daily_cap)
                add(f"page:{sig.name}", c * sig.points * f, c)
    gap = model.session_gap_minutes * 60_000
    bounces: dict[int, int] = {}
    support: dict[int, int] = {}
    for rec in state.sessions.values():
        day = int(rec.get("d", 0))
        if now_day - day > model.window_days:
            continue
        if (rec.get("pv", 0) <= 1 and not rec.get("eng") and not rec.get("cv") and now - rec.get("end", now) >= gap):
            bounces[day] = bounces.get(day, 0) + 1
        if rec.get("hpv", 0) > 0 and rec.get("spv", 0) == rec.get("hpv", 0):
            support[day] = support.get(day, 0) + 1
    for name, per_day, activity in (("bounce", bounces, model.bounce), ("support_only", support, model.support_only)):
        for day in sorted(per_day):
            c = _capped(per_day[day], activity)
            add(name, c * activity.points * decay_factor(now_day - day, model.half_life_days), c)
    b = model.breadth
    n_visitors = sum(1 for day in state.visitors.values() if now_day - day <= b.window_days)
    if n_visitors > 1:
        extra = min(n_visitors, b.max_visitors) - 1
        add("breadth", extra * b.points_per_visitor, n_visitors)
    details: dict[str, str] = {}
    bs = model.buying_stage
    positive = {s.name for s in model.page_signals if s.points > 0}
    signal_points = sum(p for rule, (p, _) in totals.items() if rule.startswith("page:") and rule[5:] in positive)
    if signal_points > 0:
        buying = positive & set(bs.signals)
        hits = days_with = 0
        for d, counters in state.days.items():
            if 0 <= now_day - int(d) <= bs.window_days:
                n = sum(counters.get(_SIG + name, 0) for name in buying)
                hits += int(n)
                days_with += n > 0
        people = {str(r.get("vis")) for r in state.sessions.values()
                  if r.get("bsig", r.get("sig", 0)) and now_day - int(r.get("d", 0)) <= bs.window_days}
        n_people = len(people)
        if hits < bs.min_hits or (days_with <= 1 and n_people <= 1):
            if bs.unstaged_cap is not None and signal_points > bs.unstaged_cap:
                add("buying_stage", bs.unstaged_cap - signal_points, 1)
                details["buying_stage"] = (f"{hits} {'/'.join(sorted(buying))} hits on {days_with} days from "
                                           f"{n_people} visitors: page signals count at most {bs.unstaged_cap:g} "
                                           f"points until {bs.min_hits} hits on 2 days or from 2 people")
        else:
            bonus = (bs.points_per_day * (min(days_with, bs.max_days) - 1)
                     + bs.points_per_person * (min(n_people, bs.max_people) - 1))
            if bonus > 0:
                add("buying_stage", bonus, hits)
                details["buying_stage"] = (f"{hits} {'/'.join(sorted(buying))} hits on {days_with} days from "
                                           f"{n_people} visitors")
    ambient = sum(p for rule, (p, _) in totals.items() if rule in _AMBIENT)
    if bs.ambient_cap is not None and ambient > bs.ambient_cap:
        add("ambient_cap", bs.ambient_cap - ambient, 1)
        details["ambient_cap"] = f"activity that is not a buying signal counts at most {bs.ambient_cap:g} points"
    contributions = tuple(Contribution(rule, round(p, 4), round(c, 4), details.get(rule, ""))
                          for rule, (p, c) in sorted(totals.items()))
    raw = round(sum(c.points for c in contributions), 4)
    top = sorted(((r.get("sig", 0), r.get("end", 0), sid) for sid, r in state.sessions.items() if r.get("sig", 0)),
                 reverse=True)[:5]
    top_sessions = tuple({"session_id": sid, "visitor_id": state.sessions[sid].get("vis"),
                          "signal_pages": sig, "page_views": state.sessions[sid].get("pv", 0), "end": end}
                         for sig, end, sid in top)
    top_pages = {name: tuple(pages) for name, pages in sorted(state.signal_pages.items())
                 if name in {s.name for s in model.page_signals if s.points > 0}}
    return IntentScore(score=saturate(raw, model.saturation_points), raw=raw, now=now, contributions=contributions,
                       top_sessions=top_sessions, top_pages=top_pages)


def merge_accounts(into: AccountState, other: AccountState, model: IntentModel) -> AccountState:
    """Fold ``other`` (e.g. a visitor's anonymous account, once identity names its
    company) into ``into``: day counters add up, sessions and visitors unite
    (``into`` wins on the same session), the better company and all persons are kept;
    ``into``'s qualification memory and offset stay. Deterministic."""
    days: dict[str, dict[str, float]] = {k: dict(v) for k, v in into.days.items()}
    for d, counters in other.days.items():
        mine = days.setdefault(d, {})
        for k, n in counters.items():
            mine[k] = mine.get(k, 0) + n
    sessions = {**{k: dict(v) for k, v in other.sessions.items()}, **{k: dict(v) for k, v in into.sessions.items()}}
    visitors = dict(into.visitors)
    for v, day in other.visitors.items():
        visitors[v] = max(visitors.get(v, 0), day)
    pages = {k: list(v) for k, v in other.signal_pages.items()}
    for k, mine_pages in into.signal_pages.items():
        merged = [p for p in pages.get(k, []) if p not in mine_pages] + list(mine_pages)
        pages[k] = merged[-_MAX_SIGNAL_PAGES:]
    company = into.company
    if other.company and (company is None or other.company.get("conf", 0) > company.get("conf", 0)):
        company = other.company
    if company is not None and any(c and c.get("idv") and c.get("domain") == company.get("domain")
                                   for c in (into.company, other.company)):
        company = {**company, "idv": True}
    merged_state = replace(into, last_ts=max(into.last_ts, other.last_ts), days=days,
                           sessions=dict(sorted(sessions.items())), visitors=dict(sorted(visitors.items())),
                           signal_pages={k: tuple(v) for k, v in sorted(pages.items())},
                           pages=tuple(([p for p in other.pages if p not in into.pages] + list(into.pages))[-_MAX_PAGES:]),
                           company=company,
                           persons={**dict(other.persons), **dict(into.persons)},
                           bot_visits=into.bot_visits + other.bot_visits,
                           conversions=tuple(sorted({(int(c["t"]), str(c.get("rule")), str(c.get("u"))): c for c in
                                                     (*other.conversions, *into.conversions)}.values(),
                                                    key=lambda c: int(c["t"]))[-_MAX_CONVERSIONS:]),
                           seen=into.seen if into.seen.get("ts", -1) >= other.seen.get("ts", -1) else other.seen)
    return _prune(merged_state, model)
