"""Replay ``pixel-events`` through a scoring model into topics of its own (``leadstream replay``).

A replay is the worker (``stages.main.create_worker_app``) built from a copy of the settings
(:func:`replay_settings`), so it runs exactly the code the live workers run. What differs:

=========================  ===========================================================
what                       a replay named ``N``
=========================  ===========================================================
input                      the live ``pixel-events``, from the first record at or after
                           ``--since`` (broker time, Kafka ``offsets_for_times``) up to
                           the first at ``--until``, or to the end offsets when the
                           command started
consumer group, app id     ``<stages.app_id>-replay-N`` (fresh: the name must be new)
tables, changelogs         ``<data_dir>/replay/N``, ``<app id>-<stage>-state-changelog``
outputs                    ``N.visits``, ``N.lead-scores``, ``N.qualified-leads``,
                           ``N.bad-events`` (created by the command)
scoring model              ``--model FILE``; a replay never follows ``model promote``
monthly quota              Redis ``ls:replay:N:quota:<site>:<month>``
identity graph             read as it is now, never written
reference data, GeoIP      read as they are now
=========================  ===========================================================

So a replay never writes the live topics (the sinks read only the live
``qualified-leads``, the leads view only the live ``lead-scores``), the live quota or
the identity graph. Because everything runs on event time and the graph is only read,
the same input and model give byte-identical leads (values) in every replay of a range.
The graph is the one of today, though: a visitor identified last week is known from
their first event on in a replay, where the live run learned it at the identify.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from ..settings import Settings, SettingsError, with_overrides
from ..stages.runtime import Handler, HandlerResult, StateView
from ..topology import STAGES, TopicSpec, changelog_specs, create_topics, topic_specs

log = logging.getLogger(__name__)

#: The outputs a replay writes (every stage's), each renamed ``<name>.<topic>``.
OUTPUTS = tuple(dict.fromkeys(o for stage in STAGES for o in stage.outputs))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


class ReplayError(Exception):
    """The replay cannot start; the message says why."""


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise ReplayError(f"replay name {name!r}: use 1-64 letters, digits, '_' or '-' (it prefixes topic names)")
    return name


def default_name(now_ms: int) -> str:
    return "replay-" + datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).strftime("%Y%m%d-%H%M%S")


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms from ``now``, a duration ago (``90s``, ``30m``, ``2h``, ``7d``, ``1w``), epoch
    milliseconds (``1733300000000``) or ISO 8601 (``2026-12-01``, ``2026-12-01T08:00:00Z``; no zone
    means UTC)."""
    value = text.strip()
    if value.lower() == "now":
        return now_ms
    rel = _RELATIVE.match(value.lower())
    if rel:
        return now_ms - int(float(rel.group(1)) * _UNITS[rel.group(2)] * 1000)
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReplayError(f"cannot read the time {text!r}: use an ISO 8601 time (2026-12-01T08:00:00Z), "
                          "epoch milliseconds, a duration ago (30m, 2h, 7d) or now") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def replay_topics(name: str) -> dict[str, str]:
    """Logical topic -> the replay's topic name (``<name>.visits`` ...; dead letters too, never created)."""
    return {logical: f"{name}.{logical.replace('_', '-')}" for logical in (*OUTPUTS, "sink_dead_letter")}


def replay_settings(settings: Settings, name: str, model_file: Path, since_ms: int) -> Settings:
    """The live settings with the replay's own state, outputs, quota and model (see module doc)."""
    validate_name(name)
    topics = settings.topics.model_copy(update=replay_topics(name))
    stages = settings.stages.model_copy(update={
        "app_id": f"{settings.stages.app_id}-replay-{name}",
        "source_start_ms": since_ms,
        "quota_prefix": f"ls:replay:{name}:quota",
        "identity_writes": False,
        "model_poll_s": 0.0,
        "web_port": None,
    })
    return with_overrides(settings, topics=topics, stages=stages, scoring_model=Path(model_file),
                          data_dir=Path(settings.data_dir) / "replay" / name)


