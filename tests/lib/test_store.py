"""Tables and queries against the session's real Postgres."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from fraud_lib import logged, pgserver, store
from fraud_lib.errors import DatabaseError, DataError

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def prediction(tx: str, scored_at: datetime, **extra) -> dict:
    row = {
        "prediction_id": str(uuid.uuid4()),
        "transaction_id": tx,
        "scored_at": scored_at,
        "event_time": (scored_at - T0).total_seconds(),
        "features": {"V1": 0.5, "V2": -1.25, "Amount": 12.0},
        "score": 0.2,
        "is_fraud": False,
        "threshold": 0.5,
        "risk_level": "medium",
        "model_name": "fraud-detector",
        "model_version": "1",
        "request_id": "req-1",
    }
    row.update(extra)
    return row


def many(n: int, start: datetime = T0, prefix: str = "tx") -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        prediction(
            f"{prefix}{i}",
            start + timedelta(seconds=i),
            features={f"V{j}": float(rng.normal()) for j in range(1, 29)} | {"Amount": 1.0 * i},
            score=float(rng.random()),
        )
        for i in range(n)
    ]


def label_all(engine, rows, when=T0 + timedelta(days=1)):
    store.upsert_labels(
        engine,
        [{"transaction_id": r["transaction_id"], "label": 0, "labeled_at": when} for r in rows],
    )


# ------------------------------------------------------------------------------ schema
def test_migrate_is_idempotent(pg_engine):
    store.migrate(pg_engine)
    store.migrate(pg_engine)
    names = set(sa.inspect(pg_engine).get_table_names())
    assert {"predictions", "labels", "model_events"} <= names
    indexes = {ix["name"] for ix in sa.inspect(pg_engine).get_indexes("predictions")}
    assert {"ix_predictions_tx_scored_at", "ix_predictions_scored_at",
            "ix_predictions_written_at"} <= indexes  # fmt: skip
    assert "ix_labels_updated_at" in {
        ix["name"] for ix in sa.inspect(pg_engine).get_indexes("labels")
    }


def test_migrate_turns_an_older_jsonb_features_column_into_json(pg_engine):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS older CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA older")
        conn.exec_driver_sql("SET LOCAL search_path TO older")
        conn.exec_driver_sql(
            "CREATE TABLE predictions (prediction_id text PRIMARY KEY, transaction_id text NOT "
            "NULL, scored_at timestamptz NOT NULL DEFAULT now(), event_time float8, features "
            "jsonb NOT NULL, score float8 NOT NULL, is_fraud bool, threshold float8, risk_level "
            "text, model_name text, model_version text, request_id text, written_at timestamptz "
            "NOT NULL DEFAULT now())"
        )
        conn.exec_driver_sql(
            "INSERT INTO predictions (prediction_id, transaction_id, features, score) VALUES "
            """('p0', 't0', '{"V1": 1.5, "V2": 1180591620717411303424}', 0.5)"""
        )
        store.migrate(conn)
        store.migrate(conn)
        kind = conn.exec_driver_sql(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = 'older' "
            "AND table_name = 'predictions' AND column_name = 'features'"
        ).scalar_one()
        assert kind == "json"
        indexes = set(conn.exec_driver_sql(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'older' AND tablename = 'predictions'"
        ).scalars())  # fmt: skip
        assert {"ix_predictions_written_at", "ix_predictions_tx_scored_at"} <= indexes  # added
        assert store.insert_predictions(conn, [{"prediction_id": "p1", "transaction_id": "t1",
                                                "features": {"V1": 2.5}, "score": 0.1}]) == 1  # fmt: skip
        features = (
            conn.exec_driver_sql("SELECT features FROM predictions ORDER BY prediction_id")
            .scalars()
            .all()
        )
        assert features == [{"V1": 1.5, "V2": 1180591620717411303424}, {"V1": 2.5}]
        conn.exec_driver_sql("RESET search_path")
        conn.exec_driver_sql("DROP SCHEMA older CASCADE")


def test_connect_store_uses_the_settings_database(settings):
    engine = store.connect_store(settings)
    assert engine.url.port == sa.make_url(settings.database_url).port
    assert store.prediction_count(engine) >= 0


# ------------------------------------------------------------------------------ predictions
def test_insert_is_idempotent_on_prediction_id(pg_engine):
    rows = many(1000)
    assert store.insert_predictions(pg_engine, rows) == 1000
    assert store.insert_predictions(pg_engine, rows) == 0
    assert store.prediction_count(pg_engine) == 1000
    ids = [r["prediction_id"] for r in rows[:10]] + ["not-there"]
    assert store.count_predictions_by_ids(pg_engine, ids) == 10
    # regression: an IN list of more than 65,535 ids failed (the serving bench's outage phase)
    many_ids = [r["prediction_id"] for r in rows] + [f"absent-{i}" for i in range(70_000)]
    assert store.count_predictions_by_ids(pg_engine, many_ids) == 1000


def test_duplicates_inside_one_batch_are_stored_once(pg_engine):
    row = prediction("tx1", T0)
    assert store.insert_predictions(pg_engine, [row, dict(row), prediction("tx1", T0)]) == 2


def test_bulk_insert_of_10k_rows_is_fast(pg_engine):
    rows = many(10_000)
    started = time.perf_counter()
    assert store.insert_predictions(pg_engine, rows) == 10_000
    elapsed = time.perf_counter() - started
    print(f"inserted 10,000 predictions in {elapsed:.3f} s")
    assert elapsed < 2.0  # ~0.5 s on 2 cores; the margin is for a busy CI machine
    assert store.prediction_count(pg_engine) == 10_000


def test_rows_round_trip(pg_engine):
    json_text = prediction("tx-json", T0, features='{"V1": 1.5, "V2": 2, "Amount": 3}')
    defaults = prediction(
        "tx-defaults", T0, event_time=None, request_id=None,
        score=np.float64(0.75), is_fraud=np.bool_(True), model_version=7,
        features={"V1": np.float32(0.5), "V2": 0.1, "Amount": 1e-300},
    )  # fmt: skip
    defaults["scored_at"] = None
    before = datetime.now(UTC)
    assert store.insert_predictions(pg_engine, [json_text, defaults]) == 2
    with pg_engine.connect() as conn:
        got = {r.transaction_id: r for r in conn.execute(sa.select(store.predictions)).mappings()}
    assert got["tx-json"]["features"] == {"V1": 1.5, "V2": 2, "Amount": 3}
    row = got["tx-defaults"]
    assert row["features"] == {"V1": 0.5, "V2": 0.1, "Amount": 1e-300}
    assert row["scored_at"] >= before - timedelta(seconds=5) and row["event_time"] is None
    assert row["score"] == 0.75 and row["is_fraud"] is True and row["model_version"] == "7"
    assert row["written_at"] is not None


def test_incomplete_or_invalid_rows_are_rejected_before_writing(pg_engine):
    good = prediction("tx1", T0)
    with pytest.raises(DataError, match="required"):
        store.insert_predictions(pg_engine, [good, prediction("tx2", T0, score=None)])
    with pytest.raises(DataError, match="finite"):
        store.insert_predictions(pg_engine, [prediction("tx3", T0, score=float("nan"))])
    with pytest.raises(DataError, match="rejected"):  # invalid JSON text is refused by Postgres
        store.insert_predictions(pg_engine, [good, prediction("tx4", T0, features="{nope")])
    assert store.prediction_count(pg_engine) == 0
    assert store.insert_predictions(pg_engine, []) == 0


# ------------------------------------------------------------------------------ labels
def test_upsert_labels_reports_inserted_updated_and_unknown(pg_engine):
    store.insert_predictions(pg_engine, [prediction(f"tx{i}", T0) for i in range(3)])
    first = [
        {"transaction_id": "tx0", "label": 1, "labeled_at": T0},
        {"transaction_id": "tx1", "label": "0", "labeled_at": "2024-03-01T12:00:00Z"},
        {"transaction_id": "tx9", "label": True, "labeled_at": pd.Timestamp("2024-03-02")},
    ]
    result = store.upsert_labels(pg_engine, first)
    assert result == {"inserted": 3, "updated": 0, "unchanged": 0, "unknown_ids": ["tx9"]}

    again = store.upsert_labels(pg_engine, first)
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 3)

    later = T0 + timedelta(days=2)
    changed = store.upsert_labels(
        pg_engine,
        [
            {"transaction_id": "tx0", "label": 1, "labeled_at": later},  # same label
            {"transaction_id": "tx1", "label": 1, "labeled_at": later},  # flipped
        ],
    )
    assert (changed["inserted"], changed["updated"], changed["unchanged"]) == (0, 1, 1)
    with pg_engine.connect() as conn:
        rows = {r.transaction_id: r for r in conn.execute(sa.select(store.labels))}
    assert rows["tx0"].labeled_at == T0  # a repeated label keeps when it was first known
    assert rows["tx1"].label == 1 and rows["tx1"].labeled_at == later
    assert rows["tx9"].source == "api" and rows["tx9"].labeled_at == T0 + timedelta(days=1)


def test_bad_labels_name_the_transaction(pg_engine):
    for bad in (2, None, "yes", 0.5):
        with pytest.raises(DataError, match="tx-bad"):
            store.upsert_labels(
                pg_engine,
                [{"transaction_id": "ok", "label": 1}, {"transaction_id": "tx-bad", "label": bad}],
            )
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.labels)).scalar() == 0


# ------------------------------------------------------------------------------ windows
def test_labeled_predictions_window_is_half_open(pg_engine):
    end = T0 + timedelta(days=1)
    rows = [
        prediction("before", T0 - timedelta(microseconds=1)),
        prediction("at-start", T0),
        prediction("inside", T0 + timedelta(hours=1)),
        prediction("last", end - timedelta(microseconds=1)),
        prediction("at-end", end),
        prediction("unlabeled", T0 + timedelta(hours=2)),
    ]
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, [r for r in rows if r["transaction_id"] != "unlabeled"])
    df = logged.labeled_predictions(pg_engine, start=T0, end=end)
    assert list(df["transaction_id"]) == ["at-start", "inside", "last"]
    assert df["scored_at"].iloc[2] == pd.Timestamp(end - timedelta(microseconds=1))


def test_labels_known_by_makes_reruns_deterministic(pg_engine):
    rows = [prediction(f"tx{i}", T0 + timedelta(minutes=i)) for i in range(4)]
    store.insert_predictions(pg_engine, rows)
    cutoff = T0 + timedelta(days=3)
    store.upsert_labels(
        pg_engine,
        [
            {"transaction_id": "tx0", "label": 0, "labeled_at": cutoff - timedelta(days=1)},
            {"transaction_id": "tx1", "label": 1, "labeled_at": cutoff},  # boundary: included
            {"transaction_id": "tx2", "label": 1, "labeled_at": cutoff + timedelta(seconds=1)},
        ],
    )
    window = {"start": T0, "end": T0 + timedelta(days=1)}
    known = logged.labeled_predictions(pg_engine, **window, labels_known_by=cutoff)
    assert list(known["transaction_id"]) == ["tx0", "tx1"]
    assert list(known["label"]) == [0, 1] and known["label"].dtype == "int8"
    everything = logged.labeled_predictions(pg_engine, **window)
    assert list(everything["transaction_id"]) == ["tx0", "tx1", "tx2"]


def test_latest_prediction_per_transaction_wins(pg_engine):
    old = prediction("tx", T0 + timedelta(minutes=1), score=0.1, model_version="1")
    new = prediction("tx", T0 + timedelta(minutes=5), score=0.9, model_version="2")
    outside = prediction("tx", T0 + timedelta(days=2), score=0.5, model_version="3")
    store.insert_predictions(pg_engine, [new, old, outside])
    label_all(pg_engine, [new])
    df = logged.labeled_predictions(pg_engine, start=T0, end=T0 + timedelta(days=1))
    assert len(df) == 1
    assert df.iloc[0]["prediction_id"] == new["prediction_id"]
    assert (df.iloc[0]["score"], df.iloc[0]["model_version"]) == (0.9, "2")


def test_features_are_expanded_into_columns(pg_engine):
    rows = [
        prediction("a", T0, event_time=30.0,
                   features={"V1": 0.1, "V2": 2, "merchant": "shop", "score": 123}),
        prediction("b", T0 + timedelta(seconds=1), event_time=None,
                   features={"V1": 1 / 3, "merchant": "cafe"}),
        prediction("c", T0 + timedelta(seconds=2), event_time=10.0,
                   features={"V1": -5e-324, "V2": None, "merchant": "bar"}),
    ]  # fmt: skip
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows)
    df = logged.labeled_predictions(pg_engine, start=T0, end=T0 + timedelta(days=1))
    expected_base = [
        "transaction_id", "prediction_id", "scored_at", "event_time", "score", "is_fraud",
        "threshold", "risk_level", "model_name", "model_version", "label", "labeled_at",
    ]  # fmt: skip
    assert list(df.columns) == [*expected_base, "V1", "V2", "merchant"]
    assert list(df["transaction_id"]) == ["c", "a", "b"]  # by event_time, missing last
    assert df["V1"].tolist() == [-5e-324, 0.1, 1 / 3]  # exact floats
    assert df["V2"].dtype == "float64" and df["V2"].isna().tolist() == [True, False, True]
    assert df["merchant"].tolist() == ["bar", "shop", "cafe"]
    assert df["score"].tolist() == [0.2, 0.2, 0.2]  # the feature named "score" is dropped
    assert str(df["scored_at"].dt.tz) == "UTC"


def test_a_text_value_the_sample_missed_still_loads(pg_engine):
    rows = many(2101)
    rows[1050]["features"]["Amount"] = "unknown"  # outside the first/last 1000 sampled rows
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows)
    df = logged.labeled_predictions(pg_engine, start=T0, end=T0 + timedelta(days=1))
    assert len(df) == 2101
    assert df.loc[df["transaction_id"] == "tx1050", "Amount"].item() == "unknown"
    assert df.loc[df["transaction_id"] == "tx7", "Amount"].item() == "7.0"


def test_empty_window_has_the_base_columns(pg_engine):
    df = logged.labeled_predictions(pg_engine, start=T0, end=T0 + timedelta(days=1))
    assert df.empty and "label" in df.columns and "score" in df.columns
    recent = logged.recent_predictions(pg_engine, start=T0, end=T0 + timedelta(days=1))
    assert recent.empty and "model_version" in recent.columns


def test_recent_predictions_need_no_labels(pg_engine):
    rows = many(50)
    store.insert_predictions(pg_engine, rows)
    window = {"start": T0, "end": T0 + timedelta(days=1)}
    df = logged.recent_predictions(pg_engine, **window)
    assert len(df) == 50 and "label" not in df.columns
    assert df["scored_at"].is_monotonic_increasing and "V28" in df.columns
    last = logged.recent_predictions(pg_engine, **window, limit=5)
    assert list(last["transaction_id"]) == [f"tx{i}" for i in range(45, 50)]


# ------------------------------------------------------------------------------ model events
def test_model_events_round_trip_newest_first(pg_engine):
    first = store.record_model_event(
        pg_engine, model_name="fraud-detector", event="registered", version=1, reason="trained"
    )
    second = store.record_model_event(
        pg_engine, model_name="fraud-detector", event="promoted", version="2",
        previous_version="1", metric_name="average_precision", challenger_metric=0.81,
        champion_metric=0.78, reason="improved by 0.03",
        details={"margin": np.float64(0.005), "window": ["2024-03-01", "2024-03-04"]},
        run_id="abc",
    )  # fmt: skip
    store.record_model_event(pg_engine, model_name="other", event="rejected", version="9")
    assert second > first

    events = store.model_events(pg_engine, "fraud-detector")
    assert [e["id"] for e in events] == [second, first]
    top = events[0]
    assert top["event"] == "promoted" and top["previous_version"] == "1"
    assert top["challenger_metric"] == 0.81 and top["details"]["margin"] == 0.005
    assert top["created_at"].tzinfo is not None and events[1]["version"] == "1"
    assert len(store.model_events(pg_engine)) == 3
    assert len(store.model_events(pg_engine, limit=1)) == 1
    json.dumps(events, default=str)  # what `fraud models --json` does


def test_model_event_validation(pg_engine):
    for bad in (None, "", "Promoted!"):
        with pytest.raises(DataError, match="event must be a lowercase word"):
            store.record_model_event(pg_engine, model_name="m", event=bad)
    with pytest.raises(DataError, match="model_name is required"):
        store.record_model_event(pg_engine, event="promoted")
    with pytest.raises(TypeError, match="unknown field"):
        store.record_model_event(pg_engine, model_name="m", event="promoted", colour="red")


# ------------------------------------------------------------------------------ failures
def test_unreachable_database_gives_a_clear_error():
    port = pgserver.free_port()
    engine = store.make_engine(f"postgresql+psycopg://fraud:s3cret@127.0.0.1:{port}/fraud")
    with pytest.raises(DatabaseError) as info:
        store.prediction_count(engine)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "s3cret" not in message
    assert "fraud db start" in message and "FRAUD_DATABASE_URL" in message
    with pytest.raises(DatabaseError):
        store.insert_predictions(engine, [prediction("tx", T0)])


@pytest.mark.slow
def test_survives_a_postgres_restart(pg_engine, pg_server):
    store.insert_predictions(pg_engine, [prediction("before", T0)])
    pg_server.stop()
    try:
        with pytest.raises(DatabaseError, match="cannot reach"):
            store.insert_predictions(pg_engine, [prediction("during", T0)])
    finally:
        pg_server.ensure_running()
    assert store.insert_predictions(pg_engine, [prediction("after", T0)]) == 1
    assert store.prediction_count(pg_engine) == 2
