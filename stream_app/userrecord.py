"""Everything the service keeps about one user, as one compact Redis value.

A user's windows, warning state, tiers and a short warning history travel together, so one
MGET loads a user and one SET stores it; the encoding is deterministic, which is what makes
"replay twice, same bytes" checkable.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from stream_app import windows
from stream_app.alerts import WarningState
from stream_app.slots import fast_constructor
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
        items = (*self.history, _history_item(level, at))[-_HISTORY:]
        return _record(self.windows, self.alert, self.tiers, items, self.evaluated_at)

    def with_windows(self, win: UserWindows) -> UserRecord:
        """This record with other windows: ``dataclasses.replace(record, windows=win)`` at a
        fraction of its cost, which matters on the per-event path.

        >>> from stream_app.windows import AppEvent, WindowConfig, apply_event
        >>> win, _ = apply_event(None, AppEvent("e", "u", "login", 0.0), WindowConfig.social_app())
        >>> r = UserRecord(win, tiers=TierState("new"), evaluated_at=5.0)
        >>> r.with_windows(win) == r, r.with_windows(win) is r
        (True, False)
        """
        return _record(win, self.alert, self.tiers, self.history, self.evaluated_at)


# ``UserRecord(...)`` and ``HistoryItem(...)`` built fast (see ``stream_app.slots``).
_record: Callable[
    [UserWindows, WarningState, TierState, tuple[HistoryItem, ...], float], UserRecord
] = fast_constructor(UserRecord)
_record.__doc__ = """``UserRecord(windows, alert, tiers, history, evaluated_at)``, built fast.

>>> from stream_app.windows import AppEvent, WindowConfig, apply_event
>>> win, _ = apply_event(None, AppEvent("e", "u", "login", 0.0), WindowConfig.social_app())
>>> args = (win, WarningState(), TierState("new"), (HistoryItem(2, 5.0),), 7.0)
>>> fast, slow = _record(*args), UserRecord(*args)
>>> fast == slow, repr(fast) == repr(slow), hash(fast.history) == hash(slow.history)
(True, True, True)
>>> _history_item(2, 5.0) == HistoryItem(2, 5.0)
True
"""
_history_item: Callable[[int, float], HistoryItem] = fast_constructor(HistoryItem)


_ITEM = struct.Struct("<Bd")
_TIME = struct.Struct("<d")
_SIZE = struct.Struct("<H")
_HEAD = bytes([_VERSION])


def encode(record: UserRecord, windows_bytes: bytes | None = None) -> bytes:
    """Deterministic bytes: version, then length-prefixed windows, alert, tiers, history and
    the time of the last evaluation.

    ``windows_bytes``, when given, must be ``windows.encode(record.windows)``: a caller that
    still has the encoding of unchanged windows (a user scored at a deadline, not by an
    event) saves the most expensive part.
    """
    win = windows.encode(record.windows) if windows_bytes is None else windows_bytes
    alert = record.alert.to_bytes()
    tiers = record.tiers.to_bytes()
    history = record.history
    hist = b"".join([_ITEM.pack(h.level, h.at) for h in history]) if history else b""
    size = _SIZE.pack
    return b"".join(
        (
            _HEAD,
            size(len(win)),
            win,
            size(len(alert)),
            alert,
            size(len(tiers)),
            tiers,
            size(len(hist)),
            hist,
            size(_TIME.size),
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
    unpack = _SIZE.unpack_from
    (size,) = unpack(data, 1)
    pos = 3 + size
    win = data[3:pos]
    (size,) = unpack(data, pos)
    alert = data[pos + 2 : pos + 2 + size]
    pos += 2 + size
    (size,) = unpack(data, pos)
    tiers = data[pos + 2 : pos + 2 + size]
    pos += 2 + size
    (size,) = unpack(data, pos)
    hist = data[pos + 2 : pos + 2 + size]
    pos += 2 + size
    (size,) = unpack(data, pos)
    (evaluated_at,) = _TIME.unpack(data[pos + 2 : pos + 2 + size])
    items = (
        tuple([_history_item(level, at) for level, at in _ITEM.iter_unpack(hist)]) if hist else ()
    )
    record = _record(
        windows.decode(win, cfg),
        WarningState.from_bytes(alert),
        TierState.from_bytes(tiers),
        items,
        evaluated_at,
    )
    return record, win
