"""Sessionization on event time and the per-visitor behavioural state.

Rules (GA4 / Snowplow, see REFERENCE.md "Sessions"):

- A new session starts when the gap since the open session's last event reaches
  ``SessionConfig.gap_ms`` (30 min): an event exactly 30 minutes after the last one
  starts a new session, one a millisecond earlier does not. Every event, page pings
  included, extends the session. No maximum length; no split at midnight or on a
  campaign change (the session keeps its first referrer and campaign).
- Session index per visitor: 1, 2, ... in event-time order; ids are uuid5 of
  site, visitor and index, so replays give identical ids.
- Engaged: duration or engaged time longer than 10 s, or 2+ page views, or a conversion.

Out-of-order events: a batch is de-duplicated by fingerprint (against the batch and a
bounded window of recent fingerprints in the state) and sorted by derived time.
**Late-event rule:** only the latest ("open") session is kept in state; closed
sessions are immutable. An event older than the open session's start but within one
gap of it joins the open session and moves its start (and entry page) back. An event
older than ``open.start - gap`` belongs to a session that is already closed: it is not
sessionized, it is returned in :attr:`VisitorOutputs.late` (the adapter writes it as a
``late_event`` bad row or counts it) and its fingerprint is remembered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .campaign import Campaign, parse_campaign, traffic_class
from .events import TrackedEvent
from .pages import first_match
from .referrer import classify_referrer

__all__ = ["SessionConfig", "SessionState", "SessionSummary", "Hit", "SessionUpdate", "VisitorState",
           "VisitorOutputs", "apply_events", "session_id_for", "DAY_MS", "STATE_VERSION"]

DAY_MS = 86_400_000
STATE_VERSION = 1
_SESSION_NS = uuid.UUID("6f1f0c1e-7d7c-4c1b-9d57-0a3c5e2f9b11")


MAX_RATE_VIEWS = 120    # page-view times kept for the page rate: enough to see any rate a bot rule uses


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Sessionization settings. ``page_classes`` is an ordered list of (class, URL
    patterns) used for the visitor's pages-by-class feature (first matching class wins)."""
    gap_ms: int = 30 * 60_000
    engaged_min_ms: int = 10_000
    engaged_min_page_views: int = 2
    conversion_event_types: frozenset[str] = frozenset({"form_submit", "transaction"})
    conversion_names: frozenset[str] = frozenset()
    page_ping_engaged_ms: int = 10_000
    max_fingerprints: int = 500
    max_active_days: int = 90
    max_session_pages: int = 20
    rate_window_ms: int = 60_000
    site_hosts: tuple[str, ...] = ()
    page_classes: tuple[tuple[str, tuple[str, ...]], ...] = ()


def session_id_for(site_id: str, visitor_id: str | None, index: int) -> str:
    """Deterministic session id: uuid5 of site, visitor and session index."""
    return str(uuid.uuid5(_SESSION_NS, f"{site_id}|{visitor_id or ''}|{index}"))


