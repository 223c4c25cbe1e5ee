"""Bad input on /v1/score in-process (Flask test client, real model store and Postgres): every
class of bad body answers a 4xx with field-level errors, never a 500."""

from __future__ import annotations

import json

import pytest
from conftest import rows_of, wait_logged


def _valid(frames):
    return rows_of(frames, 1)[0]


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
    wait_logged(pg_engine, [pid])
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
    rows = rows_of(frames, 2)
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
    rows = rows_of(frames, 3)
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
    resp = client.post("/v1/score", json={"transactions": rows_of(frames, 4)})
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "batch_too_large"
    assert "FRAUD_MAX_BATCH" in resp.get_json()["error"]["message"]
    resp = client.post("/v1/score", json={"transactions": rows_of(frames, 3)})
    assert resp.status_code == 200
    big = json.dumps({"transactions": rows_of(frames, 3), "pad": "x" * 5000})
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


def test_invalid_utf8_inside_a_string_is_400_on_every_json_endpoint(client, frames):
    """msgspec raises UnicodeDecodeError (not a DecodeError) for it: that was a 500."""
    batch = json.dumps({"transactions": rows_of(frames, 2)}).encode()
    for path, body in (
        ("/v1/score", b'{"transaction_id": "\xff"}'),
        (
            "/v1/score",
            json.dumps(_valid(frames)).encode().replace(b'"Time"', b'"\xff\xfe": 1, "Time"'),
        ),
        (
            "/v1/score",
            batch.replace(b'"transactions": [{', b'"transactions": [{"transaction_id": "\xc3", '),
        ),
        ("/v1/labels", b'{"labels": [{"transaction_id": "\xff", "label": 1}]}'),
    ):
        resp = client.post(path, data=body, content_type="application/json")
        assert resp.status_code == 400, (path, resp.get_json())
        assert resp.get_json()["error"]["code"] == "invalid_json"
        assert "UTF-8" in resp.get_json()["error"]["message"]
