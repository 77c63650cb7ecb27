"""Where per-user window blobs and per-partition state live between batches.

Why a Protocol: the engine only needs "load blobs, commit a batch atomically, fenced by the
Kafka offset", so tests and local runs use :class:`MemoryWindowStore` and production uses
:class:`RedisWindowStore` with the same semantics (one contract suite covers both).

Keys (``prefix`` e.g. ``churn:``)::

    {prefix}u:{user_id}              user blob (string, expires after ttl_s)
    {prefix}p:{{topic:partition}}    partition hash: offset, blob
    {prefix}due:{{topic:partition}}  sorted set user -> next absence deadline (event time)

Single-node Redis is assumed.  The partition keys share a hash tag; a Redis Cluster would
also need the user keys tagged with their partition, since the commit script touches all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from redis.asyncio import Redis

__all__ = [
    "MemoryWindowStore",
    "PartitionState",
    "RedisWindowStore",
    "StaleEpoch",
    "WindowStore",
]


@dataclass(frozen=True, slots=True)
class PartitionState:
    """Last applied Kafka offset of a partition and its opaque blob (model checkpoint...)."""

    offset: int
    blob: bytes
    epoch: int = 0


class StaleEpoch(RuntimeError):
    """The partition's state was changed from outside (a privacy request): reload it."""


