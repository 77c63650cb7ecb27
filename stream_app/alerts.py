"""The per-user churn-warning state machine: three levels, episodes, cooldown, recovery.

Rules, each mapped to a level (thresholds in :class:`AlertConfig`):

=================  =====  =========================================================
rule               level  fires when
=================  =====  =========================================================
``activity_drop``  1      recent 7-day activity >= 30 % below the user's baseline,
                          and the baseline holds at least ``min_baseline`` events
``no_interaction`` 2      no interaction for 60 days
``no_login``       3      no login for 90 days
=================  =====  =========================================================

The model's churn probability can lift the level through ``model_thresholds``
(default p >= 0.6 -> at least 1, p >= 0.8 -> at least 2). The level is recomputed from
scratch on every signal, so it rises and falls with the observations; only *announcing*
it is stateful:

* An **episode** opens when the level first becomes >= 1 and closes when the user comes
  back: an ``activity`` signal whose level (rules and model) is 0. A high score therefore
  keeps an episode open even after some activity: operators are not told "recovered"
  while the model still expects the user to leave.
* Within an episode a warning is emitted only for a level above every level already
  emitted, so no level is announced twice and a drop then re-rise is silent. A level can
  fall without any record (de-escalation is silent).
* Two warnings of one user are at least ``cooldown_s`` apart. A suppressed escalation is
  emitted by the first later signal past the cooldown if still valid;
  :func:`next_deadline` schedules that signal.
* A closing episode emits exactly one ``recovered``, unless none of its warnings was
  emitted (all suppressed), in which case it closes silently.

Everything is pure and deterministic: ids are hashes of the inputs, times are event times,
so replaying the same signals gives byte-identical records.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from stream_app.playbook import Playbook, load_playbook
from stream_app.slots import fast_constructor
from stream_app.tiers import TierState, rfc3339

DAY_S = 86_400.0
Scalar = float | str | bool | None
LEVEL_NAMES: dict[int, str] = {1: "watch", 2: "warning", 3: "critical"}
_EPS_DAYS = 1e-9
_LEVELS = frozenset(LEVEL_NAMES)
_NO_LEVELS: frozenset[int] = frozenset()
_NEG_INF = float("-inf")


class WindowView(Protocol):
    """Read-only view of a user's activity windows (implemented by the window store)."""

    @property
    def last_seen(self) -> float: ...

    @property
    def first_seen(self) -> float: ...

    def last_seen_in(self, dim: str) -> float | None: ...

    def baseline(self, dim: str, now: float) -> float: ...

    def drop_ratio(self, dim: str, now: float) -> float | None: ...

    def total(self, dim: str, days: int, now: float) -> float: ...

    def tenure_days(self, now: float) -> float: ...

    def days_active(self, days: int, now: float) -> int: ...


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Thresholds of the warning rules (defaults are the operators' rules).

    ``interaction_dims`` and ``login_dims`` name the window dimensions that count as an
    interaction or a login; the most recent event across them is used. A user who never
    had an event in any of them (or whose view does not track them) falls back to their
    last event of any kind, so a source that does not emit such events cannot make every
    user look absent since day one. A purchase-only log maps purchases to both.
    """

    drop_threshold: float = 0.30
    min_baseline: float = 3.0
    drop_dim: str = "activity"
    no_interaction_days: float = 60.0
    no_login_days: float = 90.0
    interaction_dims: tuple[str, ...] = ("interactions",)
    login_dims: tuple[str, ...] = ("logins",)
    model_thresholds: tuple[tuple[float, int], ...] = ((0.6, 1), (0.8, 2))
    cooldown_s: float = DAY_S
    max_reasons: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.drop_threshold <= 1.0:
            raise ValueError("drop_threshold must be within (0, 1]")
        if self.no_interaction_days <= 0 or self.no_login_days <= 0:
            raise ValueError("absence thresholds must be positive")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        for threshold, level in self.model_thresholds:
            if level not in LEVEL_NAMES or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"bad model threshold ({threshold}, {level})")
        if not 1 <= self.max_reasons <= 5:
            raise ValueError("max_reasons must be within 1..5")


@dataclass(frozen=True, slots=True)
class RuleObservation:
    """What the rules look at for one user at one instant.

    ``drop_ratio`` is ``1 - recent7 / baseline`` of ``drop_dim`` (``None`` with no
    baseline). ``last_*_at`` give absence warnings their exact onset instant; when absent
    the onset is derived from the ``days_since_*`` values.
    """

    drop_ratio: float | None
    baseline: float
    days_since_interaction: float
    days_since_login: float
    last_interaction_at: float | None = None
    last_login_at: float | None = None


# ``RuleObservation(...)`` with all six fields, built fast (see ``stream_app.slots``).
_observation: Callable[
    [float | None, float, float, float, float | None, float | None], RuleObservation
] = fast_constructor(RuleObservation)


def _last_in(view: WindowView, dims: Sequence[str]) -> float:
    """Latest event time across ``dims`` (unknown ones skipped), else the last event."""
    best: float | None = None
    for dim in dims:
        try:
            t = view.last_seen_in(dim)
        except KeyError:
            continue
        if t is not None and (best is None or t > best):
            best = t
    return view.last_seen if best is None else best


def observe(view: WindowView, now: float, cfg: AlertConfig) -> RuleObservation:
    """Rule observations of a user at ``now`` from their window view.

    ``drop_ratio`` is only asked for when there is a baseline: without one it is ``None``
    by definition, so the view need not compute it twice.
    """
    dims = cfg.interaction_dims
    last_i = _last_in(view, dims)
    last_l = last_i if cfg.login_dims == dims else _last_in(view, cfg.login_dims)
    dim = cfg.drop_dim
    baseline = view.baseline(dim, now)
    return _observation(
        None if baseline <= 0 else view.drop_ratio(dim, now),
        baseline,
        max(0.0, (now - last_i) / DAY_S),
        max(0.0, (now - last_l) / DAY_S),
        last_i,
        last_l,
    )


@dataclass(frozen=True, slots=True)
class Signal:
    """One reason to re-evaluate a user, at event time ``at`` (epoch seconds).

    ``kind`` is ``activity`` when an event of the user was just applied, ``tick`` when a
    deadline passed or a periodic re-score ran. ``probability`` (0..1) and ``percentile``
    (0..100) are the current score, ``source`` says where it came from (e.g. ``model`` or
    ``prior``), ``reasons`` are ``(feature, value, contribution)`` triples.
    """

    kind: Literal["activity", "tick"]
    at: float
    obs: RuleObservation
    probability: float
    percentile: float
    reasons: Sequence[tuple[str, Scalar, float]] = ()
    model_version: str = "unknown"
    source: str = "model"
    tiers: TierState = field(default_factory=TierState)


make_signal: Callable[
    [
        Literal["activity", "tick"],
        float,
        RuleObservation,
        float,
        float,
        Sequence[tuple[str, Scalar, float]],
        str,
        str,
        TierState,
    ],
    Signal,
] = fast_constructor(Signal)
make_signal.__doc__ = """``Signal(kind, at, obs, ...)`` with every field given, built without the
frozen dataclass' per-field ``object.__setattr__`` (the engine makes one per evaluation;
see ``stream_app.slots``).

