"""Prometheus metrics of the churn worker, bundled so every worker owns its own registry.

All metrics live on a registry handed to :meth:`Metrics.create` instead of the process-wide
default one: tests and in-process workers can then build as many independent bundles as they
like without "Duplicated timeseries" errors, and ``/metrics`` shows exactly one worker.

Naming follows the Prometheus conventions: a ``churn_`` prefix, counters end in ``_total``,
durations are in seconds (``_seconds``), timestamps are unix seconds. No label ever carries a
user id: label values come from small, closed sets (event kinds outside the configured set are
folded into ``other``), so the number of series stays bounded however many users there are.

Two latencies are exported because they answer different questions:

* ``churn_warning_latency_seconds`` is wall-clock publish time minus the event's own time
  (``occurred_at``). Live, it is how late a warning reaches the business after the user acted.
  During a replay of historical data it is enormous (years) and mostly lands in ``+Inf``;
  that is expected, not a fault.
* ``churn_processing_latency_seconds`` is publish time minus the moment the worker received
  the record. It measures the worker alone and is meaningful live and in replay alike.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as _Tally
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_KNOWN_KINDS",
    "DEFAULT_SCORERS",
    "DEFAULT_WARNING_LEVELS",
    "OTHER_KIND",
    "Metrics",
    "bounded_kind",
    "render",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type for the ``/metrics`` response body produced by :func:`render`."""

OTHER_KIND = "other"
"""Label value standing in for every event kind outside the known set."""

DEFAULT_KNOWN_KINDS: frozenset[str] = frozenset(
    {
        "session_start", "login", "session_end", "heartbeat", "room_join", "live_view",
        "message_sent", "comment", "like", "follow", "gift_received", "gift_sent", "purchase",
    }
)  # fmt: skip
"""The event kinds of the built-in activity presets; pass the configured map's kinds instead."""
DEFAULT_WARNING_LEVELS: tuple[str, ...] = ("watch", "warning", "critical")
DEFAULT_SCORERS: tuple[str, ...] = ("prior", "model")

_BATCH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_EVENT_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
_BATCH_EVENTS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
_WARNING_SECONDS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0, 604800.0,
)  # fmt: skip
_PROCESSING_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_PROBABILITY = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_REDIS_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


