"""Postgres engines, the schema migration and the writes of the tables in
:mod:`fraud_lib.tables`: predictions (the log), labels, model_events (decision history),
performance_cohorts (alert_log is written by :mod:`fraud_lib.monitoring.alerts`). Windows of
the log are read back by :mod:`fraud_lib.logged`.

SQLAlchemy 2 Core; every session runs with ``TimeZone=UTC``, so naive datetimes passed in are
read as UTC and timestamps come back timezone-aware in UTC. Bulk writes are idempotent and use
COPY: labels into a temporary table and one ``INSERT ... SELECT ... ON CONFLICT``; predictions
straight into their table, through the temporary table only when that hits a conflict (see
:func:`copy_predictions`). Pass prediction features as JSON text to skip json.dumps (most of
the client time for dicts).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.types.json import set_json_dumps
from sqlalchemy.engine import Connection, Engine

from fraud_lib import pgserver
from fraud_lib.errors import DatabaseError, DataError
from fraud_lib.input_rules import TimestampBounds, id_error, shown
from fraud_lib.redact import redact
from fraud_lib.tables import (
    MODEL_EVENTS,
    PREDICTION_COPY_TYPES,
    PREDICTION_FIELDS,
    labels,
    metadata,
    model_events_table,
    predictions,
)

log = logging.getLogger(__name__)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_dumps = partial(json.dumps, default=_json_default, allow_nan=False, separators=(",", ":"))


# ---------------------------------------------------------------------------- engines
_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


def _dispose_after_fork() -> None:
    # A forked child (gunicorn worker) must not reuse the parent's pooled connections.
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_dispose_after_fork)


def make_engine(url: str) -> Engine:
    """A pooled engine for ``url`` (cached per URL in this process), sessions in UTC."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = sa.create_engine(
                url,
                pool_pre_ping=True,
                json_serializer=_dumps,
                connect_args={"connect_timeout": 10, "options": "-c TimeZone=UTC"},
            )
            _engines[url] = engine
        return engine


_UNREACHABLE_SQLSTATES = ("08", "57P")  # connection exception; server shutting down/starting


@contextmanager
def _errors(bind: Engine | Connection) -> Iterator[None]:
    """Turn driver errors into DatabaseError (unreachable, other) or DataError (bad rows)."""
    try:
        yield
    except (sa.exc.DBAPIError, psycopg.Error) as exc:
        orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        url = redact(bind.engine.url.render_as_string(hide_password=False))
        text = redact(str(orig).strip())
        first = text.splitlines()[0] if text else type(orig).__name__
        if isinstance(orig, psycopg.IntegrityError | psycopg.DataError):
            raise DataError(f"the database rejected the rows: {first}") from exc
        sqlstate = getattr(orig, "sqlstate", None) or ""
        if (
            getattr(exc, "connection_invalidated", False)
            or (isinstance(orig, psycopg.OperationalError) and not sqlstate)
            or sqlstate.startswith(_UNREACHABLE_SQLSTATES)
        ):
            raise DatabaseError(
                f"cannot reach the database at {url} ({first}). Start the embedded server with "
                "`fraud db start`, or check FRAUD_DATABASE_URL"
            ) from exc
        raise DatabaseError(f"database error at {url} ({first})") from exc


@contextmanager
def begin(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection in a transaction: a new one committed on success for an Engine, or the
    caller's connection (whose transaction the caller owns)."""
    with _errors(bind):
        if isinstance(bind, Connection):
            yield bind
        else:
            with bind.begin() as conn:
                yield conn


def migrate(bind: Engine | Connection) -> None:
    """Create missing tables and indexes, bring older tables up to date (idempotent;
    serialised across processes)."""
    with begin(bind) as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7134001)"))
        metadata.create_all(conn, checkfirst=True)
        for index in (*predictions.indexes, *labels.indexes):  # added to older tables
            index.create(conn, checkfirst=True)
        kind = conn.execute(sa.text(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = 'predictions' AND column_name = 'features'"
        )).scalar()  # fmt: skip
        if kind == "jsonb":  # as databases made before 2026-11-23 have it: rewritten once
            log.info("converting predictions.features from jsonb to json (once)")
            conn.execute(sa.text(
                "ALTER TABLE predictions ALTER COLUMN features TYPE json USING features::json"
            ))  # fmt: skip


