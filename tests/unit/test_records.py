"""Decoding app events from every accepted shape, and encoding what the worker publishes."""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.records import (
    OUTPUT_TYPES,
    REASONS,
    AppEvent,
    InvalidEvent,
    OutRecord,
    decode_event,
    dlq_record,
    encode_cloudevent,
    load_schema,
    parse_rfc3339,
    validator,
)

NOW = 1_715_040_000.0
APP_TYPE = "dev.churnwarnings.app_event.v1"
EVENT: dict[str, Any] = {
    "event_id": "evt-1",
    "user_id": "u-1029",
    "event": "session_end",
    "occurred_at": "2024-05-06T21:15:02.250+08:00",
    "properties": {"duration_s": 312.5, "room": "lobby"},
    "context": {"platform": "ios", "timezone": "Asia/Shanghai"},
}
EXPECTED = AppEvent(
    event_id="evt-1",
    user_id="u-1029",
    event="session_end",
    occurred_at=1_715_001_302.25,
    properties={"duration_s": 312.5, "room": "lobby"},
    context={"platform": "ios", "timezone": "Asia/Shanghai"},
    utc_offset_s=28_800,
)
CE_HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"evt-1"),
    ("ce_source", b"/apps/chat/ios"),
    ("ce_type", APP_TYPE.encode()),
    ("ce_time", b"2024-05-06T13:15:02.250Z"),
    ("ce_subject", b"u-1029"),
    ("content-type", b"application/json"),
]
STRUCTURED = [("content-type", b"application/cloudevents+json")]


def plain(**changes: Any) -> bytes:
    return orjson.dumps({**EVENT, **changes})


def data_only(**changes: Any) -> bytes:
    data = {k: v for k, v in EVENT.items() if k not in ("event_id", "user_id", "occurred_at")}
    return orjson.dumps({**data, **changes})


def headers(**changes: bytes | None) -> list[tuple[str, bytes]]:
    out = [(k, changes.pop(k.removeprefix("ce_"), v)) for k, v in CE_HEADERS]
    out += [(f"ce_{k}", v) for k, v in changes.items()]
    return [(k, v) for k, v in out if v is not None]


def envelope(**changes: Any) -> bytes:
    env = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/apps/chat/ios",
        "type": APP_TYPE,
        "time": "2024-05-06T13:15:02.250Z",
        "subject": "u-1029",
        "datacontenttype": "application/json",
        "data": orjson.loads(data_only()),
    }
    env.update(changes)
    return json.dumps({k: v for k, v in env.items() if v is not None}).encode()


def reason_of(value: bytes | None, hdrs: Any = None, **kwargs: Any) -> str:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, hdrs, now=NOW, **kwargs)
    assert caught.value.reason in REASONS
    return caught.value.reason


# --- the three shapes ----------------------------------------------------------------------


def test_plain_json_decodes() -> None:
    assert decode_event(plain(), None, now=NOW) == EXPECTED


def test_cloudevent_binary_decodes_to_same_event() -> None:
    assert decode_event(data_only(), CE_HEADERS, now=NOW) == EXPECTED


def test_cloudevent_structured_decodes_to_same_event() -> None:
    assert decode_event(envelope(), STRUCTURED, now=NOW) == EXPECTED


def test_structured_data_base64_decodes_to_same_event() -> None:
    raw = base64.b64encode(data_only()).decode()
    value = envelope(data=None, data_base64=raw)
    assert decode_event(value, STRUCTURED, now=NOW) == EXPECTED


def test_messages_from_the_cloudevents_sdk_decode() -> None:
    attrs = {
        "id": "evt-1",
        "source": "/apps/chat/ios",
        "type": APP_TYPE,
        "subject": "u-1029",
        "time": datetime(2024, 5, 6, 13, 15, 2, 250_000, tzinfo=UTC),
        "datacontenttype": "application/json",
    }
    event = CloudEvent(attrs, orjson.loads(data_only()))
    for message in (kafka.to_binary(event, JSONFormat()), kafka.to_structured(event, JSONFormat())):
        got = decode_event(message.value, list(message.headers.items()), now=NOW)
        assert got == EXPECTED


