"""Client-facing errors carry a code and a generic message: no URL, password, path, hostname
or exception text, with Postgres and the registry both unreachable at URLs holding passwords.
The details are in the server log, masked."""

from __future__ import annotations

import logging

import pytest

from fraud_lib.config import Settings
from fraud_lib.pgserver import free_port
from serving.app import create_app

SECRET = "s3cret"


@pytest.fixture()
def unreachable(tmp_path, monkeypatch, caplog):
    """An app whose Postgres and MLflow URLs (with passwords) point at a closed port."""
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    closed = free_port()
    settings = Settings.from_env(
        {
            "FRAUD_STATE_DIR": str(tmp_path / "state"),
            "FRAUD_DATABASE_URL": f"postgresql://fraud:{SECRET}@127.0.0.1:{closed}/fraud"
            f"?password={SECRET}&sslpassword={SECRET}",
            "MLFLOW_TRACKING_URI": f"http://bob:{SECRET}@127.0.0.1:{closed}/?password={SECRET}",
            "FRAUD_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    app = create_app(settings)
    yield app, tmp_path
    app.extensions["fraudloop"].close(timeout=2)


def _assert_no_detail(body: str, tmp_path) -> None:
    for leak in (SECRET, "://", "127.0.0.1", "localhost", str(tmp_path), "/tmp", "psycopg",
                 "Exception", "OperationalError", "refused", "HTTPConnection"):  # fmt: skip
        assert leak not in body, f"{leak!r} in {body}"


def test_outage_answers_and_logs_carry_no_secret(unreachable, caplog):
    app, tmp_path = unreachable
    client = app.test_client()
    labels = client.post("/v1/labels", json={"labels": [{"transaction_id": "t1", "label": 1}]})
    assert labels.status_code == 503
    assert labels.get_json()["error"]["code"] == "database_unavailable"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["model"]["registry_readable"] is False
    assert "registry cannot be read" in ready.get_json()["reasons"][0]
    score = client.post("/v1/score", json={"V1": 1.0})
    assert score.status_code == 503 and score.get_json()["error"]["code"] == "no_model"
    model = client.get("/v1/model")
    assert model.status_code == 503
    for resp in (labels, ready, score, model):
        _assert_no_detail(resp.get_data(as_text=True), tmp_path)
    request_id = labels.headers["X-Request-ID"]
    assert request_id in labels.get_json()["error"]["message"]
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    logged = "\n".join(r.getMessage() for r in records)
    assert f"request {request_id}: labels not written: cannot reach the database" in logged
    assert "cannot read the champion alias" in logged and "bob:***@127.0.0.1" in logged
    assert SECRET not in logged


def test_a_refused_spool_write_is_not_described_to_clients(unreachable):
    app, tmp_path = unreachable
    st = app.extensions["fraudloop"]
    st.log.spool_error = f"cannot write the spool in {tmp_path / 'spool'}: [Errno 28] No space"
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["log"]["spool_writable"] is False
    assert "its spool cannot be written" in ready.get_json()["reasons"][1]
    _assert_no_detail(ready.get_data(as_text=True), tmp_path)
