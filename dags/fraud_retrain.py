"""
### fraud_retrain: gated champion/challenger retraining

Runs **weekly** (cron `0 0 * * 1`: Mondays 00:00 UTC, a 7-day data interval; the DAG list
shows only the assets as the schedule), **whenever `fraud_drift_monitor` reports drift** (the
`fraudloop_drift` asset) **or `fraud_performance_monitor` a drop in realized performance** (the
`fraudloop_performance` asset), or on demand from the UI (**Trigger**, then edit the Params form:
every Param below has a description; empty means "use the FRAUD_* setting").

Unpausing the DAG immediately creates a run for its latest weekly interval (`catchup=False`
skips only the older ones); on a fresh install it skips with "too few labels", and a manual
trigger made meanwhile queues behind it (`max_active_runs=1`).

| task | what it does |
|---|---|
| `ingest_labeled` | labeled predictions scored in `[interval end - train_window_days, interval end)`, labels known by the interval end (plus `FRAUD_INITIAL_DATA` on a cold start) -> one parquet per window, an artifact of the run's MLflow run; XCom carries its reference (run id, path, rows, sha256); **skips the run** when there are too few labeled rows or frauds |
| `check_drift` | Evidently data, prediction and target drift vs the champion's training reference -> HTML + JSON artifacts of the MLflow run (XCom carries their `runs:/` URIs; local copy `drift_reports/fraud_retrain__<window>.html`) |
| `train_challenger` | trains on the window minus its last `eval_window_days` of event time; registers the version with alias `challenger` |
| `evaluate` | champion and challenger scored on that held-out slice |
| `promote` | the promotion gate: alias move compare-and-set, a `model_events` row, version tags; logs the summary (metrics side by side, decision, reason, report). When the window's model is the champion itself (no new traffic since it was trained), the decision is `skipped` (no new challenger), never a rejection |
| `notify_serving` | best-effort `POST /admin/reload` to the scoring service (only after a promotion) |

No task reads a file another task wrote: the window and the reports travel through the MLflow
artifact store (served by the tracking server in a multi-host deployment), so tasks may run on
different workers. Re-running a run (same data interval) is idempotent: same window, same report, no second model
version and no second decision (see `fraud_lib.window` and `fraud_lib.cycle`). The logic lives
in those two modules; this file only wires it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from fraud_lib import assets

log = logging.getLogger("fraudloop.dags.fraud_retrain")


DRIFT_ASSET = assets.airflow_asset(assets.DRIFT)
PERFORMANCE_ASSET = assets.airflow_asset(assets.PERFORMANCE)

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=5),
}


def _optional(kind: str, description: str, **bounds: Any) -> Param:
    return Param(None, type=["null", kind], description=description, **bounds)


def _run_facts() -> tuple[Any, dict[str, Any], datetime]:
    """(settings, params, interval end) of the running task; MLflow logs through logging."""
    from fraud_lib import registry
    from fraud_lib.config import Settings

    registry.log_mlflow_through_logging()
    ctx = get_current_context()
    settings = Settings.from_env()
    params = dict(ctx["params"])
    end = ctx.get("data_interval_end") or ctx["dag_run"].run_after
    return settings, params, end


def _param(params: dict[str, Any], name: str, default: Any) -> Any:
    value = params.get(name)
    return default if value is None else value


@dag(
    dag_id="fraud_retrain",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 0 * * 1", timezone="UTC", interval=timedelta(days=7)),
        assets=(DRIFT_ASSET | PERFORMANCE_ASSET),
    ),
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["fraudloop", "ml", "retraining"],
    default_args={"owner": "fraudloop", "retries": 1, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
    params={
        "train_window_days": _optional(
            "integer",
            "Days of scored traffic (by scoring time, ending at the run's interval end) to "
            "train and evaluate on. Empty: FRAUD_TRAIN_WINDOW_DAYS (28).",
            minimum=2,
            maximum=730,
        ),
        "eval_window_days": _optional(
            "number",
            "The last N days of event time in the window are held out: champion and "
            "challenger are compared there. Empty: FRAUD_EVAL_WINDOW_DAYS (3).",
            minimum=0.1,
            maximum=90,
        ),
        "model_type": Param(
            "hgb",
            type="string",
            enum=["hgb", "lr", "rf"],
            description="Challenger model: hgb = HistGradientBoosting, lr = logistic "
            "regression, rf = random forest.",
        ),
        "resample": Param(
            "none",
            type="string",
            enum=["none", "smote", "undersample"],
            description="Resampling of the training rows only: none (class weights), smote "
            "(frauds to 10% of legit), undersample (legit to 10:1).",
        ),
        "min_improvement": _optional(
            "number",
            "Average-precision gain the challenger needs over the champion to be promoted. "
            "Empty: FRAUD_PROMOTE_MIN_IMPROVEMENT (0.005).",
            minimum=0,
            maximum=1,
        ),
        "force_promotion": Param(
            False,
            type="boolean",
            description="Promote the challenger even if the gate says no (floors and margin "
            "skipped; the decision is still recorded).",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            description="Decide and record the decision, but do not move the champion alias.",
        ),
    },
)
def fraud_retrain() -> None:
    @task(**IO_RETRIES)
    def ingest_labeled() -> dict[str, Any]:
        from fraud_lib import store
        from fraud_lib.window import ingest_window, run_key_for

        settings, params, end = _run_facts()
        days = int(_param(params, "train_window_days", settings.train_window_days))
        key = run_key_for(end, days)
        result = ingest_window(
            settings, store.connect_store(settings), interval_end=end, train_days=days, run_key=key
        )
        log.info("window %s: %s rows, %s frauds -> %s", key, f"{result.rows:,}", result.frauds,
                 (result.ref or {}).get("uri"))  # fmt: skip
        if result.skipped:
            raise AirflowSkipException(result.skipped)
        return result.as_dict()

    @task
    def check_drift(window: dict[str, Any]) -> dict[str, Any]:
        from fraud_lib import cycle, cycle_report
        from fraud_lib.window_store import WindowRef

        settings, _, _ = _run_facts()
        ctx = get_current_context()
        context = {
            "DAG run": f"{ctx['dag'].dag_id} {ctx['run_id']}",
            "window": f"{window['run_key']}: {window['rows']:,} labeled rows, {window['frauds']} "
            f"frauds, scored in [{window['start']}, {window['end']})",
        }
        try:
            summary = cycle.check_drift(
                settings, WindowRef.from_dict(window["ref"]), window["run_key"], context=context
            )
        except cycle.SkipRun as exc:
            log.info("drift check skipped: %s", exc)
            return {"skipped": str(exc)}
        uris = cycle_report.log_drift(settings, window, summary)
        log.info(
            "drift %s: %s; report %s",
            "DETECTED" if summary["drift_detected"] else "not detected",
            summary["reasons"] or "below thresholds",
            uris["report_uri"],
        )
        keep = (
            "drift_detected",
            "drifted_share",
            "drifted_count",
            "drifted_columns",
            "columns",
            "score_shift",
            "reasons",
            "reference_basis",
            "seconds",
        )
        return {**{k: summary[k] for k in keep}, **uris}

    @task
    def train_challenger(window: dict[str, Any]) -> dict[str, Any]:
        from fraud_lib import cycle
        from fraud_lib.window_store import WindowRef

        settings, params, _ = _run_facts()
        try:
            return cycle.train_challenger(
                settings,
                WindowRef.from_dict(window["ref"]),
                eval_days=float(_param(params, "eval_window_days", settings.eval_window_days)),
                model_type=params["model_type"],
                resample=params["resample"],
                run_key=window["run_key"],
            )
        except cycle.SkipRun as exc:
            raise AirflowSkipException(str(exc)) from exc

    @task(**IO_RETRIES)
    def evaluate(window: dict[str, Any], challenger: dict[str, Any]) -> dict[str, Any]:
        from fraud_lib import cycle
        from fraud_lib.window_store import WindowRef

        settings, params, _ = _run_facts()
        return cycle.evaluate(
            settings,
            WindowRef.from_dict(window["ref"]),
            challenger["version"],
            eval_days=float(_param(params, "eval_window_days", settings.eval_window_days)),
            min_improvement=float(
                _param(params, "min_improvement", settings.promote_min_improvement)
            ),
            force=bool(params["force_promotion"]),
        )

    @task(**IO_RETRIES)
    def promote(
        window: dict[str, Any],
        drift: dict[str, Any],
        challenger: dict[str, Any],
        decision: dict[str, Any],
    ) -> dict[str, Any]:
        import json

        from fraud_lib import cycle, cycle_report, store
        from fraud_lib.errors import PromotionConflict

        settings, params, _ = _run_facts()
        key = window["run_key"]
        try:
            final = cycle.promote(
                settings,
                store.connect_store(settings),
                decision,
                dry_run=bool(params["dry_run"]),
                run_key=key,
            )
        except PromotionConflict as exc:  # recorded; retrying the same decision cannot help
            raise AirflowFailException(f"{exc} (clear evaluate and promote to redo)") from exc
        summary = cycle_report.format_summary(
            final, drift=None if drift.get("skipped") else drift, ingest=window
        )
        log.info("%s", summary)
        ch, champ = final["challenger_metrics"] or {}, final["champion_metrics"] or {}
        summary_path = settings.reports_dir / f"fraud_retrain__{key}.summary.json"
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(
            json.dumps(
                {"decision": final, "drift": drift, "window": window, "challenger": challenger},
                indent=2,
                default=str,
            )
            + "\n"
        )
        cycle_report.log_to_run(
            settings,
            key,
            metrics={
                **{f"challenger.{k}": v for k, v in ch.items()},
                **{f"champion.{k}": v for k, v in champ.items()},
            },
            tags={
                "fraudloop.decision": final["event"],
                "fraudloop.reason": final["reason"],
                "fraudloop.challenger_version": final["challenger_version"],
                "fraudloop.champion_version": final["champion_version"],
                "fraudloop.challenger_run_id": challenger["run_id"],
                "fraudloop.airflow_run_id": get_current_context()["run_id"],
            },
            artifacts=(summary_path,),
            finish=True,
        )
        return {
            k: final[k]
            for k in (
                "event",
                "reason",
                "challenger_version",
                "champion_version",
                "promote",
                "replayed",
            )
        }

    @task(retries=0)
    def notify_serving(outcome: dict[str, Any]) -> bool:
        from fraud_lib import cycle

        if outcome["event"] != "promoted" or outcome.get("replayed"):
            raise AirflowSkipException(f"champion unchanged ({outcome['event']}): no reload hint")
        settings, _, _ = _run_facts()
        return cycle.notify_serving(settings)

    window = ingest_labeled()
    drift = check_drift(window)
    challenger = train_challenger(window)
    drift >> challenger
    decision = evaluate(window, challenger)
    outcome = promote(window, drift, challenger, decision)
    notify_serving(outcome)


fraud_retrain()