def test_data_fields_may_repeat_consistent_envelope_attributes() -> None:
    assert decode_event(plain(), CE_HEADERS, now=NOW) == EXPECTED
    payload = orjson.loads(envelope())
    payload["data"] = EVENT
    assert decode_event(orjson.dumps(payload), STRUCTURED, now=NOW) == EXPECTED


def test_ce_time_within_a_millisecond_of_occurred_at_is_consistent() -> None:
    hdrs = headers(time=b"2024-05-06T13:15:02.2505Z")
    assert decode_event(plain(), hdrs, now=NOW).occurred_at == EXPECTED.occurred_at


def test_headers_may_be_a_mapping_and_unrelated_headers_are_ignored() -> None:
    assert (
        decode_event(
            plain(), {"traceparent": b"00-ab", "Content-Type": b"application/json"}, now=NOW
        )
        == EXPECTED
    )
    assert decode_event(data_only(), dict(CE_HEADERS), now=NOW) == EXPECTED


def test_header_names_are_case_insensitive() -> None:
    upper = [(k.upper(), v) for k, v in CE_HEADERS]
    assert decode_event(data_only(), upper, now=NOW) == EXPECTED


# --- what the decoder derives --------------------------------------------------------------


def test_properties_and_context_are_read_only() -> None:
    got = decode_event(plain(), None, now=NOW)
    with pytest.raises(TypeError):
        got.properties["room"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        got.context["timezone"] = "UTC"  # type: ignore[index]


def test_missing_properties_and_context_are_empty() -> None:
    bare = {k: v for k, v in EVENT.items() if k not in ("properties", "context")}
    got = decode_event(orjson.dumps(bare), None, now=NOW)
    assert dict(got.properties) == {} and dict(got.context) == {}
    assert got.utc_offset_s is None


@pytest.mark.parametrize(
    ("zone", "occurred_at", "offset"),
    [
        ("Asia/Shanghai", "2024-05-06T13:15:02Z", 28_800),
        ("America/New_York", "2024-01-15T12:00:00Z", -18_000),
        ("America/New_York", "2024-07-15T12:00:00Z", -14_400),
        ("America/New_York", "2024-03-10T06:59:59Z", -18_000),
        ("America/New_York", "2024-03-10T07:00:00Z", -14_400),
        ("Asia/Kathmandu", "2024-05-06T00:00:00Z", 20_700),
        ("+05:30", "2024-05-06T00:00:00Z", 19_800),
        ("-03:00", "2024-05-06T00:00:00Z", -10_800),
        ("UTC", "2024-05-06T00:00:00Z", 0),
    ],
)
def test_utc_offset_follows_the_zone_at_the_event_instant(
    zone: str, occurred_at: str, offset: int
) -> None:
    value = plain(occurred_at=occurred_at, context={"timezone": zone})
    assert decode_event(value, None, now=2e9).utc_offset_s == offset


def test_rfc3339_parsing_is_strict_about_offsets() -> None:
    assert parse_rfc3339("2016-12-31T23:59:60Z") == parse_rfc3339("2017-01-01T00:00:00Z")
    for bad in (
        "2024-05-06T13:15:02",
        "2024-05-06 13:15:02Z",
        "2024-05-06",
        "2024-02-30T00:00:00Z",
        "２024-05-06T13:15:02Z",
    ):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


def test_now_decides_what_is_in_the_future() -> None:
    value = plain(occurred_at="2024-05-08T00:00:00Z")
    assert decode_event(value, None, now=NOW).occurred_at == 1_715_126_400.0
    with pytest.raises(InvalidEvent, match="over a day ahead"):
        decode_event(value, None, now=1_715_000_000.0)


# --- every reason code ---------------------------------------------------------------------

BAD_INPUTS: list[tuple[str, bytes | None, Any, str]] = [
    ("oversized", b"{" + b" " * 70_000 + b"}", None, "too_large"),
    ("invalid utf-8", b'{"event_id": "\xff"}', None, "bad_utf8"),
    ("truncated json", b'{"event_id": ', None, "bad_json"),
    ("tombstone", None, None, "bad_json"),
    ("empty", b"", None, "bad_json"),
    ("array", b"[1, 2]", None, "not_an_object"),
    ("string", b'"login"', None, "not_an_object"),
    ("structured data not an object", envelope(data=[1]), STRUCTURED, "not_an_object"),
    (
        "missing user",
        orjson.dumps({k: v for k, v in EVENT.items() if k != "user_id"}),
        None,
        "schema",
    ),
    ("null user", plain(user_id=None), None, "schema"),
    ("unknown top-level field", plain(extra=1), None, "schema"),
    ("uppercase kind", plain(event="Login"), None, "schema"),
    ("kind with newline", plain(event="login\n"), None, "schema"),
    ("negative duration", plain(properties={"duration_s": -1}), None, "schema"),
    ("boolean quantity", plain(properties={"quantity": True}), None, "schema"),
    ("too many properties", plain(properties={f"p{i}": i for i in range(33)}), None, "schema"),
    ("bad timezone syntax", plain(context={"timezone": "../etc/passwd"}), None, "schema"),
    ("schema_version 2", plain(schema_version=2), None, "schema"),
    ("no offset", plain(occurred_at="2024-05-06T13:15:02"), None, "bad_timestamp"),
    ("space separator", plain(occurred_at="2024-05-06 13:15:02Z"), None, "bad_timestamp"),
    ("impossible date", plain(occurred_at="2024-02-30T13:15:02Z"), None, "bad_timestamp"),
    ("before 1970", plain(occurred_at="1969-12-31T23:59:59Z"), None, "bad_timestamp"),
    ("far future", plain(occurred_at="2030-01-01T00:00:00Z"), None, "bad_timestamp"),
    ("unknown zone", plain(context={"timezone": "Mars/Olympus_Mons"}), None, "bad_timezone"),
    ("machine-local zone", plain(context={"timezone": "localtime"}), None, "bad_timezone"),
    ("zone directory", plain(context={"timezone": "Asia"}), None, "bad_timezone"),
    ("specversion 0.3", data_only(), headers(specversion=b"0.3"), "bad_cloudevent"),
    ("no specversion", data_only(), headers(specversion=None), "bad_cloudevent"),
    ("no source", data_only(), headers(source=None), "bad_cloudevent"),
    ("empty id", data_only(), headers(id=b""), "bad_cloudevent"),
    ("foreign type", data_only(), headers(type=b"com.example.order"), "bad_cloudevent"),
    ("non-json content", data_only(), headers(**{"content-type": b"text/plain"}), "bad_cloudevent"),
    (
        "latin-1 charset",
        data_only(),
        headers(**{"content-type": b"application/json; charset=iso-8859-1"}),
        "bad_cloudevent",
    ),
    ("ce_id contradicts", plain(), headers(id=b"evt-2"), "bad_cloudevent"),
    ("ce_subject contradicts", plain(), headers(subject=b"u-2"), "bad_cloudevent"),
    ("ce_time contradicts", plain(), headers(time=b"2024-05-06T13:15:03Z"), "bad_cloudevent"),
    ("ce_time unparseable", data_only(), headers(time=b"yesterday"), "bad_cloudevent"),
    ("header not utf-8", data_only(), headers(source=b"\xff"), "bad_cloudevent"),
    ("header repeated", data_only(), [*CE_HEADERS, ("ce_id", b"evt-9")], "bad_cloudevent"),
    (
        "batch mode",
        envelope(),
        [("content-type", b"application/cloudevents-batch+json")],
        "bad_cloudevent",
    ),
    ("structured id not string", envelope(id=7), STRUCTURED, "bad_cloudevent"),
    ("structured no data", envelope(data=None), STRUCTURED, "bad_cloudevent"),
    ("structured bad base64", envelope(data=None, data_base64="%%"), STRUCTURED, "bad_cloudevent"),
    ("structured wrong type", envelope(type="x"), STRUCTURED, "bad_cloudevent"),
]


@pytest.mark.parametrize(
    ("value", "hdrs", "reason"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_each_bad_input_gets_its_reason(value: bytes | None, hdrs: Any, reason: str) -> None:
    assert reason_of(value, hdrs) == reason


def test_every_reason_code_is_exercised() -> None:
    assert {c[3] for c in BAD_INPUTS} == REASONS - {"late_event", "processing_error"}


def test_schema_detail_names_the_path_and_rule() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_event(plain(properties={"duration_s": -1}), None, now=NOW)
    assert caught.value.detail.startswith("$.properties.duration_s: minimum:")


def test_size_limit_is_an_argument() -> None:
    assert reason_of(plain(), None, max_bytes=100) == "too_large"


def test_accepted_cloudevent_types_are_an_argument() -> None:
    hdrs = headers(type=b"com.example.app.event")
    assert decode_event(data_only(), hdrs, now=NOW, ce_types={"com.example.app.event"}) == EXPECTED


def test_invalid_event_has_a_closed_reason_set_and_pickles() -> None:
    with pytest.raises(ValueError):
        InvalidEvent("oops", "x")
    err = pickle.loads(pickle.dumps(InvalidEvent("schema", "$.event: pattern")))
    assert (err.reason, err.detail) == ("schema", "$.event: pattern")


# --- nothing but InvalidEvent escapes ------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HEADER_NAMES = st.sampled_from(
    [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "content-type",
        "CE_ID",
        "ce_data",
        "traceparent",
    ]
) | st.text(max_size=12)
HEADER_VALUES = st.sampled_from(
    [
        b"1.0",
        b"0.3",
        APP_TYPE.encode(),
        b"application/json",
        b"application/cloudevents+json",
        b"2024-05-06T13:15:02Z",
        b"u-1029",
        b"evt-1",
        b"",
    ]
) | st.binary(max_size=16)
HEADER_LISTS = st.none() | st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8)
FIELD_VALUES = JSON | st.sampled_from(
    [
        "2024-05-06T13:15:02Z",
        "1999-01-01T00:00:00Z",
        "Asia/Shanghai",
        "+08:00",
        "Nowhere/Zone",
        "login",
        "",
    ]
)
NEAR_EVENTS = st.dictionaries(
    st.sampled_from([*EVENT, "schema_version", "data", "specversion", "id", "type", "source"]),
    FIELD_VALUES
    | st.dictionaries(
        st.sampled_from(["duration_s", "quantity", "timezone", "amount", "x"]), FIELD_VALUES
    ),
)


def decodes_or_invalid(value: bytes | None, hdrs: Any) -> None:
    try:
        got = decode_event(value, hdrs, now=NOW)
    except InvalidEvent as err:
        assert err.reason in REASONS
    else:
        assert isinstance(got, AppEvent)


@settings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=256), HEADER_LISTS)
def test_arbitrary_bytes_raise_only_invalid_event(value: bytes, hdrs: Any) -> None:
    decodes_or_invalid(value, hdrs)


