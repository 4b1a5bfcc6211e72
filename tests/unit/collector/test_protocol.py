"""Parsing of each wire protocol into typed Event dicts (pipeline.collector.protocol), no HTTP."""

from __future__ import annotations

import base64
import json
import random
from typing import Any
from urllib.parse import urlencode

import pytest

from pipeline.codec import SingleObjectCodec
from pipeline.collector.protocol import (Limits, PayloadError, parse_collect, parse_pixel_query, parse_snowplow_get,
                                         parse_snowplow_post)

LIMITS = Limits(max_events=10, max_field_chars=200)
CODEC = SingleObjectCodec()
TP2_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"


def b64url(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def assert_avro_event(event: dict[str, Any]) -> dict[str, Any]:
    """Every parsed event must fit the Event schema: round-trip it through the real codec."""
    payload = {"payload_id": "p", "site_id": "s", "collector_tstamp": 1, "collector": "c", "source": "collect", "consent": "full",
               "events": [event]}
    decoded = CODEC.decode(CODEC.encode("CollectorPayload", payload))
    result: dict[str, Any] = decoded["events"][0]
    return result


def collect(body: dict[str, Any]) -> list[Any]:
    return parse_collect(json.dumps(body).encode(), LIMITS)


def error_of(call: Any, *args: Any) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        call(*args)
    return info.value


# ---- POST /collect ------------------------------------------------------------------------------

def test_collect_maps_every_documented_field() -> None:
    (group,) = collect({
        "site_id": "acme", "visitor_id": "v-1", "session_id": "s-1", "sent_at": 1_700_000_000_500,
        "tracker": "leadstream-js/0.1.0",
        "events": [{
            "type": "page_view", "id": "e-1", "ts": 1_700_000_000_000,
            "url": "https://www.acme.com/pricing?utm_source=li&gclid=abc&ls_eid=h123",
            "referrer": "https://www.google.com/", "title": "Pricing", "screen": "1920x1080",
            "viewport": "1280x720", "timezone": "Europe/Berlin", "language": "de-DE", "session_index": 3,
            "props": {"plan": "pro"}, "custom": "x", "nested": {"a": [1]},
        }],
    })
    assert group.site_id == "acme" and group.domain_user_id == "v-1" and not group.anonymous
    (event,) = group.events
    assert_avro_event(event)
    assert event == {
        "event_type": "page_view", "event_id": "e-1", "platform": "web", "app_id": "acme",
        "domain_user_id": "v-1", "session_id": "s-1", "device_sent_tstamp": 1_700_000_000_500,
        "tracker_name": "leadstream-js", "tracker_version": "0.1.0", "device_created_tstamp": 1_700_000_000_000,
        "url": "https://www.acme.com/pricing?utm_source=li&gclid=abc&ls_eid=h123", "referrer": "https://www.google.com/",
        "page_title": "Pricing", "screen_resolution": "1920x1080", "viewport": "1280x720",
        "timezone": "Europe/Berlin", "language": "de-DE", "session_index": 3,
        "properties_json": '{"plan":"pro"}', "email_click_id": "h123",
        "extra": {"custom": "x", "nested": '{"a":[1]}'},
    }


def test_collect_event_kinds() -> None:
    (group,) = collect({"site_id": "acme", "events": [
        {"type": "page_ping", "engaged_ms": 15000, "scroll_depth": 80},
        {"type": "link_click", "name": "Book a demo", "target_url": "https://www.acme.com/demo"},
        {"type": "identify", "email": "ann@corp.com", "user_id": "u-9", "traits": {"plan": "pro"}},
        {"type": "track", "name": "signup", "props": {"step": 2}},
        {"type": "form_submit", "email": "bob@corp.com"},
    ]})
    ping, click, identify, track, form = group.events
    for event in group.events:
        assert_avro_event(event)
        assert len(event["event_id"]) == 36  # generated UUID
    assert group.domain_user_id is None and "domain_user_id" not in ping
    assert ping["engaged_ms"] == 15000 and ping["scroll_depth"] == 80
    assert click["name"] == "Book a demo" and click["target_url"] == "https://www.acme.com/demo"
    assert identify["email"] == "ann@corp.com" and identify["identify_user_id"] == "u-9"
    assert identify["user_id"] == "u-9" and json.loads(identify["properties_json"]) == {"plan": "pro"}
    assert track["name"] == "signup" and json.loads(track["properties_json"]) == {"step": 2}
    assert form["event_type"] == "form_submit"


def test_collect_anonymous_flag() -> None:
    (group,) = collect({"site_id": "acme", "anonymous": True, "events": [{"type": "page_view"}]})
    assert group.anonymous


@pytest.mark.parametrize("body, failure_type, field", [
    (b"{not json", "malformed_request", None),
    (b"\xff\xfe garbage", "malformed_request", None),
    (b"[1, 2]", "protocol_violation", None),
    (b'{"events": [{"type": "page_view"}]}', "protocol_violation", "site_id"),
    (b'{"site_id": 7, "events": [{"type": "page_view"}]}', "protocol_violation", "site_id"),
    (b'{"site_id": "acme", "events": {}}', "protocol_violation", "events"),
    (b'{"site_id": "acme", "events": []}', "protocol_violation", "events"),
    (b'{"site_id": "acme", "events": [1]}', "protocol_violation", "events"),
    (b'{"site_id": "acme", "events": [{}]}', "protocol_violation", "type"),
    (b'{"site_id": "acme", "events": [{"type": "purchase"}]}', "protocol_violation", "type"),
    (b'{"site_id": "acme", "events": [{"type": "page_view", "ts": "soon"}]}', "protocol_violation", "ts"),
    (b'{"site_id": "acme", "events": [{"type": "page_view", "ts": 1.5}]}', "protocol_violation", "ts"),
    (b'{"site_id": "acme", "events": [{"type": "page_view", "url": 5}]}', "protocol_violation", "url"),
    (b'{"site_id": "acme", "events": [{"type": "page_ping", "scroll_depth": 101}]}', "protocol_violation",
     "scroll_depth"),
    (b'{"site_id": "acme", "events": [{"type": "track", "props": [1]}]}', "protocol_violation", "props"),
    (b'{"site_id": "acme", "eventz": [], "events": [{"type": "page_view"}]}', "protocol_violation", "eventz"),
    (b'{"site_id": "acme", "sent_at": "x", "events": [{"type": "page_view"}]}', "protocol_violation", "sent_at"),
])
def test_collect_rejects(body: bytes, failure_type: str, field: str | None) -> None:
    err = error_of(parse_collect, body, LIMITS)
    assert (err.failure_type, err.status, err.field) == (failure_type, 400, field)
    assert err.message


def test_collect_limits_name_the_field() -> None:
    err = error_of(collect, {"site_id": "acme", "events": [{"type": "page_view"}, {"type": "page_view",
                                                                                     "title": "t" * 201}]})
    assert (err.failure_type, err.status, err.field) == ("size_violation", 400, "title")
    assert "'title' of event 1" in err.message and "201" in err.message and "200" in err.message
    err = error_of(collect, {"site_id": "acme", "visitor_id": "v" * 129, "events": [{"type": "page_view"}]})
    assert (err.failure_type, err.field) == ("size_violation", "visitor_id")
    err = error_of(collect, {"site_id": "acme", "events": [{"type": "page_view"}] * 11})
    assert (err.failure_type, err.status, err.field) == ("size_violation", 413, "events")
    err = error_of(collect, {"site_id": "acme", "events": [{"type": "page_view", "k" * 129: "v"}]})
    assert err.failure_type == "size_violation"
    # structured JSON (props, traits, ue_px, cx) is bounded by the request size, not the field limit
    (group,) = collect({"site_id": "acme", "events": [{"type": "track", "props": {"a": "b" * 300}}]})
    assert len(group.events[0]["properties_json"]) > 300


# ---- GET /p.gif ---------------------------------------------------------------------------------

def test_pixel_query_is_one_event_with_the_collect_names() -> None:
    query = urlencode({"site_id": "acme", "visitor_id": "v-1", "session_id": "s-1", "sent_at": "1700000000500",
                       "type": "link_click", "id": "e-1", "ts": "1700000000000", "url": "https://www.acme.com/",
                       "name": "Pricing", "target_url": "https://www.acme.com/pricing", "props": '{"cta":"pricing"}',
                       "session_index": "2", "foo": "bar"})
    (group,) = parse_pixel_query(query, LIMITS)
    (event,) = group.events
    assert_avro_event(event)
    assert group.site_id == "acme" and group.domain_user_id == "v-1"
    assert event["event_type"] == "link_click" and event["event_id"] == "e-1"
    assert event["device_created_tstamp"] == 1_700_000_000_000 and event["device_sent_tstamp"] == 1_700_000_000_500
    assert event["session_id"] == "s-1" and event["session_index"] == 2
    assert event["properties_json"] == '{"cta":"pricing"}' and event["extra"] == {"foo": "bar"}


def test_pixel_query_defaults_to_a_page_view() -> None:
    (group,) = parse_pixel_query("site_id=acme&url=https%3A%2F%2Fwww.acme.com%2F", LIMITS)
    assert group.events[0]["event_type"] == "page_view" and group.events[0]["url"] == "https://www.acme.com/"


@pytest.mark.parametrize("query, failure_type, field", [
    ("", "protocol_violation", "site_id"),
    ("url=x", "protocol_violation", "site_id"),
    ("site_id=acme&props=%7Bbad", "protocol_violation", "props"),
    ("site_id=acme&events=1", "protocol_violation", "events"),
    ("site_id=acme&url=%ff%fe", "malformed_request", None),
    ("site_id=acme&title=" + "x" * 201, "size_violation", "title"),
])
def test_pixel_query_rejects(query: str, failure_type: str, field: str | None) -> None:
    err = error_of(parse_pixel_query, query, LIMITS)
    assert (err.failure_type, err.field) == (failure_type, field)


# ---- Snowplow GET /i and POST tp2 -----------------------------------------------------------------

SP_EVENT = {
    "e": "pv", "eid": "0f6c3a4e-5b39-4c1e-9d6b-0c1e2b3a4d5f", "aid": "acme", "p": "web",
    "url": "https://www.acme.com/pricing?utm_campaign=q3", "refr": "https://www.bing.com/", "page": "Pricing",
    "duid": "d-1", "sid": "s-1", "vid": "4", "uid": "user-7", "tz": "Europe/Paris", "lang": "fr-FR",
    "res": "1920x1080", "vp": "1280x720", "ds": "1280x4000", "dtm": "1700000000000", "stm": "1700000000900",
    "ttm": "1700000000100", "tv": "js-3.17.0", "tna": "sp", "cd": "24", "cs": "UTF-8", "cookie": "1",
}


def test_snowplow_get_maps_every_field() -> None:
    contexts = {"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
                "data": [{"schema": "iglu:com.acme/user/jsonschema/1-0-0", "data": {"tier": "gold"}}]}
    (group,) = parse_snowplow_get(urlencode({**SP_EVENT, "cx": b64url(contexts)}), LIMITS)
    (event,) = group.events
    assert_avro_event(event)
    assert group.site_id == "acme" and group.domain_user_id == "d-1"
    assert event == {
        "event_type": "page_view", "event_id": SP_EVENT["eid"], "app_id": "acme", "platform": "web",
        "url": SP_EVENT["url"], "referrer": "https://www.bing.com/", "page_title": "Pricing",
        "domain_user_id": "d-1", "session_id": "s-1", "session_index": 4, "user_id": "user-7",
        "timezone": "Europe/Paris", "language": "fr-FR", "screen_resolution": "1920x1080", "viewport": "1280x720",
        "document_size": "1280x4000", "device_created_tstamp": 1_700_000_000_000,
        "device_sent_tstamp": 1_700_000_000_900, "true_tstamp": 1_700_000_000_100, "tracker_version": "js-3.17.0",
        "tracker_name": "sp", "contexts_json": json.dumps(contexts, separators=(",", ":")),
        "extra": {"cd": "24", "cs": "UTF-8", "cookie": "1"},
    }


def test_snowplow_page_ping_structured_and_unstructured() -> None:
    ping = {"e": "pp", "aid": "acme", "pp_mix": "0", "pp_max": "10", "pp_miy": "100", "pp_may": "900"}
    (group,) = parse_snowplow_get(urlencode(ping), LIMITS)
    event = group.events[0]
    assert event["event_type"] == "page_ping"
    assert (event["pp_min_x"], event["pp_max_x"], event["pp_min_y"], event["pp_max_y"]) == (0, 10, 100, 900)

    se = {"e": "se", "aid": "acme", "se_ca": "video", "se_ac": "play", "se_la": "intro", "se_pr": "hd", "se_va": "2.5"}
    event = parse_snowplow_get(urlencode(se), LIMITS)[0].events[0]
    assert (event["event_type"], event["se_category"], event["se_action"], event["se_label"], event["se_property"],
            event["se_value"]) == ("structured", "video", "play", "intro", "hd", 2.5)

    envelope = {"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                "data": {"schema": "iglu:com.acme/signup/jsonschema/1-0-0", "data": {"plan": "pro"}}}
    by_px = parse_snowplow_get(urlencode({"e": "ue", "aid": "acme", "ue_px": b64url(envelope)}), LIMITS)[0].events[0]
    by_pr = parse_snowplow_get(urlencode({"e": "ue", "aid": "acme", "ue_pr": json.dumps(envelope)}), LIMITS)[0]
    assert by_px["event_type"] == "self_describing"
    assert json.loads(by_px["properties_json"]) == envelope == json.loads(by_pr.events[0]["properties_json"])
    # padded and standard-alphabet base64 are accepted too
    padded = base64.b64encode(json.dumps(envelope).encode()).decode()
    event = parse_snowplow_get(urlencode({"e": "ue", "aid": "acme", "ue_px": padded}), LIMITS)[0].events[0]
    assert json.loads(event["properties_json"]) == envelope


def test_snowplow_link_click_and_form_submit_get_typed() -> None:
    click = {"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
             "data": {"schema": "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",
                      "data": {"targetUrl": "https://www.acme.com/demo", "elementContent": "Book a demo"}}}
    event = parse_snowplow_get(urlencode({"e": "ue", "aid": "acme", "ue_px": b64url(click)}), LIMITS)[0].events[0]
    assert (event["event_type"], event["target_url"], event["name"]) == (
        "link_click", "https://www.acme.com/demo", "Book a demo")
    form = {"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
            "data": {"schema": "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0",
                     "data": {"formId": "contact", "elements": [{"name": "email", "type": "email",
                                                                 "value": "ann@corp.com"}]}}}
    event = parse_snowplow_get(urlencode({"e": "ue", "aid": "acme", "ue_pr": json.dumps(form)}), LIMITS)[0].events[0]
    assert (event["event_type"], event["name"], event["email"]) == ("form_submit", "contact", "ann@corp.com")


def test_snowplow_unknown_event_type_is_kept() -> None:
    event = parse_snowplow_get("e=zz&aid=acme&custom=1", LIMITS)[0].events[0]
    assert event["event_type"] == "unknown" and event["extra"] == {"e": "zz", "custom": "1"}


def test_tp2_batch_groups_by_site_and_visitor() -> None:
    body = {"schema": TP2_SCHEMA, "data": [
        {**SP_EVENT, "eid": "1"}, {**SP_EVENT, "eid": "2", "e": "pp"}, {**SP_EVENT, "eid": "3", "duid": "d-2"},
        {**SP_EVENT, "eid": "4", "aid": "open"},
    ]}
    groups = parse_snowplow_post(json.dumps(body).encode(), LIMITS)
    assert [(g.site_id, g.domain_user_id, [e["event_id"] for e in g.events]) for g in groups] == [
        ("acme", "d-1", ["1", "2"]), ("acme", "d-2", ["3"]), ("open", "d-1", ["4"])]


def test_tp2_accepts_non_string_scalars() -> None:
    body = {"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "acme", "vid": 2, "dtm": 1700000000000}]}
    event = parse_snowplow_post(json.dumps(body).encode(), LIMITS)[0].events[0]
    assert event["session_index"] == 2 and event["device_created_tstamp"] == 1_700_000_000_000


@pytest.mark.parametrize("body, failure_type, field", [
    (b"nope", "malformed_request", None),
    (b'{"data": []}', "protocol_violation", "schema"),
    (b'{"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": []}', "protocol_violation", "schema"),
    (json.dumps({"schema": TP2_SCHEMA, "data": {}}).encode(), "protocol_violation", "data"),
    (json.dumps({"schema": TP2_SCHEMA, "data": []}).encode(), "protocol_violation", "data"),
    (json.dumps({"schema": TP2_SCHEMA, "data": ["x"]}).encode(), "protocol_violation", "data"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"aid": "acme"}]}).encode(), "protocol_violation", "e"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv"}]}).encode(), "protocol_violation", "aid"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "a", "ue_px": "%%%"}]}).encode(),
     "protocol_violation", "ue_px"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "a", "cx": b64url([1])}]}).encode(),
     "protocol_violation", "cx"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "a", "co": "{"}]}).encode(),
     "protocol_violation", "co"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "a", "vid": "x"}]}).encode(),
     "protocol_violation", "vid"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "se", "aid": "a", "se_va": "nan"}]}).encode(),
     "protocol_violation", "se_va"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "a", "url": {"x": 1}}]}).encode(),
     "protocol_violation", "url"),
    (json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "a", "page": "p" * 201}]}).encode(),
     "size_violation", "page"),
])
def test_tp2_rejects(body: bytes, failure_type: str, field: str | None) -> None:
    err = error_of(parse_snowplow_post, body, LIMITS)
    assert (err.failure_type, err.field) == (failure_type, field)


