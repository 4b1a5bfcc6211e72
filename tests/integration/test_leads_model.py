"""The scoring model's lead rules through the real processes (issue 12): a demo form names itself
as the lead's cause, a support form is no conversion, a tier rise updates the one lead (same id,
next version), and an imported existing customer is an expansion signal, never a lead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.enrich.redis_store import ReferenceStore
from pipeline.ops.importer import import_file

from .pipeline_harness import Pipeline, Visitor, now_ms

pytestmark = pytest.mark.integration

SITE = "https://www.acme.example"


def latest_scores(p: Pipeline) -> dict[str, dict[str, Any]]:
    return {s["account"]: s for s in p.decoded("lead_scores")}


def form(v: Visitor, t: int, form_id: str, path: str) -> None:
    v.send([{"type": "form_submit", "name": form_id, "url": SITE + path, "ts": t}], sent_at=t)


def test_conversions_updates_and_customers(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    crm = tmp_path / "crm.csv"
    crm.write_text("domain,name,industry,employees,country,customer\n"
                   "cobalt-ledger.example,Cobalt Ledger Financial,Financial Services,950,US,true\n")
    store = ReferenceStore.from_url(p.settings.redis.url_value or "")
    try:
        report = import_file("companies", crm, store, progress=False)
    finally:
        store.close()
    assert report.ok, report.errors

    t0 = now_ms() - 2 * 3_600_000
    buyer = Visitor(p, "203.0.113.5")          # Brightpath Analytics: US software, fit 80 (tier A)
    colleague = Visitor(p, "203.0.113.7")
    t = buyer.browse(t0, ["/", "/pricing", "/demo", "/pricing"])
    account = "c:brightpath-analytics.example"
    p.wait_for(lambda: any(lead["account"] == account for lead in p.leads()), "the first lead")
    first = [lead for lead in p.leads() if lead["account"] == account]
    assert [(lead["version"], lead["update_reason"], lead["cause"]) for lead in first] == [(1, None, None)]

    colleague.browse(t + 60_000, ["/support/sso"])
    form(colleague, t + 100_000, "support-ticket", "/support/sso")
    form(buyer, t + 120_000, "demo-request", "/book-a-demo")
    p.wait_for(lambda: len([lead for lead in p.leads() if lead["account"] == account]) >= 2, "the lead's update")
    leads = [lead for lead in p.leads() if lead["account"] == account]
    assert len(leads) == 2, [(lead["tier"], lead["version"]) for lead in leads]
    update = leads[1]
    assert update["lead_id"] == first[0]["lead_id"] and update["sequence"] == first[0]["sequence"] == 1
    assert update["version"] == 2 and update["update_reason"] == f"tier_rise:{first[0]['tier']}->{update['tier']}"
    assert update["cause"] == f"conversion: demo form 'demo-request' on {SITE}/book-a-demo"
    assert update["summary"].endswith(update["cause"])
    assert [(c["rule"], c["form_id"], c["page"]) for c in update["conversions"]] == [
        ("demo", "demo-request", f"{SITE}/book-a-demo")]
    assert update["fit_min"] == 50.0 and update["intent_min"] == 40.0 and update["min_confidence"] == 0.6

    def contributions(score: dict[str, Any]) -> dict[str, tuple[float, float]]:
        return {c["rule"]: (c["points"], c["count"]) for c in score["intent_contributions"]}

    p.wait_for(lambda: contributions(latest_scores(p)[account]).get("conversion", (0, 0))[1] == 1,
               "the conversion in the account's score")
    got = contributions(latest_scores(p)[account])
    assert got["conversion"] == (50.0, 1.0) and got["non_conversion"] == (0.0, 1.0)   # the support ticket scores 0

    customer = Visitor(p, "203.0.113.50")        # Cobalt Ledger: imported as an existing customer
    ct = customer.browse(t0, ["/pricing", "/demo", "/pricing"])
    form(customer, ct + 60_000, "demo-request", "/demo")
    cobalt = "c:cobalt-ledger.example"
    p.wait_for(lambda: latest_scores(p).get(cobalt, {}).get("expansion") is True, "the customer's expansion signal")
    score = latest_scores(p)[cobalt]
    assert score["reasons"] == ["existing_customer"] and not score["qualified"]
    assert "expansion signal" in (score["expansion_reason"] or "")
    assert score["fit_min"] == 50.0 and score["intent_min"] == 40.0
    assert not any(lead["account"] == cobalt for lead in p.leads())
