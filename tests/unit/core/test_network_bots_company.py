from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.core.bots import BotConfig, BotSignals, apply_verdict, bot_verdict
from pipeline.core.company import CompanyLookups, CompanyRules, RangeMatch, confidence_tier, resolve_company
from pipeline.core.model import (Company, Device, NetworkClass as N, NetworkInfo, Person, PersonResolution)
from pipeline.core.network import classify_network, network_verdict

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0 Safari/537.36")


class TestNetworkClass:
    def test_anonymous_beats_everything(self) -> None:
        assert classify_network(NetworkInfo(is_anonymous=True, user_type="business")) is N.privacy

    @pytest.mark.parametrize("ut, cls", [("business", N.business), ("residential", N.isp), ("cellular", N.mobile),
                                         ("hosting", N.hosting), ("college", N.education), ("school", N.education),
                                         ("government", N.government), ("military", N.military),
                                         ("consumer_privacy_network", N.privacy), ("cafe", N.isp)])
    def test_user_type(self, ut: str, cls: N) -> None:
        assert classify_network(NetworkInfo(user_type=ut)) is cls

    def test_user_type_beats_connection_type(self) -> None:
        v = network_verdict(NetworkInfo(user_type="residential", connection_type="Corporate"))
        assert v.network_class is N.isp and v.basis == "user_type:residential"

    @pytest.mark.parametrize("ct, cls", [("Cellular", N.mobile), ("Cable/DSL", N.isp), ("Corporate", N.business)])
    def test_connection_type(self, ct: str, cls: N) -> None:
        assert classify_network(NetworkInfo(connection_type=ct, asn_type="hosting")) is cls

    @pytest.mark.parametrize("at, cls", [("isp", N.isp), ("hosting", N.hosting), ("business", N.business),
                                         ("education", N.education), ("government", N.government),
                                         ("Enterprise", N.business), ("Cable/DSL/ISP", N.isp)])
    def test_asn_type_beats_org_name(self, at: str, cls: N) -> None:
        assert classify_network(NetworkInfo(asn_type=at, asn_org="Comcast Cable")) is cls

    @pytest.mark.parametrize("org, cls", [("Stanford University", N.education), ("AMAZON-02", N.hosting),
                                          ("Amazon.com, Inc.", N.hosting), ("Comcast Cable Communications", N.isp),
                                          ("Vodafone GmbH", N.isp), ("T-Mobile USA", N.mobile),
                                          ("Federal Ministry of Finance", N.government),
                                          ("NordVPN", N.privacy), ("Acme Widgets Inc", N.business)])
    def test_org_keywords(self, org: str, cls: N) -> None:
        assert classify_network(NetworkInfo(asn_org=org)) is cls

    def test_org_field_precedence_and_unknown(self) -> None:
        v = network_verdict(NetworkInfo(organization="Acme Ltd", isp="Comcast", asn_org="COMCAST-7922"))
        assert v.network_class is N.business and v.basis.startswith("org_keyword:organization")
        assert classify_network(NetworkInfo(asn_org="ZXQ-NET")) is N.unknown
        assert classify_network(NetworkInfo()) is N.unknown


