"""Constants and helpers the DAG tests share (no side effects: the Airflow environment is set
up once, in conftest.py, before Airflow is imported)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud_lib.config import Settings

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"

# Warnings raised inside Airflow's own modules that pytest's filterwarnings=error would turn into
# task failures; apply with ``pytestmark = AIRFLOW_WARNING_FILTERS``.
AIRFLOW_WARNING_FILTERS = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

# Settings field -> environment variable, for the fields the DAG tests set (the tasks read
# Settings.from_env() like they do under a real scheduler).
ENV_NAMES = {
    "state_dir": "FRAUD_STATE_DIR",
    "database_url": "FRAUD_DATABASE_URL",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_artifact_dir": "FRAUD_MLFLOW_ARTIFACTS",
    "experiment_name": "FRAUD_EXPERIMENT",
    "model_name": "FRAUD_MODEL_NAME",
    "reports_dir": "FRAUD_REPORTS_DIR",
    "spool_dir": "FRAUD_SPOOL_DIR",
    "scoring_url": "FRAUD_SCORING_URL",
    "min_labeled_rows": "FRAUD_MIN_LABELED_ROWS",
    "min_frauds": "FRAUD_MIN_FRAUDS",
    "min_average_precision": "FRAUD_MIN_AVERAGE_PRECISION",
    "min_roc_auc": "FRAUD_MIN_ROC_AUC",
    "drift_sample_rows": "FRAUD_DRIFT_SAMPLE_ROWS",
    "drift_share_threshold": "FRAUD_DRIFT_SHARE_THRESHOLD",
    "score_shift_threshold": "FRAUD_SCORE_SHIFT_THRESHOLD",
    "initial_data": "FRAUD_INITIAL_DATA",
}


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment under which ``Settings.from_env()`` rebuilds ``settings``' fields above."""
    return {env: str(getattr(settings, field)) for field, env in ENV_NAMES.items()}
