"""System tests: ``dag.test()`` runs of fraud_retrain and fraud_drift_monitor against the session's
real Postgres and a real MLflow store (SQLite, temp dir), seeded with generated traffic.

Two worlds, each with its own MLflow store, model name and scoring-time range in Postgres:

* ``stable``: the champion was trained on days 0-9; 14 more days of the same process are logged.
* ``drifted``: same champion recipe; the 14 logged days follow the ``new_pattern`` scenario (65 %
  of frauds use a V4/V12/V20 pattern the champion never saw, V4 and V12 shift for every row).

Predictions are logged with the champion's scores at ``scored_at`` = the interval end minus
14 days plus the event time offset; labels are known at scoring time. The tests run in file
order (monitor before retraining, since a promotion changes the drifted world's reference).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fraud_lib import promotion, registry, store
from fraud_lib.config import Settings
from fraud_lib.data import generate
from fraud_lib.features import predict_scores
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model
from fraud_lib.window import run_key_for
from fraud_lib.window_store import WindowRef, load_window
from tests.alert_receivers import webhook  # noqa: F401 - fixture used by name
from tests.dags.helpers import (
    AIRFLOW_WARNING_FILTERS,
    DAGS_FOLDER,
    asset_events,
    settings_env,
    xcom,
)
from tests.lib.drift_html import assert_report_agrees
from tests.local_settings import local_settings

pytestmark = [pytest.mark.slow, *AIRFLOW_WARNING_FILTERS]

SCHEMA = FeatureSchema()
ROWS_PER_DAY = 3000
HISTORY_DAYS, TRAFFIC_DAYS = 10, 14
CONF = {"train_window_days": 14, "eval_window_days": 3}


@dataclass
class World:
    settings: Settings
    end: datetime
    champion: str


def _world_settings(tmp: Path, pg_url: str, name: str, **overrides: Any) -> Settings:
    return local_settings(
        tmp,
        pg_url,
        model_name=f"fraud-{name}",
        scoring_url="http://127.0.0.1:9",  # nothing listens: the reload hint fails softly
        min_labeled_rows=5000,
        min_frauds=20,
        drift_sample_rows=5000,
        # 2 of 29 features (V4, V12 in new_pattern) moving >= 0.1 sd is drift here.
        drift_share_threshold=0.05,
        **overrides,
    )


def _seed(settings: Settings, engine: Any, *, scenario: str, seed: int, end: datetime) -> str:
    history = SCHEMA.validate_frame(
        generate(HISTORY_DAYS, rows_per_day=ROWS_PER_DAY, seed=seed, fraud_rate=0.005)
    )
    trained = train_model(history, SCHEMA, test_fraction=0.2)
    champion = registry.log_model(trained, settings)
    held_out = history[history[SCHEMA.time] > trained.time_range["fit_end"]]
    first = promotion.promote_if_better(settings, engine, held_out, champion.version)
    assert first.event == "promoted", first.reason

    traffic = generate(
        TRAFFIC_DAYS,
        rows_per_day=ROWS_PER_DAY,
        seed=seed + 1,
        fraud_rate=0.005,
        scenario=scenario,
        drift_start_day=HISTORY_DAYS,
        start_day=HISTORY_DAYS,
        label_delay_days=0,
    )
    traffic = SCHEMA.validate_frame(traffic)
    scores = predict_scores(trained.model, traffic, SCHEMA)
    offset = traffic[SCHEMA.time] - HISTORY_DAYS * 86_400
    scored_at = end - timedelta(days=TRAFFIC_DAYS) + pd.to_timedelta(offset, unit="s")
    features = traffic[[SCHEMA.time, *SCHEMA.features]].to_dict("records")
    rows = [
        {
            "prediction_id": f"p-{tx}",
            "transaction_id": tx,
            "scored_at": at.to_pydatetime(),
            "event_time": feats[SCHEMA.time],
            "features": feats,
            "score": float(score),
            "is_fraud": bool(score >= trained.threshold),
            "threshold": trained.threshold,
            "risk_level": "low",
            "model_name": settings.model_name,
            "model_version": champion.version,
        }
        for tx, at, feats, score in zip(
            traffic["transaction_id"], scored_at, features, scores, strict=True
        )
    ]
    for i in range(0, len(rows), 10_000):
        store.insert_predictions(engine, rows[i : i + 10_000])
    store.upsert_labels(
        engine,
        [
            {
                "transaction_id": r["transaction_id"],
                "label": int(y),
                "labeled_at": r["scored_at"],
                "source": "test",
            }
            for r, y in zip(rows, traffic[SCHEMA.label], strict=True)
        ],
    )
    return champion.version


@pytest.fixture(scope="module")
def engine(pg_url: str, airflow_db: Path):
    """The session's Postgres, emptied once for this module (the worlds live in it)."""
    engine = store.make_engine(pg_url)
    store.migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE predictions, labels, model_events RESTART IDENTITY")
    return engine


