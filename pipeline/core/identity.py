"""Identity-graph rules as pure functions over a snapshot of the affected subgraph.

The adapter loads an :class:`IdentitySnapshot` for one batch (the links of every
identifier in the batch and the records of the persons they point to: a pipelined
round trip, or a Lua script), calls these functions, and applies the returned
:data:`IdentityOp` list in one ``MULTI`` pipeline. Functions never mutate the
snapshot; each returns the snapshot as it will be after its ops, so a batch threads
it from event to event. Suggested Redis layout per site ``S``:
``ls:S:id:<type>:<value>`` hash {p: person_id, s: source};
``ls:S:person:<pid>`` hash (created, merges, profile fields);
``ls:S:person:<pid>:ids`` set of ``<type>:<value>``; ``ls:S:identity-log`` stream.

Rules (Segment / PostHog practice, REFERENCE.md):

- Blocked values (:data:`BLOCKED_VALUES`, empty, ``^[0-]*$``) are never linked; each is logged.
- Per-type limits (:attr:`IdentityConfig.limits`: 1 user id, 5 emails, 1000 visitor ids
  ...) and a priority order (user id, CRM id, email, email click id, visitor id).
  When linking or merging would exceed a limit, the lowest-priority incoming
  identifier is dropped and the rule retried, which may create a new person.
- Two persons that are both identified (a user id, CRM id or email) are never
  merged: the refusal is logged and the lowest-priority identifier dropped.
- A person absorbs at most ``max_merges`` (100) merges, counting inherited ones.
- Every merge, refusal and blocked value yields a :class:`LogEntry` op.
- Linking a visitor id attaches all its earlier and later activity: results list
  the visitor ids newly attached to the person so stage 2 can fold their
  anonymous account state into the person's account.
- Person ids are uuid5 of site, the first identifier and event time: replays give
  identical ids.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping, Sequence, Union

from .actions import classify_action
from .events import TrackedEvent
from .model import Evidence, Person, PersonResolution
from .scoring_model import ActionRule

__all__ = [
    "IdType", "BLOCKED_VALUES", "FREE_MAIL_DOMAINS", "IdentityConfig", "LinkRecord", "PersonRecord",
    "IdentitySnapshot", "CreatePerson", "Link", "Merge", "SetProfile", "ForgetPerson", "LogEntry", "IdentityOp",
    "IdentityResult", "ImportedIdentity", "is_blocked", "normalize_email", "hash_email", "email_domain",
    "apply_ops", "link_identifiers", "identifiers_from_event", "identifiers_to_load", "apply_identity_events", "import_identity",
    "resolve_visitor", "forget_person", "trust_config", "BROWSER_SOURCES", "VERIFIED_SOURCES",
]


class IdType(str, Enum):
    user_id = "user_id"
    crm_id = "crm_id"
    email = "email"              # salted sha256 of the normalised address
    email_click = "email_click"  # hashed recipient id carried by an email-campaign link
    visitor = "visitor"          # the site's visitor id (tracker or collector cookie)


BLOCKED_VALUES = frozenset({"-1", "null", "none", "nan", "undefined", "anonymous", "guest", "true", "false",
                            "[object object]", "0", "id", "email", "not_authenticated"})
_ZEROS_DASHES = re.compile(r"^[0-]*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "ymail.com", "hotmail.com", "hotmail.co.uk",
    "outlook.com", "live.com", "msn.com", "icloud.com", "me.com", "mac.com", "aol.com", "proton.me",
    "protonmail.com", "gmx.de", "gmx.net", "gmx.com", "web.de", "mail.ru", "yandex.ru", "yandex.com",
    "qq.com", "163.com", "126.com", "zoho.com", "fastmail.com", "t-online.de", "orange.fr", "free.fr",
    "libero.it", "hey.com", "tutanota.com", "pm.me",
})
_PERSON_NS = uuid.UUID("b3f4a8de-0d57-4c29-8f7e-1f62a9d0c7e3")


def _default_limits() -> dict[IdType, int | None]:
    return {IdType.user_id: 1, IdType.crm_id: 1, IdType.email: 5, IdType.email_click: 10, IdType.visitor: 1000}


#: Link sources the browser claims: anyone can send these, so they are claims, never proof.
#: ``handraise`` is a work email typed into a form the site counts as a conversion (demo,
#: contact, trial): still a claim, but one the site's own funnel asks for and acts on.
BROWSER_SOURCES = frozenset({"identify", "login", "form", "handraise"})
#: Verified link sources: the site owner's import, an email-campaign click, a server-side call
#: signed with the site's write key.
VERIFIED_SOURCES = frozenset({"import", "email_click", "server"})
DEFAULT_BROWSER_CONFIDENCE = 0.5
DEFAULT_HANDRAISE_CONFIDENCE = 0.7
DEFAULT_VERIFIED_CONFIDENCE = 1.0


def _confidence(browser: float, verified: float, handraise: float | None = None) -> dict[str, float]:
    out = {s: browser for s in BROWSER_SOURCES}
    # unset: the default, kept between the site's claim and verified confidences
    out["handraise"] = min(max(browser, DEFAULT_HANDRAISE_CONFIDENCE), verified) if handraise is None else handraise
    out.update({s: verified for s in VERIFIED_SOURCES})
    out["inferred"] = min(browser, 0.5)
    return out


def _default_confidence() -> dict[str, float]:
    return _confidence(DEFAULT_BROWSER_CONFIDENCE, DEFAULT_VERIFIED_CONFIDENCE, DEFAULT_HANDRAISE_CONFIDENCE)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    limits: Mapping[IdType, int | None] = field(default_factory=_default_limits)   # None: unlimited
    priority: tuple[IdType, ...] = (IdType.user_id, IdType.crm_id, IdType.email, IdType.email_click, IdType.visitor)
    identifying: frozenset[IdType] = frozenset({IdType.user_id, IdType.crm_id, IdType.email})
    max_merges: int = 100
    link_confidence: Mapping[str, float] = field(default_factory=_default_confidence)
    #: the site's conversion rules (``intent.conversions`` / ``non_conversions``): a form they
    #: classify as a conversion links its email as a ``handraise``; empty: every form is ``form``
    conversions: tuple[ActionRule, ...] = ()
    non_conversions: tuple[ActionRule, ...] = ()


DEFAULT_IDENTITY = IdentityConfig()


def trust_config(browser_confidence: float = DEFAULT_BROWSER_CONFIDENCE,
                 verified_confidence: float = DEFAULT_VERIFIED_CONFIDENCE,
                 base: IdentityConfig = DEFAULT_IDENTITY, *,
                 handraise_confidence: float | None = None,
                 conversions: Sequence[ActionRule] = (),
                 non_conversions: Sequence[ActionRule] = ()) -> IdentityConfig:
    """``base`` with the confidence of each link source set from one site's trust settings, and
    the site's conversion rules that tell a hand-raise form from any other form."""
    return IdentityConfig(base.limits, base.priority, base.identifying, base.max_merges,
                          _confidence(browser_confidence, verified_confidence, handraise_confidence),
                          tuple(conversions), tuple(non_conversions))
