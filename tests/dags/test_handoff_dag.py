"""System test: no task of fraud_retrain reads a file another task wrote.

``dag.test()`` of fraud_retrain against the session's real Postgres and a real ``mlflow server
--serve-artifacts`` (tests/mlflow_server.py), with every task started in a working directory
of its own and its own state, reports and (unused) artifact directories, set by an Airflow
listener just before the task runs: as on a multi-host deployment, where each task may land on
another worker, only the shared stores (Postgres, the tracking server) can carry the window and
the reports from one task to the next.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from airflow.listeners import hookimpl

from fraud_lib import registry, store
from fraud_lib.config import Settings
from fraud_lib.data import generate
from fraud_lib.schema import FeatureSchema
from fraud_lib.window_store import WindowRef, load_window
from tests.dags.helpers import (
    AIRFLOW_WARNING_FILTERS,
    DAGS_FOLDER,
    settings_env,
    xcom,
)
from tests.mlflow_server import mlflow_server  # noqa: F401 - fixture used by name

pytestmark = [pytest.mark.slow, *AIRFLOW_WARNING_FILTERS]

SCHEMA = FeatureSchema()
END = datetime(2025, 9, 1, tzinfo=UTC)
CONF = {"train_window_days": 7, "eval_window_days": 1, "model_type": "lr"}
PER_TASK = ("FRAUD_STATE_DIR", "FRAUD_REPORTS_DIR", "FRAUD_SPOOL_DIR", "FRAUD_MLFLOW_ARTIFACTS")


class TaskDirs:
    """Airflow listener: a fresh working directory and state/reports/spool/artifact dirs for
    every task, entered just before the task runs (the tasks read ``Settings.from_env()``)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.dirs: dict[str, Path] = {}

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance) -> None:
        home = self.base / task_instance.task_id
        home.mkdir(parents=True)
        os.chdir(home)
        for name in PER_TASK:
            os.environ[name] = str(home / name.removeprefix("FRAUD_").lower())
        self.dirs[task_instance.task_id] = home


def _log_traffic(engine, days: int) -> None:
    """``days`` of generated traffic scored before END, labels known at scoring time."""
    traffic = SCHEMA.validate_frame(
        generate(days, rows_per_day=1500, seed=41, fraud_rate=0.02, label_delay_days=0)
    )
    offset = pd.to_timedelta(traffic[SCHEMA.time] - traffic[SCHEMA.time].min(), unit="s")
    scored = END - timedelta(days=days) + offset
    feats = traffic[[SCHEMA.time, *SCHEMA.features]].to_dict("records")
    rows = [
        {"prediction_id": f"h-{tx}", "transaction_id": f"h-{tx}", "scored_at": at.to_pydatetime(),
         "event_time": f[SCHEMA.time], "features": f, "score": 0.01}
        for tx, at, f in zip(traffic["transaction_id"], scored, feats, strict=True)
    ]  # fmt: skip
    store.insert_predictions(engine, rows)
    labels = [
        {"transaction_id": r["transaction_id"], "label": int(y), "labeled_at": r["scored_at"]}
        for r, y in zip(rows, traffic[SCHEMA.label], strict=True)
    ]
    store.upsert_labels(engine, labels)


@pytest.fixture
def world(tmp_path, pg_url, airflow_db, mlflow_server) -> Settings:  # noqa: F811
    engine = store.make_engine(pg_url)
    store.migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE predictions, labels, model_events RESTART IDENTITY")
    _log_traffic(engine, days=6)
    return Settings.from_env(
        {},
        state_dir=tmp_path / "lead" / "state",
        database_url=pg_url,
        mlflow_tracking_uri=mlflow_server.url,
        mlflow_artifact_dir=tmp_path / "lead" / "no-artifacts",
        reports_dir=tmp_path / "lead" / "reports",
        spool_dir=tmp_path / "lead" / "spool",
        experiment_name=f"handoff-{tmp_path.name}",
        model_name="fraud-handoff",
        scoring_url="http://127.0.0.1:9",  # nothing listens: the reload hint fails softly
        min_labeled_rows=2000,
        min_frauds=20,
        min_average_precision=0.01,
        min_roc_auc=0.5,
        drift_sample_rows=2000,
    )


def test_every_task_on_its_own_disk_hands_off_through_the_mlflow_server(
    monkeypatch, tmp_path, world
):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.listener import get_listener_manager

    for key, value in settings_env(world).items():
        monkeypatch.setenv(key, value)
    for name in PER_TASK:
        monkeypatch.setenv(name, os.environ[name])  # restored after the listener changed it
    monkeypatch.chdir(tmp_path)
    listener = TaskDirs(tmp_path / "workers")
    manager = get_listener_manager()
    manager.add_listener(listener)
    try:
        dag = DagBag(dag_folder=str(DAGS_FOLDER / "fraud_retrain.py")).dags["fraud_retrain"]
        run = dag.test(logical_date=END, run_conf=CONF)
    finally:
        manager.pm.unregister(listener)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {
        "ingest_labeled": "success",
        "check_drift": "success",
        "train_challenger": "success",
        "evaluate": "success",
        "promote": "success",
        "notify_serving": "success",
    }
    assert set(listener.dirs) == set(states)  # every task ran in a directory of its own

    ref = WindowRef.from_dict(xcom(run, "ingest_labeled")["ref"])
    assert ref.uri.startswith("runs:/") and ref.rows > 5000
    window = load_window(world, ref, SCHEMA)
    assert len(window) == ref.rows
    c = registry.client(world)
    experiment = c.get_experiment_by_name(world.experiment_name)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served by the server
    # nothing a later task needed is on any task's disk: no window parquet anywhere
    assert list((tmp_path / "workers").rglob("*.parquet")) == []
    assert not (tmp_path / "lead").exists()

    drift = xcom(run, "check_drift")
    assert "html_path" not in drift
    assert drift["report_uri"] == registry.runs_uri(
        ref.run_id, f"drift/fraud_retrain__{ref.artifact_path.split('/')[-1][:-8]}.html"
    )
    reports = mlflow.artifacts.download_artifacts(
        run_id=ref.run_id, artifact_path="drift", dst_path=str(tmp_path / "check")
    )
    assert {p.suffix for p in Path(reports).iterdir()} == {".html", ".json"}
    # the local copy stays on check_drift's own disk, where nobody else reads it
    assert list((listener.dirs["check_drift"] / "reports_dir").glob("*.html"))

    challenger = xcom(run, "train_challenger")
    version = c.get_model_version(world.model_name, challenger["version"])
    assert c.get_run(version.run_id).data.params["data_ref"] == ref.uri
    assert xcom(run, "promote")["event"] == "promoted"
    assert registry.alias_version(world) == challenger["version"]
