"""Follow the warning topic the way an operations team reads it: one line per warning.

Formatting and filtering are plain functions of a decoded record, so they are tested
without Kafka; :func:`read_topic` is the one place that talks to the broker, and
evaluation reuses it to read topics from the beginning.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import orjson

if TYPE_CHECKING:
    from stream_app.settings import Settings

WARNING_TYPE = "dev.churnwarnings.warning.v1"
RECOVERED_TYPE = "dev.churnwarnings.recovered.v1"
TIER_TYPE = "dev.churnwarnings.tier_changed.v1"
LEVEL_STYLES = {1: "yellow", 2: "dark_orange", 3: "bold red"}


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record with its JSON value decoded (``None`` when not JSON)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: Any
    headers: Mapping[str, str]
    timestamp_ms: int = 0

    @property
    def kind(self) -> str:
        """``warning``, ``recovered``, ``tier_changed`` or ``unknown``.

        The ``ce_type`` header decides; without it the payload's id field does, so
        records written by tools that drop headers are still understood.
        """
        ce_type = self.headers.get("ce_type", "")
        for name, known in (
            ("warning", WARNING_TYPE),
            ("recovered", RECOVERED_TYPE),
            ("tier_changed", TIER_TYPE),
        ):
            if ce_type == known:
                return name
        value = self.value if isinstance(self.value, dict) else {}
        for name, id_field in (
            ("warning", "warning_id"),
            ("recovered", "recovery_id"),
            ("tier_changed", "change_id"),
        ):
            if id_field in value:
                return name
        return "unknown"


def decode(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Collection[tuple[str, bytes | None]] | None,
    timestamp_ms: int = 0,
) -> Record:
    """Build a :class:`Record` from raw Kafka fields, tolerating non-JSON values.

    Examples
    --------
    >>> r = decode("t", 0, 5, b"u1", b'{"level": 2}', [("ce_type", b"x")])
    >>> r.key, r.value, dict(r.headers)
    ('u1', {'level': 2}, {'ce_type': 'x'})
    >>> decode("t", 0, 6, None, b"not json", None).value is None
    True
    """
    try:
        parsed = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        parsed = None
    header_map = {name: (raw or b"").decode("utf-8", "replace") for name, raw in headers or ()}
    return Record(
        topic,
        partition,
        offset,
        key.decode("utf-8", "replace") if key is not None else None,
        parsed,
        header_map,
        timestamp_ms,
    )


def matches(record: Record, levels: Collection[int] = (), users: Collection[str] = ()) -> bool:
    """Keep a record if it passes the level and user filters (empty filter keeps all).

    A level filter keeps only warnings: recoveries and tier changes have no level.

    Examples
    --------
    >>> w = decode("t", 0, 0, b"u1", b'{"warning_id": "w", "user_id": "u1", "level": 3}', [])
    >>> matches(w, levels={3}), matches(w, levels={1, 2}), matches(w, users={"u2"})
    (True, False, False)
    """
    value = record.value if isinstance(record.value, dict) else {}
    if users and str(value.get("user_id", record.key)) not in users:
        return False
    if levels:
        return record.kind == "warning" and value.get("level") in levels
    return True


def top_reason(warning: Mapping[str, Any]) -> str:
    """The reason that pushed the score most, as ``feature=value (+contribution)``.

    Examples
    --------
    >>> top_reason({"reasons": [{"feature": "days_idle", "value": 4, "contribution": 0.2},
    ...                         {"feature": "sessions_7d", "value": 1, "contribution": 0.4}]})
    'sessions_7d=1 (+0.40)'
    >>> top_reason({"reasons": [{"feature": "recency", "value": 2.0794415, "contribution": 2.08}]})
    'recency=2.08 (+2.08)'
    >>> top_reason({})
    '-'
    """
    reasons = [r for r in warning.get("reasons") or [] if isinstance(r, dict)]
    if not reasons:
        rules = (warning.get("triggers") or {}).get("rules") or []
        if rules:
            rule = rules[0]
            return f"{rule.get('rule')}: {rule.get('observed')} {rule.get('unit', '')}".strip()
        return "-"
    best = max(reasons, key=lambda r: abs(float(r.get("contribution") or 0.0)))
    value = best.get("value")
    shown = f"{value:.3g}" if isinstance(value, float) else value
    return f"{best.get('feature')}={shown} ({float(best.get('contribution') or 0):+.2f})"


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86_400)
    return f"{days}d {rest // 3600}h" if days else f"{rest // 3600}h {rest % 3600 // 60}m"


def format_record(record: Record) -> str:
    """One plain line for a warning, recovery or tier change.

    Examples
    --------
    >>> w = {"warning_id": "w1", "user_id": "u7", "level": 2, "level_name": "at_risk",
    ...      "churn_probability": 0.734, "event_time": "2024-01-05T10:00:00Z",
    ...      "reasons": [{"feature": "sessions_7d", "value": 1, "contribution": 0.31}],
    ...      "suggested_action": {"code": "winback", "text": "Send a win-back",
    ...                           "channel": "push"}, "holdout": False}
    >>> print(format_record(decode("t", 0, 0, b"u7", orjson.dumps(w), [])))
    2024-01-05T10:00:00Z  u7  L2 at_risk  p=0.73  sessions_7d=1 (+0.31)  push:winback
    >>> r = {"recovery_id": "r1", "user_id": "u7", "episode": 1, "previous_level": 2,
    ...      "event_time": "2024-01-07T10:00:00Z", "episode_duration_s": 172800}
    >>> print(format_record(decode("t", 0, 1, b"u7", orjson.dumps(r), [])))
    2024-01-07T10:00:00Z  u7  recovered from L2 after 2d 0h
    """
    value = record.value if isinstance(record.value, dict) else {}
    when = value.get("event_time", "?")
    user = value.get("user_id", record.key)
    kind = record.kind
    if kind == "warning":
        action = value.get("suggested_action") or {}
        holdout = "  [holdout]" if value.get("holdout") else ""
        probability = value.get("churn_probability")
        p = f"p={probability:.2f}" if isinstance(probability, int | float) else "p=-"
        return (
            f"{when}  {user}  L{value.get('level')} {value.get('level_name', '')}  {p}  "
            f"{top_reason(value)}  {action.get('channel', '-')}:{action.get('code', '-')}"
            f"{holdout}"
        )
    if kind == "recovered":
        took = _duration(float(value.get("episode_duration_s") or 0))
        return f"{when}  {user}  recovered from L{value.get('previous_level')} after {took}"
    if kind == "tier_changed":
        return (
            f"{when}  {user}  {value.get('dimension')}: {value.get('from')} -> "
            f"{value.get('to')}  ({value.get('reason', '')})"
        )
    return f"{record.topic}[{record.partition}]@{record.offset}  {record.key}  (unrecognised)"


def style_for(record: Record) -> str:
    """Rich style of a line: warmer for higher levels, green for recoveries."""
    if record.kind == "recovered":
        return "green"
    if record.kind == "tier_changed":
        return "cyan"
    value = record.value if isinstance(record.value, dict) else {}
    return LEVEL_STYLES.get(int(value.get("level") or 0), "")


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool = True,
    idle_timeout_s: float | None = None,
    max_messages: int | None = None,
    stop_at_end: bool = False,
    poll_ms: int = 200,
    consumer_factory: Callable[..., Any] | None = None,
    settings: Settings | None = None,
) -> Iterator[Record]:
    """Read every partition of ``topic`` with manual assignment, as a subscriber would.

    Manual assignment instead of a consumer group: no offsets are committed, so reading
    never disturbs real subscribers, and there is no group join to wait for.

    Parameters
    ----------
    from_beginning
        Start at the earliest offset; otherwise only new records are shown.
    idle_timeout_s
        Stop once nothing arrived for this long (``None``: follow forever).
    max_messages
        Stop after this many records.
    stop_at_end
        Stop once the end offsets seen at start are reached and a poll comes back empty:
        what was published so far. The empty poll matters because some Kafka-compatible
        brokers report end offsets that lag the last batch written.
    consumer_factory
        Builds the kafka-python consumer; injected for tests.
    settings
        The service's settings: the consumer takes its TLS and SASL options from them
        (``bootstrap`` still says where to connect). ``None``: plaintext.
    """
    consumer = _consumer(bootstrap, topic, from_beginning, consumer_factory, settings)
    try:
        yield from _poll(consumer, idle_timeout_s, max_messages, stop_at_end, poll_ms)
    finally:
        consumer.close()


def _consumer(
    bootstrap: str,
    topic: str,
    from_beginning: bool,
    factory: Callable[..., Any] | None,
    settings: Settings | None = None,
) -> Any:
    from kafka import (  # type: ignore[import-untyped, unused-ignore]
        KafkaConsumer,
        TopicPartition,
    )

    from stream_app.kafka_clients import kafka_python_config, security_only

    security = security_only(kafka_python_config(settings)) if settings is not None else {}
    consumer = (factory or KafkaConsumer)(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **security
    )
    deadline = time.monotonic() + 10.0
    partitions = consumer.partitions_for_topic(topic)
    while not partitions and time.monotonic() < deadline:
        time.sleep(0.2)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        consumer.close()
        raise LookupError(f"topic {topic!r} not found")
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*assigned)
    return consumer


def _poll(
    consumer: Any,
    idle_timeout_s: float | None,
    max_messages: int | None,
    stop_at_end: bool,
    poll_ms: int,
) -> Iterator[Record]:
    ends = consumer.end_offsets(list(consumer.assignment())) if stop_at_end else {}
    seen, last = 0, time.monotonic()
    while max_messages is None or seen < max_messages:
        batches = consumer.poll(timeout_ms=poll_ms)
        if not batches:
            if stop_at_end and all(consumer.position(tp) >= end for tp, end in ends.items()):
                return
            if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                return
            continue
        last = time.monotonic()
        for tp, messages in batches.items():
            for m in messages:
                yield decode(
                    tp.topic, tp.partition, m.offset, m.key, m.value, m.headers, m.timestamp
                )
                seen += 1
                if max_messages is not None and seen >= max_messages:
                    return


def run_tail(
    bootstrap: str,
    topic: str = "churn.warnings",
    *,
    levels: Collection[int] = (),
    users: Collection[str] = (),
    as_json: bool = False,
    from_beginning: bool = False,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    out: TextIO | None = None,
    color: bool | None = None,
    records: Iterator[Record] | None = None,
    settings: Settings | None = None,
) -> int:
    """Print matching records, one per line; returns how many were printed.

    ``--json`` prints the raw value (one JSON object per line, for ``jq``); otherwise a
    readable line, coloured only when writing to a terminal so logs stay clean.
    ``max_messages`` counts printed lines, so ``--level 3 --max 5`` shows five level-3
    warnings. ``settings`` supplies the TLS and SASL options (see :func:`read_topic`).
    """
    stream = sys.stdout if out is None else out
    source = records or read_topic(
        bootstrap,
        topic,
        from_beginning=from_beginning,
        idle_timeout_s=idle_timeout_s,
        settings=settings,
    )
    printer = _printer(stream, color, as_json)
    shown = 0
    for record in source:
        if not matches(record, levels, users):
            continue
        printer(record)
        shown += 1
        if max_messages is not None and shown >= max_messages:
            break
    return shown


def _printer(stream: TextIO, color: bool | None, as_json: bool) -> Callable[[Record], None]:
    if as_json:
        return lambda r: print(orjson.dumps(r.value).decode(), file=stream, flush=True)
    isatty = getattr(stream, "isatty", None)
    if not (bool(isatty and isatty()) if color is None else color):
        return lambda r: print(format_record(r), file=stream, flush=True)
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, force_terminal=True, highlight=False)
    return lambda r: console.print(Text(format_record(r), style=style_for(r)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the tail options on a (sub)parser."""
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--topic", default="churn.warnings")
    parser.add_argument("--level", type=int, action="append", choices=(1, 2, 3), default=[])
    parser.add_argument("--user", action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print raw JSON values")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--max", type=int, dest="max_messages")
    parser.add_argument("--idle-timeout", type=float, dest="idle_timeout_s")


def run(args: argparse.Namespace) -> int:
    """Tail from parsed arguments."""
    run_tail(
        args.bootstrap,
        args.topic,
        levels=set(args.level),
        users=set(args.user),
        as_json=args.json,
        from_beginning=args.from_beginning,
        max_messages=args.max_messages,
        idle_timeout_s=args.idle_timeout_s,
        settings=getattr(args, "client_settings", None),
    )
    return 0
