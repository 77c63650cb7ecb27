"""Offline, in-process replay of the streaming churn procedure on the CDNOW purchase log.

Run from a checkout with ``python bench/cdnow_offline.py``. Purchases are streamed in date
order up to the 1997-09-30 cutoff. Each purchase updates the user's activity state, is
scored, may leave a snapshot in the label book, and marks that user's pending snapshots as
"returned"; every ``--sweep-days`` days of event time all known users are re-scored the way
the engine does when absence deadlines pass, which gives the label book snapshots of
inactive users, the situation the cutoff asks about. Labels mature after ``--horizon`` days
and only then are learned. At the cutoff every customer is scored once and the scores are
compared with "no purchase from 1997-10-01 to 1998-06-30" (ROC AUC), next to the recency
baseline recomputed from the same state. Prints one JSON object. Deterministic.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_app.features import DAY, FeatureConfig, features
from stream_app.model.labels import ChurnConfig, LabelBook, LabelConfig
from stream_app.model.learner import ChurnScorer, ScorerConfig

ROOT = Path(__file__).resolve().parent.parent
CUTOFF = dt.datetime(1997, 10, 1, tzinfo=dt.UTC).timestamp()
HOLDOUT_END = dt.datetime(1998, 7, 1, tzinfo=dt.UTC).timestamp()
PURCHASE_DIMS = ("activity", "logins", "interactions", "purchases", "spend")
COUNTED = ("activity", "logins", "interactions", "purchases")


class PurchaseView:
    """Exact state of one customer: purchase times and amounts, plus lifetime scalars.

    Reads only what the real window state keeps or is asked to keep: trailing totals,
    per-dimension last-seen, first/last seen, lifetime totals and lifetime active days.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.spend: list[float] = []
        self.first_seen = float("inf")
        self.last_seen = float("-inf")
        self.days: set[int] = set()
        self.lifetime_spend = 0.0

    def add(self, t: float, amount: float) -> None:
        i = bisect.bisect_right(self.times, t)
        self.times.insert(i, t)
        self.spend.insert(i, amount)
        self.first_seen = min(self.first_seen, t)
        self.last_seen = max(self.last_seen, t)
        self.days.add(int(t // DAY))
        self.lifetime_spend += amount

    def tenure_days(self, now: float) -> float:
        return max(0.0, (now - self.first_seen) / DAY)

    def last_seen_in(self, dim: str) -> float | None:
        return self.last_seen if self.times else None

    def _range(self, days: int, now: float) -> tuple[int, int]:
        end = (now // DAY) * DAY + DAY if now % DAY else now
        lo = end - days * DAY
        return bisect.bisect_left(self.times, lo), bisect.bisect_left(self.times, end)

    def total(self, dim: str, days: int, now: float) -> float:
        a, b = self._range(days, now)
        return sum(self.spend[a:b]) if dim == "spend" else float(b - a)

    def days_active(self, days: int, now: float) -> int:
        a, b = self._range(days, now)
        return len({int(t // DAY) for t in self.times[a:b]})

    def baseline(self, dim: str, now: float) -> float:
        end = now - 7 * DAY
        lo = max(now - 35 * DAY, self.first_seen - self.first_seen % DAY)
        if end <= lo:
            return 0.0
        return self.total(dim, 28, end) * 7 * DAY / (end - lo) if end - lo >= DAY else 0.0

    def drop_ratio(self, dim: str, now: float) -> float | None:
        base = self.baseline(dim, now)
        return None if base <= 0 else 1 - self.total(dim, 7, now) / base

    def counterparts_estimate(self) -> int:
        return 0

    def dimensions(self) -> tuple[str, ...]:
        return PURCHASE_DIMS

    def lifetime(self, dim: str) -> float:
        return self.lifetime_spend if dim == "spend" else float(len(self.times))

    def lifetime_days_active(self) -> int:
        return len(self.days)


def load(path: Path) -> list[tuple[float, str, float]]:
    rows: list[tuple[float, str, float]] = []
    with path.open() as fh:
        for line in fh:
            parts = line.split()
            if len(parts) != 4 or not parts[0].isdigit():
                continue
            day = dt.datetime.strptime(parts[1], "%Y%m%d").replace(tzinfo=dt.UTC)
            rows.append((day.timestamp() + DAY / 2, parts[0], float(parts[3])))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def roc_auc(labels: list[bool], scores: list[float]) -> float:
    """Mann-Whitney ROC AUC with ties counted half."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def run(args: argparse.Namespace) -> dict[str, object]:
    started = time.perf_counter()
    rows = load(ROOT / args.data)
    fcfg = FeatureConfig(dims=("activity", "spend"), horizons=(7, 28, 91))
    book = LabelBook(
        LabelConfig(
            churn=ChurnConfig(horizon_days=args.horizon, kinds=COUNTED),
            min_gap_days=1.0,
            sample_rate=args.sample_rate,
            salt=str(args.seed),
        )
    )
    switches: list[str] = []
    scorer = ChurnScorer(
        ScorerConfig(
            learning_rate=args.learning_rate,
            l2=args.l2,
            balance_classes=args.balance,
            min_labels=args.min_labels,
        ),
        on_switch=lambda s: switches.append(f"{s.old}->{s.new} at {s.n_learned}: {s.reason}"),
    )
    views: dict[str, PurchaseView] = {}
    by_day: dict[int, list[tuple[float, str, float]]] = defaultdict(list)
    for row in rows:
        if row[0] < CUTOFF:
            by_day[int(row[0] // DAY)].append(row)
    first_day = min(by_day)
    n_scores = 0
    score_time = 0.0
    for day in range(first_day, int(CUTOFF // DAY)):
        for t, user, amount in by_day.get(day, ()):
            view = views.setdefault(user, PurchaseView())
            view.add(t, amount)
            book.on_activity(user, t)
            x = features(view, t, fcfg)
            t0 = time.perf_counter()
            scorer.score(x)
            score_time += time.perf_counter() - t0
            n_scores += 1
            book.on_score(user, t, x)
        watermark = (day + 1) * DAY
        if args.sweep_days and (day - first_day + 1) % args.sweep_days == 0:
            for user in sorted(views):
                if book.would_keep(user, watermark):
                    x = features(views[user], watermark, fcfg)
                    scorer.score(x)
                    book.on_score(user, watermark, x)
        for x, churned in book.mature(watermark):
            scorer.learn(x, churned)

    future: set[str] = {u for t, u, _ in rows if CUTOFF <= t < HOLDOUT_END}
    users = sorted(views)
    gone = [u not in future for u in users]
    final = [features(views[u], CUTOFF, fcfg) for u in users]
    probs = [scorer.score(x, count=False) for x in final]
    recency = [CUTOFF - views[u].last_seen for u in users]
    return {
        "auc": round(roc_auc(gone, [s.probability for s in probs]), 4),
        "recency_auc": round(roc_auc(gone, recency), 4),
        "prior_auc": round(roc_auc(gone, [scorer.prior.predict_proba_one(x) for x in final]), 4),
        "source_at_cutoff": scorer.source,
        "version": scorer.version,
        "customers": len(users),
        "churn_rate": round(sum(gone) / len(users), 4),
        "labels_learned": scorer.n_learned,
        "live_quality": {k: round(v, 4) for k, v in scorer.quality.summary().items()},
        "switches": switches,
        "drifts": scorer.drifts,
        "us_per_score": round(1e6 * score_time / max(n_scores, 1), 1),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "params": vars(args),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/CDNOW_master.txt", help="relative to the checkout")
    parser.add_argument("--horizon", type=float, default=90.0, help="label horizon, days")
    parser.add_argument("--sweep-days", type=int, default=7, help="0 disables the sweep")
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--l2", type=float, default=1e-5)
    parser.add_argument("--min-labels", type=int, default=1000)
    parser.add_argument("--balance", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    print(orjson.dumps(run(parser.parse_args(argv)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
