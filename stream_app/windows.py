"""Per-user activity windows: pure state, event application and a compact binary codec.

Why this shape
--------------
Churn rules compare what a user did lately with what they usually do, so each user keeps
daily buckets for the recent past (``daily_days`` local days) and coarser weekly buckets
(absolute Monday-aligned weeks) further back, up to ``weeks_kept`` weeks.  Every value is
an integer in a fixed per-dimension quantum (counts in units, amounts and minutes in
hundredths), so sums do not depend on the order in which events are added.

Bucket placement depends only on an event's own local day and the largest day seen so far,
and the de-duplication set keeps exactly the ids whose second is within ``lateness_s`` of
the newest event.  Hence any arrival order within the lateness bound, with duplicates,
yields the same state and the same encoded bytes as the sorted, de-duplicated stream.

The hot path is :class:`WindowsBuilder` (mutable, a few microseconds per event); the worker
decodes a user's blob once per batch, applies that batch's events and encodes once.
:func:`apply_event` is the convenient immutable wrapper around it.

>>> cfg = WindowConfig.social_app()
>>> day = 20_000 * 86_400.0
>>> state, outcome = apply_event(None, AppEvent("e1", "u1", "session_start", day + 3600), cfg)
>>> outcome.name, state.total("sessions", 1, day + 7200)
('APPLIED', 1.0)
>>> apply_event(state, AppEvent("e1", "u1", "session_start", day + 3600), cfg)[1].name
'DUPLICATE'
>>> decode(encode(state), cfg) == state
True
"""

from __future__ import annotations

import bisect
import enum
import functools
import hashlib
import itertools
import math
import operator
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from stream_app.records import AppEvent

__all__ = [
    "DimensionRule",
    "Outcome",
    "UserWindows",
    "WindowConfig",
    "WindowsBuilder",
    "apply_event",
    "decode",
    "encode",
    "expired",
    "local_day",
]

VERSION = 1
_DAY_S = 86_400
_DAY_MS = 86_400_000
_HASH_BYTES = 8
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
# Endless arguments for ``map(functools.reduce, _ADDS, columns, _ZEROS)``: per column,
# ``0.0 + v1 + v2 + ...`` left to right.
_ADDS = itertools.repeat(operator.add)
_ZEROS = itertools.repeat(0.0)


