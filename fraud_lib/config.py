"""One frozen ``Settings`` object, read from the environment at call time.

Every variable is documented in the README's configuration table; the defaults work with no
configuration at all (embedded Postgres and a local MLflow store under the state directory).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fraud_lib.errors import ConfigError

THRESHOLD_RULES = ("f1", "cost", "precision")
# Drift decision defaults, shared by the settings and fraud_lib.drift.drift_report.
DRIFT_SHARE_THRESHOLD = 0.05  # share of drifted features that is drift
SCORE_SHIFT_THRESHOLD = 0.1  # score PSI that is drift


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
        )
        if overrides:
            settings = replace(settings, **overrides)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
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
        if self.max_batch < 1:
            raise ConfigError("FRAUD_MAX_BATCH must be at least 1")
        if not self.read_timeout_seconds > 0:
            raise ConfigError("FRAUD_READ_TIMEOUT_SECONDS must be above 0, e.g. 10")
        if self.buffer_bytes < self.max_body_bytes:
            raise ConfigError(
                f"FRAUD_BUFFER_BYTES={self.buffer_bytes} cannot hold one body of "
                f"FRAUD_MAX_BODY_BYTES={self.max_body_bytes}; raise it or lower the body limit"
            )
        if self.eval_window_days < 1 or self.train_window_days <= self.eval_window_days:
            raise ConfigError(
                "FRAUD_TRAIN_WINDOW_DAYS must be larger than FRAUD_EVAL_WINDOW_DAYS (>= 1)"
            )

    @property
    def embedded_postgres(self) -> bool:
        """True when no external database is configured and the project runs its own server."""
        return not self.database_url

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
            if f.name == "admin_token":
                value = "***" if value else ""
            elif isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1]:
                scheme, rest = value.split("://", 1)  # any URL: hide user:password
                value = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
            out[f.name] = str(value)
        return out
