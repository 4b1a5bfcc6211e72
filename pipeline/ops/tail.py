"""Reading a topic as JSON lines (``leadstream tail``): every record decoded with the schemas."""

from __future__ import annotations

import json
from typing import Iterator

from ..codec import CodecError, make_codec
from ..settings import Settings
from ..topology import topic_specs


def tail_topic(settings: Settings, topic: str, *, from_beginning: bool = True, follow: bool = False,
               limit: int = 0, poll_ms: int = 1000) -> Iterator[str]:
    """Yield one JSON line per record of ``topic`` (logical or configured name). Commits nothing."""
    from kafka import KafkaConsumer, TopicPartition

    specs = {s.name: s for s in topic_specs(settings)}
    specs.update({s.logical.replace("_", "-"): s for s in topic_specs(settings)})
    spec = specs.get(topic)
    if spec is None:
        raise KeyError(f"unknown topic {topic!r}: one of {', '.join(sorted({s.name for s in specs.values()}))}")
    codec = make_codec(settings.kafka.schema_registry_url)
    consumer = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(spec.name, p) for p in sorted(consumer.partitions_for_topic(spec.name) or ())]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        end = consumer.end_offsets(tps)
        count = 0
        while True:
            batches = consumer.poll(timeout_ms=poll_ms)
            for tp, records in sorted(batches.items(), key=lambda kv: kv[0].partition):
                for rec in records:
                    try:
                        value = codec.decode(rec.value) if rec.value is not None else None
                    except CodecError as exc:
                        value = {"_undecodable": str(exc)}
                    yield json.dumps({"partition": rec.partition, "offset": rec.offset,
                                      "key": rec.key.decode("utf-8", "replace") if rec.key else None,
                                      "value": value}, default=str)
                    count += 1
                    if limit and count >= limit:
                        return
            if not follow and all(consumer.position(tp) >= end[tp] for tp in tps):
                return
    finally:
        consumer.close()
