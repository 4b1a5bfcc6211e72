"""Stage 1, visitor: pixel-events (CollectorBatch) -> visits (VisitBatch), keyed by site and visitor.

Per input record: decode once, split events by visitor, enrich every visitor
of the record with one GeoIP pass, one identity-graph round trip pair and one
reference-data round trip pair, run each visitor once through the core chain
(:func:`pipeline.core.visitor.process_visitor`: sessions, network, company,
bots, visit updates), and write each visitor's state once. Visit updates are
grouped by the partition of their :func:`~pipeline.topology.account_key`, one
``visits`` record per partition (split below ``kafka.max_message_bytes``).

**The unit of failure is one event, at most one visitor's events of one
record.** Each event is parsed inside its own error boundary, each visitor is
enriched and sessionized inside its own: whatever one of them raises becomes
its own typed bad row carrying its original ``CollectorPayload`` (replayable
with ``leadstream bad-rows replay``), and every other visitor of the record
goes on. Errors that mean a dependency is away (``retryable``) are not caught:
the runner retries the record. The runner's ``failed`` is only the last resort.

**Bounded.** URLs, referrers and titles are cut (``core.limits``), a visitor's
history is trimmed by bytes, outputs are split below the message size, and a
visitor idle for ``stages.state_retention_days`` of event time is deleted
(:mod:`.expiry`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence

from ..codec import Codec, CodecError
from ..core.bots import BotConfig
from ..core.erasure import noted_accounts
from ..core.events import TimeConfig, TrackedEvent, build_event, validate_event
from ..core.failures import FailureType
from ..core.identity import (IdentityConfig, IdentityResult, IdType, IdentitySnapshot, Identifier,
                             apply_identity_events, identifiers_to_load, resolve_visitor)
from ..core.limits import MAX_NAME_CHARS, MAX_TITLE_CHARS, MAX_URL_CHARS, chunk_by_bytes, clip, json_size, text_bytes
from ..core.model import NetworkInfo, PersonResolution
from ..core.scoring_model import ScoringModel
from ..core.sessions import DAY_MS, SessionConfig, VisitorState
from ..core.visit import VisitUpdate
from ..core.visitor import VisitorOutcome, process_visitor
from ..enrich.geoip import GeoIPReader
from ..enrich.redis_store import AsyncReferenceStore
from ..enrich.useragent import analyze_user_agent
from ..metrics import (BOTS, EVENT_TIME, IDENTITY_OPS, NETWORK_CLASSES, STAGE_BAD_ROWS, STAGE_BATCH_SIZE, STAGE_EVENTS,
                       record_resolution)
from ..settings import Settings, SiteSettings
from ..topology import account_key, partition_for, visitor_key
from .erasure import erase_visitors, erasures_of
from .expiry import IdleKeys
from .messages import bad_row, split_bad_row, visit_to_record
from .runtime import HandlerResult, Output, StateView

log = logging.getLogger(__name__)
_NO_PERSON = PersonResolution(None, 0.0)

STAGE = "visitor"
#: Errors that mean a dependency is away: never caught by a boundary, the runner retries the record.
DEFAULT_RETRYABLE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)


class IdentityPort(Protocol):
    """What the stage needs of the identity graph (``pipeline.enrich.identity_store``)."""

    async def load_snapshot(self, site_id: str, identifiers: Sequence[Identifier]) -> IdentitySnapshot: ...

    async def apply(self, site_id: str, ops: Sequence[Any]) -> None: ...


@dataclass
class VisitorTopics:
    visits: str
    visits_partitions: int
    bad_events: str
    pixel_events_partitions: int = 1  # the source's partitions: which keys a record's partition holds


@dataclass
class _Visitor:
    key: str
    site: SiteSettings
    visitor_id: str | None
    position: int  # the key's position among the record's visitor keys, applied ones included
    events: list[TrackedEvent] = field(default_factory=list)
    payloads: list[dict[str, Any]] = field(default_factory=list)  # the original payloads, their good events only


@dataclass
class _Outcome:
    """What one visitor produced: applied together only when the whole visitor succeeded."""
    state: dict[str, Any]
    last_event_ms: int
    updates: list[tuple[VisitUpdate, bool]] = field(default_factory=list)
    late: list[TrackedEvent] = field(default_factory=list)


class _VisitorFailed(Exception):
    def __init__(self, failure: FailureType, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.failure = failure
        self.cause = cause


class VisitorStage:
    """The visitor stage's handler (see module doc). Holds per-process resources only; the idle-key
    index (:class:`IdleKeys`) is a cache over the table, rebuilt from it."""

    def __init__(self, settings: Settings, codec: Codec, topics: VisitorTopics, model: ScoringModel,
                 geoip: GeoIPReader | None, reference: AsyncReferenceStore | None, identity: IdentityPort | None,
                 bot_config: BotConfig = BotConfig(),
                 retryable: tuple[type[BaseException], ...] = DEFAULT_RETRYABLE) -> None:
        self.settings = settings
        self.codec = codec
        self.topics = topics
        self.geoip = geoip
        self.reference = reference
        self.identity = identity
        self.bot_config = bot_config
        self.retryable = retryable
        self.session_cfg: dict[str, SessionConfig] = {}
        self.identity_cfg: dict[str, IdentityConfig] = {}
        self.use_model(model)
        limit = settings.kafka.max_message_bytes
        self.output_bytes = limit * 9 // 10        # a record's value, with room for framing and headers
        self.state_bytes = limit // 2              # a stored state (the changelog adds the key and offset)
        self.bad_row_bytes = limit // 2            # one bad row's payload part
        self.history_bytes = min(settings.stages.history_max_bytes, self.state_bytes // 4)
        self.time_cfg = TimeConfig.from_days(settings.stages.max_send_delay_days)
        self.idle = IdleKeys(int(settings.stages.state_retention_days * DAY_MS), topics.pixel_events_partitions,
                             _visitor_last_seen)
        #: the current group's records, decoded once by :meth:`prefetch`
        self._decoded: dict[tuple[int, int], Any] = {}

    def use_model(self, model: ScoringModel) -> None:
        """Sessionize with ``model`` from the next record on (``leadstream model promote``, as the account
        stage does): each site's session gap is the one its effective rules hold, the gap its bounces
        are judged at (:meth:`SiteSettings.effective_rules`)."""
        classes = tuple((s.name, tuple(s.patterns)) for s in model.intent.page_signals)
        rules = {s.site_id: s.effective_rules(model) for s in self.settings.sites}
        self.session_cfg = {
            s.site_id: SessionConfig(gap_ms=rules[s.site_id].intent.session_gap_minutes * 60_000,
                                     site_hosts=s.own_hosts, conversion_names=frozenset(s.conversion_names),
                                     page_classes=classes)
            for s in self.settings.sites}
        # each site's identity trust, with its conversion rules: a conversion form's email is a hand-raise
        self.identity_cfg = {s.site_id: s.identity_config(rules[s.site_id].intent) for s in self.settings.sites}

    # -- the handler ------------------------------------------------------------------------
    async def __call__(self, partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        result = HandlerResult()
        try:
            batch = self._decoded.pop((partition, offset), None) or self.codec.decode(value, "CollectorBatch")
        except CodecError as exc:
            self._bad(result, FailureType.schema_violation, f"pixel-events record {partition}:{offset} is not a "
                      f"CollectorBatch: {exc}", value, None, {"partition": str(partition), "offset": str(offset)})
            return result
        if erasures_of(batch):  # `leadstream forget`, in band and in order with the visitor's events
            return erase_visitors(self, partition, offset, batch, states)
        payloads = batch.get("payloads") if isinstance(batch, Mapping) else None
        visitors = self._split(payloads if isinstance(payloads, list) else [], offset, states, result)
        if visitors:
            STAGE_BATCH_SIZE.labels(STAGE).observe(sum(len(v.events) for v in visitors.values()))
            await self._process(visitors, partition, offset, states, result)
        self._evict(partition, states, result)
        return result

    async def prefetch(self, records: Sequence[tuple[int, int, bytes]]) -> None:
        """Before a commit group (``RecordRunner``): decode each record once (``__call__`` takes it from
        here) and load the identity links of every visitor of the group in one round trip per site
        (:class:`~pipeline.enrich.identity_store.GroupPrefetch`), not one per record."""
        self._decoded = {}
        wanted: dict[str, dict[Identifier, None]] = {}
        for partition, offset, value in records:
            try:
                batch = self.codec.decode(value, "CollectorBatch")
            except CodecError:
                continue  # __call__ decodes it again and writes the bad row
            self._decoded[(partition, offset)] = batch
            payloads = batch.get("payloads") if isinstance(batch, Mapping) else None
            for payload in payloads if isinstance(payloads, list) else ():
                visitor_id = payload.get("visitor_id") if isinstance(payload, Mapping) else None
                site = self.settings.site(str(payload.get("site_id"))) if visitor_id else None
                if site is not None and isinstance(visitor_id, str):
                    wanted.setdefault(site.site_id, {})[(IdType.visitor, visitor_id)] = None
        prefetch = getattr(self.identity, "prefetch", None)
        if prefetch is not None:
            await prefetch(wanted)

    def failed(self, partition: int, offset: int, value: bytes, exc: Exception) -> HandlerResult:
        """The last resort: the record failed outside every per-visitor boundary. It is kept whole as an
        ``unknown`` bad row (the cause is in the message), replayable after the fix."""
        result = HandlerResult()
        self._bad(result, FailureType.unknown, f"pixel-events record {partition}:{offset} failed in the visitor "
                  f"stage: {type(exc).__name__}: {exc}", value, None, {"partition": str(partition),
                                                                      "offset": str(offset)})
        return result

    # -- steps ------------------------------------------------------------------------------
    def _split(self, payloads: Sequence[Any], offset: int, states: StateView,
               result: HandlerResult) -> dict[str, _Visitor]:
        """The record's good events by visitor key; every bad event or payload becomes its own bad row."""
        visitors: dict[str, _Visitor] = {}
        positions: dict[str, int] = {}
        for payload in payloads:
            try:
                self._split_payload(payload, offset, states, result, visitors, positions)
            except self.retryable:
                raise
            except Exception as exc:
                log.exception("visitor: a payload failed to parse")
                self._bad(result, FailureType.processing_failure, f"a payload failed to parse: "
                          f"{type(exc).__name__}: {exc}", _batch_of(payload), _site_of(payload), _replay(payload))
        return visitors

    def _split_payload(self, payload: Any, offset: int, states: StateView, result: HandlerResult,
                       visitors: dict[str, _Visitor], positions: dict[str, int]) -> None:
        if not isinstance(payload, Mapping):
            self._bad(result, FailureType.schema_violation, "a payload is not a CollectorPayload", payload, None)
            return
        site = self.settings.site(str(payload.get("site_id")))
        if site is None:
            self._bad(result, FailureType.site_violation, f"site {payload.get('site_id')!r} is not configured in the "
                      "worker's settings (replay this row after adding it)", _batch_of(payload),
                      _site_of(payload), _replay(payload))
            return
        good, raw_good = self._parse(payload, site.site_id, result)
        visitor_id = payload.get("visitor_id")
        if not isinstance(visitor_id, str) or not visitor_id:
            STAGE_EVENTS.labels(STAGE, "anonymous").inc(len(good))  # consent: nothing to attribute
            return
        key = visitor_key(site.site_id, visitor_id)
        positions.setdefault(key, len(positions))
        if not good or states.applied(key, offset):
            return
        v = visitors.get(key)
        if v is None:
            v = visitors[key] = _Visitor(key, site, visitor_id, positions[key])
        v.events.extend(good)
        v.payloads.append({**payload, "events": raw_good})

    def _parse(self, payload: Mapping[str, Any], site_id: str,
               result: HandlerResult) -> tuple[list[TrackedEvent], list[Any]]:
        """Each event of ``payload`` in its own boundary: (good events, their original dicts)."""
        events = payload.get("events")
        if not isinstance(events, list):
            self._bad(result, FailureType.schema_violation, "payload has no events list", _batch_of(payload),
                      site_id, _replay(payload))
            return [], []
        good: list[TrackedEvent] = []
        raw_good: list[Any] = []
        for event in events:
            try:
                errors = validate_event(event, payload)
                if errors:
                    self._bad(result, FailureType.schema_violation, "; ".join(errors),
                              _batch_of(payload, [event]), site_id, _replay(payload, event))
                    continue
                good.append(_bounded(build_event(event, payload, self.time_cfg)))
                raw_good.append(event)
            except self.retryable:
                raise
            except Exception as exc:
                log.exception("visitor: an event failed to parse")
                self._bad(result, FailureType.processing_failure, f"an event failed to parse: "
                          f"{type(exc).__name__}: {exc}", _batch_of(payload, [event]), site_id,
                          _replay(payload, event))
        return good, raw_good

    async def _process(self, visitors: dict[str, _Visitor], partition: int, offset: int, states: StateView,
                       result: HandlerResult) -> None:
        """The record's visitors: identify, locate, look up reference data (all visitors at once), then
        each visitor through the core chain in its own boundary, then the visits records."""
        person_by_key = await self._identify(visitors, result)
        networks = self._networks(visitors, result)
        lookup = await self._reference(visitors, person_by_key, networks)
        updates: list[tuple[VisitUpdate, bool, int]] = []
        for key, v in visitors.items():
            outcome = self._visit_guarded(v, states.get(key) or {}, person_by_key.get(key, _NO_PERSON),
                                          networks[key], lookup, offset, result)
            if outcome is not None:
                updates.extend(self._apply(v, outcome, partition, result))
        self._emit(result, updates, partition, offset)

    async def _reference(self, visitors: Mapping[str, _Visitor], person_by_key: Mapping[str, PersonResolution],
                         networks: Mapping[str, NetworkInfo]) -> Any:
        """The reference data of every visitor's network and person's company domain: one batch lookup."""
        if self.reference is None:
            return None
        domains = [p.person.company_domain for k, p in person_by_key.items()
                   if k in visitors and p.person is not None and p.person.company_domain]
        return await self.reference.resolve_networks([networks[k] for k in visitors], domains=domains)

    def _visit_guarded(self, v: _Visitor, stored: Mapping[str, Any], person: PersonResolution,
                       network: NetworkInfo, lookup: Any, offset: int, result: HandlerResult) -> _Outcome | None:
        """:meth:`_visit` in the visitor's own boundary: what it raises is the visitor's bad row."""
        try:
            return self._visit(v, stored, person, network, lookup, offset)
        except self.retryable:
            raise
        except Exception as exc:
            log.exception("visitor: %s failed", v.key)
            self._visitor_failed(result, v, FailureType.processing_failure, exc)
            return None

    def _apply(self, v: _Visitor, outcome: _Outcome, partition: int,
               result: HandlerResult) -> list[tuple[VisitUpdate, bool, int]]:
        """One visitor's outcome into the result: its late events as bad rows, its state, its idle time;
        returns its updates with their stable positions."""
        for late in outcome.late:
            self._bad(result, FailureType.late_event, "event older than the visitor's open session by more "
                      "than one session gap: not sessionized", _batch_of_event(v, late), v.site.site_id,
                      {"event_id": late.event_id, "visitor_id": v.visitor_id or ""})
        base = v.position * 1000  # stable ids: a replay that skips keys keeps the others' ids
        result.states[v.key] = outcome.state
        self.idle.touch(partition, v.key, outcome.last_event_ms)
        EVENT_TIME.applied(STAGE, outcome.last_event_ms)
        self.idle.advance(partition, outcome.last_event_ms)
        return [(vu, backfill, base + i) for i, (vu, backfill) in enumerate(outcome.updates)]

    def _visit(self, v: _Visitor, stored: Mapping[str, Any], person: PersonResolution, network: NetworkInfo,
               lookup: Any, offset: int) -> _Outcome | None:
        """One visitor's events through the core chain (:func:`pipeline.core.visitor.process_visitor`)."""
        state = (VisitorState.from_dict(stored["vs"]) if stored.get("vs")
                 else VisitorState.new(v.site.site_id, v.visitor_id))
        out = process_visitor(state, v.events, self.session_cfg[v.site.site_id], person=person, network=network,
                              reference=lookup, user_agent=analyze_user_agent, bot_config=self.bot_config,
                              offset=offset, account=stored.get("acct"), history=list(stored.get("h") or ()),
                              history_bytes=self.history_bytes)
        if out is None:
            return None
        _count(v, out)
        record_resolution(out.company, person)
        updates = [(part, backfill) for vu, backfill in out.updates for part in self._split_update(vu)]
        # Bounded by construction (tests/unit/stages): cut fields, history_bytes, the core's count limits.
        state_dict = {"vs": out.state.to_dict(), "acct": out.account, "h": out.history,
                      "accts": noted_accounts(stored, (vu.account for vu, _ in updates))}  # for an erasure
        return _Outcome(state_dict, out.last_seen, updates, list(out.late))

    def _split_update(self, vu: VisitUpdate) -> list[VisitUpdate]:
        """``vu`` as updates whose hits fit in half an output record each: the first keeps the session's
        new-session flag and engaged time, the rest carry only further hits (as a backfill does)."""
        budget = self.output_bytes // 2
        sizes = [64 + text_bytes(h.url) + text_bytes(h.name) for h in vu.hits]
        if sum(sizes) <= budget:
            return [vu]
        parts = list(chunk_by_bytes(vu.hits, sizes, budget))
        first = replace(vu, hits=tuple(parts[0]))
        return [first, *(replace(vu, hits=tuple(p), engaged_ms_delta=0, new_session=False) for p in parts[1:])]

    async def _identify(self, visitors: dict[str, _Visitor], result: HandlerResult) -> dict[str, PersonResolution]:
        """Identity signals of every visitor of the record: one snapshot load and one apply per site.

        A site group that raises is tried again visitor by visitor; a visitor that still raises is
        an ``enrichment_failure`` bad row and leaves the record (``visitors`` loses it).
        """
        if self.identity is None:
            return {}
        out: dict[str, PersonResolution] = {}
        by_site: dict[str, list[_Visitor]] = {}
        for v in visitors.values():
            by_site.setdefault(v.site.site_id, []).append(v)
        failed: list[str] = []
        for site_id, group in by_site.items():
            try:
                out.update(await self._identify_group(site_id, group))
                continue
            except self.retryable:
                raise
            except Exception:
                log.exception("visitor: identity of a group of %d visitors failed; retrying one by one", len(group))
            for v in group:
                try:
                    out.update(await self._identify_group(site_id, [v]))
                except self.retryable:
                    raise
                except Exception as exc:
                    self._visitor_failed(result, v, FailureType.enrichment_failure, exc)
                    failed.append(v.key)
        for key in failed:
            del visitors[key]
        return out

    async def _identify_group(self, site_id: str, group: list[_Visitor]) -> dict[str, PersonResolution]:
        site = group[0].site
        salt = self.settings.email_salt(site)
        cfg = self.identity_cfg.get(site.site_id) or site.identity_config()  # confidence per identity source
        assert self.identity is not None
        snapshot = await self.identity.load_snapshot(site_id, identifiers_to_load((e for v in group for e in v.events),
                                                                                  salt))
        ops: list[Any] = []
        for v in group:
            res: IdentityResult = apply_identity_events(snapshot, v.events, salt, cfg)
            snapshot = res.snapshot
            ops.extend(res.ops)
        if ops:
            await self.identity.apply(site_id, ops)
            for op in ops:
                IDENTITY_OPS.labels(type(op).__name__).inc()
        return {v.key: resolve_visitor(snapshot, v.visitor_id, cfg) for v in group}

    def _networks(self, visitors: dict[str, _Visitor], result: HandlerResult) -> dict[str, NetworkInfo]:
        """Each visitor's network (its last event's IP), in its own boundary (``enrichment_failure``)."""
        out: dict[str, NetworkInfo] = {}
        for key, v in list(visitors.items()):
            try:
                ip = next((e.client_ip for e in reversed(v.events) if e.client_ip), None)
                if ip is None:
                    out[key] = NetworkInfo()
                elif self.geoip is not None:
                    out[key] = self.geoip.lookup(ip)
                else:
                    out[key] = NetworkInfo(ip=ip)
            except self.retryable:
                raise
            except Exception as exc:
                self._visitor_failed(result, v, FailureType.enrichment_failure, exc)
                del visitors[key]
        return out

    def _emit(self, result: HandlerResult, updates: list[tuple[VisitUpdate, bool, int]], partition: int,
              offset: int) -> None:
        """Visit updates grouped by target partition, each group split into records below the size bound."""
        groups: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        n = self.topics.visits_partitions
        for vu, backfill, i in updates:
            key = account_key(vu.site_id, vu.account)
            groups.setdefault(partition_for(key, n), []).append(
                (key, visit_to_record(vu, f"{partition}:{offset}:{i}", backfill)))
        for p, items in groups.items():
            value = self.codec.encode("VisitBatch", {"updates": [r for _, r in items]}, topic=self.topics.visits)
            if len(value) <= self.output_bytes:
                self._visits_output(result, p, items, value)
                continue
            for chunk in chunk_by_bytes(items, [json_size(r) for _, r in items], self.output_bytes):
                value = self.codec.encode("VisitBatch", {"updates": [r for _, r in chunk]}, topic=self.topics.visits)
                if len(value) > self.output_bytes:
                    self._bad(result, FailureType.size_violation, f"a visit update of {len(value)} bytes does not fit "
                              f"a visits record (kafka.max_message_bytes)", chunk[0][1], chunk[0][1].get("site_id"))
                    continue
                self._visits_output(result, p, chunk, value)

    def _visits_output(self, result: HandlerResult, p: int, items: list[tuple[str, dict[str, Any]]],
                       value: bytes) -> None:
        keys = {k for k, _ in items}
        only = next(iter(keys)) if len(keys) == 1 else None
        result.outputs.append(Output(self.topics.visits, p, only.encode() if only else None, value))

    def _evict(self, partition: int, states: StateView, result: HandlerResult) -> None:
        for key in self.idle.expired(partition, states, keep=set(result.states)):
            result.deletes.append(key)
            STAGE_EVENTS.labels(STAGE, "evicted").inc()

    def _visitor_failed(self, result: HandlerResult, v: _Visitor, failure: FailureType, exc: BaseException) -> None:
        self._bad(result, failure, f"visitor {v.key} failed in the visitor stage: {type(exc).__name__}: {exc}",
                  {"payloads": v.payloads}, v.site.site_id,
                  {"payload_schema": "CollectorBatch", "visitor_id": v.visitor_id or "",
                   "event_ids": ",".join(e.event_id for e in v.events)[:4096]})

    def _bad(self, result: HandlerResult, failure_type: FailureType, message: str, payload: Any,
             site_id: str | None, details: Mapping[str, str] | None = None) -> None:
        STAGE_BAD_ROWS.labels(STAGE, failure_type.value).inc()
        STAGE_EVENTS.labels(STAGE, "bad").inc()
        row = bad_row(STAGE, failure_type, message, payload, site_id=site_id, source="pixel-events",
                      details=details)
        for part in split_bad_row(row, self.bad_row_bytes):
            result.outputs.append(Output(self.topics.bad_events, None, None,
                                         self.codec.encode("BadRow", part, topic=self.topics.bad_events)))


