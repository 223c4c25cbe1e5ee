"""``GET /openapi.json`` (the document of the model this worker serves) and ``GET /docs``
(Swagger UI from the assets bundled in the pinned ``flask-swagger-ui`` package: no CDN)."""

from __future__ import annotations

import functools

from flask import Blueprint, Response
from flask_swagger_ui import get_swaggerui_blueprint

from fraud_lib.errors import ConfigError
from fraud_lib.schema import FeatureSchema
from serving.api import state
from serving.openapi import TITLE, build_document, encode
from serving.validation import ApiError

bp = Blueprint("openapi", __name__)

DOCS_PATH = "/docs"
DOCUMENT_PATH = "/openapi.json"


@functools.lru_cache(maxsize=8)
def _document(schema: FeatureSchema, max_batch: int) -> bytes:
    return encode(build_document(schema, max_batch))


@bp.get(DOCUMENT_PATH)
def openapi_json() -> Response:
    """The served model's document; before a model is loaded, the configured schema's."""
    st = state()
    served = st.holder.current
    try:
        schema = served.schema if served else FeatureSchema.load(st.settings.schema_path)
    except ConfigError as exc:
        raise ApiError(503, "no_model", f"{st.holder.unavailable_message()}; {exc}") from None
    body = _document(schema, st.settings.max_batch)
    return Response(body, mimetype="application/json")


def swagger_ui() -> Blueprint:
    """Swagger UI at /docs/ (/docs redirects there) reading /openapi.json; the validator
    badge, which would call an outside service, is off."""
    return get_swaggerui_blueprint(
        DOCS_PATH,
        DOCUMENT_PATH,
        config={"app_name": TITLE, "validatorUrl": None},
        blueprint_name="swagger_ui",
    )
