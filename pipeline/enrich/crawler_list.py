"""The maintained crawler list (PyPI ``crawler-user-agents``) as one fast matcher.

The package ships ~1,500 case-sensitive regex patterns, one per known bot, each
with example user agents (``instances``). Matching them one by one, or as one
flat alternation, costs 100-300 µs per user agent. Almost all of them (~98 %) are
plain literals, so they are folded into a character trie and compiled as one
regex whose branches share their prefixes; the few real regexes are a second
alternation. Both are built once, on first use; callers cache per UA on top
(``pipeline.enrich.useragent.analyze_user_agent``).

``crawler_match(ua)`` returns the text that matched (e.g. ``"Googlebot/"``), or None.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["crawler_match", "crawler_patterns", "crawler_instances", "CrawlerMatcher"]

_META = frozenset(".^$*+?{}[]|()")


def _literal(pattern: str) -> str | None:
    """The text a pattern matches when it is a plain literal (escapes of punctuation allowed), else None."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern) and not pattern[i + 1].isalnum():
                out.append(pattern[i + 1])
                i += 2
                continue
            return None  # \d, \s, \b ...: a real regex
        if c in _META:
            return None
        out.append(c)
        i += 1
    return "".join(out) or None


def _trie_regex(words: Iterable[str]) -> str:
    """One regex matching any of ``words``, with shared prefixes factored (a trie as nested groups)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = True  # end of a word

    def emit(node: dict[str, Any]) -> str:
        if "" in node and len(node) == 1:
            return ""
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        # A word ending here matches without going further: any literal in the list suffices.
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return "" if "" in node else body

    return emit(trie)


class CrawlerMatcher:
    """Literal patterns as one trie regex, the others as one alternation; case-sensitive like the list."""

    def __init__(self, patterns: Sequence[str]) -> None:
        literals = sorted({lit for p in patterns if (lit := _literal(p)) is not None})
        others = [p for p in patterns if _literal(p) is None]
        self.pattern_count = len(patterns)
        self._literals = re.compile(_trie_regex(literals)) if literals else None
        self._others = re.compile("|".join(f"(?:{p})" for p in others)) if others else None

    def match(self, user_agent: str) -> str | None:
        for rx in (self._literals, self._others):
            if rx is not None:
                m = rx.search(user_agent)
                if m:
                    return m.group(0) or "crawler-user-agents"
        return None


def _data() -> list[dict[str, Any]]:
    text = importlib.resources.files("crawleruseragents").joinpath("crawler-user-agents.json").read_text("utf-8")
    data: list[dict[str, Any]] = json.loads(text)
    return data


@functools.cache
def crawler_patterns() -> tuple[str, ...]:
    """The list's patterns, read once from the installed package."""
    return tuple(str(entry["pattern"]) for entry in _data())


def crawler_instances() -> list[str]:
    """Every example user agent the list gives (``instances``): all of them are bots."""
    return [str(ua) for entry in _data() for ua in entry.get("instances", ())]


@functools.cache
def _matcher() -> CrawlerMatcher:
    return CrawlerMatcher(crawler_patterns())


def crawler_match(user_agent: str) -> str | None:
    """The matched text when ``user_agent`` is on the maintained crawler list, else None. Never raises."""
    return _matcher().match(user_agent)
