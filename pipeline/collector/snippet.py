"""The ``<script>`` tag site owners paste, and the demo page that shows it working."""

from __future__ import annotations

import html
import math

from ..settings import Settings

_STUB = ("window.leadstream=window.leadstream||function(){"
         "(window.leadstream.q=window.leadstream.q||[]).push(arguments)};")


def collector_url(settings: Settings) -> str:
    """The URL browsers reach the collector at: ``collector.public_url``, else ``http://host:port``."""
    cfg = settings.collector
    if cfg.public_url:
        return cfg.public_url.rstrip("/")
    host = cfg.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"  # a wildcard bind address is not something a browser can reach
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.port}"


def snippet(settings: Settings, site_id: str, collector: str | None = None, *,
            heartbeat_s: float | None = None) -> str:
    """The tag to paste before ``</head>`` on every page of site ``site_id``.

    An inline queue stub (so ``leadstream('identify', ...)`` calls made before
    pixel.js loads are kept) and the async pixel.js tag carrying the site id.
    ``heartbeat_s`` sets the seconds between engagement pings (``data-heartbeat``;
    pixel.js defaults to 15, 0 turns pings off). Raises KeyError for a site that
    is not configured, ValueError for a negative heartbeat.
    """
    site = settings.site(site_id)
    if site is None:
        raise KeyError(f"unknown site id {site_id!r}")
    base = (collector or collector_url(settings)).rstrip("/")
    forms = ' data-capture-forms="true"' if site.capture_forms else ""
    beat = ""
    if heartbeat_s is not None:
        if not (math.isfinite(heartbeat_s) and heartbeat_s >= 0):
            raise ValueError(f"heartbeat_s must be a finite number >= 0, not {heartbeat_s!r}")
        beat = f' data-heartbeat="{heartbeat_s:g}"'
    return (f"<script>{_STUB}</script>\n"
            f'<script async src="{html.escape(base)}/pixel.js" data-site="{html.escape(site_id)}"{forms}{beat}>'
            "</script>")


def demo_page(settings: Settings, site_id: str, collector_url: str | None = None) -> str:
    """A small page with the snippet, CTA links, a pricing link and an email form (for `leadstream up`)."""
    tag = snippet(settings, site_id, collector_url)
    site = settings.site(site_id)
    name = html.escape((site.name if site else "") or site_id)
    # The form is captured on the demo page even if the site does not enable capture_forms,
    # so a newcomer sees an identify event arrive.
    tag = tag.replace(" data-site=", ' data-capture-forms="true" data-site=', 1) \
        if "data-capture-forms" not in tag else tag
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{name}: Leadstream demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{tag}
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;line-height:1.5}}
a.cta{{display:inline-block;padding:.4rem .8rem;border:1px solid #333;border-radius:4px;margin-right:.5rem}}
section{{min-height:60vh}}</style>
</head>
<body>
<h1>{name}</h1>
<p>This page runs the Leadstream snippet for site <code>{html.escape(site_id)}</code>. Every page view,
click and heartbeat below goes to the collector and onto the <code>pixel-events</code> topic.</p>
<p>
  <a class="cta" href="#demo" data-ls-cta="book-demo">Book a demo</a>
  <a class="cta" href="#trial" data-ls-cta="start-trial">Start a free trial</a>
  <a href="/demo/{html.escape(site_id)}?page=pricing#pricing">Pricing</a>
</p>
<p><button type="button" onclick="history.pushState({{}}, '', '/demo/{html.escape(site_id)}?view=features')">
Go to features (SPA navigation)</button></p>
<form id="contact" onsubmit="event.preventDefault(); this.querySelector('p').hidden=false">
  <label>Work email <input type="email" name="email" required></label>
  <button type="submit">Contact sales</button>
  <p hidden>Thanks! (sent as an identify event)</p>
</form>
<section><h2 id="pricing">Pricing</h2><p>Scroll down: page pings carry the scroll depth.</p></section>
<section><h2>More</h2><p>The end.</p></section>
</body>
</html>
"""
