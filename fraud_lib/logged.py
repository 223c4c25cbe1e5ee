"""Windows of the prediction log read back from Postgres as DataFrames: labeled predictions
for training, evaluation and drift checks, recent ones for the score monitor.

The features JSON of every row travels as text and is decoded client side into one column
per key (see :func:`_window_frame`); timestamps travel as epoch microseconds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from fraud_lib.input_rules import TimestampBounds
from fraud_lib.logged_json import FeatureColumns, NotNumeric
from fraud_lib.store import begin
from fraud_lib.tables import BASE_COLUMNS

log = logging.getLogger(__name__)


def _natural(key: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


_WINDOW = "p.scored_at >= %(start)s AND p.scored_at < %(end)s"
_KINDS = (
    "SELECT e.k, bool_and(json_typeof(e.v) IN ('number', 'null')) "
    "FROM ({}) s, json_each(s.features) AS e(k, v) GROUP BY e.k"
)
# First and last rows of the window: payloads are validated against one schema, so this finds
# every key unless a key came and went inside the window (a failed cast re-runs the full scan).
_SAMPLE = sql.SQL(_KINDS).format(
    sql.SQL(
        f"(SELECT p.features FROM predictions p WHERE {_WINDOW} ORDER BY p.scored_at LIMIT 1000)"
        " UNION ALL "
        f"(SELECT p.features FROM predictions p WHERE {_WINDOW} "
        "ORDER BY p.scored_at DESC LIMIT 1000)"
    )
)
_MICROS = "(extract(epoch FROM {}) * 1000000)::int8"  # exact timestamps as int8
_SOURCE = {c: f"p.{c}" for c in BASE_COLUMNS} | {"label": "l.label", "labeled_at": "l.labeled_at"}
_TIMES = ("scored_at", "labeled_at")
_FLOATS = frozenset({"event_time", "score", "threshold"})  # float8 columns of the store
# Row orders (Postgres sorts; "C" compares ids by code point, as Python and pandas do).
_ID = 'p.transaction_id COLLATE "C"'
BY_EVENT_SCORED_ID = f"p.event_time NULLS LAST, p.scored_at, {_ID}"
BY_EVENT_ID = f"p.event_time NULLS LAST, {_ID}"


FETCH_ROWS = 50_000


def _fetch_frame(
    raw: psycopg.Connection,
    query: sql.Composable,
    params: dict[str, Any],
    names: list[str],
    floats: set[str],
    features: FeatureColumns | None = None,
) -> pd.DataFrame:
    """The rows of ``query`` through a server-side cursor, :data:`FETCH_ROWS` at a time. Each
    batch is decoded at once into columns: the ``floats`` columns into float64 arrays (NULL is
    NaN), the others into one list per column; so only one batch of Python tuples is ever
    alive and no per-batch frame is made and concatenated (the whole window as tuples took
    ~1.5 GB per million rows, and per-batch frames their size again at the concat). Given
    ``features``, each row has one more value, its features JSON text, decoded into it."""
    columns: dict[str, list[Any]] = {name: [] for name in names}
    with raw.cursor(name="fraudloop_window", binary=True) as named:
        named.execute(query, params)
        while batch := named.fetchmany(FETCH_ROWS):
            values_of = list(zip(*batch, strict=True))
            del batch
            if features is not None:
                features.add(values_of.pop())
            for name, values in zip(names, values_of, strict=True):
                if name in floats:
                    columns[name].append(np.array(values, dtype=np.float64))
                else:
                    columns[name].extend(values)
            del values_of
    data = {
        name: (np.concatenate(values) if values else np.empty(0)) if name in floats else values
        for name, values in columns.items()
    }
    return pd.DataFrame(data, columns=names)


@dataclass(frozen=True)
class _Read:
    """One window read: the selection of prediction ids, its parameters, the store columns
    wanted (SQL expressions and names), the joins and the ``ORDER BY`` list."""

    selection: sql.Composable
    params: dict[str, Any]
    base: list[str]
    wanted: list[str]
    cols: list[sql.Composable]
    joins: list[sql.Composable]
    order: str

    def query(
        self, extra: Sequence[sql.Composable] = (), lateral: sql.Composable | None = None
    ) -> sql.Composed:
        """The window query, with ``extra`` select items and a ``lateral`` join."""
        return sql.SQL("WITH sel AS ({}) SELECT {} FROM sel {} WHERE {} ORDER BY {}").format(
            self.selection,
            sql.SQL(", ").join([*self.cols, *extra]),
            sql.SQL(" ").join([*self.joins, lateral] if lateral else self.joins),
            sql.SQL(_WINDOW),
            sql.SQL(self.order),
        )


def _client_expanded(raw: psycopg.Connection, read: _Read) -> pd.DataFrame:
    """The window with the features JSON sent as text and decoded by
    :class:`~fraud_lib.logged_json.FeatureColumns` (:class:`NotNumeric` if it cannot)."""
    features = FeatureColumns()
    query = read.query([sql.SQL("p.features::text")])
    frame = _fetch_frame(raw, query, read.params, read.wanted, set(_FLOATS), features)
    keys = sorted((k for k in features.names() if k not in read.base), key=_natural)
    extra = pd.DataFrame({k: features.take(k) for k in keys}, index=frame.index)
    return pd.concat([frame, extra], axis=1) if keys else frame


def _server_expanded(cur: psycopg.Cursor, raw: psycopg.Connection, read: _Read) -> pd.DataFrame:
    """The window with the features JSON expanded by Postgres: the keys (and whether their
    values are all numbers) come from a sample of the window, then ``json_to_record`` returns
    them as float8 or text columns (a text value the sample missed: every row is looked at)."""
    full_scan = sql.SQL(_KINDS).format(
        sql.SQL("SELECT p.features FROM ({}) sel {} WHERE {} OFFSET 0").format(
            read.selection, read.joins[0], sql.SQL(_WINDOW)
        )
    )
    for discovery in (_SAMPLE, full_scan):
        kinds = cur.execute(discovery, read.params).fetchall()
        keys = sorted((k for k in kinds if k[0] not in read.base), key=lambda k: _natural(k[0]))
        record = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL("float8" if num else "text"))
            for k, num in keys
        )
        lateral = sql.SQL("CROSS JOIN LATERAL json_to_record(p.features) AS x({})")
        query = read.query(
            [sql.SQL("x.*")] if keys else [], lateral.format(record) if keys else None
        )
        floats = _FLOATS | {k for k, num in keys if num}
        cur.execute("SAVEPOINT window_frame")
        try:
            return _fetch_frame(raw, query, read.params, read.wanted + [k for k, _ in keys], floats)
        except psycopg.errors.InvalidTextRepresentation:
            cur.execute("ROLLBACK TO SAVEPOINT window_frame")
            if discovery is full_scan:
                raise
    raise AssertionError("unreachable: the full scan returns or raises")


def _window_frame(
    conn: Connection,
    selection: sql.Composable,
    params: dict[str, Any],
    *,
    labeled: bool,
    order: str,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Predictions whose ids ``selection`` returns (all scored in the window), as a DataFrame
    sorted by ``order`` (an SQL ``ORDER BY`` list over ``p``: Postgres sorts, not pandas), with
    only the ``columns`` of the store's own (default: all) and every features key.

    The features JSON travels as text and is decoded client side into float64 columns
    (:mod:`fraud_lib.logged_json`); a window with any non-numeric value is read again with the
    features expanded by Postgres (:func:`_server_expanded`). Timestamps travel as epoch
    microseconds.
    """
    base = list(BASE_COLUMNS) + (["label", "labeled_at"] if labeled else [])
    wanted = [c for c in base if columns is None or c in columns]
    joins = [sql.SQL("JOIN predictions p USING (prediction_id)")]
    if labeled:
        joins.append(sql.SQL("JOIN labels l ON l.transaction_id = p.transaction_id"))
    read = _Read(
        selection, params, base, wanted,
        [sql.SQL(_MICROS.format(_SOURCE[c]) if c in _TIMES else _SOURCE[c]) for c in wanted],
        joins, order,
    )  # fmt: skip
    raw = conn.connection.driver_connection
    with raw.cursor(binary=True) as cur:
        # JIT compilation costs more than it saves here; sorts of 300k ids fit in 64MB. No
        # nested loops: with stale statistics (a table just truncated and refilled, before
        # autovacuum analyzes it) the planner nested-looped a 42k-row window over a seq scan
        # of the table and took 150 s instead of 2 s; a hash join is right for these reads.
        cur.execute("SET LOCAL jit = off")
        cur.execute("SET LOCAL enable_nestloop = off")
        cur.execute("SET LOCAL work_mem = '64MB'")
        try:
            frame = _client_expanded(raw, read)
        except NotNumeric as exc:
            log.info("features JSON not all numbers (%s): Postgres expands it instead", exc)
            frame = _server_expanded(cur, raw, read)
    for col in ("scored_at", "labeled_at"):
        if col in frame:
            frame[col] = pd.to_datetime(frame[col].astype("int64"), unit="us", utc=True)
    if "label" in frame:
        frame["label"] = frame["label"].astype("int8")
    return frame


