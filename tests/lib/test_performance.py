"""The performance monitor (fraud_lib.monitoring) on the real Postgres and a real MLflow store:
hand-computed metrics on tiny cohorts, label maturity, the decision, idempotent re-runs, and
hostile options and CLI input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fraud_lib import registry, store
from fraud_lib.config import Settings
from fraud_lib.errors import ConfigError
from fraud_lib.monitoring import cohorts as cohorts_lib
from fraud_lib.monitoring import performance
from fraud_lib.monitoring.cohorts import Cohort
from tests.lib.test_dashboard import _snapshots, _values

D1 = datetime(2025, 1, 1, tzinfo=UTC)
FRAUD = str(Path(sys.executable).with_name("fraud"))


@pytest.fixture
def engine(pg_engine):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE performance_cohorts")
    return pg_engine


@pytest.fixture
def small(settings: Settings) -> Settings:
    """A 2-day label window, 1-day evaluation span, k = 2."""
    return performance.with_options(
        settings, label_window_days=2, lookback_days=5, eval_days=1, k=2
    )


def log(engine, rows: list[tuple[Any, ...]], *, version: str = "1", threshold: float = 0.5):
    """rows: (transaction id, scored_at, score, label or None, labeled_at or None[, features])."""
    store.insert_predictions(
        engine,
        [
            {
                "prediction_id": f"p-{tx}-{version}",
                "transaction_id": tx,
                "scored_at": at,
                "features": (rest[0] if rest else {"V1": 0.0}),
                "score": score,
                "threshold": threshold,
                "model_version": version,
            }
            for tx, at, score, _, _, *rest in rows
        ],
    )
    labels = [
        {"transaction_id": tx, "label": y, "labeled_at": when, "source": "test"}
        for tx, _, _, y, when, *_ in rows
        if y is not None
    ]
    if labels:
        store.upsert_labels(engine, labels)


def read(engine, as_of: datetime, **kwargs: Any):
    return cohorts_lib.read_scored(
        engine, start=D1, as_of=as_of, model_name="fraud-detector", **kwargs
    )


def day_one(engine) -> None:
    """Six predictions on 2025-01-01: frauds at 0.9, 0.7 and 0.4 (missed), one unlabeled."""
    at = D1 + timedelta(hours=10)
    known = D1 + timedelta(days=1)
    log(
        engine,
        [
            ("a", at, 0.9, 1, known),
            ("b", at, 0.8, 0, known),
            ("c", at, 0.7, 1, known),
            ("d", at, 0.4, 1, known),
            ("e", at, 0.2, None, None),  # never labeled: legitimate once mature
            ("f", at, 0.1, 0, known),
        ],
    )


def champion(settings: Settings, **metrics: float) -> str:
    """A registered version holding the champion alias whose run logged ``metrics``."""
    client = registry.client(settings)
    experiment = registry.ensure_experiment(settings)
    run = client.create_run(experiment)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.create_registered_model(settings.model_name)
    mv = client.create_model_version(settings.model_name, "file:///nowhere", run.info.run_id)
    client.set_registered_model_alias(settings.model_name, registry.CHAMPION, mv.version)
    return str(mv.version)


def test_hand_computed_metrics_of_a_mature_cohort(engine, small):
    day_one(engine)
    other = {"prediction_id": "p-other", "transaction_id": "o", "features": {"V1": 1.0},
             "scored_at": D1, "score": 0.99, "model_name": "another-model"}  # fmt: skip
    store.insert_predictions(engine, [other])  # another model's log: left out
    as_of = D1 + timedelta(days=3)  # the day's end + the 2-day window: just mature
    frame = read(engine, as_of)
    (c,) = cohorts_lib.cohort_table(frame, small, as_of)
    assert (c.cohort_day, c.model_version, c.mature) == ("2025-01-01", "1", True)
    assert (c.n, c.labeled, c.frauds, c.k) == (6, 5, 3, 2)
    assert c.label_coverage == pytest.approx(5 / 6)
    # ranking 1 0 1 1 0 0: precisions at the frauds 1, 2/3, 3/4
    assert c.average_precision == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert c.roc_auc == pytest.approx(7 / 9)  # 7 of 9 fraud/legit pairs ordered right
    # alerts at 0.5: 0.9, 0.8, 0.7 -> tp 2, fp 1, fn 1 (the unlabeled one is a true negative)
    assert (c.precision, c.recall, c.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert c.alert_rate == pytest.approx(0.5) and c.threshold == 0.5
    assert c.card_precision_at_k == pytest.approx(0.5)  # top 2: a fraud, a legit
    assert c.expected_cost == pytest.approx((1 * 100 + 1 * 5) / 6)


def test_a_cohort_whose_labels_are_still_arriving_is_provisional(engine, small):
    day_one(engine)
    late = D1 + timedelta(days=2, hours=12)
    at = D1 + timedelta(days=1, hours=9)  # 2025-01-02
    log(engine, [("g", at, 0.95, 1, late), ("h", at, 0.3, 0, D1 + timedelta(days=2))])
    as_of = D1 + timedelta(days=2)  # day 2 + 0: the fraud's label is not known yet
    early = {c.cohort_day: c for c in cohorts_lib.cohort_table(
        read(engine, as_of), small, as_of)}  # fmt: skip
    assert early["2025-01-01"].mature is False and early["2025-01-02"].mature is False
    assert early["2025-01-02"].labeled == 1 and early["2025-01-02"].label_coverage == 0.5
    assert early["2025-01-02"].frauds == 0  # labeled_at after the as-of: not counted
    later_as_of = D1 + timedelta(days=4)
    later = {c.cohort_day: c for c in cohorts_lib.cohort_table(
        read(engine, later_as_of), small, later_as_of)}  # fmt: skip
    assert later["2025-01-01"].mature is True and later["2025-01-02"].mature is True
    assert later["2025-01-02"].frauds == 1 and later["2025-01-02"].label_coverage == 1.0


def test_card_precision_ranks_entities_when_an_entity_key_is_set(engine, small):
    at = D1 + timedelta(hours=3)
    known = D1 + timedelta(hours=5)
    log(
        engine,
        [  # card x: two transactions, the second a fraud; card y: legit with the top score
            ("x1", at, 0.6, 0, known, {"card": "x"}),
            ("x2", at, 0.2, 1, known, {"card": "x"}),
            ("y1", at, 0.9, 0, known, {"card": "y"}),
            ("z1", at, 0.1, 0, known, {"card": "z"}),
            ("n1", at, 0.99, 1, known, {"other": 1}),  # no card: left out of the entity ranking
        ],
    )
    as_of = D1 + timedelta(days=3)
    cards = performance.with_options(small, k=2)
    frame = read(engine, as_of, entity_key="card")
    (c,) = cohorts_lib.cohort_table(frame, cards, as_of)
    assert c.card_precision_at_k == pytest.approx(0.5) and c.k == 2  # y (legit), x (fraud)
    (plain,) = cohorts_lib.cohort_table(frame.drop(columns="entity"), cards, as_of)
    assert plain.card_precision_at_k == pytest.approx(0.5)  # n1 (fraud), y1 (legit)


def _cohort(day: str, value: float | None, *, version: str = "1", mature: bool = True) -> Cohort:
    return Cohort(day, version, mature, 100, 100, 5, 1.0, 0.5, 0.1, value, value, value,
                  value, value, value, 10, 1.0)  # fmt: skip


def test_decide_compares_recent_mature_cohorts_with_validation_and_first_weeks():
    days = [f"2025-01-{d:02d}" for d in range(1, 7)]
    cohorts = [_cohort(d, v) for d, v in zip(days, [0.8, 0.8, 0.8, 0.6, 0.6, 0.5], strict=True)]
    cohorts += [_cohort("2025-01-07", 0.1, mature=False), _cohort("2025-01-05", 0.1, version="2")]
    args = {"champion": "1", "metric": "average_precision", "eval_days": 2}
    d = performance.decide(cohorts, tolerance=0.1, promised=0.6, **args)
    assert d.recent_days == ["2025-01-05", "2025-01-06"] and d.recent == pytest.approx(0.55)
    assert d.references == {"validation": 0.6, "first_mature": pytest.approx(0.8)}
    assert d.first_mature_days == ["2025-01-01", "2025-01-02"]
    assert d.drop_detected and len(d.reasons) == 1 and "first mature" in d.reasons[0]
    quiet = performance.decide(cohorts, tolerance=0.3, promised=0.6, **args)
    assert not quiet.drop_detected and quiet.reasons == []
    # history from earlier runs supplies older first weeks
    hist = performance.decide(cohorts, tolerance=0.1, promised=None,
                              history={"2024-12-30": 0.9, "2024-12-31": 0.7}, **args)  # fmt: skip
    assert hist.references["first_mature"] == pytest.approx(0.8)
    assert hist.first_mature_days == ["2024-12-30", "2024-12-31"]


def test_decide_without_enough_mature_cohorts_or_a_champion_does_not_decide():
    few = [_cohort("2025-01-01", 0.1), _cohort("2025-01-02", 0.1, mature=False)]
    d = performance.decide(few, champion="1", metric="average_precision", tolerance=0.01,
                           eval_days=2, promised=0.9)  # fmt: skip
    assert not d.drop_detected and d.recent is None and "1 mature cohort(s)" in d.notes[0]
    overlap = [_cohort("2025-01-01", 0.5), _cohort("2025-01-02", 0.5)]
    d = performance.decide(overlap, champion="1", metric="average_precision", tolerance=0.05,
                           eval_days=2, promised=0.9)  # fmt: skip
    assert d.drop_detected and d.references["first_mature"] is None and "overlap" in d.notes[0]
    none = performance.decide(few, champion=None, metric="recall", tolerance=0.05,
                              eval_days=1, promised=None)  # fmt: skip
    assert not none.drop_detected and "no champion" in none.notes[0]


def _stored(engine, as_of: datetime) -> list[dict[str, Any]]:
    return cohorts_lib.stored_cohorts(engine, as_of)


@pytest.mark.slow
def test_monitor_stores_decides_reports_and_reruns_idempotently(engine, small):
    version = champion(small, average_precision=0.95, roc_auc=0.99)
    day_one(engine)
    as_of = D1 + timedelta(days=3)
    first = performance.performance_monitor(small, engine, as_of=as_of)
    assert first.drop_detected  # AP 0.806 < promised 0.95 - 0.05
    assert first.decision["champion_version"] == version
    assert first.decision["recent"] == pytest.approx(29 / 36)
    rows = _stored(engine, as_of)
    assert [(r["cohort_day"], r["mature"], r["n"]) for r in rows] == [("2025-01-01", True, 6)]
    summary = json.loads(Path(first.json_path).read_text())
    assert summary["decision"]["drop_detected"] is True
    # the timings: the JSON was written before they were set and always held {}
    assert summary["seconds"] == first.seconds
    assert set(first.seconds) == {"read", "metrics", "report", "total"}
    assert any(m["metric"] == "RocAuc" for m in summary["report"]["evidently"])
    assert Path(first.html_path).stat().st_size > 100_000
    assert "mature" in performance.format_cohorts(first)

    again = performance.performance_monitor(small, engine, as_of=as_of)
    assert again.cohorts == first.cohorts and again.decision == first.decision
    assert _stored(engine, as_of) == rows
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM performance_cohorts")).scalar() == 1
    assert again.mlflow_run_id == first.mlflow_run_id
    *_, snapshots = _snapshots(small)
    assert len(snapshots) == 1  # the cohort's point on the dashboard, replaced by the re-run
    assert ("average_precision", "mature") in _values(snapshots[0])
    client = registry.client(small)
    history = client.get_metric_history(first.mlflow_run_id, "performance.recent")
    assert len(history) == 1  # the same point, stored once
    assert {a.path for a in client.list_artifacts(first.mlflow_run_id, "performance")} == {
        f"performance/{Path(first.html_path).name}",
        f"performance/{Path(first.json_path).name}",
    }
    logged = client.download_artifacts(
        first.mlflow_run_id, f"performance/{Path(first.json_path).name}", str(small.state_dir)
    )
    assert json.loads(Path(logged).read_text())["seconds"] == again.seconds  # the re-run's copy


def test_monitor_without_predictions_raises_no_predictions(engine, small):
    with pytest.raises(performance.NoPredictions, match="no predictions scored"):
        performance.performance_monitor(small, engine, as_of=D1, report=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metric": "accuracy"}, "is unknown; use one of average_precision"),
        ({"k": 0}, "analyst capacity k"),
        ({"tolerance": math.nan}, "tolerance"),
        ({"tolerance": 2}, "tolerance"),
        ({"label_window_days": -1}, "label window"),
        ({"lookback_days": 10, "label_window_days": 30}, "must cover the label window"),
        ({"colour": "red"}, "unknown performance option"),
    ],
)
def test_bad_options_raise_one_clear_config_error(settings, options, message):
    with pytest.raises(ConfigError, match=message):
        performance.with_options(settings, **options)


def test_bad_settings_from_the_environment_are_refused():
    with pytest.raises(ConfigError, match="FRAUD_ANALYST_CAPACITY"):
        Settings.from_env({"FRAUD_ANALYST_CAPACITY": "lots"})
    with pytest.raises(ConfigError, match="FRAUD_PERFORMANCE_METRIC"):
        Settings.from_env({"FRAUD_PERFORMANCE_METRIC": "'; DROP TABLE labels"})


def _cli(args: list[str], tmp_path: Path, pg_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW_"))}
    env.update(
        FRAUD_STATE_DIR=str(tmp_path / "state"),
        FRAUD_DATABASE_URL=pg_url,
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        FRAUD_MLFLOW_ARTIFACTS=str(tmp_path / "artifacts"),
        FRAUD_REPORTS_DIR=str(tmp_path / "reports"),
    )
    return subprocess.run(
        [FRAUD, "monitor", "performance", *args], env=env, cwd=tmp_path,
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_prints_the_cohort_table_and_json(engine, tmp_path, pg_url):
    day_one(engine)
    opts = ["--label-window-days", "2", "--lookback-days", "5", "--eval-days", "1", "--k", "2"]
    proc = _cli(["--as-of", "2025-01-03", *opts, "--no-report"], tmp_path, pg_url)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "provisional" in out and "83.3%" in out  # matures on 2025-01-04
    assert b">> read 6 predictions" in proc.stderr
    proc = _cli(["--as-of", "2025-01-04T00:00:00Z", *opts, "--json"], tmp_path, pg_url)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["cohorts"][0]["mature"] is True and result["html_path"]
    assert "no champion" in result["decision"]["notes"][0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as-of", "yesterday"], b"is not an ISO-8601 date"),
        (["--as-of", "2025-13-45"], b"is not an ISO-8601 date"),
        ([b"--as-of", b"2025-01-01\xff"], b"is not an ISO-8601 date"),
        (["--as-of", "0001-01-02"], b"before year 1"),
        (["--as-of", "0001-01-01T00:00+05:00"], b"is not an ISO-8601 date"),
        (["--k", "0"], b"analyst capacity k"),
        (["--k", "ten"], b"--k must be a whole number"),
        (["--tolerance", "1e999"], b"tolerance"),
        (["--metric", "accuracy"], b"is unknown; use one of"),
        (["--lookback-days", "99999999999999999999"], b"lookback"),
    ],
)
def test_cli_hostile_input_gives_one_error_line(engine, tmp_path, pg_url, args, message):
    proc = _cli(args, tmp_path, pg_url)
    assert proc.returncode == 1, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith(b">> ")]  # progress
    assert len(lines) == 1 and lines[0].startswith(b"error: ") and message in lines[0], lines
