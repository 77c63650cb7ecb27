"""Backtest on a real purchase log: replay to a cutoff through the running service, score.

The log is replayed through Kafka into a real worker in event time up to the cutoff; the
service learns online from the labels that matured before it. At the cutoff every known
user's churn probability is taken from the service's own state, and compared with what
happened next: churned means no activity between the cutoff and the end of the holdout.
Nothing after the cutoff is ever sent to the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stream_app.admin import score_known_users
from stream_app.settings import Settings, load_settings
from stream_app.tools import session
from stream_app.tools.evaluate import roc_auc, roc_curve
from stream_app.tools.replay import run_replay
from stream_app.tools.report import plot_roc
from stream_app.tools.sources import FORMATS, load_events, parse_time

DAY_S = 86400.0
BASELINES = {"recency": 0.759, "bg_nbd": 0.767, "pareto_nbd": 0.770}


def day_end(day: str) -> float:
    """Epoch seconds of the end of a calendar day (UTC), i.e. the next midnight.

    >>> datetime.fromtimestamp(day_end("1997-09-30"), UTC).isoformat()
    '1997-10-01T00:00:00+00:00'
    """
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return (start + timedelta(days=1)).timestamp()


def holdout_labels(
    events: Sequence[Mapping[str, Any]], cutoff: float, holdout_end: float
) -> tuple[dict[str, bool], dict[str, float]]:
    """Churn labels of the users known at the cutoff, and their last activity before it.

    >>> evs = [{"user_id": "a", "occurred_at": "1997-01-01T12:00:00Z"},
    ...        {"user_id": "b", "occurred_at": "1997-01-02T12:00:00Z"},
    ...        {"user_id": "b", "occurred_at": "1997-11-02T12:00:00Z"}]
    >>> labels, _ = holdout_labels(evs, day_end("1997-09-30"), day_end("1998-06-30"))
    >>> labels
    {'a': True, 'b': False}
    """
    last_before: dict[str, float] = {}
    active_after: set[str] = set()
    for event in events:
        t = parse_time(str(event["occurred_at"]))
        user = str(event["user_id"])
        if t < cutoff:
            last_before[user] = max(t, last_before.get(user, t))
        elif t < holdout_end:
            active_after.add(user)
    return {u: u not in active_after for u in sorted(last_before)}, last_before


def summarise(
    scores: Mapping[str, float],
    labels: Mapping[str, bool],
    last: Mapping[str, float],
    cutoff: float,
) -> dict[str, Any]:
    """AUC of the service's scores and of recency alone, over the users known at the cutoff."""
    users = sorted(labels)
    y = [labels[u] for u in users]
    p = [scores.get(u, float("nan")) for u in users]
    missing = sum(1 for v in p if v != v)
    recency = [(cutoff - last[u]) / DAY_S for u in users]
    return {
        "users": len(users),
        "churned_share": round(sum(y) / len(y), 4) if y else None,
        "scored": len(users) - missing,
        "roc_auc": roc_auc(y, [0.5 if v != v else v for v in p]),
        "recency_roc_auc": roc_auc(y, recency),
        "published_baselines": BASELINES,
    }