def replay_topic_specs(replay: Settings) -> list[TopicSpec]:
    """What a replay needs on the broker: the live source (checked, never created), its outputs and
    its tables' changelogs."""
    base = topic_specs(replay)
    wanted = [s for s in base if s.logical in ("pixel_events", *OUTPUTS)]
    return wanted + changelog_specs(replay, base)


@dataclass(frozen=True)
class ReplayRange:
    """The offsets of ``pixel-events`` a replay applies: ``start[p] <= offset < stop[p]``."""
    start: Mapping[int, int]
    stop: Mapping[int, int]

    @property
    def records(self) -> int:
        return sum(max(0, self.stop[p] - self.start[p]) for p in self.start)

    def contains(self, partition: int, offset: int) -> bool:
        return self.start.get(partition, 0) <= offset < self.stop.get(partition, 0)

    def done(self, progress: Mapping[int, int | None]) -> bool:
        """Every partition applied up to its stop (``progress``: last offset applied per partition)."""
        for p, stop in self.stop.items():
            if stop <= self.start[p]:
                continue
            last = progress.get(p)
            if last is None or last < stop - 1:
                return False
        return True

    def applied(self, progress: Mapping[int, int | None]) -> int:
        """Records of the range applied so far."""
        total = 0
        for p, start in self.start.items():
            last = progress.get(p)
            if last is not None:
                total += max(0, min(last + 1, self.stop[p]) - start)
        return total


def range_from_offsets(partitions: list[int], since: Mapping[int, Any], until: Mapping[int, Any] | None,
                       ends: Mapping[int, int]) -> ReplayRange:
    """The range from ``offsets_for_times`` answers (None: no record at or after that time, so
    the partition's end) and the end offsets when the command started."""
    start: dict[int, int] = {}
    stop: dict[int, int] = {}
    for p in partitions:
        s = since.get(p)
        start[p] = int(s.offset) if s is not None else ends[p]
        if until is None:
            stop[p] = ends[p]
        else:
            u = until.get(p)
            stop[p] = int(u.offset) if u is not None else ends[p]
        stop[p] = max(stop[p], start[p])
    return ReplayRange(start, stop)


def find_range(settings: Settings, since_ms: int, until_ms: int | None) -> ReplayRange:
    """Ask the broker for the offsets of ``pixel-events`` at ``since_ms`` and ``until_ms``."""
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topics.pixel_events
    consumer = KafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False, group_id=None)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            raise ReplayError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = {tp.partition: int(o) for tp, o in consumer.end_offsets(tps).items()}
        since = {tp.partition: o for tp, o in consumer.offsets_for_times({tp: since_ms for tp in tps}).items()}
        until = None
        if until_ms is not None:
            until = {tp.partition: o for tp, o in consumer.offsets_for_times({tp: until_ms for tp in tps}).items()}
        return range_from_offsets(partitions, since, until, ends)
    finally:
        consumer.close()


