"""A labelled synthetic world for the lead quality benchmark (``leadstream bench quality``).

:func:`build_world` turns a seed into companies, networks and visitors with ground truth.
Every random choice comes from one ``random.Random(seed)``, so a seed is one world.

- **Companies** (~60) with firmographics (industry, employees, revenue, country, sector,
  domain), each of a :class:`CompanyKind`: ICP, ICP size boundary (just inside / just
  outside the employee range), non-ICP (industry or country), public sector, competitor,
  existing customer.
- **Networks**: an office range per company (MaxMind ``user_type`` business, or
  government / college for the public sector), a branch office abroad for some,
  residential broadband (ISP), cellular (mobile) and a hosting range. Written into
  MaxMind-format Enterprise and ASN databases by :func:`write_geoip`.
- **Visitors** (~300-350), each with a ground-truth class (:data:`VISITOR_CLASSES`) and
  the page views, pings, form submits they make over ``DAYS`` days of event time.

Ground truth per account: an account should be a lead when its company is an ICP
company (kind ``icp`` or ``boundary_in``: not a customer, competitor or public body) and
at least one genuine buyer (``buyer``, ``remote_buyer``, ``branch_buyer``) visited.

The world's addresses are in the RFC 2544 benchmark range: offices and branches in
198.18.0.0/16 (a /24 each), broadband, cellular and hosting ranges in 198.19.0.0/16 (a /20
each); its domains end in ``.example``.
"""

from __future__ import annotations

import csv
import ipaddress
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

__all__ = ["DAYS", "DAY_MS", "SITE_ID", "SITE_HOST", "ICP", "CompanyKind", "Company", "Network", "Hit",
           "Visitor", "World", "VISITOR_CLASSES", "BUYER_CLASSES", "LEAD_KINDS", "build_world", "write_geoip",
           "write_companies_csv", "icp_rules", "naive_leads", "NAIVE_PATHS"]

DAYS = 14
DAY_MS = 86_400_000
SITE_ID = "bench"
SITE_HOST = "www.northbeam.example"
SITE_ORIGIN = f"https://{SITE_HOST}"

#: The world's ideal customer profile: what the benchmark configures as the site's ICP.
ICP: dict[str, Any] = {
    "industries": ["software", "financial services"],
    "employees_min": 50,
    "employees_max": 1000,
    "countries": ["US", "CA", "GB", "IE", "DE", "NL", "FR", "SE"],
}


def icp_rules() -> list[dict[str, Any]]:
    """The site's ICP fit rules, as a user writes them in ``leadstream.yaml`` (``rules.icp.rules``).

    The three ICP criteria, and a negative rule on the ``competitor`` tag the company import
    carries (competitors are known to the user; the product cannot guess them).
    """
    return [
        {"name": "target_industry", "attribute": "industry", "values": list(ICP["industries"]), "weight": 40},
        {"name": "company_size", "attribute": "employees", "min": ICP["employees_min"],
         "max": ICP["employees_max"], "weight": 35},
        {"name": "target_country", "attribute": "country", "values": list(ICP["countries"]), "weight": 25},
        {"name": "not_a_competitor", "attribute": "tag", "values": ["competitor"], "weight": -100},
    ]


class CompanyKind:
    icp = "icp"                    # inside every ICP criterion
    boundary_in = "boundary_in"    # ICP, employees just inside the range
    boundary_out = "boundary_out"  # employees just outside the range
    non_icp = "non_icp"            # wrong industry or country
    public = "public"              # government / public sector / education
    competitor = "competitor"
    customer = "customer"          # an existing customer (ICP firmographics)


#: Company kinds that may become leads (with a genuine buyer).
LEAD_KINDS = frozenset({CompanyKind.icp, CompanyKind.boundary_in})

#: Ground-truth visitor classes.
VISITOR_CLASSES = ("buyer", "remote_buyer", "branch_buyer", "researcher", "job_seeker", "customer",
                   "competitor", "bot", "non_icp_buyer", "public_buyer", "anon_reader")
BUYER_CLASSES = frozenset({"buyer", "remote_buyer", "branch_buyer"})

#: The naive rule's pages (prefixes).
NAIVE_PATHS = ("/pricing", "/demo", "/contact")


