"""/v1/score with a behavioral champion: raw transactions, features from the online state (real
redis-server, real Postgres, real MLflow store), logged raw fields + features, bad raw input,
a Postgres outage, and the hot reload refusing a change of the feature definitions."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import app_factory, set_champion, store_settings, wait_logged

from fraud_lib import registry
from fraud_lib.features.offline import build_features
from fraud_lib.features.raw_data import generate_raw
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH, enrich
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model
from serving.raw_scoring import spec_prefix

SCHEMA = FeatureSchema.load(RAW_SCHEMA_PATH)
TRAIN_DAYS = 15


@pytest.fixture(scope="module")
def raw_world(tmp_path_factory, pg_url, redis_server) -> dict[str, Any]:
    """A session MLflow store with two behavioral versions (the second with other windows)."""
    raw = generate_raw(20, total_rows=12_000, fraud_rate=0.02, seed=21)
    raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = raw["timestamp"] < raw["timestamp"].min() + TRAIN_DAYS * 86_400
    root = tmp_path_factory.mktemp("raw-mlflow")
    settings = store_settings(root, pg_url, redis_url=redis_server.url)
    result = train_model(enrich(SCHEMA, raw[cut]), SCHEMA, test_fraction=0.2)
    block = SCHEMA.to_dict()
    block["behavior"]["aggregates"][0]["windows"] = ["2d"]
    other = FeatureSchema.from_dict(block)
    other_result = train_model(enrich(other, raw[cut]), other, test_fraction=0.2)
    versions = {}
    for key, res in (("raw", result), ("other_windows", other_result)):
        ref = registry.log_model(res, settings, run_name=key)
        versions[key] = ref.version
    later = raw[~cut].drop(columns=["is_fraud", "fraud_type", "label_delay_seconds", "labeled_at"])
    return {"settings": settings, "versions": versions, "later": later.reset_index(drop=True)}


def _behavioral_champion(raw_world, redis_server, tmp_path) -> Any:
    """Settings with the behavioral version as champion, on an empty online state."""
    settings = replace(raw_world["settings"], spool_dir=tmp_path / "spool")
    set_champion(settings, raw_world["versions"]["raw"])
    client = redis_server.client()
    for key in client.scan_iter(match=f"{spec_prefix(SCHEMA.behavior)}*"):
        client.delete(key)
    client.close()
    return settings


@pytest.fixture()
def raw_app(raw_world, pg_engine, redis_server, tmp_path):
    """An app whose champion is the behavioral version, on an empty online state."""
    yield from app_factory(_behavioral_champion(raw_world, redis_server, tmp_path))


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = frame.to_dict("records")
    for rec in out:
        rec["transaction_id"] = str(rec["transaction_id"])
    return out


def logged(engine, ids: list[str]) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT transaction_id, event_time, features FROM predictions "
                    "WHERE transaction_id = ANY(:ids)"), {"ids": ids},
        ).fetchall()  # fmt: skip
    return pd.DataFrame([{"transaction_id": r[0], "event_time": r[1], **r[2]} for r in rows])


def test_raw_batches_logged_with_the_offline_features(raw_app, raw_world, pg_engine):
    client = raw_app().test_client()
    sent = raw_world["later"].iloc[:1500]
    pids = []
    for i in range(0, len(sent), 250):
        resp = client.post("/v1/score", json={"transactions": records(sent.iloc[i : i + 250])})
        assert resp.status_code == 200, resp.get_json()
        pids += [p["prediction_id"] for p in resp.get_json()["predictions"]]
    one = client.post("/v1/score", json=records(raw_world["later"].iloc[[1500]])[0])
    assert one.status_code == 200 and 0 <= one.get_json()["score"] <= 1
    wait_logged(pg_engine, pids)
    got = logged(pg_engine, sent["transaction_id"].astype(str).tolist())
    got = got.set_index("transaction_id").loc[sent["transaction_id"].astype(str)]
    spec = SCHEMA.behavior
    assert {"customer_id", "terminal_id", "amount", "timestamp"} <= set(got.columns)
    np.testing.assert_array_equal(got["event_time"].to_numpy(), sent["timestamp"].to_numpy())
    no_labels = pd.DataFrame({"transaction_id": [], "label": [], "labeled_at": []})
    offline = build_features(spec, sent, no_labels)
    a = got[spec.output_columns].to_numpy(np.float64)
    b = offline.to_numpy(np.float64)
    assert (np.abs(a - b) / np.maximum(np.abs(b), 1.0)).max() <= 1e-9


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_id": None}, "customer_id"),
        ({"terminal_id": None}, "terminal_id"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 4e9}, "timestamp"),  # 2096: too far in the future
        ({"amount": "12"}, "amount"),
        ({"amount": 10**400}, "amount"),  # JSON allows it; no float holds it
        ({"timestamp": -(10**400)}, "timestamp"),
        ({"V1": 0.5}, "V1"),
    ],
)
def test_bad_raw_transaction_is_a_400_naming_the_field(raw_app, raw_world, change, field):
    client = raw_app().test_client()
    rec = {**records(raw_world["later"].iloc[[0]])[0], **change}
    if change.get(field, 0) is None:
        del rec[field]
    resp = client.post("/v1/score", json=rec)
    assert resp.status_code == 400
    assert field in resp.get_json()["error"]["fields"], resp.get_json()
    batch = client.post(
        "/v1/score", json={"transactions": [records(raw_world["later"].iloc[[1]])[0], rec]}
    )
    assert batch.status_code == 400
    assert f"transactions[1].{field}" in batch.get_json()["error"]["fields"]


def test_raw_timestamps_just_outside_the_range_are_refused_and_its_edge_accepted(
    raw_app, raw_world
):
    # float epochs inside the range skip the datetime checks: the edges must agree with them
    client = raw_app().test_client()
    base = {**records(raw_world["later"].iloc[[0]])[0], "customer_id": "edge-customer"}
    base.pop("transaction_id", None)
    for t in (time.time() + 300.0 + 600.0, 946684800.0 - 0.5, float("1e300")):
        resp = client.post("/v1/score", json={**base, "timestamp": t})
        assert resp.status_code == 400 and "timestamp" in resp.get_json()["error"]["fields"], t
    assert client.post("/v1/score", json={**base, "timestamp": 946684800.0}).status_code == 200


def test_scoring_keeps_working_while_postgres_is_unreachable(raw_app, raw_world):
    from fraud_lib.pgproc import free_port

    down = f"postgresql+psycopg://fraud:x@127.0.0.1:{free_port()}/fraud"
    client = raw_app(database_url=down).test_client()
    rows = records(raw_world["later"].iloc[:20])
    first = client.post("/v1/score", json={"transactions": rows[:10]})
    second = client.post("/v1/score", json={"transactions": rows[10:]})
    assert first.status_code == second.status_code == 200


def test_hot_reload_refuses_other_feature_definitions(raw_app, raw_world):
    app = raw_app()
    holder = app.extensions["fraudloop"].holder
    set_champion(raw_world["settings"], raw_world["versions"]["other_windows"])
    try:
        result = holder.check()
    finally:
        set_champion(raw_world["settings"], raw_world["versions"]["raw"])
    assert result["status"] == "refused"
    error = holder.last_error
    assert error["reason"] == "schema_mismatch" and "input schema differs" in error["message"]
    # the message names what changed, not two whole blocks
    assert (
        "behavior.aggregates: +[{'entity': 'customer', 'column': 'amount', 'windows': ['2d']"
        in error["message"]
    )
    assert len(error["message"]) < 600
    assert holder.current.version == raw_world["versions"]["raw"]


def test_openapi_documents_the_raw_transaction(raw_app, raw_world):
    client = raw_app().test_client()
    document = client.get("/openapi.json").get_json()
    item = document["components"]["schemas"]["Transaction"]
    assert item["required"] == ["timestamp", "customer_id", "terminal_id", "amount"]
    assert "customer__amount__mean__7d__incl" not in item["properties"]
    example = records(raw_world["later"].iloc[[5]])[0]
    assert set(example) <= set(item["properties"])
    assert client.post("/v1/score", json=example).status_code == 200


def test_two_gunicorn_workers_share_the_state(raw_world, pg_engine, redis_server, tmp_path):
    """Sequential single requests on new connections land on either worker; every logged
    feature still equals the offline one, so each worker saw the other's events."""
    import subprocess
    import sys

    import requests
    from conftest import REPO, Service, service_env

    from fraud_lib import pgserver

    settings = _behavioral_champion(raw_world, redis_server, tmp_path)
    port = pgserver.free_port()
    log_path = tmp_path / "gunicorn.log"
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
            "-b", f"127.0.0.1:{port}", "-w", "2", "serving.wsgi:app"]  # fmt: skip
    env = service_env(settings, FRAUD_REDIS_URL=redis_server.url)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    service = Service(proc, port, log_path)
    try:
        service.wait_ready(2, timeout=300)  # worker start-up is slow on a loaded machine
        sent = raw_world["later"].iloc[:300]
        pids = []
        for rec in records(sent):
            resp = requests.post(service.url + "/v1/score", json=rec, timeout=30)
            assert resp.status_code == 200, resp.text
            pids.append(resp.json()["prediction_id"])
        wait_logged(pg_engine, pids, timeout=60)
    finally:
        service.stop()
    got = logged(pg_engine, sent["transaction_id"].astype(str).tolist())
    got = got.set_index("transaction_id").loc[sent["transaction_id"].astype(str)]
    no_labels = pd.DataFrame({"transaction_id": [], "label": [], "labeled_at": []})
    spec = SCHEMA.behavior
    offline = build_features(spec, sent, no_labels).to_numpy(np.float64)
    online = got[spec.output_columns].to_numpy(np.float64)
    diff = np.abs(online - offline) / np.maximum(np.abs(offline), 1.0)
    rows, cols = np.nonzero(diff > 1e-9)
    assert not len(rows), [(int(r), spec.output_columns[c], online[r, c], offline[r, c])
                           for r, c in zip(rows[:5], cols[:5], strict=True)]  # fmt: skip


