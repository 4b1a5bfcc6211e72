"""IP intelligence from MaxMind-format (.mmdb) databases: GeoIP2/GeoLite2, DB-IP, IPinfo.

:class:`GeoIPReader` opens every configured database once (``shared_reader`` keeps one
reader per process and configuration) and answers :meth:`GeoIPReader.lookup` with a
:class:`~pipeline.core.model.NetworkInfo` merged from all of them, behind an LRU cache per IP.

How records are read. Each file is opened once with ``maxminddb.open_database``, exactly
as ``geoip2.database.Reader`` does internally; we keep the raw handle so that one open
file serves both layouts:

* MaxMind layouts (City, Country, Enterprise, ISP, ASN, Connection-Type, Anonymous-IP, and
  the DB-IP files that copy them) are turned into ``geoip2.models`` objects, so field
  semantics are geoip2's.
* Vendor layouts with other field names are read from the raw dict: IPinfo's
  ``country_asn.mmdb`` (``country`` = ISO code, ``country_name``, ``asn`` = "AS15169",
  ``as_name``, ``as_domain``), IPinfo Lite (``country`` = name, ``country_code``, ...),
  IPinfo ASN (``asn``, ``name``, ``domain``, ``type``), IPinfo location (``city``,
  ``region``, ``lat``, ``lng``) and IPinfo privacy flags (``vpn``, ``proxy``, ``tor``, ``relay``).

The layout is recognised per record by its keys, so a mislabelled file still reads.
When several databases answer, the first one that has a field wins, in the order
enterprise, city, country, isp, connection_type, anonymous_ip, asn (anonymous flags are OR-ed).

``network_class`` is left ``unknown``: classification is a core rule
(``pipeline.core.network``), not an adapter's.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geoip2.models
import maxminddb

from pipeline.core.model import Geo, NetworkInfo
from pipeline.settings import GeoIPSettings

log = logging.getLogger(__name__)

# GeoIPSettings field -> role, in the order their answers take precedence.
ROLE_ORDER: tuple[str, ...] = (
    "enterprise_db", "city_db", "country_db", "isp_db", "connection_type_db", "anonymous_ip_db", "asn_db")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never in any IP database; answered without a lookup. Documentation ranges
# (RFC 5737, RFC 3849) are looked up on purpose: demo and test databases use them.
_NOT_ROUTED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/3", "::/127", "fc00::/7", "fe80::/10", "ff00::/8"))

_NESTED_KEYS = frozenset({"traits", "country", "city", "location", "continent", "registered_country",
                          "represented_country", "subdivisions", "postal"})
_MAXMIND_FLAT_KEYS = frozenset({
    "autonomous_system_number", "autonomous_system_organization", "isp", "organization",
    "connection_type", "is_anonymous", "is_anonymous_vpn", "is_public_proxy", "is_tor_exit_node",
    "is_residential_proxy", "is_hosting_provider", "user_type", "mobile_country_code"})
_ANON_KEYS = frozenset({"is_anonymous", "is_anonymous_vpn", "is_public_proxy", "is_tor_exit_node",
                        "is_residential_proxy", "is_hosting_provider"})


class GeoIPError(Exception):
    """A configured database cannot be opened (missing, not an .mmdb file)."""


@dataclass(frozen=True, slots=True)
class OpenDatabase:
    role: str               # GeoIPSettings field name, e.g. "enterprise_db"
    path: Path
    database_type: str      # from the file's metadata, e.g. "GeoLite2-City", "DBIP-ASN-Lite (compat=GeoLite2-ASN)"
    reader: maxminddb.Reader


class _Draft:
    """Fields collected across databases; the first non-empty value of each field wins."""

    __slots__ = ("country", "region", "city", "latitude", "longitude", "asn", "asn_org", "isp",
                 "organization", "domain", "user_type", "connection_type", "asn_type", "is_anonymous",
                 "sources")

    def __init__(self) -> None:
        self.country: str | None = None
        self.region: str | None = None
        self.city: str | None = None
        self.latitude: float | None = None
        self.longitude: float | None = None
        self.asn: int | None = None
        self.asn_org: str | None = None
        self.isp: str | None = None
        self.organization: str | None = None
        self.domain: str | None = None
        self.user_type: str | None = None
        self.connection_type: str | None = None
        self.asn_type: str | None = None
        self.is_anonymous = False
        self.sources: list[str] = []

    def offer(self, name: str, value: object) -> None:
        if value is None or value == "":
            return
        if getattr(self, name) is None:
            setattr(self, name, value)

    def build(self, ip: str) -> NetworkInfo:
        geo = Geo(country=self.country, region=self.region, city=self.city,
                  latitude=self.latitude, longitude=self.longitude)
        return NetworkInfo(
            ip=ip, geo=geo, asn=self.asn, asn_org=self.asn_org, isp=self.isp,
            organization=self.organization, domain=self.domain.lower() if self.domain else None,
            user_type=self.user_type, connection_type=self.connection_type, asn_type=self.asn_type,
            is_anonymous=self.is_anonymous, sources=tuple(self.sources))


def _parse_asn(value: object) -> int | None:
    """ASN as MaxMind (int) or IPinfo ("AS15169") writes it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str):
        text = value.strip().upper().removeprefix("AS")
        return int(text) if text.isdigit() and int(text) > 0 else None
    return None


