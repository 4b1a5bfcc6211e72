"""The pipeline in one place: topics, keys, schemas and stages in the order data flows.

    browser ─HTTP─▶ collector ─▶ pixel-events ─▶ visitor stage ─▶ visits ─▶ account stage ─▶ qualified-leads ─▶ sinks
                        │         CollectorBatch   (site, visitor)   VisitBatch  (site, account)   QualifiedLead   │
                        │                                                            └─▶ lead-scores ─▶ leads view │
                        └─────────▶ bad-events (BadRow, from every stage)              sink-dead-letter ◀──────────┘

1. ``collector`` (pipeline.collector): HTTP in; one ``CollectorBatch`` record per
   target partition of ``pixel-events`` per linger. The partition of a hit is
   :func:`partition_for` of its :func:`visitor_key` (``site_id|visitor_id``):
   Kafka's murmur2, the same hash the stages' tables use, so every key in a record
   belongs to the record's partition.
2. ``visitor`` stage (pipeline.stages.visitor): reads ``pixel-events``, its table keyed
   by :func:`visitor_key`; writes ``visits`` partitioned by :func:`account_key`.
3. ``account`` stage (pipeline.stages.account): reads ``visits``, its table keyed by
   :func:`account_key`; writes ``lead-scores`` (compacted) and ``qualified-leads``.
   :data:`STAGES` states each stage's source and outputs; the worker
   (pipeline.stages.main) wires the handlers from it.
4. ``sinks`` (pipeline.sinks): read ``qualified-leads``; deliveries that fail for good
   go to ``sink-dead-letter`` (re-driven by ``leadstream sinks retry-dead-letter``).
5. the prospect list (pipeline.leads): reads ``lead-scores`` into a Redis view.

Every stage writes what it cannot handle to ``bad-events`` as a ``BadRow``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from aiokafka.partitioner import murmur2

from .codec import SchemaCatalogue
from .settings import Settings

log = logging.getLogger(__name__)

KEY_SEPARATOR = "|"


@dataclass(frozen=True)
class TopicSpec:
    logical: str        # name in the catalogue and TopicSettings
    name: str           # the topic's actual name (configurable)
    value_schema: str
    key: str
    partitions: int
    retention_ms: int | None
    compacted: bool
    max_message_bytes: int = 1_000_000   # settings.kafka.max_message_bytes

    def config(self) -> dict[str, str]:
        cfg: dict[str, str] = {"max.message.bytes": str(self.max_message_bytes)}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
        return cfg


def topic_specs(settings: Settings, catalogue: SchemaCatalogue | None = None) -> list[TopicSpec]:
    """Every topic of the catalogue in flow order, names and partitions from settings."""
    catalogue = catalogue or SchemaCatalogue()
    specs = []
    for logical, entry in catalogue.topics.items():
        specs.append(TopicSpec(
            logical=logical,
            name=settings.topics.name(logical),
            value_schema=str(entry["value"]),
            key=str(entry["key"]),
            partitions=int(settings.topics.partitions.get(logical, entry["partitions"])),
            retention_ms=entry.get("retention_ms"),
            compacted=bool(entry.get("compacted", False)),
            max_message_bytes=settings.kafka.max_message_bytes,
        ))
    return specs


@dataclass(frozen=True)
class StageSpec:
    """One stage of the worker: the logical topic it reads (its table has that topic's partitions and
    keys) and the logical topics it writes."""
    name: str
    source: str
    outputs: tuple[str, ...]


#: The worker's stages in flow order (the stage <-> topic wiring).
STAGES: tuple[StageSpec, ...] = (
    StageSpec("visitor", "pixel_events", ("visits", "bad_events")),
    StageSpec("account", "visits", ("lead_scores", "qualified_leads", "bad_events")),
)
#: The stages' tables: (stage, logical source topic). Each table's changelog has its source's partitions.
STAGE_TABLES: tuple[tuple[str, str], ...] = tuple((s.name, s.source) for s in STAGES)


@dataclass(frozen=True)
class StageTopics:
    """A stage's topics as configured: its source and its outputs by logical name."""
    stage: StageSpec
    source: TopicSpec
    outputs: dict[str, TopicSpec]


