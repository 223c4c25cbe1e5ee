"""``fraud demo --kind raw``: the loop on raw transactions, with behavioral features.

Raw history (``fraud generate --kind raw``) -> a behavioral model (raw_schema.yaml) and a
baseline on the raw amount and calendar features alone (raw_baseline_schema.yaml), trained and
tested on the same time split -> the behavioral one becomes champion -> the real gunicorn
service (online state in the embedded redis-server) scores the history and a new week day by
day, labels coming back over HTTP with their arrival time -> the real ``fraud_retrain`` DAG
rebuilds the window's features from the logged raw fields, checks drift on them, trains a
challenger on the same spec and gates it -> the running service hot-reloads a promoted one.

The summary shows what the behavioral model catches that the baseline misses, by fraud kind.
Like :mod:`fraud_lib.demo`, no Flask or Airflow import here.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from fraud_lib import airflow_local, pgserver, promotion, redisserver, registry, store
from fraud_lib.config import Settings
from fraud_lib.demo import (
    _post,
    check_reset_is_local,
    reset_state,
    scoring_service,
    wait_for_version,
)
from fraud_lib.errors import FraudError
from fraud_lib.features import predict_scores
from fraud_lib.features.online_store import KEY_PREFIX
from fraud_lib.features.raw_data import generate_raw
from fraud_lib.features.raw_table import RAW_BASELINE_SCHEMA_PATH, RAW_SCHEMA_PATH, enrich
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import TrainResult, time_split, train_model

DAY = 86_400
ALERT_BUDGET = 0.01  # share of transactions an analyst team can review: the top-scored 1 %
TEST_FRACTION = 0.25
LABEL_COLUMNS = ["is_fraud", "fraud_type", "label_delay_seconds", "labeled_at"]


@dataclass
class RawDemoOptions:
    """Sizes of the raw story; the defaults take a few minutes on 2 cores."""

    rows_per_day: int = 2000
    history_days: int = 21  # at 28 (seed 7) the first champion's ROC AUC 0.69 missed the 0.7 floor
    week_days: int = 7
    fraud_rate: float = 0.01
    seed: int = 7
    batch: int = 1000
    eval_days: int = 3


@dataclass
class RawDemoReport:
    """What the raw demo measured, for the summary and the e2e test."""

    comparison: dict[str, Any] = field(default_factory=dict)
    by_kind: list[dict[str, Any]] = field(default_factory=list)
    scored: int = 0
    labels_sent: int = 0
    decision: dict[str, Any] = field(default_factory=dict)
    champion_before: str | None = None
    champion_after: str | None = None
    reload_seconds: float | None = None
    seconds: float = 0.0


def _caught(scores: np.ndarray) -> np.ndarray:
    """Which rows the alert budget flags: the top ``ALERT_BUDGET`` share of scores."""
    k = max(1, math.ceil(ALERT_BUDGET * len(scores)))
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.argsort(-scores, kind="stable")[:k]] = True
    return flagged


def compare_models(
    history: pd.DataFrame, say: Callable[[str], None]
) -> tuple[TrainResult, dict[str, Any], list[dict[str, Any]]]:
    """Behavioral model vs the raw-amount-and-calendar baseline on the same test split: the
    behavioral result, the metrics of both, and frauds caught per fraud kind."""
    kinds = history.set_index(history["transaction_id"].astype(str))["fraud_type"]
    metrics, caught, results = {}, {}, {}
    for name, path in (("behavioral", RAW_SCHEMA_PATH), ("baseline", RAW_BASELINE_SCHEMA_PATH)):
        schema = FeatureSchema.load(path)
        frame = enrich(schema, history)
        results[name] = train_model(frame, schema, test_fraction=TEST_FRACTION)
        _, _, test = time_split(frame, schema, TEST_FRACTION, 0.15)
        scores = predict_scores(results[name].model, test, schema)
        y = test[schema.label].to_numpy()
        flagged = _caught(scores)
        metrics[name] = {
            "average_precision": float(average_precision_score(y, scores)),
            "recall_at_budget": float(flagged[y == 1].mean()),
            "features": len(schema.features),
        }
        caught[name] = pd.Series(flagged[y == 1], index=test["transaction_id"][y == 1].astype(str))
        say(f"{name}: average precision {metrics[name]['average_precision']:.3f}, recall at "
            f"the {ALERT_BUDGET:.0%} alert budget {metrics[name]['recall_at_budget']:.3f}")  # fmt: skip
    both = pd.DataFrame(caught)
    both["kind"] = kinds.reindex(both.index).to_numpy()
    rows = [
        {"kind": kind, "frauds": len(part),
         "behavioral_only": int((part["behavioral"] & ~part["baseline"]).sum()),
         "baseline_only": int((part["baseline"] & ~part["behavioral"]).sum()),
         "both": int((part["behavioral"] & part["baseline"]).sum())}
        for kind, part in both.groupby("kind")
    ]  # fmt: skip
    frauds = len(both)
    comparison = {"test_rows": len(test), "test_frauds": frauds, "alert_budget": ALERT_BUDGET,
                  **metrics}  # fmt: skip
    return results["behavioral"], comparison, rows


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = frame.drop(columns=LABEL_COLUMNS).to_dict("records")
    for rec in out:
        rec["transaction_id"] = str(rec["transaction_id"])
    return out


def replay_days(url: str, raw: pd.DataFrame, batch: int) -> tuple[int, int]:
    """Score ``raw`` day by day through POST /v1/score; after each day, POST the labels that
    arrived by its end, with their arrival time. Returns (scored, labels sent)."""
    day = ((raw["timestamp"] - raw["timestamp"].min()) // DAY).astype(int)
    sent = np.zeros(len(raw), dtype=bool)
    for d in sorted(day.unique()):
        records = _records(raw[day == d])
        for i in range(0, len(records), batch):
            _post(f"{url}/v1/score", {"transactions": records[i : i + batch]})
        known = ~sent & (raw["labeled_at"] <= raw["timestamp"].min() + (d + 1) * DAY).to_numpy()
        labels = raw[known]
        at = pd.to_datetime(labels["labeled_at"], unit="s", utc=True).dt.strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        rows = [{"transaction_id": str(tx), "label": int(y), "labeled_at": t}
                for tx, y, t in zip(labels["transaction_id"], labels["is_fraud"], at,
                                    strict=True)]  # fmt: skip
        for i in range(0, len(rows), batch):
            _post(f"{url}/v1/labels", {"labels": rows[i : i + batch]})
        sent |= known
    return len(raw), int(sent.sum())


def _fresh_online_state(settings: Settings, reset: bool) -> tuple[str, Any]:
    """The redis URL the service uses, and the embedded server this demo started (or None);
    with ``reset``, the embedded server's online state is emptied."""
    if settings.redis_url:
        return settings.redis_url, None
    server = redisserver.embedded_from_settings(settings)
    started = server.start()
    url = server.url
    if reset:
        client = server.client()
        for key in client.scan_iter(match=f"{KEY_PREFIX}*"):
            client.delete(key)
        client.close()
    return url, server if started else None


