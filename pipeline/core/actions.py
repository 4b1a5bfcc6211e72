"""Form submits and custom events, classified per site: conversion, non-conversion or other.

A site's ``intent.conversions`` (demo, contact, trial ...) and ``intent.non_conversions``
(support, careers, downloads ...) are lists of :class:`~pipeline.core.scoring_model.ActionRule`.
An action (a :class:`~pipeline.core.sessions.Hit` of kind ``action``, or ``conversion`` as
written before this rule existed) is classified by the most specific evidence first:

1. its form id or event name against every rule's ``forms`` / ``events`` patterns
   (case-insensitive shell patterns: ``*demo*``); a structured event's action counts as
   its name;
2. else the page it happened on against every rule's ``pages`` (``pipeline.core.pages``).

At the same level a non-conversion wins over a conversion (a ``support-request`` form on
``/contact`` is support), and within one list the first rule wins. An action no rule
matches is ``other``. Only a conversion scores as a conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal, Sequence

from .pages import first_match
from .scoring_model import ActionRule

__all__ = ["ActionClass", "classify_action"]

ActionKind = Literal["conversion", "non_conversion", "other"]


@dataclass(frozen=True, slots=True)
class ActionClass:
    """What an action is, the rule that said so (None for ``other``) and on what evidence."""
    kind: ActionKind
    rule: str | None = None
    matched_on: str | None = None        # "form" | "event" | "page"


def _name_match(value: str | None, patterns: Sequence[str]) -> bool:
    if not value:
        return False
    v = value.strip().lower()
    return any(fnmatchcase(v, p.strip().lower()) for p in patterns)


def _by_name(rules: Sequence[ActionRule], form_id: str | None, event: str | None) -> ActionClass | None:
    for r in rules:
        if _name_match(form_id, r.forms):
            return ActionClass("conversion", r.name, "form")
        if _name_match(event, r.events):
            return ActionClass("conversion", r.name, "event")
    return None


def _by_page(rules: Sequence[ActionRule], page: str | None) -> ActionClass | None:
    if not page:
        return None
    for r in rules:
        if r.pages and first_match(page, r.pages):
            return ActionClass("conversion", r.name, "page")
    return None


def classify_action(form_id: str | None, event: str | None, page: str | None,
                    conversions: Sequence[ActionRule], non_conversions: Sequence[ActionRule]) -> ActionClass:
    """Classify one action (see the module doc). Pure and deterministic."""
    for level in ("name", "page"):
        non = (_by_name(non_conversions, form_id, event) if level == "name" else _by_page(non_conversions, page))
        if non is not None:
            return ActionClass("non_conversion", non.rule, non.matched_on)
        conv = _by_name(conversions, form_id, event) if level == "name" else _by_page(conversions, page)
        if conv is not None:
            return conv
    return ActionClass("other")
