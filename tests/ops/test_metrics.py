"""The metrics bundle: independent registries, Prometheus naming, bounded label sets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from stream_app.metrics import OTHER_KIND, Metrics, bounded_kind, observe_many, render

FORBIDDEN_LABELS = {"user", "user_id", "userid", "customer", "customer_id", "event_id"}
REQUIRED = {
    "churn_events_consumed_total": {"kind"},
    "churn_events_invalid_total": {"reason"},
    "churn_events_late_total": set(),
    "churn_events_duplicate_total": set(),
    "churn_batch_duration_seconds": set(),
    "churn_batch_size_events": set(),
    "churn_event_processing_seconds": set(),
    "churn_warning_latency_seconds": set(),
    "churn_processing_latency_seconds": set(),
    "churn_consumer_lag": {"topic", "partition"},
    "churn_warnings_emitted_total": {"level"},
    "churn_recoveries_total": {"from_level"},
    "churn_tier_users": {"dimension", "tier"},
    "churn_tier_migrations_total": {"dimension", "from_tier", "to_tier"},
    "churn_model_probability": {"scorer"},
    "churn_model_roc_auc": {"scorer"},
    "churn_model_log_loss": {"scorer"},
    "churn_model_active": {"scorer"},
    "churn_model_labels_matured_total": {"outcome"},
    "churn_model_drift_total": set(),
    "churn_redis_errors_total": {"op"},
    "churn_redis_latency_seconds": {"op"},
    "churn_watermark_seconds": {"partition"},
    "churn_worker_healthy": set(),
    "churn_partitions_owned": set(),
}
DURATION_WORDS = ("duration", "latency", "processing", "time")


def _collectors(m: Metrics) -> list[Counter | Gauge | Histogram]:
    return [v for v in _fields(m) if isinstance(v, Counter | Gauge | Histogram)]


def _fields(m: Metrics) -> list[object]:
    return [getattr(m, name) for name in m.__dataclass_fields__]


def _exposed_name(c: Counter | Gauge | Histogram) -> str:
    name: str = c._name
    return f"{name}_total" if isinstance(c, Counter) else name


def test_create_twice_on_fresh_registries_shares_no_state() -> None:
    a = Metrics.create(CollectorRegistry())
    b = Metrics.create(CollectorRegistry())
    a.events_late.inc(3)
    assert a.registry.get_sample_value("churn_events_late_total") == 3
    assert b.registry.get_sample_value("churn_events_late_total") == 0


def test_create_twice_on_same_registry_is_refused() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics.create(registry)


def test_every_required_metric_is_exposed_with_its_labels() -> None:
    m = Metrics.create(CollectorRegistry())
    exposed = {_exposed_name(c): set(c._labelnames) for c in _collectors(m)}
    assert exposed == REQUIRED


def test_names_follow_prometheus_conventions() -> None:
    m = Metrics.create(CollectorRegistry())
    for c in _collectors(m):
        name = _exposed_name(c)
        labels = set(c._labelnames)
        assert re.fullmatch(r"churn_[a-z][a-z0-9_]*", name), name
        if isinstance(c, Counter):
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), f"only counters end in _total: {name}"
        if any(word in name for word in DURATION_WORDS):
            assert name.endswith("_seconds"), f"durations are in seconds: {name}"
        for unit in ("_ms", "_milliseconds", "_minutes", "_hours", "_days"):
            assert unit not in name, f"use base units: {name}"
        assert not labels & FORBIDDEN_LABELS, f"{name} has a per-user label: {labels}"


def test_rendered_exposition_parses_and_matches_conventions() -> None:
    m = Metrics.create(CollectorRegistry())
    m.count_consumed("purchase")
    m.observe_warning("high", published_at=100.0, occurred_at=40.0, received_at=99.5)
    body = render(m.registry)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for family in families.values():
        if family.type == "counter":
            assert any(s.name.endswith("_total") for s in family.samples) or not family.samples
        for sample in family.samples:
            assert not set(sample.labels) & FORBIDDEN_LABELS
    assert m.registry.get_sample_value("churn_warnings_emitted_total", {"level": "high"}) == 1
    assert m.registry.get_sample_value("churn_warning_latency_seconds_sum") == 60.0
    assert m.registry.get_sample_value("churn_processing_latency_seconds_sum") == 0.5


def test_unknown_kinds_are_folded_into_other() -> None:
    m = Metrics.create(CollectorRegistry(), known_kinds={"purchase"})
    for i in range(50):
        m.count_consumed(f"made_up_{i}")
    m.count_consumed("purchase", 2)
    samples = [
        s
        for f in m.registry.collect()
        if f.name == "churn_events_consumed"
        for s in f.samples
        if s.name.endswith("_total")
    ]
    assert {s.labels["kind"]: s.value for s in samples} == {"purchase": 2, OTHER_KIND: 50}
    assert bounded_kind("purchase", {"purchase"}) == "purchase"
    assert bounded_kind("x", frozenset()) == OTHER_KIND


def test_known_label_values_exist_at_zero_before_any_event() -> None:
    m = Metrics.create(
        CollectorRegistry(),
        warning_levels=("low", "high"),
        scorers=("prior", "model"),
        invalid_reasons=("bad_json",),
        redis_ops=("get",),
    )
    get = m.registry.get_sample_value
    assert get("churn_warnings_emitted_total", {"level": "low"}) == 0
    assert get("churn_recoveries_total", {"from_level": "high"}) == 0
    assert get("churn_model_active", {"scorer": "model"}) == 0
    assert get("churn_events_invalid_total", {"reason": "bad_json"}) == 0
    assert get("churn_redis_errors_total", {"op": "get"}) == 0
    assert get("churn_events_consumed_total", {"kind": OTHER_KIND}) == 0


def test_active_scorer_is_exclusive() -> None:
    m = Metrics.create(CollectorRegistry())
    m.set_active_scorer("model")
    m.set_active_scorer("prior")
    get = m.registry.get_sample_value
    assert get("churn_model_active", {"scorer": "prior"}) == 1
    assert get("churn_model_active", {"scorer": "model"}) == 0


def test_forgetting_a_partition_removes_its_series() -> None:
    m = Metrics.create(CollectorRegistry())
    m.consumer_lag.labels(topic="app.events", partition="1").set(5)
    m.watermark.labels(partition="1").set(1.7e9)
    m.forget_partition("app.events", 1)
    m.forget_partition("app.events", 1)
    assert m.registry.get_sample_value("churn_consumer_lag", {"topic": "app.events"}) is None
    assert b"churn_watermark_seconds{" not in render(m.registry)


@given(
    st.lists(
        st.one_of(
            st.floats(-1.0, 100.0, allow_nan=False),
            st.sampled_from([0.0, 0.005, 0.01, 0.1, 1.0, 2.5, float("inf")]),
        ),
        max_size=50,
    )
)
def test_observe_many_equals_observing_one_by_one(values: list[float]) -> None:
    """Batched observation gives the exposition one ``observe`` per value gives (sums
    compared to rounding: they are added in another order)."""
    one, many = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.01, 0.1, 1.0, 2.5)
    h1 = Histogram("lat_seconds", "x", ["scorer"], buckets=buckets, registry=one)
    h2 = Histogram("lat_seconds", "x", ["scorer"], buckets=buckets, registry=many)
    child = h1.labels(scorer="prior")
    for v in values:
        child.observe(v)
    observe_many(h2.labels(scorer="prior"), values)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    a, b = samples(one), samples(many)
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_observe_many_on_a_labelled_parent_is_refused_like_observe() -> None:
    h = Histogram("lat_seconds", "x", ["scorer"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        h.observe(1.0)
    with pytest.raises(ValueError):
        observe_many(h, [1.0])