@dataclass(frozen=True)
class Network:
    """One range of the GeoIP database."""
    cidr: str
    kind: str                      # office | branch | isp | mobile | hosting
    country: str
    user_type: str
    connection_type: str
    asn: int
    asn_org: str
    isp: str
    organization: str | None = None
    domain: str | None = None

    def host(self, rng: random.Random) -> str:
        net = ipaddress.ip_network(self.cidr)
        return str(net.network_address + rng.randrange(2, min(net.num_addresses - 1, 65_000)))


@dataclass(frozen=True)
class Company:
    domain: str
    name: str
    kind: str
    industry: str
    employees: int
    revenue: float
    country: str
    sector: str
    tags: tuple[str, ...]
    office: Network
    branch: Network | None = None

    @property
    def networks(self) -> tuple[Network, ...]:
        return (self.office,) + ((self.branch,) if self.branch else ())


@dataclass(frozen=True)
class Hit:
    """One tracker event at world time ``t`` (epoch ms)."""
    t: int
    kind: str                      # pv | pp | form
    path: str
    title: str = ""
    referrer: str = ""
    form_id: str | None = None
    email: str | None = None


@dataclass
class Visitor:
    visitor_id: str                # the tracker's domain user id (duid)
    cls: str                       # ground-truth class (VISITOR_CLASSES)
    company: str | None            # the domain of the company the person works for (None: nobody known)
    ip: str
    user_agent: str
    accept_language: str
    language: str
    screen: str | None
    viewport: str | None
    email: str | None = None       # a work or personal email the visitor gives in a form
    user_id: str | None = None     # the site's user id (a logged-in customer)
    server_side_draw: float = 0.0  # < share: this visitor's events are relayed by a server-side tracker
    sessions: list[list[Hit]] = field(default_factory=list)

    def hits(self) -> Iterator[Hit]:
        for s in self.sessions:
            yield from s


@dataclass
class World:
    seed: int
    t0: int                        # epoch ms of day 0, a UTC midnight
    companies: list[Company]
    networks: list[Network]
    visitors: list[Visitor]

    def company(self, domain: str | None) -> Company | None:
        return next((c for c in self.companies if c.domain == domain), None) if domain else None

    def should_be_lead(self) -> set[str]:
        """Ground truth: ICP companies (not customers, competitors, public bodies) with a genuine buyer."""
        lead_domains = {c.domain for c in self.companies if c.kind in LEAD_KINDS}
        return {v.company for v in self.visitors
                if v.cls in BUYER_CLASSES and v.company in lead_domains and v.company is not None}

    def visitors_of(self, domain: str) -> list[Visitor]:
        return [v for v in self.visitors if v.company == domain]


# -- user agents -------------------------------------------------------------------------------

DESKTOP_UAS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
)
MOBILE_UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
)
DESKTOP_SCREENS = (("1920x1080", "1903x961"), ("1512x982", "1512x857"), ("2560x1440", "2543x1289"),
                   ("1440x900", "1440x789"), ("1366x768", "1349x657"))
MOBILE_SCREENS = (("393x852", "393x659"), ("412x915", "412x780"))
LANGUAGES = {"US": ("en-US", "en-US,en;q=0.9"), "CA": ("en-CA", "en-CA,en;q=0.9,fr-CA;q=0.7"),
             "GB": ("en-GB", "en-GB,en;q=0.9"), "IE": ("en-IE", "en-IE,en;q=0.9"),
             "DE": ("de-DE", "de-DE,de;q=0.9,en;q=0.8"), "NL": ("nl-NL", "nl-NL,nl;q=0.9,en;q=0.8"),
             "FR": ("fr-FR", "fr-FR,fr;q=0.9,en;q=0.8"), "SE": ("sv-SE", "sv-SE,sv;q=0.9,en;q=0.8"),
             "BR": ("pt-BR", "pt-BR,pt;q=0.9,en;q=0.8"), "IN": ("en-IN", "en-IN,en;q=0.9,hi;q=0.8"),
             "JP": ("ja-JP", "ja-JP,ja;q=0.9,en;q=0.8"), "SG": ("en-SG", "en-SG,en;q=0.9"),
             "PL": ("pl-PL", "pl-PL,pl;q=0.9,en;q=0.8"), "ES": ("es-ES", "es-ES,es;q=0.9,en;q=0.8")}