_IN_RANGE = "l.labeled_at >= %(earliest)s AND l.labeled_at <= %(latest)s"
# Labels of the window's predictions that the range leaves out (stored before it was enforced).
_OUT_OF_RANGE = sql.SQL(
    "SELECT count(*) FROM labels l WHERE NOT (" + _IN_RANGE + ") {} AND EXISTS (SELECT 1 FROM "
    "predictions p WHERE p.transaction_id = l.transaction_id AND " + _WINDOW + ")"
)


def labeled_predictions(
    bind: Engine | Connection,
    *,
    start: datetime,
    end: datetime,
    labels_known_by: datetime | None = None,
    bounds: TimestampBounds | None = None,
    columns: Sequence[str] | None = None,
    order: str = BY_EVENT_SCORED_ID,
) -> pd.DataFrame:
    """Labeled predictions scored in ``[start, end)``: the latest prediction per transaction,
    joined to its label (only labels with ``labeled_at <= labels_known_by`` when given, so a
    re-run of the same interval sees the same rows).

    Labels whose ``labeled_at`` is outside ``bounds`` (default: the default range; stored
    before the range was enforced, e.g. year 1600, which pandas cannot hold) are left out in
    SQL, logged as a warning and counted in ``frame.attrs["skipped_labels"]``.

    Columns: transaction_id, prediction_id, scored_at, event_time, score, is_fraud, threshold,
    risk_level, model_name, model_version, label, labeled_at, then one column per key of the
    features JSON (float64 if all its values are numbers, else object; keys that clash with
    these names are dropped; NaN/None where a row lacks a key); given ``columns``, only those
    of the names above (the features keys always). Sorted in Postgres by ``order``: event_time
    (missing last), scored_at, transaction_id; or :data:`BY_EVENT_ID`: event_time,
    transaction_id. ~8 s for 300k rows with 30 features on 2 cores.
    """
    bounds = bounds or TimestampBounds()
    known = sql.SQL("AND l.labeled_at <= %(known)s" if labels_known_by is not None else "")
    selection = sql.SQL(
        "SELECT DISTINCT ON (p.transaction_id) p.prediction_id FROM predictions p "
        "JOIN labels l ON l.transaction_id = p.transaction_id AND " + _IN_RANGE + " {} "
        "WHERE p.scored_at >= %(start)s AND p.scored_at < %(end)s "
        "ORDER BY p.transaction_id, p.scored_at DESC, p.prediction_id DESC"
    ).format(known)
    params = {"start": start, "end": end, "known": labels_known_by,
              "earliest": bounds.earliest, "latest": bounds.latest()}  # fmt: skip
    with begin(bind) as conn:
        with conn.connection.driver_connection.cursor() as cur:
            (skipped,) = cur.execute(_OUT_OF_RANGE.format(known), params).fetchone() or (0,)
        frame = _window_frame(conn, selection, params, labeled=True, order=order, columns=columns)
    if skipped:
        log.warning(
            "skipped %d label(s) with labeled_at outside %s (FRAUD_MIN_TIMESTAMP, "
            "FRAUD_MAX_CLOCK_SKEW_SECONDS) for predictions scored in [%s, %s); send them again "
            "with a correct labeled_at (POST /v1/labels or `fraud labels import`)",
            skipped, bounds.describe(), start.isoformat(), end.isoformat(),
        )  # fmt: skip
    frame.attrs["skipped_labels"] = int(skipped)
    return frame