class WindowStore(Protocol):
    """Async storage of user blobs and partition state, committed per batch."""

    async def load_users(self, user_ids: Sequence[str]) -> dict[str, bytes]:
        """Blobs of the users that exist (missing users are absent), in one round trip."""
        ...

    async def load_partition(self, topic: str, partition: int) -> PartitionState | None:
        """Return the partition's committed offset and blob (None before any commit)."""
        ...

    async def commit(
        self,
        topic: str,
        partition: int,
        offset: int,
        users: Mapping[str, bytes | None],
        partition_blob: bytes | None,
        *,
        ttl_s: int,
        due: Mapping[str, float | None],
        labels: Mapping[str, bytes | None] = ...,
        same_offset: bool = False,
        epoch: int | None = None,
        outbox: Mapping[str, bytes] | None = None,
    ) -> bool:
        """Atomically apply a batch unless ``offset`` was already committed.

        Returns False (and changes nothing) when the stored offset is ``>= offset``, i.e.
        on redelivery.  Otherwise sets each user blob with expiry ``ttl_s`` (0: none, as the
        worker expires silent users itself, in event time; None deletes),
        the partition blob when given, the due index (None removes), the label entries
        (None removes) and the offset.  ``same_offset`` commits work that consumed no
        record (a wall-clock sweep): it is refused only when the stored offset is newer.
        With ``epoch``, raises :class:`StaleEpoch` (changing nothing) when the partition's
        epoch differs: someone (``forget_user``) changed its state since it was loaded.
        ``outbox`` (the records the batch will publish, keyed ``user NUL index``) replaces
        the partition's outbox, so they can be published again after a crash between this
        commit and their delivery.
        """
        ...

    async def load_outbox(self, topic: str, partition: int) -> list[bytes]:
        """The partition's outbox entries, in publishing order."""
        ...

    async def load_labels(self, topic: str, partition: int) -> list[bytes]:
        """The partition's pending label entries (opaque values, any order)."""
        ...

    async def due_users(
        self, topic: str, partition: int, until: float, limit: int
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` users whose deadline is ``<= until``, earliest first."""
        ...

    async def forget_user(self, user_id: str, partitions: Sequence[tuple[str, int]]) -> int:
        """Delete everything stored for a user (privacy requests); returns keys/entries."""
        ...

    async def ping(self) -> bool:
        """Return True when the backend answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


_COMMIT = """
if ARGV[8] ~= '' and (redis.call('HGET', KEYS[1], 'epoch') or '0') ~= ARGV[8] then
  return -1
end
local stored = redis.call('HGET', KEYS[1], 'offset')
if stored then
  local s, o = tonumber(stored), tonumber(ARGV[1])
  if s > o or (s == o and ARGV[7] ~= '1') then return 0 end
end
local ttl, n_users = ARGV[2], tonumber(ARGV[4])
local n_due, n_labels = tonumber(ARGV[5]), tonumber(ARGV[6])
local a = 10
for i = 1, n_users do
  local key = KEYS[4 + i]
  if ARGV[a] == 's' and ttl == '0' then
    redis.call('SET', key, ARGV[a + 1])
  elseif ARGV[a] == 's' then
    redis.call('SET', key, ARGV[a + 1], 'EX', ttl)
  else
    redis.call('DEL', key)
  end
  a = a + 2
end
for i = 1, n_due do
  if ARGV[a + 1] == '' then
    redis.call('ZREM', KEYS[2], ARGV[a])
  else
    redis.call('ZADD', KEYS[2], ARGV[a + 1], ARGV[a])
  end
  a = a + 2
end
for i = 1, n_labels do
  if ARGV[a + 1] == 'd' then
    redis.call('HDEL', KEYS[3], ARGV[a])
  else
    redis.call('HSET', KEYS[3], ARGV[a], ARGV[a + 2])
  end
  a = a + 3
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'blob', ARGV[a])
  a = a + 1
end
local n_out = tonumber(ARGV[9])
if n_out >= 0 then
  redis.call('DEL', KEYS[4])
  for i = 1, n_out do
    redis.call('HSET', KEYS[4], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
end
redis.call('HSET', KEYS[1], 'offset', ARGV[1])
return 1
"""


class RedisWindowStore:
    """:class:`WindowStore` on Redis; the client must use ``decode_responses=False``.

    ``commit`` is one EVALSHA of a Lua script, so a batch is applied all-or-nothing and a
    redelivered batch (offset not newer) is ignored.
    """

    def __init__(self, client: Redis, prefix: str = "churn:") -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisWindowStore needs a client with decode_responses=False")
        self._r = client
        self._prefix = prefix
        self._commit = client.register_script(_COMMIT)

    def _user(self, user_id: str) -> str:
        return f"{self._prefix}u:{user_id}"

    def _part(self, topic: str, partition: int) -> str:
        return f"{self._prefix}p:{{{topic}:{partition}}}"

    def _due(self, topic: str, partition: int) -> str:
        return f"{self._prefix}due:{{{topic}:{partition}}}"

    def _labels(self, topic: str, partition: int) -> str:
        return f"{self._prefix}labels:{{{topic}:{partition}}}"

    def _outbox(self, topic: str, partition: int) -> str:
        return f"{self._prefix}outbox:{{{topic}:{partition}}}"

    async def load_labels(self, topic: str, partition: int) -> list[bytes]:
        return cast(list[bytes], await self._r.hvals(self._labels(topic, partition)))

    async def load_users(self, user_ids: Sequence[str]) -> dict[str, bytes]:
        if not user_ids:
            return {}
        raw = await self._r.mget([self._user(u) for u in user_ids])
        blobs = cast(list[bytes | None], raw)
        return {u: b for u, b in zip(user_ids, blobs, strict=True) if b is not None}

    async def load_partition(self, topic: str, partition: int) -> PartitionState | None:
        raw = await self._r.hmget(self._part(topic, partition), ["offset", "blob", "epoch"])
        row = cast(list[bytes | None], raw)
        if row[0] is None and row[2] is None:
            return None
        offset = int(row[0]) if row[0] is not None else -1
        return PartitionState(offset, row[1] or b"", int(row[2] or 0))

    async def load_outbox(self, topic: str, partition: int) -> list[bytes]:
        raw = cast(dict[bytes, bytes], await self._r.hgetall(self._outbox(topic, partition)))
        return [raw[k] for k in sorted(raw, key=_outbox_order)]

    async def commit(
        self,
        topic: str,
        partition: int,
        offset: int,
        users: Mapping[str, bytes | None],
        partition_blob: bytes | None,
        *,
        ttl_s: int,
        due: Mapping[str, float | None],
        labels: Mapping[str, bytes | None] | None = None,
        same_offset: bool = False,
        epoch: int | None = None,
        outbox: Mapping[str, bytes] | None = None,
    ) -> bool:
        if ttl_s < 0:
            raise ValueError("ttl_s must not be negative (0: no expiry)")
        labels = labels or {}
        keys = [
            self._part(topic, partition),
            self._due(topic, partition),
            self._labels(topic, partition),
            self._outbox(topic, partition),
        ]
        keys += [self._user(u) for u in users]
        args: list[bytes | str | int] = [offset, ttl_s, int(partition_blob is not None)]
        args += [len(users), len(due), len(labels), int(same_offset)]
        args.append("" if epoch is None else str(epoch))
        args.append(-1 if outbox is None else len(outbox))
        for blob in users.values():
            args += ("d", b"") if blob is None else ("s", blob)
        for user, deadline in due.items():
            args += (user, "" if deadline is None else repr(float(deadline)))
        for entry, value in labels.items():
            args += (entry, "d", b"") if value is None else (entry, "s", value)
        if partition_blob is not None:
            args.append(partition_blob)
        for entry, value in (outbox or {}).items():
            args += (entry, value)
        result = await self._commit(keys=keys, args=args)
        if result == -1:
            raise StaleEpoch(f"partition {topic}:{partition} changed since it was loaded")
        return bool(result)

    async def due_users(
        self, topic: str, partition: int, until: float, limit: int
    ) -> list[tuple[str, float]]:
        raw = await self._r.zrangebyscore(
            self._due(topic, partition), "-inf", repr(float(until)), 0, limit, withscores=True
        )
        rows = cast(list[tuple[bytes, float]], raw)
        return [(m.decode(), float(s)) for m, s in rows]

    async def forget_user(self, user_id: str, partitions: Sequence[tuple[str, int]]) -> int:
        pattern = _glob_escape(user_id) + "\x00*"
        entries = {
            (t, p): [f async for f, _ in self._r.hscan_iter(self._labels(t, p), match=pattern)]
            for t, p in partitions
        }
        outbox = {
            (t, p): [f async for f, _ in self._r.hscan_iter(self._outbox(t, p), match=pattern)]
            for t, p in partitions
        }
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(self._user(user_id))
            for topic, partition in partitions:
                pipe.zrem(self._due(topic, partition), user_id)
                if entries[(topic, partition)]:
                    pipe.hdel(self._labels(topic, partition), *entries[(topic, partition)])
                if outbox[(topic, partition)]:
                    pipe.hdel(self._outbox(topic, partition), *outbox[(topic, partition)])
            for topic, partition in partitions:
                pipe.hincrby(self._part(topic, partition), "epoch", 1)
            results = await pipe.execute()
            return sum(int(n) for n in results[: len(results) - len(partitions)])

    async def user_ttl(self, user_id: str) -> float | None:
        """Seconds until the user's blob expires (None if missing or without expiry)."""
        ms = await self._r.pttl(self._user(user_id))
        return None if ms < 0 else ms / 1000

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except (OSError, ConnectionError):
            return False

    async def close(self) -> None:
        await self._r.aclose()


@dataclass
class _Part:
    offset: int | None = None
    blob: bytes = b""
    due: dict[str, float] = field(default_factory=dict)
    labels: dict[str, bytes] = field(default_factory=dict)
    epoch: int = 0
    outbox: dict[str, bytes] = field(default_factory=dict)


def _outbox_order(entry: bytes | str) -> tuple[int, bytes | str]:
    """Outbox entries sort by their index (after the user id and a NUL)."""
    sep = b"\x00" if isinstance(entry, bytes) else "\x00"
    return int(entry.rsplit(sep, 1)[1]), entry  # type: ignore[arg-type]


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class MemoryWindowStore:
    """In-process :class:`WindowStore` with the same semantics, for tests and local runs.

    ``clock`` (epoch seconds) drives the expiry of user blobs.

    >>> import asyncio
    >>> s = MemoryWindowStore()
    >>> asyncio.run(s.commit("t", 0, 5, {"u": b"x"}, None, ttl_s=60, due={"u": 1.0}))
    True
    >>> asyncio.run(s.commit("t", 0, 5, {"u": None}, None, ttl_s=60, due={}))
    False
    >>> asyncio.run(s.load_users(["u", "v"]))
    {'u': b'x'}
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._users: dict[str, tuple[bytes, float]] = {}
        self._parts: dict[tuple[str, int], _Part] = {}

    def _live(self, user_id: str) -> bytes | None:
        item = self._users.get(user_id)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._users[user_id]
            return None
        return item[0]

    async def load_users(self, user_ids: Sequence[str]) -> dict[str, bytes]:
        found = {u: self._live(u) for u in user_ids}
        return {u: b for u, b in found.items() if b is not None}

    async def load_partition(self, topic: str, partition: int) -> PartitionState | None:
        part = self._parts.get((topic, partition))
        if part is None or (part.offset is None and not part.epoch):
            return None
        offset = -1 if part.offset is None else part.offset
        return PartitionState(offset, part.blob, part.epoch)

    async def load_outbox(self, topic: str, partition: int) -> list[bytes]:
        part = self._parts.get((topic, partition))
        if part is None:
            return []
        return [part.outbox[k] for k in sorted(part.outbox, key=_outbox_order)]

    async def commit(
        self,
        topic: str,
        partition: int,
        offset: int,
        users: Mapping[str, bytes | None],
        partition_blob: bytes | None,
        *,
        ttl_s: int,
        due: Mapping[str, float | None],
        labels: Mapping[str, bytes | None] | None = None,
        same_offset: bool = False,
        epoch: int | None = None,
        outbox: Mapping[str, bytes] | None = None,
    ) -> bool:
        if ttl_s < 0:
            raise ValueError("ttl_s must not be negative (0: no expiry)")
        part = self._parts.setdefault((topic, partition), _Part())
        if epoch is not None and part.epoch != epoch:
            raise StaleEpoch(f"partition {topic}:{partition} changed since it was loaded")
        stored = part.offset
        if stored is not None and (stored > offset or (stored == offset and not same_offset)):
            return False
        for entry, value in (labels or {}).items():
            if value is None:
                part.labels.pop(entry, None)
            else:
                part.labels[entry] = bytes(value)
        expires = self._clock() + ttl_s if ttl_s else float("inf")
        for user, blob in users.items():
            if blob is None:
                self._users.pop(user, None)
            else:
                self._users[user] = (bytes(blob), expires)
        for user, deadline in due.items():
            if deadline is None:
                part.due.pop(user, None)
            else:
                part.due[user] = float(deadline)
        if partition_blob is not None:
            part.blob = bytes(partition_blob)
        if outbox is not None:
            part.outbox = {k: bytes(v) for k, v in outbox.items()}
        part.offset = offset
        return True

    async def due_users(
        self, topic: str, partition: int, until: float, limit: int
    ) -> list[tuple[str, float]]:
        part = self._parts.get((topic, partition))
        if part is None:
            return []
        rows = sorted((s, u) for u, s in part.due.items() if s <= until)
        return [(u, s) for s, u in rows[: max(limit, 0)]]

    async def forget_user(self, user_id: str, partitions: Sequence[tuple[str, int]]) -> int:
        count = int(self._live(user_id) is not None)
        self._users.pop(user_id, None)
        for key in partitions:
            part = self._parts.get(key)
            if part is None:
                continue
            if part.due.pop(user_id, None) is not None:
                count += 1
            mine = [e for e in part.labels if e.startswith(user_id + "\x00")]
            for entry in mine:
                del part.labels[entry]
            count += len(mine)
            for entry in [e for e in part.outbox if e.startswith(user_id + "\x00")]:
                del part.outbox[entry]
        for key in partitions:
            self._parts.setdefault(key, _Part()).epoch += 1
        return count

    async def load_labels(self, topic: str, partition: int) -> list[bytes]:
        part = self._parts.get((topic, partition))
        return list(part.labels.values()) if part else []

    async def user_ttl(self, user_id: str) -> float | None:
        """Seconds until the user's blob expires (None if missing or without expiry)."""
        if self._live(user_id) is None or self._users[user_id][1] == float("inf"):
            return None
        return self._users[user_id][1] - self._clock()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
