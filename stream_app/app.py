"""The Faust app: topics, one agent, a timer and web views. Orchestration only.

Everything that decides something lives in the pure core (:mod:`stream_app.engine` and the
modules it calls); the agent hands batches to :class:`stream_app.processor.Processor` and the
views read from it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any, cast

import faust
from prometheus_client import CollectorRegistry

from stream_app import web
from stream_app.core import build_core
from stream_app.faust_batches import lag_exceeds, take_events_adaptive
from stream_app.faust_fastpath import install_fast_drain
from stream_app.kafka_clients import faust_credentials, redis_client
from stream_app.metrics import Metrics
from stream_app.processor import Processor, per_record
from stream_app.publish import BatchPublisher
from stream_app.records import REASONS, OutRecord
from stream_app.settings import Settings
from stream_app.store import RedisWindowStore

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """Build the worker's Faust app from the settings."""
    datadir = settings.embedded_run_dir / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_disable_leader=True,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=8,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        producer_acks=-1,
        autodiscover=False,
        datadir=str(datadir),
    )
    if settings.faust_fast_drain:
        install_fast_drain(app)
    events = app.topic(settings.topic_events, value_type=bytes, key_type=bytes)
    registry = CollectorRegistry()
    core = build_core(settings)
    metrics = Metrics.create(
        registry,
        known_kinds=frozenset(core.windows.dimensions),
        invalid_reasons=sorted(REASONS),
        redis_ops=(
            "load_partition",
            "due_users",
            "load_labels",
            "load_outbox",
            "load_users",
            "commit",
            "ping",
        ),
    )
    store = RedisWindowStore(redis_client(settings), settings.key_prefix)

    topic_names = {
        "dlq": settings.topic_dlq,
        "warnings": settings.topic_warnings,
        "tiers": settings.topic_tiers,
    }

    async def send(record: OutRecord) -> Any:
        # Only where the aiokafka producer cannot be reached (see below): one record straight
        # to Faust's producer. Faust's ``Topic.send`` wraps every record in channel, event and
        # future objects, which on a backlog of tier changes cost more than the rest.
        return await app.producer.send(
            topic_names[record.topic_role],
            record.key,
            record.value,
            partition=None,
            timestamp=None,
            headers=record.headers,
        )

    producer = aiokafka_producer(app)
    publish = (
        per_record(send) if producer is None else BatchPublisher(producer, topic_names).publish
    )
    processor = Processor(settings, core, store, metrics, publish)

    def on_health(healthy: bool) -> None:
        # On shutdown and rebalance Faust waits until every event handed to an agent is
        # acked (``stream_wait_empty``). While Redis or the broker is down the batch in hand
        # is retried until it can commit, so that wait would never end and SIGTERM would go
        # unanswered. Meanwhile the worker stops without waiting: the batch's events are not
        # acked (see faust_batches), their offsets stay uncommitted, and whoever owns the
        # partition next processes them again from the state committed in Redis.
        with warnings.catch_warnings():  # Faust warns of any setting changed after start
            warnings.simplefilter("ignore")
            app.conf.stream_wait_empty = healthy

    processor.on_health = on_health

    @app.agent(events, name="churn-score")
    async def score(stream: Any) -> None:
        batches = take_events_adaptive(
            stream,
            settings.batch_size,
            settings.batch_window_s,
            settings.batch_backlog_window_s,
            lambda events: lag_exceeds(app.consumer, events, settings.batch_size),
        )
        async for batch in batches:
            messages = [event.message for event in batch]
            await processor.handle(messages)
            report_lag(app, metrics, messages)

    @app.timer(settings.sweep_interval_s)  # type: ignore[untyped-decorator]
    async def sweep() -> None:
        if settings.clock == "live":
            await processor.sweep(time.time() - settings.live_clock_slack_s)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        shorten_fetch_wait(app, settings.kafka_fetch_max_wait_ms)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        for tp in revoked:
            processor.revoke(tp.topic, tp.partition)

    web.register(app, processor, registry, settings)
    return app


def report_lag(app: faust.App, metrics: Metrics, messages: list[Any]) -> None:
    """Consumer lag per partition: the high-water mark minus the next offset to process."""
    from faust.types import TP

    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(m.topic, m.partition)] = max(m.offset, last.get((m.topic, m.partition), -1))
    for (topic, partition), offset in last.items():
        highwater = app.consumer.highwater(TP(topic, partition))
        if highwater is not None:
            lag = max(0, int(highwater) - offset - 1)
            metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)


def aiokafka_producer(app: faust.App) -> Callable[[], Any] | None:
    """What returns the aiokafka producer under Faust's, for its batch API.

    The accessor is specific to the pinned faust-streaming; without it the worker says so
    and publishes record by record through Faust's producer.
    """
    producer: Any = app.producer
    accessor = getattr(producer, "_ensure_producer", None)
    if not callable(accessor):
        log.warning("cannot reach the aiokafka producer on this Faust version; no batching")
        return None
    return cast(Callable[[], Any], accessor)


def shorten_fetch_wait(app: faust.App, wait_ms: int) -> None:
    """Apply ``kafka_fetch_max_wait_ms`` to Faust's consumer.

    faust-streaming 0.15.3 creates its aiokafka consumer with a fixed 1.5 s fetch wait; a
    broker that holds a fetch until that wait runs out then delays every event by up to
    1.5 s. The attribute path is specific to the pinned versions; when it is not there the
    worker says so and runs with Faust's default.
    """
    try:
        consumer: Any = app.consumer
        fetcher = consumer._thread._ensure_consumer()._fetcher
        fetcher._fetch_max_wait_ms = wait_ms
    except AttributeError:
        log.warning("cannot set the fetch wait on this Faust version; keeping its default")
