"""The worker: one Faust app running both stages (``leadstream worker``).

    pixel-events ──visitor stage──▶ visits ──account stage──▶ lead-scores, qualified-leads
                        └────────────────┴──────────────────▶ bad-events

Run as many worker processes as there are partitions to share; Faust moves
partitions and their table state between them.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from ..codec import make_codec
from ..settings import Settings
from ..topology import topic_specs
from .account import AccountStage, AccountTopics, RedisQuota
from .app import Stage, add_stage, build_app
from .visitor import IdentityPort, VisitorStage, VisitorTopics

log = logging.getLogger(__name__)


def build_handlers(settings: Settings) -> tuple[VisitorStage, AccountStage]:
    """Both stages' handlers wired to their topics, Redis and GeoIP databases (no Kafka client)."""
    specs = {s.logical: s for s in topic_specs(settings)}
    visits = specs["visits"]
    codec = make_codec(settings.kafka.schema_registry_url)
    model = settings.load_scoring_model()
    geoip = None
    if any(getattr(settings.geoip, f) for f in type(settings.geoip).model_fields):
        from ..enrich.geoip import shared_reader
        geoip = shared_reader(settings.geoip)
    reference = identity = quota = None
    redis_url = settings.redis.url_value
    if redis_url:
        import redis

        from ..enrich.redis_store import ReferenceStore
        reference = ReferenceStore.from_url(redis_url)
        quota = RedisQuota(redis.Redis.from_url(redis_url))
        identity = _identity_store(redis_url)
    else:
        log.warning("redis.url is not set: no company data, identity graph or quota; leads need a company")
    visitor = VisitorStage(settings, codec, VisitorTopics(visits.name, visits.partitions, specs["bad_events"].name),
                           model, geoip, reference, identity)
    account = AccountStage(settings, codec, AccountTopics(
        specs["lead_scores"].name, specs["lead_scores"].partitions, specs["qualified_leads"].name,
        specs["qualified_leads"].partitions, specs["bad_events"].name), model, quota)
    return visitor, account


def create_worker_app(settings: Settings) -> tuple[faust.App, list[Stage]]:
    """The Faust app with both stages (see module doc)."""
    specs = {s.logical: s for s in topic_specs(settings)}
    pixel, visits = specs["pixel_events"], specs["visits"]
    app = build_app(settings, pixel.partitions)
    visitor, account = build_handlers(settings)
    retry = retryable_errors()
    stages = [add_stage(app, settings, "visitor", pixel.name, pixel.partitions, visitor,
                        on_error=visitor.failed, retryable=retry),
              add_stage(app, settings, "account", visits.name, visits.partitions, account,
                        on_error=account.failed, retryable=retry)]
    return app, stages


def retryable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a dependency is unreachable for now: the record is retried, never skipped."""
    import redis.exceptions
    from aiokafka import errors as kafka_errors
    return (ConnectionError, TimeoutError, OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError, kafka_errors.KafkaConnectionError, kafka_errors.KafkaTimeoutError,
            kafka_errors.RequestTimedOutError, kafka_errors.NotLeaderForPartitionError,
            kafka_errors.LeaderNotAvailableError, kafka_errors.NodeNotReadyError)


def _identity_store(redis_url: str) -> IdentityPort | None:
    try:
        from ..enrich.identity_store import IdentityStore
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    store: IdentityPort = IdentityStore.from_url(redis_url)
    return store


def run(settings: Settings) -> None:
    """Serve /metrics and run the worker until SIGTERM/SIGINT (blocks)."""
    from prometheus_client import start_http_server

    from .worker import run_worker
    app, _ = create_worker_app(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    run_worker(app, loglevel=settings.log_level)
