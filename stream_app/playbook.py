"""The operators' playbook: which action to suggest for a warning level and value segment.

Operators own the wording and the channels, so the mapping lives in a TOML file rather
than in code. The packaged ``playbook.toml`` holds the defaults; a deployment may point a
setting at its own file. A file is validated as a whole when loaded, so a typo fails the
worker at start-up with the offending entry named, never at the first warning.

The file has one table per level, each with a ``default`` action and optional
``segments.<value segment>`` overrides::

    version = 1

    [level.1.default]
    code = "personal_push"
    text = "Personal push: someone sent you a message."
    channel = "push"

    [level.1.segments.champions]
    code = "care_call"
    text = "Care call from the user's account manager."
    channel = "call"
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from stream_app.tiers import SEGMENTS

LEVELS = (1, 2, 3)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PlaybookError(ValueError):
    """A playbook file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Action:
    """One suggested action."""

    code: str
    text: str
    channel: str

    def as_dict(self) -> dict[str, str]:
        """The ``suggested_action`` object of a warning record."""
        return {"code": self.code, "text": self.text, "channel": self.channel}


@dataclass(frozen=True, slots=True)
class LevelActions:
    """The default action of one level and its per-segment overrides."""

    default: Action
    segments: Mapping[str, Action]


@dataclass(frozen=True, slots=True)
class Playbook:
    """Validated playbook, keyed by warning level.

    >>> pb = load_playbook()
    >>> pb.action(3, "champions")["code"], pb.action(3, "lost")["code"]
    ('host_personal_video', 'winback_gift_pack')
    >>> pb.action(1, None)["channel"]
    'push'
    """

    levels: Mapping[int, LevelActions]

    def action(self, level: int, value_segment: str | None) -> dict[str, str]:
        """Action for ``level``: the segment's override if any, else the level default."""
        try:
            entry = self.levels[level]
        except KeyError:
            raise ValueError(f"no playbook entry for level {level}") from None
        chosen = entry.segments.get(value_segment or "", entry.default)
        return chosen.as_dict()


def _action(where: str, raw: Any) -> Action:
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: expected a table with code, text, channel")
    extra = sorted(set(raw) - {"code", "text", "channel"})
    if extra:
        raise PlaybookError(f"{where}: unknown key(s) {', '.join(extra)}")
    values: dict[str, str] = {}
    for key in ("code", "text", "channel"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise PlaybookError(f"{where}.{key}: expected a non-empty string")
        if key != "text" and not _NAME.match(value):
            raise PlaybookError(f"{where}.{key}: {value!r} must be lower_snake_case")
        values[key] = value
    return Action(**values)


def parse_playbook(data: Mapping[str, Any], origin: str = "playbook") -> Playbook:
    """Validate parsed TOML into a :class:`Playbook`; ``origin`` prefixes error messages.

    >>> parse_playbook({"version": 1, "level": {}}, "x.toml")
    Traceback (most recent call last):
    ...
    stream_app.playbook.PlaybookError: x.toml: level.1: missing (levels 1, 2 and 3 are required)
    """
    if data.get("version") != 1:
        raise PlaybookError(f"{origin}: version: expected 1, got {data.get('version')!r}")
    extra_top = sorted(set(data) - {"version", "level"})
    if extra_top:
        raise PlaybookError(f"{origin}: unknown key(s) {', '.join(extra_top)}")
    raw_levels = data.get("level")
    if not isinstance(raw_levels, dict):
        raise PlaybookError(f"{origin}: level: expected tables [level.1] .. [level.3]")
    unknown = sorted(k for k in raw_levels if k not in {str(n) for n in LEVELS})
    if unknown:
        raise PlaybookError(f"{origin}: level.{unknown[0]}: unknown level (use 1, 2 or 3)")
    levels: dict[int, LevelActions] = {}
    for n in LEVELS:
        where = f"{origin}: level.{n}"
        raw = raw_levels.get(str(n))
        if raw is None:
            raise PlaybookError(f"{where}: missing (levels 1, 2 and 3 are required)")
        if not isinstance(raw, dict):
            raise PlaybookError(f"{where}: expected a table")
        extra = sorted(set(raw) - {"default", "segments"})
        if extra:
            raise PlaybookError(f"{where}: unknown key(s) {', '.join(extra)}")
        if "default" not in raw:
            raise PlaybookError(f"{where}.default: missing")
        default = _action(f"{where}.default", raw["default"])
        raw_segments = raw.get("segments", {})
        if not isinstance(raw_segments, dict):
            raise PlaybookError(f"{where}.segments: expected a table")
        segments: dict[str, Action] = {}
        for seg in sorted(raw_segments):
            if seg not in SEGMENTS:
                raise PlaybookError(
                    f"{where}.segments.{seg}: unknown value segment (known: {', '.join(SEGMENTS)})"
                )
            segments[seg] = _action(f"{where}.segments.{seg}", raw_segments[seg])
        levels[n] = LevelActions(default, segments)
    return Playbook(levels)


def load_playbook(path: Path | None = None) -> Playbook:
    """Load and validate a playbook; ``None`` loads the packaged default.

    Raises
    ------
    PlaybookError
        If the file is missing, is not TOML, or an entry is invalid.
    """
    if path is None:
        text = resources.files("stream_app").joinpath("playbook.toml").read_text("utf-8")
        origin = "playbook.toml"
    else:
        origin = str(path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise PlaybookError(f"{origin}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlaybookError(f"{origin}: not valid TOML: {exc}") from exc
    return parse_playbook(data, origin)
