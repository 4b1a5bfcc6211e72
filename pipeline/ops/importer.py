"""``leadstream import``: load reference data files into Redis.

``import_file(kind, path, store)`` reads a CSV (header row) or JSON Lines file, optionally
gzipped, validates every row with the kind's pydantic model, and upserts the valid rows in
chunks (one or two pipelined round trips per chunk). A bad row never stops the import: it
is reported with its line number and the reason. Columns (CSV) and keys (JSON Lines) that
the kind does not know are ignored with a warning that names them (CRM exports always carry
extra columns); ``column_map`` maps a file's column to a field (``--map "Company Domain=domain"``).
Importing the same file twice leaves
Redis in the same state. The formats are documented in ``IMPORT_FORMATS.md`` next to
this module.

Adding a kind is one row model, one write function and one ``register_kind`` call::

    class PersonRow(BaseModel): ...
    def _write_people(store, rows, site): ...   # rows: (line, row) pairs; returns RowProblems
    register_kind(ImportKind("people", PersonRow, _write_people, "people from a CRM export"))
"""

from __future__ import annotations

import csv
import gzip
import io
import ipaddress
import json
import logging
import difflib
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.core.model import Company, Sector
from pipeline.enrich.names import normalize_domain
from pipeline.enrich.redis_store import AsnInfo, CompanyRecord, ReferenceStore

log = logging.getLogger(__name__)

FileFormat = Literal["csv", "jsonl"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_CHUNK_ROWS = 1000
LIST_SEPARATOR = ";"                 # separates values inside one CSV cell (tags, aliases, domains)
MIN_PREFIXLEN = {4: 8, 6: 16}        # broader ranges are refused: no company owns a /7
MAX_STORED_ERRORS = 10_000           # errors beyond this are counted, not kept

DEMO_DATA_DIR = Path(__file__).with_name("demo_data")
# The synthetic demo data set by kind (demo_data/README.md). people.jsonl waits for the people kind.
DEMO_FILES: dict[str, Path] = {
    "companies": DEMO_DATA_DIR / "companies.csv",
    "ip-ranges": DEMO_DATA_DIR / "ranges.csv",
    "asn-types": DEMO_DATA_DIR / "asn-types.csv",
}


# ------------------------------------------------------------------------- row models

class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


def _split_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(LIST_SEPARATOR) if part.strip()]
    return value


def _domain(value: str) -> str:
    domain = normalize_domain(value)
    if domain is None:
        raise ValueError(f"{value!r} is not a domain name")
    return domain


_SECTOR_SYNONYMS = {"public": "public_sector", "nonprofit": "non_profit", "ngo": "non_profit",
                    "charity": "non_profit", "gov": "government", "edu": "education", "mil": "military",
                    "": "private"}
_EMPLOYEE_RANGE = re.compile(r"^(\d+)(?:-(\d+)|\+)$")


