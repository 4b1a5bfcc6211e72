"""A person's email consent as the site owner's data states it (pure): one vocabulary for the people
import and the email sinks."""

from __future__ import annotations

GRANTED = frozenset({"granted", "yes", "true", "1", "opt_in", "opt-in", "opted_in", "subscribed"})
DENIED = frozenset({"denied", "no", "false", "0", "opt_out", "opt-out", "opted_out", "unsubscribed"})


def email_consent(raw: str | None) -> str | None:
    """``granted``, ``denied`` or None (not stated); ValueError for a value in neither list."""
    if raw is None or not str(raw).strip():
        return None
    said = str(raw).strip().lower()
    if said in GRANTED:
        return "granted"
    if said in DENIED:
        return "denied"
    raise ValueError(f"email_consent {raw!r}: use granted/yes/true/opt_in or denied/no/false/opt_out")
