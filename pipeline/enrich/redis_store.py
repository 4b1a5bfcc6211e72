"""Reference data in Redis: companies, IP ranges, organisation and domain indexes, ASN types.

Every read is pipelined per batch of events: :meth:`ReferenceStore.lookup_batch` answers the
IPs, organisation names, domains and ASNs of a whole Kafka record in one round trip. Writes
come from ``pipeline.ops.importer`` in chunks, one or two round trips per chunk.

The reads are written once, as plans that yield their round trips, and run by two clients:
:class:`ReferenceStore` (blocking ``redis``; reads and writes, for the CLI) and
:class:`AsyncReferenceStore` (``redis.asyncio``; reads only, for the stage workers, whose
event loop must never block on Redis).

Key layout (``ls`` is the namespace, ``{scope}`` is ``global`` or ``site:<site_id>``)::

    ls:{scope}:company:<domain>        hash   name, industry, employees, employee_range, revenue,
                                              revenue_range, country, sector, tags (JSON list);
                                              _orgs, _domains (JSON lists: the index entries it owns)
    ls:{scope}:org                     hash   normalized organisation name -> company domain
    ls:{scope}:domain                  hash   alias domain -> company domain
    ls:{scope}:ipnet:v4:<prefixlen>    hash   network address (8 hex digits) -> company domain
    ls:{scope}:ipnet:v6:<prefixlen>    hash   network address (32 hex digits) -> company domain
    ls:{scope}:ipnet:v4:plens          set    prefix lengths in use (likewise v6)
    ls:{scope}:asn                     hash   asn -> {"type": ..., "org": ...} (JSON)
    ls:{scope}:imports                 hash   kind -> last import summary (JSON)
    ls:ref:generation                  string incremented by every write above: the workers' caches
                                              of companies and networks follow it (about once a second)

Scope. Companies, ranges and ASN types are reference data shared by all sites (``global``)
unless imported for one site (``--site``); a lookup for a site reads its scope and the
global one in the same round trip, and the site's own entry wins. The identity graph is
per site by design and lives elsewhere.

IP ranges. A range is stored as the CIDR blocks that cover it, one hash per prefix length,
and looked up as routers do: longest prefix match. For a batch, each prefix length in use
costs one ``HMGET`` with the network address of every IP of the batch at that length, so
the command count grows with the number of distinct prefix lengths, not with events.
Nested ranges (a /28 inside a /24) resolve to the most specific one, which a sorted set
scored by range start cannot do in one query. IPv6 keys are exact (hex, no float scores).
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar, cast

import redis
import redis.asyncio
import redis.cluster

from ..redis_client import async_client, cluster_options, split_cluster_url
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from pipeline.core.company import CompanyLookups
from pipeline.core.company import RangeMatch as CoreRangeMatch
from pipeline.core.model import Company, NetworkInfo, Sector
from pipeline.enrich.names import normalize_domain, normalize_org

log = logging.getLogger(__name__)

GLOBAL_SCOPE = "global"
ASN_TYPES = ("isp", "hosting", "business", "education", "government")
COMPANY_FIELDS = ("name", "industry", "employees", "employee_range", "revenue", "revenue_range",
                  "country", "sector", "tags")
_INTERNAL_FIELDS = ("_orgs", "_domains")
_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# HDEL field only while it still points at the given value (an index entry a company owns).
_HDEL_IF_EQUAL = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def scope_for(site: str | None) -> str:
    """``global`` for shared reference data, ``site:<id>`` for one site's own data."""
    if site is None:
        return GLOBAL_SCOPE
    if not _SITE_ID.match(site):
        raise ValueError(f"invalid site id {site!r}")
    return f"site:{site}"


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis key layout in one place (see the module docstring)."""
    namespace: str = "ls"

    def company(self, scope: str, domain: str) -> str:
        return f"{self.namespace}:{scope}:company:{domain}"

    def org_index(self, scope: str) -> str:
        return f"{self.namespace}:{scope}:org"

    def domain_index(self, scope: str) -> str:
        return f"{self.namespace}:{scope}:domain"

    def ipnet(self, scope: str, version: int, prefixlen: int) -> str:
        return f"{self.namespace}:{scope}:ipnet:v{version}:{prefixlen}"

    def ipnet_prefixlens(self, scope: str, version: int) -> str:
        return f"{self.namespace}:{scope}:ipnet:v{version}:plens"

    def asn(self, scope: str) -> str:
        return f"{self.namespace}:{scope}:asn"

    def imports(self, scope: str) -> str:
        return f"{self.namespace}:{scope}:imports"

    def generation(self) -> str:
        """A counter every write of reference data increments: readers' caches follow it."""
        return f"{self.namespace}:ref:generation"


@dataclass(frozen=True, slots=True)
class CompanyRecord:
    """A company to store, with the organisation names and extra domains that identify it."""
    company: Company
    org_names: tuple[str, ...] = ()      # names as IP databases print them, besides company.name
    alias_domains: tuple[str, ...] = ()  # other domains the company uses (emails, GeoIP domain)


@dataclass(frozen=True, slots=True)
class RangeMatch:
    network: str   # the most specific imported CIDR containing the IP
    domain: str    # company domain
    scope: str     # global or site:<id>


@dataclass(frozen=True, slots=True)
class AsnInfo:
    asn: int
    type: str              # isp | hosting | business | education | government
    org: str | None = None