@pytest.fixture(scope="module")
def stable(tmp_path_factory, pg_url, engine) -> World:
    # Floors low enough that a weak challenger is judged by the margin, not by a floor.
    settings = _world_settings(
        tmp_path_factory.mktemp("stable"),
        pg_url,
        "stable",
        min_average_precision=0.01,
        min_roc_auc=0.5,
    )
    end = datetime(2025, 3, 3, tzinfo=UTC)
    return World(settings, end, _seed(settings, engine, scenario="none", seed=21, end=end))


@pytest.fixture(scope="module")
def drifted(tmp_path_factory, pg_url, engine) -> World:
    settings = _world_settings(tmp_path_factory.mktemp("drifted"), pg_url, "drifted")
    end = datetime(2025, 6, 2, tzinfo=UTC)
    return World(settings, end, _seed(settings, engine, scenario="new_pattern", seed=31, end=end))


def _run(monkeypatch, world: World, dag_id: str, *, conf=None, at=None):
    """One dag.test() run with the world's settings in the environment; (run, {task: state}).

    The DAG is loaded afresh for every run: in-process task runs write the run's conf into the
    task objects' params, so a reused DAG object would leak one run's Params into the next.
    """
    from airflow.dag_processing.dagbag import DagBag

    for key, value in settings_env(world.settings).items():
        monkeypatch.setenv(key, value)
    dag = DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py")).dags[dag_id]
    run = dag.test(logical_date=at or world.end, run_conf=conf or {})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return run, states


@dataclass
class Output:
    """What a dag.test() run wrote outside the task log records, and the DAGs' own records."""

    stdout: str
    stderr: str
    records: list[logging.LogRecord]

    def messages(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


def _run_captured(monkeypatch, capfd, caplog, world: World, dag_id: str, **kwargs):
    """:func:`_run` with the process's stdout/stderr (file descriptors) and the INFO records
    of the DAG files' loggers captured. In a real task process every stderr line becomes an
    ERROR line of the task log, and print() output travels apart from the log records (it
    lands after the "Post Execute" marker): a task that is quiet on both, and logs through
    ``logging``, gives a task log with no ERROR line and its summary in the main section."""
    caplog.set_level(logging.INFO, logger="fraudloop.dags")
    capfd.readouterr()
    run, states = _run(monkeypatch, world, dag_id, **kwargs)
    out, err = capfd.readouterr()
    records = [r for r in caplog.records if r.name.startswith("fraudloop.dags")]
    return run, states, Output(out, err, records)


def _artifact(world: World, uri: str) -> Path:
    """A ``runs:/`` artifact of the world's MLflow store, downloaded."""
    import mlflow

    registry.client(world.settings)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))


