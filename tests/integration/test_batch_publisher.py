"""The batch publisher against the real broker: same partitions and order as per-record sends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from tests_support import read_to_end

from stream_app.processor import partition_of
from stream_app.publish import BatchPublisher
from stream_app.records import OutRecord


def _create(bootstrap: str, topics: dict[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()]
        )
    finally:
        admin.close()


def _records() -> list[OutRecord]:
    """Interleaved records of 40 users on two roles, one too large for a producer batch
    (16 KiB by default) and one without a key, as a dead letter may be."""
    out = []
    for i in range(600):
        user = f"user-{i % 40}".encode()
        role = "warnings" if i % 3 else "tiers"
        value = b"%d:" % i + (b"x" * 40_000 if i == 77 else b"{}")
        out.append(OutRecord(role, user, value, [("ce_id", str(i).encode()), ("n", b"1")]))
    out.append(OutRecord("tiers", None, b"600:no key", [("ce_id", b"600")]))
    return out


def test_records_land_on_the_keys_partitions_in_order(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topics = {"warnings": unique("warnings"), "tiers": unique("tiers")}
    _create(kafka_bootstrap, {topics["warnings"]: 4, topics["tiers"]: 3})
    records = _records()

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks=-1)
        await producer.start()
        try:
            publisher = BatchPublisher(lambda: producer, topics)
            await publisher.publish(records[:300])
            await publisher.publish(records[300:])
            await publisher.publish([])
        finally:
            await producer.stop()

    asyncio.run(publish())
    for role, topic in topics.items():
        sent = [r for r in records if r.topic_role == role]
        got = read_to_end(kafka_bootstrap, topic)
        assert sorted(m.value for m in got) == sorted(r.value for r in sent)
        partitions = 4 if role == "warnings" else 3
        for m in got:
            assert m.headers[0] == ("ce_id", m.value.split(b":")[0])
            if m.key is not None:
                assert m.partition == partition_of(m.key.decode(), partitions)
        for user in {r.key for r in sent if r.key is not None}:
            order = [int(m.value.split(b":")[0]) for m in got if m.key == user]
            assert order == [int(r.value.split(b":")[0]) for r in sent if r.key == user]
