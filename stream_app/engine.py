"""The per-partition processing core: pure, sequential, deterministic, no I/O.

A partition is the unit of work. Its engine holds the partition's watermark, model, label
book, RFM sketches and absence deadlines, and processes events strictly one after another:
advance the watermark (fire the absence deadlines and mature the labels it passed), apply the
event to the user's windows, score, step the warning state machine and the tiers. Batches are
only an I/O grouping, so the output of a replay does not depend on how it was batched; the
caller loads the users a batch needs in one round trip and commits the result in another.
"""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_app import alerts, tiers
from stream_app.core import Core
from stream_app.features import features
from stream_app.model.labels import LabelBook
from stream_app.model.learner import ChurnScorer, Score
from stream_app.records import AppEvent
from stream_app.userrecord import UserRecord
from stream_app.windows import Outcome, WindowsBuilder, expired

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish: ``role`` is ``warning``, ``recovered`` or ``tier``."""

    role: str
    user_id: str
    payload: dict[str, Any]


@dataclass
class BatchResult:
    """What one batch changed: records to publish, state to write, counts for metrics."""

    outputs: list[Output] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    users: dict[str, UserRecord | None] = field(default_factory=dict)
    due: dict[str, float | None] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    scores: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    switches: list[str] = field(default_factory=list)
    drift: int = 0


@dataclass
class _Partition:
    """The partition-level state saved with every batch."""

    watermark: float
    scorer: ChurnScorer
    labels: LabelBook
    rfm: tiers.RfmSketches
    populations: dict[str, int] = field(default_factory=dict)

    def move(self, dimension: str, old: str | None, new: str | None) -> None:
        """Count a user leaving tier ``old`` and entering ``new`` of ``dimension``."""
        if old is not None:
            key = f"{dimension}:{old}"
            self.populations[key] = self.populations.get(key, 0) - 1
        if new is not None:
            key = f"{dimension}:{new}"
            self.populations[key] = self.populations.get(key, 0) + 1


class PartitionEngine:
    """Processes one partition's events in order; see the module docstring."""

    def __init__(
        self,
        core: Core,
        blob: bytes | None = None,
        due: Mapping[str, float] | None = None,
        label_entries: Iterable[bytes] = (),
    ) -> None:
        self.core = core
        self.state = _load_partition(core, blob, label_entries)
        self._due: dict[str, float] = dict(due or {})
        self._heap: list[tuple[float, str]] = [(t, u) for u, t in self._due.items()]
        heapq.heapify(self._heap)
        # Per-configuration spans of the deadlines, in seconds (``days * DAY_S``, the same
        # products the deadline sums would compute every time).
        self._rescore_s = tuple(days * DAY_S for days in core.rescore_after_days)
        self._retention_s = core.windows.retention_days * DAY_S
        # Users whose windows took events in the current batch and are not frozen yet.
        self._open: dict[str, tuple[WindowsBuilder, UserRecord]] = {}

    @property
    def watermark(self) -> float:
        """Event time up to which this partition has been processed."""
        return self.state.watermark

    def users_needed(self, events: Sequence[AppEvent], until: float | None = None) -> set[str]:
        """Users a batch will touch: its own, and those whose deadline it will pass."""
        horizon = max((e.occurred_at for e in events), default=float("-inf"))
        if until is not None:
            horizon = max(horizon, until)
        needed = {e.user_id for e in events}
        needed.update(self._due_by(horizon))
        return needed

    def _due_by(self, horizon: float) -> list[str]:
        """Users whose current deadline is at or before ``horizon``.

        Walks only the top of the heap (a child is never earlier than its parent), so a
        batch costs what its deadlines cost, not the size of the partition.
        """
        heap, due = self._heap, self._due
        size = len(heap)
        found: list[str] = []
        stack = [0] if size else []
        while stack:
            i = stack.pop()
            t, user = heap[i]
            if t > horizon:
                continue
            if due.get(user) == t:
                found.append(user)
            left = 2 * i + 1
            if left < size:
                stack.append(left)
                if left + 1 < size:
                    stack.append(left + 1)
        return found

    def process(
        self,
        events: Sequence[AppEvent],
        records: dict[str, UserRecord | None],
        *,
        until: float | None = None,
    ) -> BatchResult:
        """Apply ``events`` in order (then advance to ``until``); ``records`` is updated."""
        out = BatchResult()
        self._open = {}
        for index, event in enumerate(events):
            self._advance(event.occurred_at, records, out)
            self._apply(index, event, records, out)
        if until is not None:
            self._advance(until, records, out)
        for user in list(self._open):
            self._close(user, records, out)
        return out

    def snapshot(self) -> bytes:
        """The partition state as deterministic bytes, to commit with the batch.

        Pending label snapshots are not in it: they are written incrementally, see
        :meth:`label_changes`. river's rolling ROC AUC buffers updates until it is read, and
        the buffer is pickled with the scorer; reading both figures first makes the bytes
        independent of when metrics happened to be read (the values do not change).
        """
        st = self.state
        st.scorer.quality.auc("prior")
        st.scorer.quality.auc("model")
        parts = (
            st.watermark,
            st.scorer.to_bytes(),
            st.labels.meta_bytes(),
            st.rfm.to_bytes(),
            sorted(st.populations.items()),
        )
        return pickle.dumps(parts, protocol=5)

    def label_changes(self) -> dict[str, bytes | None]:
        """Label entries added, changed (bytes) or removed (None) since the last call."""
        return self.state.labels.drain_changes()

    def score_user(self, record: UserRecord, now: float) -> tuple[dict[str, float], Score]:
        """Features and score of a user at ``now`` without changing anything."""
        x = features(record.windows, now, self.core.features)
        return x, self.state.scorer.score(x, count=False)

    # -- internals -------------------------------------------------------------------------

    def _advance(self, t: float, records: dict[str, UserRecord | None], out: BatchResult) -> None:
        if t <= self.state.watermark:
            return
        self.state.watermark = t
        scorer = self.state.scorer
        drifts = scorer.drifts
        for x, churned in self.state.labels.mature(t):
            if scorer.learn(x, churned) is not None:
                out.switches.append(scorer.source)
            out.labels.append(churned)
        out.drift += scorer.drifts - drifts
        heap = self._heap
        while heap and heap[0][0] <= t:
            deadline, user = heapq.heappop(heap)
            if self._due.get(user) != deadline:
                continue
            del self._due[user]
            self._tick(user, deadline, records, out)

    def _tick(
        self, user: str, at: float, records: dict[str, UserRecord | None], out: BatchResult
    ) -> None:
        if user in self._open:
            self._close(user, records, out)
        record = records.get(user)
        if record is None:
            return
        if expired(record.windows, at, self.core.windows):
            self.state.move("lifecycle", record.tiers.lifecycle, None)
            self.state.move("value", record.tiers.value_segment, None)
            records[user] = out.users[user] = None
            self._set_due(user, None, out)
            return
        self._evaluate(user, record, "tick", at, records, out)

    def _apply(
        self, index: int, event: AppEvent, records: dict[str, UserRecord | None], out: BatchResult
    ) -> None:
        user = event.user_id
        open_ = self._open.get(user)
        if open_ is None:
            record = records.get(user)
            builder = WindowsBuilder(self.core.windows, record.windows if record else None)
        else:
            builder, record = open_
        outcome = builder.apply(event)
        if outcome is Outcome.LATE:
            out.late.append(index)
            return
        if outcome is Outcome.DUPLICATE:
            out.duplicates += 1
            return
        out.applied += 1
        at = event.occurred_at
        self.state.labels.on_activity(user, at)
        if (
            record is None
            or record.alert.open
            or at - record.evaluated_at >= self.core.evaluate_every_s
        ):
            win = builder.freeze()
            if open_ is not None:
                del self._open[user]
            record = record.with_windows(win) if record else UserRecord(win)
            self._evaluate(user, record, "activity", at, records, out)
        elif open_ is None:
            # Not scored now: the windows stay open in the builder until the user is scored,
            # ticked or the batch ends (:meth:`_close`), so a user's events in one batch
            # cost one load and one freeze, not one each. ``out.users`` keeps its order.
            self._open[user] = (builder, record)
            out.users[user] = record

    def _close(self, user: str, records: dict[str, UserRecord | None], out: BatchResult) -> None:
        """Freeze the open windows of ``user`` into its record."""
        builder, record = self._open.pop(user)
        records[user] = out.users[user] = record.with_windows(builder.freeze())

    def _evaluate(
        self,
        user: str,
        record: UserRecord,
        kind: str,
        at: float,
        records: dict[str, UserRecord | None],
        out: BatchResult,
    ) -> None:
        core, st = self.core, self.state
        win = record.windows
        x = features(win, at, core.features)
        score = st.scorer.score(x)
        st.labels.on_score(user, at, x)
        out.scores.append(score.probability)
        tier_state = self._tiers(user, record, at, score, out)
        signal = alerts.make_signal(
            "activity" if kind == "activity" else "tick",
            at,
            alerts.observe(win, at, core.alerts),
            score.probability,
            score.percentile,
            score.reasons,
            score.version,
            score.source,
            tier_state,
        )
        holdout = alerts.is_holdout(user, core.holdout_share, core.holdout_salt)
        state, emits = alerts.step(
            record.alert,
            signal,
            core.alerts,
            user_id=user,
            holdout=holdout,
            playbook=core.playbook,
        )
        # One record for the new tiers, warning state and evaluation time.
        record = UserRecord(win, state, tier_state, record.history, at)
        for emit in emits:
            level = int(emit.payload.get("level", 0)) if emit.record == "warning" else 0
            record = record.remember(level, at)
            out.outputs.append(Output(emit.record, user, emit.payload))
        records[user] = out.users[user] = record
        self._set_due(user, self._next_deadline(record, at), out)

    def _tiers(
        self, user: str, record: UserRecord, at: float, score: Score, out: BatchResult
    ) -> tiers.TierState:
        """Step the user's lifecycle and value tiers; returns their new tier state."""
        core, st = self.core, self.state
        prev = record.tiers
        win = record.windows
        stage = tiers.lifecycle(
            win,
            at,
            record.alert.level,
            score.probability,
            core.tiers,
            previous=prev.lifecycle,
        )
        values = tiers.rfm_values(win, at, core.tiers)
        st.rfm, bins = st.rfm.update(prev.rfm_bins, values)
        rfm = segment = None
        if st.rfm.n >= core.tiers.min_population:
            rfm = st.rfm.scores(values, prev.rfm, core.tiers.score_margin)
            segment = tiers.segment_of(rfm)
        state, changes = tiers.step_tiers(prev, stage, segment, rfm, at, user, rfm_bins=bins)
        for change in changes:
            st.move(str(change["dimension"]), change["from"], change["to"])
            out.outputs.append(Output("tier", user, change))
        return state

    def _next_deadline(self, record: UserRecord, now: float) -> float | None:
        core = self.core
        win = record.windows
        last = win.last_seen
        rescore = None
        for span in self._rescore_s:
            if last + span > now:
                rescore = last + span
                break
        candidates = (
            alerts.next_deadline(win, record.alert, core.alerts),
            tiers.next_lifecycle_deadline(win, now, core.tiers),
            last + self._retention_s,
            rescore,
        )
        # The earliest one in the future (the first of equals, like ``min``).
        best: float | None = None
        for t in candidates:
            if t is not None and t > now and (best is None or t < best):
                best = t
        return best

    def _set_due(self, user: str, deadline: float | None, out: BatchResult) -> None:
        if deadline is None:
            self._due.pop(user, None)
        else:
            self._due[user] = deadline
            heapq.heappush(self._heap, (deadline, user))
            if len(self._heap) > 2 * len(self._due) + 1024:
                self.compact()
        out.due[user] = deadline

    def compact(self) -> None:
        """Drop stale heap entries (deadlines that were replaced)."""
        self._heap = [(t, u) for u, t in self._due.items()]
        heapq.heapify(self._heap)

    def populations(self) -> dict[str, int]:
        """Users per ``dimension:tier`` in this partition (persisted with the partition)."""
        return {k: v for k, v in self.state.populations.items() if v}

    def due_count(self) -> int:
        """Users with a pending deadline."""
        return len(self._due)


def _load_partition(core: Core, blob: bytes | None, label_entries: Iterable[bytes]) -> _Partition:
    if not blob:
        return _Partition(
            float("-inf"), core.new_scorer(), core.new_labels(), tiers.RfmSketches.empty(core.tiers)
        )
    watermark, scorer, labels, rfm, populations = pickle.loads(blob)
    return _Partition(
        watermark,
        ChurnScorer.from_bytes(scorer),
        LabelBook.restore(labels, label_entries),
        tiers.RfmSketches.from_bytes(rfm),
        dict(populations),
    )
