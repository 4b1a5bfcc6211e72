"""`leadstream forget` without servers: the CLI's clear errors, the erasure records on the partitions
the stages read them from, the audit hash, the sinks' hook registry. The erasure itself: tests/integration/test_forget.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.identity import hash_email
from pipeline.ops import forget as forget_mod
from pipeline.ops.forget import (ErasureSubject, ForgetError, ForgetReport, audit_hash, erasure_records, forget,
                                 load_hooks, register_hook)
from pipeline.settings import Settings, load_settings
from pipeline.topology import partition_for


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


def test_erasure_records_go_where_the_collector_writes_the_visitors_events(tmp_path: Path) -> None:
    """One record per distinct visitor, keyed and partitioned as the collector keys the visitor's events
    (so the visitor stage applies it in order with them, on the partition that holds the state), a
    CollectorBatch with the erasure and no payloads, naming the person by token only."""
    from pipeline.codec import SingleObjectCodec
    from pipeline.core.erasure import person_token
    settings = load_settings(config(tmp_path))
    codec = SingleObjectCodec()
    records = erasure_records(settings, "acme", ["v1", "v1", "wé"], "p-ada", salt="s3cret", now_ms=123, codec=codec)
    assert [(r.topic, r.key, r.partition) for r in records] == [
        ("pixel-events", b"acme|v1", partition_for("acme|v1", 6)),
        ("pixel-events", "acme|wé".encode(), partition_for("acme|wé", 6))]
    batches = [codec.decode(r.value, "CollectorBatch") for r in records]
    assert all(b["payloads"] == [] and len(b["erasures"]) == 1 for b in batches)
    erasures = [b["erasures"][0] for b in batches]
    assert [(e["site_id"], e["visitor_id"], e["accounts"], e["requested_at"]) for e in erasures] == [
        ("acme", "v1", [], 123), ("acme", "wé", [], 123)]
    assert {e["person_token"] for e in erasures} == {person_token("s3cret", "p-ada")}
    assert all(b"p-ada" not in r.value for r in records)
    assert len({e["erasure_id"] for e in erasures}) == 2
    anonymous = erasure_records(settings, "acme", ["v2"], None, salt="s3cret", now_ms=1, codec=codec,
                                accounts=["c:brightpath.example", "c:brightpath.example", "v:v2"])
    assert [(e["person_token"], e["accounts"]) for e in codec.decode(anonymous[0].value)["erasures"]] == [
        (None, ["c:brightpath.example", "v:v2"])]


def test_audit_hash_is_keyed_and_never_the_graphs_email_hash() -> None:
    h = audit_hash("s3cret", "email", "ada@acme.example")
    assert len(h) == 64 and h == audit_hash("s3cret", "email", "ada@acme.example")
    assert h != hash_email("ada@acme.example", "s3cret")
    assert h != audit_hash("other", "email", "ada@acme.example") != audit_hash("s3cret", "visitor", "ada@acme.example")


def test_report_fields_hold_counts_and_the_hash_only() -> None:
    report = ForgetReport("acme", "email", audit_hash("s", "email", "ada@acme.example"), 1, True, 3, 2, 2, 2,
                          hooks=["email-sequences"])
    fields = report.fields()
    assert fields["person_found"] == "1" and fields["erasure_records"] == "2" and fields["hooks"] == '["email-sequences"]'
    assert "ada" not in " ".join(fields.values())
    assert "2 erasure records for 2 visitor ids" in report.summary()


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
