"""Small helpers shared by test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import socket
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition


def free_port_for_test() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``topic`` published so far, read like a subscriber (manual assignment,
    no consumer group) up to the end offsets seen at the start, in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(parts)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, f"{topic}: stuck before the end offsets"
            for msgs in consumer.poll(timeout_ms=500).values():
                out.extend(msgs)
        return sorted(out, key=lambda m: (m.partition, m.offset))
    finally:
        consumer.close()
