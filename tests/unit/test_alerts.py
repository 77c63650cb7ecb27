"""The warning state machine: rules, episodes, cooldown, deadlines, holdout."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.alerts import (
    DAY_S,
    AlertConfig,
    Emit,
    RuleObservation,
    Signal,
    WarningState,
    is_holdout,
    level_of,
    next_deadline,
    observe,
    step,
)
from stream_app.records import AppEvent, validator
from stream_app.tiers import TierState
from stream_app.windows import WindowConfig, apply_event

T0 = 1_700_000_000.0
CFG = AlertConfig()


def obs(
    drop: float | None = None,
    baseline: float = 10.0,
    di: float = 0.0,
    dl: float = 0.0,
) -> RuleObservation:
    return RuleObservation(drop, baseline, di, dl)


def sig(
    at: float,
    o: RuleObservation,
    kind: str = "tick",
    p: float = 0.1,
    tiers: TierState | None = None,
) -> Signal:
    assert kind in ("tick", "activity")
    return Signal(
        kind,  # type: ignore[arg-type]
        at,
        o,
        probability=p,
        percentile=50.0,
        reasons=(("days_idle", 3.0, 0.2), ("sessions_7d", 1.0, -0.4), ("gifts", 0.0, 0.05)),
        model_version="m1",
        tiers=tiers or TierState("mature", "loyal", (4, 4, 4)),
    )


def run(
    signals: list[Signal], cfg: AlertConfig = CFG, state: WarningState | None = None
) -> tuple[WarningState, list[Emit]]:
    s = state or WarningState()
    out: list[Emit] = []
    for g in signals:
        s, emits = step(s, g, cfg, user_id="u1", holdout=False)
        out.extend(emits)
    return s, out


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# --- rules ---------------------------------------------------------------------------------------


def test_activity_drop_needs_threshold_and_baseline() -> None:
    assert level_of(sig(T0, obs(drop=0.3)), CFG) == 1
    assert level_of(sig(T0, obs(drop=0.29)), CFG) == 0
    assert level_of(sig(T0, obs(drop=0.9, baseline=2.0)), CFG) == 0
    assert level_of(sig(T0, obs(drop=None, baseline=0.0)), CFG) == 0
    strict = AlertConfig(drop_threshold=0.5, min_baseline=0.0)
    assert level_of(sig(T0, obs(drop=0.4, baseline=1.0)), strict) == 0
    assert level_of(sig(T0, obs(drop=0.5, baseline=1.0)), strict) == 1


def test_absence_rules_and_levels() -> None:
    assert level_of(sig(T0, obs(di=59.9)), CFG) == 0
    assert level_of(sig(T0, obs(di=60.0)), CFG) == 2
    assert level_of(sig(T0, obs(di=60.0, dl=90.0)), CFG) == 3


def test_model_lifts_level_but_not_to_critical_by_default() -> None:
    assert level_of(sig(T0, obs(), p=0.59), CFG) == 0
    assert level_of(sig(T0, obs(), p=0.6), CFG) == 1
    assert level_of(sig(T0, obs(), p=0.8), CFG) == 2
    assert level_of(sig(T0, obs(), p=1.0), CFG) == 2
    with_critical = AlertConfig(model_thresholds=((0.6, 1), (0.8, 2), (0.95, 3)))
    assert level_of(sig(T0, obs(), p=0.96), with_critical) == 3


def test_warning_payload_names_triggers_and_action() -> None:
    s, out = run([sig(T0, obs(drop=0.5, di=61.0), p=0.85)])
    (e,) = out
    w = e.payload
    assert e.record == "warning"
    assert (w["level"], w["level_name"], w["previous_level"], w["episode"]) == (2, "warning", 0, 1)
    assert [r["rule"] for r in w["triggers"]["rules"]] == ["activity_drop", "no_interaction"]
    assert w["triggers"]["rules"][1] == {
        "rule": "no_interaction",
        "threshold": 60.0,
        "observed": 61.0,
        "unit": "days",
    }
    assert w["triggers"]["model"] == {"threshold": 0.8, "probability": 0.85}
    assert w["source"] == "rules"
    assert [r["feature"] for r in w["reasons"]] == ["sessions_7d", "days_idle", "gifts"]
    assert w["tiers"] == {
        "lifecycle": "mature",
        "value_segment": "loyal",
        "rfm": {"r": 4, "f": 4, "m": 4},
    }
    assert w["suggested_action"]["code"] == "special_perks"
    assert w["event_time"] == iso(T0 - DAY_S)
    assert w["emitted_at"] is None
    assert len(w["warning_id"]) == 32
    assert s.level == 2 and s.emitted == {2}


def test_model_only_warning_names_score_source() -> None:
    _, (e,) = run([sig(T0, obs(), p=0.7)])
    assert e.payload["source"] == "model"
    assert e.payload["triggers"]["rules"] == []
    assert e.payload["event_time"] == iso(T0)


def test_absence_warning_event_time_is_the_deadline_not_the_sweep() -> None:
    last = T0
    o = RuleObservation(None, 0.0, 75.0, 75.0, last_interaction_at=last, last_login_at=last)
    _, (e,) = run([sig(last + 75 * DAY_S, o)])
    assert e.payload["event_time"] == iso(last + 60 * DAY_S)


def test_critical_for_high_value_suggests_host_video() -> None:
    champ = TierState("at_risk", "champions", (5, 5, 5))
    _, (e,) = run([sig(T0, obs(di=90, dl=90), tiers=champ)])
    assert e.payload["level_name"] == "critical"
    assert e.payload["suggested_action"]["code"] == "host_personal_video"
    _, (e,) = run([sig(T0, obs(di=90, dl=90), tiers=TierState("churned", "lost", (1, 1, 1)))])
    assert e.payload["suggested_action"]["code"] == "winback_gift_pack"


# --- episodes ------------------------------------------------------------------------------------


def test_escalation_emits_each_higher_level_once() -> None:
    s, out = run(
        [
            sig(T0, obs(drop=0.5)),
            sig(T0 + 2 * DAY_S, obs(drop=0.5)),
            sig(T0 + 60 * DAY_S, obs(di=60)),
            sig(T0 + 90 * DAY_S, obs(di=90, dl=90)),
        ]
    )
    assert [(e.payload["level"], e.payload["previous_level"]) for e in out] == [
        (1, 0),
        (2, 1),
        (3, 2),
    ]
    assert {e.payload["episode"] for e in out} == {1}
    assert s.emitted == {1, 2, 3}


def test_deescalation_is_silent_and_rerise_is_not_reemitted() -> None:
    s, out = run(
        [
            sig(T0, obs(), p=0.85),
            sig(T0 + 2 * DAY_S, obs(), p=0.65),
            sig(T0 + 4 * DAY_S, obs(), p=0.1),
            sig(T0 + 6 * DAY_S, obs(), p=0.7),
            sig(T0 + 8 * DAY_S, obs(), p=0.85),
        ]
    )
    assert [e.payload["level"] for e in out] == [2]
    assert s.open and s.level == 2


def test_skipping_levels_emits_only_the_reached_one() -> None:
    _, out = run([sig(T0, obs(di=95, dl=95)), sig(T0 + DAY_S * 2, obs(di=97, dl=60))])
    assert [e.payload["level"] for e in out] == [3]


def test_recovery_needs_activity_and_no_level() -> None:
    s, out = run([sig(T0, obs(di=61))])
    s, out = run([sig(T0 + DAY_S, obs())], state=s)
    assert out == [] and s.open and s.level == 0
    s, out = run([sig(T0 + 2 * DAY_S, obs(drop=0.5), kind="activity")], state=s)
    assert out == [] and s.open
    s, out = run([sig(T0 + 3 * DAY_S, obs(), kind="activity", p=0.7)], state=s)
    assert out == [] and s.open
    s, (r,) = run([sig(T0 + 4 * DAY_S, obs(), kind="activity")], state=s)
    assert r.record == "recovered"
    assert r.payload["previous_level"] == 2
    assert r.payload["episode"] == 1
    assert r.payload["episode_started_at"] == iso(T0 - DAY_S)
    assert r.payload["episode_duration_s"] == 5 * DAY_S
    assert r.payload["event_time"] == iso(T0 + 4 * DAY_S)
    assert not s.open and s.level == 0 and s.emitted == frozenset()
    s, (w,) = run([sig(T0 + 9 * DAY_S, obs(), p=0.7)], state=s)
    assert w.payload["episode"] == 2 and w.payload["previous_level"] == 0
    assert w.payload["warning_id"] != run([sig(T0, obs(), p=0.7)])[1][0].payload["warning_id"]


def test_cooldown_delays_escalation_until_next_signal() -> None:
    cfg = AlertConfig(cooldown_s=DAY_S)
    s, out = run([sig(T0, obs(drop=0.5)), sig(T0 + 3600, obs(di=60))], cfg)
    assert [e.payload["level"] for e in out] == [1]
    assert s.level == 2 and s.emitted == {1}
    s, out = run([sig(T0 + DAY_S - 1, obs(di=60))], cfg, s)
    assert out == []
    s, out = run([sig(T0 + DAY_S, obs(di=61))], cfg, s)
    assert [e.payload["level"] for e in out] == [2]


def test_suppressed_escalation_that_vanished_is_not_emitted() -> None:
    cfg = AlertConfig(cooldown_s=DAY_S)
    _, out = run([sig(T0, obs(drop=0.5)), sig(T0 + 60, obs(), p=0.85), sig(T0 + DAY_S, obs())], cfg)
    assert [e.payload["level"] for e in out] == [1]


def test_episode_with_only_suppressed_warnings_closes_silently() -> None:
    cfg = AlertConfig(cooldown_s=DAY_S)
    s, out = run(
        [
            sig(T0, obs(), p=0.7),
            sig(T0 + 60, obs(), kind="activity"),
            sig(T0 + 120, obs(), p=0.7),
            sig(T0 + 180, obs(), kind="activity"),
        ],
        cfg,
    )
    assert [e.record for e in out] == ["warning", "recovered"]
    assert s.episode == 2 and not s.open


# --- deadlines -----------------------------------------------------------------------------------


@dataclass
class FakeView:
    last_seen: float
    first_seen: float = T0 - 400 * DAY_S
    last: dict[str, float] = field(default_factory=dict)
    base: float = 0.0
    drop: float | None = None

    def last_seen_in(self, dim: str) -> float | None:
        if dim == "unknown":
            raise KeyError(dim)
        return self.last.get(dim)

    def baseline(self, dim: str, now: float) -> float:
        return self.base

    def drop_ratio(self, dim: str, now: float) -> float | None:
        return self.drop

    def total(self, dim: str, days: int, now: float) -> float:
        return 0.0

    def tenure_days(self, now: float) -> float:
        return (now - self.first_seen) / DAY_S

    def days_active(self, days: int, now: float) -> int:
        return 0


def test_observe_uses_configured_dims_and_falls_back_to_any_activity() -> None:
    view = FakeView(last_seen=T0, last={"interactions": T0 - 10 * DAY_S, "logins": T0 - DAY_S})
    o = observe(view, T0 + DAY_S, CFG)
    assert (o.days_since_interaction, o.days_since_login) == (11.0, 2.0)
    assert o.last_interaction_at == T0 - 10 * DAY_S
    bare = FakeView(last_seen=T0, base=6.0, drop=0.5)
    o = observe(bare, T0 + DAY_S, AlertConfig(interaction_dims=("unknown",)))
    assert (o.days_since_interaction, o.days_since_login, o.drop_ratio, o.baseline) == (
        1.0,
        1.0,
        0.5,
        6.0,
    )


def test_deadline_sweep_walks_through_levels_at_exact_instants() -> None:
    last = T0 + 0.123
    view = FakeView(last_seen=last, last={"interactions": last, "logins": last})
    s = WarningState()
    seen: list[tuple[int, str]] = []
    while (d := next_deadline(view, s, CFG)) is not None:
        s, out = step(s, sig(d, observe(view, d, CFG)), CFG, user_id="u1", holdout=True)
        seen += [(e.payload["level"], e.payload["event_time"]) for e in out]
        assert all(e.payload["holdout"] for e in out)
    assert seen == [(2, iso(last + 60 * DAY_S)), (3, iso(last + 90 * DAY_S))]


def test_deadline_moves_to_cooldown_end_when_escalation_waits() -> None:
    cfg = AlertConfig(cooldown_s=7 * DAY_S)
    view = FakeView(last_seen=T0, last={"interactions": T0, "logins": T0 - 80 * DAY_S})

    def at(t: float, p: float = 0.1) -> Signal:
        return sig(t, observe(view, t, cfg), p=p)

    s, out = run([at(T0 + DAY_S, p=0.7)], cfg)
    assert [e.payload["level"] for e in out] == [1]
    assert next_deadline(view, s, cfg) == T0 + 10 * DAY_S
    s, out = run([at(T0 + 3 * DAY_S, p=0.85)], cfg, s)
    assert out == [] and s.level == 2
    assert next_deadline(view, s, cfg) == T0 + 8 * DAY_S
    s, out = run([at(T0 + 8 * DAY_S, p=0.85)], cfg, s)
    assert [e.payload["level"] for e in out] == [2]
    assert next_deadline(view, s, cfg) == T0 + 15 * DAY_S
    s, out = run([at(T0 + 15 * DAY_S)], cfg, s)
    assert [(e.payload["level"], e.payload["event_time"]) for e in out] == [
        (3, iso(T0 + 10 * DAY_S))
    ]


def test_no_deadline_once_critical_announced() -> None:
    view = FakeView(last_seen=T0)
    s, _ = run([sig(T0 + 90 * DAY_S, observe(view, T0 + 90 * DAY_S, CFG))])
    assert s.emitted == {3}
    assert next_deadline(view, s, CFG) is None


# --- holdout, ids, encoding ----------------------------------------------------------------------


def test_holdout_share_and_stability() -> None:
    ids = [f"user-{i}" for i in range(10_000)]
    share = sum(is_holdout(u, 0.1, "s1") for u in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert [is_holdout(u, 0.1, "s1") for u in ids[:50]] == [
        is_holdout(u, 0.1, "s1") for u in ids[:50]
    ]
    assert [is_holdout(u, 0.5, "a") for u in ids[:200]] != [
        is_holdout(u, 0.5, "b") for u in ids[:200]
    ]


def test_state_encoding_is_small_and_rejects_unknown_versions() -> None:
    s = WarningState(3, 7, True, T0, frozenset({1, 3}), T0 + 5.5)
    assert WarningState.from_bytes(s.to_bytes()) == s
    assert len(s.to_bytes()) == 22
    assert len(WarningState().to_bytes()) == 14
    with pytest.raises(ValueError, match="version"):
        WarningState.from_bytes(b"\x09" + s.to_bytes()[1:])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="model threshold"):
        AlertConfig(model_thresholds=((0.5, 4),))
    with pytest.raises(ValueError, match="drop_threshold"):
        AlertConfig(drop_threshold=0.0)
    with pytest.raises(ValueError, match="max_reasons"):
        AlertConfig(max_reasons=6)


# --- properties ----------------------------------------------------------------------------------

_signals = st.lists(
    st.tuples(
        st.sampled_from(["activity", "tick"]),
        st.floats(0.0, 3 * DAY_S),
        st.one_of(st.none(), st.floats(-1.0, 1.0)),
        st.floats(0.0, 20.0),
        st.floats(0.0, 120.0),
        st.floats(0.0, 120.0),
        st.floats(0.0, 1.0),
    ),
    max_size=40,
)


def _build(raw: list[tuple[str, float, float | None, float, float, float, float]]) -> list[Signal]:
    at = T0
    out: list[Signal] = []
    for kind, dt, drop, base, di, dl, p in raw:
        at += dt
        out.append(sig(at, obs(drop, base, di, dl), kind=kind, p=p))
    return out


_cfgs = st.sampled_from(
    [AlertConfig(), AlertConfig(cooldown_s=0.0), AlertConfig(cooldown_s=0.0, model_thresholds=())]
)


@settings(max_examples=300, deadline=None)
@given(_signals, _cfgs)
def test_episode_invariants(
    raw: list[tuple[str, float, float | None, float, float, float, float]], cfg: AlertConfig
) -> None:
    s, out = run(_build(raw), cfg)
    by_episode: dict[int, list[Emit]] = {}
    for e in out:
        by_episode.setdefault(e.payload["episode"], []).append(e)
    assert list(by_episode) == sorted(by_episode)
    for ep, emits in by_episode.items():
        levels = [e.payload["level"] for e in emits if e.record == "warning"]
        assert levels == sorted(set(levels))
        records = [e.record for e in emits]
        assert records[0] == "warning"
        assert records.count("recovered") <= 1
        if "recovered" in records:
            assert records[-1] == "recovered"
        else:
            assert s.open and s.episode == ep
    warn_times = [e for e in out if e.record == "warning"]
    ids = [e.payload["warning_id"] for e in warn_times]
    assert len(ids) == len(set(ids))


@settings(max_examples=200, deadline=None)
@given(_signals, _cfgs)
def test_replay_is_byte_identical(
    raw: list[tuple[str, float, float | None, float, float, float, float]], cfg: AlertConfig
) -> None:
    signals = _build(raw)
    s1, out1 = run(signals, cfg)
    s2, out2 = run(signals, cfg)
    assert s1 == s2
    assert [orjson.dumps(e.payload) for e in out1] == [orjson.dumps(e.payload) for e in out2]


@settings(max_examples=200, deadline=None)
@given(_signals, _cfgs)
def test_serialising_between_steps_changes_nothing(
    raw: list[tuple[str, float, float | None, float, float, float, float]], cfg: AlertConfig
) -> None:
    signals = _build(raw)
    s1, out1 = run(signals, cfg)
    s2 = WarningState()
    out2: list[Emit] = []
    for g in signals:
        s2 = WarningState.from_bytes(s2.to_bytes())
        s2, emits = step(s2, g, cfg, user_id="u1", holdout=False)
        out2.extend(emits)
    assert s1 == s2
    assert [orjson.dumps(e.payload) for e in out1] == [orjson.dumps(e.payload) for e in out2]


@settings(max_examples=200, deadline=None)
@given(_signals)
def test_warnings_respect_cooldown(
    raw: list[tuple[str, float, float | None, float, float, float, float]],
) -> None:
    cfg = AlertConfig(cooldown_s=DAY_S)
    s = WarningState()
    times: list[float] = []
    for g in _build(raw):
        s, emits = step(s, g, cfg, user_id="u1", holdout=False)
        times += [g.at for e in emits if e.record == "warning"]
    assert all(b - a >= DAY_S for a, b in itertools.pairwise(times))


def test_with_real_window_views_a_purchase_log_user_walks_to_critical() -> None:
    wcfg = WindowConfig.purchase_log()
    view = None
    for i, day in enumerate((0, 3, 9, 15)):
        ev = AppEvent(f"e{i}", "u1", "purchase", T0 + day * DAY_S, {"amount": 12.5})
        view, _ = apply_event(view, ev, wcfg)
    assert view is not None
    s = WarningState()
    levels: list[tuple[int, str]] = []
    while (d := next_deadline(view, s, CFG)) is not None:
        s, out = step(s, sig(d, observe(view, d, CFG)), CFG, user_id="u1", holdout=False)
        levels += [(e.payload["level"], e.payload["event_time"]) for e in out]
    assert levels == [(2, iso(T0 + 75 * DAY_S)), (3, iso(T0 + 105 * DAY_S))]
    ev = AppEvent("e9", "u1", "purchase", T0 + 120 * DAY_S, {"amount": 3.0})
    view, _ = apply_event(view, ev, wcfg)
    now = T0 + 120 * DAY_S
    s, out = step(
        s, sig(now, observe(view, now, CFG), "activity"), CFG, user_id="u1", holdout=False
    )
    assert [e.record for e in out] == ["recovered"]
    assert next_deadline(view, s, CFG) == now + 60 * DAY_S


def test_records_match_the_published_schemas() -> None:
    check_warning = validator("churn_warning.v1")
    check_recovered = validator("user_recovered.v1")
    _, out = run(
        [
            sig(T0, obs(drop=0.4), p=0.65),
            sig(T0 + 61 * DAY_S, obs(di=61), p=0.85),
            sig(T0 + 95 * DAY_S, obs(di=95, dl=95), p=0.95),
            sig(T0 + 96 * DAY_S, obs(), kind="activity"),
        ]
    )
    assert [e.record for e in out] == ["warning"] * 3 + ["recovered"]
    for e in out:
        (check_warning if e.record == "warning" else check_recovered)(e.payload)