def recent_predictions(
    bind: Engine | Connection, *, start: datetime, end: datetime, limit: int | None = None
) -> pd.DataFrame:
    """Predictions scored in ``[start, end)`` (the ``limit`` most recent if given), oldest
    first, with the columns of :func:`labeled_predictions` except label and labeled_at."""
    order = (
        "ORDER BY scored_at DESC, prediction_id DESC LIMIT %(limit)s" if limit is not None else ""
    )
    selection = sql.SQL(
        "SELECT prediction_id FROM predictions "
        f"WHERE scored_at >= %(start)s AND scored_at < %(end)s {order}"
    )
    params = {"start": start, "end": end, "limit": None if limit is None else int(limit)}
    with begin(bind) as conn:
        order = 'p.scored_at, p.prediction_id COLLATE "C"'
        return _window_frame(conn, selection, params, labeled=False, order=order)


def raw_history(
    bind: Engine | Connection,
    columns: Sequence[str],
    *,
    event_start: float,
    event_end: float,
    scored_before: datetime,
    labels_known_by: datetime,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, labels) for an offline feature rebuild: the logged raw fields ``columns`` (text,
    from the features JSON) of every transaction with ``event_time`` in ``[event_start,
    event_end]`` scored before ``scored_before`` (its latest prediction, as
    :func:`labeled_predictions`), and the labels of those transactions known by
    ``labels_known_by`` (``transaction_id, label, labeled_at`` in epoch seconds)."""
    select = ", ".join(f"p.features ->> '{c.replace(chr(39), chr(39) * 2)}'" for c in columns)
    events_sql = (
        f"SELECT DISTINCT ON (p.transaction_id) p.transaction_id, p.event_time, {select} "
        "FROM predictions p WHERE p.event_time >= %(t0)s AND p.event_time <= %(t1)s "
        "AND p.scored_at < %(end)s ORDER BY p.transaction_id, p.scored_at DESC, p.prediction_id DESC"
    )
    labels_sql = (
        "SELECT l.transaction_id, l.label, extract(epoch FROM l.labeled_at)::float8 FROM labels l "
        "WHERE l.labeled_at <= %(known)s AND EXISTS (SELECT 1 FROM predictions p WHERE "
        "p.transaction_id = l.transaction_id AND p.event_time >= %(t0)s AND p.event_time <= "
        "%(t1)s AND p.scored_at < %(end)s)"
    )
    params = {"t0": event_start, "t1": event_end, "end": scored_before, "known": labels_known_by}
    with begin(bind) as conn, conn.connection.driver_connection.cursor() as cur:
        cur.execute("SET LOCAL jit = off")
        events = cur.execute(events_sql, params).fetchall()
        labels = cur.execute(labels_sql, params).fetchall()
    return (
        pd.DataFrame(events, columns=["transaction_id", "event_time", *columns]),
        pd.DataFrame(labels, columns=["transaction_id", "label", "labeled_at"]),
    )
