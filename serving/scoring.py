"""A registry model made ready to score fast, and the canary check every version must pass.

Three predictors, fastest first; each is used only if it gives the same scores as the logged
pipeline on the canary batch (``max |diff| <= 1e-12``, no warnings), else the next one:

``compiled-trees``
    HistGradientBoosting (binary, numeric splits only) walked by a compiled C kernel
    (:mod:`serving.trees`): one row in 5 us where ``predict_proba`` spends ~1 ms in per-tree
    Python overhead, 10,000 rows in 9.5 ms where it takes 46 (105 trees, one thread).
``estimator``
    The pipeline's final estimator on a float64 numpy matrix, when the preprocessing is a
    pure passthrough of the numeric feature columns (no DataFrame on the hot path).
``pipeline``
    The whole logged pipeline on a DataFrame (categorical columns, scalers...).

With the first two, from :data:`SPLIT_BATCH` rows the matrix is scored in two halves on two
threads (both release the GIL: 10,000 rows with compiled trees 7.8 -> 4.2 ms, with the
estimator 46 -> 25 ms), leaving ``OMP_NUM_THREADS=1`` and so single requests alone.
"""

from __future__ import annotations

import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fraud_lib.schema import FeatureSchema, records_to_frame
from serving.trees import CompiledTrees

if TYPE_CHECKING:  # the registry imports MLflow: not in a worker that reads model files
    from fraud_lib.registry import LoadedModel

log = logging.getLogger(__name__)

SPLIT_BATCH = 2000  # rows from which two halves are scored on two threads
CANARY_ROWS = 64
TOLERANCE = 1e-12


_HALF_SCORER = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="score-half"
)  # no thread until used


class CanaryError(Exception):
    """A model version failed the canary batch (raised, or gave invalid scores)."""


def canary_matrix(schema: FeatureSchema, rows: int = CANARY_ROWS) -> np.ndarray:
    """Deterministic numeric canary rows in ``schema.features`` order: heavy-tailed values,
    one all-zero row and two rows at +-1000 (extremes a real request may carry)."""
    rng = np.random.default_rng(20240601)
    X = rng.standard_t(5, size=(rows, len(schema.features))) * 2.0
    X[0] = 0.0
    X[1] = 1000.0
    X[2] = -1000.0
    return X


def canary_records(schema: FeatureSchema, rows: int = CANARY_ROWS) -> list[dict[str, Any]]:
    """Canary rows as validated records (categorical columns get unseen and empty values)."""
    X = canary_matrix(schema, rows)
    records = [dict(zip(schema.features, row, strict=True)) for row in X.tolist()]
    for i, rec in enumerate(records):
        for col in schema.categorical:
            rec[col] = "" if i % 2 else "canary"
    return records


def _passthrough_estimator(model: Any, schema: FeatureSchema) -> Any | None:
    """The final estimator when every earlier pipeline step is, at predict time, a pure
    passthrough of ``schema.features`` in order (resamplers do nothing at predict time)."""
    steps = getattr(model, "steps", None)
    if not steps or schema.categorical:
        return None
    for _, step in steps[:-1]:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue
        spec = getattr(step, "transformers", None)
        if (
            spec is None
            or getattr(step, "remainder", None) != "drop"
            or len(spec) != 1
            or spec[0][1] != "passthrough"
            or list(spec[0][2]) != list(schema.features)
            or getattr(step, "_sklearn_output_config", {}).get("transform") not in (None, "default")
        ):
            return None
    estimator = steps[-1][1]
    if hasattr(estimator, "feature_names_in_") or not hasattr(estimator, "predict_proba"):
        return None
    return estimator


def _check_scores(scores: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=float)
    if arr.shape != (n,):
        raise CanaryError(f"{what} returned shape {arr.shape} for {n} canary rows")
    if not np.isfinite(arr).all():
        raise CanaryError(f"{what} returned non-finite scores on the canary batch")
    if (arr < 0).any() or (arr > 1).any():
        raise CanaryError(f"{what} returned scores outside [0, 1] on the canary batch")
    return arr


