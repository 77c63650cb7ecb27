"""Settings: one frozen object, every field from CHURN_*, bad values named at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_app.settings import Settings, SettingsError, load_settings
from stream_app.settings_doc import settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_every_field_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_PARTITIONS", "12")
    monkeypatch.setenv("CHURN_TOPIC_EVENTS", "x.events")
    s = load_settings()
    assert (s.partitions, s.topic_events) == (12, "x.events")


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        load_settings().partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CHURN_PARTITIONS", "many"),
        ("CHURN_KAFKA_BOOTSTRAP", "nohost"),
        ("CHURN_REDIS_URL", "http://x"),
        ("CHURN_CLOCK", "sundial"),
        ("CHURN_DROP_THRESHOLD", "2"),
    ],
)
def test_bad_value_is_named(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert var in str(err.value)


def test_bad_setting_stops_the_worker_with_its_name() -> None:
    env = {**os.environ, "CHURN_WEB_PORT": "seventy"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "CHURN_WEB_PORT" in proc.stderr


def test_cli_misuse_prints_usage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "usage: stream-app" in proc.stderr


def test_readme_settings_table_is_generated_from_the_code() -> None:
    assert settings_table() in (ROOT / "README.md").read_text()


def test_secrets_do_not_show_in_repr() -> None:
    s = Settings(redis_password="hunter2", kafka_sasl_password="s3cret")  # type: ignore[arg-type]
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s)


def test_readme_shows_the_subscriber_example_that_the_tests_run() -> None:
    example = (ROOT / "examples" / "subscriber.py").read_text().rstrip("\n")
    assert example in (ROOT / "README.md").read_text()


def test_sampling_salt_decouples_the_stable_hashes_from_the_app_id() -> None:
    from stream_app.core import build_core
    from stream_app.model.labels import LabelBook

    default = build_core(load_settings(app_id="run-1"))
    assert (default.holdout_salt, default.labels.salt) == ("run-1", "run-1")
    fixed = [build_core(load_settings(app_id=a, sampling_salt="s")) for a in ("run-1", "run-2")]
    assert {(c.holdout_salt, c.labels.salt) for c in fixed} == {("s", "s")}
    # The salt really picks the snapshots: two salts keep different (user, day) samples.
    keep = [
        [LabelBook(c.labels).would_keep(f"u{i}", 0.0) for i in range(200)]
        for c in (default, fixed[0])
    ]
    assert keep[0] != keep[1]


@pytest.mark.parametrize("text", ["0", "-2", "two"])
def test_worker_count_options_refuse_what_is_not_a_positive_integer(text: str) -> None:
    import argparse

    from stream_app.tools.session import positive_int

    assert positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int(text)
