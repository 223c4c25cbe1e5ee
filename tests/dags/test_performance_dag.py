"""System tests: ``dag.test()`` runs of fraud_performance_monitor against the session's real
Postgres and a real MLflow store (SQLite, temp dir), and the scheduler's own code turning its
asset event into a fraud_retrain run.

The world: a champion trained on 10 days of generated history (held-out AP ~0.86); 12 days of
traffic scored by it from ``START`` on, the last 6 in the ``new_pattern`` scenario (65 % of
frauds in a pattern it never saw: its daily AP falls from ~0.9 to ~0.35). Every transaction is
labeled 0-2 days (uniform) after it was scored. The monitor runs with a 2-day label window and averages
3 mature cohorts. The tests run in file order.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_lib import assets, promotion, registry, store
from fraud_lib.config import Settings
from fraud_lib.data import generate
from fraud_lib.features import predict_scores
from fraud_lib.monitoring import cohorts as cohorts_lib
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model
from tests.alert_receivers import webhook  # noqa: F401 - fixture used by name
from tests.dags.helpers import (
    AIRFLOW_WARNING_FILTERS,
    DAGS_FOLDER,
    asset_events,
    settings_env,
    xcom,
)
from tests.local_settings import local_settings

pytestmark = [pytest.mark.slow, *AIRFLOW_WARNING_FILTERS]

SCHEMA = FeatureSchema()
ROWS_PER_DAY, HISTORY_DAYS, TRAFFIC_DAYS, NEW_PATTERN_FROM = 3000, 10, 12, 6
START = datetime(2025, 9, 1, tzinfo=UTC)
CONF = {"label_window_days": 2, "lookback_days": 12, "eval_days": 3, "tolerance": 0.15}
DAG_ID = "fraud_performance_monitor"


@pytest.fixture(scope="module")
def world(tmp_path_factory, pg_url: str, airflow_db: Path) -> Settings:
    """The session's Postgres (emptied once for this module) seeded as described above."""
    engine = store.make_engine(pg_url)
    store.migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE predictions, labels, model_events, performance_cohorts RESTART IDENTITY"
        )
    tmp = tmp_path_factory.mktemp("performance")
    settings = local_settings(
        tmp,
        pg_url,
        model_name="fraud-performance",
    )
    history = SCHEMA.validate_frame(
        generate(HISTORY_DAYS, rows_per_day=ROWS_PER_DAY, seed=41, fraud_rate=0.01)
    )
    trained = train_model(history, SCHEMA, test_fraction=0.2)
    champion = registry.log_model(trained, settings)
    held_out = history[history[SCHEMA.time] > trained.time_range["fit_end"]]
    assert promotion.promote_if_better(settings, engine, held_out, champion.version).promote
    traffic = SCHEMA.validate_frame(
        generate(
            TRAFFIC_DAYS,
            rows_per_day=ROWS_PER_DAY,
            seed=42,
            fraud_rate=0.01,
            scenario="new_pattern",
            start_day=HISTORY_DAYS,
            drift_start_day=HISTORY_DAYS + NEW_PATTERN_FROM,
            label_delay_days=0,
        )
    )
    _log(engine, settings, traffic, predict_scores(trained.model, traffic, SCHEMA), trained)
    return settings


def _log(engine, settings: Settings, traffic: pd.DataFrame, scores, trained) -> None:
    offset = traffic[SCHEMA.time] - HISTORY_DAYS * 86_400
    scored_at = START + pd.to_timedelta(offset, unit="s")
    version = registry.alias_version(settings)
    rows = [
        {
            "prediction_id": f"p-{tx}",
            "transaction_id": tx,
            "scored_at": at.to_pydatetime(),
            "features": {"V1": 0.0},  # not read by the monitor
            "score": float(score),
            "threshold": trained.threshold,
            "model_name": settings.model_name,
            "model_version": version,
        }
        for tx, at, score in zip(traffic["transaction_id"], scored_at, scores, strict=True)
    ]
    store.insert_predictions(engine, rows)
    delays = np.random.default_rng(5).uniform(0, 2, len(rows))
    store.upsert_labels(
        engine,
        [
            {"transaction_id": r["transaction_id"], "label": int(y), "source": "test",
             "labeled_at": r["scored_at"] + timedelta(days=float(d))}
            for r, y, d in zip(rows, traffic[SCHEMA.label], delays, strict=True)
        ],
    )  # fmt: skip


