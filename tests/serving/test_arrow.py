"""Arrow IPC stream bodies on /v1/score (real model store and Postgres): scored and logged as
the same JSON batch is, the answer's format chosen from the request, and every hostile body a
4xx with the JSON error body, in-process and under a real gunicorn, with nothing logged for
the refused ones."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import requests
from arrow_cases import (
    ARROW,
    MAX_BATCH,
    MAX_BODY,
    SCHEMA,
    hostile_cases,
    stream,
    table_of,
    with_value,
)
from conftest import rows_of, wait_logged
from test_serving_gunicorn import metric_values

from fraud_lib import store
from fraud_lib.schema import FeatureSchema
from serving.arrow import decode_arrow
from serving.validation import ApiError


def _post(client, body: bytes, content_type: str = ARROW, **headers: str):
    return client.post("/v1/score", data=body, content_type=content_type, headers=headers)


def _answer(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _stored(engine, pids: list[str]) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT prediction_id, transaction_id, event_time, features::text, score "
            "FROM predictions WHERE prediction_id = ANY(%s)",
            (pids,),
        ).all()
    return {r[0]: r[1:] for r in rows}


def test_an_arrow_batch_is_scored_and_logged_as_the_json_batch(client, frames, pg_engine):
    rows = rows_of(frames, 40)
    as_json = client.post("/v1/score", json={"transactions": rows}).get_json()
    resp = _post(client, stream(table_of(rows)))
    assert resp.status_code == 200 and resp.mimetype == ARROW
    table = _answer(resp.data)
    assert table.schema.metadata == {
        b"model_name": as_json["model"]["name"].encode(),
        b"model_version": as_json["model"]["version"].encode(),
    }
    assert table.column_names == list(as_json["predictions"][0])
    for name in ("transaction_id", "score", "is_fraud", "risk_level", "threshold"):
        assert table.column(name).to_pylist() == [p[name] for p in as_json["predictions"]], name
    pids = table.column("prediction_id").to_pylist()
    assert len(set(pids)) == 40
    wait_logged(pg_engine, pids)
    stored = _stored(pg_engine, pids)
    for pid, row, score in zip(pids, rows, table.column("score").to_pylist(), strict=True):
        tx, event_time, features, logged_score = stored[pid]
        assert tx == row["transaction_id"] and logged_score == score
        assert event_time == row["Time"]
        assert json.loads(features) == {c: row[c] for c in SCHEMA.features}  # exactly


def test_accept_decides_the_format_of_the_answer(client, frames):
    rows = rows_of(frames, 3)
    body = stream(table_of(rows))
    batch = json.dumps({"transactions": rows})
    cases = [  # body, its content type, Accept, the answer's content type, rows answered
        (body, ARROW, "", ARROW, 3),
        (body, ARROW, "application/json", "application/json", 3),
        (body, ARROW, "text/html", ARROW, 3),
        (body, ARROW, f"application/json;q=0.5, {ARROW}", ARROW, 3),
        (body, ARROW, "*/*", ARROW, 3),
        (batch, "application/json", ARROW, ARROW, 3),
        (batch, "application/json", "*/*", "application/json", 3),
        (json.dumps(rows[0]), "application/json", ARROW, ARROW, 1),
    ]
    for data, content_type, accept, answered, n in cases:
        resp = _post(client, data, content_type, **({"Accept": accept} if accept else {}))
        assert resp.status_code == 200 and resp.mimetype == answered, (content_type, accept)
        if answered == ARROW:
            assert _answer(resp.data).num_rows == n
        else:
            assert resp.get_json()["count"] == n
    bad = stream(with_value(table_of(rows), "V4", 0, float("nan")))
    resp = _post(client, bad, Accept=ARROW)  # errors are always the JSON error body
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_input"


def test_several_record_batches_are_one_batch(client, frames):
    table = table_of(rows_of(frames, 10))
    one = _answer(_post(client, stream(table)).data)
    parts = [table.slice(0, 2), table.slice(2, 0), table.slice(2, 5), table.slice(7, 3)]
    batches = [b for part in parts for b in part.to_batches()] + [
        pa.RecordBatch.from_pylist([], schema=table.schema)
    ]
    several = _answer(_post(client, stream(*batches)).data)
    assert several.column("score").to_pylist() == one.column("score").to_pylist()
    assert several.column("transaction_id").to_pylist() == one.column("transaction_id").to_pylist()
    bad = stream(table.slice(0, 4), with_value(table.slice(4, 6), "V9", 4, float("nan")))
    resp = _post(client, bad)
    assert resp.status_code == 400
    assert list(resp.get_json()["error"]["fields"]) == ["transactions[8].V9"]  # row of the batch


def test_optional_columns_and_any_column_order(client, frames, pg_engine):
    rows = rows_of(frames, 4)
    table = table_of(rows)
    ids = pa.array(["a", None, "c", None], pa.large_string())
    events = pa.array([None, 7.5, None, 9.0])
    reordered = pa.table(
        {
            "Class": pa.array([0, 1, 0, 0]),  # the label column: ignored
            "event_time": events,
            **{c: table.column(c) for c in reversed(SCHEMA.features)},
            "transaction_id": ids,
            "Time": table.column("Time"),
        }
    )
    nullable = pa.schema([pa.field(f.name, f.type, nullable=True) for f in reordered.schema])
    resp = _post(client, stream(reordered.cast(nullable)))
    assert resp.status_code == 200, resp.get_json()
    answer = _answer(resp.data)
    got_ids = answer.column("transaction_id").to_pylist()
    assert got_ids[0] == "a" and got_ids[2] == "c" and len(got_ids[1]) == len(got_ids[3]) == 32
    expected = _answer(_post(client, stream(table)).data).column("score").to_pylist()
    assert answer.column("score").to_pylist() == expected
    pids = answer.column("prediction_id").to_pylist()
    wait_logged(pg_engine, pids)
    stored = _stored(pg_engine, pids)
    times = [rows[0]["Time"], 7.5, rows[2]["Time"], 9.0]  # event_time wins where given
    assert [stored[p][1] for p in pids] == times
    no_ids = _post(client, stream(table.drop_columns(["transaction_id", "Time"])))
    assert no_ids.status_code == 200 and _answer(no_ids.data).num_rows == 4


def test_a_model_with_categorical_columns_takes_json_only(frames):
    schema = FeatureSchema(features=("V1",), categorical=("merchant",))
    body = stream(pa.table({"V1": [1.0], "merchant": ["m"]}))
    with pytest.raises(ApiError) as exc:
        decode_arrow(body, schema, 10)
    assert exc.value.status == 415 and "send the batch as JSON" in exc.value.message


def test_every_hostile_body_is_refused_in_process(make_app, frames, pg_engine):
    client = make_app(max_batch=MAX_BATCH, max_body_bytes=MAX_BODY).test_client()
    for name, (body, content_type, status, code, check) in hostile_cases(
        rows_of(frames, 6)
    ).items():
        resp = _post(client, body, content_type)
        assert resp.status_code == status and resp.mimetype == "application/json", name
        error = resp.get_json()["error"]
        assert error["code"] == code and check(error), (name, error)
    assert store.prediction_count(pg_engine) == 0


@pytest.mark.slow
def test_hostile_bodies_under_gunicorn_log_nothing_and_valid_ones_exactly(
    start_service, frames, pg_engine
):
    service = start_service(workers=1, FRAUD_MAX_BATCH=str(MAX_BATCH),
                            FRAUD_MAX_BODY_BYTES=str(MAX_BODY))  # fmt: skip
    url = service.url + "/v1/score"
    rows = rows_of(frames, 20)
    acked: list[str] = []
    with requests.Session() as session:
        for name, (body, content_type, status, code, check) in hostile_cases(rows).items():
            resp = session.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
            assert resp.status_code == status, (name, resp.text[:300])
            assert resp.headers["Content-Type"] == "application/json", name
            error = resp.json()["error"]
            assert error["code"] == code and check(error), (name, error)
            assert set(error) == {"code", "message", "fields"}
        for start in range(0, 15, MAX_BATCH):
            body = stream(table_of(rows[start : start + MAX_BATCH]))
            resp = session.post(url, data=body, headers={"Content-Type": ARROW}, timeout=30)
            assert resp.status_code == 200 and resp.headers["Content-Type"] == ARROW
            acked += _answer(resp.content).column("prediction_id").to_pylist()
        sizes = dict(metric_values(service.url, "fraud_score_batch_size_count"))
    wait_logged(pg_engine, acked)
    assert store.prediction_count(pg_engine) == len(acked) == 15
    assert sum(sizes.values()) == 3  # the batch-size histogram saw the 3 accepted requests
    assert "Traceback" not in service.log()


def test_the_document_describes_the_arrow_columns_the_service_takes_and_answers(client, frames):
    post = client.get("/openapi.json").get_json()["paths"]["/v1/score"]["post"]
    request_columns = post["requestBody"]["content"][ARROW]["x-arrow-columns"]
    row = rows_of(frames, 1)[0]
    kinds = {"float64": pa.float64(), "utf8": pa.string(), "large_utf8": pa.large_string()}
    required = {c["name"]: kinds[c["types"][0]] for c in request_columns if c["required"]}
    assert list(required) == list(SCHEMA.features)
    table = pa.table({name: pa.array([row[name]], kind) for name, kind in required.items()})
    resp = _post(client, stream(table))
    assert resp.status_code == 200, resp.get_json()
    optional = [c for c in request_columns if not c["required"]]
    assert {c["name"] for c in optional} == {"transaction_id", "event_time", "Time", "Class"}
    answer_columns = post["responses"]["200"]["content"][ARROW]["x-arrow-columns"]
    names = {pa.string(): "utf8", pa.float64(): "float64", pa.bool_(): "bool"}
    answered = _answer(resp.data).schema
    assert [(c["name"], c["types"]) for c in answer_columns] == [
        (f.name, [names[f.type]]) for f in answered
    ]
    assert ARROW in post["responses"]["415"]["description"]
