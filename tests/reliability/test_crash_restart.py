"""Fault injection: a worker SIGKILLed at random moments ends where an uninterrupted run ends.

Why: the service promises at-least-once processing with idempotent effects (publish, then
commit state fenced by the offset, then acknowledge). A crash may come anywhere: while a
batch is half published, between the publish and the Redis commit, between the commit and
the Kafka acknowledgement, while the worker boots, joins the group or loads a partition.
Whatever the moment, after restarts the Redis state must be identical to an uninterrupted
run's, key by key and byte by byte; the warning and tier topics must carry the same set of
ids (a record re-published after a crash must repeat the same id with the same bytes); and
every input offset must be accounted for, processed or dead-lettered.

The input is the simulator's social-app stream (``CHURN_TEST_CRASH_USERS`` users over 56
days, about 510 events per user; default 200 users, about 100,000 events) on two
partitions. ``CHURN_TEST_CRASH_KILLS`` (default 10) kills land at seeded random moments
(``CHURN_TEST_CRASH_SEED``): most once the worker has committed a random share of the
input, plus a random sub-second delay so they fall anywhere inside a batch; about a
quarter a random few seconds after the process starts, before it is ready.

The uninterrupted run is :class:`reliability_support.Reference`: the worker's own processor
over the same records, without Kafka in between (see its module). It runs in a thread
while the killed worker works.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    Reference,
    committed,
    dlq_entries,
    dump_state,
    processed,
    published,
    settings_of,
    state_diff,
    topic_records,
    wait_processed,
)

from stream_app.tools.replay import run_replay
from stream_app.tools.simulate import run_simulate

USERS = int(os.environ.get("CHURN_TEST_CRASH_USERS", "200"))
KILLS = int(os.environ.get("CHURN_TEST_CRASH_KILLS", "10"))
SEED = int(os.environ.get("CHURN_TEST_CRASH_SEED", "20240601"))
WORKER = {"partitions": 2}


@pytest.mark.slow
def test_random_sigkills_leave_the_same_state_as_an_uninterrupted_run(
    running_worker: Callable[..., Any], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    began = time.monotonic()
    events = tmp_path / "events.jsonl"
    run_simulate(events, tmp_path / "truth.csv", users=USERS, days=56, seed=SEED)

    worker = running_worker(**WORKER)
    env = worker.settings_env
    s = settings_of(env)
    sent = run_replay(events, s.topic_events, s.kafka_bootstrap, out=io.StringIO()).sent
    inputs = topic_records(s, s.topic_events, expected=sent)
    assert len(inputs) == sent > KILLS * 1000

    ref_prefix = env["CHURN_KEY_PREFIX"].rstrip(":") + "R:"
    reference = Reference(settings_of(env, key_prefix=ref_prefix))
    pool = ThreadPoolExecutor(1)
    ref_done = pool.submit(reference.run, inputs)

    moments = sorted(rng.uniform(0.02, 0.92) * sent for _ in range(KILLS))
    kills: list[str] = []
    for target in moments:
        if kills and rng.random() < 0.25:
            time.sleep(rng.uniform(0.3, 5.0))
            kills.append(f"{time.monotonic() - began:.0f}s: at start-up")
        else:
            wait_processed(s, int(target), timeout=600, worker=worker)
            time.sleep(rng.uniform(0.0, 1.0))
            kills.append(f"{time.monotonic() - began:.0f}s: after {processed(s)}/{sent}")
        assert worker.proc.poll() is None, worker.log()[-4000:]
        worker.stop(signal.SIGKILL)
        worker = running_worker(wait=False, **WORKER)
    assert not kills or processed(s) < sent, (
        "the kills came too late: the input was already processed"
    )

    wait_processed(s, sent, timeout=900, worker=worker)
    ref_done.result(timeout=900)
    pool.shutdown()
    print(f"{sent} events, kills: {kills}", file=sys.stderr)

    # every offset accounted for: all committed, dead letters the same as uninterrupted
    last = {p: max(r.offset for r in inputs if r.partition == p) for p in range(s.partitions)}
    assert committed(s) == last
    assert dlq_entries(topic_records(s, s.topic_dlq)) == reference.dlq()

    # identical Redis state, key by key
    state = dump_state(s.redis_url, s.key_prefix)
    expected = dump_state(s.redis_url, ref_prefix)
    assert len(expected) > USERS
    assert sorted(state) == sorted(expected), "keys differ from the uninterrupted run"
    differences = state_diff(state, expected)
    if differences:
        (tmp_path / "states.pickle").write_bytes(pickle.dumps((state, expected)))
    assert differences == [], f"dumps saved in {tmp_path}"

    # the same records: any duplicate on a topic repeats its id with the same bytes
    outputs = topic_records(s, s.topic_warnings) + topic_records(s, s.topic_tiers)
    pairs, expected_pairs = published(outputs), reference.published()
    assert expected_pairs, "the run produced warnings or tier changes"
    assert {i for i, _ in pairs} == {i for i, _ in expected_pairs}
    assert pairs == expected_pairs
    assert len(kills) >= KILLS