def bounded_kind(kind: str, known_kinds: Iterable[str]) -> str:
    """Return ``kind`` if it is known, else :data:`OTHER_KIND`.

    Event names come from clients, so using them raw as a label would let any app release (or
    a hostile producer) create unbounded series in Prometheus.
    """
    return kind if kind in known_kinds else OTHER_KIND


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for every value, taking each bucket's lock once.

    ``observe`` takes two locks per value (the sum and the value's bucket), about 1.5 us,
    which the worker would pay for every consumed event. Here the values are counted per
    bucket first (the same rule: the first bucket whose upper bound is >= the value) and
    added with one increment per bucket touched. It reads the histogram child's bucket
    bounds and values, which prometheus-client (pinned) keeps in ``_upper_bounds``,
    ``_buckets`` and ``_sum``; without them it falls back to ``observe``.

    >>> from prometheus_client import CollectorRegistry
    >>> h = Histogram("x_seconds", "x", buckets=(0.1, 1.0), registry=CollectorRegistry())
    >>> observe_many(h, [0.05, 0.1, 0.5, 7.0])
    >>> [b.get() for b in h._buckets], h._sum.get()
    ([2.0, 1.0, 1.0], 7.65)
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    cast(Any, histogram)._raise_if_not_observable()  # refuses a labelled parent, as observe()
    tally: _Tally[int] = _Tally()
    added = 0.0
    last = len(bounds)
    for value in values:
        added += value
        i = bisect_left(bounds, value)
        if i < last and value <= bounds[i]:  # NaN falls in no bucket, as with observe()
            tally[i] += 1
    if not tally and not added:
        return
    total.inc(added)
    for i, n in tally.items():
        buckets[i].inc(n)


def render(registry: CollectorRegistry) -> bytes:
    """Serialise ``registry`` in the Prometheus text format for the ``/metrics`` view.

    Kept as a one-line wrapper so the web view does not depend on prometheus_client directly;
    serve it with :data:`CONTENT_TYPE`.
    """
    return generate_latest(registry)


@dataclass(frozen=True, slots=True)
class Metrics:
    """Every metric the worker exports, registered on one registry.

    Frozen so the bundle can be shared by agents without anyone swapping a metric out from
    under the exporter. Labelled series for the known label values are created up front at
    zero, so dashboards and ``rate()``/``increase()`` alerts see them before the first event.
    """

    registry: CollectorRegistry
    known_kinds: frozenset[str]
    scorers: tuple[str, ...]

    events_consumed: Counter
    events_invalid: Counter
    events_late: Counter
    events_duplicate: Counter
    batch_duration: Histogram
    batch_size: Histogram
    event_processing: Histogram
    warning_latency: Histogram
    processing_latency: Histogram
    consumer_lag: Gauge
    warnings_emitted: Counter
    recoveries: Counter
    tier_users: Gauge
    tier_migrations: Counter
    churn_probability: Histogram
    model_roc_auc: Gauge
    model_log_loss: Gauge
    model_active: Gauge
    labels_matured: Counter
    model_drift: Counter
    redis_errors: Counter
    redis_latency: Histogram
    watermark: Gauge
    worker_healthy: Gauge
    partitions_owned: Gauge

    @classmethod
    def create(
        cls,
        registry: CollectorRegistry,
        *,
        known_kinds: Iterable[str] = DEFAULT_KNOWN_KINDS,
        warning_levels: Iterable[str] = DEFAULT_WARNING_LEVELS,
        scorers: Iterable[str] = DEFAULT_SCORERS,
        invalid_reasons: Iterable[str] = (),
        redis_ops: Iterable[str] = (),
    ) -> Metrics:
        """Register the whole bundle on ``registry`` and return it.

        The optional label sets only pre-create zero-valued series; values outside them still
        work (except event kinds, which callers pass through :meth:`kind_label`).
        """
        kinds = frozenset(known_kinds)
        scorer_names = tuple(scorers)
        r = registry
        m = cls(
            registry=r,
            known_kinds=kinds,
            scorers=scorer_names,
            events_consumed=Counter(
                "churn_events_consumed",
                "Records read from the events topic, valid or not, by event kind "
                "(kinds outside the known set, and unparseable records, count as 'other').",
                ["kind"],
                registry=r,
            ),
            events_invalid=Counter(
                "churn_events_invalid",
                "Records rejected by validation and sent to the dead-letter topic, by reason.",
                ["reason"],
                registry=r,
            ),
            events_late=Counter(
                "churn_events_late",
                "Events whose event time was behind the partition watermark by more than the "
                "allowed lateness.",
                registry=r,
            ),
            events_duplicate=Counter(
                "churn_events_duplicate",
                "Events dropped because their event_id had already been processed.",
                registry=r,
            ),
            batch_duration=Histogram(
                "churn_batch_duration_seconds",
                "Wall-clock time to process one batch of records.",
                buckets=_BATCH_SECONDS,
                registry=r,
            ),
            batch_size=Histogram(
                "churn_batch_size_events",
                "Number of records in one processed batch.",
                buckets=_BATCH_EVENTS,
                registry=r,
            ),
            event_processing=Histogram(
                "churn_event_processing_seconds",
                "Wall-clock time spent on one event (validation, window update, scoring).",
                buckets=_EVENT_SECONDS,
                registry=r,
            ),
            warning_latency=Histogram(
                "churn_warning_latency_seconds",
                "Warning publish time minus the triggering event's own time (occurred_at); "
                "huge during historical replay.",
                buckets=_WARNING_SECONDS,
                registry=r,
            ),
            processing_latency=Histogram(
                "churn_processing_latency_seconds",
                "Warning publish time minus the time the worker received the triggering record.",
                buckets=_PROCESSING_SECONDS,
                registry=r,
            ),
            consumer_lag=Gauge(
                "churn_consumer_lag",
                "Records between the partition's high watermark and the committed offset.",
                ["topic", "partition"],
                registry=r,
            ),
            warnings_emitted=Counter(
                "churn_warnings_emitted",
                "Churn warnings published, by warning level.",
                ["level"],
                registry=r,
            ),
            recoveries=Counter(
                "churn_recoveries",
                "Users whose warning was cleared because they became active again, by the "
                "level they recovered from.",
                ["from_level"],
                registry=r,
            ),
            tier_users=Gauge(
                "churn_tier_users",
                "Users currently in each tier, per tiering dimension, on this worker's partitions.",
                ["dimension", "tier"],
                registry=r,
            ),
            tier_migrations=Counter(
                "churn_tier_migrations",
                "Users moving from one tier to another, per tiering dimension.",
                ["dimension", "from_tier", "to_tier"],
                registry=r,
            ),
            churn_probability=Histogram(
                "churn_model_probability",
                "Churn probabilities produced by each scorer.",
                ["scorer"],
                buckets=_PROBABILITY,
                registry=r,
            ),
            model_roc_auc=Gauge(
                "churn_model_roc_auc",
                "Online ROC AUC over matured labels, per scorer (prior baseline or model).",
                ["scorer"],
                registry=r,
            ),
            model_log_loss=Gauge(
                "churn_model_log_loss",
                "Online log loss over matured labels, per scorer.",
                ["scorer"],
                registry=r,
            ),
            model_active=Gauge(
                "churn_model_active",
                "1 for the scorer whose probabilities currently drive warnings, else 0.",
                ["scorer"],
                registry=r,
            ),
            labels_matured=Counter(
                "churn_model_labels_matured",
                "Predictions whose outcome became known and was fed back to the model, by "
                "outcome (churned or retained).",
                ["outcome"],
                registry=r,
            ),
            model_drift=Counter(
                "churn_model_drift",
                "Concept drift detections on the model's error stream.",
                registry=r,
            ),
            redis_errors=Counter(
                "churn_redis_errors",
                "Failed Redis operations, by operation.",
                ["op"],
                registry=r,
            ),
            redis_latency=Histogram(
                "churn_redis_latency_seconds",
                "Round-trip time of Redis operations, by operation.",
                ["op"],
                buckets=_REDIS_SECONDS,
                registry=r,
            ),
            watermark=Gauge(
                "churn_watermark_seconds",
                "Event-time watermark of each owned partition, as unix seconds.",
                ["partition"],
                registry=r,
            ),
            worker_healthy=Gauge(
                "churn_worker_healthy",
                "1 while the worker is consuming and its dependencies answer, else 0.",
                registry=r,
            ),
            partitions_owned=Gauge(
                "churn_partitions_owned",
                "Partitions of the events topic currently assigned to this worker.",
                registry=r,
            ),
        )
        m._prime(warning_levels, invalid_reasons, redis_ops)
        return m

    def _prime(
        self,
        warning_levels: Iterable[str],
        invalid_reasons: Iterable[str],
        redis_ops: Iterable[str],
    ) -> None:
        for kind in (*sorted(self.known_kinds), OTHER_KIND):
            self.events_consumed.labels(kind=kind)
        for level in warning_levels:
            self.warnings_emitted.labels(level=level)
            self.recoveries.labels(from_level=level)
        for scorer in self.scorers:
            self.churn_probability.labels(scorer=scorer)
            self.model_active.labels(scorer=scorer).set(0)
        for outcome in ("churned", "retained"):
            self.labels_matured.labels(outcome=outcome)
        for reason in invalid_reasons:
            self.events_invalid.labels(reason=reason)
        for op in redis_ops:
            self.redis_errors.labels(op=op)
            self.redis_latency.labels(op=op)

    def kind_label(self, kind: str) -> str:
        """Return the label value to use for event kind ``kind`` (see :func:`bounded_kind`)."""
        return bounded_kind(kind, self.known_kinds)

    def count_consumed(self, kind: str, amount: int = 1) -> None:
        """Count consumed records of ``kind`` with the cardinality bound applied."""
        self.events_consumed.labels(kind=self.kind_label(kind)).inc(amount)

    def set_active_scorer(self, scorer: str) -> None:
        """Mark ``scorer`` as the one driving warnings and every other known scorer as idle."""
        for name in {*self.scorers, scorer}:
            self.model_active.labels(scorer=name).set(1 if name == scorer else 0)

    def observe_warning(
        self, level: str, *, published_at: float, occurred_at: float, received_at: float
    ) -> None:
        """Record one published warning and both of its latencies (unix seconds in).

        Negative differences (clock skew between producer and worker) are clamped to zero so
        they do not vanish silently into the lowest bucket as nonsense.
        """
        self.warnings_emitted.labels(level=level).inc()
        self.warning_latency.observe(max(0.0, published_at - occurred_at))
        self.processing_latency.observe(max(0.0, published_at - received_at))

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the per-partition series of a partition this worker no longer owns.

        Without this a revoked partition would keep reporting its last lag and watermark
        forever, and the sum across workers would double count it.
        """
        for collector, labels in (
            (self.consumer_lag, (topic, str(partition))),
            (self.watermark, (str(partition),)),
        ):
            with suppress(KeyError):
                collector.remove(*labels)
