"""`fraud demo --kind raw`, small, end to end: the real CLI, the real gunicorn service with the
embedded redis-server, the real fraud_retrain DAG through `airflow dags test`, in a temp state
dir (the demo starts its own embedded Postgres there; the test stops it and redis by pid)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from fraud_lib import pgserver, store
from fraud_lib.redisserver import EmbeddedRedis
from tests.conftest import stop_by_pid
from tests.e2e.test_demo import _run_demo, demo_env

pytestmark = pytest.mark.slow

ROWS_PER_DAY, HISTORY_DAYS, WEEK_DAYS = 600, 14, 7


def test_raw_demo_compares_with_the_baseline_and_closes_the_loop(pg_base_dir: Path) -> None:
    home = pg_base_dir / "demo-raw"  # reachable by the postgres OS user when we are root
    home.mkdir()
    port, redis_port = pgserver.free_port(), pgserver.free_port()
    env = demo_env(home, port, redis_port, FRAUD_MIN_LABELED_ROWS="2000")
    fraud = str(Path(sys.executable).with_name("fraud"))
    argv = [fraud, "demo", "--kind", "raw", "--reset", "--rows-per-day", str(ROWS_PER_DAY),
            "--history-days", str(HISTORY_DAYS)]  # fmt: skip
    server = pgserver.EmbeddedPostgres(home / "state" / "postgres", port)
    try:
        proc = _run_demo(argv, env, home, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        engine = store.make_engine(server.url)
        with engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one()
            with_raw = conn.execute(
                sa.text("SELECT count(*) FROM predictions WHERE features ->> 'customer_id' IS NOT NULL "
                        "AND features ->> 'terminal__risk__rate__30d__delay7d' IS NOT NULL")
            ).scalar_one()  # fmt: skip
        engine.dispose()
    finally:
        stop_by_pid(server)
        EmbeddedRedis(home / "state", redis_port).stop()  # the demo stops the one it started
    summary = json.loads((home / "state" / "demo" / "summary_raw.json").read_text())
    # every prediction (the replay, then the reload probes) logged raw fields + features
    assert logged == with_raw >= summary["scored"] == (HISTORY_DAYS + WEEK_DAYS) * ROWS_PER_DAY
    assert 0.8 * summary["scored"] < summary["labels_sent"] <= summary["scored"]
    c = summary["comparison"]
    # The behavioral model ranks frauds better than amount + calendar on the same test split.
    assert c["behavioral"]["average_precision"] > c["baseline"]["average_precision"]
    assert c["behavioral"]["recall_at_budget"] >= c["baseline"]["recall_at_budget"]
    kinds = {r["kind"]: r for r in summary["by_kind"]}
    assert sum(r["frauds"] for r in kinds.values()) == c["test_frauds"]
    assert sum(r["behavioral_only"] for r in kinds.values()) > sum(
        r["baseline_only"] for r in kinds.values()
    )
    # fraud_retrain decided on the rebuilt window; a promotion was hot-reloaded.
    assert summary["decision"]["event"] in ("promoted", "rejected")
    if summary["decision"]["event"] == "promoted":
        assert summary["champion_after"] != summary["champion_before"]
        assert summary["reload_seconds"] is not None
    for line in ("behavioral only", "recall@budget", "fraud_retrain: v", "champion: v1 -> v"):
        assert line in proc.stdout
