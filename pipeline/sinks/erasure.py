"""The email sequences' erasure hook: ``leadstream forget`` stops and deletes a person's sequences.

``pipeline.ops.forget`` imports this module and calls every registered hook with the subject
(site, person id, the salted email hashes the identity graph held, the email when the request
named one). Those hashes, and each erased sequence's, go on the site's suppression list: it holds
only salted hashes, and it is what keeps a person the owner's data brings back after the erasure
from getting a new sequence (the one rule, checked by the email sinks before a sequence starts
and before every step).
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.identity import hash_email, normalize_email
from ..settings import Settings

log = logging.getLogger(__name__)


class StopSequences:
    name = "email-sequences"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _hashes(self, subject: Any) -> set[str]:
        hashes = set(getattr(subject, "email_hashes", ()) or ())
        email = normalize_email(getattr(subject, "email", None))
        site = self.settings.site(str(subject.site_id))
        if email and site is not None:
            hashes.add(hash_email(email, self.settings.email_salt(site)))
        return hashes

    async def forget(self, subject: Any) -> int:
        """Stop and delete every sequence of the subject's person id and email hashes on its site;
        returns how many were still running. Idempotent."""
        from .sequences import SequenceStore
        url = self.settings.redis.url_value
        assert url is not None
        store = SequenceStore.from_url(url, self.settings.sinks.namespace)
        try:
            stopped = 0
            site_id = str(subject.site_id)
            if getattr(subject, "person_id", None):
                stopped += await store.stop_sequences(site_id, person_id=str(subject.person_id), reason="erased",
                                                      forget=True)
            for email_hash in sorted(self._hashes(subject)):
                stopped += await store.stop_sequences(site_id, email_hash=email_hash, reason="erased", forget=True)
            return stopped
        finally:
            await store.aclose()


def stop_sequences_hook(settings: Settings) -> StopSequences | None:
    """The hook when some site has an email sink and Redis is configured, else None."""
    from .runner import has_email_sinks
    if not settings.redis.url_value or not has_email_sinks(settings):
        return None
    return StopSequences(settings)


try:  # registered with `leadstream forget` (pipeline.ops.forget) where that module exists
    from ..ops.forget import register_hook  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - a checkout without erasure
    log.debug("pipeline.ops.forget not present: the email sequences' erasure hook is not registered")
else:
    register_hook(stop_sequences_hook)
