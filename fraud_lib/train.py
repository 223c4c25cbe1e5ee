"""Model builders and time-ordered training with threshold selection on a validation slice."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from imblearn.under_sampling import RandomUnderSampler
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from fraud_lib.errors import ConfigError, DataError
from fraud_lib.evaluate import choose_threshold, compute_metrics
from fraud_lib.features import build_preprocessor, model_frame, predict_scores
from fraud_lib.retrain_params import MODEL_TYPES, RESAMPLERS
from fraud_lib.schema import FeatureSchema

log = logging.getLogger(__name__)

MIN_TRAIN_FRAUDS = 5
REFERENCE_ROWS = 10_000


@dataclass
class TrainResult:
    """A fitted model with its threshold, metrics and the data facts it was trained on."""

    model: Any
    schema: FeatureSchema
    model_type: str
    resample: str
    threshold: float
    threshold_rule: str
    metrics: dict[str, float]
    val_metrics: dict[str, float]
    n_train: int
    n_val: int
    n_test: int
    train_seconds: float
    time_range: dict[str, float]
    reference: pd.DataFrame = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)


def build_model(
    schema: FeatureSchema, model_type: str = "hgb", resample: str = "none", seed: int = 0
) -> Pipeline:
    """An imblearn pipeline: preprocessing, optional resampling (fit data only), classifier."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"unknown model {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    if resample not in RESAMPLERS:
        raise ConfigError(f"unknown resampling {resample!r}; use one of {', '.join(RESAMPLERS)}")
    weight = "balanced" if resample == "none" else None
    if model_type == "hgb":
        # No class weights for HGB: average precision is a ranking metric that weighting does
        # not improve here, the threshold is tuned on validation anyway, and any sample weight
        # sends scikit-learn 1.9's binning down a slow weighted-percentile path (~15x slower
        # below 200k rows). Early stopping watches the log-loss of the time-ordered validation
        # slice, which is far less noisy than its average precision with few frauds.
        clf: Any = HistGradientBoostingClassifier(
            learning_rate=0.05,
            max_iter=500,
            max_leaf_nodes=31,
            min_samples_leaf=40,
            l2_regularization=1.0,
            early_stopping=True,
            scoring="loss",
            n_iter_no_change=30,
            random_state=seed,
        )
    elif model_type == "lr":
        clf = LogisticRegression(C=0.5, max_iter=2000, class_weight=weight)
    else:
        clf = RandomForestClassifier(
            n_estimators=200,
            min_samples_leaf=3,
            max_features="sqrt",
            class_weight="balanced_subsample" if weight else None,
            n_jobs=-1,
            random_state=seed,
        )
    steps: list[tuple[str, Any]] = [("prep", build_preprocessor(schema, model_type))]
    if resample == "smote":
        steps.append(("resample", SMOTE(sampling_strategy=0.1, random_state=seed)))
    elif resample == "undersample":
        steps.append(("resample", RandomUnderSampler(sampling_strategy=0.1, random_state=seed)))
    steps.append(("clf", clf))
    return Pipeline(steps)


def time_split(
    df: pd.DataFrame, schema: FeatureSchema, test_fraction: float, val_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split by transaction time: oldest rows train, then validation, newest rows test."""
    if (
        not 0 <= test_fraction < 1
        or not 0 < val_fraction < 1
        or test_fraction + val_fraction >= 0.9
    ):
        raise ConfigError(
            "test and validation fractions must be in [0, 1) and leave at least 10% for training"
        )
    ordered = df.sort_values(schema.time, kind="stable").reset_index(drop=True)
    n = len(ordered)
    n_test = round(n * test_fraction)
    n_val = max(1, round(n * val_fraction))
    n_train = n - n_test - n_val
    return (
        ordered.iloc[:n_train],
        ordered.iloc[n_train : n_train + n_val],
        ordered.iloc[n_train + n_val :],
    )


def _fit(
    model: Pipeline, model_type: str, train: pd.DataFrame, val: pd.DataFrame, schema: FeatureSchema
) -> None:
    X, y = model_frame(train, schema), train[schema.label].to_numpy()
    if model_type == "hgb":
        # Early stopping on the time-ordered validation slice instead of a random split.
        prep = model.named_steps["prep"]
        X_val = prep.fit(X).transform(model_frame(val, schema))
        y_val = val[schema.label].to_numpy()
        if 0 < y_val.sum() < y_val.size:
            model.fit(X, y, clf__X_val=X_val, clf__y_val=y_val)
            return
        model.set_params(clf__early_stopping=False, clf__max_iter=200)
    model.fit(X, y)


def train_model(
    df: pd.DataFrame,
    schema: FeatureSchema,
    *,
    model_type: str = "hgb",
    resample: str = "none",
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
    threshold_rule: str = "f1",
    target_precision: float = 0.9,
    cost_false_negative: float = 100.0,
    cost_false_positive: float = 5.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on the oldest rows, pick the threshold on the next slice, test on the newest.

    ``df`` must already be validated (``FeatureSchema.validate_frame``). With
    ``test_fraction=0`` the metrics are those of the validation slice.
    """
    say = progress or (lambda _msg: None)
    train, val, test = time_split(df, schema, test_fraction, val_fraction)
    n_fraud = int(train[schema.label].sum())
    if n_fraud < MIN_TRAIN_FRAUDS:
        raise DataError(
            f"the training slice has {n_fraud} fraud(s); at least {MIN_TRAIN_FRAUDS} are needed. "
            "Use more data (more days) or a smaller --test-fraction"
        )
    if int(val[schema.label].sum()) == 0:
        raise DataError(
            "the validation slice has no frauds, so no threshold can be chosen; use more data"
        )
    model = build_model(schema, model_type, resample, seed)
    say(f"training {model_type} (resample={resample}) on {len(train):,} rows, {n_fraud} frauds")
    started = time.perf_counter()
    _fit(model, model_type, train, val, schema)
    train_seconds = time.perf_counter() - started
    say(f"trained in {train_seconds:.1f}s; choosing the threshold ({threshold_rule}) on validation")
    costs = {"cost_false_negative": cost_false_negative, "cost_false_positive": cost_false_positive}
    val_scores = predict_scores(model, val, schema)
    threshold = choose_threshold(
        val[schema.label], val_scores, threshold_rule, target_precision=target_precision, **costs
    )
    val_metrics = compute_metrics(val[schema.label], val_scores, threshold, **costs)
    if len(test):
        test_scores = predict_scores(model, test, schema)
        metrics = compute_metrics(test[schema.label], test_scores, threshold, **costs)
    else:
        metrics = dict(val_metrics)
    metrics.update(
        n_train=float(len(train)),
        n_test=float(len(test)),
        train_seconds=train_seconds,
    )
    clf = model.named_steps["clf"]
    params = {"model_type": model_type, "resample": resample, "seed": seed}
    if model_type == "hgb":
        params["n_iter"] = int(clf.n_iter_)
    sample = train.sample(n=min(REFERENCE_ROWS, len(train)), random_state=seed)
    reference = sample[[schema.time, *schema.model_columns, schema.label]].copy()
    reference["score"] = predict_scores(model, reference, schema)
    return TrainResult(
        model=model,
        schema=schema,
        model_type=model_type,
        resample=resample,
        threshold=threshold,
        threshold_rule=threshold_rule,
        metrics=metrics,
        val_metrics=val_metrics,
        n_train=len(train),
        n_val=len(val),
        n_test=len(test),
        train_seconds=train_seconds,
        time_range={
            "train_start": float(train[schema.time].min()),
            "fit_end": float(val[schema.time].max()),
            "end": float(df[schema.time].max()),
        },
        reference=reference.reset_index(drop=True),
        params=params,
    )
