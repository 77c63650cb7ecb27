"""The README's main job: real data through the real service, and what a subscriber sees.

Starts the embedded broker and Redis (or uses the ones the settings point at), runs a
worker, replays the CDNOW purchase log through Kafka in event time, takes the backtest at
the standard cutoff on the way, then reads ``churn.warnings`` as a push or CRM system would
and prints a summary by level, a few example warnings, and the evaluation. Everything it
started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from stream_app.admin import score_known_users
from stream_app.records import validator
from stream_app.tools import session
from stream_app.tools.backtest import day_end, holdout_labels, summarise
from stream_app.tools.evaluate import evaluate, labels_from_events
from stream_app.tools.replay import run_replay
from stream_app.tools.report import write_report
from stream_app.tools.sources import load_events
from stream_app.tools.tail import Record, format_record, read_topic

SCHEMA_OF = {"warning": "churn_warning.v1", "recovered": "user_recovered.v1"}


def level_summary(records: list[Record]) -> dict[str, int]:
    """Warnings by level name, and recoveries.

    >>> recs = [Record("t", 0, 0, "u", {"warning_id": "w", "level": 2, "level_name": "warning"},
    ...                {"ce_type": "dev.churnwarnings.warning.v1"})]
    >>> level_summary(recs)
    {'warning': 1}
    """
    counts: Counter[str] = Counter()
    for r in records:
        if r.kind == "warning":
            counts[str(r.value["level_name"])] += 1
        elif r.kind == "recovered":
            counts["recovered"] += 1
    order = ["watch", "warning", "critical", "recovered"]
    return {k: counts[k] for k in order if counts[k]}


def flags_at(records: list[Record], cutoff: float) -> dict[str, int]:
    """Each user's open warning level at ``cutoff``, from the records published before it.

    >>> w = {"ce_type": "dev.churnwarnings.warning.v1"}
    >>> r = {"ce_type": "dev.churnwarnings.recovered.v1"}
    >>> recs = [Record("t", 0, 0, "a", {"warning_id": "1", "user_id": "a", "level": 2,
    ...                                 "event_time": "1997-01-01T00:00:00Z"}, w),
    ...         Record("t", 0, 1, "b", {"warning_id": "2", "user_id": "b", "level": 1,
    ...                                 "event_time": "1997-01-01T00:00:00Z"}, w),
    ...         Record("t", 0, 2, "b", {"recovery_id": "3", "user_id": "b",
    ...                                 "event_time": "1997-02-01T00:00:00Z"}, r)]
    >>> flags_at(recs, 9e8)
    {'a': 2}
    """
    level: dict[str, int] = {}
    for r in sorted(records, key=_time):
        if _time(r) >= cutoff:
            break
        user = str(r.value["user_id"])
        if r.kind == "warning":
            level[user] = max(level.get(user, 0), int(r.value["level"]))
        elif r.kind == "recovered":
            level.pop(user, None)
    return level


def flag_quality(flags: dict[str, int], labels: dict[str, bool]) -> dict[str, dict[str, Any]]:
    """Precision and recall, per level, of "flagged at the cutoff" for "never came back".

    >>> flag_quality({"a": 2, "b": 1}, {"a": True, "b": False, "c": True})["1"]
    {'flagged': 2, 'precision': 0.5, 'recall': 0.5}
    """
    churners = sum(labels.values())
    out = {}
    for level in (1, 2, 3):
        flagged = [u for u, lv in flags.items() if lv >= level and u in labels]
        hits = sum(labels[u] for u in flagged)
        out[str(level)] = {
            "flagged": len(flagged),
            "precision": round(hits / len(flagged), 4) if flagged else None,
            "recall": round(hits / churners, 4) if churners else None,
        }
    return out


def check_schemas(records: list[Record], most: int = 2000) -> int:
    """Validate an evenly spread sample of the records against their schemas (raises on the
    first bad one); the test suite validates every record of its runs."""
    checks = {kind: validator(name) for kind, name in SCHEMA_OF.items()}
    step = max(1, len(records) // most)
    sample = records[::step]
    for r in sample:
        if r.kind in checks:
            checks[r.kind](r.value)
    return len(sample)


def demo(
    path: str, cutoff: str, holdout_end: str, out_dir: Path, workers: int | None = None
) -> dict[str, Any]:
    """Run the whole demo; return the machine-readable summary."""
    err = sys.stderr
    token = uuid.uuid4().hex[:8]
    settings = session.run_settings(
        key_prefix=f"demo-{token}:",
        sampling_salt="backtest",  # the backtest's: the demo's scores at the cutoff equal it
        profile="purchases",
        churn_horizon_days=90.0,
        clock="event",
        web_port=session.free_port(),
    )
    cut, end = day_end(cutoff), day_end(holdout_end)
    with (
        session.running_stack(settings),
        session.running_workers(
            settings,
            workers or session.default_workers(settings.partitions),
            settings.embedded_run_dir,
            f"demo-worker-{token}",
        ),
    ):
        print(f"== replaying {path} up to the cutoff {cutoff}", file=err)
        first = run_replay(
            path,
            settings.topic_events,
            settings.kafka_bootstrap,
            until=cut,
            out=err,
            settings=settings,
        )
        session.wait_drained(settings, settings.topic_events, first.sent, out=err)
        scores = asyncio.run(score_known_users(settings, cut))
        print(f"== replaying the rest, to {holdout_end}", file=err)
        rest = run_replay(
            path,
            settings.topic_events,
            settings.kafka_bootstrap,
            since=cut,
            out=err,
            settings=settings,
        )
        session.wait_drained(settings, settings.topic_events, first.sent + rest.sent, out=err)
        print("== reading churn.warnings as a subscriber", file=err)
        warnings = list(
            read_topic(
                settings.kafka_bootstrap,
                settings.topic_warnings,
                stop_at_end=True,
                idle_timeout_s=5,
                settings=settings,
            )
        )
        tier_records = list(
            read_topic(
                settings.kafka_bootstrap,
                settings.topic_tiers,
                stop_at_end=True,
                idle_timeout_s=5,
                settings=settings,
            )
        )
    events = load_events(path).events
    labels, last = holdout_labels(events, cut, end)
    backtest = summarise(scores, labels, last, cut)
    truth = labels_from_events(events, cut, end - cut)
    after = [r for r in warnings if r.kind != "warning" or _time(r) >= cut]
    evaluation = evaluate(
        after,
        truth,
        tier_records=tier_records,
        horizon_days=(end - cut) / 86400,
        scores=scores,
        period_days=(end - cut) / 86400,
    )
    write_report(evaluation, out_dir)
    return {
        "events_replayed": first.sent + rest.sent,
        "replay_rate": rest.rate,
        "warnings_by_level": level_summary(warnings),
        "records_validated": check_schemas(warnings),
        "examples": [r.value for r in _examples(warnings)],
        "example_lines": [format_record(r) for r in _examples(warnings)],
        "backtest": backtest,
        "flags_at_cutoff": flag_quality(flags_at(warnings, cut), labels),
        "evaluation": {
            k: evaluation[k]
            for k in ("warnings", "warned_users", "levels", "lead_time_days", "auc")
        },
        "report": str(out_dir / "report.md"),
    }


def _time(record: Record) -> float:
    from stream_app.tools.sources import parse_time

    return parse_time(str(record.value["event_time"]))


def _examples(records: list[Record]) -> list[Record]:
    chosen: dict[int, Record] = {}
    for r in records:
        if r.kind == "warning":
            chosen.setdefault(int(r.value["level"]), r)
    return [chosen[k] for k in sorted(chosen)]


def print_summary(result: dict[str, Any]) -> None:
    """What a person reads at the end of the demo."""
    bt = result["backtest"]
    print("\nWarnings received by a subscriber of churn.warnings:")
    for name, count in result["warnings_by_level"].items():
        print(f"  {name:<10} {count:>7,}")
    print(f"  ({result['records_validated']:,} of them checked: valid against their schemas)")
    print("\nExample warnings, one line each:")
    for line in result["example_lines"]:
        print(f"  {line}")
    print("\nOne of them as the subscriber receives it:")
    if result["examples"]:
        print(json.dumps(result["examples"][-1], indent=2))
    print(
        f"\nBacktest at the cutoff: ROC AUC {bt['roc_auc']:.4f} over {bt['users']:,} users "
        f"(recency alone {bt['recency_roc_auc']:.4f}; Pareto/NBD 0.770)"
    )
    print("Customers with an open warning at the cutoff, against 'no purchase in the holdout':")
    for level, q in result["flags_at_cutoff"].items():
        print(
            f"  level >= {level}: {q['flagged']:>6,} flagged, precision {q['precision']}, "
            f"recall {q['recall']}"
        )
    ev = result["evaluation"]
    print(f"After the cutoff: {ev['warnings']:,} warnings to {ev['warned_users']:,} customers.")
    print(f"Report with plots: {result['report']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the demo's options."""
    parser.add_argument("path", nargs="?", default="data/CDNOW_master.txt")
    parser.add_argument("--cutoff", default="1997-09-30")
    parser.add_argument("--holdout-end", default="1998-06-30")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--json-out", type=Path, help="also write the summary as JSON")
    parser.add_argument(
        "--workers",
        type=session.positive_int,
        help="worker processes (default: one per CPU, at most one per partition)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary."""
    result = demo(args.path, args.cutoff, args.holdout_end, args.out, args.workers)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_summary(result)
    return 0
