"""Where a churn probability ranks among recent scores, in constant memory.

Warning levels are cut on percentiles rather than raw probabilities so that a recalibrated
or freshly switched model does not flood or silence the warning topic. The sketch is two
fixed-bin histograms over [0, 1]: the current one fills, and when it holds ``window`` scores
it replaces the previous one. Percentiles read both, so they reflect roughly the last one to
two windows of scores and follow drift without any randomness.

Examples
--------
>>> ranks = RankSketch(bins=100, window=1000)
>>> for i in range(100):
...     ranks.update(i / 100)
>>> ranks.percentile(0.25), ranks.percentile(0.995)
(25.5, 99.5)
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["RankSketch"]

_BLOCK = 32


class RankSketch:
    """Windowed fixed-bin histogram of probabilities giving percentile ranks.

    Besides the two generations the sketch keeps their sum per bin and per block of
    ``32`` bins, so a rank is two short sums instead of a scan of every bin. Those are
    derived data: they are left out of the pickled state and rebuilt on load, so a
    checkpoint holds exactly the two generations.

    Parameters
    ----------
    bins
        Resolution over [0, 1]; ranks are exact up to one bin, counted half for ties.
    window
        Scores per histogram generation.
    """

    def __init__(self, bins: int = 1000, window: int = 100_000) -> None:
        self.bins = bins
        self.window = window
        self._current = [0] * bins
        self._previous = [0] * bins
        self._n_current = 0
        self._n_previous = 0
        self._reindex()

    def _reindex(self) -> None:
        both = [a + b for a, b in zip(self._current, self._previous, strict=True)]
        self._both = both
        self._blocks = [sum(both[i : i + _BLOCK]) for i in range(0, self.bins, _BLOCK)]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_both"], state["_blocks"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Interned names, as default unpickling sets them: checkpoints share equal strings.
        for name, value in state.items():
            setattr(self, sys.intern(name), value)
        self._reindex()

    def _bin(self, p: float) -> int:
        return min(max(int(p * self.bins), 0), self.bins - 1)

    def update(self, p: float) -> None:
        """Count one score."""
        if self._n_current >= self.window:
            self._previous, self._current = self._current, [0] * self.bins
            self._n_previous, self._n_current = self._n_current, 0
            self._reindex()
        bins = self.bins
        i = min(max(int(p * bins), 0), bins - 1)  # self._bin(p), inlined on this hot path
        self._current[i] += 1
        self._both[i] += 1
        self._blocks[i // _BLOCK] += 1
        self._n_current += 1

    def percentile(self, p: float) -> float:
        """Percent of counted scores below ``p`` (half of those in its bin); 50 when empty.

        Examples
        --------
        >>> RankSketch().percentile(0.3)
        50.0
        """
        n = self._n_current + self._n_previous
        if n == 0:
            return 50.0
        bins = self.bins
        i = min(max(int(p * bins), 0), bins - 1)  # self._bin(p), inlined on this hot path
        block = i // _BLOCK
        both = self._both
        below = sum(self._blocks[:block]) + sum(both[block * _BLOCK : i])
        return 100.0 * (below + 0.5 * both[i]) / n
