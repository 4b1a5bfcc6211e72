"""Parsing of the collector's wire protocols into typed ``Event`` dicts (pure, no I/O).

Four protocols arrive at the collector; each is turned into one or more
:class:`EventGroup`\\ s (events that share a site id and a tracker visitor id),
whose events are plain dicts ready for the Avro ``Event`` schema: only the
fields present are set, fastavro fills the rest with their defaults.

* ``POST /collect`` and ``GET /p.gif``: Leadstream's own format (see
  ``PROTOCOL.md`` beside this module).
* ``GET /i`` / ``GET /ice.png`` and ``POST /com.snowplowanalytics.snowplow/tp2``:
  the Snowplow tracker protocol, re-implemented from its public specification.

Snowplow fields without a typed ``Event`` field stay verbatim in ``extra``; among them
``ua``, the user agent a server-side tracker forwards, which the core uses in place of the
HTTP ``User-Agent`` (``pipeline.core.events.tracker_user_agent``).

Every function here either returns groups or raises :class:`PayloadError`
carrying the bad-row failure type, the HTTP status and a message that names
the offending field. Nothing else escapes for any input (the fuzz tests hold
this), so the HTTP layer maps errors to 4xx and bad rows without guessing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from ..core.events import value_problems

EventDict = dict[str, Any]

#: Ids (visitor, session, event, site) longer than this are refused: real ones are UUID-sized.
MAX_ID_CHARS: Final = 128
#: Keys of ``extra`` longer than this are refused.
MAX_KEY_CHARS: Final = 128

PIXEL_EVENT_TYPES: Final = frozenset(
    {"page_view", "page_ping", "link_click", "identify", "track", "form_submit"})


def _checked(event: EventDict, index: int | None, wire: dict[str, str]) -> EventDict:
    """``event`` once the core's value rules (:func:`pipeline.core.events.value_problems`, which the visitor
    stage runs too) find nothing wrong with it; otherwise the request is refused with their reasons, naming
    the field as the request spelled it (``wire``: Event field -> request field)."""
    problems = value_problems(event)
    if problems:
        where = f" of event {index}" if index is not None else ""
        field, reason = problems[0]
        field = wire.get(field, field)
        raise _protocol(f"field '{field}'{where} cannot be processed: {reason}", field)
    return event


class PayloadError(ValueError):
    """Input the collector refuses: becomes an HTTP 4xx and a ``BadRow``.

    ``failure_type`` is a ``BadRow.failure_type`` symbol; ``status`` the HTTP
    status; ``field`` the offending field's name when there is one.
    """

    def __init__(self, failure_type: str, message: str, status: int = 400, field: str | None = None,
                 site_id: str | None = None) -> None:
        super().__init__(message)
        self.failure_type = failure_type
        self.message = message
        self.status = status
        self.field = field
        self.site_id = site_id


def _protocol(message: str, field: str | None = None) -> PayloadError:
    return PayloadError("protocol_violation", message, 400, field)


@dataclass(slots=True)
class EventGroup:
    """Events of one request that share a site and a tracker visitor id (one ``CollectorPayload``)."""
    site_id: str
    domain_user_id: str | None
    events: list[EventDict]
    anonymous: bool = False  # the tracker asked for anonymous tracking in the body (collect: "anonymous": true)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request limits (from ``CollectorSettings``)."""
    max_events: int = 500
    max_field_chars: int = 8192


def _too_long(field: str, length: int, limit: int, index: int | None) -> PayloadError:
    where = f" of event {index}" if index is not None else ""
    return PayloadError("size_violation", f"field '{field}'{where} is {length} characters long; the limit is {limit}",
                        400, field)


_getrandbits = random.getrandbits


def fast_uuid4() -> str:
    """A random (version 4) UUID string, ~3x cheaper than ``str(uuid.uuid4())``.

    Event and payload ids need uniqueness, not secrecy: ``random`` (seeded from
    the OS, and reseeded in forked workers) gives 122 random bits like uuid4.
    """
    n = (_getrandbits(128) & ~(0xC000 << 48) & ~(0xF000 << 64)) | (0x8000 << 48) | (4 << 76)
    h = "%032x" % n
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_new_id = fast_uuid4