def commit_start(replay: Settings, rng: ReplayRange) -> None:
    """Commit the range's start offsets for the replay's (new) consumer group, so its consumer
    begins there instead of at the log start."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic = replay.topics.pixel_events
    consumer = KafkaConsumer(**replay.kafka.client_options(), group_id=replay.stages.app_id,
                             enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in rng.start.items()})
    finally:
        consumer.close()


@dataclass
class FirstRecord:
    at: float | None = None   # time.monotonic() when the first record of the range was handed over


def bounded(handler: Handler, rng: ReplayRange, first: FirstRecord | None = None) -> Handler:
    """``handler`` for records inside the range; a record outside it changes nothing and sends
    nothing (the live topic keeps growing while a replay runs)."""

    async def within(partition: int, offset: int, value: bytes, states: StateView) -> HandlerResult:
        if not rng.contains(partition, offset):
            return HandlerResult()
        if first is not None and first.at is None:
            first.at = time.monotonic()
        return await handler(partition, offset, value, states)

    return within


@dataclass
class ReplaySummary:
    name: str
    model_version: str
    model_digest: str
    records: int = 0
    events: int = 0
    lead_scores: int = 0
    leads: int = 0
    bad_rows: int = 0
    seconds: float = 0.0          # first record applied to the last output acknowledged
    wall_seconds: float = 0.0     # the whole command, worker start-up included
    cpu_seconds: float = 0.0      # CPU time of this process (all threads): a figure a busy machine skews less
    topics: dict[str, str] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_version": self.model_version, "model_digest": self.model_digest,
                "records": self.records, "events": self.events, "lead_scores": self.lead_scores,
                "leads": self.leads, "bad_rows": self.bad_rows, "seconds": round(self.seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "events_per_s": round(self.events_per_s, 1),
                "events_per_cpu_s": round(self.events / self.cpu_seconds, 1) if self.cpu_seconds else 0.0,
                "topics": dict(self.topics)}

    def text(self) -> str:
        return (f"replay {self.name}: {self.events:,} events in {self.records:,} records, "
                f"{self.lead_scores:,} lead scores, {self.leads:,} qualified leads, {self.bad_rows:,} bad rows; "
                f"{self.events_per_s:,.0f} events/s ({self.seconds:.1f} s applying, {self.wall_seconds:.1f} s in all, "
                f"{self.cpu_seconds:.1f} s of CPU)"
                f"\n  model {self.model_version} ({self.model_digest})\n  outputs: "
                + ", ".join(self.topics[k] for k in ("qualified_leads", "lead_scores", "visits", "bad_events")))


def _metric_sum(name: str, **labels: str) -> float:
    """Sum of a counter's samples in this process (``name`` without ``_total``), filtered by labels."""
    from prometheus_client import REGISTRY
    total = 0.0
    for family in REGISTRY.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_total" and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def run_replay(settings: Settings, model_file: Path, since_ms: int, until_ms: int | None = None,
               name: str | None = None, progress: bool = True,
               on_done: Callable[[ReplaySummary], None] | None = None) -> ReplaySummary | None:
    """Run a replay to its end (blocks); returns its summary, or None when it was interrupted.

    ``on_done`` is called with the summary as soon as every output is acknowledged, before the
    worker stops (a worker whose stop hangs is ended after 20 s)."""
    from kafka.admin import KafkaAdminClient

    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    name = validate_name(name or default_name(now_ms))
    if until_ms is not None and until_ms <= since_ms:
        raise ReplayError("--until must be after --since")
    if not Path(model_file).is_file():
        raise ReplayError(f"no such model file: {model_file}")
    try:
        replay = replay_settings(settings, name, Path(model_file), since_ms)
    except SettingsError as exc:  # names the model file's bad key paths
        raise ReplayError(str(exc)) from None
    model = replay.load_scoring_model()
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        taken = {replay.topics.qualified_leads, replay.topics.lead_scores} & set(admin.list_topics())
    finally:
        admin.close()
    if taken:
        raise ReplayError(f"replay name {name!r} was used before ({', '.join(sorted(taken))} exist): "
                          "choose another --name")
    rng = find_range(settings, since_ms, until_ms)
    try:
        create_topics(replay, replay_topic_specs(replay))
    except RuntimeError as exc:
        raise ReplayError(str(exc)) from None
    commit_start(replay, rng)

    from ..stages.main import create_worker_app
    app, stages = create_worker_app(replay)
    visitor = next(s for s in stages if s.name == "visitor")
    account = next(s for s in stages if s.name == "account")
    first = FirstRecord()
    visitor.runner.handler = bounded(visitor.runner.handler, rng, first)
    summary = ReplaySummary(name, model.version, model.digest, records=rng.records,
                            topics={k: replay.topics.name(k) for k in OUTPUTS})
    monitor = _Monitor(replay, rng, visitor, account, summary, progress, started, on_done, first)
    app.timer(1.0, name="replay-progress")(monitor.tick)

    from ..stages.worker import run_worker
    try:
        with monitor:
            # stdout carries only the summary (Faust's spinner goes to stderr with the progress bar)
            run_worker(app, loglevel="warn" if settings.log_level != "debug" else "debug", stdout=sys.stderr)
    except SystemExit:
        pass
    return summary if monitor.finished else None