Identifier = tuple[IdType, str]


@dataclass(frozen=True, slots=True)
class LinkRecord:
    person_id: str
    source: str            # how it was linked: identify | login | form (browser) | import | email_click | server


@dataclass(frozen=True, slots=True)
class PersonRecord:
    person_id: str
    identifiers: Mapping[IdType, tuple[str, ...]] = field(default_factory=dict)
    merges: int = 0
    created: int = 0                       # event time of creation (ms)
    profile: Mapping[str, str] = field(default_factory=dict)
    #: profile fields a verified source set (the owner's import, a signed call): browser traits never overwrite them
    verified_fields: frozenset[str] = frozenset()

    def identified(self, cfg: IdentityConfig = DEFAULT_IDENTITY) -> bool:
        return any(self.identifiers.get(t) for t in cfg.identifying)

    def count(self, t: IdType) -> int:
        return len(self.identifiers.get(t, ()))


@dataclass(frozen=True, slots=True)
class IdentitySnapshot:
    """The part of one site's graph a batch touches. Missing keys mean "not linked"."""
    site_id: str
    links: Mapping[Identifier, LinkRecord] = field(default_factory=dict)
    persons: Mapping[str, PersonRecord] = field(default_factory=dict)


# ---- operations the adapter applies (in order) -------------------------------------------------

@dataclass(frozen=True, slots=True)
class CreatePerson:
    """HSET person:<pid> created <tstamp> merges 0."""
    person_id: str
    tstamp: int


