"""Referrer classification: where a visit came from, by the referring URL's host.

Classes: ``search``, ``social``, ``email``, ``paid``, ``internal``, ``direct``, ``other``.
:func:`classify_referrer` looks at the referrer alone (``paid`` never comes from the
referrer: it needs campaign parameters, see :func:`pipeline.core.campaign.traffic_class`).
Built-in host lists cover the common engines, networks and webmail hosts; a host
matches an entry when it equals it or is a subdomain of it (``news.google.com``
matches ``google.com``), and ``google.*``-style entries match any public suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["ReferrerClass", "ReferrerInfo", "classify_referrer", "host_of", "is_own_host",
           "SEARCH_HOSTS", "SOCIAL_HOSTS", "EMAIL_HOSTS"]


class ReferrerClass(str, Enum):
    search = "search"
    social = "social"
    email = "email"
    paid = "paid"
    internal = "internal"
    direct = "direct"
    other = "other"


# host (or "name.*" for any suffix) -> query parameter carrying the search term
SEARCH_HOSTS: dict[str, str] = {
    "google.*": "q", "bing.com": "q", "duckduckgo.com": "q", "yahoo.com": "p", "search.yahoo.com": "p",
    "yandex.*": "text", "baidu.com": "wd", "ecosia.org": "q", "search.brave.com": "q",
    "startpage.com": "query", "qwant.com": "q", "naver.com": "query", "seznam.cz": "q",
    "ask.com": "q", "aol.com": "q", "perplexity.ai": "q", "kagi.com": "q", "you.com": "q",
}
SOCIAL_HOSTS: frozenset[str] = frozenset({
    "linkedin.com", "lnkd.in", "facebook.com", "fb.com", "m.facebook.com", "l.facebook.com",
    "instagram.com", "twitter.com", "t.co", "x.com", "reddit.com", "youtube.com", "youtu.be",
    "tiktok.com", "pinterest.com", "xing.com", "news.ycombinator.com", "threads.net",
    "bsky.app", "mastodon.social", "quora.com", "slack.com", "discord.com", "medium.com",
    "vk.com", "weibo.com", "telegram.org", "t.me", "whatsapp.com",
})
EMAIL_HOSTS: frozenset[str] = frozenset({
    "mail.google.com", "outlook.live.com", "outlook.office.com", "outlook.office365.com",
    "mail.yahoo.com", "mail.aol.com", "mail.proton.me", "mail.protonmail.com", "webmail",
    "mail.zoho.com", "mail.yandex.ru", "mail.ru", "e.mail.ru", "gmx.net", "web.de",
    "icloud.com", "fastmail.com", "mail.com", "deref-gmx.net", "deref-web.de",
})


@dataclass(frozen=True, slots=True)
class ReferrerInfo:
    cls: ReferrerClass
    host: str | None = None
    search_term: str | None = None


def host_of(url: str | None) -> str | None:
    """Lower-case host of an absolute URL without a leading ``www.``; None when unparsable."""
    if not url:
        return None
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def _host_matches(host: str, entry: str) -> bool:
    if entry.endswith(".*"):
        # google.* : any label sequence "google.<suffix>" at the right of the host
        name = entry[:-2]
        labels = host.split(".")
        return any(labels[i] == name and i < len(labels) - 1 for i in range(len(labels)))
    return host == entry or host.endswith("." + entry) or host.startswith(entry + ".")


def _match(host: str, entries: Iterable[str]) -> str | None:
    for entry in entries:
        if _host_matches(host, entry):
            return entry
    return None


def is_own_host(host: str | None, site_hosts: Iterable[str]) -> bool:
    """True when ``host`` is one of the site's hosts or a subdomain of one."""
    if not host:
        return False
    for own in site_hosts:
        own = own.lower().removeprefix("www.").removeprefix("*.")
        if host == own or host.endswith("." + own):
            return True
    return False


def classify_referrer(referrer: str | None, page_url: str | None = None,
                      site_hosts: Iterable[str] = ()) -> ReferrerInfo:
    """Classify one referrer URL.

    ``direct`` when there is none; ``internal`` when its host is the page's own host or
    one of ``site_hosts``; then the search, email and social lists in that order
    (``mail.google.com`` is email, not search); ``other`` for any other host.
    """
    host = host_of(referrer)
    if host is None:
        return ReferrerInfo(ReferrerClass.direct)
    own = list(site_hosts)
    page_host = host_of(page_url)
    if page_host:
        own.append(page_host)
    if is_own_host(host, own):
        return ReferrerInfo(ReferrerClass.internal, host)
    if host in EMAIL_HOSTS or host.startswith("mail.") or host.startswith("webmail.") or _match(host, EMAIL_HOSTS):
        return ReferrerInfo(ReferrerClass.email, host)
    engine = _match(host, SEARCH_HOSTS)
    if engine is not None:
        term = None
        try:
            values = parse_qs(urlsplit(referrer or "").query).get(SEARCH_HOSTS[engine])
            term = values[0] if values else None
        except ValueError:
            term = None
        return ReferrerInfo(ReferrerClass.search, host, term)
    if _match(host, SOCIAL_HOSTS):
        return ReferrerInfo(ReferrerClass.social, host)
    return ReferrerInfo(ReferrerClass.other, host)
