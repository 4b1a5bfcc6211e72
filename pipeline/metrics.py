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
