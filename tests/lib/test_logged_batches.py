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
