"""Issue 13: no predictable salt. Outside `up` the worker and collector refuse to start without identity_salt."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.local.up import SALT_FILE, persisted_identity_salt
from pipeline.settings import Settings, SiteSettings


def config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "leadstream.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1"},
                                    "sites": [{"site_id": "acme"}], **extra}))
    return path


@pytest.mark.parametrize("command", [["worker"], ["collector"]])
def test_worker_and_collector_refuse_to_start_without_a_salt(tmp_path: Path, command: list[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADSTREAM_IDENTITY_SALT", raising=False)
    result = CliRunner().invoke(app, [*command, "-c", str(config(tmp_path))])
    assert result.exit_code == 2
    assert "identity_salt is not set" in result.output and "LEADSTREAM_IDENTITY_SALT" in result.output


def test_import_of_people_refuses_without_a_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADSTREAM_IDENTITY_SALT", raising=False)
    people = tmp_path / "people.csv"
    people.write_text("email\njane@acme.com\n")
    result = CliRunner().invoke(app, ["import", "people", str(people), "--check", "-c", str(config(tmp_path))])
    assert result.exit_code == 2 and "identity_salt is not set" in result.output


def test_up_generates_a_salt_once_and_keeps_it(tmp_path: Path) -> None:
    settings = Settings(sites=[SiteSettings(site_id="acme")])
    first = persisted_identity_salt(settings, tmp_path)
    assert first is not None and len(first) >= 32
    assert persisted_identity_salt(settings, tmp_path) == first            # the next `up` reuses it
    assert stat.S_IMODE((tmp_path / SALT_FILE).stat().st_mode) == 0o600
    configured = Settings(sites=[SiteSettings(site_id="acme")], identity_salt="own-salt-0123456789")  # type: ignore[arg-type]
    assert persisted_identity_salt(configured, tmp_path / "other") is None
    assert not (tmp_path / "other" / SALT_FILE).exists()
