"""Erasure in the stages' state (pure): what `leadstream forget` removes from a visitor's and an
account's state when its erasure record reaches them in band (:mod:`pipeline.stages.erasure`).

An erasure names a visitor id and, when the visitor belongs to a person, a *person token*: an HMAC
of the person id under the site's salt (:func:`person_token`). The records travel through the
append-only input topics, so they never carry the person id itself; the account stage finds the
person among the ids it holds by computing their tokens.

* The visitor's state is deleted whole. Before that, :func:`visitor_accounts` lists the accounts the
  visitor contributed to (its own ``v:<visitor>``, and the accounts its updates went to, kept in the
  visitor state as ``accts`` by :func:`noted_accounts`), which the erasure is forwarded to.
* Each of those accounts loses the visitor's share (:func:`erase_from_account`): its per-day counts
  (``by_visitor``), sessions, breadth entry and conversions, the bot verdict naming it, the latest
  visit (``seen``) when it was the visitor's, the example pages of page signals no one else hit,
  and the person: their profile entry, their lead
  memory and company evidence naming them; the account's latest activity time becomes its newest
  remaining session's. What is left is re-scored; an account with no visitor,
  session or person left is deleted (:func:`is_empty`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from .intent import _SIG, AccountState, withdraw_visitor

__all__ = ["person_token", "person_ids_of", "visitor_accounts", "noted_accounts", "erase_from_account", "is_empty",
           "MAX_VISITOR_ACCOUNTS"]

#: accounts a visitor state remembers having sent updates to (newest last)
MAX_VISITOR_ACCOUNTS = 32


def person_token(salt: str, person_id: str) -> str:
    """HMAC-SHA256 of a person id under the site's salt: how an erasure names a person."""
    return hmac.new(salt.encode("utf-8"), f"erasure:person:{person_id}".encode("utf-8"), hashlib.sha256).hexdigest()


def person_ids_of(state: AccountState, token: str | None, salt: str) -> set[str]:
    """The person ids held in ``state`` (people and lead memory) whose token is ``token``."""
    if not token:
        return set()
    held = {*state.persons, *((state.lead.get("persons") or {}).keys())}
    return {pid for pid in held if hmac.compare_digest(person_token(salt, pid), token)}


def noted_accounts(stored: Mapping[str, Any] | None, accounts: Iterable[str | None]) -> list[str]:
    """A visitor state's ``accts`` after it sent updates to ``accounts``: distinct, newest last, bounded."""
    out = [str(a) for a in ((stored or {}).get("accts") or ()) if isinstance(a, str)]
    for account in accounts:
        if account:
            if account in out:
                out.remove(account)
            out.append(account)
    return out[-MAX_VISITOR_ACCOUNTS:]


def visitor_accounts(visitor_id: str, stored: Mapping[str, Any] | None) -> list[str]:
    """Every account ``visitor_id`` may have contributed to: its own ``v:<visitor>`` (also when its
    state is gone), the accounts its state noted (``accts``) and its current one (``acct``: states
    written before ``accts`` existed have only that)."""
    stored = stored or {}
    current = stored.get("acct")
    return noted_accounts({"accts": [f"v:{visitor_id}"]},
                          [*(stored.get("accts") or ()), current if isinstance(current, str) else None])


def erase_from_account(state: AccountState, visitor_id: str, person_ids: Collection[str]) -> AccountState:
    """``state`` without ``visitor_id``'s share and without the persons ``person_ids`` (see module doc)."""
    days = {d: dict(c) for d, c in state.days.items()}
    by_visitor = {v: {d: dict(c) for d, c in vd.items()} for v, vd in state.by_visitor.items()}
    sessions = {k: dict(v) for k, v in state.sessions.items()}
    visitors = dict(state.visitors)
    conversions = [dict(c) for c in state.conversions]
    withdraw_visitor(visitor_id, days, by_visitor, sessions, visitors, conversions)
    lead = dict(state.lead)
    if lead.get("persons"):
        lead["persons"] = {k: dict(v) for k, v in lead["persons"].items() if k not in person_ids}
    company = dict(state.company) if state.company else None
    if company and company.get("ev"):
        company["ev"] = [e for e in company["ev"] if not any(pid in str(e[1]) for pid in person_ids)]
    # a page signal nobody else hit loses its example pages (the lists are not kept per visitor)
    signals_left = {k[len(_SIG):] for counts in days.values() for k in counts if k.startswith(_SIG)}
    signal_pages = {k: v for k, v in state.signal_pages.items() if k in signals_left}
    # the account's latest activity, now without the visitor's (scoring decays from it)
    last_ts = max((int(s.get("end") or 0) for s in sessions.values()), default=0) or state.last_ts
    return replace(state, last_ts=min(last_ts, state.last_ts), days=days, by_visitor=by_visitor, sessions=sessions, visitors=visitors,
                   conversions=tuple(conversions), lead=lead, signal_pages=signal_pages, company=company,
                   persons={k: dict(v) for k, v in state.persons.items() if k not in person_ids},
                   bot_visitors=tuple(v for v in state.bot_visitors if v != visitor_id),
                   seen={} if state.seen.get("vis") == visitor_id else dict(state.seen))


def is_empty(state: AccountState) -> bool:
    """Nothing left that a visitor or a person made: the account is deleted, not re-scored."""
    return not state.visitors and not state.sessions and not state.persons and not state.by_visitor