class TestBots:
    def human(self, **kw: object) -> BotSignals:
        base = BotSignals(user_agent=CHROME, accept_language="en-US", screen_resolution="1920x1080",
                          viewport="1400x900")
        return replace(base, **kw)  # type: ignore[arg-type]

    def test_human(self) -> None:
        assert bot_verdict(self.human()) .is_bot is False

    @pytest.mark.parametrize("kw, reason", [
        ({"ua_is_crawler": True, "ua_crawler_name": "Googlebot"}, "ua_crawler:Googlebot"),
        ({"ua_device_family": "Spider"}, "ua_spider"),
        ({"user_agent": ""}, "ua_missing"),
        ({"user_agent": CHROME.replace("Chrome/", "HeadlessChrome/")}, "headless:headlesschrome"),
        ({"user_agent": "python-requests/2.31"}, "headless:python-requests"),
        ({"user_agent": CHROME + " Electron/28.1.0"}, "headless:electron"),
        ({"webdriver": True}, "webdriver"),
        ({"network": NetworkInfo(user_type="search_engine_spider")}, "spider_network"),
        ({"pages_per_minute": 31}, "page_rate:31/min"),
    ])
    def test_a_strong_signal_alone_is_a_bot(self, kw: dict[str, object], reason: str) -> None:
        v = bot_verdict(self.human(**kw))
        assert v.is_bot and v.reason == reason

    @pytest.mark.parametrize("kw, signal", [
        ({"screen_resolution": "0x0"}, "screen:0x0"),
        ({"screen_resolution": "big"}, "screen:malformed"),
        ({"screen_resolution": "20000x1080"}, "screen:20000x1080"),
        ({"viewport": "5000x3000"}, "viewport_larger_than_screen:5000x3000>1920x1080"),
        ({"accept_language": None}, "no_accept_language"),
        ({"accept_language": "  "}, "no_accept_language"),
        ({"network": NetworkInfo(asn=16509, network_class=N.hosting)}, "hosting_network:AS16509"),
    ])
    def test_a_weak_signal_alone_is_not_a_bot_but_is_reported(self, kw: dict[str, object], signal: str) -> None:
        v = bot_verdict(self.human(**kw))
        assert not v.is_bot and v.reason is None and v.weak == (signal,)

    @pytest.mark.parametrize("kw, reason", [
        ({"accept_language": None, "network": NetworkInfo(asn=16509, network_class=N.hosting)},
         "weak:no_accept_language+hosting_network:AS16509"),
        ({"accept_language": None, "screen_resolution": "0x0"}, "weak:no_accept_language+screen:0x0"),
        ({"network": NetworkInfo(network_class=N.hosting), "viewport": "5000x3000"},
         "weak:hosting_network+viewport_larger_than_screen:5000x3000>1920x1080"),
    ])
    def test_weak_signals_together_are_a_bot_and_the_reason_names_each(self, kw: dict[str, object],
                                                                        reason: str) -> None:
        v = bot_verdict(self.human(**kw))
        assert v.is_bot and v.reason == reason

    def test_a_strong_verdict_still_lists_the_weak_signals(self) -> None:
        v = bot_verdict(self.human(webdriver=True, accept_language=None))
        assert v.is_bot and v.reason == "webdriver" and v.weak == ("no_accept_language",)

    def test_weak_signals_needed_is_configurable(self) -> None:
        s = self.human(accept_language=None)
        assert bot_verdict(s, BotConfig(weak_signals_for_bot=1)).reason == "weak:no_accept_language"
        both = self.human(accept_language=None, network=NetworkInfo(network_class=N.hosting))
        assert not bot_verdict(both, BotConfig(weak_signals_for_bot=3)).is_bot

    def test_server_side_tracked_human_is_not_a_bot(self) -> None:
        # A server-side tracker forwards the browser's UA in `ua`, sends no Accept-Language and
        # no screen, from its own (here: hosting) network: one weak signal at most, a person.
        s = BotSignals(user_agent=CHROME, relayed=True,
                       network=NetworkInfo(asn=16509, network_class=N.hosting))
        v = bot_verdict(s)
        assert not v.is_bot and v.weak == ("hosting_network:AS16509",)
        assert not bot_verdict(BotSignals(user_agent=CHROME, relayed=True)).is_bot

    def test_a_relayed_ua_does_not_count_the_relays_missing_accept_language(self) -> None:
        hosting = NetworkInfo(network_class=N.hosting)
        assert bot_verdict(BotSignals(user_agent=CHROME, network=hosting)).reason == \
            "weak:no_accept_language+hosting_network"
        assert not bot_verdict(BotSignals(user_agent=CHROME, network=hosting, relayed=True)).is_bot

    def test_a_relayed_crawler_ua_is_still_a_bot(self) -> None:
        assert bot_verdict(BotSignals(user_agent="curl/8.4.0", relayed=True)).reason == "headless:curl"

    def test_mobile_ua_without_accept_language_not_flagged(self) -> None:
        ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
        v = bot_verdict(self.human(user_agent=ua, accept_language=None, network=NetworkInfo(network_class=N.hosting)))
        assert not v.is_bot

    def test_electron_desktop_apps_people_use_are_not_automation(self) -> None:
        assert not bot_verdict(self.human(user_agent=CHROME + " Slack/4.36.140 Electron/28.0.0")).is_bot

    def test_hosting_configurable(self) -> None:
        s = self.human(accept_language=None, network=NetworkInfo(network_class=N.hosting))
        assert bot_verdict(s).is_bot
        v = bot_verdict(s, BotConfig(hosting_is_bot=False))
        assert not v.is_bot and v.weak == ("no_accept_language",)

    def test_page_rate_at_limit_is_human(self) -> None:
        assert not bot_verdict(self.human(pages_per_minute=30)).is_bot

    def test_apply_verdict(self) -> None:
        d = apply_verdict(Device(browser="Chrome", device_class="desktop"), bot_verdict(self.human(webdriver=True)))
        assert d.is_bot and d.bot_reason == "webdriver" and d.device_class == "bot" and d.browser == "Chrome"
        assert apply_verdict(Device(), bot_verdict(self.human())) == Device()


