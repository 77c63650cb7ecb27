"""Dependency faults mid-stream: Redis restarted, the broker frozen. The worker must say it is
unhealthy while it cannot work, resume by itself, and end exactly where an uninterrupted run
ends (see ``reliability_support.assert_same_as_reference``).

Why: Redis restarts (upgrades, failover) and short network partitions from the broker are
routine. A worker that dies, hangs, skips the batch it was working on or reports healthy
while it cannot commit would lose or duplicate effects, or hide an outage from the
orchestrator that should restart or alert on it.

The input is a small simulated social-app stream (25 users, about 12,000 events) on two
partitions; each fault is injected once a quarter of it is committed, so there is work
before, during and after.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability_support import (
    RedisServer,
    assert_same_as_reference,
    health,
    own_redis,
    processed,
    settings_of,
    topic_records,
    wait_processed,
)
from tests_support import free_port_for_test

from stream_app import stack
from stream_app.settings import Settings
from stream_app.tools.replay import run_replay
from stream_app.tools.simulate import run_simulate

WORKER = {"partitions": 2}


def stream(tmp_path: Path) -> Path:
    events = tmp_path / "events.jsonl"
    run_simulate(events, tmp_path / "truth.csv", users=25, days=56, seed=5)
    return events


def wait_health(web_url: str, status: int, timeout: float) -> float:
    """Seconds until /health answers ``status``; fails after ``timeout``."""
    began = time.monotonic()
    while health(web_url) != status:
        assert time.monotonic() - began < timeout, f"/health never answered {status}"
        time.sleep(0.2)
    return time.monotonic() - began


@dataclass
class Outage:
    """A worker on its own Redis, a quarter into the stream, with that Redis stopped."""

    server: RedisServer
    worker: Any
    settings: Settings
    sent: int
    inputs: Any


@contextmanager
def redis_outage(running_worker: Callable[..., Any], tmp_path: Path) -> Iterator[Outage]:
    """Start a worker on a Redis of its own, replay the stream, stop that Redis once a
    quarter is committed and wait for /health to say so; the Redis is stopped at the end."""
    server = RedisServer(tmp_path / "redis", free_port_for_test())
    server.start()
    try:
        worker = running_worker(**own_redis(server), **WORKER)
        s = settings_of(worker.settings_env)
        sent = run_replay(stream(tmp_path), s.topic_events, s.kafka_bootstrap, out=io.StringIO())
        inputs = topic_records(s, s.topic_events, expected=sent.sent)
        wait_processed(s, sent.sent // 4, timeout=120, worker=worker)
        server.stop()
        wait_health(worker.web_url, 503, timeout=15)
        yield Outage(server, worker, s, sent.sent, inputs)
    finally:
        server.stop()


def test_redis_restart_mid_stream(running_worker: Callable[..., Any], tmp_path: Path) -> None:
    with redis_outage(running_worker, tmp_path) as out:
        worker, s = out.worker, out.settings
        time.sleep(4)  # a batch or more fails meanwhile and is retried
        assert worker.proc.poll() is None, "the worker died with Redis"
        assert health(worker.web_url) == 503
        out.server.start()

        wait_health(worker.web_url, 200, timeout=60)
        wait_processed(s, out.sent, timeout=300, worker=worker)
        assert processed(s) > 0
        assert "Redis unavailable" in worker.log()
        assert_same_as_reference(s, out.inputs, s.key_prefix.rstrip(":") + "R:")


def test_broker_frozen_briefly(
    running_worker: Callable[..., Any], embedded: stack.Stack, tmp_path: Path
) -> None:
    broker = embedded.pids["broker"]
    worker = running_worker(**WORKER)
    s = settings_of(worker.settings_env)
    sent = run_replay(stream(tmp_path), s.topic_events, s.kafka_bootstrap, out=io.StringIO())
    inputs = topic_records(s, s.topic_events, expected=sent.sent)
    wait_processed(s, sent.sent // 4, timeout=120, worker=worker)

    os.kill(broker, signal.SIGSTOP)
    try:
        time.sleep(6)
    finally:
        os.kill(broker, signal.SIGCONT)

    wait_processed(s, sent.sent, timeout=300, worker=worker)
    assert worker.proc.poll() is None
    wait_health(worker.web_url, 200, timeout=60)
    assert_same_as_reference(s, inputs, s.key_prefix.rstrip(":") + "R:")


def test_sigterm_stops_a_worker_waiting_for_redis(
    running_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """An orchestrator stopping a worker whose Redis is gone (a node drain during an outage)
    gets a prompt exit, not a worker retrying until it is killed; and the batch it could not
    commit is not lost: a worker started once Redis is back ends where an uninterrupted run
    ends."""
    with redis_outage(running_worker, tmp_path) as out:
        worker, s = out.worker, out.settings
        time.sleep(2)  # well into the retry loop
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            raise AssertionError(f"no exit 20 s after SIGTERM:\n{worker.log()[-3000:]}") from None
        assert time.monotonic() - began < 20

        out.server.start()
        restarted = running_worker(**own_redis(out.server), **WORKER)
        wait_processed(s, out.sent, timeout=300, worker=restarted)
        assert_same_as_reference(s, out.inputs, s.key_prefix.rstrip(":") + "R:")
