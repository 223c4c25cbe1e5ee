"""Clients the stack test drives the running stack with: Airflow's REST API (/api/v2), a
steady scoring load through nginx, and the seeding of a first champion over the MLflow
server. Nothing here starts a server: `fraud stack up` does."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import requests

from fraud_lib import data, procs, promotion, registry, store
from fraud_lib.config import Settings
from fraud_lib.demo import SCHEMA, SEND_COLUMNS
from fraud_lib.stack import runner
from fraud_lib.stack.plan import StackPlan, fraud_env
from fraud_lib.train import train_model

TERMINAL = {"success", "failed"}


def stack_settings(plan: StackPlan) -> Settings:
    """Settings of a client of the stack (the test process): its Postgres and MLflow server."""
    env = fraud_env(plan, plan.base / "test-client")
    return Settings.from_env(env)


def seed_champion(settings: Settings, history: pd.DataFrame) -> str:
    """Train on ``history``, register it on the MLflow server and promote it; its version."""
    result = train_model(SCHEMA.validate_frame(history), SCHEMA, test_fraction=0.2,
                         threshold_rule=settings.threshold_rule)  # fmt: skip
    ref = registry.log_model(result, settings, data_ref="stack-test-history",
                             run_name="stack-first-champion")  # fmt: skip
    assert ref is not None
    held_out = history[history["Time"] > result.time_range["fit_end"]]
    engine = store.connect_store(settings)
    decision = promotion.promote_if_better(settings, engine, held_out, ref.version)
    assert decision.event == "promoted", decision
    return str(ref.version)


class Airflow:
    """The api-server's REST API v2 with a bearer token of the simple auth manager."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        resp = requests.post(f"{url}/auth/token", json={"username": user, "password": password},
                             timeout=30)  # fmt: skip
        resp.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
        return resp.json()

    def wait_dag(self, dag_id: str, timeout: float) -> None:
        """Until the DAG processor has parsed ``dag_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.session.get(f"{self.url}/api/v2/dags/{dag_id}", timeout=30).ok:
                return
            time.sleep(2)
        raise AssertionError(f"{dag_id} not parsed within {timeout:.0f} s")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        body = {"logical_date": None, "conf": conf}
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        found = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        return self.call("GET", path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """A task's return value (None when it returned nothing)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        resp = self.session.get(f"{self.url}/api/v2{path}", timeout=30)
        if resp.status_code == 404:
            return None
        assert resp.ok, f"GET {path}: {resp.status_code} {resp.text[:300]}"
        return resp.json()["value"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} still running after {timeout:.0f} s")

    def wait_idle(self, dag_id: str, timeout: float) -> None:
        """Until no run of ``dag_id`` is queued or running."""
        deadline = time.monotonic() + timeout
        while any(r["state"] not in TERMINAL for r in self.runs(dag_id)):
            assert time.monotonic() < deadline, f"{dag_id} still busy after {timeout:.0f} s"
            time.sleep(2)


@dataclass
class Load:
    """One client scoring small batches through nginx until stopped: what was acknowledged
    (200) and every failure (other status, or no answer)."""

    url: str
    frame: pd.DataFrame
    batch: int = 5
    pause: float = 0.05
    acknowledged: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        records = self.frame[SEND_COLUMNS].to_dict("records")
        session, i = requests.Session(), 0
        while not self._stop.is_set():
            chunk = [dict(r, transaction_id=f"load-{i}-{n}")
                     for n, r in enumerate(records[i % len(records):][: self.batch])]  # fmt: skip
            i += self.batch
            try:
                resp = session.post(f"{self.url}/v1/score", json={"transactions": chunk},
                                    timeout=30)  # fmt: skip
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
                continue
            if resp.status_code != 200:
                self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                continue
            answer = resp.json()
            self.versions[str(answer["model"]["version"])] += 1
            self.acknowledged += [p["prediction_id"] for p in answer["predictions"]]
            time.sleep(self.pause)

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="stack-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(60)


def traffic(days: int, rows_per_day: int, seed: int, start_day: int) -> pd.DataFrame:
    """Days of transactions with the new fraud pattern from the first day on."""
    return data.generate(days, rows_per_day=rows_per_day, fraud_rate=0.01, seed=seed,
                         start_day=start_day, scenario="new_pattern",
                         drift_start_day=start_day)  # fmt: skip


def served_version(replica_url: str) -> str | None:
    """The version a replica serves (its /v1/model), None while it has none."""
    resp = requests.get(f"{replica_url}/v1/model", timeout=10)
    return str(resp.json()["version"]) if resp.status_code == 200 else None


def kill_worker(plan: StackPlan, worker: str) -> list[int]:
    """SIGKILL every process of one Celery worker (its session: the worker, its pool, the
    task it runs), as when its host dies; the pids killed."""
    entry = runner.recorded(plan)[worker]
    pids = sorted(procs.process_tree(entry["pid"], descendants=runner.alive(entry)))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def wait_running(af: Airflow, dag_id: str, run_id: str, task_id: str, timeout: float) -> str:
    """Until ``task_id`` runs; the host name it runs on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = af.task_instances(dag_id, run_id).get(task_id, {})
        if ti.get("state") == "running" and ti.get("hostname"):
            return ti["hostname"]
        time.sleep(0.5)
    raise AssertionError(f"{task_id} did not start within {timeout:.0f} s")


@dataclass
class ReplicaWatch:
    """Polls each replica's /v1/model directly: when (epoch seconds) it first served each
    version, to time the hot reload after a promotion."""

    urls: list[str]
    interval: float = 0.25
    first_served: dict[str, dict[str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                with contextlib.suppress(requests.RequestException):
                    version = served_version(url)
                    if version:
                        self.first_served.setdefault(url, {}).setdefault(version, time.time())
            time.sleep(self.interval)

    def start(self) -> ReplicaWatch:
        self._thread = threading.Thread(target=self._run, name="replica-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)

    def reload_seconds(self, version: str, since: float) -> float:
        """Seconds from ``since`` until the last replica served ``version``."""
        return max(self.first_served[url][version] for url in self.urls) - since