def test_tp2_too_many_events_is_413() -> None:
    body = json.dumps({"schema": TP2_SCHEMA, "data": [{"e": "pv", "aid": "acme"}] * 11}).encode()
    err = error_of(parse_snowplow_post, body, LIMITS)
    assert (err.failure_type, err.status) == ("size_violation", 413)


# ---- garbage: only PayloadError, never anything else ----------------------------------------------

def _random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 2**70, 1.5, float("1e308"), 1700000000000])
    if choice in (3, 4, 5):
        return rng.choice(["", "pv", "page_view", "acme", "x" * 300, "\u0000\ud7ff", "eyJ9", "%%", "1e3", "-"])
    if choice in (6, 7):
        keys = ["site_id", "events", "type", "e", "aid", "data", "schema", "ts", "ue_px", "cx", "vid", "props",
                "url", "visitor_id", "anonymous", "scroll_depth", TP2_SCHEMA]
        return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_parsers_raise_only_payload_errors_on_garbage() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        value = _random_json(rng)
        if rng.random() < 0.3 and isinstance(value, dict):
            value = {"schema": TP2_SCHEMA, "site_id": "acme", "events": [value], "data": [value]}
        body = json.dumps(value).encode() if rng.random() < 0.8 else rng.randbytes(rng.randrange(40))
        query = urlencode(value) if isinstance(value, dict) else body.decode("latin-1")
        for call, arg in ((parse_collect, body), (parse_snowplow_post, body), (parse_pixel_query, query),
                          (parse_snowplow_get, query)):
            try:
                groups = call(arg, LIMITS)  # type: ignore[operator]
            except PayloadError:
                continue
            for group in groups:
                for event in group.events:
                    assert_avro_event(event)


