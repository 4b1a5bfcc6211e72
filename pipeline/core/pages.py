"""URL patterns with wildcards, shared by page filters, page classes and intent signals.

Pattern grammar (matching is case-insensitive; query string and fragment are ignored):

- ``/pricing*``: a path pattern, any host. So is any pattern whose part before the
  first ``/`` has no dot: ``*-vs-*``, ``*/kb/*``.
- ``*.example.com/careers/*``: a host pattern (the part before the first ``/``,
  containing a dot), then a path pattern.
- ``docs.example.com``: a host only, any path.
- ``https://`` or ``http://`` in front of a pattern is ignored.
- ``*`` matches any run of characters, ``/`` included, possibly empty.
- A leading ``*.`` in the host also matches the bare domain (``*.example.com``
  matches ``example.com``), as users of cookie domains expect.
- A trailing ``/*`` also matches the path without it (``/careers/*`` matches
  ``/careers``), and a trailing ``/`` on a URL path is not significant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable
from urllib.parse import urlsplit

__all__ = ["UrlPattern", "compile_pattern", "url_host_path", "matches_any", "first_match"]


@dataclass(frozen=True, slots=True)
class UrlPattern:
    """A compiled pattern; ``host`` is None when the pattern names no host."""
    text: str
    host: re.Pattern[str] | None
    path: re.Pattern[str]

    def matches(self, url: str) -> bool:
        """True when ``url`` (absolute URL or bare path) matches. A pattern with a host
        never matches a bare path (it has no host)."""
        host, path = url_host_path(url)
        if self.host is not None and (host is None or not self.host.fullmatch(host)):
            return False
        return self.path.fullmatch(path) is not None


def _glob(text: str) -> str:
    return ".*".join(re.escape(part) for part in text.split("*"))


def _path_regex(path: str) -> str:
    path = path or "/*"
    if not path.startswith("/") and not path.startswith("*"):
        path = "/" + path
    if len(path) > 1 and path.endswith("/") and not path.endswith("*/"):
        path = path.rstrip("/") or "/"
    if path.endswith("/*") and len(path) > 2:
        return _glob(path[:-2]) + "(?:/.*)?"
    return _glob(path)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> UrlPattern:
    """Compile one pattern (see module docstring). Cached: patterns come from config."""
    text = pattern.strip()
    body = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text)
    host_part, slash, rest = body.partition("/")
    host_rx: re.Pattern[str] | None = None
    if "." in host_part:
        if host_part.startswith("*."):
            host_rx = re.compile(r"(?:.*\.)?" + _glob(host_part[2:]), re.IGNORECASE)
        else:
            host_rx = re.compile(_glob(host_part), re.IGNORECASE)
        path = "/" + rest if slash else "/*"
    else:
        path = body if body.startswith("/") or body.startswith("*") else "/" + body
    return UrlPattern(text=pattern, host=host_rx, path=re.compile(_path_regex(path), re.IGNORECASE | re.DOTALL))


URL_CACHE_ENTRIES = 65_536
URL_CACHE_MAX_CHARS = 256   # longer URLs are parsed uncached: the cache holds at most ~16 MB of keys


def url_host_path(url: str) -> tuple[str | None, str]:
    """(lower-case host or None, path without query/fragment, trailing '/' dropped unless root).

    Cached for URLs of up to ``URL_CACHE_MAX_CHARS`` characters (``URL_CACHE_ENTRIES`` of them).
    """
    if len(url) <= URL_CACHE_MAX_CHARS:
        return _url_host_path_cached(url)
    return _url_host_path(url)


@lru_cache(maxsize=URL_CACHE_ENTRIES)
def _url_host_path_cached(url: str) -> tuple[str | None, str]:
    return _url_host_path(url)


def _url_host_path(url: str) -> tuple[str | None, str]:
    raw = url.strip()
    if raw.startswith("/"):
        host: str | None = None
        path = raw.split("?", 1)[0].split("#", 1)[0]
    else:
        if "://" not in raw:
            raw = "http://" + raw
        try:
            parts = urlsplit(raw)
            host = (parts.hostname or "").lower() or None
        except ValueError:
            return None, "/"
        path = parts.path
    path = path or "/"
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    return host, path


def matches_any(url: str, patterns: Iterable[str]) -> bool:
    """True when any pattern matches ``url``."""
    return any(compile_pattern(p).matches(url) for p in patterns)


def first_match(url: str, patterns: Iterable[str]) -> str | None:
    """The first pattern (in order) matching ``url``, else None."""
    for p in patterns:
        if compile_pattern(p).matches(url):
            return p
    return None
