"""Turn one user's activity state into the feature vector the churn scorer reads.

Every feature is a plain function of the window state and the event-time clock ``now``, so
the same state scored at the same instant always gives the same vector, whether the caller
is the per-event path or a periodic sweep. Counts are log-scaled because activity is
heavy-tailed; recency is compared with the user's tenure and with their own typical gap,
because "ten days away" means churn for a daily user and nothing for a monthly one.

Examples
--------
>>> view = _ListView.of([(0.0, "activity", 1.0), (20 * DAY, "activity", 1.0)])
>>> x = features(view, now=30 * DAY, cfg=FeatureConfig(dims=("activity",)))
>>> round(x["recency_days"], 1), round(x["tenure_log"], 3), x["one_time"]
(10.0, 3.434, 0.0)
>>> round(x["recency_gap_ratio"], 3)  # ten days away after a twenty-day gap
0.405
>>> tuple(x) == feature_names(FeatureConfig(dims=("activity",)))
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Protocol

__all__ = [
    "DAY",
    "DEFAULT_DIMS",
    "FEATURE_NAMES",
    "ActivityView",
    "FeatureConfig",
    "feature_names",
    "features",
]

DAY = 86_400.0
DEFAULT_DIMS: tuple[str, ...] = (
    "activity",
    "sessions",
    "logins",
    "online_minutes",
    "core_actions",
    "interactions",
    "social",
    "purchases",
    "spend",
)


class ActivityView(Protocol):
    """Read-only view of one user's activity windows, as kept by the window state.

    ``lifetime`` and ``lifetime_days_active`` are lifetime scalars beyond the ~13 weeks of
    bucketed detail; :func:`features` falls back to the 13-week window when a view lacks
    them, so they are looked up with ``getattr`` rather than called directly.
    """

    @property
    def first_seen(self) -> float: ...

    @property
    def last_seen(self) -> float: ...

    def tenure_days(self, now: float) -> float: ...

    def last_seen_in(self, dim: str) -> float | None: ...

    def total(self, dim: str, days: int, now: float) -> float: ...

    def days_active(self, days: int, now: float) -> int: ...

    def baseline(self, dim: str, now: float) -> float: ...

    def drop_ratio(self, dim: str, now: float) -> float | None: ...

    def counterparts_estimate(self) -> int: ...

    def dimensions(self) -> tuple[str, ...]: ...

    def lifetime(self, dim: str) -> float: ...

    def lifetime_days_active(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Which dimensions and horizons become features.

    Parameters
    ----------
    dims
        Dimensions that get per-dimension counts, recency and trend. Keep it to the ones the
        app actually feeds: each costs a handful of window look-ups per score. Dimensions
        the view does not know read as "never seen".
    horizons
        Trailing windows in days for the per-dimension counts.
    activity_dim
        The dimension that defines "being active" for recency, tenure and frequency.
    spend_dim
        The monetary dimension, or ``None`` when the app has no spend.
    fallback_days
        Window used for lifetime aggregates when the view does not keep them.
    """

    dims: tuple[str, ...] = DEFAULT_DIMS
    horizons: tuple[int, ...] = (7, 28)
    activity_dim: str = "activity"
    spend_dim: str | None = "spend"
    fallback_days: int = 91


_ZEROS = itertools.repeat(0.0)
_GLOBAL_NAMES: tuple[str, ...] = (
    "recency_days",
    "recency_log",
    "recency_log_sq",
    "tenure_log",
    "recency_share",
    "active_days_log",
    "one_time",
    "mean_gap_log",
    "recency_gap_ratio",
    "frequency_log",
    "repeat_rate_log",
    "recency_x_active_days",
    "recency_x_tenure",
    "active_day_share_28d",
    "events_log",
    "counterparts_log",
)
_SPEND_NAMES: tuple[str, ...] = ("spend_log", "spend_per_active_day_log")


@cache
def feature_names(cfg: FeatureConfig) -> tuple[str, ...]:
    """Names of the features :func:`features` returns for ``cfg``, in order.

    Examples
    --------
    >>> feature_names(FeatureConfig(dims=("activity",), horizons=(7,), spend_dim=None))[:3]
    ('activity_7d', 'activity_recency', 'activity_trend')
    """
    per_dim: list[str] = []
    for dim in cfg.dims:
        per_dim.extend(f"{dim}_{h}d" for h in cfg.horizons)
        per_dim.extend((f"{dim}_recency", f"{dim}_trend"))
    spend = _SPEND_NAMES if cfg.spend_dim is not None else ()
    return (*per_dim, *_GLOBAL_NAMES, *spend)


