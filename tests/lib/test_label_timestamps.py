"""Label timestamps and ids at the store, and the labeled-window read over rows stored before
the range was enforced (inserted with SQL here, bypassing every check), on the real Postgres."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from fraud_lib import logged, store
from fraud_lib.errors import DataError
from fraud_lib.input_rules import TimestampBounds
from fraud_lib.window import ingest_window, run_key_for
from tests.lib.test_store import T0, label_all, many, prediction


def _store_raw_label(engine, tx: str, labeled_at: str, label: int = 1) -> None:
    """A label written straight into the table, as an older release (or psql) could have."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO labels (transaction_id, label, labeled_at, source) "
                "VALUES (:tx, :label, CAST(:at AS timestamptz), 'legacy')"
            ),
            {"tx": tx, "label": label, "at": labeled_at},
        )


def _stored(engine) -> dict[str, datetime]:
    with engine.connect() as conn:
        return dict(
            conn.execute(sa.select(store.labels.c.transaction_id, store.labels.c.labeled_at)).all()
        )


# ------------------------------------------------------------------------------ the store
@pytest.mark.parametrize(
    ("labeled_at", "fragment"),
    [
        ("1600-01-01T00:00:00Z", "is before 2000-01-01T00:00:00Z (FRAUD_MIN_TIMESTAMP)"),
        (datetime(1600, 1, 1, tzinfo=UTC), "is before 2000-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00+14:00 is before"),
        ("9999-12-31T23:59:59-14:00", "FRAUD_MAX_CLOCK_SKEW_SECONDS"),
        (datetime.now(UTC) + timedelta(hours=1), "is after now + 300 s"),
        ("1" * 10_000, "10,000 characters long"),
        ("05/01/2024", "is not an ISO-8601 timestamp"),
        ("2024-02-30", "day is out of range"),
        (1_714_564_800, "must be an ISO-8601 timestamp string"),
    ],
)
def test_the_store_refuses_a_labeled_at_outside_the_range(pg_engine, labeled_at, fragment):
    rows = [
        {"transaction_id": "ok", "label": 1, "labeled_at": T0},
        {"transaction_id": "bad", "label": 1, "labeled_at": labeled_at},
    ]
    with pytest.raises(DataError, match="transaction 'bad': labeled_at") as err:
        store.upsert_labels(pg_engine, rows)
    assert fragment in str(err.value)
    assert _stored(pg_engine) == {}  # nothing written


@pytest.mark.parametrize(
    ("tx", "fragment"),
    [
        ("a" * 201, "must be 1 to 200 characters (got 201)"),
        ("ab\x00cd", "must not contain NUL"),
        ("a\udc00", "lone surrogates"),
        (3.5, "must be a string"),
    ],
)
def test_the_store_refuses_ids_the_api_refuses(pg_engine, tx, fragment):
    with pytest.raises(DataError, match="transaction_id") as err:
        store.upsert_labels(pg_engine, [{"transaction_id": tx, "label": 1}])
    assert fragment in str(err.value)
    assert _stored(pg_engine) == {}


def test_a_configured_range_is_what_the_store_applies(pg_engine):
    old = {"transaction_id": "old", "label": 0, "labeled_at": "1995-06-01T00:00:00Z"}
    with pytest.raises(DataError, match="before 2000-01-01"):
        store.upsert_labels(pg_engine, [old])
    wide = TimestampBounds(datetime(1990, 1, 1, tzinfo=UTC), 0)
    assert store.upsert_labels(pg_engine, [old], bounds=wide)["inserted"] == 1
    assert _stored(pg_engine)["old"] == datetime(1995, 6, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------ window reads
def test_the_window_read_skips_and_counts_stored_out_of_range_labels(pg_engine, caplog):
    """Regression: one stored label from 1600 made every retrain fail in ingest_labeled with
    OutOfBoundsDatetime (pandas holds 1677-2262), and retries could never recover."""
    rows = [prediction(f"tx{i}", T0 + timedelta(minutes=i)) for i in range(4)]
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows[:2])
    _store_raw_label(pg_engine, "tx2", "1600-01-01T00:00:00Z")
    _store_raw_label(pg_engine, "tx3", "9999-12-31T23:59:59-14:00")
    _store_raw_label(pg_engine, "elsewhere", "1600-01-01T00:00:00Z")  # no prediction: not counted

    window = {"start": T0, "end": T0 + timedelta(days=1)}
    with caplog.at_level(logging.WARNING, logger="fraud_lib.logged"):
        df = logged.labeled_predictions(pg_engine, **window)
    assert list(df["transaction_id"]) == ["tx0", "tx1"]
    assert df.attrs["skipped_labels"] == 2
    assert "skipped 2 label(s) with labeled_at outside [2000-01-01T00:00:00Z, now+300s]" in (
        caplog.text
    )
    # as ingest_labeled reads it: labels known by the interval end (tx3's is later anyway)
    known = logged.labeled_predictions(pg_engine, **window, labels_known_by=window["end"])
    assert list(known["transaction_id"]) == ["tx0", "tx1"] and known.attrs["skipped_labels"] == 1
    assert known["labeled_at"].dtype == "datetime64[ns, UTC]"


def test_sending_the_label_again_replaces_a_stored_out_of_range_labeled_at(pg_engine):
    store.insert_predictions(pg_engine, [prediction("tx", T0)])
    _store_raw_label(pg_engine, "tx", "1600-01-01T00:00:00Z", label=1)
    result = store.upsert_labels(
        pg_engine, [{"transaction_id": "tx", "label": 1, "labeled_at": T0}]
    )
    assert result["updated"] == 1 and _stored(pg_engine)["tx"] == T0
    again = store.upsert_labels(pg_engine, [{"transaction_id": "tx", "label": 1}])
    assert again["unchanged"] == 1 and _stored(pg_engine)["tx"] == T0  # still idempotent
    df = logged.labeled_predictions(pg_engine, start=T0, end=T0 + timedelta(days=1))
    assert list(df["transaction_id"]) == ["tx"] and df.attrs["skipped_labels"] == 0


def test_ingest_window_proceeds_and_reports_the_skipped_labels(pg_engine, settings):
    """What the ingest_labeled task calls: the run goes on (here: too few labels, skipped)."""
    end = T0 + timedelta(days=2)
    rows = many(3)  # every ULB feature, as the service logs them
    store.insert_predictions(pg_engine, rows)
    label_all(pg_engine, rows[:2])
    _store_raw_label(pg_engine, "tx2", "1600-01-01T00:00:00Z")
    result = ingest_window(
        settings, pg_engine, interval_end=end, train_days=2, run_key=run_key_for(end, 2)
    )
    assert (result.logged_rows, result.skipped_labels) == (2, 1)
    assert result.skipped and "too few labels" in result.skipped
