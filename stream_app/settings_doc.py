"""The README's settings table, generated from the settings object (a test keeps them equal)."""

from __future__ import annotations

from pathlib import Path

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


def _replace_between(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->\n", f"\n<!-- {name}:end -->"
    head, found, rest = text.partition(start)
    if not found or end not in rest:
        raise ValueError(f"README has no {name} markers")
    return head + start + body + end + rest.split(end, 1)[1]


def update_readme(path: Path, example: Path) -> bool:
    """Regenerate the README's settings table and subscriber example; True if it changed."""
    text = path.read_text()
    new = _replace_between(text, "settings-table", settings_table())
    code = example.read_text().rstrip("\n")
    new = _replace_between(new, "subscriber-example", f"```python\n{code}\n```")
    if new != text:
        path.write_text(new)
    return new != text