def _first_champion(
    settings: Settings, engine: Any, result: TrainResult, frame: pd.DataFrame
) -> str:
    """Register the behavioral model and promote it through the gate (held-out rows)."""
    ref = registry.log_model(result, settings, run_name="demo-raw-first-champion")
    if ref is None:
        raise FraudError("the behavioral model was not registered; see the log above")
    held_out = frame[frame["timestamp"] > result.time_range["fit_end"]]
    decision = promotion.promote_if_better(settings, engine, held_out, ref.version)
    champion = registry.alias_version(settings)
    if champion is None:
        raise FraudError(f"the behavioral model was not promoted: {decision.reason}")
    return champion


def _serve_and_retrain(
    settings: Settings, o: RawDemoOptions, raw: pd.DataFrame, report: RawDemoReport,
    say: Callable[[str], None], redis_url: str,
) -> None:  # fmt: skip
    """Steps 3-5: the service scores every day, fraud_retrain runs, the service reloads."""
    port = pgserver.free_port()
    env = airflow_local.airflow_env(settings)
    env.update(FRAUD_ADMIN_TOKEN=secrets.token_urlsafe(24), FRAUD_SCHEMA=str(RAW_SCHEMA_PATH),
               FRAUD_REDIS_URL=redis_url, FRAUD_SCORING_URL=f"http://127.0.0.1:{port}",
               FRAUD_POLL_SECONDS=env.get("FRAUD_POLL_SECONDS", "1"),
               FRAUD_LABEL_REFRESH_SECONDS="1")  # fmt: skip
    airflow_local.ensure_db(env, say)
    work = settings.state_dir / "demo"
    with scoring_service(settings, env, port, say) as url:
        say(f"step 3/5: replaying {len(raw):,} raw transactions day by day through {url}")
        report.scored, report.labels_sent = replay_days(url, raw, o.batch)
        say(f"{report.scored:,} scored and logged with their features; "
            f"{report.labels_sent:,} labels came back")  # fmt: skip
        say("step 4/5: fraud_retrain through Airflow (features rebuilt from the logged raw fields)")
        days = o.history_days + o.week_days + 1
        airflow_local.dags_test("fraud_retrain", {"train_window_days": days,
                                "eval_window_days": o.eval_days}, env, say,
                                log_path=work / "airflow.log")  # fmt: skip
        report.champion_after = registry.alias_version(settings)
        if report.champion_after != report.champion_before:
            say(f"step 5/5: waiting for every worker to serve version {report.champion_after}")
            sample = {"transactions": _records(raw.tail(1))}
            report.reload_seconds = wait_for_version(url, str(report.champion_after), sample, 60)
        else:
            say("step 5/5: the champion did not change, so there is nothing to reload")


