"""The Faust app and the plumbing every stage shares: thin agents around a RecordRunner.

A stage is declared with :func:`add_stage`: its source topic, its table and a
handler (pure function of a record and the current states, see
``runtime.Handler``). The agent only moves messages: it reads raw records in
commit groups (``stages.commit_records`` / ``stages.commit_ms``) and hands each
group to the stage's :class:`~pipeline.stages.runtime.RecordRunner`. What it
needs from Faust beyond the public API is in :mod:`.faust_adapter`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import faust

from ..settings import Settings
from ..topology import changelog_topic
from .faust_adapter import EventScope, commit_groups, faust_sender, replace_partition_state
from .runtime import GapReader, Handler, RecordRunner
from .watchdog import StallWatchdog

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    source_topic: str
    partitions: int
    table: Any
    runner: RecordRunner
    agent: Any = None


def build_app(settings: Settings, partitions: int) -> faust.App:
    """A Faust app configured from settings. ``partitions``: the source topics' count (tables match it)."""
    if not settings.kafka.bootstrap_servers:
        raise ValueError("kafka.bootstrap_servers is not set")
    brokers = ";".join(f"kafka://{h.strip()}" for h in settings.kafka.bootstrap_servers.split(",") if h.strip())
    datadir = Path(settings.data_dir).resolve() / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    stage = settings.stages
    options: dict[str, Any] = dict(
        broker=brokers,
        store="rocksdb://" if stage.store == "rocksdb" else "memory://",
        datadir=str(datadir),
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=settings.kafka.max_message_bytes,
        broker_commit_interval=stage.commit_interval_s,
        broker_session_timeout=stage.session_timeout_s,
        broker_heartbeat_interval=stage.heartbeat_interval_s,
        broker_client_id=settings.kafka.client_id,
        table_standby_replicas=stage.standby_replicas,
        stream_wait_empty=True,
        web_enabled=stage.web_port is not None,
        web_port=stage.web_port or 6066,
        web_host="127.0.0.1",
        table_cleanup_interval=timedelta(minutes=5).total_seconds(),
    )
    if settings.kafka.sasl_mechanism:
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka.sasl_username or "",
            password=settings.kafka.sasl_password.get_secret_value() if settings.kafka.sasl_password else "",
            mechanism=settings.kafka.sasl_mechanism,
            ssl_context=settings.kafka.client_options().get("ssl_context"),
        )
    return faust.App(stage.app_id, **options)


def add_stage(app: faust.App, settings: Settings, name: str, source_topic: str, partitions: int,
              handler: Handler, on_error: Any = None,
              retryable: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)) -> Stage:
    """Register an agent on ``source_topic`` that applies each record through a RecordRunner.

    The stage's table (``<name>-state``) has the source topic's partition
    count: its changelog is written to the partition of the record being
    processed, which holds only when every key of a record maps there.
    """
    topic = app.topic(source_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=partitions)
    table = app.Table(f"{name}-state", default=None, partitions=partitions)
    gap_reader = None
    if settings.stages.gap_repair:
        gap_reader = GapReader(source_topic, settings.stages.app_id, _client_options(settings),
                               start_at_ms=settings.stages.source_start_ms)
    group = settings.stages.commit_records
    runner = RecordRunner(table, handler, faust_sender(app), gap_reader, name=name, retryable=retryable,
                          on_error=on_error, max_group=group, max_backoff_s=settings.stages.retry_backoff_max_s)
    stage = Stage(name, source_topic, partitions, table, runner)
    within_s = settings.stages.commit_ms / 1000
    scope = EventScope()
    runner.write_scope = scope.of

    async def agent(stream: Any) -> None:
        try:
            async for records in commit_groups(stream, group, within_s, scope):
                await runner.handle_group(records)
        except asyncio.CancelledError:
            raise
        except BaseException:
            # Faust would leave the worker running with a dead agent and its partitions
            # stalled. Exit instead: the supervisor restarts it and the crash-safety
            # rules (offset guards, outputs before state) make the restart lossless.
            log.critical("%s agent crashed; exiting so the worker is restarted", name, exc_info=True)
            logging.shutdown()
            os._exit(70)

    agent.__name__ = f"{name}_agent"
    stage.agent = app.agent(topic, name=f"{name}-agent")(agent)

    if gap_reader is not None:
        changelog = changelog_topic(settings.stages.app_id, name)

        async def reload(partition: int) -> int:
            """Replace the table's state for ``partition`` with its changelog's latest values."""
            # Our own writes for a partition were flushed when it was revoked (Faust commits then).
            values = await asyncio.wait_for(gap_reader.last_values(changelog, partition), 120)
            return replace_partition_state(table, partition, values)

        runner.reload = reload

        watchdog: StallWatchdog | None = None
        if settings.stages.stall_after_s > 0:
            watchdog = StallWatchdog(app, runner, source_topic, settings.stages.stall_after_s,
                                     changelog_topic=changelog)
        every_s = max(1.0, settings.stages.stall_after_s / 3)

        async def watch(dog: StallWatchdog) -> None:
            """The watchdog's passes. Not a Faust timer: those start only once the first table recovery
            is complete, and a recovery that never completes is one of the stalls it repairs."""
            while not app.should_stop:
                await app.sleep(every_s)
                try:
                    await dog.check()
                except Exception:  # the broker may be away: the next pass tries again
                    log.warning("%s: stall check failed", name, exc_info=True)

        @app.on_partitions_assigned.connect
        async def _assigned(_app: Any, assigned: Any = (), /, *_args: Any, **_kw: Any) -> None:
            nonlocal watchdog
            runner.assigned(tp.partition for tp in assigned if tp.topic == source_topic)
            if watchdog is not None:   # the first assignment starts the passes (before any recovery)
                app.add_future(watch(watchdog))
                watchdog = None

        @app.on_before_shutdown.connect
        async def _stop_reader(_app: Any, /, *_args: Any, **_kw: Any) -> None:
            await gap_reader.stop()
    return stage


def _client_options(settings: Settings) -> dict[str, Any]:
    opts = settings.kafka.client_options()
    opts.pop("client_id", None)
    return {**opts, "client_id": f"{settings.kafka.client_id}-gap-reader"}
