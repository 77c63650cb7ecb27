"""A seeded simulator of a social live-streaming app's event stream, with churn labels.

Real streams rarely come with the truth about who left and when, so the simulator
plays the dynamics operators describe and writes the truth beside the stream:

* users arrive every day; most newcomers either find their circle and settle into a
  habit, or fade within a week;
* established users are habitual, casual or paying (purchases, gifts sent);
* drifters are habitual until their activity falls over two to six weeks and stops,
  which is what gives warnings their lead time;
* each user lives in an IANA time zone and is most active in the local evening.

The same seed gives the same bytes, so an evaluation can be reproduced exactly.
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from stream_app.tools.sources import Event, format_time

DAY = 86_400
ZONES: tuple[tuple[str, str, float], ...] = (
    ("America/New_York", "US", 0.16),
    ("America/Los_Angeles", "US", 0.08),
    ("America/Sao_Paulo", "BR", 0.10),
    ("Europe/London", "GB", 0.08),
    ("Europe/Berlin", "DE", 0.10),
    ("Africa/Lagos", "NG", 0.06),
    ("Asia/Kolkata", "IN", 0.12),
    ("Asia/Jakarta", "ID", 0.12),
    ("Asia/Tokyo", "JP", 0.10),
    ("Australia/Sydney", "AU", 0.08),
)
ESTABLISHED = {"habitual": 0.42, "casual": 0.16, "payer": 0.14, "drifter": 0.28}
PLATFORMS = ("ios", "android", "web")
VERSIONS = ("5.2.0", "5.3.1", "5.4.0")
PRICES = (0.99, 4.99, 9.99, 19.99, 49.99)
GIFTS = (1, 5, 10, 50, 100)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How much to simulate.

    ``users`` counts everyone over the whole period: ``established_share`` of them are
    there on the first day, the rest arrive evenly day by day.
    """

    users: int = 600
    days: int = 56
    seed: int = 7
    start: date = date(2024, 1, 1)
    established_share: float = 0.5


@dataclass(frozen=True, slots=True)
class Truth:
    """What really happened to a user: the label evaluation scores warnings against.

    ``churn_time`` is the user's last own activity when they left inside the simulated
    period; users still around at the end (even if drifting) are not churned.
    """

    user_id: str
    persona: str
    joined_at: str
    churned: bool
    churn_time: str | None
    drift_started_at: str | None
    timezone: str


@dataclass(slots=True)
class _User:
    index: int
    user_id: str
    persona: str
    join_day: int
    leave_day: int | None
    drift_day: int | None
    zone: str
    context: dict[str, str]
    circle: list[int] = field(default_factory=list)
    rooms: tuple[str, ...] = ()
    last_ts: int | None = None


Raw = tuple[int, int, int, str, dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class _World:
    users: Sequence[_User]
    start: date
    start_ts: int
    rng: random.Random


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@cache
def _utc_offset(zone: str, day_ordinal: int) -> int:
    noon = datetime.fromordinal(day_ordinal).replace(hour=12, tzinfo=ZoneInfo(zone))
    offset = noon.utcoffset()
    return int(offset.total_seconds()) if offset else 0


def make_users(config: SimConfig, rng: random.Random) -> list[_User]:
    """Draw every user's persona, arrival, departure plan, time zone and device."""
    established = round(config.users * config.established_share)
    users = []
    for index in range(config.users):
        if index < established:
            persona, join_day = _weighted(rng, ESTABLISHED), 0
        else:
            persona = "settler" if rng.random() < 0.35 else "fader"
            join_day = 1 + (index - established) * max(config.days - 1, 1) // max(
                config.users - established, 1
            )
        leave_day, drift_day = _plan_departure(persona, join_day, config.days, rng)
        zone, country, _ = rng.choices(ZONES, weights=[z[2] for z in ZONES])[0]
        context = {
            "platform": rng.choice(PLATFORMS),
            "app_version": rng.choice(VERSIONS),
            "timezone": zone,
            "country": country,
        }
        user_id = f"u{index:06d}"
        users.append(_User(index, user_id, persona, join_day, leave_day, drift_day, zone, context))
    _make_circles(users, rng)
    return users


def _plan_departure(
    persona: str, join_day: int, days: int, rng: random.Random
) -> tuple[int | None, int | None]:
    if persona == "fader":
        return join_day + rng.randint(1, 7), None
    if persona == "drifter":
        drift_day = rng.randint(0, max(days - 21, 1))
        return drift_day + rng.randint(14, 42), drift_day
    return None, None