class _Monitor:
    """Progress bar and the stop: when the visitor stage applied the whole range and the account
    stage every visits record it produced, the summary is made and the worker told to stop."""

    def __init__(self, replay: Settings, rng: ReplayRange, visitor: Any, account: Any, summary: ReplaySummary,
                 show: bool, started: float, on_done: Callable[[ReplaySummary], None] | None,
                 first: FirstRecord) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.replay, self.rng, self.visitor, self.account = replay, rng, visitor, account
        self.summary, self.started, self.on_done = summary, started, on_done
        self.progress = Progress(TextColumn("replay [bold]{task.fields[name]}[/]"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("records  {task.fields[events]:,} events  "
                                                                  "{task.fields[rate]:,.0f} events/s  {task.fields[stage]}"),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 console=Console(stderr=True), disable=not show, refresh_per_second=4)
        self.task = self.progress.add_task("replay", total=rng.records or 1, name=summary.name, events=0, rate=0.0,
                                           stage="starting")
        self.first = first
        self.visits_end: dict[int, int] | None = None
        self.finished = False
        self._consumer: Any = None

    def __enter__(self) -> "_Monitor":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def _events(self) -> int:
        return int(_metric_sum("leadstream_stage_events", stage="visitor"))

    async def _end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        if self._consumer is None:
            opts = self.replay.kafka.client_options()
            self._consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **opts)
            await self._consumer.start()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: int(o) for tp, o in (await self._consumer.end_offsets(tps)).items()}

    async def tick(self) -> None:
        if self.finished:
            return
        now = time.monotonic()
        progress = {p: self.visitor.runner.progress(p) for p in self.rng.start}
        applied = self.rng.applied(progress)
        events = self._events()
        first = self.first.at
        rate = events / (now - first) if first is not None and now > first else 0.0
        stage = "visitor stage" if first is not None else "starting"
        if self.rng.done(progress):
            if self.visits_end is None:  # every visits record of the range is acknowledged by now
                self.visits_end = await self._end_offsets(self.replay.topics.visits, self.account.partitions)
            stage = "account stage"
            done = all(end == 0 or _at_least(self.account.runner.progress(p), end - 1)
                       for p, end in self.visits_end.items())
            if done:
                await self._finish(events, now)
                stage = "done"
        self.progress.update(self.task, completed=applied, events=events, rate=rate, stage=stage)

    async def _finish(self, events: int, now: float) -> None:
        s = self.summary
        s.events = events
        # from the first record handed to the visitor stage to the last the account stage applied
        last = max(getattr(self.account.runner, "last_activity", {}).values(), default=now)
        s.seconds = max(0.0, last - (self.first.at if self.first.at is not None else last))
        s.wall_seconds = now - self.started
        s.cpu_seconds = time.process_time()
        ends = await self._end_offsets(self.replay.topics.qualified_leads,
                                       _partitions(self.replay, "qualified_leads"))
        s.leads = sum(ends.values())
        s.lead_scores = sum((await self._end_offsets(self.replay.topics.lead_scores,
                                                     _partitions(self.replay, "lead_scores"))).values())
        s.bad_rows = sum((await self._end_offsets(self.replay.topics.bad_events,
                                                  _partitions(self.replay, "bad_events"))).values())
        await self._consumer.stop()
        self.finished = True
        self.progress.update(self.task, completed=self.rng.records or 1, stage="done")
        self.progress.stop()
        if self.on_done is not None:
            self.on_done(s)
        os.kill(os.getpid(), signal.SIGTERM)  # the worker's own graceful stop


def _partitions(settings: Settings, logical: str) -> int:
    return next(s.partitions for s in topic_specs(settings) if s.logical == logical)


def _at_least(last: int | None, offset: int) -> bool:
    return last is not None and last >= offset
