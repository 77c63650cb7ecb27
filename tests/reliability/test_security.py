"""Secrets and access: Redis authentication, secrets kept out of every output, the web port on
loopback by default, and forgetting a user through the worker.

Why: a worker must not run against a Redis it cannot authenticate to while looking healthy,
must say clearly why it cannot work, and must never print a credential where logs,
scrapers or HTTP clients would collect it. A privacy request must remove the user from the
worker's memory as well as from Redis, or the model would still learn from them.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from reliability_support import (
    RedisServer,
    health,
    http_get,
    own_redis,
    settings_of,
    wait_processed,
)
from tests_support import free_port_for_test

from stream_app.core import build_core
from stream_app.metrics import Metrics
from stream_app.processor import Processor, partition_of, per_record
from stream_app.records import AppEvent
from stream_app.settings import Settings
from stream_app.store import MemoryWindowStore
from stream_app.tools.replay import run_replay

PASSWORD = "redis-secret-3f9a71c2e8"
TOKEN = "inspect-token-b61d0e94a7"
CDNOW = Path(__file__).resolve().parents[2] / "data" / "CDNOW_master.txt"
WORKER = {"partitions": 1, "profile": "purchases", "holdout_share": 0.0}


def listening_address(port: int) -> str:
    """Local address of the TCP socket listening on ``port`` (Linux /proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    return address
    raise AssertionError(f"nothing listens on {port}")


def test_redis_password_secrets_and_loopback(
    running_worker: Callable[..., Any], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", free_port_for_test(), "--requirepass", PASSWORD)
    server.start()
    try:
        # -- with the password: works, and no secret ever shows --------------------------
        worker = running_worker(
            **own_redis(server), redis_password=PASSWORD, inspect_token=TOKEN, **WORKER
        )
        s = settings_of(worker.settings_env)
        sent = run_replay(CDNOW, s.topic_events, s.kafka_bootstrap, limit=300, out=io.StringIO())
        wait_processed(s, sent.sent, timeout=120, worker=worker)
        assert health(worker.web_url) == 200
        assert s.web_host == "127.0.0.1" == Settings().web_host
        assert listening_address(int(worker.settings_env["CHURN_WEB_PORT"])) == "0100007F"

        user = "00001"
        bodies = [
            http_get(f"{worker.web_url}/health")[1],
            http_get(f"{worker.web_url}/metrics")[1],
            http_get(f"{worker.web_url}/users/{user}", TOKEN)[1],
            http_get(f"{worker.web_url}/users/{user}", "wrong")[1],
            http_get(f"{worker.web_url}/users/{PASSWORD}", TOKEN)[1],
        ]
        assert http_get(f"{worker.web_url}/users/{user}", TOKEN)[0] == 200
        for secret in (PASSWORD, TOKEN):
            for body in bodies[:4]:
                assert secret.encode() not in body
            assert secret not in worker.log()

        # -- without it: unhealthy, and the log names Redis authentication ------------------
        locked_out = running_worker(wait=False, group="nopw", **own_redis(server), **WORKER)
        ls = settings_of(locked_out.settings_env)
        run_replay(CDNOW, ls.topic_events, ls.kafka_bootstrap, limit=20, out=io.StringIO())
        deadline = time.monotonic() + 90
        while "Redis unavailable (AuthenticationError" not in locked_out.log():
            assert locked_out.proc.poll() is None, locked_out.log()[-3000:]
            assert time.monotonic() < deadline, locked_out.log()[-3000:]
            time.sleep(0.5)
        assert health(locked_out.web_url) == 503
        assert PASSWORD not in locked_out.log()

        # -- forgetting through the worker: token required, Redis and memory cleared --------
        delete = f"{worker.web_url}/users/{user}"
        assert _delete(delete, None)[0] == 401
        assert _delete(delete, "wrong")[0] == 401
        status, body = _delete(delete, TOKEN)
        assert status == 200 and b'"keys_removed"' in body
        client = redis.Redis.from_url(server.url, password=PASSWORD)
        try:
            prefix = s.key_prefix
            assert client.get(f"{prefix}u:{user}") is None
            for key in client.scan_iter(match=f"{prefix}*"):
                kind = client.type(key)
                if kind == b"zset":
                    assert client.zscore(key, user) is None
                elif kind == b"hash" and b"labels:" in key:
                    assert not [f for f in client.hkeys(key) if f.startswith(user.encode() + b"\0")]
        finally:
            client.close()
        assert http_get(delete, TOKEN)[0] == 404
        more = run_replay(CDNOW, s.topic_events, s.kafka_bootstrap, limit=600, out=io.StringIO())
        wait_processed(s, sent.sent + more.sent, timeout=120, worker=worker)
        assert health(worker.web_url) == 200
    finally:
        server.stop()


def _delete(url: str, token: str | None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method="DELETE")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def test_forget_drops_the_users_in_memory_state() -> None:
    """The worker's in-memory engine no longer holds the user's deadline or snapshots."""
    settings = Settings(partitions=1, clock="event", label_sample_rate=1.0)
    store = MemoryWindowStore()

    async def go() -> tuple[int, int, int, int]:
        async def send(record: Any) -> Any:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        metrics = Metrics.create(CollectorRegistry())
        proc = Processor(settings, build_core(settings), store, metrics, per_record(send))
        events = [
            AppEvent(f"e{i}", f"u{i % 3}", "login", 1_700_000_000.0 + i * 3600) for i in range(30)
        ]
        msgs = [_Msg(settings.topic_events, 0, i, e) for i, e in enumerate(events)]
        await proc.handle(msgs)
        owned = await proc.engine(settings.topic_events, 0)
        due, pending = owned.engine.due_count(), owned.engine.state.labels.pending
        await proc.forget("u1")
        assert (settings.topic_events, partition_of("u1", 1)) not in proc.owned
        reloaded = await proc.engine(settings.topic_events, 0)
        return due, pending, reloaded.engine.due_count(), reloaded.engine.state.labels.pending

    due, pending, due_after, pending_after = asyncio.run(go())
    assert due_after == due - 1
    assert pending > 0 and pending_after < pending


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int, e: AppEvent) -> None:
        import orjson

        self.topic, self.partition, self.offset = topic, partition, offset
        self.key = e.user_id.encode()
        self.value = orjson.dumps(
            {
                "event_id": e.event_id,
                "user_id": e.user_id,
                "event": e.event,
                "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.occurred_at)),
            }
        )
        self.headers: list[tuple[str, bytes]] = []