def _make_circles(users: list[_User], rng: random.Random) -> None:
    population = len(users)
    room_count = max(population // 25, 4)
    for user in users:
        size = 1 if user.persona == "fader" else rng.randint(3, 12)
        user.circle = [rng.randrange(population) for _ in range(size)]
        user.rooms = tuple(f"room-{rng.randrange(room_count):04d}" for _ in range(3))


def activity(user: _User, day: int) -> float:
    """Chance that ``user`` opens the app on ``day``; also scales how much they do.

    Drifters fall linearly from their habit to nothing between the start of their drift
    and their departure, so activity is visibly falling weeks before they leave.
    """
    if day < user.join_day or (user.leave_day is not None and day >= user.leave_day):
        return 0.0
    age = day - user.join_day
    base = {"habitual": 0.85, "payer": 0.9, "casual": 0.25, "drifter": 0.85}.get(user.persona)
    if user.persona == "settler":
        return 1.0 if age == 0 else min(0.85, 0.55 + 0.05 * age)
    if user.persona == "fader":
        return 1.0 if age == 0 else 0.6 * math.exp(-0.35 * age)
    if user.drift_day is not None and user.leave_day is not None and day >= user.drift_day:
        remaining = (user.leave_day - day) / (user.leave_day - user.drift_day)
        return 0.85 * max(remaining, 0.05)
    return base or 0.5


def _session_start(user: _User, day: int, start: date, rng: random.Random) -> int:
    ordinal = start.toordinal() + day
    local_hour = rng.gauss(20.5, 1.6) if rng.random() < 0.65 else rng.uniform(7.0, 23.5)
    local_s = int(min(max(local_hour, 0.0), 23.99) * 3600)
    midnight_utc = (ordinal - date(1970, 1, 1).toordinal()) * DAY
    return midnight_utc + local_s - _utc_offset(user.zone, ordinal)


def _session(user: _User, ts: int, level: float, world: _World) -> list[Raw]:
    rng = world.rng
    duration = max(30, int(rng.lognormvariate(math.log(600 * (0.4 + 0.6 * level)), 0.7)))
    out: list[Raw] = [(ts, user.index, 0, "session_start", None)]
    payer = user.persona == "payer"
    newcomer = user.persona in ("settler", "fader")
    for beat in range(1, duration // 300 + 1):
        out.append((ts + beat * 300, user.index, 0, "heartbeat", None))
    counts = {
        "room_join": _poisson(rng, 1.2),
        "live_view": _poisson(rng, 1.5 * level),
        "message_sent": _poisson(rng, 2.0 * level if user.persona != "fader" else 0.3),
        "comment": _poisson(rng, 1.0 * level),
        "like": _poisson(rng, 3.0 * level),
        "follow": _poisson(rng, 0.6 if newcomer else 0.1),
        "gift_sent": _poisson(rng, 0.5 if payer else 0.02),
        "purchase": _poisson(rng, 0.12 if payer else 0.005),
    }
    for kind, count in counts.items():
        for _ in range(count):
            at = ts + rng.randint(1, duration - 1)
            out.extend(_interaction(user, kind, at, world))
    out.append((ts + duration, user.index, 1, "session_end", {"duration_s": duration}))
    return out


def _interaction(user: _User, kind: str, at: int, world: _World) -> list[Raw]:
    rng = world.rng
    if kind in ("room_join", "live_view", "comment", "like"):
        return [(at, user.index, 0, kind, {"room": rng.choice(user.rooms)})]
    friend = world.users[rng.choice(user.circle)]
    if kind in ("message_sent", "follow"):
        return [(at, user.index, 0, kind, {"counterpart": friend.user_id})]
    if kind == "purchase":
        props = {"amount": rng.choice(PRICES), "currency": "USD", "quantity": 1}
        return [(at, user.index, 0, kind, props)]
    coins = rng.choice(GIFTS)
    sent = {"amount": coins, "currency": "coins", "counterpart": friend.user_id}
    out: list[Raw] = [(at, user.index, 0, "gift_sent", sent)]
    day = (at - world.start_ts) // DAY
    if friend.index != user.index and activity(friend, day) > 0:
        got = {"amount": coins, "currency": "coins", "counterpart": user.user_id}
        out.append((at + 1, friend.index, 0, "gift_received", got))
    return out


def _user_events(user: _User, days: int, world: _World) -> list[Raw]:
    out: list[Raw] = []
    rng = world.rng
    for day in range(user.join_day, days):
        level = activity(user, day)
        if level <= 0.0 or rng.random() >= level:
            continue
        for _ in range(1 + _poisson(rng, 1.2 * level)):
            start = _session_start(user, day, world.start, rng)
            out.extend(_session(user, start, level, world))
    return out


def simulate(config: SimConfig) -> tuple[list[Event], list[Truth]]:
    """Generate the event stream in event-time order and the truth about every user.

    The collector is paused while generating: the run allocates hundreds of thousands of
    small dicts and no cycles, and collection passes would cost about a third of the time.

    Examples
    --------
    >>> events, truth = simulate(SimConfig(users=20, days=7, seed=1))
    >>> events == sorted(events, key=lambda e: e["occurred_at"])
    True
    >>> events[0]["occurred_at"] >= "2024-01-01T00:00:00Z"
    True
    >>> {t.persona for t in truth} <= {"casual", "drifter", "fader", "habitual", "payer",
    ...                                "settler"}
    True
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        return _simulate(config)
    finally:
        if paused:
            gc.enable()


def _simulate(config: SimConfig) -> tuple[list[Event], list[Truth]]:
    rng = random.Random(config.seed)
    users = make_users(config, rng)
    world = _World(users, config.start, _day_ts(config.start, 0), rng)
    raw: list[Raw] = []
    for user in users:
        raw.extend(_user_events(user, config.days, world))
    end = _day_ts(config.start, config.days)
    raw = [r for r in raw if world.start_ts <= r[0] < end]
    raw.sort(key=lambda r: (r[0], r[1], r[2]))
    events = _to_events(raw, users, config.seed)
    return events, [_truth(user, config) for user in users]


def _day_ts(start: date, day: int) -> int:
    return (start.toordinal() + day - date(1970, 1, 1).toordinal()) * DAY


def _to_events(raw: Iterable[Raw], users: list[_User], seed: int) -> list[Event]:
    events: list[Event] = []
    stamp_cache: dict[int, str] = {}
    for number, (ts, index, _, kind, props) in enumerate(raw):
        user = users[index]
        if kind not in ("gift_received",):
            user.last_ts = ts
        day = ts - ts % DAY
        prefix = stamp_cache.get(day)
        if prefix is None:
            prefix = stamp_cache.setdefault(day, format_time(day)[:11])
        second = ts - day
        events.append(
            {
                "event_id": f"sim{seed}-{number:08d}",
                "user_id": user.user_id,
                "event": kind,
                "occurred_at": f"{prefix}{second // 3600:02d}:{second // 60 % 60:02d}:"
                f"{second % 60:02d}Z",
                "properties": props or {},
                "context": user.context,
            }
        )
    return events


def _truth(user: _User, config: SimConfig) -> Truth:
    churned = user.leave_day is not None and user.leave_day < config.days
    last = format_time(user.last_ts) if user.last_ts is not None else None
    drift = user.drift_day if user.drift_day is not None else None
    return Truth(
        user_id=user.user_id,
        persona=user.persona,
        joined_at=format_time(_day_ts(config.start, user.join_day)),
        churned=churned,
        churn_time=last if churned else None,
        drift_started_at=format_time(_day_ts(config.start, drift)) if drift is not None else None,
        timezone=user.zone,
    )


def write_events(events: Iterable[Event], path: str | Path) -> int:
    """Write events as JSON lines; returns how many were written."""
    count = 0
    with open(path, "wb") as handle:
        for event in events:
            handle.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    return count


def write_truth(rows: Sequence[Truth], path: str | Path) -> None:
    """Write the truth as JSON (``*.json``) or CSV (anything else)."""
    records = [asdict(row) for row in rows]
    if str(path).endswith(".json"):
        Path(path).write_bytes(orjson.dumps(records, option=orjson.OPT_INDENT_2))
        return
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(Truth.__dataclass_fields__))
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if v is None else v for k, v in record.items()})


def run_simulate(
    events_path: str | Path,
    truth_path: str | Path,
    *,
    users: int = 600,
    days: int = 56,
    seed: int = 7,
    start: str | date = "2024-01-01",
) -> dict[str, Any]:
    """Simulate and write the stream and its truth; returns a summary for printing."""
    first_day = start if isinstance(start, date) else date.fromisoformat(start)
    began = time.monotonic()
    events, truth = simulate(SimConfig(users=users, days=days, seed=seed, start=first_day))
    written = write_events(events, events_path)
    write_truth(truth, truth_path)
    personas: dict[str, int] = {}
    for row in truth:
        personas[row.persona] = personas.get(row.persona, 0) + 1
    return {
        "events": written,
        "users": len(truth),
        "churned": sum(row.churned for row in truth),
        "personas": dict(sorted(personas.items())),
        "start": first_day.isoformat(),
        "end": (first_day + timedelta(days=days)).isoformat(),
        "seconds": round(time.monotonic() - began, 2),
        "events_path": str(events_path),
        "truth_path": str(truth_path),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the simulator options on a (sub)parser."""
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--days", type=int, default=56)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", default="2024-01-01", help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--out", default="sim-events.jsonl", help="event stream (JSONL)")
    parser.add_argument("--truth", default="sim-truth.csv", help="labels (.csv or .json)")


def run(args: argparse.Namespace) -> int:
    """Simulate from parsed arguments and print a JSON summary."""
    summary = run_simulate(
        args.out, args.truth, users=args.users, days=args.days, seed=args.seed, start=args.start
    )
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0
