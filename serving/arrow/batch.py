"""An Arrow batch checked with the JSON batch's rules, into the float64 matrix the model takes.

The rules of :func:`serving.validation.validate_transactions`, in Arrow's terms: every model
feature a float64 column without nulls, NaN or infinities; ``transaction_id`` (optional) a
string column, each id 1 to 200 characters, without NUL, unique in the batch (null: one is
generated); ``event_time`` and the time column (optional) float64, finite where not null
(``event_time`` wins); the label and id columns accepted and ignored; any other column, a
duplicate name or a dictionary-encoded column refused. Column problems are reported under the
column's name (``{"V7": "missing"}``), value problems under the row's, as for JSON
(``{"transactions[3].V4": "must be a finite number"}``). Only numeric-only models take Arrow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fraud_lib.input_rules import id_error
from fraud_lib.schema import FeatureSchema
from serving.arrow.stream import ARROW_STREAM, read_stream
from serving.validation import (
    MAX_FIELD_ERRORS,
    ApiError,
    Transactions,
    bad_fields,
    clean_ids,
    optional_fields,
)

FLOAT64 = pa.float64()
STRINGS = (pa.string(), pa.large_string())
NOT_FINITE = "must be a finite number (NaN and Infinity are not allowed)"
TYPE_NAMES = {FLOAT64: "float64", pa.string(): "utf8", pa.large_string(): "large_utf8",
              pa.bool_(): "bool"}  # fmt: skip  # as the Arrow format names them


@dataclass(frozen=True)
class ColumnRule:
    """What a column of an Arrow batch may be (``types`` None: any type)."""

    types: tuple[pa.DataType, ...] | None
    nulls: bool
    required: bool
    description: str

    @property
    def type_names(self) -> list[str]:
        """The accepted types as the Arrow format names them (``float64``, ``utf8``)."""
        return ["any"] if self.types is None else [TYPE_NAMES[t] for t in self.types]


_KINDS = {
    "id": ColumnRule(STRINGS, True, False, "unique within the batch; null: one is generated"),
    "time": ColumnRule((FLOAT64,), True, False,
                       "event time in seconds (event_time wins over the time column)"),
    "ignored": ColumnRule(None, True, False, "accepted and ignored (the label and id columns)"),
}  # fmt: skip


@functools.lru_cache(maxsize=16)
def column_rules(schema: FeatureSchema) -> dict[str, ColumnRule]:
    """The columns an Arrow batch for ``schema`` may hold, features first."""
    feature = ColumnRule((FLOAT64,), False, True, "a model feature; a finite number")
    rules = dict.fromkeys(schema.features, feature)
    for name, kind in optional_fields(schema).items():
        rules[name] = _KINDS[kind]
    return rules


def _check_schema(arrow_schema: pa.Schema, rules: dict[str, ColumnRule]) -> None:
    """400 naming every missing, unknown, duplicated or wrongly typed column."""
    errors: dict[str, str] = {}
    seen: set[str] = set()
    for field in arrow_schema:
        name, rule = field.name, rules.get(field.name)
        if name in seen:
            errors[name] = "duplicate column"
        elif rule is None:
            errors[name] = "unknown column; check the spelling against GET /v1/model"
        elif pa.types.is_dictionary(field.type):
            errors[name] = "must not be dictionary-encoded (decode it first)"
        elif rule.types is not None and field.type not in rule.types:
            errors[name] = f"must be {' or '.join(rule.type_names)}, got {field.type}"
        seen.add(name)
    for name, rule in rules.items():
        if rule.required and name not in seen:
            errors[name] = "missing"
    if errors:
        raise bad_fields(errors, "the Arrow schema")


def _feature_matrix(
    batch: pa.RecordBatch, features: tuple[str, ...]
) -> tuple[np.ndarray, list, int]:
    """The features as a row-major float64 matrix (one copy, in Arrow's C++), the
    ``(row, column, message)`` of the first :data:`MAX_FIELD_ERRORS` null or non-finite
    values, and how many there are."""
    X = np.asarray(batch.select(list(features)).to_tensor(null_to_nan=True, row_major=True))
    bad_rows, bad_cols = np.nonzero(~np.isfinite(X))  # row by row, as the errors are listed
    problems = []
    for row, col in zip(bad_rows[:MAX_FIELD_ERRORS].tolist(), bad_cols[:MAX_FIELD_ERRORS].tolist(),
                        strict=True):  # fmt: skip
        null = not batch.column(features[col])[row].is_valid
        problems.append((row, col, "must be a number, got null" if null else NOT_FINITE))
    return X, problems, len(bad_rows)


def _ids(batch: pa.RecordBatch, col: int) -> tuple[list[str | None], list]:
    """The transaction ids (None: generate one), and the problems of those that cannot be."""
    if col < 0 or "transaction_id" not in batch.schema.names:  # col < 0: a model feature
        return [None] * batch.num_rows, []
    ids = batch.column("transaction_id").to_pylist()
    if clean_ids(ids):
        return ids, []
    problems, first_seen = [], {}
    for row, tx in enumerate(ids):
        if tx is None:
            continue
        if err := id_error(tx):
            problems.append((row, col, err))
        elif tx in first_seen:
            msg = f"duplicate of transactions[{first_seen[tx]}].transaction_id {tx!r}"
            problems.append((row, col, msg))
        first_seen.setdefault(tx, row)
    return ids, problems


def _event_times(batch: pa.RecordBatch, keys: dict[str, int]) -> tuple[list, list]:
    """Each row's event time (``event_time`` where not null, else the time column, else
    None) and the ``(row, column, message)`` of each non-finite one."""
    times, given = np.full(batch.num_rows, np.nan), np.zeros(batch.num_rows, dtype=bool)
    problems = []
    for key, col in keys.items():  # the time column, then event_time: it wins
        if key not in batch.schema.names:
            continue
        column = batch.column(key)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        values = column.to_numpy(zero_copy_only=False)
        problems += [(row, col, NOT_FINITE)
                     for row in np.flatnonzero(valid & ~np.isfinite(values)).tolist()]  # fmt: skip
        times[valid] = values[valid]
        given |= valid
    if not given.any():
        return [None] * batch.num_rows, problems
    return [t if g else None for t, g in zip(times.tolist(), given.tolist(), strict=True)], problems


def decode_arrow(body: bytes, schema: FeatureSchema, max_batch: int) -> Transactions:
    """The validated batch of the Arrow IPC stream ``body`` for a model with ``schema``;
    :class:`ApiError` (400, 413, 415) otherwise."""
    if schema.categorical:
        raise ApiError(415, "unsupported_media_type",
                       f"this model has categorical columns; {ARROW_STREAM} bodies are taken "
                       "for numeric-only models: send the batch as JSON")  # fmt: skip
    rules = column_rules(schema)
    batches = read_stream(body, max_batch, lambda s: _check_schema(s, rules))
    if not sum(b.num_rows for b in batches):
        raise ApiError(400, "invalid_input", "the stream holds no rows; send at least one",
                       {"transactions": "must hold at least one row"})  # fmt: skip
    batch = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    order = {name: i for i, name in enumerate(rules)}
    X, problems, total = _feature_matrix(batch, schema.features)
    ids, id_problems = _ids(batch, order.get("transaction_id", -1))
    time_keys = {k: order[k] for k in (schema.time, "event_time") if k in order}
    events, time_problems = _event_times(batch, time_keys)
    problems += id_problems + time_problems
    if problems:
        names = list(rules)
        first = sorted(problems)[:MAX_FIELD_ERRORS]
        errors = {f"transactions[{row}].{names[col]}": msg for row, col, msg in first}
        total += len(id_problems) + len(time_problems)
        raise bad_fields(errors, "the batch", total=total)
    return Transactions(batch=True, ids=ids, event_times=events, X=X)
