"""Parsing the input files people bring: JSONL, CSV and CDNOW, bad rows included."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream_app.tools.sources import (
    BadRow,
    detect_format,
    iter_cdnow,
    iter_csv,
    iter_jsonl,
    load_events,
    parse_cutoff,
    parse_time,
)


def _event(event_id: str, when: str, user: str = "u1") -> str:
    body = {"event_id": event_id, "user_id": user, "event": "like", "occurred_at": when}
    return orjson.dumps(body).decode()


def test_jsonl_reports_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        _event("a", "2024-01-02T00:00:00Z"),
        "{broken",
        "",
        _event("b", "2024-01-01T00:00:00Z"),
        '{"event_id": "c", "user_id": "u", "event": "like", "occurred_at": "soon"}',
        "[1, 2]",
    ]
    path.write_text("\n".join(lines) + "\n")
    loaded = load_events(path)
    assert loaded.format == "jsonl"
    assert [e["event_id"] for e in loaded.events] == ["b", "a"]
    assert [(b.line, b.source) for b in loaded.bad_rows] == [
        (2, "events.jsonl"),
        (5, "events.jsonl"),
        (6, "events.jsonl"),
    ]
    assert "occurred_at" in loaded.bad_rows[1].reason
    assert str(loaded.bad_rows[0]).startswith("events.jsonl:2: invalid JSON")


def test_csv_time_formats_defaults_and_deterministic_ids() -> None:
    rows = [
        "user_id,occurred_at,event,amount,event_id",
        "a,2024-01-02T03:04:05Z,,9.99,",
        "b,2024-01-02,session_start,,given",
        "c,1704164645,,,",
    ]
    bad: list[BadRow] = []
    events = list(iter_csv(rows, bad))
    assert bad == []
    assert [e["occurred_at"] for e in events] == [
        "2024-01-02T03:04:05Z",
        "2024-01-02T12:00:00Z",
        "2024-01-02T03:04:05Z",
    ]
    assert [e["event"] for e in events] == ["purchase", "session_start", "purchase"]
    assert events[0]["properties"] == {"amount": 9.99}
    assert events[1]["event_id"] == "given"
    assert events[0]["event_id"].startswith("csv-")
    assert events[0]["event_id"] == next(iter_csv(rows[:2], []))["event_id"]
    assert events[0]["event_id"] != events[2]["event_id"]


def test_csv_bad_rows_and_missing_header() -> None:
    bad: list[BadRow] = []
    rows = ["user_id,occurred_at,amount", "a,2024-01-02,x", ",2024-01-02,1", "b,never,1"]
    assert list(iter_csv(rows, bad, "log.csv")) == []
    assert [(b.line, b.reason) for b in bad] == [
        (2, "bad amount 'x'"),
        (3, "empty user_id"),
        (4, "bad occurred_at 'never'"),
    ]
    missing: list[BadRow] = []
    assert list(iter_csv(["customer,when", "a,b"], missing)) == []
    assert missing[0].line == 1 and "user_id" in missing[0].reason


def test_cdnow_master_layout_sorted_by_time(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(
        " customer_id  date number_of_cds  dollar_value\r\n"
        " 00001 19970105  1   11.77\r\n"
        " 00002 19970101  1   12.00\r\n"
        " 00002 19970101  5   77.00\r\n"
        " 00003 1997013  2   20.76\r\n"
        " 00003 19970102  two   20.76\r\n"
        " 00004 19970101  2\r\n"
    )
    loaded = load_events(path)
    assert loaded.format == "cdnow"
    assert [e["event_id"] for e in loaded.events] == [
        "cdnow-00002-19970101-0",
        "cdnow-00002-19970101-1",
        "cdnow-00001-19970105-0",
    ]
    first = loaded.events[0]
    assert first["occurred_at"] == "1997-01-01T12:00:00Z"
    assert first["event"] == "purchase"
    assert first["properties"] == {"amount": 12.0, "quantity": 1, "currency": "USD"}
    assert [b.line for b in loaded.bad_rows] == [5, 6, 7]
    assert "expected 4 or 5 columns" in loaded.bad_rows[2].reason


def test_cdnow_sample_layout_uses_master_id() -> None:
    rows = [" 00004 0001 19970101  2   29.33", " 00004 0001 19970118  2   29.73"]
    events = list(iter_cdnow(rows, []))
    assert [e["user_id"] for e in events] == ["00004", "00004"]
    assert events[1]["properties"]["amount"] == 29.73


def test_until_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    times = ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"]
    path.write_text("\n".join(_event(str(i), t) for i, t in enumerate(times)))
    assert len(load_events(path, until=parse_cutoff("2024-01-03")).events) == 2
    assert len(load_events(path, until=parse_time("2024-01-02T00:00:00Z")).events) == 1
    assert [e["event_id"] for e in load_events(path, limit=2).events] == ["0", "1"]


def test_equal_times_keep_file_order(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(_event(str(i), "2024-01-01T00:00:00Z") for i in range(5)))
    assert [e["event_id"] for e in load_events(path).events] == ["0", "1", "2", "3", "4"]


def test_detect_format_refuses_to_guess() -> None:
    with pytest.raises(ValueError, match="cannot tell"):
        detect_format("data.bin", "hello world")


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "purchases.txt"
    path.write_text("user_id,occurred_at\nz,2024-01-01\n")
    assert load_events(path, "csv").events[0]["user_id"] == "z"
    assert load_events(path).format == "csv"


def test_gzip_input(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "e.jsonl.gz"
    path.write_bytes(gzip.compress(_event("g", "2024-01-01T00:00:00Z").encode()))
    assert load_events(path).events[0]["event_id"] == "g"


def test_jsonl_reader_counts_every_physical_line() -> None:
    bad: list[BadRow] = []
    list(iter_jsonl(["", "", "nope"], bad))
    assert bad[0].line == 3
