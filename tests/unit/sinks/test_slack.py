"""Block Kit rendering of a lead, and Slack's 429 + Retry-After."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from pipeline.codec import schemas_dir
from pipeline.settings import SlackSinkSettings
from pipeline.sinks.base import Delivered, Failed, MemoryLinks
from pipeline.sinks.slack import SlackSink, render_blocks, top_reasons
from tests.sink_receivers import Receivers

LEAD = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())
PERSON = {"person_id": "p-1", "confidence": 0.85, "seniority": "director", "department": "finance", "evidence": []}


def _text(payload: dict) -> str:  # type: ignore[type-arg]
    return json.dumps(payload["blocks"])


def test_company_fit_intent_top_reasons_and_pages() -> None:
    payload = render_blocks(LEAD)
    assert payload["text"] == LEAD["summary"]
    assert payload["blocks"][0] == {"type": "header", "text": {"type": "plain_text",
                                                                "text": "A2 lead: Brightpath Analytics Inc."}}
    text = _text(payload)
    assert "brightpath-analytics.example" in text and "Software" in text and "201-500 employees" in text
    assert "*Fit 80*\\ncompany_size (+25), target_industry (+25), target_country (+15)" in text
    assert "*Intent 67.8*\\npage:pricing (+20), page:demo (+15), page:contact (+12)" in text
    pages = next(b["text"]["text"] for b in payload["blocks"] if "Pages that mattered" in json.dumps(b))
    assert pages.splitlines()[1:] == [  # the signals that gave the most intent points first
        "• pricing: https://www.acme.example/pricing", "• demo: https://www.acme.example/demo",
        "• contact: https://www.acme.example/contact", "• case_study: https://www.acme.example/customers/x"]
    assert "Person:" not in text and "Open in CRM" not in text  # company-level lead, no CRM record yet


def test_person_with_identity_confidence_and_crm_link_when_known() -> None:
    lead = {**LEAD, "person": PERSON}
    payload = render_blocks(lead, {"name": "Dana Smith", "title": "CFO", "email": "dana@brightpath.example"},
                            {"company_url": "https://app.hubspot.com/contacts/42/record/0-2/1001"})
    text = _text(payload)
    assert "Person: *Dana Smith*, CFO, dana@brightpath.example (identity confidence 85%)" in text
    [actions] = [b for b in payload["blocks"] if b["type"] == "actions"]
    assert actions["elements"][0]["url"] == "https://app.hubspot.com/contacts/42/record/0-2/1001"
    # without a profile the person is still shown, with what the lead knows
    assert "an identified visitor, director finance (identity confidence 85%)" in _text(render_blocks(lead))


def test_untrusted_text_is_escaped_and_long_text_clipped() -> None:
    lead = {**LEAD, "company": {**LEAD["company"], "name": "<!channel> & co"},
            "pages": {"x": [f"https://e.example/{'p' * 200}/{n}" for n in range(40)]}}
    mrkdwn = json.dumps([b for b in render_blocks(lead)["blocks"] if b["type"] != "header"])  # header: plain_text
    assert "<!channel>" not in mrkdwn and "&lt;!channel&gt; &amp; co" in mrkdwn
    for block in render_blocks(lead)["blocks"]:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000


def test_top_reasons_ignores_rules_without_points() -> None:
    assert top_reasons([{"rule": "a", "points": 0.0}, {"rule": "b", "points": 2.0}]) == ["b (+2)"]


@pytest.fixture
async def slack() -> AsyncIterator[Receivers]:
    r = await Receivers().start_async()
    yield r
    await r.stop_async()


async def test_429_is_retried_after_what_slack_says_then_delivered(slack: Receivers) -> None:
    links = MemoryLinks()
    await links.set_crm_links("acme", LEAD["account"], {"company_url": "https://crm.example/1"})
    sink = SlackSink(SlackSinkSettings(name="s", webhook_url=f"{slack.url}/slack"),  # type: ignore[arg-type]
                     links=links)
    slack.slack_429 = 1
    outcome = await sink.deliver(LEAD)
    assert isinstance(outcome, Failed) and outcome.retryable and outcome.retry_after_s == 1
    assert isinstance(await sink.deliver(LEAD), Delivered)
    assert [i for i, _ in slack.slack] == [LEAD["lead_id"]]
    assert "https://crm.example/1" in json.dumps(slack.slack_payloads[0])
    await sink.aclose()