@dataclass(frozen=True, slots=True)
class Link:
    """HSET id:<type>:<value> p <pid> s <source>; SADD person:<pid>:ids <type>:<value>."""
    id_type: IdType
    value: str
    person_id: str
    source: str


@dataclass(frozen=True, slots=True)
class Merge:
    """Repoint every identifier of ``from_person`` to ``into_person`` (keeping each link's
    source), union the id sets and profiles (into wins), set merges, delete from_person."""
    from_person: str
    into_person: str
    moved: tuple[Identifier, ...]
    merges_after: int
    tstamp: int


@dataclass(frozen=True, slots=True)
class SetProfile:
    """HSET person:<pid> with these profile fields (existing fields not named stay).

    ``verified`` (the owner's import, a signed call) marks the fields as verified; an
    unverified op (browser traits) leaves every verified field as it is."""
    person_id: str
    fields: Mapping[str, str]
    verified: bool = True


@dataclass(frozen=True, slots=True)
class ForgetPerson:
    """Erasure: DEL every id key listed, the person hash and its id set; tombstone downstream."""
    person_id: str
    identifiers: tuple[Identifier, ...]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """XADD identity-log: kind is merge | blocked | limit | double_identified | merge_cap |
    unknown_click | invalid_email | forget."""
    kind: str
    tstamp: int
    detail: str
    identifiers: tuple[Identifier, ...] = ()
    persons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "t": self.tstamp, "detail": self.detail,
                "ids": [f"{t.value}:{v}" for t, v in self.identifiers], "persons": list(self.persons)}


IdentityOp = Union[CreatePerson, Link, Merge, SetProfile, ForgetPerson, LogEntry]


@dataclass(frozen=True, slots=True)
class IdentityResult:
    person_id: str | None
    ops: tuple[IdentityOp, ...]
    snapshot: IdentitySnapshot                 # the snapshot after ``ops``
    linked_visitors: tuple[str, ...] = ()      # visitor ids newly attached to person_id (incl. by merges)


# ---- values -------------------------------------------------------------------------------------

def is_blocked(value: str | None) -> bool:
    """True for junk identifier values (REFERENCE.md list, case-insensitive, trimmed)."""
    if value is None:
        return True
    v = value.strip()
    return not v or bool(_ZEROS_DASHES.match(v)) or v.lower() in BLOCKED_VALUES


def normalize_email(raw: str | None) -> str | None:
    """Trimmed, lower-cased address; None when it is not an address or a blocked value."""
    if raw is None:
        return None
    email = raw.strip().lower()
    return email if _EMAIL.match(email) and not is_blocked(email) else None


def hash_email(email: str, salt: str) -> str:
    """sha256 hex of ``salt:email`` (``email`` already normalised)."""
    return hashlib.sha256(f"{salt}:{email}".encode("utf-8")).hexdigest()


def email_domain(email: str) -> str | None:
    """The address's domain when it is a company domain (not a free-mail provider)."""
    domain = email.rsplit("@", 1)[-1].strip().lower()
    return None if not domain or domain in FREE_MAIL_DOMAINS else domain


# ---- applying ops to a snapshot -----------------------------------------------------------------