# -- pages ---------------------------------------------------------------------------------------

HOME = "/"
BUYING = ("/pricing", "/demo", "/contact", "/pricing", "/product", "/features", "/integrations", "/security",
          "/customers/acme-case-study", "/compare/northbeam-vs-others")
RESEARCH = ("/blog/lead-scoring-101", "/blog/b2b-attribution", "/blog/intent-data-guide", "/docs/getting-started",
            "/docs/api", "/resources/state-of-b2b-report", "/blog/icp-workshop", "/docs/tracking-plan")
CAREERS = ("/careers", "/careers/jobs/senior-backend-engineer", "/careers/jobs/account-executive",
           "/careers/life-at-northbeam", "/about")
CUSTOMER = ("/login", "/docs/api", "/docs/integrations/salesforce", "/support", "/support/tickets/new",
            "/help/billing", "/status", "/changelog")
TITLES = {"/": "Northbeam: B2B lead intelligence", "/pricing": "Pricing", "/demo": "Book a demo",
          "/contact": "Contact sales"}
REFERRERS = ("https://www.google.com/", "https://www.linkedin.com/", "https://www.bing.com/", "",
             "https://news.ycombinator.com/", "https://www.g2.com/")

# -- companies -------------------------------------------------------------------------------------

_SYLLABLES = ("nor", "vex", "quan", "lum", "tri", "zen", "bri", "cor", "dal", "fen", "gal", "hex", "ion",
              "jet", "kal", "mar", "nov", "orb", "pax", "ryl", "sol", "tal", "ul", "ver", "wix", "yar", "zor")
_SUFFIXES = ("ly", "io", "ware", "labs", "ix", "era", "ata", "on", "us", "ify")
ICP_COUNTRIES = tuple(ICP["countries"])
OTHER_COUNTRIES = ("BR", "IN", "JP", "SG", "PL", "ES")
NON_ICP_INDUSTRIES = ("retail", "manufacturing", "hospitality", "construction", "healthcare", "logistics")
ICP_INDUSTRIES = tuple(ICP["industries"])


class _Names:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def __call__(self) -> str:
        while True:
            name = (self.rng.choice(_SYLLABLES) + self.rng.choice(_SYLLABLES) + self.rng.choice(_SUFFIXES))
            if name not in self.used:
                self.used.add(name)
                return name


class _Plan:
    """Hands out /24s (offices, branches) and ASNs."""

    def __init__(self) -> None:
        self.office = iter(ipaddress.ip_network("198.18.0.0/16").subnets(new_prefix=24))
        self.asn = 64_600

    def next_office(self) -> str:
        return str(next(self.office))

    def next_asn(self) -> int:
        self.asn += 1
        return self.asn


def _company(rng: random.Random, names: _Names, plan: _Plan, kind: str) -> Company:
    stem = names()
    domain = f"{stem}.example"
    industry = rng.choice(ICP_INDUSTRIES)
    country = rng.choice(ICP_COUNTRIES)
    employees = rng.randint(80, 900)
    sector, tags = "private", cast(tuple[str, ...], ())
    lo, hi = ICP["employees_min"], ICP["employees_max"]
    if kind == CompanyKind.boundary_in:
        employees = rng.choice((rng.randint(lo, lo + 5), rng.randint(hi - 20, hi)))
    elif kind == CompanyKind.boundary_out:
        employees = rng.choice((rng.randint(lo - 12, lo - 1), rng.randint(hi + 1, hi + 150)))
    elif kind == CompanyKind.non_icp:
        if rng.random() < 0.6:
            industry = rng.choice(NON_ICP_INDUSTRIES)
        else:
            country = rng.choice(OTHER_COUNTRIES)
    elif kind == CompanyKind.public:
        sector = rng.choice(("government", "public_sector", "education"))
        industry = {"government": "government administration", "public_sector": "public administration",
                    "education": "higher education"}[sector]
        employees = rng.randint(200, 5000)
    elif kind == CompanyKind.competitor:
        industry = "software"
        tags = ("competitor",)
    elif kind == CompanyKind.customer:
        tags = ("customer",)
    revenue = float(employees * rng.randint(90, 260) * 1000)
    name = stem.capitalize() + {"public": rng.choice((" City Council", " Department of Revenue", " University"))
                                }.get(kind, rng.choice((" Inc", " Ltd", " GmbH", " Corp", "")))
    if kind == CompanyKind.public:
        user_type = {"education": "college"}.get(sector, "government")
    else:
        user_type = "business"
    asn = plan.next_asn()
    office = Network(plan.next_office(), "office", country, user_type, "Corporate", asn, name, name,
                     organization=name, domain=domain)
    branch = None
    if kind in (CompanyKind.icp, CompanyKind.customer, CompanyKind.non_icp) and rng.random() < 0.3:
        branch_country = rng.choice([c for c in ICP_COUNTRIES + OTHER_COUNTRIES if c != country])
        branch = Network(plan.next_office(), "branch", branch_country, "business", "Corporate", asn, name, name,
                         organization=name, domain=domain)
    return Company(domain, name, kind, industry, employees, revenue, country, sector, tags, office, branch)


