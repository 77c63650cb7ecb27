"""What operators see when they look at one user: plain data, no secrets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from stream_app.alerts import LEVEL_NAMES
from stream_app.engine import PartitionEngine
from stream_app.userrecord import UserRecord


def _iso(t: float | None) -> str | None:
    if t is None or t != t or t in (float("inf"), float("-inf")):
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def describe(user_id: str, record: UserRecord, engine: PartitionEngine) -> dict[str, Any]:
    """A user's windows, features, score with reasons, tiers and warning state, as JSON data.

    The clock is the partition's watermark (event time), or the user's last event when the
    partition has not been processed here yet.
    """
    win = record.windows
    now = engine.watermark if engine.watermark > float("-inf") else win.last_seen
    x, score = engine.score_user(record, now)
    horizons = engine.core.windows.horizons_days
    return {
        "user_id": user_id,
        "as_of": _iso(now),
        "first_seen": _iso(win.first_seen),
        "last_seen": _iso(win.last_seen),
        "tenure_days": round(win.tenure_days(now), 3),
        "windows": {
            dim: {f"{h}d": win.total(dim, h, now) for h in horizons} for dim in win.dimensions()
        },
        "last_seen_by_dimension": {dim: _iso(win.last_seen_in(dim)) for dim in win.dimensions()},
        "features": x,
        "score": {
            "churn_probability": score.probability,
            "percentile": score.percentile,
            "source": score.source,
            "model_version": score.version,
            "reasons": [{"feature": f, "value": v, "contribution": c} for f, v, c in score.reasons],
        },
        "tiers": {
            "lifecycle": record.tiers.lifecycle,
            "value_segment": record.tiers.value_segment,
            "rfm": list(record.tiers.rfm) if record.tiers.rfm else None,
        },
        "warning_state": {
            "level": record.alert.level,
            "level_name": LEVEL_NAMES.get(record.alert.level, "none"),
            "episode": record.alert.episode,
            "open": record.alert.open,
            "episode_started_at": _iso(record.alert.started_at) if record.alert.open else None,
        },
        "recent_warnings": [
            {
                "level": h.level,
                "kind": "recovered" if h.level == 0 else "warning",
                "event_time": _iso(h.at),
            }
            for h in record.history
        ],
    }
