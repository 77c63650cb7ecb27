"""One frozen settings object for every process of the service.

Every field can be overridden by an environment variable ``CHURN_<FIELD>`` (upper case), so
the same code runs embedded, under docker-compose and in tests. A bad value stops start-up
with a message that names the variable (see :func:`load_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "CHURN_"


class SettingsError(SystemExit):
    """Start-up stops here: the message names the offending variable."""


class Settings(BaseSettings):
    """Every knob of the service. The README table is generated from these fields."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False
    )

    app_id: str = Field("churn-warnings", description="Faust app id and consumer group.")
    kafka_bootstrap: str = Field(
        "127.0.0.1:19092", description="Kafka bootstrap servers, comma separated host:port."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol used by every client."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for Kafka TLS.")
    redis_url: str = Field(
        "redis://127.0.0.1:6390/0",
        description="Redis URL (`redis://` or `rediss://` for TLS) holding all per-user state.",
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password, kept out of the URL so it never shows in logs."
    )
    redis_ssl_cafile: Path | None = Field(None, description="CA bundle for Redis TLS.")
    key_prefix: str = Field("churn:", description="Prefix of every Redis key the service owns.")
    topic_events: str = Field("app.events", description="Input topic of app events.")
    topic_dlq: str = Field("app.events.dlq", description="Dead-letter topic for bad input.")
    topic_warnings: str = Field("churn.warnings", description="Warnings and recoveries.")
    topic_tiers: str = Field("user.tiers", description="Lifecycle and value tier changes.")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of every topic created.")
    web_host: str = Field("127.0.0.1", description="Bind address of the worker's web port.")
    web_port: int = Field(6066, ge=1, le=65535, description="Worker web port (/metrics ...).")
    inspect_token: SecretStr | None = Field(
        None, description="Bearer token required by the inspection endpoint when set."
    )
    kafka_fetch_max_wait_ms: int = Field(
        10,
        ge=1,
        le=5000,
        description="Longest time the broker may hold a fetch when no data is there (ms); "
        "bounds the latency an idle partition adds to its next event (brokers that hold "
        "every fetch this long add it to every event).",
    )
    faust_fast_drain: bool = Field(
        True,
        description="Hand each fetched event to Faust's stream without a task when it fits "
        "(faust-streaming 0.15.3 only); `false` keeps Faust's own per-event tasks.",
    )
    batch_size: int = Field(
        4000, ge=1, le=100_000, description="Most events in one processing batch."
    )
    batch_window_s: float = Field(
        0.01,
        gt=0,
        le=10,
        description="Wait to fill a batch, seconds, while the worker keeps up with the "
        "stream; it is what batching adds to a slow stream's latency.",
    )
    batch_backlog_window_s: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Longest wait to fill a batch while the worker is behind (more than "
        "`batch_size` events wait in a partition): larger batches, fewer commits, until the "
        "backlog is gone.",
    )
    clock: Literal["event", "live"] = Field(
        "live",
        description="`event`: the watermark follows event time only (replays); `live`: it "
        "also advances with the wall clock so a silent stream still ages users.",
    )
    live_clock_slack_s: float = Field(
        300.0, ge=0, description="In live mode the watermark trails the wall clock by this."
    )
    sweep_interval_s: float = Field(
        10.0, gt=0, description="How often the timer sweeps silent users in live mode."
    )
    profile: Literal["social", "purchases"] = Field(
        "social",
        description="Event-kind mapping preset: a social/live app, or a purchase-only log.",
    )
    activity_map_file: Path | None = Field(
        None, description="TOML file mapping event kinds to activity dimensions (overrides)."
    )
    lateness_s: float = Field(
        21600.0, ge=0, le=30 * 86400, description="Allowed out-of-orderness per user, seconds."
    )
    retention_days: float = Field(
        400.0, gt=0, description="Silent users' state expires after this many days."
    )
    churn_horizon_days: float = Field(
        14.0, gt=0, description="A user churned if inactive this long after being scored."
    )
    label_sample_rate: float = Field(
        0.5, gt=0, le=1, description="Share of (user, day) score snapshots kept for learning."
    )
    label_max_pending: int = Field(
        5_000, ge=100, description="Most snapshots per partition waiting for their label."
    )
    rescore_after_days: Annotated[tuple[float, ...], NoDecode] = Field(
        (7.0, 14.0, 28.0, 56.0, 91.0, 140.0, 210.0),
        description="Silent users are re-scored this many days after their last activity "
        "(comma separated), so the model sees and warns about absence, not only activity.",
    )
    user_cache_size: int = Field(
        50_000,
        ge=0,
        description="User records per partition kept in memory after their commit, so a "
        "batch usually needs one Redis round trip (the write) instead of two.",
    )
    evaluate_every_s: float = Field(
        900.0,
        ge=0,
        description="A user's events closer than this (event time) to their last scoring only "
        "update the windows; while a warning is open every event is checked, so recoveries "
        "stay immediate.",
    )
    drop_threshold: float = Field(
        0.30, gt=0, lt=1, description="Level 1: recent activity this far below baseline."
    )
    no_interaction_days: float = Field(60.0, gt=0, description="Level 2: days w/o interaction.")
    no_login_days: float = Field(90.0, gt=0, description="Level 3: days without login.")
    model_level1_probability: float = Field(
        0.75, gt=0, le=1, description="Model probability that raises a user to at least level 1."
    )
    model_level2_probability: float = Field(
        0.9, gt=0, le=1, description="Model probability that raises a user to at least level 2."
    )
    cooldown_s: float = Field(0.0, ge=0, description="Least time between two emissions per user.")
    holdout_share: float = Field(
        0.05, ge=0, le=1, description="Share of users flagged `holdout` (stable hash)."
    )
    sampling_salt: str | None = Field(
        None,
        description="Salt of the stable hashes that pick the holdout users and the score "
        "snapshots kept for learning (default: the app id). Runs that must give identical "
        "results, such as two backtests, need the same salt.",
    )
    playbook_file: Path | None = Field(
        None, description="TOML playbook of suggested actions (default: the packaged one)."
    )
    embedded_run_dir: Path = Field(
        Path("run"), description="Where the embedded stack keeps PID files and logs."
    )
    embedded_redis: Literal["auto", "start", "external"] = Field(
        "auto",
        description="`auto`: use a Redis already listening at redis_url, else start one; "
        "`start`: always start one; `external`: never start one.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logs.")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("rescore_after_days", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        return value

    @model_validator(mode="after")
    def _levels_ordered(self) -> Settings:
        if self.no_login_days < self.no_interaction_days:
            raise ValueError("no_login_days must be >= no_interaction_days")
        return self

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the service reads or writes."""
        return (self.topic_events, self.topic_dlq, self.topic_warnings, self.topic_tiers)


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, or stop with a message naming the variable.

    >>> load_settings(partitions=8).partitions
    8
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            var = f"{ENV_PREFIX}{field.upper()}" if err["loc"] else "settings"
            lines.append(f"  {var}: {err['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
