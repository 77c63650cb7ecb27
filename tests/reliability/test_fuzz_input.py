"""Hostile input, in process: more than 10,000 generated messages through the decoder and the
engine, exactly as the worker handles them.

Why: the input topic is written by producers the service does not control. Whatever
arrives, each message must end in one of the documented outcomes and nothing else:

* rejected by :func:`stream_app.records.decode_event` with an :class:`InvalidEvent` whose
  reason is in :data:`stream_app.records.REASONS` (the worker dead-letters it, so the
  dead-letter record is built too);
* or decoded, then applied, dropped as a duplicate (its id is remembered) or reported late
  (dead-lettered as ``late_event``) by the engine, and the resulting state encoded for
  the Redis commit.

Any other exception would stall a partition (the worker narrows it to one event and
dead-letters it as ``processing_error``, but that is a bug path, not a rule), so here it
fails the test. Memory must stay bounded: one long-lived engine takes every valid event
and its traced allocations may grow by only a few MB once warmed up, however large or
numerous the properties, ids and kinds thrown at it.

The messages mix valid events with: invalid JSON and UTF-8, non-objects, wrong types,
missing and extra fields, oversized values, huge property maps, absurd timestamps
(year 1, 1969, 9999, leap seconds, bad offsets), unknown and malformed kinds, duplicate
ids, and CloudEvents binary and structured envelopes whose headers lie (wrong spec
version or type, ids, subjects and times that contradict the data, non-UTF-8 headers,
repeated headers, non-JSON content types, bad base64).
"""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app import userrecord
from stream_app.core import build_core
from stream_app.engine import PartitionEngine
from stream_app.records import REASONS, AppEvent, InvalidEvent, decode_event, dlq_record
from stream_app.settings import Settings
from stream_app.userrecord import UserRecord

NOW = 1_735_689_600.0  # 2025-01-01T00:00:00Z: the decoder's clock for "too far ahead"
EXAMPLES = 180
PER_EXAMPLE = (55, 75)
KINDS = ["login", "session_start", "session_end", "message_sent", "like", "purchase", "follow"]
HOSTILE_KINDS = ["x.unknown", "LOGIN", "", "a" * 65, "log in", "ü", "drop;table", "-"]
USERS = [f"u{i:03d}" for i in range(40)]
CE_TYPE = "dev.churnwarnings.app_event.v1"

Message = tuple[bytes | None, list[tuple[str, bytes]]]


def dumps(value: Any) -> bytes:
    """JSON bytes of anything generated here (stdlib: integers beyond 64 bits included)."""
    return json.dumps(value).encode()


def rfc3339(epoch: int, offset: str = "Z") -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S") + offset


