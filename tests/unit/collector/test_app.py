"""The collector's HTTP behaviour on an in-memory sink: endpoints, identity, consent, limits, CORS, garbage."""

from __future__ import annotations

import base64
import ipaddress
import json
import random
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client import REGISTRY

from pipeline.collector import snippet
from pipeline.collector.app import PIXEL_GIF, SNOWPLOW_TP2_PATH
from pipeline.collector.producer import BrokerUnavailable, RecordTooLarge
from pipeline.settings import SiteSettings
from pipeline.topology import visitor_key

from .conftest import Client, MakeClient
from .memory_sink import consent_site, make_settings

ACME = {"origin": "https://www.acme.com"}
TP2_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
NO_CACHE = "no-cache, no-store, must-revalidate"


def collect_body(**extra: Any) -> bytes:
    body = {"site_id": "acme", "visitor_id": "v-1", "events": [{"type": "page_view", "id": "e-1",
                                                                 "url": "https://www.acme.com/"}]}
    body.update(extra)
    return json.dumps(body).encode()


def tp2_body(*events: dict[str, str]) -> bytes:
    return json.dumps({"schema": TP2_SCHEMA, "data": list(events) or [{"e": "pv", "aid": "acme", "eid": "e-1"}]}).encode()


def b64url(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


# ---- each endpoint ------------------------------------------------------------------------------

async def test_collect_accepts_a_batch_and_records_the_request(client: Client) -> None:
    http, sink = client
    r = await http.post("/collect", content=collect_body(), headers={
        **ACME, "content-type": "text/plain;charset=UTF-8", "user-agent": "Mozilla/5.0 test",
        "referer": "https://www.acme.com/", "accept-language": "en-GB", "sec-ch-ua-platform": '"macOS"',
        "x-secret": "not kept"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert r.headers["access-control-allow-origin"] == "https://www.acme.com"
    assert r.headers["access-control-allow-credentials"] == "true"
    payload = sink.only_payload()
    nuid = cookie_value(r.headers["set-cookie"])
    assert payload["site_id"] == "acme" and payload["source"] == "collect" and payload["consent"] == "full"
    assert payload["visitor_id"] == "v-1" and payload["network_user_id"] == nuid
    assert payload["client_ip"] == "203.0.113.9" and payload["user_agent"] == "Mozilla/5.0 test"
    assert payload["referer"] == "https://www.acme.com/" and payload["origin"] == "https://www.acme.com"
    assert payload["accept_language"] == "en-GB"
    assert payload["headers"] == {"sec-ch-ua-platform": '"macOS"', "content-type": "text/plain;charset=UTF-8"}
    assert payload["collector_tstamp"] > 1_700_000_000_000 and payload["collector"].startswith("leadstream")
    assert [e["event_id"] for e in payload["events"]] == ["e-1"]
    assert sink.payloads[0][1] == visitor_key("acme", "v-1")


async def test_pixel_gif(client: Client) -> None:
    http, sink = client
    r = await http.get("/p.gif?" + urlencode({"site_id": "acme", "visitor_id": "v-1", "type": "page_view",
                                               "url": "https://www.acme.com/?utm_source=x&gclid=1"}))
    assert r.status_code == 200 and r.content == PIXEL_GIF
    assert r.headers["content-type"] == "image/gif" and r.headers["cache-control"] == NO_CACHE
    payload = sink.only_payload()
    assert payload["source"] == "pixel_gif" and payload["events"][0]["url"] == "https://www.acme.com/?utm_source=x&gclid=1"


@pytest.mark.parametrize("path", ["/i", "/ice.png"])
async def test_snowplow_get(client: Client, path: str) -> None:
    http, sink = client
    r = await http.get(path + "?" + urlencode({"e": "pv", "aid": "acme", "duid": "d-1", "eid": "e-1",
                                               "url": "https://www.acme.com/"}))
    assert r.status_code == 200 and r.content == PIXEL_GIF and r.headers["cache-control"] == NO_CACHE
    payload = sink.only_payload()
    assert payload["source"] == "snowplow_get" and payload["visitor_id"] == "d-1"
    assert payload["events"][0]["domain_user_id"] == "d-1"


async def test_snowplow_tp2_batch(client: Client) -> None:
    http, sink = client
    envelope = {"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                "data": {"schema": "iglu:com.acme/signup/jsonschema/1-0-0", "data": {"plan": "pro"}}}
    r = await http.post(SNOWPLOW_TP2_PATH, content=tp2_body(
        {"e": "pv", "aid": "acme", "duid": "d-1", "eid": "1"},
        {"e": "ue", "aid": "acme", "duid": "d-1", "eid": "2", "ue_px": b64url(envelope)},
        {"e": "pv", "aid": "acme", "duid": "d-2", "eid": "3"}),
        headers={**ACME, "content-type": "application/json; charset=UTF-8"})
    assert r.status_code == 200 and r.text == "ok"
    assert [(p["visitor_id"], [e["event_id"] for e in p["events"]], p["source"]) for p, _ in sink.payloads] == [
        ("d-1", ["1", "2"], "snowplow_post"), ("d-2", ["3"], "snowplow_post")]
    assert [key for _, key in sink.payloads] == [visitor_key("acme", "d-1"), visitor_key("acme", "d-2")]
    assert json.loads(sink.payloads[0][0]["events"][1]["properties_json"]) == envelope


async def test_head_records_nothing(client: Client) -> None:
    http, sink = client
    r = await http.head("/p.gif?site_id=acme&type=page_view")
    assert r.status_code == 200 and not sink.payloads and not sink.bad_rows


async def test_health_sink_health_and_metrics(client: Client) -> None:
    http, sink = client
    assert (await http.get("/health")).status_code == 200
    assert (await http.get("/sink-health")).status_code == 200
    sink.up = False
    r = await http.get("/sink-health")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert (await http.get("/health")).status_code == 200
    await http.get("/p.gif?site_id=acme")
    text = (await http.get("/metrics")).text
    assert "leadstream_collector_requests_total" in text and 'endpoint="p.gif"' in text


async def test_pixel_js_is_served_cacheable(client: Client) -> None:
    http, _ = client
    r = await http.get("/pixel.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/javascript")
    assert "max-age=" in r.headers["cache-control"] and r.headers["etag"]
    assert "sendBeacon" in r.text and "pushState" in r.text and "_ls_id" in r.text
    again = await http.get("/pixel.js", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_snippet_and_demo_page(client: Client) -> None:
    http, _ = client
    settings = make_settings(sites=[SiteSettings(site_id="acme", capture_forms=True)], public_url="https://c.acme.com/")
    tag = snippet(settings, "acme")
    assert 'src="https://c.acme.com/pixel.js"' in tag and 'data-site="acme"' in tag
    assert 'data-capture-forms="true"' in tag and "leadstream.q" in tag
    with pytest.raises(KeyError):
        snippet(settings, "nope")
    r = await http.get("/demo/acme")
    assert r.status_code == 200 and "data-ls-cta" in r.text and 'type="email"' in r.text
    assert 'src="http://collector.test/pixel.js"' in r.text and "pricing" in r.text.lower()
    assert (await http.get("/demo/unknown")).status_code == 404


# ---- visitor identity, client IP ---------------------------------------------------------------------

async def test_cookie_is_set_read_and_used_as_visitor_id(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(cookie_name="ls_nuid", cookie_domain=".acme.com",
                                                 cookie_max_age_days=30, cookie_secure=True))
    r = await http.get("/p.gif?site_id=acme")
    set_cookie = r.headers["set-cookie"]
    nuid = cookie_value(set_cookie)
    assert set_cookie.startswith("ls_nuid=") and "Max-Age=2592000" in set_cookie and "Domain=.acme.com" in set_cookie
    assert "SameSite=None" in set_cookie and "Secure" in set_cookie and "Path=/" in set_cookie
    # no tracker visitor id: the network user id is the visitor id
    assert sink.payloads[0][0]["visitor_id"] == nuid and sink.payloads[0][1] == visitor_key("acme", nuid)
    # the browser sends it back: same id, refreshed
    http.cookies.clear()
    r = await http.get("/p.gif?site_id=acme", headers={"cookie": f"other=1; ls_nuid={nuid}"})
    assert cookie_value(r.headers["set-cookie"]) == nuid and sink.payloads[1][0]["network_user_id"] == nuid
    # a tracker visitor id wins over the cookie for the partition key
    r = await http.get("/p.gif?site_id=acme&visitor_id=dv-9", headers={"cookie": f"ls_nuid={nuid}"})
    assert sink.payloads[2][0]["visitor_id"] == "dv-9" and sink.payloads[2][0]["network_user_id"] == nuid
    # a malformed cookie value is replaced
    http.cookies.clear()
    r = await http.get("/p.gif?site_id=acme", headers={"cookie": "ls_nuid=<script>"})
    assert cookie_value(r.headers["set-cookie"]) not in ("<script>", nuid)


async def test_default_cookie_is_lax_without_secure(client: Client) -> None:
    http, _ = client
    set_cookie = (await http.get("/p.gif?site_id=acme")).headers["set-cookie"]
    assert "SameSite=Lax" in set_cookie and "Secure" not in set_cookie and "HttpOnly" in set_cookie


@pytest.mark.parametrize("trusted, peer, xff, expected", [
    ([], "203.0.113.9", "1.2.3.4", "203.0.113.9"),                          # nothing trusted: XFF ignored
    (["10.0.0.0/8"], "203.0.113.9", "1.2.3.4", "203.0.113.9"),              # peer not a trusted proxy
    (["10.0.0.0/8"], "10.0.0.2", "1.2.3.4", "1.2.3.4"),                     # one trusted hop
    (["10.0.0.0/8"], "10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.7", "1.2.3.4"),  # spoofed left part ignored
    (["10.0.0.0/8"], "10.0.0.2", "10.1.1.1, 10.0.0.7", "10.1.1.1"),         # all trusted: leftmost
    (["10.0.0.0/8"], "10.0.0.2", "garbage, 10.0.0.7", "10.0.0.7"),           # malformed hop stops the walk
    (["10.0.0.0/8", "2001:db8::/32"], "10.0.0.2", "[2001:db9::1]:443, 2001:db8::5", "2001:db9::1"),
    (["10.0.0.0/8"], "10.0.0.2", "1.2.3.4:5678", "1.2.3.4"),
    (["10.0.0.0/8"], "10.0.0.2", "", "10.0.0.2"),
])
async def test_client_ip_and_trusted_proxies(make_client: MakeClient, trusted: list[str], peer: str, xff: str,
                                             expected: str) -> None:
    http, sink = await make_client(make_settings(trusted_proxies=trusted), peer=(peer, 1234))
    headers = {"x-forwarded-for": xff} if xff else {}
    assert (await http.get("/p.gif?site_id=acme", headers=headers)).status_code == 200
    assert sink.only_payload()["client_ip"] == expected
    ipaddress.ip_address(expected)


async def test_trusted_proxies_from_a_comma_separated_string(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(trusted_proxies="10.0.0.0/8, 192.168.0.0/16"),
                                   peer=("192.168.1.1", 1))
    await http.get("/p.gif?site_id=acme", headers={"x-forwarded-for": "8.8.8.8, 10.2.3.4"})
    assert sink.only_payload()["client_ip"] == "8.8.8.8"


# ---- site and origin ---------------------------------------------------------------------------

async def test_unknown_site_is_403_with_a_bad_row(client: Client) -> None:
    http, sink = client
    r = await http.post("/collect", content=collect_body(site_id="nope"), headers=ACME)
    assert r.status_code == 403 and r.json()["error"] == "site_violation" and "nope" in r.json()["message"]
    assert not sink.payloads
    (row,) = sink.bad_rows
    assert (row["failure_type"], row["site_id"], row["source"], row["stage"]) == (
        "site_violation", "nope", "collect", "collector")
    assert row["payload"].startswith("POST /collect\n\n{") and '"nope"' in row["payload"]
    r = await http.get("/i?e=pv&aid=nope")
    assert r.status_code == 403 and sink.bad_rows[-1]["failure_type"] == "site_violation"


@pytest.mark.parametrize("origin, site, status", [
    ("https://www.acme.com", "acme", 200),
    ("https://shop.acme.com", "acme", 200),      # wildcard
    ("HTTPS://WWW.ACME.COM", "acme", 200),       # case-insensitive
    (None, "acme", 200),                          # <img>, server-side trackers send no Origin
    ("https://evil.example", "acme", 403),
    ("https://acme.com.evil.example", "acme", 403),
    ("https://anything.example", "open", 200),    # "*"
    ("http://collector.test", "closed", 200),     # same origin as the collector (its demo page)
    ("https://www.acme.com", "closed", 403),
])
async def test_origin_checks(client: Client, origin: str | None, site: str, status: int) -> None:
    http, sink = client
    headers = {"origin": origin} if origin else {}
    r = await http.post("/collect", content=collect_body(site_id=site), headers=headers)
    assert r.status_code == status
    if status == 403:
        assert r.json()["error"] == "origin_violation" and not sink.payloads
        assert sink.bad_rows[0]["failure_type"] == "origin_violation" and sink.bad_rows[0]["site_id"] == site
    else:
        assert len(sink.payloads) == 1 and not sink.bad_rows


# ---- CORS --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/collect", SNOWPLOW_TP2_PATH])
async def test_preflight(client: Client, path: str) -> None:
    http, sink = client
    r = await http.options(path, headers={"origin": "https://www.acme.com", "access-control-request-method": "POST",
                                          "access-control-request-headers": "content-type,sp-anonymous"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://www.acme.com"
    assert r.headers["access-control-allow-credentials"] == "true"
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "sp-anonymous" in allowed
    assert "POST" in r.headers["access-control-allow-methods"]
    assert not sink.payloads and not sink.bad_rows


async def test_errors_carry_cors_headers_too(client: Client) -> None:
    http, _ = client
    r = await http.post("/collect", content=b"{", headers=ACME)
    assert r.status_code == 400 and r.headers["access-control-allow-origin"] == "https://www.acme.com"


# ---- consent ---------------------------------------------------------------------------------------

SIGNALS = {
    "gpc": ("gpc", {"sec-gpc": "1"}),
    "dnt": ("dnt", {"dnt": "1"}),
    "sp_anonymous": ("anonymous_header", {"sp-anonymous": "*"}),
    "ls_anonymous": ("anonymous_header", {"x-leadstream-anonymous": "1"}),
}


def _consent_metric(site: str, signal: str, action: str) -> float:
    value = REGISTRY.get_sample_value("leadstream_collector_consent_requests_total",
                                      {"site": site, "signal": signal, "action": action})
    return value or 0.0


@pytest.mark.parametrize("signal", sorted(SIGNALS))
@pytest.mark.parametrize("action", ["anonymize", "drop", "ignore"])
@pytest.mark.parametrize("endpoint", ["collect", "i"])
async def test_consent_signal_by_action(make_client: MakeClient, signal: str, action: str, endpoint: str) -> None:
    policy_key, headers = SIGNALS[signal]
    http, sink = await make_client(make_settings(sites=[consent_site(**{policy_key: action})]))
    before = _consent_metric("acme", policy_key, action)
    if endpoint == "collect":
        body = collect_body()
        body = json.dumps({**json.loads(body), "events": [{"type": "identify", "email": "a@b.co", "user_id": "u"}]}
                          ).encode()
        r = await http.post("/collect", content=body, headers=headers)
    else:
        r = await http.get("/i?e=pv&aid=acme&duid=d-1&uid=u", headers=headers)
    assert r.status_code == 200
    assert r.content == (PIXEL_GIF if endpoint == "i" else b'{"ok":true}')
    if action == "drop":
        # settings: "record nothing (a consent_dropped bad row without the payload)"
        assert [(b["failure_type"], b["payload"]) for b in sink.bad_rows] == [("consent_dropped", "")]
        assert not sink.payloads and "set-cookie" not in r.headers
        assert _consent_metric("acme", policy_key, "drop") == before + 1
        return
    assert not sink.bad_rows
    payload = sink.only_payload()
    if action == "ignore":
        assert payload["consent"] == "full" and payload["client_ip"] == "203.0.113.9"
        assert payload["network_user_id"] and "set-cookie" in r.headers
        return
    assert _consent_metric("acme", policy_key, "anonymize") == before + 1
    assert payload["consent"] == "anonymous" and "set-cookie" not in r.headers
    assert payload["client_ip"] is None and payload["network_user_id"] is None and payload["visitor_id"] is None
    (event,) = payload["events"]
    assert event["domain_user_id"] is None and event["user_id"] is None and event["email"] is None
    # anonymous payloads still spread over partitions: keyed by the payload id
    assert sink.payloads[0][1] == visitor_key("acme", payload["payload_id"])


async def test_strictest_consent_action_wins(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[consent_site(gpc="anonymize", dnt="drop")]))
    await http.get("/p.gif?site_id=acme", headers={"sec-gpc": "1", "dnt": "1"})
    assert not sink.payloads
    await http.get("/p.gif?site_id=acme", headers={"sec-gpc": "1", "dnt": "0"})
    assert sink.only_payload()["consent"] == "anonymous"


async def test_tracker_can_ask_for_anonymous_in_the_body(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[consent_site(anonymous_header="anonymize")]))
    await http.post("/collect", content=collect_body(anonymous=True))
    assert sink.only_payload()["consent"] == "anonymous"


async def test_default_policy_anonymizes_gpc_and_ignores_dnt(client: Client) -> None:
    http, sink = client
    await http.get("/p.gif?site_id=acme", headers={"sec-gpc": "1"})
    await http.get("/p.gif?site_id=acme", headers={"dnt": "1"})
    assert [p["consent"] for p, _ in sink.payloads] == ["anonymous", "full"]


# ---- limits ----------------------------------------------------------------------------------------

async def test_body_too_large_is_413_with_a_truncated_bad_row(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(max_request_bytes=2048, bad_row_payload_limit=256))
    body = collect_body(events=[{"type": "page_view", "title": "x" * 100}] * 30)
    r = await http.post("/collect", content=body, headers=ACME)
    assert r.status_code == 413 and r.json()["error"] == "size_violation" and "2048" in r.json()["message"]
    (row,) = sink.bad_rows
    assert row["failure_type"] == "size_violation" and row["payload_truncated"]
    assert len(row["payload"].encode()) <= 256 and row["payload_size"] > 256
    assert not sink.payloads


async def test_streamed_body_too_large_without_content_length(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(max_request_bytes=2048))

    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 500

    r = await http.post("/collect", content=chunks())
    assert r.status_code == 413 and sink.bad_rows[0]["failure_type"] == "size_violation"


async def test_too_many_events(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(max_events_per_request=3))
    r = await http.post("/collect", content=collect_body(events=[{"type": "page_view"}] * 4))
    assert r.status_code == 413 and "limit is 3" in r.json()["message"]
    r = await http.post(SNOWPLOW_TP2_PATH, content=tp2_body(*[{"e": "pv", "aid": "acme"}] * 4))
    assert r.status_code == 413
    assert [row["failure_type"] for row in sink.bad_rows] == ["size_violation", "size_violation"]


async def test_field_too_long_names_the_field(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(max_field_chars=100))
    r = await http.post("/collect", content=collect_body(events=[{"type": "page_view", "url": "u" * 101}]))
    assert r.status_code == 400 and "'url'" in r.json()["message"] and "100" in r.json()["message"]
    r = await http.get("/i?" + urlencode({"e": "pv", "aid": "acme", "refr": "r" * 101}))
    assert r.status_code == 400 and "'refr'" in r.json()["message"]
    r = await http.get("/p.gif?site_id=acme", headers={"user-agent": "u" * 101})
    assert r.status_code == 400 and "user-agent" in r.json()["message"]
    assert [(row["failure_type"], row["details"]) for row in sink.bad_rows] == [
        ("size_violation", {"field": "url"}), ("size_violation", {"field": "refr"}),
        ("size_violation", {"field": "user-agent"})]


@pytest.mark.parametrize("method, path, body, failure_type", [
    ("POST", "/collect", b"{nope", "malformed_request"),
    ("POST", "/collect", b'{"site_id": "acme", "events": [{"type": "page_view", "title": "\\ud800"}]}',
     "malformed_request"),
    ("POST", SNOWPLOW_TP2_PATH, b'{"schema": "' + TP2_SCHEMA.encode() + b'", "data": [{"e": "pv", "aid": "acme", '
     b'"page": "\\udfff"}]}', "malformed_request"),
    ("POST", "/collect", b'{"site_id": "acme"}', "protocol_violation"),
    ("POST", SNOWPLOW_TP2_PATH, b"[]", "protocol_violation"),
    ("POST", SNOWPLOW_TP2_PATH, b'{"schema": "iglu:x", "data": []}', "protocol_violation"),
    ("GET", "/i?aid=acme", b"", "protocol_violation"),
    ("GET", "/i", b"", "protocol_violation"),
    ("GET", "/p.gif?site_id=acme&type=nonsense", b"", "protocol_violation"),
    ("GET", "/p.gif?site_id=acme&url=%C3%28", b"", "malformed_request"),
])
async def test_malformed_and_wrong_protocol_are_400(client: Client, method: str, path: str, body: bytes,
                                                    failure_type: str) -> None:
    http, sink = client
    r = await http.request(method, path, content=body or None)
    assert r.status_code == 400 and r.json()["error"] == failure_type and r.json()["message"]
    assert [row["failure_type"] for row in sink.bad_rows] == [failure_type]
    assert not sink.payloads


# ---- the broker --------------------------------------------------------------------------------------

async def test_broker_down_is_503_with_retry_after(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(retry_after_s=7))
    sink.up = False
    for r in (await http.post("/collect", content=collect_body()), await http.get("/p.gif?site_id=acme"),
              await http.get("/i?e=pv&aid=acme"), await http.post(SNOWPLOW_TP2_PATH, content=tp2_body())):
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert r.json()["error"] == "broker_unavailable" and "set-cookie" not in r.headers
    sink.up = True
    assert (await http.get("/p.gif?site_id=acme")).status_code == 200


async def test_unacknowledged_is_503_and_too_large_is_413(client: Client) -> None:
    http, sink = client
    sink.fail_with = BrokerUnavailable("timeout")
    assert (await http.post("/collect", content=collect_body())).status_code == 503
    sink.fail_with = RecordTooLarge("too big")
    r = await http.post("/collect", content=collect_body())
    assert r.status_code == 413 and sink.bad_rows[-1]["failure_type"] == "size_violation"


async def test_not_waiting_for_the_broker(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(wait_for_broker=False))
    sink.fail_with = BrokerUnavailable("would time out")
    assert (await http.post("/collect", content=collect_body())).status_code == 200


# ---- garbage never 500 ---------------------------------------------------------------------------------

async def test_garbage_never_gets_a_500(client: Client) -> None:
    http, sink = client
    rng = random.Random(42)
    paths = ["/collect", "/p.gif", "/i", "/ice.png", SNOWPLOW_TP2_PATH, "/pixel.js", "/health", "/sink-health",
             "/demo/acme", "/demo/%00", "/nope", "/collect/"]
    pieces = [b"{", b"}", b"[", b"]", b'"site_id"', b'"acme"', b":", b",", b'"events"', b'{"type":"page_view"}',
              b"\xff", b"\x00", b"null", b"1e999", b'"\\ud800"', b'"schema"', TP2_SCHEMA.encode(), b'"data"',
              b'{"e":"pv","aid":"acme"}', b'"ue_px":"!!"']
    query_parts = ["site_id=acme", "aid=acme", "e=pv", "e=ue", "ue_px=%%%", "cx=AAAA", "type=track", "ts=9e99",
                   "vid=-1", "url=%ff", "props=%7B", "&&", "=", "a=b=c", "site_id=", "dtm=1" + "0" * 30]
    statuses = set()
    for _ in range(600):
        method = rng.choice(["GET", "POST", "OPTIONS", "PUT", "HEAD"])
        path = rng.choice(paths)
        query = "&".join(rng.choice(query_parts) for _ in range(rng.randrange(5)))
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(8))) if rng.random() < 0.9 \
            else rng.randbytes(rng.randrange(200))
        headers = {rng.choice(["origin", "cookie", "x-forwarded-for", "content-type", "sec-gpc", "dnt",
                               "sp-anonymous", "content-length-ish"]): rng.choice(
            ["", "1", "*", "null", "https://www.acme.com", "ls_nuid=\x7f", "999.1.1.1, ::1, [x]", "text/plain"])}
        r = await http.request(method, f"{path}?{query}" if query else path, content=body, headers=headers)
        statuses.add(r.status_code)
        assert r.status_code < 500 or r.status_code == 503, (method, path, query, body, headers, r.text)
    assert {200, 400} <= statuses
    for row in sink.bad_rows:
        assert row["failure_type"] != "processing_failure", row


async def test_hot_path_serves_ingest_methods_and_leaves_the_rest_to_starlette(client: Client) -> None:
    http, _ = client
    hit = await http.get("/i?e=pv&aid=acme&eid=e-hot&duid=d-1")
    assert hit.status_code == 200 and hit.content == PIXEL_GIF
    assert (await http.post("/i", content=b"x")).status_code == 405  # not a hot method: Starlette answers
    assert (await http.get("/collect")).status_code == 405
    assert (await http.get("/health")).status_code == 200
    assert (await http.get("/nowhere")).status_code == 404


def test_random_uuid4_is_a_version_4_uuid() -> None:
    import uuid

    from pipeline.collector.app import random_uuid4

    ids = {random_uuid4() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_a_forked_child_draws_fresh_entropy_for_its_ids() -> None:
    import os

    from pipeline.collector.app import random_uuid4

    random_uuid4()  # the parent has a buffer now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id must not be the parent's next id
        os.write(write, random_uuid4().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    assert child_id != random_uuid4()