@dataclass(slots=True)
class SessionState:
    """The open session's running aggregates (mutable working copy; serialised via to_dict)."""
    id: str
    index: int
    start: int
    end: int
    page_views: int = 0
    entry_url: str | None = None
    entry_ts: int | None = None
    exit_url: str | None = None
    exit_ts: int | None = None
    max_scroll: int = 0
    engaged_ms: int = 0
    conversions: int = 0
    events: int = 0
    referrer_class: str = "direct"
    referrer_host: str | None = None
    campaign: dict[str, Any] | None = None
    pages: list[str] = field(default_factory=list)
    recent_pv: list[int] = field(default_factory=list)   # page-view times in the rate window (page rate)
    peak_ppm: int = 0                                    # most page views within rate_window_ms

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "i": self.index, "s": self.start, "e": self.end, "pv": self.page_views,
                             "sc": self.max_scroll, "em": self.engaged_ms, "cv": self.conversions, "n": self.events,
                             "rc": self.referrer_class, "pg": list(self.pages), "rp": list(self.recent_pv),
                             "pk": self.peak_ppm}
        for key, val in (("en", self.entry_url), ("et", self.entry_ts), ("ex", self.exit_url), ("xt", self.exit_ts),
                         ("rh", self.referrer_host), ("cp", self.campaign)):
            if val is not None:
                d[key] = val
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SessionState":
        return cls(id=d["id"], index=d["i"], start=d["s"], end=d["e"], page_views=d.get("pv", 0),
                   entry_url=d.get("en"), entry_ts=d.get("et"), exit_url=d.get("ex"), exit_ts=d.get("xt"),
                   max_scroll=d.get("sc", 0), engaged_ms=d.get("em", 0), conversions=d.get("cv", 0),
                   events=d.get("n", 0), referrer_class=d.get("rc", "direct"), referrer_host=d.get("rh"),
                   campaign=dict(d["cp"]) if d.get("cp") else None, pages=list(d.get("pg", ())),
                   recent_pv=list(d.get("rp", ())), peak_ppm=d.get("pk", 0))

    def summary(self, cfg: SessionConfig) -> "SessionSummary":
        duration = self.end - self.start
        engaged = (max(duration, self.engaged_ms) > cfg.engaged_min_ms
                   or self.page_views >= cfg.engaged_min_page_views or self.conversions > 0)
        return SessionSummary(
            session_id=self.id, index=self.index, start=self.start, end=self.end, duration_ms=duration,
            page_views=self.page_views, entry_url=self.entry_url, exit_url=self.exit_url,
            max_scroll=self.max_scroll, engaged_ms=self.engaged_ms, engaged=engaged,
            conversions=self.conversions, events=self.events, referrer_class=self.referrer_class,
            referrer_host=self.referrer_host,
            campaign=Campaign.from_dict(self.campaign) if self.campaign else None,
            pages=tuple(self.pages), peak_pages_per_minute=self.peak_ppm)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A session as downstream sees it (the latest state of a possibly still open session)."""
    session_id: str
    index: int
    start: int
    end: int
    duration_ms: int
    page_views: int
    entry_url: str | None
    exit_url: str | None
    max_scroll: int
    engaged_ms: int
    engaged: bool
    conversions: int
    events: int
    referrer_class: str
    referrer_host: str | None
    campaign: Campaign | None
    pages: tuple[str, ...]
    peak_pages_per_minute: int

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["campaign"] = self.campaign.to_dict() if self.campaign else None
        d["pages"] = list(self.pages)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SessionSummary":
        data = dict(d)
        data["campaign"] = Campaign.from_dict(d["campaign"]) if d.get("campaign") else None
        data["pages"] = tuple(d.get("pages", ()))
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Hit:
    """An activity intent scoring counts, at event time: a page view, or an action (a form
    submit or custom event, classified per site by ``pipeline.core.actions``). ``url`` is
    the page; an action carries its ``form_id`` or ``event`` name. Kind ``conversion`` is
    an action written before actions were classified (read as an action)."""
    tstamp: int
    kind: str                 # "page_view" | "action" | "conversion" (older records)
    url: str | None = None
    name: str | None = None
    scroll: int = 0
    form_id: str | None = None
    event: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"t": self.tstamp, "k": self.kind, "u": self.url, "n": self.name, "s": self.scroll}
        if self.form_id is not None:
            d["f"] = self.form_id
        if self.event is not None:
            d["e"] = self.event
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Hit":
        return cls(d["t"], d["k"], d.get("u"), d.get("n"), d.get("s", 0), d.get("f"), d.get("e"))


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """One session touched by a batch: its summary after the batch and what the batch added."""
    site_id: str
    visitor_id: str | None
    summary: SessionSummary
    new_session: bool          # the session started in this batch
    closed: bool               # a later event in the batch started the next session
    hits: tuple[Hit, ...]      # page views and conversions added by this batch, in time order
    engaged_ms_delta: int
    events: int                # events of this batch in this session


@dataclass(frozen=True, slots=True)
class VisitorState:
    """Everything stage 1 keeps per (site, visitor): Faust table value via to_dict()/from_dict().

    ``offset`` is the last input offset applied (-1: none); ``person_id`` is set by the
    identity step of the adapter and carried for later events.
    """
    site_id: str
    visitor_id: str | None
    session_count: int = 0
    open_session: SessionState | None = None
    first_seen: int | None = None
    last_seen: int | None = None
    fingerprints: tuple[str, ...] = ()
    active_days: tuple[int, ...] = ()
    pages_by_class: Mapping[str, int] = field(default_factory=dict)
    page_views: int = 0
    person_id: str | None = None
    offset: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "site": self.site_id, "vis": self.visitor_id, "sc": self.session_count,
                "open": self.open_session.to_dict() if self.open_session else None,
                "fs": self.first_seen, "ls": self.last_seen, "fp": list(self.fingerprints),
                "days": list(self.active_days), "cls": dict(self.pages_by_class), "pv": self.page_views,
                "pid": self.person_id, "off": self.offset}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VisitorState":
        if d.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported VisitorState version {d.get('v')!r}")
        return cls(site_id=d["site"], visitor_id=d.get("vis"), session_count=d.get("sc", 0),
                   open_session=SessionState.from_dict(d["open"]) if d.get("open") else None,
                   first_seen=d.get("fs"), last_seen=d.get("ls"), fingerprints=tuple(d.get("fp", ())),
                   active_days=tuple(d.get("days", ())), pages_by_class=dict(d.get("cls", {})),
                   page_views=d.get("pv", 0), person_id=d.get("pid"), offset=d.get("off", -1))

    @classmethod
    def new(cls, site_id: str, visitor_id: str | None) -> "VisitorState":
        return cls(site_id=site_id, visitor_id=visitor_id)


@dataclass(frozen=True, slots=True)
class VisitorOutputs:
    """What one batch produced: session updates in session order, duplicates dropped,
    late events not sessionized, and whether the batch was skipped by the offset guard."""
    updates: tuple[SessionUpdate, ...] = ()
    duplicates: int = 0
    late: tuple[TrackedEvent, ...] = ()
    skipped: bool = False


_CUSTOM_EVENTS = frozenset({"track", "structured", "self_describing"})


def _is_action(e: TrackedEvent, cfg: SessionConfig) -> bool:
    """A form submit or transaction, a named custom event, or a link click named in
    ``conversion_names``: the account stage classifies it (``pipeline.core.actions``)."""
    if e.event_type in cfg.conversion_event_types:
        return True
    if e.event_type in _CUSTOM_EVENTS:
        return bool(e.name or e.se_action)
    if cfg.conversion_names and e.event_type == "link_click":
        return (e.name in cfg.conversion_names) or (e.se_action in cfg.conversion_names)
    return False


def _action_hit(e: TrackedEvent) -> Hit:
    form_id = e.name if e.event_type == "form_submit" else None
    event = None if e.event_type == "form_submit" else (e.name or e.se_action or e.event_type)
    return Hit(e.tstamp, "action", e.url, e.name or e.se_action or e.event_type, form_id=form_id, event=event)


class _Touch:
    __slots__ = ("session", "new", "closed", "hits", "engaged", "events")

    def __init__(self, session: SessionState, new: bool) -> None:
        self.session = session
        self.new = new
        self.closed = False
        self.hits: list[Hit] = []
        self.engaged = 0
        self.events = 0


def _start_session(site: str, visitor: str | None, index: int, e: TrackedEvent, cfg: SessionConfig) -> SessionState:
    s = SessionState(id=session_id_for(site, visitor, index), index=index, start=e.tstamp, end=e.tstamp)
    _set_source(s, e, cfg)
    return s


def _set_source(s: SessionState, e: TrackedEvent, cfg: SessionConfig) -> None:
    ref = classify_referrer(e.referrer, e.url, cfg.site_hosts)
    camp = parse_campaign(e.url)
    s.referrer_class = traffic_class(ref, camp, email_click=e.email_click_id is not None).value
    s.referrer_host = ref.host
    s.campaign = camp.to_dict() if camp else None


def _add(s: SessionState, e: TrackedEvent, cfg: SessionConfig, touch: _Touch) -> None:
    if e.tstamp < s.start:
        s.start = e.tstamp
        _set_source(s, e, cfg)
    s.end = max(s.end, e.tstamp)
    s.events += 1
    touch.events += 1
    if e.scroll_depth is not None:
        s.max_scroll = max(s.max_scroll, e.scroll_depth)
    engaged = e.engaged_ms if e.engaged_ms is not None else (
        cfg.page_ping_engaged_ms if e.event_type == "page_ping" else 0)
    s.engaged_ms += engaged
    touch.engaged += engaged
    if e.is_page_view:
        s.page_views += 1
        if s.entry_ts is None or e.tstamp < s.entry_ts:
            s.entry_url, s.entry_ts = e.url, e.tstamp
        if s.exit_ts is None or e.tstamp >= s.exit_ts:
            s.exit_url, s.exit_ts = e.url, e.tstamp
        if e.url and e.url not in s.pages and len(s.pages) < cfg.max_session_pages:
            s.pages.append(e.url)
        # every view time inside the rate window (at most MAX_RATE_VIEWS: any rate beyond is a bot's)
        recent = sorted(t for t in (*s.recent_pv, e.tstamp) if e.tstamp - cfg.rate_window_ms < t)[-MAX_RATE_VIEWS:]
        s.recent_pv = recent
        in_window = sum(1 for t in recent if t <= e.tstamp)
        s.peak_ppm = max(s.peak_ppm, in_window)
        touch.hits.append(Hit(e.tstamp, "page_view", e.url, e.page_title, e.scroll_depth or 0))
    if _is_action(e, cfg):
        s.conversions += 1
        touch.hits.append(_action_hit(e))


def apply_events(state: VisitorState, events: Sequence[TrackedEvent], cfg: SessionConfig = SessionConfig(),
                 offset: int | None = None) -> tuple[VisitorState, VisitorOutputs]:
    """Apply one record's events of one visitor; pure and deterministic.

    Does not mutate ``state``. When ``offset`` is given and not above ``state.offset``
    the batch was applied before: the state is returned unchanged with ``skipped=True``
    (the replay guard). Events already seen (same fingerprint) are dropped and counted.
    Returns the new state and one :class:`SessionUpdate` per session the batch touched.
    """
    if offset is not None and offset <= state.offset:
        return state, VisitorOutputs(skipped=True)
    seen = set(state.fingerprints)
    fps = list(state.fingerprints)
    fresh: list[TrackedEvent] = []
    dups = 0
    for e in events:
        if e.fingerprint in seen:
            dups += 1
            continue
        seen.add(e.fingerprint)
        fps.append(e.fingerprint)
        fresh.append(e)
    fresh.sort(key=lambda e: e.tstamp)  # stable: same-time events keep arrival order

    site, visitor = state.site_id, state.visitor_id
    cur = SessionState.from_dict(state.open_session.to_dict()) if state.open_session else None
    count = state.session_count
    touches: list[_Touch] = []
    touch: _Touch | None = None
    late: list[TrackedEvent] = []
    days = set(state.active_days)
    classes = dict(state.pages_by_class)
    page_views = state.page_views
    first_seen, last_seen = state.first_seen, state.last_seen

    for e in fresh:
        if cur is not None and e.tstamp < cur.start - cfg.gap_ms:
            late.append(e)
            continue
        if cur is None or e.tstamp - cur.end >= cfg.gap_ms:
            if touch is not None:
                touch.closed = True
            count += 1
            cur = _start_session(site, visitor, count, e, cfg)
            touch = _Touch(cur, new=True)
            touches.append(touch)
        elif touch is None:
            touch = _Touch(cur, new=False)
            touches.append(touch)
        _add(cur, e, cfg, touch)
        days.add(e.tstamp // DAY_MS)
        first_seen = e.tstamp if first_seen is None else min(first_seen, e.tstamp)
        last_seen = e.tstamp if last_seen is None else max(last_seen, e.tstamp)
        if e.is_page_view:
            page_views += 1
            if e.url and cfg.page_classes:
                for name, patterns in cfg.page_classes:
                    if first_match(e.url, patterns):
                        classes[name] = classes.get(name, 0) + 1
                        break

    updates = tuple(SessionUpdate(site_id=site, visitor_id=visitor, summary=t.session.summary(cfg), new_session=t.new,
                                  closed=t.closed, hits=tuple(sorted(t.hits, key=lambda h: h.tstamp)),
                                  engaged_ms_delta=t.engaged, events=t.events) for t in touches)
    new_state = replace(
        state, session_count=count, open_session=cur, first_seen=first_seen, last_seen=last_seen,
        fingerprints=tuple(fps[-cfg.max_fingerprints:]) if cfg.max_fingerprints > 0 else (),
        active_days=tuple(sorted(days)[-cfg.max_active_days:]), pages_by_class=classes, page_views=page_views,
        offset=offset if offset is not None else state.offset)
    return new_state, VisitorOutputs(updates=updates, duplicates=dups, late=tuple(late))
