"""The scoring API: ``POST /v1/score``, ``POST /v1/labels``, ``GET /v1/model``.

The score path is kept short: parse, validate against the served model's schema, score with
its fastest verified predictor, append one spool line for the request, answer. msgspec encodes
the answer and the spool line from Structs (``json.dumps`` of 10,000 dicts costs more than
scoring them).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, NamedTuple

import msgspec
import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request

from fraud_lib import store
from fraud_lib.errors import DatabaseError, DataError
from fraud_lib.redact import redact
from serving.arrow import ARROW_STREAM, answer_in_arrow, decode_arrow, encode_predictions
from serving.labels_input import validate_labels
from serving.metrics import RISK_LEVELS
from serving.prediction_log import LogUnavailable
from serving.spool import Block, encode_block
from serving.typed_batch import decode_batch
from serving.validation import (
    SEE_LOG,
    ApiError,
    Transactions,
    decode_json,
    is_json,
    parse_json,
    read_body,
    unsupported_media_type,
    validate_transactions,
)

bp = Blueprint("api", __name__)
log = logging.getLogger(__name__)


class Model(msgspec.Struct, gc=False):
    """The served model, as named in every /v1/score answer."""

    name: str
    version: str


class Prediction(msgspec.Struct, gc=False):
    """One prediction of a /v1/score answer (the fields in JSON key order)."""

    transaction_id: str
    prediction_id: str
    score: float
    is_fraud: bool
    risk_level: str
    threshold: float


class SinglePrediction(Prediction, gc=False):
    """The answer to a single transaction: its prediction and the model."""

    model: Model


class BatchPredictions(msgspec.Struct):
    """The answer to a batch."""

    predictions: list[Prediction]
    model: Model
    count: int


_ENCODER = msgspec.json.Encoder()
SCORE_BODIES = (
    f"JSON (Content-Type: application/json) or an Arrow IPC stream (Content-Type: {ARROW_STREAM})"
)
_RISK_NAMES = np.array(RISK_LEVELS, dtype=object)


def state() -> Any:
    """The :class:`serving.app.ServiceState` of the current app."""
    return current_app.extensions["fraudloop"]


def new_ids(n: int) -> list[str]:
    """``n`` random UUID4s as 32 hex digits (one urandom call for a batch)."""
    if n == 1:
        return [uuid.uuid4().hex]
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.tobytes().hex()
    return [text[i : i + 32] for i in range(0, 32 * n, 32)]


def risk_levels(scores: np.ndarray, medium: float, high: float) -> np.ndarray:
    """Per score, its index in :data:`RISK_LEVELS`: ``high`` if score >= high, ``medium`` if
    >= medium, else ``low`` (``medium <= high``, as the settings check)."""
    return np.searchsorted((medium, high), scores, side="right")


def score_validated(served: Any, txs: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores of validated model-column transactions and what the log stores of them."""
    if txs.X is not None:
        scores = np.asarray(served.score_matrix(txs.X), dtype=float)
        return scores, {"columns": list(served.schema.features),
                        "x": np.ascontiguousarray(txs.X, dtype="<f8").tobytes()}  # fmt: skip
    scores = served.score_records(txs.records or [])
    return scores, {"features": txs.records or []}  # dicts: msgspec encodes them as objects


def _transactions(st: Any, served: Any) -> tuple[Transactions, bool]:
    """The validated /v1/score request for the ``served`` model (None: none loaded), and
    whether its body is an Arrow stream."""
    max_batch = st.settings.max_batch
    if request.mimetype == ARROW_STREAM:
        body = read_body(request)
        if served is None:
            raise ApiError(503, "no_model", st.holder.unavailable_message())
        return decode_arrow(body, served.schema, max_batch), True
    if not is_json(request):
        raise unsupported_media_type(request, SCORE_BODIES)
    body = read_body(request)
    txs = decode_batch(body, served.schema, max_batch) if served is not None else None
    if txs is None:  # not a clean numeric batch: the generic path names every problem
        payload = decode_json(body)
        if served is None:
            raise ApiError(503, "no_model", st.holder.unavailable_message())
        txs = validate_transactions(payload, served.schema, max_batch)
    return txs, False


def _raw_transactions(st: Any, served: Any) -> tuple[Transactions, np.ndarray, dict[str, Any]]:
    """A behavioral champion's request (JSON raw transactions): validated, features computed
    from the online state, scored; see :mod:`serving.raw_scoring`."""
    if not is_json(request):
        raise unsupported_media_type(request, SCORE_BODIES)
    from serving.raw_scoring import score_raw  # imported by the first raw request (memory)

    payload = decode_json(read_body(request))
    return score_raw(st.online, served, payload, st.settings.max_batch,
                     st.settings.timestamp_bounds)  # fmt: skip


class Answer(NamedTuple):
    """A scored request's 200 answer: its body, content type, and what to call once sent."""

    body: bytes
    mimetype: str
    on_close: list[Callable[[], Any]]


