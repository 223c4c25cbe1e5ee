"""`fraud demo`, shortened, end to end: the real CLI, the real gunicorn service, the real DAGs
through `airflow dags test`, on the session's Postgres and a temp MLflow store and Airflow home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_demo_promotes_after_drift_and_the_service_hot_reloads(
    tmp_path: Path, pg_url: str, pg_engine: sa.Engine
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "AIRFLOW", "MLFLOW"))}
    env.update(
        FRAUD_STATE_DIR=str(tmp_path / "state"),
        FRAUD_DATABASE_URL=pg_url,
        FRAUD_REPORTS_DIR=str(tmp_path / "reports"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
    )
    fraud = str(Path(sys.executable).with_name("fraud"))
    proc = subprocess.run(
        [fraud, "demo", "--reset", "--rows-per-day", "4000", "--history-days", "21"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]

    summary = json.loads((tmp_path / "state" / "demo" / "summary.json").read_text())
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
    # Every scored transaction reached Postgres.
    with pg_engine.connect() as conn:
        logged = conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one()
    assert logged >= 2 * 7 * 4000
    assert "hot reload: every worker served v3" in proc.stdout
    assert "drift reports:" in proc.stdout
    # The service was stopped gracefully: its workers shipped their whole spool before exiting.
    assert not list((tmp_path / "state").rglob("*.spool"))
