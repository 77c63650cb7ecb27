"""The compose file's worker and replay command lines, run natively with its environment.

No Docker engine runs here, so the containers' commands are exercised as processes: the
in-network addresses (``kafka:9092``, ``redis:6379``), the container's data folder and the
topic are mapped onto this test's broker, Redis, the repo's ``data/`` and a unique topic.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tests_support import free_port_for_test

from stream_app.settings import Settings
from stream_app.tools import session

ROOT = Path(__file__).resolve().parents[2]
INTERPOLATION = re.compile(r"\$\{(\w+):-([^}]*)\}")


def resolve(text: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` interpolation."""
    return INTERPOLATION.sub(lambda m: env.get(m.group(1)) or m.group(2), text)


def native(value: str, mapping: dict[str, str]) -> str:
    for container, here in mapping.items():
        value = value.replace(container, here)
    return value


def test_compose_worker_and_replay_commands_run_natively(
    kafka_bootstrap: str, redis_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    topic = unique("app.events")
    mapping = {
        "/app/data/": f"{ROOT / 'data'}/",
        "kafka:9092": kafka_bootstrap,
        "redis://redis:6379/0": redis_url,
        "app.events": topic,
    }
    interp = {"REPLAY_FILE": "CDNOW_sample.txt"}
    base_env = {
        k: native(resolve(str(v), interp), mapping)
        for k, v in services["worker"]["environment"].items()
    }
    base_env.update(
        CHURN_TOPIC_EVENTS=topic,
        CHURN_KEY_PREFIX=unique("k") + ":",
        CHURN_APP_ID=unique("app"),
        CHURN_WEB_PORT=str(free_port_for_test()),
        CHURN_TOPIC_DLQ=unique("dlq"),
        CHURN_TOPIC_WARNINGS=unique("w"),
        CHURN_TOPIC_TIERS=unique("t"),
        CHURN_WEB_HOST="127.0.0.1",
    )
    settings = Settings(**{k[6:].lower(): v for k, v in base_env.items()})  # type: ignore[arg-type]
    from stream_app import stack

    stack.create_topics(settings)
    env = {**os.environ, **base_env}
    worker_cmd = [native(resolve(c, interp), mapping) for c in services["worker"]["command"]]
    replay_cmd = [native(resolve(c, interp), mapping) for c in services["replay"]["command"]]
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream_app", *worker_cmd],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "stream_app", *replay_cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["sent"] == 6919
        session.wait_drained(settings, topic, 6919, timeout=300)
        assert worker.poll() is None
    finally:
        stack.stop_pid(worker.pid)
