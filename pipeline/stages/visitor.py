"""Stage 1, visitor: pixel-events (CollectorBatch) -> visits (VisitBatch), keyed by site and visitor.

Per input record: decode once, split events by visitor, enrich every visitor
of the record with one GeoIP pass, one identity-graph round trip pair and one
reference-data round trip pair, sessionize each visitor once (the core), and
write each visitor's state once. Visit updates are grouped by the partition
of their site|account key, one ``visits`` record per partition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence

from ..codec import Codec, CodecError
from ..core.bots import BotConfig, BotSignals, bot_verdict
from ..core.company import resolve_company
from ..core.events import BadEvent, TimeConfig, TrackedEvent, parse_payload
from ..core.identity import (IdentityResult, IdentitySnapshot, IdType, Identifier, apply_identity_events,
                             identifiers_from_event, resolve_visitor)
from ..core.model import NetworkInfo, PersonResolution
from ..core.network import classify_network
from ..core.scoring_model import ScoringModel
from ..core.sessions import Hit, SessionConfig, VisitorState, apply_events
from ..core.visit import VisitUpdate, build_visit_update
from ..enrich.geoip import GeoIPReader
from ..enrich.redis_store import AsyncReferenceStore
from ..enrich.useragent import analyze_user_agent
from ..metrics import BOTS, IDENTITY_OPS, NETWORK_CLASSES, STAGE_BAD_ROWS, STAGE_BATCH_SIZE, STAGE_EVENTS
from ..settings import Settings, SiteSettings
from ..topology import partition_for
from .messages import bad_row, visit_to_record
from .runtime import HandlerResult, Output, StateView

log = logging.getLogger(__name__)

STAGE = "visitor"
HISTORY_HITS = 200          # page views and conversions kept per visitor for a backfill
HISTORY_MS = 30 * 86_400_000


class IdentityPort(Protocol):
    """What the stage needs of the identity graph (``pipeline.enrich.identity_store``)."""

    async def load_snapshot(self, site_id: str, identifiers: Sequence[Identifier]) -> IdentitySnapshot: ...

    async def apply(self, site_id: str, ops: Sequence[Any]) -> None: ...


@dataclass
class VisitorTopics:
    visits: str
    visits_partitions: int
    bad_events: str


@dataclass
class _Visitor:
    key: str
    site: SiteSettings
    visitor_id: str | None
    position: int  # the key's position among the record's visitor keys, applied ones included
    events: list[TrackedEvent] = field(default_factory=list)


class VisitorStage:
    """The visitor stage's handler (see module doc). Holds per-process resources only, no state."""

    def __init__(self, settings: Settings, codec: Codec, topics: VisitorTopics, model: ScoringModel,
                 geoip: GeoIPReader | None, reference: AsyncReferenceStore | None, identity: IdentityPort | None,
                 bot_config: BotConfig = BotConfig()) -> None:
        self.settings = settings
        self.codec = codec
        self.topics = topics
        self.geoip = geoip
        self.reference = reference
        self.identity = identity
        self.bot_config = bot_config
        classes = tuple((s.name, tuple(s.patterns)) for s in model.intent.page_signals)
        self.session_cfg = {
            s.site_id: SessionConfig(gap_ms=s.session_gap_minutes * 60_000, site_hosts=s.own_hosts,
                                     conversion_names=frozenset(s.conversion_names), page_classes=classes)
            for s in settings.sites}
        self.limit = settings.collector.bad_row_payload_limit
        self.time_cfg = TimeConfig.from_days(settings.stages.max_send_delay_days)

    # -- the handler ------------------------------------------------------------------------
    async def __call__(self, partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        result = HandlerResult()
        try:
            batch = self.codec.decode(value, "CollectorBatch")
        except CodecError as exc:
            self._bad(result, "schema_violation", f"pixel-events record {partition}:{offset} is not a "
                      f"CollectorBatch: {exc}", value, None)
            return result
        visitors = self._split(batch["payloads"], offset, states, result)
        if not visitors:
            return result
        STAGE_BATCH_SIZE.labels(STAGE).observe(sum(len(v.events) for v in visitors.values()))

        person_by_key = await self._identify(visitors)
        networks = self._networks(visitors)
        person_domains = [p.person.company_domain for p in person_by_key.values()
                          if p.person is not None and p.person.company_domain]
        lookup = None
        if self.reference is not None:
            lookup = await self.reference.resolve_networks(networks.values(), domains=person_domains)

        updates: list[tuple[VisitUpdate, bool, int]] = []
        for key, v in visitors.items():
            position = v.position * 1000  # stable ids: a replay that skips keys keeps the others' ids
            stored = states.get(key) or {}
            state = (VisitorState.from_dict(stored["vs"]) if stored.get("vs")
                     else VisitorState.new(v.site.site_id, v.visitor_id))
            person = person_by_key.get(key, PersonResolution(None, 0.0))
            if person.person is not None:
                state = replace(state, person_id=person.person.person_id)
            new_state, out = apply_events(state, v.events, self.session_cfg[v.site.site_id], offset=offset)
            if out.skipped:
                continue
            STAGE_EVENTS.labels(STAGE, "duplicate").inc(out.duplicates)
            for late in out.late:
                self._bad(result, "processing_failure", "event older than the visitor's open session by more "
                          "than one session gap: not sessionized", _event_dict(late), v.site.site_id)
            STAGE_EVENTS.labels(STAGE, "processed").inc(len(v.events) - out.duplicates - len(out.late))

            network = networks.get(key, NetworkInfo())
            if lookup is not None:
                network = lookup.annotate(network)
            network = replace(network, network_class=classify_network(network))
            NETWORK_CLASSES.labels(network.network_class.value).inc()
            lookups = lookup.company_lookups(network) if lookup is not None else None
            person_company = None
            if lookup is not None and person.person is not None and person.person.company_domain:
                person_company = lookup.company_for_domain(person.person.company_domain)
            from ..core.company import CompanyLookups
            lookups = replace(lookups or CompanyLookups(), person=person if person.person else None,
                              person_company=person_company)
            company = resolve_company(network, lookups)

            last = v.events[-1]
            ua = analyze_user_agent(last.user_agent or "")
            peak = max((u.summary.peak_pages_per_minute for u in out.updates), default=0)
            verdict = bot_verdict(BotSignals(
                user_agent=last.user_agent, ua_is_crawler=ua.is_crawler, ua_crawler_name=ua.crawler_name,
                ua_device_family=ua.device_family, accept_language=last.accept_language,
                screen_resolution=last.screen_resolution, viewport=last.viewport,
                webdriver=last.extra.get("webdriver") in ("1", "true"), network=network, pages_per_minute=peak,
                relayed=last.ua_relayed),
                self.bot_config)
            if verdict.is_bot:
                BOTS.labels((verdict.reason or "unknown").split(":")[0]).inc()
            sources = tuple(dict.fromkeys((*network.sources, *(e.source for e in company.evidence))))
            account_before = stored.get("acct")
            history = list(stored.get("h") or ())
            new_hits: list[Hit] = []
            for su in out.updates:
                vu = build_visit_update(su, company, person, country=network.geo.country,
                                        client_ip=network.ip, is_bot=verdict.is_bot, bot_reason=verdict.reason,
                                        enrichment_sources=sources)
                if account_before and vu.account != account_before and history and not verdict.is_bot:
                    updates.append((_backfill(vu, history), True, position))
                    position += 1
                    history = []  # sent once: the new account has it now
                account_before = vu.account
                updates.append((vu, False, position))
                position += 1
                new_hits.extend(su.hits)
            history = _trim_history(history + [h.to_dict() for h in new_hits],
                                    max((h.tstamp for h in new_hits), default=0))
            result.states[key] = {"vs": new_state.to_dict(), "acct": account_before, "h": history}

        self._emit(result, updates, partition, offset)
        return result

    def failed(self, partition: int, offset: int, value: bytes, exc: Exception) -> HandlerResult:
        """The record could not be processed: keep it as a bad row (replayable after the fix)."""
        result = HandlerResult()
        self._bad(result, "processing_failure", f"pixel-events record {partition}:{offset} failed in the visitor "
                  f"stage: {type(exc).__name__}: {exc}", value, None)
        return result

    # -- steps ------------------------------------------------------------------------------
    def _split(self, payloads: Sequence[Mapping[str, Any]], offset: int, states: StateView,
               result: HandlerResult) -> dict[str, _Visitor]:
        visitors: dict[str, _Visitor] = {}
        positions: dict[str, int] = {}
        for payload in payloads:
            site = self.settings.site(payload["site_id"])
            if site is None:
                self._bad(result, "site_violation", f"site {payload['site_id']!r} is not configured in the "
                          "worker's settings (replay this row after adding it)", payload, payload["site_id"])
                continue
            good, bad = parse_payload(payload, self.time_cfg)
            for b in bad:
                self._bad(result, "schema_violation", "; ".join(b.reasons), _bad_event_dict(b, payload),
                          site.site_id)
            if payload.get("visitor_id") is None:
                STAGE_EVENTS.labels(STAGE, "anonymous").inc(len(good))  # consent: nothing to attribute
                continue
            key = f"{site.site_id}|{payload['visitor_id']}"
            positions.setdefault(key, len(positions))
            if states.applied(key, offset):
                continue
            v = visitors.get(key)
            if v is None:
                v = visitors[key] = _Visitor(key, site, payload["visitor_id"], positions[key])
            v.events.extend(good)
        return visitors

    async def _identify(self, visitors: Mapping[str, _Visitor]) -> dict[str, PersonResolution]:
        """Identity signals of every visitor of the record: one snapshot load and one apply per site."""
        if self.identity is None:
            return {}
        out: dict[str, PersonResolution] = {}
        by_site: dict[str, list[_Visitor]] = {}
        for v in visitors.values():
            by_site.setdefault(v.site.site_id, []).append(v)
        for site_id, group in by_site.items():
            site = group[0].site
            salt = self.settings.email_salt(site)
            cfg = site.identity_config()  # the site's confidence per identity source
            wanted: list[Identifier] = []
            for v in group:
                if v.visitor_id:
                    wanted.append((IdType.visitor, v.visitor_id))
                for e in v.events:
                    wanted.extend(identifiers_from_event(e, salt)[0])
                    if e.email_click_id:
                        wanted.append((IdType.email_click, e.email_click_id))
            snapshot = await self.identity.load_snapshot(site_id, list(dict.fromkeys(wanted)))
            ops: list[Any] = []
            for v in group:
                res: IdentityResult = apply_identity_events(snapshot, v.events, salt, cfg)
                snapshot = res.snapshot
                ops.extend(res.ops)
            if ops:
                await self.identity.apply(site_id, ops)
                for op in ops:
                    IDENTITY_OPS.labels(type(op).__name__).inc()
            for v in group:
                out[v.key] = resolve_visitor(snapshot, v.visitor_id, cfg)
        return out

    def _networks(self, visitors: Mapping[str, _Visitor]) -> dict[str, NetworkInfo]:
        out: dict[str, NetworkInfo] = {}
        for key, v in visitors.items():
            ip = next((e.client_ip for e in reversed(v.events) if e.client_ip), None)
            if ip is None:
                out[key] = NetworkInfo()
            elif self.geoip is not None:
                out[key] = self.geoip.lookup(ip)
            else:
                out[key] = NetworkInfo(ip=ip)
        return out

    def _emit(self, result: HandlerResult, updates: list[tuple[VisitUpdate, bool, int]], partition: int,
              offset: int) -> None:
        groups: dict[int, list[dict[str, Any]]] = {}
        keys: dict[int, set[str]] = {}
        n = self.topics.visits_partitions
        for vu, backfill, i in updates:
            key = f"{vu.site_id}|{vu.account}"
            p = partition_for(key, n)
            groups.setdefault(p, []).append(visit_to_record(vu, f"{partition}:{offset}:{i}", backfill))
            keys.setdefault(p, set()).add(key)
        for p, records in groups.items():
            only = next(iter(keys[p])) if len(keys[p]) == 1 else None
            value = self.codec.encode("VisitBatch", {"updates": records}, topic=self.topics.visits)
            result.outputs.append(Output(self.topics.visits, p, only.encode() if only else None, value))

    def _bad(self, result: HandlerResult, failure_type: str, message: str, payload: Any,
             site_id: str | None) -> None:
        STAGE_BAD_ROWS.labels(STAGE, failure_type).inc()
        STAGE_EVENTS.labels(STAGE, "bad").inc()
        row = bad_row(STAGE, failure_type, message, payload, site_id=site_id, source="pixel-events",
                      limit=self.limit)
        result.outputs.append(Output(self.topics.bad_events, None, None,
                                     self.codec.encode("BadRow", row, topic=self.topics.bad_events)))


def _backfill(current: VisitUpdate, history: list[Mapping[str, Any]]) -> VisitUpdate:
    """The visitor's earlier activity, sent once to the account it now belongs to."""
    hits = tuple(Hit.from_dict(h) for h in history)
    return replace(current, hits=hits, engaged_ms_delta=0, new_session=False)


def _trim_history(history: list[Mapping[str, Any]], now: int) -> list[Mapping[str, Any]]:
    kept = [h for h in history if now - int(h["t"]) <= HISTORY_MS]
    return kept[-HISTORY_HITS:]


def _event_dict(e: TrackedEvent) -> dict[str, Any]:
    return {"event_id": e.event_id, "event_type": e.event_type, "tstamp": e.tstamp, "url": e.url,
            "visitor_id": e.visitor_id, "site_id": e.site_id}


def _bad_event_dict(b: BadEvent, payload: Mapping[str, Any]) -> dict[str, Any]:
    return {"payload_id": b.payload_id, "site_id": payload.get("site_id"), "visitor_id": payload.get("visitor_id"),
            "event": dict(b.event)}
