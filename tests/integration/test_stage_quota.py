"""The monthly quota where production enforces it: the account stage claiming on ``RedisQuota``
against a real Redis (the rule itself is ``pipeline.core.qualify.quota_claim``/``over_quota``)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from pipeline.core.model import Company
from pipeline.redis_client import async_client
from pipeline.settings import load_settings
from pipeline.stages.account import AccountStage, AccountTopics, RedisQuota
from pipeline.stages.messages import visit_to_record
from pipeline.local.redis import RedisServer
from tests.unit.core.helpers import visit
from tests.unit.stages.stage_fakes import CODEC, Table, outputs

MARCH = int(datetime(2026, 3, 10, 9, tzinfo=timezone.utc).timestamp() * 1000)
APRIL = int(datetime(2026, 4, 2, 9, tzinfo=timezone.utc).timestamp() * 1000)
U = "https://www.acme-saas.com"


def hot(t: int, domain: str, index: int = 1) -> dict[str, Any]:
    """A visit update of ``domain`` that qualifies on its own (a demo request from a fitting company)."""
    co = Company(domain, name=domain, industry="software", employees=300, revenue=2e7, country="GB")
    vu = visit(t, [f"{U}/pricing", f"{U}/demo"], conversions=["demo_request"], company=co, company_conf=0.9,
               account=f"c:{domain}", visitor=f"v-{domain}", index=index, sid=f"{domain}-{index}")
    return visit_to_record(vu, f"0:{t}:{index}")


def test_the_account_stage_enforces_the_monthly_quota_on_redis(redis_server: RedisServer) -> None:
    settings = load_settings(None, sites=[{"site_id": "s1", "allowed_origins": ["*"], "hosts": ["www.acme-saas.com"],
                                           "rules": {"qualification": {"monthly_quota": 1}}}],
                             identity_salt="unit-salt")

    async def scenario() -> list[tuple[str, list[str], list[str]]]:
        client = async_client(redis_server.url)
        await client.flushdb()
        quota = RedisQuota(client, prefix="test:quota")
        stage = AccountStage(settings, CODEC, AccountTopics("lead-scores", 1, "qualified-leads", 1, "bad-events"),
                             settings.load_scoring_model(), quota)
        table, seen = Table(), []
        try:
            for offset, update in enumerate([hot(MARCH, "acme.com"), hot(MARCH + 60_000, "globex.com"),
                                             hot(APRIL, "globex.com", index=2)]):
                result = await stage(0, offset, CODEC.encode("VisitBatch", {"updates": [update]}), table.view)
                table.apply(offset, result)
                leads = [q["account"] for q in outputs(result, "qualified-leads")]
                reasons = [r for s in outputs(result, "lead-scores") for r in s.get("reasons") or ()]
                seen.append((update["account"], leads, reasons))
            # a replay of the first record (fresh table, the ledger kept) finds its lead id counted
            replay = await stage(0, 0, CODEC.encode("VisitBatch", {"updates": [hot(MARCH, "acme.com")]}),
                                 Table().view)
            seen.append(("replay", [q["account"] for q in outputs(replay, "qualified-leads")], []))
            assert await client.scard("test:quota:s1:2026-03") == 1
            assert await client.scard("test:quota:s1:2026-04") == 1
        finally:
            await client.aclose()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0][:2] == ("c:acme.com", ["c:acme.com"])
    assert seen[1][:2] == ("c:globex.com", []) and "quota_exhausted:2026-03:1" in seen[1][2]
    # refused in March: its lead memory stayed empty, so April (a new month) issues it
    assert seen[2][:2] == ("c:globex.com", ["c:globex.com"])
    assert seen[3][:2] == ("replay", ["c:acme.com"])
