"""Read app events from the files people have: JSONL, generic CSV and the CDNOW log.

Every reader yields app events as dicts in the service's input contract, ready to
serialise, and records rows it could not read as :class:`BadRow` instead of dropping
them: a replay that silently loses rows would make every later metric quietly wrong.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import orjson

Format = Literal["jsonl", "csv", "cdnow"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "cdnow")
Event = dict[str, Any]

_REQUIRED = ("event_id", "user_id", "event", "occurred_at")


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not be turned into an event, with where to find it."""

    line: int
    reason: str
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.source else f"line {self.line}"
        return f"{where}: {self.reason}"


@dataclass(slots=True)
class Loaded:
    """Events read from one file, in event-time order, with what was rejected."""

    events: list[Event]
    bad_rows: list[BadRow] = field(default_factory=list)
    format: Format = "jsonl"


def format_time(epoch_s: float) -> str:
    """Render epoch seconds as the contract's RFC 3339 UTC form, whole seconds.

    Examples
    --------
    >>> format_time(852076800)
    '1997-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(int(epoch_s), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """Read an RFC 3339 time, a ``YYYY-MM-DD`` day or epoch seconds as epoch seconds.

    A bare day means noon UTC of that day: purchase logs often know only the day, and
    noon keeps the event on that calendar day in most time zones.

    Examples
    --------
    >>> parse_time("1997-01-01T00:00:00Z")
    852076800.0
    >>> parse_time("1997-01-01")
    852120000.0
    >>> parse_time("852076800")
    852076800.0
    """
    value = text.strip()
    if not value:
        raise ValueError("empty time")
    try:
        return float(value)
    except ValueError:
        pass
    if len(value) == 10 and value[4] == "-":
        day = date.fromisoformat(value)
        return datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_cutoff(text: str) -> float:
    """Read a cutoff time; unlike :func:`parse_time` a bare day means its start (00:00 UTC).

    ``--until 1997-10-01`` should mean "before October", not "before noon on the 1st".

    Examples
    --------
    >>> parse_cutoff("1997-01-01"), parse_cutoff("1997-01-01T06:00:00Z")
    (852076800.0, 852098400.0)
    """
    value = text.strip()
    if len(value) == 10 and value[4] == "-":
        return parse_time(value) - 12 * 3600
    return parse_time(value)


def detect_format(path: str | Path, first_line: str) -> Format:
    """Guess the format from the file name, then from its first line.

    Examples
    --------
    >>> detect_format("events.jsonl", "")
    'jsonl'
    >>> detect_format("CDNOW_master.txt", " customer_id  date number_of_cds  dollar_value")
    'cdnow'
    >>> detect_format("log.txt", "user_id,occurred_at")
    'csv'
    """
    name = str(path).lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    line = first_line.strip()
    if line.startswith("{"):
        return "jsonl"
    if "," in line:
        return "csv"
    if "customer_id" in line or _looks_like_cdnow(line.split()):
        return "cdnow"
    raise ValueError(f"cannot tell the format of {path}; pass it explicitly")


def _looks_like_cdnow(tokens: list[str]) -> bool:
    return len(tokens) in (4, 5) and all(t.replace(".", "", 1).isdigit() for t in tokens)


def iter_jsonl(lines: Iterable[str], bad: list[BadRow], source: str = "") -> Iterator[Event]:
    """Yield app events from JSON lines, checking the fields replay relies on.

    Examples
    --------
    >>> bad: list[BadRow] = []
    >>> rows = ['{"event_id":"1","user_id":"u","event":"like","occurred_at":"1997-01-01"}',
    ...         '', '{"user_id": "u"}', 'not json']
    >>> [e["event_id"] for e in iter_jsonl(rows, bad)]
    ['1']
    >>> [(b.line, b.reason.split(":")[0]) for b in bad]
    [(3, 'missing event_id'), (4, 'invalid JSON')]
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append(BadRow(number, f"invalid JSON: {exc}", source))
            continue
        problem = _contract_problem(event)
        if problem:
            bad.append(BadRow(number, problem, source))
            continue
        yield event