@dataclass(frozen=True, slots=True)
class BatchLookup:
    """Everything Redis knows about one batch's IPs, organisation names, domains and ASNs.

    ``companies`` holds the firmographics fetched or cached so far; ``missing_companies()``
    names referenced domains not fetched yet (``ReferenceStore.resolve_batch`` fetches them).
    """
    ranges: Mapping[str, RangeMatch] = field(default_factory=dict)   # ip as given -> range
    orgs: Mapping[str, str] = field(default_factory=dict)            # org name as given -> company domain
    domains: Mapping[str, str] = field(default_factory=dict)         # domain as given -> company domain
    asns: Mapping[int, AsnInfo] = field(default_factory=dict)
    companies: Mapping[str, Company] = field(default_factory=dict)   # company domain -> record
    absent: frozenset[str] = frozenset()                             # domains known to have no record

    def company(self, domain: str | None) -> Company | None:
        return self.companies.get(domain) if domain else None

    def company_for_ip(self, ip: str) -> Company | None:
        match = self.ranges.get(ip)
        return self.companies.get(match.domain) if match else None

    def company_for_org(self, org_name: str | None) -> Company | None:
        domain = self.orgs.get(org_name) if org_name else None
        return self.companies.get(domain) if domain else None

    def company_for_domain(self, domain: str | None) -> Company | None:
        target = self.domains.get(domain) if domain else None
        return self.companies.get(target) if target else None

    def referenced_domains(self) -> set[str]:
        refs = {m.domain for m in self.ranges.values()}
        refs.update(self.orgs.values())
        refs.update(self.domains.values())
        return refs

    def missing_companies(self) -> set[str]:
        return {d for d in self.referenced_domains() if d not in self.companies and d not in self.absent}

    def with_companies(self, companies: Mapping[str, Company | None]) -> BatchLookup:
        merged = dict(self.companies)
        merged.update({d: c for d, c in companies.items() if c is not None})
        absent = self.absent | {d for d, c in companies.items() if c is None}
        return replace(self, companies=merged, absent=frozenset(absent))

    def company_lookups(self, network: NetworkInfo) -> CompanyLookups:
        """The company waterfall's inputs (``pipeline.core.company``) for one visit's network:
        the imported range holding its IP, the known company its database domain (else
        organisation) names, and the one its ASN organisation names."""
        ip_range = None
        match = self.ranges.get(network.ip) if network.ip else None
        if match is not None:
            company = self.companies.get(match.domain) or Company(domain=match.domain)
            ip_range = CoreRangeMatch(company=company, cidr=match.network, source=f"import:{match.scope}")
        ip_org_company, ip_org_field = self.company_for_domain(network.domain), "domain"
        if ip_org_company is None:
            ip_org_company, ip_org_field = self.company_for_org(network.organization), "organization"
        return CompanyLookups(ip_range=ip_range, ip_org_company=ip_org_company, ip_org_field=ip_org_field,
                              asn_company=self.company_for_org(network.asn_org))

    def annotate(self, network: NetworkInfo) -> NetworkInfo:
        """``network`` with ``asn_type`` (and a missing ``asn_org``) filled from the ASN table."""
        info = self.asns.get(network.asn) if network.asn is not None else None
        if info is None:
            return network
        return replace(network, asn_type=network.asn_type or info.type, asn_org=network.asn_org or info.org)


def company_to_hash(company: Company) -> dict[str, str]:
    """The stored fields of a company (absent values are left out)."""
    values: dict[str, object] = {
        "name": company.name, "industry": company.industry, "employees": company.employees,
        "employee_range": company.employee_range, "revenue": company.revenue,
        "revenue_range": company.revenue_range, "country": company.country,
        "sector": company.sector.value, "tags": json.dumps(list(company.tags)) if company.tags else None}
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = str(value)
    return out


def company_from_hash(domain: str, data: Mapping[str, str]) -> Company | None:
    """A Company from its stored hash; None when the hash is empty. Never raises on odd values."""
    if not data:
        return None

    def _int(text: str | None) -> int | None:
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def _float(text: str | None) -> float | None:
        try:
            return float(text) if text else None
        except ValueError:
            return None

    try:
        sector = Sector(data.get("sector") or Sector.private.value)
    except ValueError:
        sector = Sector.unknown
    try:
        raw_tags = json.loads(data["tags"]) if data.get("tags") else []
        tags = tuple(str(t) for t in raw_tags) if isinstance(raw_tags, list) else ()
    except ValueError:
        tags = ()
    return Company(domain=domain, name=data.get("name", ""), industry=data.get("industry"),
                   employees=_int(data.get("employees")), employee_range=data.get("employee_range"),
                   revenue=_float(data.get("revenue")), revenue_range=data.get("revenue_range"),
                   country=data.get("country"), sector=sector, tags=tags)


def parse_ip(text: str) -> IPAddress | None:
    """An address from text (IPv4-mapped IPv6 read as IPv4), or None."""
    try:
        addr: IPAddress = ipaddress.ip_address(text.strip())
    except (ValueError, AttributeError):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _net_field(version: int, network_int: int) -> str:
    return format(network_int, "08x" if version == 4 else "032x")


def _network_int(addr: IPAddress, prefixlen: int) -> int:
    bits = addr.max_prefixlen
    return int(addr) >> (bits - prefixlen) << (bits - prefixlen) if prefixlen else 0


