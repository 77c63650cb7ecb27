"""Helpers shared by the reliability tests: read what a worker left behind, and compute what
an uninterrupted run of the same input leaves behind.

The reference run drives the worker's own :class:`~stream_app.processor.Processor` (same
engine, same Redis commit script, same publish-then-commit order) over the records of the
worker's input topic, read back from Kafka so partitions and offsets are exactly the ones
the worker saw. It writes under its own key prefix and collects what it would publish, so
a faulted worker can be compared with it key by key and record by record. It needs no
consumer group, so it runs next to the worker without either disturbing the other, and it
shares the worker's ``app_id`` (the label-sampling and holdout salt), which two Faust
workers could not do without joining the same consumer group.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import redis
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from stream_app.core import build_core
from stream_app.kafka_clients import kafka_python_config, redis_client
from stream_app.metrics import Metrics
from stream_app.processor import Processor
from stream_app.records import REASONS, OutRecord
from stream_app.settings import Settings
from stream_app.store import RedisWindowStore

ID_FIELDS = ("warning_id", "recovery_id", "change_id")


def settings_of(env: dict[str, str], **overrides: object) -> Settings:
    """The settings a worker started with ``env`` runs with (plus ``overrides``)."""
    values: dict[str, object] = {k[len("CHURN_") :].lower(): v for k, v in env.items()}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# -- Kafka ------------------------------------------------------------------------------------


def topic_records(
    settings: Settings, topic: str, expected: int | None = None, timeout: float = 60.0
) -> list[Any]:
    """Every record of ``topic`` so far, by manual assignment (no group, nothing committed).

    The embedded broker may report end offsets that lag the last batch written, so
    reading stops only when the end offsets are reached, a poll came back empty and, when
    the caller knows how many were produced, ``expected`` records were read.
    """
    consumer = KafkaConsumer(**kafka_python_config(settings), enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"{topic}: {len(out)} read, {expected} expected"
            batch = consumer.poll(timeout_ms=500)
            for msgs in batch.values():
                out.extend(msgs)
            if batch or (expected is not None and len(out) < expected):
                continue
            ends = consumer.end_offsets(parts)
            if all(consumer.position(tp) >= end for tp, end in ends.items()):
                return out
    finally:
        consumer.close()


def record_id(record: Any) -> str:
    """The deterministic id a published record carries (its CloudEvents ``ce_id``)."""
    headers = dict(record.headers)
    return bytes(headers["ce_id"]).decode()


def published(records: Iterable[Any]) -> dict[str, bytes]:
    """Published records by id; a duplicate (at-least-once) must be byte-identical."""
    out: dict[str, bytes] = {}
    for r in records:
        rid = record_id(r)
        value = bytes(r.value)
        assert out.setdefault(rid, value) == value, f"two different records share id {rid}"
    return out


def dlq_entries(records: Iterable[Any]) -> set[tuple[str, int, int]]:
    """Dead letters as (reason, source partition, source offset), duplicates folded."""
    out = set()
    for r in records:
        h = {k: bytes(v) for k, v in r.headers}
        reason = h["dlq_reason"].decode()
        assert reason in REASONS, reason
        out.add((reason, int(h["dlq_source_partition"]), int(h["dlq_source_offset"])))
    return out


# -- Redis ------------------------------------------------------------------------------------


def dump_state(redis_url: str, prefix: str, password: str | None = None) -> dict[str, Any]:
    """Every key under ``prefix`` (prefix removed) with its content compared by value."""
    client = redis.Redis.from_url(redis_url, password=password)
    out: dict[str, Any] = {}
    try:
        for raw in client.scan_iter(match=f"{prefix}*", count=2000):
            key = raw.decode()[len(prefix) :]
            kind = client.type(raw).decode()
            if kind == "string":
                out[key] = client.get(raw)
            elif kind == "hash":
                out[key] = client.hgetall(raw)
            elif kind == "zset":
                out[key] = dict(
                    cast(list[tuple[bytes, float]], client.zrange(raw, 0, -1, withscores=True))
                )
            else:
                out[key] = (kind, client.dump(raw))
    finally:
        client.close()
    return out


def state_diff(state: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """What differs between two dumps, down to the part of a partition checkpoint."""
    import pickle
    import zlib

    out = [f"missing {k}" for k in expected if k not in state]
    out += [f"extra {k}" for k in state if k not in expected]
    for key in sorted(k for k in expected if k in state and state[k] != expected[k]):
        a, b = state[key], expected[key]
        if isinstance(a, dict) and isinstance(b, dict):
            fields = sorted(f for f in {*a, *b} if a.get(f) != b.get(f))
            parts = ""
            if b"blob" in fields and a.get(b"blob") and b.get(b"blob"):
                pa, pb = (pickle.loads(zlib.decompress(x[b"blob"])) for x in (a, b))
                parts = f"checkpoint parts {[i for i, (x, y) in enumerate(zip(pa, pb)) if x != y]}"
            out.append(f"{key}: fields {fields} {parts}")
        else:
            out.append(f"{key}: value")
    return out


def committed(settings: Settings) -> dict[int, int]:
    """Offsets of the input topic committed to Redis, per partition (-1 when none)."""

    async def read() -> dict[int, int]:
        store = RedisWindowStore(redis_client(settings), settings.key_prefix)
        try:
            out = {}
            for p in range(settings.partitions):
                snap = await store.load_partition(settings.topic_events, p)
                out[p] = snap.offset if snap else -1
            return out
        finally:
            await store.close()

    return asyncio.run(read())


def processed(settings: Settings) -> int:
    """Records of the input topic the worker has committed, all partitions together."""
    return sum(o + 1 for o in committed(settings).values())


def wait_processed(settings: Settings, expected: int, timeout: float, worker: Any = None) -> None:
    """Block until ``expected`` input records are committed; fail early if the worker died."""
    deadline = time.monotonic() + timeout
    while (done := processed(settings)) < expected:
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{worker.log()[-4000:]}")
        if time.monotonic() > deadline:
            tail = worker.log()[-4000:] if worker is not None else ""
            raise AssertionError(f"processed {done}/{expected} after {timeout:.0f} s\n{tail}")
        time.sleep(0.2)


# -- the reference run ------------------------------------------------------------------------


class Reference:
    """What an uninterrupted run of some input records publishes, and the state it leaves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.out: list[OutRecord] = []

    async def _send(self, record: OutRecord) -> asyncio.Future[None]:
        self.out.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def run(self, records: Sequence[Any], batch: int = 1000) -> None:
        """Process ``records`` (kafka-python consumer records) in offset order."""
        ordered = sorted(records, key=lambda r: (r.partition, r.offset))

        async def go() -> None:
            client = redis_client(self.settings)
            store = RedisWindowStore(client, self.settings.key_prefix)
            metrics = Metrics.create(CollectorRegistry(), invalid_reasons=sorted(REASONS))
            proc = Processor(self.settings, build_core(self.settings), store, metrics, self._send)
            try:
                for i in range(0, len(ordered), batch):
                    await proc.handle(ordered[i : i + batch])
            finally:
                await store.close()

        asyncio.run(go())

    def published(self) -> dict[str, bytes]:
        """Warnings, recoveries and tier changes by id."""
        out: dict[str, bytes] = {}
        for r in self.out:
            if r.topic_role != "dlq":
                rid = dict(r.headers)["ce_id"].decode()
                assert out.setdefault(rid, r.value) == r.value
        return out

    def dlq(self) -> set[tuple[str, int, int]]:
        """Dead letters as (reason, source partition, source offset)."""
        return dlq_entries(_Rec(r.headers) for r in self.out if r.topic_role == "dlq")


