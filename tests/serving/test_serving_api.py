"""The API in-process (Flask test client) with a real MLflow store, model and Postgres."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from conftest import ADMIN_TOKEN, rows_of, set_champion, wait_logged

from fraud_lib import registry, store
from fraud_lib.features import predict_scores

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _metric(client, name, **labels):
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for line in text.splitlines():
        matches = line.startswith(name + "{") or line.startswith(name + " ")
        if matches and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------------------ shapes
def test_single_transaction_shape(client, frames, model_store):
    row = rows_of(frames, 1)[0]
    resp = client.post("/v1/score", json=row)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == {
        "transaction_id", "prediction_id", "score", "is_fraud", "risk_level", "threshold", "model",
    }  # fmt: skip
    assert body["transaction_id"] == row["transaction_id"]
    assert HEX32.match(body["prediction_id"])
    hgb = model_store["hgb"]
    assert body["threshold"] == pytest.approx(hgb.threshold)
    assert body["is_fraud"] == (body["score"] >= body["threshold"])
    assert body["model"] == {"name": "fraud-detector", "version": model_store["versions"]["hgb"]}
    expected = predict_scores(hgb.model, frames[1].iloc[:1], hgb.schema)[0]
    assert body["score"] == pytest.approx(expected, abs=1e-12)
    assert resp.headers["X-Request-ID"]


def test_transaction_id_is_generated_when_absent(client, frames):
    row = rows_of(frames, 1)[0]
    del row["transaction_id"]
    body = client.post("/v1/score", json=row).get_json()
    assert HEX32.match(body["transaction_id"]) and body["transaction_id"] != body["prediction_id"]


def test_batch_scores_equal_the_pipeline_and_risk_levels_follow_cut_points(
    make_app, frames, model_store
):
    hgb = model_store["hgb"]
    expected = predict_scores(hgb.model, frames[1].iloc[:300], hgb.schema)
    medium, high = np.quantile(expected, [0.3, 0.9])  # cut points that split this batch
    app = make_app(risk_medium=float(medium), risk_high=float(high))
    client = app.test_client()
    rows = rows_of(frames, 300)
    resp = client.post("/v1/score", json={"transactions": rows})
    assert resp.status_code == 200
    body = json.loads(resp.get_data())  # strict: the templated body is real JSON
    preds = body["predictions"]
    assert body["count"] == len(preds) == 300
    assert body["model"]["version"] == model_store["versions"]["hgb"]
    assert [p["transaction_id"] for p in preds] == [r["transaction_id"] for r in rows]
    assert len({p["prediction_id"] for p in preds}) == 300
    np.testing.assert_allclose([p["score"] for p in preds], expected, rtol=0, atol=1e-12)
    for p in preds:
        level = "high" if p["score"] >= high else "medium" if p["score"] >= medium else "low"
        assert p["risk_level"] == level
        assert p["is_fraud"] == (p["score"] >= hgb.threshold)
    assert {p["risk_level"] for p in preds} == {"low", "medium", "high"}
    # a batch shorter than the compiled kernel's block of rows: the same scores
    small = client.post("/v1/score", json={"transactions": rows[:3]}).get_json()["predictions"]
    np.testing.assert_allclose([p["score"] for p in small], expected[:3], rtol=0, atol=1e-12)


def test_every_prediction_reaches_postgres_with_its_fields(client, frames, pg_engine):
    rows = rows_of(frames, 40)
    rows[0]["event_time"] = 12.5  # wins over the schema's time column
    del rows[1]["Time"]
    batch = client.post("/v1/score", json={"transactions": rows[:39]}).get_json()["predictions"]
    single = client.post("/v1/score", json=rows[39]).get_json()
    ids = [p["prediction_id"] for p in batch] + [single["prediction_id"]]
    wait_logged(pg_engine, ids)
    assert store.prediction_count(pg_engine) == 40
    with pg_engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT transaction_id, score, is_fraud, risk_level, model_version, event_time, "
            "features FROM predictions WHERE prediction_id = %s",
            (single["prediction_id"],),
        ).one()
    assert stored.transaction_id == rows[39]["transaction_id"]
    assert stored.score == single["score"]
    assert stored.is_fraud == single["is_fraud"] and stored.risk_level == single["risk_level"]
    assert stored.model_version == single["model"]["version"]
    assert stored.event_time == rows[39]["Time"]
    assert stored.features == {c: rows[39][c] for c in (*(f"V{i}" for i in range(1, 29)), "Amount")}
    with pg_engine.connect() as conn:
        events = dict(conn.exec_driver_sql(
            "SELECT prediction_id, event_time FROM predictions WHERE prediction_id IN (%s, %s)",
            (batch[0]["prediction_id"], batch[1]["prediction_id"])).all())  # fmt: skip
    assert events == {batch[0]["prediction_id"]: 12.5, batch[1]["prediction_id"]: None}


def test_a_full_batch_is_shipped_as_soon_as_it_is_answered(make_app, frames, pg_engine):
    client = make_app(log_flush_seconds=30.0, log_batch_size=50).test_client()
    for start in (0, 60):  # the second one after the shipper went idle for its 30 s
        resp = client.post("/v1/score", json={"transactions": rows_of(frames, 60, start)})
        resp.close()  # as a WSGI server does once the answer is sent: the shipper is woken
        wait_logged(pg_engine, [p["prediction_id"] for p in resp.get_json()["predictions"]], 10)
        time.sleep(0.5)


def test_model_health_ready_and_metrics(client, frames, model_store):
    body = client.get("/v1/model").get_json()
    assert body["version"] == model_store["versions"]["hgb"] and body["alias"] == "champion"
    assert body["predictor"] == "compiled-trees"
    assert body["threshold"] == pytest.approx(model_store["hgb"].threshold)
    assert "average_precision" in body["metrics"] and body["loaded_at"]
    assert body["schema"]["features"][0] == "V1"
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    client.post("/v1/score", json={"transactions": rows_of(frames, 25)})
    client.post("/v1/score", data="nope", content_type="text/plain")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    ok = {"endpoint": "/v1/score", "status": "200"}
    assert _metric(client, "fraud_http_requests_total", **ok) == 1
    assert _metric(client, "fraud_http_requests_total", endpoint="/v1/score", status="415") == 1
    assert _metric(client, "fraud_http_request_duration_seconds_count", **ok) == 1
    assert _metric(client, "fraud_score_count") == 25
    assert _metric(client, "fraud_decisions_total") == 25
    assert _metric(client, "fraud_model_version") == float(model_store["versions"]["hgb"])
    assert _metric(client, "fraud_model_reloads_total", result="success") == 1
    for name in ("fraud_prediction_log_backlog_records", "fraud_prediction_log_spool_bytes",
                 "fraud_prediction_log_rows_written_total", "fraud_model_info"):  # fmt: skip
        assert name in resp.get_data(as_text=True)


def test_no_champion_means_not_ready_and_503(make_app):
    app = make_app(model_name="no-such-model")
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "champion" in ready.get_json()["reasons"][0]
    resp = client.post("/v1/score", json={"V1": 1.0})
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "no_model"
    assert "fraud promote" in resp.get_json()["error"]["message"]
    assert client.get("/v1/model").status_code == 503


# ------------------------------------------------------------------------------ labels
def test_labels_are_upserted_and_unknown_ids_reported(client, frames, pg_engine):
    rows = rows_of(frames, 2)
    ids = [p["prediction_id"] for p in client.post(
        "/v1/score", json={"transactions": rows}).get_json()["predictions"]]  # fmt: skip
    wait_logged(pg_engine, ids)
    labels = [
        {"transaction_id": rows[0]["transaction_id"], "label": 1},
        {"transaction_id": rows[1]["transaction_id"], "label": 0,
         "labeled_at": "2024-05-01T12:00:00Z"},
        {"transaction_id": "never-scored", "label": 1},
    ]  # fmt: skip
    resp = client.post("/v1/labels", json={"labels": labels})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["inserted"] == 3 and body["updated"] == 0
    assert body["unknown_ids"] == ["never-scored"]
    relabel = [{"transaction_id": rows[0]["transaction_id"], "label": 0}]
    again = client.post("/v1/labels", json={"labels": relabel}).get_json()
    assert again["updated"] == 1 and again["inserted"] == 0


def test_bad_labels_are_field_errors(client):
    labels = [
        {"transaction_id": "a", "label": 2},
        {"label": 1},
        {"transaction_id": "b", "label": True},
        {"transaction_id": "c", "label": 1, "labeled_at": "last tuesday"},
        {"transaction_id": "d", "label": 1, "why": "chargeback"},
        "nope",
    ]
    resp = client.post("/v1/labels", json={"labels": labels})
    assert resp.status_code == 400
    fields = resp.get_json()["error"]["fields"]
    assert fields == {
        "labels[0].label": "must be 0 or 1",
        "labels[1].transaction_id": "missing",
        "labels[2].label": "must be 0 or 1",
        "labels[3].labeled_at": "labeled_at 'last tuesday' is not an ISO-8601 timestamp; use "
        "e.g. 2024-05-01T12:00:00Z (a date, optionally a time and a zone; no zone = UTC)",
        "labels[4].why": "unknown field; allowed: transaction_id, label, labeled_at",
        "labels[5]": "each label must be a JSON object",
    }
    assert client.post("/v1/labels", json={"nope": []}).status_code == 400
    assert client.post("/v1/labels", data="x", content_type="text/csv").status_code == 415


# ------------------------------------------------------------------------------ admin + reload
def test_admin_reload_needs_the_token(make_app):
    disabled = make_app(admin_token="").test_client()
    resp = disabled.post("/admin/reload")
    assert resp.status_code == 503 and "FRAUD_ADMIN_TOKEN" in resp.get_json()["error"]["message"]
    client = make_app().test_client()
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "nope" not in wrong.get_data(as_text=True)
    basic = client.post("/admin/reload", headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
    assert basic.status_code == 401
    ok = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200 and ok.get_json()["status"] == "unchanged"
    assert ADMIN_TOKEN not in ok.get_data(as_text=True)


def _reload(client):
    resp = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status_code == 200
    return resp.get_json()


@pytest.mark.slow
def test_broken_versions_are_refused_and_good_ones_swapped_in(
    client, serving_settings, model_store, frames
):
    v = model_store["versions"]
    row = rows_of(frames, 1)[0]
    for key, reason in (("other_schema", "schema_mismatch"), ("exploding", "canary_failed")):
        set_champion(serving_settings, v[key])
        result = _reload(client)
        assert result["status"] == "refused" and result["error"]["reason"] == reason
        assert result["version"] == v["hgb"] and not result["changed"]
        assert client.post("/v1/score", json=row).get_json()["model"]["version"] == v["hgb"]
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.get_json()["model"]["last_error"]["version"] == v[key]
        assert client.get("/v1/model").get_json()["reload"]["last_error"]["reason"] == reason
        assert _metric(client, "fraud_model_reloads_total", result="failure", reason=reason) == 1
    assert "V5" in client.get("/v1/model").get_json()["schema"]["features"]
    set_champion(serving_settings, v["hgb2"])
    result = _reload(client)
    assert result == {"status": "loaded", "version": v["hgb2"], "previous_version": v["hgb"],
                      "changed": True}  # fmt: skip
    assert client.post("/v1/score", json=row).get_json()["model"]["version"] == v["hgb2"]
    assert client.get("/readyz").get_json()["model"]["last_error"] is None
    assert _metric(client, "fraud_model_info", version=v["hgb"]) == 0
    assert _metric(client, "fraud_model_info", version=v["hgb2"]) == 1
    # the poller alone follows a rollback too (poll_seconds=2 by default)
    set_champion(serving_settings, v["hgb"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if client.post("/v1/score", json=row).get_json()["model"]["version"] == v["hgb"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the poller did not pick up the rollback")


def test_schema_of_the_served_model_drives_validation(make_app, serving_settings, model_store):
    set_champion(serving_settings, model_store["versions"]["other_schema"])
    client = make_app().test_client()  # first load: any schema is accepted
    body = client.get("/v1/model").get_json()
    assert body["schema"]["features"] == ["V1", "V2", "V3", "V4", "V10", "V14", "Amount"]
    assert body["predictor"] == "pipeline"  # scaler in front of the logistic regression
    record = {c: 0.5 for c in body["schema"]["features"]}
    resp = client.post("/v1/score", json=record)
    assert resp.status_code == 200, resp.get_json()
    record["V5"] = 1.0
    assert client.post("/v1/score", json=record).get_json()["error"]["fields"] == {
        "V5": "unknown field; check the spelling against GET /v1/model"
    }
    registry_version = registry.alias_version(serving_settings)
    assert registry_version == model_store["versions"]["other_schema"]
