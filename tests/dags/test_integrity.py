"""DAG integrity: Airflow's own loader finds the DAGs without import errors, as declared
(tags, owners, retries, schedules, Params), and each file parses fast with no heavy imports."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.dags.helpers import AIRFLOW_WARNING_FILTERS, DAGS_FOLDER

pytestmark = AIRFLOW_WARNING_FILTERS

DAG_IDS = {"fraud_retrain", "fraud_drift_monitor", "fraud_performance_monitor"}
IO_TASKS = {"fraud_retrain": {"ingest_labeled", "evaluate", "promote"}}
HEAVY_MODULES = (
    "pandas",
    "numpy",
    "sklearn",
    "mlflow",
    "evidently",
    "fraud_lib.cycle",
    "fraud_lib.promotion",
    "fraud_lib.registry",
    "fraud_lib.window",
)


def test_dagbag_loads_every_dag_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_has_tags_owner_retries_docs_and_one_active_run(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert "fraudloop" in dag.tags and len(dag.tags) >= 2
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.doc_md and dag.dag_id in dag.doc_md
    assert dag.default_args["retries"] >= 1
    for task in dag.tasks:
        assert task.owner == "fraudloop"
    for task_id in IO_TASKS.get(dag_id, ()):
        task = dag.get_task(task_id)
        assert task.retries >= 2 and task.retry_exponential_backoff > 1
        assert task.max_retry_delay == timedelta(minutes=5)


def test_retrain_tasks_and_order(dagbag):
    dag = dagbag.dags["fraud_retrain"]
    chain = [
        "ingest_labeled",
        "check_drift",
        "train_challenger",
        "evaluate",
        "promote",
        "notify_serving",
    ]
    assert {t.task_id for t in dag.tasks} == set(chain)
    for before, after in itertools.pairwise(chain):
        assert after in dag.get_task(before).downstream_task_ids


def test_retrain_schedule_is_weekly_or_the_drift_or_the_performance_asset(dagbag):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
    from airflow.sdk.definitions.asset import AssetAny

    from fraud_lib import assets

    retrain = dagbag.dags["fraud_retrain"]
    drift, performance = (dagbag.dags[d] for d in ("fraud_drift_monitor",
                                                    "fraud_performance_monitor"))  # fmt: skip
    schedule = retrain.timetable
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, CronTriggerTimetable)
    assert schedule.timetable.expression == "0 0 * * 1"  # Mondays 00:00 UTC
    assert isinstance(schedule.asset_condition, AssetAny)  # either asset alone starts a run
    (drift_outlet,) = drift.get_task("emit_drift_event").outlets
    (perf_outlet,) = performance.get_task("emit_performance_event").outlets
    assert [a.uri for a in schedule.asset_condition.objects] == [drift_outlet.uri, perf_outlet.uri]
    assert [drift_outlet.name, perf_outlet.name] == [assets.DRIFT, assets.PERFORMANCE]
    for monitor in (drift, performance):
        assert isinstance(monitor.timetable, CronTriggerTimetable)
        assert monitor.timetable.expression == "0 0 * * *"
    # The DAG list shows only the assets: the docs state the cron actually used, Airflow 3 words
    assert f"cron `{schedule.timetable.expression}`" in retrain.doc_md
    assert "**Trigger**" in retrain.doc_md and "w/ config" not in retrain.doc_md


def test_performance_monitor_params_share_the_metric_list(dagbag):
    from fraud_lib.config import PERFORMANCE_METRICS

    dag = dagbag.dags["fraud_performance_monitor"]
    assert [t.task_id for t in dag.tasks] == ["measure_cohorts", "emit_performance_event"]
    params = dag.params
    assert set(params.dump()) == {"label_window_days", "lookback_days", "eval_days", "metric",
                                  "tolerance", "k"}  # fmt: skip
    assert all(v is None for v in params.dump().values())  # empty: the FRAUD_* settings
    assert params.get_param("metric").schema["enum"] == [None, *PERFORMANCE_METRICS]
    for name in params.dump():
        assert len(params.get_param(name).description) > 20, name


def test_retrain_params_are_declared_with_descriptions(dagbag):
    params = dagbag.dags["fraud_retrain"].params
    expected = {
        "train_window_days": None,
        "eval_window_days": None,
        "model_type": "hgb",
        "resample": "none",
        "min_improvement": None,
        "force_promotion": False,
        "dry_run": False,
    }
    assert params.dump() == expected
    for name in expected:
        assert len(params.get_param(name).description) > 20, name
    assert params.get_param("model_type").schema["enum"] == ["hgb", "lr", "rf"]
    assert params.get_param("resample").schema["enum"] == ["none", "smote", "undersample"]
    assert params.get_param("force_promotion").schema["type"] == "boolean"


_PARSE = """
import importlib.util, json, sys, time
import airflow.sdk  # the DAG processor has Airflow loaded already; time the file alone
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
spec = importlib.util.spec_from_file_location("dagfile", sys.argv[1])
started = time.perf_counter()
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps({"seconds": time.perf_counter() - started,
                  "heavy": [m for m in sys.argv[2:] if m in sys.modules]}))
"""


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_file_parses_fast_without_heavy_imports(dag_id):
    path = DAGS_FOLDER / f"{dag_id}.py"
    out = subprocess.run(
        [sys.executable, "-c", _PARSE, str(path), *HEAVY_MODULES],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
        timeout=120,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["seconds"] < 1.0
