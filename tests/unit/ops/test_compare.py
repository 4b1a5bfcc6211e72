"""compare: leads gained and lost, tier and score changes per site, within what the replay scored."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from pipeline.ops.compare import Side, compare, latest_by_account, render, resolve
from pipeline.settings import Settings


def score(site: str, account: str, tier: str, fit: float, intent: float, version: str = "v1") -> dict[str, Any]:
    return {"site_id": site, "account": account, "tier": tier, "fit": fit, "intent": intent,
            "model_version": version, "model_digest": f"d-{version}", "company_name": account.upper()}


def lead(site: str, account: str, tier: str) -> dict[str, Any]:
    return {"site_id": site, "account": account, "tier": tier}


def side(name: str, scores: list[dict[str, Any]], leads: list[dict[str, Any]]) -> Side:
    return Side(name, latest_by_account(scores), latest_by_account(leads))


LIVE = side("live", [
    score("s1", "c:kept", "A1", 90, 80), score("s1", "c:lost", "B2", 60, 50), score("s1", "c:gained", "B3", 60, 30),
    score("s1", "c:same", "C3", 10, 5), score("s1", "c:old", "A1", 90, 90), score("s2", "c:x", "B2", 55, 45),
    score("s1", "c:kept", "A1", 90, 85),  # a later score of the same account replaces the first
], [lead("s1", "c:kept", "A1"), lead("s1", "c:lost", "B2"), lead("s1", "c:old", "A1")])

REPLAY = side("r1", [
    score("s1", "c:kept", "A2", 90, 60, "v2"), score("s1", "c:lost", "B3", 60, 20, "v2"),
    score("s1", "c:gained", "B1", 62, 75, "v2"), score("s1", "c:same", "C3", 10, 5.2, "v2"),
    score("s1", "c:new", "C3", 0, 1, "v2"), score("s2", "c:x", "B2", 55, 45, "v2"),
], [lead("s1", "c:kept", "A2"), lead("s1", "c:gained", "B1")])


def test_gained_lost_tier_and_score_changes_per_site() -> None:
    result = compare(LIVE, REPLAY)
    s1, s2 = result.sites["s1"], result.sites["s2"]
    assert [c.account for c in s1.gained] == ["c:gained"] and [c.account for c in s1.lost] == ["c:lost"]
    assert {c.account: (c.live_tier, c.replay_tier) for c in s1.tier_changes} == {
        "c:kept": ("A1", "A2"), "c:lost": ("B2", "B3"), "c:gained": ("B3", "B1")}
    assert {c.account for c in s1.score_changes} == {"c:kept", "c:lost", "c:gained"}  # 0.2 is below min_delta
    kept = next(c for c in s1.score_changes if c.account == "c:kept")
    assert kept.intent_delta == -25 and kept.fit_delta == 0 and kept.lead == "kept"
    assert (kept.live_lead_tier, kept.replay_lead_tier) == ("A1", "A2")
    # c:old was scored live only (outside the replay's range): counted, never "lost"
    assert s1.live_only == 1 and s1.replay_only == 1 and s1.accounts == 5
    assert (s1.live_leads, s1.replay_leads) == (2, 2)
    assert not (s2.gained or s2.lost or s2.tier_changes or s2.score_changes) and s2.accounts == 1
    assert [c.account for c in s1.changed][:2] == ["c:gained", "c:lost"]
    assert compare(LIVE, REPLAY, min_delta=0.1).sites["s1"].score_changes[-1].account == "c:same"


def test_json_and_table() -> None:
    result = compare(LIVE, REPLAY)
    doc = json.loads(json.dumps(result.as_dict()))
    assert doc["totals"] == {"accounts": 6, "live_only": 1, "replay_only": 1, "live_leads": 2, "replay_leads": 2,
                             "gained": 1, "lost": 1, "tier_changes": 3, "score_changes": 3}
    assert doc["live"]["models"] == ["v1 (d-v1)"] and doc["replay"]["models"] == ["v2 (d-v2)"]
    gained = doc["sites"]["s1"]["gained"][0]
    assert gained["account"] == "c:gained" and gained["intent_delta"] == 45 and gained["replay_lead_tier"] == "B1"
    console = Console(width=140, record=True, color_system=None)
    console.print(render(result))
    text = console.export_text()
    assert "site s1" in text and "site s2" in text and "c:gained" in text and "B3 → B1" in text
    assert "+45.0" in text and "-25.0" in text
    assert "replay scored no accounts" in _text(compare(LIVE, side("empty", [], [])))


def _text(result: Any) -> str:
    console = Console(width=140, record=True, color_system=None)
    console.print(render(result))
    return console.export_text()


def test_resolve_names() -> None:
    settings = Settings(topics={"lead_scores": "prod-scores", "qualified_leads": "prod-leads"})
    assert resolve(settings, "live") == ("live", "prod-scores", "prod-leads")
    assert resolve(settings, "prod-leads") == ("live", "prod-scores", "prod-leads")
    assert resolve(settings, "r1") == ("r1", "r1.lead-scores", "r1.qualified-leads")
    assert resolve(settings, "r1.qualified-leads") == ("r1", "r1.lead-scores", "r1.qualified-leads")
    assert resolve(settings, "r1.lead-scores") == ("r1", "r1.lead-scores", "r1.qualified-leads")
