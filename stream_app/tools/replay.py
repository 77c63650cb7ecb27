"""Replay app events into Kafka, as fast as possible or at a multiple of event-time speed.

The pacing loop (:func:`replay_events`) only sees a ``send`` function, a clock and a
sleep, so it is tested without a broker; :func:`run_replay` wires it to a producer.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO

import orjson

from stream_app.tools.progress import Reporter, progress
from stream_app.tools.sources import (
    FORMATS,
    BadRow,
    Event,
    Format,
    Loaded,
    load_events,
    parse_cutoff,
    parse_time,
)

if TYPE_CHECKING:
    from stream_app.settings import Settings

Encoding = Literal["json", "cloudevents"]
Headers = list[tuple[str, bytes]]
Send = Callable[[bytes, bytes, Headers], Awaitable[None]]

APP_EVENT_TYPE = "dev.churnwarnings.app_event.v1"
SOURCE = "stream-app/replay"


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a replay did, for the person who ran it and for scripts that check it."""

    sent: int
    bad_rows: int
    elapsed_s: float
    rate: float
    first_event_time: str | None = None
    last_event_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON output."""
        return asdict(self)


def encode(event: Event, encoding: Encoding = "json") -> tuple[bytes, bytes, Headers]:
    """Turn an event into a Kafka key, value and headers.

    The key is the user id so one user's events stay in one partition, in order. With
    ``cloudevents`` the value stays the plain event and the CloudEvents attributes go to
    ``ce_*`` headers (binary mode), so consumers that ignore headers still work.

    Examples
    --------
    >>> e = {"event_id": "e1", "user_id": "u1", "event": "like",
    ...      "occurred_at": "1997-01-01T00:00:00Z"}
    >>> key, value, headers = encode(e, "cloudevents")
    >>> key, value[:15], dict(headers)["ce_type"]
    (b'u1', b'{"event_id":"e1', b'dev.churnwarnings.app_event.v1')
    """
    key = str(event["user_id"]).encode()
    value = orjson.dumps(event)
    if encoding == "json":
        return key, value, []
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(event["event_id"]).encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", APP_EVENT_TYPE.encode()),
        ("ce_subject", key),
        ("ce_time", str(event["occurred_at"]).encode()),
        ("content-type", b"application/json"),
    ]
    return key, value, headers


def pacing_delay(first_event_s: float, event_s: float, speed: float | None) -> float:
    """Seconds after the start at which an event should be sent.

    Examples
    --------
    >>> pacing_delay(1000.0, 1060.0, 60.0)
    1.0
    >>> pacing_delay(1000.0, 1060.0, None)
    0.0
    """
    if not speed:
        return 0.0
    return max(0.0, (event_s - first_event_s) / speed)


async def replay_events(
    events: Iterable[Event],
    send: Send,
    *,
    speed: float | None = None,
    encoding: Encoding = "json",
    reporter: Reporter | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Send events in the given order, pacing them when ``speed`` is set.

    Parameters
    ----------
    events
        Events already in event-time order.
    send
        Awaited with key, value and headers of each record; it should return once the
        record is queued, not delivered, or the replay runs at round-trip speed.
    speed
        Multiple of event-time speed (``3600`` plays an hour per second); ``None`` sends
        as fast as the producer takes them.
    encoding
        ``json`` (plain value) or ``cloudevents`` (binary mode headers).
    reporter
        Told about sent events.
    clock, sleep
        Injected so tests run without waiting.

    Returns
    -------
    int
        Number of events sent.

    Examples
    --------
    >>> sent, slept = [], []
    >>> async def send(key, value, headers): sent.append(key)
    >>> async def sleep(s): slept.append(s)
    >>> evs = [{"event_id": str(i), "user_id": "u", "event": "like",
    ...         "occurred_at": f"1997-01-01T00:0{i}:00Z"} for i in range(3)]
    >>> asyncio.run(replay_events(evs, send, speed=60.0, clock=lambda: 0.0, sleep=sleep))
    3
    >>> slept
    [1.0, 2.0]
    """
    start = clock()
    first: float | None = None
    count = 0
    for event in events:
        if speed:
            moment = parse_time(event["occurred_at"])
            first = moment if first is None else first
            wait = pacing_delay(first, moment, speed) - (clock() - start)
            if wait > 0:
                await sleep(wait)
        await send(*encode(event, encoding))
        count += 1
        if reporter is not None and count & 255 == 0:
            reporter.advance(256)
    if reporter is not None:
        reporter.advance(count & 255)
    return count


