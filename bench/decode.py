"""Per-event cost of ``decode_event`` for the input shapes the worker accepts.

Run from a checkout with ``python bench/decode.py``. Every message carries its own
timestamp and id so no per-string cache flatters the figures; time zones repeat, as they
do in live traffic. Also times the two alternatives the decoder was chosen over: the
reference ``jsonschema`` validator and the CloudEvents SDK's Kafka binding.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_app.records import (
    _fast_app_event_check,
    decode_event,
    load_schema,
    validator,
)

N = 2_000
ROUNDS = 15
BASE = 1_715_000_000


def _stamp(i: int) -> str:
    whole, frac = divmod(BASE * 1000 + i * 7_919, 1000)
    hh, rem = divmod(whole % 86_400, 3_600)
    return f"2024-05-06T{hh:02d}:{rem // 60:02d}:{rem % 60:02d}.{frac:03d}Z"


def _plain(i: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"evt-{i:010d}",
            "user_id": f"u-{i % 997}",
            "event": "session_end",
            "occurred_at": _stamp(i),
            "properties": {"duration_s": 312.5, "room": "lobby"},
            "context": {"platform": "ios", "timezone": "Asia/Shanghai"},
        }
    )


def _binary(i: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    data = orjson.loads(_plain(i))
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", data.pop("event_id").encode()),
        ("ce_source", b"/apps/chat/ios"),
        ("ce_type", b"dev.churnwarnings.app_event.v1"),
        ("ce_time", data.pop("occurred_at").encode()),
        ("ce_subject", data.pop("user_id").encode()),
        ("content-type", b"application/json"),
    ]
    return orjson.dumps(data), headers


def _structured(i: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    data, headers = _binary(i)
    envelope: dict[str, Any] = {k[3:]: v.decode() for k, v in headers if k.startswith("ce_")}
    envelope |= {"datacontenttype": "application/json", "data": orjson.loads(data)}
    return orjson.dumps(envelope), [("content-type", b"application/cloudevents+json")]


def _per_event_us(run: Callable[[], object]) -> float:
    best = min(timeit.repeat(run, number=1, repeat=ROUNDS))
    return best / N * 1e6


def _sdk_binary(messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> Callable[[], None]:
    from cloudevents.core.bindings import kafka
    from cloudevents.core.formats.json import JSONFormat

    fmt = JSONFormat()
    wrapped = [kafka.KafkaMessage(headers=dict(h), key=None, value=v) for v, h in messages]

    def run() -> None:
        for message in wrapped:
            kafka.from_binary(message, fmt)

    return run


def main() -> None:
    plain = [_plain(i) for i in range(N)]
    binary = [_binary(i) for i in range(N)]
    structured = [_structured(i) for i in range(N)]
    docs = [orjson.loads(v) for v in plain]
    fast, reference = _fast_app_event_check(), validator("app_event.v1")
    load_schema("app_event.v1")
    print(f"typical plain event: {len(plain[0])} bytes; {N} events x best of {ROUNDS}")
    rows = {
        "decode plain JSON": lambda: [decode_event(v) for v in plain],
        "decode CE binary": lambda: [decode_event(v, h) for v, h in binary],
        "decode CE structured": lambda: [decode_event(v, h) for v, h in structured],
        "  orjson.loads only": lambda: [orjson.loads(v) for v in plain],
        "  jsonschema-rs only": lambda: [fast(d) for d in docs],
        "  jsonschema (reference) only": lambda: [reference(d) for d in docs],
        "  cloudevents SDK from_binary only": _sdk_binary(binary),
    }
    for name, run in rows.items():
        print(f"{name:<36} {_per_event_us(run):7.2f} us/event")


if __name__ == "__main__":
    main()
