"""The metrics catalogue: every Prometheus metric of every Leadstream process, in one place.

Names follow Prometheus conventions (``leadstream_`` prefix, ``_total`` for
counters, base units such as ``_seconds`` and ``_bytes``). Each process serves
the default registry at ``/metrics``, holding only its own metrics
(:func:`serve_only`): a worker never exports the collector's gauges, whose
default values would read as "broker down".
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from .core.company import confidence_tier
from .core.identity import VERIFIED_SOURCES
from .core.model import CompanyResolution, PersonResolution

#: The metric name prefix that marks each process's own metrics; the worker owns the rest.
PROCESS_PREFIXES = {"collector": "leadstream_collector_", "sinks": "leadstream_sink_", "leads": "leadstream_leads_"}
#: Metrics every process that consumes a topic or uses Redis exports about itself (``pipeline.observe``).
SHARED_PREFIXES = ("leadstream_consumer_", "leadstream_dependency_")

# --- collector ------------------------------------------------------------------
COLLECTOR_REQUESTS = Counter(
    "leadstream_collector_requests_total", "HTTP requests answered by the collector.",
    ["endpoint", "status"])
COLLECTOR_EVENTS = Counter(
    "leadstream_collector_events_total", "Tracker events accepted and written to pixel-events.", ["site"])
COLLECTOR_BAD_ROWS = Counter(
    "leadstream_collector_bad_rows_total", "Bad rows the collector wrote, by failure type.", ["failure_type"])
COLLECTOR_REQUEST_SECONDS = Histogram(
    "leadstream_collector_request_duration_seconds", "Time from request received to answer, by endpoint.",
    ["endpoint"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
COLLECTOR_RECORD_PAYLOADS = Histogram(
    "leadstream_collector_record_payloads", "HTTP requests carried per pixel-events record.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
COLLECTOR_BROKER_UP = Gauge(
    "leadstream_collector_broker_up", "1 while the collector can write to the broker, else 0.",
    multiprocess_mode="livemin")
COLLECTOR_PENDING = Gauge(
    "leadstream_collector_pending_requests", "Requests waiting for the broker's acknowledgement.",
    multiprocess_mode="livesum")
COLLECTOR_CONSENT = Counter(
    "leadstream_collector_consent_requests_total",
    "Requests whose privacy signal the site's policy honoured, by signal (gpc, dnt, anonymous_header) and "
    "action (anonymize, drop). Dropped requests are recorded here only, never written anywhere.",
    ["site", "signal", "action"])
COLLECTOR_RATE_LIMITED = Counter(
    "leadstream_collector_rate_limited_total",
    "Requests answered 429 by the collector's rate limits, by scope (ip: per client IP, site: per site) and "
    "site (empty for the per-IP limit, checked before the site is known).", ["scope", "site"])

# --- stream stages ----------------------------------------------------------------
STAGE_RECORDS = Counter(
    "leadstream_stage_records_total", "Input records applied by a stage (replayed records skipped not included).",
    ["stage"])
STAGE_EVENTS = Counter(
    "leadstream_stage_events_total", "Events or updates a stage handled, by outcome "
    "(processed, duplicate, late, anonymous, bot, bad, evicted, erased).", ["stage", "outcome"])
STAGE_BATCH_SIZE = Histogram(
    "leadstream_stage_record_events", "Events (visitor stage) or updates (account stage) carried per input record.",
    ["stage"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
STAGE_RECORD_SECONDS = Histogram(
    "leadstream_stage_record_duration_seconds", "Time a stage's handler took for one input record (its outputs "
    "are sent with its group, see leadstream_stage_group_duration_seconds).",
    ["stage"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
STAGE_GROUP_RECORDS = Histogram(
    "leadstream_stage_group_records", "Input records per commit group (applied, outputs acknowledged together, "
    "then state written).", ["stage"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
STAGE_GROUP_SECONDS = Histogram(
    "leadstream_stage_group_duration_seconds", "Time to apply one commit group: handlers, outputs acknowledged, "
    "state written.", ["stage"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
STAGE_REPLAYED = Counter(
    "leadstream_stage_replayed_records_total", "Records skipped because their offset was already applied "
    "(after a crash or rebalance).", ["stage"])
STAGE_GAPS = Counter(
    "leadstream_stage_gap_records_total", "Records the consumer skipped that the stage re-read and applied.",
    ["stage"])
STAGE_STALLS = Counter(
    "leadstream_stage_stalls_total", "Partitions found with records waiting that the consumer no longer "
    "delivered, re-seeked by the stall watchdog.", ["stage"])
STAGE_DEPENDENCY_RETRIES = Counter(
    "leadstream_stage_dependency_retries_total", "Tries of a record that failed because Redis or the broker was "
    "unreachable (the record is retried with backoff, never skipped).", ["stage"])
STAGE_WAITING = Gauge(
    "leadstream_stage_waiting_seconds", "How long the stage has been waiting for an unreachable Redis or broker "
    "(0 while it is not waiting).", ["stage"])
WORKER_REBALANCES = Counter(
    "leadstream_worker_rebalances_total", "Partition assignments this worker received (one per consumer-group "
    "rebalance).")
STAGE_BAD_ROWS = Counter(
    "leadstream_stage_bad_rows_total", "Bad rows a stage wrote, by failure type.", ["stage", "failure_type"])
BOTS = Counter("leadstream_bots_total", "Visitor batches flagged as bots, by reason.", ["reason"])
NETWORK_CLASSES = Counter(
    "leadstream_network_class_total", "Visits by network class of the client IP.", ["network_class"])
IDENTITY_OPS = Counter("leadstream_identity_ops_total", "Identity-graph operations applied, by type.", ["op"])
FILTERED = Counter(
    "leadstream_filtered_total", "Account evaluations a filter stopped, by filter.", ["site", "filter"])
LEADS = Counter("leadstream_qualified_leads_total", "Qualified leads emitted, by site and tier.", ["site", "tier"])
LEAD_SCORES = Counter("leadstream_lead_scores_total", "lead-scores updates emitted.", ["site"])
STAGE_EVENT_TIME_LAG = Gauge(
    "leadstream_stage_event_time_lag_seconds", "Now minus the newest event time a stage applied (visitor: the "
    "newest tracker event, account: the newest visit), from this worker's partitions; a clock-skewed event time "
    "in the future counts as now.", ["stage"])
OPEN_SESSIONS = Gauge(
    "leadstream_visitor_open_sessions", "Visitors in this worker's visitor state whose session is open: their last "
    "event is within the site's session gap of now (counted every metrics_interval_s).", ["site"])
STATE_KEYS = Gauge(
    "leadstream_state_keys", "Keys in a stage's table held by this worker (progress markers left out).", ["table"])
STATE_BYTES = Gauge(
    "leadstream_state_bytes", "JSON bytes of a stage's table values held by this worker, estimated from a sample "
    "of values (mean size times keys).", ["table"])
COMPANY_RESOLUTIONS = Counter(
    "leadstream_company_resolutions_total", "Visitors resolved by the visitor stage (one per visitor and record), "
    "by the source of the company's strongest evidence (ip_range, ip_org, identity, asn_org; none: no company) "
    "and confidence tier (high, medium, low, none).", ["source", "confidence"])
PERSON_RESOLUTIONS = Counter(
    "leadstream_person_resolutions_total", "Visitors resolved by the visitor stage (one per visitor and record), "
    "by the source of the identity link to their person (identify, login, form, import, email_click, server; "
    "none: anonymous) and its trust (verified, claimed, none).", ["source", "trust"])
SCORE_BUCKETS = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
FIT_SCORES = Histogram(
    "leadstream_account_fit_score", "Fit score (0-100) of each lead-scores update, by site.", ["site"],
    buckets=SCORE_BUCKETS)
INTENT_SCORES = Histogram(
    "leadstream_account_intent_score", "Intent score (0-100) of each lead-scores update, by site.", ["site"],
    buckets=SCORE_BUCKETS)

# --- the leads view and API (``leadstream leads serve``) ----------------------------------------------
LEADS_VIEW_WRITES = Counter(
    "leadstream_leads_view_writes_total", "Account documents the leads view updater wrote from lead-scores.")

# --- shared: every process that consumes a topic or reaches Redis or the broker (``pipeline.observe``) ----
CONSUMER_LAG = Gauge(
    "leadstream_consumer_lag_records", "Records of a partition its consumer has not processed yet: the high "
    "watermark minus the next offset to process (worker stages: the next record to apply, from the stage's "
    "progress; sinks and the leads view: the group's committed offset).", ["consumer", "topic", "partition"])
DEPENDENCY_UP = Gauge(
    "leadstream_dependency_up", "1 when the last health probe of a dependency (redis, broker) answered, else 0 "
    "(probed every metrics_interval_s).", ["dependency"])
DEPENDENCY_PING = Gauge(
    "leadstream_dependency_ping_seconds", "Round-trip time of the last health probe of a dependency that answered "
    "(Redis PING, broker metadata request).", ["dependency"])
DEPENDENCY_ERRORS = Counter(
    "leadstream_dependency_errors_total", "Health probes of a dependency that failed or timed out.", ["dependency"])

# --- sinks (``leadstream sinks``; label sink = <site>/<name>) ----------------------------------------
SINK_DELIVERED = Counter(
    "leadstream_sink_delivered_total", "Leads a sink delivered (the receiver acknowledged them).", ["sink", "type"])
SINK_RETRIED = Counter(
    "leadstream_sink_retried_total", "Failed attempts scheduled for a later attempt (durably, in Redis).",
    ["sink", "type"])
SINK_FAILED = Counter(
    "leadstream_sink_failed_attempts_total", "Delivery attempts that failed, retried or not.", ["sink", "type"])
SINK_DEAD_LETTERED = Counter(
    "leadstream_sink_dead_lettered_total", "Leads sent to sink-dead-letter after the last attempt or a refusal.",
    ["sink", "type"])
SINK_SKIPPED = Counter(
    "leadstream_sink_skipped_total", "Leads a sink did not attempt, by reason (filter name, already_delivered, "
    "dead_lettered).", ["sink", "reason"])
SINK_DELIVERY_SECONDS = Histogram(
    "leadstream_sink_delivery_latency_seconds", "Time from the lead's write to qualified-leads to its delivery.",
    ["sink", "type"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 7200))
SINK_QUEUE_DEPTH = Gauge(
    "leadstream_sink_queue_depth", "Leads waiting in a sink's in-memory queue.", ["sink"])
SINK_SCHEDULED = Gauge(
    "leadstream_sink_scheduled", "Leads waiting in Redis for a sink's later attempt (retries and overflow).",
    ["sink"])
SINK_IN_DOUBT = Counter(
    "leadstream_sink_in_doubt_total", "Deliveries found in flight from an earlier, unrecorded attempt (a crash, a "
    "timeout), by how the sink resolved them: already_applied (read back at the receiver, nothing sent) or sent "
    "(sent again; the webhook with the same webhook-id).", ["sink", "type", "resolution"])
SINK_UNDECODABLE = Counter(
    "leadstream_sink_undecodable_records_total", "qualified-leads records the sinks could not decode (skipped).")
NURTURE_SENT = Counter(
    "leadstream_sink_nurture_sent_total", "Nurture emails accepted by the SMTP server, per email sink and step.",
    ["sink", "step"])
NURTURE_STOPPED = Counter(
    "leadstream_sink_nurture_stopped_total", "Nurture sequences stopped early, per email sink and reason "
    "(reply, unsubscribed, bounce, suppressed, failed).", ["sink", "reason"])
NURTURE_SCHEDULED = Gauge(
    "leadstream_sink_nurture_scheduled", "Active nurture sequences waiting for their next step, per email sink.",
    ["sink"])
NURTURE_INBOUND = Counter(
    "leadstream_sink_nurture_inbound_total", "Inbound mail to a sequence's addresses, per email sink and class "
    "(automatic, unsubscribe, negative, positive, other, bounce).", ["sink", "kind"])


def owner(metric_name: str) -> str:
    """The process that exports ``metric_name``: collector, sinks, leads, worker (the stages), or
    ``shared`` (every process that consumes or probes its dependencies)."""
    if metric_name.startswith(SHARED_PREFIXES):
        return "shared"
    for process, prefix in PROCESS_PREFIXES.items():
        if metric_name.startswith(prefix):
            return process
    return "worker"


def serve_only(process: str, sites: Iterable[str] = ()) -> None:
    """Remove every other process's metrics from the default registry, and create the series of
    every configured site at zero (call once at start-up): a counter whose series appears at its
    first increment hides that increment from ``rate()`` and ``increase()``."""
    keep = (process, "shared") if process in CONSUMING_PROCESSES else (process,)
    for value in _catalogue():
        if owner(value._name) not in keep:
            try:
                REGISTRY.unregister(value)
            except KeyError:
                pass  # already removed
    _site_series(process, sites)


def _site_series(process: str, sites: Iterable[str]) -> None:
    for site in sites:
        if process == "collector":
            COLLECTOR_EVENTS.labels(site)
        elif process == "worker":
            LEAD_SCORES.labels(site)
            for tier in TIERS:
                LEADS.labels(site, tier)


#: The processes that export the shared metrics (the collector consumes nothing and probes the broker itself).
CONSUMING_PROCESSES = ("worker", "sinks", "leads")


# --- recording helpers: what the stages call (one line each), the rules here ------------------------------

class EventTimeLag:
    """The newest event time each stage applied; ``leadstream_stage_event_time_lag_seconds`` is now minus it,
    computed at each scrape (a stage that stops applying shows a growing lag)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.newest_ms: dict[str, int] = {}

    def applied(self, stage: str, event_ms: int) -> None:
        """``stage`` applied an event (or visit) of event time ``event_ms``."""
        newest = self.newest_ms.get(stage)
        if newest is None:
            self.newest_ms[stage] = event_ms
            STAGE_EVENT_TIME_LAG.labels(stage).set_function(lambda: self.lag_s(stage))
        elif event_ms > newest:
            self.newest_ms[stage] = event_ms

    def lag_s(self, stage: str) -> float:
        newest = self.newest_ms.get(stage)
        if newest is None:
            return 0.0
        return max(0.0, self.clock() - newest / 1000)


