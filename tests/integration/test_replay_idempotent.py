"""Integration: replaying the CDNOW log twice leaves Redis exactly as replaying it once.

Why: at-least-once delivery, a producer retry or an operator re-running a replay all send
events the service has already applied. Their effect must be nil: the same user records,
the same deadlines, the same pending labels and the same partition state (watermark,
model, RFM sketches), byte for byte, and nothing new for subscribers. The second copy of
each event is either dropped as a duplicate (its id is still remembered, within the
lateness bound of the user's newest event) or sent to the DLQ as ``late_event``, and
those two counts add up to what was replayed.

The slice is the first 3,000 purchases of ``data/CDNOW_master.txt`` in event-time order
(the file is grouped by customer; the replay sorts it), on one partition with the
purchase-log profile.

Only delivery bookkeeping is excluded from the comparison: the ``offset`` field of the
partition hash, which must advance because the second pass consumed 3,000 more records,
and the partition's outbox (the records of the last batch, kept until the next commit so a
crash cannot lose them; the second pass's last batch published dead letters). Expiry
times of user keys are not compared either (DUMP and GET carry no
TTL, and a TTL is wall-clock bookkeeping); nothing else under the worker's key prefix is
allowed to differ, and no key may appear or disappear.
"""

from __future__ import annotations

import io
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from tests_support import read_to_end as shared_read_to_end

from stream_app.settings import Settings
from stream_app.tools.replay import run_replay
from stream_app.tools.session import wait_drained
from stream_app.tools.sources import load_events, parse_time

