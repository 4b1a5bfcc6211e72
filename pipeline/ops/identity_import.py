"""``leadstream import people|identities``: the site owner's own identity data into the graph.

Both kinds go through :func:`pipeline.core.identity.import_identity` (source ``import``,
confidence 1.0) and :class:`~pipeline.enrich.identity_store.SyncIdentityStore`, so imports
obey the same rules as live traffic: blocked values, per-type limits, no merge of two
identified persons, the 100-merge cap, a logged merge. They are per site (``--site`` is
required) and need the site's email salt (a secret from settings).

Per chunk (``chunk_rows``, default 500): one snapshot load (two pipelined round trips),
the rules run row by row on the threaded snapshot, one MULTI/EXEC apply. Idempotent:
importing a file again leaves the graph as it was (links and ids are unchanged, profile
fields are overwritten with the same values). Upsert semantics: a profile field the file
leaves empty is kept, never deleted. Bad rows are reported as ``(line, reason)`` and
skipped; a row the rules accept only in part (an identifier dropped) is imported and
reported with the reason prefixed ``partly imported:``; its profile fields are then not
written (they may describe someone else: the row's email and another person's user id).

File columns (CSV with a header row, or JSON Lines; list cells ``;``-separated in CSV,
JSON arrays or ``;``-strings in JSON Lines; empty cells mean "not given")

``people``: one person per row (a CRM or enrichment export)

=================== ========== ===================================================================
column              required   meaning
=================== ========== ===================================================================
``email``           one of the work email; links as a salted hash, kept in plain on the profile
                    three      because the owner supplied it; its domain fills ``company_domain``
                               unless that column is given (free-mail domains never do)
``user_id``         one of     the site's own user id (at most one per person)
``crm_id``          one of     the CRM's record id (at most one per person)
``name``                       display name (or ``first_name`` and ``last_name``)
``first_name``,
``last_name``
``title``                      job title
``seniority``                  ``c_level``, ``vp``, ``director``, ``manager``, ``senior``,
                               ``entry`` ... (lower-cased, spaces and dashes become ``_``)
``department``                 ``engineering``, ``marketing``, ``sales``, ``finance``, ``it`` ...
                               (normalised like seniority)
``company_domain``             the employer's primary domain (normalised: a URL or an email works)
``company``                    the employer's name as the CRM spells it
``visitor_ids``                list: the site's visitor ids (cookies) known to be this person
``email_click_ids``            list: hashed recipient ids carried by the owner's email links
=================== ========== ===================================================================

``identities``: one explicit link per row: an identifier to the person named by email,
user id or CRM id (the person is created when the target is new).

=================== ========== ===================================================================
column              required   meaning
=================== ========== ===================================================================
``id_type``         yes        ``visitor`` (alias ``visitor_id``), ``email_click`` (alias
                               ``email_click_id``), ``user_id``, ``crm_id``, ``email``
``id_value``        yes        the identifier; for ``email`` an address (stored hashed and on the
                               profile)
``email``           one of     the target person's email
``user_id``         one of     the target person's user id
``crm_id``          one of     the target person's CRM id
=================== ========== ===================================================================

An identifier may not name the same type as the target (``id_type=email`` with an ``email``
target: use the person's user id or CRM id). Blocked values (``null``, ``undefined``,
``0``, ``anonymous``, ... REFERENCE.md) are bad rows, never stored.

Examples::

    email,user_id,name,title,seniority,department,company_domain,visitor_ids
    ada@brightpath.example,bp-1001,Ada Fictional,VP Engineering,vp,engineering,,v-1;v-2

    id_type,id_value,email,user_id,crm_id
    visitor,5f1c0a9e-77b1,ada@brightpath.example,,
    email_click,c-93af,,bp-1001,

Registry: :data:`IMPORT_KINDS` maps the kind name to an :class:`IdentityImportKind`
whose ``import_rows(rows, store, site_id, salt)`` takes ``(line, row)`` pairs and returns
the rows' problems (:class:`~pipeline.ops.importer.RowProblem`). Two ways in, both through
:func:`pipeline.ops.importer.import_file`, whose report has every bad row and every rule
refusal with its line number:

- :func:`register` ``(settings)`` adds both kinds to ``pipeline.ops.importer.KINDS`` (what
  ``leadstream import`` calls), writing through the importer's ``ReferenceStore`` connection
  with the site's salt from settings;
- :func:`import_identity_file` imports a file into a given identity store, site and salt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core.identity import (
    Identifier,
    IdentityOp,
    IdType,
    ImportedIdentity,
    LogEntry,
    SetProfile,
    apply_ops,
    hash_email,
    import_identity,
    is_blocked,
    normalize_email,
)
from pipeline.enrich.identity_store import SyncIdentityStore
from pipeline.enrich.names import normalize_domain
from pipeline.ops import importer
from pipeline.ops.importer import ImportKind, ImportReport, RowProblem

if TYPE_CHECKING:
    from pipeline.enrich.redis_store import ReferenceStore
    from pipeline.settings import Settings

__all__ = ["PersonRow", "IdentityRow", "IdentityImportKind", "IMPORT_KINDS", "import_people",
           "import_identities", "import_identity_file", "register", "DEFAULT_CHUNK_ROWS"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 500
LIST_SEPARATOR = ";"
MAX_ID_LENGTH = 256
MAX_LIST = 1000
# rule outcomes reported against the row (the row is otherwise imported)
_REPORTED_KINDS = frozenset({"blocked", "limit", "double_identified", "merge_cap", "invalid_email",
                             "unknown_click"})
# rule refusals after which the row's profile is not written (it may describe another person)
_REFUSALS = frozenset({"limit", "double_identified", "merge_cap"})


# ---------------------------------------------------------------------------- row models

class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


def _split_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(LIST_SEPARATOR) if part.strip()]
    return value


def _identifier(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    if is_blocked(value):
        raise ValueError(f"{what} {value!r} is a blocked placeholder value")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_ID_LENGTH} characters")
    return value


def _email(value: str | None) -> str | None:
    if value is None:
        return None
    email = normalize_email(value)
    if email is None:
        raise ValueError(f"{value!r} is not an email address")
    return email


def _label(value: str | None) -> str | None:
    if value is None:
        return None
    return "_".join(value.lower().replace("-", " ").split()) or None


class PersonRow(_Row):
    """One person of a CRM / enrichment export (module docstring, ``people``)."""
    email: str | None = None
    user_id: str | None = None
    crm_id: str | None = None
    name: str | None = Field(default=None, max_length=300)
    first_name: str | None = Field(default=None, max_length=150)
    last_name: str | None = Field(default=None, max_length=150)
    title: str | None = Field(default=None, max_length=300)
    seniority: str | None = Field(default=None, max_length=50)
    department: str | None = Field(default=None, max_length=100)
    company_domain: str | None = None
    company: str | None = Field(default=None, max_length=300)
    email_consent: str | None = Field(default=None, description="granted | denied (email sinks' consent basis)")
    visitor_ids: list[str] = Field(default_factory=list, max_length=MAX_LIST)
    email_click_ids: list[str] = Field(default_factory=list, max_length=MAX_LIST)

    _lists = field_validator("visitor_ids", "email_click_ids", mode="before")(_split_list)

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        return _email(value)

    @field_validator("user_id", "crm_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        return _identifier(value, "value")

    @field_validator("visitor_ids", "email_click_ids")
    @classmethod
    def _check_ids(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(v for v in (_identifier(x, "identifier") for x in value) if v))

    @field_validator("seniority", "department")
    @classmethod
    def _check_label(cls, value: str | None) -> str | None:
        return _label(value)

    @field_validator("email_consent")
    @classmethod
    def _check_consent(cls, value: str | None) -> str | None:
        from ..core.email_consent import email_consent
        return email_consent(value)

    @field_validator("company_domain")
    @classmethod
    def _check_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        domain = normalize_domain(value)
        if domain is None:
            raise ValueError(f"{value!r} is not a domain name")
        return domain

    @model_validator(mode="after")
    def _identified(self) -> PersonRow:
        if not (self.email or self.user_id or self.crm_id):
            raise ValueError("a person needs an email, user_id or crm_id")
        return self

    def to_identity(self) -> ImportedIdentity:
        profile = {k: v for k in ("name", "first_name", "last_name", "title", "seniority", "department",
                                  "company_domain", "company", "email_consent") if (v := getattr(self, k))}
        return ImportedIdentity(email=self.email, user_id=self.user_id, crm_id=self.crm_id,
                                email_click_ids=tuple(self.email_click_ids), visitor_ids=tuple(self.visitor_ids),
                                profile=profile)


_ID_TYPE_ALIASES = {"visitor_id": "visitor", "cookie": "visitor", "email_click_id": "email_click",
                    "click_id": "email_click", "userid": "user_id", "crm": "crm_id"}


class IdentityRow(_Row):
    """One explicit link: ``id_type``/``id_value`` to the person named by ``email``, ``user_id``
    or ``crm_id`` (module docstring, ``identities``)."""
    id_type: Literal["visitor", "email_click", "user_id", "crm_id", "email"]
    id_value: str
    email: str | None = None
    user_id: str | None = None
    crm_id: str | None = None

    @field_validator("id_type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_").replace(" ", "_")
            return _ID_TYPE_ALIASES.get(key, key)
        return value

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        return _email(value)

    @field_validator("user_id", "crm_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        return _identifier(value, "value")

    @model_validator(mode="after")
    def _check(self) -> IdentityRow:
        if self.id_type == "email":
            if normalize_email(self.id_value) is None:
                raise ValueError(f"id_value {self.id_value!r} is not an email address")
        else:
            _identifier(self.id_value, "id_value")
        if not (self.email or self.user_id or self.crm_id):
            raise ValueError("name the person by email, user_id or crm_id")
        if getattr(self, self.id_type, None) is not None:
            raise ValueError(f"id_type {self.id_type} with a {self.id_type} target: name the person another way")
        return self

    def to_identity(self) -> ImportedIdentity:
        value = self.id_value
        return ImportedIdentity(
            email=value if self.id_type == "email" else self.email,
            user_id=value if self.id_type == "user_id" else self.user_id,
            crm_id=value if self.id_type == "crm_id" else self.crm_id,
            email_click_ids=(value,) if self.id_type == "email_click" else (),
            visitor_ids=(value,) if self.id_type == "visitor" else ())


# ------------------------------------------------------------------------------ import

def _identifiers(row: ImportedIdentity, salt: str) -> list[Identifier]:
    """The identifiers :func:`import_identity` will look up for ``row`` (to load them first)."""
    ids: list[Identifier] = []
    if row.user_id:
        ids.append((IdType.user_id, row.user_id))
    if row.crm_id:
        ids.append((IdType.crm_id, row.crm_id))
    email = normalize_email(row.email)
    if email:
        ids.append((IdType.email, hash_email(email, salt)))
    ids += [(IdType.email_click, c) for c in row.email_click_ids]
    ids += [(IdType.visitor, v) for v in row.visitor_ids]
    return ids


def _import(rows: Sequence[tuple[int, ImportedIdentity]], store: SyncIdentityStore, site_id: str, salt: str,
            tstamp: int | None, chunk_rows: int) -> list[RowProblem]:
    stamp = int(time.time() * 1000) if tstamp is None else tstamp
    errors: list[RowProblem] = []
    for start in range(0, len(rows), max(1, chunk_rows)):
        chunk = rows[start:start + chunk_rows]
        snapshot = store.load_snapshot(site_id, [i for _, row in chunk for i in _identifiers(row, salt)])
        ops: list[IdentityOp] = []
        for line, row in chunk:
            result = import_identity(snapshot, row, tstamp=stamp, salt=salt, cfg=store.cfg)
            row_ops = list(result.ops)
            refusals = [op for op in row_ops if isinstance(op, LogEntry) and op.kind in _REFUSALS]
            reasons = [f"{op.kind}: {op.detail}" for op in row_ops
                       if isinstance(op, LogEntry) and op.kind in _REPORTED_KINDS]
            if refusals and any(isinstance(op, SetProfile) for op in row_ops):
                # the row's identity was refused in part: its profile may describe someone else
                row_ops = [op for op in row_ops if not isinstance(op, SetProfile)]
                reasons.append("profile not applied")
            snapshot = apply_ops(snapshot, row_ops) if len(row_ops) != len(result.ops) else result.snapshot
            ops.extend(row_ops)
            if result.person_id is None:
                errors.append(RowProblem(line, "not imported: " + ("; ".join(reasons) or "no usable identifier")))
            elif reasons:
                errors.append(RowProblem(line, "partly imported: " + "; ".join(reasons), imported=True))
        store.apply(site_id, ops, allow_plain_email=True)
    return errors


def import_people(rows: Sequence[tuple[int, PersonRow]], store: SyncIdentityStore, site_id: str, salt: str, *,
                  tstamp: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> list[RowProblem]:
    """Link and profile each person. Per chunk: two round trips to load, one MULTI to apply.
    Idempotent. Returns ``(line, reason)`` for rows the rules refused in whole or part."""
    return _import([(line, row.to_identity()) for line, row in rows], store, site_id, salt, tstamp, chunk_rows)


def import_identities(rows: Sequence[tuple[int, IdentityRow]], store: SyncIdentityStore, site_id: str, salt: str,
                      *, tstamp: int | None = None,
                      chunk_rows: int = DEFAULT_CHUNK_ROWS) -> list[RowProblem]:
    """Link each identifier to its person (created when new). Same contract as :func:`import_people`."""
    return _import([(line, row.to_identity()) for line, row in rows], store, site_id, salt, tstamp, chunk_rows)


ImportRows = Callable[[Sequence[tuple[int, Any]], SyncIdentityStore, str, str], list[RowProblem]]


@dataclass(frozen=True, slots=True)
class IdentityImportKind:
    """One identity import kind: its row model and ``import_rows(rows, store, site_id, salt)``
    taking ``(line, row)`` pairs of valid rows and returning ``(line, reason)`` problems."""
    name: str
    row_model: type[BaseModel]
    import_rows: ImportRows
    description: str = ""


IMPORT_KINDS: dict[str, IdentityImportKind] = {
    "people": IdentityImportKind("people", PersonRow, import_people,
                                 "people from a CRM or enrichment export (per site, needs the email salt)"),
    "identities": IdentityImportKind("identities", IdentityRow, import_identities,
                                     "explicit links: identifier to a person by email, user id or CRM id"),
}


def import_identity_file(kind: str, path: Path | str, store: SyncIdentityStore | None, *, site_id: str,
                         salt: str, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                         column_map: Mapping[str, str] | None = None) -> ImportReport:
    """Validate and import a ``people`` or ``identities`` file (CSV or JSON Lines, optionally
    gzipped) with :func:`pipeline.ops.importer.import_file`; ``store`` None validates only.
    Idempotent; bad rows and rows the identity rules refuse are reported with their line numbers."""
    spec = IMPORT_KINDS.get(kind)
    if spec is None:
        raise ValueError(f"unknown identity import kind {kind!r}; one of {', '.join(sorted(IMPORT_KINDS))}")

    def write(target: SyncIdentityStore, rows: Sequence[tuple[int, Any]], _site: str | None) -> list[RowProblem]:
        return spec.import_rows(rows, target, site_id, salt)

    reader_kind = importer.ImportKind(spec.name, spec.row_model, write, spec.description)
    return importer.import_file(reader_kind, path, store, site=site_id, progress=False, chunk_rows=chunk_rows,
                                column_map=column_map)


def _importer_kind(spec: IdentityImportKind, settings: Settings) -> ImportKind:
    def write(store: ReferenceStore, rows: Sequence[tuple[int, Any]], site: str | None) -> list[RowProblem]:
        if site is None:
            raise importer.ImportFileError(f"{spec.name} belong to one site: give --site")
        site_settings = settings.site(site)
        if site_settings is None:
            raise importer.ImportFileError(f"unknown site {site!r}")
        return spec.import_rows(rows, SyncIdentityStore(store), site, settings.email_salt(site_settings))

    return importer.ImportKind(spec.name, spec.row_model, write, spec.description)


def register(settings: Settings) -> None:
    """Add ``people`` and ``identities`` to ``pipeline.ops.importer.KINDS`` (idempotent).
    The salt comes from ``settings.email_salt`` of the ``--site`` given to the import."""
    for spec in IMPORT_KINDS.values():
        importer.register_kind(_importer_kind(spec, settings))
