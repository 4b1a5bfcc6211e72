"""The demo `leadstream up --demo` runs: synthetic reference data and a site whose filters show.

:func:`prepare_demo` builds the stand-in GeoIP databases, imports the demo
companies, IP ranges, ASN types and people (``demo_data/``, all synthetic: RFC
5737 addresses, ``.example`` domains) into the configured Redis, and returns
settings that point at them, with a ``demo`` site whose rules make every
filter visible within a minute of simulated traffic (``loadtest/simulator.py``
drives it): the buyers of two target companies qualify; ISP, mobile, bot,
VPN, government, university, job-seeker and out-of-market traffic does not,
each with its reason on ``lead-scores``.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import Settings, SiteSettings, with_overrides

__all__ = ["DEMO_SITE", "DEMO_SITE_RULES", "DemoReport", "demo_site", "load_demo_data", "prepare_demo"]

log = logging.getLogger(__name__)

DEMO_SITE = "demo"
DEMO_HOST = "www.leadstream-demo.example"
LOOPBACK = ipaddress.ip_network("127.0.0.1/32")

#: The demo site's rules. Thresholds a buying committee reaches in one simulated minute;
#: every filter has a visitor in the simulator that trips it.
DEMO_SITE_RULES: dict[str, Any] = {
    "thresholds": {"fit_min": 50, "intent_min": 40, "identity_level": "company", "min_confidence": 0.6},
    "qualification": {"cooldown_days": 30},
    "filters": {
        # the simulator's job seekers read only these pages: "only_excluded_pages"
        "pages_exclude": ["/careers*", "/jobs*", "*/careers/*"],
        # the government department and the university: "sector_excluded:..."
        "exclude_sectors": ["government", "public_sector", "education", "military"],
        # an interested robotics buyer from Japan: "country_denied:JP" (sales covers NA and Europe)
        "countries_deny": ["JP"],
        "exclude_isp": True,          # broadband and mobile visitors name no employer
        "exclude_unresolved": True,   # hosting, VPN and the unlisted consultancy
        "exclude_bots": True,         # Googlebot, HeadlessChrome, a scraper on a cloud network
    },
}


@dataclass(frozen=True)
class DemoReport:
    """What :func:`load_demo_data` imported, per kind (rows imported, rows refused)."""
    imported: dict[str, int]
    errors: dict[str, list[tuple[int, str]]]

    @property
    def ok(self) -> bool:
        return not any(self.errors.values())

    def summary(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in self.imported.items())


def demo_site(existing: SiteSettings | None = None) -> SiteSettings:
    """The ``demo`` site: any origin, form capture on, the demo rules (kept when the user set their own)."""
    if existing is not None:
        data = existing.model_dump()
    else:
        data = {"site_id": DEMO_SITE, "name": "Leadstream demo site"}
    data["allowed_origins"] = ["*"]
    data["capture_forms"] = True
    data["conversion_names"] = sorted({*data.get("conversion_names", ()), "demo_request"})
    data.setdefault("hosts", [])
    if not data["hosts"]:
        data["hosts"] = [DEMO_HOST]
    if data.get("rules") is None:
        data["rules"] = DEMO_SITE_RULES
    return SiteSettings.model_validate(data)


def load_demo_data(settings: Settings, site_id: str = DEMO_SITE) -> DemoReport:
    """Import the demo companies, ranges and ASN types (all sites) and people (``site_id``) into
    ``settings.redis``. Idempotent: importing again leaves Redis as it was."""
    from ..enrich.identity_store import SyncIdentityStore
    from ..enrich.redis_store import ReferenceStore
    from .identity_import import import_identity_file
    from .importer import DEMO_DATA_DIR, import_demo_data

    url = settings.redis.url_value
    if not url:
        raise ValueError("redis.url is not set: the demo data goes into Redis")
    site = settings.site(site_id)
    if site is None:
        raise ValueError(f"unknown site {site_id!r}")
    store = ReferenceStore.from_url(url)
    imported: dict[str, int] = {}
    errors: dict[str, list[tuple[int, str]]] = {}
    try:
        for report in import_demo_data(store):
            imported[report.kind] = report.imported
            errors[report.kind] = list(report.errors)
    finally:
        store.close()
    identity = SyncIdentityStore.from_url(url)
    try:
        people = import_identity_file("people", DEMO_DATA_DIR / "people.jsonl", identity, site_id=site_id,
                                      salt=settings.email_salt(site))
    finally:
        identity.close()
    imported["people"] = people.imported
    errors["people"] = list(people.errors)
    return DemoReport(imported, errors)


def prepare_demo(settings: Settings, dir: Path | str) -> Settings:
    """Ready ``settings`` (which must point at a Redis) for the demo; returns the new settings.

    Writes the demo GeoIP databases into ``dir``, imports the demo data set, and
    returns settings with those databases, ``127.0.0.1/32`` among the collector's
    trusted proxies (the simulator sends each visitor's synthetic address in
    ``X-Forwarded-For``), an identity salt (a random one unless set), and the
    ``demo`` site first in ``sites``. Other configured sites are kept.
    Raises ``ValueError`` when Redis is not configured or an import row fails.
    """
    from .geoip_build import build_demo_databases

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    geoip = {**settings.geoip.model_dump(), **build_demo_databases(out)}
    collector = settings.collector.model_dump()
    proxies = list(collector["trusted_proxies"])
    if LOOPBACK not in proxies:
        proxies.append(LOOPBACK)
    collector["trusted_proxies"] = proxies
    sites = [s.model_dump() for s in settings.sites if s.site_id != DEMO_SITE]
    changes: dict[str, Any] = {
        "geoip": geoip,
        "collector": collector,
        "sites": [demo_site(settings.site(DEMO_SITE)).model_dump(), *sites],
    }
    if settings.identity_salt is None:
        changes["identity_salt"] = secrets.token_hex(16)
    else:
        changes["identity_salt"] = settings.identity_salt.get_secret_value()
    effective = with_overrides(settings, **changes)
    report = load_demo_data(effective)
    if not report.ok:
        problems = [f"{kind} line {line}: {reason}" for kind, rows in report.errors.items() for line, reason in rows]
        raise ValueError("the demo data did not import cleanly:\n  " + "\n  ".join(problems[:20]))
    log.info("demo data imported: %s", report.summary())
    return effective
