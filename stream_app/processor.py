"""Orchestration of one batch: decode, load, process, publish, commit. No decisions here.

Order matters for at-least-once with idempotent effects. The state a batch produced is
committed to Redis in one atomic script together with the records it will publish (an
outbox); then the records are published and their delivery awaited; only then is the Kafka
offset acknowledged. A crash before the commit replays the batch from the last committed
state; a crash after it republishes the outbox when the partition is loaded again. Either
way the same records carry the same ids, and nothing is published from state that a privacy
request removed meanwhile (the commit is refused on a changed epoch, before any publishing).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stream_app import records as rec
from stream_app import userrecord
from stream_app.alerts import LEVEL_NAMES
from stream_app.core import Core
from stream_app.engine import BatchResult, Output, PartitionEngine
from stream_app.inspection import describe
from stream_app.metrics import Metrics, observe_many
from stream_app.records import AppEvent, InvalidEvent, OutRecord
from stream_app.settings import Settings
from stream_app.store import StaleEpoch, WindowStore
from stream_app.windows import encode as windows_encode

log = logging.getLogger(__name__)

CE_TYPES = {
    "warning": "dev.churnwarnings.warning.v1",
    "recovered": "dev.churnwarnings.recovered.v1",
    "tier": "dev.churnwarnings.tier_changed.v1",
}
ID_FIELDS = {"warning": "warning_id", "recovered": "recovery_id", "tier": "change_id"}
ROLES = {"warning": "warnings", "recovered": "warnings", "tier": "tiers"}

Send = Callable[[OutRecord], Awaitable[Awaitable[Any]]]
Publish = Callable[[Sequence[OutRecord]], Awaitable[None]]


def per_record(send: Send) -> Publish:
    """A :data:`Publish` over a per-record ``send`` (hands one record to the producer and
    returns its delivery future): every record handed over in order, then every delivery
    awaited."""

    async def publish(out: Sequence[OutRecord]) -> None:
        pending = [await send(record) for record in out]
        if pending:
            await asyncio.gather(*pending)

    return publish


TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    RedisConnectionError,
    RedisTimeoutError,
    KafkaConnectionError,
    KafkaTimeoutError,
    StaleEpoch,
)


class Message(Protocol):
    """The parts of a Kafka message the processor reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


@dataclass
class _Owned:
    """A partition this worker owns: its engine, committed offset and epoch, and a bounded
    write-through copy of the user records it committed (so a batch usually needs no read).

    The copy holds the decoded records (immutable values, so the engine cannot change them)
    with the encoding of their windows, which a record whose windows did not change reuses
    at the next commit.
    """

    engine: PartitionEngine
    offset: int
    lock: asyncio.Lock
    epoch: int = 0
    cache: OrderedDict[str, tuple[userrecord.UserRecord, bytes]] = field(
        default_factory=OrderedDict
    )