def _drift_report(summary: dict[str, Any], world: World | None = None) -> dict[str, Any]:
    """The saved JSON of a drift check (the monitor's local file, or the retraining run's
    artifact), after checking that its HTML headline agrees."""
    if world is None:
        saved = json.loads(Path(summary["json_path"]).read_text())
    else:
        saved = json.loads(_artifact(world, summary["report_json_uri"]).read_text())
    assert_report_agrees(saved)
    return saved


def _events(engine, world: World) -> list[dict[str, Any]]:
    return store.model_events(engine, world.settings.model_name)


# ------------------------------------------------------------------------------ monitor
def test_monitor_without_drift_emits_no_asset_event(monkeypatch, capfd, caplog, stable):
    run, states, output = _run_captured(monkeypatch, capfd, caplog, stable, "fraud_drift_monitor")
    assert states == {"compare_recent": "success", "emit_drift_event": "skipped"}
    assert output.stderr == "" and output.stdout == ""  # no tqdm bar, nothing printed
    assert "drift not detected in" in output.messages()
    assert all(r.levelno < logging.WARNING for r in output.records)
    summary = xcom(run, "compare_recent")
    saved = _drift_report(summary)
    assert saved["context"]["DAG run"] == f"fraud_drift_monitor {run.run_id}"
    assert saved["context"]["champion"] == f"v{stable.champion}"
    assert summary["drift_detected"] is False and summary["drifted_columns"] == []
    assert summary["rows"]["current"] > 2000  # the last day of logged traffic
    assert Path(summary["html_path"]).stat().st_size > 1_000_000
    assert asset_events(run) == []


