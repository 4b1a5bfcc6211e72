"""The failure types of bad rows: one enum for the code and the ``BadRow`` schema (``FailureType``).

``tests/unit/test_bad_rows.py`` checks that these members are exactly the
schema's symbols, in order, and that every one is emitted somewhere.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["FailureType"]


class FailureType(str, Enum):
    """Why input could not go on (``BadRow.failure_type``)."""
    malformed_request = "malformed_request"    # collector: the body or query cannot be decoded
    protocol_violation = "protocol_violation"  # collector: a required tracker field is missing or wrong
    schema_violation = "schema_violation"      # an event or record does not fit its schema / the core's rules
    size_violation = "size_violation"          # too large: a request, a field, or an output nothing can split
    site_violation = "site_violation"          # a site id that is not configured
    origin_violation = "origin_violation"      # an Origin the site does not allow
    consent_dropped = "consent_dropped"        # a consent signal set to drop: the hit is recorded without payload
    enrichment_failure = "enrichment_failure"  # a visitor's enrichment (GeoIP, identity) raised
    processing_failure = "processing_failure"  # one visitor's or account's processing raised (a bug)
    unknown = "unknown"                        # a record failed outside every per-visitor boundary (last resort)
    late_event = "late_event"                  # older than the visitor's open session by more than one gap