CDNOW = Path(__file__).resolve().parents[2] / "data" / "CDNOW_master.txt"
LIMIT = 3000
OFFSET_BOOKKEEPING = b"offset"


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(**{k[len("CHURN_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]


def settled(read: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Read until two reads a second apart agree: a batch's offset is committed (with its
    outbox) just before its records are published, so "drained" can precede "published"."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError("the output topics kept changing")


def by_id(records: list[Any]) -> dict[bytes, bytes]:
    """Published records by their CloudEvents id; a duplicate must repeat the same bytes."""
    out: dict[bytes, bytes] = {}
    for m in records:
        ce_id = dict(m.headers)["ce_id"]
        assert out.setdefault(ce_id, m.value) == m.value, f"id {ce_id!r} reused"
    return out


def dump(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` with its content, in a form that compares by value:
    hashes and sorted sets as their entries (so member order and encoding do not matter),
    strings as their bytes, anything else as DUMP bytes."""
    out: dict[str, Any] = {}
    for raw in client.scan_iter(match=f"{prefix}*", count=1000):
        key = text(raw)
        if key.startswith(f"{prefix}outbox:"):
            continue
        kind = text(client.type(raw))
        if kind == "string":
            out[key] = client.get(raw)
        elif kind == "hash":
            fields = client.hgetall(raw)
            if key.startswith(f"{prefix}p:"):
                fields.pop(OFFSET_BOOKKEEPING, None)
            out[key] = fields
        elif kind == "zset":
            members = cast(list[tuple[bytes, float]], client.zrange(raw, 0, -1, withscores=True))
            out[key] = dict(members)
        else:
            out[key] = (kind, client.dump(raw))
    return out


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def topic_records(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` so far (manual assignment, no consumer group)."""
    return shared_read_to_end(bootstrap, topic)


def metric(web_url: str, name: str) -> float:
    with urllib.request.urlopen(f"{web_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


WORKER = {"partitions": 1, "profile": "purchases", "holdout_share": 0.0}


@pytest.mark.parametrize("restart", [False, True], ids=["same-worker", "restarted-worker"])
def test_replaying_cdnow_twice_leaves_redis_identical(
    running_worker: Callable[..., Any], kafka_bootstrap: str, redis_url: str, restart: bool
) -> None:
    """With ``restart`` the second pass runs on a new worker process that loads the
    partition from Redis (model, labels, deadlines) instead of keeping it in memory, as
    after a crash or a rebalance; the state must still come out byte-identical."""
    worker = running_worker(**WORKER)
    env = worker.settings_env
    settings = settings_of(env)
    events_topic, prefix = env["CHURN_TOPIC_EVENTS"], env["CHURN_KEY_PREFIX"]
    outputs = (env["CHURN_TOPIC_WARNINGS"], env["CHURN_TOPIC_TIERS"])

    events = load_events(CDNOW, limit=LIMIT).events
    assert len(events) == LIMIT
    newest: dict[str, float] = {}
    for e in events:
        newest[e["user_id"]] = max(newest.get(e["user_id"], 0.0), parse_time(e["occurred_at"]))
    # The second copy of an event at its user's newest time is a remembered duplicate;
    # every older one is beyond the 6-hour lateness bound (CDNOW has one time per day).
    expected_dups = sum(1 for e in events if parse_time(e["occurred_at"]) == newest[e["user_id"]])
    expected_late = LIMIT - expected_dups
    assert 0 < expected_dups < LIMIT

    client = redis.Redis.from_url(redis_url)
    try:
        first = run_replay(CDNOW, events_topic, kafka_bootstrap, limit=LIMIT, out=io.StringIO())
        assert first.sent == LIMIT
        wait_drained(settings, events_topic, LIMIT, timeout=60, out=io.StringIO())
        once = dump(client, prefix)
        published_once = settled(
            lambda: [by_id(topic_records(kafka_bootstrap, t)) for t in outputs]
        )
        assert topic_records(kafka_bootstrap, env["CHURN_TOPIC_DLQ"]) == []
        assert metric(worker.web_url, "churn_events_duplicate_total") == 0

        assert f"{prefix}u:{events[0]['user_id']}" in once
        assert sum(1 for k in once if k.startswith(f"{prefix}u:")) == len(newest)
        assert any(k.startswith(f"{prefix}due:") for k in once)
        assert any(k.startswith(f"{prefix}p:") and once[k].get(b"blob") for k in once)
        assert published_once[1], "the first pass produced tier changes"
        offsets = [client.hget(k, OFFSET_BOOKKEEPING) for k in once if k.startswith(f"{prefix}p:")]
        assert offsets == [str(LIMIT - 1).encode()]

        if restart:
            worker.stop()
            worker = running_worker(**WORKER)
            assert worker.settings_env["CHURN_KEY_PREFIX"] == prefix
        second = run_replay(CDNOW, events_topic, kafka_bootstrap, limit=LIMIT, out=io.StringIO())
        assert second.sent == LIMIT
        wait_drained(settings, events_topic, 2 * LIMIT, timeout=60, out=io.StringIO())
        twice = dump(client, prefix)

        assert sorted(twice) == sorted(once), "keys appeared or disappeared"
        changed = sorted(k for k in once if once[k] != twice[k])
        assert changed == [], f"state changed by a replay of the same events: {changed}"
        offsets = [client.hget(k, OFFSET_BOOKKEEPING) for k in twice if k.startswith(f"{prefix}p:")]
        assert offsets == [str(2 * LIMIT - 1).encode()]
    finally:
        client.close()

    # A restarted worker republishes its last batch's outbox: same ids, same bytes.
    assert settled(lambda: [by_id(topic_records(kafka_bootstrap, t)) for t in outputs]) == (
        published_once
    )
    dlq = topic_records(kafka_bootstrap, env["CHURN_TOPIC_DLQ"])
    reasons = {dict(m.headers)["dlq_reason"] for m in dlq}
    assert reasons <= {b"late_event"}, reasons
    assert all(LIMIT <= int(dict(m.headers)["dlq_source_offset"]) < 2 * LIMIT for m in dlq)
    event_of = {e["event_id"]: e for e in events}
    late_ids = [orjson.loads(m.value)["event_id"] for m in dlq]
    assert len(set(late_ids)) == len(late_ids) and set(late_ids) <= set(event_of)
    assert all(m.key == event_of[i]["user_id"].encode() for m, i in zip(dlq, late_ids, strict=True))
    duplicates = metric(worker.web_url, "churn_events_duplicate_total")
    late = metric(worker.web_url, "churn_events_late_total")
    # counters start at zero in a restarted worker, which then saw only the second pass
    assert (len(dlq), duplicates) == (expected_late, expected_dups)
    assert late == len(dlq) and len(dlq) + duplicates == LIMIT
