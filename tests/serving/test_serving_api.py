"""The API in-process (Flask test client) with a real MLflow store, model and Postgres."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from conftest import ADMIN_TOKEN, set_champion

from fraud_lib import registry, store
from fraud_lib.features import predict_scores

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _rows(frames, n, start=0):
    _, later = frames
    return later.iloc[start : start + n].to_dict("records")


def _wait_rows(engine, ids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.count_predictions_by_ids(engine, ids) == len(ids):
            return
        time.sleep(0.05)
    raise AssertionError(f"only {store.count_predictions_by_ids(engine, ids)} of {len(ids)} rows")


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
    row = _rows(frames, 1)[0]
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
    row = _rows(frames, 1)[0]
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
    rows = _rows(frames, 300)
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
    # small batches take the compiled predictor, large ones scikit-learn: same scores
    small = client.post("/v1/score", json={"transactions": rows[:3]}).get_json()["predictions"]
    np.testing.assert_allclose([p["score"] for p in small], expected[:3], rtol=0, atol=1e-12)


def test_every_prediction_reaches_postgres_with_its_fields(client, frames, pg_engine):
    rows = _rows(frames, 40)
    rows[0]["event_time"] = 12.5  # wins over the schema's time column
    del rows[1]["Time"]
    batch = client.post("/v1/score", json={"transactions": rows[:39]}).get_json()["predictions"]
    single = client.post("/v1/score", json=rows[39]).get_json()
    ids = [p["prediction_id"] for p in batch] + [single["prediction_id"]]
    _wait_rows(pg_engine, ids)
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
    client.post("/v1/score", json={"transactions": _rows(frames, 25)})
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


# ------------------------------------------------------------------------------ bad input
def _valid(frames):
    return _rows(frames, 1)[0]


def _raw(client, body, content_type="application/json"):
    return client.post("/v1/score", data=body, content_type=content_type)


BAD_BODY_IDS = [
    "text",
    "form",
    "truncated",
    "not-utf8",
    "array",
    "number",
    "empty-batch",
    "batch-not-list",
    "deep",
    "trailing-data",
    "lone-surrogate",
    "int-of-5000-digits",
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ('{"V1": 1}', "text/plain", 415, "unsupported_media_type"),
        ('{"V1": 1}', "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ('{"V1": ', "application/json", 400, "invalid_json"),
        (b"\xff\xfe{", "application/json", 400, "invalid_json"),
        ("[1, 2]", "application/json", 400, "invalid_input"),
        ("42", "application/json", 400, "invalid_input"),
        ('{"transactions": []}', "application/json", 400, "invalid_input"),
        ('{"transactions": {"a": 1}}', "application/json", 400, "invalid_input"),
        ("[" * 100_000 + "]" * 100_000, "application/json", 400, "invalid_json"),
        ('{"V1": 1} {}', "application/json", 400, "invalid_json"),
        ('{"transaction_id": "\\ud800"}', "application/json", 400, "invalid_json"),
        ('{"V1": ' + "7" * 5000 + "}", "application/json", 400, "invalid_json"),
    ],
    ids=BAD_BODY_IDS,
)
def test_bad_bodies(client, body, content_type, status, code):
    resp = _raw(client, body, content_type)
    assert resp.status_code == status
    error = resp.get_json()["error"]
    assert error["code"] == code and error["message"] and isinstance(error["fields"], dict)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens_are_rejected(client, frames, token):
    record = _valid(frames)
    record["V4"] = "__BAD__"
    batch = {"transactions": [_valid(frames) | {"transaction_id": "a"}, record]}
    for body in (json.dumps(record), json.dumps(batch)):
        resp = _raw(client, body.replace('"__BAD__"', token))
        assert resp.status_code == 400
        assert resp.get_json()["error"]["code"] == "invalid_json"
        assert f"{token.lstrip('-')} is not valid JSON" in resp.get_json()["error"]["message"]


def test_lone_surrogates_are_refused_not_a_500(client):
    """json.loads accepted "\\ud800", and writing it to the spool or Postgres then failed."""
    for path, body in (
        ("/v1/score", '{"transaction_id": "\\ud800", "V1": 1}'),
        ("/v1/labels", '{"labels": [{"transaction_id": "a\\udc00", "label": 1}]}'),
    ):
        resp = client.post(path, data=body, content_type="application/json")
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_json"


def test_integers_beyond_64_bits_are_numbers(client, frames, pg_engine):
    record = _valid(frames) | {"V4": "__BIG__"}
    body = json.dumps(record).replace('"__BIG__"', str(2**70))
    resp = _raw(client, body)
    assert resp.status_code == 200, resp.get_json()
    pid = resp.get_json()["prediction_id"]
    _wait_rows(pg_engine, [pid])
    with pg_engine.connect() as conn:
        features = conn.exec_driver_sql(
            "SELECT features FROM predictions WHERE prediction_id = %s", (pid,)
        ).scalar_one()
    assert float(features["V4"]) == float(2**70)  # json keeps 1.1805916207174113e21 exactly


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"12.5"', "must be a number"),
        ("true", "must be a number"),
        ("null", "must be a number"),
        ("[1]", "must be a number"),
        ("1e400", "finite"),  # beyond float range: json reads it as float('inf')
        ("-1e400", "finite"),
        ("1" + "0" * 400, "finite"),  # an int beyond float range
    ],
)
def test_bad_numbers_are_field_errors(client, frames, value, message):
    record = _valid(frames)
    record["V4"] = "__BAD__"
    body = json.dumps(record).replace('"__BAD__"', value)
    resp = _raw(client, body)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_input"
    assert list(error["fields"]) == ["V4"] and message in error["fields"]["V4"]
    batch = json.dumps({"transactions": [_valid(frames) | {"transaction_id": "a"}, record]})
    resp = _raw(client, batch.replace('"__BAD__"', value))
    assert resp.status_code == 400
    assert message in resp.get_json()["error"]["fields"]["transactions[1].V4"]


def test_missing_and_unknown_fields_and_bad_ids(client, frames):
    record = _valid(frames)
    del record["V7"]
    record["colour"] = "red"
    record["transaction_id"] = {"nested": 1}
    record["Time"] = "yesterday"
    fields = client.post("/v1/score", json=record).get_json()["error"]["fields"]
    assert fields["V7"] == "missing"
    assert "unknown field" in fields["colour"]
    assert fields["transaction_id"] == "must be a string"
    assert "must be a number" in fields["Time"]


def test_ids_with_nul_are_field_errors(client, frames):
    """Postgres text cannot hold NUL: such a prediction would be answered, then never stored."""
    rows = _rows(frames, 2)
    rows[1]["transaction_id"] = "a\x00b"
    for body, field in (
        ({"transactions": rows}, "transactions[1].transaction_id"),
        (rows[1], "transaction_id"),
        ({"labels": [{"transaction_id": "a\x00b", "label": 1}]}, "labels[0].transaction_id"),
    ):
        path = "/v1/labels" if "labels" in body else "/v1/score"
        resp = client.post(path, json=body)
        assert resp.status_code == 400, resp.get_json()
        assert "NUL" in resp.get_json()["error"]["fields"][field]


def test_duplicate_ids_and_non_objects_in_a_batch(client, frames):
    rows = _rows(frames, 3)
    rows[2]["transaction_id"] = rows[0]["transaction_id"]
    resp = client.post("/v1/score", json={"transactions": [*rows, "not an object"]})
    assert resp.status_code == 400
    fields = resp.get_json()["error"]["fields"]
    assert "duplicate of transactions[0]" in fields["transactions[2].transaction_id"]
    assert fields["transactions[3]"] == "each transaction must be a JSON object"
    resp = client.post("/v1/score", json={"transactions": rows[:1], "extra": 1})
    assert resp.status_code == 400 and "extra" in resp.get_json()["error"]["fields"]


def test_too_large_batches_and_bodies_are_413(make_app, frames, pg_engine):
    client = make_app(max_batch=3, max_body_bytes=4000).test_client()
    resp = client.post("/v1/score", json={"transactions": _rows(frames, 4)})
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "batch_too_large"
    assert "FRAUD_MAX_BATCH" in resp.get_json()["error"]["message"]
    resp = client.post("/v1/score", json={"transactions": _rows(frames, 3)})
    assert resp.status_code == 200
    big = json.dumps({"transactions": _rows(frames, 3), "pad": "x" * 5000})
    resp = _raw(client, big)
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "payload_too_large"
    assert "FRAUD_MAX_BODY_BYTES" in resp.get_json()["error"]["message"]
    resp = client.post("/v1/labels", json={"labels": [{"transaction_id": "a", "label": 1}] * 4})
    assert resp.status_code == 413


def test_unknown_routes_and_methods_answer_json(client):
    resp = client.get("/nope")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    resp = client.get("/v1/score")
    assert resp.status_code == 405 and resp.get_json()["error"]["code"] == "method_not_allowed"


# ------------------------------------------------------------------------------ labels
def test_labels_are_upserted_and_unknown_ids_reported(client, frames, pg_engine):
    rows = _rows(frames, 2)
    ids = [p["prediction_id"] for p in client.post(
        "/v1/score", json={"transactions": rows}).get_json()["predictions"]]  # fmt: skip
    _wait_rows(pg_engine, ids)
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
        "labels[3].labeled_at": "is not an ISO-8601 timestamp, e.g. 2024-05-01T12:00:00Z",
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
    row = _rows(frames, 1)[0]
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
