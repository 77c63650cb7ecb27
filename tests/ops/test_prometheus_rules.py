"""Prometheus config and alert rules: promtool accepts them and the unit tests pass.

promtool ships with Debian's ``prometheus`` package (``apt-get install -y prometheus`` puts it
at /usr/bin/promtool). Without it the promtool tests skip; the static checks still run.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml
from ops_support import PROMETHEUS_DIR, exported_sample_names, promtool, referenced_metrics

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"

REQUIRED_ALERTS = {
    "ChurnWorkerDown",
    "ChurnConsumerLagGrowing",
    "ChurnDeadLetterRateHigh",
    "ChurnNoWarningsWhileEventsFlow",
    "ChurnModelWorseThanPrior",
    "ChurnModelDriftDetected",
}


def _load(path: Any) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load(ALERTS)["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed: apt-get install -y prometheus")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, check=False, cwd=PROMETHEUS_DIR
    )


def test_promtool_check_config() -> None:
    result = _promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = _promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_required_alerts_exist_with_severity_and_summary() -> None:
    rules = {r["alert"]: r for r in _rules()}
    assert set(rules) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired = {
        case["alertname"]
        for test in _load(ALERT_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {r["alert"] for r in _rules()}
    assert alerts <= fired, f"alerts never shown firing: {alerts - fired}"


def test_alerts_only_reference_metrics_the_worker_exports() -> None:
    exported = exported_sample_names() | {"up"}
    for rule in _rules():
        unknown = referenced_metrics(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} uses metrics nobody exports: {unknown}"


def test_scrape_config_discovers_every_worker_replica() -> None:
    config = _load(CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = jobs["churn-worker"]
    assert "static_configs" not in worker, "scaled workers need DNS discovery"
    (sd,) = worker["dns_sd_configs"]
    assert sd["type"] == "A"
    assert sd["port"] == 6066
    assert set(sd["names"]) & {"worker", "tasks.worker"}
    assert config["rule_files"] == ["alerts.yml"]
