"""Test doubles and settings builders for the collector's unit tier.

``MemorySink`` implements the sink side of the real ``BatchingProducer``
(``pipeline.collector.producer.PayloadSink``): it keeps what would be written
and encodes every payload and bad row with the real codec, so a dict that does
not fit the Avro contract fails here exactly as it would on the broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.codec import SingleObjectCodec
from pipeline.collector.producer import BrokerUnavailable
from pipeline.settings import CollectorSettings, ConsentSettings, Settings, SiteSettings

_CODEC = SingleObjectCodec()



class MemorySink:
    """In-memory PayloadSink: ``payloads`` holds (payload, key) in submission order, ``bad_rows`` the BadRows."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.payloads: list[tuple[dict[str, Any], str]] = []
        self.bad_rows: list[dict[str, Any]] = []
        self.up = True
        self.fail_with: BaseException | None = None  # acks fail with this while set
        self.started = False
        self.stopped = False

    @property
    def broker_up(self) -> bool:
        return self.up

    @property
    def down_reason(self) -> str:
        return "" if self.up else "broker stopped (test)"

    def submit(self, payload: dict[str, Any], key: str, want_ack: bool = True) -> asyncio.Future[None] | None:
        if not self.up:
            raise BrokerUnavailable("down (test)")
        try:  # as the real producer: a payload that does not fit the schema is a ValueError at submit
            encoded = _CODEC.encode("CollectorBatch", {"payloads": [payload]})
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(str(exc)) from exc
        decoded = _CODEC.decode(encoded)["payloads"][0]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail_with is not None:
            future.set_exception(self.fail_with)
        else:
            self.payloads.append((decoded, key))
            future.set_result(None)
        return future if want_ack else None

    def send_bad_row(self, row: dict[str, Any]) -> None:
        self.bad_rows.append(_CODEC.decode(_CODEC.encode("BadRow", row)))

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    # helpers for assertions
    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for payload, _ in self.payloads for event in payload["events"]]

    def only_payload(self) -> dict[str, Any]:
        assert len(self.payloads) == 1, self.payloads
        return self.payloads[0][0]


SITES = [
    SiteSettings(site_id="acme", name="Acme", allowed_origins=["https://www.acme.com", "https://*.acme.com"]),
    SiteSettings(site_id="open", allowed_origins=["*"]),
    SiteSettings(site_id="closed", allowed_origins=["https://only.example.org"]),
]


def make_settings(sites: list[SiteSettings] | None = None, **collector: Any) -> Settings:
    return Settings(sites=SITES if sites is None else sites, collector=CollectorSettings(**collector))


def consent_site(gpc: str = "ignore", dnt: str = "ignore", anonymous_header: str = "ignore") -> SiteSettings:
    return SiteSettings(site_id="acme", allowed_origins=["*"],
                        consent=ConsentSettings(gpc=gpc, dnt=dnt, anonymous_header=anonymous_header))  # type: ignore[arg-type]
