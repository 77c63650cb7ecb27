"""Run the real service for a tool: the embedded stack, a worker process, and a drain wait.

The backtest and the demo replay data *through the running service* (Kafka, a Faust worker,
Redis), not through an in-process shortcut; this module starts what they need, waits until
the worker has committed every offset of the input topic, and stops exactly what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
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
def _worker_process(
    settings: Settings, log_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start ``stream-app worker`` with these settings; yield it and its web URL; stop it
    by PID."""
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
    try:
        yield proc, f"http://{settings.web_host}:{settings.web_port}"
    finally:
        stack.stop_pid(proc.pid, timeout=30)


@contextmanager
def running_workers(
    settings: Settings, count: int, log_dir: Path, name: str, timeout: float = 120.0
) -> Iterator[list[str]]:
    """Start ``count`` workers of one consumer group and wait until the group has settled.

    The first worker uses ``settings.web_port``, the others free ports; logs go to
    ``log_dir/<name>-<i>.log``. All start at once; with several, the wait lasts until every
    one of them reports a share of the events topic's partitions on ``/health`` and together
    they hold each partition once. Yields the workers' web URLs; stops them all by PID.
    """
    with contextlib.ExitStack() as workers:
        procs = [
            workers.enter_context(
                _worker_process(
                    settings.model_copy(
                        update={"web_port": settings.web_port if i == 0 else free_port()}
                    ),
                    log_dir / f"{name}-{i}.log",
                )
            )
            for i in range(count)
        ]
        # Unwound first (last in): every worker is asked to stop at once; each is then
        # awaited (and killed if it hangs) by its own context, not one after the other.
        workers.callback(_signal_all, [proc.pid for proc, _ in procs])
        for i, (proc, url) in enumerate(procs):
            _wait_healthy(proc, url, log_dir / f"{name}-{i}.log", timeout)
        urls = [url for _, url in procs]
        if count > 1:
            _wait_settled(
                urls,
                settings.topic_events,
                len(partitions_of(settings, settings.topic_events)),
                timeout,
            )
        yield urls


def _signal_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def _wait_settled(urls: list[str], topic: str, partitions: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shares = []
        for url in urls:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                    body = json.load(resp)
            except (OSError, ValueError):
                body = {}
            shares.append([a for a in body.get("assigned", []) if a.rsplit(":", 1)[0] == topic])
        held = [a for share in shares for a in share]
        if all(shares) and len(held) == len(set(held)) == partitions:
            return
        time.sleep(0.25)
    raise RuntimeError(f"workers did not share the {partitions} partitions of {topic} in time")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def default_workers(partitions: int) -> int:
    """Workers a tool starts by default: one per CPU, at most one per partition."""
    return max(1, min(os.cpu_count() or 1, partitions))


def free_port() -> int:
    """A free loopback port (for a tool's worker web port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
