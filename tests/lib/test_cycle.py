"""window.py and cycle.py against the real Postgres: the run's window (idempotent, labels
known by the interval end, cold start, skip), the event-time split, the reload hint and the run
summary."""

from __future__ import annotations

import http.server
import threading
import zoneinfo
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from fraud_lib import cycle, cycle_report, registry, store
from fraud_lib.data import generate, save_transactions
from fraud_lib.schema import FeatureSchema
from fraud_lib.window import ingest_window, run_key_for, split_window
from fraud_lib.window_store import WindowRef, load_window, save_window

SCHEMA = FeatureSchema()
END = datetime(2025, 3, 3, tzinfo=UTC)


def _log(engine, traffic: pd.DataFrame, *, first_scored: datetime, label_lag: timedelta):
    """Log ``traffic`` as predictions (features without Time: event_time carries it) and its
    labels ``label_lag`` after scoring."""
    offset = pd.to_timedelta(traffic[SCHEMA.time] - traffic[SCHEMA.time].min(), unit="s")
    scored = first_scored + offset
    feats = traffic[list(SCHEMA.features)].to_dict("records")
    rows = [
        {
            "prediction_id": f"p-{tx}",
            "transaction_id": tx,
            "scored_at": at.to_pydatetime(),
            "event_time": t,
            "features": f,
            "score": 0.01,
        }
        for tx, at, t, f in zip(
            traffic["transaction_id"], scored, traffic[SCHEMA.time], feats, strict=True
        )
    ]
    store.insert_predictions(engine, rows)
    store.upsert_labels(
        engine,
        [
            {
                "transaction_id": r["transaction_id"],
                "label": int(y),
                "labeled_at": r["scored_at"] + label_lag,
            }
            for r, y in zip(rows, traffic["Class"], strict=True)
        ],
    )


@pytest.fixture
def small(settings):
    return replace(settings, min_labeled_rows=500, min_frauds=5)


def test_run_key_names_the_interval_end_in_utc_and_the_window_length():
    assert run_key_for(END, 28) == "20250303T000000Z_28d"
    assert run_key_for(datetime(2025, 3, 3), 7) == "20250303T000000Z_7d"
    cet = datetime(2025, 3, 3, 1, tzinfo=UTC).astimezone(zoneinfo.ZoneInfo("Europe/Berlin"))
    assert run_key_for(cet, 7) == "20250303T010000Z_7d"


def test_split_window_holds_out_the_last_days_of_event_time():
    df = pd.DataFrame({"Time": [0.0, 86_400.0, 2 * 86_400.0, 3 * 86_400.0 - 1, 3 * 86_400.0]})
    train, held_out, cutoff = split_window(df, SCHEMA, 1)
    assert cutoff == 2 * 86_400.0
    assert list(train["Time"]) == [0.0, 86_400.0, 2 * 86_400.0]
    assert list(held_out["Time"]) == [3 * 86_400.0 - 1, 3 * 86_400.0]


def test_window_uses_labels_known_by_the_interval_end_and_reruns_are_identical(small, pg_engine):
    traffic = generate(6, rows_per_day=400, seed=5, fraud_rate=0.02, label_delay_days=0)
    _log(pg_engine, traffic, first_scored=END - timedelta(days=6), label_lag=timedelta(hours=6))
    key = run_key_for(END, 7)
    first = ingest_window(small, pg_engine, interval_end=END, train_days=7, run_key=key)
    assert first.skipped is None and first.initial_rows == 0
    # rows scored in the last 6 hours have no label yet at the interval end
    unlabeled = traffic[SCHEMA.time] - traffic[SCHEMA.time].min() >= 6 * 86_400 - 6 * 3600
    assert first.rows == len(traffic) - int(unlabeled.sum())
    window = load_window(small, WindowRef.from_dict(first.ref))
    assert list(window.columns) == [
        "transaction_id",
        "Time",
        *SCHEMA.features,
        "Class",
        "score",
        "source",
    ]
    assert window["Time"].is_monotonic_increasing  # event time came from predictions.event_time
    assert window["Time"].max() == pytest.approx(first.event_time[1])

    store.upsert_labels(pg_engine, [{"transaction_id": "late", "label": 1}])  # after the end
    again = ingest_window(small, pg_engine, interval_end=END, train_days=7, run_key=key)
    assert again.digest == first.digest and again.ref == first.ref  # same run, same bytes
    pd.testing.assert_frame_equal(load_window(small, WindowRef.from_dict(again.ref)), window)
    stored = registry.client(small).list_artifacts(first.ref["run_id"], "window")
    assert [a.path for a in stored] == [f"window/{key}.parquet"]
    assert not (small.state_dir / "windows").exists()  # nothing on the worker's disk


