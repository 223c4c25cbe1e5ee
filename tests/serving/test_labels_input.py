"""Hostile ``labeled_at`` values and ids on POST /v1/labels: each one is a 400 naming the field,
and nothing is stored (a stored label from 1600 used to stop every retrain)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from fraud_lib import store


def _label_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(store.labels)).scalar_one()


@pytest.mark.parametrize(
    ("labeled_at", "message"),
    [
        (
            "1600-01-01T00:00:00Z",
            "labeled_at 1600-01-01T00:00:00+00:00 is before 2000-01-01T00:00:00Z "
            "(FRAUD_MIN_TIMESTAMP)",
        ),
        ("0001-01-01T00:00:00+14:00", "labeled_at 0001-01-01T00:00:00+14:00 is before 2000"),
        ("9999-12-31T23:59:59-14:00", "is after now + 300 s"),
        ((datetime.now(UTC) + timedelta(hours=1)).isoformat(), "check the sender's clock"),
        ("1" * 10_000, "labeled_at is 10,000 characters long; a timestamp has at most 40"),
        ("2024-W01-1", "is not an ISO-8601 timestamp"),
        ("1714564800", "is not an ISO-8601 timestamp"),
        ("2024-02-30T00:00:00Z", "is not a valid date and time: day is out of range"),
        (
            1_714_564_800,
            "must be an ISO-8601 timestamp string, e.g. 2024-05-01T12:00:00Z (got int)",
        ),
        (True, "(got bool)"),
        (["2024-05-01"], "(got list)"),
        ({"at": "2024-05-01"}, "(got dict)"),
    ],
)
def test_hostile_labeled_at_is_a_field_error(client, pg_engine, labeled_at, message):
    labels = [
        {"transaction_id": "fine", "label": 1, "labeled_at": "2024-05-01T12:00:00Z"},
        {"transaction_id": "bad", "label": 1, "labeled_at": labeled_at},
    ]
    resp = client.post("/v1/labels", json={"labels": labels})
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_input"
    assert list(error["fields"]) == ["labels[1].labeled_at"]
    assert message in error["fields"]["labels[1].labeled_at"]
    assert len(error["fields"]["labels[1].labeled_at"]) < 300  # a long value is not echoed
    assert _label_count(pg_engine) == 0


def test_timestamps_inside_the_range_are_accepted_in_every_form(client, pg_engine):
    soon = datetime.now(UTC) + timedelta(seconds=60)  # inside the 300 s skew allowance
    forms = {
        "z": "2024-05-01T12:00:00Z",
        "offset": "2024-05-01T14:00:00+02:00",
        "naive": "2024-05-01T12:00:00",
        "space": "2024-05-01 12:00:00.5",
        "date": "2024-05-01",
        "first": "2000-01-01T00:00:00Z",
        "soon": soon.isoformat(),
    }
    labels = [{"transaction_id": k, "label": 0, "labeled_at": v} for k, v in forms.items()]
    resp = client.post("/v1/labels", json={"labels": labels})
    assert resp.status_code == 200, resp.get_json()
    with pg_engine.connect() as conn:
        stored = dict(
            conn.execute(sa.select(store.labels.c.transaction_id, store.labels.c.labeled_at)).all()
        )
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert stored["z"] == stored["offset"] == stored["naive"] == noon
    assert stored["space"] == noon + timedelta(milliseconds=500)
    assert stored["first"] == datetime(2000, 1, 1, tzinfo=UTC)


def test_the_range_follows_the_settings(make_app, pg_engine):
    client = make_app(
        min_timestamp=datetime(1990, 1, 1, tzinfo=UTC), max_clock_skew_seconds=0
    ).test_client()
    old = {"transaction_id": "old", "label": 1, "labeled_at": "1995-01-01T00:00:00Z"}
    assert client.post("/v1/labels", json={"labels": [old]}).status_code == 200
    ahead = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    resp = client.post("/v1/labels", json={"labels": [{**old, "labeled_at": ahead}]})
    assert resp.status_code == 400
    assert "after now + 0 s" in resp.get_json()["error"]["fields"]["labels[0].labeled_at"]


@pytest.mark.parametrize(
    ("tx", "message"),
    [
        ("a" * 201, "must be 1 to 200 characters (got 201)"),
        ("", "must be 1 to 200 characters (got 0)"),
        (int("9" * 201), "must be 1 to 200 characters (got 201)"),
        (1.5, "must be a string"),
        ("ab\x00cd", "must not contain NUL (\\u0000)"),
    ],
)
def test_hostile_transaction_ids_are_field_errors(client, pg_engine, tx, message):
    resp = client.post("/v1/labels", json={"labels": [{"transaction_id": tx, "label": 1}]})
    assert resp.status_code == 400
    assert resp.get_json()["error"]["fields"]["labels[0].transaction_id"] == message
    assert _label_count(pg_engine) == 0
