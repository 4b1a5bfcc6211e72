"""The demo end to end through the enrichment adapters and the core rules: demo GeoIP databases
built from demo_data/networks.csv, demo reference data imported into a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.company import resolve_company
from pipeline.core.model import NetworkClass
from pipeline.core.network import classify_network
from pipeline.enrich.geoip import GeoIPReader
from pipeline.enrich.redis_store import ReferenceStore
from pipeline.local.redis import RedisServer
from pipeline.ops.geoip_build import build_demo_databases
from pipeline.ops.importer import import_demo_data
from pipeline.settings import GeoIPSettings


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[ReferenceStore]:
    client = ReferenceStore.from_url(redis_server.url)
    client.flushdb()
    import_demo_data(client)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def geoip(tmp_path: Path) -> Iterator[GeoIPReader]:
    with GeoIPReader.from_settings(GeoIPSettings(**build_demo_databases(tmp_path))) as reader:
        yield reader


# ip -> (network class, company domain or None, evidence sources)
EXPECTED = {
    "203.0.113.5": (NetworkClass.business, "brightpath-analytics.example", {"ip_range", "ip_org"}),
    "2001:db8:100::7": (NetworkClass.business, "brightpath-analytics.example", {"ip_range", "ip_org"}),
    "203.0.113.20": (NetworkClass.business, "northwind-freight.example", {"ip_range", "ip_org"}),
    "203.0.113.40": (NetworkClass.business, "ironvale.example", {"ip_range", "ip_org", "asn_org"}),
    "203.0.113.120": (NetworkClass.business, "polder-foods.example", {"ip_range", "ip_org"}),
    "203.0.113.150": (NetworkClass.business, "sakura-robotics.example", {"ip_org"}),       # no imported range
    "203.0.113.200": (NetworkClass.business, "open-water.example", {"ip_org"}),            # organisation alias
    "203.0.113.210": (NetworkClass.business, None, set()),                                 # unknown company
    "203.0.113.165": (NetworkClass.government, "digital-services.gov.example", {"ip_range", "ip_org"}),
    "203.0.113.180": (NetworkClass.education, "state-university.example", {"ip_org"}),    # alias domain
    "198.51.100.10": (NetworkClass.isp, None, set()),
    "2001:db8:f000::10": (NetworkClass.isp, None, set()),
    "198.51.100.140": (NetworkClass.mobile, None, set()),
    "198.51.100.200": (NetworkClass.hosting, None, set()),
    "192.0.2.10": (NetworkClass.privacy, None, set()),
}


def test_demo_visits_resolve_to_the_expected_companies(geoip: GeoIPReader, store: ReferenceStore) -> None:
    networks = [geoip.lookup(ip) for ip in EXPECTED]
    batch = store.resolve_networks(networks)
    for ip, network in zip(EXPECTED, networks):
        network = batch.annotate(network)
        network = replace(network, network_class=classify_network(network))
        resolution = resolve_company(network, batch.company_lookups(network))
        expected_class, expected_domain, expected_sources = EXPECTED[ip]
        assert network.network_class is expected_class, ip
        assert (resolution.company.domain if resolution.company else None) == expected_domain, ip
        assert {e.source for e in resolution.evidence} == expected_sources, ip
