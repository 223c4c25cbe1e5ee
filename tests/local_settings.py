"""Settings for a test on the session's Postgres: every state directory under one temp dir, a
SQLite MLflow store there, no FRAUD_* from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fraud_lib.config import Settings


def local_settings(tmp: Path, pg_url: str, **overrides: Any) -> Settings:
    """Settings with state, MLflow store and artifacts, reports and spool under ``tmp``."""
    return Settings.from_env(
        {},
        state_dir=tmp / "state",
        database_url=pg_url,
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        mlflow_artifact_dir=tmp / "mlartifacts",
        reports_dir=tmp / "reports",
        spool_dir=tmp / "spool",
        **overrides,
    )
