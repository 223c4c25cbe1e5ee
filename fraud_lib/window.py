"""The window step of a retraining run: the labeled predictions it trains and evaluates on.

:func:`ingest_window` saves one window per run (named by :func:`run_key_for`) to the run's
MLflow artifacts (:mod:`fraud_lib.window_store`: later tasks, on any worker, load it by its
reference) and :func:`split_window` cuts it into the training part and the evaluation slice.
The later steps are in :mod:`fraud_lib.cycle`.

**Two clocks.** A run selects logged predictions by *scoring* time (``scored_at`` in
``[interval_end - train_days, interval_end)``, labels known by ``interval_end``), but splits them
by *event* time (the schema's time column, e.g. ULB ``Time``): the evaluation slice is the last
``eval_days * 86400`` seconds of event time, the challenger trains on everything before it. A
replay that scores weeks of traffic within minutes therefore still gets a proper time split.

**Re-running the same interval** (same ``run_key``: interval end + window length) saves the
window again, to the same MLflow run and artifact path, with the same rows (labels known by the interval end; a label *changed* after the
interval end drops its row, since its ``labeled_at`` moves).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from fraud_lib import logged
from fraud_lib.config import Settings
from fraud_lib.errors import DataError
from fraud_lib.memory import releases_memory
from fraud_lib.schema import FeatureSchema

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
ID = "transaction_id"
# The columns of the prediction log a window needs (the features keys come with them).
LOG_COLUMNS = (ID, "event_time", "score", "label")


@dataclass
class IngestResult:
    """The labeled window of one run; ``ref`` (a :class:`~fraud_lib.window_store.WindowRef`
    as a dict) is None when the run is skipped."""

    run_key: str
    ref: dict[str, Any] | None
    rows: int
    frauds: int
    logged_rows: int
    initial_rows: int
    dropped_incomplete: int
    start: str
    end: str
    event_time: list[float | None]
    digest: str
    skipped: str | None = None
    skipped_labels: int = 0  # stored labels left out: labeled_at outside the accepted range
    features: dict[str, Any] | None = None  # behavioral schema: facts of the offline rebuild

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_key_for(interval_end: datetime, train_days: int) -> str:
    """Name of a run's window: its interval end (UTC) and length, e.g. ``20250106T000000Z_28d``."""
    end = interval_end if interval_end.tzinfo else interval_end.replace(tzinfo=UTC)
    return f"{end.astimezone(UTC):%Y%m%dT%H%M%SZ}_{int(train_days)}d"


def window_digest(df: pd.DataFrame) -> str:
    """Content hash of a window frame (its rows and column names)."""
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()
    return hashlib.sha256(hashed + ",".join(df.columns).encode()).hexdigest()[:16]


def _window_columns(schema: FeatureSchema) -> list[str]:
    return [ID, schema.time, *schema.model_columns, schema.label, "score", "source"]


