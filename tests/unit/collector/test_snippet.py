"""The install snippet (``pipeline.collector.snippet``): what a site owner pastes must load pixel.js right."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from importlib import resources

import pytest

from pipeline.collector.snippet import _STUB, collector_url, demo_page, snippet
from pipeline.settings import CollectorSettings, Settings, SiteSettings

SITES = [SiteSettings(site_id="acme", name="Acme & Co"), SiteSettings(site_id="forms.site", capture_forms=True)]


def settings(**collector: object) -> Settings:
    return Settings(sites=SITES, collector=CollectorSettings(**collector))


class Scripts(HTMLParser):
    """The <script> elements of an HTML fragment: (attributes, inline text)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
            self._open = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = False

    def handle_data(self, data: str) -> None:
        if self._open:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def test_the_snippet_is_the_queue_stub_then_the_async_pixel_tag() -> None:
    tag = snippet(settings(public_url="https://c.acme.com/"), "acme")
    (stub_attrs, stub), (attrs, body) = Scripts(tag).scripts
    assert stub_attrs == {} and stub == _STUB
    assert attrs == {"async": None, "src": "https://c.acme.com/pixel.js", "data-site": "acme"}
    assert body == ""
    # the defaults add no optional attribute
    assert "data-capture-forms" not in tag and "data-heartbeat" not in tag


def test_the_stub_is_the_one_pixel_js_documents_and_replays() -> None:
    pixel = resources.files("pipeline.collector").joinpath("static/pixel.js").read_text()
    assert f"<script>{_STUB}</script>" in pixel  # the install line in pixel.js's header
    assert "existing.q" in pixel and "leadstream.q" in _STUB  # calls queued before load are replayed


@pytest.mark.parametrize(("collector", "expected"), [
    ({"host": "0.0.0.0", "port": 8080}, "http://127.0.0.1:8080"),
    ({"host": "::", "port": 9000}, "http://127.0.0.1:9000"),
    ({"host": "::1", "port": 9000}, "http://[::1]:9000"),
    ({"host": "collector.internal", "port": 80}, "http://collector.internal:80"),
    ({"public_url": "https://t.acme.com/ingest/", "port": 9000}, "https://t.acme.com/ingest"),
])
def test_pixel_js_is_loaded_from_where_browsers_reach_the_collector(collector: dict[str, object],
                                                                     expected: str) -> None:
    s = settings(**collector)
    assert collector_url(s) == expected
    ((_, _), (attrs, _)) = Scripts(snippet(s, "acme")).scripts
    assert attrs["src"] == f"{expected}/pixel.js"


def test_an_explicit_collector_url_wins_and_is_escaped() -> None:
    tag = snippet(settings(public_url="https://c.acme.com"), "acme", 'https://x.example/a"b/')
    assert 'src="https://x.example/a&quot;b/pixel.js"' in tag
    ((_, _), (attrs, _)) = Scripts(tag).scripts
    assert attrs["src"] == 'https://x.example/a"b/pixel.js'


def test_site_options_become_script_attributes() -> None:
    ((_, _), (attrs, _)) = Scripts(snippet(settings(), "forms.site", heartbeat_s=5)).scripts
    assert attrs["data-site"] == "forms.site"
    assert attrs["data-capture-forms"] == "true" and attrs["data-heartbeat"] == "5"


@pytest.mark.parametrize(("heartbeat", "attribute"), [(0, "0"), (0.5, "0.5"), (15.0, "15"), (2, "2")])
def test_the_heartbeat_is_written_as_seconds_pixel_js_reads(heartbeat: float, attribute: str) -> None:
    tag = snippet(settings(), "acme", heartbeat_s=heartbeat)
    ((_, _), (attrs, _)) = Scripts(tag).scripts
    assert attrs["data-heartbeat"] == attribute
    assert float(attribute) == heartbeat  # pixel.js does Number(attribute) * 1000


@pytest.mark.parametrize("heartbeat", [-1, math.nan, math.inf])
def test_an_impossible_heartbeat_is_refused(heartbeat: float) -> None:
    with pytest.raises(ValueError, match="heartbeat_s"):
        snippet(settings(), "acme", heartbeat_s=heartbeat)


def test_an_unknown_site_is_refused() -> None:
    with pytest.raises(KeyError, match="nope"):
        snippet(settings(), "nope")


def test_pixel_js_reads_the_attributes_the_snippet_writes() -> None:
    pixel = resources.files("pipeline.collector").joinpath("static/pixel.js").read_text()
    read = set(re.findall(r"getAttribute\('(data-[a-z-]+)'\)", pixel))
    tag = snippet(settings(), "forms.site", heartbeat_s=3)
    ((_, _), (attrs, _)) = Scripts(tag).scripts
    assert {a for a in attrs if a.startswith("data-")} <= read


def test_the_demo_page_runs_the_snippet_with_form_capture() -> None:
    page = demo_page(settings(), "acme", collector_url="http://127.0.0.1:8080/")
    scripts = Scripts(page).scripts
    (attrs,) = [a for a, _ in scripts if a.get("src")]
    assert attrs["src"] == "http://127.0.0.1:8080/pixel.js" and attrs["data-site"] == "acme"
    assert attrs["data-capture-forms"] == "true"  # the demo shows an identify even where the site has it off
    assert "Acme &amp; Co" in page and "Acme & Co" not in page
    assert 'data-ls-cta="book-demo"' in page and 'type="email"' in page and "history.pushState" in page