def connect_store(settings: Any) -> Engine:
    """Engine for ``settings`` (starting the embedded server if needed), migrated once per
    process."""
    url = pgserver.database_url(settings)
    engine = make_engine(url)
    if url not in _migrated:
        migrate(engine)
        _migrated.add(url)
        log.info("database ready at %s", redact(url))
    return engine


# ---------------------------------------------------------------------------- COPY helpers
def _json_text(text: str | bytes) -> str | bytes:
    """The "dumps" of json values in a COPY: they are JSON text already (str, or UTF-8 bytes,
    which psycopg sends as they are)."""
    return text


def _copy(conn: Connection, table: str, columns: Sequence[tuple[str, str]],
          rows: Iterable[Sequence[Any]]) -> int:  # fmt: skip
    """COPY ``rows`` into ``table`` (columns: (name, type)); rows copied.

    Binary format: psycopg formats a row ~5x faster than in text (a timestamptz alone costs
    ~2.4 us as text). Datetimes must carry a zone; json values are JSON text (str or UTF-8
    bytes), sent as is.
    """
    raw = conn.connection.driver_connection
    names = ", ".join(c for c, _ in columns)
    with raw.cursor() as cur:
        set_json_dumps(_json_text, cur)  # nothing is re-encoded
        with cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([t for _, t in columns])
            for row in rows:
                copy.write_row(row)
        return int(cur.rowcount)


def _copy_into_temp(conn: Connection, name: str, columns: Sequence[tuple[str, str]],
                    rows: Iterable[Sequence[Any]]) -> None:  # fmt: skip
    """(Re)fill temporary table ``name`` (columns: (name, type)) with ``rows`` via COPY."""
    cols = ", ".join(f"{c} {t}" for c, t in columns)
    conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({cols}) ON COMMIT DELETE ROWS")
    conn.exec_driver_sql(f"TRUNCATE {name}")
    _copy(conn, name, columns, rows)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_datetime(value: Any, what: str) -> datetime | None:
    """None, or a datetime or ISO-8601 string as a datetime with a zone (naive = UTC)."""
    import pandas as pd  # not at import: a scoring worker has no pandas (issue 17, memory)

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            raise DataError(f"{what}: {value!r} is not an ISO-8601 timestamp") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------- predictions
def _prediction_tuple(row: Mapping[str, Any]) -> tuple[Any, ...]:
    pid, tx, features, score = (row.get(k) for k in ("prediction_id", "transaction_id",
                                                      "features", "score"))  # fmt: skip
    if not pid or not tx or features is None or score is None:
        raise DataError(
            f"prediction {pid!r}: prediction_id, transaction_id, features and score are required",
            {"prediction_id": str(pid)},
        )
    if not isinstance(features, str):  # JSON text (e.g. straight from the spool) passes as is
        try:
            features = _dumps(features)
        except (TypeError, ValueError) as exc:
            raise DataError(f"prediction {pid!r}: features are not valid JSON: {exc}") from None
    score = float(score)
    if not math.isfinite(score):
        raise DataError(f"prediction {pid!r}: score must be finite, got {score}")
    is_fraud, version = row.get("is_fraud"), row.get("model_version")
    return (
        str(pid), str(tx), _opt_datetime(row.get("scored_at"), f"prediction {pid!r} scored_at"),
        _opt_float(row.get("event_time")), features, score,
        None if is_fraud is None else bool(is_fraud), _opt_float(row.get("threshold")),
        row.get("risk_level"), row.get("model_name"), None if version is None else str(version),
        row.get("request_id"),
    )  # fmt: skip


