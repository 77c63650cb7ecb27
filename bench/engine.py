"""Throughput of the per-partition engine on a CDNOW replay, in process, without Kafka.

Run from a checkout with ``python bench/engine.py``. The first ``--events`` CDNOW purchases
(up to the 1997-10-01 cutoff) are decoded the way the worker decodes them, split over
``--partitions`` partitions by user id, and one partition is replayed through
:class:`PartitionEngine` in batches of ``--batch`` events. Between batches every touched
user is encoded into and decoded from a plain dict, the way the worker round-trips Redis,
and the partition snapshot is taken once per batch unless ``--no-snapshot`` is given.

An *evaluation* is one score of one user: one per applied event plus one per absence
deadline the watermark passes. Prints one JSON object with the time spent in
``engine.process`` (the pure core; wall and CPU time, the latter steadier on a busy
machine), in the user-record codec and in snapshots, events/s and evaluations/s overall and
for the core alone, and microseconds per evaluation.
With ``--profile`` the run goes under cProfile and the top functions by cumulative time are
printed to stderr first. With ``--breakdown`` the functions the engine calls are wrapped in
timers and the JSON gains their calls and microseconds per call (each figure includes about
0.1 us of timer overhead; the wrapped run is slower overall). Deterministic apart from the
timings.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_app import alerts, engine, tiers, userrecord
from stream_app.core import Core, build_core
from stream_app.engine import PartitionEngine
from stream_app.model.labels import LabelBook
from stream_app.model.learner import ChurnScorer
from stream_app.processor import partition_of
from stream_app.records import AppEvent, decode_event
from stream_app.settings import load_settings
from stream_app.tools.replay import encode
from stream_app.tools.sources import load_events
from stream_app.windows import WindowsBuilder

ROOT = Path(__file__).resolve().parent.parent
CUTOFF = 875_664_000.0  # 1997-10-01T00:00:00Z


def partition_events(path: Path, events: int, partitions: int, partition: int) -> list[AppEvent]:
    """The first ``events`` events of ``path`` that fall on ``partition``, decoded."""
    loaded = load_events(path, until=CUTOFF).events[:events]
    decoded = (decode_event(encode(e)[1], []) for e in loaded)
    return [e for e in decoded if partition_of(e.user_id, partitions) == partition]


def replay(core: Core, events: list[AppEvent], batch: int, snapshot: bool) -> dict[str, Any]:
    """Replay ``events`` through a fresh engine; seconds per phase and counts."""
    engine = PartitionEngine(core)
    store: dict[str, bytes] = {}
    timings = {"process_s": 0.0, "process_cpu_s": 0.0, "codec_s": 0.0, "snapshot_s": 0.0}
    evaluations = outputs = 0
    clock, cpu = time.perf_counter, time.process_time
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        t0 = clock()
        needed = engine.users_needed(chunk)
        records = {u: userrecord.decode(store[u], core.windows) for u in needed if u in store}
        t1, c1 = clock(), cpu()
        result = engine.process(chunk, dict(records))
        t2 = clock()
        timings["process_cpu_s"] += cpu() - c1
        for user, record in result.users.items():
            if record is None:
                store.pop(user, None)
            else:
                store[user] = userrecord.encode(record)
        t3 = clock()
        if snapshot:
            engine.snapshot()
        t4 = clock()
        timings["codec_s"] += (t1 - t0) + (t3 - t2)
        timings["process_s"] += t2 - t1
        timings["snapshot_s"] += t4 - t3
        evaluations += len(result.scores)
        outputs += len(result.outputs)
    return {"evaluations": evaluations, "outputs": outputs, **timings}


# (owner, attribute, label): what --breakdown times, as the engine looks them up.
TIMED: tuple[tuple[Any, str, str], ...] = (
    (engine, "features", "features.features"),
    (ChurnScorer, "score", "learner.ChurnScorer.score"),
    (LabelBook, "on_score", "labels.LabelBook.on_score"),
    (LabelBook, "on_activity", "labels.LabelBook.on_activity"),
    (LabelBook, "mature", "labels.LabelBook.mature"),
    (tiers, "lifecycle", "tiers.lifecycle"),
    (tiers, "rfm_values", "tiers.rfm_values"),
    (tiers.RfmSketches, "update", "tiers.RfmSketches.update"),
    (tiers.RfmSketches, "scores", "tiers.RfmSketches.scores"),
    (tiers, "segment_of", "tiers.segment_of"),
    (tiers, "step_tiers", "tiers.step_tiers"),
    (tiers, "next_lifecycle_deadline", "tiers.next_lifecycle_deadline"),
    (alerts, "observe", "alerts.observe"),
    (alerts, "is_holdout", "alerts.is_holdout"),
    (alerts, "step", "alerts.step"),
    (alerts, "next_deadline", "alerts.next_deadline"),
    (engine, "expired", "windows.expired"),
    (WindowsBuilder, "apply", "windows.WindowsBuilder.apply"),
    (WindowsBuilder, "freeze", "windows.WindowsBuilder.freeze"),
    (userrecord, "encode", "userrecord.encode"),
    (userrecord, "decode", "userrecord.decode"),
)


def _timer(fn: Callable[..., Any], slot: list[float]) -> Callable[..., Any]:
    clock = time.perf_counter

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            slot[0] += clock() - t
            slot[1] += 1

    return timed


def instrument() -> dict[str, list[float]]:
    """Wrap every :data:`TIMED` function in a timer; returns ``label -> [seconds, calls]``."""
    slots: dict[str, list[float]] = {}
    for owner, name, label in TIMED:
        slot = slots[label] = [0.0, 0]
        setattr(owner, name, _timer(getattr(owner, name), slot))
    return slots


def breakdown(slots: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Calls and microseconds per call of each timed function, most expensive first."""
    rows = sorted(slots.items(), key=lambda kv: -kv[1][0])
    return {
        label: {"calls": int(n), "total_s": round(s, 4), "us_per_call": round(1e6 * s / n, 2)}
        for label, (s, n) in rows
        if n
    }


