from __future__ import annotations

import pytest

from pipeline.enrich.names import normalize_domain, normalize_org


@pytest.mark.parametrize(("raw", "expected"), [
    ("acme.example", "acme.example"),
    ("  WWW.Acme.Example. ", "acme.example"),
    ("https://www.acme.example/pricing?x=1", "acme.example"),
    ("acme.example:8443", "acme.example"),
    ("jane@Acme.Example", "acme.example"),
    ("digital-services.gov.example", "digital-services.gov.example"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("localhost", None),
    ("not a domain", None),
    ("-bad-.example", None),
    ("", None),
    (None, None),
])
def test_normalize_domain(raw: str | None, expected: str | None) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("Brightpath Analytics Inc.", "brightpath analytics"),
    ("BRIGHTPATH ANALYTICS, INC", "brightpath analytics"),
    ("Polder Foods B.V.", "polder foods"),
    ("Maison Lumière Retail SAS", "maison lumiere retail"),
    ("Smith & Sons Ltd", "smith and sons"),
    ("Nordlys Energy AS", "nordlys energy"),
    ("Inc", "inc"),                       # never empty when something was there
    ("", None),
    ("  ,. ", None),
    (None, None),
])
def test_normalize_org(raw: str | None, expected: str | None) -> None:
    assert normalize_org(raw) == expected
