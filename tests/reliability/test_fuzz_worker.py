"""Hostile input through Kafka into a running worker: every offset is accounted for.

Why: the in-process fuzz test (``test_fuzz_input``) shows the decoder and engine end every
message in a documented outcome; this one shows the worker wires those outcomes to the
topics: a few hundred generated hostile messages (tombstones, oversized values, lying
CloudEvents headers, non-UTF-8 headers, duplicates...) are produced with their keys and
headers, and afterwards the dead-letter topic holds exactly the messages the decoder
rejects (same offsets, same reasons) plus the late ones, the rest were processed, the
counts add up to what was sent, and the worker is alive and healthy.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer
from reliability_support import health, metric, settings_of, topic_records, wait_processed
from test_fuzz_input import Message, messages

from stream_app.kafka_clients import kafka_python_config
from stream_app.records import REASONS, InvalidEvent, decode_event


def hostile_messages(count: int) -> list[Message]:
    """``count`` messages from the in-process fuzz test's generator (seeded)."""
    out: list[Message] = []

    @settings(
        max_examples=count // 50,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(messages(), min_size=50, max_size=50))
    def collect(batch: list[Message]) -> None:
        out.extend(batch)

    collect()
    return out


def test_hostile_messages_through_a_worker_are_all_accounted_for(
    running_worker: Callable[..., Any],
) -> None:
    worker = running_worker(partitions=1)
    s = settings_of(worker.settings_env)
    sent = hostile_messages(400)
    producer = KafkaProducer(**kafka_python_config(s), max_request_size=4 * 2**20)
    try:
        for i, (value, headers) in enumerate(sent):
            producer.send(s.topic_events, value=value, key=f"k{i % 7}".encode(), headers=headers)
        producer.flush()
    finally:
        producer.close()

    wait_processed(s, len(sent), timeout=120, worker=worker)
    dlq = topic_records(s, s.topic_dlq)
    by_offset: dict[int, str] = {}
    for r in dlq:
        h = {k: bytes(v) for k, v in r.headers}
        offset, reason = int(h["dlq_source_offset"]), h["dlq_reason"].decode()
        assert by_offset.setdefault(offset, reason) == reason
    assert set(by_offset.values()) <= REASONS

    # The decoder's verdict on each message, judged now: the worker judged it moments ago
    # and no generated timestamp sits near the one-day-ahead limit.
    now = time.time()
    rejected: dict[int, str] = {}
    for offset, (value, headers) in enumerate(sent):
        try:
            decode_event(value, headers, now=now)
        except InvalidEvent as err:
            rejected[offset] = err.reason
    late = {o for o, reason in by_offset.items() if reason == "late_event"}
    assert {o: r for o, r in by_offset.items() if o not in late} == rejected
    assert not late & set(rejected)

    consumed = metric(worker.web_url, "churn_events_consumed_total")
    invalid = metric(worker.web_url, "churn_events_invalid_total")
    late_count = metric(worker.web_url, "churn_events_late_total")
    processed = consumed - invalid - late_count  # applied, or dropped as a duplicate
    assert consumed == len(sent)
    assert len(by_offset) == invalid + late_count
    assert len(by_offset) + processed == len(sent)
    assert processed > 0 and Counter(rejected.values())
    assert worker.proc.poll() is None
    assert health(worker.web_url) == 200