def report(events: int, run: dict[str, Any]) -> dict[str, Any]:
    """Rates derived from a :func:`replay` result."""
    total = run["process_s"] + run["codec_s"] + run["snapshot_s"]
    evals = run["evaluations"]
    return {
        "events": events,
        **run,
        "total_s": total,
        "events_per_s": events / total,
        "evaluations_per_s": evals / total,
        "core_events_per_s": events / run["process_s"],
        "core_evaluations_per_s": evals / run["process_s"],
        "core_us_per_evaluation": 1e6 * run["process_s"] / max(evals, 1),
        "core_cpu_us_per_evaluation": 1e6 * run["process_cpu_s"] / max(evals, 1),
        "us_per_evaluation": 1e6 * total / max(evals, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse options, replay, print the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("events", nargs="?", type=int, default=20_000, help="CDNOW rows read")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "CDNOW_master.txt")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--no-snapshot", action="store_true", help="skip engine.snapshot()")
    parser.add_argument("--profile", action="store_true", help="run under cProfile")
    parser.add_argument("--top", type=int, default=40, help="profile rows to print")
    parser.add_argument("--breakdown", action="store_true", help="time each engine callee")
    args = parser.parse_args(argv)
    slots = instrument() if args.breakdown else None
    core = build_core(load_settings(profile="purchases", churn_horizon_days=90, clock="event"))
    events = partition_events(args.data, args.events, args.partitions, args.partition)
    if args.profile:
        profiler = cProfile.Profile()
        run = profiler.runcall(replay, core, events, args.batch, not args.no_snapshot)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(args.top)
    else:
        run = replay(core, events, args.batch, not args.no_snapshot)
    figures = report(len(events), run)
    if slots is not None:
        figures["breakdown"] = breakdown(slots)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
