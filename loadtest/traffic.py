"""Synthetic pixel traffic as ready-made ``pixel-events`` records (CollectorBatch), for the stage
fault tests and the pipeline benchmark. Deterministic for a seed; addresses from the demo data's
documentation ranges (pipeline/ops/demo_data/README.md)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from pipeline.topology import partition_for, visitor_key

UAS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
)
PATHS = ("/", "/product", "/pricing", "/features", "/customers/acme-co", "/demo", "/contact", "/blog/post-1",
         "/security", "/integrations", "/careers", "/docs/start")
# one address per demo company network (so each company account has one visitor), then residential ISP space
COMPANY_IPS = ("203.0.113.5", "203.0.113.20", "203.0.113.35", "203.0.113.50", "203.0.113.70", "203.0.113.100",
               "203.0.113.115", "203.0.113.130", "203.0.113.150")


@dataclass(frozen=True)
class TrafficRecord:
    partition: int
    key: bytes | None
    value: dict[str, Any]        # a CollectorBatch
    events: int


def _isp_ip(i: int) -> str:
    return f"198.51.100.{i % 120 + 1}"


def visitor_payloads(n_visitors: int, events_per_visitor: int, seed: int, t0: int,
                     site_id: str = "acme", one_visitor_per_company: bool = True) -> Iterator[dict[str, Any]]:
    """CollectorPayloads in arrival order: every visitor's events split over a few requests."""
    rng = random.Random(seed)
    visitors = []
    for i in range(n_visitors):
        ip = COMPANY_IPS[i] if one_visitor_per_company and i < len(COMPANY_IPS) else _isp_ip(i)
        if not one_visitor_per_company:
            ip = COMPANY_IPS[i % len(COMPANY_IPS)] if rng.random() < 0.3 else _isp_ip(i)
        visitors.append((str(uuid.UUID(int=rng.getrandbits(128))), ip, rng.choice(UAS)))
    per_request = 5
    pending = []
    for vid, ip, ua in visitors:
        t = t0 + rng.randrange(0, 3_600_000)
        events = []
        for n in range(events_per_visitor):
            if n and n % 7 == 0:
                t += 35 * 60_000  # a new session now and then
            path = rng.choice(PATHS)
            kind = "page_view" if n % 3 != 2 else "page_ping"
            ev: dict[str, Any] = {"event_id": str(uuid.UUID(int=rng.getrandbits(128))), "event_type": kind,
                                  "platform": "web", "url": f"https://www.acme.example{path}",
                                  "domain_user_id": vid, "device_created_tstamp": t, "device_sent_tstamp": t + 50}
            if kind == "page_ping":
                ev.update(engaged_ms=10_000, scroll_depth=rng.randrange(20, 100))
            else:
                ev.update(page_title=path.strip("/") or "home", referrer="https://www.google.com/",
                          screen_resolution="1920x1080", viewport="1440x900")
            events.append(ev)
            t += rng.randrange(5_000, 60_000)
        for start in range(0, len(events), per_request):
            chunk = events[start:start + per_request]
            pending.append({
                "payload_id": str(uuid.UUID(int=rng.getrandbits(128))), "site_id": site_id, "visitor_id": vid,
                "network_user_id": vid, "client_ip": ip, "user_agent": ua, "referer": None, "origin": None,
                "accept_language": "en-US,en;q=0.9", "headers": {}, "source": "collect", "consent": "full",
                "collector_tstamp": chunk[-1]["device_created_tstamp"] + 100,
                "collector": "loadtest", "events": chunk})
    # interleave visitors' requests the way traffic arrives, keeping each visitor's order
    pending.sort(key=lambda p: p["collector_tstamp"])
    yield from pending


def batch_records(payloads: Iterator[dict[str, Any]], partitions: int, payloads_per_record: int) -> list[TrafficRecord]:
    """Group payloads per target partition into CollectorBatch records, as the collector does."""
    open_groups: dict[int, list[dict[str, Any]]] = {}
    out: list[TrafficRecord] = []

    def close(p: int) -> None:
        group = open_groups.pop(p)
        keys = {visitor_key(x["site_id"], x["visitor_id"]) for x in group}
        key = next(iter(keys)).encode() if len(keys) == 1 else None
        out.append(TrafficRecord(p, key, {"payloads": group}, sum(len(x["events"]) for x in group)))

    for payload in payloads:
        p = partition_for(visitor_key(payload["site_id"], payload["visitor_id"]), partitions)
        open_groups.setdefault(p, []).append(payload)
        if len(open_groups[p]) >= payloads_per_record:
            close(p)
    for p in list(open_groups):
        close(p)
    return out
