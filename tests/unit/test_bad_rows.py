"""Bad rows: one FailureType enum for the code and the schema, every symbol emitted, payloads whole and split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.codec import SchemaCatalogue
from pipeline.core.failures import FailureType
from pipeline.stages.messages import bad_row, join_bad_row_parts, split_bad_row

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"


def schema_symbols() -> list[str]:
    schema = json.loads((SchemaCatalogue().root / "BadRow.avsc").read_text())
    (field,) = [f for f in schema["fields"] if f["name"] == "failure_type"]
    return list(field["type"]["symbols"])


def test_the_enum_is_the_schemas_failure_types() -> None:
    assert [t.value for t in FailureType] == schema_symbols()


@pytest.mark.parametrize("symbol", schema_symbols())
def test_every_failure_type_is_emitted_somewhere(symbol: str) -> None:
    """Each symbol is written by some code path: ``FailureType.<symbol>`` or a PayloadError of it."""
    pattern = re.compile(rf'FailureType\.{symbol}\b|PayloadError\(\s*"{symbol}"')
    users = [p for p in PACKAGE.rglob("*.py") if p.name != "failures.py" and pattern.search(p.read_text())]
    assert users, f"no code emits the failure type {symbol!r}"


def test_a_row_keeps_the_whole_payload_and_splits_it_in_parts() -> None:
    payload = {"payloads": [{"events": [{"url": "https://x.example/" + "ü" * 50_000}]}]}
    row = bad_row("visitor", FailureType.schema_violation, "bad", payload)
    assert not row["payload_truncated"] and json.loads(row["payload"]) == payload
    parts = split_bad_row(row, 10_000)
    assert len(parts) > 5 and [p["part"] for p in parts] == list(range(len(parts)))
    assert all(len(p["payload"].encode()) <= 10_000 and p["parts"] == len(parts) for p in parts)
    assert json.loads(join_bad_row_parts(list(reversed(parts)))) == payload


def test_row_ids_are_deterministic() -> None:
    a = bad_row("visitor", FailureType.late_event, "late", {"x": 1}, tstamp=1)
    b = bad_row("visitor", FailureType.late_event, "late", {"x": 1}, tstamp=2)
    c = bad_row("visitor", FailureType.late_event, "late", {"x": 2}, tstamp=1)
    assert a["bad_row_id"] == b["bad_row_id"] != c["bad_row_id"]


def test_bytes_payloads_say_their_encoding() -> None:
    assert bad_row("visitor", "schema_violation", "m", b"\xc3\x01\xff")["details"]["payload_encoding"] == "base64"
    assert bad_row("visitor", "schema_violation", "m", b"text")["details"]["payload_encoding"] == "utf8"
    with pytest.raises(ValueError):
        bad_row("visitor", "no_such_type", "m", b"")
