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

__all__ = ["RankSketch"]


class RankSketch:
    """Windowed fixed-bin histogram of probabilities giving percentile ranks.

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

    def _bin(self, p: float) -> int:
        return min(max(int(p * self.bins), 0), self.bins - 1)

    def update(self, p: float) -> None:
        """Count one score."""
        if self._n_current >= self.window:
            self._previous, self._current = self._current, [0] * self.bins
            self._n_previous, self._n_current = self._n_current, 0
        self._current[self._bin(p)] += 1
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
        i = self._bin(p)
        below = sum(self._current[:i]) + sum(self._previous[:i])
        tie = self._current[i] + self._previous[i]
        return 100.0 * (below + 0.5 * tie) / n
