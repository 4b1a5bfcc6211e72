"""Recovering bad rows (``leadstream bad-rows list|replay``).

``list`` reads ``bad-events`` (no consumer group, commits nothing), joins the
parts of split rows, and filters by failure type, stage and time. ``replay``
puts the original payloads of visitor-stage rows back on ``pixel-events``, each
payload on the partition of its site and visitor, so the fixed pipeline
processes them as if they had just arrived. Replay is idempotent by event: the
visitor stage drops events it has already applied (their fingerprint, which
holds the event id), so replaying a row twice, or a row whose events went
through after all, adds nothing.

Rows that are not replayable onto ``pixel-events`` are reported, not sent:
collector rows (the HTTP request was refused before it became a payload: send
it to the collector again) and account-stage rows (derived data: replay the
visitor's events instead).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from ..codec import Codec, CodecError, make_codec
from ..core.limits import chunk_by_bytes, json_size
from ..settings import Settings
from ..topology import partition_for, topic_specs, visitor_key
from ..stages.messages import join_bad_row_parts

__all__ = ["parse_since", "read_bad_rows", "replay_plan", "replay_bad_rows", "ReplayReport"]

def parse_since(text: str, now_ms: int | None = None) -> int:
    """Epoch ms of a ``--since``: the replay's time grammar (:func:`pipeline.ops.replay.parse_time`: an age
    like ``2h``/``7d``, an ISO 8601 time, UTC unless it says otherwise, epoch ms, or ``now``)."""
    from .replay import ReplayError, parse_time
    try:
        return parse_time(text, int(time.time() * 1000) if now_ms is None else now_ms)
    except ReplayError as exc:
        raise ValueError(f"--since: {exc}") from None


def read_bad_rows(settings: Settings, *, failure_type: str | None = None, since_ms: int | None = None,
                  stage: str | None = None, poll_ms: int = 1000) -> list[dict[str, Any]]:
    """Every bad row of ``bad-events`` matching the filters, split rows joined (in topic order)."""
    from kafka import KafkaConsumer, TopicPartition

    name = settings.topics.bad_events
    codec = make_codec(settings.kafka.schema_registry_url)
    consumer = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False, group_id=None)
    rows: list[dict[str, Any]] = []
    try:
        tps = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        while not all(consumer.position(tp) >= end[tp] for tp in tps):
            for _, records in sorted(consumer.poll(timeout_ms=poll_ms).items(), key=lambda kv: kv[0].partition):
                for rec in records:
                    if rec.value is None:
                        continue
                    try:
                        rows.append(codec.decode(rec.value, "BadRow"))
                    except CodecError:
                        continue
    finally:
        consumer.close()
    return [r for r in join_parts(rows) if _matches(r, failure_type, since_ms, stage)]


def join_parts(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their parts joined (a row missing a part is left out: it is still being written)."""
    out: list[dict[str, Any]] = []
    pending: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        parts = int(row.get("parts") or 1)
        if parts <= 1:
            out.append(dict(row))
            continue
        group = pending.setdefault(str(row["bad_row_id"]), [])
        if any(int(r.get("part") or 0) == int(row.get("part") or 0) for r in group):
            continue  # the same part written twice (a replayed record)
        group.append(row)
        if len(group) == parts:
            out.append({**dict(group[0]), "payload": join_bad_row_parts(group), "part": 0, "parts": 1})
            del pending[str(row["bad_row_id"])]
    return out


def _matches(row: Mapping[str, Any], failure_type: str | None, since_ms: int | None, stage: str | None) -> bool:
    return ((failure_type is None or row.get("failure_type") == failure_type)
            and (since_ms is None or int(row.get("tstamp") or 0) >= since_ms)
            and (stage is None or row.get("stage") == stage))


@dataclass
class ReplayReport:
    rows: int = 0
    replayed_rows: int = 0
    payloads: int = 0
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> rows

    def summary(self) -> str:
        text = (f"{self.rows} bad rows: {self.replayed_rows} replayed as {self.payloads} payloads in "
                f"{self.records} pixel-events records")
        if self.skipped:
            text += "; not replayable: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return text