def write_outputs(result: dict[str, Any], curve: list[tuple[float, float]], out_dir: Path) -> None:
    """JSON for machines, a ROC curve image and a short Markdown report for people."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc(curve, result["roc_auc"], out_dir / "roc.png")
    lines = [
        "# Backtest",
        "",
        f"- data: `{result['data']}`, cutoff {result['cutoff']}, holdout end "
        f"{result['holdout_end']}",
        f"- users known at the cutoff: {result['users']:,}, churned: {result['churned_share']:.1%}",
        f"- **ROC AUC of the service's scores: {result['roc_auc']:.4f}** "
        f"(recency alone here: {result['recency_roc_auc']:.4f}; published: recency 0.759, "
        "BG/NBD 0.767, Pareto/NBD 0.770)",
        f"- wall time {result['elapsed_s']:.1f} s ({result['events_replayed']:,} events)",
        "",
        "![ROC curve](roc.png)",
    ]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def backtest(
    path: str,
    cutoff: str,
    holdout_end: str,
    *,
    input_format: str | None = None,
    horizon_days: float = 90.0,
    workers: int | None = None,
    out: Any = None,
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """Run the whole backtest on the embedded stack; return the result and the ROC curve."""
    started = time.monotonic()
    token = uuid.uuid4().hex[:8]
    base = load_settings()
    settings = session.run_settings(
        base,
        app_id=f"backtest-{token}",
        sampling_salt="backtest",  # fixed, unlike the app id: every run scores the same
        key_prefix=f"backtest-{token}:",
        topic_events=f"backtest-{token}.app.events",
        topic_dlq=f"backtest-{token}.app.events.dlq",
        topic_warnings=f"backtest-{token}.churn.warnings",
        topic_tiers=f"backtest-{token}.user.tiers",
        profile="purchases",
        churn_horizon_days=horizon_days,
        clock="event",
        web_port=session.free_port(),
    )
    cut, end = day_end(cutoff), day_end(holdout_end)
    run_dir = settings.embedded_run_dir
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(now - mark, 2)
        mark = now

    with session.running_stack(settings), ThreadPoolExecutor(1) as pool:
        phase("stack_s")
        # The replay only needs the broker: it runs while the workers start and join.
        replay = pool.submit(
            run_replay,
            path,
            settings.topic_events,
            settings.kafka_bootstrap,
            fmt=input_format,  # type: ignore[arg-type]
            until=cut,
            out=out,
            settings=settings,
        )
        with session.running_workers(
            settings,
            workers or session.default_workers(settings.partitions),
            run_dir,
            f"worker-{token}",
        ):
            summary = replay.result()
            phase("workers_and_replay_s")
            session.wait_drained(settings, settings.topic_events, summary.sent, out=out)
            phase("drain_s")
            scores = asyncio.run(score_known_users(settings, cut))
            phase("score_s")
        asyncio.run(_cleanup(settings))
    phase("stop_s")
    loaded = load_events(path, input_format)  # type: ignore[arg-type]
    labels, last = holdout_labels(loaded.events, cut, end)
    result = summarise(scores, labels, last, cut)
    users = sorted(labels)
    curve = roc_curve([labels[u] for u in users], [scores.get(u, 0.5) for u in users])
    phase("summary_s")
    result.update(
        data=str(path),
        cutoff=cutoff,
        holdout_end=holdout_end,
        horizon_days=horizon_days,
        events_replayed=summary.sent,
        replay_rate=summary.rate,
        elapsed_s=round(time.monotonic() - started, 2),
        phases_s=phases,
    )
    return result, curve


async def _cleanup(settings: Settings) -> None:
    """Remove this run's keys so repeated backtests do not fill a shared Redis."""
    from stream_app.kafka_clients import redis_client

    client = redis_client(settings)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{settings.key_prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.delete(*batch)
                batch.clear()
        if batch:
            await client.delete(*batch)
    finally:
        await client.aclose()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the backtest's options."""
    parser.add_argument(
        "path",
        nargs="?",
        default="data/CDNOW_master.txt",
        help="purchase log: CDNOW format or CSV (user_id, occurred_at, ...)",
    )
    parser.add_argument("--input-format", dest="input_format", choices=FORMATS)
    parser.add_argument("--cutoff", default="1997-09-30", help="last day the service sees")
    parser.add_argument("--holdout-end", default="1998-06-30", help="last day of the holdout")
    parser.add_argument(
        "--horizon-days", type=float, default=90.0, help="churn horizon the service learns with"
    )
    parser.add_argument("--json-out", type=Path, help="write the result as JSON here")
    parser.add_argument(
        "--workers",
        type=session.positive_int,
        help="worker processes sharing the partitions (default: one per CPU, at most one "
        "per partition); the scores do not depend on it",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("out/backtest"),
        help="folder for the Markdown report and the ROC curve image",
    )


def run(args: argparse.Namespace) -> int:
    """Run the backtest and print its result."""
    result, curve = backtest(
        args.path,
        args.cutoff,
        args.holdout_end,
        input_format=args.input_format,
        horizon_days=args.horizon_days,
        workers=args.workers,
        out=sys.stderr,
    )
    write_outputs(result, curve, args.report_dir)
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(text)
    print(f"report: {args.report_dir / 'report.md'}", file=sys.stderr)
    return 0
