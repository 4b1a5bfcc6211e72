"""Pure delivery rules: which leads a sink takes, and when a failed delivery is tried again."""

from __future__ import annotations

import random
import re
from typing import Any, Mapping

from ..core.qualify import tier_rank
from ..settings import SinkFilter, SinkRetry

_TIER = re.compile(r"^[A-C][1-3]$")


def identity_confidence(lead: Mapping[str, Any]) -> float:
    """The confidence of the identity the lead is about: the person's for person-level leads
    (and whenever a person is known), else the company's."""
    person = lead.get("person")
    if person:
        return float(person.get("confidence") or 0.0)
    return float(lead.get("company_confidence") or 0.0)


def filter_reason(lead: Mapping[str, Any], rules: SinkFilter) -> str | None:
    """None when the sink takes ``lead``; else the name of the first condition it fails."""
    if identity_confidence(lead) < rules.min_identity_confidence:
        return "identity_confidence"
    if rules.min_tier is not None:
        tier = str(lead.get("tier") or "")
        if _TIER.match(tier) is None or tier_rank(tier) > tier_rank(rules.min_tier):
            return "tier"
    if rules.countries:
        country = ((lead.get("company") or {}).get("country") or "").upper()
        if country not in rules.countries:
            return "country"
    return None


def backoff_s(attempt: int, retry: SinkRetry, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    ``initial * multiplier**(attempt-1)``, capped at ``max_backoff_s``, scaled by a
    random factor in ``[1-jitter, 1+jitter]`` so many failed leads do not retry in step.
    """
    base = min(retry.max_backoff_s, retry.initial_backoff_s * retry.multiplier ** max(0, attempt - 1))
    factor = 1.0 + (rng or random).uniform(-retry.jitter, retry.jitter) if retry.jitter else 1.0
    return max(0.0, base * factor)


def next_due_s(attempt: int, retry: SinkRetry, retry_after_s: float | None = None,
               rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after failed attempt ``attempt``, or None when it was the last.

    A receiver's ``Retry-After`` is honoured: the wait is never shorter than it.
    """
    if attempt >= retry.attempts:
        return None
    wait = backoff_s(attempt, retry, rng)
    if retry_after_s is not None:
        wait = max(wait, retry_after_s)
    return wait
