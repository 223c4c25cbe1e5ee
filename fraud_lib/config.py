"""One frozen ``Settings`` object, read from the environment at call time.

Every variable is documented in the README's configuration table; the defaults work with no
configuration at all (embedded Postgres and a local MLflow store under the state directory).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fraud_lib.errors import ConfigError, DataError
from fraud_lib.input_rules import (
    DEFAULT_MAX_CLOCK_SKEW_SECONDS,
    DEFAULT_MIN_TIMESTAMP,
    TimestampBounds,
    parse_iso,
)
from fraud_lib.redact import MASK, redact

THRESHOLD_RULES = ("f1", "cost", "precision")
# Drift decision defaults, shared by the settings and fraud_lib.drift.drift_report.
DRIFT_SHARE_THRESHOLD = 0.05  # share of drifted features that is drift
SCORE_SHIFT_THRESHOLD = 0.1  # score PSI that is drift
ALERT_SMTP_SECURITY = ("starttls", "ssl", "none")
# Masked in describe(): a webhook URL usually carries its token in the path.
SECRET_FIELDS = ("admin_token", "alert_webhook_url", "alert_smtp_password")
# Metrics the performance monitor can watch (all higher-is-better, in [0, 1]); shared by the
# settings, the CLI, the fraud_performance_monitor DAG's Params and fraud_lib.monitoring.
PERFORMANCE_METRICS = (
    "average_precision",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "card_precision_at_k",
)


MLFLOW_SCHEMES = ("", "sqlite", "postgresql", "postgresql+psycopg2", "http", "https", "file")
FLAG_VALUES = {"": False, "0": False, "false": False, "no": False, "off": False,
               "1": True, "true": True, "yes": True, "on": True}  # fmt: skip


def parse_flag(text: str, name: str) -> bool:
    """An on/off environment value (1/true/yes/on, 0/false/no/off, empty = off)."""
    value = FLAG_VALUES.get(text.strip().lower())
    if value is None:
        raise ConfigError(f"{name}={text!r} is not on or off; use 1/true/yes/on or 0/false/no/off")
    return value


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "")
    return value.strip() if value.strip() else default


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to e.g. {default}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(env, name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number; set it to e.g. {default}"
        ) from None


def _alert_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The FRAUD_ALERT_* and FRAUD_PUBLIC_* settings (see fraud_lib.monitoring.alerts)."""
    return {
        "alert_webhook_url": _get(env, "FRAUD_ALERT_WEBHOOK_URL", ""),
        "alert_smtp_host": _get(env, "FRAUD_ALERT_SMTP_HOST", ""),
        "alert_smtp_port": _int(env, "FRAUD_ALERT_SMTP_PORT", 587),
        "alert_smtp_user": _get(env, "FRAUD_ALERT_SMTP_USER", ""),
        "alert_smtp_password": _get(env, "FRAUD_ALERT_SMTP_PASSWORD", ""),
        "alert_smtp_from": _get(env, "FRAUD_ALERT_SMTP_FROM", ""),
        "alert_smtp_to": _get(env, "FRAUD_ALERT_SMTP_TO", ""),
        "alert_smtp_security": _get(env, "FRAUD_ALERT_SMTP_SECURITY", "starttls").lower(),
        "alert_cooldown_seconds": _float(env, "FRAUD_ALERT_COOLDOWN_SECONDS", 3600.0),
        "alert_timeout_seconds": _float(env, "FRAUD_ALERT_TIMEOUT_SECONDS", 5.0),
        "alert_attempts": _int(env, "FRAUD_ALERT_ATTEMPTS", 3),
        "alert_retry_seconds": _float(env, "FRAUD_ALERT_RETRY_SECONDS", 1.0),
        "public_mlflow_url": _get(env, "FRAUD_PUBLIC_MLFLOW_URL", "").rstrip("/"),
        "public_airflow_url": _get(env, "FRAUD_PUBLIC_AIRFLOW_URL", "").rstrip("/"),
    }


def _http_url(value: str) -> bool:
    scheme, sep, rest = value.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and bool(rest.split("/")[0])


def _check_database_url(url: str) -> None:
    """ConfigError (without the URL: it may hold a password) unless ``url`` is empty or a
    postgresql:// URL whose port, if any, is a number."""
    if not url:
        return
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError("FRAUD_DATABASE_URL has a port that is not a number 1-65535") from None
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(
            "FRAUD_DATABASE_URL must be a URL such as postgresql://user:password@host:5432/db"
        )


