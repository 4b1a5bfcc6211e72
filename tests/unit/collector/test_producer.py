"""The batching producer's pure parts: payload encoding and packing payloads into records (no broker)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
import pytest

from pipeline.codec import SingleObjectCodec
from pipeline.collector.avro_writer import compile_writer, write_long
from pipeline.collector.producer import _Item, payload_encoder, plan_records
from pipeline.topology import partition_for, visitor_key

CODEC = SingleObjectCodec()
HEADER = CODEC.encode("CollectorBatch", {"payloads": []})[:-1]
ENCODE = payload_encoder(CODEC)
EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples"


def payload(n: int, site: str = "acme", visitor: str | None = "v", title_chars: int = 10) -> dict[str, Any]:
    return {"payload_id": f"p{n}", "site_id": site, "visitor_id": visitor, "collector_tstamp": n,
            "collector": "test", "source": "collect", "consent": "full",
            "events": [{"event_id": f"e{n}", "event_type": "page_view", "page_title": "t" * title_chars}]}


def items(*payloads: dict[str, Any]) -> list[_Item]:
    return [_Item(p, visitor_key(p["site_id"], p["visitor_id"]), None, ENCODE(p)) for p in payloads]


def test_records_concatenate_payloads_exactly_as_the_codec_encodes_the_batch() -> None:
    ps = [payload(1), payload(2, visitor="w")]
    (record,) = plan_records(3, items(*ps), HEADER, 100_000)
    assert record.value == CODEC.encode("CollectorBatch", {"payloads": ps})


def test_one_record_per_group_keyed_by_the_shared_visitor() -> None:
    records = plan_records(3, items(payload(1), payload(2)), HEADER, 100_000)
    (record,) = records
    assert record.partition == 3 and record.key == b"acme|v"
    assert [p["payload_id"] for p in CODEC.decode(record.value)["payloads"]] == ["p1", "p2"]


def test_mixed_visitors_have_no_record_key() -> None:
    (record,) = plan_records(0, items(payload(1, visitor="a"), payload(2, visitor="b")), HEADER, 100_000)
    assert record.key is None


def test_oversized_groups_are_split_in_order_and_fit() -> None:
    group = items(*[payload(n, title_chars=400) for n in range(40)])
    records = plan_records(1, group, HEADER, 3_000)
    assert len(records) > 1 and all(len(r.value) <= 3_000 for r in records)
    order = [p["payload_id"] for r in records for p in CODEC.decode(r.value)["payloads"]]
    assert order == [f"p{n}" for n in range(40)]


def test_partition_is_kafkas_murmur2_of_the_key() -> None:
    # Kafka's Java client puts b"acme|v" on the same partition: the stages' tables rely on it
    from kafka.partitioner.default import murmur2
    key = visitor_key("acme", "v")
    assert partition_for(key, 8) == (murmur2(key.encode()) & 0x7FFFFFFF) % 8


# ---- the compiled Avro writer --------------------------------------------------------------------

def _fastavro(name: str, value: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, CODEC.catalogue.current[name].parsed, value)
    return buf.getvalue()


def _writer(name: str) -> Any:
    return compile_writer(fastavro.schema.expand_schema(CODEC.catalogue.current[name].parsed))


@pytest.mark.parametrize("name", ["Event", "CollectorPayload", "CollectorBatch", "BadRow"])
def test_compiled_writer_matches_fastavro_on_the_examples(name: str) -> None:
    write = _writer(name)
    examples = sorted((EXAMPLES / name).glob("*.json")) if (EXAMPLES / name).exists() else []
    assert examples, f"no examples for {name}"
    for path in examples:
        value = json.loads(path.read_text())
        decoded = CODEC.decode(CODEC.encode(name, value))  # normalised, every field present
        for candidate in (value, decoded):
            out = bytearray()
            write(candidate, out)
            assert bytes(out) == _fastavro(name, candidate), path


def test_compiled_writer_matches_fastavro_on_random_events() -> None:
    write = _writer("Event")
    rng = random.Random(7)
    fields = [f for f in CODEC.catalogue.current["Event"].parsed["fields"]]
    for _ in range(500):
        event: dict[str, Any] = {"event_id": "e", "event_type": "page_view"}
        for field in fields:
            kind = field["type"][1] if isinstance(field["type"], list) else field["type"]
            if field["name"] in event or rng.random() < 0.5:
                continue
            if kind == "string":
                event[field["name"]] = rng.choice(["", "x", "ü" * rng.randrange(300), "\U0001F600"])
            elif kind in ("int", "long"):
                bits = 31 if kind == "int" else 63
                event[field["name"]] = rng.randrange(-(1 << bits), 1 << bits)
            elif kind == "double":
                event[field["name"]] = rng.uniform(-1e9, 1e9)
            elif isinstance(kind, dict) and kind.get("type") == "map":
                event[field["name"]] = {str(i): "v" * i for i in range(rng.randrange(4))}
        out = bytearray()
        write(event, out)
        assert bytes(out) == _fastavro("Event", event)


def test_write_long_matches_avro_zigzag() -> None:
    for n in (0, 1, -1, 63, 64, -64, -65, 4095, 4096, 2**31, -(2**63), 2**63 - 1, 1_700_000_000_000):
        out = bytearray()
        write_long(n, out)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema({"type": "long"}), n)
        assert bytes(out) == buf.getvalue(), n


def test_payload_encoder_refuses_what_the_schema_cannot_hold() -> None:
    bad = payload(1)
    bad["events"][0]["page_title"] = "\ud800"
    with pytest.raises(ValueError):
        ENCODE(bad)
    with pytest.raises(ValueError):
        ENCODE({"site_id": "acme"})