def replay_plan(rows: Iterable[Mapping[str, Any]], partitions: int, codec: Codec, topic: str,
                max_record_bytes: int = 900_000) -> tuple[dict[int, list[bytes]], ReplayReport]:
    """The ``pixel-events`` records that put the rows' original payloads back: partition -> values."""
    report = ReplayReport()
    seen_rows: set[str] = set()
    by_partition: dict[int, list[dict[str, Any]]] = {}
    raw_records: dict[int, list[bytes]] = {}
    for row in rows:
        report.rows += 1
        row_id = str(row.get("bad_row_id"))
        if row_id in seen_rows:
            report.skipped["duplicate rows"] = report.skipped.get("duplicate rows", 0) + 1
            continue
        seen_rows.add(row_id)
        why = _not_replayable(row)
        if why is not None:
            report.skipped[why] = report.skipped.get(why, 0) + 1
            continue
        details = row.get("details") or {}
        encoding = details.get("payload_encoding")
        if encoding in ("base64", "utf8"):  # a whole pixel-events record the stage could not decode
            value = (base64.b64decode(row["payload"]) if encoding == "base64"
                     else str(row["payload"]).encode("utf-8"))
            raw_records.setdefault(int(details.get("partition") or 0) % partitions, []).append(value)
            report.replayed_rows += 1
            continue
        try:
            batch = json.loads(row["payload"])
            payloads = [p for p in batch["payloads"] if isinstance(p, dict)]
        except (ValueError, KeyError, TypeError):
            report.skipped["unreadable payload"] = report.skipped.get("unreadable payload", 0) + 1
            continue
        for p in payloads:
            key = visitor_key(str(p.get("site_id")), p.get("visitor_id") or p.get("payload_id"))
            by_partition.setdefault(partition_for(key, partitions), []).append(p)
            report.payloads += 1
        report.replayed_rows += 1
    out: dict[int, list[bytes]] = {p: list(v) for p, v in raw_records.items()}
    for partition, payloads in by_partition.items():
        for value in _encode_batches(codec, topic, payloads, max_record_bytes):
            out.setdefault(partition, []).append(value)
    report.records = sum(len(v) for v in out.values())
    return out, report


def _encode_batches(codec: Codec, topic: str, payloads: list[dict[str, Any]], max_bytes: int) -> Iterator[bytes]:
    """CollectorBatch records of ``payloads`` (order kept), each below ``max_bytes`` (JSON sizes bound Avro's)."""
    for chunk in chunk_by_bytes(payloads, [json_size(p) for p in payloads], max_bytes):
        yield codec.encode("CollectorBatch", {"payloads": chunk}, topic=topic)


def _not_replayable(row: Mapping[str, Any]) -> str | None:
    if row.get("stage") != "visitor":
        return f"{row.get('stage')} rows"
    details = row.get("details") or {}
    if details.get("payload_encoding") in ("base64", "utf8"):
        return None if "partition" in details else "records without their partition"
    if details.get("payload_schema") != "CollectorBatch":
        return "rows without a CollectorBatch payload"
    return None


def replay_bad_rows(settings: Settings, rows: Iterable[Mapping[str, Any]]) -> ReplayReport:
    """Send the rows' original payloads to ``pixel-events`` (acks=all) and report what was sent."""
    from kafka import KafkaProducer

    spec = {s.logical: s for s in topic_specs(settings)}["pixel_events"]
    codec = make_codec(settings.kafka.schema_registry_url)
    plan, report = replay_plan(rows, spec.partitions, codec, spec.name, settings.collector.max_record_bytes)
    if not plan:
        return report
    producer = KafkaProducer(**settings.kafka.client_options(), acks="all",
                             max_request_size=settings.kafka.max_message_bytes)
    try:
        futures = [producer.send(spec.name, value=value, partition=partition)
                   for partition, values in sorted(plan.items()) for value in values]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()
    return report
