"""Drift reports: Evidently data drift (features), prediction drift (score) and target drift (label).

One function, :func:`drift_report`, writes a self-contained Evidently HTML report and a small JSON
summary and returns a :class:`DriftSummary`. Evidently is touched only in :func:`_run_evidently`,
so an API change there touches one function.

**Test and threshold.** Every numeric column is compared with Evidently's normed Wasserstein
distance (Wasserstein-1 divided by the reference standard deviation) against a threshold of 0.1,
i.e. a column drifts when its distribution moved by about a tenth of a standard deviation. This is
Evidently's own default for samples above 1,000 rows, but set explicitly, so that the verdict does
not change with the sample size: a p-value test (K-S, alpha 0.05) on 20,000 vs 10,000 rows
flags mean shifts of ~0.04 sd, which real traffic always has, and would keep retraining busy for
nothing. Categorical columns and the label (target drift) use the Jensen-Shannon distance
against 0.1, also set explicitly (Evidently's default below 1,000 rows is a p-value test, whose
score means the opposite); the fraud rates of both sides are reported beside the label because
a rate change from 0.2 % to 0.6 % is a small JS distance.

**The report agrees with the decision.** Evidently's ``DataDriftPreset`` gets only the feature
columns, these tests and the project's drift share (its own default is 0.5 over every column
it is given), so its "Dataset Drift is (NOT) detected" headline is the decision's feature
verdict; the score and the label are separate value-drift panels outside that count. The page
gets a title and a header (:mod:`fraud_lib.drift_header`) with the run's context, the decision,
its reasons and the score PSI.

**Sampling (speed).** Evidently's cost grows with rows and it has a fixed cost of ~4-7 s
(plotly figures per column). Each side is a uniform random sample of at most ``sample_rows``
rows (seeded: a re-run writes the same report). Measured on 2 cores, 284,807-row window vs the
champion's 10,000-row reference, 29 features + score + label: 20,000 rows 4.3-5.6 s warm,
~8.5 s in a fresh process (imports included); all 284,807 rows 13.7 s warm, and far more when
both sides are large (no champion yet: half the window vs the other half).

What sampling costs: the Wasserstein distance is an effect size, so sampling blurs the
detection boundary instead of moving it. Detection rate of a mean shift of one column by
``d`` standard deviations (40 draws; reference 10,000 rows; no shift: 0 of 29 columns ever
flagged at any size)::

    d (sd)      0.05  0.08  0.09  0.10  0.11  0.12  0.15
    5,000 rows  0.00  0.20  0.47  0.72  0.88  0.97  1.00
    20,000      0.00  0.05  0.17  0.57  0.95  0.97  1.00
    142,403     0.00  0.00  0.20  0.90  1.00  1.00  1.00

i.e. at 20,000 rows shifts >= 0.11 sd are caught >= 95 % of the time (all rows: 0.11 sd,
100 %), shifts <= 0.08 sd are ignored at every size by design.

**Score shift.** The population stability index (PSI) of the score, on *all* rows of both sides
(ten reference-quantile bins; it is a histogram, so it costs milliseconds on 300k rows). PSI
0.1 is the usual "moderate shift" line, 0.25 "large".
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_lib.config import DRIFT_SHARE_THRESHOLD, SCORE_SHIFT_THRESHOLD
from fraud_lib.drift_header import report_html
from fraud_lib.errors import DataError

log = logging.getLogger(__name__)

NUM_METHOD = "wasserstein"
NUM_THRESHOLD = 0.1
CAT_METHOD = "jensenshannon"
CAT_THRESHOLD = 0.1
PSI_BINS = 10
_PSI_EPS = 1e-4


@dataclass
class DriftSummary:
    """What one drift check found; ``as_dict()`` is the JSON summary written beside the HTML."""

    name: str
    html_path: str
    json_path: str
    columns: list[str]
    per_column: dict[str, dict[str, Any]]
    drifted_columns: list[str]
    drifted_count: int
    drifted_share: float
    prediction_drift: dict[str, Any] | None
    target_drift: dict[str, Any] | None
    score_shift: dict[str, Any] | None
    rows: dict[str, int]
    sampling: str
    thresholds: dict[str, float]
    drift_detected: bool
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    context: dict[str, str] = field(default_factory=dict)
    evidently_dataset_drift: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (also the content of ``{name}.json``)."""
        return asdict(self)