def apply_ops(snapshot: IdentitySnapshot, ops: Iterable[IdentityOp]) -> IdentitySnapshot:
    """The snapshot after ``ops``: the in-memory twin of what the adapter does in Redis."""
    links = dict(snapshot.links)
    persons = {pid: p for pid, p in snapshot.persons.items()}

    def with_id(p: PersonRecord, t: IdType, v: str) -> PersonRecord:
        ids = dict(p.identifiers)
        if v not in ids.get(t, ()):
            ids[t] = tuple(ids.get(t, ())) + (v,)
        return PersonRecord(p.person_id, ids, p.merges, p.created, p.profile, p.verified_fields)

    for op in ops:
        if isinstance(op, CreatePerson):
            persons[op.person_id] = PersonRecord(op.person_id, {}, 0, op.tstamp, {})
        elif isinstance(op, Link):
            links[(op.id_type, op.value)] = LinkRecord(op.person_id, op.source)
            persons[op.person_id] = with_id(persons[op.person_id], op.id_type, op.value)
        elif isinstance(op, Merge):
            src, dst = persons.pop(op.from_person), persons[op.into_person]
            for t, v in op.moved:
                old = links.get((t, v))
                links[(t, v)] = LinkRecord(op.into_person, old.source if old else "merge")
                dst = with_id(dst, t, v)
            profile = {**dict(src.profile), **dict(dst.profile)}
            # a verified field of the absorbed person beats an unverified one of the target
            profile.update({k: src.profile[k] for k in src.verified_fields - dst.verified_fields
                            if k in src.profile})
            persons[op.into_person] = PersonRecord(dst.person_id, dst.identifiers, op.merges_after, dst.created,
                                                   profile, dst.verified_fields | src.verified_fields)
        elif isinstance(op, SetProfile):
            p = persons[op.person_id]
            if op.verified:
                persons[op.person_id] = PersonRecord(p.person_id, p.identifiers, p.merges, p.created,
                                                     {**dict(p.profile), **dict(op.fields)},
                                                     p.verified_fields | frozenset(op.fields))
            else:
                kept = {k: v for k, v in op.fields.items() if k not in p.verified_fields}
                persons[op.person_id] = PersonRecord(p.person_id, p.identifiers, p.merges, p.created,
                                                     {**dict(p.profile), **kept}, p.verified_fields)
        elif isinstance(op, ForgetPerson):
            for key in op.identifiers:
                links.pop(key, None)
            persons.pop(op.person_id, None)
    return IdentitySnapshot(snapshot.site_id, links, persons)


# ---- the linking rule ---------------------------------------------------------------------------

def _all_ids(p: PersonRecord) -> tuple[Identifier, ...]:
    return tuple((t, v) for t in IdType for v in p.identifiers.get(t, ()))


def _violates(counts: Mapping[IdType, int], cfg: IdentityConfig) -> IdType | None:
    for t, n in counts.items():
        limit = cfg.limits.get(t)
        if limit is not None and n > limit:
            return t
    return None


def link_identifiers(snapshot: IdentitySnapshot, identifiers: Sequence[Identifier], *, tstamp: int,
                     source: str, create: bool = True, cfg: IdentityConfig = DEFAULT_IDENTITY) -> IdentityResult:
    """Link ``identifiers`` (one event's) into the graph under the module's rules.

    Returns the person the identifiers now belong to (None when every identifier was
    dropped, or when ``create`` is false and none was known), the ops, and the new
    snapshot. ``create=False`` is for weak signals (email click ids) that may attach
    to an existing person but never start one.
    """
    ops: list[IdentityOp] = []
    rank = {t: i for i, t in enumerate(cfg.priority)}
    ids: list[Identifier] = []
    for t, v in identifiers:
        if is_blocked(v):
            ops.append(LogEntry("blocked", tstamp, f"blocked {t.value} value {v!r}", ((t, v),)))
        elif (t, v) not in ids:
            ids.append((t, v.strip()))
    ids.sort(key=lambda i: rank.get(i[0], len(rank)))

    def lookup(i: Identifier) -> LinkRecord | None:
        found = snapshot.links.get(i)
        if found is None and i[0] is IdType.email_click:
            found = snapshot.links.get((IdType.email, i[1]))  # a click id may be the recipient's email hash
        return found

    def drop(kind: str, detail: str, persons: Sequence[str] = ()) -> None:
        dropped = ids.pop()
        ops.append(LogEntry(kind, tstamp, f"{detail}; dropped {dropped[0].value}", (dropped,), tuple(persons)))

    while ids:
        persons: list[str] = []
        for i in ids:
            link = lookup(i)
            if link is not None and link.person_id not in persons and link.person_id in snapshot.persons:
                persons.append(link.person_id)
        if not persons:
            if not create:
                ops.append(LogEntry("unknown_click", tstamp, "no person for identifiers", tuple(ids)))
                break
            counts: dict[IdType, int] = {}
            for t, _ in ids:
                counts[t] = counts.get(t, 0) + 1
            bad = _violates(counts, cfg)
            if bad is not None:
                drop("limit", f"more than {cfg.limits[bad]} {bad.value} in one event")
                continue
            first = ids[0]
            pid = str(uuid.uuid5(_PERSON_NS, f"{snapshot.site_id}|{first[0].value}:{first[1]}|{tstamp}"))
            ops.append(CreatePerson(pid, tstamp))
            ops.extend(Link(t, v, pid, source) for t, v in ids)
            return _finish(snapshot, pid, ops, ids, ())
        records = [snapshot.persons[p] for p in persons]
        identified = [r.person_id for r in records if r.identified(cfg)]
        if len(identified) >= 2:
            drop("double_identified", f"refused to merge identified persons {', '.join(identified)}", identified)
            continue
        target = sorted(records, key=lambda r: (not r.identified(cfg), r.created, r.person_id))[0]
        others = [r for r in records if r.person_id != target.person_id]
        merges_after = target.merges + sum(o.merges + 1 for o in others)
        if others and merges_after > cfg.max_merges:
            drop("merge_cap", f"person {target.person_id} would exceed {cfg.max_merges} merges",
                 [r.person_id for r in records])
            continue
        union: dict[IdType, set[str]] = {}
        for r in records:
            for t, vs in r.identifiers.items():
                union.setdefault(t, set()).update(vs)
        for t, v in ids:
            union.setdefault(t, set()).add(v)
        bad = _violates({t: len(vs) for t, vs in union.items()}, cfg)
        if bad is not None:
            drop("limit", f"{bad.value} limit {cfg.limits[bad]} reached", [r.person_id for r in records])
            continue
        moved_visitors: list[str] = []
        for o in others:
            moved = _all_ids(o)
            ops.append(Merge(o.person_id, target.person_id, moved, merges_after, tstamp))
            ops.append(LogEntry("merge", tstamp, f"merged {o.person_id} into {target.person_id}", moved,
                                (o.person_id, target.person_id)))
            moved_visitors.extend(v for t, v in moved if t is IdType.visitor)
        have = {(t, v) for r in records for t, v in _all_ids(r)}
        ops.extend(Link(t, v, target.person_id, source) for t, v in ids if (t, v) not in have)
        # a verified source confirms a link a browser only claimed: the link takes the stronger source
        mine = set(_all_ids(target))
        for t, v in ids:
            old = snapshot.links.get((t, v))
            if ((t, v) in mine and old is not None and old.person_id == target.person_id
                    and _trust(source, cfg) > _trust(old.source, cfg)):
                ops.append(Link(t, v, target.person_id, source))
        new_ids = [(t, v) for t, v in ids if (t, v) not in {i for i in _all_ids(target)}]
        return _finish(snapshot, target.person_id, ops, new_ids, tuple(moved_visitors))
    return IdentityResult(None, tuple(ops), apply_ops(snapshot, ops))