def insert_predictions(bind: Engine | Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert prediction rows, skipping prediction_ids already stored; return how many were new.

    Each row has the keys of :data:`PREDICTION_FIELDS` (prediction_id, transaction_id,
    features and score are required; ``features`` is a dict or its JSON text). A row that
    cannot be stored raises :class:`DataError` before anything is written.
    """
    if not rows:
        return 0
    return copy_predictions(bind, [_prediction_tuple(r) for r in rows])


def copy_predictions(bind: Engine | Connection, tuples: Sequence[tuple[Any, ...]]) -> int:
    """Insert rows that are already tuples in :data:`PREDICTION_FIELDS` order with their
    types (scored_at a datetime with a zone or None, features JSON text, str or UTF-8 bytes),
    as the spool reader makes them; skip prediction_ids already stored; return how many were
    new.

    The rows are COPYed straight into predictions (~1.4x the rows/s of the fallback, which
    the server spends on the temporary table). If that breaks a constraint (an id already
    stored, as when a spool is replayed; a missing scored_at), it is rolled back to a
    savepoint and the rows go through a temporary table and ``INSERT ... ON CONFLICT``.
    Postgres refusing a row raises :class:`DataError`.
    """
    if not tuples:
        return 0
    with begin(bind) as conn:
        try:
            with conn.begin_nested():
                return _copy(conn, "predictions", PREDICTION_COPY_TYPES, tuples)
        except psycopg.IntegrityError:
            pass
        names = ", ".join(PREDICTION_FIELDS)
        select = names.replace("scored_at", "COALESCE(scored_at, now())")
        _copy_into_temp(conn, "_predictions_in", PREDICTION_COPY_TYPES, tuples)
        result = conn.exec_driver_sql(
            f"INSERT INTO predictions ({names}) SELECT {select} FROM _predictions_in "
            "ON CONFLICT (prediction_id) DO NOTHING"
        )
        return int(result.rowcount)


def prediction_count(bind: Engine | Connection) -> int:
    with begin(bind) as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one())


def count_predictions_by_ids(bind: Engine | Connection, ids: Iterable[str]) -> int:
    """How many of ``ids`` (prediction ids) are stored; any number of ids (one array
    parameter: an IN list stops at Postgres' 65,535 parameters)."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    if not ids:
        return 0
    with begin(bind) as conn:
        query = sa.text("SELECT count(*) FROM predictions WHERE prediction_id = ANY(:ids)")
        return int(conn.execute(query, {"ids": ids}).scalar_one())


# ---------------------------------------------------------------------------- labels
def _clean_label(tx: str, value: Any) -> int:
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if isinstance(value, bool | int | float) and value in (0, 1):
        return int(value)
    raise DataError(
        f"transaction {tx!r}: label must be 0 or 1, got {value!r}", {"transaction_id": tx}
    )


def _label_tuple(
    row: Mapping[str, Any], bounds: TimestampBounds, latest: datetime
) -> tuple[Any, ...]:
    """(transaction_id, label, labeled_at or None, source) of a label row, checked against the
    id and timestamp rules of :mod:`fraud_lib.input_rules` (``latest``: the range's end)."""
    import pandas as pd  # not at import: a scoring worker has no pandas (issue 17, memory)

    tx = row.get("transaction_id")
    if tx is None or tx == "":
        raise DataError("every label needs a transaction_id")
    if err := id_error(tx):
        raise DataError(f"label transaction_id {shown(tx)} {err}")
    tx = str(tx)
    labeled_at = row.get("labeled_at")
    if type(labeled_at) in (datetime, str) or not (labeled_at is None or pd.isna(labeled_at)):
        try:
            labeled_at = bounds.parse(labeled_at, "labeled_at", latest=latest)
        except DataError as exc:
            raise DataError(f"transaction {tx!r}: {exc}", {"transaction_id": tx}) from None
    else:
        labeled_at = None
    return tx, _clean_label(tx, row.get("label")), labeled_at, row.get("source") or "api"


def upsert_labels(
    bind: Engine | Connection,
    rows: Sequence[Mapping[str, Any]],
    *,
    bounds: TimestampBounds | None = None,
) -> dict[str, Any]:
    """Store labels ``{transaction_id, label, labeled_at?, source?}``.

    A new transaction id is inserted; a changed label is updated (with the new labeled_at and
    source); the same label again changes nothing, so the original labeled_at is kept and
    re-imports are idempotent. Labels for transactions without a prediction are stored too
    (they may arrive before the prediction log drains) and listed in ``unknown_ids``.
    Returns ``{"inserted", "updated", "unchanged", "unknown_ids"}``. Within one call the last
    row for a transaction id wins; a label stored with a ``labeled_at`` outside ``bounds``
    (before the range was enforced) is replaced. An id or a ``labeled_at`` that breaks the
    rules of :mod:`fraud_lib.input_rules` (``bounds``: the default range when not given; pass
    ``settings.timestamp_bounds``) raises :class:`DataError` before anything is written.
    """
    bounds = bounds or TimestampBounds()
    end = bounds.latest()
    latest: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        label = _label_tuple(row, bounds, end)
        latest[label[0]] = label
    if not latest:
        return {"inserted": 0, "updated": 0, "unchanged": 0, "unknown_ids": []}
    types = (("transaction_id", "text"), ("label", "int2"), ("labeled_at", "timestamptz"),
             ("source", "text"))  # fmt: skip
    with begin(bind) as conn:
        _copy_into_temp(conn, "_labels_in", types, latest.values())
        written = conn.exec_driver_sql(
            "INSERT INTO labels AS l (transaction_id, label, labeled_at, source) "
            "SELECT transaction_id, label, COALESCE(labeled_at, now()), source FROM _labels_in "
            "ON CONFLICT (transaction_id) DO UPDATE SET label = excluded.label, "
            "labeled_at = excluded.labeled_at, source = excluded.source, updated_at = now() "
            "WHERE l.label IS DISTINCT FROM excluded.label "
            # a labeled_at stored before the range was enforced is replaced by a valid one
            "OR NOT (l.labeled_at >= %(earliest)s AND l.labeled_at <= %(latest)s) "
            "RETURNING (xmax = 0) AS inserted",
            {"earliest": bounds.earliest, "latest": end},
        ).scalars().all()  # fmt: skip
        unknown = conn.exec_driver_sql(
            "SELECT i.transaction_id FROM _labels_in i WHERE NOT EXISTS "
            "(SELECT 1 FROM predictions p WHERE p.transaction_id = i.transaction_id) "
            "ORDER BY 1"
        ).scalars().all()  # fmt: skip
    inserted = sum(bool(x) for x in written)
    updated = len(written) - inserted
    return {"inserted": inserted, "updated": updated,
            "unchanged": len(latest) - len(written), "unknown_ids": list(unknown)}  # fmt: skip


# ---------------------------------------------------------------------------- model events
def record_model_event(bind: Engine | Connection, **fields: Any) -> int:
    """Append a row to model_events (model_name and event required); return its id."""
    allowed = {c.name for c in model_events_table.columns} - {"id"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(
            f"record_model_event: unknown field(s) {unknown}; allowed {sorted(allowed)}"
        )
    if not fields.get("model_name"):
        raise DataError("record_model_event: model_name is required")
    if not re.fullmatch(r"[a-z][a-z_]*", str(fields.get("event") or "")):
        raise DataError(f"record_model_event: event must be a lowercase word such as "
                        f"{', '.join(MODEL_EVENTS)}; got {fields.get('event')!r}")  # fmt: skip
    for key in ("version", "previous_version"):
        if fields.get(key) is not None:
            fields[key] = str(fields[key])
    with begin(bind) as conn:
        stmt = model_events_table.insert().values(**fields).returning(model_events_table.c.id)
        return int(conn.execute(stmt).scalar_one())


def model_events(
    bind: Engine | Connection,
    model_name: str | None = None,
    limit: int = 100,
    *,
    run_id: str | None = None,
    version: str | None = None,
) -> list[dict[str, Any]]:
    """Decision history, newest first (optionally for one model, run id and version)."""
    t = model_events_table
    query = sa.select(t).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
    for column, value in ((t.c.model_name, model_name), (t.c.run_id, run_id),
                          (t.c.version, version)):  # fmt: skip
        if value is not None:
            query = query.where(column == value)
    with begin(bind) as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
