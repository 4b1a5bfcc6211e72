"""Domain values shared by the pure core and the adapters that feed it.

Plain frozen dataclasses: no Kafka, no Redis, no I/O. Adapters in
``pipeline.enrich`` build them from databases and Redis; rules in
``pipeline.core`` consume them. Extend additively (new fields with defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class NetworkClass(str, Enum):
    """What kind of network an IP belongs to; only ``business`` names an employer by itself."""
    business = "business"
    isp = "isp"                # residential / consumer broadband
    mobile = "mobile"
    hosting = "hosting"        # data centres, clouds, CDNs
    education = "education"
    government = "government"
    military = "military"
    privacy = "privacy"        # VPN, Tor, anonymizers, privacy relays
    unknown = "unknown"


class Sector(str, Enum):
    private = "private"
    public_sector = "public_sector"
    government = "government"
    education = "education"
    non_profit = "non_profit"
    military = "military"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One reason behind a resolution: where it came from and how sure it is (0..1)."""
    source: str          # e.g. "ip_range", "geoip_domain", "asn_org", "identity_graph", "identify"
    detail: str          # human readable: "203.0.113.0/24 imported from ranges.csv"
    confidence: float


@dataclass(frozen=True, slots=True)
class Geo:
    country: str | None = None     # ISO 3166-1 alpha-2
    region: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """What the IP databases say about a client IP (all optional: databases vary)."""
    ip: str | None = None
    geo: Geo = Geo()
    asn: int | None = None
    asn_org: str | None = None
    isp: str | None = None
    organization: str | None = None
    domain: str | None = None          # the database's domain for the IP (GeoIP2 Domain / Enterprise)
    user_type: str | None = None       # MaxMind user_type
    connection_type: str | None = None # MaxMind connection_type
    asn_type: str | None = None        # IPinfo-style type from an imported ASN table
    is_anonymous: bool = False         # VPN / Tor / proxy / relay flags
    network_class: NetworkClass = NetworkClass.unknown
    sources: tuple[str, ...] = ()      # databases that answered


@dataclass(frozen=True, slots=True)
class Device:
    browser: str | None = None
    browser_version: str | None = None
    os: str | None = None
    device_class: str = "unknown"      # desktop | mobile | tablet | bot | unknown
    is_bot: bool = False
    bot_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Company:
    """Firmographics of one company, keyed by its primary domain."""
    domain: str
    name: str = ""
    industry: str | None = None
    employees: int | None = None          # headcount (or the range's lower bound)
    employee_range: str | None = None     # "51-200"
    revenue: float | None = None          # annual, USD
    revenue_range: str | None = None
    country: str | None = None
    sector: Sector = Sector.private
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompanyResolution:
    company: Company | None
    confidence: float
    evidence: tuple[Evidence, ...] = ()
    network_class: NetworkClass = NetworkClass.unknown   # the visit's network, carried with every resolution


@dataclass(frozen=True, slots=True)
class Person:
    person_id: str
    email_hash: str | None = None
    email: str | None = None              # only when the site owner supplied it (import)
    user_id: str | None = None
    name: str | None = None
    title: str | None = None
    seniority: str | None = None          # e.g. c_level, vp, director, manager, senior, entry
    department: str | None = None         # e.g. engineering, marketing, sales, finance, it
    company_domain: str | None = None
    traits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PersonResolution:
    person: Person | None
    confidence: float
    evidence: tuple[Evidence, ...] = ()
    source: str | None = None   # the identity link's source: identify | login | form | import | email_click | server
