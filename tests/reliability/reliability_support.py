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
from stream_app.processor import Processor, per_record
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


def published(records: Iterable[Any]) -> set[tuple[str, bytes]]:
    """Published records as (id, value) pairs, so a record published again after a crash
    (same id, same bytes) folds into its first copy, while a re-publication with other
    bytes would show as an extra pair. The pairs are compared, not ids alone, because a
    tier ``change_id`` is not unique even in an uninterrupted run (a user who leaves and
    re-enters the same tier within one change bucket gets the same id twice)."""
    return {(record_id(r), bytes(r.value)) for r in records}


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
            if key.startswith("outbox:"):
                continue  # delivery bookkeeping: the last batch's records, not state
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
    """What differs between two dumps, down to the part of a partition checkpoint.

    Checkpoint parts are compared as pickles with their memo references resolved
    (:func:`canonical_pickle`): whether two equal strings were one object or two in the
    process that wrote them is not state. Everything else must be byte-identical.
    """
    out = [f"missing {k}" for k in expected if k not in state]
    out += [f"extra {k}" for k in state if k not in expected]
    for key in sorted(k for k in expected if k in state and state[k] != expected[k]):
        a, b = state[key], expected[key]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            out.append(f"{key}: value")
            continue
        fields = sorted(f for f in {*a, *b} if a.get(f) != b.get(f))
        if fields == [b"blob"] and a[b"blob"] and b[b"blob"]:
            parts = checkpoint_diff(a[b"blob"], b[b"blob"])
            if parts:
                out.append(f"{key}: checkpoint parts {parts}")
        else:
            out.append(f"{key}: fields {fields}")
    return out


def checkpoint_diff(a: bytes, b: bytes) -> list[int]:
    """Indexes of the partition checkpoint parts that differ in value."""
    import pickle

    pa, pb = (pickle.loads(x) for x in (a, b))
    if len(pa) != len(pb):
        return [-1]
    differ = []
    for i, (x, y) in enumerate(zip(pa, pb, strict=True)):
        if x == y:
            continue
        if isinstance(x, bytes) and isinstance(y, bytes):
            try:
                if _canonical_part(x) == _canonical_part(y):
                    continue
            except ValueError:
                pass
        differ.append(i)
    return differ


def _canonical_part(raw: bytes) -> Any:
    """A checkpoint part in canonical form; the scorer's is a tuple holding its learned state
    (the compressed pickle of its small objects, and its big string-free leaves apart) and
    its rank sketch, which are compared inside."""
    import pickle
    import zlib

    from stream_app.model.learner import _CHECKPOINT

    obj = pickle.loads(raw)
    if isinstance(obj, tuple) and len(obj) == 3 and obj[0] == _CHECKPOINT:
        light, leaves = pickle.loads(obj[1])
        learned = (canonical_pickle(zlib.decompress(light)), leaves)
        return ("scorer", learned, canonical_pickle(pickle.dumps(obj[2], protocol=5)))
    return canonical_pickle(raw)


_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


def canonical_pickle(raw: bytes) -> list[tuple[str, Any]]:
    """The opcodes of a pickle with string sharing undone: a memo reference to a string
    becomes the string, references to other objects are renumbered in order, frames and
    memo writes are dropped. Two pickles of equal object graphs that differ only in which
    equal strings were the same object give the same list."""
    import pickletools

    memo: dict[int, tuple[str, Any]] = {}
    objects = 0
    out: list[tuple[str, Any]] = []
    last: tuple[str, Any] | None = None
    for op, arg, _ in pickletools.genops(raw):
        name = op.name
        if name == "MEMOIZE" or name in _PUTS:
            index = len(memo) if name == "MEMOIZE" else int(arg)
            if last is not None and last[0] == "STR":
                memo[index] = last
            else:
                memo[index] = ("REF", objects)
                objects += 1
            continue
        if name == "FRAME":
            continue
        if name in _GETS:
            last = memo[int(arg)]
        elif name in _STRINGS:
            last = ("STR", arg)
        else:
            last = (name, arg)
        out.append(last)
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
            proc = Processor(
                self.settings, build_core(self.settings), store, metrics, per_record(self._send)
            )
            try:
                for i in range(0, len(ordered), batch):
                    await proc.handle(ordered[i : i + batch])
            finally:
                await store.close()

        asyncio.run(go())

    def published(self) -> set[tuple[str, bytes]]:
        """Warnings, recoveries and tier changes as (id, value) pairs."""
        return {
            (dict(r.headers)["ce_id"].decode(), r.value) for r in self.out if r.topic_role != "dlq"
        }

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


def own_redis(server: RedisServer) -> dict[str, str]:
    """``running_worker`` overrides pointing a worker at ``server``; upper case because the
    fixture's ``redis_url`` parameter already names the session's Redis."""
    return {"REDIS_URL": server.url}


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_same_as_reference(settings: Settings, inputs: Sequence[Any], ref_prefix: str) -> None:
    """Run the reference over ``inputs`` and require the worker's outcome to equal it: every
    offset committed, the same dead letters, the same Redis state, the same records by id."""
    reference = Reference(settings.model_copy(update={"key_prefix": ref_prefix}))
    reference.run(inputs)
    last: dict[int, int] = {}
    for r in inputs:
        last[r.partition] = max(r.offset, last.get(r.partition, -1))
    assert {p: o for p, o in committed(settings).items() if o >= 0} == last
    assert dlq_entries(topic_records(settings, settings.topic_dlq)) == reference.dlq()
    state = dump_state(settings.redis_url, settings.key_prefix, _password(settings))
    expected = dump_state(settings.redis_url, ref_prefix, _password(settings))
    assert expected and state_diff(state, expected) == []
    outputs = topic_records(settings, settings.topic_warnings)
    outputs += topic_records(settings, settings.topic_tiers)
    assert published(outputs) == reference.published()


def _password(settings: Settings) -> str | None:
    secret = settings.redis_password
    return secret.get_secret_value() if secret is not None else None
