"""``fraud demo``: the whole loop with real components on local defaults.

History -> first champion -> the real gunicorn service scores a week of traffic (logged to
Postgres) -> delayed labels come back over HTTP -> the real ``fraud_retrain`` DAG keeps the
champion -> a new fraud pattern appears -> the drift monitor DAG flags it -> ``fraud_retrain``
promotes a challenger -> the running service hot-reloads it -> a summary.

No Flask or Airflow import here: the service and the DAGs run as their own processes, exactly
as a user would run them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests
from sklearn.metrics import average_precision_score
from sqlalchemy import text

from fraud_lib import (
    airflow_local,
    data,
    demo_monitor,
    logged,
    pgserver,
    procs,
    promotion,
    registry,
    store,
)
from fraud_lib.config import Settings
from fraud_lib.errors import FraudError
from fraud_lib.redact import redact
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model

log = logging.getLogger(__name__)

DAY = 86_400
SCHEMA = FeatureSchema()
SEND_COLUMNS = ["transaction_id", "Time", *SCHEMA.features]


@dataclass
class DemoOptions:
    """Sizes of the story; the defaults take a few minutes on 2 cores."""

    rows_per_day: int = 6000
    history_days: int = 28
    week_days: int = 7
    fraud_rate: float = 0.004
    label_wait_days: int = 7
    seed: int = 7
    port: int = 0
    batch: int = 1000
    eval_days: int = 3


@dataclass
class DemoReport:
    """What the demo measured, for the summary and the e2e test."""

    weeks: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    performance: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, str]] = field(default_factory=list)
    webhook_url: str | None = None
    reload_seconds: float | None = None
    versions_seen_after: list[str] = field(default_factory=list)
    catch: dict[str, Any] = field(default_factory=dict)
    champion_before: str | None = None
    champion_after: str | None = None
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


def check_reset_is_local(settings: Settings) -> None:
    """Refuse ``--reset`` unless it can only touch the local state of ``settings.state_dir``:
    it truncates the prediction tables and deletes the MLflow store."""
    store_path = settings.mlflow_tracking_uri.removeprefix("sqlite:///")
    local_mlflow = settings.mlflow_tracking_uri.startswith("sqlite:///") and Path(
        store_path
    ).resolve().is_relative_to(settings.state_dir.resolve())
    if not settings.embedded_postgres or not local_mlflow:
        raise FraudError(
            "`fraud demo --reset` empties the prediction tables and deletes the MLflow store, so "
            "it only runs on the embedded Postgres and a SQLite MLflow store under "
            f"FRAUD_STATE_DIR ({settings.state_dir}); unset FRAUD_DATABASE_URL and "
            "MLFLOW_TRACKING_URI, or point FRAUD_STATE_DIR at a fresh directory"
        )


def reset_state(settings: Settings, engine: Any, say: Callable[[str], None]) -> None:
    """Remove what an earlier demo left: local MLflow store, windows, spool, reports, the
    dashboard workspace (when under the state dir), rows, alert cooldowns and cohorts.
    Callers run :func:`check_reset_is_local` first, before connecting to anything."""
    say("resetting demo state (MLflow store, windows, spool, reports, dashboard, logged rows)")
    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        Path(settings.mlflow_tracking_uri.removeprefix("sqlite:///")).unlink(missing_ok=True)
        shutil.rmtree(settings.mlflow_artifact_dir, ignore_errors=True)
    local = [settings.state_dir / "windows", settings.state_dir / "demo", settings.spool_dir]
    if settings.evidently_workspace.is_relative_to(settings.state_dir.resolve()):
        local.append(settings.evidently_workspace)
    for path in local:
        shutil.rmtree(path, ignore_errors=True)
    for pattern in ("fraud_*.html", "fraud_*.json"):
        for report in settings.reports_dir.glob(pattern):
            report.unlink()
    with engine.begin() as conn:
        # alert_log too: an earlier run's cooldown would keep this run's alerts from being sent
        conn.execute(text("TRUNCATE predictions, labels, model_events, alert_log, "
                          "performance_cohorts"))  # fmt: skip


@contextmanager
def scoring_service(
    settings: Settings, env: dict[str, str], port: int, say: Callable[[str], None]
) -> Iterator[str]:
    """Run ``fraud serve`` (gunicorn, 2 workers) on 127.0.0.1; stop it by its pid on exit."""
    url = f"http://127.0.0.1:{port}"
    log_path = settings.state_dir / "demo" / "scoring.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fraud = airflow_local.console_script("fraud")
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [fraud, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FraudError(f"the scoring service exited early; see {log_path}")
            try:
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or workers still loading
                pass
            time.sleep(0.5)
        else:
            raise FraudError(f"the scoring service did not become ready; see {log_path}")
        say(f"scoring service ready at {url} (gunicorn pid {proc.pid}, log {log_path})")
        yield url
    finally:
        procs.stop_master(proc, timeout=60)


def _post(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(url, json=payload, timeout=120)
    if resp.status_code != 200:
        raise FraudError(f"POST {url} answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def replay(url: str, week: pd.DataFrame, batch: int) -> set[str]:
    """Score every transaction of ``week`` through POST /v1/score; return the versions seen."""
    versions: set[str] = set()
    records = week[SEND_COLUMNS].to_dict("records")
    for i in range(0, len(records), batch):
        answer = _post(f"{url}/v1/score", {"transactions": records[i : i + batch]})
        versions.add(str(answer["model"]["version"]))
    return versions


def send_labels(
    url: str, traffic: pd.DataFrame, known_by: float, sent: set[str], batch: int
) -> int:
    """POST the labels of ``traffic`` known by event time ``known_by`` that were not sent yet."""
    known = traffic[data.labels_known_by(traffic, known_by) & ~traffic["transaction_id"].isin(sent)]
    rows = [
        {"transaction_id": tx, "label": int(label)}
        for tx, label in zip(known["transaction_id"], known["Class"], strict=True)
    ]
    for i in range(0, len(rows), batch):
        _post(f"{url}/v1/labels", {"labels": rows[i : i + batch]})
    sent.update(known["transaction_id"])
    return len(rows)


def wait_for_version(url: str, version: str, sample: dict[str, Any], timeout: float) -> float:
    """Seconds until 20 consecutive responses come from ``version`` (every worker switched)."""
    started = time.monotonic()
    streak = 0
    while time.monotonic() - started < timeout:
        answer = _post(f"{url}/v1/score", sample)
        streak = streak + 1 if str(answer["model"]["version"]) == version else 0
        if streak >= 20:
            return time.monotonic() - started
        time.sleep(0.05)
    raise FraudError(f"the service did not switch to version {version} within {timeout:.0f}s")


def week_summary(engine: Any, first_week: int) -> list[dict[str, Any]]:
    """Per event-time week: the served versions and their quality on the labeled traffic."""
    now = datetime.now(UTC)
    df = logged.labeled_predictions(engine, start=now - timedelta(days=365), end=now)
    rows = []
    for week, part in df.groupby((df["event_time"] // (7 * DAY)).astype(int)):
        y = part["label"].to_numpy()
        frauds = int(y.sum())
        flagged = part["is_fraud"].to_numpy()
        rows.append({
            "week": int(week) - first_week + 1,
            "versions": ",".join(sorted(part["model_version"].astype(str).unique())),
            "labeled": len(part),
            "frauds": frauds,
            "average_precision": float(average_precision_score(y, part["score"]))
            if 0 < frauds < len(y) else float("nan"),
            "recall": float(flagged[y == 1].mean()) if frauds else float("nan"),
        })  # fmt: skip
    return rows


def run_demo(
    settings: Settings, options: DemoOptions, say: Callable[[str], None], *, reset: bool
) -> DemoReport:
    """Run the story end to end and return what it measured."""
    started = time.monotonic()
    report = DemoReport()
    o = options
    if reset:
        check_reset_is_local(settings)  # before connecting: refuse without side effects
    engine = store.connect_store(settings)
    if reset:  # before anything opens the MLflow store (its SQLite file is removed)
        reset_state(settings, engine, say)
    elif registry.list_versions(settings):
        raise FraudError(
            f"{settings.state_dir} already holds models; run `fraud demo --reset` (or make clean)"
        )
    work = settings.state_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)

    # 1. History and the first champion.
    say(f"step 1/6: generating {o.history_days} days of history ({o.rows_per_day:,} rows/day)")
    history = data.generate(o.history_days, rows_per_day=o.rows_per_day, fraud_rate=o.fraud_rate,
                            seed=o.seed)  # fmt: skip
    data.save_transactions(history, work / "history.parquet")
    result = train_model(SCHEMA.validate_frame(history), SCHEMA, test_fraction=0.2, progress=say,
                         threshold_rule=settings.threshold_rule)  # fmt: skip
    ref = registry.log_model(result, settings, data_ref=str(work / "history.parquet"),
                             run_name="demo-first-champion")  # fmt: skip
    if ref is None:
        raise FraudError("the first model was not registered; see the log above")
    held_out = history[history["Time"] > result.time_range["fit_end"]]
    decision = promotion.promote_if_better(settings, engine, held_out, ref.version)
    say(f"first champion: version {ref.version} ({decision.event}: {decision.reason})")
    report.champion_before = registry.alias_version(settings)
    if report.champion_before is None:
        raise FraudError("the first model did not pass the floors; see `fraud models`")

    token = secrets.token_urlsafe(24)
    port = o.port or pgserver.free_port()
    env = airflow_local.airflow_env(settings)
    env.update(FRAUD_ADMIN_TOKEN=token, FRAUD_SCORING_URL=f"http://127.0.0.1:{port}",
               FRAUD_POLL_SECONDS=env.get("FRAUD_POLL_SECONDS", "1"))  # fmt: skip
    airflow_local.ensure_db(env, say)
    sent: set[str] = set()
    day0 = o.history_days
    traffic = history.iloc[0:0]
    receiver_cm = demo_monitor.alert_receiver(settings, env, say)
    with receiver_cm as receiver, scoring_service(settings, env, port, say) as url:
        report.webhook_url = receiver.url if receiver else None
        # 2. A normal week of traffic, then the labels known by its end.
        say(f"step 2/6: replaying week 1 (days {day0}-{day0 + o.week_days - 1}) through {url}")
        week1 = data.generate(o.week_days, rows_per_day=o.rows_per_day, fraud_rate=o.fraud_rate,
                              seed=o.seed + 1, start_day=day0)  # fmt: skip
        replay(url, week1, o.batch)
        traffic = pd.concat([traffic, week1])
        n = send_labels(url, traffic, (day0 + o.week_days) * DAY, sent, o.batch)
        say(f"week 1: {len(week1):,} transactions scored and logged; {n:,} labels came back")

        # 3. Weekly retraining: no drift, so the champion should stay.
        conf = {"eval_window_days": o.eval_days}
        say("step 3/6: fraud_retrain through Airflow (no drift expected)")
        airflow_local.dags_test("fraud_retrain", conf, env, say, log_path=work / "airflow.log")

        # 4. A new fraud pattern appears.
        day1 = day0 + o.week_days
        say(f"step 4/6: week 2 (days {day1}-{day1 + o.week_days - 1}) brings a new fraud pattern")
        week2 = data.generate(o.week_days, rows_per_day=o.rows_per_day, fraud_rate=o.fraud_rate,
                              seed=o.seed + 2, start_day=day1, scenario="new_pattern",
                              drift_start_day=day1)  # fmt: skip
        monitor_from = datetime.now(UTC)
        replay(url, week2, o.batch)
        traffic = pd.concat([traffic, week2])
        n = send_labels(url, traffic, (day1 + o.week_days) * DAY, sent, o.batch)
        say(f"week 2: {len(week2):,} transactions scored; {n:,} labels known by its end")
        say("performance monitor at as-of now: labels still arriving (provisional cohort)")
        report.performance.append(demo_monitor.run_performance(
            settings, env, say, as_of=datetime.now(UTC), log_path=work / "airflow.log"))  # fmt: skip
        lookback = (datetime.now(UTC) - monitor_from).total_seconds() / DAY + 1e-4
        say("drift monitor over week 2's traffic (fraud_drift_monitor DAG)")
        airflow_local.dags_test(
            "fraud_drift_monitor",
            {"lookback_days": lookback},
            env,
            say,
            log_path=work / "airflow.log",
        )
        n = send_labels(url, traffic, (day1 + o.week_days + o.label_wait_days) * DAY, sent,
                        o.batch)  # fmt: skip
        say(f"{n:,} more labels came back within {o.label_wait_days} days")
        as_of = demo_monitor.next_midnight(datetime.now(UTC))
        say(f"performance monitor at as-of {as_of:%Y-%m-%d %H:%M} UTC: today's cohort is mature")
        report.performance.append(demo_monitor.run_performance(
            settings, env, say, as_of=as_of, log_path=work / "airflow.log"))  # fmt: skip
        say("the drift and performance monitors' asset events would start fraud_retrain under "
            "a scheduler; here we run it directly")  # fmt: skip
        airflow_local.dags_test("fraud_retrain", conf, env, say, log_path=work / "airflow.log")
        report.champion_after = registry.alias_version(settings)

        # 5. Hot reload in the running service, and what the new model catches.
        probe = data.generate(1, rows_per_day=o.rows_per_day, fraud_rate=o.fraud_rate * 3,
                              seed=o.seed + 3, start_day=day1 + o.week_days,
                              scenario="new_pattern", drift_start_day=0)  # fmt: skip
        if report.champion_after != report.champion_before:
            say(f"step 5/6: waiting for every worker to serve version {report.champion_after}")
            sample = {"transactions": probe[SEND_COLUMNS].head(1).to_dict("records")}
            report.reload_seconds = wait_for_version(url, str(report.champion_after), sample, 60)
        else:
            say("step 5/6: the champion did not change, so there is nothing to reload")
        frauds = probe[probe["Class"] == 1]
        answer = _post(f"{url}/v1/score",
                       {"transactions": frauds[SEND_COLUMNS].to_dict("records")})  # fmt: skip
        report.versions_seen_after = sorted({str(answer["model"]["version"])})
        caught_new = int(sum(r["is_fraud"] for r in answer["predictions"]))
        old = registry.load_version(settings, str(report.champion_before))
        caught_old = int(np.sum(old.score(frauds) >= old.threshold))
        report.catch = {"frauds": len(frauds), "old_version": report.champion_before,
                        "old_caught": caught_old, "new_version": report.champion_after,
                        "new_caught": caught_new}  # fmt: skip
        report.alerts = demo_monitor.received_alerts(receiver)

    # 6. Summary.
    report.weeks = week_summary(engine, day0 // 7)
    report.decisions = store.model_events(engine, settings.model_name, limit=20)[::-1]
    report.reports = sorted(str(p) for p in settings.reports_dir.glob("fraud_*.html")
                            if not p.name.startswith(f"{demo_monitor.NAME}__"))  # fmt: skip
    report.seconds = time.monotonic() - started
    report.files = sorted(str(p) for p in [*work.glob("*"), *settings.reports_dir.glob("fraud_*")])
    (work / "summary.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    return report


def print_summary(report: DemoReport, settings: Settings, echo: Callable[[str], None]) -> None:
    """The closing summary people read."""
    echo("")
    echo("=" * 78)
    echo(f"fraudloop demo finished in {report.seconds:.0f}s")
    echo("=" * 78)
    echo("served traffic per week (labels known so far):")
    echo(f"  {'week':<5}{'versions':<10}{'labeled':>9}{'frauds':>8}{'avg prec':>10}{'recall':>8}")
    for w in report.weeks:
        echo(f"  {w['week']:<5}{w['versions']:<10}{w['labeled']:>9,}{w['frauds']:>8}"
             f"{w['average_precision']:>10.3f}{w['recall']:>8.3f}")  # fmt: skip
    echo("promotion decisions:")
    for d in report.decisions:
        echo(f"  {d['created_at']:%H:%M:%S} v{d['version']:<3} {d['event']:<9} {d['reason']}")
    echo(f"champion: v{report.champion_before} -> v{report.champion_after}")
    if report.reload_seconds is not None:
        echo(f"hot reload: every worker served v{report.champion_after} (20 answers in a row) "
             f"{report.reload_seconds:.1f}s after fraud_retrain ended, without a restart")  # fmt: skip
    c = report.catch
    if c:
        echo(f"new fraud pattern, {c['frauds']} fresh frauds: v{c['old_version']} caught "
             f"{c['old_caught']}, v{c['new_version']} (served now) caught {c['new_caught']}")  # fmt: skip
    echo("drift reports:")
    for path in report.reports:
        echo(f"  {path}")
    demo_monitor.print_monitoring(report, settings, echo)
    echo("explore the same state:")
    tracking = redact(settings.mlflow_tracking_uri)
    echo(f"  .venv/bin/mlflow ui --backend-store-uri {tracking} --port 5000")
    echo("  make airflow          # Airflow UI on http://127.0.0.1:8080")
    echo("  .venv/bin/fraud models  # versions, aliases and decisions")
    echo("  make clean            # remove all of it")


def demo_env_ok() -> None:
    """Fail early when the project's console scripts are missing (not installed)."""
    airflow_local.console_script("fraud")
    airflow_local.airflow_exe()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
