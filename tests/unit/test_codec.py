"""The codec writes Avro single-object encoding that any Avro reader can check independently."""

from __future__ import annotations

import io
import json

import fastavro
import pytest

from pipeline.codec import CodecError, SchemaCatalogue, SingleObjectCodec

CATALOGUE = SchemaCatalogue()
CODEC = SingleObjectCodec(CATALOGUE)

_EMPTY = 0xC15D213AA4D7A795
_TABLE = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)


def crc64_avro(data: bytes) -> int:
    """The Avro specification's reference fingerprint algorithm, written out independently."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def bad_row() -> dict[str, object]:
    return {"bad_row_id": "x", "stage": "collector", "failure_type": "size_violation", "message": "too big",
            "site_id": None, "source": "POST /collect", "tstamp": 1, "payload": "{}", "payload_size": 2,
            "payload_truncated": False, "details": {}, "part": 0, "parts": 1}


def test_single_object_header_matches_the_avro_spec() -> None:
    data = CODEC.encode("BadRow", bad_row())
    assert data[:2] == b"\xc3\x01"
    canonical = fastavro.schema.to_parsing_canonical_form(CATALOGUE.current["BadRow"].parsed)
    assert data[2:10] == crc64_avro(canonical.encode()).to_bytes(8, "little")
    body = io.BytesIO(data[10:])
    version = CATALOGUE.current["BadRow"].version
    raw = json.loads((CATALOGUE.root / "history" / "BadRow" / f"v{version}.avsc").read_text())
    assert fastavro.schemaless_reader(body, fastavro.parse_schema(raw), None) == bad_row()


def test_round_trip_and_expected_type() -> None:
    data = CODEC.encode("BadRow", bad_row())
    assert CODEC.decode(data) == bad_row()
    assert CODEC.decode(data, "BadRow") == bad_row()
    with pytest.raises(CodecError, match="expected a CollectorBatch message, got BadRow"):
        CODEC.decode(data, "CollectorBatch")


@pytest.mark.parametrize("data, message", [
    (b"", "missing C3 01 header"),
    (b"{\"json\": true}", "missing C3 01 header"),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown schema fingerprint"),
])
def test_foreign_bytes_are_codec_errors(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CODEC.decode(data)


def test_truncated_body_is_a_codec_error() -> None:
    data = CODEC.encode("BadRow", bad_row())
    with pytest.raises(CodecError, match="corrupt BadRow body"):
        CODEC.decode(data[:15])


def test_encoding_rejects_values_that_break_the_schema() -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        CODEC.encode("BadRow", {**bad_row(), "stage": "nowhere"})


def _fastavro_body(schema: str, value: object) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, CATALOGUE.current[schema].parsed, value)
    return buf.getvalue()


def test_the_compiled_writer_encodes_the_stage_outputs_byte_for_byte_as_fastavro() -> None:
    """The codec writes with the compiled writer (pipeline.avro_writer): what the stages send (visit
    batches, lead scores, bad rows) must be exactly fastavro's bytes."""
    import asyncio

    from tests.unit.stages.stage_fakes import Table, account_stage, event, payload, record, visitor_stage

    schema_of = {"visits": "VisitBatch", "lead-scores": "LeadScore", "qualified-leads": "QualifiedLead",
                 "bad-events": "BadRow"}
    events = [event(f"https://www.acme.example/{p}", t=1_767_225_600_000 + i * 1000)
              for i, p in enumerate(["pricing", "demo", "careers"])]
    visits = asyncio.run(visitor_stage()(0, 0, record(payload("v1", events, ip="203.0.113.10"),
                                                      payload("v2", [event(url=None, device_created_tstamp=None)])), Table().view))
    outputs = list(visits.outputs)
    for o in visits.outputs:
        if o.topic == "visits":
            outputs += asyncio.run(account_stage()(0, 0, o.value or b"", Table().view)).outputs
    values = [("BadRow", bad_row())] + [(schema_of[o.topic], CODEC.decode(o.value or b"")) for o in outputs]
    assert {name for name, _ in values} >= {"BadRow", "VisitBatch", "LeadScore"}
    for name, value in values:
        assert CODEC.encode(name, value)[10:] == _fastavro_body(name, value), name
