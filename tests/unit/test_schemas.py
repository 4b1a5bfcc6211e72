"""Schemas are data: every example round-trips, every version stays readable, nothing changes unversioned."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from pipeline.codec import SchemaCatalogue, SingleObjectCodec, schemas_dir

CATALOGUE = SchemaCatalogue()
EXAMPLES = sorted(schemas_dir().glob("examples/*/v*-*.json"))


def with_defaults(schema: Any, value: Any) -> Any:
    """``value`` as a reader of ``schema`` sees it: missing fields take their defaults."""
    if isinstance(schema, dict) and schema.get("type") == "record":
        out = {}
        for field in schema["fields"]:
            present = field["name"] in value
            inner = value[field["name"]] if present else field.get("default")
            out[field["name"]] = with_defaults(field["type"], inner)
        return out
    if isinstance(schema, list):  # union: the first branch whose shape fits
        for branch in schema:
            if value is None and branch == "null":
                return None
            if isinstance(branch, dict) and branch.get("type") == "record" and isinstance(value, dict):
                return with_defaults(branch, value)
        return value
    if isinstance(schema, dict) and schema.get("type") == "array":
        return [with_defaults(schema["items"], v) for v in value]
    return value


def example_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_every_schema_has_an_example() -> None:
    covered = {p.parent.name for p in EXAMPLES}
    top_level = {str(t["value"]) for t in CATALOGUE.topics.values()}
    assert top_level <= covered, f"schemas without examples: {top_level - covered}"


def test_every_topic_value_schema_exists() -> None:
    for logical, entry in CATALOGUE.topics.items():
        assert entry["value"] in CATALOGUE.current, logical
        assert int(entry["partitions"]) >= 1


@pytest.mark.parametrize("name", sorted(CATALOGUE.current))
def test_current_schema_is_frozen_in_history(name: str) -> None:
    """Editing a .avsc without bumping its version (and adding history/<Name>/v<N>.avsc) fails here."""
    current = CATALOGUE.current[name]
    frozen = CATALOGUE.versions[name].get(current.version)
    assert frozen is not None, f"add schemas/history/{name}/v{current.version}.avsc"
    assert frozen.canonical == current.canonical, (
        f"{name}.avsc changed but is still version {current.version}: bump its version in "
        f"catalogue.yaml and freeze it as history/{name}/v{current.version + 1}.avsc")


@pytest.mark.parametrize("name", sorted(CATALOGUE.current))
def test_each_version_is_readable_by_the_next(name: str) -> None:
    """Backward compatibility: a reader of version N+1 reads data written with version N."""
    versions = [sv for _, sv in sorted(CATALOGUE.versions[name].items())]
    examples = [p for p in EXAMPLES if p.parent.name == name]
    for older, newer in zip(versions, versions[1:]):
        for path in examples:
            if int(path.name.split("-", 1)[0][1:]) != older.version:
                continue
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, older.parsed, json.loads(path.read_text()))
            buf.seek(0)
            fastavro.schemaless_reader(buf, older.parsed, newer.parsed)  # raises on an incompatible change


def test_codec_resolves_an_evolved_schema(tmp_path: Path) -> None:
    """A record written with an older version decodes with the current one, new fields defaulted."""
    (tmp_path / "history" / "Thing").mkdir(parents=True)
    v1 = {"type": "record", "name": "Thing", "namespace": "t", "fields": [{"name": "a", "type": "string"}]}
    v2 = {**v1, "fields": v1["fields"] + [{"name": "b", "type": ["null", "long"], "default": None}]}
    (tmp_path / "history" / "Thing" / "v1.avsc").write_text(json.dumps(v1))
    (tmp_path / "history" / "Thing" / "v2.avsc").write_text(json.dumps(v2))
    (tmp_path / "Thing.avsc").write_text(json.dumps(v2))
    (tmp_path / "catalogue.yaml").write_text("schemas:\n  Thing: 2\ntopics: {}\n")
    catalogue = SchemaCatalogue(tmp_path)
    old = catalogue.versions["Thing"][1]
    buf = io.BytesIO(b"\xc3\x01" + old.fingerprint)
    buf.seek(0, 2)
    fastavro.schemaless_writer(buf, old.parsed, {"a": "x"})
    codec = SingleObjectCodec(catalogue)
    assert codec.decode(buf.getvalue()) == {"a": "x", "b": None}
    assert codec.decode(codec.encode("Thing", {"a": "y", "b": 3})) == {"a": "y", "b": 3}


@pytest.mark.parametrize("path", EXAMPLES, ids=example_id)
def test_example_round_trips_through_the_current_schema(path: Path) -> None:
    name, version = path.parent.name, int(path.name.split("-", 1)[0][1:])
    value = json.loads(path.read_text())
    writer = CATALOGUE.versions[name][version]
    fastavro.validation.validate(value, writer.parsed, raise_errors=True)
    codec = SingleObjectCodec(CATALOGUE)
    # write with the example's own version, read with the current schema
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + writer.fingerprint)
    fastavro.schemaless_writer(buf, writer.parsed, value)
    decoded = codec.decode(buf.getvalue(), name)
    expected = with_defaults(fastavro.schema.expand_schema(CATALOGUE.current[name].parsed),
                             with_defaults(fastavro.schema.expand_schema(writer.parsed), value))
    assert decoded == expected
    if version == CATALOGUE.current[name].version:
        assert codec.decode(codec.encode(name, decoded), name) == decoded
