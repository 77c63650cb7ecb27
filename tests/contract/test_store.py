"""One contract for every WindowStore: the Redis one (real server) and the in-memory one."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from stream_app.store import MemoryWindowStore, PartitionState, RedisWindowStore

TTL = 3600


def _redis_url(request: pytest.FixtureRequest) -> str:
    """The suite-wide ``redis_url`` fixture when a conftest provides one, else the env."""
    try:
        return str(request.getfixturevalue("redis_url"))
    except pytest.FixtureLookupError:
        return os.environ.get("CHURN_TEST_REDIS_URL", "redis://127.0.0.1:6391/0")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryWindowStore()
        return
    url = _redis_url(request)
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    try:
        asyncio.run(_ping(url))
    except OSError as exc:
        pytest.skip(f"no Redis for the contract suite: {exc}")
    yield _Lazy(url, prefix)
    asyncio.run(_cleanup(url, prefix))


async def _ping(url: str) -> None:
    client = Redis.from_url(url)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _cleanup(url: str, prefix: str) -> None:
    client = Redis.from_url(url)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class _Lazy:
    """Creates the Redis client inside each test's own event loop."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix

    def open(self) -> RedisWindowStore:
        return RedisWindowStore(Redis.from_url(self.url), self.prefix)


def run(store: Any, scenario: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``scenario`` against the store in a fresh event loop, then close the store."""

    async def main() -> None:
        real = store.open() if isinstance(store, _Lazy) else store
        try:
            await scenario(real)
        finally:
            await real.close()

    asyncio.run(main())


def test_commit_is_fenced_by_offset(store: Any) -> None:
    async def scenario(s: Any) -> None:
        assert await s.load_partition("events", 0) is None
        assert await s.commit("events", 0, 10, {"a": b"1", "b": b"2"}, b"m1", ttl_s=TTL, due={})
        assert await s.load_partition("events", 0) == PartitionState(10, b"m1")
        again = await s.commit("events", 0, 10, {"a": b"X"}, b"m2", ttl_s=TTL, due={"a": 5.0})
        older = await s.commit("events", 0, 3, {"c": b"3"}, None, ttl_s=TTL, due={})
        assert not again and not older
        assert await s.load_users(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
        assert await s.load_partition("events", 0) == PartitionState(10, b"m1")
        assert await s.due_users("events", 0, 1e12, 10) == []
        assert await s.commit("events", 0, 11, {"a": b"\x00\xff"}, None, ttl_s=TTL, due={})
        assert await s.load_partition("events", 0) == PartitionState(11, b"m1")
        assert (await s.load_users(["a"]))["a"] == b"\x00\xff"
        assert await s.load_partition("events", 1) is None

    run(store, scenario)


def test_users_deleted_with_none_and_missing_users_absent(store: Any) -> None:
    async def scenario(s: Any) -> None:
        assert await s.load_users([]) == {}
        assert await s.commit("t", 2, 1, {"a": b"1", "b": b"2"}, None, ttl_s=TTL, due={})
        assert await s.commit("t", 2, 2, {"a": None, "z": None}, None, ttl_s=TTL, due={})
        assert await s.load_users(["a", "b", "nobody"]) == {"b": b"2"}
        state = await s.load_partition("t", 2)
        assert state == PartitionState(2, b"")

    run(store, scenario)


def test_due_index(store: Any) -> None:
    async def scenario(s: Any) -> None:
        due = {"a": 300.0, "b": 100.0, "c": 200.5, "d": 900.0}
        assert await s.commit("t", 0, 1, {}, None, ttl_s=TTL, due=due)
        assert await s.due_users("t", 0, 250.0, 10) == [("b", 100.0), ("c", 200.5)]
        assert await s.due_users("t", 0, 1000.0, 2) == [("b", 100.0), ("c", 200.5)]
        assert await s.commit("t", 0, 2, {}, None, ttl_s=TTL, due={"b": None, "a": 50.0})
        assert await s.due_users("t", 0, 250.0, 10) == [("a", 50.0), ("c", 200.5)]
        assert await s.due_users("t", 1, 1e12, 10) == []

    run(store, scenario)


def test_forget_user(store: Any) -> None:
    async def scenario(s: Any) -> None:
        assert await s.commit("t", 0, 1, {"a": b"1", "b": b"2"}, None, ttl_s=TTL, due={"a": 1.0})
        assert await s.commit("t", 1, 1, {}, None, ttl_s=TTL, due={"a": 2.0, "b": 3.0})
        assert await s.forget_user("a", [("t", 0), ("t", 1), ("t", 9)]) == 3
        assert await s.load_users(["a", "b"]) == {"b": b"2"}
        assert await s.due_users("t", 1, 10.0, 10) == [("b", 3.0)]
        assert await s.forget_user("a", [("t", 0)]) == 0

    run(store, scenario)


def test_ttl_is_set(store: Any) -> None:
    async def scenario(s: Any) -> None:
        assert await s.commit("t", 0, 1, {"a": b"1"}, None, ttl_s=TTL, due={})
        ttl = await s.user_ttl("a")
        assert ttl is not None and TTL - 5 < ttl <= TTL
        assert await s.user_ttl("missing") is None
        assert await s.commit("t", 0, 2, {"b": b"2"}, None, ttl_s=0, due={})
        assert await s.user_ttl("b") is None  # 0: no expiry (the worker expires in event time)
        with pytest.raises(ValueError):
            await s.commit("t", 0, 3, {"a": b"1"}, None, ttl_s=-1, due={})

    run(store, scenario)


def test_ping(store: Any) -> None:
    async def scenario(s: Any) -> None:
        assert await s.ping()

    run(store, scenario)


def test_memory_store_expires_users() -> None:
    now = [1000.0]
    s = MemoryWindowStore(clock=lambda: now[0])

    async def scenario() -> None:
        assert await s.commit("t", 0, 1, {"a": b"1"}, None, ttl_s=10, due={})
        now[0] += 11
        assert await s.load_users(["a"]) == {}

    asyncio.run(scenario())