def _run(monkeypatch, settings: Settings, as_of: datetime, conf: dict[str, Any] | None = None):
    """One dag.test() run whose data interval ends at ``as_of``; (run, {task: state})."""
    from airflow.dag_processing.dagbag import DagBag

    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    dag = DagBag(dag_folder=str(DAGS_FOLDER / f"{DAG_ID}.py")).dags[DAG_ID]
    run = dag.test(logical_date=as_of, run_conf=conf or CONF)
    assert run.data_interval_end == as_of
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _stored(settings: Settings, as_of: datetime) -> list[dict[str, Any]]:
    return cohorts_lib.stored_cohorts(store.make_engine(settings.database_url), as_of)


def test_young_cohorts_stay_provisional_and_no_drop_emits_nothing(monkeypatch, world):
    as_of = START + timedelta(days=NEW_PATTERN_FROM)  # before the new pattern
    run, states = _run(monkeypatch, world, as_of)
    assert states == {"measure_cohorts": "success", "emit_performance_event": "skipped"}
    summary = xcom(run, "measure_cohorts")
    decision = summary["decision"]
    assert decision["drop_detected"] is False and decision["recent"] > 0.75
    assert decision["references"]["first_mature"] is None  # first and latest days overlap
    rows = {r["cohort_day"]: r for r in _stored(world, as_of)}
    assert sorted(rows) == [f"2025-09-0{d}" for d in range(1, 7)]
    assert [rows[d]["mature"] for d in sorted(rows)] == [True] * 4 + [False] * 2
    # labels arrive 0-2 days after scoring: the last two days are labeled in part
    assert all(rows[d]["label_coverage"] == 1.0 for d in sorted(rows)[:4])
    assert 0.65 < rows["2025-09-05"]["label_coverage"] < 0.85
    assert 0.15 < rows["2025-09-06"]["label_coverage"] < 0.35
    assert asset_events(run) == []


