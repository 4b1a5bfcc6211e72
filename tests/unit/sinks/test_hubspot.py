"""The HubSpot CRM sink against a local server that checks HubSpot's request shapes and answers as HubSpot does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeline.codec import schemas_dir
from pipeline.settings import HubSpotSinkSettings
from pipeline.sinks.base import Delivered, Failed, MemoryLinks
from pipeline.sinks.hubspot import LEAD_PROPERTIES, CrmSink, HubSpot
from tests.sink_receivers import HUBSPOT_TOKEN, Receivers

LEAD = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())
PERSON_LEAD = {**LEAD, "lead_id": "11111111-1111-5111-8111-111111111111", "identity_level": "person",
               "person": {"person_id": "p-1", "confidence": 0.9, "seniority": None, "department": None,
                          "evidence": []}}


class Profiles:
    async def profile(self, site_id: str, person_id: str) -> dict[str, str]:
        return {"email": "dana@brightpath-analytics.example", "name": "Dana Smith", "title": "CFO"}


@pytest.fixture
async def hubspot() -> AsyncIterator[Receivers]:
    r = await Receivers().start_async()
    yield r
    await r.stop_async()


def _sink(r: Receivers, token: str = HUBSPOT_TOKEN, links: MemoryLinks | None = None) -> CrmSink:
    cfg = HubSpotSinkSettings(name="h", token=token, base_url=r.url, portal_id=42)  # type: ignore[arg-type]
    return CrmSink.hubspot(cfg, Profiles(), links)


def _paths(r: Receivers) -> list[str]:
    return [f"{m} {p}" for m, p, _ in r.hubspot_requests]


async def test_company_by_domain_contact_by_email_and_their_association(hubspot: Receivers) -> None:
    links = MemoryLinks()
    sink = _sink(hubspot, links=links)
    assert isinstance(await sink.deliver(PERSON_LEAD), Delivered)
    assert _paths(hubspot) == ["POST /crm/v3/objects/companies/search", "POST /crm/v3/objects/companies",
                               "POST /crm/v3/objects/contacts/batch/upsert",
                               "PUT /crm/v4/objects/contacts/5001/associations/default/companies/1001"]
    assert not hubspot.hubspot_errors
    company = hubspot.companies["1001"]
    assert company["domain"] == "brightpath-analytics.example" and company["name"] == "Brightpath Analytics Inc."
    assert {k: company[k] for k in ("leadstream_fit", "leadstream_intent", "leadstream_tier",
                                    "leadstream_model_version")} == {
        "leadstream_fit": "80", "leadstream_intent": "67.8", "leadstream_tier": "A2",
        "leadstream_model_version": "default-2024.1"}
    assert company["leadstream_reason"] == LEAD["summary"]
    contact = hubspot.contacts["5001"]
    assert (contact["email"], contact["firstname"], contact["lastname"], contact["jobtitle"]) == (
        "dana@brightpath-analytics.example", "Dana", "Smith", "CFO")
    assert hubspot.associations == {("5001", "1001")}
    assert await links.crm_links("acme", LEAD["account"]) == {
        "company_url": "https://app.hubspot.com/contacts/42/record/0-2/1001",
        "contact_url": "https://app.hubspot.com/contacts/42/record/0-1/5001", "lead_tstamp": str(LEAD["tstamp"])}
    # again (a retry or the next lead of the account): the same objects are updated, none created
    assert isinstance(await sink.deliver({**PERSON_LEAD, "tier": "A1"}), Delivered)
    assert "PATCH /crm/v3/objects/companies/1001" in _paths(hubspot)
    assert len(hubspot.companies) == 1 and len(hubspot.contacts) == 1
    assert hubspot.companies["1001"]["leadstream_tier"] == "A1"
    await sink.aclose()


async def test_company_level_lead_writes_no_contact(hubspot: Receivers) -> None:
    sink = _sink(hubspot)
    assert isinstance(await sink.deliver(LEAD), Delivered)
    assert not any("contacts" in p for p in _paths(hubspot)) and len(hubspot.companies) == 1
    await sink.aclose()


async def test_409_on_create_finds_the_company_and_updates_it(hubspot: Receivers) -> None:
    hubspot.companies["2001"] = {"domain": LEAD["company"]["domain"]}
    crm = HubSpot(HUBSPOT_TOKEN, hubspot.url)
    # the search misses (as when another writer creates it meanwhile), the create conflicts
    hubspot.hubspot_fail = []
    original = crm._search_company
    calls: list[str] = []

    async def first_miss(domain: str, properties: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]] | None:
        calls.append(domain)
        return None if len(calls) == 1 else await original(domain, properties)

    crm._search_company = first_miss  # type: ignore[method-assign]
    assert await crm.upsert_company(LEAD["company"]["domain"], {"domain": LEAD["company"]["domain"],
                                                               "name": "X"}) == ("2001", True)
    assert _paths(hubspot)[-2:] == ["POST /crm/v3/objects/companies/search", "PATCH /crm/v3/objects/companies/2001"]
    assert hubspot.companies["2001"]["name"] == "X"
    await crm.aclose()


@pytest.mark.parametrize("status, headers, retryable, wait", [
    (429, {"X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "0",
           "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}, True, 10.0),
    (429, {"Retry-After": "3", "X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}, True, 3.0),
    (502, {}, True, None),
    (400, {}, False, None),
])
async def test_errors_map_to_retry_or_refusal(hubspot: Receivers, status: int, headers: dict[str, str],
                                              retryable: bool, wait: float | None) -> None:
    sink = _sink(hubspot)
    hubspot.hubspot_fail.append((status, headers))
    outcome = await sink.deliver(LEAD)
    assert isinstance(outcome, Failed) and outcome.status_code == status
    assert outcome.retryable is retryable and outcome.retry_after_s == wait
    assert isinstance(await sink.deliver(LEAD), Delivered)  # the next attempt goes through
    await sink.aclose()


async def test_a_wrong_token_is_refused_for_good(hubspot: Receivers) -> None:
    sink = _sink(hubspot, token="pat-wrong")
    outcome = await sink.deliver(LEAD)
    assert isinstance(outcome, Failed) and outcome.status_code == 401 and not outcome.retryable
    await sink.aclose()


async def test_setup_creates_the_properties_once(hubspot: Receivers) -> None:
    crm = HubSpot(HUBSPOT_TOKEN, hubspot.url)
    created = await crm.setup(LEAD_PROPERTIES, "leadstream_")
    assert len(created) == 2 * len(LEAD_PROPERTIES) and "companies.leadstream_tier" in created
    assert await crm.setup(LEAD_PROPERTIES, "leadstream_") == []
    assert not hubspot.hubspot_errors
    body: Any = next(b for m, p, b in hubspot.hubspot_requests if p == "/crm/v3/properties/contacts")
    assert body["groupName"] == "leadstream" and body["type"] == "number" and body["fieldType"] == "number"
    await crm.aclose()


async def test_an_older_lead_retried_late_does_not_overwrite_a_newer_one(hubspot: Receivers) -> None:
    links = MemoryLinks()
    sink = _sink(hubspot, links=links)
    newer = {**LEAD, "lead_id": "22222222-2222-5222-8222-222222222222", "tier": "A1", "tstamp": LEAD["tstamp"] + 1}
    assert isinstance(await sink.deliver(newer), Delivered)
    outcome = await sink.deliver(LEAD)  # the older lead, after its retries
    assert isinstance(outcome, Delivered) and outcome.detail.startswith("superseded")
    assert hubspot.companies["1001"]["leadstream_tier"] == "A1"
    await sink.aclose()


async def test_a_note_on_the_contact_in_hubspots_shape(hubspot: Receivers) -> None:
    crm = HubSpot(HUBSPOT_TOKEN, hubspot.url)
    contact, _ = await crm.upsert_contact("dana@brightpath-analytics.example",
                                          {"email": "dana@brightpath-analytics.example"})
    note = await crm.add_note(contact, "<p>Positive reply</p>", 1795558574099)
    await crm.aclose()
    [(method, path, body)] = [r for r in hubspot.hubspot_requests if r[1] == "/crm/v3/objects/notes"]
    assert body["properties"] == {"hs_timestamp": "2026-11-24T22:16:14.099Z", "hs_note_body": "<p>Positive reply</p>"}
    assert body["associations"] == [{"to": {"id": contact}, "types": [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}]}]
    assert hubspot.notes == [{"id": note, "contact": contact, **body["properties"]}] and not hubspot.hubspot_errors


# -- a delivery in doubt (an earlier attempt's answer was never recorded) --------------------------
WRITES = ("POST /crm/v3/objects/companies", "POST /crm/v3/objects/contacts/batch/upsert")


def _writes(r: Receivers) -> list[str]:
    return [p for p in _paths(r) if p in WRITES or p.startswith("PATCH ")]


async def test_an_in_doubt_delivery_already_applied_writes_nothing_again(hubspot: Receivers) -> None:
    sink = _sink(hubspot)
    assert isinstance(await sink.deliver(PERSON_LEAD), Delivered)   # applied; "the process died" before recording
    before = len(_writes(hubspot))
    outcome = await sink.deliver_in_doubt(PERSON_LEAD, 0)
    assert isinstance(outcome, Delivered) and outcome.already, outcome
    assert len(_writes(hubspot)) == before                          # no company or contact write re-applied
    assert hubspot.hubspot_leads == [(PERSON_LEAD["lead_id"], hubspot.hubspot_leads[0][1])]
    assert hubspot.hubspot_contact_leads == [PERSON_LEAD["lead_id"]]
    # the reads were HubSpot's: search with the version properties, the contact by email
    search = next(b for m, p, b in hubspot.hubspot_requests if p.endswith("/search") and b["properties"] != ["domain"])
    assert search["properties"] == ["domain", "leadstream_lead_id", "leadstream_lead_version"]
    assert "GET /crm/v3/objects/contacts/dana@brightpath-analytics.example" in _paths(hubspot)
    assert not hubspot.hubspot_errors
    await sink.aclose()


async def test_an_in_doubt_delivery_writes_what_is_missing(hubspot: Receivers) -> None:
    """The company write landed, the contact's did not (the process died in between)."""
    sink = _sink(hubspot)
    company_id, wrote = await sink.crm.upsert_company(LEAD["company"]["domain"],
                                                      {"domain": LEAD["company"]["domain"],
                                                       "leadstream_lead_id": PERSON_LEAD["lead_id"],
                                                       "leadstream_lead_version": "1"})
    assert wrote
    outcome = await sink.deliver_in_doubt(PERSON_LEAD, 0)
    assert isinstance(outcome, Delivered) and not outcome.already
    assert [i for i, _ in hubspot.hubspot_leads] == [PERSON_LEAD["lead_id"]]       # the company: not again
    assert hubspot.hubspot_contact_leads == [PERSON_LEAD["lead_id"]]               # the contact: written
    assert hubspot.associations == {("5001", company_id)} and not hubspot.hubspot_errors
    # a newer version of the same lead (a tier rise) is not "already written"
    newer = {**PERSON_LEAD, "version": 2, "tier": "A1"}
    assert not (await sink.deliver_in_doubt(newer, 0)).already  # type: ignore[union-attr]
    assert hubspot.companies[company_id]["leadstream_tier"] == "A1"
    assert hubspot.companies[company_id]["leadstream_lead_version"] == "2"
    await sink.aclose()
