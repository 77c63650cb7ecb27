"""The push subscriber example works against a real broker, as its readers will run it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "subscriber.py"


@pytest.fixture
def bootstrap(request: pytest.FixtureRequest) -> str:
    try:
        return str(request.getfixturevalue("kafka_bootstrap"))
    except pytest.FixtureLookupError:
        address = os.environ.get("CHURN_TEST_BOOTSTRAP")
        if not address:
            pytest.skip("no broker: needs the kafka_bootstrap fixture or CHURN_TEST_BOOTSTRAP")
        return address


def _warning(user: str, level: int, holdout: bool) -> dict[str, Any]:
    return {
        "warning_id": f"w-{user}",
        "user_id": user,
        "level": level,
        "level_name": {1: "watch", 2: "at_risk", 3: "critical"}[level],
        "previous_level": 0,
        "episode": 1,
        "churn_probability": 0.5 + 0.1 * level,
        "percentile": 90.0,
        "triggers": {"rules": [], "model": True},
        "reasons": [{"feature": "sessions_7d", "value": 1, "contribution": 0.3}],
        "tiers": {"lifecycle": "active", "value_segment": "payer", "rfm": {"r": 2, "f": 3, "m": 4}},
        "suggested_action": {"code": "winback_gift", "text": "Offer a gift", "channel": "push"},
        "holdout": holdout,
        "event_time": "2024-01-05T10:00:00Z",
        "model_version": "test",
        "source": "test",
    }


def _produce(bootstrap: str, topic: str, warnings: list[dict[str, Any]]) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False)
    for warning in warnings:
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_type", b"dev.churnwarnings.warning.v1"),
            ("ce_id", warning["warning_id"].encode()),
            ("ce_source", b"test"),
        ]
        producer.send(
            topic, orjson.dumps(warning), key=warning["user_id"].encode(), headers=headers
        )
    producer.flush()
    producer.close()


def test_example_prints_what_a_push_system_would_do(bootstrap: str) -> None:
    topic = f"churn.warnings.test-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, topic, [_warning("u-push", 2, False), _warning("u-held", 3, True)])
    env = {**os.environ, "BOOTSTRAP": bootstrap, "TOPIC": topic, "MAX_MESSAGES": "2"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.strip().splitlines())
    assert lines == [
        "level 2 (at_risk) user u-push: push winback_gift - Offer a gift",
        "level 3 (critical) user u-held: hold (holdout) - Offer a gift",
    ]


def test_example_is_short() -> None:
    assert len(EXAMPLE.read_text(encoding="utf-8").splitlines()) <= 40
