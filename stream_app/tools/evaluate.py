"""Score published warnings against what really happened to users.

The metric functions are pure and small so tests check them on hand-computed cases;
:func:`evaluate` combines them into one JSON-able result and :func:`run_evaluate` adds
the I/O: replaying a labelled stream, reading the topics back and writing the report.

Definitions, because every number depends on them:

* a user's *score* is the last ``churn_probability`` they received before the reference
  time; users never warned have no score, so AUC is computed on warned users (with the
  coverage reported) and, separately, with unwarned users scored 0;
* at level ``L`` a user is *flagged* by their first warning of level ``L`` or higher;
  they are a *true positive* if they churned no later than ``horizon`` after it (a user
  already gone when warned counts, with a negative lead time);
* *lead time* is churn time minus the flagging warning's time.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from stream_app.tools.sources import Event, load_events, parse_cutoff, parse_time
from stream_app.tools.tail import Record, read_topic

if TYPE_CHECKING:
    from stream_app.settings import Settings

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for one user."""

    user_id: str
    churned: bool
    churn_time: float | None = None
    persona: str | None = None


@dataclass(frozen=True, slots=True)
class Warning:
    """The fields of a warning that evaluation uses."""

    user_id: str
    level: int
    event_time: float
    probability: float | None = None
    holdout: bool = False
    episode: int | None = None


@dataclass(frozen=True, slots=True)
class Recovery:
    """The fields of a recovery that evaluation uses."""

    user_id: str
    event_time: float
    holdout: bool = False


@dataclass(frozen=True, slots=True)
class LevelStats:
    """Precision and recall when acting on warnings of a level or higher."""

    level: int
    flagged: int
    true_positives: int
    churners: int

    @property
    def precision(self) -> float | None:
        """Share of flagged users who churned in time (``None`` when none flagged)."""
        return self.true_positives / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        """Share of churners that were flagged in time (``None`` when none churned)."""
        return self.true_positives / self.churners if self.churners else None


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve via the rank statistic (ties count one half).

    It is the chance that a random churner scores above a random stayer, which is what
    ranking users for outreach needs. ``None`` when one class is missing.

    Examples
    --------
    >>> roc_auc([True, False, True, False], [0.9, 0.1, 0.4, 0.5])
    0.75
    >>> roc_auc([True, False], [0.5, 0.5])
    0.5
    >>> roc_auc([True, True], [0.1, 0.2]) is None
    True
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    positives = sum(1 for label in labels if label)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    ranks = _average_ranks(scores)
    rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _average_ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def roc_curve(labels: Sequence[bool], scores: Sequence[float]) -> list[tuple[float, float]]:
    """Points ``(false positive rate, true positive rate)`` from strictest threshold down.

    Examples
    --------
    >>> roc_curve([True, False, True, False], [0.9, 0.1, 0.4, 0.5])
    [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
    """
    positives = sum(1 for label in labels if label)
    negatives = len(labels) - positives
    points = [(0.0, 0.0)]
    tp = fp = 0
    pairs = sorted(zip(scores, labels, strict=True), key=lambda pair: -pair[0])
    for index, (score, label) in enumerate(pairs):
        tp, fp = tp + bool(label), fp + (not label)
        if index + 1 == len(pairs) or pairs[index + 1][0] != score:
            points.append(
                (fp / negatives if negatives else 0.0, tp / positives if positives else 0.0)
            )
    return points


def last_scores(
    warnings: Iterable[Warning], reference_time: float | None = None
) -> dict[str, float]:
    """Each user's latest churn probability at or before ``reference_time``.

    Examples
    --------
    >>> ws = [Warning("a", 1, 10.0, 0.3), Warning("a", 2, 20.0, 0.6), Warning("b", 1, 5.0, 0.2)]
    >>> last_scores(ws), last_scores(ws, reference_time=15.0)
    ({'a': 0.6, 'b': 0.2}, {'a': 0.3, 'b': 0.2})
    """
    latest: dict[str, tuple[float, float]] = {}
    for w in warnings:
        if w.probability is None or (reference_time is not None and w.event_time > reference_time):
            continue
        if w.user_id not in latest or w.event_time >= latest[w.user_id][0]:
            latest[w.user_id] = (w.event_time, w.probability)
    return {user: p for user, (_, p) in latest.items()}


