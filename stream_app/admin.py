"""Operator commands that read or change Redis directly: inspect and forget a user."""

from __future__ import annotations

from typing import Any

from stream_app import userrecord
from stream_app.core import build_core
from stream_app.engine import PartitionEngine
from stream_app.inspection import describe
from stream_app.kafka_clients import redis_client
from stream_app.processor import partition_of
from stream_app.settings import Settings
from stream_app.store import RedisWindowStore


def _store(settings: Settings) -> RedisWindowStore:
    return RedisWindowStore(redis_client(settings), settings.key_prefix)


async def inspect_user(settings: Settings, user_id: str) -> dict[str, Any] | None:
    """A user's state as the worker would show it, or None for an unknown user."""
    store = _store(settings)
    try:
        raw = await store.load_users([user_id])
        if user_id not in raw:
            return None
        core = build_core(settings)
        partition = partition_of(user_id, settings.partitions)
        snap = await store.load_partition(settings.topic_events, partition)
        engine = PartitionEngine(core, snap.blob if snap else None)
        return describe(user_id, userrecord.decode(raw[user_id], core.windows), engine)
    finally:
        await store.close()


async def forget_user(settings: Settings, user_id: str) -> int:
    """Delete every piece of a user's state; return how many entries were removed."""
    store = _store(settings)
    try:
        partitions = [(settings.topic_events, p) for p in range(settings.partitions)]
        return await store.forget_user(user_id, partitions)
    finally:
        await store.close()


async def score_known_users(settings: Settings, at: float, chunk: int = 5000) -> dict[str, float]:
    """Every known user's churn probability at event time ``at``, from the service's state.

    Each partition's checkpointed model scores the users of that partition exactly as the
    worker would at that instant; nothing is learned or written.
    """
    store = _store(settings)
    core = build_core(settings)
    scores: dict[str, float] = {}
    try:
        for partition in range(settings.partitions):
            topic = settings.topic_events
            snap = await store.load_partition(topic, partition)
            if snap is None:
                continue
            engine = PartitionEngine(core, snap.blob)
            users = [u for u, _ in await store.due_users(topic, partition, float("inf"), 10**9)]
            for i in range(0, len(users), chunk):
                raw = await store.load_users(users[i : i + chunk])
                for user, blob in raw.items():
                    _, score = engine.score_user(userrecord.decode(blob, core.windows), at)
                    scores[user] = score.probability
    finally:
        await store.close()
    return scores
