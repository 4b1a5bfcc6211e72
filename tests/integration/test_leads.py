"""The prospect list end to end: pixel hits through the real collector and worker, `leadstream leads serve`
keeping the Redis view current from lead-scores, read through the CLI, the API and the page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import redis
import yaml

from pipeline.leads.api import new_token
from pipeline.local.kafka import free_port

from .pipeline_harness import DAY, Pipeline, Visitor, _CliProcess, now_ms
from .stagekit import REPO, wait_until

pytestmark = pytest.mark.integration

BRIGHTPATH_IP = "203.0.113.5"        # Brightpath Analytics: business network, US software (an ICP fit)
GOVERNMENT_IP = "203.0.113.165"      # Department for Digital Services (filtered: sector)
BRIGHTPATH = "brightpath-analytics.example"
ARTIFACTS = Path(os.environ.get("LEADSTREAM_ARTIFACTS") or REPO / "tests" / "artifacts")


class Leads:
    """`leadstream leads serve` on the pipeline's broker and Redis, with API tokens for two sites."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.token, acme_hash = new_token()
        self.other_token, other_hash = new_token()
        config = json.loads(json.dumps(p.config))
        config["sites"][0]["api_tokens"] = [acme_hash]
        config["sites"].append({"site_id": "other", "allowed_origins": ["*"], "api_tokens": [other_hash]})
        self.port = free_port()
        config["leads"] = {"port": self.port, "seed_interval_s": 2.0}
        self.config_path = p.tmp / "leads.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: _CliProcess | None = None

    def start(self) -> "Leads":
        self.proc = _CliProcess(["leads", "-c", str(self.config_path), "serve"], self.p.tmp,
                                f"{self.p.name}-leads").start()
        self.p.processes.append(self.proc)
        wait_until(self._healthy, 60, "the leads API", self.proc.log_tail)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str, token: str | None = "default", **params: Any) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'default' else token}"}
        return httpx.get(f"{self.url}{path}", headers=headers, params=params, timeout=10)

    def rows(self, **params: Any) -> list[dict[str, Any]]:
        resp = self.get("/api/sites/acme/leads", **params)
        assert resp.status_code == 200, resp.text
        return list(resp.json()["leads"])

    def row(self, domain: str, **params: Any) -> dict[str, Any] | None:
        return next((r for r in self.rows(limit=200, **params) if r["domain"] == domain), None)

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "leads", "-c", str(self.config_path), "--site", "acme", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture
def leads(pipeline: Pipeline) -> Iterator[Leads]:
    yield Leads(pipeline).start()


def buyers(p: Pipeline, t0: int) -> tuple[Visitor, int]:
    buyer, colleague = Visitor(p, BRIGHTPATH_IP), Visitor(p, BRIGHTPATH_IP)
    t = buyer.browse(t0, ["/", "/product", "/pricing", "/customers/acme-co"])
    t = buyer.browse(t + 45 * 60_000, ["/demo", "/pricing", "/contact"])
    colleague.browse(t0 + 600_000, ["/pricing", "/security", "/demo"])
    buyer.send([{"type": "identify", "email": "ada.fictional@brightpath-analytics.example", "ts": t + 1000,
                 "traits": {"name": "Ada Fictional", "title": "VP Marketing"}}], sent_at=t + 1000)
    return buyer, t