ACME = Company(domain="acme.com", name="Acme", industry="software", employees=300)
OTHER = Company(domain="other.com", name="Other")


def person(conf: float = 1.0, domain: str | None = "acme.com") -> PersonResolution:
    return PersonResolution(Person("p1", company_domain=domain), conf)


class TestCompany:
    biz = NetworkInfo(ip="198.51.100.4", asn=64500, asn_org="ACME-NET", domain="acme.com",
                      network_class=N.business)

    def test_ip_range(self) -> None:
        r = resolve_company(self.biz, CompanyLookups(ip_range=RangeMatch(ACME, "198.51.100.0/24")))
        assert r.company == ACME and r.confidence == 0.9 and r.evidence[0].source == "ip_range"
        assert "198.51.100.0/24" in r.evidence[0].detail and r.network_class is N.business

    def test_ip_org(self) -> None:
        r = resolve_company(self.biz, CompanyLookups(ip_org_company=ACME))
        assert r.confidence == 0.8 and r.evidence[0].source == "ip_org"

    def test_identity_deterministic_and_weaker(self) -> None:
        r = resolve_company(self.biz, CompanyLookups(person=person(), person_company=ACME))
        assert r.company == ACME and r.confidence == 0.95 and r.evidence[0].source == "identity"
        r2 = resolve_company(self.biz, CompanyLookups(person=person(0.6)))
        assert r2.company == Company(domain="acme.com") and r2.confidence == pytest.approx(0.57)

    def test_asn_org_business_only(self) -> None:
        r = resolve_company(self.biz, CompanyLookups(asn_company=ACME))
        assert r.confidence == 0.5 and r.evidence[0].source == "asn_org"
        edu = replace(self.biz, network_class=N.education)
        assert resolve_company(edu, CompanyLookups(asn_company=ACME)).company is None
        assert resolve_company(edu, CompanyLookups(ip_org_company=ACME)).company == ACME

    @pytest.mark.parametrize("cls", [N.isp, N.mobile, N.hosting, N.privacy])
    def test_never_from_anonymous_networks(self, cls: N) -> None:
        net = replace(self.biz, network_class=cls)
        lookups = CompanyLookups(ip_range=RangeMatch(ACME, "198.51.100.0/24"), ip_org_company=ACME,
                                 asn_company=ACME)
        r = resolve_company(net, lookups)
        assert r.company is None and r.confidence == 0 and r.network_class is cls
        # only the identity path can name the company there
        r2 = resolve_company(net, replace(lookups, person=person()))
        assert r2.company == Company(domain="acme.com") and [e.source for e in r2.evidence] == ["identity"]

    def test_agreement_reinforces(self) -> None:
        r = resolve_company(self.biz, CompanyLookups(ip_range=RangeMatch(ACME, "x"), ip_org_company=ACME,
                                                     asn_company=Company("acme.com")))
        assert r.confidence == pytest.approx(1 - 0.1 * 0.2 * 0.5)
        assert [e.source for e in r.evidence] == ["ip_range", "ip_org", "asn_org"]
        assert r.company == ACME  # the richest record

    def test_conflict_highest_wins(self) -> None:
        r = resolve_company(self.biz, CompanyLookups(ip_org_company=OTHER, person=person(), person_company=ACME))
        assert r.company == ACME and [e.source for e in r.evidence] == ["identity"]

    def test_cap_and_nothing(self) -> None:
        r = resolve_company(self.biz, CompanyLookups(ip_range=RangeMatch(ACME, "x"), person=person(),
                                                     person_company=ACME))
        assert r.confidence == 0.99
        assert resolve_company(self.biz, CompanyLookups()).company is None
        assert resolve_company(self.biz, CompanyLookups(person=person(domain=None))).company is None

    def test_rules_configurable(self) -> None:
        rules = CompanyRules(ip_range_confidence=0.7)
        assert resolve_company(self.biz, CompanyLookups(ip_range=RangeMatch(ACME, "x")), rules).confidence == 0.7

    def test_tiers(self) -> None:
        assert [confidence_tier(c) for c in (0.95, 0.8, 0.5, 0)] == ["high", "medium", "low", "none"]