def _loads(body: bytes) -> Any:
    """JSON from a request body; PayloadError for invalid JSON or text Avro cannot store."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise PayloadError("malformed_request", "the body is not valid JSON (UTF-8)") from None
    # json accepts lone UTF-16 surrogates ("\ud800"), which are not text: refuse them here, cheaply
    # (only bodies that contain such an escape are checked).
    if b"\\ud" in body or b"\\uD" in body:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError("malformed_request", "the body contains an unpaired UTF-16 surrogate escape") from None
    return data


def _email_click_id(url: str) -> str | None:
    """``ls_eid`` from an email-campaign landing URL (the hashed recipient id), if any."""
    if "ls_eid=" not in url:
        return None
    for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=False):
        if k == "ls_eid":
            return v[:MAX_ID_CHARS]
    return None


def _to_int(field: str, value: Any, index: int | None, bits: int = 63) -> int:
    """An integer from a JSON number or a decimal string; refuses floats with a fraction, bools, junk."""
    if isinstance(value, bool):
        raise _protocol(f"field '{field}' must be an integer, got a boolean", field)
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise _protocol(f"field '{field}' must be an integer, got {value!r}", field)
        result = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 20:
            raise _protocol(f"field '{field}' must be an integer, got {value[:40]!r}", field)
        try:
            result = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise _protocol(f"field '{field}' must be an integer, got {value[:40]!r}", field) from None
            if not math.isfinite(as_float) or as_float != int(as_float):
                raise _protocol(f"field '{field}' must be an integer, got {value[:40]!r}", field) from None
            result = int(as_float)
    else:
        raise _protocol(f"field '{field}' must be an integer", field)
    limit = 1 << bits
    if not -limit <= result < limit:
        raise _protocol(f"field '{field}' is out of range", field)
    return result


def _to_float(field: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _protocol(f"field '{field}' must be a number, got a boolean", field)
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _protocol(f"field '{field}' must be a number", field) from None
    if not math.isfinite(result):
        raise _protocol(f"field '{field}' must be a finite number", field)
    return result


def _scalar_text(field: str, value: Any) -> str:
    """Tracker values as text: strings verbatim, numbers and booleans as JSON spells them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    raise _protocol(f"field '{field}' must be a string", field)


# --------------------------------------------------------------------------------------------
# Leadstream's own protocol: POST /collect (JSON) and GET /p.gif (one event as query parameters)
# --------------------------------------------------------------------------------------------

# event field -> Event field, for text fields
_PIXEL_TEXT: Final = {
    "url": "url", "referrer": "referrer", "title": "page_title", "session_id": "session_id",
    "user_id": "user_id", "screen": "screen_resolution", "viewport": "viewport",
    "document_size": "document_size", "timezone": "timezone", "language": "language", "name": "name",
    "target_url": "target_url", "email": "email", "platform": "platform",
}
_PIXEL_IDS: Final = frozenset({"id", "session_id", "user_id"})
# event field -> (Event field, bits)
_PIXEL_INT: Final = {"ts": ("device_created_tstamp", 63), "session_index": ("session_index", 31),
                     "engaged_ms": ("engaged_ms", 63), "scroll_depth": ("scroll_depth", 31)}
_PIXEL_OBJECT: Final = frozenset({"props", "traits"})
_PIXEL_WIRE: Final = {**{v: k for k, v in _PIXEL_TEXT.items()}, **{v[0]: k for k, v in _PIXEL_INT.items()},
                      "event_id": "id", "device_sent_tstamp": "sent_at"}
# request-level fields; everything else at the top level is a protocol violation
_PIXEL_REQUEST_FIELDS: Final = frozenset(
    {"site_id", "visitor_id", "session_id", "sent_at", "tracker", "anonymous", "events"})


