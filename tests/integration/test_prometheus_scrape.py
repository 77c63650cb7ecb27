"""A real Prometheus scrapes a real worker through a replay; every panel and alert has data.

What "has data" means here:

* Dashboard panels: each target's expression, with Grafana's variables filled in
  (``$__rate_interval`` -> 1m, ``$instance`` -> ``.*``), returns at least one series. A
  histogram quantile over a window without observations returns NaN, which still counts:
  the series exist, and that is what a panel needs to draw.
* Alerts: an alert's expression is usually *false* on a healthy run, so an empty result
  would prove nothing. Each alert is checked three ways instead:

  1. every vector selector inside it (``churn_consumer_lag``, ``up{job="churn-worker"}``, ...)
     selects at least one series;
  2. each operand of its top-level ``and`` / ``or`` / ``unless``, with every comparison
     turned into a ``bool`` comparison (``x > 0.05`` -> ``x > bool 0.05``), returns data, so
     the aggregations and ``ignoring(...)`` matchings really line up on live series;
  3. Prometheus itself loads alerts.yml and reports every rule's evaluation as healthy.

  Alerts that must stay quiet on a healthy replay (:data:`QUIET_WHEN_HEALTHY`) are also
  evaluated as written and must return nothing.

Needs the Debian ``prometheus`` binary (skips without it), the session's broker and Redis
(``kafka_bootstrap``, ``redis_url``) and the ``running_worker`` factory from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from stream_app.metrics import Metrics
from stream_app.tools.replay import open_sender, run_replay

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
SAMPLE = ROOT / "data" / "CDNOW_sample.txt"
JOB = "churn-worker"
INVALID_RECORDS = (b"not json", b'{"event": "purchase"}', b"[1, 2, 3]")
QUIET_WHEN_HEALTHY = {
    "ChurnWorkerDown",
    "ChurnWorkerUnhealthy",
    "ChurnConsumerLagGrowing",
    "ChurnDeadLetterRateHigh",
    "ChurnRedisErrors",
}

SELECTOR = re.compile(r"\b(?:churn_[a-z0-9_]+|up)\b(?:\{[^}]*\})?")
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")
SET_OPERATOR = re.compile(r"\b(and|or|unless)\b(\s*(?:on|ignoring)\s*\([^)]*\))?")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A Prometheus server on a loopback port, queried over its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """Start Prometheus scraping one worker every second, with the project's alert rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed: apt-get install -y prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(web_url: str) -> Prometheus:
        target = urllib.parse.urlsplit(web_url).netloc
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        port = _free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return Prometheus(url)
            except OSError:
                time.sleep(0.2)
        raise AssertionError("Prometheus did not become ready in 30 s")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _send_invalid(bootstrap: str, topic: str) -> None:
    sender = await open_sender(bootstrap, topic)
    try:
        for i, value in enumerate(INVALID_RECORDS):
            await sender.send(f"bad-{i}".encode(), value, [])
    finally:
        await sender.close()