def _validate_alerts(s: Settings) -> None:
    """Raise ConfigError for an invalid FRAUD_ALERT_* / FRAUD_PUBLIC_* setting (secret values
    are never repeated in the message)."""
    if s.alert_webhook_url and not _http_url(s.alert_webhook_url):
        raise ConfigError("FRAUD_ALERT_WEBHOOK_URL must be an http:// or https:// URL")
    for name, url in (("FRAUD_PUBLIC_MLFLOW_URL", s.public_mlflow_url),
                      ("FRAUD_PUBLIC_AIRFLOW_URL", s.public_airflow_url)):  # fmt: skip
        if url and not _http_url(url):
            raise ConfigError(f"{name}={url!r} must be an http:// or https:// URL")
    if s.alert_smtp_security not in ALERT_SMTP_SECURITY:
        raise ConfigError(
            f"FRAUD_ALERT_SMTP_SECURITY={s.alert_smtp_security!r} is unknown; "
            f"use one of {', '.join(ALERT_SMTP_SECURITY)}"
        )
    if not 0 < s.alert_smtp_port < 65536:
        raise ConfigError("FRAUD_ALERT_SMTP_PORT must be between 1 and 65535, e.g. 587")
    if s.alert_smtp_host:
        addresses = [s.alert_smtp_from, *s.alert_smtp_recipients]
        if not s.alert_smtp_from or not s.alert_smtp_recipients:
            raise ConfigError(
                "FRAUD_ALERT_SMTP_HOST is set: set FRAUD_ALERT_SMTP_FROM and FRAUD_ALERT_SMTP_TO "
                "(comma-separated addresses) too"
            )
        for address in addresses:
            if "@" not in address or any(c in address for c in "\r\n\0,<>"):
                raise ConfigError(
                    f"FRAUD_ALERT_SMTP_FROM/TO: {address[:80]!r} is not an e-mail address"
                )
    if not (s.alert_cooldown_seconds >= 0 and s.alert_retry_seconds >= 0):
        raise ConfigError("FRAUD_ALERT_COOLDOWN_SECONDS and FRAUD_ALERT_RETRY_SECONDS must be >= 0")
    if not 0 < s.alert_timeout_seconds <= 120:
        raise ConfigError("FRAUD_ALERT_TIMEOUT_SECONDS must be in (0, 120], e.g. 5")
    if not 1 <= s.alert_attempts <= 10:
        raise ConfigError("FRAUD_ALERT_ATTEMPTS must be between 1 and 10, e.g. 3")


def _timestamp(env: Mapping[str, str], name: str, default: str) -> datetime:
    raw = _get(env, name, default)
    try:
        return parse_iso(raw, name)
    except DataError as exc:
        raise ConfigError(f"{exc}; set {name} to e.g. {default}") from None