def _from_log(rows: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Labeled predictions (store layout, :data:`LOG_COLUMNS`) to the window layout, in one
    copy; the time column falls back to ``event_time`` when the features JSON lacks it."""
    missing = [c for c in schema.model_columns if c not in rows.columns]
    if missing and len(rows):
        raise DataError(
            f"logged predictions lack feature(s) {missing}: the schema in use (FRAUD_SCHEMA, "
            "empty = ULB) does not match what the service logs; use the service's schema"
        )
    event_time = rows["event_time"].astype(float)
    if schema.time in rows.columns:
        event_time = rows[schema.time].astype(float).fillna(event_time)
    columns = {ID: rows[ID], schema.time: event_time}
    columns |= {c: rows.get(c, np.nan) for c in schema.model_columns if c != schema.time}
    columns |= {schema.label: rows["label"], "score": rows["score"], "source": "log"}
    return pd.DataFrame(columns, index=rows.index)


def _is_sorted(window: pd.DataFrame, schema: FeatureSchema) -> bool:
    """Whether ``window`` is already in (time, id) order (as Postgres returns a log window)."""
    time = window[schema.time].to_numpy()
    steps = np.diff(time)
    if (steps < 0).any():
        return False
    ties = np.flatnonzero(steps == 0)
    ids = window[ID].to_numpy()
    return bool((ids[ties] < ids[ties + 1]).all())


def _load_initial(settings: Settings, schema: FeatureSchema) -> pd.DataFrame:
    """The cold-start table; raw transactions (features computed) for a behavioral schema."""
    if schema.behavior is not None:
        from fraud_lib.features.raw_table import load_raw_transactions

        return load_raw_transactions(settings.initial_data, schema)
    from fraud_lib import data

    return data.load_transactions(settings.initial_data, schema)


@releases_memory
def ingest_window(
    settings: Settings,
    engine: Engine,
    *,
    interval_end: datetime,
    train_days: int,
    run_key: str,
) -> IngestResult:
    """Labeled predictions of the run's window, saved as the run key's MLflow artifact.

    Too few logged labels (rows or frauds below the settings) is a cold start: the
    ``initial_data`` file is added when set. The result says ``skipped`` (and no file is
    saved) when the window is still too small.
    """
    schema = FeatureSchema.load(settings.schema_path)
    start = interval_end - timedelta(days=train_days)
    rows = logged.labeled_predictions(
        engine,
        start=start,
        end=interval_end,
        labels_known_by=interval_end,
        bounds=settings.timestamp_bounds,
        columns=LOG_COLUMNS,
        order=logged.BY_EVENT_ID,
    )
    skipped_labels = rows.attrs["skipped_labels"]
    features = None
    if schema.behavior is not None and len(rows):
        from fraud_lib.window_features import recompute

        rows, features = recompute(engine, schema, rows, interval_end=interval_end)
    window = _from_log(rows, schema)
    del rows
    n_logged = len(window)
    cold = n_logged < settings.min_labeled_rows or (
        int(window[schema.label].sum()) < settings.min_frauds
    )
    n_initial = 0
    if cold and settings.initial_data:
        initial = _load_initial(settings, schema)
        if ID not in initial:
            initial[ID] = [f"initial-{i}" for i in range(len(initial))]
        initial = initial[~initial[ID].astype(str).isin(set(window[ID]))]
        initial = initial.assign(score=float("nan"), source="initial")
        n_initial = len(initial)
        log.info("cold start: adding %d rows from %s", n_initial, settings.initial_data)
        window = pd.concat([window, initial.reindex(columns=window.columns)], ignore_index=True)
    needed = [schema.time, *schema.model_columns, schema.label]
    complete = window[needed].notna().all(axis=1)
    dropped = int((~complete).sum())
    if dropped:
        log.warning("dropping %d window rows with a missing feature, time or label", dropped)
    if dropped:
        window = window.loc[complete]
    window[ID] = window[ID].astype(str)
    window[schema.label] = window[schema.label].astype("int8")
    if not _is_sorted(window, schema):
        window = window.sort_values([schema.time, ID], kind="mergesort")
    window = window.reset_index(drop=True)
    rows, frauds = len(window), int(window[schema.label].sum())
    result = IngestResult(
        run_key=run_key,
        ref=None,
        rows=rows,
        frauds=frauds,
        logged_rows=n_logged,
        initial_rows=n_initial,
        dropped_incomplete=dropped,
        start=start.isoformat(),
        end=interval_end.isoformat(),
        event_time=[
            float(window[schema.time].min()) if rows else None,
            float(window[schema.time].max()) if rows else None,
        ],
        digest=window_digest(window),
        skipped_labels=skipped_labels,
        features=features,
    )
    if rows < settings.min_labeled_rows or frauds < settings.min_frauds:
        result.skipped = (
            f"too few labels: {rows:,} labeled rows with {frauds} frauds scored in "
            f"[{start:%Y-%m-%d %H:%M}, {interval_end:%Y-%m-%d %H:%M}) with labels known by then; "
            f"need {settings.min_labeled_rows:,} rows (FRAUD_MIN_LABELED_ROWS) and "
            f"{settings.min_frauds} frauds (FRAUD_MIN_FRAUDS)"
            + ("" if settings.initial_data else ", or set FRAUD_INITIAL_DATA for a cold start")
        )
        return result
    from fraud_lib.window_store import save_window

    result.ref = save_window(settings, window, run_key).as_dict()
    return result


def split_window(
    df: pd.DataFrame, schema: FeatureSchema, eval_days: float
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(train part, evaluation slice, cutoff): the slice is the last ``eval_days`` of event
    time (``time > cutoff``), the train part everything up to the cutoff."""
    cutoff = float(df[schema.time].max()) - eval_days * SECONDS_PER_DAY
    later = df[schema.time] > cutoff
    return df[~later], df[later], cutoff
