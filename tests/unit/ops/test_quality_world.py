"""The quality benchmark's labelled world, its traffic and its metrics, without a broker or Redis."""

from __future__ import annotations

import csv
import ipaddress
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench_quality import (SERVER_SIDE_UA, evaluate, format_report, meets_targets, rejection,
                                    requests_for, score, site_config, world_t0)
from loadtest.world import (BUYER_CLASSES, DAY_MS, DAYS, ICP, LEAD_KINDS, VISITOR_CLASSES, Company, CompanyKind,
                            Hit, Network, Visitor, World, build_world, naive_leads, write_companies_csv,
                            write_geoip)
from pipeline.collector.protocol import Limits, parse_snowplow_post
from pipeline.core.scoring_model import SiteRules
from pipeline.settings import SiteSettings

T0 = 1_795_000_000_000 - 1_795_000_000_000 % DAY_MS


def _fingerprint(world: World) -> list[Any]:
    return [(c.domain, c.kind, c.employees, c.country, c.office.cidr) for c in world.companies] + [
        (v.visitor_id, v.cls, v.ip, v.email, [(h.t, h.kind, h.path, h.form_id) for h in v.hits()])
        for v in world.visitors]


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(3, T0)


def test_a_seed_is_one_world_and_seeds_differ() -> None:
    assert _fingerprint(build_world(7, T0)) == _fingerprint(build_world(7, T0))
    assert _fingerprint(build_world(7, T0)) != _fingerprint(build_world(8, T0))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_every_class_and_kind_is_present_in_the_sizes_asked_for(seed: int) -> None:
    w = build_world(seed, T0)
    classes = Counter(v.cls for v in w.visitors)
    assert set(classes) == set(VISITOR_CLASSES), classes
    kinds = {c.kind for c in w.companies}
    assert kinds == {CompanyKind.icp, CompanyKind.boundary_in, CompanyKind.boundary_out, CompanyKind.non_icp,
                     CompanyKind.public, CompanyKind.competitor, CompanyKind.customer}
    assert 50 <= len(w.companies) <= 70 and 280 <= len(w.visitors) <= 380
    assert any(c.branch is not None for c in w.companies)
    assert 8 <= len(w.should_be_lead()) <= 30


def test_labels_agree_with_the_firmographics_and_networks(world: World) -> None:
    lo, hi = ICP["employees_min"], ICP["employees_max"]
    for c in world.companies:
        in_icp = (c.industry in ICP["industries"] and lo <= c.employees <= hi and c.country in ICP["countries"]
                  and c.sector == "private")
        if c.kind in (CompanyKind.icp, CompanyKind.boundary_in, CompanyKind.customer, CompanyKind.competitor):
            assert in_icp, c
        else:
            assert not in_icp, c
        if c.kind == CompanyKind.boundary_in:
            assert c.employees - lo <= 5 or hi - c.employees <= 20
        if c.kind == CompanyKind.boundary_out:
            assert lo - 12 <= c.employees < lo or hi < c.employees <= hi + 150
        assert c.office.domain == c.domain and (c.branch is None or c.branch.country != c.country)
    for v in world.visitors:
        vc = world.company(v.company)
        addr = ipaddress.ip_address(v.ip)
        on = {n.kind for n in world.networks if addr in ipaddress.ip_network(n.cidr)}
        assert len(on) == 1, (v, on)
        if v.cls == "buyer":
            assert vc is not None and vc.kind in LEAD_KINDS and on == {"office"}
        if v.cls == "branch_buyer":
            assert vc is not None and on == {"branch"} and vc.branch is not None and addr in ipaddress.ip_network(vc.branch.cidr)
        if v.cls == "remote_buyer":
            assert on == {"isp"} and v.email is not None and v.email.endswith("@" + (v.company or "?"))
            assert any(h.kind == "form" and h.email == v.email for h in v.hits())
        if v.cls in ("customer", "competitor", "public_buyer"):
            kind = {"customer": CompanyKind.customer, "competitor": CompanyKind.competitor,
                    "public_buyer": CompanyKind.public}[v.cls]
            assert vc is not None and vc.kind == kind
        if v.cls == "job_seeker":
            assert v.company is None and v.email is not None and v.email.split("@")[1] in (
                "gmail.com", "outlook.com", "yahoo.com", "proton.me")
            assert {h.form_id for h in v.hits() if h.kind == "form"} <= {"job-application"}
        if v.cls == "anon_reader":
            assert on <= {"isp", "mobile"} and v.email is None
        for h in v.hits():
            assert T0 <= h.t < T0 + DAYS * DAY_MS + DAY_MS
    truth = world.should_be_lead()
    for domain in truth:
        tc = world.company(domain)
        assert tc is not None and tc.kind in LEAD_KINDS
        assert any(v.cls in BUYER_CLASSES for v in world.visitors_of(domain))


