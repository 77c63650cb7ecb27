"""Playbook loading, validation and fallbacks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stream_app.playbook import PlaybookError, load_playbook
from stream_app.tiers import SEGMENTS

GOOD = """
version = 1

[level.1.default]
code = "push_a"
text = "A"
channel = "push"

[level.1.segments.loyal]
code = "call_a"
text = "Call"
channel = "call"

[level.2.default]
code = "survey"
text = "Survey"
channel = "in_app"

[level.3.default]
code = "gift"
text = "Gift"
channel = "push"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pb.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_playbook_covers_every_level_and_segment() -> None:
    pb = load_playbook()
    for level in (1, 2, 3):
        for seg in (*SEGMENTS, None):
            action = pb.action(level, seg)
            assert set(action) == {"code", "text", "channel"}
            assert all(action.values())
    assert pb.action(1, None)["code"] == "personal_push"
    assert pb.action(1, "champions")["code"] == "care_call"
    assert pb.action(2, "hibernating")["code"] == "churn_survey"
    assert pb.action(2, "loyal")["code"] == "special_perks"
    assert pb.action(3, "loyal")["code"] == "host_personal_video"
    assert pb.action(3, "new")["code"] == "winback_gift_pack"


def test_custom_file_and_fallback_to_level_default(tmp_path: Path) -> None:
    pb = load_playbook(write(tmp_path, GOOD))
    assert pb.action(1, "loyal") == {"code": "call_a", "text": "Call", "channel": "call"}
    assert pb.action(1, "champions")["code"] == "push_a"
    assert pb.action(1, None)["code"] == "push_a"
    with pytest.raises(ValueError, match="level 0"):
        pb.action(0, None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("version = 1", "version = 2"), "version"),
        (lambda t: t.replace("[level.3.default]", "[level.3.other]"), r"level\.3: unknown key"),
        (lambda t: t.replace("segments.loyal]", "segments.loyall]"), r"segments\.loyall"),
        (lambda t: t.replace('code = "survey"', 'code = "Survey!"'), r"level\.2\.default\.code"),
        (lambda t: t.replace('text = "Gift"', 'text = ""'), r"level\.3\.default\.text"),
        (lambda t: t.replace('channel = "call"', "channel = 3"), r"segments\.loyal\.channel"),
        (lambda t: t + '\n[level.4.default]\ncode = "x"\ntext = "x"\nchannel = "x"\n', "level.4"),
        (lambda t: t.split("[level.3.default]")[0], r"level\.3: missing"),
        (lambda t: t + "\nextra = 1\n", "unknown key"),
        (lambda t: t.replace("[level.2.default]", "[level.2.default"), "not valid TOML"),
    ],
)
def test_bad_files_name_the_entry(tmp_path: Path, edit: Callable[[str], str], message: str) -> None:
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(PlaybookError, match=message) as err:
        load_playbook(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="cannot read"):
        load_playbook(tmp_path / "nope.toml")
