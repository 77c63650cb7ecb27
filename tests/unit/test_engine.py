"""The per-partition engine: batches are only I/O grouping; populations match the records."""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app import userrecord
from stream_app.core import Core, build_core
from stream_app.engine import BatchResult, Output, PartitionEngine
from stream_app.records import AppEvent, decode_event
from stream_app.settings import load_settings
from stream_app.tools.replay import encode
from stream_app.tools.sources import load_events


@cache
def core() -> Core:
    return build_core(load_settings(profile="purchases", churn_horizon_days=30, clock="event"))


@cache
def events() -> list[AppEvent]:
    loaded = load_events("data/CDNOW_master.txt", limit=1500).events
    return [decode_event(encode(e)[1], []) for e in loaded]


def run(batch: int) -> tuple[list[Output], dict[str, bytes], bytes, PartitionEngine]:
    engine = PartitionEngine(core())
    store: dict[str, bytes] = {}
    outputs: list[Output] = []
    evs = events()
    for i in range(0, len(evs), batch):
        chunk = evs[i : i + batch]
        needed = engine.users_needed(chunk)
        records = {u: userrecord.decode(store[u], core().windows) for u in needed if u in store}
        result = engine.process(chunk, dict(records))
        outputs += result.outputs
        for user, record in result.users.items():
            if record is None:
                store.pop(user, None)
            else:
                store[user] = userrecord.encode(record)
    return outputs, store, engine.snapshot(), engine


@pytest.mark.parametrize("batch", [1, 37])
def test_output_does_not_depend_on_batching(batch: int) -> None:
    reference = run(1000)
    outputs, store, snapshot, _ = run(batch)
    assert outputs == reference[0]
    assert store == reference[1]
    assert snapshot == reference[2]


def test_populations_match_a_recount_of_the_records() -> None:
    _, store, _, engine = run(250)
    counted: Counter[str] = Counter()
    for blob in store.values():
        tiers = userrecord.decode(blob, core().windows).tiers
        if tiers.lifecycle:
            counted[f"lifecycle:{tiers.lifecycle}"] += 1
        if tiers.value_segment:
            counted[f"value:{tiers.value_segment}"] += 1
    assert engine.populations() == dict(counted)
    assert sum(v for k, v in counted.items() if k.startswith("lifecycle:")) == len(store)


@given(
    st.lists(
        st.tuples(st.sampled_from([f"u{i}" for i in range(30)]), st.integers(0, 50)),
        max_size=200,
    ),
    st.integers(-1, 51),
)
@settings(max_examples=200, deadline=None)
def test_due_users_walk_equals_a_full_scan(updates: list[tuple[str, int]], horizon: int) -> None:
    """Rescheduled users leave stale heap entries; only current deadlines count."""
    engine = PartitionEngine(core())
    result = BatchResult()
    for user, t in updates:
        engine._set_due(user, float(t) if t % 7 else None, result)  # some deadlines cleared
    scan = {u for t, u in engine._heap if t <= horizon and engine._due.get(u) == t}
    assert set(engine._due_by(float(horizon))) == scan
    assert engine.users_needed((), float(horizon)) == scan
