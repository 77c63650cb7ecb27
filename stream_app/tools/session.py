"""Run the real service for a tool: the embedded stack, a worker process, and a drain wait.

The backtest and the demo replay data *through the running service* (Kafka, a Faust worker,
Redis), not through an in-process shortcut; this module starts what they need, waits until
the worker has committed every offset of the input topic, and stops exactly what it started.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from stream_app import stack
from stream_app.kafka_clients import kafka_python_config, redis_client
from stream_app.settings import Settings, load_settings
from stream_app.store import RedisWindowStore
from stream_app.tools.progress import progress


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as the CHURN_* environment of a child process (secrets included)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, tuple | list):
            value = ",".join(str(v) for v in value)
        env[f"CHURN_{name.upper()}"] = str(value)
    return env


@contextmanager
def running_stack(settings: Settings) -> Iterator[stack.Stack]:
    """Use the broker and Redis the settings point at, starting whichever is not there."""
    running = stack.start(settings, reuse_broker=True)
    try:
        yield running
    finally:
        for pid in running.pids.values():
            stack.stop_pid(pid)
        for name in running.pids:
            (settings.embedded_run_dir / f"{name}.pid").unlink(missing_ok=True)


@contextmanager
def running_worker(settings: Settings, log_path: Path, timeout: float = 120.0) -> Iterator[str]:
    """Start ``stream-app worker`` with these settings; yield its web URL; stop it by PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(settings)}
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://{settings.web_host}:{settings.web_port}"
    try:
        _wait_healthy(proc, url, log_path, timeout)
        yield url
    finally:
        stack.stop_pid(proc.pid, timeout=30)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"worker not healthy after {timeout:.0f} s (log: {log_path})")


def partitions_of(settings: Settings, topic: str) -> list[int]:
    """Partition numbers of ``topic``."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**kafka_python_config(settings))
    try:
        return sorted(consumer.partitions_for_topic(topic) or {0})
    finally:
        consumer.close()


async def committed_offsets(
    settings: Settings, topic: str, partitions: list[int]
) -> dict[int, int]:
    """Offsets the worker has committed to Redis, per partition (-1 when none)."""
    store = RedisWindowStore(redis_client(settings), settings.key_prefix)
    try:
        out = {}
        for p in partitions:
            snap = await store.load_partition(topic, p)
            out[p] = snap.offset if snap else -1
        return out
    finally:
        await store.close()


def wait_drained(
    settings: Settings,
    topic: str,
    expected: int,
    *,
    timeout: float = 900.0,
    out: TextIO | None = None,
) -> None:
    """Block until the worker has committed ``expected`` records of ``topic`` in all.

    The count is what the caller produced (offsets are contiguous per partition), not the
    broker's end offsets, which some brokers report late after batched produces.
    """
    parts = partitions_of(settings, topic)
    deadline = time.monotonic() + timeout
    done = 0
    with progress("processed", expected, out=out) as bar:
        while True:
            got = asyncio.run(committed_offsets(settings, topic, parts))
            now_done = sum(off + 1 for off in got.values())
            bar.advance(max(0, now_done - done))
            done = max(done, now_done)
            if done >= expected:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker processed {done}/{expected} records in {timeout:.0f} s")
            time.sleep(0.2)


def run_settings(base: Settings | None = None, **overrides: object) -> Settings:
    """Settings for a tool's run: the environment's, with the tool's overrides."""
    data: Mapping[str, object] = (base or load_settings()).model_dump()
    return load_settings(**{**data, **overrides})
