"""Latency at a steady event rate: produce time to the worker's commit, and to warnings.

Run from a checkout::

    python -m bench.latency --rate 1000 --events 60000

One private embedded stack (live clock, as in production), one ``stream-app worker`` that
owns every partition before the first event is sent, and a paced producer in this process
that sends ``--events`` events at ``--rate`` events/s (after ``--warmup`` seconds at the same
rate that are not counted). Events are the simulated social app's, re-stamped: each gets a
unique ``event_id`` and ``occurred_at`` = the wall time at which it is handed to the
producer (``acks=1``, ``linger_ms=--linger-ms``: 5 ms by default, the Apache Kafka client's
default since 4.0; ``--linger-ms 0`` sends every event in a request of its own), which is also
recorded with the record's partition and offset. The linger is part of the measured latency:
an event waits up to that long in the producer before it is sent.

Why the linger matters on the embedded broker (Tansu 0.6, memory storage): it stores every
produced batch as one object, and each fetch that returns data costs it CPU in proportion
to the number of batches stored in each partition fetched (list offsets too), while produce,
empty fetches and offset commits cost the same at any log size. With one record per request
the stored batches grow by the event rate and the worker's fetches get slower through the
run; batching a few milliseconds of events per request slows that growth several-fold.

Measured, all on one machine and one clock:

* **per-event latency** (the headline): from the moment an event is handed to the producer to
  the moment the worker's commit of that offset is visible in Redis, for every event, warning
  or not. Redis is polled every ``--poll`` seconds (offset fields only), so each figure is
  rounded *up* by at most one poll interval. The commit holds the batch's outputs (warnings,
  tier changes, dead letters) in its outbox; publishing them follows it, so the time to
  "its warnings are on the topic" is this plus one produce round trip, which the worker's
  ``churn_processing_latency_seconds`` below includes.
* **warning latency**, when the run produces any activity-triggered warning: a warning's
  ``event_time`` is the onset that triggered it, so a warning whose user and ``event_time``
  match a produced event (to the millisecond) is matched to that event, and its latency is
  the warning record's Kafka timestamp (set by the worker's producer) minus the event's
  produce time; also the time a subscriber in this process received it. Fresh users rarely
  cross the level-1 drop threshold within a short run, so the count may be small or zero.
* **the worker's own histograms** from ``/metrics`` at the end (bucket upper bounds, as
  Prometheus would report them): ``churn_batch_duration_seconds``,
  ``churn_processing_latency_seconds`` (from each record's Kafka timestamp, which the
  producer sets when the event is handed to it, to the moment the batch's outputs were
  acknowledged by the broker: "event produced -> its warnings are on the topic" for every
  event, warm-up included) and ``churn_warning_latency_seconds`` (publish time minus
  ``occurred_at``, here the produce time).

The goal is met when both the per-event p99 and the bucket holding the p99 of
``churn_processing_latency_seconds`` are within 100 ms.

Prints one JSON object on stdout; everything started is stopped by PID on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import (
    Proc,
    bench_stack,
    fresh,
    log,
    machine,
    simulate_events,
    terminate_on_sigterm,
    workdir,
    worker,
)
from stream_app import stack
from stream_app.records import parse_time
from stream_app.settings import Settings


def stamp(t: float) -> str:
    """RFC 3339 in UTC with milliseconds, as the service writes them."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def quantiles(values: list[float]) -> dict[str, Any]:
    """Count, p50, p90, p99, max and mean of a list of seconds, in milliseconds."""
    if not values:
        return {"count": 0}
    xs = sorted(values)

    def q(p: float) -> float:
        return round(xs[max(0, math.ceil(p * len(xs)) - 1)] * 1000, 1)

    return {
        "count": len(xs),
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "max_ms": round(xs[-1] * 1000, 1),
        "mean_ms": round(sum(xs) / len(xs) * 1000, 1),
    }


