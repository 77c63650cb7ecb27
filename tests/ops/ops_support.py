"""Helpers shared by the ops tests: locating files, promtool, and the metric catalogue."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream_app.metrics import Metrics, render

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS_DIR = OPS / "prometheus"

METRIC_REF = re.compile(r"\b(churn_[a-z0-9_]+|up)\b")


def promtool() -> str | None:
    """Return the promtool executable, or None when it is not installed."""
    return shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )


def load_dashboard_module() -> ModuleType:
    """Import ops/dashboard.py by path: ops/ is a folder of tools, not an installed package."""
    spec = importlib.util.spec_from_file_location("churn_ops_dashboard", OPS / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@cache
def exported_sample_names() -> frozenset[str]:
    """Every sample name a worker's /metrics can carry (``_total``, ``_bucket``, ...)."""
    m = Metrics.create(CollectorRegistry())
    m.consumer_lag.labels(topic="t", partition="0").set(0)
    m.tier_users.labels(dimension="d", tier="t").set(0)
    m.tier_migrations.labels(dimension="d", from_tier="a", to_tier="b")
    m.model_roc_auc.labels(scorer="model").set(0)
    m.model_log_loss.labels(scorer="model").set(0)
    m.events_invalid.labels(reason="r")
    m.redis_errors.labels(op="get")
    m.redis_latency.labels(op="get")
    m.watermark.labels(partition="0").set(0)
    families = text_string_to_metric_families(render(m.registry).decode())
    return frozenset(s.name for f in families for s in f.samples)


def referenced_metrics(expr: str) -> set[str]:
    """Metric names an expression selects (``up`` plus everything ``churn_``)."""
    return set(METRIC_REF.findall(expr))
