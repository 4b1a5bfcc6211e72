"""Where a replay's partitions start: the first record written at or after --since."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kafka import KafkaProducer

from pipeline.stages.runtime import GapReader

pytestmark = pytest.mark.integration


def test_a_partition_without_progress_starts_at_the_replay_time(kafka_broker: Any, new_topic: Any) -> None:
    topic = new_topic(kafka_broker, 2)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for i in range(3):
        producer.send(topic, b"before", partition=0)
    producer.flush()
    time.sleep(0.2)
    since = int(time.time() * 1000)
    time.sleep(0.2)
    for i in range(2):
        producer.send(topic, b"after", partition=0)
    producer.send(topic, b"before-only", partition=1, timestamp_ms=since - 1000)
    producer.flush()
    producer.close()
    options = {"bootstrap_servers": kafka_broker.bootstrap}

    async def starts(start_at_ms: int | None) -> tuple[int, int]:
        reader = GapReader(topic, "g", options, start_at_ms=start_at_ms)
        try:
            return await reader.start_offset(0), await reader.start_offset(1)
        finally:
            await reader.stop()

    assert asyncio.run(starts(None)) == (0, 0)              # live: the log start
    assert asyncio.run(starts(since)) == (3, 1)             # replay: first record at/after since, else the end
    assert asyncio.run(starts(since + 3_600_000)) == (5, 1)  # nothing after it yet: the end