def test_bots_run_a_browser_ua_from_an_office_at_a_rate_no_human_reaches(world: World) -> None:
    bots = [v for v in world.visitors if v.cls == "bot"]
    assert bots and all(v.user_agent.startswith("Mozilla/5.0") for v in bots)
    for v in bots:
        for s in v.sessions:
            views = [h.t for h in s if h.kind == "pv"]
            assert len(views) >= 35 and (views[-1] - views[0]) / len(views) <= 2000


def test_the_product_files_hold_the_world(world: World, tmp_path: Path) -> None:
    from pipeline.enrich.geoip import GeoIPReader
    from pipeline.core.network import classify_network
    from pipeline.core.model import NetworkClass
    dbs = write_geoip(world, tmp_path)
    reader = GeoIPReader(dbs)
    c = next(c for c in world.companies if c.branch is not None)
    office = reader.lookup(str(ipaddress.ip_network(c.office.cidr).network_address + 9))
    assert office.domain == c.domain and classify_network(office) is NetworkClass.business
    branch = reader.lookup(str(ipaddress.ip_network(c.branch.cidr).network_address + 9))  # type: ignore[union-attr]
    assert branch.domain == c.domain and branch.geo.country == c.branch.country != c.country  # type: ignore[union-attr]
    assert classify_network(reader.lookup("198.19.3.4")) is NetworkClass.isp
    assert classify_network(reader.lookup("198.19.99.4")) is NetworkClass.mobile
    rows = list(csv.DictReader(write_companies_csv(world, tmp_path / "c.csv").open()))
    assert len(rows) == len(world.companies)
    from pipeline.ops.importer import CompanyRow
    for row in rows:
        CompanyRow.model_validate({k: v for k, v in row.items() if v != ""})


def test_the_site_config_is_valid_and_carries_the_icp() -> None:
    site = SiteSettings.model_validate(site_config())
    assert isinstance(site.rules, SiteRules) and site.rules.icp is not None
    assert {r["attribute"] for r in site.rules.icp["rules"]} == {"industry", "employees", "country", "tag"}
    assert site.rules.thresholds is None and site.rules.filters is None   # the model's defaults
    assert SiteSettings.model_validate(site_config(fit_min=100)).rules.thresholds["fit_min"] == 100  # type: ignore[union-attr,index]


def _events(body: dict[str, Any]) -> list[dict[str, Any]]:
    groups = parse_snowplow_post(json.dumps(body).encode(), Limits())
    return [e for g in groups for e in g.events]


