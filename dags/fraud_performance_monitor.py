"""
### fraud_performance_monitor: realized performance as labels mature

Every day (00:00 UTC) the predictions scored in the last `lookback_days` before the run's
interval end are joined to the labels known by then and measured per scoring day (cohort) and
served model version: average precision, ROC AUC, precision / recall / F1 and expected cost at
the served threshold, alert rate, and card precision at k (k = the analysts' daily capacity).
A cohort is *mature* once `label_window_days` have passed after its day (an unlabeled
transaction then counts as legitimate); younger cohorts are provisional, shown with their
label coverage. The cohort table is stored in Postgres (`performance_cohorts`), the report is
Evidently's classification report (`drift_reports/fraud_performance_monitor__<interval end>
.html` + `.json`, also in MLflow).

The champion's latest `eval_days` mature cohorts are compared with what it promised: its
held-out metric in MLflow and its first mature cohorts. When `metric` falls below either by
more than `tolerance`, `emit_performance_event` updates the `fraudloop_performance` asset,
which starts `fraud_retrain`; otherwise it is skipped. No predictions in the lookback skips
the run. Empty Params use the FRAUD_* settings. Re-running an interval is idempotent.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from fraud_lib import assets
from fraud_lib.config import PERFORMANCE_METRICS
from fraud_lib.dag_defaults import monitor_dag_args

log = logging.getLogger("fraudloop.dags.fraud_performance_monitor")

PERFORMANCE_ASSET = assets.airflow_asset(assets.PERFORMANCE)


def _optional(kind: str, description: str, **bounds: Any) -> Param:
    return Param(None, type=["null", kind], description=description, **bounds)


def _alert(decision: dict[str, Any], summary: dict[str, Any]) -> None:
    """Page the team about the drop (never fails the task: see fraud_lib.monitoring.alerts)."""
    from fraud_lib.config import Settings
    from fraud_lib.monitoring import events

    days = decision["recent_days"]
    references = [v for v in decision["references"].values() if v is not None]
    events.alert_performance(
        Settings.from_env(),
        metric=decision["metric"],
        value=decision["recent"],
        baseline=max(references),
        tolerance=decision["tolerance"],
        model_version=str(decision["champion_version"]),
        cohort=f"{min(days)} to {max(days)}" if days else summary["as_of"],
        report=summary["html_path"] or summary["json_path"],
    )


@dag(
    dag_id="fraud_performance_monitor",
    schedule=CronTriggerTimetable("0 0 * * *", timezone="UTC", interval=timedelta(days=1)),
    start_date=datetime(2024, 1, 1),
    **monitor_dag_args(),
    doc_md=__doc__,
    params={
        "label_window_days": _optional(
            "integer",
            "Days after a scoring day until its cohort is mature (unlabeled = legitimate). "
            "Empty: FRAUD_LABEL_WINDOW_DAYS (30).",
            minimum=0,
            maximum=365,
        ),
        "lookback_days": _optional(
            "integer",
            "Scoring days measured, ending at the run's interval end; at least the label "
            "window plus eval_days. Empty: FRAUD_PERFORMANCE_LOOKBACK_DAYS (45).",
            minimum=2,
            maximum=730,
        ),
        "eval_days": _optional(
            "integer",
            "Mature cohorts averaged, for the champion's recent and its first performance. "
            "Empty: FRAUD_PERFORMANCE_EVAL_DAYS (7).",
            minimum=1,
            maximum=90,
        ),
        "metric": Param(
            None,
            type=["null", "string"],
            enum=[None, *PERFORMANCE_METRICS],
            description="Metric that decides a drop. Empty: FRAUD_PERFORMANCE_METRIC "
            "(average_precision).",
        ),
        "tolerance": _optional(
            "number",
            "Drop in metric points below what the champion promised that starts "
            "fraud_retrain. Empty: FRAUD_PERFORMANCE_TOLERANCE (0.05).",
            minimum=0,
            maximum=1,
        ),
        "k": _optional(
            "integer",
            "Analyst capacity: transactions (or entities) reviewed per day, for card "
            "precision at k. Empty: FRAUD_ANALYST_CAPACITY (100).",
            minimum=1,
            maximum=1_000_000,
        ),
    },
)
def fraud_performance_monitor() -> None:
    @task
    def measure_cohorts() -> dict[str, Any]:
        from fraud_lib import store
        from fraud_lib.config import Settings
        from fraud_lib.monitoring import performance

        ctx = get_current_context()
        settings = performance.with_options(Settings.from_env(), **dict(ctx["params"]))
        as_of = ctx.get("data_interval_end") or ctx["dag_run"].run_after
        try:
            result = performance.performance_monitor(
                settings, store.connect_store(settings), as_of=as_of, progress=log.info
            )
        except performance.NoPredictions as exc:
            raise AirflowSkipException(str(exc)) from exc
        decision = result.decision
        log.info("%s", performance.format_cohorts(result))
        log.info("report %s", result.html_path or result.json_path)
        keep = ("as_of", "rows", "html_path", "json_path", "mlflow_run_id", "seconds")
        return {**{k: getattr(result, k) for k in keep}, "decision": decision}

    @task(outlets=[PERFORMANCE_ASSET], retries=0)
    def emit_performance_event(summary: dict[str, Any]) -> None:
        decision = summary["decision"]
        if not decision["drop_detected"]:
            raise AirflowSkipException(
                "no drop below tolerance: no asset event. " + " ".join(decision["notes"])
            )
        ctx = get_current_context()
        ctx["outlet_events"][PERFORMANCE_ASSET].extra = {
            "reasons": decision["reasons"],
            "metric": decision["metric"],
            "recent": decision["recent"],
            "references": decision["references"],
            "champion_version": decision["champion_version"],
            "as_of": summary["as_of"],
            "report": summary["html_path"] or summary["json_path"],
        }
        log.info("performance event emitted for %s: %s", PERFORMANCE_ASSET.uri, decision["reasons"])
        _alert(decision, summary)

    emit_performance_event(measure_cohorts())


fraud_performance_monitor()
