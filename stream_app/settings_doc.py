"""The README's settings table, generated from the settings object (a test keeps them equal)."""

from __future__ import annotations

from stream_app.settings import ENV_PREFIX, Settings


def _default(value: object) -> str:
    if value is None:
        return "unset"
    return f"`{value}`"


def settings_table() -> str:
    """A Markdown table: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {_default(field.default)} | {meaning} |")
    return "\n".join(rows)