def test_the_service_label_refresh_follows_added_changed_and_joined_labels(raw_world, pg_engine):
    """The service's refresh (incremental: only rows written since the previous one) keeps
    the cache equal to the labels joined to their logged predictions."""
    import time

    from fraud_lib import store
    from fraud_lib.features.online_labels import LabelCache
    from serving.raw_scoring import OnlineService

    service = OnlineService(raw_world["settings"], lambda: pg_engine)
    cache = LabelCache()

    def log_prediction(tx: str) -> None:
        raw = {"customer_id": "c", "terminal_id": "T", "amount": 1.0}
        store.insert_predictions(pg_engine, [{"prediction_id": f"p-{tx}", "transaction_id": tx,
                                              "event_time": time.time() - 60, "features": raw,
                                              "score": 0.5}])  # fmt: skip

    def terminal_labels() -> list[float]:
        service._refresh(SCHEMA.behavior, cache)
        return sorted(cache.history("terminal", np.array(["T"], dtype=object)).y.tolist())

    log_prediction("t1")
    assert terminal_labels() == []
    store.upsert_labels(pg_engine, [{"transaction_id": "t1", "label": 1}])
    assert terminal_labels() == [1.0] and terminal_labels() == [1.0]
    store.upsert_labels(pg_engine, [{"transaction_id": "t1", "label": 0}])  # a changed label
    assert terminal_labels() == [0.0]
    store.upsert_labels(pg_engine, [{"transaction_id": "t2", "label": 1}])  # not logged yet
    assert terminal_labels() == [0.0]
    log_prediction("t2")  # the label now joins its prediction
    assert terminal_labels() == [0.0, 1.0]
    service.close()
