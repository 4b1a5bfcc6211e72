"""Network classification of a client IP from what the IP databases said.

Precedence, first decisive answer wins (each step's basis is reported):

1. ``is_anonymous`` (VPN / Tor / proxy / relay flags) -> ``privacy``.
2. MaxMind ``user_type`` (Enterprise / Insights), the most specific field.
3. MaxMind ``connection_type`` (Cellular -> mobile, Cable/DSL / Dialup / Satellite -> isp,
   Corporate -> business).
4. Imported ASN type: IPinfo ``type`` (isp, hosting, business, education, government)
   or PeeringDB ``info_type`` (NSP, Content, Cable/DSL/ISP, Enterprise, ...).
5. Organisation-name keywords over ``organization``, ``isp`` and ``asn_org`` (in that
   order of fields; keyword groups in the order privacy, hosting, military, government,
   education, mobile, isp, business).
6. ``unknown``. An organisation name alone never makes a network ``business``
   unless a business keyword (``Inc``, ``GmbH``, ``Ltd`` ...) matches: unknown is the
   safe default because only business networks name an employer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .model import NetworkClass, NetworkInfo

__all__ = ["NetworkVerdict", "classify_network", "network_verdict", "USER_TYPE_CLASSES",
           "CONNECTION_TYPE_CLASSES", "ASN_TYPE_CLASSES", "ORG_KEYWORDS"]

N = NetworkClass

USER_TYPE_CLASSES: dict[str, NetworkClass] = {
    "business": N.business, "cafe": N.isp, "cellular": N.mobile, "college": N.education,
    "consumer_privacy_network": N.privacy, "content_delivery_network": N.hosting, "dialup": N.isp,
    "government": N.government, "hosting": N.hosting, "library": N.isp, "military": N.military,
    "residential": N.isp, "router": N.isp, "school": N.education, "search_engine_spider": N.hosting,
    "traveler": N.isp,
}
CONNECTION_TYPE_CLASSES: dict[str, NetworkClass] = {
    "cellular": N.mobile, "cable/dsl": N.isp, "dialup": N.isp, "satellite": N.isp, "corporate": N.business,
}
ASN_TYPE_CLASSES: dict[str, NetworkClass] = {
    # IPinfo
    "isp": N.isp, "hosting": N.hosting, "business": N.business, "education": N.education,
    "government": N.government,
    # PeeringDB info_type
    "nsp": N.isp, "cable/dsl/isp": N.isp, "content": N.hosting, "enterprise": N.business,
    "educational/research": N.education, "route server": N.hosting, "network services": N.isp,
}
ORG_KEYWORDS: tuple[tuple[NetworkClass, tuple[str, ...]], ...] = (
    (N.privacy, ("vpn", "tor exit", "mullvad", "nordvpn", "expressvpn", "protonvpn", "private internet access",
                 "icloud private relay", "anonymizer", "proxy")),
    (N.hosting, ("amazon", "aws", "google cloud", "google llc", "microsoft azure", "azure", "digitalocean",
                 "ovh", "hetzner", "linode", "akamai", "cloudflare", "fastly", "hosting", "data center",
                 "datacenter", "leaseweb", "vultr", "oracle cloud", "alibaba", "tencent cloud", "scaleway",
                 "contabo", "rackspace", "choopa", "m247", "colocation", "server", "cdn")),
    (N.military, ("army", "navy", "air force", "defense", "defence", "dod network", "military")),
    (N.government, ("government", "ministry", "federal", "bundes", "city of", "county of", "state of",
                    "department of", "municipality", "council", "parliament", "gov")),
    (N.education, ("university", "universitat", "universität", "université", "universidad", "college",
                   "school", "academy", "polytechnic", "institute of technology", "research and education",
                   "edu")),
    (N.mobile, ("mobile", "wireless", "cellular", "t-mobile", "lte", "5g")),
    (N.isp, ("comcast", "vodafone", "telekom", "telecom", "broadband", "cable", "charter", "spectrum",
             "at&t", "verizon", "orange", "virgin media", "telefonica", "cox communications", "communications",
             "telecommunications", "internet service", "dsl", "fiber", "fibre", "sky broadband", "telstra",
             "rogers", "bell canada", "british telecommunications", "bt", "free sas", "kpn", "swisscom",
             "telenor", "telia", "isp")),
    (N.business, ("inc", "gmbh", "ltd", "llc", "corp", "corporation", "plc", "s.a.", "ag", "b.v.", "oy", "ab")),
)
_COMPILED = tuple((cls, re.compile(r"(?<![\w])(?:" + "|".join(re.escape(k) for k in kws) + r")(?![\w])",
                                   re.IGNORECASE)) for cls, kws in ORG_KEYWORDS)


@dataclass(frozen=True, slots=True)
class NetworkVerdict:
    network_class: NetworkClass
    basis: str          # "anonymous_flag" | "user_type:<v>" | "connection_type:<v>" | "asn_type:<v>" | "org_keyword:<field>:<kw>" | "none"


def _org_class(name: str) -> tuple[NetworkClass, str] | None:
    for cls, rx in _COMPILED:
        m = rx.search(name)
        if m:
            return cls, m.group(0).lower()
    return None


def network_verdict(info: NetworkInfo) -> NetworkVerdict:
    """The network class of ``info`` and which input decided it (precedence in the module doc)."""
    if info.is_anonymous:
        return NetworkVerdict(N.privacy, "anonymous_flag")
    if info.user_type:
        cls = USER_TYPE_CLASSES.get(info.user_type.strip().lower())
        if cls is not None:
            return NetworkVerdict(cls, f"user_type:{info.user_type}")
    if info.connection_type:
        cls = CONNECTION_TYPE_CLASSES.get(info.connection_type.strip().lower())
        if cls is not None:
            return NetworkVerdict(cls, f"connection_type:{info.connection_type}")
    if info.asn_type:
        cls = ASN_TYPE_CLASSES.get(info.asn_type.strip().lower())
        if cls is not None:
            return NetworkVerdict(cls, f"asn_type:{info.asn_type}")
    for field_name, value in (("organization", info.organization), ("isp", info.isp), ("asn_org", info.asn_org)):
        if value:
            found = _org_class(value)
            if found is not None:
                return NetworkVerdict(found[0], f"org_keyword:{field_name}:{found[1]}")
    return NetworkVerdict(N.unknown, "none")


def classify_network(info: NetworkInfo) -> NetworkClass:
    """Shorthand for ``network_verdict(info).network_class``."""
    return network_verdict(info).network_class
