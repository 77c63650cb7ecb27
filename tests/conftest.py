"""Session fixtures: the real embedded broker and Redis, started once, stopped by PID.

Every test that touches Kafka takes its own topics and consumer group from ``unique``; every
test that touches Redis takes its own key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream_app import stack
from stream_app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.Stack]:
    """Start the broker (and Redis, unless one is given by CHURN_TEST_REDIS_URL) once."""
    given = os.environ.get("CHURN_TEST_REDIS_URL")
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=given or f"redis://127.0.0.1:{free_port()}/0",
        embedded_redis="external" if given else "start",
        embedded_run_dir=tmp_path_factory.mktemp("stack"),
    )
    running = stack.start(settings)
    try:
        yield running
    finally:
        stack.stop(settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(embedded: stack.Stack) -> str:
    """Bootstrap address of the session's broker."""
    return embedded.bootstrap


@pytest.fixture(scope="session")
def redis_url(embedded: stack.Stack) -> str:
    """URL of the session's Redis."""
    return embedded.redis_url


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names for this test's topics, groups and key prefixes."""
    token = uuid.uuid4().hex[:10]
    return lambda name: f"t{token}.{name}"


@dataclass
class Worker:
    """A worker process started by a test."""

    proc: subprocess.Popen[bytes]
    web_url: str
    settings_env: dict[str, str]
    log_path: Path

    def stop(self, sig: int = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def worker_env(
    kafka_bootstrap: str, redis_url: str, prefix: str, **overrides: object
) -> dict[str, str]:
    """Environment for a worker on this test's own topics, group and key prefix."""
    env = {
        "CHURN_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CHURN_REDIS_URL": redis_url,
        "CHURN_APP_ID": f"{prefix}app",
        "CHURN_KEY_PREFIX": f"{prefix}:",
        "CHURN_TOPIC_EVENTS": f"{prefix}.app.events",
        "CHURN_TOPIC_DLQ": f"{prefix}.app.events.dlq",
        "CHURN_TOPIC_WARNINGS": f"{prefix}.churn.warnings",
        "CHURN_TOPIC_TIERS": f"{prefix}.user.tiers",
        "CHURN_WEB_PORT": str(free_port()),
        "CHURN_CLOCK": "event",
    }
    env.update({f"CHURN_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def running_worker(
    kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    """Start ``stream-app worker`` processes on this test's topics; all stopped at teardown."""
    started: list[Worker] = []
    prefix = unique("w")

    def start(wait: bool = True, group: str = "", **overrides: object) -> Worker:
        env = worker_env(kafka_bootstrap, redis_url, prefix + group, **overrides)
        topics = Settings(**{k[len("CHURN_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]
        stack.create_topics(topics)
        log_path = tmp_path / f"worker{len(started)}.log"
        out = log_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        worker = Worker(proc, f"http://127.0.0.1:{env['CHURN_WEB_PORT']}", env, log_path)
        started.append(worker)
        if wait:
            wait_ready(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_ready(worker: Worker, timeout: float = 90.0) -> None:
    """Wait until the worker's /health says it owns partitions and can work."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited early:\n{worker.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{worker.web_url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"worker not ready after {timeout}s:\n{worker.log()[-4000:]}")
