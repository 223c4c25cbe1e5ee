"""A binary HistGradientBoostingClassifier compiled to machine code with numba.

The fitted trees are flattened into a few arrays (for every node: feature, threshold, two
children; a leaf points at itself) and a numba kernel walks them: rows go :data:`BLOCK` at a
time through each tree, one level per step for all rows of the block, with no branch on the
data, so the CPU overlaps the rows' memory loads instead of mispredicting one branch per level.
Leaf values are added in tree order to the baseline, as scikit-learn adds them, and the same
``expit`` turns them into probabilities: the scores are identical to ``predict_proba``'s, which
:func:`serving.scoring.prepare` checks on the canary batch at every load (this reads
scikit-learn's fitted tree records, ``_predictors`` and ``_baseline_prediction``).

Measured on the 2-vCPU VM (105 trees, 31 leaves, depth up to 18), single thread: 10,000 rows
27 ms where ``predict_proba`` takes 46 ms; one row 12 us where ``predict_proba`` spends ~1 ms in
per-tree Python overhead. From :data:`HOLD_GIL_BELOW` rows the kernel releases the GIL, so two
threads score two halves at once; fewer rows keep it (a thread that released it for ~12 us
waited to take it back behind the worker's other threads).
It is compiled when this module is imported (two variants, ~0.8 s each, once per process,
then read from numba's disk cache).

Rows must be finite: the walk sends ``x > threshold`` right and everything else left, so a NaN
would go left where the tree may send missing values right (the API refuses NaN and inf).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from scipy.special import expit

BLOCK = 32  # rows walked together (16: +5 %, 64: same)
HOLD_GIL_BELOW = 64  # fewer rows are scored without releasing the GIL

_SIGNATURE = (
    "void(float64[:, ::1], int32[::1], int32[::1], int32[::1], float64[::1], int32[::1], "
    "float64[::1], float64, float64[::1])"
)


@numba.njit(nogil=True, cache=False)
def _walk(X, roots, depths, feature, threshold, children, value, baseline, out):
    """``out[i]`` = baseline + row i's leaf value in every tree, in tree order."""
    nodes = np.empty(BLOCK, np.int32)
    acc = np.empty(BLOCK)
    n = X.shape[0]
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        for j in range(m):
            acc[j] = baseline
        for t in range(roots.shape[0]):
            for j in range(m):
                nodes[j] = roots[t]
            for _ in range(depths[t]):
                for j in range(m):
                    node = nodes[j]
                    go_right = X[start + j, feature[node]] > threshold[node]
                    nodes[j] = children[2 * node + go_right]
            for j in range(m):
                acc[j] += value[nodes[j]]
        for j in range(m):
            out[start + j] = acc[j]


@numba.njit(_SIGNATURE, nogil=True, cache=True)
def _raw_predictions(X, roots, depths, feature, threshold, children, value, baseline, out):
    """:func:`_walk`, the GIL released: two threads score two halves of a batch at once."""
    _walk(X, roots, depths, feature, threshold, children, value, baseline, out)


@numba.njit(_SIGNATURE, cache=True)
def _raw_predictions_held(X, roots, depths, feature, threshold, children, value, baseline, out):
    """:func:`_walk` keeping the GIL, for a few rows: a thread that releases it for ~12 us
    then waits to take it back behind the worker's other request threads."""
    _walk(X, roots, depths, feature, threshold, children, value, baseline, out)


class CompiledTrees:
    """The trees of a binary HGB classifier as flat arrays, scored by the numba kernel."""

    ARRAYS = ("feature", "threshold", "value", "children", "roots", "depths")

    def __init__(self, arrays: dict[str, np.ndarray], baseline: float, n_features: int) -> None:
        """From the flat arrays (:attr:`ARRAYS`, as :meth:`from_classifier` makes them): how a
        worker that never imports scikit-learn gets them (:mod:`serving.model_files`)."""
        dtypes = {"threshold": np.float64, "value": np.float64}
        for name in self.ARRAYS:
            arr = np.ascontiguousarray(arrays[name], dtype=dtypes.get(name, np.int32))
            setattr(self, name, arr)
        self.baseline = float(baseline)
        self.n_features = int(n_features)

    @classmethod
    def from_classifier(cls, clf: Any) -> CompiledTrees:
        """Flatten a fitted classifier (one that :meth:`supports` accepts)."""
        predictors = [p[0] for p in clf._predictors]
        sizes = [len(p.nodes) for p in predictors]
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        n = int(offsets[-1])
        a = {"feature": np.zeros(n, np.int32), "threshold": np.zeros(n), "value": np.zeros(n),
             "children": np.zeros(2 * n, np.int32)}  # fmt: skip
        # children interleaved: [2*i] = left (x <= threshold), [2*i + 1] = right; a leaf points
        # at itself both ways (feature 0, threshold +inf: every further step stays there)
        for start, pred in zip(offsets[:-1].tolist(), predictors, strict=True):
            nodes = pred.nodes
            ids = np.arange(start, start + len(nodes))
            leaf = nodes["is_leaf"].astype(bool)
            a["feature"][ids] = np.where(leaf, 0, nodes["feature_idx"])
            a["threshold"][ids] = np.where(leaf, np.inf, nodes["num_threshold"])
            a["value"][ids] = nodes["value"]
            a["children"][2 * ids] = np.where(leaf, ids, nodes["left"] + start)
            a["children"][2 * ids + 1] = np.where(leaf, ids, nodes["right"] + start)
        a["roots"] = offsets[:-1].astype(np.int32)
        a["depths"] = np.array([int(p.nodes["depth"].max()) for p in predictors], np.int32)
        baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])
        return cls(a, baseline, int(clf.n_features_in_))

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat arrays by name (:attr:`ARRAYS`), for :meth:`__init__`."""
        return {name: getattr(self, name) for name in self.ARRAYS}

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
        """Fraud probabilities for the (finite) rows of ``X``."""
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        X = np.ascontiguousarray(X, dtype=np.float64)
        if not X.flags.writeable:  # the kernel's signature takes writable arrays
            X = X.copy()
        out = np.empty(X.shape[0])
        kernel = _raw_predictions_held if X.shape[0] < HOLD_GIL_BELOW else _raw_predictions
        kernel(X, self.roots, self.depths, self.feature, self.threshold,
                         self.children, self.value, self.baseline, out)  # fmt: skip
        return expit(out)
