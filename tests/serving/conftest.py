"""Fixtures of the serving tests: one real MLflow store per session with four model versions,
apps built by the real factory, and a real gunicorn service.

Versions registered once (log_model costs seconds each):

1. ``hgb``: a small HistGradientBoosting on generated data (the compiled-trees predictor)
2. ``hgb2``: the same model logged again (a new version for hot reloads)
3. ``other_schema``: a logistic regression on fewer columns (refused: schema differs)
4. ``exploding``: version 1's model wrapped to raise on more than 5 rows (refused: canary)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from fraud_lib import pgserver, registry, store
from fraud_lib.config import Settings
from fraud_lib.data import generate
from fraud_lib.procs import child_pids, stop_master
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model
from serving.app import create_app

REPO = Path(__file__).resolve().parents[2]
SCHEMA = FeatureSchema()
ADMIN_TOKEN = "test-admin-token"


def set_champion(settings: Settings, version: str) -> None:
    registry.client(settings).set_registered_model_alias(settings.model_name, "champion", version)


def rows_of(frames: tuple[Any, Any], n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` transactions of the later generated frame, as request records."""
    return frames[1].iloc[start : start + n].to_dict("records")


def wait_logged(engine: Any, ids: list[str], timeout: float = 20.0) -> None:
    """Wait until every one of the prediction ids is a row in Postgres."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.count_predictions_by_ids(engine, ids) == len(ids):
            return
        time.sleep(0.05)
    got = store.count_predictions_by_ids(engine, ids)
    raise AssertionError(f"{got} of {len(ids)} rows reached Postgres")


@pytest.fixture(scope="session")
def frames():
    """(history the models train on, later transactions to score)."""
    past = SCHEMA.validate_frame(generate(4, rows_per_day=3000, seed=5, fraud_rate=0.01))
    later = generate(1, rows_per_day=2000, seed=6, fraud_rate=0.01, start_day=4)
    return past, later.drop(columns=["Class", "label_delay_seconds"])


def store_settings(root: Path, pg_url: str, **extra: Any) -> Settings:
    """Settings of a session MLflow store and spool under ``root`` (no FRAUD_* from the shell)."""
    return Settings.from_env(
        {},
        state_dir=root / "state",
        database_url=pg_url,
        mlflow_tracking_uri=f"sqlite:///{root}/mlflow.db",
        mlflow_artifact_dir=root / "mlartifacts",
        spool_dir=root / "spool",
        admin_token=ADMIN_TOKEN,
        **extra,
    )


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, pg_url, frames) -> dict[str, Any]:
    """Settings of a session MLflow store holding the four versions, and their numbers."""
    import broken_model  # tests/serving is on sys.path (pytest rootdir-less import)
    import cloudpickle

    root = tmp_path_factory.mktemp("mlflow-store")
    settings = store_settings(root, pg_url)
    past, _ = frames
    hgb = train_model(past, SCHEMA, test_fraction=0.1)
    few = FeatureSchema(features=("V1", "V2", "V3", "V4", "V10", "V14", "Amount"))
    lr = train_model(past, few, model_type="lr", test_fraction=0.1)
    cloudpickle.register_pickle_by_value(broken_model)  # loadable in gunicorn workers too
    exploding = replace(hgb, model=broken_model.ExplodingModel(hgb.model))
    versions = {}
    for key, result in (
        ("hgb", hgb),
        ("hgb2", hgb),
        ("other_schema", lr),
        ("exploding", exploding),
    ):
        ref = registry.log_model(result, settings, run_name=key)
        assert ref is not None
        versions[key] = ref.version
    set_champion(settings, versions["hgb"])
    return {"settings": settings, "versions": versions, "hgb": hgb}


@pytest.fixture()
def serving_settings(model_store, pg_engine, tmp_path) -> Settings:
    """The session store's settings with a fresh spool, on emptied tables, champion = hgb."""
    settings = replace(model_store["settings"], spool_dir=tmp_path / "spool")
    set_champion(settings, model_store["versions"]["hgb"])
    return settings


@pytest.fixture()
def make_app(serving_settings) -> Iterator[Any]:
    """Factory: ``make_app(**settings_overrides)`` -> a started app, closed after the test."""
    yield from app_factory(serving_settings)


def app_factory(settings: Any) -> Iterator[Any]:
    """The body of an app-factory fixture: yields ``build(**overrides)``, which starts an app on
    ``settings`` with the overrides; every app built is closed after the test."""
    apps = []

    def build(**overrides: Any) -> Any:
        app = create_app(replace(settings, **overrides))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["fraudloop"].close(timeout=5)


@pytest.fixture()
def app(make_app):
    return make_app()


@pytest.fixture()
def client(app):
    return app.test_client()


# ------------------------------------------------------------------------------ gunicorn
class Service:
    """A gunicorn master running the service on 127.0.0.1:port."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc, self.port, self.log_path = proc, port, log_path
        self.url = f"http://127.0.0.1:{port}"

    def worker_pids(self) -> list[int]:
        return child_pids(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, workers: int, timeout: float = 60) -> None:
        """Until every worker is up and ``/readyz`` answers 200 repeatedly."""
        deadline = time.monotonic() + timeout
        ok = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.log()[-4000:]}")
            try:
                ready = requests.get(self.url + "/readyz", timeout=5).status_code == 200
            except requests.RequestException:
                ready = False
            ok = ok + 1 if ready and len(self.worker_pids()) == workers else 0
            if ok >= 6:
                return
            time.sleep(0.1)
        raise AssertionError(f"service not ready in {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the master (graceful: workers drain their logs), SIGKILL as a last resort."""
        stop_master(self.proc, timeout)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "PROMETHEUS_"))}
    env.update(
        FRAUD_STATE_DIR=str(settings.state_dir),
        FRAUD_DATABASE_URL=settings.database_url,
        MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
        FRAUD_MLFLOW_ARTIFACTS=str(settings.mlflow_artifact_dir),
        FRAUD_SPOOL_DIR=str(settings.spool_dir),
        FRAUD_MODEL_NAME=settings.model_name,
        FRAUD_ADMIN_TOKEN=ADMIN_TOKEN,
        FRAUD_POLL_SECONDS="0.5",
        FRAUD_LOG_FLUSH_SECONDS="0.1",
        PYTHONPATH=str(REPO),
    )
    env.update(extra)
    return env


@pytest.fixture()
def start_service(serving_settings, tmp_path) -> Iterator[Any]:
    """Factory: ``start_service(workers=2)`` -> a ready :class:`Service`; stopped afterwards."""
    services: list[Service] = []

    def start(workers: int = 2, **env: str) -> Service:
        port = pgserver.free_port()
        log_path = tmp_path / f"gunicorn-{port}.log"
        argv = [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
                "-b", f"127.0.0.1:{port}", "-w", str(workers), "serving.wsgi:app"]  # fmt: skip
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv, cwd=REPO, env=service_env(serving_settings, **env),
                stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        service = Service(proc, port, log_path)
        services.append(service)
        service.wait_ready(workers)
        return service

    yield start
    for service in services:
        service.stop()
