"""Everything the service keeps about one user, as one compact Redis value.

A user's windows, warning state, tiers and a short warning history travel together, so one
MGET loads a user and one SET stores it; the encoding is deterministic, which is what makes
"replay twice, same bytes" checkable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from stream_app import windows
from stream_app.alerts import WarningState
from stream_app.tiers import TierState
from stream_app.windows import UserWindows

_VERSION = 1
_HISTORY = 3


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One published warning (level 1..3) or recovery (level 0) at an event time."""

    level: int
    at: float


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user's state between events."""

    windows: windows.UserWindows
    alert: WarningState = field(default_factory=WarningState)
    tiers: TierState = field(default_factory=TierState)
    history: tuple[HistoryItem, ...] = ()
    evaluated_at: float = float("-inf")

    def remember(self, level: int, at: float) -> UserRecord:
        """Add a published record to the bounded history (newest last)."""
        items = (*self.history, HistoryItem(level, at))[-_HISTORY:]
        return UserRecord(self.windows, self.alert, self.tiers, items, self.evaluated_at)

    # The three below equal ``dataclasses.replace(record, <part>=...)`` at a fraction of its
    # cost, which matters on the per-event path.

    def with_windows(self, win: UserWindows) -> UserRecord:
        """This record with other windows."""
        return UserRecord(win, self.alert, self.tiers, self.history, self.evaluated_at)

    def with_alert(self, alert: WarningState) -> UserRecord:
        """This record with another warning state."""
        return UserRecord(self.windows, alert, self.tiers, self.history, self.evaluated_at)

    def with_tiers(self, tiers: TierState) -> UserRecord:
        """This record with other tiers.

        >>> from stream_app.windows import AppEvent, WindowConfig, apply_event
        >>> win, _ = apply_event(None, AppEvent("e", "u", "login", 0.0), WindowConfig.social_app())
        >>> r = UserRecord(win).with_tiers(TierState("new"))
        >>> r == UserRecord(win, tiers=TierState("new")), r.with_alert(r.alert) == r
        (True, True)
        """
        return UserRecord(self.windows, self.alert, tiers, self.history, self.evaluated_at)

    def evaluated(self, at: float) -> UserRecord:
        """This record, marked as scored and checked against the rules at ``at``."""
        return UserRecord(self.windows, self.alert, self.tiers, self.history, at)


_ITEM = struct.Struct("<Bd")
_TIME = struct.Struct("<d")
_SIZE = struct.Struct("<H")


def _chunk(data: bytes) -> bytes:
    return _SIZE.pack(len(data)) + data


def encode(record: UserRecord, windows_bytes: bytes | None = None) -> bytes:
    """Deterministic bytes: version, then length-prefixed windows, alert, tiers, history and
    the time of the last evaluation.

    ``windows_bytes``, when given, must be ``windows.encode(record.windows)``: a caller that
    still has the encoding of unchanged windows (a user scored at a deadline, not by an
    event) saves the most expensive part.
    """
    hist = b"".join(_ITEM.pack(h.level, h.at) for h in record.history)
    return bytes([_VERSION]) + b"".join(
        _chunk(part)
        for part in (
            windows.encode(record.windows) if windows_bytes is None else windows_bytes,
            record.alert.to_bytes(),
            record.tiers.to_bytes(),
            hist,
            _TIME.pack(record.evaluated_at),
        )
    )


def decode(data: bytes, cfg: windows.WindowConfig | None = None) -> UserRecord:
    """Inverse of :func:`encode`."""
    return decode_parts(data, cfg)[0]


def decode_parts(data: bytes, cfg: windows.WindowConfig | None = None) -> tuple[UserRecord, bytes]:
    """:func:`decode`, and the windows' own encoding for a later :func:`encode`.

    >>> from stream_app.windows import AppEvent, WindowConfig, apply_event
    >>> win, _ = apply_event(None, AppEvent("e", "u", "login", 0.0), WindowConfig.social_app())
    >>> blob = encode(UserRecord(win))
    >>> record, win_bytes = decode_parts(blob, WindowConfig.social_app())
    >>> encode(record, win_bytes) == encode(record) == blob
    True
    """
    if not data or data[0] != _VERSION:
        raise ValueError("unknown user record encoding")
    parts: list[bytes] = []
    pos = 1
    for _ in range(5):
        (size,) = _SIZE.unpack_from(data, pos)
        parts.append(data[pos + 2 : pos + 2 + size])
        pos += 2 + size
    hist = tuple(HistoryItem(level, at) for level, at in _ITEM.iter_unpack(parts[3]))
    record = UserRecord(
        windows.decode(parts[0], cfg),
        WarningState.from_bytes(parts[1]),
        TierState.from_bytes(parts[2]),
        hist,
        _TIME.unpack(parts[4])[0],
    )
    return record, parts[0]
