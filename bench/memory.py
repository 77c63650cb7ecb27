"""Redis memory per user for 90 days of typical social-app activity.

Why: a user's state must stay within about 1 KB of Redis memory per user, measured as
``used_memory`` growth / users: the whole user record (windows, warning state, tiers, warning
history) with its key and expiry, its due-index entry, and its share of the partitions'
pending label snapshots (a fixed pool, capped per partition, written at its cap).

Run against a fresh, empty Redis you own (the script flushes nothing, it measures growth)::

    redis-server --port 6391 --save '' --appendonly no --daemonize yes
    python -m bench.memory --users 100000 --redis-url redis://127.0.0.1:6391/0

Users are simulated with a seeded RNG, applied through :class:`WindowsBuilder` (the worker's
hot path), encoded once and written in batches through ``RedisWindowStore.commit`` together
with a due-index entry, exactly as the worker would.  Progress goes to stderr, the JSON
result to stdout.  ``--workers`` simulates in parallel processes.  Simulating 100,000 users
(~180 M events) takes a while in pure Python; ``--distinct N`` simulates only N users and
reuses their blobs, in order, under the remaining user ids (Redis memory depends on blob
sizes, not contents, so the figure stays representative).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from redis.asyncio import Redis

from stream_app import userrecord
from stream_app.alerts import WarningState
from stream_app.features import FeatureConfig, features
from stream_app.model.labels import LabelBook, LabelConfig
from stream_app.records import AppEvent
from stream_app.store import RedisWindowStore
from stream_app.tiers import TierState
from stream_app.userrecord import HistoryItem, UserRecord
from stream_app.windows import UserWindows, WindowConfig, WindowsBuilder

DAY = 86_400
START = 1_700_006_400.0
ACTIONS = (
    ("room_join", 1.0),
    ("live_view", 1.5),
    ("message_sent", 2.0),
    ("like", 2.0),
    ("comment", 0.7),
    ("follow", 0.1),
    ("gift_received", 0.15),
    ("gift_sent", 0.05),
    ("purchase", 0.02),
)


def simulate(user: str, days: int, seed: int) -> Iterator[AppEvent]:
    """Events of one user: active on most days, a few sessions a day, several actions each."""
    rng = random.Random(seed)
    activeness = rng.uniform(0.5, 0.95)
    sessions_per_day = rng.uniform(1.5, 4.5)
    offset = rng.choice((0, 3600, 7200, -18_000, 19_800, 28_800))
    rooms = [f"room{rng.randrange(500)}" for _ in range(rng.randrange(3, 30))]
    n = 0
    for day in range(days):
        if rng.random() > activeness:
            continue
        starts = sorted(rng.uniform(0, DAY - 3600) for _ in range(_poisson(rng, sessions_per_day)))
        for start in starts:
            t = START + day * DAY + start
            n += 1
            yield AppEvent(f"{user}-{n}", user, "session_start", t, {}, {}, offset)
            for kind, rate in ACTIONS:
                for _ in range(_poisson(rng, rate)):
                    t += rng.uniform(5, 120)
                    n += 1
                    props = {"room_id": rng.choice(rooms), "amount": round(rng.uniform(1, 20), 2)}
                    yield AppEvent(f"{user}-{n}", user, kind, t, props, {}, offset)
            n += 1
            dur = rng.uniform(60, 3000)
            yield AppEvent(
                f"{user}-{n}", user, "session_end", t + dur, {"duration_s": dur}, {}, offset
            )


def _poisson(rng: random.Random, lam: float) -> int:
    k, p, limit = 0, rng.random(), 2.718281828459045**-lam
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _record(state: UserWindows) -> bytes:
    """The whole user record the worker stores: windows plus a typical warning state (one
    past episode), tiers, a full warning history and the last evaluation time."""
    alert = WarningState(
        level=0,
        episode=1,
        started_at=state.first_seen,
        emitted=frozenset({1}),
        last_emit_at=state.first_seen,
    )
    history = tuple(HistoryItem(level, state.first_seen) for level in (1, 2, 0))
    record = UserRecord(
        state,
        alert,
        TierState("mature", "loyal", (4, 4, 3), (30, 40, 50)),
        history,
        state.last_seen,
    )
    return userrecord.encode(record)


def _label_pool(client_rows: list[tuple[str, bytes, float]], cap: int) -> list[bytes]:
    """A partition's pending label snapshots at their cap, with real feature vectors."""
    book = LabelBook(LabelConfig(max_pending=cap))
    cfg = FeatureConfig()
    for n in range(cap):
        user, blob, _ = client_rows[n % len(client_rows)]
        state = userrecord.decode(blob).windows
        book.on_score(f"{user}-{n}", state.last_seen, features(state, state.last_seen, cfg))
    return [v for v in book.drain_changes().values() if v is not None]


