"""`fraud demo`, shortened, end to end: the real CLI, the real gunicorn service, the real DAGs
through `airflow dags test`, on local defaults in a temp state dir (the demo starts its own
embedded Postgres there, as `make demo` does; the test stops it by pid).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fraud_lib import pgserver, store
from fraud_lib.redisserver import EmbeddedRedis
from tests.conftest import stop_by_pid

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _run_demo(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Any:
    """Run the demo in its own process group; on timeout kill the group (gunicorn, airflow)."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the demo stops its service on SIGTERM
        try:
            proc.communicate(timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def demo_env(home: Path, port: int, redis_port: int, **extra: str) -> dict[str, str]:
    """The demo's environment: this process's without FRAUD_/AIRFLOW/MLFLOW variables, every
    state directory under ``home``, the embedded Postgres and redis-server on the given ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "AIRFLOW", "MLFLOW"))}
    env.update(
        FRAUD_STATE_DIR=str(home / "state"),
        FRAUD_PG_PORT=str(port),
        FRAUD_REDIS_PORT=str(redis_port),
        FRAUD_REPORTS_DIR=str(home / "reports"),
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        **extra,
    )
    return env


def test_demo_promotes_after_drift_and_the_service_hot_reloads(pg_base_dir: Path) -> None:
    """The whole story, with the performance monitor and the alerts after the new pattern."""
    home = pg_base_dir / "demo"  # reachable by the postgres OS user when we are root
    home.mkdir()
    port, redis_port = pgserver.free_port(), pgserver.free_port()
    env = demo_env(home, port, redis_port)
    fraud = str(Path(sys.executable).with_name("fraud"))
    # The demo starts the embedded Postgres on `port`; it is stopped by its pid at the end.
    server = pgserver.EmbeddedPostgres(home / "state" / "postgres", port)
    try:
        proc = _run_demo(
            [fraud, "demo", "--reset", "--rows-per-day", "4000", "--history-days", "21"],
            env,
            home,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        engine = store.make_engine(server.url)
        with engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one()
        engine.dispose()
    finally:
        stop_by_pid(server)
        EmbeddedRedis(home / "state", redis_port).stop()  # `fraud serve` started it
    assert logged >= 2 * 7 * 4000

    summary = json.loads((home / "state" / "demo" / "summary.json").read_text())
    events = [(d["version"], d["event"]) for d in summary["decisions"]]
    # First champion, the no-drift retrain kept it, the post-drift challenger replaced it.
    assert events[0] == ("1", "promoted")
    assert events[1] == ("2", "rejected")
    assert events[-1] == ("3", "promoted")
    assert (summary["champion_before"], summary["champion_after"]) == ("1", "3")
    # The running service switched without a restart; the served version is the new one.
    assert summary["reload_seconds"] is not None and summary["reload_seconds"] < 30
    assert summary["versions_seen_after"] == ["3"]
    catch = summary["catch"]
    assert catch["new_caught"] > catch["old_caught"]
    # Both replayed weeks were logged and labeled; week 2 is where the old model fell behind.
    weeks = {w["week"]: w for w in summary["weeks"]}
    assert set(weeks) == {1, 2}
    assert weeks[1]["labeled"] > 0 and weeks[2]["labeled"] > 0
    assert weeks[2]["average_precision"] < weeks[1]["average_precision"]
    reports = [Path(p) for p in summary["reports"]]
    assert any(p.name.startswith("fraud_drift_monitor__") for p in reports)
    assert sum(p.name.startswith("fraud_retrain__") for p in reports) == 2
    assert all(p.exists() and p.stat().st_size > 10_000 for p in reports)
    assert "hot reload: every worker served v3" in proc.stdout
    assert "drift reports:" in proc.stdout
    _assert_monitoring(summary, proc.stdout)
    # The service was stopped gracefully: its workers shipped their whole spool before exiting.
    assert not list((home / "state").rglob("*.spool"))


def _assert_monitoring(summary: dict[str, Any], stdout: str) -> None:
    """The performance monitor ran twice after the new-pattern week: v1's cohort provisional
    (labels still arriving), then mature with the drop; the demo's receiver got the alerts."""
    provisional, mature = summary["performance"]
    assert [c["mature"] for c in provisional["cohorts"]] == [False]
    assert provisional["cohorts"][0]["model_version"] == "1"
    assert 0 < provisional["cohorts"][0]["label_coverage"] < 1
    assert not provisional["drop_detected"]
    (cohort,) = [c for c in mature["cohorts"] if c["model_version"] == "1"]
    assert cohort["mature"] and cohort["n"] >= 2 * 7 * 4000
    assert mature["drop_detected"] and mature["champion_version"] == "1"
    assert "below the champion's validation" in mature["reasons"][0]
    for run in (provisional, mature):
        assert Path(run["json_path"]).exists() and Path(run["html_path"]).stat().st_size > 10_000
    assert summary["webhook_url"].startswith("http://127.0.0.1:")
    kinds = [a["kind"] for a in summary["alerts"]]
    assert {"drift_detected", "performance_below_tolerance"} <= set(kinds), kinds
    assert "challenger_promoted" in kinds
    assert "DROP: average_precision" in stdout
    assert "performance_below_tolerance  average_precision of v1 fell below" in stdout
    assert (
        "monitoring dashboard: make ui (= .venv/bin/fraud ui), then http://127.0.0.1:8001" in stdout
    )
    assert "classification reports (fraud_performance_monitor, HTML + JSON):" in stdout
    assert mature["html_path"] in stdout


def test_demo_reset_refuses_a_database_it_did_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MLFLOW"))}
    env.update(
        FRAUD_STATE_DIR=str(tmp_path / "state"),
        FRAUD_DATABASE_URL="postgresql://team@db.example:5432/fraud",
    )
    fraud = str(Path(sys.executable).with_name("fraud"))
    proc = subprocess.run([fraud, "demo", "--reset"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "only runs on the embedded Postgres" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "mlflow.db").exists()
