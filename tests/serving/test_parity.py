"""Parity (issue 14, item 4): >= 100,000 generated raw transactions replayed through real
gunicorn (2 workers), real Postgres and the session redis-server, labels arriving with their
delay through POST /v1/labels; every logged online feature equals the offline builder's over the
same history, except the cells inside the lag defined in fraud_lib.features.parity (the label
lag from the refresh and COPY durations the service measured in the same run).
The replay is paced (14 simulated days in PARITY_REPLAY_SECONDS, default 150) so that the label
lag, a few wall seconds, covers hours of simulated time, not days, and label risk is compared on
most rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import requests
import sqlalchemy as sa
from conftest import REPO, Service, service_env, set_champion, store_settings

from fraud_lib import pgserver, registry
from fraud_lib.config import Settings
from fraud_lib.features.parity import check_parity, parity_world, stated_label_lag
from fraud_lib.features.raw_data import generate_raw
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH, enrich
from fraud_lib.features.replay import Replay
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model
from serving.raw_scoring import spec_prefix

SCHEMA = FeatureSchema.load(RAW_SCHEMA_PATH)
LABEL_REFRESH_SECONDS = 0.5
ROWS, WORLDS, DAYS = 104_000, 4, 14
# Paced: the 14 simulated days in this many seconds, labels arriving with their delay (a few
# simulated hours of label lag); PARITY_REPLAY_SECONDS=0 replays as fast as the service answers
# (~8 s: the label lag then covers most rows).
REPLAY_SECONDS = float(os.environ.get("PARITY_REPLAY_SECONDS", "150")) or None
BATCH = 250 if REPLAY_SECONDS else 1_000


@pytest.fixture(scope="module")
def parity_settings(tmp_path_factory, pg_url, redis_server) -> Settings:
    """A session MLflow store whose champion is a behavioral model."""
    root = tmp_path_factory.mktemp("parity-mlflow")
    settings = store_settings(root, pg_url, redis_url=redis_server.url)
    train = generate_raw(10, total_rows=6_000, fraud_rate=0.02, seed=5)
    ref = registry.log_model(train_model(enrich(SCHEMA, train), SCHEMA, test_fraction=0.2),
                             settings, run_name="parity")  # fmt: skip
    set_champion(settings, ref.version)
    return settings


def start_service(settings: Settings, redis_server, tmp_path) -> Service:
    """gunicorn, 2 workers, on an empty online state marked built (the replayed world has no
    logged history to rebuild)."""
    client = redis_server.client()
    prefix = spec_prefix(SCHEMA.behavior)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.set(f"{prefix}built", "0")
    client.close()
    port = pgserver.free_port()
    log_path = tmp_path / "gunicorn.log"
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
            "-b", f"127.0.0.1:{port}", "-w", "2", "serving.wsgi:app"]  # fmt: skip
    env = service_env(settings, FRAUD_REDIS_URL=redis_server.url,
                      FRAUD_LABEL_REFRESH_SECONDS=str(LABEL_REFRESH_SECONDS))  # fmt: skip
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    service = Service(proc, port, log_path)
    service.wait_ready(2, timeout=300)
    return service


def wait_all_logged(engine, ids: list[str], timeout: float = 180) -> None:
    """Until every replayed transaction has a prediction row."""
    query = sa.text("SELECT count(DISTINCT transaction_id) FROM predictions "
                    "WHERE transaction_id = ANY(:ids)")  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            got = conn.execute(query, {"ids": ids}).scalar_one()
        if got == len(ids):
            return
        time.sleep(0.5)
    raise AssertionError(f"{got} of {len(ids)} replayed transactions reached Postgres")


@pytest.mark.slow
def test_online_features_equal_offline_over_a_100k_replay(
    parity_settings, pg_engine, redis_server, tmp_path
):
    world = parity_world(ROWS, WORLDS, DAYS, seed=1414, now=time.time())
    assert len(world) >= 100_000
    settings = replace(parity_settings, spool_dir=tmp_path / "spool")
    service = start_service(settings, redis_server, tmp_path)
    try:
        started = time.monotonic()
        log = Replay(service.url, world, BATCH, seed=14, seconds=REPLAY_SECONDS).run()
        replay_s = time.monotonic() - started
        wait_all_logged(pg_engine, log.rows["transaction_id"].tolist())
        metrics = requests.get(service.url + "/metrics", timeout=30).text
    finally:
        service.stop()
    assert len(log.rows) == len(world) and len(log.labels) > 0
    label_lag = stated_label_lag(LABEL_REFRESH_SECONDS, metrics)
    assert label_lag > LABEL_REFRESH_SECONDS  # the service measured its refreshes and COPYs
    report = check_parity(pg_engine, SCHEMA.behavior, log, label_lag)
    report["replay_seconds"] = round(replay_s, 1)
    print("parity:", json.dumps(report))
    assert report["parity_rows"] >= 100_000
    assert report["parity_failures"] == 0 and report["parity_max_rel_diff"] <= 1e-9, report
    assert report["parity_share_inside_event_lag"] < 0.05
    if REPLAY_SECONDS:  # paced: label risk is compared where labels made it non-zero
        assert report["parity_label_risk_nonzero_compared"] >= 500, report
