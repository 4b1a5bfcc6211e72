"""Leadstream on a real three-node Redis Cluster (three local `redis-server --cluster-enabled yes`
processes joined by `redis-cli --cluster create`): the CLI imports reference data through
`redis.cluster: true`, the worker's stores resolve it, the identity graph applies and loads (one
MULTI/EXEC per site: its keys share the `{site}` hash tag), the monthly quota claims, and the leads
view writes and reads. Every client comes from the settings' URL, as in production."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from pipeline.core.identity import CreatePerson, IdType, Link, SetProfile
from pipeline.enrich.identity_store import IdentityStore, SyncIdentityStore
from pipeline.enrich.redis_store import ClusterReferenceStore, ReferenceStore
from pipeline.leads.store import LeadsView
from pipeline.leads.view import Filter
from pipeline.redis_client import async_client, sync_client
from pipeline.settings import RedisSettings
from pipeline.stages.account import RedisQuota

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "pipeline" / "ops" / "demo_data"
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _free_cluster_port() -> int:
    """A port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return int(port)
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three primaries covering all 16384 slots; yields their ports."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.fail("redis-server and redis-cli are needed (apt-get install redis-server)")
    root = tmp_path_factory.mktemp("redis-cluster")
    ports = [_free_cluster_port() for _ in range(3)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            d = root / str(port)
            d.mkdir()
            procs.append(subprocess.Popen(
                [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "5000",
                 "--dir", str(d), "--save", "", "--appendonly", "no", "--logfile", str(d / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            _wait(lambda p=port: redis.Redis(port=p, socket_timeout=1).ping(), f"node {port}")
        subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in ports:
            _wait(lambda p=port: redis.Redis(port=p, socket_timeout=1).cluster("info")["cluster_state"] == "ok",
                  f"cluster state ok on {port}")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last}")


@pytest.fixture
def url(cluster: list[int]) -> Iterator[str]:
    """The settings' URL with `redis.cluster: true`, on a flushed cluster."""
    settings = RedisSettings(url=f"redis://127.0.0.1:{cluster[0]}/0", cluster=True)  # type: ignore[arg-type]
    value = settings.url_value
    assert value is not None and value.startswith("redis+cluster://")
    client = sync_client(value)
    assert isinstance(client, redis.cluster.RedisCluster)
    client.flushall(target_nodes=redis.cluster.RedisCluster.ALL_NODES)
    client.close()
    yield value


def _keys_per_node(ports: list[int]) -> list[int]:
    return [int(redis.Redis(port=p).dbsize()) for p in ports]


def test_cli_import_and_lookup_on_the_cluster(cluster: list[int], url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSTREAM_")}
    env.update(LEADSTREAM_REDIS__URL=f"redis://127.0.0.1:{cluster[1]}/0", LEADSTREAM_REDIS__CLUSTER="true",
               PYTHONPATH=str(ROOT))
    for kind, file in (("companies", "companies.csv"), ("ip-ranges", "ranges.csv"), ("asn-types", "asn-types.csv")):
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "import", kind, str(DEMO / file)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    per_node = _keys_per_node(cluster)
    assert sum(1 for n in per_node if n) >= 2, f"the data spread over the nodes: {per_node}"

    store = ReferenceStore.from_url(url)
    try:
        assert isinstance(store, ClusterReferenceStore) and isinstance(store, ReferenceStore)
        batch = store.resolve_batch(ips=["203.0.113.5", "203.0.113.20", "198.51.100.77"],
                                   org_names=["Brightpath Analytics Inc."], domains=["ironvale-mfg.example"])
        found = batch.company_for_ip("203.0.113.5")
        assert found is not None and found.domain == "brightpath-analytics.example"
        other = batch.company_for_ip("203.0.113.20")
        assert other is not None and other.domain == "northwind-freight.example"
        org = batch.company_for_org("Brightpath Analytics Inc.")
        assert org is not None and org.domain == "brightpath-analytics.example"
        alias = batch.company_for_domain("ironvale-mfg.example")
        assert alias is not None and alias.domain == "ironvale.example"
        assert set(store.last_imports()) >= {"companies", "ip-ranges", "asn-types"}
    finally:
        store.close()


def test_identity_graph_on_the_cluster(cluster: list[int], url: str) -> None:
    sites = [f"site-{i}" for i in range(6)]   # six hash tags: several slots, several nodes
    sync = SyncIdentityStore.from_url(url)
    assert isinstance(sync.client, redis.cluster.RedisCluster)
    for site in sites:
        sync.apply(site, [CreatePerson("p1", 5), Link(IdType.user_id, f"u-{site}", "p1", "identify"),
                          Link(IdType.visitor, "v1", "p1", "identify"), SetProfile("p1", {"title": "CTO"})])
    sync.close()
    assert sum(1 for n in _keys_per_node(cluster) if n) >= 2

    async def load() -> None:
        store = IdentityStore.from_url(url)
        try:
            for site in sites:
                snap = await store.load_snapshot(site, [(IdType.visitor, "v1"), (IdType.user_id, f"u-{site}")])
                assert {l.person_id for l in snap.links.values()} == {"p1"}
                assert dict(snap.persons["p1"].profile) == {"title": "CTO"}
            # applying the same ops again is idempotent (one MULTI/EXEC in the site's slot)
            await store.apply(sites[0], [Link(IdType.visitor, "v2", "p1", "form")])
            snap = await store.load_snapshot(sites[0], [(IdType.visitor, "v2")])
            assert snap.links[(IdType.visitor, "v2")].person_id == "p1"
        finally:
            await store.aclose()
    asyncio.run(load())


def test_quota_on_the_cluster(url: str) -> None:
    async def claims() -> None:
        client = async_client(url)
        quota = RedisQuota(client)
        try:
            for site in ("acme", "globex", "initech"):
                assert await quota.claim(site, "2026-12", f"{site}-lead-1", 2)
                assert await quota.claim(site, "2026-12", f"{site}-lead-2", 2)
                assert not await quota.claim(site, "2026-12", f"{site}-lead-3", 2), "over the quota"
                assert await quota.claim(site, "2026-12", f"{site}-lead-1", 2), "a claimed lead claims again"
        finally:
            await client.aclose()
    asyncio.run(claims())


def test_leads_view_on_the_cluster(url: str) -> None:
    def doc(site: str, account: str, priority: float, status: str, country: str) -> dict[str, object]:
        return {"site_id": site, "account": account, "domain": account.removeprefix("c:"), "name": account,
                "status": status, "priority_key": priority, "country": country, "seen": True,
                "people": [{"person_id": "p1"}], "tier": "A", "fit": 80, "intent": 60}

    async def run() -> None:
        view = LeadsView.from_url(url)
        try:
            assert isinstance(view.client, type(async_client(url)))
            for site in ("acme", "globex", "initech"):
                pubsub = view.client.pubsub()
                await pubsub.subscribe(view.keys(site).changes)   # what the API's SSE stream does
                docs = [doc(site, "c:a.example", 3.0, "new", "US"), doc(site, "c:b.example", 5.0, "new", "DE")]
                assert await view.put(docs, {}) == 2
                notices = []
                deadline = time.monotonic() + 5
                while len(notices) < 2 and time.monotonic() < deadline:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None:
                        notices.append(message["data"])
                await pubsub.aclose()
                assert notices, "the change notices reach a subscriber on the cluster"
                assert await view.count(site) == 2
                page = await view.list(site, Filter())
                assert [r["account"] for r in page.rows] == ["c:b.example", "c:a.example"]
                page = await view.list(site, Filter(country="DE"))
                assert [r["account"] for r in page.rows] == ["c:b.example"]
                got = await view.account(site, "a.example")
                assert got is not None and got["country"] == "US"
                assert await view.forget_person(site, "p1") == 2
                got = await view.account(site, "a.example")
                assert got is not None and got["people"] == []
                assert json.dumps(got)
        finally:
            await view.aclose()
    asyncio.run(run())