def _public_networks() -> list[Network]:
    out = []
    isps = (("198.19.0.0/20", "US", "Northwind Broadband"), ("198.19.16.0/20", "DE", "Rheinnetz DSL"),
            ("198.19.32.0/20", "GB", "Albion Fibre"), ("198.19.48.0/20", "FR", "Hexagone Telecom"),
            ("198.19.64.0/20", "NL", "Polder Kabel"))
    for i, (cidr, country, name) in enumerate(isps):
        out.append(Network(cidr, "isp", country, "residential", "Cable/DSL", 64_500 + i, name, name))
    out.append(Network("198.19.96.0/20", "mobile", "US", "cellular", "Cellular", 64_510, "Skyline Wireless",
                       "Skyline Wireless"))
    out.append(Network("198.19.112.0/20", "mobile", "GB", "cellular", "Cellular", 64_511, "Isles Mobile",
                       "Isles Mobile"))
    out.append(Network("198.19.128.0/20", "hosting", "US", "hosting", "Corporate", 64_520, "Cumulus Cloud Hosting",
                       "Cumulus Cloud Hosting"))
    return out


# -- sessions --------------------------------------------------------------------------------------

class _Clock:
    def __init__(self, rng: random.Random, t0: int) -> None:
        self.rng = rng
        self.t0 = t0

    def start(self, day: int) -> int:
        """A session start on ``day`` (business hours, UTC)."""
        return self.t0 + day * DAY_MS + self.rng.randint(7 * 3600, 19 * 3600) * 1000 + self.rng.randint(0, 999)


