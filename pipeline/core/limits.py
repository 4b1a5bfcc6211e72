"""Byte and length bounds on what the stages store and send (DESIGN "Bounded state").

Pure helpers: the visitor stage cuts long URLs and titles before they reach its
state or ``visits``, trims a visitor's history by bytes, and splits what would
pass the broker's maximum message size. The numbers are documented in the
README ("Limits").
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

__all__ = ["MAX_URL_CHARS", "MAX_TITLE_CHARS", "MAX_NAME_CHARS", "clip", "json_size", "text_bytes", "trim_by_bytes",
           "chunk_by_bytes"]

MAX_URL_CHARS = 2048      # URLs and referrers kept in state and sent on (longer ones are cut)
MAX_TITLE_CHARS = 512     # page titles
MAX_NAME_CHARS = 256      # event names and other short labels

T = TypeVar("T")


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to at most ``limit`` characters (None stays None)."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit]


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (what a Faust table's changelog stores)."""
    return len(json.dumps(value, separators=(",", ":"), default=str).encode("utf-8"))


def text_bytes(text: str | None) -> int:
    """UTF-8 bytes of ``text`` (0 for None), cheap for ASCII."""
    if text is None:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def trim_by_bytes(items: Sequence[Mapping[str, Any]], max_bytes: int,
                  size: Callable[[Mapping[str, Any]], int] = json_size) -> list[Mapping[str, Any]]:
    """The newest items (the end of ``items``) whose sizes (default: their JSON) fit in ``max_bytes``, in order."""
    kept: list[Mapping[str, Any]] = []
    total = 2
    for item in reversed(items):
        n = size(item) + 1
        if total + n > max_bytes:
            break
        kept.append(item)
        total += n
    kept.reverse()
    return kept


def chunk_by_bytes(items: Iterable[T], sizes: Iterable[int], max_bytes: int) -> Iterator[list[T]]:
    """``items`` in order, grouped so each group's summed size stays within ``max_bytes``.

    An item larger than ``max_bytes`` on its own is a group of one (the caller decides what to do with it).
    """
    group: list[T] = []
    total = 0
    for item, size in zip(items, sizes):
        if group and total + size > max_bytes:
            yield group
            group, total = [], 0
        group.append(item)
        total += size
    if group:
        yield group
