"""A worker killed with SIGKILL mid-replay and restarted ends exactly where an uninterrupted
worker ends: same scores for every user, same Redis state, same set of warning ids.

Two independent groups (own topics, consumer group, key prefix) get the same events; one
runs undisturbed, the other is killed once at least a third of the events were committed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from stream_app.admin import score_known_users
from stream_app.settings import Settings
from stream_app.tools import session
from stream_app.tools.replay import run_replay

DATA = "data/CDNOW_master.txt"
LIMIT = 4000
AT = 860_000_000.0  # 1997-04-02: after the slice's last event


def settings_of(worker: Any) -> Settings:
    env = {k[len("CHURN_") :].lower(): v for k, v in worker.settings_env.items()}
    return Settings(**env)


def processed(settings: Settings) -> int:
    offsets = asyncio.run(
        session.committed_offsets(settings, settings.topic_events, list(range(settings.partitions)))
    )
    return sum(o + 1 for o in offsets.values())


def user_records(settings: Settings) -> dict[bytes, bytes]:
    """Every user record of this group, keyed by user id."""
    from stream_app.kafka_clients import redis_client

    async def dump() -> dict[bytes, bytes]:
        client = redis_client(settings)
        prefix = f"{settings.key_prefix}u:".encode()
        keys = [k async for k in client.scan_iter(match=prefix + b"*", count=5000)]
        values = await client.mget(keys)
        await client.aclose()
        return {k[len(prefix) :]: v for k, v in zip(keys, values, strict=True)}

    return asyncio.run(dump())


def warning_ids(settings: Settings) -> set[str]:
    from stream_app.tools.tail import read_topic

    records = read_topic(
        settings.kafka_bootstrap, settings.topic_warnings, stop_at_end=True, idle_timeout_s=3
    )
    return {str(r.value.get("warning_id") or r.value.get("recovery_id")) for r in records}


def test_sigkill_mid_replay_gives_the_same_final_state(
    running_worker: Callable[..., Any],
) -> None:
    overrides = {"profile": "purchases", "churn_horizon_days": 30, "partitions": 2}
    steady = running_worker(group="a", **overrides)
    killed = running_worker(group="b", **overrides)
    results = {}
    for worker in (steady, killed):
        s = settings_of(worker)
        sent = run_replay(DATA, s.topic_events, s.kafka_bootstrap, limit=LIMIT, out=sys.stderr).sent
        if worker is killed:
            deadline = time.monotonic() + 120
            while processed(s) < sent // 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert processed(s) < sent, "killed too late: the worker had already finished"
            worker.stop(signal.SIGKILL)
            worker = running_worker(group="b", **overrides)
        session.wait_drained(s, s.topic_events, sent, timeout=300)
        results[worker is steady] = (
            asyncio.run(score_known_users(s, AT)),
            warning_ids(s),
            user_records(s),
        )
    (scores_a, ids_a, users_a), (scores_b, ids_b, users_b) = results[True], results[False]
    assert len(scores_a) > 1000
    assert scores_b == scores_a
    assert ids_b == ids_a
    assert users_b == users_a