def _pixel_event(raw: dict[str, Any], index: int | None, defaults: dict[str, Any], limits: Limits,
                 query: bool) -> EventDict:
    """One event of Leadstream's own protocol as an ``Event`` dict.

    ``query``: the values came from a query string (every value text; ``props``
    and ``traits`` are JSON text).
    """
    event_type = raw.get("type")
    if not isinstance(event_type, str) or not event_type:
        where = f"event {index}" if index is not None else "the event"
        raise _protocol(f"{where} has no 'type'", "type")
    if event_type not in PIXEL_EVENT_TYPES:
        raise _protocol(f"event type {event_type[:40]!r} is not one of {', '.join(sorted(PIXEL_EVENT_TYPES))}",
                        "type")
    event: EventDict = {"event_type": event_type}
    event.update(defaults)
    extra: dict[str, str] = {}
    max_chars = limits.max_field_chars
    for key, value in raw.items():
        if key == "type" or value is None:
            continue
        target = _PIXEL_TEXT.get(key)
        if target is not None:
            if not isinstance(value, str):
                raise _protocol(f"field '{key}' must be a string", key)
            limit = MAX_ID_CHARS if key in _PIXEL_IDS else max_chars
            if len(value) > limit:
                raise _too_long(key, len(value), limit, index)
            event[target] = value
            continue
        if key == "id":
            if not isinstance(value, str) or not value:
                raise _protocol("field 'id' must be a non-empty string", key)
            if len(value) > MAX_ID_CHARS:
                raise _too_long(key, len(value), MAX_ID_CHARS, index)
            event["event_id"] = value
            continue
        int_target = _PIXEL_INT.get(key)
        if int_target is not None:
            event[int_target[0]] = _to_int(key, value, index, int_target[1])
            continue
        if key in _PIXEL_OBJECT:
            # structured JSON is bounded by the request size limit, not the per-field one
            if query and isinstance(value, str):
                try:
                    value = json.loads(value)
                except RecursionError:
                    raise _protocol(f"field '{key}' is nested too deeply", key) from None
                except ValueError:
                    raise _protocol(f"field '{key}' must be a JSON object", key) from None
            if not isinstance(value, dict):
                raise _protocol(f"field '{key}' must be an object", key)
            try:
                event["properties_json"] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            except RecursionError:
                raise _protocol(f"field '{key}' is nested too deeply", key) from None
            continue
        # unknown field: kept verbatim in `extra`
        if len(key) > MAX_KEY_CHARS:
            raise _too_long("extra key", len(key), MAX_KEY_CHARS, index)
        if isinstance(value, (dict, list)):
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        else:
            text = _scalar_text(key, value)
        if len(text) > max_chars:
            raise _too_long(key, len(text), max_chars, index)
        extra[key] = text
    if "event_id" not in event:
        event["event_id"] = _new_id()
    if extra:
        event["extra"] = extra
    if event_type == "identify" and "user_id" in event:
        event["identify_user_id"] = event["user_id"]
    url = event.get("url")
    if url:
        click_id = _email_click_id(url)
        if click_id:
            event["email_click_id"] = click_id
    return _checked(event, index, _PIXEL_WIRE)


def _request_defaults(body: dict[str, Any]) -> tuple[str, str | None, dict[str, Any], bool]:
    """site_id, visitor id, per-event defaults and the anonymous flag from the request level."""
    site_id = body.get("site_id")
    if not isinstance(site_id, str) or not site_id:
        raise _protocol("'site_id' is required", "site_id")
    if len(site_id) > MAX_ID_CHARS:
        raise _too_long("site_id", len(site_id), MAX_ID_CHARS, None)
    defaults: dict[str, Any] = {"platform": "web", "app_id": site_id}
    visitor_id = body.get("visitor_id")
    if visitor_id is not None and visitor_id != "":
        if not isinstance(visitor_id, str):
            raise _protocol("'visitor_id' must be a string", "visitor_id")
        if len(visitor_id) > MAX_ID_CHARS:
            raise _too_long("visitor_id", len(visitor_id), MAX_ID_CHARS, None)
        defaults["domain_user_id"] = visitor_id
    else:
        visitor_id = None
    session_id = body.get("session_id")
    if session_id is not None and session_id != "":
        if not isinstance(session_id, str):
            raise _protocol("'session_id' must be a string", "session_id")
        if len(session_id) > MAX_ID_CHARS:
            raise _too_long("session_id", len(session_id), MAX_ID_CHARS, None)
        defaults["session_id"] = session_id
    sent_at = body.get("sent_at")
    if sent_at is not None and sent_at != "":
        defaults["device_sent_tstamp"] = _to_int("sent_at", sent_at, None)
    tracker = body.get("tracker")
    if tracker is not None and tracker != "":
        if not isinstance(tracker, str):
            raise _protocol("'tracker' must be a string like 'leadstream-js/1.0.0'", "tracker")
        if len(tracker) > MAX_ID_CHARS:
            raise _too_long("tracker", len(tracker), MAX_ID_CHARS, None)
        name, _, version = tracker.partition("/")
        defaults["tracker_name"] = name
        if version:
            defaults["tracker_version"] = version
    anonymous = body.get("anonymous")
    flag = anonymous is True or anonymous in ("1", "true")
    return site_id, visitor_id, defaults, flag


