"""System test: a label stored with labeled_at 1600-01-01 (before the range was enforced) no
longer fails ``ingest_labeled`` for good; the run proceeds and the task log says what it left
out. A few rows only: the run is skipped for too few labels, which is what proceeds means here."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from fraud_lib import store
from tests.dags.helpers import AIRFLOW_WARNING_FILTERS, DAGS_FOLDER, settings_env
from tests.lib.test_store import many
from tests.local_settings import local_settings

pytestmark = [pytest.mark.slow, *AIRFLOW_WARNING_FILTERS]

END = datetime(2024, 3, 4, tzinfo=UTC)


def test_a_stored_1600_label_does_not_stop_the_retrain(
    monkeypatch, tmp_path, pg_url, pg_engine, airflow_db, capfd, caplog
):
    from airflow.dag_processing.dagbag import DagBag

    caplog.set_level(logging.INFO, logger="fraudloop")  # the DAG's task summaries are INFO
    rows = many(5, start=END - timedelta(days=2))
    store.insert_predictions(pg_engine, rows)
    good = [{"transaction_id": r["transaction_id"], "label": 0, "labeled_at": END} for r in rows]
    store.upsert_labels(pg_engine, good[:4])
    with pg_engine.begin() as conn:  # as stored before the range was enforced
        conn.execute(
            sa.text(
                "INSERT INTO labels (transaction_id, label, labeled_at) "
                "VALUES (:tx, 1, '1600-01-01T00:00:00Z')"
            ),
            {"tx": rows[4]["transaction_id"]},
        )
    settings = local_settings(tmp_path, pg_url)
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    dag = DagBag(dag_folder=str(DAGS_FOLDER / "fraud_retrain.py")).dags["fraud_retrain"]
    run = dag.test(logical_date=END, run_conf={"dry_run": True, "train_window_days": 7})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["ingest_labeled"] == "skipped", states  # it failed with OutOfBoundsDatetime
    assert str(run.state) == "success"
    logs = caplog.text + "".join(capfd.readouterr())
    assert "OutOfBoundsDatetime" not in logs
    assert "skipped 1 label(s) with labeled_at outside [2000-01-01T00:00:00Z, now+300s]" in logs
    assert "window 20240304T000000Z_7d: 4 rows" in logs  # the four good labels
