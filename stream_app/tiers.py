"""Lifecycle stages and RFM value segments, and the tier-change records they produce.

Operators steer campaigns by two slow-moving labels per user: a *lifecycle* stage (where
the user is in their life with the app) and a *value* segment (how much the user is worth
keeping, from recency, frequency and monetary value ranked against the current population).
Everything here is pure: the engine keeps a small :class:`TierState` per user and one
:class:`RfmSketches` per partition, and feeds them through :func:`score_value` and
:func:`step_tiers`.

Lifecycle, first match wins:

============  ===================================================================
stage         when
============  ===================================================================
``churned``   no activity for ``churn_days`` (default 90)
``at_risk``   an open warning at level >= ``at_risk_level`` or probability high
``new``       tenure below ``new_days`` (default 7)
``mature``    tenure >= ``mature_days`` (30) and >= ``steady_min_active_days``
              (4) active days in the last ``steady_window_days`` (28)
``growing``   everything else
============  ===================================================================

Value segments come from the R score and FM = ceil((F + M) / 2), each 1..5 (5 best):

====  ===============  ==================  ==================  ============  ============
R\\FM 1                2                   3                   4             5
====  ===============  ==================  ==================  ============  ============
5     new              potential_loyalist  potential_loyalist  champions     champions
4     promising        potential_loyalist  potential_loyalist  loyal         champions
3     about_to_sleep   about_to_sleep      need_attention      loyal         loyal
2     hibernating      hibernating         at_risk             at_risk       cannot_lose
1     lost             lost                at_risk             cannot_lose   cannot_lose
====  ===============  ==================  ==================  ============  ============
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from stream_app.slots import fast_constructor

DAY_S = 86_400.0

LIFECYCLES: tuple[str, ...] = ("new", "growing", "mature", "at_risk", "churned")
SEGMENTS: tuple[str, ...] = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cannot_lose",
    "hibernating",
    "lost",
)

_SEGMENT_GRID: dict[int, tuple[str, str, str, str, str]] = {
    5: ("new", "potential_loyalist", "potential_loyalist", "champions", "champions"),
    4: ("promising", "potential_loyalist", "potential_loyalist", "loyal", "champions"),
    3: ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose"),
    1: ("lost", "lost", "at_risk", "cannot_lose", "cannot_lose"),
}

# Valid scores and bins: a membership test stands in for the range checks of every
# element (anything not found gets the full check, so the outcome is the same).
_SCORES = frozenset(range(1, 6))
_BINS = frozenset(range(255))


def _scores_valid(rfm: tuple[int, int, int]) -> bool:
    """Every RFM score within 1..5."""
    return _SCORES.issuperset(rfm) or all(1 <= s <= 5 for s in rfm)


_LIFECYCLE_REASONS = {
    "new": "new_user_window",
    "growing": "past_new_user_window",
    "mature": "long_tenure_steady_activity",
    "at_risk": "open_warning_or_high_probability",
    "churned": "inactive_past_churn_horizon",
}


class ActivityView(Protocol):
    """The part of a user's window view that tiers read (structurally typed)."""

    @property
    def last_seen(self) -> float: ...

    @property
    def first_seen(self) -> float: ...

    def total(self, dim: str, days: int, now: float) -> float: ...

    def tenure_days(self, now: float) -> float: ...

    def days_active(self, days: int, now: float) -> int: ...


