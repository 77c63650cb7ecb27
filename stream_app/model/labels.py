"""Delayed churn labels: remember what a user looked like when scored, learn it later.

Whether a user churned at scoring moment ``t`` is only known once ``t + horizon`` has passed
in event time. The book keeps a bounded sample of scored snapshots, marks them "returned"
when the user shows activity inside their horizon, and hands them out only after the
watermark has passed the horizon, so the model never learns from a label before it is known.

Examples
--------
>>> book = LabelBook(LabelConfig(churn=ChurnConfig(horizon_days=14.0)))
>>> book.on_score("u1", 0.0, {"recency_days": 3.0})
True
>>> book.on_activity("u1", 5 * DAY)
>>> book.mature(13 * DAY)  # horizon not over yet: nothing is known
[]
>>> book.mature(14 * DAY)
[({'recency_days': 3.0}, False)]
"""

from __future__ import annotations

import hashlib
import heapq
import pickle
import struct
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["DAY", "ChurnConfig", "LabelBook", "LabelConfig"]

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class ChurnConfig:
    """What churn means: no activity in any of ``kinds`` during ``(t, t + horizon]``.

    Examples
    --------
    >>> ChurnConfig(kinds=("purchases",)).counts(("activity", "purchases"))
    True
    """

    horizon_days: float = 14.0
    kinds: tuple[str, ...] = ("activity",)

    @property
    def horizon_s(self) -> float:
        """Horizon in seconds of event time."""
        return self.horizon_days * DAY

    def counts(self, dims: Iterable[str]) -> bool:
        """Whether an event touching ``dims`` counts as the user being back."""
        return any(d in self.kinds for d in dims)


@dataclass(frozen=True, slots=True)
class LabelConfig:
    """How many snapshots to keep while their labels mature.

    Parameters
    ----------
    churn
        The churn definition whose horizon the snapshots wait out.
    min_gap_days
        At most one pending snapshot per user per this much event time; more would only
        repeat near-identical rows and overweight the most active users.
    sample_rate
        Fraction of (user, day) pairs kept, chosen by a stable hash so replays agree.
    max_pending
        Global cap on pending snapshots, bounding memory whatever the traffic.
    salt
        Changes which pairs the hash keeps, for independent samples in experiments.
    """

    churn: ChurnConfig = field(default_factory=ChurnConfig)
    min_gap_days: float = 1.0
    sample_rate: float = 1.0
    max_pending: int = 1_000_000
    salt: str = ""


@dataclass(slots=True)
class _Snapshot:
    seq: int
    t: float
    x: bytes
    names: int = 0
    returned: bool = False


_HEAD = struct.Struct("<qd?HH")


def _entry_id(user: str, seq: int) -> str:
    """Entry ids start with the user id, so a privacy request can find a user's entries."""
    return f"{user}\x00{seq}"


def _pack(snap: _Snapshot, user: str) -> bytes:
    raw = user.encode()
    return _HEAD.pack(snap.seq, snap.t, snap.returned, snap.names, len(raw)) + raw + snap.x


def _unpack(data: bytes) -> tuple[str, _Snapshot]:
    seq, t, returned, names, n = _HEAD.unpack_from(data)
    start = _HEAD.size
    return data[start : start + n].decode(), _Snapshot(seq, t, data[start + n :], names, returned)