def parse_collect(body: bytes, limits: Limits) -> list[EventGroup]:
    """``POST /collect``: a JSON object ``{site_id, visitor_id?, session_id?, sent_at?, tracker?, anonymous?, events: [...]}``.

    Any content type is accepted (``navigator.sendBeacon`` sends ``text/plain``
    to avoid a CORS preflight). Raises :class:`PayloadError`.
    """
    data = _loads(body)
    if not isinstance(data, dict):
        raise _protocol("the body must be a JSON object with 'site_id' and 'events'")
    unknown = [k for k in data if k not in _PIXEL_REQUEST_FIELDS]
    if unknown:
        raise _protocol(f"unknown request field '{str(unknown[0])[:40]}' (events go in 'events')", str(unknown[0])[:40])
    site_id, visitor_id, defaults, anonymous = _request_defaults(data)
    events = data.get("events")
    if not isinstance(events, list):
        raise _protocol("'events' must be a list of event objects", "events")
    if not events:
        raise _protocol("'events' is empty", "events")
    if len(events) > limits.max_events:
        raise PayloadError("size_violation",
                           f"{len(events)} events in one request; the limit is {limits.max_events}", 413, "events")
    parsed = []
    for index, raw in enumerate(events):
        if not isinstance(raw, dict):
            raise _protocol(f"event {index} is not an object", "events")
        parsed.append(_pixel_event(raw, index, defaults, limits, query=False))
    return [EventGroup(site_id, visitor_id, parsed, anonymous)]


def parse_pixel_query(query: str, limits: Limits) -> list[EventGroup]:
    """``GET /p.gif``: one event as query parameters, named as in ``/collect`` (request and event fields together)."""
    params = _query_dict(query)
    if "site_id" not in params:
        raise _protocol("'site_id' is required", "site_id")
    if "events" in params:
        raise _protocol("'events' is not a p.gif parameter: send one event's fields as parameters", "events")
    site_id, visitor_id, defaults, anonymous = _request_defaults(params)
    raw = {k: v for k, v in params.items() if k not in _PIXEL_REQUEST_FIELDS}
    if not raw.get("type"):
        raw["type"] = "page_view"
    return [EventGroup(site_id, visitor_id, [_pixel_event(raw, None, defaults, limits, query=True)], anonymous)]


def _query_dict(query: str) -> dict[str, Any]:
    """Query parameters (``&``-separated, ``+`` and ``%XX`` decoded as UTF-8), first value wins.

    Hand-rolled rather than ``parse_qsl``: most values need no unquoting, and
    this runs on every GET hit. Raises PayloadError on undecodable input.
    """
    out: dict[str, Any] = {}
    if not query:
        return out
    try:
        for part in query.split("&"):
            if not part:
                continue
            key, _, value = part.partition("=")
            if "%" in key or "+" in key:
                key = unquote_plus(key, errors="strict")
            if key in out:
                continue
            if "%" in value or "+" in value:
                value = unquote_plus(value, errors="strict")
            out[key] = value
    except UnicodeDecodeError:
        raise PayloadError("malformed_request", "the query string is not valid percent-encoded UTF-8") from None
    return out


# --------------------------------------------------------------------------------------------
# Snowplow tracker protocol: GET /i, GET /ice.png (one event) and POST .../tp2 (payload_data)
# --------------------------------------------------------------------------------------------

_SP_EVENT_TYPES: Final = {"pv": "page_view", "pp": "page_ping", "se": "structured", "ue": "self_describing",
                          "tr": "transaction", "ti": "transaction"}