def _trust(source: str, cfg: IdentityConfig) -> float:
    return cfg.link_confidence.get(source, cfg.link_confidence.get("inferred", 0.5))


def _finish(snapshot: IdentitySnapshot, pid: str, ops: list[IdentityOp], new_ids: Sequence[Identifier],
            moved_visitors: tuple[str, ...]) -> IdentityResult:
    visitors = tuple(dict.fromkeys([v for t, v in new_ids if t is IdType.visitor] + list(moved_visitors)))
    return IdentityResult(pid, tuple(ops), apply_ops(snapshot, ops), visitors)


# ---- events, imports, resolution, erasure -------------------------------------------------------

_TRAIT_KEYS = ("name", "first_name", "last_name", "title", "seniority", "department", "company_domain", "company")


def _traits(properties_json: str | None) -> dict[str, str]:
    if not properties_json:
        return {}
    try:
        data = json.loads(properties_json)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: str(data[k]).strip() for k in _TRAIT_KEYS if isinstance(data.get(k), (str, int)) and str(data[k]).strip()}


def identifiers_from_event(event: TrackedEvent, salt: str,
                           cfg: IdentityConfig = DEFAULT_IDENTITY) -> tuple[list[Identifier], str, dict[str, str]]:
    """(identifiers, link source, profile fields) one event carries; no identifiers when
    it carries no identity signal. The visitor id joins any other identifier. Emails are
    normalised and salted-hashed here; only the company domain of the address is kept.

    The source is ``server`` for an event of a request signed with the site's write key
    (``event.verified``), else what the browser claims: identify | login | form, or
    ``handraise`` for a form the site's conversion rules in ``cfg`` count as a conversion."""
    ids: list[Identifier] = []
    profile: dict[str, str] = {}
    uid = event.identify_user_id or event.user_id
    if uid is not None:
        ids.append((IdType.user_id, uid))
    if event.email is not None:
        email = normalize_email(event.email)
        if email is not None:
            ids.append((IdType.email, hash_email(email, salt)))
            domain = email_domain(email)
            if domain:
                profile["company_domain"] = domain
    if event.event_type in ("identify", "form_submit"):
        profile.update(_traits(event.properties_json))
    if not ids:
        return [], "", {}
    if event.visitor_id:
        ids.append((IdType.visitor, event.visitor_id))
    if event.verified:
        return ids, "server", profile
    if event.event_type == "form_submit":
        return ids, "handraise" if is_handraise(event, cfg) else "form", profile
    return ids, "identify" if event.event_type == "identify" else "login", profile


