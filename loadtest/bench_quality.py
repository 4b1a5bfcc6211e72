"""Lead quality benchmark: precision, recall and F1 of the qualified leads on a labelled world.

    leadstream bench quality --seed N [--server-side-share F] [--true-timestamp] [--json]

1. Builds the world of ``seed`` (``loadtest/world.py``): companies, networks, visitors with
   ground-truth classes.
2. Configures the product from the world's ICP as a user would: GeoIP databases of the
   world's networks, a ``leadstream.yaml`` with the site and its ICP fit rules (thresholds,
   filters and intent from the default model), ``leadstream import companies`` of the CSV.
3. Starts the real collector and worker (``leadstream collector`` / ``leadstream worker``) on
   a real Kafka broker and Redis, replays the traffic in event-time order as the Snowplow
   JavaScript tracker sends it (tp2 POSTs, browser headers, the visitor's address in
   ``X-Forwarded-For``) or, for a share of visitors, as a server-side tracker relays it (its
   own ``User-Agent``, no ``Accept-Language`` or ``Origin``, the browser's UA in ``ua``).
   History goes with ``dtm`` (created) and ``stm`` (sent now), as a tracker's offline queue
   flushes it; ``--true-timestamp`` also sends ``ttm``.
4. Waits until the worker has applied every record, reads ``lead-scores`` and
   ``qualified-leads``, and scores the leads over accounts against the ground truth, next to
   the naive rule (:func:`loadtest.world.naive_leads`) on the same world.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.world import (BUYER_CLASSES, DAY_MS, LEAD_KINDS, SITE_HOST, SITE_ID, SITE_ORIGIN, Hit, Visitor,
                            World, build_world, icp_rules, naive_leads, write_companies_csv, write_geoip)

REPO = Path(__file__).resolve().parent.parent
TP2_PATH = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
UNSTRUCT_SCHEMA = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
SUBMIT_FORM_SCHEMA = "iglu:com.snowplowanalytics.snowplow/submit_form/jsonschema/1-0-0"
JS_TRACKER = "js-3.24.2"
PY_TRACKER = "py-1.0.3"
SERVER_SIDE_UA = "python-requests/2.32.3"
EVENT_NS = uuid.UUID("6f1c4a52-0d3e-4a8e-9b1f-3c5d7e9f1a2b")

#: The issue's targets (#12): switched on in tests/integration/test_quality.py once the model fixes land.
TARGET_PRECISION = 0.95
TARGET_RECALL = 0.90
TARGET_F1_OVER_NAIVE = 0.10


# -- metrics (pure) --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scores:
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "tp": self.tp, "fp": self.fp,
                "fn": self.fn}


def score(truth: Iterable[str], predicted: Iterable[str]) -> Scores:
    """Precision, recall and F1 of ``predicted`` accounts against ``truth`` (0 when undefined)."""
    t, p = set(truth), set(predicted)
    tp, fp, fn = len(t & p), len(p - t), len(t - p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(round(precision, 3), round(recall, 3), round(f1, 3), tp, fp, fn)


def company_account(domain: str) -> str:
    return f"c:{domain}"


def true_class(world: World, account: str) -> str:
    """What an account really is: the company's kind (``icp_no_buyer`` for an ICP company without
    a genuine buyer), or ``visitor:<class>`` for a visitor-level account."""
    if account.startswith("c:"):
        c = world.company(account[2:])
        if c is None:
            return "unknown_company"
        if c.kind in LEAD_KINDS:
            return c.kind if account[2:] in world.should_be_lead() else "icp_no_buyer"
        return c.kind
    vid = account[2:]
    v = next((v for v in world.visitors if v.visitor_id == vid), None)
    return f"visitor:{v.cls}" if v else "visitor:unknown"


def visitors_seen(world: World, domain: str) -> Counter[str]:
    """Classes of the visitors on the company's networks or with an email at its domain."""
    from loadtest.world import _in_networks
    c = world.company(domain)
    if c is None:
        return Counter()
    return Counter(v.cls for v in world.visitors
                   if _in_networks(v.ip, c.networks) or (v.email or "").endswith("@" + domain))