def _unpause(dag_id: str) -> None:
    """Unpause ``dag_id``, first writing the DAG folder's DAGs to the metadata DB if it is not
    there (``dag.test()`` writes them, but only an earlier test of the session ran one)."""
    from airflow import settings as airflow_settings
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.dag import DagModel

    with airflow_settings.Session() as session:
        if session.get(DagModel, dag_id) is None:
            manager = DagBundlesManager()
            manager.sync_bundles_to_db(session=session)
            session.commit()
            for bundle in manager.get_all_dag_bundles():
                bundle.initialize()
                bag = BundleDagBag(bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
                sync_bag_to_db(bag, bundle.name, bundle.version)
        session.get(DagModel, dag_id).is_paused = False
        session.commit()


def _scheduler_creates_asset_triggered_runs() -> list[Any]:
    """What one scheduler loop does for asset-scheduled DAGs, with the scheduler's own code."""
    from airflow import settings as airflow_settings
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel

    with airflow_settings.Session() as session:
        query, triggered = DagModel.dags_needing_dagruns(session)
        due = [d for d in query.all() if d.dag_id in triggered]
        runner = SchedulerJobRunner(job=Job(), num_runs=1)
        runner._create_dag_runs_asset_triggered(dag_models=due, session=session)
        session.commit()
        return [d.dag_id for d in due]


def test_a_drop_emits_the_asset_and_starts_fraud_retrain(monkeypatch, world, webhook):  # noqa: F811
    from airflow import settings as airflow_settings
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType
    from sqlalchemy import select

    _unpause("fraud_retrain")
    monkeypatch.setenv("FRAUD_ALERT_WEBHOOK_URL", webhook.url)
    as_of = START + timedelta(days=TRAFFIC_DAYS)
    started = time.monotonic()
    run, states = _run(monkeypatch, world, as_of)
    assert states == {"measure_cohorts": "success", "emit_performance_event": "success"}
    decision = xcom(run, "measure_cohorts")["decision"]
    assert decision["recent_days"] == ["2025-09-08", "2025-09-09", "2025-09-10"]
    assert decision["drop_detected"] and len(decision["reasons"]) == 2  # below both promises
    assert decision["recent"] < 0.6 < 0.8 < decision["references"]["first_mature"]
    (event,) = asset_events(run)
    assert event.source_task_id == "emit_performance_event"
    assert event.extra["champion_version"] == decision["champion_version"]
    assert event.extra["reasons"] == decision["reasons"]
    (post,) = webhook.wait_for(1)  # the team is paged once, with the numbers
    assert post["json"]["kind"] == "performance_below_tolerance"
    assert post["json"]["numbers"]["average_precision"] == pytest.approx(
        decision["recent"], abs=1e-4
    )
    with airflow_settings.Session() as session:
        queued = session.scalars(select(AssetDagRunQueue.target_dag_id)).all()
    assert queued == ["fraud_retrain"]  # the scheduler's queue of asset-triggered DAGs

    assert _scheduler_creates_asset_triggered_runs() == ["fraud_retrain"]
    with airflow_settings.Session() as session:
        (retrain,) = session.scalars(  # other tests of the session ran fraud_retrain too
            select(DagRun).where(
                DagRun.dag_id == "fraud_retrain", DagRun.run_type == DagRunType.ASSET_TRIGGERED
            )
        )
        assert retrain.state == DagRunState.QUEUED
        # it consumes this event (and any drift event an earlier test of the session left)
        consumed = {e.id: e.asset.name for e in retrain.consumed_asset_events}
        assert consumed[event.id] == assets.PERFORMANCE
        # the scheduler starts a queued run and schedules its first task
        retrain.state = DagRunState.RUNNING
        retrain.dag = _retrain_dag()
        schedulable, _ = retrain.update_state(session=session)
        assert [ti.task_id for ti in schedulable] == ["ingest_labeled"]
        session.rollback()
    print(f"drop -> fraud_retrain run queued in {time.monotonic() - started:.1f} s")


def _retrain_dag():
    from airflow.models.serialized_dag import SerializedDagModel

    return SerializedDagModel.get("fraud_retrain").dag


def test_rerunning_the_same_interval_is_idempotent(monkeypatch, world):
    as_of = START + timedelta(days=TRAFFIC_DAYS)
    before = _stored(world, as_of)
    report = json.loads(Path(_report_path(world, as_of)).read_text())
    run, states = _run(monkeypatch, world, as_of)
    assert states["measure_cohorts"] == "success"
    summary = xcom(run, "measure_cohorts")
    assert _stored(world, as_of) == before
    again = json.loads(Path(summary["json_path"]).read_text())
    assert again["cohorts"] == report["cohorts"] and again["decision"] == report["decision"]
    runs = registry.client(world).search_runs(
        [registry.ensure_experiment(world)], filter_string="tags.`fraudloop.kind` = 'performance'"
    )
    assert len(runs) == 2 and summary["mlflow_run_id"] in {r.info.run_id for r in runs}
    assert Path(summary["html_path"]).stat().st_size > 100_000


def _report_path(settings: Settings, as_of: datetime) -> str:
    name = f"fraud_performance_monitor__{as_of:%Y%m%dT%H%M%SZ}.json"
    return str(settings.reports_dir / name)


def test_the_drop_counts_on_the_first_day_the_new_pattern_is_mature(world):
    from fraud_lib.monitoring import performance

    settings = performance.with_options(world, **CONF)
    engine = store.make_engine(world.database_url)
    found = {}
    for day in range(NEW_PATTERN_FROM + 1, TRAFFIC_DAYS + 1):
        as_of = START + timedelta(days=day)
        result = performance.performance_monitor(settings, engine, as_of=as_of, report=False)
        found[as_of.date().isoformat()] = result.drop_detected
    # the new pattern starts on 2025-09-07; that cohort is mature on 2025-09-10 00:00 (its day
    # + the 2-day window), and the fall (~0.5 AP) moves the 3-day mean past the tolerance at once
    assert found == {f"2025-09-{d:02d}": d >= 10 for d in range(8, 14)}
