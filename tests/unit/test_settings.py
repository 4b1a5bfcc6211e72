"""Settings: one validated, immutable object from YAML + environment; errors name the key path."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.settings import ConsentAction, SettingsError, load_settings


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "leadstream.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEADSTREAM_CONFIG", raising=False)
    settings = load_settings()
    assert settings.kafka.bootstrap_servers is None
    assert settings.topics.pixel_events == "pixel-events"
    assert settings.collector.linger_ms == 5.0
    assert settings.sites == []


def test_yaml_file_and_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"kafka": {"bootstrap_servers": "k1:9092"}, "collector": {"port": 8000, "linger_ms": 2},
                            "sites": [{"site_id": "acme", "allowed_origins": ["https://*.acme.example"]}]})
    monkeypatch.setenv("LEADSTREAM_COLLECTOR__PORT", "9000")
    settings = load_settings(path)
    assert settings.kafka.bootstrap_servers == "k1:9092"
    assert settings.collector.port == 9000          # environment beats the file
    assert settings.collector.linger_ms == 2        # the rest of the section is kept
    site = settings.site("acme")
    assert site is not None and site.consent.gpc is ConsentAction.anonymize


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"log_level": "debug"})
    monkeypatch.setenv("LEADSTREAM_CONFIG", str(path))
    assert load_settings().log_level == "debug"


def test_settings_are_immutable(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, {}))
    with pytest.raises(ValidationError):
        settings.collector.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("doc, expected", [
    ({"colector": {}}, "colector: unknown key"),
    ({"collector": {"port": 70000}}, "collector.port: Input should be less than or equal to 65535"),
    ({"sites": [{"site_id": "has space"}]}, "sites.0.site_id: Value error, must be 1-64 characters"),
    ({"sites": [{"site_id": "a", "allowed_origins": ["www.a.example/path"]}]}, "sites.0.allowed_origins"),
    ({"sites": [{"site_id": "a"}, {"site_id": "a"}]}, "appears twice"),
    ({"collector": {"trusted_proxies": ["not-an-ip"]}}, "collector.trusted_proxies.0"),
    ({"sites": [{"site_id": "a", "consent": {"gpc": "maybe"}}]}, "sites.0.consent.gpc"),
    ({"geoip": {"city_db": "/nonexistent/City.mmdb"}}, "city_db: no such file"),
])
def test_invalid_file_names_key_path_and_problem(tmp_path: Path, doc: object, expected: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(write(tmp_path, doc))
    assert expected in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_not_yaml_or_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)
    bad.write_text("- a list\n")
    with pytest.raises(SettingsError, match="must be a mapping"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_secrets_never_printed(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, {
        "kafka": {"bootstrap_servers": "k:9092", "sasl_mechanism": "PLAIN", "sasl_username": "u",
                  "sasl_password": "hunter2"},
        "redis": {"url": "redis://:s3cret@r:6379/0"}}))
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text and "s3cret" not in text
    assert settings.kafka.client_options()["sasl_plain_password"] == "hunter2"
    assert settings.redis.url_value == "redis://:s3cret@r:6379/0"


def test_origin_rules(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, {"sites": [
        {"site_id": "a", "allowed_origins": ["https://www.a.example", "https://*.shop.a.example"]},
        {"site_id": "any", "allowed_origins": ["*"]}]}))
    a, any_site = settings.site("a"), settings.site("any")
    assert a is not None and any_site is not None
    assert a.allows_origin("https://www.a.example")
    assert a.allows_origin("HTTPS://WWW.A.EXAMPLE")
    assert a.allows_origin("https://eu.shop.a.example")
    assert not a.allows_origin("https://evil.example")
    assert not a.allows_origin("http://www.a.example")
    assert a.allows_origin(None)  # <img> pixels and server-side trackers send no Origin
    assert any_site.allows_origin("https://whatever.example")
    assert settings.site("nope") is None


def test_trusted_proxies_from_comma_list_in_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEADSTREAM_COLLECTOR__TRUSTED_PROXIES", '["10.0.0.0/8","192.0.2.1/32"]')
    settings = load_settings(write(tmp_path, {}))
    assert [str(n) for n in settings.collector.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]


def test_the_event_time_clamp_is_a_stage_setting_the_visitor_stage_uses(tmp_path: Path) -> None:
    from pipeline.codec import SingleObjectCodec
    from pipeline.core.events import TimeConfig
    from pipeline.core.scoring_model import default_scoring_model
    from pipeline.stages.visitor import VisitorStage, VisitorTopics

    assert load_settings(write(tmp_path, {})).stages.max_send_delay_days == 7
    settings = load_settings(write(tmp_path, {"stages": {"max_send_delay_days": 30}}))
    stage = VisitorStage(settings, SingleObjectCodec(), VisitorTopics("visits", 1, "bad"), default_scoring_model(),
                         None, None, None)
    assert stage.time_cfg == TimeConfig(max_device_delay_ms=30 * 86_400_000)
    unlimited = load_settings(write(tmp_path, {"stages": {"max_send_delay_days": 0}}))
    assert VisitorStage(unlimited, SingleObjectCodec(), VisitorTopics("visits", 1, "bad"), default_scoring_model(),
                        None, None, None).time_cfg.max_device_delay_ms is None
    with pytest.raises(SettingsError, match="max_send_delay_days"):
        load_settings(write(tmp_path, {"stages": {"max_send_delay_days": -1}}))


def test_one_session_gap_per_site() -> None:
    """The site's session_gap_minutes is the gap in effect, for sessions and for bounces alike."""
    model = load_settings(None).load_scoring_model()
    site = {"site_id": "acme", "allowed_origins": ["*"]}
    default, own, via_rules = (load_settings(None, sites=[{**site, **extra}]).sites[0] for extra in
                               ({}, {"session_gap_minutes": 45}, {"rules": {"intent": {"session_gap_minutes": 20}}}))
    assert default.effective_rules(model).intent.session_gap_minutes == model.intent.session_gap_minutes == 30
    assert default.effective_rules(model).model_digest == model.digest
    assert own.effective_rules(model).intent.session_gap_minutes == 45
    assert own.effective_rules(model).model_digest != model.digest    # the digest names the gap in effect
    assert via_rules.effective_rules(model).intent.session_gap_minutes == 20
    with pytest.raises((SettingsError, ValidationError), match="session_gap_minutes"):
        load_settings(None, sites=[{**site, "session_gap_minutes": 45,
                                    "rules": {"intent": {"session_gap_minutes": 20}}}])