FEATURE_NAMES: tuple[str, ...] = feature_names(FeatureConfig())


def features(view: ActivityView, now: float, cfg: FeatureConfig) -> dict[str, float]:
    """Feature vector of one user at event time ``now``.

    Parameters
    ----------
    view
        The user's activity state.
    now
        Event-time clock in epoch seconds; never wall-clock, so replays score the same.
    cfg
        Which dimensions and horizons to use.

    Returns
    -------
    dict
        Keys exactly :func:`feature_names` of ``cfg``, all finite floats.

    Examples
    --------
    A one-time buyer seen once, sixty days ago, with twelve dollars spent:

    >>> view = _ListView.of([(0.0, "activity", 1.0), (0.0, "spend", 12.0)])
    >>> x = features(view, 60 * DAY, FeatureConfig(dims=("activity",)))
    >>> x["one_time"], x["recency_share"], round(x["spend_log"], 3)
    (1.0, 1.0, 2.565)
    """
    log1p = math.log1p
    # ``0.0 if x < 0.0 else x`` is ``max(x, 0.0)`` exactly (NaN and -0.0 included: ``max``
    # keeps its first argument unless a later one is greater), without the call; likewise
    # for the other clamps here and in _add_global.
    tenure = view.tenure_days(now)
    tenure = 0.0 if tenure < 0.0 else tenure
    tenure_log = log1p(tenure)
    known = view.dimensions()
    names, dims = _layout(cfg)
    n_horizons = len(cfg.horizons)
    rows = _trailing(view, _present(cfg, known), cfg.horizons, now)
    values: list[float] = []
    push = values.append
    for dim in dims:
        if dim not in known:
            values += (0.0,) * n_horizons
            push(tenure_log)
            push(0.0)
            continue
        totals, seen, drop = next(rows)
        if len(totals) != n_horizons:
            raise ValueError(f"{dim}: {len(totals)} totals for {n_horizons} horizons")
        values += map(log1p, map(max, totals, _ZEROS))  # log1p(max(total, 0.0)) each
        if seen is None:
            push(log1p(tenure))
        else:
            days = (now - seen) / DAY
            push(log1p(0.0 if days < 0.0 else days))
        if drop is None:
            push(0.0)
        else:
            drop = -1.0 if drop < -1.0 else drop
            push(1.0 if drop > 1.0 else drop)
    _add_global(push, view, now, cfg, tenure, tenure_log)
    return dict(zip(names, values, strict=True))


def _add_global(
    push: Callable[[float], None],
    view: ActivityView,
    now: float,
    cfg: FeatureConfig,
    tenure: float,
    tenure_log: float,
) -> None:
    """The user-level features (recency, tenure, frequency, lifetime value), in
    :data:`_GLOBAL_NAMES` then :data:`_SPEND_NAMES` order, through ``push``."""
    log1p = math.log1p
    seen = view.last_seen_in(cfg.activity_dim)
    last = view.last_seen if seen is None else seen
    recency = (now - last) / DAY
    recency = 0.0 if recency < 0.0 else recency
    span = (last - view.first_seen) / DAY
    span = 0.0 if span < 0.0 else span
    lifetime_days = getattr(view, "lifetime_days_active", None)
    active_days = float(
        lifetime_days() if lifetime_days is not None else view.days_active(cfg.fallback_days, now)
    )
    active_days = 1.0 if active_days < 1.0 else active_days
    repeat = active_days > 1.0
    gap = span / (active_days - 1.0) if repeat else 0.0
    recency_log = log1p(recency)
    active_log = log1p(active_days)
    tenure_1 = 1.0 if tenure < 1.0 else tenure
    push(recency)  # recency_days
    push(recency_log)
    push(recency_log * recency_log)  # recency_log_sq
    push(tenure_log)
    if tenure > 0.0:  # recency_share
        share = recency / tenure
        push(1.0 if share > 1.0 else share)
    else:
        push(0.0)
    push(active_log)  # active_days_log
    push(0.0 if repeat else 1.0)  # one_time
    push(log1p(gap))  # mean_gap_log
    push(log1p(recency / (1.0 if gap < 1.0 else gap)) if repeat else 0.0)  # recency_gap_ratio
    push(log1p(30.0 * active_days / tenure_1))  # frequency_log
    push(log1p(30.0 * (active_days - 1.0) / (1.0 if span < 1.0 else span)))  # repeat_rate_log
    push(recency_log * active_log)  # recency_x_active_days
    push(recency_log * tenure_log)  # recency_x_tenure
    push(view.days_active(28, now) / (tenure_1 if tenure_1 < 28.0 else 28.0))  # share_28d
    push(log1p(_lifetime_total(view, cfg.activity_dim, now, cfg)))  # events_log
    counterparts = view.counterparts_estimate()
    push(log1p(0 if counterparts < 0 else counterparts))  # counterparts_log
    if cfg.spend_dim is not None:
        spend = _lifetime_total(view, cfg.spend_dim, now, cfg)
        push(log1p(spend))  # spend_log
        push(log1p(spend / active_days))  # spend_per_active_day_log