@dataclass(frozen=True, slots=True)
class SketchLayout:
    """Bin edges of a :class:`QuantileSketch`: one bin for values <= ``lo``, one for values
    >= ``hi`` and ``bins - 2`` log-spaced bins between them.

    Log spacing keeps the relative resolution constant, which suits heavy-tailed metrics
    like spend. The layout must not change while sketches built with it are in use: the
    per-user bin indices stored in :class:`TierState` refer to it.
    """

    lo: float
    hi: float
    bins: int = 64

    def __post_init__(self) -> None:
        if not (0.0 < self.lo < self.hi) or not math.isfinite(self.hi):
            raise ValueError(f"need 0 < lo < hi < inf, got lo={self.lo} hi={self.hi}")
        if not 3 <= self.bins <= 250:
            raise ValueError(f"bins must be within 3..250, got {self.bins}")

    def bin_of(self, x: float) -> int:
        """Index of the bin holding ``x``.

        >>> layout = SketchLayout(lo=1.0, hi=100.0, bins=4)
        >>> [layout.bin_of(x) for x in (0.0, 1.0, 5.0, 50.0, 100.0, 1e9)]
        [0, 0, 1, 2, 3, 3]
        """
        if not x > self.lo:
            return 0
        if x >= self.hi:
            return self.bins - 1
        return bisect.bisect_left(_edges(self.lo, self.hi, self.bins), x)

    def representative(self, i: int) -> float:
        """A value standing for bin ``i`` (geometric middle of its edges)."""
        edges = _edges(self.lo, self.hi, self.bins)
        if i <= 0:
            return self.lo
        if i >= self.bins - 1:
            return self.hi
        return math.sqrt(edges[i - 1] * edges[i])


@functools.lru_cache(maxsize=64)
def _edges(lo: float, hi: float, bins: int) -> tuple[float, ...]:
    inner = bins - 2
    ratio = hi / lo
    return tuple(lo * ratio ** (k / inner) for k in range(inner + 1))


