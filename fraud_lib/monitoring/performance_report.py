"""The report of a performance-monitor run: an Evidently classification report (HTML) and a
JSON summary in the reports directory, beside the drift reports, both also in an MLflow run.

Evidently is touched only in :func:`classification_report`. It gets the champion's latest
mature cohorts (the ones the decision averaged) as the current data and its earlier mature
cohorts in the lookback as the reference; without mature cohorts of the champion, every mature
cohort, else every cohort (labels so far: then the report says so). Each side is a seeded
uniform sample of at most :data:`REPORT_ROWS` rows (Evidently's classification preset took
~3.4 s for 300,000 rows per side on 2 cores).

A re-run of the same as-of rewrites the same files and logs to the same MLflow run (found by
its run key) with the same metric timestamps, which MLflow stores once.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_lib.config import Settings
from fraud_lib.drift import json_safe
from fraud_lib.monitoring.cohorts import EPOCH
from fraud_lib.monitoring.performance import PerformanceResult

log = logging.getLogger(__name__)

REPORT_ROWS = 100_000
KIND = "performance"
NAME = "fraud_performance_monitor"
# Cohort columns logged per version as MLflow metric series (step = cohort day number).
SERIES = ("average_precision", "recall", "card_precision_at_k", "alert_rate", "label_coverage")


def run_key(as_of: datetime) -> str:
    """The name of a run's files and MLflow run: its as-of time, e.g. ``20250301T000000Z``."""
    return f"{as_of:%Y%m%dT%H%M%SZ}"


