"""Metrics for imbalanced fraud detection and decision-threshold selection."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from fraud_lib.errors import ConfigError, DataError

PRIMARY_METRIC = "average_precision"


def _arrays(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape:
        raise DataError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    if y.size == 0:
        raise DataError("cannot evaluate on an empty set of transactions")
    return y, s


def recall_at_precision(y_true: Any, y_score: Any, precision: float = 0.9) -> float:
    """Highest recall reachable with precision >= ``precision`` (0 if never reached)."""
    y, s = _arrays(y_true, y_score)
    if y.sum() == 0:
        return 0.0
    prec, rec, _ = precision_recall_curve(y, s)
    ok = prec >= precision
    return float(rec[ok].max()) if ok.any() else 0.0


def precision_at_k(y_true: Any, y_score: Any, k: int) -> float:
    """Share of frauds among the ``k`` highest scores (the analysts' review queue)."""
    y, s = _arrays(y_true, y_score)
    k = max(1, min(k, y.size))
    top = np.argsort(-s, kind="stable")[:k]
    return float(y[top].mean())


def compute_metrics(
    y_true: Any,
    y_score: Any,
    threshold: float,
    *,
    cost_false_negative: float = 100.0,
    cost_false_positive: float = 5.0,
    top_k: int | None = None,
) -> dict[str, float]:
    """All evaluation metrics for one model on one labeled set.

    ``average_precision`` is the primary metric. Ranking metrics are ``nan`` when the set has
    only one class. ``expected_cost`` is the mean cost per transaction at ``threshold``.
    """
    y, s = _arrays(y_true, y_score)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    both_classes = 0 < y.sum() < y.size
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    k = top_k or max(1, round(y.size * 0.005))
    return {
        "average_precision": float(average_precision_score(y, s)) if both_classes else math.nan,
        "roc_auc": float(roc_auc_score(y, s)) if both_classes else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "recall_at_precision_90": recall_at_precision(y, s, 0.9),
        "precision_at_k": precision_at_k(y, s, k),
        "k": float(k),
        "expected_cost": (fn * cost_false_negative + fp * cost_false_positive) / y.size,
        "threshold": float(threshold),
        "n": float(y.size),
        "n_fraud": float(y.sum()),
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "tn": float(tn),
    }


def choose_threshold(
    y_true: Any,
    y_score: Any,
    rule: str = "f1",
    *,
    target_precision: float = 0.9,
    cost_false_negative: float = 100.0,
    cost_false_positive: float = 5.0,
) -> float:
    """Pick the decision threshold on validation data.

    Rules: ``f1`` maximises F1; ``cost`` minimises expected cost; ``precision`` takes the lowest
    threshold whose precision reaches ``target_precision`` (falling back to max F1 if none does).
    """
    y, s = _arrays(y_true, y_score)
    if y.sum() == 0:
        raise DataError(
            "the validation slice has no frauds, so no threshold can be chosen; "
            "use more data or a larger validation share"
        )
    prec, rec, thr = precision_recall_curve(y, s)
    prec, rec = prec[:-1], rec[:-1]  # the last point has no threshold
    if rule == "f1":
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
        return float(thr[int(np.argmax(f1))])
    if rule == "cost":
        order = np.sort(np.unique(s))
        n_pos = int(y.sum())
        # Candidate thresholds are the distinct scores; cost(t) = FN(t)*c_fn + FP(t)*c_fp.
        idx = np.searchsorted(order, s)
        pos_hist = np.bincount(idx[y == 1], minlength=order.size)
        neg_hist = np.bincount(idx[y == 0], minlength=order.size)
        fn = np.cumsum(pos_hist) - pos_hist  # frauds strictly below each candidate
        fp = neg_hist[::-1].cumsum()[::-1]  # legit at or above each candidate
        cost = fn * cost_false_negative + fp * cost_false_positive
        best = int(np.argmin(cost))
        if cost[best] >= n_pos * cost_false_negative:  # flagging nothing is as good
            return float(min(1.0, order[-1] + 1e-9))
        return float(order[best])
    if rule == "precision":
        ok = np.flatnonzero(prec >= target_precision)
        if ok.size:
            return float(thr[ok[0]])
        return choose_threshold(y, s, "f1")
    raise ConfigError(f"unknown threshold rule {rule!r}; use f1, cost or precision")
