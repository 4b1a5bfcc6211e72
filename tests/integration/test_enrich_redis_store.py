"""ReferenceStore on a real Redis: batch lookups (IPv4, IPv6, range edges, nesting), scopes,
indexes, ASN types, and the one-round-trip contract."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from redis.client import Pipeline

from pipeline.core.company import resolve_company
from pipeline.core.model import Company, NetworkClass, NetworkInfo, Sector
from pipeline.enrich.redis_store import AsnInfo, CompanyRecord, ReferenceStore, scope_for
from pipeline.local.redis import RedisServer


@pytest.fixture
def other(redis_server: RedisServer) -> Iterator[ReferenceStore]:
    """A second process's view of the same Redis (its own caches), company cache off."""
    client = ReferenceStore.from_url(redis_server.url, company_cache_ttl_s=0)
    try:
        yield client
    finally:
        client.close()


class RoundTrips:
    """Counts pipelines executed and single commands sent, whoever sends them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pipelines = 0
        self.commands = 0
        real_execute = Pipeline.execute
        real_command = ReferenceStore.execute_command

        def execute(pipe: Pipeline, *args: Any, **kwargs: Any) -> Any:
            self.pipelines += 1
            return real_execute(pipe, *args, **kwargs)

        def command(client: ReferenceStore, *args: Any, **kwargs: Any) -> Any:
            self.commands += 1
            return real_command(client, *args, **kwargs)  # type: ignore[no-untyped-call]

        monkeypatch.setattr(Pipeline, "execute", execute)
        monkeypatch.setattr(ReferenceStore, "execute_command", command)

    @property
    def total(self) -> int:
        return self.pipelines + self.commands


def _company(domain: str, name: str, **kw: Any) -> CompanyRecord:
    org_names = kw.pop("org_names", ())
    aliases = kw.pop("alias_domains", ())
    return CompanyRecord(Company(domain=domain, name=name, **kw), org_names=org_names, alias_domains=aliases)


def net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def test_range_edges_ipv4_and_ipv6(store: ReferenceStore) -> None:
    store.upsert_ranges([(net("203.0.113.16/28"), "acme.example"), (net("2001:db8:100::/48"), "acme.example"),
                         (net("192.0.2.7/32"), "solo.example"), (net("2001:db8:200::1/128"), "solo.example")])
    ips = {
        "203.0.113.15": None, "203.0.113.16": "203.0.113.16/28", "203.0.113.31": "203.0.113.16/28",
        "203.0.113.32": None, "192.0.2.6": None, "192.0.2.7": "192.0.2.7/32", "192.0.2.8": None,
        "2001:db8:ff:ffff:ffff:ffff:ffff:ffff": None, "2001:db8:100::": "2001:db8:100::/48",
        "2001:db8:100:ffff:ffff:ffff:ffff:ffff": "2001:db8:100::/48", "2001:db8:101::": None,
        "2001:db8:200::1": "2001:db8:200::1/128", "2001:db8:200::2": None,
        "::ffff:203.0.113.20": "203.0.113.16/28", "garbage": None, "": None,
    }
    result = store.lookup_batch(list(ips))
    for ip, expected in ips.items():
        match = result.ranges.get(ip)
        assert (match.network if match else None) == expected, ip
    assert result.ranges["203.0.113.16"].domain == "acme.example"
    assert result.ranges["203.0.113.16"].scope == "global"
    assert result.ranges["2001:db8:200::1"].domain == "solo.example"


def test_nested_ranges_resolve_to_the_most_specific(store: ReferenceStore) -> None:
    store.upsert_ranges([(net("198.51.100.0/24"), "parent.example"), (net("198.51.100.64/26"), "child.example"),
                         (net("198.51.100.80/29"), "grandchild.example"), (net("2001:db8::/32"), "v6parent.example"),
                         (net("2001:db8:abcd::/48"), "v6child.example")])
    result = store.lookup_batch(["198.51.100.1", "198.51.100.64", "198.51.100.79", "198.51.100.80",
                                 "198.51.100.87", "198.51.100.88", "198.51.100.128", "198.51.100.255",
                                 "2001:db8:abcd::9", "2001:db8:abce::9"])
    domains = {ip: m.domain for ip, m in result.ranges.items()}
    assert domains == {
        "198.51.100.1": "parent.example", "198.51.100.64": "child.example", "198.51.100.79": "child.example",
        "198.51.100.80": "grandchild.example", "198.51.100.87": "grandchild.example",
        "198.51.100.88": "child.example", "198.51.100.128": "parent.example", "198.51.100.255": "parent.example",
        "2001:db8:abcd::9": "v6child.example", "2001:db8:abce::9": "v6parent.example"}


def test_a_whole_batch_is_one_round_trip(store: ReferenceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.upsert_companies([_company("acme.example", "Acme Inc", org_names=("ACME-AS",),
                                     alias_domains=("acme-mail.example",))])
    store.upsert_ranges([(net(f"203.0.113.{i * 16}/28"), "acme.example") for i in range(16)]
                        + [(net("198.51.100.0/24"), "acme.example"), (net("2001:db8::/48"), "acme.example")])
    store.upsert_asn_types([AsnInfo(64496, "isp", "Example Broadband")])
    store.lookup_batch(["203.0.113.1", "2001:db8::1"])              # learns the prefix lengths in use
    counter = RoundTrips(monkeypatch)
    ips = [f"203.0.113.{i}" for i in range(256)] + [f"198.51.100.{i}" for i in range(256)] + \
        [f"2001:db8::{i:x}" for i in range(300)]
    result = store.lookup_batch(ips, org_names=["Acme, Inc.", "Unknown Ltd"] * 50,
                                domains=["acme.example", "acme-mail.example", "nobody.example"] * 50,
                                asns=[64496, 64497] * 100)
    assert counter.total == 1
    assert set(ips) <= set(result.ranges)          # keyed as given (and normalized: "2001:db8::0" -> "2001:db8::")
    assert result.orgs == {"Acme, Inc.": "acme.example"}
    assert result.domains == {"acme.example": "acme.example", "acme-mail.example": "acme.example"}
    assert result.absent == frozenset({"nobody.example"})
    assert result.asns == {64496: AsnInfo(64496, "isp", "Example Broadband")}
    assert result.company_for_ip("203.0.113.77") == Company(domain="acme.example", name="Acme Inc")
    assert result.missing_companies() == set()


def test_a_prefix_length_imported_elsewhere_is_seen_at_once(store: ReferenceStore, other: ReferenceStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store.upsert_ranges([(net("203.0.113.0/24"), "wide.example")])
    assert store.lookup_batch(["203.0.113.9"]).ranges["203.0.113.9"].domain == "wide.example"
    other.upsert_ranges([(net("203.0.113.8/29"), "narrow.example")])   # a length `store` has not seen
    counter = RoundTrips(monkeypatch)
    assert store.lookup_batch(["203.0.113.9"]).ranges["203.0.113.9"].domain == "narrow.example"
    assert counter.total == 2
    store.lookup_batch(["203.0.113.9"])
    assert counter.total == 3                                           # learnt: one trip again


def test_resolve_batch_fetches_referenced_companies_then_serves_them_from_cache(
        store: ReferenceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.upsert_companies([_company("acme.example", "Acme Inc", employees=300, sector=Sector.private,
                                     tags=("saas",), org_names=("Acme Holdings",))])
    store.upsert_ranges([(net("203.0.113.0/24"), "acme.example"), (net("192.0.2.0/24"), "bare.example")])
    store.lookup_batch(["203.0.113.1"])
    counter = RoundTrips(monkeypatch)
    first = store.resolve_batch(["203.0.113.1", "192.0.2.1"], org_names=["ACME HOLDINGS LLC"])
    assert counter.total == 2
    acme = first.company_for_ip("203.0.113.1")
    assert acme is not None and (acme.employees, acme.tags) == (300, ("saas",))
    assert first.company_for_org("ACME HOLDINGS LLC") == acme
    assert first.company_for_ip("192.0.2.1") is None and "bare.example" in first.absent
    again = store.resolve_batch(["203.0.113.1", "192.0.2.1"], org_names=["ACME HOLDINGS LLC"])
    assert counter.total == 3 and again.company_for_ip("203.0.113.1") == acme


def test_site_scope_overrides_global(store: ReferenceStore) -> None:
    store.upsert_companies([_company("acme.example", "Acme (global)", employees=10)])
    store.upsert_companies([_company("acme.example", "Acme (site's CRM)", employees=12)], site="shop")
    store.upsert_ranges([(net("203.0.113.0/28"), "acme.example")])
    store.upsert_ranges([(net("203.0.113.0/24"), "crm.example")], site="shop")
    store.upsert_asn_types([AsnInfo(64496, "isp")])
    store.upsert_asn_types([AsnInfo(64496, "business", "Own network")], site="shop")

    plain = store.resolve_batch(["203.0.113.1", "203.0.113.100"], domains=["acme.example"], asns=[64496])
    assert plain.ranges["203.0.113.1"].domain == "acme.example" and "203.0.113.100" not in plain.ranges
    assert plain.companies["acme.example"].name == "Acme (global)"
    assert plain.asns[64496].type == "isp"

    site = store.resolve_batch(["203.0.113.1", "203.0.113.100"], domains=["acme.example"], asns=[64496],
                               site="shop")
    assert site.ranges["203.0.113.1"].domain == "crm.example"       # the site's own data wins
    assert site.ranges["203.0.113.1"].scope == scope_for("shop") == "site:shop"
    assert site.companies["acme.example"].name == "Acme (site's CRM)"
    assert site.asns[64496] == AsnInfo(64496, "business", "Own network")
    with pytest.raises(ValueError):
        store.lookup_batch([], site="bad:site")


def test_company_upsert_is_a_replacement_and_keeps_indexes_honest(store: ReferenceStore,
                                                                  other: ReferenceStore) -> None:
    store.upsert_companies([_company("acme.example", "Acme Inc", industry="Software", employees=5,
                                     org_names=("Old Name GmbH",), alias_domains=("old-acme.example",))])
    store.upsert_companies([_company("acme.example", "Acme Inc", employees=6,
                                     org_names=("New Name",), alias_domains=("new-acme.example",))])
    raw = store.hgetall("ls:global:company:acme.example")
    assert "industry" not in raw and raw["employees"] == "6"
    result = other.lookup_batch(org_names=["Old Name", "New Name", "Acme"],
                                domains=["old-acme.example", "new-acme.example"])
    assert result.orgs == {"New Name": "acme.example", "Acme": "acme.example"}
    assert result.domains == {"new-acme.example": "acme.example"}
    # an index entry another company took over is not removed by the old owner's update
    store.upsert_companies([_company("globex.example", "Globex", org_names=("New Name",))])
    store.upsert_companies([_company("acme.example", "Acme Inc")])
    assert other.lookup_batch(org_names=["New Name"]).orgs == {"New Name": "globex.example"}


def test_company_record_round_trip(store: ReferenceStore, other: ReferenceStore) -> None:
    company = Company(domain="gov.example", name="Dept of Examples", industry="Government", employees=2500,
                      employee_range="1001-5000", revenue=1.25e6, revenue_range="1M-10M", country="GB",
                      sector=Sector.government, tags=("public", "uk"))
    store.upsert_companies([CompanyRecord(company)])
    assert other.fetch_companies(["GOV.example", "none.example"]) == {"gov.example": company,
                                                                       "none.example": None}


def test_bad_inputs_are_skipped_not_raised(store: ReferenceStore) -> None:
    result = store.lookup_batch(["", "nope", "1.2.3.4.5"], org_names=["", None, " ,. "],
                                domains=["", None, "not a domain"], asns=[None, 0, -5])
    assert result.ranges == {} and result.orgs == {} and result.domains == {} and result.asns == {}


def test_network_batch_feeds_the_core_company_waterfall(store: ReferenceStore) -> None:
    store.upsert_companies([_company("acme.example", "Acme Inc", employees=300, org_names=("ACME-CORP",)),
                            _company("uni.example", "Example University", sector=Sector.education)])
    store.upsert_ranges([(net("203.0.113.0/24"), "acme.example")])
    store.upsert_asn_types([AsnInfo(64500, "business", "ACME-CORP")])
    networks = [
        NetworkInfo(ip="203.0.113.9", asn=64500, asn_org="ACME-CORP", network_class=NetworkClass.business),
        NetworkInfo(ip="192.0.2.1", domain="uni.example", network_class=NetworkClass.education),
        NetworkInfo(ip="198.51.100.1", organization="Acme Inc", network_class=NetworkClass.isp),
    ]
    batch = store.resolve_networks(networks)
    annotated = batch.annotate(networks[0])
    assert annotated.asn_type == "business"
    acme = resolve_company(annotated, batch.company_lookups(annotated))
    assert acme.company is not None and acme.company.domain == "acme.example"
    assert {e.source for e in acme.evidence} == {"ip_range", "asn_org"}
    uni = resolve_company(networks[1], batch.company_lookups(networks[1]))
    assert uni.company is not None and uni.company.sector is Sector.education
    isp = resolve_company(networks[2], batch.company_lookups(networks[2]))
    assert isp.company is None                    # residential networks name no employer


def test_clients_must_decode_responses(redis_server: RedisServer) -> None:
    import redis

    with pytest.raises(ValueError, match="decode_responses"):
        ReferenceStore(connection_pool=redis.ConnectionPool.from_url(redis_server.url))


async def test_the_async_store_answers_as_the_blocking_one_in_as_many_round_trips(
        store: ReferenceStore, redis_server: RedisServer) -> None:
    """The worker's AsyncReferenceStore runs the same read plans over redis.asyncio."""
    from pipeline.enrich.redis_store import AsyncReferenceStore

    store.upsert_companies([_company("acme.example", "Acme Inc", employees=300, org_names=("ACME-CORP",)),
                            _company("uni.example", "Example University", sector=Sector.education)])
    store.upsert_ranges([(net("203.0.113.0/24"), "acme.example"), (net("2001:db8::/32"), "uni.example")])
    store.upsert_ranges([(net("203.0.113.0/28"), "uni.example")], site="s1")
    store.upsert_asn_types([AsnInfo(64500, "business", "ACME-CORP")])
    networks = [NetworkInfo(ip="203.0.113.9", asn=64500, asn_org="ACME-CORP"),
                NetworkInfo(ip="203.0.113.99", domain="uni.example"), NetworkInfo(ip="2001:db8::5"),
                NetworkInfo(ip="198.51.100.1", organization="Acme Inc")]
    fresh = ReferenceStore.from_url(redis_server.url)
    async_store = AsyncReferenceStore.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        for site in (None, "s1"):
            expected = fresh.resolve_networks(networks, domains=["acme.example"], site=site)
            got = await async_store.resolve_networks(networks, domains=["acme.example"], site=site)
            assert got == expected
        assert async_store.round_trips == fresh.round_trips
        assert await async_store.fetch_companies(["ACME.example", "none.example"]) == fresh.fetch_companies(
            ["ACME.example", "none.example"])
    finally:
        fresh.close()
        await async_store.aclose()


def test_the_async_store_needs_decoded_responses(redis_server: RedisServer) -> None:
    import redis.asyncio

    from pipeline.enrich.redis_store import AsyncReferenceStore

    with pytest.raises(ValueError, match="decode_responses"):
        AsyncReferenceStore(redis.asyncio.Redis.from_url(redis_server.url))


def test_networks_already_resolved_cost_no_round_trip_until_invalidated(
        store: ReferenceStore, other: ReferenceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's network cache: a network resolved once is answered from memory (a worker sees
    few distinct networks), only new networks go to Redis, and an import in this process
    (``invalidate_caches``) is seen at once."""
    store.generation_check_s = 3600   # another process's writes: see the generation test below
    store.upsert_companies([_company("acme.example", "Acme Inc", org_names=("ACME-CORP",)),
                            _company("uni.example", "Example University", sector=Sector.education)])
    store.upsert_ranges([(net("203.0.113.0/24"), "acme.example")])
    store.upsert_asn_types([AsnInfo(64500, "business", "ACME-CORP")])
    a = NetworkInfo(ip="203.0.113.9", asn=64500, asn_org="ACME-CORP")
    b = NetworkInfo(ip="192.0.2.1", domain="uni.example")
    c = NetworkInfo(ip="198.51.100.1", organization="Acme Inc")
    first = store.resolve_networks([a, b], domains=["uni.example"])
    counter = RoundTrips(monkeypatch)
    again = store.resolve_networks([b, a], domains=["uni.example"])
    assert counter.total == 0
    assert again.company_lookups(a) == first.company_lookups(a)
    assert again.company_for_ip("203.0.113.9") == Company(domain="acme.example", name="Acme Inc")
    assert again.company_for_domain("uni.example") == first.company_for_domain("uni.example") is not None
    assert again.annotate(a).asn_type == "business"
    mixed = store.resolve_networks([a, c])        # only c is new: one batch for it
    assert counter.total == 1
    assert mixed.company_for_ip("203.0.113.9") is not None
    assert mixed.company_for_org("Acme Inc") == Company(domain="acme.example", name="Acme Inc")
    # another process moves the range: the cache keeps answering the old company until invalidated
    other.upsert_companies([_company("moved.example", "Moved Ltd")])
    other.upsert_ranges([(net("203.0.113.0/24"), "moved.example")])
    assert store.resolve_networks([a]).company_for_ip("203.0.113.9") == Company(domain="acme.example",
                                                                                 name="Acme Inc")
    store.invalidate_caches()
    moved = store.resolve_networks([a]).company_for_ip("203.0.113.9")
    assert moved == Company(domain="moved.example", name="Moved Ltd")


def test_the_network_cache_expires_with_the_company_ttl(redis_server: RedisServer, store: ReferenceStore,
                                                         other: ReferenceStore) -> None:
    """An import by another process (the CLI) reaches a running worker within ``company_cache_ttl_s``."""
    import time

    store.upsert_companies([_company("acme.example", "Acme Inc"), _company("moved.example", "Moved Ltd")])
    store.upsert_ranges([(net("203.0.113.0/24"), "acme.example")])
    worker = ReferenceStore.from_url(redis_server.url, company_cache_ttl_s=0.3)
    worker.generation_check_s = 3600   # the TTL alone
    try:
        network = NetworkInfo(ip="203.0.113.9")
        assert worker.resolve_networks([network]).company_for_ip("203.0.113.9") == Company(
            domain="acme.example", name="Acme Inc")
        other.upsert_ranges([(net("203.0.113.0/24"), "moved.example")])
        time.sleep(0.4)
        assert worker.resolve_networks([network]).company_for_ip("203.0.113.9") == Company(
            domain="moved.example", name="Moved Ltd")
    finally:
        worker.close()


async def test_a_running_worker_follows_another_process_s_import_within_the_generation_check(
        redis_server: RedisServer, store: ReferenceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of reference data increments ``ls:ref:generation``; a worker reads it at most every
    ``generation_check_s`` and drops its caches when it moved, so an import by the CLI reaches it
    within about that time instead of the 60 s TTL; between checks, cached networks cost nothing."""
    import asyncio

    from pipeline.enrich.redis_store import AsyncReferenceStore

    store.upsert_companies([_company("acme.example", "Acme Inc"), _company("moved.example", "Moved Ltd")])
    store.upsert_ranges([(net("203.0.113.0/24"), "acme.example")])
    worker = AsyncReferenceStore.from_url(redis_server.url)
    worker.generation_check_s = 0.3
    network = NetworkInfo(ip="203.0.113.9")
    try:
        first = await worker.resolve_networks([network])
        assert first.company_for_ip("203.0.113.9") == Company(domain="acme.example", name="Acme Inc")
        trips = worker.round_trips
        await worker.resolve_networks([network])
        assert worker.round_trips == trips                  # cached, and checked less than 0.3 s ago
        store.upsert_ranges([(net("203.0.113.0/24"), "moved.example")])   # the CLI's import
        await asyncio.sleep(0.4)
        again = await worker.resolve_networks([network])
        assert again.company_for_ip("203.0.113.9") == Company(domain="moved.example", name="Moved Ltd")
        await asyncio.sleep(0.4)
        trips = worker.round_trips
        await worker.resolve_networks([network])
        assert worker.round_trips == trips + 1               # only the generation read: nothing moved
    finally:
        await worker.aclose()
