"""Evaluation metrics against hand-computed cases, and the report they produce."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.tools.evaluate import (
    DAY,
    Label,
    Recovery,
    Warning,
    evaluate,
    holdout_comparison,
    last_scores,
    lead_times,
    load_truth,
    precision_recall_by_level,
    roc_auc,
    roc_curve,
    tier_flows,
    warnings_per_1000_users_day,
)
from stream_app.tools.report import write_report
from stream_app.tools.tail import decode


def test_roc_auc_hand_computed() -> None:
    labels = [True, True, False, False, True]
    scores = [0.8, 0.3, 0.3, 0.1, 0.9]
    # pairs (pos, neg): 0.8>0.3, 0.8>0.1, 0.3=0.3 (half), 0.3>0.1, 0.9>0.3, 0.9>0.1
    assert roc_auc(labels, scores) == pytest.approx(5.5 / 6)
    assert roc_auc([False, True], [0.9, 0.1]) == 0.0
    assert roc_auc([False, False], [0.9, 0.1]) is None


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=2, max_size=40))
def test_roc_auc_equals_pair_counting(pairs: list[tuple[bool, float]]) -> None:
    labels, scores = [p[0] for p in pairs], [p[1] for p in pairs]
    pos = [s for label, s in pairs if label]
    neg = [s for label, s in pairs if not label]
    auc = roc_auc(labels, scores)
    if not pos or not neg:
        assert auc is None
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert auc == pytest.approx(wins / (len(pos) * len(neg)))
    curve = roc_curve(labels, scores)
    area = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in itertools.pairwise(curve))
    assert area == pytest.approx(auc)


def test_last_scores_respect_the_reference_time() -> None:
    ws = [Warning("a", 1, 100.0, 0.2), Warning("a", 2, 300.0, 0.7), Warning("b", 3, 400.0, 0.9)]
    assert last_scores(ws, reference_time=350.0) == {"a": 0.7}
    assert last_scores(ws, reference_time=200.0) == {"a": 0.2}


TRUTH = {
    "early": Label("early", True, 10 * DAY),
    "late": Label("late", True, 40 * DAY),
    "stayer": Label("stayer", False),
    "missed": Label("missed", True, 20 * DAY),
    "gone": Label("gone", True, 5 * DAY),
}
WARNINGS = [
    Warning("early", 1, 2 * DAY, 0.4),
    Warning("early", 3, 6 * DAY, 0.9),
    Warning("late", 2, 3 * DAY, 0.6),
    Warning("stayer", 1, 4 * DAY, 0.3),
    Warning("gone", 2, 8 * DAY, 0.8),
]


def test_precision_recall_by_level_hand_computed() -> None:
    stats = precision_recall_by_level(WARNINGS, TRUTH, horizon_s=14 * DAY)
    # level 1+: early (TP, churns 8 d after), late (FP: 37 d > 14), stayer (FP), gone (TP, late)
    assert (stats[1].flagged, stats[1].true_positives) == (4, 2)
    assert stats[1].precision == 0.5 and stats[1].recall == 0.5
    # level 2+: early@6d (TP), late (FP), gone (TP)
    assert (stats[2].flagged, stats[2].true_positives) == (3, 2)
    # level 3+: early only
    assert (stats[3].flagged, stats[3].true_positives, stats[3].recall) == (1, 1, 0.25)


def test_lead_times_in_seconds_negative_when_late() -> None:
    leads = lead_times(WARNINGS, TRUTH, horizon_s=14 * DAY)
    assert leads == [-3 * DAY, 8 * DAY]
    assert lead_times(WARNINGS, TRUTH, horizon_s=14 * DAY, level=3) == [4 * DAY]


def test_rates_holdout_and_flows() -> None:
    assert warnings_per_1000_users_day(5, 5, 10.0) == 100.0
    ws = [Warning("a", 1, 1.0, 0.8, holdout=True), Warning("a", 2, 2.0, 0.6, holdout=True)]
    ws += [Warning("b", 1, 1.0, 0.2), Warning("c", 1, 1.0, 0.4)]
    truth = {u: Label(u, u != "b", 9.0) for u in "abc"}
    result = holdout_comparison(ws, [Recovery("b", 5.0)], truth)
    assert result["holdout"] == {
        "users": 1,
        "mean_probability": 0.6,
        "recovery_rate": 0.0,
        "churn_rate": 1.0,
    }
    assert result["treated"]["recovery_rate"] == 0.5
    assert result["treated"]["mean_probability"] == pytest.approx(0.3)
    flows = tier_flows(
        [
            {"dimension": "value", "from": "free", "to": "payer"},
            {"dimension": "lifecycle", "from": "active", "to": "at_risk"},
            {"dimension": "lifecycle", "from": "active", "to": "at_risk"},
            {"dimension": "lifecycle", "from": "new", "to": "active"},
        ]
    )
    assert flows == {
        "value": {"free -> payer": 1},
        "lifecycle": {"active -> at_risk": 2, "new -> active": 1},
    }


def _record(value: dict[str, object], ce_type: str, offset: int) -> object:
    return decode("w", 0, offset, b"k", orjson.dumps(value), [("ce_type", ce_type.encode())])


def test_evaluate_and_report_end_to_end(tmp_path: Path) -> None:
    from stream_app.tools.sources import format_time

    records = [
        _record(
            {
                "warning_id": f"w{i}",
                "user_id": w.user_id,
                "level": w.level,
                "churn_probability": w.probability,
                "event_time": format_time(w.event_time),
                "holdout": i == 0,
            },
            "dev.churnwarnings.warning.v1",
            i,
        )
        for i, w in enumerate(WARNINGS)
    ]
    records.append(
        _record(
            {"recovery_id": "r", "user_id": "stayer", "event_time": format_time(9 * DAY)},
            "dev.churnwarnings.recovered.v1",
            99,
        )
    )
    tiers = [
        _record(
            {"change_id": "c", "user_id": "late", "dimension": "lifecycle", "from": "active",
             "to": "at_risk", "event_time": format_time(3 * DAY)},
            "dev.churnwarnings.tier_changed.v1",
            0,
        )
    ]  # fmt: skip
    result = evaluate(records, TRUTH, tier_records=tiers, period_days=10.0)  # type: ignore[arg-type]
    assert result["warnings"] == 5 and result["recoveries"] == 1
    assert result["auc"]["scored_users"] == 4 and result["auc"]["coverage"] == 0.8
    # scored: early .9 (churn), late .6 (churn), stayer .3, gone .8 (churn) -> perfect ranking
    assert result["auc"]["auc"] == 1.0
    assert result["levels"]["1"]["precision"] == 0.5
    assert result["lead_time_days"]["median"] == pytest.approx(2.5)
    assert result["warnings_per_1000_users_day"] == 100.0
    assert result["tier_flows"] == {"lifecycle": {"active -> at_risk": 1}}
    assert result["holdout"]["holdout"]["users"] == 1
    external = evaluate(records, TRUTH, scores={"early": 0.1, "stayer": 0.9})  # type: ignore[arg-type]
    assert external["auc"]["auc"] == 0.0 and external["score_source"] == "external"

    report = write_report(result, tmp_path / "out")
    text = report.read_text()
    assert "ROC AUC on scored users: **1.000**" in text
    assert "| level 1+ | 4 | 2 | 50.0% | 50.0% |" in text
    for name in ("metrics.json", "roc.png", "lead_times.png", "tier_flows.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert orjson.loads((tmp_path / "out" / "metrics.json").read_bytes())["users"] == 5


def test_load_truth_from_simulator_files(tmp_path: Path) -> None:
    from stream_app.tools.simulate import SimConfig, simulate, write_truth

    _, truth = simulate(SimConfig(users=30, days=14, seed=2))
    for name in ("t.csv", "t.json"):
        write_truth(truth, tmp_path / name)
        labels = load_truth(tmp_path / name)
        assert set(labels) == {t.user_id for t in truth}
        churned = next(t for t in truth if t.churned)
        assert labels[churned.user_id].churned
        assert labels[churned.user_id].churn_time is not None
        assert not math.isnan(labels[churned.user_id].churn_time or 0.0)
