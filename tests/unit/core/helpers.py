"""Builders of plain input values for the core tests."""

from __future__ import annotations

import itertools
from typing import Any

from pipeline.core.events import TrackedEvent, build_event

T0 = 1_700_000_000_000          # 2023-11-14T22:13:20Z
MIN = 60_000
DAY = 86_400_000
_seq = itertools.count()


def payload(events: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"payload_id": "p-1", "site_id": "s1", "visitor_id": "v1", "network_user_id": "n1",
                            "client_ip": "203.0.113.7", "user_agent": "Mozilla/5.0", "referer": None,
                            "origin": None, "accept_language": "en-GB", "headers": {},
                            "collector_tstamp": T0, "source": "collect", "consent": "full",
                            "collector": "test/0", "events": events}
    base.update(kw)
    return base


def raw(event_type: str = "page_view", **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"event_id": f"e{next(_seq)}", "event_type": event_type,
                         "url": "https://www.acme-saas.com/", "extra": {}}
    if event_type not in ("page_view", "page_ping"):
        e["url"] = kw.pop("url", "https://www.acme-saas.com/")
    e.update(kw)
    return e


def ev(t: int, event_type: str = "page_view", url: str = "https://www.acme-saas.com/", *,
       visitor: str = "v1", **kw: Any) -> TrackedEvent:
    """A TrackedEvent at derived time ``t`` (true_tstamp) for site s1."""
    r = raw(event_type, url=url, true_tstamp=t, **kw)
    return build_event(r, payload([r], visitor_id=visitor, collector_tstamp=t + 100))


def visit(t: int, urls: list[str] | None = None, *, visitor: str = "v1", index: int = 1, sid: str | None = None,
          step: int = 20_000, engaged: bool | None = None, engaged_delta: int = 0, scroll: int = 0,
          conversions: list[str] | None = None, company: Any = None, company_conf: float = 0.0,
          is_bot: bool = False, country: str | None = "GB", ip: str | None = "198.51.100.9",
          network_class: Any = None, person_id: str | None = None, person_conf: float = 0.0,
          seniority: str | None = None, account: str = "c:acme.com") -> Any:
    """A VisitUpdate for one session whose page views are ``step`` ms apart from ``t``."""
    from pipeline.core.model import NetworkClass
    from pipeline.core.sessions import Hit, SessionSummary
    from pipeline.core.visit import VisitUpdate
    urls = ["https://www.acme-saas.com/"] if urls is None else urls
    hits = [Hit(t + i * step, "page_view", u) for i, u in enumerate(urls)]
    hits += [Hit(t + len(urls) * step, "conversion", None, c) for c in conversions or []]
    end = max([h.tstamp for h in hits] + [t])
    eng = (len(urls) >= 2 or bool(conversions)) if engaged is None else engaged
    summary = SessionSummary(session_id=sid or f"{visitor}-{index}", index=index, start=t, end=end,
                             duration_ms=end - t, page_views=len(urls), entry_url=urls[0] if urls else None,
                             exit_url=urls[-1] if urls else None, max_scroll=scroll, engaged_ms=engaged_delta,
                             engaged=eng, conversions=len(conversions or []), events=len(hits),
                             referrer_class="direct", referrer_host=None, campaign=None, pages=tuple(urls),
                             peak_pages_per_minute=1)
    return VisitUpdate(site_id="s1", account=account, visitor_id=visitor, session=summary, hits=tuple(hits),
                       engaged_ms_delta=engaged_delta, new_session=True, company=company,
                       company_confidence=company_conf, network_class=network_class or NetworkClass.business,
                       country=country, client_ip=ip, person_id=person_id, person_confidence=person_conf,
                       person_seniority=seniority, is_bot=is_bot)