def test_traffic_is_the_tracker_protocol_in_event_time_order(world: World) -> None:
    reqs = requests_for(world, server_side_share=0.25)
    assert [r.t for r in reqs] == sorted(r.t for r in reqs)
    assert sum(len(r.events) for r in reqs) == sum(1 for v in world.visitors for _ in v.hits())
    forms: Counter[str] = Counter()
    server_side = browser = 0
    for r in reqs:
        assert all(isinstance(value, str) for e in r.events for value in e.values())
        body = {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
                "data": [{**e, "stm": "1795000000000"} for e in r.events]}
        parsed = _events(body)
        headers = dict(r.headers)
        v = world.visitors[r.visitor]
        assert headers["X-Forwarded-For"] == v.ip
        if headers["User-Agent"] == SERVER_SIDE_UA:
            server_side += 1
            assert "Accept-Language" not in headers and "Origin" not in headers
            assert all(e["ua"] == v.user_agent for e in r.events)
        else:
            browser += 1
            assert headers["User-Agent"] == v.user_agent and headers["Origin"].startswith("https://")
            assert headers["Accept-Language"] == v.accept_language
        for e in parsed:
            assert e["app_id"] == "bench" and e["domain_user_id"] == v.visitor_id
            if e["event_type"] == "form_submit":
                forms[e["name"]] += 1
                assert e.get("email")
    assert set(forms) == {"demo-request", "report-download", "job-application", "support-request"}
    visitors = len(world.visitors)
    ss_visitors = sum(v.server_side_draw < 0.25 for v in world.visitors)
    assert 0.15 * visitors <= ss_visitors <= 0.35 * visitors and server_side and browser
    assert all(dict(r.headers)["User-Agent"] != SERVER_SIDE_UA for r in requests_for(world, 0.0))


def test_history_carries_the_world_time_in_dtm_and_ttm_only_when_asked(world: World) -> None:
    r = requests_for(world)[0]
    assert r.events[0]["dtm"] == str(r.t) and "ttm" not in r.events[0]
    assert requests_for(world, true_timestamp=True)[0].events[0]["ttm"] == str(r.t)


def test_world_t0_is_a_utc_midnight_fourteen_days_back() -> None:
    now = T0 + 5 * DAY_MS + 12_345
    assert world_t0(now) == T0 + 5 * DAY_MS - DAYS * DAY_MS


# -- metrics on hand-made inputs ------------------------------------------------------------------

def test_score_precision_recall_f1() -> None:
    s = score({"a", "b", "c", "d"}, {"a", "b", "x"})
    assert (s.tp, s.fp, s.fn) == (2, 1, 2)
    assert s.precision == round(2 / 3, 3) and s.recall == 0.5 and s.f1 == round(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 3)
    assert score({"a"}, set()).as_dict() == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert score({"a"}, {"a"}).f1 == 1.0


def _net(cidr: str, kind: str = "office", domain: str | None = None) -> Network:
    return Network(cidr, kind, "US", "business", "Corporate", 1, "x", "x", domain, domain)


def _company(domain: str, kind: str, cidr: str) -> Company:
    return Company(domain, domain, kind, "software", 100, 1e7, "US", "private", (), _net(cidr, domain=domain))


def _visitor(vid: str, cls: str, company: str | None, ip: str, views: list[tuple[int, str]],
             email: str | None = None) -> Visitor:
    v = Visitor(vid, cls, company, ip, "ua", "en", "en", None, None, email=email)
    v.sessions = [[Hit(T0 + day * DAY_MS + i * 60_000, "pv", path) for i, (day, path) in enumerate(views)]]
    return v


def _tiny_world() -> World:
    companies = [_company("a.example", CompanyKind.icp, "198.18.0.0/24"),
                 _company("b.example", CompanyKind.icp, "198.18.1.0/24"),
                 _company("c.example", CompanyKind.customer, "198.18.2.0/24"),
                 _company("d.example", CompanyKind.icp, "198.18.3.0/24")]
    visitors = [
        # a: a buyer on the office network, 3 signal views on 2 days: truth and naive
        _visitor("va", "buyer", "a.example", "198.18.0.7", [(1, "/pricing"), (1, "/demo"), (2, "/contact")]),
        # b: a remote buyer by work email; 3 signal views but all on one day: truth, not naive
        _visitor("vb", "remote_buyer", "b.example", "198.19.0.9", [(3, "/pricing"), (3, "/pricing"), (3, "/demo")],
                 email="x@b.example"),
        # c: a customer with buying pages on 2 days: naive only
        _visitor("vc", "customer", "c.example", "198.18.2.5", [(1, "/pricing"), (4, "/pricing"), (4, "/contact")]),
        # d: a researcher only (no genuine buyer): neither
        _visitor("vd", "researcher", "d.example", "198.18.3.5", [(1, "/blog"), (2, "/pricing")]),
    ]
    return World(1, T0, companies, [c.office for c in companies], visitors)


