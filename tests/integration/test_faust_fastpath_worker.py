"""The fast message drain (:mod:`stream_app.faust_fastpath`) in real workers on the test broker.

It is on in a running worker unless ``CHURN_FAUST_FAST_DRAIN=false``; and a group that
rebalances twice while events flow (a second worker joins, then the first leaves) commits
every offset and leaves exactly the state and output of one uninterrupted run: nothing
lost, nothing applied twice. The uninterrupted run and the comparisons are the reliability
tests' (``tests/reliability/reliability_support.py``).
"""

from __future__ import annotations

import asyncio
import functools
import io
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stream_app.app import create_app
from stream_app.faust_fastpath import is_fast_drain
from stream_app.settings import Settings
from stream_app.tools.replay import run_replay
from stream_app.tools.simulate import run_simulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))
from reliability_support import (
    Reference,
    committed,
    dlq_entries,
    dump_state,
    http_get,
    processed,
    published,
    settings_of,
    state_diff,
    topic_records,
    wait_processed,
)

INSTALLED = "Faust consumer drains messages with the fast path"


@pytest.mark.parametrize("enabled", [True, False])
def test_create_app_binds_the_fast_drain_unless_turned_off(
    enabled: bool,
    redis_url: str,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        app_id=unique("app"),
        embedded_run_dir=tmp_path,
        faust_fast_drain=enabled,
    )

    async def consumer_drain() -> bool:
        app = create_app(settings)
        return is_fast_drain(app.consumer)

    assert asyncio.run(consumer_drain()) is enabled


def small_input(tmp_path: Path, users: int, days: int) -> tuple[Path, int]:
    path = tmp_path / "events.jsonl"
    summary = run_simulate(path, tmp_path / "truth.csv", users=users, days=days, seed=11)
    return path, int(summary["events"])


def test_a_running_worker_drains_with_the_fast_path_unless_turned_off(
    running_worker: Callable[..., Any], tmp_path: Path
) -> None:
    events, count = small_input(tmp_path, users=20, days=14)
    on = running_worker(group="on", partitions=2)
    off = running_worker(group="off", partitions=2, faust_fast_drain="false")
    for worker in (on, off):
        s = settings_of(worker.settings_env)
        sent = run_replay(events, s.topic_events, s.kafka_bootstrap, out=io.StringIO()).sent
        assert sent == count
        wait_processed(s, sent, timeout=120, worker=worker)
    assert INSTALLED in on.log()
    assert INSTALLED not in off.log()


def owned(worker: Any) -> set[str]:
    """The events-topic partitions the group has assigned to a worker (its /health).

    The assignment, not the partitions the worker has processed a batch of: a partition it
    was just given shows in the latter only once its first batch has run.
    """
    import json

    status, body = http_get(f"{worker.web_url}/health")
    assert status == 200, body
    topic = settings_of(worker.settings_env).topic_events
    return {tp for tp in json.loads(body)["assigned"] if tp.rsplit(":", 1)[0] == topic}


def wait_owned(condition: Callable[[], object], timeout: float = 90.0) -> None:
    """Block until the partitions are split as ``condition`` wants (a rebalance is done)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the group did not settle"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_rebalance_in_mid_stream_loses_and_doubles_nothing(
    running_worker: Callable[..., Any], tmp_path: Path
) -> None:
    events, count = small_input(tmp_path, users=100, days=56)
    group = {"group": "g", "partitions": 4}
    first = running_worker(**group)
    env = first.settings_env
    s = settings_of(env)

    # Three fifths at once, a backlog that keeps the stream buffers full (callbacks wait for
    # room, the slow path); the rest over ~30 s, so events still arrive while the group
    # rebalances.
    lines = events.read_text().splitlines(keepends=True)
    cut = len(lines) * 3 // 5
    backlog, trickle = tmp_path / "backlog.jsonl", tmp_path / "trickle.jsonl"
    backlog.write_text("".join(lines[:cut]))
    trickle.write_text("".join(lines[cut:]))
    replayed: dict[str, int] = {}

    def produce() -> None:
        replay = functools.partial(run_replay, topic=s.topic_events, bootstrap=s.kafka_bootstrap)
        replayed["sent"] = replay(backlog, out=io.StringIO()).sent
        replayed["sent"] += replay(trickle, speed=22 * 86400 / 30, out=io.StringIO()).sent

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()

    wait_processed(s, count // 5, timeout=120, worker=first)
    second = running_worker(**group)
    joined_at = processed(s)
    wait_owned(lambda: owned(first) and owned(second) and not owned(first) & owned(second))
    assert owned(first) | owned(second) == {f"{s.topic_events}:{p}" for p in range(4)}

    wait_processed(s, min(joined_at + count // 5, count * 2 // 3), timeout=120, worker=second)
    left_at = processed(s)
    assert first.stop() == 0  # the second rebalance: the first worker leaves the group
    producer.join(timeout=180)
    assert replayed.get("sent") == count
    assert joined_at < left_at < count, "the rebalances came after the stream had ended"

    wait_processed(s, count, timeout=300, worker=second)
    wait_owned(lambda: len(owned(second)) == 4)
    print(f"{count} events; second worker joined at {joined_at}, first left at {left_at}")

    inputs = topic_records(s, s.topic_events, expected=count)
    ref_prefix = env["CHURN_KEY_PREFIX"].rstrip(":") + "R:"
    reference = Reference(settings_of(env, key_prefix=ref_prefix))
    reference.run(inputs)

    # every offset accounted for, dead letters as in the uninterrupted run
    last = {p: max(r.offset for r in inputs if r.partition == p) for p in range(s.partitions)}
    assert committed(s) == last
    assert dlq_entries(topic_records(s, s.topic_dlq)) == reference.dlq()

    # the same Redis state, key by key
    state = dump_state(s.redis_url, s.key_prefix)
    expected = dump_state(s.redis_url, ref_prefix)
    assert len(expected) > 100
    assert sorted(state) == sorted(expected)
    assert state_diff(state, expected) == []

    # the same records out: a record published twice repeats its id and bytes
    outputs = topic_records(s, s.topic_warnings) + topic_records(s, s.topic_tiers)
    assert reference.published()
    assert published(outputs) == reference.published()

    assert INSTALLED in first.log() and INSTALLED in second.log()
