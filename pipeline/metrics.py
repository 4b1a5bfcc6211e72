"""The metrics catalogue: every Prometheus metric of every Leadstream process, in one place.

Names follow Prometheus conventions (``leadstream_`` prefix, ``_total`` for
counters, base units such as ``_seconds`` and ``_bytes``). Each process serves
the default registry at ``/metrics``, holding only its own metrics
(:func:`serve_only`): a worker never exports the collector's gauges, whose
default values would read as "broker down".
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

#: The metric name prefix that marks each process's own metrics; the worker owns the rest.
PROCESS_PREFIXES = {"collector": "leadstream_collector_", "sinks": "leadstream_sink_"}

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
    "leadstream_collector_broker_up", "1 while the collector can write to the broker, else 0.")
COLLECTOR_PENDING = Gauge(
    "leadstream_collector_pending_requests", "Requests waiting for the broker's acknowledgement.")
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
    "(processed, duplicate, late, anonymous, bot, bad).", ["stage", "outcome"])
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
    """The process that exports ``metric_name``: collector, sinks, or worker (the stages)."""
    for process, prefix in PROCESS_PREFIXES.items():
        if metric_name.startswith(prefix):
            return process
    return "worker"


def serve_only(process: str, sites: Iterable[str] = ()) -> None:
    """Remove every other process's metrics from the default registry, and create the series of
    every configured site at zero (call once at start-up): a counter whose series appears at its
    first increment hides that increment from ``rate()`` and ``increase()``."""
    for value in list(globals().values()):
        if isinstance(value, MetricWrapperBase) and owner(value._name) != process:
            try:
                REGISTRY.unregister(value)
            except KeyError:
                pass  # already removed
    for site in sites:
        if process == "collector":
            COLLECTOR_EVENTS.labels(site)
        elif process == "worker":
            LEAD_SCORES.labels(site)
            for tier in TIERS:
                LEADS.labels(site, tier)


#: The lead tiers (HubSpot's grid, ``pipeline.core.qualify.tier_of``).
TIERS = tuple(f"{letter}{digit}" for letter in "ABC" for digit in "123")
