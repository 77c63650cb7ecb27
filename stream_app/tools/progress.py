"""Progress display shared by long-running tools (replay, backtest).

A person at a terminal wants a live bar; a CI log wants a few plain lines it can keep.
The same reporter picks one or the other, so callers only say ``advance(n)``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Reporter(Protocol):
    """Something that is told how much work got done."""

    def advance(self, n: int = 1) -> None:
        """Record ``n`` more units of finished work."""


def format_rate(done: int, total: int | None, elapsed_s: float, unit: str = "events") -> str:
    """Describe progress in one line a log reader understands without context.

    Parameters
    ----------
    done, total
        Units finished and expected (``None`` when unknown, e.g. an open stream).
    elapsed_s
        Seconds since the work started.
    unit
        What is being counted.

    Returns
    -------
    str
        Count, share, rate and, when the total is known, the time still expected.

    Examples
    --------
    >>> format_rate(5_000, 20_000, 2.0)
    '5,000/20,000 events (25.0%) 2,500 events/s ETA 6s'
    >>> format_rate(300, None, 0.0)
    '300 events 0 events/s'
    """
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total is None:
        return f"{done:,} {unit} {rate:,.0f} {unit}/s"
    share = 100.0 * done / total if total else 100.0
    eta = f" ETA {(total - done) / rate:,.0f}s" if rate > 0 else ""
    return f"{done:,}/{total:,} {unit} ({share:.1f}%) {rate:,.0f} {unit}/s{eta}"


class LogReporter:
    """Plain progress lines every ``interval_s`` seconds, for logs without a terminal.

    Examples
    --------
    >>> import io
    >>> ticks = iter([0.0, 1.0, 2.5, 3.0])
    >>> out = io.StringIO()
    >>> r = LogReporter("replay", 10, out, interval_s=2.0, clock=lambda: next(ticks))
    >>> r.advance(5); r.advance(5)
    >>> print(out.getvalue().strip())
    replay: 10/10 events (100.0%) 4 events/s ETA 0s
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        out: TextIO,
        *,
        interval_s: float = 2.0,
        unit: str = "events",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label, self._total, self._out, self._unit = label, total, out, unit
        self._interval_s, self._clock = interval_s, clock
        self._start = clock()
        self._last = self._start
        self.done = 0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units and print a line when the interval has passed."""
        self.done += n
        now = self._clock()
        if now - self._last >= self._interval_s:
            self._last = now
            self.line(now)

    def line(self, now: float | None = None) -> None:
        """Print the current state now, e.g. as a closing line."""
        elapsed = (self._clock() if now is None else now) - self._start
        status = format_rate(self.done, self._total, elapsed, self._unit)
        print(f"{self._label}: {status}", file=self._out, flush=True)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed or 0.0
        return Text(f"{speed:,.0f} {self._unit}/s", style="progress.data.speed")


class _RichReporter:
    def __init__(self, progress: Progress, task: int) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)  # type: ignore[arg-type]


def is_terminal(stream: TextIO) -> bool:
    """Tell whether ``stream`` is an interactive terminal (live display makes sense)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress(
    label: str,
    total: int | None,
    *,
    out: TextIO | None = None,
    interactive: bool | None = None,
    interval_s: float = 2.0,
    unit: str = "events",
) -> Iterator[Reporter]:
    """Report progress of a loop, live on a terminal and as log lines elsewhere.

    Parameters
    ----------
    label
        Short name of the work, shown before each status.
    total
        Expected units, or ``None`` when unknown.
    out
        Where to write; standard error by default so piped standard output stays clean.
    interactive
        Force the live bar on or off; by default it follows ``out.isatty()``.
    interval_s
        Seconds between plain log lines.
    unit
        What is being counted.

    Yields
    ------
    Reporter
        Call ``advance(n)`` on it as work finishes. A final line is printed on exit.
    """
    stream = sys.stderr if out is None else out
    live = is_terminal(stream) if interactive is None else interactive
    if not live:
        reporter = LogReporter(label, total, stream, interval_s=interval_s, unit=unit)
        try:
            yield reporter
        finally:
            reporter.line()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield _RichReporter(bar, task)
