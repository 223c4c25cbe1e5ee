"""drift.py: the Evidently wrapper (HTML + JSON summary), sampling, score PSI, thresholds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fraud_lib.data import generate
from fraud_lib.drift import drift_report, population_stability_index
from fraud_lib.errors import DataError
from fraud_lib.schema import FeatureSchema
from tests.lib.drift_html import assert_report_agrees

COLUMNS = ["a", "b", "c", "d"]


def _frame(n: int, seed: int, *, shift: dict[str, float] | None = None, fraud_rate=0.01):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.standard_normal((n, len(COLUMNS))), columns=COLUMNS)
    for col, delta in (shift or {}).items():
        df[col] += delta
    df["score"] = rng.beta(0.5, 20, n)
    df["Class"] = (rng.random(n) < fraud_rate).astype(int)
    return df


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.beta(0.5, 20, 20_000)
    assert population_stability_index(ref, rng.beta(0.5, 20, 20_000)) < 0.01
    assert population_stability_index(ref, rng.beta(0.5, 10, 20_000)) > 0.1
    assert population_stability_index(ref, []) is None
    # a score piled up at 0 gives merged bins, not a division by zero
    assert population_stability_index(np.zeros(100), np.zeros(50)) == pytest.approx(0.0)


@pytest.mark.slow
def test_no_drift_report_writes_html_and_json(tmp_path):
    summary = drift_report(
        _frame(3000, 1),
        _frame(3000, 2),
        COLUMNS,
        out_dir=tmp_path,
        name="calm",
        sample_rows=10_000,
        label_column="Class",
    )
    assert summary.drift_detected is False and summary.drifted_columns == []
    html = (tmp_path / "calm.html").read_text()
    assert "<html" in html[:1000].lower() and len(html) > 1_000_000  # JS bundled: self-contained
    saved = json.loads((tmp_path / "calm.json").read_text())
    assert saved["drift_detected"] is False
    assert set(saved["per_column"]) == set(COLUMNS)
    assert saved["per_column"]["a"]["method"] == "wasserstein"
    assert saved["prediction_drift"]["drifted"] is False
    assert saved["target_drift"]["reference_rate"] == pytest.approx(
        summary.target_drift["reference_rate"]
    )
    assert saved["rows"] == {
        "reference": 3000,
        "current": 3000,
        "reference_used": 3000,
        "current_used": 3000,
    }
    assert saved["sampling"] == "all rows used"
    assert saved["score_shift"]["psi"] < 0.05


@pytest.mark.slow
def test_shifted_columns_are_flagged_and_sampling_is_seeded(tmp_path):
    ref, cur = _frame(6000, 1), _frame(6000, 2, shift={"a": 0.5, "b": 0.5})
    kwargs = dict(out_dir=tmp_path, sample_rows=2000, drift_share_threshold=0.5)
    first = drift_report(ref, cur, COLUMNS, name="one", **kwargs)
    assert first.drifted_columns == ["a", "b"] and first.drifted_share == 0.5
    assert first.drift_detected and "2 of 4 features drifted" in first.reasons[0]
    assert first.rows["current_used"] == 2000 and "at most 2,000 rows" in first.sampling
    again = drift_report(ref, cur, COLUMNS, name="two", **kwargs)
    assert again.per_column == first.per_column
    higher = drift_report(
        ref, cur, COLUMNS, name="three", **{**kwargs, "drift_share_threshold": 0.75}
    )
    assert not higher.drift_detected


@pytest.mark.slow
def test_score_shift_alone_detects_drift_and_missing_scores_are_left_out(tmp_path):
    ref, cur = _frame(3000, 1), _frame(3000, 2)
    cur["score"] = np.clip(cur["score"] * 4, 0, 1)
    summary = drift_report(ref, cur, COLUMNS, out_dir=tmp_path, name="score", sample_rows=5000)
    assert summary.drifted_columns == []
    assert summary.drift_detected and summary.reasons[0].startswith("score PSI")
    # features: "NOT detected" in Evidently's headline; the header says the PSI decided
    shown = assert_report_agrees(summary.as_dict())
    assert not shown.detected and "score PSI" in shown.header
    cur["score"] = np.nan
    no_score = drift_report(ref, cur, COLUMNS, out_dir=tmp_path, name="noscore", sample_rows=5000)
    assert no_score.prediction_drift is None and no_score.score_shift is None


def test_missing_columns_and_empty_sides_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="lacks column"):
        drift_report(
            _frame(100, 1),
            _frame(100, 2).drop(columns="c"),
            COLUMNS,
            out_dir=tmp_path,
            name="x",
            sample_rows=100,
        )
    with pytest.raises(DataError, match="no rows"):
        drift_report(
            _frame(100, 1),
            _frame(100, 2).iloc[:0],
            COLUMNS,
            out_dir=tmp_path,
            name="x",
            sample_rows=100,
        )


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "drift"), [("none", False), ("new_pattern", True)])
def test_the_report_headline_agrees_with_the_decision(tmp_path, scenario, drift):
    # The project's own setting: 2 of 29 features drifting is drift (share 0.07 >= 0.05), where
    # Evidently's default share of 0.5 over 30 columns (features + score) said "NOT detected".
    schema = FeatureSchema()
    reference = generate(4, rows_per_day=2000, seed=1, fraud_rate=0.01)
    current = generate(
        2, rows_per_day=2000, seed=2, fraud_rate=0.01, scenario=scenario, start_day=4,
        drift_start_day=4,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    for frame in (reference, current):
        frame["score"] = rng.beta(0.5, 20, len(frame))
    context = {"DAG run": "fraud_retrain manual__x", "window": "w", "champion": "v3"}
    summary = drift_report(
        reference,
        current,
        list(schema.features),
        out_dir=tmp_path,
        name=scenario,
        sample_rows=5000,
        label_column=schema.label,
        drift_share_threshold=0.05,
        context=context,
    )
    assert summary.drift_detected is drift
    assert (summary.drifted_count >= 2) is drift
    shown = assert_report_agrees(summary.as_dict())
    assert shown.detected is drift and shown.columns == len(schema.features) == 29
    assert shown.drift_share == 0.05
    for label, text in context.items():
        assert f"{label} {text}" in shown.header
    assert "score PSI" in shown.header and "Jensen-Shannon" in shown.header
    saved = json.loads((tmp_path / f"{scenario}.json").read_text())
    assert saved["context"] == context
    assert saved["evidently_dataset_drift"]["count"] == summary.drifted_count
    assert saved["target_drift"]["method"] == "jensenshannon"


def test_a_constant_column_is_checked_not_an_error(tmp_path):
    """A feature with one value on both sides (a behavioral count in a short window) gave a
    RuntimeWarning in Evidently's correlation matrix (an error under the DAG tests)."""
    reference, current = _frame(2000, 1), _frame(2000, 2)
    reference["e"] = current["e"] = 0.0
    summary = drift_report(
        reference, current, [*COLUMNS, "e"], out_dir=tmp_path, name="flat", sample_rows=10_000
    )
    assert summary.drift_detected is False and "e" not in summary.drifted_columns