def test_pixel_hits_become_a_ranked_account_with_people_and_reason(pipeline: Pipeline, leads: Leads) -> None:
    p = pipeline
    t0 = now_ms() - 2 * DAY
    buyer, t = buyers(p, t0)
    Visitor(p, GOVERNMENT_IP).browse(t0, ["/pricing", "/demo", "/contact"])

    def qualified() -> bool:
        row = leads.row(BRIGHTPATH)
        return bool(row and row["status"] == "qualified" and row["people"])

    wait_until(qualified, 90, "Brightpath listed as qualified with its people", lambda: json.dumps(leads.rows()))
    row = leads.row(BRIGHTPATH)
    assert row is not None
    assert row["rank"] == 1, leads.rows()
    assert row["seen"] and row["tier"] and row["fit"] >= 50 and row["intent"] >= 40
    assert row["people"][0]["name"] == "Ada Fictional" and row["people"][0]["title"] == "VP Marketing"
    assert "2 visitors" in row["reason"] and "pricing" in row["reason"] and "in US" in row["reason"], row["reason"]
    assert row["last_activity"] >= t0 and row["priority"] > 0

    # the government department is filtered: absent by default, shown with the filter's name when asked
    wait_until(lambda: leads.row("digital-services.gov.example", tier="filtered") is not None, 30,
               "the filtered government account")
    assert leads.row("digital-services.gov.example") is None
    assert leads.row("digital-services.gov.example", tier="filtered")["filtered_by"] == "sector"

    # imported ICP companies that never visited are listed as not yet seen, ranked by fit
    wait_until(lambda: bool(leads.rows(seen="false")), 30, "not-yet-seen ICP companies")
    unseen = leads.rows(seen="false")
    assert all(r["status"] == "not_seen" and not r["seen"] and r["reason"].startswith("not yet seen") for r in unseen)
    assert BRIGHTPATH not in {r["domain"] for r in unseen}
    assert [r["fit"] for r in unseen] == sorted((r["fit"] for r in unseen), reverse=True)

    # filters
    assert all(r["fit"] >= 70 for r in leads.rows(min_fit=70))
    assert {r["status"] for r in leads.rows(tier="qualified")} == {"qualified"}
    assert leads.row(BRIGHTPATH, country="DE") is None and leads.row(BRIGHTPATH, country="US") is not None
    first = leads.get("/api/sites/acme/leads", limit=1).json()
    second = leads.get("/api/sites/acme/leads", limit=1, cursor=first["next_cursor"]).json()
    assert first["leads"][0]["domain"] != second["leads"][0]["domain"]

    # one account in full
    detail = leads.get(f"/api/sites/acme/accounts/{BRIGHTPATH}").json()
    assert detail["pages"]["pricing"] and detail["sessions"] and detail["fit_contributions"]
    assert {f["name"] for f in detail["filters"]} >= {"bots", "sector", "country"}
    assert detail["model_version"]

    # the CLI reads the same view
    table = leads.cli("--limit", "5")
    assert "Brightpath" in table and "qualified" in table
    exported = json.loads(leads.cli("--json", "--tier", "qualified"))
    assert exported[0]["domain"] == BRIGHTPATH and exported[0]["rank"] == 1
    assert leads.cli("--csv", "--not-seen", "--limit", "3").splitlines()[0].startswith("rank,domain,name,status")
    shown = leads.cli("show", BRIGHTPATH)
    assert any(e["source"] == "ip_range" for e in detail["company_evidence"]), detail["company_evidence"]
    for part in ("Fit, rule by rule:", "Intent, rule by rule:", "Ada Fictional", "Filters:", "Model:", "ip_range:"):
        assert part in shown, shown

    # a person erased from the view disappears from every account
    from pipeline.leads.store import LeadsView
    import asyncio
    person_id = row["people"][0]["person_id"]

    async def forget() -> int:
        view = LeadsView.from_url(p.config["redis"]["url"])
        try:
            return await view.forget_person("acme", person_id)
        finally:
            await view.aclose()

    assert asyncio.run(forget()) == 1
    assert not leads.row(BRIGHTPATH)["people"]


def test_api_answers_401_and_403_with_a_message(pipeline: Pipeline, leads: Leads) -> None:
    none = leads.get("/api/sites/acme/leads", token=None)
    assert none.status_code == 401 and "Bearer" in none.json()["error"]
    wrong = leads.get("/api/sites/acme/leads", token="lsk_wrong")
    assert wrong.status_code == 401 and wrong.json()["error"] == "unknown API token"
    other = leads.get("/api/sites/acme/leads", token=leads.other_token)
    assert other.status_code == 403 and "another site" in other.json()["error"]
    assert leads.get("/api/sites/acme/leads", tier="hot").status_code == 400
    for cursor in ("garbage", "x|c:a.example", "1.5", "nan|c:a.example"):
        bad = leads.get("/api/sites/acme/leads", cursor=cursor)
        assert bad.status_code == 400 and "cursor" in bad.json()["error"], (cursor, bad.text)
    assert leads.get("/api/sites/acme/leads", min_fit="lots").status_code == 400
    assert leads.get("/api/sites/acme/accounts/nowhere.example").status_code == 404
    spec = httpx.get(f"{leads.url}/api/openapi.json").json()
    assert set(spec["paths"]) == {"/api/sites/{site}/leads", "/api/sites/{site}/accounts/{domain}",
                                  "/api/sites/{site}/stream"}


