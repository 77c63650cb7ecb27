"""Live quality of the prior and the learned model on matured labels.

Both scorers are judged prequentially: each matured snapshot is scored by both *before* the
model learns it, so the figures are honest out-of-sample estimates and the comparison that
decides which scorer is trusted is a fair one.

Examples
--------
>>> q = LiveQuality(window=100)
>>> for i in range(40):
...     churned = i % 2 == 0
...     q.update(prior=0.6 if churned else 0.4, model=0.9 if churned else 0.1, churned=churned)
>>> q.auc("prior"), q.auc("model"), q.n
(1.0, 1.0, 40)
>>> q.log_loss("model") < q.log_loss("prior")
True
"""

from __future__ import annotations

from typing import Any, Literal

from river import metrics, utils

__all__ = ["LiveQuality", "Source"]

Source = Literal["prior", "model"]


def _new(factory: Any, **params: Any) -> Any:
    return factory(**params)


class LiveQuality:
    """Rolling ROC AUC and log loss of both scorers over the last ``window`` labels.

    Parameters
    ----------
    window
        Number of most recent matured labels the figures cover.
    """

    def __init__(self, window: int = 2000) -> None:
        self.window = window
        self._auc: dict[str, Any] = {
            s: _new(metrics.RollingROCAUC, window_size=window) for s in ("prior", "model")
        }
        self._loss: dict[str, Any] = {
            s: utils.Rolling(_new(metrics.LogLoss), window_size=window) for s in ("prior", "model")
        }
        self.n = 0

    def update(self, prior: float, model: float, churned: bool) -> None:
        """Add one matured label with both scorers' probabilities for it."""
        for source, p in (("prior", prior), ("model", model)):
            self._auc[source].update(churned, p)
            self._loss[source].update(churned, p)
        self.n += 1

    def auc(self, source: Source) -> float:
        """Rolling ROC AUC of ``source``; 0.5 until both classes were seen."""
        return float(self._auc[source].get())

    def log_loss(self, source: Source) -> float:
        """Rolling log loss of ``source``."""
        return float(self._loss[source].get())

    def summary(self) -> dict[str, float]:
        """All figures as a flat dict, for logs and metrics."""
        return {
            "labels": float(self.n),
            "prior_auc": self.auc("prior"),
            "model_auc": self.auc("model"),
            "prior_log_loss": self.log_loss("prior"),
            "model_log_loss": self.log_loss("model"),
        }