def _count(v: _Visitor, out: VisitorOutcome) -> None:
    """The metrics of one visitor's outcome."""
    STAGE_EVENTS.labels(STAGE, "duplicate").inc(out.duplicates)
    STAGE_EVENTS.labels(STAGE, "processed").inc(len(v.events) - out.duplicates - len(out.late))
    NETWORK_CLASSES.labels(out.network.network_class.value).inc()
    if out.verdict.is_bot:
        BOTS.labels((out.verdict.reason or "unknown").split(":")[0]).inc()


def _visitor_last_seen(stored: object) -> int | None:
    if not isinstance(stored, Mapping):
        return None
    vs = stored.get("vs")
    last = vs.get("ls") if isinstance(vs, Mapping) else None
    return int(last) if isinstance(last, int) else None


def _bounded(e: TrackedEvent) -> TrackedEvent:
    """``e`` with its long text fields cut (``core.limits``): what the state and ``visits`` keep."""
    if ((e.url is None or len(e.url) <= MAX_URL_CHARS) and (e.referrer is None or len(e.referrer) <= MAX_URL_CHARS)
            and (e.page_title is None or len(e.page_title) <= MAX_TITLE_CHARS)
            and (e.name is None or len(e.name) <= MAX_NAME_CHARS)):
        return e
    return replace(e, url=clip(e.url, MAX_URL_CHARS), referrer=clip(e.referrer, MAX_URL_CHARS),
                   page_title=clip(e.page_title, MAX_TITLE_CHARS), name=clip(e.name, MAX_NAME_CHARS))


