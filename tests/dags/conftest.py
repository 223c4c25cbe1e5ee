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

from tests.dags.helpers import DAGS_FOLDER

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
