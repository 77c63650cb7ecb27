"""App events as the worker sees them, and the records it publishes.

The JSON Schemas in the top-level ``schemas/`` folder are the contract; this module is the
only place that turns Kafka bytes into :class:`AppEvent` and outputs back into bytes, so the
rest of the worker never sees malformed input.

Input comes in three shapes, all decoding to the same :class:`AppEvent`:

* plain JSON: the message value is an ``app_event.v1`` object;
* CloudEvents 1.0 Kafka binding, binary mode: ``ce_*`` headers carry the envelope and the
  value is the app event (``ce_id``, ``ce_time`` and ``ce_subject`` may stand in for
  ``event_id``, ``occurred_at`` and ``user_id``);
* CloudEvents structured mode: ``content-type: application/cloudevents+json`` and the value
  is the envelope with the app event in ``data`` (or JSON bytes in ``data_base64``).

Anything else raises :class:`InvalidEvent` whose ``reason`` is one of a closed set, so the
dead-letter topic can be counted and alerted on by cause:

``too_large``
    The value is over the size limit.
``bad_utf8``
    The value is not UTF-8.
``bad_json``
    The value is empty (a tombstone) or not JSON.
``not_an_object``
    The JSON (or the CloudEvent's ``data``) is not an object.
``schema``
    The object breaks ``app_event.v1``; the detail names the JSON path and the rule.
``bad_timestamp``
    ``occurred_at`` is not an RFC 3339 date-time, is before 1970-01-01, or is more than a
    day ahead of the decoder's clock.
``bad_timezone``
    ``context.timezone`` is not a known IANA zone.
``bad_cloudevent``
    CloudEvents headers or envelope that lie or cannot be honoured: wrong spec version,
    missing required attributes, a type that is not an app event, non-JSON content type,
    or ``ce_id``/``ce_time``/``ce_subject`` contradicting the data.
``late_event``
    Never raised here: the worker uses it for a valid event that arrives after its
    window has closed, so late data reaches the same dead-letter topic.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import time as _time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match

from stream_app.slots import fast_constructor

__all__ = [
    "APP_EVENT_TYPES",
    "OUTPUT_TYPES",
    "REASONS",
    "AppEvent",
    "InvalidEvent",
    "OutRecord",
    "SchemaViolation",
    "decode_event",
    "dlq_record",
    "encode_cloudevent",
    "load_schema",
    "parse_rfc3339",
    "parse_time",
    "validator",
]

REASONS: Final = frozenset(
    {
        "too_large",
        "bad_utf8",
        "bad_json",
        "not_an_object",
        "schema",
        "bad_timestamp",
        "bad_timezone",
        "bad_cloudevent",
        "late_event",
        "processing_error",
    }
)
APP_EVENT_TYPES: Final = frozenset({"dev.churnwarnings.app_event.v1"})
OUTPUT_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "dev.churnwarnings.warning.v1": "churn_warning.v1",
        "dev.churnwarnings.recovered.v1": "user_recovered.v1",
        "dev.churnwarnings.tier_changed.v1": "tier_change.v1",
    }
)
SCHEMA_BASE: Final = "https://churn-warnings.dev/schemas/"
DLQ_DETAIL_MAX: Final = 512

_EARLIEST: Final = 0.0
_MAX_AHEAD_S: Final = 86_400.0
_CE_TIME_SLACK_S: Final = 0.001
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_RFC3339: Final = re.compile(
    r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)", re.ASCII
)
_OFFSET: Final = re.compile(r"([+-])(\d\d):(\d\d)", re.ASCII)
_JSON_MEDIA: Final = re.compile(r"(?:application|text)/(?:[\w.+-]+\+)?json", re.ASCII)
_NOT_ZONES: Final = frozenset({"localtime", "posixrules", "Factory"})
_OUTPUT_ROLES: Final = frozenset({"warnings", "tiers"})


@dataclass(frozen=True, slots=True)
class AppEvent:
    """One validated app event.

    ``occurred_at`` is event time in epoch seconds (UTC); ``utc_offset_s`` is the user's
    local offset at that instant when the event carried a time zone, so day boundaries can
    follow the user's local calendar.
    """

    event_id: str
    user_id: str
    event: str
    occurred_at: float
    properties: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    utc_offset_s: int | None = None


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One message to produce, independent of any Kafka client.

    ``topic_role`` (``warnings``, ``tiers`` or ``dlq``) is mapped to a real topic name by
    configuration, so this module never needs to know deployment names.
    """

    topic_role: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class InvalidEvent(Exception):
    """An input message that cannot become an :class:`AppEvent`.

    ``reason`` is a machine code from :data:`REASONS` (counted and put on the dead-letter
    record); ``detail`` is for humans reading the dead-letter topic.

    >>> err = InvalidEvent("bad_json", "unexpected character")
    >>> err.reason, str(err)
    ('bad_json', 'bad_json: unexpected character')
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown InvalidEvent reason {reason!r}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class SchemaViolation(ValueError):
    """A document that breaks one of the published schemas.

    Raised by the checks :func:`validator` returns; ``path`` is a JSONPath and ``rule`` the
    JSON Schema keyword that failed, so a failing test says exactly what to fix.
    """

    def __init__(self, schema: str, path: str, rule: str, message: str) -> None:
        super().__init__(f"{schema}: {path}: {rule}: {message}")
        self.schema = schema
        self.path = path
        self.rule = rule


# --- schemas -------------------------------------------------------------------------------


def _schema_file(name: str) -> str:
    stem = name.removesuffix(".json")
    if not re.fullmatch(r"[a-z0-9_]+\.v\d+", stem):
        raise ValueError(f"not a schema name: {name!r}")
    return f"{stem}.json"


def load_schema(name: str) -> dict[str, Any]:
    """Return a fresh copy of the parsed JSON Schema ``name`` (``"app_event.v1"``; ``.json``
    optional), so callers may change it without affecting anyone else.

    A source checkout's ``schemas/`` folder wins, so edits take effect without
    reinstalling; an installed wheel carries the same files as ``stream_app/_schemas``.
    A candidate is accepted only if its ``$id`` matches, so a stray ``schemas`` folder next
    to an installed package cannot shadow the real contract.

    >>> load_schema("app_event.v1")["$id"]
    'https://churn-warnings.dev/schemas/app_event.v1.json'
    """
    return copy.deepcopy(_schema(_schema_file(name)))


@cache
def _schema(file: str) -> dict[str, Any]:
    expected = SCHEMA_BASE + file
    for text in _schema_texts(file):
        schema: dict[str, Any] = json.loads(text)
        if schema.get("$id") == expected:
            return schema
    raise FileNotFoundError(f"schema {file} not found in schemas/ or stream_app/_schemas")


def _schema_texts(file: str) -> Iterable[str]:
    checkout = Path(__file__).resolve().parent.parent / "schemas" / file
    if checkout.is_file():
        yield checkout.read_text(encoding="utf-8")
    packaged = resources.files("stream_app").joinpath("_schemas", file)
    if packaged.is_file():
        yield packaged.read_text(encoding="utf-8")


_FORMATS: Final = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if isinstance(value, str):
        parse_rfc3339(value)
    return True


@cache
def validator(name: str) -> Callable[[Mapping[str, Any]], None]:
    """Return a check that raises :class:`SchemaViolation` if a document breaks ``name``.

    This is the reference validator (``jsonschema``, full draft 2020-12, strict RFC 3339
    date-times) for tests and tools; the decode path uses a faster compiled one.

    >>> check = validator("tier_change.v1")
    >>> try:
    ...     check({"change_id": "c1", "user_id": "u1"})
    ... except SchemaViolation as err:
    ...     print(err.path, err.rule)
    $ required
    """
    checker = Draft202012Validator(load_schema(name), format_checker=_FORMATS)
    label = name.removesuffix(".json")

    def check(document: Mapping[str, Any]) -> None:
        error = best_match(checker.iter_errors(document))
        if error is not None:
            raise SchemaViolation(label, error.json_path, str(error.validator), error.message)

    return check


@cache
def _fast_app_event_check() -> Callable[[Any], None]:
    """The decode path's check of ``app_event.v1``: jsonschema-rs, a compiled (Rust) draft
    2020-12 validator: ~0.85 us per typical event, against ~4 us for the compiled-to-Python
    fastjsonschema it replaced and ~90 us for the reference ``jsonschema`` (``python -m
    bench.decode``). It raises ``jsonschema_rs.ValidationError`` for the first
    violation. Its ``date-time`` format check is left to :func:`parse_rfc3339`, which runs
    anyway and yields ``bad_timestamp``. Patterns follow ECMA 262, as the specification
    says: ``$`` matches only at the end of the text, not before a trailing newline as in
    Python's ``re``."""
    check: Callable[[Any], None] = jsonschema_rs.validator_for(
        load_schema("app_event.v1"), validate_formats=False
    ).validate
    return check


