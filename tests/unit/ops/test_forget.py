"""`leadstream forget` without servers: the CLI's clear errors, the tombstone keys matching what the stages
write, the audit hash, the sinks' hook registry. The erasure itself: tests/integration/test_forget.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.identity import hash_email
from pipeline.ops import forget as forget_mod
from pipeline.ops.forget import (ErasureSubject, ForgetError, ForgetReport, audit_hash, faust_table_key, forget,
                                 load_hooks, register_hook, tombstones)
from pipeline.settings import Settings, load_settings
from pipeline.topology import changelog_topic, partition_for


def config(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "leadstream.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "redis": {"url": "redis://127.0.0.1:1"},
                                    "identity_salt": "s3cret", "data_dir": str(tmp_path / "data"),
                                    "topics": {"partitions": {"pixel_events": 6, "visits": 4, "lead_scores": 3}},
                                    "sites": [{"site_id": "acme"}, {"site_id": "beta"}], **extra}))
    return path


@pytest.mark.parametrize("args, message", [
    (["--site", "acme"], "give exactly one of --email, --visitor or --person"),
    (["--site", "acme", "--email", "a@b.example", "--visitor", "v1"], "give exactly one of"),
    (["--email", "a@b.example"], "--site is required"),
    (["--site", "nowhere", "--email", "a@b.example"], "unknown site 'nowhere' (sites: acme, beta)"),
    (["--site", "nowhere", "--audit"], "unknown site 'nowhere'"),
    (["--site", "acme", "--audit", "--person", "p1"], "give no --email, --visitor or --person"),
    (["--site", "acme", "--email", "not-an-address"], "'not-an-address' is not an email address"),
    (["--site", "acme", "--visitor", "  "], "--visitor is empty"),
    (["--site", "acme", "--person", "a@b.example"], "use --email for an address"),
])
def test_cli_refuses_unclear_requests_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["forget", "-c", str(config(tmp_path)), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_forget_needs_redis_kafka_and_a_salt_before_touching_anything(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADSTREAM_IDENTITY_SALT", raising=False)
    base = yaml.safe_load(config(tmp_path).read_text())
    for drop, message in (("redis", "redis.url is not set"), ("kafka", "kafka.bootstrap_servers is not set"),
                          ("identity_salt", "identity_salt is not set")):
        path = tmp_path / f"no-{drop}.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in base.items() if k != drop}))
        with pytest.raises(ForgetError, match=message):
            asyncio.run(forget(load_settings(path), "acme", "email", "a@b.example", hooks=[]))


def test_unreachable_redis_is_a_clear_error_that_says_to_run_again(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["forget", "-c", str(config(tmp_path)), "--site", "acme", "--visitor", "v1"])
    assert result.exit_code == 1, result.output
    assert "erasure not finished" in result.output and "running the same `forget` again" in result.output


def test_tombstone_keys_and_partitions_are_the_ones_the_stages_write(tmp_path: Path) -> None:
    from pipeline.stages.main import create_worker_app
    settings = load_settings(config(tmp_path))
    _, stages = create_worker_app(settings)
    tables = {s.name: s.table for s in stages}
    stones = tombstones(settings, "acme", ["v1", "v1", "wé"])
    assert len(stones) == 6                               # per distinct visitor: lead-scores and two changelogs
    by_topic: dict[str, list[Any]] = {}
    for s in stones:
        by_topic.setdefault(s.topic, []).append(s)
    for stage, key, partitions in (("visitor", "acme|wé", 6), ("account", "acme|v:wé", 4)):
        table = tables[stage]
        assert table.changelog_topic.get_topic_name() == changelog_topic(settings.stages.app_id, stage)
        from faust.serializers import codecs
        written = codecs.dumps(table.key_serializer, key)   # what the table's changelog carries
        assert faust_table_key(key) == written == json.dumps(key).encode()
        assert any(s.key == written and s.partition == partition_for(key, partitions)
                   for s in by_topic[changelog_topic(settings.stages.app_id, stage)])
    # lead-scores: the account stage's raw key and partition (stages/account.py)
    assert {(s.key, s.partition) for s in by_topic["lead-scores"]} == {
        (b"acme|v:v1", partition_for("acme|v:v1", 3)), ("acme|v:wé".encode(), partition_for("acme|v:wé", 3))}


def test_audit_hash_is_keyed_and_never_the_graphs_email_hash() -> None:
    h = audit_hash("s3cret", "email", "ada@acme.example")
    assert len(h) == 64 and h == audit_hash("s3cret", "email", "ada@acme.example")
    assert h != hash_email("ada@acme.example", "s3cret")
    assert h != audit_hash("other", "email", "ada@acme.example") != audit_hash("s3cret", "visitor", "ada@acme.example")


def test_report_fields_hold_counts_and_the_hash_only() -> None:
    report = ForgetReport("acme", "email", audit_hash("s", "email", "ada@acme.example"), 1, True, 3, 2, 2, 6,
                          hooks=["email-sequences"])
    fields = report.fields()
    assert fields["person_found"] == "1" and fields["tombstones"] == "6" and fields["hooks"] == '["email-sequences"]'
    assert "ada" not in " ".join(fields.values())
    assert "6 tombstones for 2 visitor ids" in report.summary()


class _Sequences:
    name = "test-sequences"

    def __init__(self) -> None:
        self.subjects: list[ErasureSubject] = []

    async def forget(self, subject: ErasureSubject) -> int:
        self.subjects.append(subject)
        return 2


def test_hooks_are_registered_by_factory_and_the_missing_sinks_module_is_fine(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings: Settings = load_settings(config(tmp_path))
    monkeypatch.setattr(forget_mod, "_HOOK_FACTORIES", [])
    hook = _Sequences()
    register_hook(lambda s: hook)
    register_hook(lambda s: None)          # a sink that is not configured
    assert load_hooks(settings) == [hook]
