"""The scoring API: ``POST /v1/score``, ``POST /v1/labels``, ``GET /v1/model``.

The score path is kept short: parse, validate against the served model's schema, score with
its fastest verified predictor, append to the spool, answer. Responses and spool lines are
rendered with ``%`` templates over Python floats (valid JSON, checked by the tests) because
``json.dumps`` of 10,000 dicts costs more than scoring them.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request

from fraud_lib import store
from fraud_lib.errors import DatabaseError, DataError
from serving.prediction_log import LogUnavailable
from serving.spool import encode_lines, feature_template
from serving.validation import ApiError, parse_json, validate_labels, validate_transactions

bp = Blueprint("api", __name__)

_ITEM = '{"transaction_id":%s,"prediction_id":"%s","score":%r,"is_fraud":%s,"risk_level":"%s","threshold":%r}'


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


def risk_levels(scores: np.ndarray, medium: float, high: float) -> list[str]:
    """``high`` if score >= high, ``medium`` if >= medium, else ``low``."""
    if len(scores) == 1:
        s = float(scores[0])
        return ["high" if s >= high else "medium" if s >= medium else "low"]
    return np.where(scores >= high, "high", np.where(scores >= medium, "medium", "low")).tolist()


@bp.post("/v1/score")
def score() -> Response:
    st = state()
    payload = parse_json(request)
    served = st.holder.current  # this request uses this model, whatever swaps meanwhile
    if served is None:
        raise ApiError(503, "no_model", st.holder.unavailable_message())
    txs = validate_transactions(payload, served.schema, st.settings.max_batch)
    n = len(txs)
    if txs.X is not None:
        scores = np.asarray(served.score_matrix(txs.X), dtype=float)
        template = feature_template(served.schema.features)
        features = [template % tuple(r) for r in txs.X.tolist()]
    else:
        scores = served.score_records(txs.records or [])
        features = [st.dumps(r) for r in txs.records or []]
    threshold = float(served.threshold)
    fraud = (scores >= threshold).tolist()
    risk = risk_levels(scores, st.settings.risk_medium, st.settings.risk_high)
    score_list = scores.tolist()
    pids = new_ids(n)
    missing = [i for i, t in enumerate(txs.ids) if t is None]
    ids = list(txs.ids)
    for i, generated in zip(missing, new_ids(len(missing)) if missing else [], strict=True):
        ids[i] = generated
    lines = encode_lines(
        prediction_ids=pids,
        transaction_ids=ids,  # type: ignore[arg-type]
        scored_at=time.time(),
        event_times=txs.event_times,
        scores=score_list,
        is_fraud=fraud,
        threshold=threshold,
        risk_levels=risk,
        model_name=served.name,
        model_version=served.version,
        request_id=g.request_id,
        features=features,
    )
    try:
        st.log.append(lines, n)
    except LogUnavailable as exc:
        raise ApiError(
            503,
            "log_unavailable",
            f"the prediction could not be logged, so it is not answered: {exc}",
        ) from None
    st.metrics.observe_scores(scores, np.asarray(fraud), risk)
    st.metrics.batch_size.observe(n)
    items = [
        _ITEM % (encode_basestring(tx), pid, s, "true" if f else "false", r, threshold)
        for tx, pid, s, f, r in zip(ids, pids, score_list, fraud, risk, strict=True)
    ]
    model = '{"name":%s,"version":%s}' % (  # noqa: UP031
        encode_basestring(served.name),
        encode_basestring(served.version),
    )
    if txs.batch:
        body = '{"predictions":[%s],"model":%s,"count":%d}' % (",".join(items), model, n)  # noqa: UP031
    else:
        body = '%s,"model":%s}' % (items[0][:-1], model)  # noqa: UP031
    return Response(body, status=200, mimetype="application/json")


@bp.post("/v1/labels")
def labels() -> Response:
    st = state()
    rows = validate_labels(parse_json(request), st.settings.max_batch)
    try:
        result = store.upsert_labels(st.db.engine(), rows)
    except DatabaseError as exc:
        raise ApiError(
            503,
            "database_unavailable",
            "labels are written to Postgres directly and it cannot be reached now; retry later "
            f"({str(exc).splitlines()[0]})",
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