def population_stability_index(reference: Any, current: Any, bins: int = PSI_BINS) -> float | None:
    """PSI of ``current`` against ``reference`` on reference-quantile bins (None if either is empty).

    Bins are the reference deciles (duplicate edges merged, so a score piled up at 0 does not
    make empty bins); empty bins get a small floor so the log stays finite.
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if ref.size == 0 or cur.size == 0:
        return None
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    p = np.maximum(ref_share / ref.size, _PSI_EPS)
    q = np.maximum(cur_share / cur.size, _PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def _sample(df: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    if len(df) <= rows:
        return df
    return df.sample(n=rows, random_state=seed).sort_index()


@dataclass
class _EvidentlyResult:
    """What the Evidently run gives back: per-column results, its dataset verdict, the HTML."""

    per_column: dict[str, dict[str, Any]]
    dataset: dict[str, Any]
    html: str


def _run_evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: tuple[list[str], list[str]],
    extra: tuple[list[str], list[str]],
    drift_share: float,
) -> _EvidentlyResult:
    """Evidently's DataDriftPreset on the ``features`` (numeric, categorical) with fraudloop's
    own tests and drift share, plus a ValueDrift of each ``extra`` column (score, label) outside
    the preset, so that its "Dataset Drift" headline counts the features only, as the decision does.

    The only place that knows Evidently's API (0.7: ``Report``/``Dataset``/``DataDefinition``,
    results as metrics whose config type ends in ``:ValueDrift`` / ``:DriftedColumnsCount``).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    numerical, categorical = [*features[0], *extra[0]], [*features[1], *extra[1]]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    report = Report(
        [
            DataDriftPreset(
                columns=[*features[0], *features[1]],
                drift_share=drift_share,
                num_method=NUM_METHOD,
                num_threshold=NUM_THRESHOLD,
                cat_method=CAT_METHOD,
                cat_threshold=CAT_THRESHOLD,
            ),
            *(ValueDrift(column=c, method=NUM_METHOD, threshold=NUM_THRESHOLD) for c in extra[0]),
            *(ValueDrift(column=c, method=CAT_METHOD, threshold=CAT_THRESHOLD) for c in extra[1]),
        ]
    )
    columns = [*numerical, *categorical]
    # A constant column (a behavioral feature with one value in a short window) makes the
    # correlation matrix divide by a zero spread: NaN there is right, the warning is noise.
    with np.errstate(divide="ignore", invalid="ignore"):
        snapshot = report.run(
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
        )
    results: dict[str, dict[str, Any]] = {}
    dataset: dict[str, Any] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith(":ValueDrift"):
            score = metric.get("value")
            results[config["column"]] = {
                "method": config.get("method"),
                "score": None if score is None else float(score),
                "threshold": config.get("threshold"),
            }
        elif kind.endswith(":DriftedColumnsCount"):
            dataset = {**metric["value"], "drift_share": config.get("drift_share")}
    missing = [c for c in columns if c not in results]
    if missing or not dataset:
        raise RuntimeError(f"the Evidently report lacks drift results (columns {missing})")
    return _EvidentlyResult(results, dataset, snapshot.get_html_str(as_iframe=False))


def _column_result(entry: dict[str, Any]) -> dict[str, Any]:
    score, threshold = entry["score"], entry["threshold"]
    drifted = score is not None and threshold is not None and score >= threshold
    return {**entry, "drifted": bool(drifted)}


def _reasons(
    summary: DriftSummary, drift_share_threshold: float, score_shift_threshold: float
) -> list[str]:
    """Why ``summary`` is drift (empty: it is not): the feature share, the score PSI."""
    reasons = []
    n, share = len(summary.columns), summary.drifted_share
    if share >= drift_share_threshold:
        reasons.append(
            f"{summary.drifted_count} of {n} features drifted "
            f"(share {share:.2f} >= {drift_share_threshold})"
        )
    psi = (summary.score_shift or {}).get("psi")
    if psi is not None and psi >= score_shift_threshold:
        reasons.append(f"score PSI {psi:.3f} >= {score_shift_threshold}")
    return reasons