def auc_summary(scores: Mapping[str, float], truth: Mapping[str, Label]) -> dict[str, Any]:
    """AUC on scored users, their coverage, and AUC with unscored users at zero.

    Examples
    --------
    >>> truth = {u: Label(u, c) for u, c in [("a", True), ("b", False), ("c", True)]}
    >>> s = auc_summary({"a": 0.9, "b": 0.2}, truth)
    >>> s["auc"], s["coverage"], s["auc_all_users"]
    (1.0, 0.667, 0.5)
    """
    scored = [u for u in truth if u in scores]
    labels = [truth[u].churned for u in scored]
    everyone = list(truth)
    return {
        "auc": _round(roc_auc(labels, [scores[u] for u in scored])),
        "scored_users": len(scored),
        "coverage": round(len(scored) / len(truth), 3) if truth else None,
        "scored_churners": sum(labels),
        "auc_all_users": _round(
            roc_auc([truth[u].churned for u in everyone], [scores.get(u, 0.0) for u in everyone])
        ),
    }


def first_flags(warnings: Iterable[Warning], level: int) -> dict[str, Warning]:
    """Each user's first warning of ``level`` or higher."""
    first: dict[str, Warning] = {}
    for w in warnings:
        if w.level >= level and (
            w.user_id not in first or w.event_time < first[w.user_id].event_time
        ):
            first[w.user_id] = w
    return first


def _in_time(label: Label | None, flag: Warning, horizon_s: float) -> bool:
    return bool(
        label
        and label.churned
        and label.churn_time is not None
        and label.churn_time <= flag.event_time + horizon_s
    )


def precision_recall_by_level(
    warnings: Sequence[Warning], truth: Mapping[str, Label], horizon_s: float
) -> dict[int, LevelStats]:
    """Precision and recall for acting on level 1+, 2+ and 3+ warnings.

    Examples
    --------
    >>> truth = {"a": Label("a", True, 100.0), "b": Label("b", False),
    ...          "c": Label("c", True, 1000.0), "d": Label("d", True, 50.0)}
    >>> ws = [Warning("a", 1, 40.0), Warning("a", 3, 90.0), Warning("b", 2, 10.0),
    ...       Warning("c", 1, 10.0)]
    >>> stats = precision_recall_by_level(ws, truth, horizon_s=100.0)
    >>> [(s.level, s.flagged, s.true_positives, s.precision, s.recall) for s in stats.values()]
    [(1, 3, 1, 0.3333333333333333, 0.3333333333333333), (2, 2, 1, 0.5, 0.3333333333333333), \
(3, 1, 1, 1.0, 0.3333333333333333)]
    """
    churners = sum(1 for label in truth.values() if label.churned)
    result = {}
    for level in (1, 2, 3):
        flags = {u: w for u, w in first_flags(warnings, level).items() if u in truth}
        hits = sum(1 for u, w in flags.items() if _in_time(truth[u], w, horizon_s))
        result[level] = LevelStats(level, len(flags), hits, churners)
    return result


def lead_times(
    warnings: Sequence[Warning], truth: Mapping[str, Label], horizon_s: float, level: int = 1
) -> list[float]:
    """Seconds from each true positive's flagging warning to its churn (negative: late).

    Examples
    --------
    >>> truth = {"a": Label("a", True, 100.0), "b": Label("b", True, 10.0)}
    >>> lead_times([Warning("a", 1, 40.0), Warning("b", 2, 30.0)], truth, horizon_s=1e9)
    [-20.0, 60.0]
    """
    flags = first_flags(warnings, level)
    leads = [
        truth[u].churn_time - w.event_time  # type: ignore[operator]
        for u, w in flags.items()
        if _in_time(truth.get(u), w, horizon_s)
    ]
    return sorted(leads)