def _session(rng: random.Random, start: int, paths: list[str], *, dwell: tuple[int, int] = (20, 150),
             forms: dict[str, tuple[str, str | None]] | None = None, pings: bool = True) -> list[Hit]:
    """Page views from ``start`` with page pings every 10 s (up to 3 per page), and form submits
    (``forms``: path -> (form id, email)) a little after the page view of that path."""
    hits: list[Hit] = []
    t = start
    referrer = rng.choice(REFERRERS)
    for path in paths:
        hits.append(Hit(t, "pv", path, TITLES.get(path, path.strip("/").replace("/", " - ").title() or "Home"),
                        referrer))
        referrer = SITE_ORIGIN + path
        stay = rng.randint(*dwell) * 1000
        if pings:
            for k in range(1, min(3, stay // 10_000) + 1):
                hits.append(Hit(t + k * 10_000, "pp", path))
        if forms and path in forms:
            form_id, email = forms.pop(path)
            hits.append(Hit(t + stay - 2000, "form", path, form_id=form_id, email=email))
        t += stay
    return hits


def _days(rng: random.Random, n: int, first: int = 0, last: int = DAYS - 1) -> list[int]:
    return sorted(rng.sample(range(first, last + 1), min(n, last - first + 1)))


def _person(rng: random.Random, cls: str, company: Company | None, ip: str, mobile: bool = False,
            country: str = "US") -> Visitor:
    ua = rng.choice(MOBILE_UAS if mobile else DESKTOP_UAS)
    screen, viewport = rng.choice(MOBILE_SCREENS if mobile else DESKTOP_SCREENS)
    language, accept = LANGUAGES.get(country, LANGUAGES["US"])
    return Visitor(str(uuid.UUID(int=rng.getrandbits(128), version=4)), cls, company.domain if company else None,
                   ip, ua, accept, language, screen, viewport, server_side_draw=rng.random())


_FIRST = ("ann", "ben", "chloe", "dev", "elif", "farid", "greta", "hiro", "ines", "jonas", "kim", "lena", "malik",
          "nora", "omar", "priya", "quinn", "rosa", "sven", "tara", "uma", "victor", "wen", "yusuf", "zoe")
_LAST = ("adler", "berg", "costa", "diaz", "evans", "fischer", "gupta", "haas", "ito", "jensen", "khan", "lopez",
         "meyer", "nakamura", "olsen", "park", "quist", "rossi", "smith", "tanaka", "ueda", "vogel", "weber")


def _email(rng: random.Random, domain: str) -> str:
    return f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randint(1, 99)}@{domain}"


def _buying_sessions(rng: random.Random, clock: _Clock, v: Visitor, n_days: int, form: bool,
                     first: int = 0) -> None:
    days = _days(rng, n_days, first)
    form_day = rng.choice(days) if form else None
    for day in days:
        paths = [HOME] if rng.random() < 0.6 else []
        paths += rng.sample(BUYING, rng.randint(2, 5))
        if day == form_day and "/demo" not in paths:
            paths.append("/demo")
        forms = {"/demo": ("demo-request", v.email)} if day == form_day else None
        v.sessions.append(_session(rng, clock.start(day), paths, forms=forms))


def build_world(seed: int, t0: int) -> World:
    """The world of ``seed``; day 0 starts at ``t0`` (epoch ms, a UTC midnight)."""
    rng = random.Random(seed)
    names, plan = _Names(rng), _Plan()
    clock = _Clock(rng, t0)
    counts = {CompanyKind.icp: rng.randint(22, 26), CompanyKind.boundary_in: rng.randint(3, 5),
              CompanyKind.boundary_out: rng.randint(3, 5), CompanyKind.non_icp: rng.randint(9, 12),
              CompanyKind.public: rng.randint(4, 6), CompanyKind.competitor: rng.randint(2, 4),
              CompanyKind.customer: rng.randint(5, 7)}
    companies = [_company(rng, names, plan, kind) for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(companies)
    networks = [n for c in companies for n in c.networks] + _public_networks()
    isps = [n for n in networks if n.kind == "isp"]
    mobiles = [n for n in networks if n.kind == "mobile"]
    visitors: list[Visitor] = []

    def anon_net(mobile_share: float = 0.3) -> tuple[Network, bool]:
        if rng.random() < mobile_share:
            return rng.choice(mobiles), True
        return rng.choice(isps), False

    by_kind = {k: [c for c in companies if c.kind == k] for k in counts}
    icp_like = by_kind[CompanyKind.icp] + by_kind[CompanyKind.boundary_in]
    # genuine buyers at about two thirds of the ICP companies; the rest see only researchers,
    # job seekers and bots
    buying = [c for c in icp_like if rng.random() < 0.65]
    for c in buying:
        committee = rng.randint(1, 4)
        shape = rng.random()
        for i in range(committee):
            if (i == 0 and shape < 0.25) or (i > 0 and rng.random() < 0.15):
                # the account's lead buyer works from home and identifies with a work email
                net, mobile = rng.choice(isps), False
                v = _person(rng, "remote_buyer", c, net.host(rng), country=net.country)
                v.email = _email(rng, c.domain)
                _buying_sessions(rng, clock, v, rng.randint(2, 4), form=True)
            elif c.branch is not None and (i == 0 and shape < 0.5 or rng.random() < 0.3):
                v = _person(rng, "branch_buyer", c, c.branch.host(rng), country=c.branch.country)
                v.email = _email(rng, c.domain)
                _buying_sessions(rng, clock, v, rng.randint(2, 4), form=rng.random() < 0.5)
            else:
                v = _person(rng, "buyer", c, c.office.host(rng), country=c.country)
                v.email = _email(rng, c.domain)
                _buying_sessions(rng, clock, v, rng.randint(1 if i else 2, 4), form=i == 0 or rng.random() < 0.2)
            visitors.append(v)

    # researchers: blog / docs, one-off, at any company or at home; some download a gated report
    for _ in range(rng.randint(50, 65)):
        if rng.random() < 0.7:
            c = rng.choice(companies)
            v = _person(rng, "researcher", c, c.office.host(rng), country=c.country)
            gated = rng.random() < 0.35
            v.email = _email(rng, c.domain) if gated else None
        else:
            net, mobile = anon_net()
            v = _person(rng, "researcher", None, net.host(rng), mobile, net.country)
            gated = False
        paths = rng.sample(RESEARCH, rng.randint(1, 4))
        if gated:
            paths.append("/resources/state-of-b2b-report")
        if rng.random() < 0.25:
            paths.append("/pricing")
        forms = {"/resources/state-of-b2b-report": ("report-download", v.email)} if gated else None
        v.sessions.append(_session(rng, clock.start(rng.randrange(DAYS)), paths, forms=forms))
        visitors.append(v)

    # job seekers: careers pages, a job application with a personal email; mostly from home
    for _ in range(rng.randint(30, 40)):
        if rng.random() < 0.25:
            c = rng.choice(companies)
            v = _person(rng, "job_seeker", None, c.office.host(rng), country=c.country)
        else:
            net, mobile = anon_net(0.4)
            v = _person(rng, "job_seeker", None, net.host(rng), mobile, net.country)
        v.email = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randint(1, 999)}@" + rng.choice(
            ("gmail.com", "outlook.com", "yahoo.com", "proton.me"))
        for j, day in enumerate(_days(rng, rng.randint(1, 3))):
            paths = rng.sample(CAREERS, rng.randint(2, 4))
            if rng.random() < 0.15:
                paths.append("/pricing")
            apply_path = "/careers/jobs/senior-backend-engineer"
            if j == 0 and rng.random() < 0.7:
                if apply_path not in paths:
                    paths.append(apply_path)
                forms = {apply_path: ("job-application", v.email)}
            else:
                forms = None
            v.sessions.append(_session(rng, clock.start(day), paths, forms=forms))
        visitors.append(v)

    # existing customers: login, docs, support tickets; now and then the pricing page (plan check)
    for c in by_kind[CompanyKind.customer]:
        for _ in range(rng.randint(4, 7)):
            net = c.branch if c.branch is not None and rng.random() < 0.2 else c.office
            v = _person(rng, "customer", c, net.host(rng), country=net.country)
            v.email = _email(rng, c.domain)
            v.user_id = f"user-{rng.randint(10_000, 99_999)}"
            ticket = rng.random() < 0.5
            ticket_day = None
            days = _days(rng, rng.randint(1, 5))
            if ticket:
                ticket_day = rng.choice(days)
            for day in days:
                paths = ["/login"] + rng.sample(CUSTOMER[1:], rng.randint(1, 4))
                if rng.random() < 0.25:
                    paths.append("/pricing")
                forms = None
                if day == ticket_day:
                    paths.append("/support/tickets/new")
                    forms = {"/support/tickets/new": ("support-request", v.email)}
                v.sessions.append(_session(rng, clock.start(day), paths, forms=forms))
            visitors.append(v)

    # competitors: pricing, features, comparisons and the demo page, over several days
    for c in by_kind[CompanyKind.competitor]:
        for _ in range(rng.randint(1, 3)):
            v = _person(rng, "competitor", c, c.office.host(rng), country=c.country)
            for day in _days(rng, rng.randint(2, 4)):
                paths = rng.sample(("/pricing", "/features", "/compare/northbeam-vs-others", "/demo", "/product",
                                    "/integrations", "/security", "/changelog"), rng.randint(3, 5))
                v.sessions.append(_session(rng, clock.start(day), paths))
            visitors.append(v)

    # non-ICP companies and public bodies with buying behaviour (and a demo request)
    for cls, pool in (("non_icp_buyer", by_kind[CompanyKind.non_icp] + by_kind[CompanyKind.boundary_out]),
                      ("public_buyer", by_kind[CompanyKind.public])):
        for c in pool:
            if rng.random() < 0.3:
                continue
            for i in range(rng.randint(1, 3)):
                net = c.branch if c.branch is not None and rng.random() < 0.2 else c.office
                v = _person(rng, cls, c, net.host(rng), country=net.country)
                v.email = _email(rng, c.domain)
                _buying_sessions(rng, clock, v, rng.randint(2, 4), form=i == 0 and rng.random() < 0.7)
                visitors.append(v)

    # bots with a real browser UA on office networks: a page rate no human reaches, some with
    # no screen reported
    for _ in range(rng.randint(14, 22)):
        c = rng.choice(companies)
        v = _person(rng, "bot", None, c.office.host(rng), country=c.country)
        v.user_agent = rng.choice(DESKTOP_UAS)
        if rng.random() < 0.5:
            v.screen, v.viewport = None, None
        pages = list(BUYING + RESEARCH + CAREERS)
        for day in _days(rng, rng.randint(1, 3)):
            crawl = [rng.choice(pages) for _ in range(rng.randint(35, 70))]
            v.sessions.append(_session(rng, clock.start(day), crawl, dwell=(1, 2), pings=False))
        visitors.append(v)

    # anonymous readers on home broadband and mobile
    for _ in range(rng.randint(80, 100)):
        net, mobile = anon_net(0.45)
        v = _person(rng, "anon_reader", None, net.host(rng), mobile, net.country)
        for day in _days(rng, rng.choice((1, 1, 1, 2, 3))):
            paths = [HOME] + rng.sample(RESEARCH + BUYING[:2] + ("/product",), rng.randint(1, 3))
            v.sessions.append(_session(rng, clock.start(day), paths))
        visitors.append(v)

    return World(seed, t0, companies, networks, visitors)