_SP_TEXT: Final = {
    "p": "platform", "aid": "app_id", "url": "url", "refr": "referrer", "page": "page_title",
    "duid": "domain_user_id", "sid": "session_id", "uid": "user_id", "tz": "timezone", "lang": "language",
    "res": "screen_resolution", "vp": "viewport", "ds": "document_size", "tv": "tracker_version",
    "tna": "tracker_name", "se_ca": "se_category", "se_ac": "se_action", "se_la": "se_label",
    "se_pr": "se_property",
}
_SP_IDS: Final = frozenset({"eid", "aid", "duid", "sid", "uid"})
_SP_INT: Final = {"vid": ("session_index", 31), "dtm": ("device_created_tstamp", 63),
                  "stm": ("device_sent_tstamp", 63), "ttm": ("true_tstamp", 63),
                  "pp_mix": ("pp_min_x", 31), "pp_max": ("pp_max_x", 31), "pp_miy": ("pp_min_y", 31),
                  "pp_may": ("pp_max_y", 31)}
_SP_WIRE: Final = {**{v: k for k, v in _SP_TEXT.items()}, **{v[0]: k for k, v in _SP_INT.items()}, "event_id": "eid"}
PAYLOAD_DATA_SCHEMA_PREFIX: Final = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-"
_LINK_CLICK_SCHEMA: Final = "iglu:com.snowplowanalytics.snowplow/link_click/"
_SUBMIT_FORM_SCHEMA: Final = "iglu:com.snowplowanalytics.snowplow/submit_form/"


def _b64url_json(field: str, value: str) -> Any:
    """Decode a base64url (padding optional, standard alphabet tolerated) JSON value."""
    text = value.strip().replace("+", "-").replace("/", "_")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
        return json.loads(raw)
    except (binascii.Error, UnicodeError, ValueError, RecursionError):
        raise _protocol(f"field '{field}' is not base64url-encoded JSON", field) from None