#: The one tracker of this process (``leadstream_stage_event_time_lag_seconds``).
EVENT_TIME = EventTimeLag()


_CHILDREN: dict[tuple[str, str, str], Any] = {}   # (metric, label, label) -> its series: labels() takes a lock


def _child(metric: Counter, labels: tuple[str, str]) -> Any:
    key = (metric._name, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def record_resolution(company: CompanyResolution, person: PersonResolution) -> None:
    """Count one visitor's company and person resolution by source (``leadstream_*_resolutions_total``)."""
    _child(COMPANY_RESOLUTIONS, company_source(company)).inc()
    _child(PERSON_RESOLUTIONS, person_source(person)).inc()


def company_source(company: CompanyResolution) -> tuple[str, str]:
    """(source of the strongest evidence or ``none``, confidence tier) of a company resolution."""
    if company.company is None or not company.evidence:
        return "none", "none"
    best = max(company.evidence, key=lambda e: e.confidence)  # ties: the earlier source in the waterfall
    return best.source, confidence_tier(company.confidence)


def person_source(person: PersonResolution) -> tuple[str, str]:
    """(identity link source or ``none``, ``verified``/``claimed``/``none``) of a person resolution."""
    if person.person is None or not person.source:
        return "none", "none"
    return person.source, "verified" if person.source in VERIFIED_SOURCES else "claimed"


def record_scores(site: str, fit: float, intent: float) -> None:
    """One lead-scores update's fit and intent (``leadstream_account_{fit,intent}_score``)."""
    FIT_SCORES.labels(site).observe(fit)
    INTENT_SCORES.labels(site).observe(intent)


# --- several processes behind one /metrics (collector.workers > 1) -------------------------------------

def enable_multiprocess(directory: str, process: str = "collector", sites: Iterable[str] = ()) -> None:
    """Make this (forked) process write its metrics to ``directory``, the one every sibling writes to, so that
    a scrape answered by any of them sees all (prometheus-client's multiprocess mode). Call in the child right
    after the fork, before any metric moves: the values of ``process``'s metrics created before it (in the
    parent) are made again, file-backed, and its labelled series are made again (``sites``' at zero)."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    for metric in _catalogue():
        if owner(metric._name) != process:
            continue
        if metric._labelnames:
            with metric._lock:
                metric._metrics.clear()
        else:
            metric._metric_init()  # type: ignore[no-untyped-call]
    _site_series(process, sites)


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when this process is in it."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def exposition() -> bytes:
    """The /metrics page of this process: the default registry, or every sibling's files in multiprocess mode."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _catalogue() -> list[MetricWrapperBase]:
    return [v for v in globals().values() if isinstance(v, MetricWrapperBase)]


#: The lead tiers (HubSpot's grid, ``pipeline.core.qualify.tier_of``).
TIERS = tuple(f"{letter}{digit}" for letter in "ABC" for digit in "123")
