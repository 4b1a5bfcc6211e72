"""Which Redis client a URL gives (pipeline.redis_client) and how `redis.cluster` reaches it."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from pipeline.redis_client import async_client, cluster_url, is_cluster_url, split_cluster_url, sync_client
from pipeline.settings import RedisSettings


@pytest.mark.parametrize("url, cluster, plain", [
    ("redis://h:6379/0", False, "redis://h:6379/0"),
    ("redis+cluster://h:7000", True, "redis://h:7000"),
    ("rediss+cluster://:pw@h:7000/0", True, "rediss://:pw@h:7000/0"),
])
def test_split_cluster_url(url: str, cluster: bool, plain: str) -> None:
    assert split_cluster_url(url) == (cluster, plain)
    assert is_cluster_url(url) is cluster


def test_cluster_url_only_for_redis_schemes() -> None:
    assert cluster_url("redis://:pw@h:1/0") == "redis+cluster://:pw@h:1/0"
    assert cluster_url("redis+cluster://h:1") == "redis+cluster://h:1"
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        cluster_url("unix:///tmp/redis.sock")


def test_settings_carry_the_cluster_flag_in_the_url() -> None:
    plain = RedisSettings(url="redis://:pw@h:1/0")  # type: ignore[arg-type]
    assert plain.url_value == "redis://:pw@h:1/0"
    cluster = RedisSettings(url="redis://:pw@h:1/0", cluster=True)  # type: ignore[arg-type]
    assert cluster.url_value == "redis+cluster://:pw@h:1/0"
    assert RedisSettings(cluster=True).url_value is None
    assert "pw" not in repr(cluster)


def test_clients_by_scheme() -> None:
    # construction connects nothing for a standalone client; a cluster client needs its nodes,
    # so only its class choice is checked here (tests/integration/test_redis_cluster.py runs one)
    assert type(sync_client("redis://127.0.0.1:1/0")) is redis.Redis
    assert type(async_client("redis://127.0.0.1:1/0")) is redis.asyncio.Redis
    with pytest.raises(redis.exceptions.RedisClusterException):
        sync_client("redis+cluster://127.0.0.1:1", socket_connect_timeout=0.2, health_check_interval=5)
    client = async_client("redis+cluster://127.0.0.1:1", health_check_interval=5)
    assert isinstance(client, redis.asyncio.cluster.RedisCluster)