def test_too_few_labels_is_a_skip_with_a_reason_and_no_file(settings, pg_engine):
    traffic = generate(1, rows_per_day=300, seed=6, label_delay_days=0)
    _log(pg_engine, traffic, first_scored=END - timedelta(days=2), label_lag=timedelta(0))
    result = ingest_window(settings, pg_engine, interval_end=END, train_days=7, run_key="k")
    assert result.rows == 300 and result.ref is None
    assert "too few labels" in result.skipped and "FRAUD_MIN_LABELED_ROWS" in result.skipped
    assert "FRAUD_INITIAL_DATA" in result.skipped


def test_cold_start_adds_the_initial_data_file_without_duplicates(small, pg_engine, tmp_path):
    initial = generate(3, rows_per_day=400, seed=7, fraud_rate=0.02, label_delay_days=0)
    path = save_transactions(initial, tmp_path / "initial.parquet")
    logged = initial.iloc[:100]  # the same transactions were also scored and labeled
    _log(pg_engine, logged, first_scored=END - timedelta(days=1), label_lag=timedelta(0))
    settings = replace(small, initial_data=str(path))
    result = ingest_window(settings, pg_engine, interval_end=END, train_days=7, run_key="c")
    assert result.logged_rows == 100 and result.initial_rows == len(initial) - 100
    window = load_window(settings, WindowRef.from_dict(result.ref))
    assert window["transaction_id"].is_unique and len(window) == len(initial)
    assert set(window["source"]) == {"log", "initial"}


def test_train_challenger_skips_when_the_evaluation_slice_has_no_frauds(small):
    df = SCHEMA.validate_frame(generate(4, rows_per_day=300, seed=8, fraud_rate=0.02))
    df.loc[df["Time"] > df["Time"].max() - 86_400, "Class"] = 0
    ref = save_window(small, df.assign(score=0.0, source="log"), "no-fraud")
    with pytest.raises(cycle.SkipRun, match="evaluation slice"):
        cycle.train_challenger(small, ref, eval_days=1, model_type="lr", resample="none")


class _Reload(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self):
        _Reload.seen.append(f"{self.path} {self.headers.get('Authorization')}")
        self.send_response(200 if self.headers.get("Authorization") == "Bearer s3cret" else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_notify_serving_posts_the_reload_hint_and_never_raises(settings):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Reload)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert cycle.notify_serving(replace(settings, scoring_url=url, admin_token="s3cret"))
        assert _Reload.seen[-1] == "/admin/reload Bearer s3cret"
        assert not cycle.notify_serving(replace(settings, scoring_url=url, admin_token="wrong"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert not cycle.notify_serving(replace(settings, scoring_url=url), timeout=1)


def test_summary_puts_the_metrics_side_by_side():
    decision = {
        "event": "rejected",
        "reason": "not better",
        "challenger_version": "3",
        "champion_version": "2",
        "n_eval": 900,
        "n_eval_fraud": 9,
        "challenger_metrics": {"average_precision": 0.61, "roc_auc": 0.9},
        "champion_metrics": {"average_precision": 0.65, "roc_auc": float("nan")},
    }
    text = cycle_report.format_summary(
        decision,
        drift={
            "drift_detected": False,
            "drifted_count": 0,
            "columns": ["a"],
            "report_uri": "runs:/r/drift/r.html",
        },
    )
    assert "challenger v3" in text and "champion v2" in text
    line = next(x for x in text.splitlines() if x.startswith("average_precision"))
    assert line.split()[1:] == ["0.6100", "0.6500"]
    assert next(x for x in text.splitlines() if x.startswith("roc_auc")).split()[2] == "-"
    assert "decision: rejected - not better" in text and "report: runs:/r/drift/r.html" in text
