"""Publishing a batch's output records: one producer batch per topic partition.

A CDNOW-like backlog publishes several records per consumed event, and aiokafka's per-record
``send`` (serialise, pick the partition, append to the accumulator, a future per record) costs
about 18 us of CPU per record on this kind of machine; filling one ``BatchBuilder`` per topic
partition and submitting it with ``send_batch`` costs about 7 us (see ``bench/README.md``).

Records keep the order they have within a partition, and land on the partition the producer's
own partitioner would have picked for their key (it is asked once per key and topic, and again
when the topic's partition count changes). Delivery is awaited for every batch, as it was for
every record, before the caller acknowledges the consumed offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stream_app.records import OutRecord

#: Keys whose partition is remembered per topic; the table is emptied when it is full.
PARTITION_CACHE_SIZE = 100_000


class BatchPublisher:
    """Publishes :class:`OutRecord` lists through an aiokafka producer's batch API.

    ``producer`` returns the started ``AIOKafkaProducer`` (Faust starts it with the app, so
    it is looked up at publishing time); ``topics`` maps a record's ``topic_role`` to the
    topic name.
    """

    def __init__(self, producer: Callable[[], Any], topics: Mapping[str, str]) -> None:
        self._producer = producer
        self._topics = dict(topics)
        self._partitions: dict[str, tuple[int, dict[bytes, int]]] = {}

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send ``records`` and wait until the broker acknowledged all of them."""
        if not records:
            return
        producer = self._producer()
        groups: dict[tuple[str, int], list[OutRecord]] = {}
        known: dict[str, dict[bytes, int]] = {}
        for topic in {self._topics[r.topic_role] for r in records}:
            await producer.client._wait_on_metadata(topic)
            known[topic] = self._known_partitions(producer, topic)
        for r in records:
            topic = self._topics[r.topic_role]
            groups.setdefault((topic, _partition(producer, topic, r, known[topic])), []).append(r)
        pending = []
        for (topic, partition), group in groups.items():
            batch = producer.create_batch()
            for r in group:
                if batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers):
                    continue
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers):
                    continue
                # Larger than an empty batch may hold: the producer's own path says why.
                pending.append(
                    await producer.send(
                        topic, r.value, key=r.key, partition=partition, headers=r.headers
                    )
                )
                batch = producer.create_batch()
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)

    def _known_partitions(self, producer: Any, topic: str) -> dict[bytes, int]:
        """The remembered key -> partition table of ``topic``, emptied when the topic's
        partition count changed or the table is full."""
        count = len(producer.client.cluster.partitions_for_topic(topic) or ())
        known = self._partitions.get(topic)
        if known is None or known[0] != count or len(known[1]) >= PARTITION_CACHE_SIZE:
            known = self._partitions[topic] = (count, {})
        return known[1]


def _partition(producer: Any, topic: str, record: OutRecord, known: dict[bytes, int]) -> int:
    """The partition the producer's partitioner picks for the record's key (remembered in
    ``known``; a record without a key gets the partitioner's choice every time)."""
    key = record.key
    if key is None:
        return int(producer._partition(topic, None, None, record.value, None, record.value))
    cached = known.get(key)
    if cached is None:
        cached = known[key] = int(
            producer._partition(topic, None, key, record.value, key, record.value)
        )
    return cached