def run_raw_demo(
    settings: Settings, options: RawDemoOptions, say: Callable[[str], None], *, reset: bool
) -> RawDemoReport:
    """Run the raw story end to end and return what it measured."""
    started = time.monotonic()
    report, o = RawDemoReport(), options
    if reset:
        check_reset_is_local(settings)
    engine = store.connect_store(settings)
    if reset:
        reset_state(settings, engine, say)
    elif registry.list_versions(settings):
        raise FraudError(
            f"{settings.state_dir} already holds models; run `fraud demo --reset` (or make clean)"
        )
    days = o.history_days + o.week_days
    say(f"step 1/5: generating {days} days of raw transactions ({o.rows_per_day:,} rows/day)")
    raw = generate_raw(days, rows_per_day=o.rows_per_day, fraud_rate=o.fraud_rate, seed=o.seed)
    raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
    history = raw[raw["timestamp"] < raw["timestamp"].min() + o.history_days * DAY]
    say("step 2/5: behavioral model vs raw amount + calendar baseline, same time split")
    result, report.comparison, report.by_kind = compare_models(history, say)
    frame = enrich(FeatureSchema.load(RAW_SCHEMA_PATH), history)
    report.champion_before = _first_champion(settings, engine, result, frame)
    redis_url, started_redis = _fresh_online_state(settings, reset)
    try:
        _serve_and_retrain(settings, o, raw, report, say, redis_url)
    finally:
        if started_redis is not None:
            started_redis.stop()
    events = store.model_events(engine, settings.model_name, limit=1)
    report.decision = (
        {k: events[0].get(k) for k in ("version", "event", "reason")} if events else {}
    )
    report.seconds = time.monotonic() - started
    work = settings.state_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    (work / "summary_raw.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    return report


def print_raw_summary(report: RawDemoReport, echo: Callable[[str], None]) -> None:
    """The closing summary: behavioral vs baseline, by fraud kind, then the loop."""
    c = report.comparison
    echo("")
    echo("=" * 78)
    echo(f"fraudloop raw demo finished in {report.seconds:.0f}s")
    echo("=" * 78)
    echo(f"same test split: {c['test_rows']:,} transactions, {c['test_frauds']} frauds; "
         f"alert budget: the top {c['alert_budget']:.0%} of scores")  # fmt: skip
    echo(f"  {'model':<12}{'features':>9}{'avg prec':>10}{'recall@budget':>15}")
    for name in ("behavioral", "baseline"):
        m = c[name]
        echo(f"  {name:<12}{m['features']:>9}{m['average_precision']:>10.3f}"
             f"{m['recall_at_budget']:>15.3f}")  # fmt: skip
    echo("frauds caught at the budget, by kind:")
    echo(f"  {'kind':<14}{'frauds':>7}{'behavioral only':>17}{'baseline only':>15}{'both':>6}")
    for r in report.by_kind:
        echo(f"  {r['kind']:<14}{r['frauds']:>7}{r['behavioral_only']:>17}"
             f"{r['baseline_only']:>15}{r['both']:>6}")  # fmt: skip
    echo(f"service: {report.scored:,} raw transactions scored, {report.labels_sent:,} labels")
    d = report.decision
    if d:
        echo(f"fraud_retrain: v{d['version']} {d['event']}: {d['reason']}")
    echo(f"champion: v{report.champion_before} -> v{report.champion_after}")
    if report.reload_seconds is not None:
        echo(f"hot reload: every worker served v{report.champion_after} "
             f"{report.reload_seconds:.1f}s after fraud_retrain ended (same feature spec)")  # fmt: skip