def rejection(score_record: Mapping[str, Any] | None) -> str:
    """Why a LeadScore is not a lead: its reasons and failed filters, with fit and intent."""
    if score_record is None:
        return "no lead-scores record"
    failed = [f"{f['name']}: {f.get('reason') or 'failed'}" for f in score_record.get("filters", ())
              if not f.get("passed")]
    reasons = list(score_record.get("reasons") or ())
    parts = reasons + [f for f in failed if not any(f.split(':')[0] in r for r in reasons)]
    return (f"fit {score_record.get('fit', 0):.0f} intent {score_record.get('intent', 0):.0f}: "
            + ("; ".join(parts) if parts else "qualified earlier, not now"))


def evaluate(world: World, lead_records: Sequence[Mapping[str, Any]],
             scores: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The report: product and naive scores, FPs by true class, FNs with the rejection reason,
    lead records per account. ``scores``: the latest LeadScore per account."""
    truth = {company_account(d) for d in world.should_be_lead()}
    per_account = Counter(str(r["account"]) for r in lead_records)
    predicted = set(per_account)
    product = score(truth, predicted)
    naive = {company_account(d) for d in naive_leads(world)}
    naive_scores = score(truth, naive)
    classes = {v.visitor_id: v.cls for v in world.visitors}
    drivers: dict[str, Counter[str]] = defaultdict(Counter)
    for r in lead_records:
        seen_ids = {s.get("visitor_id") for s in r.get("sessions") or ()}
        drivers[str(r["account"])].update(classes.get(str(vid), "unknown") for vid in seen_ids if vid)
    fps = []
    for account in sorted(predicted - truth):
        seen = visitors_seen(world, account[2:]) if account.startswith("c:") else Counter()
        fps.append({"account": account, "class": true_class(world, account), "visitors": dict(seen),
                    "lead_sessions_by": dict(drivers[account]),
                    "fit": scores.get(account, {}).get("fit"), "intent": scores.get(account, {}).get("intent")})
    fns = []
    for account in sorted(truth - predicted):
        domain = account[2:]
        buyers = [v for v in world.visitors_of(domain) if v.cls in BUYER_CLASSES]
        why = rejection(scores.get(account))
        visitor_accounts = {f"v:{v.visitor_id}": rejection(scores[f"v:{v.visitor_id}"]) for v in buyers
                            if f"v:{v.visitor_id}" in scores}
        fns.append({"account": account, "class": true_class(world, account),
                    "buyers": dict(Counter(v.cls for v in buyers)), "reason": why,
                    "visitor_accounts": visitor_accounts})
    return {
        "product": product.as_dict(), "naive": naive_scores.as_dict(),
        "truth": sorted(truth), "predicted": sorted(predicted), "naive_predicted": sorted(naive),
        "false_positives_by_class": dict(Counter(fp["class"] for fp in fps)),
        "false_positives": fps, "false_negatives": fns,
        "naive_false_positives_by_class": dict(Counter(true_class(world, a) for a in naive - truth)),
        "lead_records": sum(per_account.values()), "lead_accounts": len(per_account),
        "lead_records_per_account": dict(sorted(per_account.items())),
    }


def visitor_diagnostics(world: World, updates: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What the visitor stage made of each visitor (from ``visits``): bot verdicts and company
    resolution, per true class. A bot "leaked" when some of its updates went out as a human's."""
    by_visitor: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for u in updates:
        by_visitor[str(u.get("visitor_id"))].append(u)
    bots: Counter[str] = Counter()
    humans_as_bots: dict[str, Counter[str]] = defaultdict(Counter)
    resolved: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for v in world.visitors:
        ups = by_visitor.get(v.visitor_id, [])
        flagged = [u for u in ups if u.get("is_bot")]
        if v.cls == "bot":
            bots["visitors"] += 1
            bots["flagged"] += bool(flagged)
            bots["leaked_updates"] += sum(1 for u in ups if not u.get("is_bot"))
            for u in flagged[:1]:
                bots["reason:" + str(u.get("bot_reason") or "?").split(":")[0]] += 1
        elif flagged:
            humans_as_bots[v.cls][str(flagged[0].get("bot_reason") or "?").split(":")[0]] += 1
        if v.company is not None and ups:
            resolved[v.cls][1] += 1
            resolved[v.cls][0] += ups[-1].get("account") == company_account(v.company)
    return {"bots": dict(bots), "humans_flagged_as_bots": {k: dict(c) for k, c in humans_as_bots.items()},
            "resolved_to_own_company": {k: f"{a}/{n}" for k, (a, n) in sorted(resolved.items())}}


def meets_targets(report: Mapping[str, Any]) -> bool:
    p, n = report["product"], report["naive"]
    return bool(p["precision"] >= TARGET_PRECISION and p["recall"] >= TARGET_RECALL
            and p["f1"] >= n["f1"] + TARGET_F1_OVER_NAIVE)


def format_report(report: Mapping[str, Any]) -> str:
    p, n = report["product"], report["naive"]
    w = report.get("world", {})
    lines = [f"Lead quality: seed {report.get('seed')}, server-side share {report.get('server_side_share')}, "
             f"{'ttm sent' if report.get('true_timestamp') else 'dtm/stm only'}, one request per {report.get('requests_per')} "
             f"({w.get('companies')} companies, {w.get('visitors')} visitors, {w.get('events')} events, "
             f"{w.get('requests')} requests, {len(report['truth'])} accounts should be leads; "
             f"{report.get('seconds', '?')} s)",
             f"  {'':12} precision  recall  F1     TP  FP  FN",
             *(f"  {name:12} {s['precision']:9.3f} {s['recall']:7.3f} {s['f1']:6.3f} {s['tp']:4d} {s['fp']:3d} {s['fn']:3d}"
               for name, s in (("leadstream", p), ("naive rule", n))),
             f"  false positives by true class: {report['false_positives_by_class'] or 'none'}"
             f" (naive rule: {report['naive_false_positives_by_class'] or 'none'})"]
    for fp in report["false_positives"]:
        lines.append(f"    FP {fp['account']:32} {fp['class']:14} fit {fp['fit'] or 0:5.1f} intent "
                     f"{fp['intent'] or 0:5.1f}  lead sessions by {fp['lead_sessions_by']}; all visitors {fp['visitors']}")
    lines.append(f"  false negatives: {len(report['false_negatives'])}")
    for fn in report["false_negatives"]:
        lines.append(f"    FN {fn['account']:32} buyers {fn['buyers']}: {fn['reason']}")
        for acct, why in fn["visitor_accounts"].items():
            lines.append(f"         {acct}: {why}")
    diag = report.get("visitors_seen_by_product")
    if diag:
        lines.append(f"  bots (visits): {diag['bots']}")
        lines.append(f"  humans flagged as bots: {diag['humans_flagged_as_bots'] or 'none'}")
        lines.append(f"  visitors resolved to their own company: {diag['resolved_to_own_company']}")
    multi = {a: k for a, k in report["lead_records_per_account"].items() if k > 1}
    lines.append(f"  lead records: {report['lead_records']} for {report['lead_accounts']} accounts"
                 + (f"; more than one: {multi}" if multi else ""))
    lines.append(f"  meets the issue's targets (P >= {TARGET_PRECISION}, R >= {TARGET_RECALL}, "
                 f"F1 >= naive + {TARGET_F1_OVER_NAIVE}): {'yes' if meets_targets(report) else 'no'}")
    return "\n".join(lines)


# -- traffic (the tracker protocol) -------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    t: int                          # world time of its first event
    visitor: int                    # index into world.visitors
    events: tuple[dict[str, str], ...]
    headers: tuple[tuple[str, str], ...]


def _b64url(doc: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")


def _event(world: World, v: Visitor, hit: Hit, n: int, sid: str, index: int, server_side: bool,
           true_timestamp: bool) -> dict[str, str]:
    url = SITE_ORIGIN + hit.path
    e: dict[str, str] = {"e": {"pv": "pv", "pp": "pp", "form": "ue"}[hit.kind],
                         "eid": str(uuid.uuid5(EVENT_NS, f"{world.seed}:{v.visitor_id}:{n}")),
                         "aid": SITE_ID, "p": "web", "tna": "sp", "tv": PY_TRACKER if server_side else JS_TRACKER,
                         "url": url, "duid": v.visitor_id, "sid": sid, "vid": str(index),
                         "dtm": str(hit.t), "lang": v.language, "cs": "UTF-8"}
    if hit.kind == "pv":
        e["page"] = hit.title
        if hit.referrer:
            e["refr"] = hit.referrer
    if hit.kind == "pp":
        e.update({"pp_mix": "0", "pp_max": "0", "pp_miy": "0", "pp_may": str(300 + n % 7 * 150)})
    if hit.kind == "form":
        elements = [{"name": "email", "value": hit.email or "", "nodeName": "INPUT", "type": "email"},
                    {"name": "company", "value": "", "nodeName": "INPUT", "type": "text"}]
        e["ue_px"] = _b64url({"schema": UNSTRUCT_SCHEMA, "data": {"schema": SUBMIT_FORM_SCHEMA, "data": {
            "formId": hit.form_id, "formClasses": ["form"], "elements": elements}}})
    if v.user_id:
        e["uid"] = v.user_id
    if server_side:
        e["ua"] = v.user_agent          # the browser's UA, forwarded by the server-side tracker
        e["ip"] = v.ip
    else:
        e["cd"] = "24"
        e["tz"] = "Europe/Berlin" if v.language.startswith("de") else "America/New_York"
        if v.screen:
            e["res"] = v.screen
        if v.viewport:
            e["vp"] = v.viewport
    if true_timestamp:
        e["ttm"] = str(hit.t)
    return e


def requests_for(world: World, server_side_share: float = 0.0, true_timestamp: bool = False,
                 per: str = "session") -> list[Request]:
    """Every tracker request of the world in event-time order: one tp2 POST per page (its page view,
    page pings and form submit), or with ``per="session"`` one per session (a tracker's offline
    queue flushing it; bots, which have none, still send one request per page)."""
    out: list[Request] = []
    for i, v in enumerate(world.visitors):
        server_side = v.server_side_draw < server_side_share
        if server_side:
            headers: tuple[tuple[str, str], ...] = (("User-Agent", SERVER_SIDE_UA), ("X-Forwarded-For", v.ip),
                                                    ("Content-Type", "application/json; charset=utf-8"))
        else:
            headers = (("User-Agent", v.user_agent), ("Accept-Language", v.accept_language),
                       ("Origin", SITE_ORIGIN), ("Referer", SITE_ORIGIN + "/"), ("X-Forwarded-For", v.ip),
                       ("Content-Type", "application/json; charset=UTF-8"))
        n = 0
        for index, session in enumerate(v.sessions, start=1):
            sid = str(uuid.uuid5(EVENT_NS, f"{world.seed}:{v.visitor_id}:s{index}"))
            page: list[dict[str, str]] = []
            first = 0
            for hit in session:
                if hit.kind == "pv" and page and (per == "page" or v.cls == "bot"):
                    out.append(Request(first, i, tuple(page), headers))
                    page = []
                if not page:
                    first = hit.t
                page.append(_event(world, v, hit, n, sid, index, server_side, true_timestamp))
                n += 1
            if page:
                out.append(Request(first, i, tuple(page), headers))
    out.sort(key=lambda r: (r.t, r.visitor))
    return out


async def replay(url: str, requests: list[Request], concurrency: int = 16) -> Counter[int]:
    """Send the requests in event-time order, one UTC day of world time at a time (scoring counts
    whole days); within a day, visitors in parallel and each visitor's requests in order. ``stm``
    is the send time."""
    import httpx

    statuses: Counter[int] = Counter()
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def visitor_chain(chain: list[Request]) -> None:
            for r in chain:
                async with sem:
                    stm = str(int(time.time() * 1000))
                    body = {"schema": PAYLOAD_SCHEMA, "data": [{**e, "stm": stm} for e in r.events]}
                    for attempt in range(5):
                        resp = await client.post(TP2_PATH, content=json.dumps(body), headers=dict(r.headers))
                        if resp.status_code != 503:
                            break
                        await asyncio.sleep(0.5 * (attempt + 1))
                    statuses[resp.status_code] += 1

        days: dict[int, dict[int, list[Request]]] = defaultdict(lambda: defaultdict(list))
        for r in requests:
            days[r.t // DAY_MS][r.visitor].append(r)
        for day in sorted(days):
            await asyncio.gather(*(visitor_chain(chain) for chain in days[day].values()))
    return statuses


# -- running the product ------------------------------------------------------------------------

from .bench_pipeline import _end_offsets, _metric  # noqa: E402  (one copy of each)


def _cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def site_config(fit_min: float | None = None) -> dict[str, Any]:
    """The site as a user configures it from the world's ICP."""
    rules: dict[str, Any] = {"icp": {"rules": icp_rules()}}
    if fit_min is not None:
        from pipeline.core.scoring_model import default_scoring_model
        thresholds = default_scoring_model().thresholds.model_dump(mode="json")
        rules["thresholds"] = {**thresholds, "fit_min": fit_min}
    return {"site_id": SITE_ID, "name": "Northbeam (quality benchmark)", "allowed_origins": [SITE_ORIGIN],
            "hosts": [SITE_HOST], "rules": rules}


def run_world(world: World, *, bootstrap: str, redis_url: str, work: Path, server_side_share: float = 0.0,
              true_timestamp: bool = False, fit_min: float | None = None, per: str = "session",
              drain_timeout_s: float = 300) -> dict[str, Any]:
    """Configure, run and replay ``world`` through the real collector and worker; the report."""
    import yaml

    from pipeline.local.kafka import free_port
    from pipeline.ops.tail import tail_topic
    from pipeline.settings import load_settings
    from pipeline.topology import create_topics

    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    name = f"quality-{world.seed}-{uuid.uuid4().hex[:8]}"
    geoip = write_geoip(world, work / "geoip")
    companies_csv = write_companies_csv(world, work / "companies.csv")
    port, metrics_port = free_port(), free_port()
    doc = {
        "kafka": {"bootstrap_servers": bootstrap}, "redis": {"url": redis_url},
        "topics": {k: f"{name}-{k.replace('_', '-')}" for k in
                   ("pixel_events", "bad_events", "visits", "lead_scores", "qualified_leads", "sink_dead_letter")},
        "geoip": {k: str(v) for k, v in geoip.items()},
        "identity_salt": f"bench-{world.seed}", "data_dir": str(work / "data"), "log_level": "warn",
        "metrics_port": metrics_port,
        "collector": {"port": port, "trusted_proxies": ["127.0.0.1/32"], "linger_ms": 2},
        "stages": {"app_id": f"{name}-app", "commit_interval_s": 1.0, "session_timeout_s": 6.0,
                   "heartbeat_interval_s": 1.0},
        "sites": [site_config(fit_min)],
    }
    config = work / "leadstream.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    settings = load_settings(config)
    create_topics(settings)
    imported = subprocess.run([sys.executable, "-m", "pipeline.cli", "import", "companies", str(companies_csv),
                               "--no-progress", "-c", str(config)], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    if imported.returncode != 0:
        raise RuntimeError(f"leadstream import companies failed: {imported.stdout}{imported.stderr}")

    requests = requests_for(world, server_side_share, true_timestamp, per)
    phases: dict[str, float] = {}
    worker = _cli(["worker", "-c", str(config)], work / "worker.log")
    collector = _cli(["collector", "-c", str(config)], work / "collector.log")
    url = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        import httpx
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if collector.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not start: {_tail(work / 'collector.log')}")
            time.sleep(0.2)
        phases["start"] = round(time.perf_counter() - started, 1)
        statuses = asyncio.run(replay(url, requests))
        phases["replay"] = round(time.perf_counter() - started - phases["start"], 1)
        if set(statuses) != {200}:
            raise RuntimeError(f"the collector refused requests: {dict(statuses)}: {_tail(work / 'collector.log')}")
        # drained: the worker applied every pixel-events and visits record, and nothing moved for 3 s
        deadline = time.monotonic() + drain_timeout_s
        last: tuple[float, ...] = ()
        stable_since = time.monotonic()
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited: {_tail(work / 'worker.log')}")
            applied = _metric(metrics_url, "leadstream_stage_records_total")
            state = (applied.get('{stage="visitor"}', 0.0), applied.get('{stage="account"}', 0.0),
                     float(_end_offsets(bootstrap, settings.topics.pixel_events)),
                     float(_end_offsets(bootstrap, settings.topics.visits)))
            done = state[0] >= state[2] > 0 and state[1] >= state[3] > 0
            if state != last:
                last, stable_since = state, time.monotonic()
            elif done and time.monotonic() - stable_since >= 3:
                phases["drain"] = round(time.perf_counter() - started - phases["start"] - phases["replay"], 1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not drain in {drain_timeout_s} s ({state}): "
                                   f"{_tail(work / 'worker.log')}")
            time.sleep(0.3)
    finally:
        _stop(collector)
        _stop(worker)

    scores: dict[str, dict[str, Any]] = {}
    for line in tail_topic(settings, settings.topics.lead_scores):
        rec = json.loads(line)["value"]
        if rec is not None:
            scores[str(rec["account"])] = rec
    leads = [json.loads(line)["value"] for line in tail_topic(settings, settings.topics.qualified_leads)]
    bad = sum(1 for _ in tail_topic(settings, settings.topics.bad_events))
    updates = [u for line in tail_topic(settings, settings.topics.visits)
               for u in (json.loads(line)["value"] or {}).get("updates", ())]
    report = evaluate(world, leads, scores)
    report["visitors_seen_by_product"] = visitor_diagnostics(world, updates)
    report.update({
        "seed": world.seed, "server_side_share": server_side_share, "true_timestamp": true_timestamp,
        "fit_min": fit_min, "requests_per": per, "bad_rows": bad, "phases_s": phases, "seconds": round(time.perf_counter() - started, 1),
        "world": {"companies": len(world.companies), "visitors": len(world.visitors),
                  "events": sum(len(r.events) for r in requests), "requests": len(requests),
                  "classes": dict(Counter(v.cls for v in world.visitors)),
                  "server_side_visitors": sum(v.server_side_draw < server_side_share for v in world.visitors)},
    })
    return report


def world_t0(now_ms: int | None = None) -> int:
    """Day 0 of the world: the UTC midnight 14 days before today's, so every event is in the past."""
    from loadtest.world import DAYS
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now - now % DAY_MS - DAYS * DAY_MS


def bench(seed: int = 1, server_side_share: float = 0.0, *, true_timestamp: bool = False,
          fit_min: float | None = None, per: str = "session", bootstrap: str | None = None,
          redis_url: str | None = None, keep: bool = False) -> dict[str, Any]:
    """One seed end to end; starts a real Kafka broker and Redis unless given."""
    from pipeline.local.kafka import KafkaBroker
    from pipeline.local.redis import EmbeddedRedis, RedisServer, find_system_redis_server

    work = Path(tempfile.mkdtemp(prefix=f"leadstream-bench-quality-{seed}-"))
    broker = redis_server = None
    try:
        if bootstrap is None:
            broker = KafkaBroker(work / "kafka")
            broker.start()
            bootstrap = broker.bootstrap
        if redis_url is None:
            redis_server = RedisServer() if find_system_redis_server() else EmbeddedRedis()
            redis_server.start()
            redis_url = redis_server.url
        world = build_world(seed, world_t0())
        report = run_world(world, bootstrap=bootstrap, redis_url=redis_url, work=work / "run",
                           server_side_share=server_side_share, true_timestamp=true_timestamp, fit_min=fit_min,
                           per=per)
        report["work_dir"] = str(work) if keep else None
        return report
    finally:
        if redis_server is not None:
            redis_server.close()
        if broker is not None:
            broker.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(format_report(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