def _wait_for(prom: Prometheus, expr: str, at_least: float, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = prom.scalar(expr)
        if value >= at_least:
            return
        time.sleep(1)
    raise AssertionError(f"{expr} = {value} after {timeout}s, wanted >= {at_least}")


def _operands(expr: str) -> list[str]:
    """Split an expression at its top-level set operators, dropping their on()/ignoring()."""
    parts: list[str] = []
    depth, start, i = 0, 0, 0
    while i < len(expr):
        char = expr[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (match := SET_OPERATOR.match(expr, i)) and expr[i - 1 : i] in " \n":
            parts.append(expr[start:i])
            start = i = match.end()
            continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


def _bool_comparisons(expr: str) -> str:
    """Turn filtering comparisons into ``bool`` ones, leaving label matchers alone."""
    out: list[str] = []
    depth, i = 0, 0
    while i < len(expr):
        char = expr[i]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif depth == 0 and (match := COMPARISON.match(expr, i)):
            out.append(f"{match.group(1)} bool")
            i = match.end()
            continue
        out.append(char)
        i += 1
    return "".join(out)


def test_bool_rewrite_and_split() -> None:
    expr = 'a{x="1"} > 0.5 unless b{y!="2"} == 1'
    assert _operands(expr) == ['a{x="1"} > 0.5', 'b{y!="2"} == 1']
    assert _bool_comparisons('(a < ignoring (s) b) and c{s="m"} == 1') == (
        '(a < bool ignoring (s) b) and c{s="m"} == bool 1'
    )
    assert _operands("(x and y) and ignoring (s) z") == ["(x and y)", "z"]


def test_every_panel_and_alert_has_data_from_a_scraped_replay(
    running_worker: Callable[..., Any], kafka_bootstrap: str, prometheus_for: Any
) -> None:
    worker = running_worker(profile="purchases", clock="event")
    prom: Prometheus = prometheus_for(worker.web_url)
    topic = worker.settings_env["CHURN_TOPIC_EVENTS"]

    summary = run_replay(SAMPLE, topic, kafka_bootstrap)
    asyncio.run(_send_invalid(kafka_bootstrap, topic))
    total = summary.sent + len(INVALID_RECORDS)
    _wait_for(prom, f'sum(churn_events_consumed_total{{job="{JOB}"}})', total)
    _wait_for(prom, f'sum(churn_events_invalid_total{{job="{JOB}"}})', len(INVALID_RECORDS))
    time.sleep(5)

    problems = problems_with_panels_and_alerts(prom)
    assert not problems, "\n".join(problems)


def load_dashboard_module() -> ModuleType:
    """Import ops/dashboard.py by path: ops/ is a folder of tools, not an installed package."""
    spec = importlib.util.spec_from_file_location("churn_ops_dashboard", ROOT / "ops/dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def problems_with_panels_and_alerts(prom: Prometheus) -> list[str]:
    """Everything the module docstring promises, as a list of human-readable failures."""
    problems: list[str] = []
    dashboard = load_dashboard_module()
    for spec in dashboard.iter_panels():
        for q in spec.queries:
            if not prom.query(dashboard.plain_promql(q.expr)):
                problems.append(f"panel {spec.title!r}: {q.expr} returns nothing")

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    for rule in alerts:
        name, expr = rule["alert"], " ".join(rule["expr"].split())
        for selector in sorted(set(SELECTOR.findall(expr))):
            if not prom.query(selector):
                problems.append(f"{name}: selector {selector} selects nothing")
        for operand in _operands(expr):
            if not prom.query(_bool_comparisons(operand)):
                problems.append(f"{name}: operand {operand!r} returns nothing")
        if name in QUIET_WHEN_HEALTHY and prom.query(expr):
            problems.append(f"{name} would fire on a healthy run")

    loaded = {
        rule["name"]: rule for group in prom.get("/api/v1/rules")["groups"]
        for rule in group["rules"]
    }  # fmt: skip
    if set(loaded) != {rule["alert"] for rule in alerts}:
        problems.append(f"Prometheus loaded rules {sorted(loaded)}")
    for rule_name, rule in loaded.items():
        if rule["health"] != "ok":
            problems.append(f"{rule_name} evaluation failed: {rule.get('lastError')}")
    return problems


def _synthetic_worker() -> tuple[Any, str]:
    """Serve a Metrics bundle filled with plausible values, as a healthy worker would."""
    m = Metrics.create(CollectorRegistry(), invalid_reasons=("bad_json",), redis_ops=("get",))
    m.worker_healthy.set(1)
    m.partitions_owned.set(2)
    m.set_active_scorer("model")
    for scorer, auc in (("prior", 0.7), ("model", 0.8)):
        m.model_roc_auc.labels(scorer=scorer).set(auc)
        m.model_log_loss.labels(scorer=scorer).set(1 - auc)
        m.churn_probability.labels(scorer=scorer).observe(auc)
    for partition in ("0", "1"):
        m.consumer_lag.labels(topic="app.events", partition=partition).set(0)
        m.watermark.labels(partition=partition).set(8.8e8)
    m.count_consumed("purchase", 1000)
    m.events_invalid.labels(reason="bad_json").inc()
    m.batch_duration.observe(0.01)
    m.batch_size.observe(100)
    m.event_processing.observe(0.001)
    m.observe_warning("watch", published_at=10.0, occurred_at=1.0, received_at=9.9)
    m.recoveries.labels(from_level="watch").inc()
    m.tier_users.labels(dimension="value", tier="gold").set(10)
    m.tier_migrations.labels(dimension="value", from_tier="silver", to_tier="gold").inc()
    m.labels_matured.labels(outcome="churned").inc()
    m.redis_latency.labels(op="get").observe(0.001)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=m.registry)
    return server, f"http://127.0.0.1:{server.server_port}"


def test_panels_and_alerts_against_a_synthetic_worker(prometheus_for: Any) -> None:
    """The same checks against a stand-in exporter: proves the queries, not the worker."""
    server, url = _synthetic_worker()
    try:
        prom: Prometheus = prometheus_for(url)
        _wait_for(prom, f'count(up{{job="{JOB}"}} == 1)', 1, timeout=30)
        time.sleep(4)
        problems = problems_with_panels_and_alerts(prom)
        assert not problems, "\n".join(problems)
    finally:
        server.shutdown()
