"""Airflow for the DAG tests: a throw-away AIRFLOW_HOME per test session, set before Airflow is
imported (Airflow reads its configuration at import), with the project's dags/ folder and no
example DAGs; the metadata database (SQLite) is created once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from fraud_lib.config import Settings

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
_HOME = Path(tempfile.mkdtemp(prefix="fraudloop-airflow-"))
# Registered before Airflow is imported, so it runs after Airflow's own exit handlers (which
# still touch the metadata DB).
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
)

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


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The session's Airflow metadata database, created from the ORM (no migration replay)."""
    from airflow.utils import db

    db.initdb()
    return _HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db: Path):
    """The project's DAGs, loaded with Airflow's own loader."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))
