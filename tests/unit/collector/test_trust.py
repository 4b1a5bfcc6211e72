"""Issue 13: a collector that can't be flooded or fooled (signatures, require, rate limits, CORS, anonymize, limits)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from pipeline.collector import create_app
from pipeline.collector.request import TokenBuckets, scrub_url
from pipeline.collector.server import _config
from pipeline.collector.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, Verdict, sign_headers, verify
from pipeline.core.events import VERIFIED_BY_SIGNATURE, VERIFIED_HEADER
from pipeline.settings import ConsentSettings, Settings, SettingsError, SiteSettings

from .conftest import MakeClient
from .memory_sink import MemorySink, make_settings

KEY = "k" * 32
SIGNED = SiteSettings(site_id="acme", allowed_origins=["https://www.acme.com"], write_keys=[SecretStr(KEY)])


def body(*events: dict[str, Any], **extra: Any) -> bytes:
    events = events or ({"type": "page_view", "id": "e-1", "url": "https://www.acme.com/"},)
    return json.dumps({"site_id": "acme", "visitor_id": "v-1", "events": list(events), **extra}).encode()


def site(**kw: Any) -> SiteSettings:
    return SiteSettings(**{"site_id": "acme", "allowed_origins": ["https://www.acme.com"],
                           "write_keys": [SecretStr(KEY)], **kw})


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---- signatures ------------------------------------------------------------------------------------

def test_verify_accepts_every_key_and_refuses_the_rest() -> None:
    msg = b'{"a":1}'
    h = sign_headers(KEY, msg, 1_000)
    ts, sig = h[TIMESTAMP_HEADER], h[SIGNATURE_HEADER]
    assert verify([KEY], msg, ts, sig, window_s=300, now=1_000) is Verdict.valid
    assert verify(["x" * 20, KEY], msg, ts, sig, window_s=300, now=1_100) is Verdict.valid  # key rotation
    assert verify([KEY], msg + b" ", ts, sig, window_s=300, now=1_000) is Verdict.invalid
    assert verify(["y" * 32], msg, ts, sig, window_s=300, now=1_000) is Verdict.invalid
    assert verify([KEY], msg, ts, sig, window_s=300, now=1_301) is Verdict.expired
    assert verify([KEY], msg, ts, sig, window_s=300, now=699) is Verdict.expired
    assert verify([KEY], msg, "1000", None, window_s=300, now=1_000) is Verdict.invalid
    assert verify([KEY], msg, "x", sig, window_s=300, now=1_000) is Verdict.invalid
    assert verify([], msg, ts, sig, window_s=300, now=1_000) is Verdict.no_key
    assert verify([KEY], msg, None, None, window_s=300) is Verdict.unsigned


async def test_a_signed_request_is_verified_and_an_unsigned_one_is_not(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[SIGNED]))
    content = body({"type": "identify", "id": "e-1", "user_id": "u-1"})
    r = await http.post("/collect", content=content, headers=sign_headers(KEY, content))
    assert r.status_code == 200, r.text
    assert sink.payloads[-1][0]["headers"][VERIFIED_HEADER] == VERIFIED_BY_SIGNATURE
    # the marker is the collector's own: a client sending it as a header gets nothing
    r = await http.post("/collect", content=content, headers={VERIFIED_HEADER: VERIFIED_BY_SIGNATURE})
    assert r.status_code == 200 and VERIFIED_HEADER not in sink.payloads[-1][0]["headers"]


async def test_a_signed_get_signs_its_query_string(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[SIGNED]))
    query = urlencode({"e": "pv", "aid": "acme", "duid": "d-1", "uid": "u-1"})
    r = await http.get("/i?" + query, headers=sign_headers(KEY, query.encode()))
    assert r.status_code == 200 and sink.only_payload()["headers"][VERIFIED_HEADER] == VERIFIED_BY_SIGNATURE


@pytest.mark.parametrize("problem", ["wrong key", "tampered", "expired", "future", "no timestamp"])
async def test_a_bad_signature_is_403_with_a_bad_row(make_client: MakeClient, problem: str) -> None:
    http, sink = await make_client(make_settings(sites=[SIGNED]))
    content = body()
    now = int(time.time())
    headers = {"wrong key": sign_headers("w" * 32, content), "tampered": sign_headers(KEY, content + b" "),
               "expired": sign_headers(KEY, content, now - 301), "future": sign_headers(KEY, content, now + 400),
               "no timestamp": {SIGNATURE_HEADER: sign_headers(KEY, content)[SIGNATURE_HEADER]}}[problem]
    r = await http.post("/collect", content=content, headers=headers)
    assert r.status_code == 403 and "signature" in r.json()["message"]
    assert not sink.payloads and sink.bad_rows[0]["failure_type"] == "origin_violation"


async def test_a_signature_for_a_site_without_write_keys_is_refused(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[SiteSettings(site_id="acme", allowed_origins=["*"])]))
    content = body()
    r = await http.post("/collect", content=content, headers=sign_headers(KEY, content))
    assert r.status_code == 403 and "write_keys" in r.json()["message"] and not sink.payloads


async def test_only_a_signed_request_may_set_the_client_ip(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[SIGNED]))
    content = body({"type": "page_view", "id": "e-1", "url": "https://www.acme.com/", "ip": "198.51.100.7"})
    await http.post("/collect", content=content, headers=sign_headers(KEY, content))
    signed = sink.payloads[-1][0]
    assert signed["client_ip"] == "198.51.100.7" and "ip" not in signed["events"][0]["extra"]
    await http.post("/collect", content=content)
    unsigned = sink.payloads[-1][0]
    assert unsigned["client_ip"] == "203.0.113.9" and "ip" not in unsigned["events"][0]["extra"]
    query = urlencode({"e": "pv", "aid": "acme", "ip": "198.51.100.8"})
    await http.get("/i?" + query, headers=sign_headers(KEY, query.encode()))
    assert sink.payloads[-1][0]["client_ip"] == "198.51.100.8"
    await http.get("/i?" + query)
    assert sink.payloads[-1][0]["client_ip"] == "203.0.113.9"
    junk = body({"type": "page_view", "id": "e-2", "url": "https://www.acme.com/", "ip": "not-an-ip"})
    await http.post("/collect", content=junk, headers=sign_headers(KEY, junk))
    assert sink.payloads[-1][0]["client_ip"] == "203.0.113.9"


# ---- require: origin | signature -------------------------------------------------------------------

async def test_require_origin(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[site(require="origin")]))
    r = await http.get("/p.gif?site_id=acme")
    assert r.status_code == 403 and "requires an Origin" in r.json()["message"]
    assert sink.bad_rows[-1]["failure_type"] == "origin_violation" and not sink.payloads
    assert (await http.get("/p.gif?site_id=acme", headers={"origin": "https://evil.example"})).status_code == 403
    assert (await http.get("/p.gif?site_id=acme", headers={"origin": "https://www.acme.com"})).status_code == 200
    content = body()
    assert (await http.post("/collect", content=content, headers=sign_headers(KEY, content))).status_code == 200
    assert len(sink.payloads) == 2


async def test_require_signature(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[site(require="signature")]))
    r = await http.post("/collect", content=body(), headers={"origin": "https://www.acme.com"})
    assert r.status_code == 403 and "signed" in r.json()["message"] and not sink.payloads
    content = body()
    assert (await http.post("/collect", content=content, headers=sign_headers(KEY, content))).status_code == 200


async def test_without_require_a_request_without_origin_is_still_accepted(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[site()]))
    assert (await http.get("/p.gif?site_id=acme")).status_code == 200


def test_require_signature_needs_a_write_key_and_keys_are_secret() -> None:
    with pytest.raises(ValueError, match="write_keys"):
        SiteSettings(site_id="a", require="signature")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="16 characters"):
        SiteSettings(site_id="a", write_keys=[SecretStr("short")])
    dumped = json.dumps(Settings(sites=[SIGNED]).model_dump(mode="json"))
    assert KEY not in dumped and "**********" in dumped and KEY not in repr(SIGNED)


# ---- rate limits -----------------------------------------------------------------------------------

def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    assert buckets.take("b") == 0.0 and buckets.take("c") == 0.0 and len(buckets) == 2  # bounded
    assert TokenBuckets(rate=0, burst=1).take("x") == 0.0


async def test_per_ip_rate_limit_answers_429_with_retry_after(make_client: MakeClient) -> None:
    settings = make_settings(rate_limit_ip_per_s=0.5, rate_limit_ip_burst=3)
    http, sink = await make_client(settings)
    before = metric("leadstream_collector_rate_limited_total", scope="ip", site="")
    answers = [await http.get("/p.gif?site_id=acme", headers={"origin": "https://www.acme.com"}) for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert answers[3].headers["retry-after"] == "2" and answers[3].json()["error"] == "rate_limited"
    assert answers[3].headers["access-control-allow-origin"] == "https://www.acme.com"
    assert len(sink.payloads) == 3 and not sink.bad_rows  # a flood writes no bad rows
    assert metric("leadstream_collector_rate_limited_total", scope="ip", site="") == before + 2
    other, other_sink = await make_client(settings, peer=("198.51.100.1", 1))
    assert (await other.get("/p.gif?site_id=acme")).status_code == 200


async def test_per_site_rate_limit(make_client: MakeClient) -> None:
    settings = make_settings(rate_limit_site_per_s=1, rate_limit_site_burst=2)
    before = metric("leadstream_collector_rate_limited_total", scope="site", site="acme")
    statuses = []
    for n in range(3):
        http, _ = await make_client(settings, peer=(f"198.51.100.{n}", 1)) if n == 0 else (http, None)
        statuses.append((await http.get("/p.gif?site_id=acme", headers={"x-forwarded-for": f"10.0.0.{n}"})).status_code)
    assert statuses == [200, 200, 429]
    assert (await http.get("/p.gif?site_id=open")).status_code == 200  # another site has its own bucket
    assert metric("leadstream_collector_rate_limited_total", scope="site", site="acme") == before + 1


async def test_a_signed_tracker_is_not_limited_per_ip(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[SIGNED], rate_limit_ip_per_s=0.1, rate_limit_ip_burst=1))
    for n in range(5):
        content = body({"type": "page_view", "id": f"e-{n}", "url": "https://www.acme.com/"})
        assert (await http.post("/collect", content=content, headers=sign_headers(KEY, content))).status_code == 200
    assert (await http.post("/collect", content=body())).status_code == 200
    assert (await http.post("/collect", content=body())).status_code == 429


# ---- CORS ------------------------------------------------------------------------------------------

CLOSED = [SiteSettings(site_id="acme", allowed_origins=["https://www.acme.com", "https://*.acme.com"])]


@pytest.mark.parametrize("path", ["/collect", "/com.snowplowanalytics.snowplow/tp2"])
async def test_preflight_reflects_only_listed_origins(make_client: MakeClient, path: str) -> None:
    http, _ = await make_client(make_settings(sites=CLOSED))
    good = await http.options(path, headers={"origin": "https://app.acme.com", "access-control-request-method": "POST"})
    assert good.headers["access-control-allow-origin"] == "https://app.acme.com"
    assert good.headers["access-control-allow-credentials"] == "true"
    bad = await http.options(path, headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in bad.headers and "access-control-allow-credentials" not in bad.headers


async def test_error_answers_do_not_reflect_unlisted_origins(make_client: MakeClient) -> None:
    http, _ = await make_client(make_settings(sites=CLOSED))
    for r in [await http.post("/collect", content=b"{not json", headers={"origin": "https://evil.example"}),
              await http.post("/collect", content=body(), headers={"origin": "https://evil.example"}),
              await http.post("/collect", content=body(site_id="nope"), headers={"origin": "https://evil.example"})]:
        assert r.status_code in (400, 403) and "access-control-allow-origin" not in r.headers
    r = await http.post("/collect", content=b"{not json", headers={"origin": "https://www.acme.com"})
    assert r.headers["access-control-allow-origin"] == "https://www.acme.com"


async def test_a_wildcard_site_never_gets_credentials(make_client: MakeClient) -> None:
    http, _ = await make_client(make_settings(sites=[SiteSettings(site_id="open", allowed_origins=["*"])]))
    r = await http.post("/collect", content=body(site_id="open"), headers={"origin": "https://any.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://any.example"
    assert "access-control-allow-credentials" not in r.headers
    pre = await http.options("/collect", headers={"origin": "https://any.example"})
    assert pre.headers["access-control-allow-origin"] != "*" and "access-control-allow-credentials" not in pre.headers


# ---- anonymize: every personal field, by name ------------------------------------------------------

EMAIL = "jane.doe@acme.com"


async def test_anonymize_removes_every_personal_field(make_client: MakeClient) -> None:
    anon = SiteSettings(site_id="acme", allowed_origins=["*"], consent=ConsentSettings(gpc="anonymize"))  # type: ignore[arg-type]
    http, sink = await make_client(make_settings(sites=[anon]))
    event = {"type": "identify", "id": "e-1", "email": EMAIL, "user_id": "u-42", "session_id": "s-9",
             "url": f"https://www.acme.com/welcome?utm_source=mail&email={EMAIL}&ls_eid=click-1&uid=u-42#x",
             "referrer": f"https://mail.example/read?to={EMAIL}&folder=inbox",
             "target_url": f"https://www.acme.com/?e={EMAIL}", "title": f"Hello {EMAIL}",
             "traits": {"name": "Jane Doe", "company_domain": "acme.com", "seniority": "vp"},
             "custom_field": "personal", "ip": "198.51.100.9"}
    r = await http.post("/collect", content=body(event, session_id="s-9"), headers={
        "sec-gpc": "1", "cookie": "ls_nuid=abcdefgh12345678", "referer": f"https://www.acme.com/?email={EMAIL}",
        "x-forwarded-for": "198.51.100.1", "sec-ch-ua-model": '"Pixel 8"', "origin": "https://www.acme.com"})
    assert r.status_code == 200 and "set-cookie" not in r.headers
    payload = sink.only_payload()
    for name in ("client_ip", "visitor_id", "network_user_id"):
        assert payload[name] is None, name
    assert payload["consent"] == "anonymous"
    assert payload["referer"] == "https://www.acme.com/"
    assert payload["headers"] == {"sec-gpc": "1"}                       # no client hints
    (e,) = payload["events"]
    for name in ("domain_user_id", "session_id", "user_id", "email", "identify_user_id", "email_click_id",
                 "properties_json", "contexts_json"):
        assert e[name] is None, name
    assert e["extra"] == {}, "extra (custom fields, the ip field)"
    assert e["url"] == "https://www.acme.com/welcome?utm_source=mail#x"
    assert e["referrer"] == "https://mail.example/read?folder=inbox"
    assert e["target_url"] == "https://www.acme.com/"
    assert EMAIL not in e["page_title"]
    assert EMAIL not in json.dumps(payload) and "u-42" not in json.dumps(payload)
    assert "click-1" not in json.dumps(payload) and "198.51.100" not in json.dumps(payload)


def test_scrub_url_keeps_what_is_not_personal() -> None:
    assert scrub_url("https://a.example/p?utm_campaign=x&page=2") == "https://a.example/p?utm_campaign=x&page=2"
    assert scrub_url("https://a.example/p") == "https://a.example/p"
    assert scrub_url("https://u:pw@a.example/p?x=jane%40acme.com") == "https://a.example/p"
    assert scrub_url(None) is None


# ---- small ones: deep JSON, headers, slow bodies, concurrency ---------------------------------------

@pytest.mark.parametrize("query", [
    "site_id=acme&props=" + "[" * 5000,
    "site_id=acme&props=" + "[" * 20000 + "]" * 20000,
    'site_id=acme&props={"a":' + "[" * 3000 + "]" * 3000 + "}",
])
async def test_deep_json_is_a_clean_400(make_client: MakeClient, caplog: pytest.LogCaptureFixture,
                                        query: str) -> None:
    http, sink = await make_client()
    with caplog.at_level(logging.ERROR):
        r = await http.get("/p.gif?" + query)
    assert r.status_code == 400 and r.json()["error"] in ("malformed_request", "protocol_violation")
    assert r.json()["message"] and "Traceback" not in r.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], "no stack trace is logged"
    (row,) = sink.bad_rows
    assert row["failure_type"] in ("malformed_request", "protocol_violation") and not sink.payloads


async def test_deep_json_body_is_a_clean_400(make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    http, sink = await make_client()
    deep = b'{"site_id":"acme","events":[{"type":"page_view","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    with caplog.at_level(logging.ERROR):
        r = await http.post("/collect", content=deep)
    assert r.status_code == 400 and not caplog.records and len(sink.bad_rows) == 1


@pytest.mark.parametrize("name", ["sec-ch-ua-full-version-list", "x-anything", "sec-fetch-site"])
async def test_every_header_is_length_checked(make_client: MakeClient, name: str) -> None:
    http, sink = await make_client()
    r = await http.get("/p.gif?site_id=acme", headers={name: "a" * 60_000})
    assert r.status_code == 431 and name in r.json()["message"]
    assert not sink.payloads and sink.bad_rows[0]["failure_type"] == "size_violation"
    assert len(sink.bad_rows[0]["payload"]) < 1000   # the header is not copied into the bad row


async def test_many_headers_together_are_limited_and_big_cookies_pass(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(max_header_chars=1000, max_headers_bytes=4000))
    many = {f"sec-ch-x{i}": "v" * 900 for i in range(6)}
    assert (await http.get("/p.gif?site_id=acme", headers=many)).status_code == 431
    assert (await http.get("/p.gif?site_id=acme", headers={"cookie": "c=" + "v" * 3000})).status_code == 200
    assert (await http.get("/p.gif?site_id=acme", headers={"sec-ch-ua": "v" * 1000})).status_code == 200
    assert len(sink.payloads[-1][0]["headers"]["sec-ch-ua"]) == 1000


async def test_a_slow_body_times_out_with_408() -> None:
    sinks: list[MemorySink] = []
    app = create_app(make_settings(body_timeout_s=0.2), producer_factory=lambda s: sinks.append(MemorySink(s))
                     or sinks[-1])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)  # a client that never finishes its body
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/collect", "raw_path": b"/collect", "query_string": b"",
             "headers": [(b"content-length", b"100")], "client": ("203.0.113.9", 1)}
    async with app.router.lifespan_context(app):
        started = time.monotonic()
        await app(scope, receive, send)
        assert time.monotonic() - started < 2
    assert sent[0]["status"] == 408 and not sinks[0].payloads


def test_uvicorn_runs_with_limit_concurrency() -> None:
    assert _config(make_settings(limit_concurrency=77)).limit_concurrency == 77
    assert _config(make_settings()).limit_concurrency == make_settings().collector.limit_concurrency


# ---- identity salt ---------------------------------------------------------------------------------

def test_no_predictable_salt() -> None:
    settings = Settings(sites=[SiteSettings(site_id="acme")])
    with pytest.raises(SettingsError, match="identity_salt"):
        settings.email_salt(settings.sites[0])
    assert settings.missing_salt() is not None
    assert Settings(sites=[SiteSettings(site_id="acme")], identity_salt="s" * 16).missing_salt() is None  # type: ignore[arg-type]
    own = Settings(sites=[SiteSettings(site_id="acme", email_salt=SecretStr("x" * 16))])
    assert own.missing_salt() is None and own.email_salt(own.sites[0]) == "x" * 16


async def test_failed_signatures_count_against_the_client_ip(make_client: MakeClient) -> None:
    http, sink = await make_client(make_settings(sites=[SIGNED], rate_limit_ip_per_s=0.25, rate_limit_ip_burst=2))
    content = body()
    bad = sign_headers("w" * 32, content)
    statuses = [(await http.post("/collect", content=content, headers=bad)).status_code for _ in range(3)]
    assert statuses == [403, 403, 429] and len(sink.bad_rows) == 2
    r = await http.post("/collect", content=content, headers=bad)
    assert r.status_code == 429 and r.headers["retry-after"] == "4"