def _score_shift(reference: pd.DataFrame, current: pd.DataFrame, column: str) -> dict[str, Any]:
    return {
        "psi": population_stability_index(reference[column], current[column]),
        "reference_mean": float(reference[column].mean()),
        "current_mean": float(current[column].mean()),
        "rows": {"reference": len(reference), "current": len(current)},
    }


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    *,
    out_dir: Path,
    name: str,
    sample_rows: int,
    seed: int = 0,
    score_column: str | None = "score",
    label_column: str | None = None,
    categorical: list[str] | None = None,
    drift_share_threshold: float = DRIFT_SHARE_THRESHOLD,
    score_shift_threshold: float = SCORE_SHIFT_THRESHOLD,
    context: dict[str, str] | None = None,
) -> DriftSummary:
    """Compare ``current`` with ``reference``; write ``{name}.html`` and ``{name}.json``.

    ``columns`` are the numeric features (``categorical`` the categorical ones); the score and the
    label (when both sides have them) are added to the report outside its dataset drift count.
    Drift is detected when the share of drifted features reaches ``drift_share_threshold`` (the
    report's "Dataset Drift" headline uses the same share, columns and tests) or the score PSI
    (on all rows) reaches ``score_shift_threshold``. ``context`` (label -> text: the run, the
    window, the champion, ...) heads the HTML report, above the decision and its reasons.
    """
    started = time.perf_counter()
    categorical = list(categorical or [])
    features = [*columns, *categorical]
    for side, frame in (("reference", reference), ("current", current)):
        if frame.empty:
            raise DataError(f"the {side} data for the drift check {name!r} has no rows")
        missing = [c for c in features if c not in frame.columns]
        if missing:
            raise DataError(f"the {side} data for the drift check lacks column(s) {missing}")
    sides = (reference, current)
    with_score = bool(score_column) and all(
        score_column in f.columns and f[score_column].notna().any() for f in sides
    )
    with_label = bool(label_column) and all(label_column in f.columns for f in sides)
    extra = ([score_column] if with_score else [], [label_column] if with_label else [])
    keep = [*features, *extra[0], *extra[1]]

    ref_sample = _sample(reference[keep], sample_rows, seed)
    cur_sample = _sample(current[keep], sample_rows, seed + 1)
    evidently = _run_evidently(
        ref_sample, cur_sample, (list(columns), categorical), extra, drift_share_threshold
    )
    raw = evidently.per_column
    per_column = {c: _column_result(raw[c]) for c in features}
    drifted = [c for c in features if per_column[c]["drifted"]]
    target = None
    if with_label:
        target = {
            **_column_result(raw[label_column]),
            "reference_rate": float(reference[label_column].mean()),
            "current_rate": float(current[label_column].mean()),
        }
    sampled = len(ref_sample) < len(reference) or len(cur_sample) < len(current)
    out_dir = Path(out_dir)
    summary = DriftSummary(
        name=name,
        html_path=str(out_dir / f"{name}.html"),
        json_path=str(out_dir / f"{name}.json"),
        columns=features,
        per_column=per_column,
        drifted_columns=drifted,
        drifted_count=len(drifted),
        drifted_share=len(drifted) / len(features),
        prediction_drift=_column_result(raw[score_column]) if with_score else None,
        target_drift=target,
        score_shift=_score_shift(reference, current, score_column) if with_score else None,
        rows={
            "reference": len(reference),
            "current": len(current),
            "reference_used": len(ref_sample),
            "current_used": len(cur_sample),
        },
        sampling=(
            f"uniform random sample (seed {seed}) of at most {sample_rows:,} rows per side for "
            "the per-column tests; score PSI on all rows"
            if sampled
            else "all rows used"
        ),
        thresholds={
            "drift_share": drift_share_threshold,
            "score_psi": score_shift_threshold,
            "column": NUM_THRESHOLD,
        },
        drift_detected=False,
        context=dict(context or {}),
        evidently_dataset_drift=evidently.dataset,
    )
    summary.reasons = _reasons(summary, drift_share_threshold, score_shift_threshold)
    summary.drift_detected = bool(summary.reasons)
    _check_agreement(summary, drift_share_threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    Path(summary.html_path).write_text(report_html(evidently.html, summary), encoding="utf-8")
    summary.seconds = round(time.perf_counter() - started, 3)
    Path(summary.json_path).write_text(
        json.dumps(json_safe(summary.as_dict()), indent=2, allow_nan=False) + "\n"
    )
    psi = (summary.score_shift or {}).get("psi")
    log.info(
        "drift check %s: %d/%d features drifted, score PSI %s, %.1fs -> %s",
        name,
        len(drifted),
        len(features),
        "n/a" if psi is None else f"{psi:.3f}",
        summary.seconds,
        summary.html_path,
    )
    return summary


def _check_agreement(summary: DriftSummary, drift_share: float) -> None:
    """The report's dataset verdict must be the decision's feature verdict (same columns, tests
    and share); a mismatch means this wrapper and Evidently disagree on what they compute."""
    ev = summary.evidently_dataset_drift
    if ev.get("count") != summary.drifted_count or ev.get("drift_share") != drift_share:
        raise RuntimeError(
            f"Evidently counts {ev.get('count')} drifted columns at drift share "
            f"{ev.get('drift_share')}, fraudloop {summary.drifted_count} at {drift_share}: "
            "the report would contradict the decision"
        )


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
