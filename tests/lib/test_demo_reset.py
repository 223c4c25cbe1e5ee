"""``fraud demo --reset`` also forgets what an earlier demo's monitoring left: the alert
cooldowns (else this run's alerts would be suppressed), the stored cohorts and the dashboard."""

from __future__ import annotations

from dataclasses import replace

import sqlalchemy as sa

from fraud_lib import demo
from fraud_lib.config import Settings
from fraud_lib.monitoring import alerts, events
from fraud_lib.monitoring.receiver import WebhookReceiver


def _performance(settings: Settings) -> alerts.NotifyResult | None:
    return events.alert_performance(settings, metric="average_precision", value=0.4,
                                    baseline=0.9, tolerance=0.05, model_version="1",
                                    cohort="2025-01-01")  # fmt: skip


def test_reset_clears_alert_cooldowns_cohorts_and_the_dashboard(settings, pg_engine):
    with pg_engine.begin() as conn:  # other tests' alerts
        conn.execute(sa.text("TRUNCATE alert_log"))
    with WebhookReceiver() as receiver:
        s = replace(settings, alert_webhook_url=receiver.url, alert_attempts=1)
        assert _performance(s).status == "sent"
        assert _performance(s).status == "suppressed"  # an earlier demo's cooldown
        with pg_engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO performance_cohorts (as_of, cohort_day, model_version, mature, n, "
                "labeled, frauds, label_coverage, k) VALUES (now(), '2025-01-01', '1', true, 1, "
                "1, 0, 1.0, 1)"
            ))  # fmt: skip
        s.evidently_workspace.mkdir(parents=True)
        (s.evidently_workspace / "fraudloop-snapshots.json").write_text("{}")

        demo.reset_state(s, pg_engine, lambda _: None)

        with pg_engine.connect() as conn:
            for table in ("alert_log", "performance_cohorts"):
                assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == 0
        assert not s.evidently_workspace.exists()
        assert _performance(s).status == "sent"  # the new demo's alert reaches the receiver
        assert len(receiver.wait_for(2)) == 2


def test_reset_keeps_a_dashboard_workspace_outside_the_state_dir(settings, pg_engine, tmp_path):
    outside = tmp_path / "team-dashboard"
    outside.mkdir()
    s = replace(settings, evidently_workspace_dir=str(outside))
    demo.reset_state(s, pg_engine, lambda _: None)
    assert outside.exists()