def histogram(text: str, name: str) -> dict[str, Any]:
    """p50/p99 of a Prometheus histogram from exposition text (bucket upper bounds)."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, Any] = {"count": int(total)}
    for label, p in (("p50_le_s", 0.5), ("p99_le_s", 0.99)):
        if total:
            bound = next(b for b, c in buckets if c >= p * total)
            out[label] = None if math.isinf(bound) else bound
    return out


class Run:
    """The paced producer, the Redis offset poller and the warning subscriber of one run."""

    def __init__(self, settings: Settings, events: list[dict[str, Any]], args: Any) -> None:
        self.settings = settings
        self.events = events
        self.args = args
        self.warmup = int(args.rate * args.warmup)
        self.sent: dict[int, tuple[int, int, float]] = {}  # index -> partition, offset, time
        self.by_user: dict[str, dict[str, float]] = defaultdict(dict)
        self.commits: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        self.warnings: list[dict[str, Any]] = []
        self.behind: list[float] = []
        self.failures: list[BaseException] = []
        self.produced = False

    async def produce(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks=1,
            enable_idempotence=False,
            linger_ms=self.args.linger_ms,
        )
        await producer.start()
        try:
            total = len(self.events)
            start = time.monotonic()
            i = 0
            while i < total:
                due = min(total, int((time.monotonic() - start) * self.args.rate) + 1)
                while i < due:
                    late = time.monotonic() - (start + i / self.args.rate)
                    self.behind.append(late)
                    await self._send(producer, i)
                    i += 1
                wait = start + i / self.args.rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            await producer.flush()
        finally:
            await producer.stop()
            self.produced = True

    async def _send(self, producer: Any, i: int) -> None:
        event = dict(self.events[i])
        now = time.time()
        event["event_id"] = f"lat-{i:08d}"
        event["occurred_at"] = stamp(now)
        user = str(event["user_id"])
        self.by_user[user][event["occurred_at"]] = now
        future = await producer.send(
            self.settings.topic_events, orjson.dumps(event), key=user.encode()
        )

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                self.failures.append(f.exception() or RuntimeError("cancelled"))
                return
            meta = f.result()
            self.sent[i] = (meta.partition, meta.offset, now)

        future.add_done_callback(done)

    async def poll_offsets(self, partitions: list[int]) -> None:
        """Record when each committed offset first shows up in Redis."""
        client = Redis.from_url(self.settings.redis_url)
        prefix, topic = self.settings.key_prefix, self.settings.topic_events
        keys = {p: f"{prefix}p:{{{topic}:{p}}}" for p in partitions}
        last = dict.fromkeys(partitions, -1)
        try:
            while True:
                pipe = client.pipeline(transaction=False)
                for key in keys.values():
                    pipe.hget(key, "offset")
                values = await pipe.execute()
                now = time.time()
                for p, value in zip(keys, values, strict=True):
                    if value is not None and int(value) > last[p]:
                        last[p] = int(value)
                        offsets, times = self.commits[p]
                        offsets.append(last[p])
                        times.append(now)
                if self.produced and len(self.sent) == len(self.events) and self._all_done(last):
                    return
                await asyncio.sleep(self.args.poll)
        finally:
            await client.aclose()

    def _all_done(self, last: dict[int, int]) -> bool:
        ends: dict[int, int] = {}
        for p, off, _ in self.sent.values():
            ends[p] = max(off, ends.get(p, -1))
        return all(last.get(p, -1) >= off for p, off in ends.items())

    async def subscribe(self) -> None:
        """Read the warnings topic from the start; note each warning and when it arrived."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        topic = self.settings.topic_warnings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set(range(self.settings.partitions))
            consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
            while True:
                batches = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for records in batches.values():
                    for r in records:
                        body = orjson.loads(r.value)
                        if "level" in body:
                            self.warnings.append(
                                {
                                    "user_id": body["user_id"],
                                    "level": body["level"],
                                    "event_time": body["event_time"],
                                    "record_ts": r.timestamp / 1000,
                                    "received": now,
                                }
                            )
        finally:
            await consumer.stop()

    def per_event(self) -> list[float]:
        """Produce-to-commit seconds of every event after the warm-up, in send order."""
        out = []
        for i, (p, off, t) in sorted(self.sent.items()):
            if i < self.warmup:
                continue
            offsets, times = self.commits[p]
            k = bisect.bisect_left(offsets, off)
            if k < len(offsets):
                out.append(times[k] - t)
        return out

    def matched_warnings(self) -> tuple[list[float], list[float], int]:
        """Topic and subscriber latencies of warnings matched to a produced event."""
        first_counted = min(
            (t for i, (_, _, t) in self.sent.items() if i >= self.warmup), default=0
        )
        to_topic, to_subscriber, level1 = [], [], 0
        for w in self.warnings:
            produced = self.by_user.get(w["user_id"], {}).get(w["event_time"])
            if produced is None:
                try:
                    at = parse_time(w["event_time"])
                except ValueError:
                    continue
                produced = next(
                    (
                        t
                        for s, t in self.by_user.get(w["user_id"], {}).items()
                        if abs(t - at) < 1e-3
                    ),
                    None,
                )
            if produced is None or produced < first_counted:
                continue
            level1 += w["level"] == 1
            to_topic.append(w["record_ts"] - produced)
            to_subscriber.append(w["received"] - produced)
        return to_topic, to_subscriber, level1


async def measure(settings: Settings, events: list[dict[str, Any]], args: Any, proc: Proc) -> Run:
    run = Run(settings, events, args)
    partitions = list(range(settings.partitions))
    subscriber = asyncio.create_task(run.subscribe())
    poller = asyncio.create_task(run.poll_offsets(partitions))
    producer = asyncio.create_task(run.produce())
    try:
        await producer
        log(f"produced {len(run.sent)} events; waiting for the worker to commit them")
        await asyncio.wait_for(poller, timeout=args.drain_timeout)
        await asyncio.sleep(1.0)  # late warnings reach the subscriber
    finally:
        for task in (subscriber, poller, producer):
            task.cancel()
        for task in (subscriber, poller, producer):
            with contextlib.suppress(BaseException):
                await task
    if run.failures:
        raise RuntimeError(f"{len(run.failures)} events not delivered: {run.failures[0]!r}")
    return run


