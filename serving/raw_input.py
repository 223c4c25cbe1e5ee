"""Validation of raw transactions for /v1/score with a behavioral champion (one transaction or
``{"transactions": [...]}``), with the error model of :mod:`serving.validation`.

A raw transaction carries the schema's raw columns (``schema.raw()``: time, numeric and
categorical inputs) plus the entity keys of its ``behavior:`` block and optionally
``transaction_id``. Rules (every problem is a 400 naming the field):

* the time column is required: epoch seconds or ISO 8601 text, inside the range of
  :class:`fraud_lib.input_rules.TimestampBounds` (``FRAUD_MIN_TIMESTAMP``,
  ``FRAUD_MAX_CLOCK_SKEW_SECONDS``), the rule the labels follow;
* each entity key is required: a string or an integer (compared as text, like offline);
* numeric inputs are finite numbers (an integer beyond the float range is not), categorical
  ones strings (or null);
* other fields are refused (the label column is ignored); transaction ids are unique in a batch.

A batch of :data:`COLUMN_CHECK_ROWS` or more is first checked column by column (numpy over each
field's values): the check accepts only batches the record-by-record one accepts unchanged, so
a clean batch skips the per-record work (10,000 records: 27 -> 10 ms) and any other one goes
through the record-by-record check, which names every problem.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fraud_lib.input_rules import MAX_ID_LENGTH, TimestampBounds, id_error
from fraud_lib.schema import FeatureSchema
from serving.validation import ApiError, Transactions, finite_number, list_payload

COLUMN_CHECK_ROWS = 16  # batches from this size are checked column by column first
_NUMBER_TYPES = frozenset({int, float})


def validate_raw(payload: Any, schema: FeatureSchema, max_batch: int,
                 bounds: TimestampBounds) -> tuple[Transactions, np.ndarray]:  # fmt: skip
    """One raw transaction or ``{"transactions": [...]}``; the records and epoch times."""
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_input", 'send one raw transaction as a JSON object, or a '
                       'batch as {"transactions": [...]}')  # fmt: skip
    batch = "transactions" in payload
    items = list_payload(payload, "transactions", max_batch, "transactions") if batch else [payload]
    latest = bounds.latest()
    span = (bounds.earliest.timestamp(), latest.timestamp())
    clean = _clean_columns(schema, items, span) if len(items) >= COLUMN_CHECK_ROWS else None
    if clean is None:
        records, ids, times = _check_records(schema, items, batch, bounds, latest, span)
    else:
        records, ids, times = clean
    out = Transactions(batch=batch, ids=ids, event_times=times, records=records)
    return out, np.asarray(times, dtype=np.float64)


def _fields(schema: FeatureSchema) -> tuple[list[str], set[str | None]]:
    """The columns of a clean raw record (in order) and the fields a raw transaction may carry."""
    spec = schema.behavior
    cols = [spec.time, *(c for _, c in spec.entities), *spec.numeric, *spec.categorical]
    cols = list(dict.fromkeys(cols))
    return cols, {*cols, "transaction_id", schema.label, *([spec.id] if spec.id else [])}


def _check_records(schema: FeatureSchema, items: list, batch: bool, bounds: TimestampBounds,
                   latest: datetime, span: tuple[float, float]
                   ) -> tuple[list[dict[str, Any]], list[str | None], list[float]]:  # fmt: skip
    """Clean records, ids and epoch times of ``items``, record by record; an
    :class:`ApiError` naming every problem."""
    errors: dict[str, str] = {}
    records, ids, times, seen = [], [], [], {}
    allowed = _fields(schema)[1]
    for i, rec in enumerate(items):
        clean, t, rec_errors = _check_record(schema, rec, allowed, bounds, latest, span)
        tx = rec.get("transaction_id", rec.get(schema.id)) if isinstance(rec, dict) else None
        if tx is not None and (err := id_error(tx)):
            rec_errors["transaction_id"], tx = err, None
        if tx is not None and str(tx) in seen:
            rec_errors["transaction_id"] = f"duplicate of transactions[{seen[str(tx)]}]"
        if tx is not None:
            seen.setdefault(str(tx), i)
        prefix = f"transactions[{i}]" if batch else ""
        for field, msg in rec_errors.items():
            errors[".".join(p for p in (prefix, field) if p) or "body"] = msg
        records.append(clean)
        ids.append(None if tx is None else str(tx))
        times.append(t)
    if errors:
        first = next(iter(errors.items()))
        raise ApiError(400, "invalid_input",
                       f"the raw transaction is not valid: {first[0]}: {first[1]}", errors)  # fmt: skip
    return records, ids, times


def _epoch(value: Any, name: str, bounds: TimestampBounds, latest: datetime,
           span: tuple[float, float]) -> float | str:  # fmt: skip
    """Epoch seconds of a raw timestamp, or why it is refused (``span``: the accepted range
    as epoch seconds, ``bounds`` with ``latest``)."""
    if isinstance(value, bool) or value is None:
        return "required: epoch seconds or an ISO-8601 timestamp"
    if isinstance(value, int | float):
        if type(value) is float and span[0] <= value <= span[1]:
            return value  # inside the range (the exact checks below say the same, slower)
        if not finite_number(value):
            return "must be a finite number of epoch seconds"
        try:
            ts = datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return "is out of range"
        err = bounds.error(ts, name, latest=latest)
        return err if err else float(value)
    try:
        return bounds.parse(value, name, latest=latest).timestamp()
    except Exception as exc:  # DataError from the shared rule: its message names the field
        return str(exc)


def _check_record(schema: FeatureSchema, rec: Any, allowed: set[str | None],
                  bounds: TimestampBounds, latest: datetime, span: tuple[float, float]
                  ) -> tuple[dict[str, Any], float, dict[str, str]]:  # fmt: skip
    """A clean raw record, its epoch time and the problems per field (``allowed``: the fields
    of :func:`_fields`)."""
    spec = schema.behavior
    if not isinstance(rec, dict):
        return {}, math.nan, {"": "must be a JSON object (one raw transaction)"}
    errors: dict[str, str] = {}
    t = _epoch(rec.get(spec.time), spec.time, bounds, latest, span)
    if isinstance(t, str):
        errors[spec.time], t = t, math.nan
    clean: dict[str, Any] = {spec.time: rec.get(spec.time)}
    for _, col in spec.entities:
        value = rec.get(col)
        if value is None:
            errors[col] = "required: the entity key (a string or an integer)"
        elif err := id_error(value):
            errors[col] = err
        clean[col] = value
    for col in spec.numeric:
        value = rec.get(col)
        if not finite_number(value):
            errors[col] = "required: a finite number"
        clean[col] = value
    for col in spec.categorical:
        value = rec.get(col)
        if value is not None and not isinstance(value, str):
            errors[col] = "must be a string or null"
        clean[col] = value
    for key in rec:
        if key not in allowed:
            errors[str(key)] = "unknown field; a raw transaction carries " + ", ".join(clean)
    return clean, t, errors


def _clean_columns(schema: FeatureSchema, items: list, span: tuple[float, float]
                   ) -> tuple[list[dict[str, Any]], list[str | None], list[float]] | None:  # fmt: skip
    """What :func:`_check_records` returns for ``items``, when a column-wise check finds every
    record clean in a way it accepts unchanged: JSON objects without unknown fields, int or
    float epochs inside ``span``, entity keys and ids that are ASCII strings of 1 to
    :data:`~fraud_lib.input_rules.MAX_ID_LENGTH` characters without NUL (ids unique), finite
    numbers, string or null categories. None when any record needs the per-record check."""
    spec = schema.behavior
    if not all(type(rec) is dict for rec in items):
        return None
    cols, allowed = _fields(schema)
    if not allowed.issuperset(set().union(*items)):  # the keys of every record
        return None
    times = _finite_column([rec.get(spec.time) for rec in items])
    if times is None or not ((times >= span[0]) & (times <= span[1])).all():
        return None
    if not all(_plain_ids([rec.get(col) for rec in items]) for _, col in spec.entities):
        return None
    if any(_finite_column([rec.get(col) for rec in items]) is None for col in spec.numeric):
        return None
    for col in spec.categorical:
        if not all(v is None or type(v) is str for v in (rec.get(col) for rec in items)):
            return None
    ids = [rec.get("transaction_id", rec.get(schema.id)) for rec in items]
    given = [tx for tx in ids if tx is not None]
    if not _plain_ids(given) or len(set(given)) != len(given):
        return None
    records = [{c: rec.get(c) for c in cols} for rec in items]
    return records, ids, times.tolist()


def _finite_column(values: list) -> np.ndarray | None:
    """``values`` as float64 when every one is an int or a float that is finite as a float."""
    if not _NUMBER_TYPES.issuperset(map(type, values)):  # a bool or a None is neither
        return None
    try:
        arr = np.array(values, dtype=np.float64)
    except OverflowError:  # an integer beyond the float range
        return None
    return arr if np.isfinite(arr).all() else None


def _plain_ids(values: list) -> bool:
    """True when every value is a str that :func:`~fraud_lib.input_rules.id_error` accepts
    and is ASCII (other text and integers take the per-record check)."""
    if not values:
        return True
    if set(map(type, values)) != {str}:
        return False
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    if not 0 < lengths.min() <= lengths.max() <= MAX_ID_LENGTH:
        return False
    joined = "".join(values)
    return joined.isascii() and "\x00" not in joined


def raw_transaction_schema(schema: FeatureSchema) -> dict[str, Any]:
    """The JSON Schema of one raw transaction (OpenAPI, behavioral champions)."""
    spec = schema.behavior
    number = {"type": "number", "description": "a raw numeric input; a finite number"}
    key = {"type": ["string", "integer"], "description": "an entity key (compared as text)"}
    props: dict[str, Any] = {
        spec.time: {"type": ["number", "string"], "description": "event time: epoch seconds or "
                    "ISO 8601, within FRAUD_MIN_TIMESTAMP .. now + FRAUD_MAX_CLOCK_SKEW_SECONDS"},
        **{col: key for _, col in spec.entities},
        **dict.fromkeys(spec.numeric, number),
        **{c: {"type": ["string", "null"]} for c in spec.categorical},
        "transaction_id": {"type": ["string", "integer", "null"],
                           "description": "unique within a batch; generated when absent"},
    }  # fmt: skip
    if schema.label:
        props[schema.label] = {"description": "accepted and ignored"}
    required = [spec.time, *(c for _, c in spec.entities), *spec.numeric]
    return {
        "type": "object",
        "description": "One raw transaction; the model's features are computed from the "
        "entities' history (README, Behavioral features).",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def raw_example(schema: FeatureSchema) -> dict[str, Any]:
    """An example raw transaction for the OpenAPI document."""
    spec = schema.behavior
    row: dict[str, Any] = {"transaction_id": "t-1", spec.time: "2024-05-01T12:00:00Z"}
    row.update({col: f"{name}-1" for name, col in spec.entities})
    row.update(dict.fromkeys(spec.numeric, 12.5))
    row.update(dict.fromkeys(spec.categorical, "a"))
    return row
