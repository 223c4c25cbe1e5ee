"""Request parsing and validation for /v1/score (and the body parsing /v1/labels shares).

Every problem becomes an :class:`ApiError` (400/413/415) with field-level messages keyed like
``transactions[3].V4``; nothing a client sends can produce a 500. Transactions are checked
against the schema of the model that will score them. A batch of clean records takes a
vectorised path (one type scan and one float64 matrix for the whole batch); only a batch with
a problem goes through the per-record checks, which name each bad field.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np
from flask import Request
from gunicorn.http import errors as http_parse
from werkzeug.exceptions import RequestEntityTooLarge

from fraud_lib.input_rules import MAX_ID_LENGTH, id_error
from fraud_lib.schema import FeatureSchema
from fraud_lib.unique_keys import body_quotes, duplicate_error, duplicate_keys, implied_quotes
from serving.request_body import BulkBody

MAX_FIELD_ERRORS = 50
# What a 5xx body says instead of exception text, paths or URLs (which go to the server log).
SEE_LOG = "the server log has the details"
JSON_TYPES = ("application/json",)
JSON_BODY = "JSON with Content-Type: application/json"
# What gunicorn raises while the app reads a malformed chunked body (its trailer fields included).
BODY_PARSE_ERRORS = (
    http_parse.ParseException,
    http_parse.NoMoreData,
    http_parse.InvalidChunkSize,
    http_parse.ChunkMissingTerminator,
    http_parse.InvalidChunkExtension,
)


@functools.lru_cache(maxsize=16)
def optional_fields(schema: FeatureSchema) -> dict[str, str]:
    """The fields a transaction may carry besides the model's columns, with the rule of each:
    ``"id"`` (``transaction_id``: a string or an integer, or null to get one generated),
    ``"time"`` (``event_time`` and the time column: a finite number or null; ``event_time``
    wins) and ``"ignored"`` (the label and id columns: any value). A model column named like
    one of them keeps its column's rule."""
    fields = {"transaction_id": "id", "event_time": "time"}
    fields.setdefault(schema.time, "time")
    for ignored in (schema.label, schema.id):
        if ignored:
            fields.setdefault(ignored, "ignored")
    columns = set(schema.model_columns)
    return {name: rule for name, rule in fields.items() if name not in columns}


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "fields"}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, fields: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}


_DECODER = msgspec.json.Decoder()
_BYTE = re.compile(r"\(byte (\d+)\)")
_CONSTANT = re.compile(rb"NaN|Infinity")


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON; send finite numbers only")


def _invalid_json(body: bytes, exc: msgspec.DecodeError) -> ApiError:
    """400 for a body msgspec refused, naming a NaN/Infinity token where it stopped."""
    reason = str(exc)
    if (at := _BYTE.search(reason)) and (token := _CONSTANT.match(body, int(at[1]))):
        reason = f"{token[0].decode()} is not valid JSON; send finite numbers only ({reason})"
    return ApiError(400, "invalid_json", f"the body is not valid JSON: {reason}")


def is_json_mimetype(mimetype: str) -> bool:
    """True for a JSON media type (``application/json`` or ``+json``), lowercase, no params."""
    return mimetype in JSON_TYPES or mimetype.endswith("+json")


def is_json(request: Request) -> bool:
    """True when the request's content type is JSON (:func:`is_json_mimetype`)."""
    return is_json_mimetype(request.mimetype or "")


def unsupported_media_type(request: Request, accepted: str = JSON_BODY) -> ApiError:
    """The 415 of a body sent as another content type than ``accepted``."""
    got = request.mimetype or "none"
    return ApiError(415, "unsupported_media_type", f"send the body as {accepted} (got {got!r})")


def read_json_body(request: Request) -> bytes:
    """The raw request body: 415 unless the content type is JSON, 413 beyond
    ``MAX_CONTENT_LENGTH``."""
    if not is_json(request):
        raise unsupported_media_type(request)
    return read_body(request)


def read_body(request: Request) -> bytes:
    """The raw request body whatever its content type; 413 beyond ``MAX_CONTENT_LENGTH``,
    400 for a chunked body gunicorn cannot parse (e.g. its trailers)."""
    stream, length = request.environ.get("wsgi.input"), request.content_length
    if isinstance(stream, BulkBody) and length is not None:  # under gunicorn: in one read
        limit = request.max_content_length
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        return stream.read_rest()
    try:
        return request.get_data(cache=False)  # 413 from MAX_CONTENT_LENGTH is raised here
    except BODY_PARSE_ERRORS as exc:
        raise ApiError(400, "bad_request", f"the chunked body is malformed: {exc}") from None


