"""Validation of /v1/labels bodies: ``{"labels": [{"transaction_id", "label", "labeled_at"?}]}``
checked field by field into label-store rows, with the same error model as /v1/score
(:class:`~serving.validation.ApiError`, field-level messages keyed like ``labels[3].label``)."""

from __future__ import annotations

from typing import Any

from fraud_lib.errors import DataError
from fraud_lib.input_rules import TimestampBounds, id_error
from serving.validation import ApiError, bad_fields, list_payload

LABEL_VALUES = (0, 1)
TIMESTAMP_EXAMPLE = "2024-05-01T12:00:00Z"
LABEL_FIELDS = frozenset({"transaction_id", "label", "labeled_at"})


def validate_labels(payload: Any, max_batch: int, bounds: TimestampBounds) -> list[dict[str, Any]]:
    """``{"labels": [{"transaction_id", "label": 0|1, "labeled_at"?}, ...]}`` as store rows;
    ``labeled_at`` must be inside ``bounds``."""
    if not isinstance(payload, dict) or "labels" not in payload:
        raise ApiError(
            400,
            "invalid_input",
            'send {"labels": [{"transaction_id": "...", "label": 0 or 1}, ...]}',
            {"labels": "missing"},
        )
    items = list_payload(payload, "labels", max_batch, "labels")
    errors: dict[str, str] = {}
    rows = []
    for i, item in enumerate(items):
        prefix = f"labels[{i}]"
        if not isinstance(item, dict):
            errors[prefix] = "each label must be a JSON object"
            continue
        for key in item.keys() - LABEL_FIELDS:
            errors[f"{prefix}.{key}"] = "unknown field; allowed: transaction_id, label, labeled_at"
        tx = item.get("transaction_id")
        if tx is None:
            errors[f"{prefix}.transaction_id"] = "missing"
        elif err := id_error(tx):
            errors[f"{prefix}.transaction_id"] = err
        label = item.get("label")
        if "label" not in item:
            errors[f"{prefix}.label"] = "missing"
        elif isinstance(label, bool) or label not in LABEL_VALUES or not isinstance(label, int):
            errors[f"{prefix}.label"] = "must be 0 or 1"
        labeled_at = None
        if item.get("labeled_at") is not None:
            try:
                labeled_at = bounds.parse(item["labeled_at"], "labeled_at")
            except DataError as exc:
                errors[f"{prefix}.labeled_at"] = str(exc)
        rows.append(
            {"transaction_id": str(tx), "label": label, "labeled_at": labeled_at, "source": "api"}
        )
    if errors:
        raise bad_fields(errors, "the labels")
    return rows
