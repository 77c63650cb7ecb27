"""Generate the Grafana dashboard of the churn worker from code.

The dashboard is code so that every panel's query sits next to the metric names it depends on
and a renamed metric shows up in review, not as an empty panel weeks later. The generated
JSON is committed (Grafana provisions it as a file) and a test regenerates it to catch drift:

    python ops/dashboard.py            # rewrite ops/grafana/dashboards/churn.json
    python ops/dashboard.py --check    # exit 1 if the committed JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "churn.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
UID = "churn-overview"

SEL = '{instance=~"$instance"}'
RATE = "$__rate_interval"

GRAFANA_VARIABLES = {RATE: "1m", "$instance": ".*"}
"""Values standing in for the dashboard's variables when a query is run outside Grafana."""

WIDTH = 24
HEIGHT = 8


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and how its series are named in the legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    """A panel before layout: kept apart from grafanalib so tests can walk every query."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 8


@dataclass(frozen=True)
class Row:
    """A titled group of panels laid out left to right, wrapping at the dashboard width."""

    title: str
    panels: tuple[PanelSpec, ...]


def _quantiles(metric: str, by: str = "", qs: Sequence[float] = (0.5, 0.99)) -> tuple[Query, ...]:
    group = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{SEL}[{RATE}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in qs
    )


def _rate(metric: str, by: str) -> Query:
    return Query(f"sum by ({by}) (rate({metric}{SEL}[{RATE}]))", f"{{{{{by}}}}}")


ROWS: tuple[Row, ...] = (
    Row(
        "Throughput",
        (
            PanelSpec(
                "Events consumed by kind",
                "Records read from app.events per second; unknown kinds are folded into 'other'.",
                (_rate("churn_events_consumed_total", "kind"),),
                unit="ops",
            ),
            PanelSpec(
                "Invalid events by reason",
                "Records sent to app.events.dlq per second, by validation failure.",
                (_rate("churn_events_invalid_total", "reason"),),
                unit="ops",
            ),
            PanelSpec(
                "Late and duplicate events",
                "Events behind the watermark beyond the allowed lateness, and replayed ids.",
                (
                    Query(f"sum(rate(churn_events_late_total{SEL}[{RATE}]))", "late"),
                    Query(f"sum(rate(churn_events_duplicate_total{SEL}[{RATE}]))", "duplicate"),
                ),
                unit="ops",
            ),
            PanelSpec(
                "Consumer lag by partition",
                "Records waiting between each partition's end and the committed offset.",
                (
                    Query(
                        f"sum by (topic, partition) (churn_consumer_lag{SEL})",
                        "{{topic}}/{{partition}}",
                    ),
                ),
            ),
            PanelSpec(
                "Event-time watermark",
                "How far event time has progressed per partition; years ago during a replay.",
                (
                    Query(
                        f"max by (partition) (churn_watermark_seconds{SEL}) * 1000",
                        "partition {{partition}}",
                    ),
                ),
                unit="dateTimeAsIso",
            ),
            PanelSpec(
                "Workers: healthy and partitions owned",
                "Each worker's self-reported health (1 = healthy) and its partition count.",
                (
                    Query(f"churn_worker_healthy{SEL}", "healthy {{instance}}"),
                    Query(f"churn_partitions_owned{SEL}", "partitions {{instance}}"),
                ),
            ),
        ),
    ),
    Row(
        "Latency",
        (
            PanelSpec(
                "Batch processing time",
                "Wall-clock time to process one batch, p50 and p99.",
                _quantiles("churn_batch_duration_seconds"),
                unit="s",
            ),
            PanelSpec(
                "Per-event processing time",
                "Validation, window update and scoring of a single event, p50 and p99.",
                _quantiles("churn_event_processing_seconds"),
                unit="s",
            ),
            PanelSpec(
                "Batch size",
                "Records per processed batch, p50 and p99.",
                _quantiles("churn_batch_size_events"),
            ),
            PanelSpec(
                "Warning latency (event time to publish)",
                "Publish time minus the event's occurred_at: the business-facing delay. "
                "Meaningless during a replay of old data (everything lands in +Inf).",
                _quantiles("churn_warning_latency_seconds"),
                unit="s",
                width=12,
            ),
            PanelSpec(
                "Processing latency (receive to publish)",
                "Publish time minus the time the worker received the record: the worker's "
                "own delay, meaningful live and in replay.",
                _quantiles("churn_processing_latency_seconds"),
                unit="s",
                width=12,
            ),
        ),
    ),
    Row(
        "Warnings and tiers",
        (
            PanelSpec(
                "Warnings by level",
                "Churn warnings published to churn.warnings per second.",
                (_rate("churn_warnings_emitted_total", "level"),),
                unit="ops",
                width=12,
            ),
            PanelSpec(
                "Recoveries",
                "Warned users who became active again, by the level they recovered from.",
                (_rate("churn_recoveries_total", "from_level"),),
                unit="ops",
                width=12,
            ),
            PanelSpec(
                "Tier populations",
                "Users in each tier, per dimension, summed over workers.",
                (
                    Query(
                        f"sum by (dimension, tier) (churn_tier_users{SEL})",
                        "{{dimension}}: {{tier}}",
                    ),
                ),
                width=12,
            ),
            PanelSpec(
                "Tier migrations",
                "Users moving between tiers per second, as published to user.tiers.",
                (
                    Query(
                        "sum by (dimension, from_tier, to_tier) "
                        f"(rate(churn_tier_migrations_total{SEL}[{RATE}]))",
                        "{{dimension}}: {{from_tier}} → {{to_tier}}",
                    ),
                ),
                unit="ops",
                width=12,
            ),
        ),
    ),
    Row(
        "Model",
        (
            PanelSpec(
                "ROC AUC: prior vs model",
                "Live ROC AUC over matured labels; the model should stay above the prior.",
                (Query(f"avg by (scorer) (churn_model_roc_auc{SEL})", "{{scorer}}"),),
                unit="percentunit",
            ),
            PanelSpec(
                "Log loss: prior vs model",
                "Live log loss over matured labels; lower is better.",
                (Query(f"avg by (scorer) (churn_model_log_loss{SEL})", "{{scorer}}"),),
            ),
            PanelSpec(
                "Active scorer",
                "Number of workers whose warnings are driven by each scorer.",
                (Query(f"sum by (scorer) (churn_model_active{SEL})", "{{scorer}}"),),
                kind="stat",
            ),
            PanelSpec(
                "Churn probability",
                "Median and 90th percentile of the probabilities each scorer produces.",
                _quantiles("churn_model_probability", by="scorer", qs=(0.5, 0.9)),
                unit="percentunit",
            ),
            PanelSpec(
                "Labels matured",
                "Predictions whose outcome became known and trained the model, per second.",
                (_rate("churn_model_labels_matured_total", "outcome"),),
                unit="ops",
            ),
            PanelSpec(
                "Drift detections",
                "Concept drift detections on the model's error stream.",
                (
                    Query(
                        f"sum by (instance) (increase(churn_model_drift_total{SEL}[{RATE}]))",
                        "{{instance}}",
                    ),
                ),
            ),
        ),
    ),
    Row(
        "Redis",
        (
            PanelSpec(
                "Redis latency by operation",
                "Round-trip time of Redis calls, p50 and p99 per operation.",
                _quantiles("churn_redis_latency_seconds", by="op"),
                unit="s",
                width=12,
            ),
            PanelSpec(
                "Redis errors by operation",
                "Failed Redis calls per second.",
                (_rate("churn_redis_errors_total", "op"),),
                unit="ops",
                width=12,
            ),
        ),
    ),
)


def iter_panels() -> Iterator[PanelSpec]:
    """Yield every panel spec in dashboard order (used by the tests to query Prometheus)."""
    for row in ROWS:
        yield from row.panels


def plain_promql(expr: str) -> str:
    """Fill in Grafana's variables so Prometheus (promtool, the HTTP API) accepts ``expr``."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def _targets(spec: PanelSpec) -> list[Any]:
    return [
        Target(expr=q.expr, legendFormat=q.legend, refId=chr(ord("A") + i), datasource=DATASOURCE)
        for i, q in enumerate(spec.queries)
    ]