def is_handraise(event: TrackedEvent, cfg: IdentityConfig = DEFAULT_IDENTITY) -> bool:
    """A form submit the site's conversion rules classify as a conversion (the same
    :func:`~pipeline.core.actions.classify_action` the intent score uses, on the form id and page)."""
    if event.event_type != "form_submit" or not cfg.conversions:
        return False
    return classify_action(event.name, None, event.url, cfg.conversions, cfg.non_conversions).kind == "conversion"


def identifiers_to_load(events: Iterable[TrackedEvent], salt: str) -> list[Identifier]:
    """Every identifier :func:`apply_identity_events` and :func:`resolve_visitor` may look up for
    ``events``: what a caller loads into the snapshot first (each once, in first-seen order). The
    visitor stage and the identity store both load exactly this."""
    out: dict[Identifier, None] = {}
    for e in events:
        ids, _, _ = identifiers_from_event(e, salt)
        out.update(dict.fromkeys(ids))
        if e.email_click_id is not None and e.visitor_id:
            out.update(dict.fromkeys([(IdType.email_click, e.email_click_id), (IdType.visitor, e.visitor_id)]))
        elif e.visitor_id:
            out[(IdType.visitor, e.visitor_id)] = None
    return list(out)


def apply_identity_events(snapshot: IdentitySnapshot, events: Sequence[TrackedEvent], salt: str,
                          cfg: IdentityConfig = DEFAULT_IDENTITY) -> IdentityResult:
    """Run one visitor batch's identity signals in event-time order.

    Identify / login / form events link their identifiers (may create persons); an
    email click id attaches the visitor to the person it names (never creates one).
    ``person_id`` of the result is the visitor's person after the batch (None when the
    visitor is not linked); an event with an email that is not an address is logged
    as ``invalid_email``.
    """
    ops: list[IdentityOp] = []
    snap = snapshot
    visitors: list[str] = []
    for e in sorted(events, key=lambda e: e.tstamp):
        step: IdentityResult | None = None
        ids, source, profile = identifiers_from_event(e, salt, cfg)
        if e.email is not None and normalize_email(e.email) is None:
            ops.append(LogEntry("invalid_email", e.tstamp, "email field is not an address"))
        if ids:
            step = link_identifiers(snap, ids, tstamp=e.tstamp, source=source, cfg=cfg)
            if step.person_id is not None and not e.verified:
                # browser traits are claims: they never overwrite a verified (imported or signed) field
                held = step.snapshot.persons.get(step.person_id)
                if held is not None:
                    profile = {k: v for k, v in profile.items() if k not in held.verified_fields}
            if step.person_id is not None and profile:
                extra: list[IdentityOp] = [SetProfile(step.person_id, profile, verified=e.verified)]
                step = IdentityResult(step.person_id, step.ops + tuple(extra), apply_ops(step.snapshot, extra),
                                      step.linked_visitors)
        if e.email_click_id is not None and e.visitor_id:
            click = [(IdType.email_click, e.email_click_id), (IdType.visitor, e.visitor_id)]
            step2 = link_identifiers(step.snapshot if step else snap, click, tstamp=e.tstamp, source="email_click",
                                     create=False, cfg=cfg)
            if step is not None:
                step = IdentityResult(step2.person_id, step.ops + step2.ops, step2.snapshot,
                                      step.linked_visitors + step2.linked_visitors)
            else:
                step = step2
        if step is not None:
            ops.extend(step.ops)
            snap = step.snapshot
            visitors.extend(step.linked_visitors)
    vis = next((e.visitor_id for e in events if e.visitor_id), None)
    link = snap.links.get((IdType.visitor, vis)) if vis else None
    return IdentityResult(link.person_id if link else None, tuple(ops), snap, tuple(dict.fromkeys(visitors)))


