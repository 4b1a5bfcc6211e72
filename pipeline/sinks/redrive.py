"""``leadstream sinks retry-dead-letter``: schedule dead-lettered leads for delivery again.

Reads ``sink-dead-letter`` up to its end with its own consumer group (``<group>-redrive``),
so each dead letter is re-driven once; for each one (optionally only of one site or sink)
whose (lead, sink) is not delivered since, it clears the ``dead`` state and schedules
a fresh series of attempts in Redis. The running ``leadstream sinks`` process delivers them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import time

from ..codec import CodecError, make_codec
from ..settings import Settings
from .runner import sink_key
from .state import DeliveryState, Job


@dataclass
class RedriveReport:
    read: int = 0
    scheduled: int = 0
    skipped: int = 0   # delivered since, other site/sink, or an unknown sink

    def summary(self) -> str:
        return f"dead letters read: {self.read}, scheduled again: {self.scheduled}, skipped: {self.skipped}"


async def redrive(settings: Settings, site: str | None = None, sink: str | None = None,
                  timeout_s: float = 60.0) -> RedriveReport:
    from aiokafka import AIOKafkaConsumer

    if not settings.redis.url_value:
        raise RuntimeError("redis.url is not set")
    codec = make_codec(settings.kafka.schema_registry_url)
    configured = {sink_key(s.site_id, c.name) for s in settings.sites for c in s.sinks}
    state = DeliveryState.from_url(settings.redis.url_value, settings.sinks.namespace,
                                   settings.sinks.state_ttl_days * 86400)
    topic = settings.topics.sink_dead_letter
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), group_id=f"{settings.sinks.group_id}-redrive",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    report = RedriveReport()
    await consumer.start()
    try:
        consumer.subscribe([topic])
        ends: dict[Any, int] | None = None
        deadline = time.monotonic() + timeout_s
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    report.read += 1
                    await _one(record.value, codec, state, configured, site, sink, report)
            if batches:
                await consumer.commit()
            assigned = consumer.assignment()
            if ends is None and assigned:
                ends = await consumer.end_offsets(list(assigned))  # read up to the end as of joining
            if ends is not None and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                break
            if ends is None and time.monotonic() > deadline:
                raise RuntimeError(f"no partition of {topic} was assigned within {timeout_s:g} s")
    finally:
        await consumer.stop()
        await state.aclose()
    return report


async def _one(value: bytes, codec: object, state: DeliveryState, configured: set[str], site: str | None,
               sink: str | None, report: RedriveReport) -> None:
    try:
        dl = codec.decode(value, "SinkDeadLetter")  # type: ignore[attr-defined]
    except CodecError:
        report.skipped += 1
        return
    key = sink_key(dl["site_id"], dl["sink"])
    if (site and dl["site_id"] != site) or (sink and dl["sink"] != sink) or key not in configured:
        report.skipped += 1
        return
    if await state.redrive(Job(key, json.loads(dl["lead"]), received=0)):
        report.scheduled += 1
    else:
        report.skipped += 1