def distribution(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """Count, quantiles and share of positive values, after dividing by ``scale``.

    Examples
    --------
    >>> d = distribution([-1.0, 1.0, 2.0, 4.0])
    >>> d["count"], d["median"], d["p10"], d["p90"], d["share_positive"]
    (4, 1.5, -0.4, 3.4, 0.75)
    """
    scaled = sorted(v / scale for v in values)
    if not scaled:
        return {"count": 0, "median": None, "share_positive": None}
    return {
        "count": len(scaled),
        "median": round(statistics.median(scaled), 3),
        **{f"p{q}": round(_quantile(scaled, q / 100), 3) for q in (10, 25, 75, 90)},
        "share_positive": round(sum(1 for v in scaled if v > 0) / len(scaled), 3),
    }


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def warnings_per_1000_users_day(count: int, users: int, days: float) -> float | None:
    """Alert volume normalised by population and time, to compare runs of any size.

    Examples
    --------
    >>> warnings_per_1000_users_day(30, 500, 6.0)
    10.0
    """
    return round(1000.0 * count / (users * days), 3) if users and days > 0 else None


def holdout_comparison(
    warnings: Sequence[Warning], recoveries: Sequence[Recovery], truth: Mapping[str, Label]
) -> dict[str, dict[str, Any]]:
    """Compare warned users kept out of outreach (holdout) with the treated ones.

    The holdout is the control group: recovery and churn rates that differ between the
    groups are the measured effect of acting on warnings. A user's group is the one of
    their first warning.

    Examples
    --------
    >>> ws = [Warning("a", 1, 1.0, 0.8, holdout=True), Warning("b", 1, 1.0, 0.4)]
    >>> truth = {"a": Label("a", True, 5.0), "b": Label("b", False)}
    >>> out = holdout_comparison(ws, [Recovery("b", 3.0)], truth)
    >>> held, treated = out["holdout"], out["treated"]
    >>> held["recovery_rate"], treated["recovery_rate"], held["churn_rate"]
    (0.0, 1.0, 1.0)
    """
    group: dict[str, bool] = {}
    for w in sorted(warnings, key=lambda w: w.event_time):
        group.setdefault(w.user_id, w.holdout)
    scores = last_scores(warnings)
    recovered = {r.user_id for r in recoveries}
    result = {}
    for name, flag in (("holdout", True), ("treated", False)):
        members = [u for u, g in group.items() if g is flag]
        labelled = [u for u in members if u in truth]
        probabilities = [scores[u] for u in members if u in scores]
        result[name] = {
            "users": len(members),
            "mean_probability": _round(statistics.fmean(probabilities) if probabilities else None),
            "recovery_rate": _share(sum(1 for u in members if u in recovered), len(members)),
            "churn_rate": _share(sum(1 for u in labelled if truth[u].churned), len(labelled)),
        }
    return result


def tier_flows(changes: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Count tier changes per dimension as ``"from -> to"`` keys.

    Examples
    --------
    >>> tier_flows([{"dimension": "lifecycle", "from": "new", "to": "active"},
    ...             {"dimension": "lifecycle", "from": "new", "to": "active"}])
    {'lifecycle': {'new -> active': 2}}
    """
    flows: dict[str, dict[str, int]] = {}
    for change in changes:
        key = f"{change.get('from')} -> {change.get('to')}"
        counts = flows.setdefault(str(change.get("dimension")), {})
        counts[key] = counts.get(key, 0) + 1
    return {dim: dict(sorted(c.items(), key=lambda kv: -kv[1])) for dim, c in flows.items()}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def parse_warning(value: Mapping[str, Any]) -> Warning:
    """Read the fields evaluation needs from a warning payload."""
    probability = value.get("churn_probability")
    return Warning(
        user_id=str(value["user_id"]),
        level=int(value["level"]),
        event_time=parse_time(str(value["event_time"])),
        probability=float(probability) if probability is not None else None,
        holdout=bool(value.get("holdout")),
        episode=value.get("episode"),
    )


def parse_recovery(value: Mapping[str, Any]) -> Recovery:
    """Read the fields evaluation needs from a recovery payload."""
    return Recovery(
        str(value["user_id"]), parse_time(str(value["event_time"])), bool(value.get("holdout"))
    )


def evaluate(
    warning_records: Iterable[Record],
    truth: Mapping[str, Label],
    *,
    tier_records: Iterable[Record] = (),
    horizon_days: float = 14.0,
    reference_time: float | None = None,
    period_days: float | None = None,
    scores: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """All metrics as one JSON-able dict, including the points the report plots.

    Parameters
    ----------
    warning_records
        Records of the warning topic (warnings and recoveries; others are ignored).
    truth
        Labels by user id.
    tier_records
        Records of the tier topic, for the tier-flow table.
    horizon_days
        How soon after a warning a churn must happen to count as announced.
    reference_time
        Scores are the last probability before this time (default: all warnings).
    period_days
        Length of the replayed period, for the alert-volume rate; estimated from the
        warnings' times when ``None``.
    scores
        External scores ``{user: p}`` (e.g. the service's backtest) used for AUC instead
        of the warnings' probabilities.
    """
    records = list(warning_records)
    warnings = [parse_warning(r.value) for r in records if r.kind == "warning"]
    recoveries = [parse_recovery(r.value) for r in records if r.kind == "recovered"]
    horizon_s = horizon_days * DAY
    user_scores = dict(scores) if scores is not None else last_scores(warnings, reference_time)
    scored = [u for u in truth if u in user_scores]
    by_level = precision_recall_by_level(warnings, truth, horizon_s)
    leads = lead_times(warnings, truth, horizon_s)
    days = period_days or _span_days(warnings)
    return {
        "users": len(truth),
        "churners": sum(1 for label in truth.values() if label.churned),
        "warnings": len(warnings),
        "recoveries": len(recoveries),
        "warned_users": len({w.user_id for w in warnings}),
        "horizon_days": horizon_days,
        "score_source": "external" if scores is not None else "warnings",
        "auc": auc_summary(user_scores, truth),
        "roc": roc_curve([truth[u].churned for u in scored], [user_scores[u] for u in scored]),
        "levels": {
            str(s.level): {
                "flagged": s.flagged,
                "true_positives": s.true_positives,
                "precision": _round(s.precision),
                "recall": _round(s.recall),
            }
            for s in by_level.values()
        },
        "lead_time_days": distribution(leads, DAY),
        "lead_times_days": [round(v / DAY, 3) for v in leads],
        "warnings_per_1000_users_day": warnings_per_1000_users_day(len(warnings), len(truth), days),
        "period_days": round(days, 3),
        "holdout": holdout_comparison(warnings, recoveries, truth),
        "tier_flows": tier_flows(r.value for r in tier_records if r.kind == "tier_changed"),
    }


def _span_days(warnings: Sequence[Warning]) -> float:
    if len(warnings) < 2:
        return 1.0
    times = [w.event_time for w in warnings]
    return max((max(times) - min(times)) / DAY, 1.0)


def load_truth(path: str | Path) -> dict[str, Label]:
    """Read labels written by the simulator (CSV or JSON list / ``{user: row}``)."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        data = orjson.loads(text)
        rows = list(data.values()) if isinstance(data, dict) else data
    else:
        rows = list(csv.DictReader(text.splitlines()))
    return {str(row["user_id"]): _label(row) for row in rows}


def _label(row: Mapping[str, Any]) -> Label:
    churned = row.get("churned")
    flag = churned if isinstance(churned, bool) else str(churned).strip().lower() in ("true", "1")
    when = row.get("churn_time")
    return Label(
        str(row["user_id"]),
        flag,
        parse_time(str(when)) if when not in (None, "") else None,
        row.get("persona") or None,
    )


def labels_from_events(
    events: Iterable[Event], cutoff: float, horizon_s: float
) -> dict[str, Label]:
    """Labels for a purchase log: who was active before ``cutoff`` and not in the horizon.

    A user with activity before the cutoff churned if they have none in
    ``[cutoff, cutoff + horizon)``; their churn time is their last activity before the
    cutoff.

    Examples
    --------
    >>> from stream_app.tools.sources import format_time
    >>> evs = [{"user_id": "a", "occurred_at": "1997-01-01"},
    ...        {"user_id": "b", "occurred_at": "1997-01-02"},
    ...        {"user_id": "b", "occurred_at": "1997-02-01"}]
    >>> labels = labels_from_events(evs, parse_time("1997-01-15"), 30 * DAY)
    >>> labels["a"].churned, labels["b"].churned, format_time(labels["a"].churn_time)
    (True, False, '1997-01-01T12:00:00Z')
    """
    last_before: dict[str, float] = {}
    returned: set[str] = set()
    for event in events:
        moment = parse_time(event["occurred_at"])
        user = str(event["user_id"])
        if moment < cutoff:
            last_before[user] = max(moment, last_before.get(user, moment))
        elif moment < cutoff + horizon_s:
            returned.add(user)
    return {
        user: Label(user, user not in returned, None if user in returned else last)
        for user, last in last_before.items()
    }


def load_scores(path: str | Path) -> dict[str, float]:
    """Read external scores: JSON ``{user: p}`` or CSV with ``user_id`` and a score column."""
    if str(path).endswith(".json"):
        return {str(u): float(p) for u, p in orjson.loads(Path(path).read_bytes()).items()}
    rows = list(csv.DictReader(Path(path).read_text(encoding="utf-8").splitlines()))
    column = next(c for c in ("churn_probability", "score", "p") if rows and c in rows[0])
    return {row["user_id"]: float(row[column]) for row in rows}


def load_records(path: str | Path, topic: str = "file") -> list[Record]:
    """Read records saved as JSON lines (e.g. ``tail --json`` output) for offline runs."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if line.strip():
            value = orjson.loads(line)
            records.append(Record(topic, 0, number, str(value.get("user_id")), value, {}))
    return records


def run_evaluate(
    out_dir: str | Path,
    *,
    bootstrap: str = "localhost:9092",
    events_path: str | Path | None = None,
    truth_path: str | Path | None = None,
    replay: bool = True,
    events_topic: str = "app.events",
    warnings_topic: str = "churn.warnings",
    tiers_topic: str = "user.tiers",
    cutoff: str | None = None,
    horizon_days: float = 14.0,
    idle_timeout_s: float = 10.0,
    max_messages: int | None = None,
    scores_path: str | Path | None = None,
    warnings_file: str | Path | None = None,
    tiers_file: str | Path | None = None,
    out: TextIO | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Replay a labelled stream, read what the service published and write the report.

    Parameters
    ----------
    out_dir
        Folder for ``metrics.json``, ``report.md`` and the plots.
    events_path, truth_path
        The stream and its labels. Without ``truth_path``, labels come from the events
        themselves with ``cutoff`` (a purchase log: churned = silent for the horizon).
    replay
        Send ``events_path`` (up to ``cutoff``) first; off when the service already saw it.
    cutoff
        Replay only before this time and score users as of it.
    idle_timeout_s, max_messages
        Stop reading the warning topic after this much silence / this many records.
    scores_path
        External ``{user: p}`` scores for AUC (e.g. from the service's backtest).
    warnings_file, tiers_file
        Saved records (``tail --json``) to evaluate offline instead of reading Kafka.
    settings
        The service's settings: every Kafka client takes its TLS and SASL options from
        them (``bootstrap`` still says where to connect). ``None``: plaintext.
    """
    from stream_app.tools.replay import run_replay
    from stream_app.tools.report import write_report

    stream = sys.stderr if out is None else out
    cut = parse_cutoff(cutoff) if cutoff else None
    events = load_events(events_path).events if events_path else []
    truth = _labels(truth_path, events, cut, horizon_days * DAY)
    if replay and events_path and not warnings_file:
        summary = run_replay(
            events_path, events_topic, bootstrap, until=cut, out=stream, settings=settings
        )
        print(f"replayed {summary.sent:,} events at {summary.rate:,.0f}/s", file=stream)
    warning_records = (
        load_records(warnings_file)
        if warnings_file
        else list(
            read_topic(
                bootstrap,
                warnings_topic,
                idle_timeout_s=idle_timeout_s,
                max_messages=max_messages,
                settings=settings,
            )
        )
    )
    tier_records = _tier_records(bootstrap, tiers_topic, tiers_file, warnings_file, settings)
    result = evaluate(
        warning_records,
        truth,
        tier_records=tier_records,
        horizon_days=horizon_days,
        reference_time=cut,
        period_days=_period_days(events, cut),
        scores=load_scores(scores_path) if scores_path else None,
    )
    write_report(result, out_dir)
    return result


def _labels(
    truth_path: str | Path | None, events: Sequence[Event], cutoff: float | None, horizon_s: float
) -> dict[str, Label]:
    if truth_path:
        return load_truth(truth_path)
    if cutoff is None or not events:
        raise ValueError("need a truth file, or events with a cutoff to derive labels")
    return labels_from_events(events, cutoff, horizon_s)


def _tier_records(
    bootstrap: str,
    topic: str,
    tiers_file: str | Path | None,
    offline: str | Path | None,
    settings: Settings | None = None,
) -> list[Record]:
    if tiers_file:
        return load_records(tiers_file)
    if offline:
        return []
    try:
        return list(
            read_topic(bootstrap, topic, idle_timeout_s=2.0, stop_at_end=True, settings=settings)
        )
    except LookupError:
        return []


def _period_days(events: Sequence[Event], cutoff: float | None) -> float | None:
    if not events:
        return None
    first = parse_time(events[0]["occurred_at"])
    last = cutoff if cutoff is not None else parse_time(events[-1]["occurred_at"])
    return max((last - first) / DAY, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the evaluation options on a (sub)parser."""
    parser.add_argument("--events", dest="events_path", help="stream to replay (and label)")
    parser.add_argument("--truth", dest="truth_path", help="labels from the simulator")
    parser.add_argument("--out", dest="out_dir", default="evaluation")
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--no-replay", dest="replay", action="store_false")
    parser.add_argument("--events-topic", default="app.events")
    parser.add_argument("--warnings-topic", default="churn.warnings")
    parser.add_argument("--tiers-topic", default="user.tiers")
    parser.add_argument("--cutoff", help="replay and score up to this time")
    parser.add_argument("--horizon-days", type=float, default=14.0)
    parser.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, default=10.0)
    parser.add_argument("--max-messages", type=int)
    parser.add_argument("--scores", dest="scores_path", help="external {user: p} scores")
    parser.add_argument("--warnings-file", help="saved warnings (JSONL) instead of Kafka")
    parser.add_argument("--tiers-file", help="saved tier changes (JSONL) instead of Kafka")


def run(args: argparse.Namespace) -> int:
    """Evaluate from parsed arguments and print the headline numbers."""
    result = run_evaluate(
        args.out_dir,
        bootstrap=args.bootstrap,
        events_path=args.events_path,
        truth_path=args.truth_path,
        replay=args.replay,
        events_topic=args.events_topic,
        warnings_topic=args.warnings_topic,
        tiers_topic=args.tiers_topic,
        cutoff=args.cutoff,
        horizon_days=args.horizon_days,
        idle_timeout_s=args.idle_timeout_s,
        max_messages=args.max_messages,
        scores_path=args.scores_path,
        warnings_file=args.warnings_file,
        tiers_file=args.tiers_file,
        settings=getattr(args, "client_settings", None),
    )
    headline = {k: result[k] for k in ("users", "warnings", "auc", "levels", "lead_time_days")}
    print(orjson.dumps(headline).decode())
    print(f"report: {Path(args.out_dir) / 'report.md'}", file=sys.stderr)
    return 0