def _contract_problem(event: object) -> str | None:
    if not isinstance(event, dict):
        return "not a JSON object"
    for name in _REQUIRED:
        if not isinstance(event.get(name), str) or not event[name]:
            return f"missing {name}"
    try:
        parse_time(event["occurred_at"])
    except ValueError as exc:
        return f"bad occurred_at {event['occurred_at']!r}: {exc}"
    return None


def iter_csv(lines: Iterable[str], bad: list[BadRow], source: str = "") -> Iterator[Event]:
    """Yield purchase-like events from a CSV with ``user_id`` and ``occurred_at`` columns.

    Optional columns: ``event`` (default ``purchase``), ``event_id`` (default a hash of
    user, time and line, so a re-run yields the same ids and the service can deduplicate),
    ``amount``, ``quantity`` and ``currency``.

    Examples
    --------
    >>> bad: list[BadRow] = []
    >>> rows = ["user_id,occurred_at,amount", "a,1997-01-02,9.5", "b,yesterday,1"]
    >>> [(e["user_id"], e["occurred_at"], e["properties"]) for e in iter_csv(rows, bad)]
    [('a', '1997-01-02T12:00:00Z', {'amount': 9.5})]
    >>> bad[0].line
    3
    """
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [name for name in ("user_id", "occurred_at") if name not in header]
    if missing:
        bad.append(BadRow(1, f"header lacks {', '.join(missing)}", source))
        return
    for row in reader:
        number = reader.line_num
        try:
            yield _csv_event(row, number)
        except (ValueError, TypeError) as exc:
            bad.append(BadRow(number, str(exc), source))


def _csv_event(row: dict[str, str | None], number: int) -> Event:
    user = (row.get("user_id") or "").strip()
    if not user:
        raise ValueError("empty user_id")
    stamp = row.get("occurred_at") or ""
    try:
        occurred_at = format_time(parse_time(stamp))
    except ValueError:
        raise ValueError(f"bad occurred_at {stamp!r}") from None
    properties: dict[str, Any] = {}
    for name, cast in (("amount", float), ("quantity", int), ("currency", str)):
        raw = (row.get(name) or "").strip()
        if raw:
            try:
                properties[name] = cast(raw)
            except ValueError:
                raise ValueError(f"bad {name} {raw!r}") from None
    digest = hashlib.sha1(f"{user}-{occurred_at}-{number}".encode()).hexdigest()[:16]
    return {
        "event_id": (row.get("event_id") or "").strip() or f"csv-{digest}",
        "user_id": user,
        "event": (row.get("event") or "").strip() or "purchase",
        "occurred_at": occurred_at,
        "properties": properties,
        "context": {},
    }


