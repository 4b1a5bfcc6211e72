"""GeoIPReader on the real GeoLite2 City file (maxminddb-geolite2) and on databases built here
in MaxMind's ASN / ISP / Enterprise layouts and IPinfo's and DB-IP's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from geolite2 import geolite2

from pipeline.core.model import NetworkInfo
from pipeline.enrich.geoip import GeoIPError, GeoIPReader, shared_reader
from pipeline.ops.geoip_build import (asn_record, build_demo_databases, enterprise_record,
                                      ipinfo_country_asn_record, isp_record, write_mmdb)
from pipeline.settings import GeoIPSettings

GEOLITE2_CITY = Path(geolite2.filename)


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mmdb")
    return {
        "enterprise": write_mmdb(d / "ent.mmdb", [
            ("203.0.113.0/24", enterprise_record(
                country="US", region="Texas", city="Austin", latitude=30.27, longitude=-97.74,
                asn=64499, asn_org="Example Business Fiber", isp="Example Business Fiber",
                organization="Brightpath Analytics Inc.", domain="Brightpath-Analytics.example",
                user_type="business", connection_type="Corporate")),
            # nested, more specific: a VPN exit inside the business /24
            ("203.0.113.128/28", enterprise_record(country="US", organization="Example VPN", user_type="hosting",
                                                   is_anonymous_vpn=True)),
            ("198.51.100.0/25", enterprise_record(country="GB", user_type="cellular", connection_type="Cellular",
                                                  isp="Example Mobile")),
            ("198.51.100.128/25", enterprise_record(country="US", user_type="hosting", is_hosting_provider=True,
                                                    organization="Example Cloud")),
            ("2001:db8:100::/48", enterprise_record(country="DE", user_type="college", organization="Example Uni",
                                                    domain="uni.example")),
        ], database_type="GeoIP2-Enterprise"),
        "asn": write_mmdb(d / "asn.mmdb", [
            ("203.0.113.0/24", asn_record(64499, "Example Business Fiber")),
            ("192.0.2.0/24", asn_record(64496, "Example Broadband")),
            ("2001:db8::/32", asn_record(64510, "Example v6 Transit")),
        ], database_type="GeoLite2-ASN"),
        "isp": write_mmdb(d / "isp.mmdb", [
            ("192.0.2.0/24", isp_record(asn=64496, asn_org="Example Broadband", isp="Example Broadband",
                                        organization="Example Broadband Residential")),
        ], database_type="GeoIP2-ISP"),
        "ipinfo": write_mmdb(d / "country_asn.mmdb", [
            ("192.0.2.0/24", ipinfo_country_asn_record(asn=64496, as_name="Example Broadband",
                                                       as_domain="broadband.example", country="NL",
                                                       country_name="Netherlands", continent="EU")),
            ("2001:db8::/32", ipinfo_country_asn_record(asn=64510, as_name="Example v6 Transit",
                                                        as_domain="transit.example", country="JP")),
        ], database_type="ipinfo country_asn.mmdb"),
        "ipinfo_lite": write_mmdb(d / "ipinfo_lite.mmdb", [
            ("192.0.2.0/24", {"asn": "AS64496", "as_name": "Example Broadband", "as_domain": "broadband.example",
                              "country": "Netherlands", "country_code": "NL", "continent": "Europe",
                              "continent_code": "EU"}),
        ], database_type="ipinfo_lite.mmdb"),
        "ipinfo_asn": write_mmdb(d / "ipinfo_asn.mmdb", [
            ("192.0.2.0/24", {"asn": "AS64496", "name": "Example Broadband", "domain": "broadband.example",
                              "type": "isp"}),
        ], database_type="ipinfo asn.mmdb"),
        "dbip_asn": write_mmdb(d / "dbip-asn-lite.mmdb", [
            ("192.0.2.0/24", asn_record(64496, "Example Broadband")),
        ], database_type="DBIP-ASN-Lite (compat=GeoLite2-ASN)"),
        "dbip_city": write_mmdb(d / "dbip-city-lite.mmdb", [
            ("192.0.2.0/24", {"city": {"names": {"en": "Utrecht"}}, "continent": {"code": "EU"},
                              "country": {"iso_code": "NL", "names": {"en": "Netherlands"}},
                              "location": {"latitude": 52.09, "longitude": 5.12},
                              "subdivisions": [{"names": {"en": "Utrecht"}}]}),
        ], database_type="DBIP-City-Lite"),
        "v4only": write_mmdb(d / "v4only.mmdb", [("192.0.2.0/24", asn_record(64496, "Example Broadband"))],
                             database_type="GeoLite2-ASN", ip_version=4),
    }


@pytest.fixture(scope="module")
def city() -> Iterator[GeoIPReader]:
    with GeoIPReader({"city_db": GEOLITE2_CITY}) as reader:
        yield reader


def test_real_geolite2_city_ipv4_and_ipv6(city: GeoIPReader) -> None:
    london = city.lookup("81.2.69.142")   # MaxMind's own example address
    assert london.geo.country == "GB"
    assert london.geo.city and london.geo.region == "England"
    assert london.geo.latitude is not None and london.geo.longitude is not None
    assert london.sources == ("GeoLite2-City",)
    assert city.lookup("8.8.8.8").geo.country == "US"
    assert city.lookup("2001:4860:4860::8888").geo.country == "US"
    assert city.databases[0].database_type == "GeoLite2-City"


def test_network_class_is_left_to_the_core(city: GeoIPReader) -> None:
    assert city.lookup("81.2.69.142").network_class.value == "unknown"


@pytest.mark.parametrize("bad", [None, "", "not-an-ip", "999.1.1.1", "1.2.3", "10.0.0.1", "192.168.1.1",
                                 "172.16.5.4", "100.64.0.1", "127.0.0.1", "::1", "fe80::1", "fd00::1", "::",
                                 "224.0.0.1", "ff02::1", " 8.8.8.8x", "\x00"])
def test_bad_private_or_unknown_ips_never_raise(city: GeoIPReader, bad: str | None) -> None:
    info = city.lookup(bad)
    assert isinstance(info, NetworkInfo)
    assert info.sources == () and info.geo.country is None and info.asn is None


def test_documentation_ranges_are_looked_up_not_dropped(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["asn"]}) as reader:
        assert reader.lookup("192.0.2.10").asn == 64496


def test_enterprise_fields(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"enterprise_db": dbs["enterprise"]}) as reader:
        info = reader.lookup("203.0.113.7")
        assert info.ip == "203.0.113.7"
        assert (info.user_type, info.connection_type) == ("business", "Corporate")
        assert info.organization == "Brightpath Analytics Inc."
        assert info.domain == "brightpath-analytics.example"     # lower-cased
        assert (info.asn, info.asn_org, info.isp) == (64499, "Example Business Fiber", "Example Business Fiber")
        assert (info.geo.country, info.geo.region, info.geo.city) == ("US", "Texas", "Austin")
        assert info.geo.latitude == pytest.approx(30.27)
        assert not info.is_anonymous
        assert info.sources == ("GeoIP2-Enterprise",)

        vpn = reader.lookup("203.0.113.130")                      # nested /28 wins inside the /24
        assert vpn.is_anonymous and vpn.organization == "Example VPN"
        assert reader.lookup("203.0.113.144").organization == "Brightpath Analytics Inc."  # just past the /28

        mobile = reader.lookup("198.51.100.1")
        assert (mobile.user_type, mobile.connection_type, mobile.isp) == ("cellular", "Cellular", "Example Mobile")
        cloud = reader.lookup("198.51.100.200")
        assert cloud.user_type == "hosting" and not cloud.is_anonymous   # hosting alone is not anonymity
        uni = reader.lookup("2001:db8:100::42")
        assert (uni.user_type, uni.domain, uni.geo.country) == ("college", "uni.example", "DE")


def test_ipv4_mapped_ipv6_reads_as_ipv4(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"enterprise_db": dbs["enterprise"]}) as reader:
        info = reader.lookup("::ffff:203.0.113.7")
        assert info.ip == "203.0.113.7" and info.organization == "Brightpath Analytics Inc."


def test_asn_and_isp_databases(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["asn"], "isp_db": dbs["isp"]}) as reader:
        info = reader.lookup("192.0.2.99")
        assert (info.asn, info.asn_org) == (64496, "Example Broadband")
        assert (info.isp, info.organization) == ("Example Broadband", "Example Broadband Residential")
        assert info.sources == ("GeoIP2-ISP", "GeoLite2-ASN")
        v6 = reader.lookup("2001:db8:ffff::1")
        assert (v6.asn, v6.asn_org, v6.sources) == (64510, "Example v6 Transit", ("GeoLite2-ASN",))
        assert reader.lookup("198.51.100.1").sources == ()      # not in either


def test_ipinfo_country_asn_layout(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["ipinfo"]}) as reader:
        info = reader.lookup("192.0.2.1")
        assert (info.asn, info.asn_org, info.domain, info.geo.country) == (
            64496, "Example Broadband", "broadband.example", "NL")
        assert reader.lookup("2001:db8::1").geo.country == "JP"


def test_ipinfo_lite_layout_country_is_a_name_and_code_separate(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"country_db": dbs["ipinfo_lite"]}) as reader:
        info = reader.lookup("192.0.2.1")
        assert (info.asn, info.geo.country, info.domain) == (64496, "NL", "broadband.example")


def test_ipinfo_asn_layout_carries_the_asn_type(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["ipinfo_asn"]}) as reader:
        info = reader.lookup("192.0.2.1")
        assert (info.asn, info.asn_org, info.asn_type) == (64496, "Example Broadband", "isp")


def test_dbip_lite_layouts(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["dbip_asn"], "city_db": dbs["dbip_city"]}) as reader:
        info = reader.lookup("192.0.2.1")
        assert (info.asn, info.asn_org) == (64496, "Example Broadband")
        assert (info.geo.country, info.geo.city, info.geo.region) == ("NL", "Utrecht", "Utrecht")
        assert info.sources == ("DBIP-City-Lite", "DBIP-ASN-Lite (compat=GeoLite2-ASN)")


def test_merge_precedence_enterprise_first_then_city_then_asn(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["ipinfo"], "city_db": GEOLITE2_CITY,
                      "enterprise_db": dbs["enterprise"]}) as reader:
        info = reader.lookup("203.0.113.7")
        assert info.geo.country == "US" and info.asn == 64499
        assert info.sources[0] == "GeoIP2-Enterprise"
        # where only the IPinfo file and GeoLite2 answer, both contribute
        real = reader.lookup("81.2.69.142")
        assert real.geo.country == "GB" and real.sources == ("GeoLite2-City",)


def test_ipv6_against_an_ipv4_only_database_is_no_answer(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["v4only"]}) as reader:
        assert reader.lookup("2001:db8::1").sources == ()
        assert reader.lookup("192.0.2.1").asn == 64496


def test_lookups_are_cached_per_ip(dbs: dict[str, Path]) -> None:
    with GeoIPReader({"asn_db": dbs["asn"]}, cache_size=8) as reader:
        first = reader.lookup("192.0.2.1")
        assert reader.lookup("192.0.2.1") is first
        assert reader.cache_info().hits == 1
        many = reader.lookup_many(["192.0.2.1", "192.0.2.2", None, "", "192.0.2.2"])
        assert set(many) == {"192.0.2.1", "192.0.2.2"}


def test_unreadable_database_fails_at_open(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a maxmind database")
    with pytest.raises(GeoIPError, match="asn_db"):
        GeoIPReader({"asn_db": junk})
    with pytest.raises(ValueError, match="unknown database role"):
        GeoIPReader({"weather_db": junk})


def test_no_databases_gives_empty_answers() -> None:
    assert GeoIPReader({}).lookup("8.8.8.8") == NetworkInfo(ip="8.8.8.8")


def test_shared_reader_opens_once_per_configuration(dbs: dict[str, Path]) -> None:
    settings = GeoIPSettings(city_db=GEOLITE2_CITY, asn_db=dbs["asn"])
    assert shared_reader(settings) is shared_reader(GeoIPSettings(city_db=GEOLITE2_CITY, asn_db=dbs["asn"]))
    assert shared_reader(settings) is not shared_reader(GeoIPSettings(city_db=GEOLITE2_CITY))
    assert [db.role for db in shared_reader(settings).databases] == ["city_db", "asn_db"]


def test_demo_databases_cover_every_user_type(tmp_path: Path) -> None:
    paths = build_demo_databases(tmp_path)
    assert set(paths) == {"enterprise_db", "asn_db"}
    reader = GeoIPReader.from_settings(GeoIPSettings(**paths))
    seen = {reader.lookup(ip).user_type for ip in (
        "203.0.113.1", "198.51.100.1", "198.51.100.130", "198.51.100.200", "203.0.113.161",
        "203.0.113.177", "192.0.2.1", "2001:db8:f000::1")}
    assert seen == {"business", "residential", "cellular", "hosting", "government", "college",
                    "consumer_privacy_network"}
    bp = reader.lookup("2001:db8:100::1")
    assert (bp.domain, bp.asn, bp.geo.city) == ("brightpath-analytics.example", 64499, "Austin")
    assert reader.lookup("192.0.2.1").is_anonymous
    reader.close()