good_times = st.integers(int(NOW) - 40 * 86400, int(NOW) + 3600).map(rfc3339)
absurd_times = st.sampled_from(
    [
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2024-12-31T23:59:60Z",
        "2024-02-30T10:00:00Z",
        "2024-12-01T10:00:00+24:00",
        "2024-12-01T10:00:00",
        "2024-12-01 10:00:00Z",
        "2024-12-01t10:00:00z",
        "2024-12-01T10:00:00.123456789123+05:45",
        "yesterday",
        "",
        "1e10",
    ]
)
times = st.one_of(good_times, good_times, good_times, absurd_times)
event_ids = st.one_of(
    st.integers(0, 300).map(lambda i: f"e{i}"),  # a small pool: plenty of duplicates
    st.text(min_size=0, max_size=140),
)
user_ids = st.one_of(st.sampled_from(USERS), st.sampled_from(USERS), st.text(max_size=140))
kinds = st.one_of(st.sampled_from(KINDS), st.sampled_from(KINDS), st.sampled_from(HOSTILE_KINDS))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
properties = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "duration_s": st.one_of(st.floats(0, 1e9), st.floats(-1e9, 1e300), st.text(max_size=5)),
            "amount": st.one_of(st.floats(-1e12, 1e12), st.integers(-(2**64), 2**64)),
            "counterpart": st.one_of(st.sampled_from(USERS), st.text(max_size=130)),
            "room": st.text(max_size=130),
            "quantity": st.one_of(st.integers(-5, 2**40), st.floats(0, 10)),
            "currency": st.text(max_size=20),
        },
    ),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    st.integers(33, 400).map(lambda n: {f"k{i}": i for i in range(n)}),  # huge maps
)
contexts = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "timezone": st.sampled_from(
                ["Asia/Shanghai", "UTC", "+05:30", "-23:59", "Mars/Olympus", "localtime", "", 7]
            ),
            "platform": st.one_of(st.text(max_size=70), st.integers()),
        },
    ),
    st.integers(33, 100).map(lambda n: {f"c{i}": "x" for i in range(n)}),
)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """An app event, often valid, often broken in one or several ways."""
    doc: dict[str, Any] = {
        "event_id": draw(event_ids),
        "user_id": draw(user_ids),
        "event": draw(kinds),
        "occurred_at": draw(times),
    }
    if draw(st.booleans()):
        doc["properties"] = draw(properties)
    if draw(st.booleans()):
        doc["context"] = draw(contexts)
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        mutation = draw(st.sampled_from(["drop", "extra", "retype", "schema_version"]))
        key = draw(st.sampled_from(sorted(doc)))
        if mutation == "drop":
            doc.pop(key, None)
        elif mutation == "extra":
            doc[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        elif mutation == "retype":
            doc[key] = draw(json_values)
        else:
            doc["schema_version"] = draw(st.sampled_from([1, 2, "1", None]))
    return doc


def raw_bytes(draw: st.DrawFn) -> bytes | None:
    """Values that are not an app event at all."""
    return draw(
        st.one_of(
            st.none(),
            st.just(b""),
            st.binary(max_size=64),
            st.binary(min_size=1, max_size=32).map(lambda b: b'{"event_id": "' + b + b'"}'),
            st.sampled_from([b"\xff\xfe{}", b'{"a": "\xc3\x28"}', b"\xed\xa0\x80"]),
            json_values.map(lambda v: dumps(v)),
            st.integers(65_537, 150_000).map(lambda n: b'{"pad": "' + b"x" * n + b'"}'),
            st.sampled_from([b"[]", b"null", b"42", b'"str"', b"{", b'{"a":1}}', b"NaN"]),
            st.just(b"[" * 5000 + b"]" * 5000),
        )
    )


def plain(draw: st.DrawFn) -> Message:
    doc = draw(documents())
    value = dumps(doc)
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, max(0, len(value) - 1)))
        value = value[:cut] + draw(st.sampled_from([b"", b"\xff", b"\x00", b"}"])) + value[cut:]
    return value, []


def ce_binary(draw: st.DrawFn) -> Message:
    doc = draw(documents())
    honest = {
        "ce_specversion": "1.0",
        "ce_id": str(doc.get("event_id", "x")),
        "ce_source": "/fuzz",
        "ce_type": CE_TYPE,
        "ce_time": str(doc.get("occurred_at", "")),
        "ce_subject": str(doc.get("user_id", "")),
    }
    headers = [(k, v.encode()) for k, v in honest.items() if draw(st.integers(0, 5)) > 0]
    lies = draw(st.lists(st.sampled_from(range(8)), max_size=2))
    for lie in lies:
        if lie == 0:
            headers.append(("ce_specversion", b"0.3"))
        elif lie == 1:
            headers.append(("ce_type", b"com.example.other"))
        elif lie == 2:
            headers.append(("ce_id", b"someone-else"))
        elif lie == 3:
            headers.append(("ce_subject", b"u999"))
        elif lie == 4:
            headers.append(("ce_time", rfc3339(int(NOW) - 999).encode()))
        elif lie == 5:
            headers.append(("ce_time", b"\xff\xfe"))
        elif lie == 6:
            headers.append(("content-type", draw(st.sampled_from(CONTENT_TYPES))))
        else:
            headers.append((draw(st.text(max_size=10)), draw(st.binary(max_size=10))))
    if draw(st.booleans()):
        for field in ("event_id", "user_id", "occurred_at"):
            if draw(st.booleans()):
                doc.pop(field, None)  # the CloudEvent attributes stand in for them
    return dumps(doc), headers


CONTENT_TYPES = [
    b"application/json",
    b"application/xml",
    b"text/plain",
    b"application/json; charset=latin-1",
    b"application/vnd.x+json; charset=utf-8",
    b"\xff",
]