@dataclass(frozen=True, slots=True)
class QuantileSketch:
    """A deterministic, mergeable histogram of one metric across the current users.

    Counts are plain integers, so two workers replaying the same updates hold identical
    bytes, and per-partition sketches add up exactly. A user's previous value is removed by
    its bin index when the user is re-scored, so the sketch describes each user once.

    >>> s = QuantileSketch.empty(SketchLayout(lo=1.0, hi=1000.0, bins=32))
    >>> for x in (1, 2, 3, 10, 100):
    ...     s, _ = s.move(None, x)
    >>> s.n, s.cdf(1000.0), s.cdf(2.0), s.cdf(0.0)
    (5, 1.0, 0.3, 0.1)
    >>> QuantileSketch.from_bytes(s.to_bytes()) == s
    True
    """

    layout: SketchLayout
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != self.layout.bins or min(self.counts, default=0) < 0:
            raise ValueError("counts must be non-negative, one per bin")

    @classmethod
    def empty(cls, layout: SketchLayout) -> QuantileSketch:
        """A sketch with no users."""
        return cls(layout, (0,) * layout.bins)

    @property
    def n(self) -> int:
        """Number of users counted."""
        return sum(self.counts)

    def move(self, old_bin: int | None, x: float) -> tuple[QuantileSketch, int]:
        """Replace a user's previous bin (``None`` if new) by the bin of ``x``."""
        new_bin = self.layout.bin_of(x)
        if old_bin == new_bin and self.counts[new_bin] > 0:
            return self, new_bin  # out of the bin and back in: the same counts
        counts = list(self.counts)
        if old_bin is not None and 0 <= old_bin < len(counts) and counts[old_bin] > 0:
            counts[old_bin] -= 1
        counts[new_bin] += 1
        return _sketch(self.layout, tuple(counts)), new_bin

    def cdf(self, x: float) -> float:
        """Mid-rank position of ``x`` in the population, in [0, 1].

        Values sharing ``x``'s bin count half, so ties (e.g. everyone at zero spend) sit in
        the middle instead of at an arbitrary end. An empty sketch answers 0.5.
        """
        counts = self.counts
        i = self.layout.bin_of(x)
        below = sum(counts[:i])
        total = below + sum(counts[i:])  # == self.n, in one pass over the counts
        if total == 0:
            return 0.5
        return (below + 0.5 * counts[i]) / total

    def quantile(self, q: float) -> float:
        """Approximate value at rank ``q`` (bin representative)."""
        total = self.n
        if total == 0:
            return math.nan
        target = min(max(q, 0.0), 1.0) * total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= target and c > 0:
                return self.layout.representative(i)
        return self.layout.representative(self.layout.bins - 1)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Sum of two sketches with the same layout (e.g. across partitions)."""
        if other.layout != self.layout:
            raise ValueError("cannot merge sketches with different layouts")
        return QuantileSketch(
            self.layout, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        )

    def to_bytes(self) -> bytes:
        """Deterministic little-endian encoding (layout then counts)."""
        b = self.layout.bins
        return struct.pack(f"<BddH{b}I", 1, self.layout.lo, self.layout.hi, b, *self.counts)

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        """Inverse of :meth:`to_bytes`."""
        version, lo, hi, bins = struct.unpack_from("<BddH", data)
        if version != 1:
            raise ValueError(f"unknown sketch encoding version {version}")
        counts = struct.unpack_from(f"<{bins}I", data, struct.calcsize("<BddH"))
        return cls(SketchLayout(lo, hi, bins), tuple(counts))


# A sketch from counts known to be valid (derived from a valid sketch by one move), built
# fast without the checks of ``__post_init__`` (see ``stream_app.slots``).
_sketch: Callable[[SketchLayout, tuple[int, ...]], QuantileSketch] = fast_constructor(
    QuantileSketch
)


@dataclass(frozen=True, slots=True)
class TierConfig:
    """Thresholds for lifecycle stages and RFM scoring (all durations in days)."""

    new_days: float = 7.0
    mature_days: float = 30.0
    steady_window_days: int = 28
    steady_min_active_days: int = 4
    churn_days: float = 90.0
    at_risk_level: int = 1
    at_risk_probability: float = 0.6
    at_risk_exit_probability: float = 0.5
    value_window_days: int = 90
    monetary_dim: str = "spend"
    min_population: int = 20
    score_margin: float = 0.05
    recency_layout: SketchLayout = SketchLayout(lo=1.0 / 24.0, hi=3650.0, bins=64)
    frequency_layout: SketchLayout = SketchLayout(lo=1.0, hi=366.0, bins=64)
    monetary_layout: SketchLayout = SketchLayout(lo=0.01, hi=1e7, bins=96)

    def __post_init__(self) -> None:
        if not 0.0 < self.new_days <= self.mature_days:
            raise ValueError("need 0 < new_days <= mature_days")
        if self.at_risk_exit_probability > self.at_risk_probability:
            raise ValueError("at_risk_exit_probability must not exceed at_risk_probability")
        if not 0.0 <= self.score_margin < 0.1:
            raise ValueError("score_margin must be within [0, 0.1)")


def lifecycle(
    view: ActivityView,
    now: float,
    level: int,
    probability: float | None,
    cfg: TierConfig,
    *,
    previous: str | None = None,
) -> str:
    """Lifecycle stage of a user at ``now`` (see the module table).

    ``previous`` adds hysteresis to the probability part of ``at_risk``: a user already at
    risk stays there until the probability falls below ``at_risk_exit_probability``, so a
    score wobbling around the threshold does not flap the stage.
    """
    if (now - view.last_seen) / DAY_S >= cfg.churn_days:
        return "churned"
    if level >= cfg.at_risk_level:
        return "at_risk"
    if probability is not None:
        limit = cfg.at_risk_exit_probability if previous == "at_risk" else cfg.at_risk_probability
        if probability >= limit:
            return "at_risk"
    tenure = view.tenure_days(now)
    if tenure < cfg.new_days:
        return "new"
    if (
        tenure >= cfg.mature_days
        and view.days_active(cfg.steady_window_days, now) >= cfg.steady_min_active_days
    ):
        return "mature"
    return "growing"


def next_lifecycle_deadline(view: ActivityView, now: float, cfg: TierConfig) -> float | None:
    """Next instant after ``now`` at which the stage changes with no new activity.

    Only the two clock-driven edges are known in advance: the end of the ``new`` window
    and the churn horizon. The engine may sweep these like warning deadlines.
    """
    new_end = view.first_seen + cfg.new_days * DAY_S
    churn = view.last_seen + cfg.churn_days * DAY_S
    if new_end > now:
        return churn if now < churn < new_end else new_end
    return churn if churn > now else None


def segment_of(rfm: tuple[int, int, int]) -> str:
    """Named segment for R, F, M scores (see the module table).

    >>> segment_of((5, 5, 4)), segment_of((1, 1, 2)), segment_of((1, 5, 5))
    ('champions', 'lost', 'cannot_lose')
    """
    r, f, m = rfm
    if not _scores_valid(rfm):
        raise ValueError(f"RFM scores must be within 1..5, got {rfm}")
    fm = (f + m + 1) // 2
    return _SEGMENT_GRID[r][fm - 1]


def rfm_values(view: ActivityView, now: float, cfg: TierConfig) -> tuple[float, float, float]:
    """Raw recency (days since last activity), frequency (days active) and monetary value
    (``monetary_dim`` total) over the value window."""
    recency = max(0.0, (now - view.last_seen) / DAY_S)
    frequency = float(view.days_active(cfg.value_window_days, now))
    monetary = view.total(cfg.monetary_dim, cfg.value_window_days, now)
    return recency, frequency, monetary


def _score(position: float, previous: int | None, margin: float) -> int:
    if previous is not None and (previous - 1) / 5 - margin <= position < previous / 5 + margin:
        return previous
    return 1 + min(4, int(position * 5))


@dataclass(frozen=True, slots=True)
class RfmSketches:
    """The three population sketches of one partition, updated as users are scored."""

    recency: QuantileSketch
    frequency: QuantileSketch
    monetary: QuantileSketch

    @classmethod
    def empty(cls, cfg: TierConfig) -> RfmSketches:
        """Sketches with no users, laid out per ``cfg``."""
        return cls(
            QuantileSketch.empty(cfg.recency_layout),
            QuantileSketch.empty(cfg.frequency_layout),
            QuantileSketch.empty(cfg.monetary_layout),
        )

    @property
    def n(self) -> int:
        """Number of users counted."""
        return self.recency.n

    def update(
        self, old_bins: tuple[int, int, int] | None, values: tuple[float, float, float]
    ) -> tuple[RfmSketches, tuple[int, int, int]]:
        """Count a user's current values, replacing the bins counted for them before."""
        old = old_bins if old_bins is not None else (None, None, None)
        r, br = self.recency.move(old[0], values[0])
        f, bf = self.frequency.move(old[1], values[1])
        m, bm = self.monetary.move(old[2], values[2])
        if r is self.recency and f is self.frequency and m is self.monetary:
            return self, (br, bf, bm)
        return _rfm_sketches(r, f, m), (br, bf, bm)

    def scores(
        self,
        values: tuple[float, float, float],
        previous: tuple[int, int, int] | None,
        margin: float,
    ) -> tuple[int, int, int]:
        """R, F, M scores 1..5 by population quintile, with a hysteresis band.

        A score only moves when the user's rank leaves the previous quintile by more than
        ``margin``, so a user sitting on a boundary keeps a stable segment.
        """
        prev = previous if previous is not None else (None, None, None)
        return (
            _score(1.0 - self.recency.cdf(values[0]), prev[0], margin),
            _score(self.frequency.cdf(values[1]), prev[1], margin),
            _score(self.monetary.cdf(values[2]), prev[2], margin),
        )

    def merge(self, other: RfmSketches) -> RfmSketches:
        """Population of both (e.g. to report across partitions)."""
        return RfmSketches(
            self.recency.merge(other.recency),
            self.frequency.merge(other.frequency),
            self.monetary.merge(other.monetary),
        )

    def to_bytes(self) -> bytes:
        """Deterministic encoding: three length-prefixed sketches."""
        parts = [s.to_bytes() for s in (self.recency, self.frequency, self.monetary)]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> RfmSketches:
        """Inverse of :meth:`to_bytes`."""
        out: list[QuantileSketch] = []
        pos = 0
        for _ in range(3):
            (size,) = struct.unpack_from("<I", data, pos)
            out.append(QuantileSketch.from_bytes(data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        return cls(out[0], out[1], out[2])


# ``RfmSketches(r, f, m)``, built fast.
_rfm_sketches: Callable[[QuantileSketch, QuantileSketch, QuantileSketch], RfmSketches] = (
    fast_constructor(RfmSketches)
)


def _check_tiers(
    lifecycle: str | None,
    value_segment: str | None,
    rfm: tuple[int, int, int] | None,
    rfm_bins: tuple[int, int, int] | None,
) -> None:
    """Raise ``ValueError`` for the first of the given (not ``None``) parts that is invalid."""
    if lifecycle is not None and lifecycle not in LIFECYCLES:
        raise ValueError(f"unknown lifecycle {lifecycle!r}")
    if value_segment is not None and value_segment not in SEGMENTS:
        raise ValueError(f"unknown value segment {value_segment!r}")
    if rfm is not None and not _scores_valid(rfm):
        raise ValueError(f"RFM scores must be within 1..5, got {rfm}")
    if (
        rfm_bins is not None
        and not _BINS.issuperset(rfm_bins)
        and not all(0 <= b < 255 for b in rfm_bins)
    ):
        raise ValueError(f"RFM bins must be within 0..254, got {rfm_bins}")


@dataclass(frozen=True, slots=True)
class TierState:
    """A user's committed tiers, plus the sketch bins their values were last counted in.

    >>> s = TierState("mature", "loyal", (4, 4, 3), (3, 10, 20))
    >>> TierState.from_bytes(s.to_bytes()) == s, len(s.to_bytes())
    (True, 9)
    """

    lifecycle: str | None = None
    value_segment: str | None = None
    rfm: tuple[int, int, int] | None = None
    rfm_bins: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        _check_tiers(self.lifecycle, self.value_segment, self.rfm, self.rfm_bins)

    def to_bytes(self) -> bytes:
        """Nine bytes: version, lifecycle, segment, three scores, three bins (0 = none)."""
        lc = 0 if self.lifecycle is None else LIFECYCLES.index(self.lifecycle) + 1
        seg = 0 if self.value_segment is None else SEGMENTS.index(self.value_segment) + 1
        rfm = self.rfm if self.rfm is not None else (0, 0, 0)
        bins = tuple(b + 1 for b in self.rfm_bins) if self.rfm_bins is not None else (0, 0, 0)
        return bytes((1, lc, seg, *rfm, *bins))

    @classmethod
    def from_bytes(cls, data: bytes) -> TierState:
        """Inverse of :meth:`to_bytes`."""
        if len(data) != 9 or data[0] != 1:
            raise ValueError("not a version-1 TierState encoding")
        lc, seg = data[1], data[2]
        rfm = (data[3], data[4], data[5])
        bins = (data[6], data[7], data[8])
        return cls(
            lifecycle=LIFECYCLES[lc - 1] if lc else None,
            value_segment=SEGMENTS[seg - 1] if seg else None,
            rfm=rfm if rfm[0] else None,
            rfm_bins=(bins[0] - 1, bins[1] - 1, bins[2] - 1) if bins[0] else None,
        )


# ``TierState(...)`` from parts already checked, built fast.
_tier_state: Callable[
    [str | None, str | None, tuple[int, int, int] | None, tuple[int, int, int] | None],
    TierState,
] = fast_constructor(TierState)


@dataclass(frozen=True, slots=True)
class ValueScore:
    """Outcome of scoring one user: ``rfm``/``segment`` are ``None`` while warming up."""

    rfm: tuple[int, int, int] | None
    segment: str | None
    bins: tuple[int, int, int]


def score_value(
    sketches: RfmSketches, view: ActivityView, now: float, state: TierState, cfg: TierConfig
) -> tuple[RfmSketches, ValueScore]:
    """Count the user in the partition's sketches and score them against it.

    Until ``min_population`` users are counted the ranks mean little, so no score is
    given and the user's committed segment stays as it is.
    """
    values = rfm_values(view, now, cfg)
    sketches, bins = sketches.update(state.rfm_bins, values)
    if sketches.n < cfg.min_population:
        return sketches, ValueScore(None, None, bins)
    rfm = sketches.scores(values, state.rfm, cfg.score_margin)
    return sketches, ValueScore(rfm, segment_of(rfm), bins)


def _stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)
def rfc3339(t: float) -> str:
    """Epoch seconds as the records' RFC 3339 UTC time with milliseconds.

    Cached, and shared with the warning records: a sweep stamps many records with the
    same deadline times.

    >>> rfc3339(0.0), rfc3339(1.5e9 + 0.0125)
    ('1970-01-01T00:00:00.000Z', '2017-07-14T02:40:00.012Z')
    """
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def step_tiers(
    state: TierState,
    new_lifecycle: str | None,
    new_segment: str | None,
    rfm: tuple[int, int, int] | None,
    at: float,
    user_id: str,
    *,
    rfm_bins: tuple[int, int, int] | None = None,
) -> tuple[TierState, list[dict[str, Any]]]:
    """Commit a user's newly computed tiers and describe each change.

    ``None`` for a lifecycle, segment, RFM or bins means "no opinion" (e.g. value scoring
    still warming up) and keeps what is committed. ``rfm`` is included when known;
    ``reason`` is a short code (``rfm_545`` for value changes). A first assignment is a change from
    ``None``, so gauges of the tier populations can be kept from the changes alone. The
    ``change_id`` hashes user, dimension, both tiers and the exact event time, so a replay
    yields the same ids while two real changes (a user leaving a tier and coming back to
    it) never share one.

    >>> s, out = step_tiers(TierState(), "new", None, None, 0.0, "u1")
    >>> [(c["dimension"], c["from"], c["to"]) for c in out]
    [('lifecycle', None, 'new')]
    >>> step_tiers(s, "new", None, None, 60.0, "u1")[1]
    []
    """
    # Parts taken from ``state`` were checked when it was made; only new ones are checked.
    lc, seg, r, bins = state.lifecycle, state.value_segment, state.rfm, state.rfm_bins
    if new_lifecycle is not None:
        lc = new_lifecycle
    if new_segment is not None:
        seg = new_segment
    if rfm is not None:
        r = rfm
    if rfm_bins is not None:
        bins = rfm_bins
    if lc == state.lifecycle and seg == state.value_segment:
        if r == state.rfm and bins == state.rfm_bins:
            return state, []
        _check_tiers(new_lifecycle, new_segment, rfm, rfm_bins)
        return _tier_state(lc, seg, r, bins), []
    _check_tiers(new_lifecycle, new_segment, rfm, rfm_bins)
    new_state = _tier_state(lc, seg, r, bins)
    changes: list[dict[str, Any]] = []
    before = state.lifecycle
    if lc is not None and lc != before:
        reason = _LIFECYCLE_REASONS.get(lc, "")
        changes.append(_change(user_id, "lifecycle", before, lc, at, reason, r))
    before = state.value_segment
    if seg is not None and seg != before:
        reason = "rfm_" + "".join(map(str, r)) if r else "rfm"
        changes.append(_change(user_id, "value", before, seg, at, reason, r))
    return new_state, changes


def _change(
    user_id: str,
    dimension: str,
    before: str | None,
    after: str,
    at: float,
    reason: str,
    rfm: tuple[int, int, int] | None,
) -> dict[str, Any]:
    """The record of one tier change (see :func:`step_tiers`)."""
    change: dict[str, Any] = {
        "change_id": _stable_id(user_id, dimension, str(before), after, repr(at)),
        "user_id": user_id,
        "dimension": dimension,
        "from": before,
        "to": after,
        "event_time": rfc3339(at),
        "reason": reason,
    }
    if rfm is not None:
        change["rfm"] = {"r": rfm[0], "f": rfm[1], "m": rfm[2]}
    return change