def stage_topics(settings: Settings, specs: Iterable[TopicSpec] | None = None) -> dict[str, StageTopics]:
    """Each stage of :data:`STAGES` with its topics' names and partitions from settings, by stage name."""
    by_logical = {s.logical: s for s in (topic_specs(settings) if specs is None else specs)}
    return {st.name: StageTopics(st, by_logical[st.source], {o: by_logical[o] for o in st.outputs})
            for st in STAGES}


def changelog_topic(app_id: str, stage: str) -> str:
    """The Faust changelog topic of a stage's table (``<app_id>-<stage>-state-changelog``)."""
    return f"{app_id}-{stage}-state-changelog"


def changelog_specs(settings: Settings, specs: Iterable[TopicSpec]) -> list[TopicSpec]:
    """Changelog topics of the stages' tables: compacted, with their source topic's partitions.

    Created with the other topics before any worker starts, so Faust never races its own
    topic creation (it checks a table's changelog against its source topic's partitions).
    """
    by_logical = {s.logical: s for s in specs}
    out = []
    for stage, source in STAGE_TABLES:
        src = by_logical[source]
        out.append(TopicSpec(logical=f"{stage}_changelog", name=changelog_topic(settings.stages.app_id, stage),
                             value_schema="(Faust JSON)", key="table key (JSON)", partitions=src.partitions,
                             retention_ms=None, compacted=True, max_message_bytes=src.max_message_bytes))
    return out


def visitor_key(site_id: str, visitor_id: str | None) -> str:
    """The key that orders one visitor's events: ``site_id|visitor_id`` (``pixel-events``, the visitor table)."""
    return f"{site_id}{KEY_SEPARATOR}{visitor_id or ''}"


def account_key(site_id: str, account: str) -> str:
    """The key of one account: ``site_id|account`` (``visits``, the account table, ``lead-scores``,
    ``qualified-leads``)."""
    return f"{site_id}{KEY_SEPARATOR}{account}"


def split_account_key(key: str) -> tuple[str, str] | None:
    """(site_id, account) of an :func:`account_key`; None when ``key`` is not one."""
    site_id, sep, account = key.partition(KEY_SEPARATOR)
    return (site_id, account) if sep else None


def site_of_key(key: str) -> str:
    """The site id of a :func:`visitor_key` or :func:`account_key`."""
    return key.split(KEY_SEPARATOR, 1)[0]


@lru_cache(maxsize=262_144)
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partition for ``key`` (murmur2 of its UTF-8 bytes), cached per key."""
    digest: int = murmur2(key.encode("utf-8"))  # aiokafka leaves murmur2 unannotated
    return (digest & 0x7FFFFFFF) % partitions


def create_topics(settings: Settings, specs: Iterable[TopicSpec] | None = None, timeout_s: float = 30.0,
                  admin_options: dict[str, Any] | None = None) -> list[str]:
    """Create the missing topics; returns the names created. Idempotent.

    Existing topics are left alone, but a partition count that differs from
    the settings is an error: the collector's partitioning and the stages'
    tables rely on it.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    if specs is None:
        base = topic_specs(settings)
        specs = base + changelog_specs(settings, base)
    specs = list(specs)
    options = admin_options or settings.kafka.client_options()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(**options, request_timeout_ms=int(timeout_s * 1000))
            break
        except Exception as exc:  # broker still starting
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach Kafka at {options.get('bootstrap_servers')}: {exc}") from exc
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        created = []
        for spec in wanted:
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, settings.kafka.replication_factor,
                                              topic_configs=spec.config())])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        names = [s.name for s in specs]
        while True:  # a new topic is usable once every partition has a leader
            described_list = admin.describe_topics(names)
            ready = all(t.get("partitions") and all(p.get("leader_id", -1) >= 0 for p in t["partitions"])
                        for t in described_list)
            if ready or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        described = {t.get("name", t.get("topic")): len(t["partitions"]) for t in described_list}
        for spec in specs:
            have = described.get(spec.name)
            if have is not None and have != spec.partitions:
                raise RuntimeError(f"topic {spec.name} has {have} partitions, settings say {spec.partitions}: "
                                   f"set topics.partitions.{spec.logical} to {have} or recreate the topic")
        if created:
            log.info("created topics: %s", ", ".join(created))
        return created
    finally:
        admin.close()
