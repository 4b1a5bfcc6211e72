"""Kafka-free harness for the stage handlers: a dict-backed table, fake ports, payload builders."""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Iterable, Sequence

from pipeline.codec import SingleObjectCodec
from pipeline.core.identity import IdentitySnapshot, Identifier
from pipeline.core.model import Company
from pipeline.enrich.redis_store import BatchLookup, RangeMatch
from pipeline.settings import Settings, load_settings
from pipeline.stages.account import AccountStage, AccountTopics
from pipeline.stages.runtime import HandlerResult, StateView
from pipeline.stages.visitor import VisitorStage, VisitorTopics

CODEC = SingleObjectCodec()
T0 = 1_795_000_000_000
VISITS_PARTITIONS = 4
COMPANY_IP = "203.0.113.5"
_ids = itertools.count()


def make_settings(**overrides: Any) -> Settings:
    sites = overrides.pop("sites", [{"site_id": "acme", "allowed_origins": ["*"], "hosts": ["www.acme.example"]}])
    return load_settings(None, sites=sites, identity_salt="unit-salt", **overrides)


class Table:
    """A stage table as the runner keeps it ({"o": offset, "s": state}), applied like the runner does."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.view = StateView(self.data)

    def apply(self, offset: int, result: HandlerResult) -> None:
        for key, state in result.states.items():
            self.data[key] = {"o": offset, "s": state}
        for key in result.deletes:
            self.data.pop(key, None)


class FakeIdentity:
    """The identity graph port: an empty graph that records what was applied; raises for chosen visitors."""

    def __init__(self, fail_for: Iterable[str] = ()) -> None:
        self.applied: list[Any] = []
        self.fail_for = set(fail_for)

    async def load_snapshot(self, site_id: str, identifiers: Sequence[Identifier]) -> IdentitySnapshot:
        for _, value in identifiers:
            if value in self.fail_for:
                raise ValueError(f"identity graph cannot read {value}")
        return IdentitySnapshot(site_id)

    async def apply(self, site_id: str, ops: Sequence[Any]) -> None:
        self.applied.extend(ops)


class FakeReference:
    """The reference-data port: one imported range (COMPANY_IP) of brightpath-analytics.example."""

    async def resolve_networks(self, networks: Iterable[Any], *, domains: Iterable[str | None] = (),
                               site: str | None = None) -> BatchLookup:
        company = Company(domain="brightpath-analytics.example", name="Brightpath Analytics", industry="Software",
                          employees=250, country="US")
        return BatchLookup(ranges={COMPANY_IP: RangeMatch("203.0.113.0/26", company.domain, "global")},
                           companies={company.domain: company})


def visitor_stage(settings: Settings | None = None, identity: Any = None, reference: Any = None,
                  pixel_partitions: int = 1) -> VisitorStage:
    settings = settings or make_settings()
    return VisitorStage(settings, CODEC, VisitorTopics("visits", VISITS_PARTITIONS, "bad-events", pixel_partitions),
                        settings.load_scoring_model(), None, reference or FakeReference(),
                        identity if identity is not None else FakeIdentity())


def account_stage(settings: Settings | None = None) -> AccountStage:
    settings = settings or make_settings()
    return AccountStage(settings, CODEC, AccountTopics("lead-scores", 4, "qualified-leads", 4, "bad-events"),
                        settings.load_scoring_model(), None, visits_partitions=VISITS_PARTITIONS)


def event(url: str | None = "https://www.acme.example/pricing", t: int = T0, event_type: str = "page_view",
          **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"event_id": f"ev-{next(_ids)}", "event_type": event_type, "device_created_tstamp": t,
                         "device_sent_tstamp": t}
    if url is not None:
        e["url"] = url
    e.update(kw)
    return e


def payload(visitor_id: str | None, events: list[dict[str, Any]], *, site_id: str = "acme",
            user_agent: str | None = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.5 Safari/605.1.15", ip: str | None = "198.51.100.23",
            collector_tstamp: int | None = None, **kw: Any) -> dict[str, Any]:
    if collector_tstamp is None:  # the events arrive as they happen
        collector_tstamp = max([T0, *(e.get("device_created_tstamp") or 0 for e in events if isinstance(e, dict))])
    p: dict[str, Any] = {"payload_id": str(uuid.uuid4()), "site_id": site_id, "visitor_id": visitor_id,
                         "client_ip": ip, "user_agent": user_agent, "accept_language": "en-GB,en;q=0.9",
                         "collector_tstamp": collector_tstamp, "source": "collect", "consent": "full",
                         "collector": "test/0", "events": events}
    p.update(kw)
    return p


def record(*payloads: dict[str, Any]) -> bytes:
    return CODEC.encode("CollectorBatch", {"payloads": list(payloads)})


def outputs(result: HandlerResult, topic: str) -> list[dict[str, Any]]:
    return [CODEC.decode(o.value) for o in result.outputs if o.topic == topic and o.value is not None]


def visit_updates(result: HandlerResult) -> list[dict[str, Any]]:
    return [u for batch in outputs(result, "visits") for u in batch["updates"]]


def bad_rows(result: HandlerResult) -> list[dict[str, Any]]:
    return outputs(result, "bad-events")


def event_ids(batch: Any) -> list[str]:
    """The event ids of a replayable bad-row payload (a CollectorBatch dict)."""
    return [e.get("event_id") for p in batch["payloads"] for e in p["events"]]