def log_and_answer(st: Any, served: Any, txs: Transactions, scores: np.ndarray,
                   logged: dict[str, Any], request_id: str, arrow: bool) -> Answer:  # fmt: skip
    """The answer to scored transactions, encoded first, then logged (one spool line: raises
    the 503 :class:`ApiError` if the log refuses it, and nothing is answered) and counted.
    Nothing raises once the line is appended (the metrics updates never do), so a logged
    request is always answered, and never handed to Flask to be scored and logged again.
    Both the Flask view and :mod:`serving.fast_path` answer through this."""
    n = len(txs)
    threshold = float(served.threshold)
    flagged = scores >= threshold
    fraud = flagged.tolist()
    levels = risk_levels(scores, st.settings.risk_medium, st.settings.risk_high)
    risk = _RISK_NAMES[levels].tolist()
    score_list = scores.tolist()
    pids = new_ids(n)
    ids = _transaction_ids(txs.ids)
    block = Block(n=n, scored_at=time.time(), threshold=threshold, model_name=served.name,
                  model_version=served.version, request_id=request_id, prediction_ids=pids,
                  transaction_ids=ids, event_times=txs.event_times, scores=score_list,
                  is_fraud=fraud, risk_levels=risk, **logged)  # fmt: skip
    keep: list[Any] = [txs, block]  # freed once the answer is sent (see on_close)
    if arrow:
        answer: Any = encode_predictions(ids, pids, scores, flagged, risk, threshold,
                                         (served.name, served.version))  # fmt: skip
        mimetype = ARROW_STREAM
    else:
        model = Model(served.name, served.version)
        if txs.batch:
            predictions = list(
                map(Prediction, ids, pids, score_list, fraud, risk, repeat(threshold))
            )
            answer = _ENCODER.encode(BatchPredictions(predictions, model, n))
            keep.append(predictions)
        else:
            answer = _ENCODER.encode(SinglePrediction(ids[0], pids[0], score_list[0], fraud[0],
                                                      risk[0], threshold, model))  # fmt: skip
        mimetype = "application/json"
    try:
        full = st.log.append(encode_block(block), n, wake=False)
    except LogUnavailable as exc:
        log.error("request %s: the prediction log refused the records: %s", request_id, exc)
        raise ApiError(
            503,
            "log_unavailable",
            "the prediction could not be logged, so it is not answered; retry later "
            f"({SEE_LOG}, request id {request_id})",
        ) from None
    st.metrics.observe_scores(scores, flagged, levels)  # never raises (logged already)
    # freed once the answer is sent: for 10,000 rows the decoded records alone take ~4 ms
    on_close: list[Callable[[], Any]] = [keep.clear]
    if full:  # wake the shipper once the answer is sent: woken before, its decoding took the
        # GIL from the answer's (10,000 rows: 28-34 ms instead of 3 in 2 of 12 requests)
        on_close.append(st.log.wake)
    return Answer(answer, mimetype, on_close)


def _transaction_ids(given: list[str | None]) -> list[str]:
    """The request's transaction ids, a generated one wherever none was given."""
    if None not in given:
        return given  # type: ignore[return-value]
    ids = list(given)
    missing = [i for i, t in enumerate(ids) if t is None]
    for i, generated in zip(missing, new_ids(len(missing)), strict=True):
        ids[i] = generated
    return ids  # type: ignore[return-value]


@bp.post("/v1/score")
def score() -> Response:
    st = state()
    served = st.holder.current  # this request uses this model, whatever swaps meanwhile
    if served is not None and served.schema.behavior is not None:
        txs, scores, logged = _raw_transactions(st, served)
        arrow_body = False
    else:
        txs, arrow_body = _transactions(st, served)
        scores, logged = score_validated(served, txs)
    answer = log_and_answer(st, served, txs, scores, logged, g.request_id,
                            answer_in_arrow(request, arrow_body))  # fmt: skip
    response = Response(answer.body, status=200, mimetype=answer.mimetype)
    for callback in answer.on_close:
        response.call_on_close(callback)
    return response


@bp.post("/v1/labels")
def labels() -> Response:
    st = state()
    bounds = st.settings.timestamp_bounds
    rows = validate_labels(parse_json(request), st.settings.max_batch, bounds)
    try:
        result = store.upsert_labels(st.db.engine(), rows, bounds=bounds)
    except DatabaseError as exc:
        log.error("request %s: labels not written: %s", g.request_id, redact(str(exc)))
        raise ApiError(
            503,
            "database_unavailable",
            "labels are written to the database directly and it cannot be reached now; retry "
            f"later ({SEE_LOG}, request id {g.request_id})",
        ) from None
    except DataError as exc:
        raise ApiError(400, "invalid_input", str(exc), getattr(exc, "fields", {})) from None
    result["received"] = len(rows)
    return jsonify(result)


@bp.get("/v1/model")
def model() -> Response:
    st = state()
    served = st.holder.current
    if served is None:
        raise ApiError(503, "no_model", st.holder.unavailable_message())
    meta = served.loaded.meta
    return jsonify(
        {
            "name": served.name,
            "version": served.version,
            "alias": "champion",
            "threshold": served.threshold,
            "loaded_at": datetime.fromtimestamp(served.loaded_at, UTC).isoformat(),
            "predictor": served.predictor,
            "model_type": meta.get("model_type"),
            "threshold_rule": meta.get("threshold_rule"),
            "metrics": meta.get("metrics", {}),
            "time_range": meta.get("time_range", {}),
            "schema": served.schema.to_dict(),
            "risk_levels": {"medium": st.settings.risk_medium, "high": st.settings.risk_high},
            "reload": st.holder.status(),
        }
    )
