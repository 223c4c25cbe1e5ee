"""Constants and helpers the DAG tests share (no side effects: the Airflow environment is set
up once, in conftest.py, before Airflow is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def xcom(run: Any, task_id: str) -> Any:
    """The return value a task of ``run`` (a ``dag.test()`` DagRun) pushed, or None."""
    from airflow import settings as airflow_settings
    from airflow.models.xcom import XComModel

    with airflow_settings.Session() as session:
        query = XComModel.get_many(
            run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key="return_value"
        )
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def asset_events(run: Any) -> list[Any]:
    """The asset events the tasks of ``run`` emitted (Airflow ``AssetEvent`` rows)."""
    from airflow import settings as airflow_settings
    from airflow.models.asset import AssetEvent
    from sqlalchemy import select

    with airflow_settings.Session() as session:
        query = select(AssetEvent).where(AssetEvent.source_run_id == run.run_id)
        return list(session.scalars(query))
