"""The stage records carry the model's new facts through the Avro schemas: an action's form id and
event (VisitBatch v2), the lead's version, cause, conversions and numeric thresholds (QualifiedLead
v2), and the expansion signal (LeadScore v2)."""

from __future__ import annotations

from dataclasses import replace

from pipeline.codec import SingleObjectCodec
from pipeline.core.intent import AccountState, apply_visits
from pipeline.core.model import Company
from pipeline.core.qualify import qualify
from pipeline.core.scoring_model import default_scoring_model, effective_rules
from pipeline.core.sessions import Hit
from pipeline.stages.messages import (lead_score_record, qualified_lead_record, visit_from_record,
                                      visit_to_record)

from tests.unit.core.helpers import T0, visit

CODEC = SingleObjectCodec()
RULES = effective_rules(default_scoring_model())
ACME = Company("acme.com", name="Acme", industry="software", employees=300, country="GB", tags=("customer",))
DEMO = "https://www.acme-saas.com/demo"


def _round_trip(name: str, record: dict) -> dict:  # type: ignore[type-arg]
    return CODEC.decode(CODEC.encode(name, record), name)  # type: ignore[no-any-return]


def test_an_actions_form_id_and_event_travel_in_the_visit_batch() -> None:
    u = visit(T0, [DEMO], company=ACME, company_conf=0.9)
    u = replace(u, hits=(*u.hits, Hit(T0 + 1, "action", DEMO, "demo-request", form_id="demo-request"),
                         Hit(T0 + 2, "action", DEMO, "trial_started", event="trial_started")))
    batch = _round_trip("VisitBatch", {"updates": [visit_to_record(u, "0:1:0")]})
    back = visit_from_record(batch["updates"][0])
    assert back.hits == u.hits


def test_lead_and_score_records_carry_version_cause_numbers_and_expansion() -> None:
    prospect = replace(ACME, tags=())
    u = visit(T0, [DEMO], company=prospect, company_conf=0.9)
    u = replace(u, hits=(*u.hits, Hit(T0 + 1, "action", DEMO, "demo-request", form_id="demo-request")))
    state, intent = apply_visits(AccountState.new("s1", "c:acme.com"), [u], RULES.intent)
    d = qualify(state, intent, RULES)
    assert d.lead is not None
    lead = _round_trip("QualifiedLead", qualified_lead_record(d.lead, d.state))
    assert lead["version"] == 1 and lead["update_reason"] is None
    assert lead["cause"] == f"conversion: demo form 'demo-request' on {DEMO}"
    assert lead["conversions"][0]["form_id"] == "demo-request" and lead["conversions"][0]["page"] == DEMO
    assert (lead["fit_min"], lead["intent_min"], lead["min_confidence"]) == (50.0, 50.0, 0.6)

    customer = replace(u, company=ACME)
    state, intent = apply_visits(AccountState.new("s1", "c:acme.com"), [customer], RULES.intent)
    d = qualify(state, intent, RULES)
    score = _round_trip("LeadScore", lead_score_record(
        d.state, intent, d.fit, d.filters, d.tier, d.qualified, d.reasons, RULES.model_version, RULES.model_digest,
        expansion=d.expansion, expansion_reason=d.expansion_reason, fit_min=RULES.thresholds.fit_min,
        intent_min=RULES.thresholds.intent_min))
    assert score["expansion"] is True and score["reasons"] == ["existing_customer"]
    assert score["expansion_reason"] and score["fit_min"] == 50.0 and score["intent_min"] == 50.0
    assert {f["name"]: f["passed"] for f in score["filters"]}["icp"] is True