class Sender(Protocol):
    """A started producer bound to one topic."""

    async def send(self, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one record."""

    async def close(self) -> None:
        """Deliver what is queued and disconnect."""


class AioSender:
    """An aiokafka producer tuned for throughput.

    aiokafka replays the CDNOW log about four times faster than kafka-python on the test
    broker (about 59,000 against 15,000 events/s), so replay uses it. ``acks=1`` and
    large batches trade a little durability for speed, which suits a replay that can be
    re-run; idempotence is off because some Kafka-compatible brokers reject it, and event
    ids already make re-sends harmless to the service.
    """

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped, unused-ignore]

        settings: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "acks": 1,
            "linger_ms": 20,
            "max_batch_size": 512 * 1024,
            "max_request_size": 4 * 1024 * 1024,
            "enable_idempotence": False,
        }
        settings.update(config)
        self._producer = AIOKafkaProducer(**settings)
        self._topic = topic
        self._failures: list[BaseException] = []

    async def start(self) -> None:
        """Connect to the cluster."""
        await self._producer.start()

    async def send(self, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one record; delivery failures are collected and raised by :meth:`close`."""
        future = await self._producer.send(self._topic, value, key=key, headers=headers or None)
        future.add_done_callback(self._check)

    def _check(self, future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self._failures.append(error)

    async def close(self) -> None:
        """Deliver everything queued, then fail loudly if anything was lost."""
        try:
            await self._producer.flush()
        finally:
            await self._producer.stop()
        if self._failures:
            raise RuntimeError(
                f"{len(self._failures)} record(s) not delivered: {self._failures[0]!r}"
            )


async def open_sender(
    bootstrap: str, topic: str, config: Mapping[str, Any] | None = None
) -> Sender:
    """Start the default producer for ``topic``; ``config`` adds client options (TLS, SASL)."""
    sender = AioSender(bootstrap, topic, **(config or {}))
    await sender.start()
    return sender


def run_replay(
    path: str | Path,
    topic: str,
    bootstrap: str,
    *,
    fmt: Format | None = None,
    speed: float | None = None,
    limit: int | None = None,
    until: str | float | None = None,
    since: str | float | None = None,
    encoding: Encoding = "json",
    strict: bool = False,
    out: TextIO | None = None,
    interactive: bool | None = None,
    make_sender: Callable[[str, str], Awaitable[Sender]] = open_sender,
    settings: Settings | None = None,
) -> ReplaySummary:
    """Replay a file of events into ``topic`` and report what happened.

    Parameters
    ----------
    path, fmt
        Input file and its format (detected when ``None``).
    topic, bootstrap
        Where to send.
    speed
        Multiple of event-time speed, or ``None`` for as fast as possible.
    limit, until
        Send only the first ``limit`` events / only events strictly before ``until``
        (RFC 3339, a day or epoch seconds).
    since
        Send only events at or after this time (the rest of a log after a cutoff).
    encoding
        ``json`` or ``cloudevents`` (binary mode).
    strict
        Raise :class:`BadRowsError` before sending anything if a row was unreadable.
    out
        Where messages and progress go (standard error by default).
    interactive
        Force the live progress bar on or off.
    make_sender
        Producer factory, injected for tests.
    settings
        The service's settings: the default producer takes its TLS and SASL options from
        them (``bootstrap`` still says where to connect). ``None``: plaintext.
    """
    stream = sys.stderr if out is None else out
    if settings is not None and make_sender is open_sender:
        from stream_app.kafka_clients import aiokafka_config, security_only

        config = security_only(aiokafka_config(settings))
        make_sender = functools.partial(open_sender, config=config)
    cutoff = parse_cutoff(str(until)) if until is not None else None
    start = parse_cutoff(str(since)) if since is not None else None
    loaded = load_events(path, fmt, until=cutoff, limit=limit, since=start)
    report_bad_rows(loaded.bad_rows, stream)
    if strict and loaded.bad_rows:
        raise BadRowsError(loaded.bad_rows)
    return asyncio.run(
        _replay_loaded(loaded, topic, bootstrap, speed, encoding, stream, interactive, make_sender)
    )


async def _replay_loaded(
    loaded: Loaded,
    topic: str,
    bootstrap: str,
    speed: float | None,
    encoding: Encoding,
    out: TextIO,
    interactive: bool | None,
    make_sender: Callable[[str, str], Awaitable[Sender]],
) -> ReplaySummary:
    events = loaded.events
    started = time.monotonic()
    sender = await make_sender(bootstrap, topic)
    try:
        with progress("replay", len(events), out=out, interactive=interactive) as bar:
            sent = await replay_events(
                events, sender.send, speed=speed, encoding=encoding, reporter=bar
            )
    finally:
        await sender.close()
    elapsed = time.monotonic() - started
    return ReplaySummary(
        sent=sent,
        bad_rows=len(loaded.bad_rows),
        elapsed_s=round(elapsed, 3),
        rate=round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        first_event_time=events[0]["occurred_at"] if events else None,
        last_event_time=events[-1]["occurred_at"] if events else None,
    )


class BadRowsError(ValueError):
    """Raised by a strict replay when the input had unreadable rows."""

    def __init__(self, rows: Sequence[BadRow]) -> None:
        super().__init__(f"{len(rows)} unreadable row(s); first: {rows[0]}")
        self.rows = list(rows)


def report_bad_rows(rows: Sequence[BadRow], out: TextIO, show: int = 20) -> None:
    """Print the unreadable rows (the first ``show``) and their count, never hide them."""
    for row in rows[:show]:
        print(f"bad row {row}", file=out)
    if len(rows) > show:
        print(f"... and {len(rows) - show} more", file=out)
    if rows:
        print(f"{len(rows)} unreadable row(s) not sent", file=out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the replay options on a (sub)parser."""
    parser.add_argument("path", help="JSONL, CSV or CDNOW file (optionally .gz)")
    parser.add_argument("--topic", default="app.events")
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--input-format", dest="input_format", choices=FORMATS)
    parser.add_argument("--speed", type=float, help="multiple of event-time speed")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--until", help="send only events before this time")
    parser.add_argument("--since", help="send only events at or after this time")
    parser.add_argument(
        "--format",
        dest="encoding",
        choices=("json", "cloudevents"),
        default="json",
        help="record encoding",
    )
    parser.add_argument("--strict", action="store_true", help="fail on unreadable rows")


def run(args: argparse.Namespace) -> int:
    """Run a replay from parsed arguments and print its summary as JSON."""
    try:
        summary = run_replay(
            args.path,
            args.topic,
            args.bootstrap,
            fmt=args.input_format,
            speed=args.speed,
            limit=args.limit,
            until=args.until,
            since=args.since,
            encoding=args.encoding,
            strict=args.strict,
            settings=getattr(args, "client_settings", None),
        )
    except BadRowsError as exc:
        print(f"replay refused: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(summary.to_dict()).decode())
    return 0
