"""One visitor's events of one record through the visitor stage's pure chain:
sessions -> network -> company -> bots -> visit updates.

:func:`process_visitor` is the chain the visitor stage (``pipeline.stages.visitor``)
runs for each visitor once its I/O is done (GeoIP, the identity graph, the batch's
reference data), and the one the tests run: there is no second copy. Each step is
its own function (:func:`classify`, :func:`resolve`, :func:`judge`,
:func:`visit_updates`), testable and profilable alone. The stage keeps the storage
format, output sizes and metrics.

**Backfill.** The visitor keeps its recent hits (``history``, bounded by count, age
and bytes). When its account changes (an anonymous visitor becomes a company), the
history is sent once to the new account as a backfill update, ahead of the update
that moved it; bots never backfill.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol, Sequence

from .bots import BotConfig, BotSignals, BotVerdict, bot_verdict
from .company import CompanyLookups, resolve_company
from .events import TrackedEvent
from .limits import text_bytes, trim_by_bytes
from .model import Company, CompanyResolution, NetworkInfo, PersonResolution
from .network import classify_network
from .sessions import DAY_MS, Hit, SessionConfig, VisitorOutputs, VisitorState, apply_events
from .visit import VisitUpdate, build_visit_update

__all__ = ["HISTORY_HITS", "HISTORY_MS", "ReferenceData", "UserAgentFacts", "VisitorOutcome", "process_visitor",
           "classify", "resolve", "judge", "visit_updates", "trim_history"]

HISTORY_HITS = 200            # page views and conversions kept per visitor for a backfill
HISTORY_MS = 30 * DAY_MS      # ... and only this recent (and at most history_bytes)


class ReferenceData(Protocol):
    """The reference data of one record's networks and domains (``pipeline.enrich.redis_store.BatchLookup``)."""

    def annotate(self, network: NetworkInfo) -> NetworkInfo: ...

    def company_lookups(self, network: NetworkInfo) -> CompanyLookups: ...

    def company_for_domain(self, domain: str | None) -> Company | None: ...


