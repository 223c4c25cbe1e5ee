"""One builder per alert event, and the one-call ``alert_*`` functions the producers call.

A builder turns an event's facts into an :class:`~fraud_lib.monitoring.alerts.Alert`: what
happened, the numbers (with the thresholds they crossed) and links (MLflow model version
under ``FRAUD_PUBLIC_MLFLOW_URL``, the Airflow run under ``FRAUD_PUBLIC_AIRFLOW_URL`` when
called inside a task, report paths). The ``alert_*`` functions build and :func:`notify`; like
it they never raise, so a producer (a DAG task, the CLI) adds one line and cannot fail
because of an alert.

Deduplication keys name the incident: drift against one champion version; one decision on
one challenger version in one run; one rollback from version A to B; one refused version
and reason; a performance drop of one metric of one served version.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from fraud_lib.config import Settings
from fraud_lib.monitoring.alerts import Alert, AlertKind, NotifyResult, Severity, notify

log = logging.getLogger(__name__)


def _num(value: Any) -> float | int | None:
    """A JSON-friendly number (numpy scalars unwrapped; NaN/inf become None)."""
    if value is None or isinstance(value, bool):
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, int):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _vs(value: float | int | None, threshold: float) -> str:
    """``0.07 >= 0.05`` (or ``<``): a number next to the threshold it is judged by."""
    if value is None:
        return f"n/a (threshold {threshold:g})"
    return f"{value:.4g} {'>=' if value >= threshold else '<'} {threshold:g}"


def model_version_url(settings: Settings, version: Any) -> str | None:
    """The MLflow UI page of a model version, if FRAUD_PUBLIC_MLFLOW_URL is set."""
    if not settings.public_mlflow_url or version is None:
        return None
    name = quote(settings.model_name, safe="")
    return f"{settings.public_mlflow_url}/#/models/{name}/versions/{quote(str(version))}"


def airflow_run_url(settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """The Airflow UI page of the running DAG run (inside a task), if FRAUD_PUBLIC_AIRFLOW_URL
    is set."""
    env = os.environ if env is None else env
    dag_id, run_id = env.get("AIRFLOW_CTX_DAG_ID"), env.get("AIRFLOW_CTX_DAG_RUN_ID")
    if not settings.public_airflow_url or not dag_id or not run_id:
        return None
    return (
        f"{settings.public_airflow_url}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    )


def _links(settings: Settings, version: Any = None, **paths: Any) -> dict[str, str]:
    links = {
        f"model version {version} (MLflow)": model_version_url(settings, version),
        "Airflow run": airflow_run_url(settings),
        **{k.replace("_", " "): None if v is None else str(v) for k, v in paths.items()},
    }
    return {k: v for k, v in links.items() if v}


# ------------------------------------------------------------------------------ builders
def drift_alert(settings: Settings, summary: Mapping[str, Any]) -> Alert:
    """Drift of recent traffic vs the champion (a :func:`fraud_lib.cycle.drift_monitor`
    summary)."""
    champion = summary.get("champion_version")
    share, psi = (
        _num(summary.get("drifted_share")),
        _num((summary.get("score_shift") or {}).get("psi")),
    )
    columns = list(summary.get("drifted_columns") or [])
    shown = ", ".join(columns[:8]) + (f" and {len(columns) - 8} more" if len(columns) > 8 else "")
    rows = (summary.get("rows") or {}).get("current")
    summary_text = (
        f"Share of drifted features {_vs(share, settings.drift_share_threshold)}; "
        f"score PSI {_vs(psi, settings.score_shift_threshold)}. "
        f"{len(columns)} drifted: {shown or 'none'}. Compared {rows} recent predictions with "
        f"champion v{champion}'s training reference; fraud_retrain starts on this event."
    )
    return Alert(
        kind=AlertKind.DRIFT_DETECTED,
        severity=Severity.WARNING,
        title=f"Drift detected in recent traffic vs champion v{champion} ({settings.model_name})",
        summary=summary_text,
        dedup_key=f"drift:{settings.model_name}:v{champion}",
        numbers={
            "drifted_share": share,
            "drift_share_threshold": settings.drift_share_threshold,
            "drifted_count": _num(summary.get("drifted_count")),
            "score_psi": psi,
            "score_shift_threshold": settings.score_shift_threshold,
            "rows_compared": _num(rows),
        },
        links=_links(settings, champion, report=summary.get("html_path")),
        model_name=settings.model_name,
    )


def decision_alert(settings: Settings, decision: Any, run_id: str | None = None) -> Alert:
    """A promotion gate decision (a :class:`fraud_lib.promotion.Decision`, promoted or
    rejected)."""
    promoted = decision.event == "promoted"
    metric = decision.metric
    ch, champ = decision.challenger_metrics or {}, decision.champion_metrics or {}
    new, old = _num(ch.get(metric)), _num(champ.get(metric))
    verb = "promoted to champion" if promoted else "rejected"
    versus = (
        f"champion v{decision.champion_version}" if decision.champion_version else "no champion"
    )
    return Alert(
        kind=AlertKind.CHALLENGER_PROMOTED if promoted else AlertKind.CHALLENGER_REJECTED,
        severity=Severity.INFO,
        title=f"Challenger v{decision.challenger_version} {verb} ({settings.model_name})",
        summary=f"{metric} {new} vs {versus} {old}: {decision.reason}.",
        dedup_key=(
            f"{decision.event}:{settings.model_name}:v{decision.challenger_version}:{run_id or '-'}"
        ),
        numbers={
            f"challenger_{metric}": new,
            f"champion_{metric}": old,
            "min_improvement": _num((decision.details or {}).get("min_improvement")),
            "challenger_roc_auc": _num(ch.get("roc_auc")),
            "champion_roc_auc": _num(champ.get("roc_auc")),
            "n_eval": _num(decision.n_eval),
            "n_eval_fraud": _num(decision.n_eval_fraud),
        },
        links=_links(settings, decision.challenger_version),
        model_name=settings.model_name,
    )


def rollback_alert(settings: Settings, from_version: str, to_version: str, reason: str) -> Alert:
    """The champion moved back by :func:`fraud_lib.promotion.rollback`."""
    return Alert(
        kind=AlertKind.ROLLBACK,
        severity=Severity.WARNING,
        title=f"Champion rolled back from v{from_version} to v{to_version} ({settings.model_name})",
        summary=f"Reason: {reason}. The scoring service picks up v{to_version} at its next poll.",
        dedup_key=f"rollback:{settings.model_name}:v{from_version}->v{to_version}",
        numbers={"from_version": str(from_version), "to_version": str(to_version)},
        links=_links(settings, to_version),
        model_name=settings.model_name,
    )


def model_refused_alert(settings: Settings, version: str, reason: str, message: str,
                        serving: str | None) -> Alert:  # fmt: skip
    """The scoring service refused to load a version (:mod:`serving.model_holder`)."""
    still = f"still serving v{serving}" if serving else "NO model is served (requests get 503)"
    return Alert(
        kind=AlertKind.MODEL_REFUSED,
        severity=Severity.WARNING if serving else Severity.CRITICAL,
        title=f"Scoring service refused model v{version} ({reason}); {still}",
        summary=f"{settings.model_name} v{version} holds 'champion' but was refused: "
        f"{message[:500]}. Fix or roll back (fraud rollback), then POST /admin/reload.",
        dedup_key=f"model_refused:{settings.model_name}:v{version}:{reason}",
        numbers={"refused_version": str(version), "serving_version": serving, "reason": reason},
        links=_links(settings, version),
        model_name=settings.model_name,
    )


def performance_alert(settings: Settings, *, metric: str, value: float, baseline: float,
                      tolerance: float, model_version: str, cohort: str,
                      report: str | None = None) -> Alert:  # fmt: skip
    """Realized performance of a served version below its baseline by more than the
    tolerance (for the performance monitor)."""
    return Alert(
        kind=AlertKind.PERFORMANCE_BELOW_TOLERANCE,
        severity=Severity.WARNING,
        title=f"{metric} of v{model_version} fell below tolerance ({settings.model_name})",
        summary=f"Cohort {cohort}: {metric} {_num(value)} < baseline {_num(baseline)} - "
        f"tolerance {_num(tolerance)}.",
        dedup_key=f"performance:{settings.model_name}:v{model_version}:{metric}",
        numbers={
            metric: _num(value),
            "baseline": _num(baseline),
            "tolerance": _num(tolerance),
            "cohort": cohort,
        },
        links=_links(settings, model_version, report=report),
        model_name=settings.model_name,
    )


def log_backlog_alert(settings: Settings, *, backlog_records: int, threshold: int,
                      instance: str) -> Alert:  # fmt: skip
    """Predictions waiting in a scoring instance's spool above a threshold (the Prometheus
    rule FraudLogBacklogHigh pages for this in the compose deployment)."""
    return Alert(
        kind=AlertKind.LOG_BACKLOG,
        severity=Severity.WARNING,
        title=f"Prediction log backlog {backlog_records} records on {instance}",
        summary=f"{backlog_records} predictions are spooled but not in Postgres "
        f"(threshold {threshold}); is Postgres down or slow?",
        dedup_key=f"log_backlog:{settings.model_name}:{instance}",
        numbers={"backlog_records": backlog_records, "threshold": threshold},
        model_name=settings.model_name,
    )


# ------------------------------------------------------------------------------ one call
def _send(
    settings: Settings, build: Callable[..., Alert], *args: Any, **kwargs: Any
) -> NotifyResult | None:
    try:
        alert = build(settings, *args, **kwargs)
    except Exception as exc:  # a builder bug must not fail the producer
        log.warning("could not build the %s alert: %s: %s", build.__name__, type(exc).__name__, exc)
        return None
    return notify(settings, alert)


def alert_drift(settings: Settings, summary: Mapping[str, Any]) -> NotifyResult | None:
    """Alert if ``summary`` (a drift monitor result) says drift was detected."""
    if not summary.get("drift_detected"):
        return None
    return _send(settings, drift_alert, summary)


def alert_decision(
    settings: Settings, decision: Any, run_id: str | None = None
) -> NotifyResult | None:
    """Alert on a promoted or rejected challenger (other events, e.g. dry_run, are quiet)."""
    if decision.event not in ("promoted", "rejected"):
        return None
    return _send(settings, decision_alert, decision, run_id)


def alert_rollback(
    settings: Settings, from_version: str, to_version: str, reason: str
) -> NotifyResult | None:
    """Alert on a rollback of the champion alias."""
    return _send(settings, rollback_alert, from_version, to_version, reason)


def alert_performance(settings: Settings, **facts: Any) -> NotifyResult | None:
    """Alert on realized performance below tolerance (``facts``: see
    :func:`performance_alert`); for the performance monitor."""
    return _send(settings, performance_alert, **facts)
