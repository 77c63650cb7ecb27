"""Write an evaluation as ``metrics.json`` for machines and ``report.md`` with plots.

The report is rendered only from the metrics dict, so a saved ``metrics.json`` can be
re-rendered, and plots never need the broker or the raw stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import orjson


def _fmt(value: Any, percent: bool = False, digits: int = 3) -> str:
    """Render a metric for a table, with ``-`` for missing values.

    Examples
    --------
    >>> _fmt(None), _fmt(0.12345), _fmt(0.5, percent=True), _fmt(7), _fmt(13.99, digits=1)
    ('-', '0.123', '50.0%', '7', '14.0')
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"
    return str(value)


def plot_roc(points: Sequence[Sequence[float]], auc: float | None, path: Path) -> None:
    """ROC curve of the scores, with the chance diagonal for reference."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], label=f"AUC {_fmt(auc)}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (scored users)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lead_times(days: Sequence[float], path: Path) -> None:
    """Histogram of days between the flagging warning and the churn it announced."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if days:
        ax.hist(days, bins=min(30, max(5, len(days) // 3)), color="tab:blue")
    ax.axvline(0, color="black", linewidth=1)
    ax.set(
        xlabel="lead time (days; negative = warned after leaving)",
        ylabel="churners",
        title="Lead time of true positives",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tier_flows(flows: Mapping[str, Mapping[str, int]], path: Path) -> None:
    """One heat map per tier dimension: rows are the tier left, columns the tier entered."""
    dims = sorted(flows) or ["none"]
    fig, axes = plt.subplots(1, len(dims), figsize=(5 * len(dims), 4), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        counts = flows.get(dim, {})
        pairs = [key.split(" -> ", 1) for key in counts]
        sources = sorted({p[0] for p in pairs})
        targets = sorted({p[1] for p in pairs})
        grid = [[counts.get(f"{s} -> {t}", 0) for t in targets] for s in sources]
        if grid:
            ax.imshow(grid, cmap="Blues")
            top = max(max(row) for row in grid)
            for i, row in enumerate(grid):
                for j, value in enumerate(row):
                    colour = "white" if value > top / 2 else "black"
                    ax.text(j, i, str(value), ha="center", va="center", color=colour)
        ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
        ax.set_yticks(range(len(sources)), sources)
        ax.set(xlabel="to", ylabel="from", title=f"{dim} changes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: Mapping[str, Any]) -> str:
    """The human report: headline numbers, tables and links to the plots."""
    auc = result.get("auc", {})
    lead = result.get("lead_time_days", {})
    lines = [
        "# Churn warning evaluation",
        "",
        f"{result.get('users', 0):,} users, {result.get('churners', 0):,} churned; "
        f"{result.get('warnings', 0):,} warnings to {result.get('warned_users', 0):,} users "
        f"over {_fmt(result.get('period_days'), digits=1)} days "
        f"({_fmt(result.get('warnings_per_1000_users_day'), digits=2)} per 1,000 users per day).",
        "",
        "## Ranking",
        "",
        f"- ROC AUC on scored users: **{_fmt(auc.get('auc'))}** "
        f"({auc.get('scored_users', 0):,} users, coverage {_fmt(auc.get('coverage'), True)}; "
        f"scores from {result.get('score_source', 'warnings')})",
        f"- ROC AUC on all users, unscored as 0: {_fmt(auc.get('auc_all_users'))}",
        "",
        "![ROC curve](roc.png)",
        "",
        f"## Precision and recall (churn within {_fmt(result.get('horizon_days'), digits=1)} days)",
        "",
        "| acting on | flagged users | true positives | precision | recall |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for level, stats in sorted(result.get("levels", {}).items()):
        lines.append(
            f"| level {level}+ | {stats['flagged']:,} | {stats['true_positives']:,} | "
            f"{_fmt(stats['precision'], True)} | {_fmt(stats['recall'], True)} |"
        )
    lines += [
        "",
        "## Lead time",
        "",
        f"Median {_fmt(lead.get('median'), digits=1)} days (25-75%: "
        f"{_fmt(lead.get('p25'), digits=1)} to {_fmt(lead.get('p75'), digits=1)}); "
        f"{_fmt(lead.get('share_positive'), True)} of {lead.get('count', 0):,} true "
        "positives were warned before they left.",
        "",
        "![Lead times](lead_times.png)",
        "",
        "## Holdout",
        "",
        "| group | users | mean p | recovered | churned |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, group in result.get("holdout", {}).items():
        lines.append(
            f"| {name} | {group['users']:,} | {_fmt(group['mean_probability'])} | "
            f"{_fmt(group['recovery_rate'], True)} | {_fmt(group['churn_rate'], True)} |"
        )
    lines += ["", "## Tier changes", ""]
    flows = result.get("tier_flows", {})
    lines += ["![Tier flows](tier_flows.png)", ""] if flows else ["No tier changes read.", ""]
    return "\n".join(lines)


def write_report(result: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``metrics.json``, ``report.md`` and the plots; returns the report's path."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_bytes(
        orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    )
    plot_roc(result.get("roc", []), result.get("auc", {}).get("auc"), folder / "roc.png")
    plot_lead_times(result.get("lead_times_days", []), folder / "lead_times.png")
    if result.get("tier_flows"):
        plot_tier_flows(result["tier_flows"], folder / "tier_flows.png")
    report = folder / "report.md"
    report.write_text(markdown(result) + "\n", encoding="utf-8")
    return report