@settings(max_examples=2_000, deadline=None)
@given(JSON | NEAR_EVENTS, HEADER_LISTS)
def test_arbitrary_json_raises_only_invalid_event(doc: Any, hdrs: Any) -> None:
    decodes_or_invalid(json.dumps(doc).encode(), hdrs)


@settings(max_examples=2_000, deadline=None)
@given(NEAR_EVENTS, st.sampled_from(["binary", "structured"]))
def test_arbitrary_cloudevents_raise_only_invalid_event(doc: dict[str, Any], mode: str) -> None:
    if mode == "binary":
        decodes_or_invalid(json.dumps(doc).encode(), CE_HEADERS)
    else:
        decodes_or_invalid(envelope(data=doc), STRUCTURED)


# --- encoding ------------------------------------------------------------------------------


def example(name: str) -> dict[str, Any]:
    path = Path(__file__).resolve().parents[2] / "schemas" / "examples" / f"{name}.json"
    loaded: dict[str, Any] = orjson.loads(path.read_bytes())
    return loaded


def encode(ce_type: str, payload: Mapping[str, Any]) -> OutRecord:
    role = "tiers" if ce_type.endswith("tier_changed.v1") else "warnings"
    return encode_cloudevent(
        role,
        ce_type,
        payload,
        key=payload["user_id"],
        source="/churn-warnings/worker",
        event_id="id-1",
        time="2024-05-06T13:15:02.250Z",
    )