def _country_code(value: object) -> str | None:
    if isinstance(value, str) and len(value) == 2 and value.isalpha():
        return value.upper()
    return None


def _float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _absorb_nested(draft: _Draft, ip: str, record: dict[str, Any], locales: list[str]) -> None:
    """MaxMind City / Country / Enterprise layout (and DB-IP files that copy it)."""
    model = geoip2.models.Enterprise(locales, ip_address=ip, **record)
    draft.offer("country", model.country.iso_code or model.registered_country.iso_code)
    if model.subdivisions:
        first = model.subdivisions[0]
        draft.offer("region", first.name or first.iso_code)
    draft.offer("city", model.city.name)
    draft.offer("latitude", model.location.latitude)
    draft.offer("longitude", model.location.longitude)
    traits = model.traits
    draft.offer("asn", traits.autonomous_system_number)
    draft.offer("asn_org", traits.autonomous_system_organization)
    draft.offer("isp", traits.isp)
    draft.offer("organization", traits.organization)
    draft.offer("domain", traits.domain)
    draft.offer("user_type", traits.user_type)
    draft.offer("connection_type", traits.connection_type)
    if (traits.is_anonymous_vpn or traits.is_tor_exit_node or traits.is_public_proxy
            or traits.is_residential_proxy or (traits.is_anonymous and not traits.is_hosting_provider)):
        draft.is_anonymous = True


def _absorb_maxmind_flat(draft: _Draft, ip: str, record: dict[str, Any]) -> None:
    """MaxMind ISP / ASN / Connection-Type / Anonymous-IP / Domain layouts (flat)."""
    isp = geoip2.models.ISP(ip, **record)
    draft.offer("asn", isp.autonomous_system_number)
    draft.offer("asn_org", isp.autonomous_system_organization)
    draft.offer("isp", isp.isp)
    draft.offer("organization", isp.organization)
    draft.offer("domain", _str(record.get("domain")))
    draft.offer("user_type", _str(record.get("user_type")))
    if "connection_type" in record:
        draft.offer("connection_type", geoip2.models.ConnectionType(ip, **record).connection_type)
    if _ANON_KEYS & record.keys():
        anon = geoip2.models.AnonymousIP(ip, **record)
        if (anon.is_anonymous_vpn or anon.is_tor_exit_node or anon.is_public_proxy
                or anon.is_residential_proxy or (anon.is_anonymous and not anon.is_hosting_provider)):
            draft.is_anonymous = True


def _absorb_vendor(draft: _Draft, record: dict[str, Any]) -> None:
    """IPinfo (country_asn, Lite, ASN, location, privacy) and other flat vendor layouts."""
    draft.offer("country", _country_code(record.get("country_code")) or _country_code(record.get("country")))
    draft.offer("region", _str(record.get("region")))
    draft.offer("city", _str(record.get("city")))
    draft.offer("latitude", _float(record.get("latitude", record.get("lat"))))
    draft.offer("longitude", _float(record.get("longitude", record.get("lng"))))
    draft.offer("asn", _parse_asn(record.get("asn")))
    draft.offer("asn_org", _str(record.get("as_name")) or _str(record.get("asn_name")) or _str(record.get("name")))
    draft.offer("domain", _str(record.get("as_domain")) or _str(record.get("domain")))
    draft.offer("asn_type", _str(record.get("type")) or _str(record.get("as_type")))
    draft.offer("isp", _str(record.get("isp")) or _str(record.get("carrier")))
    company = record.get("company")
    if isinstance(company, dict):
        draft.offer("organization", _str(company.get("name")))
        draft.offer("domain", _str(company.get("domain")))
    else:
        draft.offer("organization", _str(record.get("organization")) or _str(record.get("org")))
    if any(record.get(flag) is True for flag in ("vpn", "proxy", "tor", "relay")):
        draft.is_anonymous = True