class Outcome(enum.Enum):
    """What :func:`apply_event` did with an event; the caller counts non-applied ones."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class DimensionRule:
    """How one event kind feeds one dimension.

    Without ``property`` the event counts 1; with it, the numeric property value times
    ``scale`` is added (e.g. ``duration_s`` with ``scale=1/60`` gives minutes).  Non-numeric
    or missing values add nothing, but still mark the dimension as seen.
    """

    dimension: str
    property: str | None = None
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class _Plan:
    names: tuple[str, ...]
    index: Mapping[str, int]
    quanta: tuple[int, ...]
    rules: Mapping[str, tuple[tuple[int, str | None, float], ...]]
    touched: Mapping[str, tuple[int, ...]]
    fingerprint: int


_SOCIAL_APP: dict[str, list[Any]] = {
    "session_start": ["sessions", "logins"],
    "login": ["sessions", "logins"],
    "session_end": [{"dimension": "online_minutes", "property": "duration_s", "scale": 1 / 60}],
    "heartbeat": [{"dimension": "online_minutes", "property": "duration_s", "scale": 1 / 60}],
    "room_join": ["core_actions"],
    "live_view": ["core_actions"],
    "message_sent": ["core_actions", "interactions"],
    "comment": ["interactions"],
    "like": ["interactions"],
    "follow": ["interactions", "social"],
    "gift_received": ["social"],
    "gift_sent": [
        "interactions",
        "social",
        "purchases",
        {"dimension": "spend", "property": "amount"},
    ],
    "purchase": ["purchases", {"dimension": "spend", "property": "amount"}],
}

_PURCHASE_LOG: dict[str, list[Any]] = {
    "purchase": [
        "logins",
        "interactions",
        "purchases",
        {"dimension": "spend", "property": "amount"},
    ],
}


def _rule(raw: Any) -> DimensionRule:
    if isinstance(raw, DimensionRule):
        return raw
    if isinstance(raw, str):
        return DimensionRule(raw)
    if isinstance(raw, Mapping):
        return DimensionRule(str(raw["dimension"]), raw.get("property"), float(raw.get("scale", 1)))
    raise ValueError(f"bad dimension rule: {raw!r}")


def _rules(mapping: Mapping[str, Iterable[Any]]) -> dict[str, tuple[DimensionRule, ...]]:
    return {str(kind): tuple(_rule(r) for r in raw) for kind, raw in mapping.items()}


@dataclass(frozen=True)
class WindowConfig:
    """Which event kinds feed which dimension, and how much history is kept.

    Parameters
    ----------
    dimensions
        Event kind -> rules.  Every event, known kind or not, also counts 1 in
        ``activity_dimension``, so the absence rules work for any app.
    daily_days
        Local days kept at daily resolution (today included).
    horizons_days
        Window lengths the features read; validated against the retained history.
    weeks_kept
        Absolute weeks kept before the newest one; older detail is dropped.
    lateness_s
        Allowed out-of-orderness per user; older events are :attr:`Outcome.LATE`.
    retention_days
        Silent users' state expires after this long (also the Redis TTL).
    baseline_weeks
        ``(first, last)`` weeks before now averaged into the baseline; ``(2, 5)`` means
        days 8..35 ago, i.e. excluding the most recent 7 days.
    counterpart_keys
        Event properties naming another user/room, fed to the distinct-counterpart sketch.
    counterpart_sketch
        Sketch size ``k``: exact up to ``k`` counterparts, a KMV estimate beyond.

    Examples
    --------
    >>> cfg = WindowConfig.from_mapping({"dimensions": {"play": ["plays"]}, "daily_days": 7})
    >>> cfg.dimension_names
    ('activity', 'plays')
    """

    dimensions: Mapping[str, tuple[DimensionRule, ...]]
    daily_days: int = 14
    horizons_days: tuple[int, ...] = (1, 7, 28, 90)
    weeks_kept: int = 13
    lateness_s: int = 6 * 3600
    retention_days: int = 180
    baseline_weeks: tuple[int, int] = (2, 5)
    counterpart_keys: tuple[str, ...] = (
        "counterpart",
        "counterpart_id",
        "target_user_id",
        "host_id",
        "room_id",
    )
    counterpart_sketch: int = 8
    activity_dimension: str = "activity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dimensions", MappingProxyType(_rules(self.dimensions)))
        first, last = self.baseline_weeks
        if self.daily_days < 1 or self.weeks_kept < 1 or self.lateness_s < 0:
            raise ValueError("daily_days and weeks_kept must be >= 1, lateness_s >= 0")
        if not 1 <= first <= last or self.counterpart_sketch < 2:
            raise ValueError("baseline_weeks must be 1 <= first <= last; sketch >= 2")
        if max(self.horizons_days, default=0) > self.daily_days + 7 * self.weeks_kept:
            raise ValueError("a horizon is longer than the retained history")

    @classmethod
    def social_app(cls, **overrides: Any) -> WindowConfig:
        """Default mapping for a social / live-streaming app."""
        return cls(dimensions=_rules(_SOCIAL_APP), **overrides)

    @classmethod
    def purchase_log(cls, **overrides: Any) -> WindowConfig:
        """Preset for a purchase-only log (CDNOW): a purchase is also a login and an
        interaction, so the absence rules have something to watch.

        >>> WindowConfig.purchase_log().dimension_names
        ('activity', 'logins', 'interactions', 'purchases', 'spend')
        """
        overrides.setdefault("counterpart_keys", ())
        return cls(dimensions=_rules(_PURCHASE_LOG), **overrides)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WindowConfig:
        """Build from plain configuration (a settings value or a TOML table).

        ``preset`` (``"social_app"`` or ``"purchase_log"``) supplies the defaults; a
        ``dimensions`` table maps kind -> list of rules, each a dimension name or
        ``{dimension, property, scale}``.

        >>> cfg = WindowConfig.from_mapping({"preset": "purchase_log", "lateness_s": 0})
        >>> cfg.lateness_s, "spend" in cfg.dimension_names
        (0, True)
        """
        values = dict(data)
        preset = values.pop("preset", "social_app")
        presets = {"social_app": _SOCIAL_APP, "purchase_log": _PURCHASE_LOG}
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}")
        if preset == "purchase_log":
            values.setdefault("counterpart_keys", ())
        values["dimensions"] = _rules(values.get("dimensions", presets[preset]))
        for key in ("horizons_days", "baseline_weeks", "counterpart_keys"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """Dimensions in storage order: activity first, then by first appearance."""
        return self._plan.names

    @functools.cached_property
    def _plan(self) -> _Plan:
        names = [self.activity_dimension]
        for kind_rules in self.dimensions.values():
            for rule in kind_rules:
                if rule.dimension not in names:
                    names.append(rule.dimension)
        index = {name: i for i, name in enumerate(names)}
        valued = {r.dimension for rs in self.dimensions.values() for r in rs if r.property}
        quanta = tuple(100 if name in valued else 1 for name in names)
        rules = {
            kind: tuple(
                (index[r.dimension], r.property, _mult(r, quanta[index[r.dimension]]))
                for r in rs
                if r.dimension != self.activity_dimension
            )
            for kind, rs in self.dimensions.items()
        }
        touched = {k: tuple(sorted({i for i, _, _ in rs})) for k, rs in rules.items()}
        fp = zlib.crc32(repr((names, quanta)).encode()) & 0x3FFF
        return _Plan(tuple(names), index, quanta, rules, touched, fp)


def _mult(rule: DimensionRule, quantum: int) -> float:
    scaled = rule.scale * quantum
    return scaled if rule.property else float(round(scaled))


def local_day(ts: float, utc_offset_s: int | None) -> int:
    """The user's local day index: ``floor((ts + offset) / 86400)``.

    >>> local_day(86_399.0, None), local_day(86_399.0, 3600), local_day(3599.0, -3600)
    (0, 1, -1)
    """
    return math.floor((ts + (utc_offset_s or 0)) / _DAY_S)


def _week(day: int) -> int:
    return (day + 3) // 7


def _ms(ts: float) -> int:
    return round(ts * 1000)


@dataclass(frozen=True, slots=True)
class UserWindows:
    """One user's windows, as a value.  Build it with :func:`apply_event` or
    :class:`WindowsBuilder`; read it with the methods below.

    ``daily`` holds ``(day, values)`` ascending; ``weekly`` holds ``(week, day_bits,
    values)`` where ``day_bits`` marks the active days (Monday = bit 0) of the part of the
    week older than the daily range; ``recent`` holds ``(second, id_hash)`` for events
    within the lateness bound; values are integers in each dimension's quantum.
    """

    cfg: WindowConfig = field(compare=False, repr=False)
    first_ms: int
    last_ms: int
    offset_s: int
    max_day: int
    dim_last: tuple[int | None, ...]
    daily: tuple[tuple[int, tuple[int, ...]], ...]
    weekly: tuple[tuple[int, int, tuple[int, ...]], ...]
    recent: tuple[tuple[int, bytes], ...]
    counterparts: tuple[int, ...]
    life_totals: tuple[int, ...] = ()
    life_days: int = 0

    @property
    def first_seen(self) -> float:
        """Event time (epoch s) of the user's earliest applied event."""
        return self.first_ms / 1000

    @property
    def last_seen(self) -> float:
        """Event time (epoch s) of the user's newest applied event."""
        return self.last_ms / 1000

    def tenure_days(self, now: float) -> float:
        """Days since first seen (0 if ``now`` is before it)."""
        return max(0.0, (now - self.first_ms / 1000) / _DAY_S)

    def dimensions(self) -> tuple[str, ...]:
        """The dimension names this state can answer for."""
        return self.cfg._plan.names

    def last_seen_in(self, dim: str) -> float | None:
        """When the user last did something feeding ``dim`` (None if never).

        >>> cfg = WindowConfig.social_app()
        >>> s, _ = apply_event(None, AppEvent("a", "u", "like", 1e9), cfg)
        >>> s.last_seen_in("interactions"), s.last_seen_in("purchases")
        (1000000000.0, None)
        """
        ms = self.dim_last[self._idx(dim)]
        return None if ms is None else ms / 1000

    def total(self, dim: str, days: int, now: float) -> float:
        """Sum of ``dim`` over the trailing ``days`` local days ending with ``now``'s day.

        Exact within the daily range.  Beyond it, a week bucket straddling the window edge
        contributes pro rata to its active days inside the window, so the result always lies
        between the exact totals for ``days - 6`` and ``days + 6`` days.  Data older than
        ``weeks_kept`` weeks before the newest event is gone.

        >>> cfg = WindowConfig.social_app()
        >>> s, _ = apply_event(None, AppEvent("a", "u", "purchase", 1e9, {"amount": 9.99}), cfg)
        >>> s.total("spend", 1, 1e9), s.total("spend", 7, 1e9 + 8 * 86_400)
        (9.99, 0.0)
        """
        end, memo, spans = self._at(now)
        idx = self._idx(dim)
        return self._raw(memo, spans, idx, end - days + 1, end) / self.cfg._plan.quanta[idx]

    def trailing(
        self, dims: Sequence[str], days: Sequence[int], now: float
    ) -> list[tuple[list[float], float | None, float | None]]:
        """Per dimension: its :meth:`total` over each of ``days``, :meth:`last_seen_in` and
        :meth:`drop_ratio`, all at ``now`` in one call (what the features read).

        >>> cfg = WindowConfig.purchase_log()
        >>> s, _ = apply_event(None, AppEvent("a", "u", "purchase", 0.0, {"amount": 5}), cfg)
        >>> s.trailing(["spend"], [1, 7], 86_400.0)
        [([0.0, 5.0], 0.0, None)]
        """
        end, _, span_memo = self._at(now)
        bounds = self._baseline_bounds(end)
        spans = [(end - n + 1, end) for n in days]
        spans.append((end - 6, end))
        if bounds is not None:
            spans.append(bounds)
        totals = self._span_totals(spans, span_memo)
        plan, dim_last = self.cfg._plan, self.dim_last
        index, quanta = plan.index, plan.quanta
        # Per dimension, its totals over ``days`` in units (``t / q`` as in :meth:`total`).
        scaled = list(
            zip(*[map(operator.truediv, t, quanta) for t in totals[: len(days)]], strict=True)
        )
        recent = totals[len(days)]
        base_totals = totals[-1]
        out = []
        for dim in dims:
            idx = index[dim] if dim in index else self._idx(dim)
            q = quanta[idx]
            drop = None
            if bounds is not None:
                lo, hi = bounds
                base = base_totals[idx] / q * 7 / (hi - lo + 1)
                if base > 0:
                    drop = 1 - recent[idx] / q / base
            ms = dim_last[idx]
            out.append((list(scaled[idx]) if days else [], None if ms is None else ms / 1000, drop))
        return out

    def _span_totals(self, spans: list[tuple[int, int]], memo: _SpanMemo) -> list[list[float]]:
        """Per span ``(lo, hi)`` of local days, every dimension's :meth:`_raw` total (memoized
        in ``memo``, which :meth:`_raw` reads too), with the same float additions in the same
        order as :meth:`_daily_sum` and :meth:`_weekly_add`, so bit-identical to them.
        """
        daily, weekly = self.daily, self.weekly
        parts: dict[tuple[int, int], list[float]] = {}  # daily sums by bucket slice
        everything = (0, len(daily))
        oldest, newest = (daily[0][0], daily[-1][0]) if daily else (0, -1)
        out = []
        for span in spans:
            total = memo.get(span)
            if total is None:
                lo, hi = span
                if lo <= oldest and newest <= hi:  # often: every daily bucket
                    cut = everything
                else:
                    cut = (
                        bisect.bisect_left(daily, lo, key=_FIRST),
                        bisect.bisect_right(daily, hi, key=_FIRST),
                    )
                total = parts.get(cut)
                if total is None:
                    inside = daily[cut[0] : cut[1]]
                    if inside:
                        # Per dimension ``0.0 + v1 + v2 + ...`` in bucket order, as _daily_sum.
                        columns = zip(*map(_SECOND, inside), strict=True)
                        total = list(map(functools.reduce, _ADDS, columns, _ZEROS))
                    else:
                        total = [0.0] * len(self.dim_last)
                    parts[cut] = total
                if weekly:
                    total = self._weekly_into(total, lo, hi)
                memo[span] = total
            out.append(total)
        return out

    def _weekly_into(self, total: list[float], lo: int, hi: int) -> list[float]:
        """:meth:`_weekly_add` for every dimension at once (adding a zero changes no sum here:
        a total is never ``-0.0``)."""
        for week, bits, values in self.weekly:
            inside = bits & _mask(week, lo, hi)
            if inside == bits:
                total = list(map(operator.add, total, values))
            elif inside:
                share, count = inside.bit_count(), bits.bit_count()
                total = [t + v * share / count for t, v in zip(total, values, strict=True)]
        return total

    def _daily_sum(self, idx: int, lo: int, hi: int) -> float:
        total = 0.0
        for d, values in self.daily:
            if lo <= d <= hi:
                total += values[idx]
        return total

    def days_active(self, days: int, now: float) -> int:
        """Distinct local days with any event in the trailing ``days`` days (exact)."""
        end, memo, _ = self._at(now)
        found = memo.get(days)
        if found is None:
            found = memo[days] = self._days_active(end - days + 1, end)
        return int(found)

    def baseline(self, dim: str, now: float) -> float:
        """Usual amount of ``dim`` per 7 days over ``cfg.baseline_weeks`` before now.

        Averaged only over the days the user existed, so a 10-day-old user gets a
        baseline from its first 3 days; 0 when the user has no history in that span.

        >>> cfg = WindowConfig.social_app()
        >>> s, _ = apply_event(None, AppEvent("a", "u", "login", 0.0), cfg)
        >>> s.baseline("logins", 9 * 86_400.0)  # 1 login over its 3 baseline days
        2.3333333333333335
        """
        end, memo, spans = self._at(now)
        bounds = self._baseline_bounds(end)
        if bounds is None:
            return 0.0
        lo, hi = bounds
        idx = self._idx(dim)
        return self._raw(memo, spans, idx, lo, hi) / self.cfg._plan.quanta[idx] * 7 / (hi - lo + 1)

    def _baseline_bounds(self, end: int) -> tuple[int, int] | None:
        """Local days ``(lo, hi)`` of the baseline window at day ``end``; None if empty."""
        first, last = self.cfg.baseline_weeks
        hi = end - 7 * (first - 1)
        first_day = math.floor((self.first_ms / 1000 + self.offset_s) / _DAY_S)  # local_day
        lo = max(end - 7 * last + 1, first_day)
        return None if hi < lo else (lo, hi)

    def drop_ratio(self, dim: str, now: float) -> float | None:
        """``1 - recent7 / baseline``: 1 means stopped, 0 usual, negative more than usual."""
        base = self.baseline(dim, now)
        if base <= 0:
            return None
        return 1 - self.total(dim, 7, now) / base

    def lifetime(self, dim: str) -> float:
        """Total of ``dim`` over the user's whole history (not folded away with old buckets).

        >>> cfg = WindowConfig.purchase_log()
        >>> s, _ = apply_event(None, AppEvent("a", "u", "purchase", 0.0, {"amount": 5}), cfg)
        >>> s, _ = apply_event(s, AppEvent("b", "u", "purchase", 2e7, {"amount": 7}), cfg)
        >>> s.lifetime("spend"), s.lifetime("purchases"), s.lifetime_days_active()
        (12.0, 2.0, 2)
        """
        if not self.life_totals:
            return 0.0
        idx = self._idx(dim)
        return self.life_totals[idx] / self.cfg._plan.quanta[idx]

    def lifetime_days_active(self) -> int:
        """Distinct local days with any event over the user's whole history."""
        return self.life_days

    def counterparts_estimate(self) -> int:
        """Distinct counterparts ever seen: exact up to the sketch size, KMV estimate above."""
        k = self.cfg.counterpart_sketch
        if len(self.counterparts) < k:
            return len(self.counterparts)
        return max(k, round((k - 1) * 2**32 / (self.counterparts[-1] + 1)))

    def _idx(self, dim: str) -> int:
        try:
            return self.cfg._plan.index[dim]
        except KeyError:
            raise KeyError(f"unknown dimension {dim!r}") from None

    def _at(self, now: float) -> tuple[int, _Memo, _SpanMemo]:
        """``now``'s local day and the memos of sums at ``now`` (the last state's are kept).

        The engine reads the same state at the same instant from features, rules and tiers;
        the state is immutable, so whatever was computed for one of them holds for all.
        """
        state, at, end, memo, spans = _LAST[0]
        if state is self and at == now:
            return end, memo, spans
        end = math.floor((now + self.offset_s) / _DAY_S)
        memo, spans = {}, {}
        _LAST[0] = (self, now, end, memo, spans)
        return end, memo, spans

    def _days_active(self, lo: int, end: int) -> int:
        count = 0
        for d, _ in self.daily:
            if lo <= d <= end:
                count += 1
        for week, bits, _ in self.weekly:
            count += (bits & _mask(week, lo, end)).bit_count()
        return count

    def _raw(self, memo: _Memo, spans: _SpanMemo, idx: int, lo: int, hi: int) -> float:
        """Total of dimension ``idx`` over local days ``lo..hi`` in its storage quantum,
        memoized; accumulated in bucket order like any float sum here."""
        key = (idx, lo, hi)
        found = memo.get(key)
        if found is not None:
            return found
        row = spans.get((lo, hi))
        if row is not None:
            return row[idx]
        total = self._daily_sum(idx, lo, hi)
        if self.weekly:
            total = self._weekly_add(total, idx, lo, hi)
        memo[key] = total
        return total

    def _weekly_add(self, total: float, idx: int, lo: int, hi: int) -> float:
        """``total`` plus the week buckets' share of ``lo..hi``, added in bucket order."""
        for week, bits, values in self.weekly:
            inside = bits & _mask(week, lo, hi)
            if inside == bits:
                total += values[idx]
            elif inside:
                total += values[idx] * inside.bit_count() / bits.bit_count()
        return total


