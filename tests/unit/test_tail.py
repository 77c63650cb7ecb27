"""The tail command's filtering and formatting, on records built without a broker."""

from __future__ import annotations

import io
from typing import Any

import orjson

from stream_app.tools.tail import Record, decode, format_record, matches, run_tail, top_reason


def _warning(user: str, level: int, **extra: Any) -> Record:
    value = {
        "warning_id": f"w-{user}-{level}",
        "user_id": user,
        "level": level,
        "level_name": {1: "watch", 2: "at_risk", 3: "critical"}[level],
        "churn_probability": 0.25 * level,
        "event_time": "2024-01-05T10:00:00Z",
        "reasons": [
            {"feature": "days_idle", "value": 3, "contribution": 0.1},
            {"feature": "sessions_7d", "value": 1, "contribution": -0.4},
        ],
        "suggested_action": {"code": "nudge", "text": "Say hi", "channel": "push"},
        "holdout": False,
        **extra,
    }
    return decode(
        "churn.warnings", 0, level, user.encode(), orjson.dumps(value),
        [("ce_type", b"dev.churnwarnings.warning.v1")],
    )  # fmt: skip


RECOVERED = decode(
    "churn.warnings", 1, 7, b"u2",
    orjson.dumps({"recovery_id": "r", "user_id": "u2", "previous_level": 3,
                  "event_time": "2024-01-06T00:00:00Z", "episode_duration_s": 5400}),
    [("ce_type", b"dev.churnwarnings.recovered.v1")],
)  # fmt: skip


def test_warning_line_shows_time_user_level_p_reason_action() -> None:
    line = format_record(_warning("u1", 2))
    assert line == "2024-01-05T10:00:00Z  u1  L2 at_risk  p=0.50  sessions_7d=1 (-0.40)  push:nudge"
    assert format_record(_warning("u1", 1, holdout=True)).endswith("[holdout]")


def test_other_kinds_and_garbage_stay_readable() -> None:
    assert format_record(RECOVERED) == "2024-01-06T00:00:00Z  u2  recovered from L3 after 1h 30m"
    change = decode(
        "user.tiers", 0, 0, b"u3",
        orjson.dumps({"change_id": "c", "user_id": "u3", "dimension": "lifecycle",
                      "from": "active", "to": "at_risk", "event_time": "t", "reason": "idle"}),
        None,
    )  # fmt: skip
    assert change.kind == "tier_changed"
    assert format_record(change) == "t  u3  lifecycle: active -> at_risk  (idle)"
    junk = decode("churn.warnings", 2, 9, None, b"\x00\x01", None)
    assert junk.value is None
    assert format_record(junk) == "churn.warnings[2]@9  None  (unrecognised)"


def test_top_reason_falls_back_to_rules() -> None:
    rules = {"triggers": {"rules": [{"rule": "inactive_days", "observed": 9, "unit": "days"}]}}
    assert top_reason(rules) == "inactive_days: 9 days"


def test_filters() -> None:
    records = [_warning("u1", 1), _warning("u1", 3), _warning("u2", 2), RECOVERED]
    assert [r.offset for r in records if matches(r, levels={3})] == [3]
    assert [r.offset for r in records if matches(r, users={"u2"})] == [2, 7]
    assert [r.offset for r in records if matches(r, levels={2, 3}, users={"u1"})] == [3]
    assert all(matches(r) for r in records)


def test_run_tail_plain_json_max_and_colour() -> None:
    records = [_warning("u1", 1), _warning("u1", 3), _warning("u2", 3), RECOVERED]
    out = io.StringIO()
    shown = run_tail("unused", levels={3}, max_messages=1, out=out, records=iter(records))
    assert shown == 1
    assert out.getvalue().count("\n") == 1 and "\x1b[" not in out.getvalue()
    raw = io.StringIO()
    run_tail("unused", as_json=True, out=raw, records=iter(records))
    values = [orjson.loads(line) for line in raw.getvalue().splitlines()]
    assert [v["user_id"] for v in values] == ["u1", "u1", "u2", "u2"]
    coloured = io.StringIO()
    run_tail("unused", out=coloured, color=True, records=iter(records[:1]))
    assert "\x1b[" in coloured.getvalue()


class _FakeConsumer:
    """Serves fixed batches and reports an end offset that lags the last batch."""

    def __init__(self, batches: list[list[int]], reported_end: int) -> None:
        from kafka import TopicPartition

        self.tp = TopicPartition("churn.warnings", 0)
        self.batches = batches
        self.reported_end = reported_end
        self.offset = 0
        self.closed = False

    def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return {self.tp: self.reported_end}

    def assignment(self) -> set[Any]:
        return {self.tp}

    def position(self, tp: Any) -> int:
        return self.offset

    def poll(self, timeout_ms: int) -> dict[Any, list[Any]]:
        from types import SimpleNamespace

        if not self.batches:
            return {}
        batch = self.batches.pop(0)
        self.offset = batch[-1] + 1
        value = orjson.dumps({"warning_id": "w", "user_id": "u", "level": 1})
        return {
            self.tp: [
                SimpleNamespace(offset=o, key=b"u", value=value, headers=[], timestamp=0)
                for o in batch
            ]
        }


def test_stop_at_end_reads_past_a_lagging_end_offset() -> None:
    from stream_app.tools.tail import _poll

    consumer = _FakeConsumer([[0, 1], [2, 3, 4]], reported_end=2)
    offsets = [r.offset for r in _poll(consumer, None, None, True, 1)]
    assert offsets == [0, 1, 2, 3, 4]
    consumer = _FakeConsumer([[0, 1], [2, 3, 4]], reported_end=2)
    assert [r.offset for r in _poll(consumer, None, 3, False, 1)] == [0, 1, 2]
