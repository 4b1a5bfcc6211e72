"""Build MaxMind-format (.mmdb) databases: for tests, and the demo's stand-in for GeoIP2 Enterprise.

The records follow the real layouts, so :class:`pipeline.enrich.geoip.GeoIPReader` (and any
geoip2 / libmaxminddb client) reads them like the commercial files:

* :func:`enterprise_record`: GeoIP2 Enterprise (City layout + ``traits`` with ``user_type``,
  ``connection_type``, ``organization``, ``domain``, ``isp``, ASN, anonymizer flags);
* :func:`asn_record`: GeoLite2 / GeoIP2 ASN; :func:`isp_record`: GeoIP2 ISP;
* :func:`ipinfo_country_asn_record`: IPinfo's free ``country_asn.mmdb``.

Databases are IPv6 trees with IPv4 mapped at ``::/96``, as MaxMind ships them, so one file
answers both families. Needs ``mmdb-writer`` and ``netaddr`` (imported when a file is written).

:func:`build_demo_databases` turns ``demo_data/networks.csv`` (documentation address
ranges only) into demo Enterprise and ASN databases.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_DATA_DIR = Path(__file__).with_name("demo_data")

MmdbRecord = dict[str, Any]


def write_mmdb(path: Path | str, entries: Iterable[tuple[str, Mapping[str, Any]]], *, database_type: str,
               description: str = "built by leadstream", ip_version: int = 6) -> Path:
    """Write ``(cidr, record)`` pairs to an .mmdb file and return its path.

    With ``ip_version=6`` (the default) IPv4 networks are stored at ``::/96`` like MaxMind's
    files. A more specific network inserted after a broader one wins inside it.
    """
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError as exc:
        raise RuntimeError("writing the demo GeoIP databases needs the local extra: "
                           "pip install 'leadstream[local]'") from exc

    writer = MMDBWriter(ip_version=ip_version, database_type=database_type, languages=["en"],
                        description={"en": description}, ipv4_compatible=ip_version == 6)
    # Broad networks first, so nested (more specific) networks override them.
    ordered = sorted(((ipaddress.ip_network(cidr), dict(record)) for cidr, record in entries),
                     key=lambda item: (item[0].version, item[0].prefixlen))
    for network, record in ordered:
        writer.insert_network(IPSet([str(network)]), record)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(out))
    log.info("geoip_build: wrote %s (%s, %d networks)", out, database_type, len(ordered))
    return out


def _names(name: str | None) -> dict[str, Any] | None:
    return {"names": {"en": name}} if name else None


def enterprise_record(*, country: str | None = None, region: str | None = None, city: str | None = None,
                      latitude: float | None = None, longitude: float | None = None,
                      asn: int | None = None, asn_org: str | None = None, isp: str | None = None,
                      organization: str | None = None, domain: str | None = None, user_type: str | None = None,
                      connection_type: str | None = None, is_anonymous_vpn: bool = False,
                      is_tor_exit_node: bool = False, is_hosting_provider: bool = False) -> MmdbRecord:
    """One GeoIP2 Enterprise record (omitting what is None)."""
    record: MmdbRecord = {}
    if country:
        record["country"] = {"iso_code": country.upper(), "names": {"en": country.upper()}}
        record["registered_country"] = {"iso_code": country.upper(), "names": {"en": country.upper()}}
    if region:
        record["subdivisions"] = [{"names": {"en": region}}]
    if city:
        record["city"] = _names(city)
    if latitude is not None and longitude is not None:
        record["location"] = {"latitude": float(latitude), "longitude": float(longitude), "accuracy_radius": 20}
    traits: MmdbRecord = {k: v for k, v in {
        "autonomous_system_number": asn, "autonomous_system_organization": asn_org, "isp": isp,
        "organization": organization, "domain": domain, "user_type": user_type,
        "connection_type": connection_type}.items() if v not in (None, "")}
    anonymous = is_anonymous_vpn or is_tor_exit_node or is_hosting_provider
    for flag, value in (("is_anonymous_vpn", is_anonymous_vpn), ("is_tor_exit_node", is_tor_exit_node),
                        ("is_hosting_provider", is_hosting_provider), ("is_anonymous", anonymous)):
        if value:
            traits[flag] = True
    if traits:
        record["traits"] = traits
    return record


def asn_record(asn: int, org: str) -> MmdbRecord:
    """One GeoLite2-ASN record."""
    return {"autonomous_system_number": asn, "autonomous_system_organization": org}


def isp_record(*, asn: int | None = None, asn_org: str | None = None, isp: str | None = None,
               organization: str | None = None) -> MmdbRecord:
    """One GeoIP2-ISP record."""
    return {k: v for k, v in {"autonomous_system_number": asn, "autonomous_system_organization": asn_org,
                              "isp": isp, "organization": organization}.items() if v is not None}


def ipinfo_country_asn_record(*, asn: int, as_name: str, as_domain: str, country: str,
                              country_name: str = "", continent: str = "", continent_name: str = "") -> MmdbRecord:
    """One record of IPinfo's free ``country_asn.mmdb`` (all strings, ASN as "AS123")."""
    return {"country": country, "country_name": country_name or country, "continent": continent,
            "continent_name": continent_name, "asn": f"AS{asn}", "as_name": as_name, "as_domain": as_domain}


def _opt_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def demo_network_rows(path: Path | None = None) -> list[dict[str, str]]:
    """The rows of ``demo_data/networks.csv``: what the demo's stand-in GeoIP database says."""
    with (path or DEMO_DATA_DIR / "networks.csv").open(encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def build_demo_databases(out_dir: Path | str) -> dict[str, Path]:
    """Write the demo Enterprise and ASN databases into ``out_dir``.

    Returns ``{"enterprise_db": path, "asn_db": path}``: keys are ``GeoIPSettings`` fields, so
    ``GeoIPSettings(**build_demo_databases(d))`` configures the demo. The networks are the
    documentation ranges of ``demo_data/networks.csv`` with business, residential, cellular,
    hosting, government, college and privacy-relay user types. Idempotent: rewrites the files.
    """
    out = Path(out_dir)
    enterprise: list[tuple[str, MmdbRecord]] = []
    asns: list[tuple[str, MmdbRecord]] = []
    for row in demo_network_rows():
        asn = int(row["asn"]) if row["asn"].strip() else None
        enterprise.append((row["network"], enterprise_record(
            country=row["country"] or None, region=row["region"] or None, city=row["city"] or None,
            latitude=_opt_float(row["latitude"]), longitude=_opt_float(row["longitude"]),
            asn=asn, asn_org=row["asn_org"] or None, isp=row["isp"] or None,
            organization=row["organization"] or None, domain=row["domain"] or None,
            user_type=row["user_type"] or None, connection_type=row["connection_type"] or None,
            is_anonymous_vpn=row["anonymous"] == "vpn", is_tor_exit_node=row["anonymous"] == "tor")))
        if asn is not None:
            asns.append((row["network"], asn_record(asn, row["asn_org"])))
    return {
        "enterprise_db": write_mmdb(out / "Leadstream-Demo-Enterprise.mmdb", enterprise,
                                    database_type="Leadstream-Demo-Enterprise (compat=GeoIP2-Enterprise)",
                                    description="Leadstream demo: synthetic, documentation ranges only"),
        "asn_db": write_mmdb(out / "Leadstream-Demo-ASN.mmdb", asns,
                             database_type="Leadstream-Demo-ASN (compat=GeoLite2-ASN)",
                             description="Leadstream demo: synthetic, documentation ASNs only"),
    }
