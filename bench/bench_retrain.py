"""Retraining benchmark (issue 6): one full ``fraud_retrain`` run through ``airflow dags test``
on a window of 284,807 labeled predictions (the size of the ULB data set), split by task.

    .venv/bin/python bench/bench_retrain.py                 # ~4 min on 2 cores
    .venv/bin/python bench/bench_retrain.py --rows 50000    # smaller window

Everything lives in a temp dir and is stopped by pid at the end: an embedded Postgres on a free
port, a SQLite MLflow store, an Airflow home. A champion is trained on 28 days of generated
history and promoted; the next 28 days (``--rows`` transactions, ``--scenario`` drift) are
scored by it, logged to ``predictions`` as the service would, and labeled. Then the DAG runs
once; the task times come from Airflow's own task_instance table. Results: a table on stdout
and ``bench/results/retrain.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

BENCH = Path(__file__).resolve().parent
DAYS = 28


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


def seed_world(settings: Any, engine: Any, rows: int, scenario: str, end: datetime) -> str:
    """Champion on history; ``rows`` scored, logged and labeled transactions before ``end``."""
    from fraud_lib import promotion, registry, store
    from fraud_lib.data import generate
    from fraud_lib.features import predict_scores
    from fraud_lib.schema import FeatureSchema
    from fraud_lib.train import train_model

    schema = FeatureSchema()
    history = schema.validate_frame(generate(DAYS, rows_per_day=5000, seed=1))
    trained = train_model(history, schema, test_fraction=0.2)
    champion = registry.log_model(trained, settings)
    held_out = history[history[schema.time] > trained.time_range["fit_end"]]
    promotion.promote_if_better(settings, engine, held_out, champion.version)
    traffic = generate(DAYS, total_rows=rows, seed=2, scenario=scenario, start_day=DAYS,
                       drift_start_day=DAYS + DAYS // 2, label_delay_days=0)  # fmt: skip
    traffic = schema.validate_frame(traffic)
    scores = predict_scores(trained.model, traffic, schema)
    offset = pd.to_timedelta(traffic[schema.time] - DAYS * 86_400, unit="s")
    scored_at = [t.to_pydatetime() for t in end - timedelta(days=DAYS, minutes=1) + offset]
    features = traffic[[schema.time, *schema.features]].to_dict("records")
    batch: list[dict[str, Any]] = []
    for tx, at, feats, score in zip(traffic["transaction_id"], scored_at, features, scores,
                                    strict=True):  # fmt: skip
        batch.append({
            "prediction_id": uuid.uuid4().hex, "transaction_id": tx, "scored_at": at,
            "event_time": feats[schema.time], "features": feats, "score": float(score),
            "is_fraud": bool(score >= trained.threshold), "threshold": trained.threshold,
            "risk_level": "low", "model_name": settings.model_name,
            "model_version": champion.version,
        })  # fmt: skip
        if len(batch) == 20_000:
            store.insert_predictions(engine, batch)
            batch = []
    store.insert_predictions(engine, batch)
    labeled_at = end - timedelta(seconds=30)
    store.upsert_labels(engine, [
        {"transaction_id": tx, "label": int(y), "labeled_at": labeled_at, "source": "bench"}
        for tx, y in zip(traffic["transaction_id"], traffic[schema.label], strict=True)
    ])  # fmt: skip
    return champion.version


def task_seconds(airflow_home: Path) -> dict[str, Any]:
    """Per-task wall time of the newest fraud_retrain run, from Airflow's metadata DB."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = 'fraud_retrain' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        rows = db.execute(
            "SELECT task_id, state, start_date, end_date FROM task_instance "
            "WHERE dag_id = 'fraud_retrain' AND run_id = ? ORDER BY start_date",
            (run_id,),
        ).fetchall()
    out = {}
    for task, state, start, end in rows:
        seconds = None
        if start and end:
            seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        out[task] = {"state": state, "seconds": seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=284_807, help="labeled rows in the window")
    parser.add_argument("--scenario", default="new_pattern", help="drift in the window's 2nd half")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-bench-retrain-"))
    tmp.chmod(0o755)  # the embedded Postgres runs as user postgres when we are root
    from fraud_lib import pgserver

    os.environ.update(
        FRAUD_STATE_DIR=str(tmp / "state"),
        FRAUD_REPORTS_DIR=str(tmp / "reports"),
        FRAUD_PG_PORT=str(pgserver.free_port()),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
        AIRFLOW_HOME=str(tmp / "airflow"),
        FRAUD_SCORING_URL="http://127.0.0.1:9",  # nothing listens: the reload hint fails softly
    )
    for name in ("FRAUD_DATABASE_URL", "AIRFLOW__CORE__DAGS_FOLDER"):
        os.environ.pop(name, None)
    from fraud_lib import airflow_local, store
    from fraud_lib.config import Settings

    settings = Settings.from_env()
    server = pgserver.embedded_from_settings(settings)
    try:
        engine = store.connect_store(settings)
        end = datetime.now(UTC)
        say(f"seeding: champion on {DAYS} days of history, {args.rows:,} logged + labeled rows")
        started = time.monotonic()
        seed_world(settings, engine, args.rows, args.scenario, end)
        seeded = time.monotonic() - started
        env = airflow_local.airflow_env(settings)
        airflow_local.ensure_db(env, say)
        started = time.monotonic()
        airflow_local.dags_test("fraud_retrain", {}, env, say, log_path=tmp / "airflow.log")
        command = time.monotonic() - started
        tasks = task_seconds(Path(env["AIRFLOW_HOME"]))
        reports = sorted((tmp / "reports").glob("fraud_retrain__*.json"))
        drift = [json.loads(p.read_text()) for p in reports if not p.name.endswith(".summary.json")]
        summary = [json.loads(p.read_text()) for p in reports if p.name.endswith(".summary.json")]
        decision = summary[-1]["decision"] if summary else {}
        result = {
            "machine": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg()},
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": args.rows,
            "scenario": args.scenario,
            "seed_seconds": round(seeded, 1),
            "command_seconds": round(command, 1),
            "dag_seconds": round(sum(t["seconds"] or 0 for t in tasks.values()), 1),
            "tasks": tasks,
            "drift_check_seconds": drift[-1].get("seconds") if drift else None,
            "drift_detected": drift[-1].get("drift_detected") if drift else None,
            "drifted_columns": drift[-1].get("drifted_columns") if drift else None,
            "promoted": decision.get("promote"),
            "reason": decision.get("reason"),
        }
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    out = BENCH / "results" / "retrain.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nfraud_retrain on {args.rows:,} labeled rows ({args.scenario}), "
          f"{result['machine']['cpus']} CPUs, {result['date']}")  # fmt: skip
    print(f"{'task':<20}{'state':<10}{'seconds':>8}")
    for task, info in tasks.items():
        seconds = "-" if info["seconds"] is None else f"{info['seconds']:.1f}"
        print(f"{task:<20}{info['state']:<10}{seconds:>8}")
    print(f"{'DAG (sum of tasks)':<30}{result['dag_seconds']:>8.1f}")
    print(f"{'airflow dags test (command)':<30}{command:>8.1f}")
    if result["drift_check_seconds"] is not None:
        print(f"{'drift check alone (Evidently)':<30}{result['drift_check_seconds']:>8.1f}")
    print(f"drift detected: {result['drift_detected']} {result['drifted_columns']}")
    print(f"promoted: {result['promoted']} ({result['reason']})")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
