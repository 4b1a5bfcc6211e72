"""Prospect-list benchmark: 100,000 accounts of one site in the Redis view.

1. **View updates.** Synthetic ``LeadScore`` records (varied fit, intent, status, country, people)
   go through the updater's own function (``pipeline.leads.updater.apply_scores``) in batches, as
   the updater applies what it consumes: view updates per second, and view updates per score
   change (1.0 means every change lands, none is dropped or doubled). The pipeline's own rate
   (``leadstream bench pipeline``) is the load it must keep up with.
2. **Memory per account**: Redis ``used_memory`` after the load, less before, per account.
3. **API latency**: ``GET /api/sites/{site}/leads?limit=50`` with each filter, from a client
   process against the API process (uvicorn, as ``leads serve`` runs it), p50/p99; the baseline
   is ``GET /health`` on the same server in the same run (one Redis PING).

    leadstream bench leads [--accounts 100000] [--requests 300]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import time
from typing import Any

import httpx

from pipeline.leads.api import create_api, new_token
from pipeline.leads.store import LeadsView
from pipeline.leads.updater import apply_scores
from pipeline.local.kafka import free_port
from pipeline.local.redis import RedisServer
from pipeline.settings import Settings

SITE = "bench"
DAY = 86_400_000
COUNTRIES = ("US", "DE", "FR", "GB", "NL", "SE", "ES", "IT", "CA", "AU")
FILTERS: dict[str, dict[str, Any]] = {
    "none": {}, "tier=qualified": {"tier": "qualified"}, "min_fit=80": {"min_fit": 80},
    "min_intent=90": {"min_intent": 90}, "country=DE": {"country": "DE"}, "seen=false": {"seen": "false"},
    "tier=warming&country=FR&min_fit=60": {"tier": "warming", "country": "FR", "min_fit": 60},
}


def synthetic_score(i: int, rng: random.Random, now: int) -> dict[str, Any]:
    fit = round(rng.uniform(0, 100), 1)
    intent = round(min(100.0, rng.expovariate(1 / 25)), 1)
    failed = rng.random() < 0.1
    return {
        "site_id": SITE, "account": f"c:company-{i}.example", "tstamp": now - rng.randrange(0, 30 * DAY),
        "model_version": "bench", "model_digest": "0" * 12, "fit": fit, "intent": intent, "tier": "B2",
        "qualified": False, "reasons": [], "company_domain": f"company-{i}.example",
        "company_name": f"Company {i}", "company_confidence": 0.9, "network_class": "business",
        "visitors": rng.randrange(1, 8), "last_lead_id": f"lead-{i}" if intent > 70 and fit > 60 else None,
        "company": {"industry": rng.choice(("Software", "Fintech", "Retail")), "employees": rng.randrange(10, 5000),
                    "revenue": None, "country": rng.choice(COUNTRIES), "sector": "private"},
        "country": None, "first_seen": now - 40 * DAY,
        "persons": [{"person_id": f"p-{i}-{k}", "confidence": 0.5, "seniority": None, "department": None,
                     "last_seen": now} for k in range(rng.randrange(0, 3))],
        "sessions": [{"session_id": f"s-{i}", "visitor_id": f"v-{i}", "page_views": 4, "end": now,
                      "signal_pages": 2}],
        "pages": {"pricing": [f"https://bench.example/pricing?i={i}"]},
        "intent_contributions": [{"rule": "page:pricing", "points": 20.0, "count": 2, "detail": ""},
                                 {"rule": "active_day", "points": 10.0, "count": 2, "detail": ""}],
        "fit_contributions": [{"rule": "industry", "points": 40.0, "count": 1, "detail": "industry matches"}],
        "filters": [{"name": "country", "passed": not failed, "reason": "denied" if failed else None}],
    }


def _settings(redis_url: str, token_hash: str) -> Settings:
    return Settings.model_validate({"redis": {"url": redis_url}, "identity_salt": "bench-salt",
                                    "sites": [{"site_id": SITE, "api_tokens": [token_hash]}]})


def _serve(redis_url: str, token_hash: str, port: int) -> None:
    import uvicorn
    settings = _settings(redis_url, token_hash)
    view = LeadsView.from_url(redis_url)
    uvicorn.run(create_api(settings, view), host="127.0.0.1", port=port, log_level="warning", lifespan="off")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench(accounts: int = 100_000, requests: int = 300, batch: int = 1000) -> dict[str, Any]:
    redis_server = RedisServer()
    redis_server.start()
    try:
        token, digest = new_token()
        settings = _settings(redis_server.url, digest)
        model = settings.load_scoring_model()
        rng = random.Random(7)
        now = int(time.time() * 1000)
        scores = [synthetic_score(i, rng, now) for i in range(accounts)]
        # a second wave: 10 % of the accounts change again (trend and re-index paths)
        changes = scores + [dict(scores[i], intent=min(100.0, scores[i]["intent"] + 10), tstamp=now)
                            for i in rng.sample(range(accounts), accounts // 10)]

        async def load() -> tuple[float, int, int, int]:
            view = LeadsView.from_url(redis_server.url)
            try:
                await view.client.flushdb()
                before = int((await view.client.info("memory"))["used_memory"])
                started = time.perf_counter()
                written = 0
                for i in range(0, len(changes), batch):
                    written += await apply_scores(view, changes[i:i + batch], settings, model)
                elapsed = time.perf_counter() - started
                after = int((await view.client.info("memory"))["used_memory"])
                return elapsed, written, after - before, await view.count(SITE)
            finally:
                await view.aclose()

        elapsed, written, memory, listed = asyncio.run(load())

        port = free_port()
        server = multiprocessing.get_context("spawn").Process(target=_serve, args=(redis_server.url, digest, port),
                                                               daemon=True)
        server.start()
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if http.get("/health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("the leads API did not start")
                    time.sleep(0.1)

                def timed(path: str, params: dict[str, Any]) -> list[float]:
                    for _ in range(10):  # warm-up
                        http.get(path, params=params).raise_for_status()
                    out = []
                    for _ in range(requests):
                        t = time.perf_counter()
                        resp = http.get(path, params=params)
                        out.append((time.perf_counter() - t) * 1000)
                        resp.raise_for_status()
                    return out

                baseline = timed("/health", {})
                latency: dict[str, dict[str, float]] = {}
                for name, params in FILTERS.items():
                    ms = timed(f"/api/sites/{SITE}/leads", {"limit": 50, **params})
                    rows = len(http.get(f"/api/sites/{SITE}/leads", params={"limit": 50, **params}).json()["leads"])
                    latency[name] = {"p50_ms": round(statistics.median(ms), 2),
                                     "p99_ms": round(_percentile(ms, 0.99), 2), "rows": rows}
        finally:
            server.terminate()
            server.join(10)
    finally:
        redis_server.close()

    worst_p99 = max(v["p99_ms"] for v in latency.values())
    report = {
        "accounts": accounts, "listed": listed, "score_changes": len(changes), "view_updates": written,
        "view_updates_per_score_change": round(written / len(changes), 3),
        "view_updates_per_s": round(written / elapsed),
        "redis_bytes_per_account": round(memory / accounts),
        "baseline_health_p99_ms": round(_percentile(baseline, 0.99), 2),
        "leads_limit_50": latency, "worst_p99_ms": worst_p99,
        "targets": {"p99_ms_under": 50, "view_updates_per_score_change": 1.0},
    }
    report["pass"] = worst_p99 < 50 and report["view_updates_per_score_change"] == 1.0
    return report
