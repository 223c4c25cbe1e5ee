"""Typed decoding of a clean batch for a numeric-only schema: decoding and validation in one
msgspec pass.

A body ``{"transactions": [...]}`` is decoded straight into one Struct per transaction: a
float field per feature (a JSON integer becomes its float; a bool, string, null or a number
beyond float range is refused), ``transaction_id`` (string), ``event_time`` and the time
column (numbers), the label and id columns (any value, ignored) optional, any other key
refused. On a 10,000-transaction batch that is ~2x faster than the generic decode followed by
the type scan of :func:`serving.validation.validate_transactions`.

It accepts only what that generic path accepts, with the same values: whatever msgspec
refuses, and a batch that is empty, too large, or has an empty, too long, NUL-holding or
duplicate transaction id, gives ``None``, and the caller takes the generic path, which
answers the field-level 400 (or the 413) naming each problem.
"""

from __future__ import annotations

import functools
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np

from fraud_lib.schema import FeatureSchema
from serving.validation import Transactions, clean_ids

BATCH_KEY = "transactions"


class _TypedBatch(NamedTuple):
    decoder: msgspec.json.Decoder
    width: int  # the features: a record's first ``width`` fields, in schema order
    transaction_id: attrgetter
    event_time: attrgetter
    time: attrgetter


@functools.lru_cache(maxsize=16)
def _typed_batch(schema: FeatureSchema) -> _TypedBatch | None:
    """The decoder of a batch for ``schema``, or None when this path does not apply: a
    categorical column, a feature or the time column named like another optional field, or a
    column name msgspec refuses (quotes, backslashes, control characters)."""
    if schema.categorical or schema.time in ("transaction_id", "event_time"):
        return None
    optional = {"transaction_id": str | None, "event_time": float | None, schema.time: float | None}
    for ignored in (schema.label, schema.id):  # any value; a name with another role keeps it
        if ignored:
            optional.setdefault(ignored, Any)
    if optional.keys() & set(schema.features):
        return None
    names = [*schema.features, *optional]
    attrs = [f"f{i}" for i in range(len(names))]
    width = len(schema.features)
    fields: list[Any] = [(a, float) for a in attrs[:width]]
    fields += [(a, kind, None) for a, kind in zip(attrs[width:], optional.values(), strict=True)]
    try:
        record = msgspec.defstruct("TypedTransaction", fields, rename=dict(zip(attrs, names, strict=True)),
                                   forbid_unknown_fields=True, gc=False)  # fmt: skip
    except ValueError:
        return None
    batch = msgspec.defstruct(
        "TypedBatch",
        [(BATCH_KEY, list[record])],  # type: ignore[valid-type]
        forbid_unknown_fields=True,
    )
    attr = dict(zip(names, attrs, strict=True))
    return _TypedBatch(
        decoder=msgspec.json.Decoder(batch),
        width=width,
        transaction_id=attrgetter(attr["transaction_id"]),
        event_time=attrgetter(attr["event_time"]),
        time=attrgetter(attr[schema.time]),
    )


def decode_batch(body: bytes, schema: FeatureSchema, max_batch: int) -> Transactions | None:
    """The validated batch in ``body``, or None: take the generic path (module docstring)."""
    typed = _typed_batch(schema)
    if typed is None:
        return None
    try:
        records = getattr(typed.decoder.decode(body), BATCH_KEY)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # msgspec.ValidationError
        return None  # is a DecodeError; bad UTF-8 in a string raises UnicodeDecodeError
    if not 0 < len(records) <= max_batch:
        return None
    ids = list(map(typed.transaction_id, records))
    if not clean_ids(ids):
        return None
    events = list(map(typed.event_time, records))
    if None in events:  # event_time, when given, wins over the time column
        times = map(typed.time, records)
        events = [t if e is None else e for e, t in zip(events, times, strict=True)]
    n, width = len(records), typed.width
    # one pass over the records' feature values: astuple reads a Struct's slots directly
    # (10,000 x 29 features: 8 ms, 13 ms with an attrgetter of the 29 names)
    values = map(itemgetter(slice(0, width)), map(msgspec.structs.astuple, records))
    X = np.fromiter(chain.from_iterable(values), np.float64, n * width)
    return Transactions(batch=True, ids=ids, event_times=events, X=X.reshape(n, width),
                        decoded=records)  # fmt: skip
