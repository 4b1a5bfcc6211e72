"""``leadstream leads serve``: the view updater, the not-yet-seen seeding and the API, one process.

Several copies may run: they share the ``<app_id>-leads`` consumer group (each updates the
accounts of its partitions) and all serve the whole view from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn

from .. import metrics
from ..observe import group_watch, run_periodically
from ..settings import Settings
from .api import create_api
from .store import LeadsView
from .updater import ViewUpdater, seed_not_seen

__all__ = ["serve", "run_service"]

log = logging.getLogger(__name__)


async def _seed_forever(view: LeadsView, settings: Settings, updater: ViewUpdater, stop: asyncio.Event) -> None:
    model = settings.load_scoring_model()
    while not stop.is_set():
        try:
            added = await seed_not_seen(view, settings, model)
            if added:
                log.info("leads view: %d imported ICP companies listed as not yet seen", added)
        except Exception:  # noqa: BLE001 - a failed pass is retried on the next interval
            log.exception("leads view: listing imported companies failed")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.leads.seed_interval_s)


async def run_service(settings: Settings, stop: asyncio.Event) -> None:
    if settings.redis.url_value is None:
        raise SystemExit("leadstream leads needs redis.url (the view lives in Redis)")
    view = LeadsView.from_url(settings.redis.url_value)
    model = settings.load_scoring_model()
    updater = ViewUpdater(settings, model, view)
    server = uvicorn.Server(uvicorn.Config(create_api(settings, view), host=settings.leads.host,
                                           port=settings.leads.port, log_level="warning", lifespan="off"))
    watch, closers = group_watch(settings, "leads", updater.group_id, updater.topic)
    tasks = [asyncio.create_task(updater.run(stop), name="leads-updater"),
             asyncio.create_task(_seed_forever(view, settings, updater, stop), name="leads-seed"),
             asyncio.create_task(server.serve(), name="leads-api"),
             asyncio.create_task(run_periodically(watch(), settings.metrics_interval_s, stop), name="leads-metrics")]
    log.info("leads API on http://%s:%d", settings.leads.host, settings.leads.port)
    try:
        done, _ = await asyncio.wait([asyncio.create_task(stop.wait()), *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in tasks and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for close in closers():
            await close()
        await view.aclose()


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT (blocks)."""
    metrics.serve_only("leads")
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_service(settings, stop)

    asyncio.run(main())