class CompanyRow(_Row):
    """One company: its primary domain and firmographics (``IMPORT_FORMATS.md``, companies)."""
    domain: str
    name: str = Field(min_length=1, max_length=300)
    industry: str | None = Field(default=None, max_length=200)
    employees: int | None = Field(default=None, ge=0, le=10_000_000)
    employee_range: str | None = None
    revenue: float | None = Field(default=None, ge=0)
    revenue_range: str | None = Field(default=None, max_length=50)
    country: str | None = None
    sector: Sector = Sector.private
    tags: list[str] = Field(default_factory=list, max_length=50)
    aliases: list[str] = Field(default_factory=list, max_length=50)
    domains: list[str] = Field(default_factory=list, max_length=50)
    customer: bool = False     # an existing customer: stored as the tag ``customer`` (never a new lead)

    _split = field_validator("tags", "aliases", "domains", mode="before")(_split_list)

    @field_validator("domain")
    @classmethod
    def _primary_domain(cls, value: str) -> str:
        return _domain(value)

    @field_validator("domains")
    @classmethod
    def _other_domains(cls, value: list[str]) -> list[str]:
        return [_domain(v) for v in value]

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not (len(value) == 2 and value.isascii() and value.isalpha()):
            raise ValueError("must be an ISO 3166-1 alpha-2 code like US or DE")
        return value.upper()

    @field_validator("sector", mode="before")
    @classmethod
    def _sector(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_").replace(" ", "_")
            return _SECTOR_SYNONYMS.get(key, key)
        return value

    @field_validator("employee_range")
    @classmethod
    def _employee_range(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _EMPLOYEE_RANGE.match(value.replace(" ", ""))
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ValueError("must look like 51-200 or 10001+")
        return match.group(0)

    def to_record(self) -> CompanyRecord:
        employees = self.employees
        if employees is None and self.employee_range:
            match = _EMPLOYEE_RANGE.match(self.employee_range)
            employees = int(match.group(1)) if match else None
        company = Company(domain=self.domain, name=self.name, industry=self.industry, employees=employees,
                          employee_range=self.employee_range, revenue=self.revenue,
                          revenue_range=self.revenue_range, country=self.country, sector=self.sector,
                          tags=tuple(self.tags) + (("customer",) if self.customer and "customer" not in
                                                   {t.lower() for t in self.tags} else ()))
        return CompanyRecord(company=company, org_names=tuple(self.aliases), alias_domains=tuple(self.domains))


class IpRangeRow(_Row):
    """A network owned by a company: ``cidr``, or ``start_ip`` and ``end_ip`` (inclusive)."""
    cidr: str | None = None
    start_ip: str | None = None
    end_ip: str | None = None
    domain: str

    # a plain default: a default_factory here costs pydantic a signature inspection per row
    _networks: tuple[IPNetwork, ...] = PrivateAttr(default=())

    @field_validator("domain")
    @classmethod
    def _company_domain(cls, value: str) -> str:
        return _domain(value)

    @model_validator(mode="after")
    def _parse_networks(self) -> IpRangeRow:
        if self.cidr and (self.start_ip or self.end_ip):
            raise ValueError("give either cidr or start_ip and end_ip, not both")
        networks: list[IPNetwork]
        if self.cidr:
            try:
                networks = [ipaddress.ip_network(self.cidr, strict=True)]
            except ValueError as exc:
                try:
                    loose = ipaddress.ip_network(self.cidr, strict=False)
                except ValueError:
                    raise ValueError(f"cidr {self.cidr!r} is not a network: {exc}") from None
                raise ValueError(f"cidr {self.cidr!r} has host bits set; did you mean {loose}?") from None
        elif self.start_ip and self.end_ip:
            try:
                start, end = ipaddress.ip_address(self.start_ip), ipaddress.ip_address(self.end_ip)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
            if start.version != end.version:
                raise ValueError("start_ip and end_ip are of different IP versions")
            if int(start) > int(end):
                raise ValueError(f"start_ip {start} is after end_ip {end}")
            networks = list(ipaddress.summarize_address_range(start, end))
        else:
            raise ValueError("give cidr, or start_ip and end_ip")
        for network in networks:
            if network.prefixlen < MIN_PREFIXLEN[network.version]:
                raise ValueError(f"{network} is broader than /{MIN_PREFIXLEN[network.version]}; "
                                 "split it or check the row")
        self._networks = tuple(networks)
        return self

    @property
    def networks(self) -> list[IPNetwork]:
        return list(self._networks)


class AsnTypeRow(_Row):
    """What kind of network an autonomous system is (IPinfo's ASN types)."""
    asn: int = Field(gt=0, lt=2**32)
    type: Literal["isp", "hosting", "business", "education", "government"]  # redis_store.ASN_TYPES
    org: str | None = Field(default=None, max_length=300)

    @field_validator("asn", mode="before")
    @classmethod
    def _asn(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().upper().removeprefix("AS")
        return value

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


# ---------------------------------------------------------------------- kinds registry

class RowProblem(NamedTuple):
    """What a writer reports about one row: its line, why, and whether it was imported anyway (a warning)."""
    line: int
    reason: str
    imported: bool = False


#: (store, [(line, valid row), ...], site) -> the rows' problems; an idempotent upsert.
RowWriter = Callable[[Any, Sequence[tuple[int, Any]], "str | None"], list[RowProblem]]


@dataclass(frozen=True, slots=True)
class ImportKind:
    """One importable kind: its row model and how a chunk of valid rows is written."""
    name: str
    row_model: type[BaseModel]
    write: RowWriter
    description: str = ""


KINDS: dict[str, ImportKind] = {}


def register_kind(kind: ImportKind) -> ImportKind:
    KINDS[kind.name] = kind
    return kind


def _write_companies(store: ReferenceStore, rows: Sequence[tuple[int, Any]], site: str | None) -> list[RowProblem]:
    store.upsert_companies([row.to_record() for _, row in rows], site=site)
    return []


def _write_ranges(store: ReferenceStore, rows: Sequence[tuple[int, Any]], site: str | None) -> list[RowProblem]:
    store.upsert_ranges([(network, row.domain) for _, row in rows for network in row.networks], site=site)
    return []


def _write_asn_types(store: ReferenceStore, rows: Sequence[tuple[int, Any]], site: str | None) -> list[RowProblem]:
    store.upsert_asn_types([AsnInfo(asn=row.asn, type=row.type, org=row.org) for _, row in rows], site=site)
    return []


register_kind(ImportKind("companies", CompanyRow, _write_companies, "firmographics by company domain"))
register_kind(ImportKind("ip-ranges", IpRangeRow, _write_ranges, "IP ranges (CIDR or start-end) to company domain"))
register_kind(ImportKind("asn-types", AsnTypeRow, _write_asn_types, "ASN to isp/hosting/business/education/government"))


# ---------------------------------------------------------------------------- reading

@dataclass(slots=True)
class ImportReport:
    """What an import did. ``errors`` are ``(line number, reason)``; line 1 is a CSV header."""
    kind: str
    path: str
    format: str = ""
    imported: int = 0
    skipped: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)   # about the file, e.g. ignored columns; not errors
    check: bool = False                                 # validated only (no store): nothing was written

    @property
    def ok(self) -> bool:
        return not self.errors and self.skipped == 0

    def add_error(self, line: int, reason: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_STORED_ERRORS:
            self.errors.append((line, reason))

    def add_written(self, rows: int, problems: Sequence[RowProblem]) -> None:
        """A chunk of ``rows`` valid rows was written; ``problems`` are what the writer reported."""
        failed = 0
        for problem in problems:
            if problem.imported:  # a warning: reported, not counted as skipped
                if len(self.errors) < MAX_STORED_ERRORS:
                    self.errors.append((problem.line, problem.reason))
            else:
                self.add_error(problem.line, problem.reason)
                failed += 1
        self.imported += rows - failed

    def summary(self) -> str:
        done = f"would import {self.imported}" if self.check else f"{self.imported} imported"
        return (f"{self.kind}: {done}, {self.skipped} skipped from {self.path} "
                f"({self.format}, {self.duration_s:.1f}s)" + (" - nothing written (--check)" if self.check else ""))


class ImportFileError(ValueError):
    """The file as a whole cannot be read (not CSV or JSON Lines, bad header)."""


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(raw file for progress, decompressed stream)."""
    raw = path.open("rb")
    magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if path.suffix == ".gz" or magic == b"\x1f\x8b":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw, raw


def detect_format(path: Path | str) -> FileFormat:
    """``csv`` or ``jsonl``: by extension (``.csv``, ``.jsonl``, ``.ndjson``, ``.json``, optionally
    ``.gz``), else by content: a first non-blank character ``{`` means JSON Lines."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raw, stream = _open(p)
    try:
        head = stream.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    finally:
        stream.close()
        raw.close()
    return "jsonl" if head.startswith("{") else "csv"


def _lines(stream: IO[bytes]) -> Iterator[str]:
    # surrogateescape keeps bad bytes visible to the row check instead of failing the file
    first = True
    for raw_line in stream:
        text = raw_line.decode("utf-8", errors="surrogateescape")
        if first:
            text = text.removeprefix("\ufeff")
            first = False
        yield text


def _utf8_ok(values: Sequence[str]) -> bool:
    try:
        for value in values:
            value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def column_name(text: str) -> str:
    """A header cell or key as a field name: case-insensitive, spaces and dashes as ``_``."""
    return text.strip().lower().replace(" ", "_").replace("-", "_")


def parse_column_map(items: Sequence[str]) -> dict[str, str]:
    """``["Company Domain=domain", ...]`` (the CLI's ``--map``) as {column name: field}; ValueError if malformed."""
    mapping: dict[str, str] = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column.strip() or not target.strip():
            raise ValueError(f"--map {item!r}: write it as column=field, e.g. 'Company Domain=domain'")
        mapping[column_name(column)] = column_name(target)
    return mapping


Warn = Callable[[str], None]


def _ignored(kind: ImportKind, names: Sequence[str], what: str) -> str:
    """The warning for unknown columns or keys, with a suggestion for likely typos."""
    known = list(kind.row_model.model_fields)
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return f"ignored unknown {what}(s): {', '.join(parts)} (known: {', '.join(known)}; map one with --map column=field)"


def _check_map(kind: ImportKind, column_map: Mapping[str, str]) -> None:
    known = set(kind.row_model.model_fields)
    wrong = [target for target in column_map.values() if target not in known]
    if wrong:
        raise ImportFileError(f"--map to unknown field(s) {', '.join(wrong)} (fields of {kind.name}: "
                              f"{', '.join(kind.row_model.model_fields)})")


def _header(kind: ImportKind, row: list[str], column_map: Mapping[str, str], warn: Warn) -> list[str | None]:
    """The field each column fills, None for an ignored column (reported through ``warn``)."""
    _check_map(kind, column_map)
    known = set(kind.row_model.model_fields)
    named = [column_name(c) for c in row]
    columns: list[str | None] = []
    unknown: list[str] = []
    for original, name in zip(row, named):
        target = column_map.get(name, name)
        if target in known:
            columns.append(target)
        else:
            columns.append(None)
            if name:
                unknown.append(original.strip())
    used = [c for c in columns if c is not None]
    required = [name for name, f in kind.row_model.model_fields.items() if f.is_required()]
    missing = [c for c in required if c not in used]
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    twice = sorted({c for c in used if used.count(c) > 1})
    if twice:
        problems.append(f"more than one column for {', '.join(twice)}")
    if problems:
        hint = f"; ignored: {', '.join(unknown)}" if unknown else ""
        raise ImportFileError(f"{'; '.join(problems)} (expected columns: {', '.join(known)}{hint}; "
                              "map a column with --map column=field)")
    if unknown:
        warn(_ignored(kind, unknown, "column"))
    return columns


def _csv_rows(kind: ImportKind, stream: IO[bytes], column_map: Mapping[str, str],
              warn: Warn) -> Iterator[tuple[int, BaseModel | str]]:
    reader = csv.reader(_lines(stream))
    try:
        header_row = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportFileError(f"not a CSV file: {exc}") from None
    columns = _header(kind, header_row, column_map, warn)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, f"malformed CSV: {exc}"
            continue
        if not row or all(not cell.strip() for cell in row):
            continue
        if not _utf8_ok(row):
            yield start, "not valid UTF-8"
            continue
        if len(row) > len(columns):
            yield start, f"{len(row)} values for {len(columns)} columns"
            continue
        data = {col: cell for col, cell in zip(columns, row) if col is not None and cell.strip()}
        try:
            yield start, kind.row_model.model_validate(data)
        except ValidationError as exc:
            yield start, _format_validation(exc)


def _jsonl_rows(kind: ImportKind, stream: IO[bytes], column_map: Mapping[str, str],
                warn: Warn) -> Iterator[tuple[int, BaseModel | str]]:
    _check_map(kind, column_map)
    known = set(kind.row_model.model_fields)
    unknown: dict[str, None] = {}
    try:
        yield from _jsonl_lines(kind, stream, column_map, known, unknown)
    finally:
        if unknown:
            warn(_ignored(kind, list(unknown), "key"))


def _jsonl_lines(kind: ImportKind, stream: IO[bytes], column_map: Mapping[str, str], known: set[str],
                 unknown: dict[str, None]) -> Iterator[tuple[int, BaseModel | str]]:
    for number, line in enumerate(_lines(stream), start=1):
        if not line.strip():
            continue
        if not _utf8_ok([line]):
            yield number, "not valid UTF-8"
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            yield number, f"not valid JSON: {exc}"
            continue
        if not isinstance(data, dict):
            yield number, "a line must hold one JSON object"
            continue
        fields: dict[str, Any] = {}
        for key, value in data.items():
            name = column_map.get(column_name(str(key)), str(key))
            if name not in known:
                name = column_name(name)
            if name not in known:
                unknown.setdefault(str(key)[:80])
            elif value is not None and value != "":
                fields[name] = value
        data = fields
        try:
            yield number, kind.row_model.model_validate(data)
        except ValidationError as exc:
            yield number, _format_validation(exc)


def _kind(kind: str | ImportKind) -> ImportKind:
    if isinstance(kind, ImportKind):
        return kind
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown import kind {kind!r}; one of {', '.join(sorted(KINDS))}") from None


def read_rows(kind: str | ImportKind, path: Path | str, *, fmt: FileFormat | None = None,
              column_map: Mapping[str, str] | None = None,
              warnings: list[str] | None = None) -> Iterator[tuple[int, BaseModel | str]]:
    """Each data row of ``path`` as ``(line, validated row)`` or ``(line, reason)``. No I/O besides
    reading the file; raises ImportFileError when the file as a whole is unreadable. Ignored
    columns or keys are reported on ``warnings`` (when given)."""
    spec = _kind(kind)
    p = Path(path)
    raw, stream = _open(p)
    try:
        rows = _csv_rows if (fmt or detect_format(p)) == "csv" else _jsonl_rows
        yield from rows(spec, stream, column_map or {}, (warnings if warnings is not None else []).append)
    finally:
        stream.close()
        raw.close()


def import_file(kind: str | ImportKind, path: Path | str, store: Any | None, *,
                site: str | None = None, progress: bool = True,
                chunk_rows: int = DEFAULT_CHUNK_ROWS,
                column_map: Mapping[str, str] | None = None) -> ImportReport:
    """Validate and write every row of ``path`` to ``store`` with the kind's writer (``None``: validate
    only, the report says "would import").

    Unknown columns (keys) are ignored and named in ``report.warnings``; ``column_map``
    ({column: field}, see :func:`parse_column_map`) maps a column to a field.

    Idempotent: importing a file again gives the same Redis state. Bad rows, and rows the
    writer refuses, are reported with their line numbers and skipped; the rest is imported.
    A progress bar is drawn on stderr when it is a terminal and ``progress`` is true. With a
    ``ReferenceStore`` its caches are invalidated and the import recorded. Raises ValueError
    for an unknown kind, FileNotFoundError for a missing file, ImportFileError for an
    unreadable file; Redis errors propagate (earlier chunks stay imported, re-running is safe).
    """
    spec = _kind(kind)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    fmt = detect_format(p)
    report = ImportReport(kind=spec.name, path=str(p), format=fmt, check=store is None)
    started = time.monotonic()
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                   TimeRemainingColumn(), console=console, disable=not (progress and console.is_terminal),
                   transient=False)
    raw, stream = _open(p)
    chunk: list[tuple[int, BaseModel]] = []

    def flush() -> None:
        if chunk:
            report.add_written(len(chunk), spec.write(store, chunk, site) if store is not None else [])
        chunk.clear()

    try:
        with bar:
            task = bar.add_task(f"import {spec.name}", total=p.stat().st_size)
            rows = _csv_rows if fmt == "csv" else _jsonl_rows
            for line, row in rows(spec, stream, column_map or {}, report.warnings.append):
                if isinstance(row, str):
                    report.add_error(line, row)
                    continue
                chunk.append((line, row))
                if len(chunk) >= chunk_rows:
                    flush()
                    bar.update(task, completed=raw.tell())
            flush()
            bar.update(task, completed=p.stat().st_size)
    except ImportFileError as exc:
        report.errors.append((1, str(exc)))
    finally:
        stream.close()
        raw.close()
    report.duration_s = time.monotonic() - started
    if isinstance(store, ReferenceStore):
        store.invalidate_caches()
        store.record_import(spec.name, {"path": str(p), "imported": report.imported, "skipped": report.skipped,
                                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, site=site)
    log.info("import %s", report.summary())
    for warning in report.warnings:
        log.warning("import %s: %s", spec.name, warning)
    for line, reason in report.errors[:20]:
        log.warning("import %s: line %d: %s", spec.name, line, reason)
    return report


def import_demo_data(store: ReferenceStore, *, site: str | None = None,
                     progress: bool = False) -> list[ImportReport]:
    """Import the synthetic demo data set (every kind in ``DEMO_FILES``). Idempotent."""
    return [import_file(kind, path, store, site=site, progress=progress) for kind, path in DEMO_FILES.items()]