def _refuse_repeated_keys(body: bytes) -> None:
    """400 naming each repeated key of ``body`` (valid JSON), e.g. ``transactions[3].V1``."""
    try:
        places = duplicate_keys(body, MAX_FIELD_ERRORS)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    if places:
        error = duplicate_error(places, "the body")
        raise ApiError(400, "duplicate_key", str(error), error.fields)


def decode_json(body: bytes) -> Any:
    """``body`` as JSON; 400 if malformed (NaN and Infinity tokens, invalid UTF-8, lone
    surrogates, a repeated key and too deep nesting included).

    A repeated key is looked for (``json`` keeping every pair) only when the decoded value
    does not account for every ``"`` of the body (:mod:`fraud_lib.unique_keys`).

    msgspec decodes (~4x faster than ``json`` on a 10,000-transaction batch, same values:
    floats correctly rounded, integers of any size). It refuses a number beyond float range
    (``1e400``) or an integer of more than 4300 digits; such a body is read again by ``json``,
    which turns the first into ``inf`` (a field error in validation) and refuses the second.
    """
    try:
        value = _DECODER.decode(body)
    except msgspec.ValidationError:
        pass  # a number out of range: json below decides
    except msgspec.DecodeError as exc:
        raise _invalid_json(body, exc) from None
    except UnicodeDecodeError as exc:  # msgspec's error for bad UTF-8 inside a string
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    else:
        if body_quotes(body) != implied_quotes((value,)):
            _refuse_repeated_keys(body)
        return value
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    _refuse_repeated_keys(body)
    return value


def parse_json(request: Request) -> Any:
    """The request body decoded: :func:`read_json_body` then :func:`decode_json`."""
    return decode_json(read_json_body(request))


def bad_fields(errors: dict[str, str], what: str, total: int | None = None) -> ApiError:
    """The 400 naming the first :data:`MAX_FIELD_ERRORS` of ``errors`` (of ``total`` problems
    in all, default ``len(errors)``)."""
    shown = dict(list(errors.items())[:MAX_FIELD_ERRORS])
    total = len(errors) if total is None else total
    suffix = f" (first {len(shown)} of {total} shown)" if total > len(shown) else ""
    return ApiError(400, "invalid_input", f"{what} failed validation{suffix}", shown)


def batch_too_large(n: int, key: str, max_items: int) -> ApiError:
    """The 413 of a batch of ``n`` ``key`` beyond ``max_items`` (FRAUD_MAX_BATCH)."""
    return ApiError(
        413,
        "batch_too_large",
        f"{n} {key} in one request; the maximum is {max_items} (FRAUD_MAX_BATCH): split the batch",
    )


def list_payload(payload: Any, key: str, max_items: int, item: str) -> list[Any]:
    """The non-empty list under ``key`` of an object holding nothing else."""
    extra = [k for k in payload if k != key]
    if extra:
        raise bad_fields(
            {str(k): f"unknown field; a {item} batch holds only {key!r}" for k in extra},
            "the request",
        )
    items = payload[key]
    if not isinstance(items, list) or not items:
        raise ApiError(
            400,
            "invalid_input",
            f"{key!r} must be a non-empty list",
            {key: "must be a non-empty list"},
        )
    if len(items) > max_items:
        raise batch_too_large(len(items), key, max_items)
    return items