def ce_structured(draw: st.DrawFn) -> Message:
    doc = draw(documents())
    envelope: dict[str, Any] = {
        "specversion": draw(st.sampled_from(["1.0", "1.0", "0.3", 1])),
        "id": draw(st.one_of(st.just(str(doc.get("event_id", "x"))), st.text(max_size=5))),
        "source": "/fuzz",
        "type": draw(st.sampled_from([CE_TYPE, CE_TYPE, "other", None])),
    }
    if draw(st.booleans()):
        envelope["time"] = draw(times)
    body = draw(st.sampled_from(["data", "data", "base64", "bad64", "none", "nonobject"]))
    if body == "data":
        envelope["data"] = doc
    elif body == "base64":
        envelope["data_base64"] = base64.b64encode(dumps(doc)).decode()
    elif body == "bad64":
        envelope["data_base64"] = "%%%not base64"
    elif body == "nonobject":
        envelope["data"] = draw(json_values)
    content_type = draw(
        st.sampled_from(
            [b"application/cloudevents+json", b"application/cloudevents-batch+json", b"x"]
        )
    )
    return dumps(envelope), [("content-type", content_type)]


@st.composite
def messages(draw: st.DrawFn) -> Message:
    shape = draw(st.integers(0, 9))
    if shape <= 4:
        return plain(draw)
    if shape <= 6:
        return ce_binary(draw)
    if shape <= 8:
        return ce_structured(draw)
    return raw_bytes(draw), draw(st.sampled_from([[], [("ce_id", b"only-this")]]))


def handle(
    batch: list[Message], engine: PartitionEngine, records: dict[str, UserRecord | None]
) -> tuple[Counter[str], list[AppEvent]]:
    """What the worker does with one batch, minus Kafka and Redis; outcomes counted."""
    outcomes: Counter[str] = Counter()
    events: list[AppEvent] = []
    for offset, (value, headers) in enumerate(batch):
        try:
            events.append(decode_event(value, headers, now=NOW))
        except InvalidEvent as err:
            assert err.reason in REASONS, err.reason
            dlq_record(value, headers, b"k", err, source_topic="t", partition=0, offset=offset)
            outcomes[err.reason] += 1
    result = engine.process(events, records)
    assert result.applied + result.duplicates + len(result.late) == len(events)
    outcomes.update(applied=result.applied, duplicate=result.duplicates, late=len(result.late))
    for record in result.users.values():
        if record is not None:
            userrecord.encode(record)
    engine.snapshot()
    engine.label_changes()
    return outcomes, events


def test_ten_thousand_hostile_messages_end_in_documented_outcomes() -> None:
    core = build_core(Settings(clock="event", holdout_share=0.1))
    totals: Counter[str] = Counter()
    corpus: list[list[AppEvent]] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(messages(), min_size=PER_EXAMPLE[0], max_size=PER_EXAMPLE[1]))
    def one_batch(batch: list[Message]) -> None:
        outcomes, events = handle(batch, PartitionEngine(core), {})
        assert sum(outcomes.values()) == len(batch)
        totals.update(outcomes)
        totals["messages"] += len(batch)
        corpus.append(events)

    one_batch()
    seen = totals.pop("messages")
    assert seen >= 10_000, seen
    rejected = {r: n for r, n in totals.items() if r in REASONS}
    assert sum(totals.values()) == seen
    # every rejection reason the decoder can give was exercised, and plenty got through
    assert set(rejected) >= REASONS - {"late_event", "processing_error"}, sorted(rejected)
    assert totals["applied"] > 1000 and totals["duplicate"] > 0 and totals["late"] > 0

    # Bounded memory: one engine takes every valid event of every batch in turn, as a
    # long-running worker would; once warmed up, what it holds hardly grows.
    engine = PartitionEngine(core)
    records: dict[str, UserRecord | None] = {}
    tracemalloc.start()
    try:
        memory = []
        for i, events in enumerate(corpus):
            result = engine.process(events, records)
            assert result.applied + result.duplicates + len(result.late) == len(events)
            engine.snapshot()
            engine.label_changes()
            if i % 20 == 0:
                memory.append(tracemalloc.get_traced_memory()[0])
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    warm = memory[len(memory) // 4]
    growth = max([*memory[len(memory) // 4 :], end]) - warm
    assert growth < 4 * 2**20, f"memory grew {growth / 2**20:.1f} MB; peak {peak / 2**20:.1f} MB"
    print(dict(totals), f"growth {growth / 2**10:.0f} KB, peak {peak / 2**20:.1f} MB")