async def prime(settings: Settings, events: list[dict[str, Any]], timeout: float = 120.0) -> int:
    """Send a few events until every partition has one; wait until the worker committed all.

    The worker only takes a partition on its first record, so this makes sure the consumer
    group has settled and every partition is loaded before the measured run starts.
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1)
    await producer.start()
    seen: set[int] = set()
    try:
        for i, base in enumerate(events):
            event = {**base, "event_id": f"prime-{i:06d}", "occurred_at": stamp(time.time())}
            meta = await (
                await producer.send(
                    settings.topic_events,
                    orjson.dumps(event),
                    key=str(event["user_id"]).encode(),
                )
            )
            seen.add(meta.partition)
            if len(seen) >= settings.partitions:
                break
    finally:
        await producer.stop()
    client = Redis.from_url(settings.redis_url)
    prefix, topic = settings.key_prefix, settings.topic_events
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            values = [
                await client.hget(f"{prefix}p:{{{topic}:{p}}}", "offset")
                for p in range(settings.partitions)
            ]
            if all(v is not None for v in values):
                return i + 1
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()
    raise TimeoutError(f"worker did not commit on every partition in {timeout:.0f} s")


def scrape(url: str, tries: int = 5) -> str:
    """The worker's /metrics text ("" when it does not answer; the machine may be busy)."""
    import urllib.request

    for _ in range(tries):
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=15) as resp:
            return str(resp.read().decode())
        time.sleep(1)
    log(f"no answer from {url}")
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--events", type=int, default=60_000, help="events measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds sent, not measured")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=5,
        help="producer linger, ms (counted in the latency; 0 = one event per request)",
    )
    parser.add_argument("--poll", type=float, default=0.005, help="Redis offset poll, s")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    terminate_on_sigterm()
    total = args.events + int(args.rate * args.warmup)
    result: dict[str, Any] = {"benchmark": "latency", "machine": machine()}
    with workdir(args.keep) as work, bench_stack(work, args.partitions, clock="live") as base:
        path = simulate_events(work, total, args.seed)
        with path.open("rb") as f:
            events = [orjson.loads(line) for _, line in zip(range(total), f, strict=False)]
        token = uuid.uuid4().hex[:6]
        run_settings = fresh(
            base,
            "latency",
            topic_events=f"lat-{token}.app.events",
            topic_dlq=f"lat-{token}.app.events.dlq",
            topic_warnings=f"lat-{token}.churn.warnings",
            topic_tiers=f"lat-{token}.user.tiers",
        )
        stack.create_topics(run_settings)
        with worker(run_settings, work / "latency-worker.log") as proc:
            primed = asyncio.run(prime(run_settings, events))
            log(f"worker committed {primed} priming events on every partition")
            log(f"sending {total} events at {args.rate:g}/s")
            run = asyncio.run(measure(run_settings, events, args, proc))
            metrics_text = scrape(f"{proc.url}/metrics")
    behind = sorted(run.behind[run.warmup :])
    to_topic, to_subscriber, level1 = run.matched_warnings()
    latencies = run.per_event()
    per_event = quantiles(latencies)
    tenth = max(1, len(latencies) // 10)
    by_tenth = [
        quantiles(latencies[k : k + tenth]).get("p50_ms") for k in range(0, tenth * 10, tenth)
    ]
    worker_metrics = {
        name: histogram(metrics_text, name)
        for name in (
            "churn_batch_duration_seconds",
            "churn_processing_latency_seconds",
            "churn_warning_latency_seconds",
        )
    }
    published = worker_metrics["churn_processing_latency_seconds"]
    result.update(
        rate=args.rate,
        events_measured=args.events,
        warmup_s=args.warmup,
        partitions=args.partitions,
        producer_linger_ms=args.linger_ms,
        poll_s=args.poll,
        producer_behind_schedule_p99_ms=round(behind[int(0.99 * (len(behind) - 1))] * 1000, 1)
        if behind
        else None,
        per_event_produce_to_commit=per_event,
        per_event_p50_ms_by_tenth_of_run=by_tenth,
        warnings_seen=len(run.warnings),
        warnings_matched_to_an_event=len(to_topic),
        warnings_matched_level1=level1,
        warning_produce_to_topic=quantiles(to_topic),
        warning_produce_to_subscriber=quantiles(to_subscriber),
        worker_metrics=worker_metrics,
        goal="p99 < 100 ms at 1,000 events/s (per-event produce to commit, and produce to "
        "outputs acknowledged from the worker's histogram)",
        goal_met=per_event.get("p99_ms", math.inf) < 100
        and (published.get("p99_le_s") or math.inf) <= 0.1
        and args.rate >= 1000,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