# -- what the product is given ----------------------------------------------------------------------

def write_geoip(world: World, out_dir: Path) -> dict[str, Path]:
    """The world's networks as a GeoIP2-Enterprise-layout and a GeoLite2-ASN-layout .mmdb;
    returns ``{"enterprise_db": ..., "asn_db": ...}`` (``geoip:`` settings keys)."""
    from pipeline.ops.geoip_build import asn_record, enterprise_record, write_mmdb

    enterprise, asns = [], []
    for n in world.networks:
        enterprise.append((n.cidr, enterprise_record(
            country=n.country, asn=n.asn, asn_org=n.asn_org, isp=n.isp, organization=n.organization,
            domain=n.domain, user_type=n.user_type, connection_type=n.connection_type,
            is_hosting_provider=n.kind == "hosting")))
        asns.append((n.cidr, asn_record(n.asn, n.asn_org)))
    return {
        "enterprise_db": write_mmdb(out_dir / "World-Enterprise.mmdb", enterprise,
                                    database_type="Leadstream-Bench-Enterprise (compat=GeoIP2-Enterprise)",
                                    description=f"leadstream quality benchmark world, seed {world.seed}"),
        "asn_db": write_mmdb(out_dir / "World-ASN.mmdb", asns,
                             database_type="Leadstream-Bench-ASN (compat=GeoLite2-ASN)",
                             description=f"leadstream quality benchmark world, seed {world.seed}"),
    }