def test_monitor_with_drift_emits_the_asset_event_and_alerts(
    monkeypatch,
    engine,
    drifted,
    webhook,  # noqa: F811
):
    assert registry.alias_version(drifted.settings) == drifted.champion
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE alert_log")
    monkeypatch.setenv("FRAUD_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("FRAUD_PUBLIC_AIRFLOW_URL", "http://airflow.example:8080")
    run, states = _run(monkeypatch, drifted, "fraud_drift_monitor")
    assert states == {"compare_recent": "success", "emit_drift_event": "success"}
    summary = xcom(run, "compare_recent")
    assert summary["drift_detected"] is True
    assert {"V4", "V12"} <= set(summary["drifted_columns"])
    events = asset_events(run)
    assert len(events) == 1 and events[0].source_task_id == "emit_drift_event"
    assert events[0].extra["champion_version"] == drifted.champion
    assert events[0].extra["report"] == summary["html_path"]
    assert _drift_report(summary)["drift_detected"] is True
    (post,) = webhook.wait_for(1)
    alert = post["json"]
    assert alert["kind"] == "drift_detected" and alert["links"]["report"] == summary["html_path"]
    assert alert["numbers"]["drifted_share"] == pytest.approx(summary["drifted_share"])
    airflow = "http://airflow.example:8080/dags/fraud_drift_monitor/runs/"
    assert alert["links"]["Airflow run"].startswith(airflow)


# ------------------------------------------------------------------------------ retraining
def test_no_drift_writes_report_and_rejects_a_challenger_that_is_not_better(
    monkeypatch, engine, stable
):
    # A logistic regression cannot see the V3/V10 interaction behind the classic fraud pattern.
    conf = {**CONF, "model_type": "lr"}
    run, states = _run(monkeypatch, stable, "fraud_retrain", conf=conf)
    assert states == {
        "ingest_labeled": "success",
        "check_drift": "success",
        "train_challenger": "success",
        "evaluate": "success",
        "promote": "success",
        "notify_serving": "skipped",
    }
    window = xcom(run, "ingest_labeled")
    assert window["rows"] == TRAFFIC_DAYS * ROWS_PER_DAY and window["initial_rows"] == 0
    drift = xcom(run, "check_drift")
    assert drift["drift_detected"] is False
    report = _drift_report(drift, stable)
    assert report["rows"]["current_used"] == 5000 and "sample" in report["sampling"]
    assert report["context"]["DAG run"] == f"fraud_retrain {run.run_id}"
    assert "html_path" not in drift and drift["report_uri"].startswith("runs:/")
    assert _artifact(stable, drift["report_uri"]).stat().st_size > 1_000_000
    local_copy = stable.settings.reports_dir / Path(drift["report_uri"]).name
    assert local_copy.exists()  # the single-machine copy in drift_reports/
    outcome = xcom(run, "promote")
    assert outcome["event"] == "rejected" and "does not beat champion" in outcome["reason"]
    assert registry.alias_version(stable.settings) == stable.champion
    assert _events(engine, stable)[0]["event"] == "rejected"
    decision = xcom(run, "evaluate")
    assert decision["champion_metrics"]["average_precision"] is not None
    assert decision["n_eval"] < window["rows"] / 3  # the last 3 of 14 days, held out


def test_new_pattern_drift_promotes_the_challenger(monkeypatch, capfd, caplog, engine, drifted):
    run, states, output = _run_captured(
        monkeypatch, capfd, caplog, drifted, "fraud_retrain", conf=CONF
    )
    assert states["promote"] == "success" and states["notify_serving"] == "success"
    # MLflow's progress bars, notices and log lines are not on stderr; nothing is printed
    assert output.stderr == "" and output.stdout == ""
    assert "fraud_retrain summary" in output.messages()
    assert "decision: promoted" in output.messages()
    drift = xcom(run, "check_drift")
    assert drift["drift_detected"] is True and {"V4", "V12"} <= set(drift["drifted_columns"])
    assert _drift_report(drift, drifted)["evidently_dataset_drift"]["drift_share"] == 0.05
    challenger = xcom(run, "train_challenger")
    decision = xcom(run, "promote")
    assert decision["event"] == "promoted", decision["reason"]
    assert registry.alias_version(drifted.settings) == challenger["version"] != drifted.champion
    ev = xcom(run, "evaluate")
    assert (
        ev["challenger_metrics"]["average_precision"]
        > ev["champion_metrics"]["average_precision"] + 0.05
    )
    row = _events(engine, drifted)[0]
    assert row["event"] == "promoted" and row["version"] == challenger["version"]
    assert row["previous_version"] == drifted.champion
    assert row["run_id"] == xcom(run, "ingest_labeled")["run_key"]
    assert xcom(run, "notify_serving") is False  # nothing listens; a warning, not a failure
    mlflow_run = registry.client(drifted.settings).search_runs(
        [registry.ensure_experiment(drifted.settings)],
        filter_string="tags.`fraudloop.kind` = 'retrain'",
    )[0]
    assert mlflow_run.data.tags["fraudloop.decision"] == "promoted"
    assert "challenger.average_precision" in mlflow_run.data.metrics
    artifacts = {
        a.path
        for a in registry.client(drifted.settings).list_artifacts(mlflow_run.info.run_id, "drift")
    }
    assert {f"drift/{Path(drift[k]).name}" for k in ("report_uri", "report_json_uri")} <= artifacts
    assert mlflow_run.data.tags["fraudloop.drift_report"] == drift["report_uri"]
    assert drift["report_uri"].startswith(f"runs:/{mlflow_run.info.run_id}/drift/")


def test_rerunning_the_same_interval_is_idempotent(monkeypatch, engine, drifted):
    client = registry.client(drifted.settings)
    before = {
        "versions": len(client.search_model_versions(f"name='{drifted.settings.model_name}'")),
        "events": _events(engine, drifted),
        "champion": registry.alias_version(drifted.settings),
        "predictions": store.prediction_count(engine),
    }
    key = run_key_for(drifted.end, CONF["train_window_days"])
    run_id = registry.keyed_run(drifted.settings, key)
    first = pd.read_parquet(_artifact(drifted, f"runs:/{run_id}/window/{key}.parquet"))

    run, states = _run(monkeypatch, drifted, "fraud_retrain", conf=CONF)
    assert states["promote"] == "success" and states["notify_serving"] == "skipped"
    ref = WindowRef.from_dict(xcom(run, "ingest_labeled")["ref"])
    assert ref.run_id == run_id  # the re-run logs to the same MLflow run
    pd.testing.assert_frame_equal(load_window(drifted.settings, ref), first)
    assert xcom(run, "train_challenger")["reused"] is True
    outcome = xcom(run, "promote")
    assert outcome["replayed"] is True and outcome["event"] == "promoted"
    assert (
        len(client.search_model_versions(f"name='{drifted.settings.model_name}'"))
        == before["versions"]
    )
    assert _events(engine, drifted) == before["events"]
    assert registry.alias_version(drifted.settings) == before["champion"]
    assert store.prediction_count(engine) == before["predictions"]
    assert [a.path for a in client.list_artifacts(run_id, "window")] == [ref.artifact_path]
    assert not (drifted.settings.state_dir / "windows").exists()  # nothing on local disk


def test_a_run_on_the_champions_own_window_is_skipped_not_a_rejection(monkeypatch, engine, drifted):
    # A drift event a day later with no traffic since: the 15-day window holds the same rows
    # the champion was trained on, so train_challenger reuses the champion's version.
    champion = registry.alias_version(drifted.settings)
    events = _events(engine, drifted)
    later, conf = drifted.end + timedelta(days=1), {**CONF, "train_window_days": 15}
    run, states = _run(monkeypatch, drifted, "fraud_retrain", conf=conf, at=later)
    assert states["promote"] == "success" and states["notify_serving"] == "skipped"
    challenger = xcom(run, "train_challenger")
    assert challenger["version"] == champion and challenger["reused"] is True
    outcome = xcom(run, "promote")
    assert outcome["event"] == "skipped" and outcome["replayed"] is False
    assert outcome["reason"] == f"no new challenger: version {champion} is already the champion"
    after = _events(engine, drifted)
    assert after[1:] == events
    assert after[0]["event"] == "skipped" and after[0]["version"] == champion
    assert after[0]["run_id"] == run_key_for(later, 15)
    assert registry.alias_version(drifted.settings) == champion
    tags = {v["version"]: v for v in registry.list_versions(drifted.settings)}[champion]
    assert tags["decision"] == "promoted" and "beats champion" in tags["reason"]

    # re-running that interval replays the recorded outcome: no second row
    again, states = _run(monkeypatch, drifted, "fraud_retrain", conf=conf, at=later)
    replay = xcom(again, "promote")
    assert replay["event"] == "skipped" and replay["replayed"] is True
    assert _events(engine, drifted) == after


def test_after_the_promotion_the_monitor_is_quiet_again(monkeypatch, drifted):
    # The new champion's reference holds the drifted traffic, and the logged scores (from the
    # old champion) are replaced by the new champion's: no spurious score shift.
    run, states = _run(monkeypatch, drifted, "fraud_drift_monitor")
    assert states == {"compare_recent": "success", "emit_drift_event": "skipped"}
    summary = xcom(run, "compare_recent")
    assert summary["champion_version"] != drifted.champion
    assert summary["drifted_columns"] == [] and summary["score_shift"]["psi"] < 0.05
    assert asset_events(run) == []


def test_too_few_labels_skips_the_run_cleanly(monkeypatch, engine, stable):
    events = _events(engine, stable)
    early = stable.end - timedelta(days=TRAFFIC_DAYS - 1)  # one day of traffic logged by then
    run, states = _run(monkeypatch, stable, "fraud_retrain", conf=CONF, at=early)
    assert str(run.state) == "success"
    assert set(states.values()) == {"skipped"}
    assert _events(engine, stable) == events
    assert not list((stable.settings.state_dir / "windows").glob(f"{run_key_for(early, 14)}*"))
