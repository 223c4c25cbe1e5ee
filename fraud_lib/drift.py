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
nothing. The label (target drift) is binary and uses Evidently's categorical default
(Jensen-Shannon distance, 0.1); the fraud rates of both sides are reported beside it because a
rate change from 0.2 % to 0.6 % is a small JS distance.

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
from fraud_lib.errors import DataError

log = logging.getLogger(__name__)

NUM_METHOD = "wasserstein"
NUM_THRESHOLD = 0.1
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


def _run_evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: list[str],
    categorical: list[str],
    html_path: Path,
) -> dict[str, dict[str, Any]]:
    """Run Evidently's DataDriftPreset, save the HTML; per-column ``{method, score, threshold}``.

    The only place that knows Evidently's API (0.7: ``Report``/``Dataset``/``DataDefinition``,
    results as metrics whose config type ends in ``:ValueDrift``).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    columns = [*numerical, *categorical]
    report = Report(
        [DataDriftPreset(columns=columns, num_method=NUM_METHOD, num_threshold=NUM_THRESHOLD)]
    )
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    snapshot.save_html(str(html_path))
    results: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if str(config.get("type", "")).endswith(":ValueDrift"):
            score = metric.get("value")
            results[config["column"]] = {
                "method": config.get("method"),
                "score": None if score is None else float(score),
                "threshold": config.get("threshold"),
            }
    missing = [c for c in columns if c not in results]
    if missing:
        raise RuntimeError(f"the Evidently report has no drift result for {missing}")
    return results


def _column_result(entry: dict[str, Any]) -> dict[str, Any]:
    score, threshold = entry["score"], entry["threshold"]
    drifted = score is not None and threshold is not None and score >= threshold
    return {**entry, "drifted": bool(drifted)}


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
) -> DriftSummary:
    """Compare ``current`` with ``reference``; write ``{name}.html`` and ``{name}.json``.

    ``columns`` are the numeric features (``categorical`` the categorical ones); the score and the
    label (when both sides have them) are added as extra columns of the same report. Drift is
    detected when the share of drifted features reaches ``drift_share_threshold`` or the score PSI
    (on all rows) reaches ``score_shift_threshold``.
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
    numerical = [*columns, *([score_column] if with_score else [])]
    cats = [*categorical, *([label_column] if with_label else [])]
    keep = [*numerical, *cats]

    ref_sample = _sample(reference[keep], sample_rows, seed)
    cur_sample = _sample(current[keep], sample_rows, seed + 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / f"{name}.html", out_dir / f"{name}.json"
    raw = _run_evidently(ref_sample, cur_sample, numerical, cats, html_path)

    per_column = {c: _column_result(raw[c]) for c in features}
    drifted = [c for c in features if per_column[c]["drifted"]]
    share = len(drifted) / len(features)
    prediction = _column_result(raw[score_column]) if with_score else None
    target = None
    if with_label:
        target = {
            **_column_result(raw[label_column]),
            "reference_rate": float(reference[label_column].mean()),
            "current_rate": float(current[label_column].mean()),
        }
    score_shift = None
    if with_score:
        psi = population_stability_index(reference[score_column], current[score_column])
        score_shift = {
            "psi": psi,
            "reference_mean": float(reference[score_column].mean()),
            "current_mean": float(current[score_column].mean()),
            "rows": {"reference": len(reference), "current": len(current)},
        }
    reasons = []
    if share >= drift_share_threshold:
        reasons.append(
            f"{len(drifted)} of {len(features)} features drifted "
            f"(share {share:.2f} >= {drift_share_threshold})"
        )
    psi_value = (score_shift or {}).get("psi")
    if psi_value is not None and psi_value >= score_shift_threshold:
        reasons.append(f"score PSI {psi_value:.3f} >= {score_shift_threshold}")
    sampled = len(ref_sample) < len(reference) or len(cur_sample) < len(current)
    sampling = (
        f"uniform random sample (seed {seed}) of at most {sample_rows:,} rows per side for the "
        "per-column tests; score PSI on all rows"
        if sampled
        else "all rows used"
    )
    summary = DriftSummary(
        name=name,
        html_path=str(html_path),
        json_path=str(json_path),
        columns=features,
        per_column=per_column,
        drifted_columns=drifted,
        drifted_count=len(drifted),
        drifted_share=share,
        prediction_drift=prediction,
        target_drift=target,
        score_shift=score_shift,
        rows={
            "reference": len(reference),
            "current": len(current),
            "reference_used": len(ref_sample),
            "current_used": len(cur_sample),
        },
        sampling=sampling,
        thresholds={
            "drift_share": drift_share_threshold,
            "score_psi": score_shift_threshold,
            "column": NUM_THRESHOLD,
        },
        drift_detected=bool(reasons),
        reasons=reasons,
    )
    summary.seconds = round(time.perf_counter() - started, 3)
    json_path.write_text(json.dumps(json_safe(summary.as_dict()), indent=2, allow_nan=False) + "\n")
    log.info(
        "drift check %s: %d/%d features drifted, score PSI %s, %.1fs -> %s",
        name,
        len(drifted),
        len(features),
        "n/a" if psi_value is None else f"{psi_value:.3f}",
        summary.seconds,
        html_path,
    )
    return summary


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