# --- time ----------------------------------------------------------------------------------


def parse_rfc3339(text: str) -> float:
    """Return epoch seconds for an RFC 3339 date-time; raise ``ValueError`` otherwise.

    Stricter than :meth:`datetime.fromisoformat` alone: the offset is mandatory, so a naive
    local time can never be mistaken for UTC. A leap second counts as the next second;
    digits past microseconds are dropped.

    >>> parse_rfc3339("2024-05-06T21:15:02.25+08:00")
    1715001302.25
    >>> parse_rfc3339("2024-05-06t13:15:02.25z")
    1715001302.25
    """
    if _RFC3339.fullmatch(text) is None:
        raise ValueError(f"not an RFC 3339 date-time: {text[:64]!r}")
    if text[10] != "T" or text[-1] == "z":
        text = text.upper()
    if text[17:19] == "60":
        return datetime.fromisoformat(text[:17] + "59" + text[19:]).timestamp() + 1.0
    return datetime.fromisoformat(text).timestamp()


parse_time: Final = parse_rfc3339
_parse_time: Final = lru_cache(maxsize=256)(parse_rfc3339)


@lru_cache(maxsize=1024)
def _zone(name: str) -> tzinfo | None:
    if name in _NOT_ZONES:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


@lru_cache(maxsize=4096)
def _offset_at(name: str, minute: int) -> int | None:
    """The UTC offset in seconds of a fixed offset (``+08:00``) or a zone at a minute."""
    fixed = _OFFSET.fullmatch(name)
    if fixed is not None:
        fixed_s = int(fixed.group(2)) * 3_600 + int(fixed.group(3)) * 60
        return -fixed_s if fixed.group(1) == "-" else fixed_s
    zone = _zone(name)
    delta = None if zone is None else datetime.fromtimestamp(minute * 60, zone).utcoffset()
    return None if delta is None else int(delta.total_seconds())