@pytest.mark.parametrize("ce_type", sorted(OUTPUT_TYPES))
def test_encoded_value_validates_and_is_deterministic(ce_type: str) -> None:
    payload = example(OUTPUT_TYPES[ce_type])
    first = encode(ce_type, payload)
    again = encode(ce_type, dict(reversed(list(payload.items()))))
    assert first == again
    validator(OUTPUT_TYPES[ce_type])(orjson.loads(first.value))
    assert first.key == payload["user_id"].encode()
    assert b" " not in first.value.replace(b"Send a personal win-back offer.", b"")


@pytest.mark.parametrize("ce_type", sorted(OUTPUT_TYPES))
def test_encoded_record_is_a_cloudevent_the_sdk_reads(ce_type: str) -> None:
    record = encode(ce_type, example(OUTPUT_TYPES[ce_type]))
    message = kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    event = kafka.from_binary(message, JSONFormat())
    assert event.get_type() == ce_type
    assert event.get_subject() == record.key.decode() if record.key else False
    assert event.get_dataschema() == load_schema(OUTPUT_TYPES[ce_type])["$id"]
    assert event.get_data() == orjson.loads(record.value)


def test_encode_rejects_programming_errors() -> None:
    payload = example("tier_change.v1")
    with pytest.raises(ValueError):
        encode_cloudevent(
            "dlq",
            "dev.churnwarnings.tier_changed.v1",
            payload,
            key="u",
            source="s",
            event_id="i",
            time="2024-05-06T13:15:02Z",
        )
    with pytest.raises(ValueError):
        encode_cloudevent(
            "tiers",
            "dev.churnwarnings.nope.v1",
            payload,
            key="u",
            source="s",
            event_id="i",
            time="2024-05-06T13:15:02Z",
        )
    with pytest.raises(ValueError):
        encode_cloudevent(
            "tiers",
            "dev.churnwarnings.tier_changed.v1",
            payload,
            key="u",
            source="s",
            event_id="i",
            time="yesterday",
        )


