"""Tracker events as typed values: parsing, validation, event time and fingerprints.

Input is what the collector wrote: a ``CollectorPayload`` dict (schemas/CollectorPayload.avsc)
whose ``events`` are ``Event`` dicts (schemas/Event.avsc). Nothing here raises on bad
input: :func:`parse_payload` returns good events and typed bad events side by side.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, TypeGuard

__all__ = [
    "EVENT_TYPES", "PAGE_EVENT_TYPES", "TimeConfig", "TrackedEvent", "BadEvent",
    "derived_tstamp", "tracker_user_agent", "event_fingerprint", "validate_event", "event_problems", "value_problems",
    "build_event",
    "parse_payload",
    "VERIFIED_HEADER", "VERIFIED_BY_SIGNATURE",
]

EVENT_TYPES = frozenset({
    "page_view", "page_ping", "link_click", "structured", "self_describing", "identify",
    "track", "form_submit", "transaction", "unknown",
})
PAGE_EVENT_TYPES = frozenset({"page_view", "page_ping"})

_TS_FIELDS = ("device_created_tstamp", "device_sent_tstamp", "true_tstamp")
# Volatile fields left out of the fingerprint: they differ between retries of one event.
_VOLATILE = frozenset({"event_id", "device_sent_tstamp"})
_INT_FIELDS = ("session_index", "pp_min_x", "pp_max_x", "pp_min_y", "pp_max_y", "engaged_ms", "scroll_depth")


@dataclass(frozen=True, slots=True)
class TimeConfig:
    """Clock-skew guards for :func:`derived_tstamp` (milliseconds).

    ``max_device_delay_ms``: longest plausible time between a tracker creating an event
    and sending it (offline queues); a longer delay is clamped to it, so such events get
    the time ``collector_tstamp - max_device_delay_ms``. ``None``: no limit. The worker
    sets it from ``stages.max_send_delay_days`` (default 7 days).
    ``max_future_ms``: a true timestamp further ahead of the collector than this is
    ignored as a broken clock.
    """
    max_device_delay_ms: int | None = 7 * 24 * 3600 * 1000
    max_future_ms: int = 60_000

    @classmethod
    def from_days(cls, max_send_delay_days: float | None) -> TimeConfig:
        """From the ``stages.max_send_delay_days`` setting (``None`` or 0: no limit)."""
        if not max_send_delay_days:
            return cls(max_device_delay_ms=None)
        return cls(max_device_delay_ms=int(max_send_delay_days * 86_400_000))


DEFAULT_TIME = TimeConfig()


def derived_tstamp(collector_tstamp: int, dtm: int | None = None, stm: int | None = None,
                   ttm: int | None = None, cfg: TimeConfig = DEFAULT_TIME) -> int:
    """Event time in epoch ms, as Snowplow derives it.

    1. ``ttm`` (Snowplow's true timestamp, set by a tracker that knows when the event really
       happened: a backfill, a server-side relay) when given and not more than
       ``max_future_ms`` ahead of the collector. Never clamped: old ``ttm`` values are kept.
    2. ``collector_tstamp - (stm - dtm)`` when both device stamps are given: the device's
       send delay, measured on the device clock, applied to the trusted collector clock.
       A negative delay (sent before created: a broken clock) counts as 0; a delay longer
       than ``max_device_delay_ms`` (``stages.max_send_delay_days``, 7 days by default)
       is clamped to it.
    3. ``collector_tstamp`` otherwise.
    Never later than ``collector_tstamp`` except through a plausible ``ttm``.
    """
    if ttm is not None and ttm > 0 and ttm <= collector_tstamp + cfg.max_future_ms:
        return ttm
    if dtm is not None and stm is not None:
        delay = max(stm - dtm, 0)
        if cfg.max_device_delay_ms is not None:
            delay = min(delay, cfg.max_device_delay_ms)
        return collector_tstamp - delay
    return collector_tstamp


#: ``CollectorPayload.headers`` entry the collector itself sets (never copied from the request) when
#: the request was signed with one of the site's write keys; its value is :data:`VERIFIED_BY_SIGNATURE`.
VERIFIED_HEADER = "x-leadstream-verified"
VERIFIED_BY_SIGNATURE = "signature"


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """One event with its request context, typed. ``tstamp`` is the derived event time (ms)."""
    site_id: str
    visitor_id: str | None
    event_id: str
    event_type: str
    tstamp: int
    collector_tstamp: int
    fingerprint: str
    payload_id: str = ""
    url: str | None = None
    referrer: str | None = None
    page_title: str | None = None
    network_user_id: str | None = None
    user_id: str | None = None
    identify_user_id: str | None = None
    email: str | None = None
    email_click_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None         # the tracker's ``ua`` field, else the HTTP User-Agent (see tracker_user_agent)
    accept_language: str | None = None
    anonymous: bool = False
    ua_relayed: bool = False              # user_agent came from ``ua`` and differs from the HTTP User-Agent
    platform: str | None = None
    language: str | None = None
    screen_resolution: str | None = None
    viewport: str | None = None
    engaged_ms: int | None = None
    scroll_depth: int | None = None
    pp_max_y: int | None = None
    name: str | None = None
    se_category: str | None = None
    se_action: str | None = None
    se_label: str | None = None
    se_value: float | None = None
    target_url: str | None = None
    properties_json: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)
    #: the request was signed with the site's write key (a server-side tracker): its identity is verified
    verified: bool = False

    @property
    def is_page_view(self) -> bool:
        return self.event_type == "page_view"


@dataclass(frozen=True, slots=True)
class BadEvent:
    """An event that cannot go on: the adapter turns it into a ``BadRow`` (schema violation)."""
    payload_id: str
    event_id: str | None
    reasons: tuple[str, ...]
    event: Mapping[str, Any]


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items()) if v is not None and v != {}}
    return value


def event_fingerprint(event: Mapping[str, Any], site_id: str, visitor_id: str | None) -> str:
    """16 hex chars identifying an event across retries and replays.

    Hashes site, visitor and every event field except the volatile ones (``event_id``,
    ``device_sent_tstamp``; the collector tstamp lives in the payload and is not included).
    When the event carries neither ``device_created_tstamp`` nor ``true_tstamp``, two
    genuine events could look identical, so the ``event_id`` is kept in that case:
    only exact re-sends are then recognised.
    """
    keep_eid = event.get("device_created_tstamp") is None and event.get("true_tstamp") is None
    body = {k: v for k, v in event.items() if k not in _VOLATILE or (keep_eid and k == "event_id")}
    doc = json.dumps([site_id, visitor_id, _canonical(body)], sort_keys=True, separators=(",", ":"),
                     default=str)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()[:16]


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_event(event: Mapping[str, Any], payload: Mapping[str, Any]) -> list[str]:
    """Reasons why ``event`` (in ``payload``) cannot be processed; empty when it is fine.

    The payload's site id and collector time, then :func:`event_problems`. Never raises,
    whatever the input's shape.
    """
    if not isinstance(event, Mapping):
        return ["event is not an object"]
    errors: list[str] = []
    site = payload.get("site_id")
    if not isinstance(site, str) or not site:
        errors.append("site_id missing")
    cts = payload.get("collector_tstamp")
    if not _is_int(cts) or cts <= 0:
        errors.append("collector_tstamp is not a positive integer")
    return errors + event_problems(event)


def event_problems(event: Mapping[str, Any]) -> list[str]:
    """Reasons why the ``Event`` dict ``event`` cannot be processed, whatever its payload; empty when
    it is fine: an event id, a known event type, a URL for page events, then :func:`value_problems`.
    Never raises, whatever the input's shape."""
    if not isinstance(event, Mapping):
        return ["event is not an object"]
    errors: list[str] = []
    eid = event.get("event_id")
    if not isinstance(eid, str) or not eid.strip():
        errors.append("event_id missing")
    etype = event.get("event_type")
    if etype not in EVENT_TYPES:
        errors.append(f"unknown event_type {etype!r}")
    errors += [reason for _, reason in value_problems(event)]
    url = event.get("url")
    if etype in PAGE_EVENT_TYPES:
        if not isinstance(url, str) or not url.strip():
            errors.append(f"{etype} without url")
        elif not (url.startswith("http://") or url.startswith("https://")):
            errors.append("url is not http(s)")
    return errors


