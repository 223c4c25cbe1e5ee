"""The pieces of bench_serving.py that are not the phases: a gunicorn started and stopped by
pid, percentiles, /metrics readers and the waits on Postgres. Light to import (of fraud_lib only
the process helpers at module level): the load generator's spawned processes import the
benchmark again."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from loadgen import single

from fraud_lib.procs import child_pids, stop_master

REPO = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(rows: list[tuple], duration: float) -> dict[str, Any]:
    ok = [r[1] for r in rows if r[2] == 200]
    return {
        "requests": len(rows),
        "ok": len(ok),
        "failed": len(rows) - len(ok),
        "req_per_s": len(ok) / duration,
        "p50_ms": pct(ok, 50) * 1000,
        "p99_ms": pct(ok, 99) * 1000,
    }


class Gunicorn:
    """One gunicorn master started here; stopped by its pid."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT
            )

    def worker_class(self) -> str:
        for line in self.log.read_text().splitlines():
            if "Using worker:" in line:
                return line.rsplit("Using worker:", 1)[1].strip()
        return "?"

    def workers(self) -> list[int]:
        return child_pids(self.proc.pid)

    def wait_ready(self, port: int, probe: bytes, n_workers: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        good = 0
        while time.monotonic() < deadline and good < 10:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                ok = single(port, probe, timeout=10)[0] == 200 and len(self.workers()) == n_workers
            except OSError:
                ok = False
            good = good + 1 if ok else 0
            time.sleep(0.1)
        if good < 10:
            raise RuntimeError(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_master(self.proc, 60)


WORKER_CLASSES = {
    "buffered": {"FRAUD_WORKER_CLASS": "buffered", "FRAUD_THREADS": "4"},
    "sync": {"FRAUD_WORKER_CLASS": "sync"},
    "gthread": {"FRAUD_WORKER_CLASS": "gthread", "FRAUD_THREADS": "4"},
}


DEFAULT_CLASS = "buffered"  # FRAUD_WORKER_CLASS's default in serving/gunicorn_conf.py


def ceiling_share(single: dict[str, Any], cls: str) -> dict[str, float]:
    """The service's share of the hello-world's ceiling under worker class ``cls``: req/s and
    p99 ratios at many clients, p50 difference (ms) at one client."""
    s, h = single[f"service_{cls}"], single[f"hello_{cls}"]
    return {
        "req_per_s_ratio": s["clients"]["req_per_s"] / h["clients"]["req_per_s"],
        "p99_ratio": s["clients"]["p99_ms"] / h["clients"]["p99_ms"],
        "p50_one_client_diff_ms": s["one_client"]["p50_ms"] - h["one_client"]["p50_ms"],
    }


def gunicorn_argv(port: int, app: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
            "-b", f"127.0.0.1:{port}", "-w", "2", *extra, app]  # fmt: skip


def metric_by_pid(url: str, name: str) -> dict[str, float]:
    out = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and 'pid="' in line:
            pid = line.split('pid="', 1)[1].split('"', 1)[0]
            out[pid] = float(line.rsplit(" ", 1)[1])
    return out


def metric_sum(url: str, name: str) -> float:
    total = 0.0
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_backlog_below(url: str, limit: float, timeout: float) -> float:
    """Poll every worker's prediction-log backlog until it is below ``limit`` records; the time
    it got there (NaN on timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metric_sum(url, "fraud_prediction_log_backlog_records") < limit:
            return time.time()
        time.sleep(0.1)
    return float("nan")


def wait_until(done: Any, timeout: float, poll: float) -> float:
    """Seconds until ``done()`` is true, checked every ``poll`` s (NaN on timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if done():
            return time.monotonic() - t0
        time.sleep(poll)
    return float("nan")


def wait_drain(engine: Any, ids: list[str], timeout: float = 180) -> float:
    """Seconds until every prediction of ``ids`` is in Postgres (NaN on timeout)."""
    from fraud_lib import store

    return wait_until(lambda: store.count_predictions_by_ids(engine, ids) == len(ids), timeout, 0.1)


def wait_rows(engine: Any, rows: int, timeout: float = 120) -> float:
    """Seconds until the predictions table holds at least ``rows`` rows (NaN on timeout)."""
    from fraud_lib import store

    return wait_until(lambda: store.prediction_count(engine) >= rows, timeout, 0.01)


def truncate(engine: Any) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE predictions")


def temp_settings(tmp: Path, database_url: str) -> Any:
    """Settings for a bench run: every state dir under ``tmp``, no FRAUD_* from the shell."""
    from fraud_lib.config import Settings

    return Settings.from_env(
        {}, state_dir=tmp / "state", database_url=database_url,
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db", mlflow_artifact_dir=tmp / "mlartifacts",
        spool_dir=tmp / "spool",
    )  # fmt: skip


def service_env(tmp: Path, pg_url: str, settings: Any) -> dict[str, str]:
    """The environment of a bench gunicorn: this shell's without FRAUD_*/PROMETHEUS_*, the
    repository on the path, every state dir under ``tmp``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "PROMETHEUS_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), FRAUD_STATE_DIR=str(tmp / "state"),
               FRAUD_DATABASE_URL=pg_url, MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
               FRAUD_MLFLOW_ARTIFACTS=str(settings.mlflow_artifact_dir),
               FRAUD_SPOOL_DIR=str(settings.spool_dir))  # fmt: skip
    return env


def champion_world(tmp: Path, days: int, rows_per_day: int, run_name: str) -> tuple[Any, Any, Any]:
    """(running Postgres, settings, one later day of 10,000 unlabeled rows to score) with a
    champion trained on ``days`` x ``rows_per_day`` generated rows."""
    from fraud_lib import pgserver, registry, store
    from fraud_lib.data import generate
    from fraud_lib.schema import FeatureSchema
    from fraud_lib.train import train_model

    pg = pgserver.EmbeddedPostgres(tmp / "pg", pgserver.free_port())
    pg.ensure_running()
    settings = temp_settings(tmp, pg.url)
    store.connect_store(settings)
    schema = FeatureSchema()
    history = schema.validate_frame(
        generate(days, rows_per_day=rows_per_day, seed=7, fraud_rate=0.004)
    )
    ref = registry.log_model(train_model(history, schema), settings, run_name=run_name)
    assert ref is not None
    registry.client(settings).set_registered_model_alias(
        settings.model_name, "champion", ref.version
    )
    later = generate(1, rows_per_day=10_000, seed=8, start_day=days)
    return pg, settings, later.drop(columns=["Class", "label_delay_seconds"])


def stop_postgres(pg: Any) -> None:
    """Stop a bench's embedded Postgres; SIGKILL its postmaster if pg_ctl could not."""
    import contextlib
    import os
    import signal

    from fraud_lib import pgserver

    with contextlib.suppress(Exception):
        pid = pg.pid
        pg.stop()
        if pid and pgserver.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
