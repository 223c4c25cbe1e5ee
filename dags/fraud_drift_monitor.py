"""
### fraud_drift_monitor: daily drift check that can start a retraining

Every day (00:00 UTC) the predictions the scoring service logged over the last `lookback_days`
(labels are not needed) are compared with the champion's training reference:
Evidently data drift of the features plus prediction drift of the score
(`drift_reports/fraud_drift_monitor__<interval end>_<lookback>d.html` + `.json`).

When the share of drifted features reaches `FRAUD_DRIFT_SHARE_THRESHOLD` or the score PSI
reaches `FRAUD_SCORE_SHIFT_THRESHOLD`, `emit_drift_event` succeeds and updates the
`fraudloop_drift` asset, which starts `fraud_retrain`; otherwise it is skipped and no asset event
is emitted. No champion yet, or no traffic in the lookback, skips the run. Unpausing the DAG
immediately creates a run for its latest daily interval.

Each report opens with a header (DAG run, window, champion, decision, reasons, score PSI);
its "Dataset Drift" headline uses the same feature columns, tests and drift share as the
decision.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from fraud_lib import assets
from fraud_lib.dag_defaults import monitor_dag_args

log = logging.getLogger("fraudloop.dags.fraud_drift_monitor")


# The same asset fraud_retrain is scheduled on (one definition, in fraud_lib.assets).
DRIFT_ASSET = assets.airflow_asset(assets.DRIFT)


@dag(
    dag_id="fraud_drift_monitor",
    schedule=CronTriggerTimetable("0 0 * * *", timezone="UTC", interval=timedelta(days=1)),
    start_date=datetime(2024, 1, 1),
    **monitor_dag_args(),
    doc_md=__doc__,
    params={
        "lookback_days": Param(
            1.0,
            type="number",
            minimum=0.0001,
            maximum=60,
            description="Compare the predictions scored in the last N days before the run's "
            "interval end with the champion's training reference (0.01 = 15 minutes).",
        ),
    },
)
def fraud_drift_monitor() -> None:
    @task
    def compare_recent() -> dict[str, Any]:
        from fraud_lib import cycle, registry, store
        from fraud_lib.config import Settings
        from fraud_lib.window import run_key_for

        registry.log_mlflow_through_logging()
        ctx = get_current_context()
        settings = Settings.from_env()
        end = ctx.get("data_interval_end") or ctx["dag_run"].run_after
        days = float(ctx["params"]["lookback_days"])
        key = f"{run_key_for(end, 0).rsplit('_', 1)[0]}_{days:g}d"
        try:
            summary = cycle.drift_monitor(
                settings,
                store.connect_store(settings),
                interval_end=end,
                days=days,
                run_key=key,
                context={"DAG run": f"{ctx['dag'].dag_id} {ctx['run_id']}"},
            )
        except cycle.SkipRun as exc:
            raise AirflowSkipException(str(exc)) from exc
        psi = (summary.get("score_shift") or {}).get("psi")
        log.info(
            "drift %s in %s predictions vs champion v%s: %s features drifted %s, score PSI %s; "
            "report %s",
            "DETECTED" if summary["drift_detected"] else "not detected",
            f"{summary['rows']['current']:,}",
            summary["champion_version"],
            summary["drifted_count"],
            summary["drifted_columns"],
            "-" if psi is None else f"{psi:.3f}",
            summary["html_path"],
        )
        keep = (
            "drift_detected",
            "reasons",
            "drifted_share",
            "drifted_columns",
            "score_shift",
            "champion_version",
            "html_path",
            "json_path",
            "rows",
        )
        return {k: summary[k] for k in keep}

    @task(outlets=[DRIFT_ASSET], retries=0)
    def emit_drift_event(summary: dict[str, Any]) -> None:
        if not summary["drift_detected"]:
            raise AirflowSkipException("no drift above the thresholds: no asset event")
        ctx = get_current_context()
        ctx["outlet_events"][DRIFT_ASSET].extra = {
            "reasons": summary["reasons"],
            "drifted_share": summary["drifted_share"],
            "score_psi": (summary.get("score_shift") or {}).get("psi"),
            "champion_version": summary["champion_version"],
            "report": summary["html_path"],
        }
        log.info("drift event emitted for %s: %s", DRIFT_ASSET.uri, summary["reasons"])

    emit_drift_event(compare_recent())


fraud_drift_monitor()