def _panel(spec: PanelSpec, pos: Any) -> Any:
    if spec.kind == "stat":
        return Stat(
            title=spec.title,
            description=spec.description,
            dataSource=DATASOURCE,
            targets=_targets(spec),
            gridPos=pos,
            reduceCalc="lastNotNull",
            graphMode="none",
            format=spec.unit,
        )
    return TimeSeries(
        title=spec.title,
        description=spec.description,
        dataSource=DATASOURCE,
        targets=_targets(spec),
        gridPos=pos,
        unit=spec.unit,
        legendDisplayMode="list",
        tooltipMode="multi",
        maxDataPoints=None,
    )


def _layout() -> list[Any]:
    panels: list[Any] = []
    y = 0
    for row in ROWS:
        panels.append(RowPanel(title=row.title, gridPos=GridPos(h=1, w=WIDTH, x=0, y=y)))
        y += 1
        x = 0
        for spec in row.panels:
            if x + spec.width > WIDTH:
                x, y = 0, y + HEIGHT
            panels.append(_panel(spec, GridPos(h=HEIGHT, w=spec.width, x=x, y=y)))
            x += spec.width
        y += HEIGHT
    return panels


def build() -> Any:
    """Return the grafanalib dashboard object (ids assigned, ready to serialise)."""
    instance = Template(
        name="instance",
        label="Worker",
        query="label_values(churn_worker_healthy, instance)",
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        default="$__all",
        refresh=2,
    )
    return Dashboard(
        title="Churn warnings",
        uid=UID,
        description="Throughput, latency, warnings, tiers and model quality of the churn workers.",
        tags=["churn", "kafka", "faust"],
        timezone="utc",
        refresh="10s",
        schemaVersion=39,
        time=Time("now-1h", "now"),
        templating=Templating(list=[instance]),
        panels=_layout(),
    ).auto_panel_ids()


def render() -> str:
    """Serialise the dashboard deterministically (sorted keys, trailing newline)."""
    data = build().to_json_data()
    return json.dumps(data, cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard JSON, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    output: Path = args.output
    if args.check:
        if not output.exists() or output.read_text(encoding="utf-8") != text:
            print(f"{output.name} is stale: run python ops/dashboard.py", file=sys.stderr)
            return 1
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