class _Rec:
    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self.headers = headers


# -- HTTP and processes -----------------------------------------------------------------------


def http_get(url: str, token: str | None = None, timeout: float = 3.0) -> tuple[int, bytes]:
    """Status and body of a GET (errors included; no exception for 4xx/5xx)."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def health(web_url: str) -> int:
    """Status of the worker's /health (0 when it does not answer)."""
    try:
        return http_get(f"{web_url}/health")[0]
    except OSError:
        return 0


def metric(web_url: str, name: str) -> float:
    """Sum of every series of ``name`` on /metrics."""
    text = http_get(f"{web_url}/metrics")[1].decode()
    found = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


class RedisServer:
    """A dedicated ``redis-server`` on loopback that a test may stop and start again.

    Data lives in ``directory`` with the append-only file on, so a restart keeps every
    committed write (``appendfsync always``: a commit the worker saw acknowledged is on
    disk before Redis goes away).
    """

    def __init__(self, directory: Path, port: int, *extra: str) -> None:
        self.directory = directory
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        from stream_app.stack import port_open, redis_server_bin, wait_until

        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_bin(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
            *self.extra,
        ]
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: port_open("127.0.0.1", self.port), f"redis on {self.port}", 20)

    def stop(self) -> None:
        """SIGTERM: Redis flushes the append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
