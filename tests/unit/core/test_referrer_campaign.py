from __future__ import annotations

import pytest

from pipeline.core.campaign import parse_campaign, traffic_class
from pipeline.core.referrer import ReferrerClass as R, classify_referrer

PAGE = "https://www.acme-saas.com/pricing"


@pytest.mark.parametrize("ref, cls", [
    (None, R.direct), ("", R.direct),
    ("https://www.google.com/search?q=lead+scoring", R.search), ("https://www.google.co.uk/", R.search),
    ("https://www.bing.com/search?q=x", R.search), ("https://duckduckgo.com/", R.search),
    ("https://www.linkedin.com/feed/", R.social), ("https://t.co/abc", R.social),
    ("https://news.ycombinator.com/item?id=1", R.social),
    ("https://mail.google.com/mail/u/0/", R.email), ("https://outlook.office.com/mail/", R.email),
    ("https://www.acme-saas.com/blog", R.internal), ("https://docs.acme-saas.com/", R.internal),
    ("https://someblog.example.org/post", R.other),
])
def test_referrer_classes(ref: str | None, cls: R) -> None:
    assert classify_referrer(ref, PAGE, site_hosts=["acme-saas.com"]).cls is cls


def test_search_term_and_host() -> None:
    info = classify_referrer("https://www.google.de/search?q=b2b+intent", PAGE)
    assert info.host == "google.de" and info.search_term == "b2b intent"


def test_internal_by_page_host_without_config() -> None:
    assert classify_referrer("https://www.acme-saas.com/a", PAGE).cls is R.internal


def test_lookalike_host_is_not_search() -> None:
    assert classify_referrer("https://google-fan.example.com/", PAGE).cls is R.other


@pytest.mark.parametrize("param, network", [("gclid", "google"), ("msclkid", "microsoft"),
                                            ("li_fat_id", "linkedin")])
def test_click_ids_are_paid(param: str, network: str) -> None:
    c = parse_campaign(f"{PAGE}?{param}=abc123")
    assert c is not None and c.paid and c.click_network == network and c.source == network


def test_fbclid_alone_is_meta_social_not_paid() -> None:
    c = parse_campaign(f"{PAGE}?fbclid=xyz")
    assert c is not None and not c.paid and c.click_network == "meta"
    assert traffic_class(classify_referrer(None, PAGE), c) is R.social
    paid = parse_campaign(f"{PAGE}?fbclid=xyz&utm_medium=paid_social")
    assert paid is not None and paid.paid


@pytest.mark.parametrize("medium", ["cpc", "PPC", "paid", "display", "paidsearch"])
def test_paid_media(medium: str) -> None:
    c = parse_campaign(f"{PAGE}?utm_source=newsletter&utm_medium={medium}&utm_campaign=Q4")
    assert c is not None and c.paid and c.name == "Q4"


def test_utm_fields_and_no_campaign() -> None:
    c = parse_campaign(f"{PAGE}?utm_source=LinkedIn&utm_medium=social&utm_term=t&utm_content=c")
    assert c is not None and (c.source, c.medium, c.term, c.content, c.paid) == ("linkedin", "social", "t", "c", False)
    assert parse_campaign(PAGE) is None and parse_campaign(None) is None
    assert parse_campaign(f"{PAGE}?utm_source=") is None


def test_traffic_class_precedence() -> None:
    search = classify_referrer("https://www.google.com/", PAGE)
    assert traffic_class(search, parse_campaign(f"{PAGE}?gclid=1")) is R.paid
    assert traffic_class(search, None) is R.search
    assert traffic_class(classify_referrer(None, PAGE), parse_campaign(f"{PAGE}?utm_medium=email")) is R.email
    assert traffic_class(classify_referrer(None, PAGE), None, email_click=True) is R.email


def test_campaign_roundtrip() -> None:
    c = parse_campaign(f"{PAGE}?utm_source=a&gclid=1")
    assert c is not None
    from pipeline.core.campaign import Campaign
    assert Campaign.from_dict(c.to_dict()) == c
