"""Redis clients from a URL: a single server or a Redis Cluster, blocking or asyncio.

A Redis Cluster is named by its URL scheme, ``redis+cluster://host:port`` (``rediss+cluster://``
with TLS), any one node of the cluster; ``redis.cluster: true`` in the settings makes
:attr:`pipeline.settings.RedisSettings.url_value` carry that scheme, so every component that
builds its client from the URL (identity store, reference store, quota, leads view) gets a
``redis.cluster.RedisCluster`` or ``redis.asyncio.RedisCluster`` without knowing about it.

Leadstream's keys are laid out for the cluster: keys used together in one transaction or
script share the hash tag ``{<site_id>}`` (identity graph ``ls:{site}:...``, leads view
``ls:lv:{site}:...``); the reference data's reads are non-transactional pipelines (the
cluster client splits them by node) and its one script and the quota's script touch one key.
Cluster pipelines refuse PUBLISH; the asyncio cluster client built here
(:class:`AsyncRedisCluster`) sends it right after the pipeline instead.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.exceptions

__all__ = ["AsyncRedisClient", "AsyncRedisCluster", "RedisClient", "async_client", "cluster_options", "cluster_url", "is_cluster_url", "split_cluster_url",
           "sync_client"]

CLUSTER_SUFFIX = "+cluster"

RedisClient: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"
AsyncRedisClient: TypeAlias = "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster"


def split_cluster_url(url: str) -> tuple[bool, str]:
    """(is a cluster, the URL with the plain ``redis``/``rediss`` scheme)."""
    parts = urlsplit(url)
    if parts.scheme.endswith(CLUSTER_SUFFIX):
        return True, urlunsplit(parts._replace(scheme=parts.scheme[: -len(CLUSTER_SUFFIX)]))
    return False, url


def is_cluster_url(url: str) -> bool:
    return split_cluster_url(url)[0]


def cluster_url(url: str) -> str:
    """``url`` with the cluster scheme (``redis://`` -> ``redis+cluster://``); unchanged if it has it."""
    if is_cluster_url(url):
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"a Redis Cluster URL starts with redis:// or rediss://, not {parts.scheme}://")
    return urlunsplit(parts._replace(scheme=parts.scheme + CLUSTER_SUFFIX))


def cluster_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``redis.Redis`` keyword arguments that ``RedisCluster`` also takes."""
    # RedisCluster takes no health_check_interval (it checks its nodes itself) and no db
    return {k: v for k, v in kwargs.items() if k not in ("health_check_interval", "db")}


def sync_client(url: str, **kwargs: Any) -> RedisClient:
    """A blocking client for ``url`` (``redis.Redis``, or ``RedisCluster`` for a cluster URL)."""
    cluster, plain = split_cluster_url(url)
    if cluster:
        return redis.cluster.RedisCluster.from_url(plain, **cluster_options(kwargs))
    return redis.Redis.from_url(plain, **kwargs)


def async_client(url: str, **kwargs: Any) -> AsyncRedisClient:
    """An asyncio client for ``url`` (``redis.asyncio.Redis``, or its ``RedisCluster``)."""
    cluster, plain = split_cluster_url(url)
    if cluster:
        return AsyncRedisCluster.from_url(plain, **cluster_options(kwargs))
    return redis.asyncio.Redis.from_url(plain, **kwargs)


class _AsyncClusterPipeline(redis.asyncio.cluster.ClusterPipeline):
    """A cluster pipeline that also takes PUBLISH: cluster pipelines refuse it, so it is queued
    and sent right after the pipeline's own commands (its replies come last, in order)."""

    def __init__(self, client: redis.asyncio.cluster.RedisCluster, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)
        self._leadstream_client = client
        self._publishes: list[tuple[Any, Any]] = []

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        self._publishes.append((channel, message))
        return self

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        publishes, self._publishes = self._publishes, []
        replies: list[Any] = list(await super().execute(raise_on_error, allow_redirections))
        for channel, message in publishes:
            replies.append(await self._leadstream_client.publish(channel, message))
        return replies


class AsyncRedisCluster(redis.asyncio.cluster.RedisCluster):
    """``redis.asyncio.RedisCluster`` whose pipelines take PUBLISH (see :class:`_AsyncClusterPipeline`),
    so code written for one server (the leads view publishes its changes in its write pipeline)
    runs unchanged on a cluster."""

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> _AsyncClusterPipeline:
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is deprecated in cluster mode")
        return _AsyncClusterPipeline(self, transaction)  # type: ignore[abstract]