class UserAgentFacts(Protocol):
    """What the user-agent string alone says (``pipeline.enrich.useragent.UserAgentInfo``)."""

    @property
    def is_crawler(self) -> bool: ...

    @property
    def crawler_name(self) -> str | None: ...

    @property
    def device_family(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class VisitorOutcome:
    """What one visitor's events produced; the caller writes ``state``, ``account`` and ``history`` and
    sends ``updates`` in order."""
    state: VisitorState
    account: str | None                              # the account of the visitor's latest update
    history: list[Mapping[str, Any]]                 # hits kept for a later backfill (Hit.to_dict form)
    updates: list[tuple[VisitUpdate, bool]]          # (update, is a backfill)
    late: tuple[TrackedEvent, ...]                   # older than the open session by more than a gap
    duplicates: int
    network: NetworkInfo                             # classified
    verdict: BotVerdict
    last_seen: int                                   # event time of the visitor's latest activity
    company: CompanyResolution                       # the company step's answer (for its metrics)


def process_visitor(state: VisitorState, events: Sequence[TrackedEvent], cfg: SessionConfig, *,
                    person: PersonResolution, network: NetworkInfo, reference: ReferenceData | None,
                    user_agent: Callable[[str | None], UserAgentFacts], bot_config: BotConfig = BotConfig(),
                    offset: int | None = None, account: str | None = None,
                    history: Sequence[Mapping[str, Any]] = (), history_bytes: int = 64_000) -> VisitorOutcome | None:
    """One visitor's ``events`` (one record, non-empty, event-time order not required) on its ``state``:
    sessionize, classify the network, resolve the company, judge bots, build the visit updates.
    None when ``offset`` was applied before (the replay guard). Pure and deterministic.

    ``person`` is the visitor's identity after the record's identity signals, ``network`` its
    last event's GeoIP network, ``reference`` the record's reference data (None: none configured),
    ``account``/``history`` what the caller stored with ``state`` last time."""
    if person.person is not None:
        state = replace(state, person_id=person.person.person_id)
    new_state, out = apply_events(state, events, cfg, offset=offset)
    if out.skipped:
        return None
    network = classify(network, reference)
    company = resolve(network, person, reference)
    verdict = judge(events[-1], network, out, user_agent, bot_config)
    updates, account, history = visit_updates(out, company, person, network, verdict, account, history,
                                              history_bytes)
    last_seen = new_state.last_seen if new_state.last_seen is not None else max(e.tstamp for e in events)
    return VisitorOutcome(new_state, account, history, updates, out.late, out.duplicates, network, verdict,
                          last_seen, company)


def classify(network: NetworkInfo, reference: ReferenceData | None) -> NetworkInfo:
    """The network step: ``network`` with the reference data's ASN facts and its network class."""
    if reference is not None:
        network = reference.annotate(network)
    return replace(network, network_class=classify_network(network))


def resolve(network: NetworkInfo, person: PersonResolution, reference: ReferenceData | None) -> CompanyResolution:
    """The company step: the waterfall over the network's lookups and the person's company."""
    lookups = reference.company_lookups(network) if reference is not None else CompanyLookups()
    person_company = None
    if reference is not None and person.person is not None and person.person.company_domain:
        person_company = reference.company_for_domain(person.person.company_domain)
    return resolve_company(network, replace(lookups, person=person if person.person else None,
                                            person_company=person_company))


def judge(last: TrackedEvent, network: NetworkInfo, out: VisitorOutputs,
          user_agent: Callable[[str | None], UserAgentFacts], bot_config: BotConfig) -> BotVerdict:
    """The bots step: the verdict on the visitor's last event, its network and its peak page rate."""
    ua = user_agent(last.user_agent)
    peak = max((u.summary.peak_pages_per_minute for u in out.updates), default=0)
    return bot_verdict(BotSignals(
        user_agent=last.user_agent, ua_is_crawler=ua.is_crawler, ua_crawler_name=ua.crawler_name,
        ua_device_family=ua.device_family, accept_language=last.accept_language,
        screen_resolution=last.screen_resolution, viewport=last.viewport,
        webdriver=last.extra.get("webdriver") in ("1", "true"), network=network, pages_per_minute=peak,
        relayed=last.ua_relayed), bot_config)


def visit_updates(out: VisitorOutputs, company: CompanyResolution, person: PersonResolution, network: NetworkInfo,
                  verdict: BotVerdict, account: str | None, history: Sequence[Mapping[str, Any]],
                  history_bytes: int) -> tuple[list[tuple[VisitUpdate, bool]], str | None, list[Mapping[str, Any]]]:
    """The visit step: one update per session update, each preceded by a backfill when it moves the
    visitor to a new account (see module doc); (updates, the latest account, the history to keep)."""
    sources = tuple(dict.fromkeys((*network.sources, *(e.source for e in company.evidence))))
    kept = list(history)
    new_hits: list[Hit] = []
    updates: list[tuple[VisitUpdate, bool]] = []
    for su in out.updates:
        vu = build_visit_update(su, company, person, country=network.geo.country, client_ip=network.ip,
                                is_bot=verdict.is_bot, bot_reason=verdict.reason, enrichment_sources=sources)
        if account and vu.account != account and kept and not verdict.is_bot:
            updates.append((_backfill(vu, kept), True))
            kept = []  # sent once: the new account has it now
        account = vu.account
        updates.append((vu, False))
        new_hits.extend(su.hits)
    now = max((h.tstamp for h in new_hits), default=0)
    return updates, account, trim_history(kept + [h.to_dict() for h in new_hits], now, history_bytes)


def trim_history(history: list[Mapping[str, Any]], now: int, max_bytes: int) -> list[Mapping[str, Any]]:
    """The hits of the last :data:`HISTORY_MS` before ``now``, at most :data:`HISTORY_HITS`, then at most
    ``max_bytes`` (newest kept)."""
    kept = [h for h in history if now - int(h["t"]) <= HISTORY_MS][-HISTORY_HITS:]
    return trim_by_bytes(kept, max_bytes, _hit_bytes)


def _hit_bytes(h: Mapping[str, Any]) -> int:
    """JSON bytes of a stored hit ({"t","k","u","n","s"}), estimated without encoding it."""
    return 60 + text_bytes(h.get("u")) + text_bytes(h.get("n"))


def _backfill(current: VisitUpdate, history: Sequence[Mapping[str, Any]]) -> VisitUpdate:
    """The visitor's earlier activity, sent once to the account it now belongs to."""
    hits = tuple(Hit.from_dict(h) for h in history)
    return replace(current, hits=hits, engaged_ms_delta=0, new_session=False)
