"""ConfluentCodec against a real schema registry (Apicurio, Confluent-compatible API).

Every example in schemas/examples round-trips through the registry; ids are
stable and cached; a codec with a cold cache resolves writer schemas by id; an
evolved schema registers as a new version and old records still decode; and
Confluent-framed values travel through the real Kafka broker.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.codec import CodecError, ConfluentCodec, SchemaCatalogue, schemas_dir
from pipeline.local.kafka import KafkaBroker
from pipeline.local.registry import SchemaRegistry
from tests.integration.conftest import NewTopic

pytestmark = pytest.mark.integration

CATALOGUE = SchemaCatalogue()
EXAMPLES = sorted(schemas_dir().glob("examples/*/v*-*.json"))


def example_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def load(path: Path) -> tuple[str, Any]:
    return path.parent.name, json.loads(path.read_text(encoding="utf-8"))


def registry_get(registry: SchemaRegistry, path: str) -> Any:
    resp = httpx.get(f"{registry.url}{path}", timeout=10.0)
    resp.raise_for_status()
    return resp.json()


@pytest.mark.parametrize("path", EXAMPLES, ids=example_id)
def test_example_round_trips_through_the_registry(
    schema_registry: SchemaRegistry, unique_name: Callable[[str], str], path: Path
) -> None:
    name, value = load(path)
    topic = unique_name("codec")
    codec = ConfluentCodec(schema_registry.url, CATALOGUE)
    data = codec.encode(name, value, topic=topic)

    # Framing: magic 0, 4-byte big-endian id the registry knows, then the Avro body.
    assert data[:1] == b"\x00"
    (schema_id,) = struct.unpack(">I", data[1:5])
    registered = registry_get(schema_registry, f"/subjects/{topic}-value/versions/latest")
    assert registered["id"] == schema_id
    assert registered["subject"] == f"{topic}-value"
    # What was registered is the plain, self-contained schema (docs and defaults kept),
    # not fastavro's internal parsed form.
    assert json.loads(registered["schema"]) == json.loads(CATALOGUE.current[name].source)
    assert "__fastavro" not in registered["schema"]
    registry_schema = fastavro.parse_schema(json.loads(registered["schema"]), named_schemas={})
    assert (fastavro.schema.to_parsing_canonical_form(registry_schema)
            == CATALOGUE.current[name].canonical)
    by_id = registry_get(schema_registry, f"/schemas/ids/{schema_id}")
    assert json.loads(by_id["schema"]) == json.loads(registered["schema"])
    # The body is plain schemaless Avro of the current schema.
    body = fastavro.schemaless_reader(io.BytesIO(data[5:]), CATALOGUE.current[name].parsed, None)

    decoded = codec.decode(data, name)
    assert decoded == body
    # A second codec (cold cache) fetches the writer schema by id and reads the same record.
    fresh = ConfluentCodec(schema_registry.url, CATALOGUE)
    assert fresh._by_id == {}
    assert fresh.decode(data, name) == decoded
    assert schema_id in fresh._by_id
    assert fresh.decode(codec.encode(name, decoded, topic=topic), name) == decoded
    with pytest.raises(CodecError):
        fresh.decode(data, "NotARealType")


def test_same_schema_same_id(schema_registry: SchemaRegistry,
                             unique_name: Callable[[str], str]) -> None:
    name, value = load(next(p for p in EXAMPLES if p.parent.name == "Event"))
    topic = unique_name("ids")
    codec = ConfluentCodec(schema_registry.url, CATALOGUE)
    first = codec.encode(name, value, topic=topic)
    requests: list[httpx.Request] = []
    codec._http.event_hooks["request"].append(requests.append)
    second = codec.encode(name, value, topic=topic)
    assert first[:5] == second[:5]
    assert requests == [], "the id is cached: no registry round trip per message"

    # Registering the same schema again (a fresh codec) gets the same id back from the
    # registry, and the subject still has one version.
    again = ConfluentCodec(schema_registry.url, CATALOGUE).encode(name, value, topic=topic)
    assert again[:5] == first[:5]
    assert registry_get(schema_registry, f"/subjects/{topic}-value/versions") == [1]
    # Ids are global, like Confluent's: the same schema under another subject, same id.
    other = ConfluentCodec(schema_registry.url, CATALOGUE).encode(
        name, value, topic=unique_name("ids-other"))
    assert other[:5] == first[:5]


def test_unknown_schema_id_is_a_codec_error(schema_registry: SchemaRegistry) -> None:
    codec = ConfluentCodec(schema_registry.url, CATALOGUE)
    with pytest.raises(CodecError, match="not in the registry"):
        codec.decode(b"\x00" + struct.pack(">I", 987654) + b"\x02")


def test_registry_rejects_an_invalid_schema(schema_registry: SchemaRegistry,
                                            unique_name: Callable[[str], str]) -> None:
    """The registry validates what it is given, so the codec's schemas are checked for real."""
    resp = httpx.post(
        f"{schema_registry.url}/subjects/{unique_name('bad')}-value/versions",
        json={"schema": json.dumps({"__fastavro_parsed": True, "type": "record"})},
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"}, timeout=10.0)
    assert resp.status_code in (400, 409, 422), resp.text


def _thing_catalogue(root: Path, fields: list[dict[str, Any]], history: list[list[dict[str, Any]]]
                     ) -> SchemaCatalogue:
    base = {"type": "record", "name": "Thing", "namespace": "io.leadstream.test"}
    (root / "history" / "Thing").mkdir(parents=True)
    for n, version_fields in enumerate(history, start=1):
        (root / "history" / "Thing" / f"v{n}.avsc").write_text(
            json.dumps({**base, "fields": version_fields}))
    (root / "Thing.avsc").write_text(json.dumps({**base, "fields": fields}))
    (root / "catalogue.yaml").write_text(f"schemas:\n  Thing: {len(history)}\ntopics: {{}}\n")
    return SchemaCatalogue(root)


def test_evolved_schema_is_a_new_version_and_old_records_decode(
    schema_registry: SchemaRegistry, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    v1 = [{"name": "a", "type": "string"}]
    v2 = v1 + [{"name": "b", "type": ["null", "long"], "default": None}]
    old_catalogue = _thing_catalogue(tmp_path / "old", v1, [v1])
    new_catalogue = _thing_catalogue(tmp_path / "new", v2, [v1, v2])
    topic = unique_name("evolve")
    subject = f"{topic}-value"

    old_codec = ConfluentCodec(schema_registry.url, old_catalogue)
    old_record = old_codec.encode("Thing", {"a": "x"}, topic=topic)
    new_codec = ConfluentCodec(schema_registry.url, new_catalogue)
    new_record = new_codec.encode("Thing", {"a": "y", "b": 3}, topic=topic)

    old_id = struct.unpack(">I", old_record[1:5])[0]
    new_id = struct.unpack(">I", new_record[1:5])[0]
    assert old_id != new_id
    assert registry_get(schema_registry, f"/subjects/{subject}/versions") == [1, 2]
    assert registry_get(schema_registry, f"/subjects/{subject}/versions/1")["id"] == old_id
    assert registry_get(schema_registry, f"/subjects/{subject}/versions/2")["id"] == new_id

    # A reader on the new schema (cold cache) reads old records, the new field defaulted...
    reader = ConfluentCodec(schema_registry.url, new_catalogue)
    assert reader.decode(old_record, "Thing") == {"a": "x", "b": None}
    assert reader.decode(new_record, "Thing") == {"a": "y", "b": 3}
    # ...and a reader still on the old schema reads new records (forward compatible).
    assert ConfluentCodec(schema_registry.url, old_catalogue).decode(new_record, "Thing") == {"a": "y"}

    # The registry enforces BACKWARD compatibility: a new required field is refused.
    v3 = v2 + [{"name": "c", "type": "string"}]
    broken = _thing_catalogue(tmp_path / "broken", v3, [v1, v2, v3])
    with pytest.raises(httpx.HTTPStatusError, match="409"):
        ConfluentCodec(schema_registry.url, broken).encode("Thing", {"a": "z", "b": 1, "c": "c"},
                                                            topic=topic)


def test_confluent_framed_values_through_kafka(
    kafka_broker: KafkaBroker, schema_registry: SchemaRegistry, new_topic: NewTopic
) -> None:
    topic = new_topic(kafka_broker)
    producer_codec = ConfluentCodec(schema_registry.url, CATALOGUE)
    sent = []
    for path in EXAMPLES:
        name, value = load(path)
        if name != "Event":
            continue
        sent.append(producer_codec.encode(name, value, topic=topic))
    assert sent
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        for data in sent:
            producer.send(topic, data)
        producer.flush(30)
    finally:
        producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, enable_auto_commit=False,
                             group_id=None)
    received: list[bytes] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                received.extend(r.value for r in batch)
    finally:
        consumer.close()
    assert received == sent
    consumer_codec = ConfluentCodec(schema_registry.url, CATALOGUE)  # cold cache
    decoded = [consumer_codec.decode(data, "Event") for data in received]
    assert decoded == [producer_codec.decode(data, "Event") for data in sent]
    assert {struct.unpack(">I", d[1:5])[0] for d in received} == {
        registry_get(schema_registry, f"/subjects/{topic}-value/versions/latest")["id"]}