def _same(fast: Any, reference: np.ndarray, what: str) -> bool:
    """Score the canary with ``fast``; True if it matches ``reference`` without warnings."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = np.asarray(fast(), dtype=float)
    except Exception as exc:
        log.info("%s predictor not used: %s: %s", what, type(exc).__name__, exc)
        return False
    ok = not caught and got.shape == reference.shape
    ok = ok and bool(np.max(np.abs(got - reference), initial=0.0) <= TOLERANCE)
    if not ok:
        log.info("%s predictor not used: differs from the pipeline on the canary batch", what)
    return ok


@dataclass
class ServedModel:
    """A loaded model version with its fastest verified predictor."""

    loaded: LoadedModel
    predictor: str
    loaded_at: float = field(default_factory=time.time)
    estimator: Any = None
    compiled: CompiledTrees | None = None

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def schema(self) -> FeatureSchema:
        return self.loaded.schema

    @property
    def threshold(self) -> float:
        return self.loaded.threshold

    @property
    def numeric_only(self) -> bool:
        """True when requests can be scored as a float matrix (no categorical columns)."""
        return not self.loaded.schema.categorical

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        """Scores for a float64 matrix in ``schema.features`` order (numeric-only schemas)."""
        if self.compiled is not None:
            predict = self.compiled.predict
        elif self.estimator is not None:
            predict = self._estimator_scores
        else:
            import pandas as pd  # the pipeline predictor only: its worker has pandas loaded

            frame = pd.DataFrame(X, columns=list(self.schema.features))
            return self.loaded.model.predict_proba(frame)[:, 1]
        if X.shape[0] < SPLIT_BATCH:
            return predict(X)
        half = X.shape[0] // 2
        second = _HALF_SCORER.submit(predict, X[half:])
        first = predict(X[:half])
        return np.concatenate((first, second.result()))

    def _estimator_scores(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(X)[:, 1]

    def score_records(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Scores for validated records (any schema) through the whole pipeline."""
        frame = records_to_frame(self.schema, records)
        return np.asarray(self.loaded.model.predict_proba(frame)[:, 1], dtype=float)


def prepare(loaded: LoadedModel) -> ServedModel:
    """Score the canary batch with the logged pipeline, then pick the fastest predictor that
    reproduces it. Raises :class:`CanaryError` if the pipeline itself fails the canary."""
    schema = loaded.schema
    records = canary_records(schema)
    try:
        reference = _check_scores(
            loaded.model.predict_proba(records_to_frame(schema, records))[:, 1],
            len(records),
            "the model",
        )
    except CanaryError:
        raise
    except Exception as exc:
        raise CanaryError(
            f"the model raised on the canary batch: {type(exc).__name__}: {exc}"
        ) from exc
    served = ServedModel(loaded, predictor="pipeline")
    estimator = _passthrough_estimator(loaded.model, schema)
    if estimator is None:
        return served
    X = canary_matrix(schema)
    if not _same(lambda: estimator.predict_proba(X)[:, 1], reference, "estimator"):
        return served
    served.estimator, served.predictor = estimator, "estimator"
    if CompiledTrees.supports(estimator):
        try:
            compiled = CompiledTrees.from_classifier(estimator)
        except Exception as exc:  # an unexpected scikit-learn layout: keep the estimator
            log.info("compiled-trees predictor not used: %s: %s", type(exc).__name__, exc)
            return served
        if check_predictor(compiled, X, reference):
            served.compiled, served.predictor = compiled, "compiled-trees"
    return served


def check_predictor(compiled: CompiledTrees, X: np.ndarray, reference: np.ndarray) -> bool:
    """True if ``compiled`` scores the canary matrix ``X`` as ``reference`` (the pipeline's
    scores), one row at a time and as one batch."""
    single = lambda: np.concatenate([compiled.predict(X[i : i + 1]) for i in range(len(X))])  # noqa: E731
    return _same(single, reference, "compiled-trees") and _same(
        lambda: compiled.predict(X), reference, "compiled-trees"
    )