def classification_report(
    current: pd.DataFrame, reference: pd.DataFrame | None, threshold: float, html_path: Path
) -> list[dict[str, Any]]:
    """Evidently's ClassificationPreset on ``label``/``score`` columns; saves the HTML and
    returns the metrics as ``[{"metric", "value"}]`` (0.7: ``Report``/``Dataset``)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.datasets import BinaryClassification
    from evidently.presets import ClassificationPreset

    definition = DataDefinition(
        classification=[BinaryClassification(target="label", prediction_probas="score")],
        numerical_columns=["score"],
        categorical_columns=["label"],
    )

    def dataset(frame: pd.DataFrame) -> Any:
        return Dataset.from_pandas(frame[["label", "score"]], data_definition=definition)

    snapshot = Report([ClassificationPreset(probas_threshold=threshold)]).run(
        current_data=dataset(current),
        reference_data=None if reference is None else dataset(reference),
    )
    snapshot.save_html(str(html_path))
    return [
        {"metric": str(m.get("config", {}).get("type", "")).rsplit(":", 1)[-1],
         "value": m.get("value")}
        for m in snapshot.dict()["metrics"]
    ]  # fmt: skip


def _day_number(cohort_day: str) -> int:
    return (date.fromisoformat(cohort_day) - EPOCH).days


def _sides(result: PerformanceResult, frame: pd.DataFrame) -> tuple[Any, Any, str]:
    """(current, reference or None, what they are) for the Evidently report."""
    decision = result.decision
    mature = [(_day_number(c["cohort_day"]), c["model_version"])
              for c in result.cohorts if c["mature"]]  # fmt: skip
    is_mature = pd.MultiIndex.from_arrays([frame["day"], frame["model_version"]]).isin(mature)
    labeled = frame.assign(label=frame["label"].fillna(0).astype(int))
    champion = decision.get("champion_version")
    if decision.get("recent_days"):
        mine = (frame["model_version"] == champion).to_numpy() & is_mature
        recent = frame["day"].isin([_day_number(d) for d in decision["recent_days"]]).to_numpy()
        earlier = labeled[mine & ~recent]
        what = (f"champion v{champion}, cohorts {decision['recent_days'][0]}.."
                f"{decision['recent_days'][-1]} vs its earlier mature cohorts")  # fmt: skip
        return labeled[mine & recent], (earlier if len(earlier) else None), what
    if is_mature.any():
        return labeled[is_mature], None, "every mature cohort (the champion has too few)"
    return labeled, None, "every cohort; none is mature: labels known so far (provisional)"


def _sample(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= REPORT_ROWS else frame.sample(REPORT_ROWS, random_state=seed)


def write_report(
    settings: Settings, result: PerformanceResult, frame: pd.DataFrame
) -> dict[str, Any]:
    """Write ``<name>.html`` (Evidently) and log it and the run's numbers to MLflow; sets the
    paths and run id on ``result``. Returns what :func:`write_summary` adds to the JSON."""
    as_of = datetime.fromisoformat(result.as_of)
    name = f"{NAME}__{run_key(as_of)}"
    out = Path(settings.reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / f"{name}.html"
    current, reference, what = _sides(result, frame)
    thresholds = current["threshold"].dropna()
    threshold = float(thresholds.median()) if len(thresholds) else 0.5
    evidently: list[dict[str, Any]] | str
    if current["label"].nunique() < 2:
        evidently = f"not written: the current data ({what}) has a single class"
        html_path.unlink(missing_ok=True)
    else:
        ref = None if reference is None else _sample(reference, 1)
        evidently = classification_report(_sample(current, 0), ref, threshold, html_path)
    result.html_path = str(html_path) if html_path.exists() else None
    result.json_path = str(out / f"{name}.json")
    result.mlflow_run_id = _log_mlflow(settings, result, as_of)
    log.info("performance report %s (%s)", result.html_path or result.json_path, what)
    return {"data": what, "threshold": threshold, "evidently": evidently}


def write_summary(settings: Settings, result: PerformanceResult, report: dict[str, Any]) -> None:
    """Write ``result`` (its timings included, so call it last) with ``report`` (from
    :func:`write_report`) to ``result.json_path`` and add the file to the MLflow run."""
    from fraud_lib import registry

    if result.json_path is None or result.mlflow_run_id is None:
        raise ValueError("write_summary needs the paths and run that write_report sets")
    summary = {**result.as_dict(), "report": report}
    Path(result.json_path).write_text(
        json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
    )
    registry.client(settings).log_artifact(
        result.mlflow_run_id, result.json_path, artifact_path=KIND
    )


def _log_mlflow(settings: Settings, result: PerformanceResult, as_of: datetime) -> str:
    from mlflow.entities import Metric

    from fraud_lib import registry
    from fraud_lib.cycle_report import log_to_run

    decision = result.decision
    stamp = int(as_of.timestamp() * 1000)
    refs = decision.get("references") or {}
    run_id = log_to_run(
        settings,
        run_key(as_of),
        kind=KIND,
        timestamp_ms=stamp,
        metrics={
            "performance.recent": decision.get("recent"),
            "performance.reference_validation": refs.get("validation"),
            "performance.reference_first_mature": refs.get("first_mature"),
            "performance.drop_detected": float(decision["drop_detected"]),
            "performance.mature_cohorts": sum(c["mature"] for c in result.cohorts),
            "performance.rows": result.rows,
        },
        tags={
            "fraudloop.as_of": result.as_of,
            "fraudloop.metric": decision["metric"],
            "fraudloop.champion_version": decision.get("champion_version"),
            "fraudloop.drop_detected": decision["drop_detected"],
            "fraudloop.reasons": "; ".join(decision["reasons"]) or "-",
            "fraudloop.performance_report": result.html_path or result.json_path,
        },
        artifacts=(result.html_path,) if result.html_path else (),
        artifact_dir=KIND,
        finish=True,
    )
    series = [
        Metric(f"v{c['model_version'] or 'unknown'}.{key}", float(c[key]), stamp,
               _day_number(c["cohort_day"]))
        for c in result.cohorts for key in SERIES
        if c.get(key) is not None and np.isfinite(c[key])
    ]  # fmt: skip
    client = registry.client(settings)
    for i in range(0, len(series), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=series[i : i + 1000])
    return run_id
