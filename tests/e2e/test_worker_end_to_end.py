"""End to end: events in with kafka-python, warnings out to a subscriber, bad input to the DLQ.

One partition, event-time clock: bob's event 75 days later moves the watermark past alice's
60-day silence, so alice gets a level-2 warning stamped at the exact deadline, bob gets one
too (his own deadline passes before his event is applied) and then recovers.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_app.records import validator

T0 = datetime(2026, 1, 5, 18, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def event(user: str, n: int, at: datetime, kind: str = "message_sent") -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{user}-{n}",
            "user_id": user,
            "event": kind,
            "occurred_at": iso(at),
            "properties": {"counterpart": "carol"},
        }
    )


def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 90) -> list[Any]:
    """Read a topic like a subscriber (manual assignment): at least ``expect`` records, then
    whatever else arrives until it has been quiet for three seconds."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = consumer.partitions_for_topic(topic) or {0}
    consumer.assign([TopicPartition(topic, p) for p in parts])
    consumer.seek_to_beginning()
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500)
        got = [m for msgs in batch.values() for m in msgs]
        out.extend(got)
        if got:
            quiet_since = time.monotonic()
        elif len(out) >= expect and time.monotonic() - quiet_since > 3:
            break
    consumer.close()
    return sorted(out, key=lambda m: (m.partition, m.offset))


@pytest.fixture
def worker(running_worker: Callable[..., Any]) -> Any:
    return running_worker(partitions=1, holdout_share=0.0)


def test_events_in_warnings_out_bad_input_to_dlq(worker: Any, kafka_bootstrap: str) -> None:
    env = worker.settings_env
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks=1)
    sends = [(b"alice", event("alice", i, T0 + timedelta(days=i))) for i in range(10)]
    sends += [(b"bob", event("bob", 0, T0))]
    sends += [
        (b"x", b"{not json"),
        (b"x", b'{"event_id": "e", "event": "like"}'),
        (b"x", b'{"event_id": 1, "user_id": "u", "event": "like", "occurred_at": 5}'),
    ]
    sends += [(b"bob", event("bob", 1, T0 + timedelta(days=75)))]
    for key, value in sends:
        producer.send(env["CHURN_TOPIC_EVENTS"], key=key, value=value)
    producer.flush()

    dlq = read_all(kafka_bootstrap, env["CHURN_TOPIC_DLQ"], expect=3)
    reasons = [dict(m.headers)["dlq_reason"].decode() for m in dlq]
    assert reasons[0] == "bad_json" and all(reasons), reasons
    assert dlq[0].value == b"{not json"

    out = read_all(kafka_bootstrap, env["CHURN_TOPIC_WARNINGS"], expect=3)
    check_warning, check_recovery = validator("churn_warning.v1"), validator("user_recovered.v1")
    seen = []
    for m in out:
        headers = dict(m.headers)
        body = orjson.loads(m.value)
        assert m.key == body["user_id"].encode()
        assert headers["ce_specversion"] == b"1.0"
        if headers["ce_type"].endswith(b"warning.v1"):
            check_warning(body)
            seen.append((body["user_id"], body["level"], when(body["event_time"])))
            assert body["reasons"] and body["suggested_action"]["code"]
        else:
            check_recovery(body)
            seen.append((body["user_id"], "recovered", when(body["event_time"])))
    assert ("alice", 2, T0 + timedelta(days=9 + 60)) in seen
    assert ("bob", 2, T0 + timedelta(days=60)) in seen
    assert ("bob", "recovered", T0 + timedelta(days=75)) in seen
    assert [s for s in seen if s[0] == "bob"][-1][1] == "recovered"
    assert worker.proc.poll() is None, "the worker must keep going after bad input"
    with urllib.request.urlopen(f"{worker.web_url}/health", timeout=5) as resp:
        assert json.loads(resp.read())["event_loop"] == "uvloop.Loop"