def finite_number(value: Any) -> bool:
    """True for an int or a float (not a bool) that is finite as a float: an integer beyond
    the float range (JSON allows 4,300 digits) is not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number_error(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {type(value).__name__}"
    return None if finite_number(value) else "must be a finite number"


# ---------------------------------------------------------------------------- transactions
@dataclass
class Transactions:
    """A validated /v1/score request."""

    batch: bool
    ids: list[str | None]  # None: generate one
    event_times: list[float | None]
    X: np.ndarray | None = None  # float64, schema.features order (numeric-only schemas)
    records: list[dict[str, Any]] | None = None  # validated records (schemas with categoricals)
    decoded: Any = None  # what the body was decoded into, when kept (freed after the answer)

    def __len__(self) -> int:
        return len(self.ids)


def _fast_matrix(items: list[Any], schema: FeatureSchema) -> np.ndarray | None:
    """A float64 matrix of a clean batch in one pass, or None if any record has a problem
    (the caller then names it field by field)."""
    features = schema.features
    width = len(features)
    extras = optional_fields(schema).keys()
    get = itemgetter(*features)
    rows = []
    try:
        for rec in items:
            if type(rec) is not dict:
                return None
            values = get(rec)  # KeyError: a feature is missing
            # every feature is present, so any key beyond them and the allowed extras is unknown
            if len(rec) != width and len(rec) != width + len(rec.keys() & extras):
                return None
            rows.append(values if width > 1 else (values,))
    except KeyError:
        return None
    if not set(map(type, chain.from_iterable(rows))) <= {float, int}:
        return None
    try:
        X = np.array(rows, dtype=np.float64)
    except OverflowError:
        return None
    return X if np.isfinite(X).all() else None


def clean_ids(ids: list[str | None]) -> bool:
    """True when the given transaction ids (None: not given) are unique, 1 to
    :data:`MAX_ID_LENGTH` characters long and free of NUL."""
    present = ids if None not in ids else [t for t in ids if t is not None]
    if not present:
        return True
    lengths = list(map(len, present))
    if min(lengths) == 0 or max(lengths) > MAX_ID_LENGTH or len(set(present)) != len(present):
        return False
    return "\x00" not in "".join(present)


def _fast_extras(
    items: list[dict[str, Any]], schema: FeatureSchema
) -> tuple[list[str | None], list[float | None]] | None:
    """transaction ids and event times of a batch whose records are all dicts, or None if any
    of them has a problem (wrong type, length, duplicate, non-finite time)."""
    ids = [rec.get("transaction_id") for rec in items]
    if not set(map(type, ids)) <= {str, type(None)}:
        return None
    if not clean_ids(ids):
        return None
    events: list[float | None] = []
    for key in (schema.time, "event_time"):  # event_time, when given, wins
        values = [rec.get(key) for rec in items]
        kinds = set(map(type, values))
        if not kinds <= {float, int, type(None)}:
            return None
        if kinds == {type(None)}:
            continue
        try:
            arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        except OverflowError:
            return None
        if np.isinf(arr).any():
            return None
        events = [v if v is not None else (events[i] if events else None)
                  for i, v in enumerate(np.where(np.isnan(arr), None, arr).tolist())]  # fmt: skip
    return ids, events or [None] * len(items)


def _validate_record(schema: FeatureSchema, rec: Any) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        return schema.validate_record(rec)
    except OverflowError:  # integers beyond float range: report them as non-finite
        huge = {k for k, v in rec.items() if isinstance(v, int) and _number_error(v)}
        return schema.validate_record({**rec, **dict.fromkeys(huge, math.inf)})


def _extras(
    schema: FeatureSchema, rec: Mapping[str, Any], errors: dict[str, str]
) -> tuple[str | None, float | None]:
    """transaction_id and event time of a record (event_time, else the schema's time column)."""
    tx = rec.get("transaction_id")
    if tx is not None and (err := id_error(tx)):
        errors["transaction_id"] = err
        tx = None
    event = None
    for key in ("event_time", schema.time):
        if key in rec and rec[key] is not None:
            if err := _number_error(rec[key]):
                errors[key] = err
            elif event is None:
                event = float(rec[key])
    return (None if tx is None else str(tx)), event


def validate_transactions(payload: Any, schema: FeatureSchema, max_batch: int) -> Transactions:
    """One transaction object or ``{"transactions": [...]}`` checked against ``schema``."""
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            "invalid_input",
            'send one transaction as a JSON object, or a batch as {"transactions": [...]}',
        )
    batch = "transactions" in payload
    items = list_payload(payload, "transactions", max_batch, "transactions") if batch else [payload]
    X = _fast_matrix(items, schema) if not schema.categorical else None
    if X is not None and (extras := _fast_extras(items, schema)) is not None:
        return Transactions(batch=batch, ids=extras[0], event_times=extras[1], X=X)
    errors: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    ids: list[str | None] = []
    events: list[float | None] = []
    first_seen: dict[str, int] = {}
    for i, rec in enumerate(items):
        prefix = f"transactions[{i}]" if batch else ""
        if X is not None:
            rec_errors: dict[str, str] = {}
            clean: dict[str, Any] = {}
        else:
            clean, rec_errors = _validate_record(schema, rec)
            if "" in rec_errors:  # not an object
                errors[prefix or "body"] = rec_errors[""]
                ids.append(None)
                events.append(None)
                continue
        tx, event = _extras(schema, rec, rec_errors)
        if tx is not None:
            if tx in first_seen:
                rec_errors["transaction_id"] = (
                    f"duplicate of transactions[{first_seen[tx]}].transaction_id {tx!r}"
                )
            first_seen.setdefault(tx, i)
        for field, msg in rec_errors.items():
            errors[f"{prefix}.{field}" if prefix else field] = msg
        records.append(clean)
        ids.append(tx)
        events.append(event)
    if errors:
        raise bad_fields(errors, "the batch" if batch else "the transaction")
    out = Transactions(batch=batch, ids=ids, event_times=events)
    if schema.categorical:
        out.records = records
    elif X is not None:
        out.X = X
    else:  # a clean batch that the fast path could not take (e.g. huge ints as floats)
        out.X = np.array([[r[c] for c in schema.features] for r in records], dtype=np.float64)
    return out
