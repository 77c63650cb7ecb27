"""Property tests for the per-user windows: order independence, lateness, codec, totals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.records import AppEvent
from stream_app.windows import (
    Outcome,
    UserWindows,
    WindowConfig,
    WindowsBuilder,
    apply_event,
    decode,
    encode,
    expired,
    local_day,
)

DAY = 86_400
T0 = 1_700_000_000.0
CFG = WindowConfig.social_app(lateness_s=6 * 3600)
KINDS = ("session_start", "session_end", "like", "message_sent", "purchase", "gift_sent", "x")


@st.composite
def events(draw: st.DrawFn, max_days: int = 120) -> list[AppEvent]:
    """Distinct events of one user over up to ``max_days`` days."""
    n = draw(st.integers(1, 40))
    offset = draw(st.sampled_from([None, 0, 3600, -18_000, 19_800]))
    out = []
    for i in range(n):
        span = draw(st.sampled_from([max_days * DAY, 2 * DAY, 8 * 3600]))
        t = T0 + draw(st.floats(0, span, allow_nan=False))
        kind = draw(st.sampled_from(KINDS))
        props: dict[str, object] = {}
        if kind in ("purchase", "gift_sent"):
            props["amount"] = draw(st.sampled_from([0.99, 4.5, 12.0, -3.0, "n/a"]))
        if kind == "session_end":
            props["duration_s"] = draw(st.integers(0, 7200))
        if draw(st.booleans()):
            props["room_id"] = f"r{draw(st.integers(0, 20))}"
        out.append(AppEvent(f"e{i}", "u", kind, t, props, {}, offset))
    return out


def run(evs: Sequence[AppEvent], cfg: WindowConfig = CFG) -> tuple[UserWindows, list[Outcome]]:
    builder = WindowsBuilder(cfg)
    outcomes = [builder.apply(ev) for ev in evs]
    return builder.freeze(), outcomes


def keep_within(stream: list[AppEvent], lateness: float) -> list[AppEvent]:
    """Drop, in arrival order, events more than ``lateness`` behind the newest so far."""
    out: list[AppEvent] = []
    newest = -math.inf
    for ev in stream:
        if ev.occurred_at >= newest - lateness:
            out.append(ev)
            newest = max(newest, ev.occurred_at)
    return out


def bounded_shuffle(evs: list[AppEvent], keys: list[float], lateness: float) -> list[AppEvent]:
    """Reorder by time jittered up to ``lateness``, keeping only in-bound arrivals."""
    order = sorted(range(len(evs)), key=lambda i: evs[i].occurred_at + keys[i] * lateness)
    return keep_within([evs[i] for i in order], lateness)


@settings(max_examples=200, deadline=None)
@given(events(), st.data())
def test_any_order_within_lateness_with_duplicates_gives_same_bytes(
    evs: list[AppEvent], data: st.DataObject
) -> None:
    keys = data.draw(st.lists(st.floats(-1, 1), min_size=len(evs), max_size=len(evs)))
    shuffled = bounded_shuffle(evs, keys, CFG.lateness_s)
    dups = data.draw(st.lists(st.sampled_from(shuffled), max_size=10))
    stream = list(shuffled)
    for dup in dups:
        stream.insert(data.draw(st.integers(0, len(stream))), dup)
    stream = keep_within(stream, CFG.lateness_s)
    unique = {e.event_id: e for e in stream}
    reference, _ = run(sorted(unique.values(), key=lambda e: (e.occurred_at, e.event_id)))
    state, outcomes = run(stream)
    assert Outcome.LATE not in outcomes
    assert outcomes.count(Outcome.DUPLICATE) == len(stream) - len(unique)
    assert encode(state) == encode(reference)
    assert state == reference


@settings(max_examples=150, deadline=None)
@given(events(), st.data())
def test_one_builder_per_event_gives_the_same_state_as_one_builder(
    evs: list[AppEvent], data: st.DataObject
) -> None:
    """The engine's path (load the last state, apply one event, freeze; with duplicates and
    bounded disorder) equals one builder fed the whole stream, and a builder keeps working
    after a freeze."""
    keys = data.draw(st.lists(st.floats(-1, 1), min_size=len(evs), max_size=len(evs)))
    stream = bounded_shuffle(evs, keys, CFG.lateness_s)
    stream += data.draw(st.lists(st.sampled_from(stream), max_size=5))
    state: UserWindows | None = None
    outcomes = []
    for ev in stream:
        state, outcome = apply_event(state, ev, CFG)
        outcomes.append(outcome)
    assert state is not None
    builder = WindowsBuilder(CFG)
    whole = []
    for ev in stream:
        whole.append(builder.apply(ev))
        builder.freeze()
    assert outcomes == whole
    assert state == builder.freeze()
    assert encode(state) == encode(builder.freeze())
    assert decode(encode(state), CFG) == state


@settings(max_examples=200, deadline=None)
@given(events(max_days=10), st.data())
def test_reloading_at_any_point_equals_one_open_builder(
    evs: list[AppEvent], data: st.DataObject
) -> None:
    """The engine keeps a user's builder open across a batch and freezes it only when the
    user is scored or the batch ends. Whatever the split, outcomes and state equal loading
    the last state and freezing after every event, also when an event id comes back with
    another time after it left the lateness bound (then it is not a duplicate)."""
    pool = data.draw(st.integers(1, 6))
    ids = data.draw(st.lists(st.integers(0, pool), min_size=len(evs), max_size=len(evs)))
    stream = [
        AppEvent(f"id{i}", e.user_id, e.event, e.occurred_at, e.properties, {}, e.utc_offset_s)
        for i, e in zip(ids, sorted(evs, key=lambda e: e.occurred_at), strict=True)
    ]
    stepwise: UserWindows | None = None
    expected = []
    for ev in stream:
        stepwise, outcome = apply_event(stepwise, ev, CFG)
        expected.append(outcome)
    cuts = set(data.draw(st.lists(st.integers(1, len(stream)), max_size=4)))
    state: UserWindows | None = None
    builder = WindowsBuilder(CFG)
    outcomes = []
    for i, ev in enumerate(stream):
        if i in cuts and state is not None:
            builder = WindowsBuilder(CFG, state)
        outcomes.append(builder.apply(ev))
        if i + 1 in cuts and builder.last_ms is not None:
            state = builder.freeze()
    assert outcomes == expected
    assert stepwise is not None
    assert builder.freeze() == stepwise


@settings(max_examples=100, deadline=None)
@given(events(), st.floats(1, 30 * DAY))
def test_late_events_are_reported_and_change_nothing(evs: list[AppEvent], behind: float) -> None:
    state, _ = run(sorted(evs, key=lambda e: e.occurred_at))
    late = AppEvent("late", "u", "purchase", state.last_seen - CFG.lateness_s - behind)
    after, outcome = apply_event(state, late, CFG)
    assert outcome is Outcome.LATE
    assert after is state


@settings(max_examples=200, deadline=None)
@given(events())
def test_encode_decode_roundtrip(evs: list[AppEvent]) -> None:
    state, _ = run(sorted(evs, key=lambda e: e.occurred_at))
    blob = encode(state)
    assert blob[0] == 1
    again = decode(blob, CFG)
    assert again == state
    assert encode(again) == blob


def brute(evs: Sequence[AppEvent], dim: str, lo: int, hi: int) -> float:
    """Recount ``dim`` over local days ``lo..hi`` from the raw events."""
    total = 0.0
    for ev in evs:
        if not lo <= local_day(ev.occurred_at, ev.utc_offset_s) <= hi:
            continue
        if dim == "activity":
            total += 1
            continue
        for rule in CFG.dimensions.get(ev.event, ()):
            if rule.dimension != dim:
                continue
            value = 1.0 if rule.property is None else ev.properties.get(rule.property)
            if isinstance(value, int | float):
                total += round(value * rule.scale * 100) / 100
    return total


@settings(max_examples=150, deadline=None)
@given(events(max_days=100), st.integers(1, 90), st.floats(0, 20 * DAY))
def test_totals_match_brute_force_within_granularity(
    evs: list[AppEvent], days: int, later: float
) -> None:
    evs = sorted(evs, key=lambda e: e.occurred_at)
    state, _ = run(evs)
    now = state.last_seen + later
    end = local_day(now, state.offset_s)
    kept = state.max_day - CFG.daily_days
    for dim in ("activity", "spend", "online_minutes", "interactions"):
        got = state.total(dim, days, now)
        if end - days + 1 > kept:
            assert got == pytest.approx(brute(evs, dim, end - days + 1, end), abs=1e-6)
        elif dim == "spend" and any(_negative(e.properties.get("amount")) for e in evs):
            continue  # refunds: a pro-rata share of a mixed-sign week has no monotone bound
        else:
            narrow = brute(evs, dim, end - days + 7, end)
            wide = brute(evs, dim, end - days - 5, end)
            assert min(narrow, wide) - 1e-6 <= got <= max(narrow, wide) + 1e-6
    active = {local_day(e.occurred_at, e.utc_offset_s) for e in evs}
    assert state.days_active(days, now) == len({d for d in active if end - days < d <= end})


@settings(max_examples=150, deadline=None)
@given(events(max_days=100), st.lists(st.floats(-2 * DAY, 60 * DAY), min_size=1, max_size=4))
def test_batched_and_memoized_reads_equal_fresh_single_reads(
    evs: list[AppEvent], laters: list[float]
) -> None:
    """``trailing`` and the per-instant memo give bit-identical values to a fresh state."""
    state, _ = run(sorted(evs, key=lambda e: e.occurred_at))
    dims = ["activity", "spend", "online_minutes", "interactions"]
    for later in laters:
        now = state.last_seen + later
        rows = state.trailing(dims, (1, 7, 28, 91), now)
        for dim, (totals, seen, drop) in zip(dims, rows, strict=True):
            fresh = decode(encode(state), CFG)  # no memo shared with ``state``
            assert totals == [fresh.total(dim, n, now) for n in (1, 7, 28, 91)]
            assert seen == fresh.last_seen_in(dim)
            fresh = decode(encode(state), CFG)
            assert drop == fresh.drop_ratio(dim, now)
            assert state.baseline(dim, now) == decode(encode(state), CFG).baseline(dim, now)
        assert state.days_active(28, now) == decode(encode(state), CFG).days_active(28, now)


def test_local_day_boundaries_follow_the_user_zone() -> None:
    midnight = 20_000 * DAY
    before = AppEvent("a", "u", "login", midnight - 1800, {}, {}, 3600)
    state, _ = apply_event(None, before, CFG)
    assert state.total("logins", 1, midnight - 1800) == 1
    assert state.max_day == 20_000
    after_utc, _ = apply_event(None, AppEvent("a", "u", "login", midnight - 1800), CFG)
    assert after_utc.max_day == 19_999
    assert state.total("logins", 1, midnight + 23 * 3600 - 1) == 1
    assert state.total("logins", 1, midnight + 23 * 3600) == 0


def test_purchase_only_config() -> None:
    cfg = WindowConfig.purchase_log()
    state = None
    for i, (day, amount) in enumerate([(0, 29.33), (17, 29.73), (40, 14.96)]):
        ev = AppEvent(f"p{i}", "00004", "purchase", T0 + day * DAY, {"amount": amount})
        state, outcome = apply_event(state, ev, cfg)
        assert outcome is Outcome.APPLIED
    assert state is not None
    now = T0 + 40 * DAY
    assert state.total("spend", 1, now) == pytest.approx(14.96)
    assert state.total("purchases", 60, now) == pytest.approx(3, abs=1)
    assert state.last_seen_in("logins") == now
    assert state.days_active(7, now) == 1
    assert decode(encode(state), cfg) == state
    with pytest.raises(ValueError, match="dimension set"):
        decode(encode(state), CFG)


def test_custom_mapping_needs_no_code() -> None:
    cfg = WindowConfig.from_mapping(
        {
            "dimensions": {
                "track_play": [
                    "plays",
                    {"dimension": "listen_min", "property": "ms", "scale": 1e-3 / 60},
                ]
            },
            "lateness_s": 60,
        }
    )
    ev = AppEvent("a", "u", "track_play", T0, {"ms": 180_000})
    state, _ = apply_event(None, ev, cfg)
    assert state.dimensions() == ("activity", "plays", "listen_min")
    assert state.total("listen_min", 1, T0) == 3.0
    assert state.total("activity", 1, T0) == 1.0


def test_baseline_and_drop_ratio() -> None:
    state = None
    for day in range(28):
        for j in range(2):
            ev = AppEvent(f"{day}-{j}", "u", "login", T0 + day * DAY + j * 60)
            state, _ = apply_event(state, ev, CFG)
    assert state is not None
    now = T0 + 27 * DAY
    assert state.baseline("logins", now) == pytest.approx(14.0)
    assert state.drop_ratio("logins", now) == pytest.approx(0.0)
    assert state.drop_ratio("logins", now + 7 * DAY) == pytest.approx(1.0)
    assert state.drop_ratio("purchases", now) is None
    assert state.tenure_days(now) == pytest.approx(27, abs=0.01)


def test_counterparts_sketch_is_order_independent_and_bounded() -> None:
    evs = [AppEvent(f"e{i}", "u", "like", T0 + i, {"room_id": f"r{i % 40}"}) for i in range(200)]
    forward, _ = run(evs)
    backward, _ = run(list(reversed(evs)))
    assert forward.counterparts == backward.counterparts
    assert len(forward.counterparts) == CFG.counterpart_sketch
    assert 10 <= forward.counterparts_estimate() <= 160
    few, _ = run(evs[:5])
    assert few.counterparts_estimate() == 5


def test_expiry_and_unknown_dimension() -> None:
    state, _ = apply_event(None, AppEvent("a", "u", "mystery", T0), CFG)
    assert state.total("activity", 1, T0) == 1
    assert not expired(state, T0 + 179 * DAY, CFG)
    assert expired(state, T0 + 181 * DAY, CFG)
    with pytest.raises(KeyError):
        state.total("nope", 7, T0)


def _negative(value: object) -> bool:
    return isinstance(value, int | float) and value < 0
