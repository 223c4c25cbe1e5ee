"""The multi-host topology on one machine: `fraud stack up`, a gated retrain through Airflow's
REST API on the CeleryExecutor under a steady load through nginx, a Celery worker SIGKILLed
mid-task, then `fraud stack down` leaving no process.

Everything is real (embedded Postgres, redis-server, mlflow server, Airflow's six processes,
two gunicorn replicas, nginx, Prometheus, Alertmanager); the figures are printed (pytest -s)
and written to bench/results/stack_test.json for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from fraud_lib import data, demo, registry, store
from fraud_lib.stack import runner
from fraud_lib.stack.plan import ADMIN_USER, CELERY_WORKERS, SCORING_REPLICAS, StackPlan
from tests.stack import stack_helpers as h

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "stack_test.json"
DAG = "fraud_retrain"
CONF = {"eval_window_days": 3}


def fraud(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    """`fraud ...` as a user runs it (this checkout's code first on the path)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", "from fraud_lib.cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[StackPlan, float]]:
    """A stack on free ports in a fresh directory (0755: the Postgres OS user must reach it
    when we are root); stopped by `fraud stack down` whatever happens."""
    base = Path(tempfile.mkdtemp(prefix="fraudloop-stack-"))
    base.chmod(0o755)
    started = time.monotonic()
    up = fraud("stack", "up", "--dir", str(base), "--free-ports")
    seconds = time.monotonic() - started
    plan = StackPlan.create(base)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield plan, seconds
    finally:
        fraud("stack", "down", "--dir", str(base))
        left = runner.leftovers(plan)
        if not left:
            shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes left after stack down: {left} (files kept in {base})"


def listening(pids: set[int]) -> list[str]:
    """Local addresses the given processes listen on (TCP)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()
            if any(f"pid={p}," in line for p in pids)]  # fmt: skip


def check_ports(plan: StackPlan) -> None:
    from fraud_lib import procs

    for name, entry in runner.recorded(plan).items():
        for address in listening(set(procs.process_tree(entry["pid"]))):
            assert address.startswith("127.0.0.1:"), f"{name} listens on {address}"


def check_prometheus(plan: StackPlan) -> None:
    """Prometheus scrapes both replicas (their targets come up)."""
    wanted = {f"127.0.0.1:{plan.ports[r]}" for r in SCORING_REPLICAS}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        active = requests.get(f"{plan.url('prometheus')}/api/v1/targets", timeout=10).json()
        up = {t["labels"]["instance"] for t in active["data"]["activeTargets"]
              if t["labels"]["job"] == "scoring" and t["health"] == "up"}  # fmt: skip
        if up == wanted:
            return
        time.sleep(2)
    raise AssertionError(f"Prometheus scrapes {up}, not {wanted}")


def wait_served(plan: StackPlan, version: str, timeout: float) -> float:
    """Seconds until every replica serves ``version`` (each asked directly)."""
    started = time.monotonic()
    urls = [f"http://127.0.0.1:{plan.ports[r]}" for r in SCORING_REPLICAS]
    while any(h.served_version(url) != version for url in urls):
        assert time.monotonic() - started < timeout, f"replicas not on {version} in {timeout}s"
        time.sleep(0.5)
    return time.monotonic() - started


def check_logged(settings: object, acknowledged: list[str], timeout: float = 60) -> None:
    """Every acknowledged prediction reaches Postgres (the replicas' spools drain)."""
    engine = store.connect_store(settings)
    wanted = set(acknowledged)
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT prediction_id FROM predictions "
                                        "WHERE prediction_id = ANY(:ids)"),
                                {"ids": list(wanted)}).scalars()  # fmt: skip
            missing = wanted - set(rows)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"{len(missing)} of {len(wanted)} acknowledged predictions not logged"