COMPANY_COLUMNS = ("domain", "name", "industry", "employees", "revenue", "country", "sector", "tags")


def write_companies_csv(world: World, path: Path) -> Path:
    """The company import file ``leadstream import companies`` reads (IMPORT_FORMATS.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(COMPANY_COLUMNS)
        for c in world.companies:
            w.writerow([c.domain, c.name, c.industry, c.employees, int(c.revenue), c.country, c.sector,
                        ";".join(c.tags)])
    return path


# -- the naive rule ------------------------------------------------------------------------------------

def _in_networks(ip: str, networks: tuple[Network, ...]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(n.cidr) for n in networks)


def naive_leads(world: World, min_views: int = 3, min_days: int = 2) -> set[str]:
    """Companies where some visitor from the company's network, or identified by a work email at
    the company's domain, viewed /pricing, /demo or /contact at least ``min_views`` times on at
    least ``min_days`` distinct days (UTC)."""
    out: set[str] = set()
    for c in world.companies:
        for v in world.visitors:
            own = _in_networks(v.ip, c.networks) or (v.email is not None and v.email.endswith("@" + c.domain))
            if not own:
                continue
            views = [h for h in v.hits() if h.kind == "pv" and h.path.startswith(NAIVE_PATHS)]
            if len(views) >= min_views and len({h.t // DAY_MS for h in views}) >= min_days:
                out.add(c.domain)
                break
    return out
