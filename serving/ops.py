"""Operations endpoints: ``/healthz``, ``/readyz``, ``/metrics``, ``POST /admin/reload``.

``/readyz`` is 200 when a model is loaded and the prediction log can take records (its spool
is writable and its shipper runs). A Postgres outage alone does not make a worker unready:
scoring goes on into the spool, and taking every worker out of a load balancer would turn a
database outage into a scoring outage. The outage shows in the body (``log.db_up``) and on
``/metrics``.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request

from serving.api import state
from serving.validation import SEE_LOG, ApiError

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    st = state()
    model = st.holder.status()
    log_status = st.log.status()
    reasons = []
    if not model["loaded"]:
        reasons.append(st.holder.unavailable_message())
    if not log_status["healthy"]:
        writable = log_status["spool_writable"]
        why = "its shipper is not running" if writable else "its spool cannot be written"
        reasons.append(f"the prediction log cannot take records: {why}; {SEE_LOG}")
    body = {
        "status": "ready" if not reasons else "not_ready",
        "reasons": reasons,
        "model": model,
        "log": log_status,
    }
    response = jsonify(body)
    response.status_code = 200 if not reasons else 503
    return response


@bp.get("/metrics")
def metrics() -> Response:
    payload, content_type = state().metrics.exposition()
    return Response(payload, mimetype=content_type.split(";")[0], content_type=content_type)


@bp.post("/admin/reload")
def admin_reload() -> Response:
    """Check the registry now, in this worker (the others follow within poll_seconds)."""
    st = state()
    token = st.settings.admin_token
    if not token:
        raise ApiError(
            503,
            "admin_disabled",
            "admin endpoints are disabled: set FRAUD_ADMIN_TOKEN for the service and send it "
            "as 'Authorization: Bearer <token>'",
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        response = jsonify(
            {
                "error": {
                    "code": "unauthorized",
                    "message": "send the admin token as 'Authorization: Bearer <token>'",
                    "fields": {},
                }
            }
        )
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="fraudloop-admin"'
        return response
    result = st.holder.check(retry_refused=True)
    return jsonify(result)
