"""The published schemas: well-formed, illustrated by valid examples, and strict where it counts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema_rs import ValidationError

from stream_app.records import (
    OUTPUT_TYPES,
    SCHEMA_BASE,
    InvalidEvent,
    SchemaViolation,
    _fast_app_event_check,
    decode_event,
    load_schema,
    validator,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NAMES = sorted(p.name.removesuffix(".json") for p in SCHEMAS.glob("*.json"))
NOW = 1_800_000_000.0


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / "examples" / f"{name}.json").read_text())
    return loaded


def test_the_four_contract_schemas_exist() -> None:
    expected = {"app_event.v1", "churn_warning.v1", "user_recovered.v1", "tier_change.v1"}
    assert set(NAMES) == expected
    assert set(OUTPUT_TYPES.values()) <= expected


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{SCHEMA_BASE}{name}.json"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("name", NAMES)
def test_example_validates(name: str) -> None:
    validator(name)(example(name))


def test_structured_cloudevent_example_decodes_like_the_plain_example() -> None:
    raw = (SCHEMAS / "examples" / "app_event.v1.cloudevent.json").read_bytes()
    structured = decode_event(raw, [("content-type", b"application/cloudevents+json")], now=NOW)
    plain = decode_event(json.dumps(example("app_event.v1")).encode(), None, now=NOW)
    assert structured == plain


# --- hand-built output records -------------------------------------------------------------


def warning(**changes: Any) -> dict[str, Any]:
    doc = {
        "warning_id": "w-u7-1-1",
        "user_id": "u7",
        "level": 1,
        "level_name": "watch",
        "previous_level": 0,
        "episode": 1,
        "churn_probability": 0.42,
        "percentile": 80,
        "triggers": {
            "rules": [{"rule": "no_login", "threshold": 7, "observed": 9, "unit": "days"}],
            "model": None,
        },
        "reasons": [],
        "tiers": {"lifecycle": "growing", "value_segment": "low", "rfm": {"r": 3, "f": 2, "m": 1}},
        "suggested_action": {"code": "nudge", "text": "Send a reminder.", "channel": "push"},
        "holdout": True,
        "event_time": "2024-05-06T13:15:02Z",
        "emitted_at": "2024-05-06T13:15:03.004+00:00",
        "model_version": "rules-only",
        "source": "rules",
    }
    return {**doc, **changes}


def recovery(**changes: Any) -> dict[str, Any]:
    doc = {
        "recovery_id": "r-u7-1",
        "user_id": "u7",
        "episode": 1,
        "previous_level": 3,
        "episode_started_at": "2024-05-01T00:00:00Z",
        "event_time": "2024-05-02T00:00:00Z",
        "episode_duration_s": 86_400,
        "holdout": False,
        "model_version": "m1",
    }
    return {**doc, **changes}


def tier(**changes: Any) -> dict[str, Any]:
    doc = {
        "change_id": "t-u7-value-1",
        "user_id": "u7",
        "dimension": "value",
        "from": None,
        "to": "vip",
        "event_time": "2024-05-02T00:00:00Z",
        "reason": "first_assignment",
    }
    return {**doc, **changes}


VALID = [
    ("churn_warning.v1", warning()),
    ("churn_warning.v1", warning(level=3, level_name="critical", previous_level=2)),
    (
        "churn_warning.v1",
        warning(
            emitted_at=None, reasons=[{"feature": "f", "value": None, "contribution": -0.1}] * 5
        ),
    ),
    (
        "churn_warning.v1",
        warning(triggers={"rules": [], "model": {"threshold": 0.6, "probability": 0.8}}),
    ),
    ("user_recovered.v1", recovery()),
    ("tier_change.v1", tier()),
    (
        "tier_change.v1",
        tier(dimension="lifecycle", **{"from": "new"}, to="growing", rfm={"r": 5, "f": 1, "m": 1}),
    ),
]
INVALID = [
    ("churn_warning.v1", warning(level=2), "$.level_name"),
    ("churn_warning.v1", warning(level=4, level_name="critical"), "$.level"),
    ("churn_warning.v1", warning(churn_probability=1.5), "$.churn_probability"),
    (
        "churn_warning.v1",
        warning(reasons=[{"feature": "f", "value": 1, "contribution": 0}] * 6),
        "$.reasons",
    ),
    ("churn_warning.v1", warning(event_time="2024-05-06"), "$.event_time"),
    ("churn_warning.v1", warning(emitted_at="2024-05-06T13:15:02"), "$.emitted_at"),
    ("churn_warning.v1", warning(extra=1), "$"),
    (
        "churn_warning.v1",
        warning(
            tiers={"lifecycle": "dormant", "value_segment": "low", "rfm": {"r": 1, "f": 1, "m": 1}}
        ),
        "$.tiers.lifecycle",
    ),
    (
        "churn_warning.v1",
        warning(
            tiers={"lifecycle": "new", "value_segment": "low", "rfm": {"r": 0, "f": 1, "m": 1}}
        ),
        "$.tiers.rfm.r",
    ),
    ("user_recovered.v1", recovery(previous_level=0), "$.previous_level"),
    ("user_recovered.v1", recovery(episode_duration_s=-1), "$.episode_duration_s"),
    ("tier_change.v1", tier(dimension="lifecycle", to="vip"), "$.to"),
    ("tier_change.v1", tier(dimension="region"), "$.dimension"),
]


@pytest.mark.parametrize(("name", "doc"), VALID)
def test_hand_built_output_validates(name: str, doc: dict[str, Any]) -> None:
    validator(name)(doc)


@pytest.mark.parametrize(("name", "doc", "path"), INVALID)
def test_contract_violations_are_caught_at_their_path(
    name: str, doc: dict[str, Any], path: str
) -> None:
    with pytest.raises(SchemaViolation) as caught:
        validator(name)(doc)
    assert caught.value.path == path


def test_every_output_field_is_required() -> None:
    for name, doc in (("churn_warning.v1", warning()), ("user_recovered.v1", recovery())):
        for field in doc:
            partial = {k: v for k, v in doc.items() if k != field}
            with pytest.raises(SchemaViolation):
                validator(name)(partial)


def test_load_schema_accepts_the_file_name_and_refuses_paths() -> None:
    assert load_schema("tier_change.v1.json") == load_schema("tier_change.v1")
    load_schema("tier_change.v1")["required"].clear()
    assert load_schema("tier_change.v1")["required"]
    with pytest.raises(ValueError):
        load_schema("../pyproject")
    with pytest.raises(FileNotFoundError):
        load_schema("missing.v9")


# --- the fast validator agrees with the reference one --------------------------------------

TEXT = st.text(st.characters(exclude_characters="\n"), max_size=70)
VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-5, 200)
    | st.floats(-10, 1e6)
    | TEXT
    | st.sampled_from(
        [
            "login",
            "Login",
            "a.b-c_d",
            "",
            "+08:00",
            "+14:30",
            "Asia/Shanghai",
            "2024-05-06T13:15:02Z",
        ]
    )
)
SUBOBJECTS = st.dictionaries(
    st.sampled_from(
        [
            "duration_s",
            "amount",
            "currency",
            "room",
            "counterpart",
            "quantity",
            "platform",
            "app_version",
            "timezone",
            "country",
            "other",
        ]
    )
    | st.text(max_size=3),
    VALUES,
    max_size=34,
)
DOCS = st.fixed_dictionaries(
    {k: VALUES for k in ("event_id", "user_id", "event")},
    optional={
        "properties": SUBOBJECTS | VALUES,
        "context": SUBOBJECTS | VALUES,
        "schema_version": st.sampled_from([1, 1.0, 2, "1", True]),
        "other": VALUES,
    },
)


def verdict(check: Any, doc: dict[str, Any]) -> bool:
    try:
        check(doc)
    except (SchemaViolation, ValidationError):
        return False
    return True


@settings(max_examples=2_000, deadline=None)
@given(DOCS)
def test_fast_validator_agrees_with_reference(doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(doc) | {"occurred_at": "2024-05-06T13:15:02Z"}
    assert verdict(_fast_app_event_check(), doc) == verdict(validator("app_event.v1"), doc)


def test_decoder_is_stricter_than_python_regex_end_anchor() -> None:
    doc = example("app_event.v1") | {"event": "login\n"}
    with pytest.raises(InvalidEvent):
        decode_event(json.dumps(doc).encode(), None, now=NOW)