@dataclass(frozen=True)
class Settings:
    """Runtime configuration; build it with :meth:`Settings.from_env`."""

    state_dir: Path
    database_url: str
    pg_port: int
    mlflow_tracking_uri: str
    mlflow_artifact_dir: Path
    experiment_name: str
    model_name: str
    schema_path: str
    reports_dir: Path
    evidently_workspace_dir: str  # "" = <state_dir>/evidently (see evidently_workspace)
    threshold_rule: str
    target_precision: float
    cost_false_negative: float
    cost_false_positive: float
    promote_min_improvement: float
    min_average_precision: float
    min_roc_auc: float
    risk_medium: float
    risk_high: float
    max_batch: int
    max_body_bytes: int
    read_timeout_seconds: float
    buffer_bytes: int
    admin_token: str
    poll_seconds: float
    spool_dir: Path
    log_batch_size: int
    log_flush_seconds: float
    scoring_url: str
    train_window_days: int
    eval_window_days: int
    min_labeled_rows: int
    min_frauds: int
    initial_data: str
    drift_sample_rows: int
    drift_share_threshold: float
    score_shift_threshold: float
    alert_webhook_url: str
    alert_smtp_host: str
    alert_smtp_port: int
    alert_smtp_user: str
    alert_smtp_password: str
    alert_smtp_from: str
    alert_smtp_to: str
    alert_smtp_security: str
    alert_cooldown_seconds: float
    alert_timeout_seconds: float
    alert_attempts: int
    alert_retry_seconds: float
    public_mlflow_url: str
    public_airflow_url: str
    min_timestamp: datetime
    max_clock_skew_seconds: float
    label_window_days: int
    performance_lookback_days: int
    performance_eval_days: int
    performance_metric: str
    performance_tolerance: float
    analyst_capacity: int
    entity_key: str
    redis_url: str
    redis_port: int
    label_refresh_seconds: float
    model_files: bool  # FRAUD_MODEL_FILES: workers load models through serving.model_files

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); ``overrides`` win over both."""
        env = os.environ if env is None else env
        state_dir = Path(_get(env, "FRAUD_STATE_DIR", ".fraudloop")).expanduser().resolve()
        settings = cls(
            state_dir=state_dir,
            database_url=_get(env, "FRAUD_DATABASE_URL", ""),
            pg_port=_int(env, "FRAUD_PG_PORT", 54329),
            mlflow_tracking_uri=_get(
                env, "MLFLOW_TRACKING_URI", f"sqlite:///{state_dir / 'mlflow.db'}"
            ),
            mlflow_artifact_dir=Path(
                _get(env, "FRAUD_MLFLOW_ARTIFACTS", str(state_dir / "mlartifacts"))
            ).resolve(),
            experiment_name=_get(env, "FRAUD_EXPERIMENT", "fraudloop"),
            model_name=_get(env, "FRAUD_MODEL_NAME", "fraud-detector"),
            schema_path=_get(env, "FRAUD_SCHEMA", ""),
            reports_dir=Path(_get(env, "FRAUD_REPORTS_DIR", "drift_reports")).resolve(),
            evidently_workspace_dir=_get(env, "FRAUD_EVIDENTLY_WORKSPACE", ""),
            threshold_rule=_get(env, "FRAUD_THRESHOLD_RULE", "f1"),
            target_precision=_float(env, "FRAUD_TARGET_PRECISION", 0.9),
            cost_false_negative=_float(env, "FRAUD_COST_FALSE_NEGATIVE", 100.0),
            cost_false_positive=_float(env, "FRAUD_COST_FALSE_POSITIVE", 5.0),
            promote_min_improvement=_float(env, "FRAUD_PROMOTE_MIN_IMPROVEMENT", 0.005),
            min_average_precision=_float(env, "FRAUD_MIN_AVERAGE_PRECISION", 0.2),
            min_roc_auc=_float(env, "FRAUD_MIN_ROC_AUC", 0.7),
            risk_medium=_float(env, "FRAUD_RISK_MEDIUM", 0.1),
            risk_high=_float(env, "FRAUD_RISK_HIGH", 0.5),
            max_batch=_int(env, "FRAUD_MAX_BATCH", 10_000),
            max_body_bytes=_int(env, "FRAUD_MAX_BODY_BYTES", 32 * 1024 * 1024),
            read_timeout_seconds=_float(env, "FRAUD_READ_TIMEOUT_SECONDS", 10.0),
            buffer_bytes=_int(env, "FRAUD_BUFFER_BYTES", 256 * 1024 * 1024),
            admin_token=_get(env, "FRAUD_ADMIN_TOKEN", ""),
            poll_seconds=_float(env, "FRAUD_POLL_SECONDS", 2.0),
            spool_dir=Path(_get(env, "FRAUD_SPOOL_DIR", str(state_dir / "spool"))).resolve(),
            log_batch_size=_int(env, "FRAUD_LOG_BATCH_SIZE", 2000),
            log_flush_seconds=_float(env, "FRAUD_LOG_FLUSH_SECONDS", 0.2),
            scoring_url=_get(env, "FRAUD_SCORING_URL", "http://127.0.0.1:8000"),
            train_window_days=_int(env, "FRAUD_TRAIN_WINDOW_DAYS", 28),
            eval_window_days=_int(env, "FRAUD_EVAL_WINDOW_DAYS", 3),
            min_labeled_rows=_int(env, "FRAUD_MIN_LABELED_ROWS", 2000),
            min_frauds=_int(env, "FRAUD_MIN_FRAUDS", 20),
            initial_data=_get(env, "FRAUD_INITIAL_DATA", ""),
            drift_sample_rows=_int(env, "FRAUD_DRIFT_SAMPLE_ROWS", 20_000),
            drift_share_threshold=_float(env, "FRAUD_DRIFT_SHARE_THRESHOLD", DRIFT_SHARE_THRESHOLD),
            score_shift_threshold=_float(env, "FRAUD_SCORE_SHIFT_THRESHOLD", SCORE_SHIFT_THRESHOLD),
            **_alert_settings(env),
            min_timestamp=_timestamp(env, "FRAUD_MIN_TIMESTAMP", DEFAULT_MIN_TIMESTAMP),
            max_clock_skew_seconds=_float(
                env, "FRAUD_MAX_CLOCK_SKEW_SECONDS", DEFAULT_MAX_CLOCK_SKEW_SECONDS
            ),
            label_window_days=_int(env, "FRAUD_LABEL_WINDOW_DAYS", 30),
            performance_lookback_days=_int(env, "FRAUD_PERFORMANCE_LOOKBACK_DAYS", 45),
            performance_eval_days=_int(env, "FRAUD_PERFORMANCE_EVAL_DAYS", 7),
            performance_metric=_get(env, "FRAUD_PERFORMANCE_METRIC", "average_precision"),
            performance_tolerance=_float(env, "FRAUD_PERFORMANCE_TOLERANCE", 0.05),
            analyst_capacity=_int(env, "FRAUD_ANALYST_CAPACITY", 100),
            entity_key=_get(env, "FRAUD_ENTITY_KEY", ""),
            redis_url=_get(env, "FRAUD_REDIS_URL", ""),
            redis_port=_int(env, "FRAUD_REDIS_PORT", 6390),
            label_refresh_seconds=_float(env, "FRAUD_LABEL_REFRESH_SECONDS", 30.0),
            model_files=parse_flag(_get(env, "FRAUD_MODEL_FILES", "on"), "FRAUD_MODEL_FILES"),
        )
        parse_flag(_get(env, "FRAUD_SPOOL_FSYNC", ""), "FRAUD_SPOOL_FSYNC")  # read by the workers
        if overrides:
            settings = replace(settings, **overrides)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        _validate_alerts(self)
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(
                f"FRAUD_THRESHOLD_RULE={self.threshold_rule!r} is unknown; "
                f"use one of {', '.join(THRESHOLD_RULES)}"
            )
        if not 0 < self.target_precision < 1:
            raise ConfigError("FRAUD_TARGET_PRECISION must be between 0 and 1, e.g. 0.9")
        if not 0 <= self.risk_medium <= self.risk_high <= 1:
            raise ConfigError(
                "risk cut points must satisfy 0 <= FRAUD_RISK_MEDIUM <= FRAUD_RISK_HIGH <= 1"
            )
        for name, port in (("FRAUD_PG_PORT", self.pg_port), ("FRAUD_REDIS_PORT", self.redis_port)):
            if not 0 < port < 65536:
                raise ConfigError(f"{name}={port} is not a TCP port; use 1-65535")
        if self.max_batch < 1:
            raise ConfigError("FRAUD_MAX_BATCH must be at least 1")
        _check_database_url(self.database_url)
        self._validate_sizes()
        if self.buffer_bytes < self.max_body_bytes:
            raise ConfigError(
                f"FRAUD_BUFFER_BYTES={self.buffer_bytes} cannot hold one body of "
                f"FRAUD_MAX_BODY_BYTES={self.max_body_bytes}; raise it or lower the body limit"
            )
        if self.eval_window_days < 1 or self.train_window_days <= self.eval_window_days:
            raise ConfigError(
                "FRAUD_TRAIN_WINDOW_DAYS must be larger than FRAUD_EVAL_WINDOW_DAYS (>= 1)"
            )
        scheme = urlsplit(self.mlflow_tracking_uri).scheme.lower()
        if scheme not in MLFLOW_SCHEMES:  # "" = a local path
            raise ConfigError(
                f"MLFLOW_TRACKING_URI: the scheme {scheme!r} has no driver in this install; use "
                "sqlite:///path, postgresql://..., http(s)://<mlflow server> or file:///path"
            )
        TimestampBounds(self.min_timestamp, self.max_clock_skew_seconds)  # ConfigError if unusable
        self._validate_performance()

    @property
    def timestamp_bounds(self) -> TimestampBounds:
        """The range every incoming timestamp must fall in (FRAUD_MIN_TIMESTAMP, now +
        FRAUD_MAX_CLOCK_SKEW_SECONDS)."""
        return TimestampBounds(self.min_timestamp, self.max_clock_skew_seconds)

    def _validate_sizes(self) -> None:
        """Counts at least 1, durations finite and positive, shares within (0, 1]."""
        at_least_one = {
            "FRAUD_MAX_BODY_BYTES": self.max_body_bytes,
            "FRAUD_LOG_BATCH_SIZE": self.log_batch_size,
            "FRAUD_MIN_LABELED_ROWS": self.min_labeled_rows,
            "FRAUD_DRIFT_SAMPLE_ROWS": self.drift_sample_rows,
        }
        for name, value in at_least_one.items():
            if value < 1:
                raise ConfigError(f"{name}={value} must be at least 1")
        durations = {
            "FRAUD_READ_TIMEOUT_SECONDS": self.read_timeout_seconds,
            "FRAUD_POLL_SECONDS": self.poll_seconds,
            "FRAUD_LOG_FLUSH_SECONDS": self.log_flush_seconds,
            "FRAUD_LABEL_REFRESH_SECONDS": self.label_refresh_seconds,
        }
        for name, value in durations.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value} must be a finite number of seconds above 0")
        if not 0 < self.drift_share_threshold <= 1:
            raise ConfigError(
                f"FRAUD_DRIFT_SHARE_THRESHOLD={self.drift_share_threshold} must be in (0, 1]"
            )
        if not (math.isfinite(self.score_shift_threshold) and self.score_shift_threshold > 0):
            raise ConfigError("FRAUD_SCORE_SHIFT_THRESHOLD (a PSI) must be a finite number above 0")

    def _validate_performance(self) -> None:
        """The performance monitor's settings (also given as CLI options and DAG Params)."""
        if self.performance_metric not in PERFORMANCE_METRICS:
            raise ConfigError(
                f"performance metric (FRAUD_PERFORMANCE_METRIC) {self.performance_metric!r} is "
                f"unknown; use one of {', '.join(PERFORMANCE_METRICS)}"
            )
        checks = (
            ("label window (FRAUD_LABEL_WINDOW_DAYS)", self.label_window_days, 0, 365),
            ("evaluation days (FRAUD_PERFORMANCE_EVAL_DAYS)", self.performance_eval_days, 1, 90),
            ("lookback (FRAUD_PERFORMANCE_LOOKBACK_DAYS)", self.performance_lookback_days, 2, 730),
            ("tolerance (FRAUD_PERFORMANCE_TOLERANCE)", self.performance_tolerance, 0, 1),
            ("analyst capacity k (FRAUD_ANALYST_CAPACITY)", self.analyst_capacity, 1, 1_000_000),
        )
        for what, value, low, high in checks:
            if not low <= value <= high:  # NaN fails too
                raise ConfigError(f"{what} must be between {low} and {high}; got {value}")
        needed = self.label_window_days + self.performance_eval_days
        if self.performance_lookback_days < needed:
            raise ConfigError(
                f"lookback (FRAUD_PERFORMANCE_LOOKBACK_DAYS) {self.performance_lookback_days} "
                f"must cover the label window plus the evaluation days ({needed}), or no "
                "cohort is ever mature enough to compare"
            )

    @property
    def embedded_postgres(self) -> bool:
        """True when no external database is configured and the project runs its own server."""
        return not self.database_url

    @property
    def alert_smtp_recipients(self) -> tuple[str, ...]:
        """FRAUD_ALERT_SMTP_TO split on commas."""
        return tuple(a.strip() for a in self.alert_smtp_to.split(",") if a.strip())

    @property
    def evidently_workspace(self) -> Path:
        """The monitoring dashboard's Evidently workspace (FRAUD_EVIDENTLY_WORKSPACE)."""
        if self.evidently_workspace_dir:
            return Path(self.evidently_workspace_dir).expanduser().resolve()
        return self.state_dir / "evidently"

    @property
    def postgres_dir(self) -> Path:
        """Data directory of the embedded Postgres server."""
        return self.state_dir / "postgres"

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL that SQLAlchemy should use (embedded server when none is set)."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"postgresql+psycopg://fraud@127.0.0.1:{self.pg_port}/fraud"

    def describe(self) -> dict[str, str]:
        """Settings as strings, with secrets masked, for logs and ``fraud config``."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                value = MASK if value else ""
            out[f.name] = redact(str(value))
        return out
