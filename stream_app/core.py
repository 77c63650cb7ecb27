"""The configuration of the pure core, built once from the settings.

The core (windows, features, model, alerts, tiers) never reads settings itself: it takes
these frozen configs, so unit tests build them directly and the worker builds them here.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from stream_app.alerts import AlertConfig
from stream_app.features import FeatureConfig
from stream_app.model.labels import ChurnConfig, LabelBook, LabelConfig
from stream_app.model.learner import ChurnScorer, ScorerConfig
from stream_app.playbook import Playbook, load_playbook
from stream_app.settings import Settings
from stream_app.tiers import TierConfig
from stream_app.windows import WindowConfig


@dataclass(frozen=True)
class Core:
    """Everything the per-partition engine needs besides state."""

    windows: WindowConfig
    features: FeatureConfig
    churn: ChurnConfig
    labels: LabelConfig
    model: ScorerConfig
    rescore_after_days: tuple[float, ...]
    evaluate_every_s: float
    alerts: AlertConfig
    tiers: TierConfig
    playbook: Playbook
    holdout_share: float
    holdout_salt: str

    def new_scorer(self) -> ChurnScorer:
        """A fresh scorer (the prior scores until the model has earned its place)."""
        return ChurnScorer(self.model)

    def new_labels(self) -> LabelBook:
        """An empty book of pending delayed labels."""
        return LabelBook(self.labels)


def window_config(settings: Settings) -> WindowConfig:
    """The event-kind mapping: a preset, overridden by a TOML file when one is given."""
    overrides = {"lateness_s": settings.lateness_s, "retention_days": settings.retention_days}
    if settings.activity_map_file is not None:
        data = tomllib.loads(Path(settings.activity_map_file).read_text())
        return WindowConfig.from_mapping({**data, **overrides})
    if settings.profile == "purchases":
        return WindowConfig.purchase_log(**overrides)
    return WindowConfig.social_app(**overrides)


def feature_config(settings: Settings) -> FeatureConfig:
    """Features over the dimensions the profile feeds (a purchase log has only a few)."""
    if settings.profile == "purchases":
        return FeatureConfig(dims=("activity", "spend"), horizons=(7, 28, 91))
    return FeatureConfig()


def build_core(settings: Settings) -> Core:
    """Build the core configuration from the settings."""
    churn = ChurnConfig(horizon_days=settings.churn_horizon_days)
    salt = settings.app_id if settings.sampling_salt is None else settings.sampling_salt
    return Core(
        windows=window_config(settings),
        features=feature_config(settings),
        churn=churn,
        labels=LabelConfig(
            churn=churn,
            sample_rate=settings.label_sample_rate,
            max_pending=settings.label_max_pending,
            salt=salt,
        ),
        model=ScorerConfig(),
        rescore_after_days=tuple(settings.rescore_after_days),
        evaluate_every_s=settings.evaluate_every_s,
        alerts=AlertConfig(
            drop_threshold=settings.drop_threshold,
            no_interaction_days=settings.no_interaction_days,
            no_login_days=settings.no_login_days,
            model_thresholds=(
                (settings.model_level1_probability, 1),
                (settings.model_level2_probability, 2),
            ),
            cooldown_s=settings.cooldown_s,
        ),
        tiers=TierConfig(churn_days=settings.no_login_days),
        playbook=load_playbook(settings.playbook_file),
        holdout_share=settings.holdout_share,
        holdout_salt=salt,
    )
