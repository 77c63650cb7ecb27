"""Fast constructors of slotted dataclasses: same objects as the normal constructor."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app import alerts, records, tiers, userrecord
from stream_app.model import learner
from stream_app.slots import fast_constructor


@dataclass(frozen=True, slots=True)
class Sample:
    number: int
    text: str
    ratio: float
    items: tuple[int, ...]
    flag: bool | None = None
    tags: frozenset[str] = frozenset()


@dataclass(slots=True)
class Mutable:
    values: list[int]
    note: str = "n"
    extra: dict[str, int] = field(default_factory=dict)
    derived: int = field(default=7, init=False)
    unset: int = field(init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Checked:
    level: int

    def __post_init__(self) -> None:
        if self.level < 0:
            raise ValueError("negative")


@dataclass(frozen=True, slots=True)
class Child(Sample):
    more: str = "m"


def _same(fast: object, slow: object) -> None:
    assert type(fast) is type(slow)
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert pickle.dumps(fast) == pickle.dumps(slow)


samples = st.tuples(
    st.integers(),
    st.text(),
    st.floats(),  # NaN included: the same object in both, so equal through identity
    st.lists(st.integers(), max_size=4).map(tuple),
    st.none() | st.booleans(),
    st.frozensets(st.text(max_size=3), max_size=3),
)


@given(samples)
def test_fast_equals_normal_constructor(values: tuple[Any, ...]) -> None:
    fast, slow = fast_constructor(Sample)(*values), Sample(*values)
    _same(fast, slow)
    assert hash(fast) == hash(slow)


@given(samples, st.text())
def test_fast_equals_normal_constructor_of_subclass(values: tuple[Any, ...], more: str) -> None:
    fast, slow = fast_constructor(Child)(*values, more), Child(*values, more)
    _same(fast, slow)
    assert hash(fast) == hash(slow)


@given(samples)
def test_chosen_fields_take_defaults_for_the_rest(values: tuple[Any, ...]) -> None:
    number, text, ratio, items, _, tags = values
    make = fast_constructor(Sample, "tags", "items", "text", "ratio", "number")
    fast = make(tags, items, text, ratio, number)
    slow = Sample(number, text, ratio, items, tags=tags)
    _same(fast, slow)
    assert hash(fast) == hash(slow)


@given(st.lists(st.integers()), st.text())
def test_mutable_dataclass_and_non_init_fields(values: list[int], note: str) -> None:
    fast, slow = fast_constructor(Mutable)(values, note, {}), Mutable(values, note, {})
    assert fast == slow and repr(fast) == repr(slow) and fast.derived == 7
    with pytest.raises(AttributeError):
        _ = fast.unset  # left unset, as ``__init__`` leaves it
    made = fast_constructor(Mutable, "values")
    first, second = made(values), made(values)
    assert first == Mutable(values) and first.extra is not second.extra  # factory per object


levels = st.integers(0, 3)
times = st.floats(allow_nan=False)
maybe_times = st.none() | times
bins = st.none() | st.tuples(st.integers(0, 254), st.integers(0, 254), st.integers(0, 254))
scores = st.none() | st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
mappings = st.dictionaries(st.text(max_size=3), st.integers(), max_size=3)

# The service's fast constructors, each with the class it stands for and a strategy for
# valid arguments.
SERVICE: list[tuple[Callable[..., Any], type, st.SearchStrategy[tuple[Any, ...]]]] = [
    (
        alerts._observation,
        alerts.RuleObservation,
        st.tuples(maybe_times, times, times, times, maybe_times, maybe_times),
    ),
    (
        alerts._state,
        alerts.WarningState,
        st.tuples(
            levels,
            st.integers(0, 2**32 - 1),
            st.booleans(),
            times,
            st.frozensets(st.integers(1, 3)),
            maybe_times,
        ),
    ),
    (
        alerts._emit,
        alerts.Emit,
        st.tuples(st.sampled_from(["warning", "recovered"]), mappings),
    ),
    (
        alerts.make_signal,
        alerts.Signal,
        st.tuples(
            st.sampled_from(["activity", "tick"]),
            times,
            st.builds(alerts.RuleObservation, maybe_times, times, times, times),
            times,
            times,
            st.lists(st.tuples(st.text(max_size=3), st.none() | times, times), max_size=2),
            st.text(max_size=3),
            st.text(max_size=3),
            st.builds(tiers.TierState, st.none() | st.sampled_from(tiers.LIFECYCLES)),
        ),
    ),
    (
        tiers._tier_state,
        tiers.TierState,
        st.tuples(
            st.none() | st.sampled_from(tiers.LIFECYCLES),
            st.none() | st.sampled_from(tiers.SEGMENTS),
            scores,
            bins,
        ),
    ),
    (
        tiers._sketch,
        tiers.QuantileSketch,
        st.tuples(
            st.just(tiers.SketchLayout(1.0, 2.0, 4)),
            st.tuples(*[st.integers(0, 2**31) for _ in range(4)]),
        ),
    ),
    (userrecord._history_item, userrecord.HistoryItem, st.tuples(levels, times)),
    (
        records._app_event,
        records.AppEvent,
        st.tuples(
            st.text(max_size=3),
            st.text(max_size=3),
            st.text(max_size=3),
            times,
            mappings,
            mappings,
            st.none() | st.integers(-50_400, 50_400),
        ),
    ),
    (
        learner._score,
        learner.Score,
        st.tuples(
            times,
            times,
            st.lists(st.tuples(st.text(max_size=3), times, times), max_size=2),
            st.sampled_from(["prior", "model"]),
            st.text(max_size=3),
        ),
    ),
]


@pytest.mark.parametrize(
    ("make", "cls", "args"), SERVICE, ids=[cls.__name__ for _, cls, _ in SERVICE]
)
@given(data=st.data())
def test_service_constructors_equal_normal_ones(
    make: Callable[..., Any],
    cls: type,
    args: st.SearchStrategy[tuple[Any, ...]],
    data: st.DataObject,
) -> None:
    values = data.draw(args)
    fast, slow = make(*values), cls(*values)
    _same(fast, slow)
    try:
        expected = hash(slow)
    except TypeError:  # a list or dict among the values
        with pytest.raises(TypeError):
            hash(fast)
    else:
        assert hash(fast) == expected


def test_app_event_constructor_equals_normal_one() -> None:
    # As decoded: read-only mappings, which cannot be pickled.
    args = ("e", "u", "login", 5.0, MappingProxyType({"a": 1}), records._EMPTY, 3600)
    fast, slow = records._app_event(*args), records.AppEvent(*args)
    assert fast == slow and repr(fast) == repr(slow)


def test_rfm_sketches_constructor_equals_normal_one() -> None:
    sketch = tiers.QuantileSketch(tiers.SketchLayout(1.0, 2.0, 4), (1, 2, 3, 4))
    _same(tiers._rfm_sketches(sketch, sketch, sketch), tiers.RfmSketches(sketch, sketch, sketch))


def test_record_constructor_equals_normal_one() -> None:
    win, _ = userrecord.windows.apply_event(
        None, records.AppEvent("e", "u", "login", 0.0), userrecord.windows.WindowConfig.social_app()
    )
    args = (
        win,
        alerts.WarningState(),
        tiers.TierState("new"),
        (userrecord.HistoryItem(2, 5.0),),
        7.0,
    )
    fast, slow = userrecord._record(*args), userrecord.UserRecord(*args)
    assert fast == slow and repr(fast) == repr(slow)


def test_signature_names_the_fields_and_docs_are_kept() -> None:
    assert list(inspect.signature(fast_constructor(Sample)).parameters) == [
        "number",
        "text",
        "ratio",
        "items",
        "flag",
        "tags",
    ]
    chosen = fast_constructor(Sample, "text", "number", "ratio", "items")
    assert list(inspect.signature(chosen).parameters) == ["text", "number", "ratio", "items"]
    assert (
        alerts.make_signal.__doc__ is not None and ">>> make_signal" in alerts.make_signal.__doc__
    )
    assert alerts.make_signal.__module__ == "stream_app.alerts"


def test_post_init_is_skipped() -> None:
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)
    assert fast_constructor(Checked)(-1).level == -1


Odd = make_dataclass(
    "Odd",
    ["__fc_obj__", "__fc_new__", "__fc_cls__", "__fc_set_0__"],
    frozen=True,
    slots=True,
)
Odd.__module__ = __name__  # picklable as this module's ``Odd``


def test_fields_named_like_the_generated_locals() -> None:
    _same(fast_constructor(Odd)(1, 2, 3, 4), Odd(1, 2, 3, 4))


def test_rejects_what_is_not_a_slotted_dataclass() -> None:
    class Plain:
        __slots__ = ("x",)

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class OwnNew:
        x: int

        def __new__(cls, *args: Any) -> OwnNew:
            return super().__new__(cls)

    with pytest.raises(TypeError, match="not a dataclass"):
        fast_constructor(Plain)
    with pytest.raises(TypeError, match="not a dataclass"):
        fast_constructor(Sample(1, "", 0.0, ()))  # type: ignore[arg-type]  # an instance
    with pytest.raises(TypeError, match="field 'x' has no slot"):
        fast_constructor(NoSlots)
    with pytest.raises(TypeError, match="own __new__"):
        fast_constructor(OwnNew)


def test_rejects_field_names_it_cannot_take() -> None:
    with pytest.raises(ValueError, match="Sample has no init fields 'nope', 'other'"):
        fast_constructor(Sample, "number", "nope", "text", "ratio", "items", "other")
    with pytest.raises(ValueError, match="no init fields 'derived'"):
        fast_constructor(Mutable, "values", "derived")
    with pytest.raises(ValueError, match="given twice: 'number'"):
        fast_constructor(Sample, "number", "text", "number", "ratio", "items")
    with pytest.raises(ValueError, match="needs field 'ratio'"):
        fast_constructor(Sample, "number", "text", "items")