def test_naive_rule_and_truth_on_a_hand_made_world() -> None:
    w = _tiny_world()
    assert w.should_be_lead() == {"a.example", "b.example"}
    assert naive_leads(w) == {"a.example", "c.example"}


def test_evaluate_counts_accounts_classes_and_reasons() -> None:
    w = _tiny_world()
    leads: list[dict[str, Any]] = [{"account": "c:a.example", "sessions": [{"visitor_id": "va"}]},
             {"account": "c:a.example", "sessions": [{"visitor_id": "va"}]},
             {"account": "c:c.example", "sessions": [{"visitor_id": "vc"}]}]
    scores: dict[str, dict[str, Any]] = {"c:b.example": {"fit": 100.0, "intent": 20.0, "reasons": ["filter:exclude_isp"],
                              "filters": [{"name": "exclude_isp", "passed": False, "reason": "isp network"},
                                          {"name": "exclude_bots", "passed": True, "reason": None}]},
              "c:c.example": {"fit": 100.0, "intent": 80.0}}
    r = evaluate(w, leads, scores)
    assert r["product"] == score({"c:a.example", "c:b.example"}, {"c:a.example", "c:c.example"}).as_dict()
    assert r["naive"]["tp"] == 1 and r["naive"]["fp"] == 1 and r["naive"]["fn"] == 1
    assert r["false_positives_by_class"] == {"customer": 1}
    assert r["false_positives"][0]["lead_sessions_by"] == {"customer": 1}
    assert r["naive_false_positives_by_class"] == {"customer": 1}
    fn = r["false_negatives"][0]
    assert fn["account"] == "c:b.example" and fn["buyers"] == {"remote_buyer": 1}
    assert "filter:exclude_isp" in fn["reason"] and "intent 20" in fn["reason"]
    assert r["lead_records"] == 3 and r["lead_records_per_account"] == {"c:a.example": 2, "c:c.example": 1}
    assert not meets_targets(r)
    text = format_report({**r, "seed": 1, "server_side_share": 0.0, "world": {}})
    assert "FP c:c.example" in text and "FN c:b.example" in text and "more than one: {'c:a.example': 2}" in text


def test_rejection_names_filters_not_already_in_the_reasons() -> None:
    assert rejection(None) == "no lead-scores record"
    text = rejection({"fit": 40.0, "intent": 70.0, "reasons": ["fit 40 < 50"],
                      "filters": [{"name": "sector", "passed": False, "reason": "government"}]})
    assert text == "fit 40 intent 70: fit 40 < 50; sector: government"


def test_visitor_diagnostics_count_leaked_bots_and_humans_taken_for_bots() -> None:
    from loadtest.bench_quality import visitor_diagnostics
    w = _tiny_world()
    w.visitors.append(_visitor("vbot", "bot", None, "198.18.0.9", [(1, "/pricing")]))
    updates = [{"visitor_id": "vbot", "is_bot": False, "account": "c:a.example"},
               {"visitor_id": "vbot", "is_bot": True, "bot_reason": "page_rate:40/min", "account": "c:a.example"},
               {"visitor_id": "va", "is_bot": False, "account": "c:a.example"},
               {"visitor_id": "vb", "is_bot": True, "bot_reason": "no_accept_language", "account": "v:vb"}]
    d = visitor_diagnostics(w, updates)
    assert d["bots"] == {"visitors": 1, "flagged": 1, "leaked_updates": 1, "reason:page_rate": 1}
    assert d["humans_flagged_as_bots"] == {"remote_buyer": {"no_accept_language": 1}}
    assert d["resolved_to_own_company"] == {"buyer": "1/1", "remote_buyer": "0/1"}
