"""The engine's results on a fixed CDNOW replay must not change when the core gets faster.

The first 20,000 CDNOW purchases are split over four partitions and replayed in batches of
1,000 through :class:`PartitionEngine`, with every touched user decoded from and encoded to
an in-memory store between batches, as the worker does with Redis. Per partition we hash the
published payloads, every encoded user record written, the deadlines set and the scores,
and compare with the committed hashes. The partition snapshot is left out on purpose: how
it persists label snapshots is allowed to change independently of the per-event results.

Regenerate the golden file (only after a deliberate change of results) with
``python tests/unit/test_engine_golden.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from stream_app import userrecord
from stream_app.core import build_core
from stream_app.engine import PartitionEngine
from stream_app.processor import partition_of
from stream_app.records import AppEvent, decode_event
from stream_app.settings import load_settings
from stream_app.tools.replay import encode
from stream_app.tools.sources import load_events

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "CDNOW_master.txt"
GOLDEN = Path(__file__).resolve().parent / "data" / "engine_golden.json"
EVENTS = 20_000
PARTITIONS = 4
BATCH = 1_000
UNTIL = 875_664_000.0  # 1997-10-01, the CDNOW cutoff


class _Digest:
    """Running sha256 over JSON lines (sorted keys, exact float repr)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.n = 0

    def add(self, item: Any) -> None:
        self._h.update(json.dumps(item, sort_keys=True).encode() + b"\n")
        self.n += 1

    def add_bytes(self, key: str, data: bytes) -> None:
        self._h.update(key.encode() + b"\x00" + data + b"\n")
        self.n += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _events() -> dict[int, list[AppEvent]]:
    loaded = load_events(DATA, until=UNTIL).events[:EVENTS]
    parts: dict[int, list[AppEvent]] = {}
    for raw in loaded:
        ev = decode_event(encode(raw)[1], [])
        parts.setdefault(partition_of(ev.user_id, PARTITIONS), []).append(ev)
    return parts


def _replay(events: list[AppEvent]) -> dict[str, Any]:
    core = build_core(load_settings(profile="purchases", churn_horizon_days=90, clock="event"))
    engine = PartitionEngine(core)
    store: dict[str, bytes] = {}
    outputs, records, dues, scores = _Digest(), _Digest(), _Digest(), _Digest()
    for start in range(0, len(events), BATCH):
        batch = events[start : start + BATCH]
        needed = sorted(engine.users_needed(batch))
        loaded = {u: userrecord.decode(store[u], core.windows) for u in needed if u in store}
        recs: dict[str, userrecord.UserRecord | None] = dict(loaded)
        result = engine.process(batch, recs)
        for out in result.outputs:
            outputs.add([out.role, out.user_id, out.payload])
        for user, record in sorted(result.users.items()):
            if record is None:
                store.pop(user, None)
                records.add_bytes(user, b"")
            else:
                store[user] = userrecord.encode(record)
                records.add_bytes(user, store[user])
        dues.add(sorted(result.due.items()))
        scores.add(result.scores)
    return {
        "events": len(events),
        "outputs": [outputs.n, outputs.hexdigest()],
        "records": [records.n, records.hexdigest()],
        "due": dues.hexdigest(),
        "scores": scores.hexdigest(),
        "store": _store_hash(store.items()),
    }


def _store_hash(items: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for user, blob in sorted(items):
        h.update(user.encode() + b"\x00" + blob + b"\n")
    return h.hexdigest()


def compute() -> dict[str, Any]:
    """Hashes of the replay's results, per partition."""
    return {str(p): _replay(evs) for p, evs in sorted(_events().items())}


@pytest.mark.skipif(not DATA.exists(), reason="CDNOW data not available")
def test_engine_matches_golden() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert compute() == golden


if __name__ == "__main__":
    result = compute()
    if "--write" in sys.argv:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1, sort_keys=True))