def _json_field(field: str, value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise _protocol(f"field '{field}' is not valid JSON", field) from None


def _snowplow_event(raw: dict[str, Any], index: int | None, limits: Limits) -> EventDict:
    code = raw.get("e")
    if code is None or code == "":
        raise _protocol("field 'e' (event type) is required", "e")
    if not isinstance(code, str):
        raise _protocol("field 'e' must be a string", "e")
    event: EventDict = {"event_type": _SP_EVENT_TYPES.get(code, "unknown")}
    extra: dict[str, str] = {}
    if event["event_type"] == "unknown" or code == "ti":
        extra["e"] = code[:MAX_KEY_CHARS]
    max_chars = limits.max_field_chars
    unstruct: Any = None
    for key, value in raw.items():
        if key == "e" or value is None:
            continue
        text = _scalar_text(key, value)
        target = _SP_TEXT.get(key)
        if target is not None:
            limit = MAX_ID_CHARS if key in _SP_IDS else max_chars
            if len(text) > limit:
                raise _too_long(key, len(text), limit, index)
            if text:
                event[target] = text
            continue
        if key == "eid":
            if len(text) > MAX_ID_CHARS:
                raise _too_long(key, len(text), MAX_ID_CHARS, index)
            if text:
                event["event_id"] = text
            continue
        int_target = _SP_INT.get(key)
        if int_target is not None:
            if text != "":
                event[int_target[0]] = _to_int(key, text, index, int_target[1])
            continue
        if key == "se_va":
            if text != "":
                event["se_value"] = _to_float(key, text)
            continue
        if key in ("ue_pr", "ue_px"):  # structured JSON: bounded by the request size limit only
            if not text:
                continue
            unstruct = _json_field(key, text) if key == "ue_pr" else _b64url_json(key, text)
            if not isinstance(unstruct, dict):
                raise _protocol(f"field '{key}' must be a self-describing JSON object", key)
            event["properties_json"] = json.dumps(unstruct, separators=(",", ":"), ensure_ascii=False)
            continue
        if key in ("co", "cx"):
            if not text:
                continue
            contexts = _json_field(key, text) if key == "co" else _b64url_json(key, text)
            if not isinstance(contexts, dict):
                raise _protocol(f"field '{key}' must be a self-describing JSON object", key)
            event["contexts_json"] = json.dumps(contexts, separators=(",", ":"), ensure_ascii=False)
            continue
        if len(text) > max_chars:
            raise _too_long(key, len(text), max_chars, index)
        if len(key) > MAX_KEY_CHARS:
            raise _too_long("extra key", len(key), MAX_KEY_CHARS, index)
        extra[key] = text
    if "event_id" not in event:
        event["event_id"] = _new_id()
    if isinstance(unstruct, dict):
        _type_self_describing(event, unstruct)
    url = event.get("url")
    if url:
        click_id = _email_click_id(url)
        if click_id:
            event["email_click_id"] = click_id
    if extra:
        event["extra"] = extra
    return _checked(event, index, _SP_WIRE)


def _type_self_describing(event: EventDict, envelope: dict[str, Any]) -> None:
    """Give Snowplow's link clicks and form submissions the typed event types the pipeline scores."""
    inner = envelope.get("data")
    if not isinstance(inner, dict):
        return
    schema = inner.get("schema")
    data = inner.get("data")
    if not isinstance(schema, str) or not isinstance(data, dict):
        return
    if schema.startswith(_LINK_CLICK_SCHEMA):
        event["event_type"] = "link_click"
        target = data.get("targetUrl")
        if isinstance(target, str):
            event["target_url"] = target
        label = data.get("elementContent") or data.get("elementId")
        if isinstance(label, str) and label:
            event["name"] = label
    elif schema.startswith(_SUBMIT_FORM_SCHEMA):
        event["event_type"] = "form_submit"
        form_id = data.get("formId")
        if isinstance(form_id, str) and form_id:
            event["name"] = form_id
        elements = data.get("elements")
        if isinstance(elements, list):
            for element in elements:
                if (isinstance(element, dict) and element.get("type") == "email"
                        and isinstance(element.get("value"), str) and element["value"]):
                    event["email"] = element["value"]
                    break


def _group_snowplow(events: list[EventDict]) -> list[EventGroup]:
    """Split events by (aid, duid) so each CollectorPayload has one site and one visitor key."""
    groups: dict[tuple[str, str | None], EventGroup] = {}
    for event in events:
        site_id = event.get("app_id")
        if not site_id:
            raise PayloadError("protocol_violation", "field 'aid' (the Leadstream site id) is required", 400, "aid")
        duid = event.get("domain_user_id")
        group = groups.get((site_id, duid))
        if group is None:
            group = groups[(site_id, duid)] = EventGroup(site_id, duid, [])
        group.events.append(event)
    return list(groups.values())


def parse_snowplow_get(query: str, limits: Limits) -> list[EventGroup]:
    """``GET /i`` and ``GET /ice.png``: one Snowplow event as query parameters."""
    params = _query_dict(query)
    if not params:
        raise _protocol("no event parameters in the query string")
    return _group_snowplow([_snowplow_event(params, None, limits)])


def parse_snowplow_post(body: bytes, limits: Limits) -> list[EventGroup]:
    """``POST /com.snowplowanalytics.snowplow/tp2``: ``{"schema": "iglu:.../payload_data/jsonschema/1-0-x", "data": [...]}``."""
    document = _loads(body)
    if not isinstance(document, dict):
        raise _protocol("the body must be a payload_data JSON object with 'schema' and 'data'")
    schema = document.get("schema")
    if not isinstance(schema, str) or not schema.startswith(PAYLOAD_DATA_SCHEMA_PREFIX):
        raise _protocol(f"'schema' must be {PAYLOAD_DATA_SCHEMA_PREFIX}x-y", "schema")
    data = document.get("data")
    if not isinstance(data, list):
        raise _protocol("'data' must be a list of events", "data")
    if not data:
        raise _protocol("'data' is empty", "data")
    if len(data) > limits.max_events:
        raise PayloadError("size_violation", f"{len(data)} events in one request; the limit is {limits.max_events}",
                           413, "data")
    events = []
    for index, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise _protocol(f"event {index} is not an object", "data")
        events.append(_snowplow_event(raw, index, limits))
    return _group_snowplow(events)
