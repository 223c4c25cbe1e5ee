"""Typed decoding of a clean batch for a numeric-only schema: decoding and validation in one
msgspec pass.

A body ``{"transactions": [...]}`` is decoded straight into one Struct per transaction (a
body of one transaction into one such Struct): a
float field per feature (a JSON integer becomes its float; a bool, string, null or a number
beyond float range is refused), ``transaction_id`` (string), ``event_time`` and the time
column (numbers), the label and id columns (any value, ignored) optional, any other key
refused. On a 10,000-transaction batch that is ~2x faster than the generic decode followed by
the type scan of :func:`serving.validation.validate_transactions`.

It accepts only what that generic path accepts, with the same values: whatever msgspec
refuses, and a batch that is empty, too large, or has an empty, too long, NUL-holding or
duplicate transaction id, gives ``None``, and the caller takes the generic path, which
answers the field-level 400 (or the 413) naming each problem. So does a body whose ``"`` the
decoded batch does not account for (:mod:`fraud_lib.unique_keys`): a Struct keeps one value
of a repeated key, and the generic path names the repeat. An optional field that is absent
decodes as ``UNSET`` (not None) so that an explicit ``null`` is counted as the key it is.
"""

from __future__ import annotations

import functools
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np

from fraud_lib.schema import FeatureSchema
from fraud_lib.unique_keys import body_quotes, implied_quotes
from serving._struct_fields import FloatFields
from serving.validation import Transactions, clean_ids

BATCH_KEY = "transactions"
UNSET = msgspec.UNSET
_BATCH_KEY_BYTES = f'"{BATCH_KEY}"'.encode()


class _TypedBatch(NamedTuple):
    decoder: msgspec.json.Decoder
    single: msgspec.json.Decoder | None  # one transaction (None: a feature named like the key)
    features: FloatFields  # the features: a record's first fields, in schema order
    transaction_id: attrgetter
    event_time: attrgetter
    time: attrgetter
    ignored: tuple[attrgetter, ...]  # the label and id columns


@functools.lru_cache(maxsize=16)
def _typed_batch(schema: FeatureSchema) -> _TypedBatch | None:
    """The decoder of a batch for ``schema``, or None when this path does not apply: a
    categorical column, a feature or the time column named like another optional field, or a
    column name msgspec refuses (quotes, backslashes, control characters)."""
    if schema.categorical or schema.time in ("transaction_id", "event_time"):
        return None
    unset = msgspec.UnsetType
    optional = {"transaction_id": str | None | unset, "event_time": float | None | unset,
                schema.time: float | None | unset}  # fmt: skip
    for ignored in (schema.label, schema.id):  # any value; a name with another role keeps it
        if ignored:
            optional.setdefault(ignored, Any)
    if optional.keys() & set(schema.features):
        return None
    names = [*schema.features, *optional]
    attrs = [f"f{i}" for i in range(len(names))]
    width = len(schema.features)
    fields: list[Any] = [(a, float) for a in attrs[:width]]
    fields += [(a, kind, UNSET) for a, kind in zip(attrs[width:], optional.values(), strict=True)]
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
        single=msgspec.json.Decoder(record) if BATCH_KEY not in names else None,
        features=FloatFields(record, attrs[:width]),
        transaction_id=attrgetter(attr["transaction_id"]),
        event_time=attrgetter(attr["event_time"]),
        time=attrgetter(attr[schema.time]),
        ignored=tuple(attrgetter(attr[name]) for name in names[width + 3 :]),
    )


def _present(values: list[Any]) -> int:
    """How many of one optional field's values were in the body (``null`` included)."""
    return len(values) - values.count(UNSET)


def _unset_as_none(values: list[Any]) -> list[Any]:
    return [None if v is UNSET else v for v in values] if UNSET in values else values


def _accounted(body: bytes, typed: _TypedBatch, records: list[Any], ids: list[Any],
               events: list[Any], times: list[Any], batch: bool) -> bool:  # fmt: skip
    """True when the decoded batch accounts for every ``"`` of ``body`` (no key was lost)."""
    n = len(records)
    strings = n - ids.count(UNSET) - ids.count(None)  # the ids given as strings
    inner = "".join(filter(None, ids)).count('"')  # UNSET, None and "" are falsy
    width = typed.features.width
    implied = 2 * batch + 2 * n * width + 2 * strings + inner  # "transactions", features
    implied += 2 * (_present(ids) + _present(events) + _present(times))  # their keys
    for getter in typed.ignored:
        values = list(map(getter, records))
        if (present := _present(values)) != 0:
            implied += 2 * present + implied_quotes(v for v in values if v is not UNSET)
    return body_quotes(body) == implied


def _decode(body: bytes, typed: _TypedBatch) -> tuple[list[Any], bool] | None:
    """The decoded records and whether ``body`` is a batch; None if msgspec refuses it. A body
    without the batch key's bytes is tried as one transaction (an escaped key is refused as
    an unknown field, so the generic path decides)."""
    try:
        if typed.single is not None and _BATCH_KEY_BYTES not in body:
            return [typed.single.decode(body)], False
        return getattr(typed.decoder.decode(body), BATCH_KEY), True
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):  # msgspec.ValidationError
        return None  # is a DecodeError; bad UTF-8 in a string raises UnicodeDecodeError


def decode_batch(body: bytes, schema: FeatureSchema, max_batch: int) -> Transactions | None:
    """The validated batch (or single transaction) in ``body``, or None: take the generic path
    (module docstring)."""
    typed = _typed_batch(schema)
    if typed is None:
        return None
    decoded = _decode(body, typed)
    if decoded is None:
        return None
    records, batch = decoded
    if not 0 < len(records) <= max_batch:
        return None
    ids = list(map(typed.transaction_id, records))
    events = list(map(typed.event_time, records))
    times = list(map(typed.time, records))
    if not _accounted(body, typed, records, ids, events, times, batch):
        return None
    ids, events = _unset_as_none(ids), _unset_as_none(events)
    if not clean_ids(ids):
        return None
    if None in events:  # event_time, when given, wins over the time column
        times = _unset_as_none(times)
        events = [t if e is None else e for e, t in zip(events, times, strict=True)]
    # the feature slots read in C (10,000 x 29 features: 0.5 ms; astuple and np.fromiter 6.3 ms)
    X = np.empty((len(records), typed.features.width))
    typed.features.matrix(records, X)
    return Transactions(batch=batch, ids=ids, event_times=events, X=X, decoded=records)
