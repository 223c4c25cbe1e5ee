"""Performance-monitor benchmark (issue 15): one run of the realized-performance monitor on
30 days of 40,000 logged predictions a day (1.2M rows), split by phase; the target is 30 s.

    .venv/bin/python bench/bench_performance.py                   # ~2 min on 2 cores, mostly seeding
    .venv/bin/python bench/bench_performance.py --rows-per-day 10000

Everything lives in a temp dir and is stopped by pid at the end: an embedded Postgres on a free
port and a SQLite MLflow store. The champion is a registered version whose run logged its
held-out metrics (the monitor reads nothing else of it). The predictions carry a 30-number
features JSON like the service's (so the table is as wide as a real log), synthetic scores
(0.2 % frauds) and the served threshold; every transaction gets a label 0-40 days after it was
scored, so the youngest cohorts are provisional. The monitor then runs as the DAG runs it
(cohort table, decision, Evidently classification report, MLflow run), twice (the second is
the idempotent re-run), and once without the report. Results: a table on stdout and
``bench/results/performance.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
DAYS = 30
OPTIONS = {"label_window_days": 14, "lookback_days": DAYS, "eval_days": 7}


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


def _champion(settings: Any) -> str:
    from fraud_lib import registry

    client = registry.client(settings)
    run = client.create_run(registry.ensure_experiment(settings))
    for key, value in {"average_precision": 0.8, "roc_auc": 0.97, "recall": 0.7}.items():
        client.log_metric(run.info.run_id, key, value)
    client.create_registered_model(settings.model_name)
    mv = client.create_model_version(settings.model_name, "file:///bench", run.info.run_id)
    client.set_registered_model_alias(settings.model_name, registry.CHAMPION, mv.version)
    return str(mv.version)


def seed(settings: Any, engine: Any, rows_per_day: int, end: datetime) -> int:
    """``DAYS`` days of predictions by the champion before ``end``, labeled later."""
    from fraud_lib import store

    version = _champion(settings)
    rng = np.random.default_rng(0)
    shapes = [json.dumps({f"V{i}": round(float(v), 6) for i, v in enumerate(rng.normal(size=29))}
                         | {"Amount": round(float(rng.gamma(2, 40)), 2)}) for _ in range(997)]  # fmt: skip
    start = end - timedelta(days=DAYS)
    total = 0
    for day in range(DAYS):
        n = rows_per_day
        y = rng.random(n) < 0.002
        score = np.clip(rng.beta(1, 30, n) + y * rng.beta(4, 2, n), 0, 1)
        at = start + timedelta(days=day) + timedelta(seconds=1) * np.sort(rng.uniform(0, 86_399, n))
        ids = [f"d{day}-{i}" for i in range(n)]
        store.copy_predictions(engine, [
            (f"p-{tx}", tx, t, None, shapes[i % len(shapes)], float(s), bool(s >= 0.5), 0.5,
             "low", settings.model_name, version, None)
            for i, (tx, t, s) in enumerate(zip(ids, at.tolist(), score.tolist(), strict=True))
        ])  # fmt: skip
        delay = rng.uniform(0, 40, n)
        store.upsert_labels(engine, [
            {"transaction_id": tx, "label": int(f), "source": "bench",
             "labeled_at": t + timedelta(days=float(d))}
            for tx, f, t, d in zip(ids, y.tolist(), at.tolist(), delay.tolist(), strict=True)
        ])  # fmt: skip
        total += n
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE predictions")
        conn.exec_driver_sql("VACUUM ANALYZE labels")
    return total


def measure(settings: Any, engine: Any, as_of: datetime, report: bool) -> dict[str, Any]:
    from fraud_lib.monitoring import performance

    started = time.perf_counter()
    result = performance.performance_monitor(settings, engine, as_of=as_of, report=report,
                                             progress=say)  # fmt: skip
    seconds = time.perf_counter() - started
    decision = result.decision
    return {
        "seconds": round(seconds, 2),
        "phases": result.seconds,
        "rows": result.rows,
        "cohorts": len(result.cohorts),
        "mature": sum(c["mature"] for c in result.cohorts),
        "drop_detected": decision["drop_detected"],
        "recent": decision["recent"],
        "report": result.html_path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-per-day", type=int, default=40_000)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-bench-performance-"))
    tmp.chmod(0o755)  # the embedded Postgres runs as another OS user when we are root
    from fraud_lib import pgserver

    os.environ.update(
        FRAUD_STATE_DIR=str(tmp / "state"),
        FRAUD_REPORTS_DIR=str(tmp / "reports"),
        FRAUD_PG_PORT=str(pgserver.free_port()),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
    )
    os.environ.pop("FRAUD_DATABASE_URL", None)
    from fraud_lib import store
    from fraud_lib.config import Settings
    from fraud_lib.monitoring import performance

    settings = performance.with_options(Settings.from_env(), **OPTIONS)
    server = pgserver.embedded_from_settings(settings)
    try:
        engine = store.connect_store(settings)
        end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        say(f"seeding {DAYS} days x {args.rows_per_day:,} predictions, labeled 0-40 days later")
        started = time.monotonic()
        rows = seed(settings, engine, args.rows_per_day, end)
        seeded = time.monotonic() - started
        runs = {
            "first run": measure(settings, engine, end, report=True),
            "re-run (same as-of)": measure(settings, engine, end, report=True),
            "without the report": measure(settings, engine, end, report=False),
        }
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": rows,
        "days": DAYS,
        "options": OPTIONS,
        "seed_seconds": round(seeded, 1),
        "target_seconds": 30,
        "runs": runs,
    }
    out = BENCH / "results" / "performance.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nperformance monitor on {rows:,} predictions ({DAYS} days), {OPTIONS}, "
          f"{result['machine']['cpus']} CPUs, {result['date']}")  # fmt: skip
    print(f"{'run':<22}{'total s':>8}{'read':>7}{'metrics':>8}{'report':>7}  cohorts  drop")
    for name, r in runs.items():
        p = r["phases"]
        print(f"{name:<22}{r['seconds']:>8.1f}{p['read']:>7.1f}{p['metrics']:>8.1f}"
              f"{p.get('report', 0):>7.1f}  {r['cohorts']:>3} ({r['mature']} mature)  "
              f"{r['drop_detected']}")  # fmt: skip
    print(f"target: <= 30 s; written: {out}")


if __name__ == "__main__":
    main()
