"""Batch orchestration without a broker: faults are retried, a poison event is isolated."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_app.core import build_core
from stream_app.engine import PartitionEngine
from stream_app.metrics import Metrics
from stream_app.processor import Processor, per_record
from stream_app.records import OutRecord
from stream_app.settings import load_settings
from stream_app.store import MemoryWindowStore


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any = ()
    timestamp: float | None = None  # seconds, as Faust gives a record's Kafka timestamp


def msg(offset: int, user: str, day: int = 1) -> Msg:
    value = orjson.dumps(
        {
            "event_id": f"e{offset}",
            "user_id": user,
            "event": "like",
            "occurred_at": f"2026-01-{day:02d}T10:00:00Z",
        }
    )
    return Msg("app.events", 0, offset, user.encode(), value)


def processor(store: Any) -> tuple[Processor, list[OutRecord]]:
    sent: list[OutRecord] = []

    async def send(record: OutRecord) -> Any:
        sent.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    settings = load_settings(partitions=1)
    metrics = Metrics.create(CollectorRegistry())
    return Processor(settings, build_core(settings), store, metrics, per_record(send)), sent


def test_a_poison_event_goes_to_the_dlq_and_the_rest_is_processed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = PartitionEngine.process

    def process(self: PartitionEngine, events: Any, records: Any, **kw: Any) -> Any:
        if any(e.user_id == "poison" for e in events):
            raise ValueError("engine cannot handle this user")
        return original(self, events, records, **kw)

    monkeypatch.setattr(PartitionEngine, "process", process)
    store = MemoryWindowStore()
    proc, sent = processor(store)
    asyncio.run(proc.handle([msg(0, "alice"), msg(1, "poison"), msg(2, "bob")]))
    dlq = [r for r in sent if r.topic_role == "dlq"]
    assert [dict(r.headers)["dlq_reason"] for r in dlq] == [b"processing_error"]
    assert dlq[0].value == msg(1, "poison").value
    users = asyncio.run(store.load_users(["alice", "bob", "poison"]))
    assert sorted(users) == ["alice", "bob"]
    assert asyncio.run(store.load_partition("app.events", 0)).offset == 2  # type: ignore[union-attr]


def test_a_redis_outage_is_retried_and_nothing_is_applied_twice() -> None:
    class Flaky(MemoryWindowStore):
        failures = 2

        async def commit(self, *args: Any, **kwargs: Any) -> bool:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("redis went away")
            return await super().commit(*args, **kwargs)

    flaky, steady = Flaky(), MemoryWindowStore()
    batch = [msg(0, "alice"), msg(1, "alice", 2), msg(2, "bob")]
    for store in (flaky, steady):
        proc, _ = processor(store)
        asyncio.run(proc.handle(batch))
    assert flaky.failures == 0
    users = ["alice", "bob"]
    assert asyncio.run(flaky.load_users(users)) == asyncio.run(steady.load_users(users))


def test_live_sweep_ages_a_silent_stream() -> None:
    """No event arrives, yet the wall-clock sweep passes the 60-day deadline: the warning is
    published, stamped at the deadline, and committed at the same offset."""
    store = MemoryWindowStore()
    proc, sent = processor(store)
    asyncio.run(proc.handle([msg(0, "alice", 5)]))
    deadline = 1767607200.0 + 60 * 86400  # 2026-01-05T10:00Z + 60 days

    async def sweep() -> None:
        await proc.sweep(deadline - 1)
        assert all(orjson.loads(r.value).get("level") != 2 for r in sent)
        await proc.sweep(deadline + 86400)

    asyncio.run(sweep())
    warnings = [orjson.loads(r.value) for r in sent if r.topic_role == "warnings"]
    assert [(w["level"], w["event_time"]) for w in warnings if w["level"] == 2] == [
        (2, "2026-03-06T10:00:00.000Z")
    ]
    assert asyncio.run(store.load_partition("app.events", 0)).offset == 0  # type: ignore[union-attr]


def test_the_write_through_cache_commits_what_a_fresh_encoding_gives() -> None:
    """Users rescored at a deadline keep their windows; the commit reuses the windows'
    cached encoding, and what lands in the store must equal a fresh encoding."""
    from stream_app import userrecord, windows

    store = MemoryWindowStore()
    proc, sent = processor(store)
    users = ["alice", "bob", "carol"]

    async def run() -> None:
        await proc.handle([msg(0, "alice", 1), msg(1, "bob", 1), msg(2, "carol", 3)])
        await proc.handle([msg(3, "alice", 5)])  # new windows: their encoding must be new
        before = len(sent)
        await proc.sweep(1767607200.0 + 95 * 86400)  # past the 60- and 90-day deadlines
        assert len(sent) > before  # the ticks really changed the records

    asyncio.run(run())
    cache = proc.owned[("app.events", 0)].cache
    cfg = proc.core.windows
    for user, blob in asyncio.run(store.load_users(users)).items():
        record = userrecord.decode(blob, cfg)
        assert blob == userrecord.encode(record)
        assert cache[user][0] == record
        assert cache[user][1] == windows.encode(record.windows)


def test_processing_latency_runs_from_the_records_timestamp_in_seconds() -> None:
    proc, _ = processor(MemoryWindowStore())
    produced = time.time() - 0.25
    batch = [dataclasses.replace(msg(i, "alice"), timestamp=produced) for i in range(4)]
    asyncio.run(proc.handle(batch))
    registry = proc.metrics.registry
    count = registry.get_sample_value("churn_processing_latency_seconds_count")
    total = registry.get_sample_value("churn_processing_latency_seconds_sum")
    assert count == 4
    assert total is not None and 4 * 0.25 <= total < 4 * 5.0
