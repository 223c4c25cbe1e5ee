"""The OpenAPI 3.1 document of the scoring API, built from the types that validate and answer.

Request bodies come from the served model's :class:`~fraud_lib.schema.FeatureSchema` (one
property per model column) and the validation rules of :mod:`serving.validation`
(:data:`~serving.validation.MAX_ID_LENGTH`, the batch limit, finite numbers, the
optional fields of :func:`~serving.validation.optional_fields`; labels 0/1 of
:mod:`serving.labels_input`); response bodies from the
msgspec Structs of :mod:`serving.api` and :mod:`serving.responses` through
``msgspec.json.schema_components``. The service serves the document of its model at
``/openapi.json``; ``docs/openapi.json`` is the one of the default ULB schema and limits,
rewritten by ``fraud openapi`` (``make openapi``) and compared with a fresh build by the tests.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Any

import msgspec

from fraud_lib.schema import FeatureSchema
from serving import responses
from serving.api import BatchPredictions, SinglePrediction
from serving.arrow import ARROW_STREAM, column_rules
from serving.arrow.answer import ANSWER_FIELDS
from serving.arrow.batch import TYPE_NAMES
from serving.arrow.stream import MAX_RECORD_BATCHES
from serving.labels_input import LABEL_VALUES, TIMESTAMP_EXAMPLE
from serving.validation import MAX_ID_LENGTH, optional_fields

OPENAPI_VERSION = "3.1.0"
TITLE = "fraudloop scoring API"
REF = "#/components/schemas/{name}"
FINITE = {"type": "number", "minimum": -sys.float_info.max, "maximum": sys.float_info.max}
NO_NUL = "^[^\\u0000]*$"  # Postgres text cannot hold NUL


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _id_schema() -> dict[str, Any]:
    """A transaction id. The validators also take a JSON integer (as its decimal string):
    JSON Schema cannot tell ``478`` from ``478.0``, which they refuse, so the document
    describes the string only."""
    return {
        "type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": NO_NUL,
        "description": f"1 to {MAX_ID_LENGTH} characters, no NUL. A JSON integer (not 478.0) "
        "is also accepted and stored as its decimal string.",
    }  # fmt: skip


def _finite(description: str) -> dict[str, Any]:
    return {**FINITE, "description": description}


def transaction_schema(schema: FeatureSchema) -> dict[str, Any]:
    """The JSON Schema of one transaction for a model with ``schema``."""
    if schema.behavior is not None:
        from serving.raw_input import raw_transaction_schema  # behavioral models only (memory)

        return raw_transaction_schema(schema)
    props: dict[str, Any] = {
        c: _finite("a model feature; a finite number") for c in schema.features
    }
    for col in schema.categorical:
        props[col] = {"type": "string", "description": "a categorical model feature (an "
                      "integer is taken as its decimal string)"}  # fmt: skip
    rules = {
        "id": {"anyOf": [_id_schema(), {"type": "null"}],
               "description": "unique within a batch; generated when absent or null"},
        "time": {"anyOf": [FINITE, {"type": "null"}],
                 "description": "event time in seconds (event_time wins over the time column)"},
        "ignored": {"description": "accepted and ignored (the label and id columns)"},
    }  # fmt: skip
    for name, rule in optional_fields(schema).items():
        props[name] = rules[rule]
    return {
        "type": "object",
        "description": "One transaction: every model column, nothing unknown.",
        "properties": props,
        "required": list(schema.model_columns),
        "additionalProperties": False,
    }


def _batch(item: str, key: str, max_batch: int, note: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"Up to {max_batch} {key} (FRAUD_MAX_BATCH; more: 413). {note}",
        "properties": {
            key: {"type": "array", "items": _ref(item), "minItems": 1, "maxItems": max_batch}
        },
        "required": [key],
        "additionalProperties": False,
    }


def label_schema() -> dict[str, Any]:
    """The JSON Schema of one label of ``POST /v1/labels``."""
    return {
        "type": "object",
        "properties": {
            "transaction_id": _id_schema(),
            "label": {"enum": list(LABEL_VALUES), "description": "1: fraud, 0: genuine"},
            "labeled_at": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": f"ISO 8601, e.g. {TIMESTAMP_EXAMPLE}; without an offset: UTC; "
                "absent or null: now",
            },
        },
        "required": ["transaction_id", "label"],
        "additionalProperties": False,
    }


def _example(schema: FeatureSchema) -> dict[str, Any]:
    if schema.behavior is not None:
        from serving.raw_input import raw_example  # behavioral models only (memory)

        return raw_example(schema)
    row: dict[str, Any] = {"transaction_id": "t-1"}
    row.update(dict.fromkeys(schema.features, 0.5))
    row.update(dict.fromkeys(schema.categorical, "a"))
    return row


def _json(schema: Any, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _responses(ok: str, ok_schema: Any, errors: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok, "content": _json(ok_schema)}}
    for status, why in errors.items():
        out[str(status)] = {"description": why, "content": _json(_ref("ErrorBody"))}
    return out


BODY_ERRORS = {
    400: "invalid JSON (`invalid_json`), an object that repeats a key (`duplicate_key`) or a "
    "field that fails validation (`invalid_input`); `fields` names each",
    413: "the body (FRAUD_MAX_BODY_BYTES) or the batch (FRAUD_MAX_BATCH) is too large",
    415: "the body is not sent as application/json",
}
SCORE_BODY_ERRORS = {
    **BODY_ERRORS,
    400: "invalid JSON, an unreadable Arrow stream, or a column or field that fails validation "
    "(`fields` names each)",
    415: f"the body is sent as neither application/json nor {ARROW_STREAM}",
}


def arrow_request(schema: FeatureSchema, max_batch: int) -> dict[str, Any]:
    """The media type object of an Arrow IPC stream batch for ``schema``: its columns in
    ``x-arrow-columns`` (from the rules that check them)."""
    columns = [
        {"name": name, "types": rule.type_names, "nulls": rule.nulls, "required": rule.required,
         "description": rule.description}
        for name, rule in column_rules(schema).items()
    ]  # fmt: skip
    description = (
        f"An Arrow IPC stream (not the file format) of 1 to {max_batch} rows (FRAUD_MAX_BATCH) "
        f"in at most {MAX_RECORD_BATCHES} uncompressed record batches, no dictionary-encoded "
        "column; the columns of `x-arrow-columns` in any order, nothing else. The rules are the "
        "JSON batch's: finite features, unique transaction ids of 1 to 200 characters."
    )
    return {
        "schema": {"type": "string", "contentMediaType": ARROW_STREAM, "description": description},
        "x-arrow-columns": columns,
    }


def arrow_answer() -> dict[str, Any]:
    """The media type object of the Arrow answer to /v1/score."""
    columns = [
        {"name": name, "types": [TYPE_NAMES[kind]], "nulls": False, "description": text}
        for name, kind, text in ANSWER_FIELDS
    ]
    return {
        "schema": {
            "type": "string",
            "contentMediaType": ARROW_STREAM,
            "description": "One record batch, one row per transaction in request order; the "
            "schema's metadata holds `model_name` and `model_version`. Sent when the body is "
            "Arrow or `Accept` asks for it.",
        },
        "x-arrow-columns": columns,
    }


def _api_paths(schema: FeatureSchema, max_batch: int) -> dict[str, Any]:
    one = _example(schema)
    score_body = {"oneOf": [_ref("Transaction"), _ref("TransactionBatch")]}
    examples = {"one": {"value": one}, "batch": {"value": {"transactions": [one]}}}
    unavailable = {503: "no model is loaded, or the prediction could not be logged"}
    score_responses = _responses(
        "the predictions, logged before this answer",
        {"oneOf": [_ref("SinglePrediction"), _ref("BatchPredictions")]},
        {**SCORE_BODY_ERRORS, **unavailable},
    )
    score_content = {"application/json": {"schema": score_body, "examples": examples}}
    if not schema.categorical:  # Arrow bodies are taken for numeric-only models
        score_content[ARROW_STREAM] = arrow_request(schema, max_batch)
    score_responses["200"]["content"][ARROW_STREAM] = arrow_answer()
    return {
        "/v1/score": {"post": {
            "summary": "Score one transaction or a batch",
            "operationId": "score",
            "requestBody": {"required": True, "content": score_content},
            "responses": score_responses,
        }},
        "/v1/labels": {"post": {
            "summary": "Upsert labels (idempotent); unknown transaction ids are reported back",
            "operationId": "labels",
            "requestBody": {"required": True, "content": _json(
                _ref("LabelBatch"),
                {"labels": [{"transaction_id": "t-1", "label": 1, "labeled_at": TIMESTAMP_EXAMPLE}]},
            )},
            "responses": _responses("what was stored", _ref("LabelsResult"),
                                    {**BODY_ERRORS, 503: "Postgres cannot be reached; retry"}),
        }},
        "/v1/model": {"get": {
            "summary": "The served model: version, threshold, training metrics, schema",
            "operationId": "model",
            "responses": _responses("the served model", _ref("ModelInfo"),
                                    {503: "no model is loaded"}),
        }},
    }  # fmt: skip


def _ops_paths() -> dict[str, Any]:
    return {
        "/healthz": {"get": {
            "summary": "The process is alive",
            "operationId": "healthz",
            "responses": {"200": {"description": "alive", "content": _json(_ref("Health"))}},
        }},
        "/readyz": {"get": {
            "summary": "Ready to score: a model is loaded and the prediction log takes records",
            "operationId": "readyz",
            "responses": {
                status: {"description": why, "content": _json(_ref("Readiness"))}
                for status, why in (("200", "ready"), ("503", "not ready; `reasons` says why"))
            },
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of this worker",
            "operationId": "metrics",
            "responses": {"200": {"description": "the Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/admin/reload": {"post": {
            "summary": "Check the registry for a new champion now, in the worker that answers",
            "operationId": "reload",
            "security": [{"adminToken": []}],
            "responses": _responses("what the check did", _ref("ReloadResult"), {
                401: "the admin token is missing or wrong",
                503: "admin endpoints are disabled (FRAUD_ADMIN_TOKEN is not set)",
            }),
        }},
    }  # fmt: skip


def _components(schema: FeatureSchema, max_batch: int) -> dict[str, Any]:
    structs = (SinglePrediction, BatchPredictions, responses.ErrorBody, responses.LabelsResult,
               responses.ModelInfo, responses.Health, responses.Readiness, responses.ReloadResult)  # fmt: skip
    _, schemas = msgspec.json.schema_components(structs, ref_template=REF)
    schemas["Transaction"] = transaction_schema(schema)
    schemas["TransactionBatch"] = _batch(
        "Transaction", "transactions", max_batch, "Transaction ids must be unique in a batch."
    )
    schemas["Label"] = label_schema()
    schemas["LabelBatch"] = _batch("Label", "labels", max_batch, "The last label of an id wins.")
    return {
        "schemas": dict(sorted(schemas.items())),
        "securitySchemes": {"adminToken": {
            "type": "http", "scheme": "bearer",
            "description": "the service's FRAUD_ADMIN_TOKEN"}},
    }  # fmt: skip


def build_document(schema: FeatureSchema, max_batch: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service scoring with ``schema``, batches up to
    ``max_batch``."""
    columns = len(schema.model_columns)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": version("fraudloop"),
            "description": (
                f"Scores card transactions with the MLflow `champion` model ({columns} feature "
                "columns), as JSON or, for batches, an Apache Arrow IPC stream "
                f"(`{ARROW_STREAM}`). Every error is "
                '`{"error": {"code", "message", "fields"}}`. '
                "Interactive page: /docs."
            ),
        },
        "paths": {**_api_paths(schema, max_batch), **_ops_paths()},
        "components": _components(schema, max_batch),
    }


def encode(document: dict[str, Any]) -> bytes:
    """``document`` as the stable, indented JSON of the checked-in file."""
    return msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"
