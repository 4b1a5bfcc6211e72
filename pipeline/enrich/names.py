"""Canonical forms of company domains and organisation names.

The importer writes keys in these forms and the Redis lookups query them, so an
organisation name from a GeoIP database ("Brightpath Analytics, Inc.") meets
the imported company ("Brightpath Analytics") on the same key. Pure functions:
no I/O, never raise.
"""

from __future__ import annotations

import re
import unicodedata

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")

# Legal-form words dropped from the end of an organisation name (lower case, dots removed).
_LEGAL_FORMS = frozenset({
    "inc", "incorporated", "llc", "llp", "lp", "ltd", "limited", "corp", "corporation", "co", "company",
    "gmbh", "mbh", "ag", "kg", "se", "sa", "sas", "sarl", "srl", "spa", "bv", "nv", "plc", "kk", "as", "asa",
    "ab", "oy", "oyj", "pty", "pte", "ulc", "lda", "aps", "group", "holding", "holdings",
})
_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize_domain(value: str | None) -> str | None:
    """A bare lower-case host name (``https://www.Acme.example/x`` -> ``acme.example``), or None
    when ``value`` is not a plausible domain. Never raises."""
    if not value:
        return None
    text = value.strip().lower()
    text = _SCHEME.sub("", text)
    if "@" in text:                       # an email address: keep its domain
        text = text.rsplit("@", 1)[1]
    text = text.split("/", 1)[0].split("?", 1)[0].split(":", 1)[0].rstrip(".")
    if text.startswith("www."):
        text = text[4:]
    try:
        text = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        return None
    return text if _DOMAIN.match(text) else None


def normalize_org(value: str | None) -> str | None:
    """A matching key for an organisation name: case-folded, accents and punctuation removed,
    ``&`` read as ``and``, trailing legal forms (Inc., GmbH, Ltd, ...) dropped. None when nothing
    is left. Never raises."""
    if not value:
        return None
    text = unicodedata.normalize("NFKD", value)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = text.replace("&", " and ").replace(".", "")
    words = [w for w in _NON_WORD.sub(" ", text).replace("_", " ").split() if w]
    while len(words) > 1 and words[-1] in _LEGAL_FORMS:
        words.pop()
    return " ".join(words) or None