# Sums memoized per state and instant: (idx, lo, hi) -> raw total, days -> active days;
# and (lo, hi) -> every dimension's raw total (:meth:`UserWindows._span_totals`).
_Memo = dict[tuple[int, int, int] | int, float]
_SpanMemo = dict[tuple[int, int], list[float]]
_LAST: list[tuple[UserWindows | None, float, int, _Memo, _SpanMemo]] = [(None, math.nan, 0, {}, {})]


def _mask(week: int, lo: int, hi: int) -> int:
    start = 7 * week - 3
    a, b = max(lo, start) - start, min(hi, start + 6) - start
    return 0 if b < a else ((1 << (b + 1)) - 1) ^ ((1 << a) - 1)


def _hash(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=size).digest()


class WindowsBuilder:
    """Mutable working copy of a :class:`UserWindows`: apply many events, freeze once.

    >>> cfg = WindowConfig.social_app()
    >>> b = WindowsBuilder(cfg)
    >>> [b.apply(AppEvent(i, "u", "like", 1e9)).name for i in ("x", "y", "x")]
    ['APPLIED', 'APPLIED', 'DUPLICATE']
    >>> b.freeze().total("interactions", 1, 1e9)
    2.0
    """

    __slots__ = (
        "_late_ms",
        "_n",
        "_plan",
        "cfg",
        "daily",
        "dim_last",
        "first_ms",
        "ids",
        "ids_added",
        "ids_base",
        "kmv",
        "last_ms",
        "life",
        "life_days",
        "max_day",
        "offset_s",
        "weekly",
    )

    def __init__(self, cfg: WindowConfig, state: UserWindows | None = None) -> None:
        self.cfg = cfg
        self._plan = plan = cfg._plan
        self._late_ms = cfg.lateness_s * 1000
        self._n = n = len(plan.names)
        self.last_ms: int | None = None
        self.first_ms = self.offset_s = self.max_day = 0
        self.dim_last: list[int | None] = [None] * n
        # Buckets are tuples, as in a state: an event writes a new tuple into the one bucket it
        # touches, so loading and freezing copy the dicts, never the buckets.  Week buckets
        # are kept as the state's ``(week, day_bits, values)`` entries.
        self.daily: dict[int, tuple[int, ...]] = {}
        self.weekly: dict[int, tuple[int, int, tuple[int, ...]]] = {}
        self.ids: set[bytes] = set()
        # ``ids`` as the sorted ``(second, hash)`` pairs of the loaded state plus those added
        # since, so freezing merges a few new pairs instead of sorting them all.
        self.ids_base: tuple[tuple[int, bytes], ...] = ()
        self.ids_added: list[tuple[int, bytes]] = []
        self.kmv: list[int] = []
        self.life: list[int] = [0] * n
        self.life_days = 0
        if state is not None:
            self._load(state, n)

    def _load(self, s: UserWindows, n: int) -> None:
        if len(s.dim_last) != n:
            raise ValueError("state was built with a different dimension set")
        self.first_ms, self.last_ms, self.offset_s, self.max_day = (
            s.first_ms,
            s.last_ms,
            s.offset_s,
            s.max_day,
        )
        self.dim_last = list(s.dim_last)
        self.daily = dict(s.daily)
        self.weekly = dict(zip(map(_FIRST, s.weekly), s.weekly, strict=True))
        self.ids = set(map(_SECOND, s.recent))
        self.ids_base = s.recent
        self.kmv = list(s.counterparts)
        self.life = list(s.life_totals) if s.life_totals else [0] * n
        self.life_days = s.life_days

    def apply(self, ev: AppEvent) -> Outcome:
        """Apply one event in place; see :func:`apply_event` for the semantics."""
        t_ms = round(ev.occurred_at * 1000)
        last = self.last_ms
        if last is not None and t_ms < last - self._late_ms:
            return Outcome.LATE
        h = hashlib.blake2b(ev.event_id.encode(), digest_size=_HASH_BYTES).digest()
        ids = self.ids
        if h in ids and self._kept(h, last):
            return Outcome.DUPLICATE
        ids.add(h)
        self.ids_added.append((t_ms // 1000, h))
        off = ev.utc_offset_s or 0
        day = (t_ms + off * 1000) // _DAY_MS
        if last is None:
            self.first_ms = self.last_ms = t_ms
            self.offset_s, self.max_day = off, day
        else:
            if t_ms > last or (t_ms == last and off > self.offset_s):
                self.last_ms, self.offset_s = t_ms, off
            if t_ms < self.first_ms:
                self.first_ms = t_ms
            if day > self.max_day:
                self._advance(day)
        self._add(ev, t_ms, day)
        if self.cfg.counterpart_keys and ev.properties:
            self._counterparts(ev.properties)
        return Outcome.APPLIED

    def _kept(self, h: bytes, last_ms: int | None) -> bool:
        """Whether id ``h`` would still be in the state frozen now.

        ``ids`` holds every id loaded or applied since this builder started; freezing keeps
        only those whose second is within ``lateness_s`` of the latest event. A builder that
        applies several events before it is frozen (one per user and batch) must answer
        as one frozen after every event would, so an id outside the bound is not a duplicate.
        Only reached when ``h`` is in ``ids``, which is rare.
        """
        if last_ms is None:
            return False
        floor_s = last_ms // 1000 - self.cfg.lateness_s
        for second, known in itertools.chain(self.ids_added, self.ids_base):
            if known == h and second >= floor_s:
                return True
        return False

    def _add(self, ev: AppEvent, t_ms: int, day: int) -> None:
        plan = self._plan
        kind = ev.event
        in_daily = day > self.max_day - self.cfg.daily_days
        week = bits = 0
        values: list[int] | None
        if in_daily:
            old = self.daily.get(day)
            if old is None or not old[0]:
                self.life_days += 1
            values = [0] * self._n if old is None else list(old)
        else:
            week = _week(day)
            slot = self.weekly.get(week)
            bit = 1 << (day - 7 * week + 3)
            if slot is None or not slot[1] & bit:
                self.life_days += 1
            if week < _week(self.max_day) - self.cfg.weeks_kept:
                values = None
            elif slot is None:
                values, bits = [0] * self._n, bit
            else:
                values, bits = list(slot[2]), slot[1] | bit
        dim_last = self.dim_last
        for idx in plan.touched.get(kind, ()):
            seen = dim_last[idx]
            if seen is None or t_ms > seen:
                dim_last[idx] = t_ms
        life = self.life
        life[0] += 1
        if values is not None:
            values[0] += 1
        props = ev.properties
        for idx, prop, mult in plan.rules.get(kind, ()):
            if prop is None:
                delta = int(mult)
            else:
                v = props.get(prop)
                if not (v.__class__ is int or v.__class__ is float):
                    continue
                try:
                    delta = round(v * mult)
                except (ValueError, OverflowError):
                    continue
            life[idx] += delta
            if values is not None:
                values[idx] += delta
        if in_daily:
            self.daily[day] = tuple(values)  # type: ignore[arg-type]
        elif values is not None:
            self.weekly[week] = (week, bits, tuple(values))

    def _advance(self, day: int) -> None:
        self.max_day = day
        cutoff = day - self.cfg.daily_days
        oldest = _week(day) - self.cfg.weeks_kept
        daily, weekly = self.daily, self.weekly
        for d in [d for d in daily if d <= cutoff]:
            values = daily.pop(d)
            week = _week(d)
            if week < oldest:
                continue
            bit = 1 << (d - 7 * week + 3)
            slot = weekly.get(week)
            if slot is None:
                weekly[week] = (week, bit, values)
            else:
                merged = tuple(map(operator.add, slot[2], values))
                weekly[week] = (week, slot[1] | bit, merged)
        for w in [w for w in weekly if w < oldest]:
            del weekly[w]

    def _counterparts(self, props: Mapping[str, Any]) -> None:
        k = self.cfg.counterpart_sketch
        kmv = self.kmv
        for key in self.cfg.counterpart_keys:
            other = props.get(key)
            if other is None:
                continue
            h = int.from_bytes(_hash(str(other), 4), "big")
            if h in kmv or (len(kmv) >= k and h >= kmv[-1]):
                continue
            kmv.append(h)
            kmv.sort()
            del kmv[k:]

    def freeze(self) -> UserWindows:
        """The current state as a value (prunes ids outside the lateness bound)."""
        last_ms = self.last_ms
        if last_ms is None:
            raise ValueError("no event applied yet")
        floor_s = last_ms // 1000 - self.cfg.lateness_s
        base = self.ids_base
        recent = base[bisect.bisect_left(base, (floor_s,)) :]
        added = self.ids_added
        if added:
            if len(added) > 1 or added[0][0] < floor_s:
                added = sorted(pair for pair in added if pair[0] >= floor_s)
            if added:
                if not recent or added[0] > recent[-1]:
                    recent += tuple(added)  # the usual case: newer than every kept id
                else:
                    recent = tuple(sorted(recent + tuple(added)))  # a merge of sorted runs
        dim_last = self.dim_last.copy()
        dim_last[0] = last_ms
        return UserWindows(
            cfg=self.cfg,
            first_ms=self.first_ms,
            last_ms=last_ms,
            offset_s=self.offset_s,
            max_day=self.max_day,
            dim_last=tuple(dim_last),
            daily=tuple(sorted(self.daily.items())),
            weekly=tuple(sorted(self.weekly.values())),
            recent=recent,
            counterparts=tuple(self.kmv),
            life_totals=tuple(self.life),
            life_days=self.life_days,
        )


def apply_event(
    state: UserWindows | None, ev: AppEvent, cfg: WindowConfig
) -> tuple[UserWindows, Outcome]:
    """Apply one event to a user's state.

    Returns the new state and :attr:`Outcome.APPLIED`, or the unchanged state and
    :attr:`Outcome.LATE` (``occurred_at < last_seen - lateness_s``; the caller sends it to
    the DLQ as ``late_event``) or :attr:`Outcome.DUPLICATE` (same ``event_id`` already
    applied within the lateness bound).  Events with the same ``event_id`` are assumed to
    be the same event.  For batches use :class:`WindowsBuilder` directly.

    >>> cfg = WindowConfig.social_app(lateness_s=60)
    >>> s, _ = apply_event(None, AppEvent("a", "u", "login", 1000.0), cfg)
    >>> s2, outcome = apply_event(s, AppEvent("b", "u", "login", 900.0), cfg)
    >>> outcome.name, s2 is s
    ('LATE', True)
    """
    builder = WindowsBuilder(cfg, state)
    outcome = builder.apply(ev)
    if outcome is not Outcome.APPLIED and state is not None:
        return state, outcome
    return builder.freeze(), outcome


def expired(state: UserWindows, now: float, cfg: WindowConfig) -> bool:
    """True once the user has been silent longer than ``cfg.retention_days``."""
    return now - state.last_seen > cfg.retention_days * _DAY_S


# --- codec -----------------------------------------------------------------------------
#
# [version byte][varints ...][8-byte id hashes]
# varints: fingerprint, n_ids, last_ms, last-first, zz(offset), zz(max_day - day(last)),
#   dim-last mask + (last_ms - dim_ms) each, n_daily + per bucket (gap, mask, [neg], values),
#   n_weekly + per bucket (gap, day_bits, mask, [neg], values), per id (second gap),
#   n_counterparts + ascending gaps.
# Buckets go newest first with gaps from the previous one; a bucket's mask has one bit per
# non-zero dimension shifted left by one, the low bit flags a following negative mask.

_BITS = [1 << i for i in range(64)]


def _zz(v: int) -> int:
    return v << 1 if v >= 0 else ((-v) << 1) - 1


def _unzz(v: int) -> int:
    return v >> 1 if not v & 1 else -((v + 1) >> 1)


def _put_values(out: list[int], values: Sequence[int]) -> None:
    present = [v for v in values if v]
    if not present:
        out.append(0)
        return
    mask = _mask_of(tuple(map(bool, values)))
    if min(present) < 0:
        neg = sum(_BITS[i] for i, v in enumerate(values) if v < 0)
        out += (mask << 1 | 1, neg)
        out += [abs(v) for v in present]
    else:
        out.append(mask << 1)
        out += present


@functools.lru_cache(maxsize=4096)
def _mask_of(nonzero: tuple[bool, ...]) -> int:
    """Bit ``i`` set for each true ``nonzero[i]``."""
    return sum(_BITS[i] for i, flag in enumerate(nonzero) if flag)


def encode(state: UserWindows) -> bytes:
    """Compact deterministic bytes for ``state`` (version byte first)."""
    plan = state.cfg._plan
    out = [plan.fingerprint, len(state.recent), state.last_ms, state.last_ms - state.first_ms]
    out += (_zz(state.offset_s), _zz(state.max_day - _day_of(state.last_ms, state.offset_s)))
    lasts = state.dim_last[1:]
    out.append(sum(1 << i for i, v in enumerate(lasts) if v is not None))
    out.extend(state.last_ms - v for v in lasts if v is not None)
    prev = state.max_day + 1
    out.append(len(state.daily))
    for d, values in reversed(state.daily):
        out.append(prev - d - 1)
        prev = d
        _put_values(out, values)
    prev = _week(state.max_day) + 1
    out.append(len(state.weekly))
    for w, bits, values in reversed(state.weekly):
        out += (prev - w - 1, bits)
        prev = w
        _put_values(out, values)
    prev = state.last_ms // 1000
    for sec, _ in reversed(state.recent):
        out.append(prev - sec)
        prev = sec
    out.append(len(state.counterparts))
    prev = 0
    for h in state.counterparts:
        out.append(h - prev)
        prev = h
    _put_values(out, state.life_totals or (0,) * len(plan.names))
    out.append(state.life_days)
    return _varints(out, bytes((VERSION,)), b"".join(h for _, h in reversed(state.recent)))


def _day_of(ms: int, offset_s: int) -> int:
    return (ms + offset_s * 1000) // _DAY_MS


def _varint(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_SMALL = [_varint(v) for v in range(1 << 14)]
_MULTI = re.compile(rb"[\x80-\xff]+[\x00-\x7f]")


def _varints(values: list[int], head: bytes, tail: bytes) -> bytes:
    small = _SMALL
    body = b"".join([small[v] if v < 16384 else _varint(v) for v in values])
    return head + body + tail


def _read_varints(data: bytes) -> list[int]:
    out: list[int] = []
    pos = 0
    for m in _MULTI.finditer(data):
        start, end = m.span()
        out += data[pos:start]
        if end - start == 2:
            out.append((data[start] & 0x7F) | data[start + 1] << 7)
        else:
            v = 0
            for i, b in enumerate(data[start:end]):
                v |= (b & 0x7F) << (7 * i)
            out.append(v)
        pos = end
    out += data[pos:]
    return out


def _values(vals: list[int], p: int, n: int) -> tuple[tuple[int, ...], int]:
    """The ``n`` bucket values written by :func:`_put_values` at ``vals[p]``, and the position
    after them."""
    head = vals[p]
    idxs = _present(head >> 1)
    out = [0] * n
    if head & 1:
        neg, p = vals[p + 1], p + 2
        for i, v in zip(idxs, vals[p : p + len(idxs)], strict=True):
            out[i] = -v if neg >> i & 1 else v
    else:
        p += 1
        for i, v in zip(idxs, vals[p : p + len(idxs)], strict=True):
            out[i] = v
    return tuple(out), p + len(idxs)


def _head(data: bytes) -> tuple[int, int]:
    """The first two varints after the version byte: fingerprint and number of ids."""
    out: list[int] = []
    v = shift = 0
    for b in data[1:21]:
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            out.append(v)
            if len(out) == 2:
                break
            v = shift = 0
    if len(out) < 2:
        raise ValueError("truncated window blob")
    return out[0], out[1]


@functools.cache
def _present(mask: int) -> tuple[int, ...]:
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def decode(data: bytes, cfg: WindowConfig | None = None) -> UserWindows:
    """Inverse of :func:`encode` for the same dimension set (``cfg``, default social app).

    Raises ``ValueError`` for an unknown version or a blob built with other dimensions.
    """
    cfg = cfg or _default()
    plan = cfg._plan
    if not data or data[0] != VERSION:
        raise ValueError("unknown window blob version")
    fingerprint, n_ids = _head(data)
    if fingerprint != plan.fingerprint:
        raise ValueError("window blob was built with a different dimension set")
    tail = len(data) - n_ids * _HASH_BYTES
    vals = _read_varints(data[1:tail])
    _, _, last_ms, span, off, day_gap, mask = vals[:7]
    offset_s = _unzz(off)
    max_day = _day_of(last_ms, offset_s) + _unzz(day_gap)
    n = len(plan.names)
    dim_last: list[int | None] = [last_ms]
    p = 7
    for i in range(n - 1):
        if mask >> i & 1:
            dim_last.append(last_ms - vals[p])
            p += 1
        else:
            dim_last.append(None)
    daily, p = _daily(vals, p, max_day, n)
    weekly, p = _weekly(vals, p, _week(max_day), n)
    recent, sec = [], last_ms // 1000
    for i in range(n_ids):
        sec -= vals[p + i]
        recent.append((sec, data[tail + i * _HASH_BYTES : tail + (i + 1) * _HASH_BYTES]))
    p += n_ids
    kmv, h = [], 0
    for gap in vals[p + 1 : p + 1 + vals[p]]:
        h += gap
        kmv.append(h)
    lifetime, p = _values(vals, p + 1 + vals[p], n)
    return UserWindows(
        cfg=cfg,
        first_ms=last_ms - span,
        last_ms=last_ms,
        offset_s=offset_s,
        max_day=max_day,
        dim_last=tuple(dim_last),
        daily=tuple(reversed(daily)),
        weekly=tuple(reversed(weekly)),
        recent=tuple(reversed(recent)),
        counterparts=tuple(kmv),
        life_totals=lifetime,
        life_days=vals[p],
    )


def _daily(
    vals: list[int], p: int, max_day: int, n: int
) -> tuple[list[tuple[int, tuple[int, ...]]], int]:
    """Daily buckets, newest first, and the position after them."""
    out = []
    prev = max_day + 1
    for _ in range(vals[p]):
        prev -= vals[p + 1] + 1
        values, p = _values(vals, p + 2, n)
        out.append((prev, values))
        p -= 1
    return out, p + 1


def _weekly(
    vals: list[int], p: int, max_week: int, n: int
) -> tuple[list[tuple[int, int, tuple[int, ...]]], int]:
    """Weekly buckets, newest first, and the position after them."""
    out = []
    prev = max_week + 1
    for _ in range(vals[p]):
        prev -= vals[p + 1] + 1
        bits = vals[p + 2]
        values, p = _values(vals, p + 3, n)
        out.append((prev, bits, values))
        p -= 1
    return out, p + 1


_DEFAULT: list[WindowConfig] = []


def _default() -> WindowConfig:
    if not _DEFAULT:
        _DEFAULT.append(WindowConfig.social_app())
    return _DEFAULT[0]