>>> obs = RuleObservation(None, 0.0, 1.0, 1.0)
>>> args = ("tick", 5.0, obs, 0.2, 40.0, (), "prior-1", "prior", TierState())
>>> make_signal(*args) == Signal(*args), repr(make_signal(*args)) == repr(Signal(*args))
(True, True)
"""


@dataclass(frozen=True, slots=True)
class Emit:
    """A record to publish: ``record`` is ``warning`` or ``recovered``."""

    record: Literal["warning", "recovered"]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WarningState:
    """A user's warning state between signals.

    ``level`` is the current level (0..3), ``episode`` the number of the latest episode
    (0 before the first), ``open`` whether it is still running, ``started_at`` its onset,
    ``emitted`` the levels announced in it and ``last_emit_at`` the time of the user's
    latest warning (for the cooldown; kept across episodes).

    >>> s = WarningState(level=2, episode=3, open=True, started_at=1.7e9, emitted=frozenset({2}))
    >>> WarningState.from_bytes(s.to_bytes()) == s, len(s.to_bytes())
    (True, 14)
    """

    level: int = 0
    episode: int = 0
    open: bool = False
    started_at: float = 0.0
    emitted: frozenset[int] = frozenset()
    last_emit_at: float | None = None

    def __post_init__(self) -> None:
        if self.level not in (0, 1, 2, 3) or not self.emitted <= _LEVELS:
            raise ValueError("levels must be within 0..3")
        if not 0 <= self.episode < 2**32:
            raise ValueError("episode out of range")

    @property
    def peak(self) -> int:
        """Highest level announced in the current episode (0 if none)."""
        return max(self.emitted, default=0)

    def to_bytes(self) -> bytes:
        """Compact encoding: version, flags, episode, start, and last emission if any."""
        flags = self.level | (self.open << 2) | (self.last_emit_at is not None) << 3
        for lv in self.emitted:
            flags |= 1 << (3 + lv)
        out = struct.pack("<BBId", 1, flags, self.episode, self.started_at)
        if self.last_emit_at is not None:
            out += struct.pack("<d", self.last_emit_at)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> WarningState:
        """Inverse of :meth:`to_bytes`."""
        version, flags, episode, started_at = struct.unpack_from("<BBId", data)
        if version != 1:
            raise ValueError(f"unknown WarningState encoding version {version}")
        has_last = bool(flags & 8)
        last = struct.unpack_from("<d", data, 14)[0] if has_last else None
        return cls(
            level=flags & 3,
            episode=episode,
            open=bool(flags & 4),
            started_at=started_at,
            emitted=frozenset(lv for lv in (1, 2, 3) if flags & (1 << (3 + lv))),
            last_emit_at=last,
        )


# ``WarningState(...)`` from values known to be valid (derived from a valid state and a
# level within 0..3), without the checks of ``__post_init__``.
_state: Callable[[int, int, bool, float, frozenset[int], float | None], WarningState] = (
    fast_constructor(WarningState)
)
_emit: Callable[[Literal["warning", "recovered"], dict[str, Any]], Emit] = fast_constructor(Emit)


class _Trigger(NamedTuple):
    rule: str
    level: int
    threshold: float
    observed: float
    unit: str
    onset: float


def _absence_onset(days: float, last: float | None, limit: float, at: float) -> float:
    """When an absence rule of ``limit`` days started to hold (never after ``at``)."""
    onset = last + limit * DAY_S if last is not None else at - (days - limit) * DAY_S
    return min(onset, at)


def _rules(obs: RuleObservation, at: float, cfg: AlertConfig) -> list[_Trigger]:
    fired: list[_Trigger] = []
    if (
        obs.drop_ratio is not None
        and obs.baseline >= cfg.min_baseline
        and obs.drop_ratio >= cfg.drop_threshold
    ):
        fired.append(_Trigger("activity_drop", 1, cfg.drop_threshold, obs.drop_ratio, "ratio", at))
    limit = cfg.no_interaction_days
    days = obs.days_since_interaction
    if days >= limit - _EPS_DAYS:
        onset = _absence_onset(days, obs.last_interaction_at, limit, at)
        fired.append(_Trigger("no_interaction", 2, limit, days, "days", onset))
    limit = cfg.no_login_days
    days = obs.days_since_login
    if days >= limit - _EPS_DAYS:
        onset = _absence_onset(days, obs.last_login_at, limit, at)
        fired.append(_Trigger("no_login", 3, limit, days, "days", onset))
    return fired


def _rule_level(obs: RuleObservation, cfg: AlertConfig) -> int:
    """Highest level among the rules :func:`_rules` fires (0 if none), without building
    their triggers."""
    if obs.days_since_login >= cfg.no_login_days - _EPS_DAYS:
        return 3
    if obs.days_since_interaction >= cfg.no_interaction_days - _EPS_DAYS:
        return 2
    drop = obs.drop_ratio
    if drop is not None and obs.baseline >= cfg.min_baseline and drop >= cfg.drop_threshold:
        return 1
    return 0


def _rule_onset(obs: RuleObservation, at: float, cfg: AlertConfig, level: int) -> float:
    """Onset of the rule of ``level``, which :func:`_rule_level` found to fire."""
    if level == 3:
        return _absence_onset(obs.days_since_login, obs.last_login_at, cfg.no_login_days, at)
    if level == 2:
        days, limit = obs.days_since_interaction, cfg.no_interaction_days
        return _absence_onset(days, obs.last_interaction_at, limit, at)
    return at


def _model(probability: float, cfg: AlertConfig) -> tuple[float, int] | None:
    best: tuple[int, float] | None = None
    for threshold, level in cfg.model_thresholds:
        if probability >= threshold and (best is None or (level, threshold) > best):
            best = (level, threshold)
    return None if best is None else (best[1], best[0])


def _level(fired: list[_Trigger], hit: tuple[float, int] | None) -> int:
    level = hit[1] if hit else 0
    for t in fired:
        if t.level > level:
            level = t.level
    return level


def level_of(signal: Signal, cfg: AlertConfig) -> int:
    """Current level (0..3) the observations and the score call for."""
    return _level(_rules(signal.obs, signal.at, cfg), _model(signal.probability, cfg))


def _stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def is_holdout(user_id: str, share: float, salt: str = "") -> bool:
    """Whether a user belongs to the control group that gets no action.

    A stable hash (not Python's salted ``hash()``) keeps the assignment identical across
    processes, restarts and replays; changing ``salt`` draws a fresh group.

    >>> is_holdout("u1", 0.0), is_holdout("u1", 1.0)
    (False, True)
    """
    return _holdout_draw(user_id, salt) < share


@functools.lru_cache(maxsize=1 << 16)
def _holdout_draw(user_id: str, salt: str) -> float:
    """The user's stable uniform draw in [0, 1) (cached: the engine asks on every signal)."""
    digest = hashlib.sha256(f"{salt}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@functools.cache
def _default_playbook() -> Playbook:
    return load_playbook()


def _reason_order(reason: tuple[str, Scalar, float]) -> tuple[float, str]:
    return -abs(reason[2]), reason[0]


def _warning(
    state: WarningState,
    level: int,
    episode: int,
    signal: Signal,
    fired: list[_Trigger],
    hit: tuple[float, int] | None,
    cfg: AlertConfig,
    user_id: str,
    holdout: bool,
    playbook: Playbook,
) -> dict[str, Any]:
    onsets = [t.onset for t in fired if t.level == level]
    by_rule = bool(onsets)
    if hit is not None and hit[1] == level:
        onsets.append(signal.at)
    reasons = sorted(signal.reasons, key=_reason_order)[: cfg.max_reasons]
    tiers = signal.tiers
    rfm = tiers.rfm
    segment = tiers.value_segment
    probability = signal.probability
    return {
        "warning_id": _stable_id(user_id, str(level), str(episode)),
        "user_id": user_id,
        "level": level,
        "level_name": LEVEL_NAMES[level],
        "previous_level": state.peak,
        "episode": episode,
        "churn_probability": probability,
        "percentile": signal.percentile,
        "triggers": {
            "rules": [
                {
                    "rule": t.rule,
                    "threshold": t.threshold,
                    "observed": round(t.observed, 4),
                    "unit": t.unit,
                }
                for t in fired
            ],
            "model": None if hit is None else {"threshold": hit[0], "probability": probability},
        },
        "reasons": [{"feature": f, "value": v, "contribution": c} for f, v, c in reasons],
        "tiers": {
            "lifecycle": tiers.lifecycle,
            "value_segment": segment,
            "rfm": None if rfm is None else {"r": rfm[0], "f": rfm[1], "m": rfm[2]},
        },
        "suggested_action": playbook.action(level, segment),
        "holdout": holdout,
        "event_time": rfc3339(min(onsets)),
        "emitted_at": None,
        "model_version": signal.model_version,
        "source": "rules" if by_rule else signal.source,
    }


def step(
    state: WarningState,
    signal: Signal,
    cfg: AlertConfig,
    *,
    user_id: str,
    holdout: bool,
    playbook: Playbook | None = None,
) -> tuple[WarningState, list[Emit]]:
    """Advance a user's warning state by one signal and return the records to publish.

    A warning's ``event_time`` is the onset of what triggered it: for an absence rule the
    exact deadline (last interaction + 60 d), not the time the sweep ran; otherwise the
    signal's time. ``previous_level`` is the highest level already announced in the
    episode. ``source`` is ``rules`` when a rule alone accounts for the level, else the
    score's source. ``emitted_at`` is left ``None`` (deterministic); a publisher may stamp
    it. ``holdout`` users get the same records, flagged, so downstream systems can
    withhold the action and the uplift can be measured.

    >>> cfg = AlertConfig()
    >>> quiet = RuleObservation(None, 0.0, days_since_interaction=61, days_since_login=61)
    >>> tick = Signal("tick", 1e9, quiet, probability=0.3, percentile=40.0)
    >>> s, out = step(WarningState(), tick, cfg, user_id="u", holdout=False)
    >>> s.level, s.episode, [e.payload["level_name"] for e in out]
    (2, 1, ['warning'])
    >>> back = RuleObservation(None, 0.0, days_since_interaction=0, days_since_login=0)
    >>> seen = Signal("activity", 1e9 + 60, back, probability=0.1, percentile=5.0)
    >>> s, out = step(s, seen, cfg, user_id="u", holdout=False)
    >>> s.open, [e.record for e in out]
    (False, ['recovered'])
    """
    # The level is found without building the rules' triggers: most signals announce
    # nothing, and only an announcement needs the triggers' details.
    at = signal.at
    obs = signal.obs
    hit = _model(signal.probability, cfg)
    level = hit[1] if hit is not None else 0
    rule_level = _rule_level(obs, cfg)
    if rule_level > level:
        level = rule_level

    if level == 0:
        if state.open and signal.kind == "activity":
            return _recover(state, signal, user_id, holdout)
        return _with_level(state, 0), []

    if not state.open:
        state = WarningState(
            level=level,
            episode=state.episode + 1,
            open=True,
            started_at=_rule_onset(obs, at, cfg, level) if rule_level == level else at,
            last_emit_at=state.last_emit_at,
        )
    last = state.last_emit_at
    if (last is None or at - last >= cfg.cooldown_s) and level > state.peak:
        payload = _warning(
            state,
            level,
            state.episode,
            signal,
            _rules(obs, at, cfg),
            hit,
            cfg,
            user_id,
            holdout,
            playbook or _default_playbook(),
        )
        new = _state(
            level, state.episode, state.open, state.started_at, state.emitted | {level}, at
        )
        return new, [_emit("warning", payload)]
    return _with_level(state, level), []


def _with_level(state: WarningState, level: int) -> WarningState:
    """``state`` at ``level`` (the same object when nothing changes; states are values)."""
    if state.level == level:
        return state
    return _state(
        level, state.episode, state.open, state.started_at, state.emitted, state.last_emit_at
    )


def _recover(
    state: WarningState, signal: Signal, user_id: str, holdout: bool
) -> tuple[WarningState, list[Emit]]:
    """Close the open episode on activity; a ``recovered`` record if it announced anything."""
    at = signal.at
    emits: list[Emit] = []
    if state.emitted:
        emits.append(
            _emit(
                "recovered",
                {
                    "recovery_id": _stable_id(user_id, str(state.episode), "recovered"),
                    "user_id": user_id,
                    "episode": state.episode,
                    "previous_level": state.peak,
                    "episode_started_at": rfc3339(state.started_at),
                    "event_time": rfc3339(at),
                    "episode_duration_s": max(0.0, at - state.started_at),
                    "holdout": holdout,
                    "model_version": signal.model_version,
                },
            )
        )
    closed = _state(0, state.episode, False, 0.0, _NO_LEVELS, state.last_emit_at)
    return closed, emits


def next_deadline(view: WindowView, state: WarningState, cfg: AlertConfig) -> float | None:
    """Next event time at which this user must be re-evaluated if nothing happens.

    The earliest of last interaction + ``no_interaction_days`` and last login +
    ``no_login_days``, for levels above those already announced in the episode; and the
    end of the cooldown when an escalation is waiting for it. Deadlines falling inside the
    cooldown move to its end, where they would be emitted. ``None`` when nothing is
    pending. The engine should call :func:`step` with a ``tick`` at exactly this time; it
    should also run a user's due deadlines before applying a later event of that user,
    or an event arriving ahead of the sweep would hide the absence.
    """
    peak = state.peak if state.open else 0
    last = state.last_emit_at
    cool_end = last + cfg.cooldown_s if last is not None else _NEG_INF
    # min() and max() of the candidates below, taken pairwise in the same order.
    best: float | None = None
    if peak < 3:
        dims = cfg.login_dims
        last_l = _last_in(view, dims)
        if peak < 2:
            same = cfg.interaction_dims == dims
            last_i = last_l if same else _last_in(view, cfg.interaction_dims)
            best = last_i + cfg.no_interaction_days * DAY_S
            t = last_l + cfg.no_login_days * DAY_S
            if t < best:
                best = t
        else:
            best = last_l + cfg.no_login_days * DAY_S
    if state.open and state.level > peak and (best is None or cool_end < best):
        best = cool_end
    if best is None:
        return None
    return cool_end if cool_end > best else best
