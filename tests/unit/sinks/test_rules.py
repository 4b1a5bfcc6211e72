"""Which leads a sink takes, and the retry schedule."""

from __future__ import annotations

import json
import random

import pytest

from pipeline.codec import schemas_dir
from pipeline.settings import SinkFilter, SinkRetry
from pipeline.sinks.rules import backoff_s, filter_reason, identity_confidence, next_due_s

LEAD = json.loads((schemas_dir() / "examples" / "QualifiedLead" / "v1-brightpath-buyer.json").read_text())


def test_identity_confidence_is_the_persons_when_known_else_the_companys() -> None:
    assert identity_confidence(LEAD) == 0.98
    assert identity_confidence({**LEAD, "person": {"person_id": "p", "confidence": 0.7}}) == 0.7


@pytest.mark.parametrize("rules, reason", [
    (SinkFilter(), None),
    (SinkFilter(min_identity_confidence=0.99), "identity_confidence"),
    (SinkFilter(min_identity_confidence=0.98), None),
    (SinkFilter(min_tier="A1"), "tier"),
    (SinkFilter(min_tier="a2"), None),
    (SinkFilter(min_tier="B3"), None),
    (SinkFilter(countries=["de", "FR"]), "country"),
    (SinkFilter(countries=["us"]), None),
])
def test_filter(rules: SinkFilter, reason: str | None) -> None:
    assert filter_reason(LEAD, rules) == reason


def test_country_filter_refuses_a_lead_without_a_company() -> None:
    assert filter_reason({**LEAD, "company": None}, SinkFilter(countries=["US"])) == "country"


def test_backoff_grows_exponentially_up_to_the_cap_without_jitter() -> None:
    retry = SinkRetry(attempts=6, initial_backoff_s=60, multiplier=4, max_backoff_s=3600, jitter=0)
    assert [backoff_s(n, retry) for n in range(1, 6)] == [60, 240, 960, 3600, 3600]


def test_jitter_stays_within_its_band_and_varies() -> None:
    retry = SinkRetry(initial_backoff_s=100, multiplier=2, jitter=0.2)
    rng = random.Random(1)
    waits = [backoff_s(2, retry, rng) for _ in range(200)]
    assert all(160 <= w <= 240 for w in waits) and len(set(waits)) > 100


def test_default_schedule_spans_about_two_hours_over_five_attempts() -> None:
    retry = SinkRetry(jitter=0)
    total = sum(next_due_s(n, retry) or 0 for n in range(1, 5))
    assert next_due_s(5, retry) is None
    assert 1.0 * 3600 <= total <= 2.0 * 3600


def test_retry_after_is_never_undercut_and_the_last_attempt_has_no_next() -> None:
    retry = SinkRetry(attempts=3, initial_backoff_s=1, jitter=0)
    assert next_due_s(1, retry, retry_after_s=30) == 30
    assert next_due_s(1, retry, retry_after_s=0.1) == 1
    assert next_due_s(3, retry, retry_after_s=30) is None


def test_a_lead_with_an_unknown_tier_fails_a_tier_filter() -> None:
    assert filter_reason({**LEAD, "tier": "?"}, SinkFilter(min_tier="C3")) == "tier"
