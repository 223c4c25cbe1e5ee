"""Metrics and threshold rules (code tests on hand-checked examples)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fraud_lib.errors import ConfigError, DataError
from fraud_lib.evaluate import (
    choose_threshold,
    compute_metrics,
    precision_at_k,
    recall_at_precision,
)

Y = np.array([0, 0, 0, 0, 0, 0, 1, 0, 1, 1])
S = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


def test_confusion_counts_and_rates_at_threshold():
    m = compute_metrics(Y, S, 0.6, cost_false_negative=100, cost_false_positive=5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 0, 6)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert m["expected_cost"] == pytest.approx(5 / 10)
    assert 0.9 < m["average_precision"] <= 1.0
    assert m["roc_auc"] == pytest.approx(20 / 21)


def test_single_class_gives_nan_ranking_metrics():
    m = compute_metrics(np.zeros(5), np.linspace(0, 1, 5), 0.5)
    assert math.isnan(m["average_precision"]) and math.isnan(m["roc_auc"])
    assert m["recall"] == 0.0


def test_recall_at_precision_and_precision_at_k():
    assert recall_at_precision(Y, S, 0.9) == pytest.approx(2 / 3)
    assert precision_at_k(Y, S, 2) == 1.0
    assert precision_at_k(Y, S, 4) == 0.75


def test_threshold_rules():
    assert choose_threshold(Y, S, "f1") == pytest.approx(0.6)
    assert choose_threshold(Y, S, "precision", target_precision=0.9) == pytest.approx(0.8)
    # Missing a fraud costs 100, a false alarm 5: flag down to the lowest fraud score.
    assert choose_threshold(Y, S, "cost", cost_false_negative=100, cost_false_positive=5) == 0.6
    # False alarms dearer than frauds: only the top two (both frauds) are worth flagging...
    assert choose_threshold(Y, S, "cost", cost_false_negative=1, cost_false_positive=50) == 0.8
    # ...and when the top score is a legit one, flagging nothing is cheapest.
    y, s = np.array([1, 0]), np.array([0.4, 0.9])
    assert choose_threshold(y, s, "cost", cost_false_negative=1, cost_false_positive=50) > 0.9


def test_threshold_errors():
    with pytest.raises(DataError, match="no frauds"):
        choose_threshold(np.zeros(3), [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="unknown threshold rule"):
        choose_threshold(Y, S, "magic")
    with pytest.raises(DataError, match="differ in length"):
        compute_metrics(Y, S[:3], 0.5)