class Processor:
    """Owns the engines of the partitions assigned to this worker."""

    def __init__(
        self,
        settings: Settings,
        core: Core,
        store: WindowStore,
        metrics: Metrics,
        publish: Publish,
    ) -> None:
        """``publish`` sends a batch's records, in order, and returns once the broker has
        acknowledged them all (the worker passes :class:`stream_app.publish.BatchPublisher`;
        :func:`per_record` makes one from a per-record send)."""
        self.settings = settings
        self.core = core
        self.store = store
        self.metrics = metrics
        self.publish = publish
        self.owned: dict[tuple[str, int], _Owned] = {}
        #: Called with the new value whenever :attr:`healthy` changes (the worker uses it to
        #: stop waiting for in-flight batches on shutdown while a dependency is down).
        self.on_health: Callable[[bool], None] | None = None
        self._healthy = True
        self._ttl_s = 0  # silent users expire in event time (engine deadlines), not by clock
        self._population_keys: set[str] = set()

    @property
    def healthy(self) -> bool:
        """False from a failed Redis or broker operation until one succeeds again."""
        return self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        if value != self._healthy:
            self._healthy = value
            if self.on_health is not None:
                self.on_health(value)

    async def engine(self, topic: str, partition: int) -> _Owned:
        """The engine of a partition, loaded from its last committed state on first use."""
        key = (topic, partition)
        owned = self.owned.get(key)
        if owned is None:
            snap = await self._redis("load_partition", self.store.load_partition(topic, partition))
            due = await self._redis(
                "due_users", self.store.due_users(topic, partition, float("inf"), 10**9)
            )
            entries = await self._redis("load_labels", self.store.load_labels(topic, partition))
            engine = PartitionEngine(self.core, snap.blob if snap else None, dict(due), entries)
            pending = await self._redis("load_outbox", self.store.load_outbox(topic, partition))
            if pending:
                await self.publish(unpack_outbox(pending))
            owned = self.owned[key] = _Owned(
                engine, snap.offset if snap else -1, asyncio.Lock(), snap.epoch if snap else 0
            )
            self.metrics.partitions_owned.set(len(self.owned))
        return owned

    def revoke(self, topic: str, partition: int) -> None:
        """Forget a partition's in-memory state; its new owner loads it from Redis."""
        self.owned.pop((topic, partition), None)
        self.metrics.partitions_owned.set(len(self.owned))
        self.metrics.forget_partition(topic, partition)
        self._observe_populations()

    async def handle(self, messages: Sequence[Message]) -> None:
        """Process a batch of messages, possibly from several partitions; never give up.

        A dependency fault (Redis or Kafka unreachable) is retried with backoff until it
        passes, the worker reporting unhealthy meanwhile. Any other failure is narrowed to
        the event that causes it, which goes to the dead-letter topic. Either way the
        partition restarts from its last committed state, so nothing is applied twice.

        The partitions of a batch share nothing (engine, users, keys, outbox), so they run
        concurrently: one computes while another waits for its Redis commit or for the
        broker to acknowledge its records.
        """
        by_partition: dict[tuple[str, int], list[Message]] = {}
        for m in messages:
            by_partition.setdefault((m.topic, m.partition), []).append(m)
        parts = sorted(by_partition.items())
        if len(parts) == 1:
            (topic, partition), msgs = parts[0]
            await self._with_retries(topic, partition, msgs)
            return
        await asyncio.gather(*(self._with_retries(t, p, msgs) for (t, p), msgs in parts))

    async def _with_retries(self, topic: str, partition: int, msgs: Sequence[Message]) -> None:
        delay = 0.1
        while True:
            try:
                await self._locked_batch(topic, partition, msgs)
                return
            except TRANSIENT as exc:
                self.healthy = False
                log.warning(
                    "partition %d: %s; retrying in %.1f s", partition, _dependency(exc), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("partition %d: batch failed; isolating the bad event", partition)
                await self._one_by_one(topic, partition, msgs)
                return

    async def _locked_batch(self, topic: str, partition: int, msgs: Sequence[Message]) -> None:
        owned = await self.engine(topic, partition)
        async with owned.lock:
            try:
                await self._partition_batch(topic, partition, owned, msgs)
            except BaseException:
                self.owned.pop((topic, partition), None)
                raise

    async def _one_by_one(self, topic: str, partition: int, msgs: Sequence[Message]) -> None:
        for m in msgs:
            try:
                await self._with_transient_retries(topic, partition, [m])
            except Exception as exc:
                log.exception("partition %d offset %d: event sent to the DLQ", partition, m.offset)
                await self._dead_letter(topic, partition, m, exc)

    async def _with_transient_retries(
        self, topic: str, partition: int, msgs: Sequence[Message]
    ) -> None:
        delay = 0.1
        while True:
            try:
                await self._locked_batch(topic, partition, msgs)
                return
            except TRANSIENT:
                self.healthy = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _dead_letter(self, topic: str, partition: int, m: Message, exc: Exception) -> None:
        """Publish an event the engine cannot process, and step the offset past it."""
        err = rec.InvalidEvent("processing_error", f"{type(exc).__name__}: {exc}"[:400])
        self.metrics.events_invalid.labels(reason=err.reason).inc()
        out = [self._dlq(m, err)]
        owned = await self.engine(topic, partition)
        async with owned.lock:
            result = owned.engine.process((), {})
            await self._commit(owned, topic, partition, m.offset, result, out)
            owned.offset = m.offset
        await self.publish(out)

    async def _partition_batch(
        self, topic: str, partition: int, owned: _Owned, msgs: Sequence[Message]
    ) -> None:
        started = time.perf_counter()
        fresh = [m for m in msgs if m.offset > owned.offset]
        if not fresh:
            return
        events, valid_msgs, out = self._decode(fresh)
        result = await self._run(owned, events)
        out.extend(
            self._dlq(valid_msgs[i], rec.InvalidEvent("late_event", _late(events[i])))
            for i in result.late
        )
        self.metrics.events_late.inc(len(result.late))
        out.extend(self._publishable(result.outputs))
        await self._commit(owned, topic, partition, fresh[-1].offset, result, out)
        owned.offset = fresh[-1].offset
        await self.publish(out)
        self._observe(topic, partition, owned.engine, result, len(fresh), started)
        self._observe_arrivals(fresh)

    def _decode(
        self, msgs: Sequence[Message]
    ) -> tuple[list[AppEvent], list[Message], list[OutRecord]]:
        events: list[AppEvent] = []
        valid: list[Message] = []
        dlq: list[OutRecord] = []
        now = time.time()
        decode = rec.decode_event
        for m in msgs:
            try:
                event = decode(m.value, _headers(m.headers), now=now)
            except InvalidEvent as err:
                self.metrics.events_invalid.labels(reason=err.reason).inc()
                self.metrics.count_consumed("invalid")
                dlq.append(self._dlq(m, err))
                continue
            events.append(event)
            valid.append(m)
        # Counted per kind and batch: a labelled counter costs microseconds per look-up.
        for kind, n in Counter(e.event for e in events).items():
            self.metrics.count_consumed(kind, n)
        return events, valid, dlq

    def _dlq(self, m: Message, err: InvalidEvent) -> OutRecord:
        return rec.dlq_record(
            m.value,
            _headers(m.headers),
            m.key,
            err,
            source_topic=m.topic,
            partition=m.partition,
            offset=m.offset,
        )

    async def _run(self, owned: _Owned, events: Sequence[AppEvent]) -> BatchResult:
        records = await self._load(owned, owned.engine.users_needed(events))
        return owned.engine.process(events, records)

    async def _load(
        self, owned: _Owned, users: set[str]
    ) -> dict[str, userrecord.UserRecord | None]:
        """The records of ``users``: from the partition's cache, the rest in one MGET (and
        into the cache: they are committed state, so the next commit can reuse their
        windows' encoding)."""
        cache = owned.cache
        loaded = {u: cache[u][0] for u in users if u in cache}
        missing = sorted(users - loaded.keys())
        if missing:
            raw = await self._redis("load_users", self.store.load_users(missing))
            cfg = self.core.windows
            for user, blob in raw.items():
                record, win_bytes = userrecord.decode_parts(blob, cfg)
                cache[user] = (record, win_bytes)
                loaded[user] = record
        return dict(loaded)

    def _publishable(self, outputs: Sequence[Output]) -> list[OutRecord]:
        source = f"/{self.settings.app_id}"
        return [
            rec.encode_cloudevent(
                ROLES[o.role],
                CE_TYPES[o.role],
                o.payload,
                key=o.user_id,
                source=source,
                event_id=str(o.payload[ID_FIELDS[o.role]]),
                time=str(o.payload["event_time"]),
            )
            for o in outputs
        ]

    async def _commit(
        self,
        owned: _Owned,
        topic: str,
        partition: int,
        offset: int,
        r: BatchResult,
        out: Sequence[OutRecord],
        *,
        same: bool = False,
    ) -> None:
        engine = owned.engine
        users, windows_bytes = self._encode_users(owned, r.users)
        await self._redis(
            "commit",
            self.store.commit(
                topic,
                partition,
                offset,
                users,
                engine.snapshot(),
                ttl_s=self._ttl_s,
                due=r.due,
                labels=engine.label_changes(),
                same_offset=same,
                epoch=owned.epoch,
                outbox=pack_outbox(out),
            ),
        )
        self._remember(owned, r.users, windows_bytes)

    @staticmethod
    def _encode_users(
        owned: _Owned, changed: dict[str, userrecord.UserRecord | None]
    ) -> tuple[dict[str, bytes | None], dict[str, bytes]]:
        """The changed records' bytes, and their windows' encodings (reused when unchanged)."""
        cache = owned.cache
        blobs: dict[str, bytes | None] = {}
        encoded: dict[str, bytes] = {}
        for user, record in changed.items():
            if record is None:
                blobs[user] = None
                continue
            before = cache.get(user)
            if before is not None and before[0].windows is record.windows:
                win = before[1]
            else:
                win = windows_encode(record.windows)
            encoded[user] = win
            blobs[user] = userrecord.encode(record, win)
        return blobs, encoded

    def _remember(
        self,
        owned: _Owned,
        changed: dict[str, userrecord.UserRecord | None],
        windows_bytes: dict[str, bytes],
    ) -> None:
        cache = owned.cache
        for user, record in changed.items():
            if record is None:
                cache.pop(user, None)
            else:
                cache[user] = (record, windows_bytes[user])
                cache.move_to_end(user)
        while len(cache) > self.settings.user_cache_size:
            cache.popitem(last=False)

    async def _redis(self, op: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            result = await call
        except Exception:
            self.metrics.redis_errors.labels(op=op).inc()
            self.healthy = False
            raise
        self.healthy = True
        self.metrics.redis_latency.labels(op=op).observe(time.perf_counter() - started)
        return result

    def _observe(
        self,
        topic: str,
        partition: int,
        engine: PartitionEngine,
        r: BatchResult,
        n: int,
        started: float,
    ) -> None:
        m = self.metrics
        elapsed = time.perf_counter() - started
        m.batch_duration.observe(elapsed)
        m.batch_size.observe(n)
        m.events_duplicate.inc(r.duplicates)
        m.watermark.labels(partition=str(partition)).set(max(engine.watermark, 0.0))
        now = time.time()
        # Labelled children are looked up once per distinct label set and batch (a look-up
        # costs microseconds, and a backlog publishes several records per event).
        warned: Counter[str] = Counter()
        recovered: Counter[str] = Counter()
        migrated: Counter[tuple[str, str, str]] = Counter()
        latency = m.warning_latency.observe
        for o in r.outputs:
            payload = o.payload
            if o.role == "warning":
                warned[str(payload["level_name"])] += 1
                latency(max(0.0, now - rec.parse_time(str(payload["event_time"]))))
            elif o.role == "recovered":
                recovered[LEVEL_NAMES.get(int(payload["previous_level"]), "none")] += 1
            else:
                migrated[_migration(payload)] += 1
        for level, count in warned.items():
            m.warnings_emitted.labels(level=level).inc(count)
        for previous, count in recovered.items():
            m.recoveries.labels(from_level=previous).inc(count)
        for (dim, before, after), count in migrated.items():
            m.tier_migrations.labels(dimension=dim, from_tier=before, to_tier=after).inc(count)
        if r.scores:
            observe_many(m.churn_probability.labels(scorer=engine.state.scorer.source), r.scores)
        self._observe_model(partition, engine, r)
        if any(o.role == "tier" for o in r.outputs):
            self._observe_populations()

    def _observe_arrivals(self, msgs: Sequence[Message]) -> None:
        """Time from each record's Kafka timestamp (set by its producer, or by the broker
        on log-append-time topics) to the publication of its batch's outputs. Faust gives
        the timestamp in seconds."""
        now = time.time()
        observe_many(
            self.metrics.processing_latency,
            [
                max(0.0, now - float(stamp))
                for m in msgs
                if (stamp := getattr(m, "timestamp", None))
            ],
        )

    def _observe_model(self, partition: int, engine: PartitionEngine, r: BatchResult) -> None:
        m = self.metrics
        scorer = engine.state.scorer
        for churned in r.labels:
            m.labels_matured.labels(outcome="churned" if churned else "retained").inc()
        if r.drift:
            m.model_drift.inc(r.drift)
            log.info("drift detected on partition %d; scoring with %s", partition, scorer.source)
        for source in r.switches:
            log.info(
                "partition %d: scorer switched to %s after %d labels (%s)",
                partition,
                source,
                scorer.n_learned,
                scorer.quality.summary(),
            )
        if r.labels:
            q = scorer.quality
            for source in ("prior", "model"):
                m.model_roc_auc.labels(scorer=source).set(q.auc(source))  # type: ignore[arg-type]
                m.model_log_loss.labels(scorer=source).set(q.log_loss(source))  # type: ignore[arg-type]
        m.set_active_scorer(scorer.source)

    async def sweep(self, until: float) -> None:
        """Advance every owned partition's watermark to ``until`` (live mode: the wall clock
        ages silent users) and publish what their passed deadlines produce."""
        for (topic, partition), owned in list(self.owned.items()):
            async with owned.lock:
                engine = owned.engine
                if until <= engine.watermark:
                    continue
                records = await self._load(owned, engine.users_needed((), until))
                result = engine.process((), records, until=until)
                out = self._publishable(result.outputs)
                await self._commit(owned, topic, partition, owned.offset, result, out, same=True)
                await self.publish(out)
                self._observe(topic, partition, engine, result, 0, time.perf_counter())

    async def store_ok(self) -> bool:
        """Redis answers (health)."""
        try:
            return bool(await self.store.ping())
        except Exception:
            return False

    async def forget(self, user_id: str) -> int:
        """Delete every piece of a user's state, including what this worker holds in memory.

        ``stream-app forget`` deletes the keys in Redis, but a running worker still holds
        the user's pending label snapshots and deadline in its partition engine, and would
        learn from them later. Here the delete runs under the partition's lock (so no batch
        re-commits the user meanwhile) and the partition's engine is then dropped: the next
        batch reloads it from Redis, which no longer has the user. The engine always equals
        its last commit between batches, so nothing else is lost.
        """
        topic = self.settings.topic_events
        key = (topic, partition_of(user_id, self.settings.partitions))
        partitions = [(topic, p) for p in range(self.settings.partitions)]
        owned = self.owned.get(key)
        if owned is None:
            return int(await self.store.forget_user(user_id, partitions))
        async with owned.lock:
            removed = int(await self.store.forget_user(user_id, partitions))
            if self.owned.get(key) is owned:
                del self.owned[key]
        return removed

    async def inspect(self, user_id: str) -> dict[str, Any] | None:
        """One user's windows, features, score with reasons, tiers and warning state."""
        raw = await self.store.load_users([user_id])
        if user_id not in raw:
            return None
        record = userrecord.decode(raw[user_id], self.core.windows)
        topic = self.settings.topic_events
        partition = partition_of(user_id, self.settings.partitions)
        owned = self.owned.get((topic, partition))
        if owned is None:
            snap = await self.store.load_partition(topic, partition)
            engine = PartitionEngine(self.core, snap.blob if snap else None)
        else:
            engine = owned.engine
        return describe(user_id, record, engine)

    def _observe_populations(self) -> None:
        """Tier populations of the partitions this worker owns (Prometheus sums workers)."""
        totals: dict[str, int] = {}
        for owned in self.owned.values():
            for key, n in owned.engine.populations().items():
                totals[key] = totals.get(key, 0) + n
        for key in self._population_keys - totals.keys():
            dim, _, tier = key.partition(":")
            self.metrics.tier_users.labels(dimension=dim, tier=tier).set(0)
        for key, n in totals.items():
            dim, _, tier = key.partition(":")
            self.metrics.tier_users.labels(dimension=dim, tier=tier).set(n)
        self._population_keys = set(totals)


def _migration(change: dict[str, Any]) -> tuple[str, str, str]:
    """The ``tier_migrations`` labels of a tier change: dimension, from, to."""
    return str(change["dimension"]), str(change["from"] or "none"), str(change["to"])


def _dependency(exc: BaseException) -> str:
    """An operator-readable cause: which dependency failed, and how (never a secret: redis-py
    and aiokafka error messages carry no passwords)."""
    module = type(exc).__module__
    name = "Redis" if module.startswith("redis") else "Kafka" if "kafka" in module else "I/O"
    return f"{name} unavailable ({type(exc).__name__}: {exc})"


def _headers(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(k), bytes(v) if v is not None else b"") for k, v in items]


def _late(event: AppEvent) -> str:
    return f"event {event.event_id} at {event.occurred_at} is beyond the allowed lateness"


def partition_of(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner puts a user's events in."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def pack_outbox(records: Sequence[OutRecord]) -> dict[str, bytes]:
    """The records a batch publishes, keyed ``user NUL index`` so that a privacy request
    can remove one user's records and a reload can publish the rest in order."""
    return {
        f"{(r.key or b'').decode(errors='replace')}\x00{i}": pickle.dumps(
            (r.topic_role, r.key, r.value, list(r.headers)), protocol=5
        )
        for i, r in enumerate(records)
    }


def unpack_outbox(entries: Sequence[bytes]) -> list[OutRecord]:
    """Inverse of :func:`pack_outbox` (entries in publishing order).

    >>> r = OutRecord("warnings", b"u", b"{}", [("ce_id", b"1")])
    >>> unpack_outbox(list(pack_outbox([r]).values())) == [r]
    True
    """
    rows = [pickle.loads(e) for e in entries]
    return [OutRecord(role, key, value, list(headers)) for role, key, value, headers in rows]