def _lifetime_total(view: ActivityView, dim: str, now: float, cfg: FeatureConfig) -> float:
    lifetime = getattr(view, "lifetime", None)
    if lifetime is not None:
        return max(float(lifetime(dim)), 0.0)
    return max(view.total(dim, cfg.fallback_days, now), 0.0)


def _trailing(
    view: ActivityView, dims: list[str], horizons: tuple[int, ...], now: float
) -> Iterator[tuple[list[float], float | None, float | None]]:
    """Per dimension: totals over ``horizons``, last seen, drop ratio; one call if the view
    offers it (``trailing``), else from the protocol's single look-ups."""
    batch = getattr(view, "trailing", None)
    if batch is not None:
        return iter(batch(dims, horizons, now))
    return iter(
        [
            (
                [view.total(dim, h, now) for h in horizons],
                view.last_seen_in(dim),
                view.drop_ratio(dim, now),
            )
            for dim in dims
        ]
    )


_PRESENT: dict[tuple[int, tuple[str, ...]], tuple[FeatureConfig, list[str]]] = {}


def _present(cfg: FeatureConfig, known: tuple[str, ...]) -> list[str]:
    """The dimensions of ``cfg`` that a view knows, in ``cfg`` order (cached per config and
    per the view's dimension tuple; a read-only list, as :func:`_layout`'s entries)."""
    key = (id(cfg), known)
    entry = _PRESENT.get(key)
    if entry is None or entry[0] is not cfg:
        entry = _PRESENT[key] = (cfg, [dim for dim in cfg.dims if dim in known])
    return entry[1]


_LAYOUTS: dict[int, tuple[FeatureConfig, tuple[tuple[str, ...], tuple[str, ...]]]] = {}


def _layout(cfg: FeatureConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:func:`feature_names` of ``cfg`` and its dimensions.

    Cached by identity (the entry keeps ``cfg`` alive, so its id cannot be reused): hashing
    the config on every call would cost more than the look-up saves.
    """
    entry = _LAYOUTS.get(id(cfg))
    if entry is None or entry[0] is not cfg:
        entry = _LAYOUTS[id(cfg)] = (cfg, (feature_names(cfg), cfg.dims))
    return entry[1]


class _ListView:
    """Exact in-memory view over a list of ``(t, dim, amount)`` events, for doctests."""

    def __init__(self, events: list[tuple[float, str, float]]) -> None:
        self.events = sorted(events)
        self.first_seen = self.events[0][0]
        self.last_seen = self.events[-1][0]

    @classmethod
    def of(cls, events: list[tuple[float, str, float]]) -> _ListView:
        return cls(events)

    def tenure_days(self, now: float) -> float:
        return (now - self.first_seen) / DAY

    def last_seen_in(self, dim: str) -> float | None:
        ts = [t for t, d, _ in self.events if d == dim]
        return ts[-1] if ts else None

    def total(self, dim: str, days: int, now: float) -> float:
        return sum(a for t, d, a in self.events if d == dim and now - days * DAY < t <= now)

    def days_active(self, days: int, now: float) -> int:
        return len({int(t // DAY) for t, _, _ in self.events if now - days * DAY < t <= now})

    def baseline(self, dim: str, now: float) -> float:
        return 0.0

    def drop_ratio(self, dim: str, now: float) -> float | None:
        return None

    def counterparts_estimate(self) -> int:
        return 0

    def dimensions(self) -> tuple[str, ...]:
        return tuple(sorted({d for _, d, _ in self.events}))

    def lifetime(self, dim: str) -> float:
        return sum(a for _, d, a in self.events if d == dim)

    def lifetime_days_active(self) -> int:
        return len({int(t // DAY) for t, d, _ in self.events if d == "activity"})