def value_problems(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, reason) for each field ``event`` carries with a value the core cannot use: timestamps
    are non-negative integers, counters integers, ``scroll_depth`` 0-100, ``engaged_ms`` not
    negative, text fields text. The one place these rules live: the collector refuses a request
    with such an event (``pipeline.collector.protocol``), the visitor stage makes one it reads a
    bad row (:func:`validate_event`). Never raises."""
    errors: list[tuple[str, str]] = []
    for name in _TS_FIELDS:
        v = event.get(name)
        if v is not None and (not _is_int(v) or v < 0):
            errors.append((name, f"{name} is not a non-negative integer"))
    for name in _INT_FIELDS:
        v = event.get(name)
        if v is not None and not _is_int(v):
            errors.append((name, f"{name} is not an integer"))
    sd = event.get("scroll_depth")
    if _is_int(sd) and not 0 <= sd <= 100:
        errors.append(("scroll_depth", "scroll_depth outside 0-100"))
    em = event.get("engaged_ms")
    if _is_int(em) and em < 0:
        errors.append(("engaged_ms", "engaged_ms is negative"))
    url = event.get("url")
    if url is not None and not isinstance(url, str):
        errors.append(("url", "url is not a string"))
    for name in ("referrer", "email", "user_id", "identify_user_id", "email_click_id", "domain_user_id"):
        v = event.get(name)
        if v is not None and not isinstance(v, str):
            errors.append((name, f"{name} is not a string"))
    return errors


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v != "" else None


def _int(v: Any) -> int | None:
    return v if _is_int(v) else None


def tracker_user_agent(event: Mapping[str, Any], payload: Mapping[str, Any]) -> tuple[str | None, bool]:
    """The visitor's user agent and whether it was relayed: ``(ua, relayed)``.

    As Snowplow does, the tracker protocol's ``ua`` field (kept in the event's ``extra``)
    stands in for the HTTP ``User-Agent``: a server-side tracker or a server-side tag
    manager sends its own User-Agent header and forwards the browser's in ``ua``.
    ``relayed`` is true when ``ua`` is given and differs from the header.
    """
    header = _str(payload.get("user_agent"))
    extra = event.get("extra")
    field_ua = _str(extra.get("ua")) if isinstance(extra, Mapping) else None
    if field_ua is None or not field_ua.strip():
        return header, False
    return field_ua, field_ua != header


def build_event(event: Mapping[str, Any], payload: Mapping[str, Any],
                time_cfg: TimeConfig = DEFAULT_TIME) -> TrackedEvent:
    """A :class:`TrackedEvent` from one valid event dict and its payload dict.

    Precondition: :func:`validate_event` returned no errors. The visitor id is the
    payload's ``visitor_id``, else the event's ``domain_user_id``, else the payload's
    ``network_user_id``; anonymous payloads have none.
    """
    site_id = str(payload["site_id"])
    anonymous = payload.get("consent") == "anonymous"
    visitor = None if anonymous else (_str(payload.get("visitor_id")) or _str(event.get("domain_user_id"))
                                      or _str(payload.get("network_user_id")))
    cts = int(payload["collector_tstamp"])
    headers = payload.get("headers") or {}
    extra = event.get("extra") or {}
    sev = event.get("se_value")
    user_agent, ua_relayed = tracker_user_agent(event, payload)
    return TrackedEvent(
        site_id=site_id, visitor_id=visitor, event_id=str(event["event_id"]),
        event_type=str(event["event_type"]),
        tstamp=derived_tstamp(cts, _int(event.get("device_created_tstamp")), _int(event.get("device_sent_tstamp")),
                              _int(event.get("true_tstamp")), time_cfg),
        collector_tstamp=cts, fingerprint=event_fingerprint(event, site_id, visitor),
        payload_id=str(payload.get("payload_id") or ""),
        url=_str(event.get("url")), referrer=_str(event.get("referrer")), page_title=_str(event.get("page_title")),
        network_user_id=None if anonymous else _str(payload.get("network_user_id")),
        user_id=_str(event.get("user_id")), identify_user_id=_str(event.get("identify_user_id")),
        email=_str(event.get("email")), email_click_id=_str(event.get("email_click_id")),
        client_ip=None if anonymous else _str(payload.get("client_ip")),
        user_agent=user_agent, ua_relayed=ua_relayed, accept_language=_str(payload.get("accept_language")),
        anonymous=anonymous, platform=_str(event.get("platform")), language=_str(event.get("language")),
        screen_resolution=_str(event.get("screen_resolution")), viewport=_str(event.get("viewport")),
        engaged_ms=_int(event.get("engaged_ms")), scroll_depth=_int(event.get("scroll_depth")),
        pp_max_y=_int(event.get("pp_max_y")), name=_str(event.get("name")),
        se_category=_str(event.get("se_category")), se_action=_str(event.get("se_action")),
        se_label=_str(event.get("se_label")),
        se_value=float(sev) if isinstance(sev, (int, float)) and not isinstance(sev, bool) else None,
        target_url=_str(event.get("target_url")), properties_json=_str(event.get("properties_json")),
        headers=dict(headers) if isinstance(headers, Mapping) else {},
        extra=dict(extra) if isinstance(extra, Mapping) else {},
        verified=isinstance(headers, Mapping) and headers.get(VERIFIED_HEADER) == VERIFIED_BY_SIGNATURE,
    )


def parse_payload(payload: Mapping[str, Any], time_cfg: TimeConfig = DEFAULT_TIME
                  ) -> tuple[list[TrackedEvent], list[BadEvent]]:
    """Every event of one ``CollectorPayload`` dict: (good events in payload order, bad events).

    Errors are values: a malformed event becomes a :class:`BadEvent` with its reasons;
    a payload without an ``events`` list yields one BadEvent for the whole payload.
    """
    pid = str(payload.get("payload_id") or "") if isinstance(payload, Mapping) else ""
    events = payload.get("events") if isinstance(payload, Mapping) else None
    if not isinstance(events, Sequence) or isinstance(events, (str, bytes)):
        return [], [BadEvent(pid, None, ("payload has no events list",), {})]
    good: list[TrackedEvent] = []
    bad: list[BadEvent] = []
    for ev in events:
        errors = validate_event(ev, payload)
        if errors:
            eid = ev.get("event_id") if isinstance(ev, Mapping) else None
            bad.append(BadEvent(pid, eid if isinstance(eid, str) else None, tuple(errors),
                                dict(ev) if isinstance(ev, Mapping) else {"value": repr(ev)}))
        else:
            good.append(build_event(ev, payload, time_cfg))
    return good, bad
