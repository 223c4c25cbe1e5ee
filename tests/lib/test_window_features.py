"""The window of a behavioral schema against the real Postgres: features rebuilt from the
logged raw fields (not the logged values), rows whose raw fields were never logged, and a cold
start from a raw table."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from fraud_lib import store
from fraud_lib.data import save_transactions
from fraud_lib.features.offline import build_features
from fraud_lib.features.raw_data import generate_raw
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH, enrich
from fraud_lib.schema import FeatureSchema
from fraud_lib.window import ingest_window
from fraud_lib.window_store import WindowRef, load_window

SCHEMA = FeatureSchema.load(RAW_SCHEMA_PATH)
END = datetime(2025, 3, 3, tzinfo=UTC)
RAW = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"]


def _raw(days: int = 6) -> pd.DataFrame:
    raw = generate_raw(days, rows_per_day=300, fraud_rate=0.03, seed=3)
    raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
    raw["transaction_id"] = raw["transaction_id"].astype(str)
    raw["labeled_at"] = pd.to_datetime(raw["labeled_at"], unit="s", utc=True).dt.floor("ms")
    return raw


def _log(engine, raw: pd.DataFrame, features: pd.DataFrame | None) -> None:
    """Log ``raw`` scored a day before END, with ``features`` as the logged computed values
    (None: only the raw fields, as a model without the spec would have logged nothing)."""
    records = raw[RAW].to_dict("records")
    if features is not None:
        records = [{**r, **f} for r, f in zip(records, features.to_dict("records"), strict=True)]
    rows = [{"prediction_id": f"p-{r['transaction_id']}", "transaction_id": r["transaction_id"],
             "scored_at": END - timedelta(days=1), "event_time": r["timestamp"], "features": r,
             "score": 0.01} for r in records]  # fmt: skip
    store.insert_predictions(engine, rows)
    labels = [{"transaction_id": tx, "label": int(y), "labeled_at": at.to_pydatetime()}
              for tx, y, at in zip(raw["transaction_id"], raw["is_fraud"], raw["labeled_at"],
                                   strict=True)]  # fmt: skip
    store.upsert_labels(engine, labels)


def _settings(settings):
    return replace(settings, schema_path=str(RAW_SCHEMA_PATH), min_labeled_rows=200, min_frauds=5)


def test_window_features_are_rebuilt_from_the_logged_raw_fields(settings, pg_engine):
    raw = _raw()
    labels = raw.rename(columns={"is_fraud": "label"})[["transaction_id", "label", "labeled_at"]]
    truth = build_features(SCHEMA.behavior, raw, labels)
    logged = truth.copy()
    logged["customer__amount__mean__7d__incl"] += 1.0  # a broken online state, say
    _log(pg_engine, raw, logged)
    s = _settings(settings)
    result = ingest_window(s, pg_engine, interval_end=END, train_days=7, run_key="rebuilt")
    facts = result.features
    assert facts["history_events"] == len(raw) and facts["labels"] == len(raw)
    assert facts["logged_columns_differing"] == ["customer__amount__mean__7d__incl"]
    assert facts["logged_rows_differing"] == len(raw)
    window = load_window(s, WindowRef.from_dict(result.ref), SCHEMA).set_index("transaction_id")
    got = window.loc[raw["transaction_id"], SCHEMA.behavior.output_columns].to_numpy()
    np.testing.assert_allclose(got, truth.to_numpy(), rtol=1e-12, atol=1e-12)


def test_rows_whose_raw_fields_were_not_logged_are_dropped(settings, pg_engine):
    raw = _raw()
    _log(pg_engine, raw.iloc[:1000], None)
    bare = raw.iloc[1000:].copy()
    rows = [{"prediction_id": f"p-{tx}", "transaction_id": tx, "scored_at": END - timedelta(days=1),
             "event_time": t, "features": {"amount": 1.0}, "score": 0.01}
            for tx, t in zip(bare["transaction_id"], bare["timestamp"], strict=True)]  # fmt: skip
    store.insert_predictions(pg_engine, rows)
    known = END - timedelta(hours=1)
    store.upsert_labels(pg_engine, [{"transaction_id": tx, "label": 0, "labeled_at": known}
                                    for tx in bare["transaction_id"]])  # fmt: skip
    result = ingest_window(_settings(settings), pg_engine, interval_end=END, train_days=7,
                           run_key="bare")  # fmt: skip
    assert result.features["history_incomplete"] == len(bare)
    assert result.dropped_incomplete == len(bare) and result.rows == 1000


def test_cold_start_reads_a_raw_initial_table(settings, pg_engine, tmp_path):
    raw = _raw()
    path = save_transactions(raw.assign(labeled_at=raw["labeled_at"].astype("int64") / 1e9),
                             tmp_path / "initial.parquet")  # fmt: skip
    s = replace(_settings(settings), initial_data=str(path))
    result = ingest_window(s, pg_engine, interval_end=END, train_days=7, run_key="cold")
    assert result.logged_rows == 0 and result.initial_rows == len(raw)
    window = load_window(s, WindowRef.from_dict(result.ref), SCHEMA)
    expected = enrich(SCHEMA, raw.assign(labeled_at=raw["labeled_at"].astype("int64") / 1e9))
    assert len(window) == len(expected)
    np.testing.assert_allclose(
        window.set_index("transaction_id").loc[expected["transaction_id"].astype(str),
                                               SCHEMA.behavior.output_columns].to_numpy(),
        expected[SCHEMA.behavior.output_columns].to_numpy(),
    )  # fmt: skip
