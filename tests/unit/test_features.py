"""Feature vector shape, finiteness and the meaning of the key transforms."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.features import (
    DAY,
    FEATURE_NAMES,
    FeatureConfig,
    _ListView,
    feature_names,
    features,
)

CFG = FeatureConfig(dims=("activity", "spend"), horizons=(7, 28))


def test_default_names_cover_every_dimension() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert "purchases_recency" in FEATURE_NAMES and "recency_gap_ratio" in FEATURE_NAMES


def test_unknown_dimensions_read_as_never_seen() -> None:
    view = _ListView.of([(0.0, "activity", 1.0)])
    x = features(view, 10 * DAY, FeatureConfig())
    assert tuple(x) == FEATURE_NAMES
    assert x["social_7d"] == 0.0 and x["social_recency"] == math.log1p(10.0)


def test_recency_relative_to_own_gap() -> None:
    daily = _ListView.of([(d * DAY, "activity", 1.0) for d in range(10)])
    monthly = _ListView.of([(d * 30 * DAY, "activity", 1.0) for d in range(4)])
    now_daily, now_monthly = 19 * DAY, 100 * DAY
    a, b = features(daily, now_daily, CFG), features(monthly, now_monthly, CFG)
    assert a["recency_days"] == b["recency_days"] == 10.0
    assert a["recency_gap_ratio"] > b["recency_gap_ratio"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 200 * DAY),
            st.sampled_from(["activity", "spend"]),
            st.floats(0, 1e4),
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(0, 400 * DAY),
)
def test_features_are_finite_and_named(events: list[tuple[float, str, float]], lag: float) -> None:
    view = _ListView.of([(0.0, "activity", 1.0), *events])
    x = features(view, view.last_seen + lag, CFG)
    assert tuple(x) == feature_names(CFG)
    assert all(math.isfinite(v) for v in x.values())
    assert 0.0 <= x["recency_share"] <= 1.0
