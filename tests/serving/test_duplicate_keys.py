"""A JSON object that repeats a key is a 400 naming the key (and the batch item) on every JSON
endpoint: msgspec, like ``json``, kept one of the values and the request was scored with 200
(``{"V1": 0.1, ..., "V1": "x"}``, ``{"transactions": [], "transactions": [tx]}``)."""

from __future__ import annotations

import json

import pytest
import requests
import sqlalchemy as sa
from conftest import rows_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud_lib import store
from fraud_lib.schema import FeatureSchema
from serving.typed_batch import decode_batch

SCHEMA = FeatureSchema()
HINT = "duplicate key; send each key once per object"


def _repeat(record: dict, key: str, again: str) -> str:
    """``record`` as JSON with ``"key": again`` (raw JSON text) added at its end."""
    return json.dumps(record)[:-1] + f', "{key}": {again}}}'


def _batch(items: list[str]) -> str:
    return '{"transactions": [' + ", ".join(items) + "]}"


def _refused(resp, field: str) -> None:
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "duplicate_key"
    assert error["fields"] == {field: HINT}
    assert repr(field) in error["message"]


def _post(client, path: str, body: str):
    return client.post(path, data=body, content_type="application/json")


def _labels(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(store.labels)).scalar_one()


def test_a_repeated_feature_in_one_transaction_is_refused(client, frames):
    record = rows_of(frames, 1)[0]
    assert _post(client, "/v1/score", json.dumps(record)).status_code == 200
    _refused(_post(client, "/v1/score", _repeat(record, "V1", '"x"')), "V1")
    _refused(_post(client, "/v1/score", _repeat(record, "V1", "0.5")), "V1")
    # the same key spelled with an escape is the same key
    _refused(_post(client, "/v1/score", _repeat(record, "V\\u0031", "0.5")), "V1")
    _refused(_post(client, "/v1/score", _repeat(record, "transaction_id", '"b"')), "transaction_id")


def test_a_repeat_in_a_batch_names_the_item(client, frames):
    rows = rows_of(frames, 3)
    items = [json.dumps(r) for r in rows]
    items[2] = _repeat(rows[2], "V7", "1.5")
    _refused(_post(client, "/v1/score", _batch(items)), "transactions[2].V7")
    items[2] = _repeat(rows[2], "transaction_id", "null")
    _refused(_post(client, "/v1/score", _batch(items)), "transactions[2].transaction_id")
    tx = json.dumps(rows[0])
    body = '{"transactions": [], "transactions": [' + tx + "]}"
    _refused(_post(client, "/v1/score", body), "transactions")


def test_a_repeat_in_labels_is_refused_and_nothing_is_stored(client, pg_engine):
    before = _labels(pg_engine)
    label = '{"transaction_id": "dup-a", "label": 1, "label": 0}'
    _refused(_post(client, "/v1/labels", '{"labels": [' + label + "]}"), "labels[0].label")
    good = '{"transaction_id": "dup-b", "label": 1}'
    body = '{"labels": [' + good + "], " + '"labels": [' + good + "]}"
    _refused(_post(client, "/v1/labels", body), "labels")
    body = '{"labels": [' + good + ', {"transaction_id": "dup-c", "transaction_i\\u0064": "x"}]}'
    _refused(_post(client, "/v1/labels", body), "labels[1].transaction_id")
    assert _labels(pg_engine) == before


def test_quotes_escapes_and_nulls_in_clean_bodies_are_still_accepted(client, frames):
    """The quote count must not refuse what has no repeat: quotes in ids (``\\"`` and
    ``\\u0022``), explicit nulls, a backslash before ``u0022`` in plain text."""
    rows = rows_of(frames, 3)
    rows[0]["transaction_id"] = 'quote"d'
    rows[1]["transaction_id"] = None
    rows[1]["event_time"] = None
    rows[2]["transaction_id"] = "back\\u0022slash"
    body = json.dumps({"transactions": rows}).replace('quote\\"d', "quote\\u0022d")
    resp = _post(client, "/v1/score", body)
    assert resp.status_code == 200, resp.get_json()
    ids = [p["transaction_id"] for p in resp.get_json()["predictions"]]
    assert ids[0] == 'quote"d' and ids[2] == "back\\u0022slash" and len(ids[1]) == 32
    resp = _post(client, "/v1/score", json.dumps(rows[0]).replace('quote\\"d', "quote\\u0022d"))
    assert resp.status_code == 200 and resp.get_json()["transaction_id"] == 'quote"d'


def test_the_typed_batch_path_keeps_clean_bodies_and_leaves_repeats_to_the_generic_one():
    record = {c: 0.5 for c in SCHEMA.features}
    clean = _batch([json.dumps(record | {"transaction_id": 'a"b', "event_time": None,
                                         "Time": None, "Class": {"k": ['"']}})])  # fmt: skip
    typed = decode_batch(clean.encode(), SCHEMA, 10)
    assert typed is not None and typed.ids == ['a"b'] and typed.event_times == [None]
    for body in (
        _batch([_repeat(record, "V1", "1")]),
        _batch([_repeat(record | {"Class": 0}, "Class", "1")]),
        '{"transactions": [], "transactions": [' + json.dumps(record) + "]}",
    ):
        assert decode_batch(body.encode(), SCHEMA, 10) is None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    item=st.integers(min_value=0, max_value=3),
    pick=st.integers(min_value=0),
    again=st.sampled_from(['"x"', "0.25", "null", "true", "[1]", '{"a": "b"}', '"\\u0022"']),
    escape=st.booleans(),
)
def test_any_repeat_anywhere_in_a_batch_is_named(client, frames, item, pick, again, escape):
    rows = rows_of(frames, 4)
    for i, row in enumerate(rows):
        row |= {"transaction_id": f"t{i}", "event_time": 1.0 + i, "Class": 0}
    key = list(rows[item])[pick % len(rows[item])]
    items = [json.dumps(r) for r in rows]
    spelled = "".join(f"\\u{ord(c):04x}" for c in key) if escape else key
    items[item] = _repeat(rows[item], spelled, again)
    _refused(_post(client, "/v1/score", _batch(items)), f"transactions[{item}].{key}")


def test_over_the_wire_under_gunicorn(start_service, frames):
    service = start_service(workers=1)
    rows = rows_of(frames, 2)
    cases = [
        ("/v1/score", _repeat(rows[0], "V1", '"x"'), "V1"),
        ("/v1/score", _batch([json.dumps(rows[0]), _repeat(rows[1], "V2", "0.1")]),
         "transactions[1].V2"),
        ("/v1/score", '{"transactions": [], "transactions": [' + json.dumps(rows[0]) + "]}",
         "transactions"),
        ("/v1/labels", '{"labels": [{"transaction_id": "a", "label": 1, "label": 0}]}',
         "labels[0].label"),
    ]  # fmt: skip
    for path, body, field in cases:
        resp = requests.post(service.url + path, data=body.encode(), timeout=30,
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "duplicate_key"
        assert resp.json()["error"]["fields"] == {field: HINT}
    resp = requests.post(service.url + "/v1/score", json={"transactions": rows}, timeout=30)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("what", ["score", "labels"])
def test_nested_too_deep_with_a_surplus_is_still_a_400(client, what):
    """The exact check parses with ``json``, which has a lower depth limit than msgspec."""
    body = '{"a": "\\u0022", "b": ' + "[" * 5000 + "]" * 5000 + "}"
    resp = _post(client, f"/v1/{what}", body)
    assert resp.status_code == 400
