"""End to end: simulate a labelled stream, replay it through a running worker, evaluate.

Why: the evaluation is how operators decide whether the warnings are worth acting on, and
it reads only what the service published. This runs the whole loop the README describes on
a small seeded world (80 users, 40 days, one partition) and checks that the report has its
ranking, precision/recall and lead-time numbers, that they are consistent with each other
and with the simulator's truth, and that the Markdown report and its plots are written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.settings import Settings
from stream_app.tools.evaluate import run_evaluate
from stream_app.tools.replay import run_replay
from stream_app.tools.session import wait_drained
from stream_app.tools.simulate import run_simulate

USERS, DAYS, SEED = 80, 40, 11


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(**{k[len("CHURN_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]


def is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and 0.0 <= value <= 1.0


@pytest.fixture
def worker(running_worker: Callable[..., Any]) -> Any:
    return running_worker(partitions=1, holdout_share=0.1)


def test_simulate_replay_evaluate(worker: Any, kafka_bootstrap: str, tmp_path: Path) -> None:
    env = worker.settings_env
    events_path, truth_path = tmp_path / "events.jsonl", tmp_path / "truth.csv"
    sim = run_simulate(events_path, truth_path, users=USERS, days=DAYS, seed=SEED)
    assert sim["users"] == USERS and 0 < sim["churned"] < USERS

    summary = run_replay(events_path, env["CHURN_TOPIC_EVENTS"], kafka_bootstrap, out=io.StringIO())
    assert summary.sent == sim["events"] and summary.bad_rows == 0
    wait_drained(
        settings_of(env), env["CHURN_TOPIC_EVENTS"], summary.sent, timeout=60, out=io.StringIO()
    )

    out_dir = tmp_path / "evaluation"
    result = run_evaluate(
        out_dir,
        bootstrap=kafka_bootstrap,
        events_path=events_path,
        truth_path=truth_path,
        replay=False,
        warnings_topic=env["CHURN_TOPIC_WARNINGS"],
        tiers_topic=env["CHURN_TOPIC_TIERS"],
        idle_timeout_s=3.0,
        out=io.StringIO(),
    )

    assert result["users"] == USERS and result["churners"] == sim["churned"]
    assert result["warnings"] > 0 and 0 < result["warned_users"] <= USERS
    assert result["period_days"] == pytest.approx(DAYS, abs=1.5)
    assert result["warnings_per_1000_users_day"] > 0

    auc = result["auc"]
    assert {"auc", "auc_all_users", "coverage", "scored_users"} <= set(auc)
    assert is_fraction(auc["auc"]) and is_fraction(auc["auc_all_users"]), auc
    assert auc["scored_users"] == result["warned_users"]
    assert auc["coverage"] == pytest.approx(result["warned_users"] / USERS, abs=1e-3)
    # Ranking churners above stayers is the point of the service: with unwarned users at 0
    # the warnings must beat chance on this world (churners are the ones who go silent).
    assert auc["auc_all_users"] > 0.5, auc
    roc = [tuple(point) for point in result["roc"]]
    assert roc[0] == (0.0, 0.0) and roc[-1] == (1.0, 1.0)
    assert all(is_fraction(x) and is_fraction(y) for x, y in roc)

    levels = result["levels"]
    assert set(levels) == {"1", "2", "3"}
    flagged = [levels[k]["flagged"] for k in ("1", "2", "3")]
    assert flagged == sorted(flagged, reverse=True), "acting on a higher level flags fewer"
    assert flagged[0] == result["warned_users"]
    for stats in levels.values():
        assert 0 <= stats["true_positives"] <= stats["flagged"]
        assert stats["precision"] is None or is_fraction(stats["precision"])
        assert stats["recall"] is None or is_fraction(stats["recall"])
    assert levels["1"]["true_positives"] > 0, levels
    assert levels["1"]["recall"] == pytest.approx(
        levels["1"]["true_positives"] / sim["churned"], abs=1e-4
    )

    lead = result["lead_time_days"]
    assert lead["count"] == levels["1"]["true_positives"] == len(result["lead_times_days"])
    assert lead["p25"] <= lead["median"] <= lead["p75"]
    assert all(-DAYS <= d <= 14.0 for d in result["lead_times_days"])
    assert is_fraction(lead["share_positive"])

    truth = {row["user_id"] for row in csv.DictReader(truth_path.open())}
    holdout = result["holdout"]
    assert set(holdout) == {"holdout", "treated"}
    assert holdout["holdout"]["users"] + holdout["treated"]["users"] == result["warned_users"]
    assert holdout["treated"]["users"] > 0 and len(truth) == USERS
    assert "lifecycle" in result["tier_flows"], result["tier_flows"]

    saved = orjson.loads((out_dir / "metrics.json").read_bytes())
    assert saved["auc"] == auc and saved["levels"] == levels
    report = (out_dir / "report.md").read_text()
    assert report.startswith("# Churn warning evaluation")
    for needle in ("ROC AUC", "level 1+", "Lead time", "roc.png", "lead_times.png"):
        assert needle in report, needle
    for plot in ("roc.png", "lead_times.png", "tier_flows.png"):
        data = (out_dir / plot).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, plot
