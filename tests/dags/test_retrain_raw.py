"""System test: the retraining loop on a behavioral champion, end to end with real components.

A champion on the raw schema (fraud_lib/features/raw_schema.yaml) is trained on the first days
of generated raw transactions and promoted. A real HTTP server (werkzeug, 127.0.0.1) runs the
service's app on it with the real online state (redis-server) and scores every day of raw
transactions in order; labels reach Postgres day by day as they would arrive. Then one
``dag.test()`` run of fraud_retrain: the window's features are rebuilt offline from the logged
raw fields, the drift check runs on the computed features, the challenger trains on the same
spec, the gate compares both on the same recent slice, the promotion moves the alias and the
reload hint makes the running service serve the new version.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from werkzeug.serving import make_server

from fraud_lib import pgserver, promotion, registry, store
from fraud_lib.config import Settings
from fraud_lib.features.offline import build_features
from fraud_lib.features.raw_data import generate_raw
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH, enrich
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model
from fraud_lib.window_store import WindowRef, load_window
from serving.app import create_app
from serving.raw_scoring import spec_prefix
from tests.dags.helpers import AIRFLOW_WARNING_FILTERS, xcom
from tests.dags.test_retrain_dag import World, _run
from tests.local_settings import local_settings

pytestmark = [pytest.mark.slow, *AIRFLOW_WARNING_FILTERS]

SCHEMA = FeatureSchema.load(RAW_SCHEMA_PATH)
DAYS, CHAMPION_DAYS = 35, 10
CONF = {"train_window_days": 14, "eval_window_days": 7}
TOKEN = "raw-loop-admin-token"
LABEL_COLUMNS = ["is_fraud", "fraud_type", "label_delay_seconds", "labeled_at"]


def _champion(settings: Settings, engine: Any, raw: pd.DataFrame) -> str:
    """Train the behavioral champion on the first days and promote it."""
    first = raw[raw["timestamp"] < raw["timestamp"].min() + CHAMPION_DAYS * 86_400]
    enriched = enrich(SCHEMA, first)
    trained = train_model(enriched, SCHEMA, test_fraction=0.2)
    ref = registry.log_model(trained, settings, run_name="raw-champion")
    held_out = enriched[enriched["timestamp"] > trained.time_range["fit_end"]]
    decision = promotion.promote_if_better(settings, engine, held_out, ref.version)
    assert decision.event == "promoted", decision.reason
    return ref.version


def _label_times(frame: pd.DataFrame) -> pd.Series:
    """When each label arrived, to the millisecond (as stored: Postgres keeps microseconds)."""
    return pd.to_datetime(frame["labeled_at"], unit="s", utc=True).dt.floor("ms")


def _labels(frame: pd.DataFrame) -> list[dict[str, Any]]:
    at = _label_times(frame)
    return [
        {"transaction_id": str(tx), "label": int(y), "labeled_at": t.to_pydatetime(),
         "source": "test"}
        for tx, y, t in zip(frame["transaction_id"], frame["is_fraud"], at, strict=True)
    ]  # fmt: skip


def _replay(url: str, engine: Any, raw: pd.DataFrame) -> None:
    """Score every day in order over HTTP; after each day, store the labels known by its end."""
    day = ((raw["timestamp"] - raw["timestamp"].min()) // 86_400).astype(int)
    sent = np.zeros(len(raw), dtype=bool)
    for d in range(DAYS):
        rows = raw[day == d].drop(columns=LABEL_COLUMNS)
        records = rows.assign(transaction_id=rows["transaction_id"].astype(str)).to_dict("records")
        for i in range(0, len(records), 500):
            resp = requests.post(f"{url}/v1/score", json={"transactions": records[i : i + 500]},
                                 timeout=60)  # fmt: skip
            assert resp.status_code == 200, resp.text[:500]
        day_end = raw["timestamp"].min() + (d + 1) * 86_400
        known = ~sent & (raw["labeled_at"] <= day_end).to_numpy()
        if known.any():
            store.upsert_labels(engine, _labels(raw[known]))
        sent |= known
    store.upsert_labels(engine, _labels(raw[~sent]))


def _wait_logged(engine: Any, n: int, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.exec_driver_sql("SELECT count(*) FROM predictions").scalar() >= n:
                return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} predictions reached Postgres")


@pytest.fixture(scope="module")
def raw_loop(tmp_path_factory, pg_url, redis_server, airflow_db):
    """The champion, the service it runs in (real HTTP), and the whole replayed traffic."""
    tmp: Path = tmp_path_factory.mktemp("raw-loop")
    engine = store.make_engine(pg_url)
    store.migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE predictions, labels, model_events RESTART IDENTITY")
    client = redis_server.client()
    for key in client.scan_iter(match=f"{spec_prefix(SCHEMA.behavior)}*"):
        client.delete(key)
    client.close()
    port = pgserver.free_port()
    settings = local_settings(
        tmp,
        pg_url,
        model_name="fraud-raw-loop",
        schema_path=str(RAW_SCHEMA_PATH),
        redis_url=redis_server.url,
        admin_token=TOKEN,
        scoring_url=f"http://127.0.0.1:{port}",
        label_refresh_seconds=0.5,
        min_labeled_rows=3000,
        min_frauds=20,
        drift_sample_rows=5000,
    )
    raw = generate_raw(DAYS, total_rows=21_000, fraud_rate=0.02, seed=41)
    raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
    champion = _champion(settings, engine, raw)
    app = create_app(replace(settings, poll_seconds=3600.0))  # only the reload hint reloads
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _replay(settings.scoring_url, engine, raw)
        _wait_logged(engine, len(raw))
        yield {"settings": settings, "engine": engine, "raw": raw, "champion": champion,
               "app": app}  # fmt: skip
    finally:
        server.shutdown()
        thread.join(timeout=10)
        app.extensions["fraudloop"].close(timeout=5)


def _next_monday(now: datetime) -> datetime:
    """The first Monday 00:00 UTC at least an hour ahead (a weekly run's interval end)."""
    day = (now + timedelta(hours=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=(7 - day.weekday()) % 7 or 7)


def test_retrain_on_a_behavioral_champion_rebuilds_features_promotes_and_reloads(
    monkeypatch, raw_loop
):
    settings, raw = raw_loop["settings"], raw_loop["raw"]
    monkeypatch.setenv("FRAUD_SCHEMA", str(RAW_SCHEMA_PATH))
    monkeypatch.setenv("FRAUD_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("FRAUD_REDIS_URL", settings.redis_url)
    world = World(settings, _next_monday(datetime.now(UTC)), raw_loop["champion"])
    run, states = _run(monkeypatch, world, "fraud_retrain", conf=CONF)
    assert states == dict.fromkeys(
        ("ingest_labeled", "check_drift", "train_challenger", "evaluate", "promote",
         "notify_serving"), "success",
    )  # fmt: skip

    window = xcom(run, "ingest_labeled")
    facts = window["features"]
    assert facts["source"].startswith("rebuilt offline")
    assert facts["history_events"] == len(raw) and facts["history_incomplete"] == 0
    assert window["rows"] == len(raw) and facts["logged_rows_compared"] == len(raw)
    # Online and rebuilt agree except where the replay outran the label cache (label risk).
    risk = {r.name for r in SCHEMA.behavior.label_risk}
    assert set(facts["logged_columns_differing"]) <= risk, facts
    # The rebuilt window is the offline definition over the whole table and its labels.
    frame = load_window(settings, WindowRef.from_dict(window["ref"]), SCHEMA)
    labels = pd.DataFrame({"transaction_id": raw["transaction_id"].astype(str),
                           "label": raw["is_fraud"], "labeled_at": _label_times(raw)})  # fmt: skip
    truth = build_features(SCHEMA.behavior, raw, labels)
    truth.index = raw["transaction_id"].astype(str)
    expected = truth.loc[frame["transaction_id"]].to_numpy(np.float64)
    got = frame[SCHEMA.behavior.output_columns].to_numpy(np.float64)
    assert np.abs(got - expected).max() <= 1e-9 * np.maximum(np.abs(expected), 1.0).max()

    drift = xcom(run, "check_drift")
    assert drift["columns"] == list(SCHEMA.features)  # amount + every computed feature
    assert drift["reference_basis"].startswith(f"champion v{raw_loop['champion']}")

    challenger = xcom(run, "train_challenger")
    loaded = registry.load_version(settings, challenger["version"])
    assert loaded.schema.to_dict() == SCHEMA.to_dict()  # the same spec travels with it
    outcome = xcom(run, "promote")
    assert outcome["event"] == "promoted", outcome["reason"]
    assert registry.alias_version(settings) == challenger["version"]

    holder = raw_loop["app"].extensions["fraudloop"].holder
    assert holder.current.version == challenger["version"]  # the reload hint reloaded it
    one = raw.drop(columns=["is_fraud", "fraud_type", "label_delay_seconds", "labeled_at"])
    rec = {**one.iloc[-1].to_dict(), "transaction_id": "after-reload"}
    resp = requests.post(f"{settings.scoring_url}/v1/score", json=rec, timeout=30)
    assert resp.status_code == 200 and resp.json()["model"]["version"] == challenger["version"]
