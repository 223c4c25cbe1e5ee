"""Retraining benchmark (issues 6, 16): one full ``fraud_retrain`` run through ``airflow dags
test`` on a window of 284,807 labeled predictions (the size of the ULB data set), split by task,
with each task's seconds and peak resident memory; ``--scaling`` repeats it at 284,807,
1,000,000 and 2,800,000 rows (each in a fresh world) and writes the scaling summary.

    .venv/bin/python bench/bench_retrain.py                 # ~4 min on 2 cores
    .venv/bin/python bench/bench_retrain.py --rows 50000    # smaller window
    .venv/bin/python bench/bench_retrain.py --scaling       # ~40 min; needs ~10 GB free

Peak RSS per task: the ``airflow dags test`` process runs every task in-process; its resident
memory is sampled every 0.2 s and the peak inside each task's start/end (from the metadata DB)
is reported, so memory a task keeps after it ends shows up in the next task's figure too.

Everything lives in a temp dir and is stopped by pid at the end: an embedded Postgres on a free
port, a SQLite MLflow store, an Airflow home. A champion is trained on 28 days of generated
history and promoted; the next 28 days (``--rows`` transactions, ``--scenario`` drift) are
scored by it, logged to ``predictions`` as the service would, and labeled. Then the DAG runs
once; the task times come from Airflow's own task_instance table. Results: a table on stdout,
``bench/results/retrain.json`` (the last run) and, for several sizes,
``bench/results/retrain_scaling.json`` (``rows``, ``task_seconds``, ``task_peak_rss_mb``,
``dag_seconds``: lists in the order of ``rows``).
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
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

BENCH = Path(__file__).resolve().parent
DAYS = 28
CHUNK = 20_000
SIZES = (284_807, 1_000_000, 2_800_000)


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
    scored_at = end - timedelta(days=DAYS, minutes=1) + offset
    labeled_at = end - timedelta(seconds=30)
    for i in range(0, len(traffic), CHUNK):  # chunks: 2.8M rows of dicts would not fit
        part = traffic.iloc[i : i + CHUNK]
        features = part[[schema.time, *schema.features]].to_dict("records")
        at = [t.to_pydatetime() for t in scored_at.iloc[i : i + CHUNK]]
        store.insert_predictions(engine, [
            {"prediction_id": uuid.uuid4().hex, "transaction_id": tx, "scored_at": when,
             "event_time": feats[schema.time], "features": feats, "score": float(score),
             "is_fraud": bool(score >= trained.threshold), "threshold": trained.threshold,
             "risk_level": "low", "model_name": settings.model_name,
             "model_version": champion.version}
            for tx, when, feats, score in zip(part["transaction_id"], at, features,
                                              scores[i : i + CHUNK], strict=True)
        ])  # fmt: skip
        store.upsert_labels(engine, [
            {"transaction_id": tx, "label": int(y), "labeled_at": labeled_at, "source": "bench"}
            for tx, y in zip(part["transaction_id"], part[schema.label], strict=True)
        ])  # fmt: skip
    return champion.version


def task_seconds(airflow_home: Path) -> dict[str, Any]:
    """Per-task wall time (and start/end) of the newest fraud_retrain run, from Airflow's DB."""
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
        out[task] = {"state": state, "seconds": seconds, "start": start, "end": end}
    return out


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class RssSampler(threading.Thread):
    """Samples the resident memory of the ``airflow dags test`` process tree (every task runs
    in it) every 0.2 s, as (UTC time, MB); :meth:`peak` gives the peak inside a time range."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[datetime, float]] = []
        self.done = threading.Event()

    def _tree_mb(self) -> float:
        total = 0
        for proc in psutil.Process().children(recursive=True):
            try:
                if "dags" in proc.cmdline() or any(
                    "dags" in p.cmdline() for p in proc.parents()[:3]
                ):
                    total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total / 1e6

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.samples.append((datetime.now(UTC), self._tree_mb()))

    def peak(self, start: str | None, end: str | None) -> float | None:
        if not (start and end):
            return None
        lo, hi = (_utc(datetime.fromisoformat(t)) for t in (start, end))
        inside = [mb for at, mb in self.samples if lo <= at <= hi]
        return round(max(inside), 0) if inside else None


def run_once(rows: int, scenario: str, keep: bool) -> dict[str, Any]:
    """Seed a fresh world with ``rows`` labeled predictions and run fraud_retrain once."""
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
        say(f"seeding: champion on {DAYS} days of history, {rows:,} logged + labeled rows")
        started = time.monotonic()
        seed_world(settings, engine, rows, scenario, end)
        seeded = time.monotonic() - started
        env = airflow_local.airflow_env(settings)
        airflow_local.ensure_db(env, say)
        sampler = RssSampler()
        sampler.start()
        started = time.monotonic()
        try:
            airflow_local.dags_test("fraud_retrain", {}, env, say, log_path=tmp / "airflow.log")
        finally:
            sampler.done.set()
        command = time.monotonic() - started
        tasks = task_seconds(Path(env["AIRFLOW_HOME"]))
        for info in tasks.values():
            info["peak_rss_mb"] = sampler.peak(info.pop("start"), info.pop("end"))
        reports = sorted((tmp / "reports").glob("fraud_retrain__*.json"))
        drift = [json.loads(p.read_text()) for p in reports if not p.name.endswith(".summary.json")]
        summary = [json.loads(p.read_text()) for p in reports if p.name.endswith(".summary.json")]
        decision = summary[-1]["decision"] if summary else {}
        return {
            "machine": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg()},
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": rows,
            "scenario": scenario,
            "seed_seconds": round(seeded, 1),
            "command_seconds": round(command, 1),
            "dag_seconds": round(sum(t["seconds"] or 0 for t in tasks.values()), 1),
            "process_peak_rss_mb": round(max((mb for _, mb in sampler.samples), default=0)),
            "tasks": tasks,
            "drift_check_seconds": drift[-1].get("seconds") if drift else None,
            "drift_detected": drift[-1].get("drift_detected") if drift else None,
            "drifted_columns": drift[-1].get("drifted_columns") if drift else None,
            "promoted": decision.get("promote"),
            "reason": decision.get("reason"),
        }
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def print_run(result: dict[str, Any]) -> None:
    print(f"\nfraud_retrain on {result['rows']:,} labeled rows ({result['scenario']}), "
          f"{result['machine']['cpus']} CPUs, load {result['machine']['load_avg_end'][0]:.2f}, "
          f"{result['date']}")  # fmt: skip
    print(f"{'task':<20}{'state':<10}{'seconds':>8}{'peak RSS MB':>13}")
    for task, info in result["tasks"].items():
        seconds = "-" if info["seconds"] is None else f"{info['seconds']:.1f}"
        rss = "-" if info["peak_rss_mb"] is None else f"{info['peak_rss_mb']:,.0f}"
        print(f"{task:<20}{info['state']:<10}{seconds:>8}{rss:>13}")
    print(f"{'DAG (sum of tasks)':<30}{result['dag_seconds']:>8.1f}")
    print(f"{'airflow dags test (command)':<30}{result['command_seconds']:>8.1f}")
    print(f"{'peak RSS of the DAG process':<30}{result['process_peak_rss_mb']:>8,} MB")
    print(f"drift detected: {result['drift_detected']} {result['drifted_columns']}")
    print(f"promoted: {result['promoted']} ({result['reason']})")


def scaling(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The scaling summary: per size, task seconds, task peak RSS and the DAG seconds."""
    return {
        "rows": [r["rows"] for r in results],
        "task_seconds": {
            task: [r["tasks"].get(task, {}).get("seconds") for r in results]
            for task in results[0]["tasks"]
        },
        "task_peak_rss_mb": {
            task: [r["tasks"].get(task, {}).get("peak_rss_mb") for r in results]
            for task in results[0]["tasks"]
        },
        "dag_seconds": [r["dag_seconds"] for r in results],
        "seed_seconds": [r["seed_seconds"] for r in results],
        "load_avg_end": [r["machine"]["load_avg_end"] for r in results],
        "date": [r["date"] for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=None,
                        help="labeled rows in the window; several sizes: one run each "
                        "(default 284,807; none with --include: only merge)")  # fmt: skip
    parser.add_argument("--scaling", action="store_true",
                        help=f"run the sizes {', '.join(f'{n:,}' for n in SIZES)}")  # fmt: skip
    parser.add_argument("--scenario", default="new_pattern", help="drift in the window's 2nd half")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs")
    parser.add_argument("--include", type=Path, nargs="*", default=[],
                        help="earlier results (a retrain.json each) to put in the scaling "
                        "summary before this invocation's runs")  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "retrain.json",
                        help="where the last run's result goes")  # fmt: skip
    args = parser.parse_args()
    sizes = list(SIZES) if args.scaling else args.rows
    if sizes is None:
        sizes = [] if args.include else [SIZES[0]]
    results = []
    for rows in sizes:
        results.append(run_once(rows, args.scenario, args.keep))
        print_run(results[-1])
    if results:
        args.out.parent.mkdir(exist_ok=True)
        args.out.write_text(json.dumps(results[-1], indent=2, default=str) + "\n")
        print(f"written: {args.out}")
    results = [*(json.loads(p.read_text()) for p in args.include), *results]  # read at the end
    if len(results) > 1:
        out = BENCH / "results" / "retrain_scaling.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(scaling(results), indent=2, default=str) + "\n")
        print(f"written: {out}")


if __name__ == "__main__":
    main()
