"""The demo's monitoring part: the webhook receiver it starts, the two runs of the
``fraud_performance_monitor`` DAG after the new-pattern week, and their part of the summary.

**The demo's clock.** The demo replays two weeks of traffic within minutes, so the service
scores all of it on one UTC day and the performance monitor (cohort = scoring day x served
version) sees one cohort per served version: v1's, holding both weeks. The label delays are
synthetic too (labels come back over HTTP within seconds), so the demo runs the monitor with a
label window of 0 days (a cohort is mature once its scoring day has ended): first at as-of
*now*, while week 2's late labels are still out (the cohort is provisional, with its label
coverage), then, after the late labels came back, at as-of the next midnight UTC, when the
day is over and the cohort mature. That run compares v1's mature cohort with v1's validation
metric and reports the drop the new pattern caused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fraud_lib import airflow_local
from fraud_lib.config import Settings
from fraud_lib.monitoring.performance_report import NAME, run_key
from fraud_lib.monitoring.receiver import WebhookReceiver

# The monitor's Params in the demo: see the module docstring (one cohort, mature after its day).
PERFORMANCE_CONF = {"label_window_days": 0, "lookback_days": 2, "eval_days": 1}
UI_URL = "http://127.0.0.1:8001"  # `make ui` = `fraud ui` (its default host and port)


@contextmanager
def alert_receiver(
    settings: Settings, env: dict[str, str], say: Callable[[str], None]
) -> Iterator[WebhookReceiver | None]:
    """Start a local webhook receiver and point ``env``'s FRAUD_ALERT_WEBHOOK_URL at it,
    unless the user configured a webhook (then alerts go there and this yields None)."""
    if settings.alert_webhook_url:
        say("alerts go to your FRAUD_ALERT_WEBHOOK_URL (the demo starts no receiver)")
        yield None
        return
    with WebhookReceiver(path="/hooks/fraudloop-demo") as receiver:
        env["FRAUD_ALERT_WEBHOOK_URL"] = receiver.url
        say(f"alert webhook receiver listening at {receiver.url}")
        yield receiver


def next_midnight(moment: datetime) -> datetime:
    """The first 00:00 UTC after ``moment``."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1)


def run_performance(
    settings: Settings,
    env: dict[str, str],
    say: Callable[[str], None],
    *,
    as_of: datetime,
    log_path: Path,
) -> dict[str, Any]:
    """Run ``fraud_performance_monitor`` at ``as_of`` through ``airflow dags test``; what it
    measured and decided (from its JSON report)."""
    as_of = as_of.astimezone(UTC).replace(microsecond=0)
    airflow_local.dags_test("fraud_performance_monitor", PERFORMANCE_CONF, env, say,
                            logical_date=as_of.isoformat(), log_path=log_path)  # fmt: skip
    path = Path(settings.reports_dir) / f"{NAME}__{run_key(as_of)}.json"
    if not path.exists():
        return {"as_of": as_of.isoformat(), "cohorts": [], "champion_version": None,
                "drop_detected": False, "reasons": [],
                "notes": [f"no report (nothing scored?); see {log_path}"],
                "html_path": None, "json_path": None}  # fmt: skip
    result = json.loads(path.read_text())
    keep = ("cohort_day", "model_version", "mature", "n", "frauds", "label_coverage",
            "average_precision", "recall", "card_precision_at_k")  # fmt: skip
    decision = result["decision"]
    return {
        "as_of": result["as_of"],
        "cohorts": [{k: c[k] for k in keep} for c in result["cohorts"]],
        "champion_version": decision["champion_version"],
        "drop_detected": decision["drop_detected"],
        "reasons": decision["reasons"],
        "notes": decision["notes"],
        "html_path": result["html_path"],
        "json_path": result["json_path"],
    }


def received_alerts(receiver: WebhookReceiver | None) -> list[dict[str, str]]:
    """Kind and title of every alert the receiver got, in arrival order."""
    if receiver is None:
        return []
    return [{"kind": str(p["json"].get("kind")), "title": str(p["json"].get("title"))}
            for p in receiver.wait_for(0)]  # fmt: skip


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_run(run: dict[str, Any], echo: Callable[[str], None]) -> None:
    echo(f"  as of {run['as_of']}:")
    for c in run["cohorts"]:
        status = "mature" if c["mature"] else "provisional"
        echo(f"    v{c['model_version']} cohort {c['cohort_day']} {status:<11} "
             f"{c['n']:>7,} scored, labels {100 * c['label_coverage']:5.1f}%, "
             f"{c['frauds']} frauds, avg prec {_fmt(c['average_precision'])}, "
             f"recall {_fmt(c['recall'])}")  # fmt: skip
    if run["drop_detected"]:
        echo("    DROP: " + "; ".join(run["reasons"]))
        echo("    -> fraudloop_performance asset emitted (it starts fraud_retrain)")
    else:
        echo("    no decision yet: " + "; ".join(run["notes"] or ["no drop"]))


def print_monitoring(report: Any, settings: Settings, echo: Callable[[str], None]) -> None:
    """The summary's monitoring lines: realized performance, alerts, dashboard, reports."""
    echo("realized performance of the served model (fraud_performance_monitor, "
         f"label window {PERFORMANCE_CONF['label_window_days']} days):")  # fmt: skip
    echo("  the demo scores both weeks within minutes, so each served version has one cohort, "
         "today's;")  # fmt: skip
    echo("  as-of now it is provisional, as-of the next midnight UTC (its day over) mature")
    for run in report.performance:
        _print_run(run, echo)
    where = report.webhook_url or "your FRAUD_ALERT_WEBHOOK_URL"
    echo(f"alerts received by the webhook ({where}):")
    for alert in report.alerts:
        echo(f"  {alert['kind']:<28} {alert['title']}")
    if not report.alerts:
        echo("  none" if report.webhook_url else "  (not recorded by the demo)")
    echo(f"monitoring dashboard: make ui (= .venv/bin/fraud ui), then {UI_URL}")
    echo(f"  (Evidently workspace {settings.evidently_workspace})")
    echo("classification reports (fraud_performance_monitor, HTML + JSON):")
    for run in report.performance:
        for path in (run["html_path"], run["json_path"]):
            if path:
                echo(f"  {path}")
