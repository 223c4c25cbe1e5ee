"""A registry model made ready to score fast, and the canary check every version must pass.

Three predictors, fastest first; each is used only if it gives the same scores as the logged
pipeline on the canary batch (``max |diff| <= 1e-12``, no warnings), else the next one:

``compiled-trees``
    HistGradientBoosting (binary, numeric splits only) flattened into numpy arrays and
    evaluated for all trees at once, level by level: ~0.1 ms for one row with 400 trees where
    ``predict_proba`` spends ~5 ms in per-tree Python overhead. Used for up to
    :data:`SMALL_BATCH` rows; it reads scikit-learn's fitted tree records
    (``_predictors``, ``_baseline_prediction``), which is why it is verified at every load.
``estimator``
    The pipeline's final estimator on a float64 numpy matrix, when the preprocessing is a
    pure passthrough of the numeric feature columns (no DataFrame on the hot path). From
    :data:`SPLIT_BATCH` rows the matrix is scored in two halves on two threads (scikit-learn's
    tree traversal releases the GIL; 10,000 rows, 105 trees: 45 -> 24 ms), leaving
    ``OMP_NUM_THREADS=1`` and so single requests alone.
``pipeline``
    The whole logged pipeline on a DataFrame (categorical columns, scalers...).
"""

from __future__ import annotations

import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from fraud_lib.registry import LoadedModel
from fraud_lib.schema import FeatureSchema, records_to_frame

log = logging.getLogger(__name__)

SMALL_BATCH = 16  # rows up to which compiled trees beat scikit-learn's Cython predictor
SPLIT_BATCH = 2000  # rows from which the estimator scores two halves on two threads
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


class CompiledTrees:
    """A binary HistGradientBoostingClassifier as flat numpy arrays (see module docstring)."""

    def __init__(self, clf: Any) -> None:
        predictors = [p[0] for p in clf._predictors]
        sizes = [len(p.nodes) for p in predictors]
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.intp)
        n = int(offsets[-1])
        self.feature = np.zeros(n, np.intp)
        self.threshold = np.zeros(n)
        self.value = np.zeros(n)
        # children interleaved: [2*i] = right child, [2*i + 1] = left child (taken when
        # x <= threshold); leaves point at themselves with threshold +inf.
        self.children = np.zeros(2 * n, np.intp)
        for start, pred in zip(offsets[:-1].tolist(), predictors, strict=True):
            nodes = pred.nodes
            ids = np.arange(start, start + len(nodes))
            leaf = nodes["is_leaf"].astype(bool)
            self.feature[ids] = np.where(leaf, 0, nodes["feature_idx"])
            self.threshold[ids] = np.where(leaf, np.inf, nodes["num_threshold"])
            self.value[ids] = nodes["value"]
            self.children[2 * ids] = np.where(leaf, ids, nodes["right"] + start)
            self.children[2 * ids + 1] = np.where(leaf, ids, nodes["left"] + start)
        self.roots = offsets[:-1].copy()
        self.depth = max(int(p.nodes["depth"].max()) for p in predictors)
        self.baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])

    @classmethod
    def supports(cls, clf: Any) -> bool:
        """True for a fitted binary HGB classifier with numeric splits only."""
        if type(clf).__name__ != "HistGradientBoostingClassifier":
            return False
        predictors = getattr(clf, "_predictors", None)
        baseline = getattr(clf, "_baseline_prediction", None)
        if not predictors or baseline is None or np.asarray(baseline).size != 1:
            return False
        if len(getattr(clf, "classes_", ())) != 2 or clf.n_trees_per_iteration_ != 1:
            return False
        return all(
            len(p) == 1 and not np.asarray(p[0].nodes["is_categorical"]).any() for p in predictors
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities for the (finite, float64) rows of ``X``."""
        children, feature, threshold = self.children, self.feature, self.threshold
        if X.shape[0] == 1:
            x = X[0]
            idx = self.roots
            for _ in range(self.depth):
                idx = children[2 * idx + (x[feature[idx]] <= threshold[idx])]
            # Sequential sum in tree order, as scikit-learn accumulates: identical scores.
            return expit(np.array([sum(self.value[idx].tolist(), self.baseline)]))
        n, width = X.shape
        flat = np.ascontiguousarray(X).ravel()
        row_start = (np.arange(n, dtype=np.intp) * width)[:, None]
        idx = np.broadcast_to(self.roots, (n, len(self.roots)))
        for _ in range(self.depth):
            idx = children[2 * idx + (flat[row_start + feature[idx]] <= threshold[idx])]
        leaves = np.concatenate((np.full((n, 1), self.baseline), self.value[idx]), axis=1)
        return expit(np.cumsum(leaves, axis=1)[:, -1])


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
        if self.compiled is not None and X.shape[0] <= SMALL_BATCH:
            return self.compiled.predict(X)
        if self.estimator is not None:
            if X.shape[0] < SPLIT_BATCH:
                return self.estimator.predict_proba(X)[:, 1]
            half = X.shape[0] // 2
            second = _HALF_SCORER.submit(self.estimator.predict_proba, X[half:])
            first = self.estimator.predict_proba(X[:half])
            return np.concatenate((first[:, 1], second.result()[:, 1]))
        frame = pd.DataFrame(X, columns=list(self.schema.features))
        return self.loaded.model.predict_proba(frame)[:, 1]

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
            compiled = CompiledTrees(estimator)
        except Exception as exc:  # an unexpected scikit-learn layout: keep the estimator
            log.info("compiled-trees predictor not used: %s: %s", type(exc).__name__, exc)
            return served
        single = lambda: np.concatenate([compiled.predict(X[i : i + 1]) for i in range(len(X))])  # noqa: E731
        batched = lambda: compiled.predict(X[: SMALL_BATCH * 2])  # noqa: E731
        if _same(single, reference, "compiled-trees") and _same(
            batched, reference[: SMALL_BATCH * 2], "compiled-trees"
        ):
            served.compiled, served.predictor = compiled, "compiled-trees"
    return served
