"""The JSON bodies of the ops, labels, model and error answers, as msgspec Structs.

The OpenAPI document (:mod:`serving.openapi`) describes every answer from these Structs and
the prediction Structs of :mod:`serving.api` with ``msgspec.json.schema_components``. The
endpoints build these bodies as dicts (some come whole from the model holder or the prediction
log); the tests check every answer against the document, so a field added, dropped or retyped
on one side and not the other fails them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec


class ErrorDetail(msgspec.Struct):
    """What went wrong: a stable `code`, a `message` saying what to do, and per-field
    messages keyed like `transactions[3].V4` (empty when the whole request is at fault)."""

    code: str
    message: str
    fields: dict[str, str]


class ErrorBody(msgspec.Struct):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class LabelsResult(msgspec.Struct):
    """The answer to `POST /v1/labels`: how many labels were new, changed or the same, and
    the transaction ids without a logged prediction (stored anyway)."""

    inserted: int
    updated: int
    unchanged: int
    unknown_ids: list[str]
    received: int


class RefusedVersion(msgspec.Struct):
    """The last model version the service refused to serve, and why."""

    version: str
    reason: Literal["load_failed", "schema_mismatch", "canary_failed"]
    message: str
    at: float


class RefusalSummary(msgspec.Struct):
    """The last model version the service refused to serve and why (its message is in the
    server log and in the token-protected `POST /admin/reload` answer)."""

    version: str
    reason: Literal["load_failed", "schema_mismatch", "canary_failed"]
    at: float


class ModelStatus(msgspec.Struct):
    """The served version, the champion the registry names, and the last reload problem."""

    loaded: bool
    version: str | None
    champion_version: str | None
    predictor: str | None
    last_check_at: float | None
    last_error: RefusalSummary | None
    registry_readable: bool


class LogStatus(msgspec.Struct):
    """This worker's prediction log: spool backlog and shipping to Postgres."""

    healthy: bool
    writer_id: str
    fsync: bool
    backlog_records: int
    backlog_bytes: int
    orphans_adopted: int
    rows_written: int
    db_up: bool | None
    last_error_at: float | None
    last_shipped_at: float | None
    spool_writable: bool


class Health(msgspec.Struct):
    """`GET /healthz`: the process answers."""

    status: Literal["ok"]


class Readiness(msgspec.Struct):
    """`GET /readyz`: `ready` (200) or `not_ready` (503) with the reasons."""

    status: Literal["ready", "not_ready"]
    reasons: list[str]
    model: ModelStatus
    log: LogStatus


class FeatureSchemaInfo(msgspec.Struct):
    """The served model's column roles (FeatureSchema)."""

    time: str
    label: str
    features: list[str]
    id: str | None
    categorical: list[str]


class RiskLevels(msgspec.Struct):
    """Score cut points of `risk_level` (FRAUD_RISK_MEDIUM, FRAUD_RISK_HIGH)."""

    medium: float
    high: float


class ModelInfo(msgspec.Struct):
    """`GET /v1/model`: the served version, its threshold, training metrics and schema."""

    name: str
    version: str
    alias: str
    threshold: float
    loaded_at: datetime
    predictor: str
    model_type: str | None
    threshold_rule: str | None
    metrics: dict[str, float | None]
    time_range: dict[str, float]
    schema: FeatureSchemaInfo
    risk_levels: RiskLevels
    reload: ModelStatus


class ReloadResult(msgspec.Struct):
    """`POST /admin/reload`: what the registry check did in the worker that answered."""

    status: Literal[
        "loaded", "unchanged", "refused", "refused_before", "no_champion", "registry_unavailable"
    ]
    version: str | None
    previous_version: str | None
    changed: bool
    error: RefusedVersion | str | None = None