def _site_of(payload: Any) -> str | None:
    site = payload.get("site_id") if isinstance(payload, Mapping) else None
    return site if isinstance(site, str) else None


def _batch_of(payload: Any, events: list[Any] | None = None) -> dict[str, Any]:
    """A ``CollectorBatch`` dict holding ``payload`` (with only ``events`` when given): a replayable row."""
    if not isinstance(payload, Mapping):
        return {"payloads": [payload]}
    return {"payloads": [{**payload, "events": events} if events is not None else dict(payload)]}


def _batch_of_event(v: _Visitor, event: TrackedEvent) -> dict[str, Any]:
    for payload in v.payloads:
        if payload.get("payload_id") == event.payload_id or not event.payload_id:
            for raw in payload["events"]:
                if isinstance(raw, Mapping) and raw.get("event_id") == event.event_id:
                    return _batch_of(payload, [raw])
    return {"payloads": []}


def _replay(payload: Any, event: Any = None) -> dict[str, str]:
    details = {"payload_schema": "CollectorBatch"}
    if isinstance(payload, Mapping) and isinstance(payload.get("visitor_id"), str):
        details["visitor_id"] = payload["visitor_id"]
    if isinstance(event, Mapping) and isinstance(event.get("event_id"), str):
        details["event_id"] = event["event_id"]
    return details
