"""Block Kit rendering of a lead, Slack's 429 + Retry-After, and the Web API mode (metadata, a delivery in doubt)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from pipeline.codec import schemas_dir
from pipeline.settings import SlackSinkSettings
from pipeline.sinks.base import Delivered, Failed, MemoryLinks
from pipeline.sinks.slack import SlackSink, render_blocks, top_reasons
from tests.sink_receivers import SLACK_BOT_TOKEN, SLACK_CHANNEL, Receivers

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


# -- Web API mode: chat.postMessage with metadata, conversations.history for a delivery in doubt ---
def _api_sink(r: Receivers, channel: str = SLACK_CHANNEL, token: str = SLACK_BOT_TOKEN) -> SlackSink:
    return SlackSink(SlackSinkSettings(name="s", bot_token=token, channel=channel,  # type: ignore[arg-type]
                                       api_url=f"{r.url}/slack-api"))


def test_a_slack_sink_takes_exactly_one_mode() -> None:
    with pytest.raises(ValidationError, match="either webhook_url"):
        SlackSinkSettings(name="s")
    with pytest.raises(ValidationError, match="either webhook_url"):
        SlackSinkSettings(name="s", webhook_url="https://x", bot_token="xoxb-1", channel="C1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="channel is required"):
        SlackSinkSettings(name="s", bot_token="xoxb-1")  # type: ignore[arg-type]


async def test_web_api_posts_the_blocks_with_the_lead_in_message_metadata(slack: Receivers) -> None:
    sink = _api_sink(slack)
    outcome = await sink.deliver({**LEAD, "version": 2})
    assert isinstance(outcome, Delivered) and outcome.detail.startswith("ts ")
    [(method, args)] = slack.slack_api_calls
    assert method == "chat.postMessage" and args["channel"] == SLACK_CHANNEL
    assert args["metadata"] == {"event_type": "leadstream_lead",
                                "event_payload": {"lead_id": LEAD["lead_id"], "version": 2}}
    assert args["text"] == LEAD["summary"] and args["blocks"] == render_blocks(LEAD)["blocks"]
    assert not slack.slack_api_errors
    await sink.aclose()


async def test_web_api_in_doubt_reads_the_history_and_does_not_post_twice(slack: Receivers) -> None:
    sink = _api_sink(slack)
    since = int(time.time() * 1000)
    other = {**LEAD, "lead_id": "00000000-0000-5000-8000-000000000001"}
    assert isinstance(await sink.deliver(LEAD), Delivered)      # posted; "the process died" before recording
    for _ in range(3):                                           # newer messages: the lead's is on a later page
        assert isinstance(await sink.deliver(other), Delivered)
    history = SlackSink(SlackSinkSettings(name="s", bot_token=SLACK_BOT_TOKEN,  # type: ignore[arg-type]
                                          channel=SLACK_CHANNEL, api_url=f"{slack.url}/slack-api"))
    import pipeline.sinks.slack as slack_module
    page, slack_module.HISTORY_PAGE = slack_module.HISTORY_PAGE, 2
    try:
        outcome = await history.deliver_in_doubt(LEAD, since)
    finally:
        slack_module.HISTORY_PAGE = page
    assert isinstance(outcome, Delivered) and outcome.already
    assert [i for i, _ in slack.slack_api] == [LEAD["lead_id"]] + [other["lead_id"]] * 3   # no second post
    reads = [a for m, a in slack.slack_api_calls if m == "conversations.history"]
    assert len(reads) == 2 and reads[0]["include_all_metadata"] == "true" and reads[1]["cursor"] == "2"
    assert float(reads[0]["oldest"]) <= since / 1000
    # a lead never posted: in doubt, the history has no message for it, so it is posted (once)
    third = {**LEAD, "lead_id": "00000000-0000-5000-8000-000000000003"}
    outcome = await history.deliver_in_doubt(third, since)
    assert isinstance(outcome, Delivered) and not outcome.already
    assert [i for i, _ in slack.slack_api].count(third["lead_id"]) == 1 and not slack.slack_api_errors
    await sink.aclose()
    await history.aclose()


async def test_web_api_429_and_errors(slack: Receivers) -> None:
    sink = _api_sink(slack)
    slack.slack_api_429 = 1
    outcome = await sink.deliver(LEAD)
    assert isinstance(outcome, Failed) and outcome.retryable and outcome.retry_after_s == 1
    assert isinstance(await sink.deliver(LEAD), Delivered)
    wrong = _api_sink(slack, channel="C0NOSUCH")
    outcome = await wrong.deliver(LEAD)
    assert isinstance(outcome, Failed) and not outcome.retryable and outcome.error == "Slack: channel_not_found"
    bad_token = _api_sink(slack, token="xoxb-wrong")
    outcome = await bad_token.deliver_in_doubt(LEAD, 0)   # the history read is refused: no post either
    assert isinstance(outcome, Failed) and not outcome.retryable and "invalid_auth" in outcome.error
    for s in (sink, wrong, bad_token):
        await s.aclose()
