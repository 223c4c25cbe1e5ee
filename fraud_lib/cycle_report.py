"""Reporting of a retraining run: the MLflow run that collects its metrics, tags and artifacts
(:func:`log_to_run`) and the human summary printed in the task log (:func:`format_summary`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from fraud_lib import registry
from fraud_lib.config import Settings
from fraud_lib.cycle import SUMMARY_METRICS

DRIFT_DIR = "drift"


def log_to_run(
    settings: Settings,
    run_key: str,
    *,
    metrics: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    artifacts: tuple[str | Path, ...] = (),
    artifact_dir: str | None = None,
    finish: bool = False,
    kind: str = "retrain",
    timestamp_ms: int | None = None,
) -> str:
    """Log to the MLflow run of this ``kind`` of run (a retraining run by default; one per
    ``run_key``, created on first use, reused by re-runs); returns its run id. Metrics that are
    None/NaN are left out. With ``timestamp_ms`` (e.g. the run's as-of time) a re-run logs the
    very same metric points, which MLflow stores once."""
    from mlflow.entities import Metric, RunTag

    run_id = registry.keyed_run(settings, run_key, kind)
    c = registry.client(settings)
    now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    good = {
        k: float(v)
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    c.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in good.items()],
        tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
    )
    for path in artifacts:
        c.log_artifact(run_id, str(path), artifact_path=artifact_dir)
    if finish:
        c.set_terminated(run_id, "FINISHED")
    return run_id


def log_drift(
    settings: Settings, window: dict[str, Any], summary: dict[str, Any]
) -> dict[str, str]:
    """Log a retraining run's drift check (metrics, tags, the HTML and JSON report) to its
    MLflow run; the reports' ``runs:/`` URIs (``report_uri``, ``report_json_uri``), which
    later tasks and people use instead of the local copies."""
    html, js = Path(summary["html_path"]), Path(summary["json_path"])
    run_id = registry.keyed_run(settings, window["run_key"])
    uris = {
        "report_uri": registry.runs_uri(run_id, f"{DRIFT_DIR}/{html.name}"),
        "report_json_uri": registry.runs_uri(run_id, f"{DRIFT_DIR}/{js.name}"),
    }
    log_to_run(
        settings,
        window["run_key"],
        metrics={
            "drift.drifted_share": summary["drifted_share"],
            "drift.drifted_count": summary["drifted_count"],
            "drift.score_psi": (summary.get("score_shift") or {}).get("psi"),
            "window.rows": window["rows"],
            "window.frauds": window["frauds"],
        },
        tags={
            "fraudloop.drift_detected": summary["drift_detected"],
            "fraudloop.drift_report": uris["report_uri"],
        },
        artifacts=(html, js),
        artifact_dir=DRIFT_DIR,
    )
    return uris


def format_summary(
    decision: dict[str, Any],
    *,
    drift: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> str:
    """The run summary people read in the task log: metrics side by side, decision, report."""
    ch = decision.get("challenger_metrics") or {}
    champ = decision.get("champion_metrics") or {}
    left = f"challenger v{decision.get('challenger_version')}"
    right = (
        f"champion v{decision['champion_version']}"
        if decision.get("champion_version")
        else "champion"
    )
    if decision.get("challenger_version") == decision.get("champion_version"):
        left, right = f"champion v{decision['champion_version']}", "(no new challenger)"
    lines = ["fraud_retrain summary"]
    if ingest:
        lines.append(
            f"window {ingest['run_key']}: {ingest['rows']:,} labeled rows, {ingest['frauds']} "
            f"frauds ({ingest['initial_rows']:,} from the initial data file)"
        )
    lines.append(
        f"evaluation slice: {decision.get('n_eval', 0):,} rows, "
        f"{decision.get('n_eval_fraud', 0)} frauds (the challenger never trained on it)"
    )
    lines.append(f"{'metric':<20}{left:>18}{right:>18}")

    def fmt(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    for name in SUMMARY_METRICS:
        lines.append(f"{name:<20}{fmt(ch.get(name)):>18}{fmt(champ.get(name)):>18}")
    overlap = (decision.get("details") or {}).get("champion_overlap_rows")
    if overlap:
        lines.append(
            f"note: the champion trained on {overlap:,} of these rows (optimistic metrics)"
        )
    replay = " (replayed from the first run of this interval)" if decision.get("replayed") else ""
    lines.append(f"decision: {decision.get('event')}{replay} - {decision.get('reason')}")
    if drift:
        verdict = "DRIFT" if drift.get("drift_detected") else "no drift"
        psi = (drift.get("score_shift") or {}).get("psi")
        lines.append(
            f"drift: {verdict}; {drift.get('drifted_count')}/{len(drift.get('columns', []))} "
            f"features drifted {drift.get('drifted_columns')}, score PSI "
            f"{'-' if psi is None else f'{psi:.3f}'}; vs {drift.get('reference_basis')}"
        )
        lines.append(f"report: {drift.get('report_uri')}")
    return "\n".join(lines)