K = TypeVar("K")
V = TypeVar("V")


class _TTLCache(Generic[K, V]):
    """Bounded LRU with a TTL per entry; ``None`` values (negative entries) are cached too."""

    def __init__(self, maxsize: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._maxsize = maxsize
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return False, None
            if hit[0] < self._clock():
                del self._data[key]
                return False, None
            self._data.move_to_end(key)
            return True, hit[1]

    def put(self, key: K, value: V) -> None:
        if self._maxsize <= 0 or self._ttl <= 0:
            return
        with self._lock:
            self._data[key] = (self._clock() + self._ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class _CompanyCache(_TTLCache[tuple[str, str], "Company | None"]):
    """Company records per (scope, domain) (see :class:`_TTLCache`)."""


#: what one network (or one extra domain) of a batch is cached under: see ``_plan_resolve_networks``
_NetworkKey = tuple[Any, ...]


T = TypeVar("T")


class _Trip:
    """The read commands of one pipelined round trip, recorded by a plan and sent by a client
    (blocking :class:`ReferenceStore` or asyncio :class:`AsyncReferenceStore`)."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def hmget(self, key: str, fields: list[str]) -> None:
        self.commands.append(("hmget", (key, fields)))

    def smembers(self, key: str) -> None:
        self.commands.append(("smembers", (key,)))

    def hgetall(self, key: str) -> None:
        self.commands.append(("hgetall", (key,)))

    def get(self, key: str) -> None:
        self.commands.append(("get", (key,)))


#: A read written once as a generator: it yields each round trip and receives its replies.
Plan = Generator[_Trip, list[Any], T]


class _ReferenceReads:
    """The reads of the reference data, written once as plans (see :class:`_Trip`), with the
    in-process caches they share; the two clients below run them."""

    keys_: Keys
    _company_cache: _CompanyCache
    _network_cache: _TTLCache[_NetworkKey, BatchLookup]
    _prefixlens: dict[tuple[str, int], frozenset[int]]
    _prefixlens_lock: threading.Lock
    round_trips: int
    #: seconds between two reads of the reference data's generation (see ``_plan_check_generation``)
    generation_check_s: float = 1.0
    _generation: Any
    _generation_checked: float

    def _init_reads(self, namespace: str, company_cache_size: int, company_cache_ttl_s: float) -> None:
        self.keys_ = Keys(namespace)   # trailing underscore: Redis.keys is the KEYS command
        self._company_cache = _CompanyCache(company_cache_size, company_cache_ttl_s)
        # each network's resolved lookup (range, organisation, domain, ASN, companies), same size and
        # TTL as the company records: a worker sees few distinct networks, so most records need no
        # round trip at all (see ``_plan_resolve_networks``)
        self._network_cache = _TTLCache(company_cache_size, company_cache_ttl_s)
        self._prefixlens = {}
        self._prefixlens_lock = threading.Lock()
        self._generation = None
        self._generation_checked = float("-inf")
        self.round_trips = 0  # pipelines executed by this client's helpers (tests and metrics read it)

    def invalidate_caches(self) -> None:
        """Forget cached company records, network lookups and prefix lengths (after an import in this
        process; other processes see an import within ``company_cache_ttl_s``)."""
        self._company_cache.clear()
        self._network_cache.clear()
        with self._prefixlens_lock:
            self._prefixlens.clear()

    # ------------------------------------------------------------------ reads

    def _plan_lookup_batch(self, ips: Iterable[str] = (), org_names: Iterable[str | None] = (),
                           domains: Iterable[str | None] = (), asns: Iterable[int | None] = (), *,
                           site: str | None = None) -> Plan[BatchLookup]:
        """Ranges for ``ips``, company domains for ``org_names`` and ``domains``, ASN types for
        ``asns``, and company records for ``domains`` (plus any cached), in ONE round trip.

        A second round trip happens only when Redis holds an IP prefix length this process has
        not seen yet (its first lookup, or right after an import added one). Unparseable IPs
        and empty names are skipped, never raised on.
        """
        scopes = [scope_for(site), GLOBAL_SCOPE] if site else [GLOBAL_SCOPE]
        addrs: dict[str, IPAddress] = {}
        for ip in ips:
            if ip and ip not in addrs:
                addr = parse_ip(ip)
                if addr is not None:
                    addrs[ip] = addr
                    addrs.setdefault(str(addr), addr)   # NetworkInfo.ip carries the normalized form
        org_keys: dict[str, str] = {}
        for name in org_names:
            key = normalize_org(name)
            if name and key:
                org_keys[name] = key
        domain_keys: dict[str, str] = {}
        for raw in domains:
            norm = normalize_domain(raw)
            if raw and norm:
                domain_keys[raw] = norm
        asn_list = sorted({a for a in asns if a is not None and a > 0})

        pipe = _Trip()
        readers: list[Callable[[Any], None]] = []

        # ranges: per scope and IP version, the prefix-length set and one HMGET per known length
        range_hits: dict[str, list[tuple[int, int, str, str]]] = {}   # ip -> (scope rank, plen, domain, cidr)
        versions = sorted({a.version for a in addrs.values()})
        plen_checks: list[tuple[str, int, set[int]]] = []

        def queue_prefixlen(rank: int, scope: str, version: int, plen: int, p: _Trip,
                            sink: list[Callable[[Any], None]]) -> None:
            members = [(ip, _net_field(version, _network_int(a, plen))) for ip, a in addrs.items()
                       if a.version == version]
            fields = sorted({f for _, f in members})
            p.hmget(self.keys_.ipnet(scope, version, plen), fields)

            def read(values: list[str | None]) -> None:
                found = dict(zip(fields, values))
                for ip, fld in members:
                    domain = found.get(fld)
                    if domain:
                        range_hits.setdefault(ip, []).append((rank, plen, domain, _cidr(version, fld, plen)))
            sink.append(read)

        def check_prefixlens(scope: str, version: int, known: frozenset[int]) -> Callable[[Any], None]:
            def read(members: set[str]) -> None:
                plen_checks.append((scope, version, {int(m) for m in members} - known))
            return read

        def collect(into: dict[str, list[tuple[int, str]]], rank: int, keys: list[str]) -> Callable[[Any], None]:
            def read(values: list[str | None]) -> None:
                for key, value in zip(keys, values):
                    if value:
                        into.setdefault(key, []).append((rank, value))
            return read

        for rank, scope in enumerate(scopes):
            for version in versions:
                known = self._known_prefixlens(scope, version)
                pipe.smembers(self.keys_.ipnet_prefixlens(scope, version))
                readers.append(check_prefixlens(scope, version, known))
                for plen in sorted(known):
                    queue_prefixlen(rank, scope, version, plen, pipe, readers)

        # organisation names and alias domains
        org_found: dict[str, list[tuple[int, str]]] = {}
        if org_keys:
            key_list = sorted(set(org_keys.values()))
            for rank, scope in enumerate(scopes):
                pipe.hmget(self.keys_.org_index(scope), key_list)
                readers.append(collect(org_found, rank, key_list))
        alias_found: dict[str, list[tuple[int, str]]] = {}
        fetched: dict[tuple[str, str], Company | None] = {}
        cached: dict[tuple[str, str], Company | None] = {}
        if domain_keys:
            dom_list = sorted(set(domain_keys.values()))
            for rank, scope in enumerate(scopes):
                pipe.hmget(self.keys_.domain_index(scope), dom_list)
                readers.append(collect(alias_found, rank, dom_list))
                for dom in dom_list:
                    hit, company = self._company_cache.get((scope, dom))
                    if hit:
                        cached[(scope, dom)] = company
                        continue
                    pipe.hgetall(self.keys_.company(scope, dom))
                    readers.append(functools.partial(_store_company, fetched, scope, dom))

        asn_found: dict[int, AsnInfo] = {}

        def read_asns(values: list[str | None]) -> None:
            for asn, value in zip(asn_list, values):
                info = _parse_asn_value(asn, value) if value else None
                if info is not None:
                    asn_found[asn] = info

        if asn_list:
            for scope in reversed(scopes):   # global first, the site's entries overwrite
                pipe.hmget(self.keys_.asn(scope), [str(a) for a in asn_list])
                readers.append(read_asns)

        if readers:
            for read, result in zip(readers, (yield pipe)):
                read(result)

        # a prefix length this process had not seen: one more round trip, then it is known
        extra = [(s, v, new) for s, v, new in plen_checks if new]
        if extra:
            pipe2 = _Trip()
            readers2: list[Callable[[Any], None]] = []
            for new_scope, new_version, new in extra:
                self._learn_prefixlens(new_scope, new_version, new)
                for plen in sorted(new):
                    queue_prefixlen(scopes.index(new_scope), new_scope, new_version, plen, pipe2, readers2)
            for read, result in zip(readers2, (yield pipe2)):
                read(result)

        for cache_key, company in fetched.items():
            self._company_cache.put(cache_key, company)
        ranges: dict[str, RangeMatch] = {}
        for ip, hits in range_hits.items():
            rank, _plen, domain, cidr = min(hits, key=lambda h: (h[0], -h[1]))
            ranges[ip] = RangeMatch(network=cidr, domain=domain, scope=scopes[rank])
        orgs = {name: min(org_found[k])[1] for name, k in org_keys.items() if k in org_found}

        # companies: the first scope with a record wins
        records = {**cached, **fetched}
        companies: dict[str, Company] = {}
        absent: set[str] = set()
        domain_map: dict[str, str] = {}
        for raw, dom in domain_keys.items():
            direct = next((records[(s, dom)] for s in scopes if records.get((s, dom)) is not None), None)
            if direct is not None:
                companies[dom] = direct
                domain_map[raw] = dom
            elif dom in alias_found:
                domain_map[raw] = min(alias_found[dom])[1]
            else:
                absent.add(dom)
        lookup = BatchLookup(ranges=ranges, orgs=orgs, domains=domain_map, asns=asn_found,
                             companies=companies, absent=frozenset(absent))
        # referenced companies this process already has cached come for free
        from_cache: dict[str, Company | None] = {}
        for dom in lookup.missing_companies():
            entries = [self._company_cache.get((s, dom)) for s in scopes]
            if all(hit for hit, _ in entries):
                from_cache[dom] = next((c for _, c in entries if c is not None), None)
        return lookup.with_companies(from_cache) if from_cache else lookup

    def _plan_fetch_companies(self, domains: Iterable[str], *,
                              site: str | None = None) -> Plan[dict[str, Company | None]]:
        """Company records by domain (None where there is none), one round trip for the uncached."""
        scopes = [scope_for(site), GLOBAL_SCOPE] if site else [GLOBAL_SCOPE]
        wanted = sorted({d for d in (normalize_domain(x) for x in domains) if d})
        known: dict[tuple[str, str], Company | None] = {}
        to_fetch: list[tuple[str, str]] = []
        for dom in wanted:
            for scope in scopes:
                hit, company = self._company_cache.get((scope, dom))
                if hit:
                    known[(scope, dom)] = company
                else:
                    to_fetch.append((scope, dom))
        if to_fetch:
            pipe = _Trip()
            for scope, dom in to_fetch:
                pipe.hgetall(self.keys_.company(scope, dom))
            for (scope, dom), data in zip(to_fetch, (yield pipe)):
                company = company_from_hash(dom, data)
                known[(scope, dom)] = company
                self._company_cache.put((scope, dom), company)
        return {dom: next((known[(s, dom)] for s in scopes if known.get((s, dom)) is not None), None)
                for dom in wanted}

    def _plan_resolve_batch(self, ips: Iterable[str] = (), org_names: Iterable[str | None] = (),
                            domains: Iterable[str | None] = (), asns: Iterable[int | None] = (), *,
                            site: str | None = None) -> Plan[BatchLookup]:
        """``lookup_batch`` plus the company records it referenced: at most two round trips,
        one when the referenced companies are cached."""
        lookup = yield from self._plan_lookup_batch(ips, org_names, domains, asns, site=site)
        missing = lookup.missing_companies()
        if not missing:
            return lookup
        return lookup.with_companies((yield from self._plan_fetch_companies(missing, site=site)))

    def _plan_resolve_networks(self, networks: Iterable[NetworkInfo], *, domains: Iterable[str | None] = (),
                               site: str | None = None) -> Plan[BatchLookup]:
        """``resolve_batch`` for the networks of a batch (their IPs, organisation, ASN organisation,
        database domains and ASNs) plus extra ``domains`` (e.g. identified people's email domains).
        Use ``BatchLookup.annotate`` and ``BatchLookup.company_lookups`` on each network after.

        Each network's (and extra domain's) part of the answer is cached like the company
        records (bounded LRU, ``company_cache_ttl_s``, cleared by :meth:`invalidate_caches`, by a
        write in this process, and when another process wrote: see ``_plan_check_generation``):
        only the networks not cached are resolved, in one batch; none cached costs no round trip
        (but the generation read, at most once every ``generation_check_s``).
        """
        yield from self._plan_check_generation()
        parts: list[BatchLookup] = []
        missing_nets: dict[_NetworkKey, NetworkInfo] = {}
        missing_domains: dict[_NetworkKey, str] = {}
        def cached(key: _NetworkKey) -> bool:
            hit, part = self._network_cache.get(key)
            if hit and part is not None:
                parts.append(part)
                return True
            return False

        for n in networks:
            key: _NetworkKey = ("n", site, n.ip, n.organization, n.asn_org, n.domain, n.asn)
            if not cached(key):
                missing_nets.setdefault(key, n)
        for d in domains:
            if d and not cached(("d", site, d)):
                missing_domains.setdefault(("d", site, d), d)
        if missing_nets or missing_domains:
            nets = list(missing_nets.values())
            lookup = yield from self._plan_resolve_batch(
                ips=[n.ip for n in nets if n.ip],
                org_names=[name for n in nets for name in (n.organization, n.asn_org) if name],
                domains=[*(n.domain for n in nets if n.domain), *missing_domains.values()],
                asns=[n.asn for n in nets if n.asn], site=site)
            for key, n in missing_nets.items():
                part = _part_of(lookup, ips=(n.ip,), orgs=(n.organization, n.asn_org), domains=(n.domain,),
                                asns=(n.asn,))
                self._network_cache.put(key, part)
                parts.append(part)
            for key, d in missing_domains.items():
                part = _part_of(lookup, domains=(d,))
                self._network_cache.put(key, part)
                parts.append(part)
        return _merge_lookups(parts)

    def _plan_check_generation(self) -> Plan[None]:
        """At most every ``generation_check_s``, one read of the generation counter that every write
        of reference data increments (``upsert_*``, any process): when it moved, the caches are
        dropped, so an import by the CLI reaches a running worker within about that time."""
        now = time.monotonic()
        if now - self._generation_checked < self.generation_check_s:
            return
        trip = _Trip()
        trip.get(self.keys_.generation())
        (generation,) = yield trip
        self._generation_checked = now
        if generation != self._generation:
            if self._generation is not None:
                self.invalidate_caches()
            self._generation = generation

    def _known_prefixlens(self, scope: str, version: int) -> frozenset[int]:
        with self._prefixlens_lock:
            return self._prefixlens.get((scope, version), frozenset())

    def _learn_prefixlens(self, scope: str, version: int, new: set[int]) -> None:
        with self._prefixlens_lock:
            self._prefixlens[(scope, version)] = self._prefixlens.get((scope, version), frozenset()) | new



def _part_of(lookup: BatchLookup, ips: Iterable[str | None] = (), orgs: Iterable[str | None] = (),
             domains: Iterable[str | None] = (), asns: Iterable[int | None] = ()) -> BatchLookup:
    """The part of ``lookup`` that answers the given inputs (and the companies it references)."""
    ranges = {ip: lookup.ranges[ip] for ip in ips if ip and ip in lookup.ranges}
    org_map = {o: lookup.orgs[o] for o in orgs if o and o in lookup.orgs}
    dom_map = {d: lookup.domains[d] for d in domains if d and d in lookup.domains}
    asn_map = {a: lookup.asns[a] for a in asns if a is not None and a in lookup.asns}
    refs = {m.domain for m in ranges.values()} | set(org_map.values()) | set(dom_map.values())
    refs |= {n for n in (normalize_domain(d) for d in domains if d) if n}
    return BatchLookup(ranges=ranges, orgs=org_map, domains=dom_map, asns=asn_map,
                       companies={d: lookup.companies[d] for d in refs if d in lookup.companies},
                       absent=frozenset(lookup.absent & refs))


def _merge_lookups(parts: Sequence[BatchLookup]) -> BatchLookup:
    """One lookup answering everything ``parts`` answer (they come from the same reference data)."""
    if len(parts) == 1:
        return parts[0]
    ranges: dict[str, RangeMatch] = {}
    orgs: dict[str, str] = {}
    domains: dict[str, str] = {}
    asns: dict[int, AsnInfo] = {}
    companies: dict[str, Company] = {}
    absent: set[str] = set()
    for p in parts:
        ranges.update(p.ranges)
        orgs.update(p.orgs)
        domains.update(p.domains)
        asns.update(p.asns)
        companies.update(p.companies)
        absent |= p.absent
    return BatchLookup(ranges=ranges, orgs=orgs, domains=domains, asns=asns, companies=companies,
                       absent=frozenset(absent - companies.keys()))


class ReferenceStore(redis.Redis, _ReferenceReads):
    """A Redis client that reads and writes Leadstream's reference data.

    Build it with ``ReferenceStore.from_url(url)`` (responses are always decoded as UTF-8).
    Reads never raise on bad input values (unparseable IPs, empty names are skipped); Redis
    connection errors do raise, since the caller decides whether to retry or bad-row.

    Company records are cached in-process (``company_cache_ttl_s``, default 60 s, 0 turns the
    cache off): imports in another process become visible within that time.
    """

    def __init__(self, *args: Any, namespace: str = "ls", company_cache_size: int = 50_000,
                 company_cache_ttl_s: float = 60.0, **kwargs: Any) -> None:
        pool = kwargs.get("connection_pool")
        if pool is not None:
            if not pool.connection_kwargs.get("decode_responses"):
                raise ValueError("ReferenceStore needs a connection pool with decode_responses=True")
        else:
            kwargs["decode_responses"] = True
        super().__init__(*args, **kwargs)
        self._init_reads(namespace, company_cache_size, company_cache_ttl_s)
        self._hdel_if_equal = self.register_script(_HDEL_IF_EQUAL)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "ls", company_cache_size: int = 50_000,
                 company_cache_ttl_s: float = 60.0, **kwargs: Any) -> ReferenceStore:
        """A store on ``url``; a ``redis+cluster://`` URL gives a :class:`ClusterReferenceStore`."""
        kwargs["decode_responses"] = True
        if split_cluster_url(url)[0]:
            return cast(ReferenceStore, ClusterReferenceStore.from_url(
                url, namespace=namespace, company_cache_size=company_cache_size,
                company_cache_ttl_s=company_cache_ttl_s, **kwargs))
        pool = redis.ConnectionPool.from_url(url, **kwargs)
        store = cls(connection_pool=pool, namespace=namespace, company_cache_size=company_cache_size,
                    company_cache_ttl_s=company_cache_ttl_s)
        store.auto_close_connection_pool = True
        return store

    def _execute(self, pipe: Pipeline) -> list[Any]:
        self.round_trips += 1
        result: list[Any] = pipe.execute()
        return result

    def _run(self, plan: Plan[T]) -> T:
        try:
            trip = next(plan)
            while True:
                pipe = self.pipeline(transaction=False)
                for name, args in trip.commands:
                    getattr(pipe, name)(*args)
                trip = plan.send(self._execute(pipe))
        except StopIteration as stop:
            result: T = stop.value
            return result

    # ------------------------------------------------------------------ reads

    def lookup_batch(self, ips: Iterable[str] = (), org_names: Iterable[str | None] = (),
                     domains: Iterable[str | None] = (), asns: Iterable[int | None] = (), *,
                     site: str | None = None) -> BatchLookup:
        """Ranges for ``ips``, company domains for ``org_names`` and ``domains``, ASN types for
        ``asns``, and company records for ``domains`` (plus any cached), in ONE round trip.

        A second round trip happens only when Redis holds an IP prefix length this process has
        not seen yet (its first lookup, or right after an import added one). Unparseable IPs
        and empty names are skipped, never raised on.
        """
        return self._run(self._plan_lookup_batch(ips, org_names, domains, asns, site=site))

    def fetch_companies(self, domains: Iterable[str], *, site: str | None = None) -> dict[str, Company | None]:
        """Company records by domain (None where there is none), one round trip for the uncached."""
        return self._run(self._plan_fetch_companies(domains, site=site))

    def resolve_batch(self, ips: Iterable[str] = (), org_names: Iterable[str | None] = (),
                      domains: Iterable[str | None] = (), asns: Iterable[int | None] = (), *,
                      site: str | None = None) -> BatchLookup:
        """``lookup_batch`` plus the company records it referenced: at most two round trips,
        one when the referenced companies are cached."""
        return self._run(self._plan_resolve_batch(ips, org_names, domains, asns, site=site))

    def resolve_networks(self, networks: Iterable[NetworkInfo], *, domains: Iterable[str | None] = (),
                         site: str | None = None) -> BatchLookup:
        """``resolve_batch`` for the networks of a batch (their IPs, organisation, ASN organisation,
        database domains and ASNs) plus extra ``domains`` (e.g. identified people's email domains).
        Use ``BatchLookup.annotate`` and ``BatchLookup.company_lookups`` on each network after."""
        return self._run(self._plan_resolve_networks(networks, domains=domains, site=site))

    # ----------------------------------------------------------------- writes

    def upsert_companies(self, records: Sequence[CompanyRecord], *, site: str | None = None) -> None:
        """Store companies and their org-name and alias-domain index entries. Idempotent: the
        hash is replaced field by field (no empty window) and index entries a company no longer
        claims are removed if they still point at it. Two round trips per call."""
        if not records:
            return
        scope = scope_for(site)
        last: dict[str, CompanyRecord] = {r.company.domain: r for r in records}  # later rows win
        domains = list(last)
        pipe = self.pipeline(transaction=False)
        for dom in domains:
            pipe.hmget(self.keys_.company(scope, dom), list(_INTERNAL_FIELDS))
        previous = self._execute(pipe)

        pipe = self.pipeline(transaction=False)
        org_key, dom_key = self.keys_.org_index(scope), self.keys_.domain_index(scope)
        for dom, (old_orgs, old_domains) in zip(domains, previous):
            record = last[dom]
            orgs = sorted({k for k in (normalize_org(n) for n in (record.company.name, *record.org_names)) if k})
            aliases = sorted({a for a in (normalize_domain(d) for d in record.alias_domains) if a and a != dom})
            fields: dict[FieldT, EncodableT] = {k: v for k, v in company_to_hash(record.company).items()}
            fields["_orgs"] = json.dumps(orgs)
            fields["_domains"] = json.dumps(aliases)
            key = self.keys_.company(scope, dom)
            pipe.hset(key, mapping=fields)
            stale_fields = [f for f in COMPANY_FIELDS if f not in fields]
            if stale_fields:
                pipe.hdel(key, *stale_fields)
            if orgs:
                pipe.hset(org_key, mapping=dict.fromkeys(orgs, dom))
            for stale in set(_json_list(old_orgs)) - set(orgs):
                self._hdel_if_equal(keys=[org_key], args=[stale, dom], client=pipe)
            if aliases:
                pipe.hset(dom_key, mapping=dict.fromkeys(aliases, dom))
            for stale in set(_json_list(old_domains)) - set(aliases):
                self._hdel_if_equal(keys=[dom_key], args=[stale, dom], client=pipe)
        pipe.incr(self.keys_.generation())
        self._execute(pipe)
        self._company_cache.clear()
        self._network_cache.clear()

    def upsert_ranges(self, ranges: Iterable[tuple[IPNetwork, str]], *, site: str | None = None) -> None:
        """Map CIDR blocks to company domains (a block imported again is overwritten). One round trip."""
        scope = scope_for(site)
        by_key: dict[str, dict[FieldT, EncodableT]] = {}
        plens: dict[int, set[int]] = {}
        for network, domain in ranges:
            by_key.setdefault(self.keys_.ipnet(scope, network.version, network.prefixlen), {})[
                _net_field(network.version, int(network.network_address))] = domain
            plens.setdefault(network.version, set()).add(network.prefixlen)
        if not by_key:
            return
        pipe = self.pipeline(transaction=False)
        for key, mapping in by_key.items():
            pipe.hset(key, mapping=mapping)
        for version, lens in plens.items():
            pipe.sadd(self.keys_.ipnet_prefixlens(scope, version), *sorted(lens))
        pipe.incr(self.keys_.generation())
        self._execute(pipe)
        for version, lens in plens.items():
            self._learn_prefixlens(scope, version, lens)
        self._network_cache.clear()

    def upsert_asn_types(self, infos: Iterable[AsnInfo], *, site: str | None = None) -> None:
        """Store ASN -> type (and organisation). One round trip."""
        mapping: dict[FieldT, EncodableT] = {str(i.asn): json.dumps({"type": i.type, "org": i.org}, ensure_ascii=False) for i in infos}
        if mapping:
            pipe = self.pipeline(transaction=False)
            pipe.hset(self.keys_.asn(scope_for(site)), mapping=mapping)
            pipe.incr(self.keys_.generation())
            self._execute(pipe)
            self._network_cache.clear()

    def record_import(self, kind: str, summary: Mapping[str, Any], *, site: str | None = None) -> None:
        """Remember the last import of ``kind`` (shown by status commands)."""
        self.hset(self.keys_.imports(scope_for(site)), kind, json.dumps(dict(summary), default=str))

    def last_imports(self, *, site: str | None = None) -> dict[str, dict[str, Any]]:
        raw = self.hgetall(self.keys_.imports(scope_for(site)))
        return {str(kind): json.loads(value) for kind, value in raw.items()}


class AsyncReferenceStore(_ReferenceReads):
    """The reads of :class:`ReferenceStore` over ``redis.asyncio`` (the stage workers): same
    plans, round trips and caches, but a lookup awaits Redis instead of blocking the event
    loop. Writes stay with the blocking client (the CLI's imports).

    Build it with ``AsyncReferenceStore.from_url(url, **settings.redis.client_options())`` so a
    hung Redis fails a lookup after the socket timeout (the stage retries the record) instead
    of freezing the worker.
    """

    def __init__(self, client: redis.asyncio.Redis, *, namespace: str = "ls", company_cache_size: int = 50_000,
                 company_cache_ttl_s: float = 60.0) -> None:
        pool = getattr(client, "connection_pool", None)   # a cluster client has one per node
        if pool is not None and not pool.connection_kwargs.get("decode_responses"):
            raise ValueError("AsyncReferenceStore needs a client with decode_responses=True")
        self.client = client
        self._init_reads(namespace, company_cache_size, company_cache_ttl_s)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "ls", company_cache_size: int = 50_000,
                 company_cache_ttl_s: float = 60.0, **kwargs: Any) -> AsyncReferenceStore:
        kwargs["decode_responses"] = True
        return cls(async_client(url, **kwargs), namespace=namespace,  # type: ignore[arg-type]
                   company_cache_size=company_cache_size, company_cache_ttl_s=company_cache_ttl_s)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _run(self, plan: Plan[T]) -> T:
        try:
            trip = next(plan)
            while True:
                pipe = self.client.pipeline(transaction=False)
                for name, args in trip.commands:
                    getattr(pipe, name)(*args)
                self.round_trips += 1
                replies: list[Any] = await pipe.execute()
                trip = plan.send(replies)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def lookup_batch(self, ips: Iterable[str] = (), org_names: Iterable[str | None] = (),
                           domains: Iterable[str | None] = (), asns: Iterable[int | None] = (), *,
                           site: str | None = None) -> BatchLookup:
        """See :meth:`ReferenceStore.lookup_batch`."""
        return await self._run(self._plan_lookup_batch(ips, org_names, domains, asns, site=site))

    async def fetch_companies(self, domains: Iterable[str], *,
                              site: str | None = None) -> dict[str, Company | None]:
        """See :meth:`ReferenceStore.fetch_companies`."""
        return await self._run(self._plan_fetch_companies(domains, site=site))

    async def resolve_batch(self, ips: Iterable[str] = (), org_names: Iterable[str | None] = (),
                            domains: Iterable[str | None] = (), asns: Iterable[int | None] = (), *,
                            site: str | None = None) -> BatchLookup:
        """See :meth:`ReferenceStore.resolve_batch`."""
        return await self._run(self._plan_resolve_batch(ips, org_names, domains, asns, site=site))

    async def resolve_networks(self, networks: Iterable[NetworkInfo], *, domains: Iterable[str | None] = (),
                               site: str | None = None) -> BatchLookup:
        """See :meth:`ReferenceStore.resolve_networks`."""
        return await self._run(self._plan_resolve_networks(networks, domains=domains, site=site))


class ClusterReferenceStore(redis.cluster.RedisCluster):
    """:class:`ReferenceStore` on a Redis Cluster (``redis+cluster://`` URL, or ``redis.cluster: true``).

    ReferenceStore's methods run unchanged on the cluster client: single-key commands,
    non-transactional pipelines (the cluster client sends each command to its key's node)
    and a one-key script. They are ReferenceStore's own functions, attached below (one
    source), and the class is registered as a ReferenceStore, so ``isinstance`` and the
    type of ``ReferenceStore.from_url`` hold for both.
    """

    def __init__(self, *args: Any, namespace: str = "ls", company_cache_size: int = 50_000,
                 company_cache_ttl_s: float = 60.0, **kwargs: Any) -> None:
        kwargs["decode_responses"] = True
        super().__init__(*args, **kwargs)
        _ReferenceReads._init_reads(self, namespace, company_cache_size, company_cache_ttl_s)  # type: ignore[arg-type]
        self._hdel_if_equal = self.register_script(_HDEL_IF_EQUAL)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ClusterReferenceStore:
        store = super().from_url(split_cluster_url(url)[1], **cluster_options(kwargs))
        assert isinstance(store, ClusterReferenceStore)
        return store


for _klass in (_ReferenceReads, ReferenceStore):
    for _name, _member in vars(_klass).items():
        if inspect.isfunction(_member) and _name not in ("__init__", "from_url"):
            setattr(ClusterReferenceStore, _name, _member)
ReferenceStore.register(ClusterReferenceStore)


def _store_company(into: dict[tuple[str, str], Company | None], scope: str, domain: str,
                   data: Mapping[str, str]) -> None:
    into[(scope, domain)] = company_from_hash(domain, data)


def _cidr(version: int, field_hex: str, plen: int) -> str:
    value = int(field_hex, 16)
    network: IPNetwork = (ipaddress.IPv4Network((value, plen)) if version == 4
                          else ipaddress.IPv6Network((value, plen)))
    return str(network)


def _json_list(value: str | None) -> list[str]:
    if not value:
        return []
    try:
        data = json.loads(value)
    except ValueError:
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _parse_asn_value(asn: int, value: str) -> AsnInfo | None:
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return None
    org = data.get("org")
    return AsnInfo(asn=asn, type=data["type"], org=org if isinstance(org, str) else None)
