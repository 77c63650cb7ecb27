"""Integration: looking at one user over HTTP and on the command line, and forgetting them.

Why: operators answer "why was this user warned?" with ``GET /users/{id}`` or
``stream-app inspect``, and privacy requests with ``stream-app forget``. Both read or change
the state the running worker wrote, so they are checked against a real worker, Kafka and
Redis: the two views agree with each other and with what subscribers received, the endpoint
is closed without the bearer token and never echoes it, and a forgotten user leaves no key,
no deadline and no pending label behind, even while the worker keeps running.

The stream (one partition, event clock): ``alice`` is active for ten days and goes silent;
``bob`` shows up on day 0 and comes back on day 75, which moves the watermark past alice's
deadlines, so both have warnings (bob also a recovery) to show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer
from tests_support import read_to_end as shared_read_to_end

from stream_app.settings import Settings
from stream_app.tiers import LIFECYCLES
from stream_app.tools.session import wait_drained

T0 = datetime(2026, 3, 2, tzinfo=UTC)
TOKEN = "inspect-token-7f3c9a1e52"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(**{k[len("CHURN_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]


def produce(env: dict[str, str], bootstrap: str, events: list[tuple[str, str, datetime]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1)
    for user, kind, t in events:
        value = {
            "event_id": f"{user}-{kind}-{t.timestamp():.0f}",
            "user_id": user,
            "event": kind,
            "occurred_at": iso(t),
            "properties": {"counterpart": "host-9"} if kind == "message_sent" else {},
        }
        producer.send(env["CHURN_TOPIC_EVENTS"], key=user.encode(), value=orjson.dumps(value))
    producer.flush()
    producer.close()


def published(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every warning/recovery published so far, as a subscriber reads them."""
    return [orjson.loads(m.value) for m in shared_read_to_end(bootstrap, topic)]


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    """Status and body of a GET (error statuses too)."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_app", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def keys_mentioning(client: redis.Redis, prefix: str, user: str) -> list[str]:
    """Every place under ``prefix`` where ``user`` is still stored: key names, due-set
    members and label-hash fields (whose ids start with the user id and a NUL)."""
    found = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key)
        if user in key:
            found.append(key)
        elif kind == "zset" and client.zscore(key, user) is not None:
            found.append(f"{key} member {user}")
        elif kind == "hash":
            fields = [f for f in map(str, client.hkeys(key)) if f.split("\x00")[0] == user]
            found.extend(f"{key} field {f!r}" for f in fields)
    return found


@pytest.fixture
def worker(running_worker: Callable[..., Any]) -> Any:
    return running_worker(partitions=1, holdout_share=0.0, inspect_token=TOKEN)


def test_inspect_endpoint_cli_and_forget(worker: Any, kafka_bootstrap: str, redis_url: str) -> None:
    env = worker.settings_env
    assert "CHURN_REDIS_PASSWORD" not in env
    kinds = ("session_start", "message_sent")
    events = [("alice", k, T0 + timedelta(days=d, hours=20)) for d in range(10) for k in kinds]
    events += [("bob", "message_sent", T0), ("bob", "message_sent", T0 + timedelta(days=75))]
    events.sort(key=lambda e: e[2])
    produce(env, kafka_bootstrap, events)
    settings = settings_of(env)
    wait_drained(settings, env["CHURN_TOPIC_EVENTS"], len(events), timeout=60)
    records = published(kafka_bootstrap, env["CHURN_TOPIC_WARNINGS"])
    bodies: list[bytes] = []

    # -- the endpoint is closed without the token --------------------------------------
    for token in (None, "wrong", TOKEN + "x", ""):
        status, body = get(f"{worker.web_url}/users/alice", token)
        bodies.append(body)
        assert status == 401, (token, body)
        assert b"alice" not in body and b"session" not in body
    status, body = get(f"{worker.web_url}/users/nobody")
    bodies.append(body)
    assert status == 401, "without the token nobody learns whether a user exists"

    # -- alice over HTTP ----------------------------------------------------------------
    status, body = get(f"{worker.web_url}/users/alice", TOKEN)
    bodies.append(body)
    assert status == 200, body
    alice = orjson.loads(body)
    assert alice["user_id"] == "alice"
    assert alice["first_seen"] == iso(T0 + timedelta(hours=20))
    assert alice["last_seen"] == iso(T0 + timedelta(days=9, hours=20))
    assert alice["as_of"] == iso(T0 + timedelta(days=75)), "event clock: the watermark"
    windows = alice["windows"]
    assert {"activity", "logins", "interactions"} <= set(windows)
    assert all(set(w) == {"1d", "7d", "28d", "90d"} for w in windows.values())
    assert windows["activity"]["90d"] == 20 and windows["activity"]["7d"] == 0
    assert windows["logins"]["90d"] == 10 and windows["interactions"]["90d"] == 10
    assert alice["features"] and all(isinstance(v, int | float) for v in alice["features"].values())
    score = alice["score"]
    assert 0.0 <= score["churn_probability"] <= 1.0 and 0.0 <= score["percentile"] <= 100.0
    assert score["source"] and score["model_version"]
    assert score["reasons"], "a score always comes with its reasons"
    assert all({"feature", "value", "contribution"} == set(r) for r in score["reasons"])
    assert alice["tiers"]["lifecycle"] in LIFECYCLES
    state = alice["warning_state"]
    assert state["open"] is True and state["episode"] == 1 and state["level"] >= 2
    assert state["level_name"] in ("warning", "critical")
    mine = [r for r in records if r["user_id"] == "alice"]
    assert [(w["level"], w["event_time"]) for w in alice["recent_warnings"]] == [
        (r["level"], r["event_time"].replace(".000Z", "Z")) for r in mine[-3:]
    ], "the three most recent warnings, as published"
    assert any(r["level"] == 2 for r in mine), mine
    assert all(w["kind"] == "warning" for w in alice["recent_warnings"])

    status, body = get(f"{worker.web_url}/users/bob", TOKEN)
    bodies.append(body)
    bob = orjson.loads(body)
    assert status == 200 and bob["warning_state"]["open"] is False
    assert bob["recent_warnings"][-1]["kind"] == "recovered"
    assert bob["recent_warnings"][-1]["event_time"] == iso(T0 + timedelta(days=75))

    status, body = get(f"{worker.web_url}/users/nobody", TOKEN)
    bodies.append(body)
    assert status == 404
    assert orjson.loads(body) == {"error": "unknown user 'nobody'"}

    for body in bodies:
        assert TOKEN.encode() not in body and b"password" not in body.lower()
    for path in ("/health", "/metrics"):
        assert TOKEN.encode() not in get(f"{worker.web_url}{path}")[1]
    assert TOKEN not in worker.log()

    # -- the command line shows the same user -------------------------------------------
    shown = cli(env, "inspect", "alice")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == alice
    assert TOKEN not in shown.stdout + shown.stderr
    unknown = cli(env, "inspect", "nobody")
    assert unknown.returncode == 1 and not unknown.stdout
    assert "unknown user 'nobody'" in unknown.stderr

    # -- forget ---------------------------------------------------------------------------
    client = redis.Redis.from_url(redis_url, decode_responses=True, encoding="latin-1")
    prefix = env["CHURN_KEY_PREFIX"]
    try:
        before = keys_mentioning(client, prefix, "alice")
        assert f"{prefix}u:alice" in before and any("member alice" in k for k in before), before
        gone = cli(env, "forget", "alice")
        assert gone.returncode == 0, gone.stderr
        report = json.loads(gone.stdout)
        assert report["user_id"] == "alice" and report["keys_removed"] == len(before)
        assert keys_mentioning(client, prefix, "alice") == []
        assert keys_mentioning(client, prefix, "bob"), "only alice is forgotten"

        status, body = get(f"{worker.web_url}/users/alice", TOKEN)
        assert status == 404 and b"unknown user" in body
        again = cli(env, "inspect", "alice")
        assert again.returncode == 1 and "unknown user 'alice'" in again.stderr

        # The running worker still has alice's deadline in memory; passing it (day 99, her
        # 90 days without login) must not bring her back or warn about her.
        produce(env, kafka_bootstrap, [("bob", "message_sent", T0 + timedelta(days=130))])
        wait_drained(settings, env["CHURN_TOPIC_EVENTS"], len(events) + 1, timeout=60)
        assert keys_mentioning(client, prefix, "alice") == []
        later = published(kafka_bootstrap, env["CHURN_TOPIC_WARNINGS"])
        assert [r for r in later if r["user_id"] == "alice"] == mine
        assert get(f"{worker.web_url}/users/alice", TOKEN)[0] == 404
    finally:
        client.close()