def test_stream_sends_changes_and_a_restart_rebuilds_the_view(pipeline: Pipeline, leads: Leads) -> None:
    p = pipeline
    events: list[dict[str, Any]] = []

    def listen() -> None:
        with httpx.stream("GET", f"{leads.url}/api/sites/acme/stream", params={"access_token": leads.token},
                          timeout=httpx.Timeout(5, read=60)) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if any(e.get("domain") == BRIGHTPATH for e in events):
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1.0)
    buyers(p, now_ms() - DAY)
    listener.join(90)
    assert any(e.get("domain") == BRIGHTPATH for e in events), events

    wait_until(lambda: leads.row(BRIGHTPATH) is not None, 60, "Brightpath in the list")
    before = {r["domain"]: r["status"] for r in leads.rows(limit=200, seen="true")}
    # lose the view entirely and restart the process: it is rebuilt from lead-scores
    assert leads.proc is not None
    leads.proc.terminate()
    client = redis.Redis.from_url(p.config["redis"]["url"])
    for key in client.scan_iter(match="ls:lv:*"):
        client.delete(key)
    leads.start()
    wait_until(lambda: {r["domain"]: r["status"] for r in leads.rows(limit=200, seen="true")} == before, 60,
               "the rebuilt view to hold every account", lambda: json.dumps(leads.rows(limit=200, seen="true")))


@pytest.mark.browser
def test_the_page_shows_the_list_filters_details_and_live_moves(pipeline: Pipeline, leads: Leads) -> None:
    from playwright.sync_api import sync_playwright

    p = pipeline
    buyer, t = buyers(p, now_ms() - 2 * DAY)
    wait_until(lambda: leads.row(BRIGHTPATH) is not None and leads.row(BRIGHTPATH)["people"], 90, "Brightpath listed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{leads.url}/#site=acme&token={leads.token}")
            row = page.locator("tr.row", has_text=BRIGHTPATH)
            row.wait_for(timeout=20_000)
            assert "pricing" in row.inner_text()
            intent_before = float(row.locator("td").nth(4).inner_text())

            # the detail panel shows the people and the pages
            row.click()
            page.locator("#people", has_text="Ada Fictional").wait_for(timeout=10_000)
            assert "/pricing" in page.locator("#pages").inner_text()

            # filters change what is shown
            page.select_option("#f-seen", "false")
            page.wait_for_function("() => document.querySelectorAll('tr.row').length > 0 && "
                                   "[...document.querySelectorAll('tr.row')].every(r => r.innerText.includes('not yet seen'))",
                                   timeout=20_000)
            page.select_option("#f-seen", "")
            row.wait_for(timeout=20_000)

            # new hits arrive: the row's intent moves without a reload
            buyer.browse(t + 60_000, ["/pricing", "/demo", "/pricing/enterprise", "/contact"])
            page.wait_for_function(
                "([domain, before]) => { const r = [...document.querySelectorAll('tr.row')]"
                ".find(r => r.dataset.domain === domain); return r && parseFloat(r.cells[4].innerText) > before; }",
                arg=[BRIGHTPATH, intent_before], timeout=60_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "leads-page.png"), full_page=True)
        finally:
            browser.close()


def test_a_replay_leaves_the_live_view_alone_until_its_model_is_promoted(pipeline: Pipeline, leads: Leads) -> None:
    from datetime import datetime, timezone

    from .test_replay import cli, model_file

    p = pipeline
    since = now_ms() - 5_000
    buyers(p, now_ms() - DAY)
    wait_until(lambda: (leads.row(BRIGHTPATH) or {}).get("status") == "qualified", 90, "Brightpath qualified")
    time.sleep(3)  # let every score of the traffic land in the view
    before = {r["domain"]: (r["fit"], r["intent"], r["status"]) for r in leads.rows(limit=200, seen="true")}
    live_version = leads.get(f"/api/sites/acme/accounts/{BRIGHTPATH}").json()["model_version"]

    # a replay of the same traffic with another model: its scores go to its own topics only
    other = model_file(p.tmp, "other", version="other-1", intent={"saturation_points": 40})
    iso = datetime.fromtimestamp(since / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    run = cli(p, "replay", "--since", iso, "--model", str(other), "--name", "rescore", "--json", "--no-progress")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["lead_scores"] > 0
    time.sleep(3)
    after = {r["domain"]: (r["fit"], r["intent"], r["status"]) for r in leads.rows(limit=200, seen="true")}
    assert after == before, "a replay must not touch the live view"
    assert leads.get(f"/api/sites/acme/accounts/{BRIGHTPATH}").json()["model_version"] == live_version

    # promoted, the model scores the next live events, and the view follows
    promote = cli(p, "model", "promote", str(other))
    assert promote.returncode == 0, promote.stdout + promote.stderr
    time.sleep(6)  # stages.model_poll_s (5 s by default)
    buyers(p, now_ms() - 60_000)
    wait_until(lambda: leads.get(f"/api/sites/acme/accounts/{BRIGHTPATH}").json()["model_version"] == "other-1",
               90, "the promoted model's scores in the live view")
