"""The Params of ``fraud_retrain``: one definition for the DAG, ``fraud retrain --conf`` and the
trainer (model types, resamplers). Light on purpose: the DAG file imports it at parse time.

Each entry is a JSON Schema (what Airflow's ``Param`` validates) with its default; the CLI
validates a conf against the same schemas before it starts a run, and refuses unknown keys
(Airflow would accept and ignore them).
"""

from __future__ import annotations

import math
from typing import Any

from fraud_lib.errors import ConfigError

MODEL_TYPES = {
    "hgb": "HistGradientBoosting, early stopping on the time-ordered validation slice",
    "lr": "logistic regression on standardised features, class-weighted",
    "rf": "random forest, 200 trees, balanced class weights per bootstrap",
}
RESAMPLERS = {
    "none": "no resampling (class weights handle the imbalance)",
    "smote": "SMOTE oversampling of frauds to 10% of legit, training rows only",
    "undersample": "random undersampling of legit rows to 10:1, training rows only",
}


def _optional(kind: str, description: str, **bounds: Any) -> dict[str, Any]:
    return {"default": None, "type": ["null", kind], "description": description, **bounds}


PARAMS: dict[str, dict[str, Any]] = {
    "train_window_days": _optional(
        "integer",
        "Days of scored traffic (by scoring time, ending at the run's interval end) to "
        "train and evaluate on. Empty: FRAUD_TRAIN_WINDOW_DAYS (28).",
        minimum=2,
        maximum=730,
    ),
    "eval_window_days": _optional(
        "number",
        "The last N days of event time in the window are held out: champion and "
        "challenger are compared there. Empty: FRAUD_EVAL_WINDOW_DAYS (3).",
        minimum=0.1,
        maximum=90,
    ),
    "model_type": {
        "default": "hgb",
        "type": "string",
        "enum": list(MODEL_TYPES),
        "description": "Challenger model: hgb = HistGradientBoosting, lr = logistic "
        "regression, rf = random forest.",
    },
    "resample": {
        "default": "none",
        "type": "string",
        "enum": list(RESAMPLERS),
        "description": "Resampling of the training rows only: none (class weights), smote "
        "(frauds to 10% of legit), undersample (legit to 10:1).",
    },
    "min_improvement": _optional(
        "number",
        "Average-precision gain the challenger needs over the champion to be promoted. "
        "Empty: FRAUD_PROMOTE_MIN_IMPROVEMENT (0.005).",
        minimum=0,
        maximum=1,
    ),
    "force_promotion": {
        "default": False,
        "type": "boolean",
        "description": "Promote the challenger even if the gate says no (floors and margin "
        "skipped; the decision is still recorded).",
    },
    "dry_run": {
        "default": False,
        "type": "boolean",
        "description": "Decide and record the decision, but do not move the champion alias.",
    },
}


def schema_of(name: str) -> dict[str, Any]:
    """The JSON Schema of Param ``name`` (its entry without the default)."""
    return {k: v for k, v in PARAMS[name].items() if k != "default"}


def validate_conf(conf: dict[str, Any]) -> None:
    """Raise ConfigError naming the first unknown key or invalid value of a run conf."""
    import jsonschema

    unknown = sorted(set(conf) - set(PARAMS))
    if unknown:
        raise ConfigError(
            f"--conf: unknown key {unknown[0]!r}; fraud_retrain takes {', '.join(PARAMS)}"
        )
    for name, value in conf.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--conf: {name}={value!r} is invalid: not a finite number")
        try:
            jsonschema.validate(value, schema_of(name))
        except jsonschema.ValidationError as exc:
            raise ConfigError(f"--conf: {name}={value!r} is invalid: {exc.message}") from None
