"""Window hand-off benchmark (issue 16): ``save_window`` / ``load_window`` of a retraining window
(default 284,807 rows, the ULB size, in the window layout) on the embedded MLflow store (SQLite +
artifact directory) and through a real ``mlflow server --serve-artifacts`` on 127.0.0.1.

    .venv/bin/python bench/bench_window_handoff.py             # ~1 min on 2 cores
    .venv/bin/python bench/bench_window_handoff.py --rows 50000 --repeat 5

Everything lives in a temp dir; the server is stopped by pid. Each save logs to the same run
key (a retry), each load downloads and checks the sha256. Results: a table on stdout and
``bench/results/window_handoff.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


def _window(rows: int) -> Any:
    from fraud_lib.data import generate
    from fraud_lib.schema import FeatureSchema

    schema = FeatureSchema()
    df = schema.validate_frame(generate(28, total_rows=rows, seed=2, label_delay_days=0))
    return df.assign(score=0.01, source="log")[
        ["transaction_id", schema.time, *schema.model_columns, schema.label, "score", "source"]
    ]


def _measure(settings: Any, df: Any, repeat: int) -> dict[str, Any]:
    from fraud_lib.window_store import load_window, save_window

    save_window(settings, df.head(100), "warm-up")  # experiment, first run, connections
    saves, loads = [], []
    for _ in range(repeat):
        started = time.monotonic()
        ref = save_window(settings, df, "20250303T000000Z_28d")
        saves.append(time.monotonic() - started)
        started = time.monotonic()
        back = load_window(settings, ref)
        loads.append(time.monotonic() - started)
        assert len(back) == len(df)
    return {
        "save_seconds": round(statistics.median(saves), 2),
        "load_seconds": round(statistics.median(loads), 2),
        "save_all": [round(s, 2) for s in saves],
        "load_all": [round(s, 2) for s in loads],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=284_807, help="rows in the window")
    parser.add_argument("--repeat", type=int, default=3, help="save/load pairs per store")
    args = parser.parse_args()

    from fraud_lib import mlflow_server, registry
    from fraud_lib.config import Settings

    registry.log_mlflow_through_logging()
    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-bench-handoff-"))
    try:
        say(f"generating a {args.rows:,}-row window")
        df = _window(args.rows)
        base = Settings.from_env({}, state_dir=tmp / "state")
        embedded = replace(
            base,
            mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db",
            mlflow_artifact_dir=tmp / "mlartifacts",
        )
        results = {}
        say("embedded store (SQLite + artifact directory)")
        results["embedded"] = _measure(embedded, df, args.repeat)
        say("starting mlflow server --serve-artifacts on 127.0.0.1")
        with mlflow_server.running(tmp / "server") as server:
            remote = replace(base, mlflow_tracking_uri=server.url, mlflow_artifact_dir=tmp / "x")
            say(f"mlflow server {server.url}")
            results["mlflow_server"] = _measure(remote, df, args.repeat)
            stored = next((server.artifact_dir).rglob("20250303T000000Z_28d.parquet"))
            size_mb = round(stored.stat().st_size / 1e6, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "repeat": args.repeat,
        "parquet_mb": size_mb,
        "stores": results,
    }
    out = BENCH / "results" / "window_handoff.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwindow hand-off, {args.rows:,} rows ({size_mb} MB parquet), median of "
          f"{args.repeat}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'store':<16}{'save s':>8}{'load s':>8}")
    for name, r in results.items():
        print(f"{name:<16}{r['save_seconds']:>8.2f}{r['load_seconds']:>8.2f}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