def build(
    first: int, count: int, days: int, seed: int, distinct: int
) -> tuple[list[tuple[str, bytes, float]], int]:
    """Final blobs of users ``first..first+count``; also returns the number of events."""
    cfg = WindowConfig.social_app()
    out: list[tuple[str, bytes, float]] = []
    events = 0
    for i in range(first, first + count):
        user = f"user{i % distinct:07d}"
        builder = WindowsBuilder(cfg)
        for ev in simulate(user, days, seed * 1_000_003 + i):
            builder.apply(ev)
            events += 1
        if builder.last_ms is None:
            builder.apply(AppEvent(f"{user}-0", user, "login", START))
        state = builder.freeze()
        out.append((f"user{i:07d}", _record(state), state.last_seen + 3 * DAY))
    return out, events


async def run(args: argparse.Namespace) -> dict[str, float]:
    client = Redis.from_url(args.redis_url)
    store = RedisWindowStore(client, prefix=args.prefix)
    before = int((await client.info("memory"))["used_memory"])
    started, events, blob_bytes, offsets = time.perf_counter(), 0, 0, [0] * args.partitions
    distinct = min(args.distinct or args.users, args.users)
    cache: dict[int, list[tuple[str, bytes, float]]] = {}
    chunks = range(0, args.users, args.batch)
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = [
            pool.submit(build, c, min(args.batch, distinct - c), args.days, args.seed, distinct)
            for c in chunks
            if c < distinct
        ]
        for n, c in enumerate(chunks, 1):
            if c < distinct:
                users, count = jobs[n - 1].result()
                cache[c] = users
            else:
                users, count = _reuse(cache, c, min(args.batch, args.users - c), distinct), 0
            events += count
            blob_bytes += sum(len(b) for _, b, _ in users)
            await _commit(store, users, offsets, args.partitions)
            if n % 10 == 0 or n == len(chunks):
                done = min(n * args.batch, args.users)
                rate = events / (time.perf_counter() - started)
                print(f"{done} users, {events} events, {rate:,.0f} ev/s", file=sys.stderr)
    users_done = int((await client.info("memory"))["used_memory"])
    pool = _label_pool(next(iter(cache.values())), args.label_cap)
    for part in range(args.partitions):
        offsets[part] += 1
        labels: dict[str, bytes | None] = {f"p{part}-{n}": v for n, v in enumerate(pool)}
        await store.commit(
            "app-events", part, offsets[part], {}, None, ttl_s=0, due={}, labels=labels
        )
    pool_bytes = 0
    for part in range(args.partitions):
        key = f"{args.prefix}labels:{{app-events:{part}}}"
        pool_bytes += int(await client.memory_usage(key, samples=0) or 0)
    await store.close()
    return {
        "bytes_per_user": round((users_done - before + pool_bytes) / args.users, 1),
        "user_state_bytes_per_user": round((users_done - before) / args.users, 1),
        "label_pool_bytes": pool_bytes,
        "label_cap_per_partition": args.label_cap,
        "users": args.users,
        "avg_blob_bytes": round(blob_bytes / args.users, 1),
        "events_per_user": round(events / distinct, 1),
        "distinct_simulated": distinct,
        "days": args.days,
        "used_memory_growth_users": users_done - before,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _reuse(
    cache: dict[int, list[tuple[str, bytes, float]]], first: int, count: int, distinct: int
) -> list[tuple[str, bytes, float]]:
    rows = [r for users in cache.values() for r in users]
    out = []
    for i in range(first, first + count):
        _, blob, deadline = rows[i % distinct]
        out.append((f"user{i:07d}", blob, deadline))
    return out


async def _commit(
    store: RedisWindowStore,
    users: list[tuple[str, bytes, float]],
    offsets: list[int],
    partitions: int,
) -> None:
    by_part: dict[int, list[tuple[str, bytes, float]]] = {}
    for row in users:
        by_part.setdefault(int(row[0][4:]) % partitions, []).append(row)
    for part, rows in by_part.items():
        offsets[part] += len(rows)
        blobs: dict[str, bytes | None] = {u: b for u, b, _ in rows}
        due: dict[str, float | None] = {u: d for u, _, d in rows}
        await store.commit("app-events", part, offsets[part], blobs, None, ttl_s=0, due=due)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument(
        "--label-cap",
        type=int,
        default=5_000,
        help="pending label snapshots per partition (the worker's default cap)",
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6391/0")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--distinct", type=int, default=0, help="simulate only N users (0 = all)")
    p.add_argument("--prefix", default="bench:")
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
