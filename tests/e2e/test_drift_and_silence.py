"""End to end: a hand-built stream where users drift, fall silent and come back.

Why by hand: the expected warnings follow from the operators' rules alone, so every level,
``event_time`` and ``previous_level`` below is derived in a comment from the events, and a
change in the engine's timing (ticks, watermark, onsets) shows up as a precise difference.

One partition, event clock, no holdout. The model thresholds are set to 1.0 so the score
never raises a level (a probability never reaches 1.0): the prior or the online model would
otherwise add model-raised level-1 warnings on rescore ticks, and the timeline would depend
on a score rather than on the rules this test is about. Rescore ticks still run (default
``rescore_after_days``); they matter because the activity-drop rule is also evaluated on
ticks, which is how a silent user gets level 1 at the first tick after they stop.

Day ``d`` is ``T0 + d days`` (``T0`` is a Monday, 00:00 UTC, so the windows' Monday weeks
start on days 0, 7, 14, ...). Every active day has a ``login`` at 10:00 and, unless said
otherwise, ``message_sent`` events from 10:30 on (an interaction).

* ``steady``  days 0..145, login + 2 messages a day: never warned.
* ``dropper`` days 0..34 login + 6 messages (7 a day), from day 35 login + 1 message (2 a
  day, a 71 % drop). Level 1 (activity drop) when recent-7-day activity first falls
  >= 30 % below the baseline (days 8..35 ago, scaled to 7 days):
  day 36 login: recent = days 30..34 (5 x 7) + day 35 (2) + 1 = 38, baseline 49 -> 22 %;
  day 37 login: recent = 4 x 7 + 2 x 2 + 1 = 33 -> 1 - 33/49 = 32.7 %  => level 1 at
  day 37 10:00. It recovers once the baseline has caught up: with ``a`` days of the old
  habit in the baseline, baseline = (7a + 2(28 - a)) / 4 and recent = 12 + k at the
  day's k-th event; day 64 (a = 5, baseline 20.25): 13 -> 35.8 %, 14 -> 30.9 %; day 65
  (a = 4, baseline 19): login 13 -> 31.6 %, message 14 -> 26.3 %  => recovered at
  day 65 10:30, 28 days 30 minutes after the episode began.
* ``ghost``   days 0..58, login + 1 message, then silent. Level 1 at the first tick after
  the silence, the rescore 7 days after the last event (day 65 10:30: recent 0 against a
  baseline of 14); level 2 at last interaction + 60 d (day 118 10:30); level 3 at last
  login + 90 d (day 148 10:00); lifecycle ``churned`` at last event + 90 d (day 148 10:30).
* ``lurker``  days 0..29 login + 1 message, days 30..145 login + a session at 18:00: the
  same two events a day (no drop) but no interaction after day 29 => level 2 only, at
  day 89 10:30, while still logging in.
* ``phoenix`` days 0..19 login + 1 message, silent, back on day 100 (login, message).
  Level 1 at the rescore tick of day 26 10:30, level 2 at day 79 10:30; the day-100 login
  is not an interaction (still level 2), the message is => exactly one ``recovered`` at
  day 100 10:30 with previous level 2, 74 days after the episode began.
* ``clock``   one event on day 151 12:00: only its event moves the watermark past the
  ghost's level-3 deadline (every active user stopped on day 145, and the clock stays
  before their first rescore tick 7 days later, so they get no warning from it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer
from tests_support import read_to_end as shared_read_to_end

from stream_app.records import validator
from stream_app.settings import Settings
from stream_app.tools.session import wait_drained

T0 = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
assert T0.weekday() == 0


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """Event time ``hour:minute`` on day ``day`` of the scenario."""
    return T0 + timedelta(days=day, hours=hour, minutes=minute)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def build_stream() -> list[tuple[str, str, datetime]]:
    """``(user, kind, time)`` of every event, in event-time order (see the module docstring)."""
    out: list[tuple[str, str, datetime]] = []

    def day_of(user: str, day: int, messages: int, evening_session: bool = False) -> None:
        out.append((user, "login", at(day, 10)))
        out.extend((user, "message_sent", at(day, 10, 30 + i)) for i in range(messages))
        if evening_session:
            out.append((user, "session_start", at(day, 18)))

    for d in range(146):
        day_of("steady", d, 2)
        day_of("dropper", d, 6 if d < 35 else 1)
        day_of("lurker", d, 1 if d < 30 else 0, evening_session=d >= 30)
    for d in range(59):
        day_of("ghost", d, 1)
    for d in [*range(20), 100]:
        day_of("phoenix", d, 1)
    out.append(("clock", "login", at(151, 12)))
    return sorted(out, key=lambda e: e[2])  # stable: same-time events keep their order


def encode(n: int, user: str, kind: str, t: datetime) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"{user}-{n}",
            "user_id": user,
            "event": kind,
            "occurred_at": iso(t),
            "properties": {"counterpart": "host-1"} if kind == "message_sent" else {},
        }
    )


def read_to_end(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` published so far, in offset order."""
    return shared_read_to_end(bootstrap, topic)


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(**{k[len("CHURN_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]


@pytest.fixture
def worker(running_worker: Callable[..., Any]) -> Iterator[Any]:
    yield running_worker(
        partitions=1,
        holdout_share=0.0,
        model_level1_probability=1.0,
        model_level2_probability=1.0,
    )


def test_drift_silence_and_return_reach_the_subscriber(worker: Any, kafka_bootstrap: str) -> None:
    env = worker.settings_env
    stream = build_stream()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks=1, linger_ms=10)
    for n, (user, kind, t) in enumerate(stream):
        producer.send(env["CHURN_TOPIC_EVENTS"], key=user.encode(), value=encode(n, user, kind, t))
    producer.flush()
    producer.close()
    wait_drained(settings_of(env), env["CHURN_TOPIC_EVENTS"], len(stream), timeout=60)

    check_warning, check_recovery = validator("churn_warning.v1"), validator("user_recovered.v1")
    warnings: list[dict[str, Any]] = []
    recoveries: list[dict[str, Any]] = []
    for m in read_to_end(kafka_bootstrap, env["CHURN_TOPIC_WARNINGS"]):
        headers = dict(m.headers)
        body = orjson.loads(m.value)
        assert m.key == body["user_id"].encode()
        assert headers["ce_specversion"] == b"1.0"
        if headers["ce_type"] == b"dev.churnwarnings.warning.v1":
            check_warning(body)
            assert headers["ce_id"] == body["warning_id"].encode()
            warnings.append(body)
        else:
            assert headers["ce_type"] == b"dev.churnwarnings.recovered.v1", headers
            check_recovery(body)
            recoveries.append(body)

    got = sorted(
        (w["user_id"], w["level"], when(w["event_time"]), w["previous_level"], w["episode"])
        for w in warnings
    )
    expected = sorted(
        [
            ("dropper", 1, at(37, 10), 0, 1),
            ("ghost", 1, at(65, 10, 30), 0, 1),
            ("ghost", 2, at(118, 10, 30), 1, 1),
            ("ghost", 3, at(148, 10), 2, 1),
            ("lurker", 2, at(89, 10, 30), 0, 1),
            ("phoenix", 1, at(26, 10, 30), 0, 1),
            ("phoenix", 2, at(79, 10, 30), 1, 1),
        ]
    )
    assert got == expected, worker.log()[-3000:]

    rules = {(w["user_id"], w["level"]): w for w in warnings}
    expected_rule = {1: "activity_drop", 2: "no_interaction", 3: "no_login"}
    for (user, level), w in rules.items():
        fired = {r["rule"] for r in w["triggers"]["rules"]}
        assert expected_rule[level] in fired, (user, level, w["triggers"])
        assert w["source"] == "rules" and w["triggers"]["model"] is None
        assert w["level_name"] == {1: "watch", 2: "warning", 3: "critical"}[level]
        assert w["reasons"], f"{user} level {level} has no reasons"
        assert all(r["feature"] for r in w["reasons"])
        action = w["suggested_action"]
        assert action["code"] and action["text"], action
        assert w["holdout"] is False
    assert len({(w["user_id"], w["level"], w["episode"]) for w in warnings}) == len(warnings)
    assert len({w["warning_id"] for w in warnings}) == len(warnings)

    back = sorted(
        (
            r["user_id"],
            when(r["event_time"]),
            r["previous_level"],
            r["episode"],
            when(r["episode_started_at"]),
            r["episode_duration_s"],
        )
        for r in recoveries
    )
    dropper_episode_s = timedelta(days=28, minutes=30).total_seconds()
    phoenix_episode_s = timedelta(days=74).total_seconds()
    assert back == [
        ("dropper", at(65, 10, 30), 1, 1, at(37, 10), dropper_episode_s),
        ("phoenix", at(100, 10, 30), 2, 1, at(26, 10, 30), phoenix_episode_s),
    ]
    assert not [w for w in warnings if w["user_id"] in ("steady", "clock")]

    check_tier = validator("tier_change.v1")
    lifecycle: dict[str, list[tuple[str | None, str, datetime]]] = {}
    for m in read_to_end(kafka_bootstrap, env["CHURN_TOPIC_TIERS"]):
        assert dict(m.headers)["ce_type"] == b"dev.churnwarnings.tier_changed.v1"
        body = orjson.loads(m.value)
        check_tier(body)
        assert m.key == body["user_id"].encode()
        if body["dimension"] == "lifecycle":
            lifecycle.setdefault(body["user_id"], []).append(
                (body["from"], body["to"], when(body["event_time"]))
            )
    assert set(lifecycle) == {"steady", "dropper", "ghost", "lurker", "phoenix", "clock"}
    for user, changes in lifecycle.items():
        assert changes[0][:2] == (None, "new"), (user, changes)
        for (_, before, t1), (after_from, _, t2) in itertools.pairwise(changes):
            assert after_from == before and t1 <= t2, (user, changes)
    ghost = lifecycle["ghost"]
    assert ghost[0][2] == at(0, 10)
    assert "at_risk" in [to for _, to, _ in ghost], ghost
    assert ghost[-1][1:] == ("churned", at(148, 10, 30)), ghost
    assert all(to != "churned" for u, cs in lifecycle.items() if u != "ghost" for _, to, _ in cs)
    assert lifecycle["steady"][-1][1] == "mature", lifecycle["steady"]
    assert worker.proc.poll() is None