def test_encode_accepts_read_only_nested_mappings() -> None:
    payload = example("tier_change.v1")
    frozen = MappingProxyType({**payload, "rfm": MappingProxyType(payload["rfm"])})
    tier_type = "dev.churnwarnings.tier_changed.v1"
    assert encode(tier_type, frozen).value == encode(tier_type, payload).value


# --- dead letters --------------------------------------------------------------------------


def test_dlq_record_keeps_original_bytes_headers_and_key() -> None:
    original = [("traceparent", b"00-ab"), ("ce_id", b"evt-1")]
    record = dlq_record(
        b"\xff{",
        original,
        b"u-1",
        InvalidEvent("bad_utf8", "byte 0"),
        source_topic="app-events",
        partition=3,
        offset=42,
    )
    assert record.topic_role == "dlq"
    assert (record.key, record.value) == (b"u-1", b"\xff{")
    assert record.headers[:2] == original
    assert dict(record.headers[2:]) == {
        "dlq_reason": b"bad_utf8",
        "dlq_detail": b"byte 0",
        "dlq_source_topic": b"app-events",
        "dlq_source_partition": b"3",
        "dlq_source_offset": b"42",
    }


def test_dlq_detail_is_truncated_to_valid_utf8() -> None:
    record = dlq_record(
        None, None, None, InvalidEvent("schema", "é" * 600), source_topic="t", partition=0, offset=0
    )
    detail = dict(record.headers)["dlq_detail"]
    assert len(detail) <= 512
    assert detail.decode("utf-8") == "é" * 256
    assert record.value == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), HEADER_LISTS)
def test_dlq_record_round_trips_any_rejected_message(value: bytes, hdrs: Any) -> None:
    try:
        decode_event(value, hdrs, now=NOW)
    except InvalidEvent as err:
        record = dlq_record(value, hdrs, None, err, source_topic="t", partition=1, offset=2)
        assert record.value == value
        assert record.headers[: len(hdrs or [])] == list(hdrs or [])
