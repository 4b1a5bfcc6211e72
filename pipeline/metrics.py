"""The metrics catalogue: every Prometheus metric of every Leadstream process, in one place.

Names follow Prometheus conventions (``leadstream_`` prefix, ``_total`` for
counters, base units such as ``_seconds`` and ``_bytes``). Each process serves
the default registry at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