def test_snowplow_ua_field_is_kept_for_the_core_to_stand_in_for_the_header() -> None:
    browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0.0.0 Safari/537.36"
    query = urlencode({"e": "pv", "aid": "acme", "url": "https://www.acme.example/", "ua": browser})
    [group] = parse_snowplow_get(query, Limits())
    assert group.events[0]["extra"]["ua"] == browser
    body = json.dumps({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
                       "data": [{"e": "pv", "aid": "acme", "url": "https://www.acme.example/", "ua": browser}]})
    [post] = parse_snowplow_post(body.encode(), Limits())
    assert post.events[0]["extra"]["ua"] == browser


@pytest.mark.parametrize("fields", [
    {"scroll_depth": 50}, {"scroll_depth": 101}, {"scroll_depth": -1}, {"engaged_ms": -5}, {"engaged_ms": 5},
    {"ts": -1}, {"ts": 0}, {"ts": 1_700_000_000_000}, {"session_index": -3},
])
@pytest.mark.parametrize("event_type", ["page_ping", "page_view", "link_click", "track"])
def test_the_collector_refuses_exactly_the_values_the_stage_refuses(event_type: str, fields: dict[str, Any]) -> None:
    """One set of value rules (core ``value_problems``): an event the collector accepts is one the visitor
    stage processes, and one it refuses for a value is one the stage would make a bad row, for the same reason."""
    from pipeline.core.events import validate_event

    raw = {"type": event_type, "id": "e-1", "url": "https://www.acme.example/p", **fields}
    wire_to_event = {"ts": "device_created_tstamp"}
    as_event = {"event_type": event_type, "event_id": "e-1", "url": raw["url"],
                **{wire_to_event.get(k, k): v for k, v in fields.items()}}
    stage_says = validate_event(as_event, {"site_id": "acme", "collector_tstamp": 1})
    body = json.dumps({"site_id": "acme", "events": [raw]}).encode()
    try:
        [group] = parse_collect(body, LIMITS)
    except PayloadError as err:
        assert stage_says and err.failure_type == "protocol_violation" and err.field == next(iter(fields))
        assert any(reason in err.message for reason in stage_says)
        return
    assert stage_says == [] and validate_event(group.events[0], {"site_id": "acme", "collector_tstamp": 1}) == []


def test_pixel_event_types_are_core_event_types() -> None:
    from pipeline.collector.protocol import PIXEL_EVENT_TYPES
    from pipeline.core.events import EVENT_TYPES
    assert PIXEL_EVENT_TYPES <= EVENT_TYPES


def test_a_snowplow_value_the_stage_refuses_is_refused_by_its_wire_name() -> None:
    err = error_of(parse_snowplow_get, "e=pv&aid=acme&url=https%3A%2F%2Fwww.acme.example%2F&dtm=-5", LIMITS)
    assert (err.failure_type, err.field) == ("protocol_violation", "dtm")
    assert "device_created_tstamp is not a non-negative integer" in err.message
