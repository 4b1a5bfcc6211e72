"""Per-site sink settings: typed, validated with key paths, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.settings import SettingsError, load_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _load(tmp_path: Path, sinks: list[dict]) -> object:  # type: ignore[type-arg]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"sites": [{"site_id": "acme", "sinks": sinks}]}))
    return load_settings(path)


def test_every_sink_type_loads_and_secrets_are_masked(tmp_path: Path) -> None:
    settings = _load(tmp_path, [
        {"type": "webhook", "name": "hook", "url": "https://crm.example/in", "secrets": [SECRET, SECRET]},
        {"type": "slack", "name": "sales", "webhook_url": "https://hooks.slack.com/services/T/B/secret",
         "filter": {"min_tier": "b2", "countries": ["us", " de "], "min_identity_confidence": 0.8}},
        {"type": "hubspot", "name": "crm", "token": "pat-na1-secret"},
        {"type": "jsonl", "name": "file", "path": str(tmp_path / "leads.jsonl")},
        {"type": "slack", "name": "api", "bot_token": "xoxb-secret-bot-token", "channel": "C0123456789"},
    ])
    sinks = settings.sites[0].sinks  # type: ignore[attr-defined]
    assert [s.type for s in sinks] == ["webhook", "slack", "hubspot", "jsonl", "slack"]
    assert sinks[4].api_url == "https://slack.com/api" and sinks[4].webhook_url is None
    assert sinks[1].filter.min_tier == "B2" and sinks[1].filter.countries == ["US", "DE"]
    assert sinks[1].concurrency == 1 and sinks[3].concurrency == 1
    dumped = json.dumps(settings.model_dump(mode="json"))  # type: ignore[attr-defined]
    for secret in (SECRET, "hooks.slack.com/services/T/B/secret", "pat-na1-secret", "xoxb-secret-bot-token"):
        assert secret not in dumped


@pytest.mark.parametrize("sink, where", [
    ({"type": "webhook", "name": "h", "url": "https://x.example", "secrets": ["abc"]}, "secrets"),
    ({"type": "webhook", "name": "h", "url": "https://x.example", "secrets": ["whsec_!!!"]}, "secrets"),
    ({"type": "webhook", "name": "h", "url": "ftp://x", "secrets": [SECRET]}, "url"),
    ({"type": "webhook", "name": "h", "url": "https://x.example", "secrets": [SECRET] * 3}, "secrets"),
    ({"type": "slack", "name": "s", "webhook_url": "https://x", "filter": {"min_tier": "D1"}}, "min_tier"),
    ({"type": "slack", "name": "s", "webhook_url": "https://x", "retry": {"attempts": 0}}, "attempts"),
    ({"type": "slack", "name": "s"}, "webhook_url"),
    ({"type": "slack", "name": "s", "bot_token": "xoxb-1"}, "channel"),
    ({"type": "pager", "name": "p"}, "sinks"),
    ({"type": "jsonl", "name": "bad name", "path": "x"}, "name"),
])
def test_bad_sink_settings_fail_with_their_key_path(tmp_path: Path, sink: dict, where: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SettingsError) as err:
        _load(tmp_path, [sink])
    assert where in str(err.value)


def test_sink_names_are_unique_within_a_site(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unique within a site: a"):
        _load(tmp_path, [{"type": "jsonl", "name": "a", "path": "x"}, {"type": "jsonl", "name": "a", "path": "y"}])