def _is_nested(record: dict[str, Any]) -> bool:
    """MaxMind's nested layout: ``country``, ``traits``... are maps (IPinfo's are strings)."""
    return any(isinstance(record.get(key), (dict, list)) for key in _NESTED_KEYS)


def _not_routed(addr: IPAddress) -> bool:
    return any(addr in net for net in _NOT_ROUTED if net.version == addr.version)


class GeoIPReader:
    """Every configured .mmdb database, opened once, merged into one NetworkInfo per IP.

    ``lookup`` never raises on input: a malformed, missing, private or unknown address gives a
    NetworkInfo with nothing filled in. Thread-safe (maxminddb readers are; the cache is
    ``functools.lru_cache``). Opening raises :class:`GeoIPError` for an unreadable file, so a
    bad configuration fails at start, not per event.
    """

    def __init__(self, databases: Mapping[str, Path | str | None], *, cache_size: int = 65_536,
                 locales: Iterable[str] = ("en",)) -> None:
        unknown = set(databases) - set(ROLE_ORDER)
        if unknown:
            raise ValueError(f"unknown database role(s) {sorted(unknown)}; expected some of {list(ROLE_ORDER)}")
        self._locales = list(locales)
        opened: list[OpenDatabase] = []
        for role in ROLE_ORDER:
            path = databases.get(role)
            if path is None:
                continue
            try:
                reader = maxminddb.open_database(str(path))
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                for db in opened:
                    db.reader.close()
                raise GeoIPError(f"{role}: cannot open {path}: {exc}") from exc
            db_type = str(reader.metadata().database_type)
            opened.append(OpenDatabase(role=role, path=Path(path), database_type=db_type, reader=reader))
            log.info("geoip: opened %s %s (%s)", role, path, db_type)
        self._databases = tuple(opened)
        self._lookup_cached = functools.lru_cache(maxsize=cache_size)(self._lookup_uncached)

    @classmethod
    def from_settings(cls, settings: GeoIPSettings, *, cache_size: int = 65_536) -> GeoIPReader:
        return cls({role: getattr(settings, role) for role in ROLE_ORDER}, cache_size=cache_size)

    @property
    def databases(self) -> tuple[OpenDatabase, ...]:
        return self._databases

    def lookup(self, ip: str | None) -> NetworkInfo:
        """What the databases say about ``ip``. Never raises; cached per IP string."""
        if not ip:
            return NetworkInfo()
        return self._lookup_cached(ip)

    def lookup_many(self, ips: Iterable[str | None]) -> dict[str, NetworkInfo]:
        """``lookup`` for each distinct non-empty IP of a batch."""
        return {ip: self._lookup_cached(ip) for ip in set(ips) if ip}

    def cache_info(self) -> functools._CacheInfo:
        return self._lookup_cached.cache_info()

    def close(self) -> None:
        self._lookup_cached.cache_clear()
        for db in self._databases:
            db.reader.close()

    def __enter__(self) -> GeoIPReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lookup_uncached(self, ip: str) -> NetworkInfo:
        try:
            addr: IPAddress = ipaddress.ip_address(ip.strip())
        except ValueError:
            return NetworkInfo()
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        text = str(addr)
        if _not_routed(addr) or not self._databases:
            return NetworkInfo(ip=text)
        draft = _Draft()
        for db in self._databases:
            try:
                record = db.reader.get(addr)
                if not isinstance(record, dict) or not record:
                    continue
                if _is_nested(record):
                    _absorb_nested(draft, text, record, self._locales)
                elif _MAXMIND_FLAT_KEYS & record.keys():
                    _absorb_maxmind_flat(draft, text, record)
                else:
                    _absorb_vendor(draft, record)
            except ValueError:
                # an IPv6 address asked of an IPv4-only database: that database has nothing to say
                continue
            except Exception:  # a corrupt record must not stop the stream; the bug is visible in logs
                log.exception("geoip: %s failed for %s", db.database_type, text)
                continue
            if db.database_type not in draft.sources:
                draft.sources.append(db.database_type)
        return draft.build(text)


_SHARED: dict[tuple[tuple[str, str], ...], GeoIPReader] = {}
_SHARED_LOCK = threading.Lock()


def shared_reader(settings: GeoIPSettings) -> GeoIPReader:
    """The process-wide reader for these settings: each database file is opened once per process."""
    key = tuple((role, str(getattr(settings, role))) for role in ROLE_ORDER if getattr(settings, role))
    with _SHARED_LOCK:
        reader = _SHARED.get(key)
        if reader is None:
            reader = _SHARED[key] = GeoIPReader.from_settings(settings)
        return reader
