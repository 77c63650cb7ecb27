"""The generated Grafana dashboard: up to date, well formed, querying real metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from ops_support import (
    OPS,
    exported_sample_names,
    load_dashboard_module,
    promtool,
    referenced_metrics,
)

COMMITTED = OPS / "grafana" / "dashboards" / "churn.json"

REQUIRED_PANEL_METRICS = {
    "churn_events_consumed_total",
    "churn_events_invalid_total",
    "churn_consumer_lag",
    "churn_batch_duration_seconds_bucket",
    "churn_event_processing_seconds_bucket",
    "churn_warning_latency_seconds_bucket",
    "churn_processing_latency_seconds_bucket",
    "churn_warnings_emitted_total",
    "churn_recoveries_total",
    "churn_tier_users",
    "churn_tier_migrations_total",
    "churn_model_roc_auc",
    "churn_model_log_loss",
    "churn_model_active",
    "churn_model_drift_total",
    "churn_redis_latency_seconds_bucket",
    "churn_redis_errors_total",
    "churn_watermark_seconds",
}


def _committed() -> dict[str, object]:
    data: dict[str, object] = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return data


def _panels() -> list[dict[str, object]]:
    panels = _committed()["panels"]
    assert isinstance(panels, list)
    return [p for p in panels if p["type"] != "row"]


def _exprs() -> list[str]:
    exprs: list[str] = []
    for panel in _panels():
        targets = panel["targets"]
        assert isinstance(targets, list)
        exprs.extend(t["expr"] for t in targets)
    return exprs


def test_regenerating_gives_no_diff() -> None:
    dashboard = load_dashboard_module()
    assert dashboard.render() == COMMITTED.read_text(encoding="utf-8"), (
        "churn.json is stale: run `python ops/dashboard.py` and commit the result"
    )


def test_check_mode_passes_on_the_committed_file() -> None:
    dashboard = load_dashboard_module()
    assert dashboard.main(["--check"]) == 0


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    dashboard = load_dashboard_module()
    stale = tmp_path / "churn.json"
    stale.write_text("{}", encoding="utf-8")
    assert dashboard.main(["--check", "--output", str(stale)]) == 1
    assert dashboard.main(["--output", str(stale)]) == 0
    assert dashboard.main(["--check", "--output", str(stale)]) == 0


def test_dashboard_is_well_formed() -> None:
    data = _committed()
    assert data["uid"] == "churn-overview"
    panels = data["panels"]
    assert isinstance(panels, list)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels():
        assert panel["title"] and panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert isinstance(pos, dict)
        assert pos["x"] + pos["w"] <= 24


def test_panels_cover_every_required_metric() -> None:
    referenced = set().union(*(referenced_metrics(e) for e in _exprs()))
    assert referenced >= REQUIRED_PANEL_METRICS, REQUIRED_PANEL_METRICS - referenced


def test_panels_only_query_metrics_the_worker_exports() -> None:
    exported = exported_sample_names()
    for expr in _exprs():
        unknown = referenced_metrics(expr) - exported
        assert not unknown, f"{expr!r} queries metrics the worker does not export: {unknown}"


def test_panel_queries_are_valid_promql(tmp_path: Path) -> None:
    dashboard = load_dashboard_module()
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": dashboard.plain_promql(e)}
                    for i, e in enumerate(_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
