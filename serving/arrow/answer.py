"""The answer to /v1/score as an Arrow IPC stream, and when to give it.

The format of the answer follows the request: a body sent as Arrow is answered in Arrow and a
JSON body in JSON, unless ``Accept`` prefers the other (``Accept:
application/vnd.apache.arrow.stream`` on a JSON request, ``Accept: application/json`` on an
Arrow one). An ``Accept`` naming neither keeps the body's format. Errors are always the JSON
error body.

The stream holds one record batch, one row per prediction in request order, with the fields of
a JSON prediction (:data:`ANSWER_FIELDS`); the model's name and version are in the schema's
metadata (``model_name``, ``model_version``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from flask import Request

from serving.arrow.stream import ARROW_STREAM

JSON = "application/json"
ANSWER_FIELDS = (
    ("transaction_id", pa.string(), "the request's id, or the one generated"),
    ("prediction_id", pa.string(), "32 hex digits; the key of the logged prediction"),
    ("score", pa.float64(), "the model's fraud probability"),
    ("is_fraud", pa.bool_(), "score >= threshold"),
    ("risk_level", pa.string(), "low, medium or high"),
    ("threshold", pa.float64(), "the served model's decision threshold"),
)
ANSWER_SCHEMA = pa.schema([pa.field(name, kind, nullable=False) for name, kind, _ in ANSWER_FIELDS])


def answer_in_arrow(request: Request, body_is_arrow: bool) -> bool:
    """True when the answer to ``request`` is to be an Arrow stream (module docstring)."""
    accept = request.headers.get("Accept", "")
    if not body_is_arrow and "arrow" not in accept.lower():  # JSON clients: no Accept parse
        return False
    if not accept:
        return body_is_arrow
    offers = (ARROW_STREAM, JSON) if body_is_arrow else (JSON, ARROW_STREAM)
    return request.accept_mimetypes.best_match(offers, default=offers[0]) == ARROW_STREAM


def encode_predictions(
    ids: Sequence[str],
    prediction_ids: Sequence[str],
    scores: np.ndarray,
    is_fraud: np.ndarray,
    risk_levels: Sequence[str],
    threshold: float,
    model: tuple[str, str],
) -> bytes:
    """The predictions as an Arrow IPC stream; ``model`` is (name, version)."""
    n = len(ids)
    schema = ANSWER_SCHEMA.with_metadata({"model_name": model[0], "model_version": model[1]})
    columns = [
        pa.array(ids, pa.string()),
        pa.array(prediction_ids, pa.string()),
        pa.array(np.asarray(scores, dtype=np.float64)),
        pa.array(np.asarray(is_fraud, dtype=bool)),
        pa.array(risk_levels, pa.string()),
        pa.array(np.full(n, threshold, dtype=np.float64)),
    ]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch(columns, schema=schema))
    return sink.getvalue().to_pybytes()
