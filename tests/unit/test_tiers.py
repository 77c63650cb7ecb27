"""Lifecycle stages, RFM scoring and segments, quantile sketches, tier changes."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.records import validator
from stream_app.tiers import (
    DAY_S,
    LIFECYCLES,
    SEGMENTS,
    QuantileSketch,
    RfmSketches,
    SketchLayout,
    TierConfig,
    TierState,
    lifecycle,
    next_lifecycle_deadline,
    score_value,
    segment_of,
    step_tiers,
)

T0 = 1_700_000_000.0
CFG = TierConfig()


@dataclass
class View:
    first_seen: float
    last_seen: float
    active: int = 0
    spend: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def total(self, dim: str, days: int, now: float) -> float:
        return self.spend if dim == "spend" else self.extra.get(dim, 0.0)

    def tenure_days(self, now: float) -> float:
        return max(0.0, (now - self.first_seen) / DAY_S)

    def days_active(self, days: int, now: float) -> int:
        return self.active


# --- lifecycle -----------------------------------------------------------------------------------


def test_lifecycle_stages_in_order_of_precedence() -> None:
    now = T0
    assert lifecycle(View(now - 3 * DAY_S, now), now, 0, 0.1, CFG) == "new"
    assert lifecycle(View(now - 10 * DAY_S, now, active=9), now, 0, 0.1, CFG) == "growing"
    assert lifecycle(View(now - 40 * DAY_S, now, active=3), now, 0, 0.1, CFG) == "growing"
    assert lifecycle(View(now - 40 * DAY_S, now, active=4), now, 0, 0.1, CFG) == "mature"
    assert lifecycle(View(now - 40 * DAY_S, now, active=9), now, 1, 0.1, CFG) == "at_risk"
    assert lifecycle(View(now - 3 * DAY_S, now), now, 0, 0.6, CFG) == "at_risk"
    assert lifecycle(View(now - 400 * DAY_S, now - 90 * DAY_S), now, 3, 0.9, CFG) == "churned"


def test_at_risk_probability_has_hysteresis() -> None:
    v = View(T0 - 40 * DAY_S, T0, active=9)
    assert lifecycle(v, T0, 0, 0.55, CFG) == "mature"
    assert lifecycle(v, T0, 0, 0.55, CFG, previous="at_risk") == "at_risk"
    assert lifecycle(v, T0, 0, 0.45, CFG, previous="at_risk") == "mature"


def test_lifecycle_journey_emits_each_transition_once() -> None:
    first = T0
    state = TierState()
    trail: list[tuple[str | None, str]] = []
    for day, active, level, last_seen in [
        (0, 1, 0, 0),
        (3, 2, 0, 3),
        (8, 3, 0, 8),
        (35, 10, 0, 35),
        (36, 10, 0, 36),
        (50, 2, 1, 40),
        (140, 0, 3, 40),
        (141, 1, 0, 141),
    ]:
        now = first + day * DAY_S
        view = View(first, first + last_seen * DAY_S, active=active)
        stage = lifecycle(view, now, level, 0.1, CFG, previous=state.lifecycle)
        state, changes = step_tiers(state, stage, None, None, now, "u1")
        trail += [(c["from"], c["to"]) for c in changes]
    assert trail == [
        (None, "new"),
        ("new", "growing"),
        ("growing", "mature"),
        ("mature", "at_risk"),
        ("at_risk", "churned"),
        ("churned", "growing"),
    ]


def test_next_lifecycle_deadline() -> None:
    v = View(T0, T0 + DAY_S)
    assert next_lifecycle_deadline(v, T0 + DAY_S, CFG) == T0 + 7 * DAY_S
    assert next_lifecycle_deadline(v, T0 + 8 * DAY_S, CFG) == T0 + 91 * DAY_S
    assert next_lifecycle_deadline(v, T0 + 91 * DAY_S, CFG) is None


# --- RFM -----------------------------------------------------------------------------------------


def test_segment_table() -> None:
    grid = {(r, fm): segment_of((r, fm, fm)) for r in range(1, 6) for fm in range(1, 6)}
    assert set(grid.values()) == set(SEGMENTS)
    assert grid[5, 5] == grid[4, 5] == grid[5, 4] == "champions"
    assert grid[5, 1] == "new" and grid[4, 1] == "promising"
    assert grid[3, 3] == "need_attention" and grid[3, 1] == "about_to_sleep"
    assert grid[2, 3] == "at_risk" and grid[1, 5] == "cannot_lose"
    assert grid[2, 1] == "hibernating" and grid[1, 1] == "lost"
    assert segment_of((4, 5, 2)) == "loyal"
    with pytest.raises(ValueError, match=r"1\.\.5"):
        segment_of((0, 1, 1))


def _population(n: int, seed: int = 7) -> list[tuple[str, View]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        idle = rng.expovariate(1 / 20)
        out.append(
            (
                f"u{i}",
                View(
                    T0 - 200 * DAY_S,
                    T0 - idle * DAY_S,
                    active=rng.randint(0, 60),
                    spend=round(rng.paretovariate(1.5) * 5 - 5, 2),
                ),
            )
        )
    return out


def _score_all(
    users: list[tuple[str, View]], sketches: RfmSketches, states: dict[str, TierState]
) -> RfmSketches:
    for uid, view in users:
        sketches, score = score_value(sketches, view, T0, states.get(uid, TierState()), CFG)
        states[uid], _ = step_tiers(
            states.get(uid, TierState()),
            None,
            score.segment,
            score.rfm,
            T0,
            uid,
            rfm_bins=score.bins,
        )
    return sketches


def test_rfm_scores_rank_users_and_warm_up() -> None:
    users = _population(500)
    states: dict[str, TierState] = {}
    sketches = _score_all(users, RfmSketches.empty(CFG), states)
    assert sketches.n == 500
    assert states["u0"].rfm is None or states["u0"].value_segment is not None
    sketches = _score_all(users, sketches, states)
    assert sketches.n == 500
    assert all(s.rfm is not None for s in states.values())
    best = View(T0 - 200 * DAY_S, T0, active=60, spend=10_000.0)
    worst = View(T0 - 200 * DAY_S, T0 - 150 * DAY_S, active=0, spend=0.0)
    _, top = score_value(sketches, best, T0, TierState(), CFG)
    _, bottom = score_value(sketches, worst, T0, TierState(), CFG)
    assert top.rfm == (5, 5, 5) and top.segment == "champions"
    assert bottom.rfm is not None and bottom.rfm[:2] == (1, 1) and bottom.segment == "lost"
    counts = [sum(1 for s in states.values() if s.rfm and s.rfm[1] == k) for k in range(1, 6)]
    assert all(60 <= c <= 140 for c in counts), counts


def test_score_margin_keeps_boundary_users_stable() -> None:
    fine = QuantileSketch.empty(SketchLayout(0.5, 1000.0, 250))
    sketches = RfmSketches(fine, fine, fine)
    for i in range(1, 101):
        sketches, _ = sketches.update(None, (float(i), float(i), float(i)))
    x = next(float(i) for i in range(1, 101) if 0.6 <= sketches.frequency.cdf(float(i)) < 0.65)
    assert sketches.scores((x, x, x), None, 0.05)[1:] == (4, 4)
    assert sketches.scores((x, x, x), (3, 3, 5), 0.05)[1:] == (3, 4)
    assert sketches.scores((x, x, x), (3, 3, 3), 0.0)[1:] == (4, 4)
    assert sketches.scores((1.0, 100.0, 100.0), (3, 3, 3), 0.05) == (5, 5, 5)


def test_sketch_replaces_a_users_previous_value() -> None:
    layout = SketchLayout(1.0, 100.0, 16)
    s = QuantileSketch.empty(layout)
    s, b = s.move(None, 5.0)
    s, b = s.move(b, 50.0)
    assert s.n == 1 and s.counts[layout.bin_of(50.0)] == 1
    assert s.quantile(0.5) == pytest.approx(50.0, rel=0.2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1e6), max_size=200), st.lists(st.floats(0.0, 1e6), max_size=50))
def test_sketch_is_deterministic_mergeable_and_serialisable(a: list[float], b: list[float]) -> None:
    layout = CFG.monetary_layout

    def build(xs: list[float]) -> QuantileSketch:
        s = QuantileSketch.empty(layout)
        for x in xs:
            s, _ = s.move(None, x)
        return s

    sa, sb = build(a), build(b)
    assert build(a).to_bytes() == sa.to_bytes()
    assert QuantileSketch.from_bytes(sa.to_bytes()) == sa
    assert sa.merge(sb) == build(a + b) == sb.merge(sa)
    for x in a[:10]:
        assert 0.0 <= sa.cdf(x) <= 1.0
    rfm = RfmSketches(sa, sb, sa)
    assert RfmSketches.from_bytes(rfm.to_bytes()) == rfm


def test_sketch_rejects_mismatched_layouts() -> None:
    with pytest.raises(ValueError, match="layouts"):
        QuantileSketch.empty(SketchLayout(1, 10, 8)).merge(
            QuantileSketch.empty(SketchLayout(1, 10, 9))
        )
    with pytest.raises(ValueError, match="lo < hi"):
        SketchLayout(0.0, 10.0)


# --- state and changes ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    st.one_of(st.none(), st.sampled_from(LIFECYCLES)),
    st.one_of(st.none(), st.sampled_from(SEGMENTS)),
    st.one_of(st.none(), st.tuples(*[st.integers(1, 5)] * 3)),
    st.one_of(st.none(), st.tuples(*[st.integers(0, 254)] * 3)),
)
def test_tier_state_round_trip(
    lc: str | None,
    seg: str | None,
    rfm: tuple[int, int, int] | None,
    bins: tuple[int, int, int] | None,
) -> None:
    s = TierState(lc, seg, rfm, bins)
    assert TierState.from_bytes(s.to_bytes()) == s
    assert len(s.to_bytes()) == 9


def test_tier_change_payloads() -> None:
    s, changes = step_tiers(TierState(), "new", "promising", (4, 1, 1), T0, "u1")
    assert [(c["dimension"], c["from"], c["to"], c["reason"]) for c in changes] == [
        ("lifecycle", None, "new", "new_user_window"),
        ("value", None, "promising", "rfm_411"),
    ]
    assert changes[1]["rfm"] == {"r": 4, "f": 1, "m": 1}
    assert changes[0]["event_time"] == "2023-11-14T22:13:20.000Z"
    again = step_tiers(TierState(), "new", "promising", (4, 1, 1), T0, "u1")[1]
    assert [c["change_id"] for c in again] == [c["change_id"] for c in changes], "replays"
    later = step_tiers(TierState(), "new", "promising", (4, 1, 1), T0 + 3600, "u1")[1]
    assert later[0]["change_id"] != changes[0]["change_id"], "a later change is another one"
    s2, none = step_tiers(s, None, None, None, T0 + 10, "u1")
    assert none == [] and s2 == s
    _, lc_only = step_tiers(TierState("new"), "growing", None, None, T0, "u1")
    assert "rfm" not in lc_only[0]


def test_changes_match_the_published_schema() -> None:
    check = validator("tier_change.v1")
    s, changes = step_tiers(TierState(), "new", None, None, T0, "u1")
    s, more = step_tiers(s, "at_risk", "champions", (5, 5, 4), T0 + DAY_S, "u1")
    assert len(changes + more) == 3
    for change in changes + more:
        check(change)


def test_invalid_tiers_are_rejected() -> None:
    with pytest.raises(ValueError, match="lifecycle"):
        TierState("sleepy")
    with pytest.raises(ValueError, match="value segment"):
        TierState(None, "whales")
    with pytest.raises(ValueError, match="TierState"):
        TierState.from_bytes(b"\x02" + bytes(8))