def seed(plan: StackPlan, settings: object, af: h.Airflow) -> str:
    """Unpause the DAG (its first, scheduled run skips: no traffic in its interval), seed a
    first champion, replay a week of new-pattern traffic and its labels through nginx."""
    af.wait_dag(DAG, 180)
    af.call("PATCH", f"/dags/{DAG}", json={"is_paused": False})
    history = data.generate(10, rows_per_day=1500, fraud_rate=0.01, seed=7)
    champion = h.seed_champion(settings, history)
    wait_served(plan, champion, 60)
    week = h.traffic(7, 2500, seed=8, start_day=10)
    demo.replay(plan.url("nginx"), week, 1000)
    demo.send_labels(plan.url("nginx"), week, float("inf"), set(), 1000)
    af.wait_idle(DAG, 300)
    return champion


def test_stack_retrains_on_two_workers_under_load_and_survives_a_worker_kill(
    stack: tuple[StackPlan, float],
) -> None:
    plan, startup = stack
    check_ports(plan)
    check_prometheus(plan)
    settings = h.stack_settings(plan)
    af = h.Airflow(plan.url("airflow-apiserver"), ADMIN_USER, plan.secret("admin-password"))
    champion = seed(plan, settings, af)
    load = h.Load(plan.url("nginx"), h.traffic(1, 500, seed=9, start_day=17)).start()
    watch = h.ReplicaWatch([f"http://127.0.0.1:{plan.ports[r]}" for r in SCORING_REPLICAS])
    watch.start()
    try:
        started = time.monotonic()
        run_id = af.trigger(DAG, CONF)
        assert af.wait_run(DAG, run_id, 420) == "success"
        run_seconds = time.monotonic() - started
        tis = af.task_instances(DAG, run_id)
        hosts = {ti["hostname"] for ti in tis.values() if ti["state"] == "success"}
        assert hosts == {w.removeprefix("airflow-") for w in CELERY_WORKERS}, tis
        assert {ti["queue"] for ti in tis.values()} == {"default"}
        for task_id in tis:  # hand-offs through MLflow and Postgres, never a worker's disk
            value = str(af.xcom(DAG, run_id, task_id))
            assert str(plan.base) not in value, f"{task_id} hands off a local path: {value}"
        new = registry.alias_version(settings)  # on the MLflow server
        assert new is not None and new != champion
        assert tis["promote"]["state"] == "success"
        wait_served(plan, new, 60)
        events = store.model_events(store.connect_store(settings), settings.model_name, limit=5)
        promoted = next(e for e in events if e["event"] == "promoted" and e["version"] == new)
        reload_seconds = watch.reload_seconds(new, promoted["created_at"].timestamp())

        # A worker dies (SIGKILL of its whole session) while it trains the challenger.
        started = time.monotonic()
        kill_run = af.trigger(DAG, CONF)
        host = h.wait_running(af, DAG, kill_run, "train_challenger", 300)
        killed = h.kill_worker(plan, f"airflow-{host}")
        assert af.wait_run(DAG, kill_run, 420) == "success"
        kill_seconds = time.monotonic() - started
        tries = af.tries(DAG, kill_run, "train_challenger")
        assert [(t["state"], t["hostname"] == host) for t in tries] == [
            ("failed", True),
            ("success", False),
        ], tries
    finally:
        load.stop()
        watch.stop()
    assert load.failures == [], load.failures[:5]
    assert len(load.acknowledged) > 100
    assert new in load.versions, load.versions  # the load saw the reload
    check_logged(settings, load.acknowledged)
    figures = {
        "startup_seconds": round(startup, 1),
        "retrain_run_seconds": round(run_seconds, 1),
        "reload_seconds_after_promote": round(reload_seconds, 1),
        "kill_run_seconds": round(kill_seconds, 1),
        "killed_worker": host,
        "killed_pids": len(killed),
        "load_requests_ok": sum(load.versions.values()),
        "load_failed_requests": len(load.failures),
        "acknowledged_predictions_logged": len(load.acknowledged),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