def _utc_offset(name: str, at: float) -> int:
    """Offsets are looked up per whole minute: zones change offset on minute boundaries
    (a few 1970s offsets with seconds aside), so live traffic from one zone mostly hits the
    cache."""
    offset = _offset_at(name, int(at // 60))
    if offset is None:
        raise InvalidEvent("bad_timezone", f"$.context.timezone: unknown time zone {name!r}")
    return offset


def _event_time(text: str, now: float | None) -> float:
    try:
        at = _parse_time(text)
    except ValueError as exc:
        raise InvalidEvent("bad_timestamp", f"$.occurred_at: {exc}") from None
    if at < _EARLIEST:
        raise InvalidEvent("bad_timestamp", f"$.occurred_at: {text!r} is before 1970-01-01")
    limit = (_time.time() if now is None else now) + _MAX_AHEAD_S
    if at > limit:
        raise InvalidEvent("bad_timestamp", f"$.occurred_at: {text!r} is over a day ahead")
    return at


# --- decoding ------------------------------------------------------------------------------

Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes]


def decode_event(
    value: bytes | None,
    headers: Headers | None = None,
    *,
    now: float | None = None,
    max_bytes: int = 65_536,
    ce_types: Collection[str] = APP_EVENT_TYPES,
) -> AppEvent:
    """Turn one Kafka message value and its headers into a validated :class:`AppEvent`.

    Parameters
    ----------
    value, headers
        The message as consumed; ``headers`` as a list of pairs or a mapping.
    now
        The clock (epoch seconds) to judge future timestamps against; pass it when
        replaying so results do not depend on when the replay runs.
    max_bytes
        Larger values are refused before parsing, bounding the cost of one message.
    ce_types
        CloudEvents ``type`` values accepted as app events.

    Raises
    ------
    InvalidEvent
        For every malformed input; nothing else escapes.

    Examples
    --------
    >>> ev = decode_event(
    ...     b'{"event_id":"e1","user_id":"u1","event":"login",'
    ...     b'"occurred_at":"2024-05-06T21:15:02+08:00","context":{"timezone":"Asia/Shanghai"}}'
    ... )
    >>> ev.event, ev.occurred_at, ev.utc_offset_s
    ('login', 1715001302.0, 28800)
    """
    if not value:
        raise InvalidEvent("bad_json", "empty value (tombstone?)")
    if len(value) > max_bytes:
        raise InvalidEvent("too_large", f"{len(value)} bytes, limit {max_bytes}")
    content_type, attrs = _ce_headers(headers)
    if content_type is not None and content_type.startswith("application/cloudevents"):
        document = _from_structured(value, content_type, ce_types)
    elif attrs:
        document = _from_binary(value, content_type, attrs, ce_types)
    else:
        document = _object(_parse_json(value), "$")
    _check_app_event(document)
    return _build(document, now)


def _parse_json(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise InvalidEvent("bad_utf8", f"byte {bad.start}: {bad.reason}") from None
        raise InvalidEvent("bad_json", str(exc)) from None


def _object(parsed: Any, where: str) -> dict[str, Any]:
    if not isinstance(parsed, dict):
        raise InvalidEvent("not_an_object", f"{where} is {type(parsed).__name__}, not object")
    return parsed


def _header_pairs(headers: Headers | None) -> Iterable[tuple[str, bytes]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


def _ce_headers(headers: Headers | None) -> tuple[str | None, dict[str, str]]:
    content_type: str | None = None
    attrs: dict[str, str] = {}
    try:
        for name, raw in _header_pairs(headers):
            lowered = name.lower()
            if lowered.startswith("ce_"):
                text = raw.decode()
                if attrs.setdefault(lowered[3:], text) != text:
                    raise InvalidEvent("bad_cloudevent", f"header {name} repeated, other value")
            elif lowered == "content-type":
                content_type = raw.decode().strip().lower()
    except (UnicodeDecodeError, AttributeError):
        raise InvalidEvent("bad_cloudevent", "a ce_* or content-type header is not UTF-8") from None
    return content_type, attrs


def _from_binary(
    value: bytes,
    content_type: str | None,
    attrs: dict[str, str],
    ce_types: Collection[str],
) -> dict[str, Any]:
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    _check_envelope(attrs, ce_types, "ce_")
    return _merge(_object(_parse_json(value), "$"), attrs)


def _from_structured(value: bytes, content_type: str, ce_types: Collection[str]) -> dict[str, Any]:
    if not content_type.startswith("application/cloudevents+json"):
        raise InvalidEvent("bad_cloudevent", f"unsupported structured format {content_type!r}")
    envelope = _object(_parse_json(value), "$")
    data = _structured_data(envelope)
    attrs = {k: v for k, v in envelope.items() if k not in ("data", "data_base64")}
    _check_envelope(attrs, ce_types, "")
    return _merge(data, attrs)


def _structured_data(envelope: dict[str, Any]) -> dict[str, Any]:
    if "data" in envelope:
        return _object(envelope["data"], "$.data")
    encoded = envelope.get("data_base64")
    if not isinstance(encoded, str):
        raise InvalidEvent("bad_cloudevent", "envelope has neither data nor data_base64")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEvent("bad_cloudevent", "data_base64 is not base64") from None
    if not raw:
        raise InvalidEvent("bad_json", "data_base64 is empty")
    return _object(_parse_json(raw), "$.data_base64")


def _check_envelope(attrs: Mapping[str, Any], ce_types: Collection[str], prefix: str) -> None:
    for name in ("specversion", "id", "source", "type"):
        if not isinstance(attrs.get(name), str) or not attrs[name]:
            raise InvalidEvent("bad_cloudevent", f"{prefix}{name} missing or not a string")
    for name in ("time", "subject", "datacontenttype"):
        if name in attrs and not isinstance(attrs[name], str):
            raise InvalidEvent("bad_cloudevent", f"{prefix}{name} is not a string")
    if attrs["specversion"] != "1.0":
        raise InvalidEvent("bad_cloudevent", f"{prefix}specversion {attrs['specversion']!r}")
    if attrs["type"] not in ce_types:
        raise InvalidEvent("bad_cloudevent", f"{prefix}type {attrs['type']!r} is no app event")
    _check_media_type(attrs.get("datacontenttype"))


def _check_media_type(media: str | None) -> None:
    if media is None or media == "application/json":
        return
    kind, _, params = media.partition(";")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", params.lower())
    if not _JSON_MEDIA.fullmatch(kind.strip().lower()):
        raise InvalidEvent("bad_cloudevent", f"data content type {media!r} is not JSON")
    if charset is not None and charset.group(1) not in ("utf-8", "utf8"):
        raise InvalidEvent("bad_cloudevent", f"data charset {charset.group(1)!r} is not UTF-8")


def _merge(data: dict[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    _adopt(data, "event_id", attrs["id"], "id")
    if "subject" in attrs:
        _adopt(data, "user_id", attrs["subject"], "subject")
    if "time" in attrs:
        _adopt_time(data, attrs["time"])
    return data


def _adopt(data: dict[str, Any], key: str, supplied: str, attr: str) -> None:
    current = data.setdefault(key, supplied)
    if current != supplied:
        raise InvalidEvent("bad_cloudevent", f"CloudEvent {attr} {supplied!r} != {key} {current!r}")


def _adopt_time(data: dict[str, Any], supplied: str) -> None:
    try:
        ce_at = _parse_time(supplied)
    except ValueError:
        raise InvalidEvent("bad_cloudevent", f"CloudEvent time {supplied[:64]!r}") from None
    current = data.setdefault("occurred_at", supplied)
    if current is supplied or not isinstance(current, str):
        return
    try:
        data_at = _parse_time(current)
    except ValueError:
        return
    if abs(data_at - ce_at) > _CE_TIME_SLACK_S:
        raise InvalidEvent("bad_cloudevent", f"CloudEvent time {supplied!r} != {current!r}")


def _check_app_event(document: dict[str, Any]) -> None:
    try:
        _fast_app_event_check()(document)
    except jsonschema_rs.ValidationError as exc:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.instance_path)
        rule = exc.schema_path[-1] if exc.schema_path else "schema"
        message = exc.message if len(exc.message) <= 200 else exc.message[:197] + "..."
        raise InvalidEvent("schema", f"{path}: {rule}: {message}") from None


# ``AppEvent(...)`` with all seven fields, built fast (one per consumed event; see
# ``stream_app.slots``).
_app_event: Callable[
    [str, str, str, float, Mapping[str, Any], Mapping[str, Any], int | None], AppEvent
] = fast_constructor(AppEvent)


def _build(document: dict[str, Any], now: float | None) -> AppEvent:
    at = _event_time(document["occurred_at"], now)
    context = document.get("context")
    zone = context.get("timezone") if context else None
    return _app_event(
        document["event_id"],
        document["user_id"],
        document["event"],
        at,
        _frozen(document.get("properties")),
        _frozen(context),
        None if zone is None else _utc_offset(zone, at),
    )


def _frozen(mapping: dict[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(mapping) if mapping else _EMPTY


# --- encoding ------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode_cloudevent(
    role: str,
    ce_type: str,
    payload: Mapping[str, Any],
    *,
    key: str,
    source: str,
    event_id: str,
    time: str,
) -> OutRecord:
    """Wrap an output payload as a CloudEvents binary-mode Kafka record.

    Binary mode keeps the value a plain payload that matches its schema, while the
    ``ce_*`` headers let CloudEvents-aware consumers route without parsing it. Keys are
    sorted so the same payload always gives the same bytes, which keeps replays
    byte-for-byte comparable.

    Parameters
    ----------
    role
        ``warnings`` (warning and recovered events) or ``tiers`` (tier changes).
    ce_type
        One of :data:`OUTPUT_TYPES`; it also picks ``ce_dataschema``.
    payload
        The document; it should satisfy the schema of ``ce_type``.
    key, source, event_id, time
        User id (message key and ``ce_subject``), ``ce_source``, ``ce_id`` (the payload's
        deterministic id) and ``ce_time`` (RFC 3339, the event time).

    Examples
    --------
    >>> rec = encode_cloudevent(
    ...     "tiers", "dev.churnwarnings.tier_changed.v1", {"to": "new", "from": None},
    ...     key="u1", source="/churn-warnings", event_id="t1", time="2024-05-06T13:15:02Z",
    ... )
    >>> rec.key, rec.value
    (b'u1', b'{"from":null,"to":"new"}')
    """
    if role not in _OUTPUT_ROLES:
        raise ValueError(f"role must be one of {sorted(_OUTPUT_ROLES)}, not {role!r}")
    if not (key and source and event_id):
        raise ValueError("key, source and event_id must be non-empty")
    ce_type_header, schema_header = _ce_type_headers(ce_type)
    _parse_time(time)
    value = orjson.dumps(payload, default=_jsonable, option=orjson.OPT_SORT_KEYS)
    subject = key.encode()
    headers = [
        _CE_SPECVERSION,
        ("ce_id", event_id.encode()),
        _ce_source_header(source),
        ce_type_header,
        ("ce_time", time.encode()),
        ("ce_subject", subject),
        schema_header,
        _CONTENT_TYPE_JSON,
    ]
    return OutRecord(topic_role=role, key=subject, value=value, headers=headers)


_CE_SPECVERSION: Final = ("ce_specversion", b"1.0")
_CONTENT_TYPE_JSON: Final = ("content-type", b"application/json")


@cache
def _ce_type_headers(ce_type: str) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    """The ``ce_type`` and ``ce_dataschema`` headers of an output type (built once)."""
    if ce_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output type {ce_type!r}")
    schema = f"{SCHEMA_BASE}{OUTPUT_TYPES[ce_type]}.json"
    return ("ce_type", ce_type.encode()), ("ce_dataschema", schema.encode())


@lru_cache(maxsize=16)
def _ce_source_header(source: str) -> tuple[str, bytes]:
    return ("ce_source", source.encode())


def _truncate_utf8(text: str, limit: int) -> bytes:
    raw = text.encode("utf-8", "replace")
    return raw if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore").encode()


def dlq_record(
    value: bytes | None,
    headers: Headers | None,
    key: bytes | None,
    error: InvalidEvent,
    *,
    source_topic: str,
    partition: int,
    offset: int,
) -> OutRecord:
    """Build the dead-letter record for a message that failed to decode.

    The original key, value bytes and headers are kept untouched so the message can be
    inspected or replayed as it was; ``dlq_*`` headers are appended (a message that fails
    again after a replay carries both sets, the last one being the newest). A null value
    becomes empty bytes.

    >>> rec = dlq_record(b"{", [("trace", b"1")], b"u1", InvalidEvent("bad_json", "eof"),
    ...                  source_topic="app-events", partition=3, offset=42)
    >>> rec.value, rec.headers[:3]
    (b'{', [('trace', b'1'), ('dlq_reason', b'bad_json'), ('dlq_detail', b'eof')])
    """
    kept = list(_header_pairs(headers))
    kept += [
        ("dlq_reason", error.reason.encode()),
        ("dlq_detail", _truncate_utf8(error.detail, DLQ_DETAIL_MAX)),
        ("dlq_source_topic", source_topic.encode()),
        ("dlq_source_partition", str(partition).encode()),
        ("dlq_source_offset", str(offset).encode()),
    ]
    return OutRecord(topic_role="dlq", key=key, value=value or b"", headers=kept)
