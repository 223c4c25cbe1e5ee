"""logged.py reads a window through a server-side cursor in batches (peak memory bounded by
one batch of tuples): the frame is the same as in one batch, including a float column that is
all NULL in some batch and the text fallback."""

from __future__ import annotations

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
