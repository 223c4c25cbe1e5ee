"""logged.py reads a window through a server-side cursor in batches (peak memory bounded by
one batch of tuples): the frame is the same as in one batch, including a float column that is
all NULL in some batch and the text fallback."""

from __future__ import annotations

import logging
from datetime import timedelta

import pandas as pd

from fraud_lib import logged, store
from tests.lib.test_store import T0, label_all, many


def _window(engine) -> pd.DataFrame:
    return logged.labeled_predictions(engine, start=T0, end=T0 + timedelta(days=1))


def test_batches_give_the_same_frame_as_one_batch(pg_engine, monkeypatch):
    rows = many(25)
    for r in rows[:10]:
        r["features"]["V3"] = None  # all NULL in the first batch of 10
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows)
    whole = _window(pg_engine)
    monkeypatch.setattr(logged, "FETCH_ROWS", 10)
    batched = _window(pg_engine)
    assert batched["V3"].dtype == "float64" and batched["V3"].isna().sum() == 10
    pd.testing.assert_frame_equal(batched, whole)


def test_a_text_value_in_a_later_batch_still_loads(pg_engine, monkeypatch):
    rows = many(2101)
    rows[1050]["features"]["Amount"] = "unknown"  # outside the first/last 1000 sampled rows
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows)
    monkeypatch.setattr(logged, "FETCH_ROWS", 500)
    df = _window(pg_engine)
    assert len(df) == 2101
    assert df.loc[df["transaction_id"] == "tx1050", "Amount"].item() == "unknown"


def _tied(engine) -> list[dict]:
    """Rows whose event_time ties, ids chosen so that a locale collation ("b" < "B" < "c")
    and code-point order ("B" < "b" < "c") disagree; scored_at against id order."""
    rows = many(4)
    for row, tx in zip(rows, ["c", "b", "B", "a-late"], strict=True):
        row["transaction_id"], row["event_time"] = tx, 7.0
    rows[3]["event_time"] = None  # missing event time: last
    store.insert_predictions(engine, rows)
    label_all(engine, rows)
    return rows


def test_postgres_sorts_by_event_time_then_scored_at_in_code_point_order(pg_engine):
    _tied(pg_engine)
    df = _window(pg_engine)
    assert list(df["transaction_id"]) == ["c", "b", "B", "a-late"]  # ties: scored_at order
    by_id = logged.labeled_predictions(
        pg_engine, start=T0, end=T0 + timedelta(days=1), order=logged.BY_EVENT_ID
    )
    assert list(by_id["transaction_id"]) == ["B", "b", "c", "a-late"]  # as Python sorts str
    assert sorted(["c", "b", "B"]) == ["B", "b", "c"]


def test_columns_keep_only_the_named_store_columns_and_every_feature(pg_engine):
    rows = many(3)
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows)
    df = logged.labeled_predictions(
        pg_engine, start=T0, end=T0 + timedelta(days=1), columns=("transaction_id", "label")
    )
    assert list(df.columns) == ["transaction_id", "label", *_window(pg_engine).columns[12:]]
    assert df["label"].dtype == "int8" and df["V1"].dtype == "float64"


def _server_side(*_args, **_kwargs):
    raise logged.NotNumeric("forced: expand in Postgres")


def test_client_decoding_gives_the_frame_postgres_expansion_gives(pg_engine, monkeypatch, caplog):
    """The features JSON decoded client side (pyarrow) equals the server-side expansion on
    numeric documents: integers, nulls, subnormals, big integers, a key first seen in a later
    batch, a key named like a store column (dropped)."""
    rows = many(30)
    rows[0]["features"] |= {"V1": -5e-324, "V2": 2, "V3": None, "score": 9.0}
    rows[1]["features"]["V4"] = 12345678901234567
    rows[25]["features"]["late"] = 1.5  # only in the last batch of 10
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows)
    monkeypatch.setattr(logged, "FETCH_ROWS", 10)
    with caplog.at_level(logging.INFO, logger="fraud_lib.logged"):
        client = _window(pg_engine)
    assert "Postgres expands" not in caplog.text  # decoded client side
    monkeypatch.setattr(logged.FeatureColumns, "add", _server_side)
    server = _window(pg_engine)
    pd.testing.assert_frame_equal(client, server)
    assert client["late"].notna().sum() == 1 and client["V1"].iloc[0] == -5e-324


def test_a_document_with_a_raw_newline_falls_back_to_postgres(pg_engine):
    rows = many(3)
    store.insert_predictions(pg_engine, rows)
    with pg_engine.begin() as conn:  # a stored row written by hand: whitespace is a newline
        conn.exec_driver_sql(
            'UPDATE predictions SET features = \'{"V1":\n 2.5, "flag": true}\' '
            "WHERE transaction_id = 'tx1'"
        )
    label_all(pg_engine, rows)
    df = _window(pg_engine)
    assert df.loc[df["transaction_id"] == "tx1", "V1"].item() == 2.5
    assert df.loc[df["transaction_id"] == "tx1", "flag"].item() == "true"