class LabelBook:
    """Pending scored snapshots awaiting their churn label.

    The snapshots themselves are persisted incrementally: :meth:`drain_changes` hands out
    what was added, changed or removed since the last call, so a caller can write a
    batch's changes next to the batch (a hash of entries keyed by snapshot id) instead of
    rewriting the whole book; :meth:`meta_bytes` is the small rest, and :meth:`restore`
    rebuilds an identical book from both.

    Parameters
    ----------
    cfg
        Horizon, sampling and bounds.
    """

    def __init__(self, cfg: LabelConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else LabelConfig()
        self._by_user: dict[str, deque[_Snapshot]] = {}
        self._due: list[tuple[float, int, str]] = []
        self._seq = 0
        self._names: list[tuple[str, ...]] = []
        self._changed: dict[str, bytes | None] = {}
        self.pending = 0
        self.dropped = 0
        self._meta: tuple[tuple[LabelConfig, int, int, int, int], bytes] | None = None

    def _sampled(self, user: str, t: float) -> bool:
        rate = self.cfg.sample_rate
        if rate >= 1.0:
            return True
        key = f"{self.cfg.salt}|{user}|{int(t // DAY)}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64 < rate

    def would_keep(self, user: str, t: float) -> bool:
        """Whether :meth:`on_score` at ``t`` would keep a snapshot; lets a sweep skip features.

        Examples
        --------
        >>> LabelBook(LabelConfig(sample_rate=0.0)).would_keep("u", 0.0)
        False
        """
        queue = self._by_user.get(user)
        if queue and t - queue[-1].t < self.cfg.min_gap_days * DAY:
            return False
        return self._sampled(user, t) and self.pending < self.cfg.max_pending

    def _names_index(self, names: tuple[str, ...]) -> int:
        """Index of a feature-name set; a snapshot remembers the set it was taken with, so
        snapshots taken before a configuration change or an upgrade still decode."""
        try:
            return self._names.index(names)
        except ValueError:
            self._names.append(names)
            return len(self._names) - 1

    def _encode_x(self, x: dict[str, float]) -> bytes:
        return array("f", x.values()).tobytes()

    def _decode_x(self, snap: _Snapshot) -> dict[str, float]:
        values = array("f")
        values.frombytes(snap.x)
        return dict(zip(self._names[snap.names], values, strict=True))

    def on_score(self, user: str, t: float, x: dict[str, float]) -> bool:
        """Maybe keep a snapshot of ``x`` scored at event time ``t``; return whether kept.

        Examples
        --------
        >>> book = LabelBook()
        >>> book.on_score("u", 0.0, {}), book.on_score("u", 3600.0, {})  # within min_gap
        (True, False)
        """
        queue = self._by_user.get(user)
        if queue and t - queue[-1].t < self.cfg.min_gap_days * DAY:
            return False
        if not self._sampled(user, t):
            return False
        if self.pending >= self.cfg.max_pending:
            self.dropped += 1
            return False
        if queue is None:
            queue = self._by_user[user] = deque()
        snap = _Snapshot(self._seq, t, self._encode_x(x), self._names_index(tuple(x)))
        queue.append(snap)
        heapq.heappush(self._due, (t + self.cfg.churn.horizon_s, self._seq, user))
        self._changed[_entry_id(user, snap.seq)] = _pack(snap, user)
        self._seq += 1
        self.pending += 1
        return True

    def on_activity(self, user: str, t: float) -> None:
        """Record that ``user`` was active at ``t``: snapshots it falls after are not churn."""
        queue = self._by_user.get(user)
        if not queue:
            return
        horizon = self.cfg.churn.horizon_s
        for snap in queue:
            if not snap.returned and snap.t < t <= snap.t + horizon:
                snap.returned = True
                self._changed[_entry_id(user, snap.seq)] = _pack(snap, user)

    def mature(self, watermark: float) -> list[tuple[dict[str, float], bool]]:
        """Pop snapshots whose horizon ended by ``watermark`` as ``(features, churned)``.

        Snapshots come out in order of their horizon end, ties in order of scoring.
        """
        out: list[tuple[dict[str, float], bool]] = []
        due = self._due
        while due and due[0][0] <= watermark:
            _, _, user = heapq.heappop(due)
            queue = self._by_user[user]
            snap = queue.popleft()
            if not queue:
                del self._by_user[user]
            self.pending -= 1
            self._changed[_entry_id(user, snap.seq)] = None
            out.append((self._decode_x(snap), not snap.returned))
        return out

    def drain_changes(self) -> dict[str, bytes | None]:
        """Snapshot entries written (bytes) or removed (None) since the last call."""
        changed, self._changed = self._changed, {}
        return changed

    def meta_bytes(self) -> bytes:
        """Everything but the snapshots: counters and feature names (small, deterministic).

        Kept until one of them changes (the names only ever grow, the config is frozen and
        compared by identity first).

        >>> book = LabelBook()
        >>> first = book.meta_bytes()
        >>> book.meta_bytes() is first, book.on_score("u", 0.0, {"a": 1.0})
        (True, True)
        >>> book.meta_bytes() == pickle.dumps((book.cfg, 1, 1, 0, [("a",)]), 5)
        True
        """
        key = (self.cfg, self._seq, self.pending, self.dropped, len(self._names))
        cached = self._meta
        if cached is None or cached[0] != key:
            meta = (self.cfg, self._seq, self.pending, self.dropped, self._names)
            cached = self._meta = (key, pickle.dumps(meta, 5))
        return cached[1]

    @classmethod
    def restore(cls, meta: bytes, entries: Iterable[bytes]) -> LabelBook:
        """Rebuild a book from :meth:`meta_bytes` and its persisted snapshot entries.

        Examples
        --------
        >>> book = LabelBook()
        >>> _ = book.on_score("u", 0.0, {"a": 1.0}), book.on_score("v", 0.0, {"a": 2.0})
        >>> twin = LabelBook.restore(book.meta_bytes(), book.drain_changes().values())
        >>> twin.mature(30 * DAY) == book.mature(30 * DAY)
        True
        """
        cfg, seq, _, dropped, names = pickle.loads(meta)
        book = cls(cfg)
        book._seq, book.dropped, book._names = seq, dropped, list(names)
        snaps = sorted((_unpack(e) for e in entries if e is not None), key=lambda p: p[1].seq)
        book.pending = len(snaps)
        for user, snap in snaps:
            book._by_user.setdefault(user, deque()).append(snap)
            book._due.append((snap.t + cfg.churn.horizon_s, snap.seq, user))
        heapq.heapify(book._due)
        return book

    def to_bytes(self) -> bytes:
        """The whole book as one value (tests and small tools; the worker persists it
        incrementally)."""
        entries = [_pack(s, u) for u, q in sorted(self._by_user.items()) for s in q]
        return pickle.dumps((self.meta_bytes(), entries), protocol=5)

    @classmethod
    def from_bytes(cls, data: bytes) -> LabelBook:
        """Restore a book written by :meth:`to_bytes`."""
        meta, entries = pickle.loads(data)
        return cls.restore(meta, entries)