def iter_cdnow(lines: Iterable[str], bad: list[BadRow], source: str = "") -> Iterator[Event]:
    """Yield purchases from the CDNOW log (4-column master or 5-column sample layout).

    The day becomes noon UTC; ids are ``cdnow-{customer}-{date}-{n}`` with ``n`` the
    order of same-day rows of that customer, so replays are idempotent. The customer id
    keeps its zero padding, as in the file.

    Examples
    --------
    >>> bad: list[BadRow] = []
    >>> rows = [" customer_id  date number_of_cds  dollar_value",
    ...         " 00002 19970112  1   12.00", " 00002 19970112  5   77.00",
    ...         " 00004 0001 19970101  2   29.33", " 00005 1997x 1 1"]
    >>> for e in iter_cdnow(rows, bad):
    ...     print(e["event_id"], e["occurred_at"], e["properties"])
    cdnow-00002-19970112-0 1997-01-12T12:00:00Z {'amount': 12.0, 'quantity': 1, 'currency': 'USD'}
    cdnow-00002-19970112-1 1997-01-12T12:00:00Z {'amount': 77.0, 'quantity': 5, 'currency': 'USD'}
    cdnow-00004-19970101-0 1997-01-01T12:00:00Z {'amount': 29.33, 'quantity': 2, 'currency': 'USD'}
    >>> print(bad[0])
    line 5: bad date '1997x'
    """
    same_day: dict[tuple[str, str], int] = {}
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or (number == 1 and not tokens[0].isdigit()):
            continue
        try:
            customer, day, quantity, amount = _cdnow_fields(tokens)
        except ValueError as exc:
            bad.append(BadRow(number, str(exc), source))
            continue
        n = same_day.get((customer, day), 0)
        same_day[(customer, day)] = n + 1
        yield {
            "event_id": f"cdnow-{customer}-{day}-{n}",
            "user_id": customer,
            "event": "purchase",
            "occurred_at": f"{day[:4]}-{day[4:6]}-{day[6:]}T12:00:00Z",
            "properties": {"amount": amount, "quantity": quantity, "currency": "USD"},
            "context": {},
        }


def _cdnow_fields(tokens: list[str]) -> tuple[str, str, int, float]:
    if len(tokens) not in (4, 5):
        raise ValueError(f"expected 4 or 5 columns, got {len(tokens)}")
    customer, day, quantity, amount = tokens[0], *tokens[-3:]
    try:
        if len(day) != 8:
            raise ValueError
        datetime.strptime(day, "%Y%m%d")
    except ValueError:
        raise ValueError(f"bad date {day!r}") from None
    try:
        return customer, day, int(quantity), float(amount)
    except ValueError:
        raise ValueError(f"bad quantity or amount {quantity!r} {amount!r}") from None


_READERS = {"jsonl": iter_jsonl, "csv": iter_csv, "cdnow": iter_cdnow}


def open_text(path: str | Path) -> TextIO:
    """Open a text file, transparently un-gzipping ``*.gz``."""
    if str(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_events(
    lines: Iterable[str], fmt: Format, bad: list[BadRow], source: str = ""
) -> Iterator[Event]:
    """Yield events of ``fmt`` from text lines in file order (not sorted)."""
    if fmt not in _READERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _READERS[fmt](lines, bad, source)


def sort_by_time(events: Iterable[Event]) -> list[Event]:
    """Order events by event time, keeping file order among equal times.

    The service sees a stream, so a replay must be in event-time order; CDNOW for
    instance is grouped by customer. The sort is stable so same-time events keep the
    order their source gave them.
    """
    return sorted(events, key=lambda event: parse_time(event["occurred_at"]))


def load_events(
    path: str | Path,
    fmt: Format | None = None,
    *,
    until: float | None = None,
    limit: int | None = None,
    since: float | None = None,
) -> Loaded:
    """Read a file into events sorted by event time, with the rows that were rejected.

    Parameters
    ----------
    path
        JSONL, CSV or CDNOW file, optionally gzipped.
    fmt
        Format; detected from the name and first line when ``None``.
    until
        Keep only events strictly before this epoch time, to replay history up to a
        cutoff and keep the rest as the future the evaluation looks at.
    limit
        Keep only the first ``limit`` events after sorting.
    since
        Keep only events at or after this epoch time (the rest of a log after a cutoff).
    """
    source = Path(path).name
    with open_text(path) as handle:
        first = handle.readline()
        chosen = fmt or detect_format(path, first)
        bad: list[BadRow] = []
        events = list(iter_events(_chain(first, handle), chosen, bad, source))
    ordered = sort_by_time(events)
    if until is not None:
        ordered = [e for e in ordered if parse_time(e["occurred_at"]) < until]
    if since is not None:
        ordered = [e for e in ordered if parse_time(e["occurred_at"]) >= since]
    if limit is not None:
        ordered = ordered[:limit]
    return Loaded(ordered, bad, chosen)


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest
