"""The simulator is reproducible and plays the dynamics evaluation relies on."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from stream_app.tools.simulate import SimConfig, Truth, run_simulate, simulate
from stream_app.tools.sources import Event, load_events, parse_time

SMALL = SimConfig(users=200, days=42, seed=3)


@pytest.fixture(scope="module")
def world() -> tuple[list[Event], list[Truth]]:
    return simulate(SMALL)


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path: Path) -> None:
    outputs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        events, truth = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.csv"
        run_simulate(events, truth, users=80, days=21, seed=seed)
        outputs.append((events.read_bytes(), truth.read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[2][0]


def test_stream_is_valid_and_in_event_time_order(
    world: tuple[list[Event], list[Truth]], tmp_path: Path
) -> None:
    events, _ = world
    path = tmp_path / "sim.jsonl"
    from stream_app.tools.simulate import write_events

    write_events(events, path)
    loaded = load_events(path)
    assert loaded.bad_rows == []
    assert [e["event_id"] for e in loaded.events] == [e["event_id"] for e in events]
    assert len({e["event_id"] for e in events}) == len(events)
    start, end = parse_time("2024-01-01T00:00:00Z"), parse_time("2024-02-12T00:00:00Z")
    assert all(start <= parse_time(e["occurred_at"]) < end for e in events)


def test_event_kinds_and_properties(world: tuple[list[Event], list[Truth]]) -> None:
    events, _ = world
    kinds = Counter(e["event"] for e in events)
    expected = {
        "session_start", "session_end", "heartbeat", "room_join", "live_view", "message_sent",
        "comment", "like", "follow", "gift_sent", "gift_received", "purchase",
    }  # fmt: skip
    assert set(kinds) == expected
    assert 0 <= kinds["session_start"] - kinds["session_end"] < 20
    for event in events:
        props = event["properties"]
        if event["event"] == "session_end":
            assert props["duration_s"] > 0
        if event["event"] == "purchase":
            assert props["amount"] > 0 and props["currency"] == "USD"
        if event["event"] == "message_sent":
            assert props["counterpart"].startswith("u")
        ZoneInfo(event["context"]["timezone"])


def test_some_users_churn_and_labels_match_the_stream(
    world: tuple[list[Event], list[Truth]],
) -> None:
    events, truth = world
    churned = [t for t in truth if t.churned]
    assert 0.15 < len(churned) / len(truth) < 0.7
    last_own: dict[str, str] = {}
    for event in events:
        if event["event"] != "gift_received":
            last_own[event["user_id"]] = event["occurred_at"]
    for row in churned:
        assert row.churn_time == last_own[row.user_id]
    assert {t.persona for t in churned} <= {"fader", "drifter"}
    assert not any(t.churned for t in truth if t.persona in ("habitual", "payer"))


def test_drifters_fade_out_before_they_leave(world: tuple[list[Event], list[Truth]]) -> None:
    events, truth = world
    drifters = {
        t.user_id: t
        for t in truth
        if t.persona == "drifter" and t.churned and t.drift_started_at and t.churn_time
    }
    assert len(drifters) >= 5
    early = late = 0
    for event in events:
        row = drifters.get(event["user_id"])
        if row is None or event["event"] != "session_start":
            continue
        start = parse_time(row.drift_started_at or "")
        span = parse_time(row.churn_time or "") - start
        moment = parse_time(event["occurred_at"])
        if start <= moment < start + span / 3:
            early += 1
        elif moment >= start + 2 * span / 3:
            late += 1
    assert late < 0.6 * early


def test_newcomers_arrive_every_day(world: tuple[list[Event], list[Truth]]) -> None:
    _, truth = world
    joined = {t.joined_at[:10] for t in truth if t.persona in ("fader", "settler")}
    assert len(joined) >= SMALL.days - 2


def test_activity_peaks_in_the_local_evening(world: tuple[list[Event], list[Truth]]) -> None:
    events, _ = world
    hours: Counter[int] = Counter()
    for event in events:
        if event["event"] == "session_start":
            moment = datetime.fromtimestamp(parse_time(event["occurred_at"]), UTC)
            hours[moment.astimezone(ZoneInfo(event["context"]["timezone"])).hour] += 1
    evening = sum(hours[h] for h in range(18, 24))
    morning = sum(hours[h] for h in range(6, 12))
    assert evening > 2 * morning


def test_default_size_is_large_enough() -> None:
    events, _ = simulate(SimConfig(users=400, days=56, seed=1))
    assert len(events) >= 200_000 * 400 // 600 * 0.8
