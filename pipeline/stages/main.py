"""The worker: one Faust app running both stages (``leadstream worker``).

    pixel-events ──visitor stage──▶ visits ──account stage──▶ lead-scores, qualified-leads
                        └────────────────┴──────────────────▶ bad-events

Run as many worker processes as there are partitions to share; Faust moves
partitions and their table state between them.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import faust

from ..redis_client import async_client
from .. import metrics
from ..codec import make_codec
from ..core.identity import IdentitySnapshot, Identifier
from ..metrics import WORKER_REBALANCES
from ..core.scoring_model import ScoringModel
from ..settings import Settings
from ..topology import stage_topics
from .account import AccountStage, AccountTopics, RedisQuota
from .app import Stage, add_stage, build_app
from .visitor import IdentityPort, VisitorStage, VisitorTopics

log = logging.getLogger(__name__)


def build_handlers(settings: Settings) -> tuple[VisitorStage, AccountStage]:
    """Both stages' handlers wired to their topics, Redis and GeoIP databases (no Kafka client)."""
    wiring = stage_topics(settings)
    v_out, a_in, a_out = wiring["visitor"].outputs, wiring["account"].source, wiring["account"].outputs
    codec = make_codec(settings.kafka.schema_registry_url)
    model = settings.load_scoring_model()
    geoip = None
    if any(getattr(settings.geoip, f) for f in type(settings.geoip).model_fields):
        from ..enrich.geoip import shared_reader
        geoip = shared_reader(settings.geoip)
    reference = identity = quota = None
    redis_url = settings.redis.url_value
    if redis_url:
        # asyncio clients with timeouts: a lookup or a claim awaits Redis and fails after
        # redis.socket_timeout_s (the runner then retries the record), never blocking the loop
        from ..enrich.redis_store import AsyncReferenceStore
        from ..redis_client import async_client
        options = settings.redis.client_options()
        reference = AsyncReferenceStore.from_url(redis_url, **options)
        quota = RedisQuota(async_client(redis_url, **options), settings.stages.quota_prefix)
        identity = _identity_store(redis_url, options)
        if identity is not None and not settings.stages.identity_writes:
            identity = ReadOnlyIdentity(identity)
        if identity is not None:
            from ..enrich.identity_store import GroupPrefetch
            identity = GroupPrefetch(identity)   # one identity load per commit group (VisitorStage.prefetch)
    else:
        log.warning("redis.url is not set: no company data, identity graph or quota; leads need a company")
    retry = retryable_errors()
    visitor = VisitorStage(settings, codec, VisitorTopics(v_out["visits"].name, v_out["visits"].partitions,
                                                          v_out["bad_events"].name,
                                                          wiring["visitor"].source.partitions),
                           model, geoip, reference, identity, retryable=retry)
    account = AccountStage(settings, codec, AccountTopics(
        a_out["lead_scores"].name, a_out["lead_scores"].partitions, a_out["qualified_leads"].name,
        a_out["qualified_leads"].partitions, a_out["bad_events"].name), model, quota, retryable=retry,
        visits_partitions=a_in.partitions)
    return visitor, account


def create_worker_app(settings: Settings) -> tuple[faust.App, list[Stage]]:
    """The Faust app with both stages (see module doc)."""
    wiring = stage_topics(settings)
    pixel, visits = wiring["visitor"].source, wiring["account"].source
    app = build_app(settings, pixel.partitions)
    visitor, account = build_handlers(settings)
    retry = retryable_errors()
    stages = [add_stage(app, settings, "visitor", pixel.name, pixel.partitions, visitor,
                        on_error=visitor.failed, retryable=retry),
              add_stage(app, settings, "account", visits.name, visits.partitions, account,
                        on_error=account.failed, retryable=retry)]
    if settings.stages.model_poll_s > 0 and settings.redis.url_value:
        from ..ops.models import follow_models
        follow_models(app, settings, BothStages(visitor, account))  # `leadstream model promote` without a restart

    @app.on_partitions_assigned.connect
    async def _rebalanced(_app: Any, /, *_args: Any, **_kw: Any) -> None:
        WORKER_REBALANCES.inc()

    return app, stages


class BothStages:
    """Both stages switch model together: the visitor's session gap and the account's bounces stay one value."""

    def __init__(self, visitor: VisitorStage, account: AccountStage) -> None:
        self.visitor = visitor
        self.account = account

    def use_model(self, model: ScoringModel) -> None:
        self.visitor.use_model(model)
        self.account.use_model(model)


def retryable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a dependency is unreachable for now: the record is retried, never skipped."""
    import redis.exceptions
    from aiokafka import errors as kafka_errors
    return (ConnectionError, TimeoutError, OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError, redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
            kafka_errors.KafkaConnectionError, kafka_errors.KafkaTimeoutError,
            kafka_errors.RequestTimedOutError, kafka_errors.NotLeaderForPartitionError,
            kafka_errors.LeaderNotAvailableError, kafka_errors.NodeNotReadyError)


def _identity_store(redis_url: str, options: dict[str, Any]) -> IdentityPort | None:
    try:
        from ..enrich.identity_store import IdentityStore
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    store: IdentityPort = IdentityStore(async_client(redis_url, **options))
    return store


class ReadOnlyIdentity:
    """The identity graph read as it is, never written (a replay must not change the live graph)."""

    def __init__(self, inner: IdentityPort) -> None:
        self.inner = inner

    async def load_snapshot(self, site_id: str, identifiers: Sequence[Identifier]) -> IdentitySnapshot:
        return await self.inner.load_snapshot(site_id, identifiers)

    async def apply(self, site_id: str, ops: Sequence[Any]) -> None:
        return None


def run(settings: Settings) -> None:
    """Serve /metrics and run the worker until SIGTERM/SIGINT (blocks)."""
    from prometheus_client import start_http_server

    from .worker import run_worker
    from ..observe import watch_worker

    app, stages = create_worker_app(settings)
    metrics.serve_only("worker", [s.site_id for s in settings.sites])
    watch_worker(app, settings, stages)  # lag, Redis and broker health, state size (every metrics_interval_s)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    run_worker(app, loglevel=settings.log_level)