@dataclass(frozen=True, slots=True)
class ImportedIdentity:
    """One row of the owner's CRM / enrichment export (plain email allowed: owner's data)."""
    email: str | None = None
    user_id: str | None = None
    crm_id: str | None = None
    email_click_ids: tuple[str, ...] = ()
    visitor_ids: tuple[str, ...] = ()
    profile: Mapping[str, str] = field(default_factory=dict)   # name, title, seniority, department, company_domain


def import_identity(snapshot: IdentitySnapshot, row: ImportedIdentity, *, tstamp: int, salt: str,
                    cfg: IdentityConfig = DEFAULT_IDENTITY) -> IdentityResult:
    """Link an imported identity (source ``import``, confidence 1.0). The plain email is
    kept on the profile because the owner supplied it; links always use the hash."""
    ids: list[Identifier] = []
    profile = dict(row.profile)
    if row.user_id:
        ids.append((IdType.user_id, row.user_id))
    if row.crm_id:
        ids.append((IdType.crm_id, row.crm_id))
    email = normalize_email(row.email)
    if email:
        ids.append((IdType.email, hash_email(email, salt)))
        profile["email"] = email
        domain = email_domain(email)
        if domain and "company_domain" not in profile:
            profile["company_domain"] = domain
    ids.extend((IdType.email_click, c) for c in row.email_click_ids)
    ids.extend((IdType.visitor, v) for v in row.visitor_ids)
    result = link_identifiers(snapshot, ids, tstamp=tstamp, source="import", cfg=cfg)
    if result.person_id is None or not profile:
        return result
    extra: list[IdentityOp] = [SetProfile(result.person_id, profile)]
    return IdentityResult(result.person_id, result.ops + tuple(extra), apply_ops(result.snapshot, extra),
                          result.linked_visitors)


def resolve_visitor(snapshot: IdentitySnapshot, visitor_id: str | None,
                    cfg: IdentityConfig = DEFAULT_IDENTITY) -> PersonResolution:
    """The visitor's person with a confidence from how the visitor was linked
    (:attr:`IdentityConfig.link_confidence`: browser claims lower than verified sources), the
    evidence and the link source; confidence 0 and no source when unlinked."""
    link = snapshot.links.get((IdType.visitor, visitor_id)) if visitor_id else None
    record = snapshot.persons.get(link.person_id) if link else None
    if link is None or record is None:
        return PersonResolution(None, 0.0)
    conf = cfg.link_confidence.get(link.source, cfg.link_confidence.get("inferred", 0.5))
    prof = record.profile
    name = prof.get("name") or " ".join(x for x in (prof.get("first_name"), prof.get("last_name")) if x) or None
    person = Person(
        person_id=record.person_id, email_hash=(record.identifiers.get(IdType.email) or (None,))[0],
        email=prof.get("email"), user_id=(record.identifiers.get(IdType.user_id) or (None,))[0], name=name,
        title=prof.get("title"), seniority=prof.get("seniority"), department=prof.get("department"),
        company_domain=prof.get("company_domain"),
        traits={k: v for k, v in prof.items() if k not in ("email", "name", "title", "seniority", "department",
                                                           "company_domain", "first_name", "last_name")})
    trust = "verified" if link.source in VERIFIED_SOURCES else "claimed"
    evidence = Evidence(f"identity:{link.source}", f"visitor {visitor_id} linked to person {record.person_id} "
                                                   f"by {link.source} ({trust})", conf)
    return PersonResolution(person, conf, (evidence,), link.source)


def forget_person(snapshot: IdentitySnapshot, person_id: str, tstamp: int) -> IdentityResult:
    """Erasure ops for one person: every identifier link and the profile. The log entry names
    neither the person nor an identifier: after an erasure nothing in the graph points at them
    (what was erased is recorded, hashed, in the erasure audit: ``pipeline.ops.forget``)."""
    record = snapshot.persons.get(person_id)
    ids = _all_ids(record) if record else tuple(k for k, link in snapshot.links.items() if link.person_id == person_id)
    ops: list[IdentityOp] = [ForgetPerson(person_id, ids),
                             LogEntry("forget", tstamp, f"erased a person ({len(ids)} identifiers)", (), ())]
    return IdentityResult(None, tuple(ops), apply_ops(snapshot, ops))
