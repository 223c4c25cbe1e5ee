"""The notifier against real receivers: a local HTTP server, a local SMTP server (aiosmtpd)
and the real Postgres that holds the deduplication log."""

# ruff: noqa: F811 - pytest fixtures imported from tests.alert_receivers are parameters here
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from fraud_lib import pgserver
from fraud_lib.config import Settings
from fraud_lib.errors import ConfigError
from fraud_lib.monitoring import alerts, events
from fraud_lib.monitoring.alerts import Alert, AlertKind, AlertQueue, Severity, notify
from tests.alert_receivers import TOKEN, smtp, webhook  # noqa: F401 - fixtures used by name

REPO = Path(__file__).resolve().parents[2]
DRIFT = {
    "drift_detected": True,
    "champion_version": "3",
    "drifted_share": 0.0667,
    "drifted_count": 2,
    "drifted_columns": ["V4", "V14"],
    "score_shift": {"psi": 0.31},
    "rows": {"current": 12000},
    "html_path": "/reports/fraud_drift_monitor__2026-12-01_1d.html",
}


@pytest.fixture()
def alert_settings(settings: Settings, pg_engine: sa.Engine, webhook) -> Settings:
    """Settings that send to the local webhook, fast retries, on an empty alert_log."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE alert_log")
    return replace(settings, alert_webhook_url=webhook.url, alert_retry_seconds=0.01,
                   public_mlflow_url="http://mlflow.example:5000")  # fmt: skip


def _row(engine: sa.Engine, key: str) -> dict:
    with engine.begin() as conn:
        query = sa.text("SELECT * FROM alert_log WHERE dedup_key = :k")
        return dict(conn.execute(query, {"k": key}).mappings().one())


def _unique_alert(key: str) -> Alert:
    return Alert(AlertKind.LOG_BACKLOG, Severity.WARNING, "backlog", "many", dedup_key=key)


# ------------------------------------------------------------------------------ delivery
def test_webhook_gets_slack_text_numbers_and_links(alert_settings, webhook):
    alert = events.drift_alert(alert_settings, DRIFT)
    result = notify(alert_settings, alert)
    assert result.status == "sent" and result.deliveries[0].attempts == 1
    (post,) = webhook.wait_for(1)
    body = post["json"]
    assert "0.0667 >= 0.05" in body["text"] and "0.31 >= 0.1" in body["text"]
    assert body["kind"] == "drift_detected" and body["severity"] == "warning"
    assert body["numbers"]["drifted_share"] == 0.0667 and body["numbers"]["score_psi"] == 0.31
    assert body["dedup_key"] == "drift:fraud-detector:v3"
    assert body["links"]["report"] == DRIFT["html_path"]
    mlflow = "http://mlflow.example:5000/#/models/fraud-detector/versions/3"
    assert f"<{mlflow}|model version 3 (MLflow)>" in body["text"]


def test_alert_latency_event_to_webhook_receipt(alert_settings, webhook):
    """Measured: from the event (the Alert is made) to the receiver holding the POST, with
    the Postgres claim and the status update included."""
    latencies = []
    for i in range(20):
        alert = _unique_alert(f"latency-{i}")
        notify(alert_settings, alert)
        latencies.append(webhook.wait_for(i + 1)[i]["at"] - alert.created_at)
    latencies.sort()
    print(f"\nalert latency over 20 alerts: median {latencies[10] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms")  # fmt: skip
    assert latencies[10] < 1.0


def test_email_arrives_with_subject_and_body(alert_settings, smtp):
    controller, mailbox = smtp
    s = replace(alert_settings, alert_webhook_url="", alert_smtp_host="127.0.0.1",
                alert_smtp_port=controller.port, alert_smtp_security="none",
                alert_smtp_from="fraudloop@example.org",
                alert_smtp_to="fraud-team@example.org, oncall@example.org")  # fmt: skip
    result = notify(s, events.rollback_alert(s, "7", "6", "AP fell after the release"))
    assert result.status == "sent", result
    ((envelope, msg),) = mailbox.messages
    assert envelope.rcpt_tos == ["fraud-team@example.org", "oncall@example.org"]
    assert (
        msg["Subject"].strip()
        == "[fraudloop warning] Champion rolled back from v7 to v6 (fraud-detector)"
    )
    assert msg["X-Fraudloop-Dedup-Key"] == "rollback:fraud-detector:v7->v6"
    body = msg.get_content()
    assert "AP fell after the release" in body and "to_version: 6" in body


# ------------------------------------------------------------------------------ dedup
def test_same_key_within_the_cooldown_sends_once_across_processes(
    alert_settings,
    webhook,
    pg_engine,
):
    assert notify(alert_settings, events.drift_alert(alert_settings, DRIFT)).status == "sent"
    # A second process (another DAG run's task): fresh Settings, fresh module state.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    env.update(FRAUD_DATABASE_URL=alert_settings.database_url,
               FRAUD_ALERT_WEBHOOK_URL=webhook.url, PYTHONPATH=str(REPO))  # fmt: skip
    code = (
        "import json; from fraud_lib.config import Settings; "
        "from fraud_lib.monitoring import events, alerts; s = Settings.from_env(); "
        f"r = alerts.notify(s, events.drift_alert(s, {DRIFT!r})); print(r.status, r.dedup)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    assert out.stdout.split() == ["suppressed", "postgres"], out.stderr
    time.sleep(0.3)
    assert len(webhook.posts) == 1
    row = _row(pg_engine, "drift:fraud-detector:v3")
    assert (row["sent_count"], row["suppressed_count"], row["last_status"]) == (1, 1, "sent")


def test_after_the_cooldown_the_same_key_sends_again(alert_settings, webhook, pg_engine):
    s = replace(alert_settings, alert_cooldown_seconds=0.5)
    assert notify(s, _unique_alert("again")).status == "sent"
    assert notify(replace(s), _unique_alert("again")).status == "suppressed"
    time.sleep(0.6)
    assert notify(replace(s), _unique_alert("again")).status == "sent"
    assert len(webhook.wait_for(2)) == 2
    assert _row(pg_engine, "again")["sent_count"] == 2


def test_without_postgres_alerts_are_deduplicated_in_process(settings, webhook, caplog):
    dead = f"postgresql+psycopg://fraud@127.0.0.1:{pgserver.free_port()}/fraud"
    s = replace(settings, database_url=dead, alert_webhook_url=webhook.url)
    with caplog.at_level(logging.WARNING):
        first = notify(s, _unique_alert("no-db"))
        second = notify(s, _unique_alert("no-db"))
    assert (first.status, first.dedup, second.status) == ("sent", "local", "suppressed")
    assert "alert log in Postgres is unavailable" in caplog.text
    assert len(webhook.wait_for(1)) == 1


# ------------------------------------------------------------------------------ failures
def _no_error_and_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert TOKEN not in caplog.text


def test_http_500_is_retried_then_a_warning_and_the_claim_is_released(
    alert_settings,
    webhook,
    caplog,
    pg_engine,
):
    webhook.statuses = [500]
    with caplog.at_level(logging.INFO):
        result = notify(alert_settings, _unique_alert("five-hundred"))
    assert result.status == "failed" and result.deliveries[0].attempts == 3
    assert len(webhook.posts) == 3
    assert "HTTP 500" in result.deliveries[0].error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "five-hundred" in warnings[0].getMessage()
    _no_error_and_no_secret(caplog)
    assert TOKEN not in json.dumps([d.__dict__ for d in result.deliveries])
    assert _row(pg_engine, "five-hundred")["last_status"] == "failed"
    webhook.statuses = [500, 500, 500, 200]  # the receiver is back: not suppressed
    assert notify(alert_settings, _unique_alert("five-hundred")).status == "sent"


def test_a_500_then_200_counts_as_sent_after_a_retry(alert_settings, webhook):
    webhook.statuses = [503, 200]
    result = notify(alert_settings, _unique_alert("flaky"))
    assert result.status == "sent" and result.deliveries[0].attempts == 2


def test_a_4xx_is_not_retried(alert_settings, webhook):
    webhook.statuses = [404]
    result = notify(alert_settings, _unique_alert("wrong-url"))
    assert result.status == "failed" and result.deliveries[0].attempts == 1


def test_refused_connection_is_retried_and_never_raises(alert_settings, caplog):
    url = f"http://127.0.0.1:{pgserver.free_port()}/hooks/{TOKEN}"
    s = replace(alert_settings, alert_webhook_url=url)
    with caplog.at_level(logging.INFO):
        result = notify(s, _unique_alert("refused"))
    assert result.status == "failed" and result.deliveries[0].attempts == 3
    assert "cannot reach the webhook" in result.deliveries[0].error
    assert TOKEN not in result.deliveries[0].error
    _no_error_and_no_secret(caplog)


def test_unreachable_smtp_server_does_not_raise(alert_settings, caplog):
    s = replace(alert_settings, alert_webhook_url="", alert_smtp_host="127.0.0.1",
                alert_smtp_port=pgserver.free_port(), alert_smtp_security="starttls",
                alert_smtp_from="a@example.org", alert_smtp_to="b@example.org",
                alert_smtp_user="u", alert_smtp_password="pw-never-logged")  # fmt: skip
    with caplog.at_level(logging.INFO):
        result = notify(s, _unique_alert("smtp-down"))
    assert result.status == "failed" and result.deliveries[0].attempts == 3
    assert "pw-never-logged" not in caplog.text
    _no_error_and_no_secret(caplog)


def test_one_failing_sink_does_not_stop_the_other(alert_settings, webhook):
    s = replace(alert_settings, alert_smtp_host="127.0.0.1", alert_smtp_port=pgserver.free_port(),
                alert_smtp_security="none", alert_smtp_from="a@example.org",
                alert_smtp_to="b@example.org", alert_attempts=1)  # fmt: skip
    result = notify(s, _unique_alert("partial"))
    assert result.status == "partial" and [d.ok for d in result.deliveries] == [True, False]


def test_no_sink_configured_is_quiet_and_touches_nothing(settings):
    assert notify(settings, _unique_alert("nothing")).status == "no_sinks"


# ------------------------------------------------------------------------------ background
def test_alert_queue_returns_at_once_and_drops_repeats(alert_settings, webhook):
    webhook.delay = 0.5  # a slow receiver must not slow the submitter
    queue = AlertQueue(alert_settings)
    started = time.perf_counter()
    accepted = [queue.submit(_unique_alert("flapping")) for _ in range(50)]
    assert time.perf_counter() - started < 0.2
    assert accepted == [True] + [False] * 49
    assert queue.join(10) and [r.status for r in queue.results] == ["sent"]


# ------------------------------------------------------------------------------ hostile input
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRAUD_ALERT_WEBHOOK_URL": "ftp://x/" + TOKEN}, "must be an http:// or https:// URL"),
        ({"FRAUD_ALERT_WEBHOOK_URL": "hooks.example/" + TOKEN}, "must be an http"),
        ({"FRAUD_PUBLIC_MLFLOW_URL": "javascript:alert(1)"}, "FRAUD_PUBLIC_MLFLOW_URL"),
        ({"FRAUD_ALERT_SMTP_PORT": "99999"}, "between 1 and 65535"),
        ({"FRAUD_ALERT_SMTP_PORT": "25x"}, "not a whole number"),
        ({"FRAUD_ALERT_SMTP_SECURITY": "tls1.0"}, "unknown"),
        ({"FRAUD_ALERT_SMTP_HOST": "smtp.example"}, "set FRAUD_ALERT_SMTP_FROM"),
        (
            {
                "FRAUD_ALERT_SMTP_HOST": "h",
                "FRAUD_ALERT_SMTP_FROM": "a@b",
                "FRAUD_ALERT_SMTP_TO": "x@y\r\nBcc: evil@z",
            },
            "not an e-mail address",
        ),
        ({"FRAUD_ALERT_COOLDOWN_SECONDS": "nan"}, "must be >= 0"),
        ({"FRAUD_ALERT_COOLDOWN_SECONDS": "-1"}, "must be >= 0"),
        ({"FRAUD_ALERT_TIMEOUT_SECONDS": "1e9"}, "(0, 120]"),
        ({"FRAUD_ALERT_ATTEMPTS": "0"}, "between 1 and 10"),
    ],
)
def test_bad_alert_settings_are_one_clear_error(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")) as err:
        Settings.from_env(env)
    assert TOKEN not in str(err.value) and "\n" not in str(err.value)


def test_secrets_are_masked_in_describe():
    s = Settings.from_env({"FRAUD_ALERT_WEBHOOK_URL": f"https://hooks.example/{TOKEN}",
                           "FRAUD_ALERT_SMTP_PASSWORD": "pw"})  # fmt: skip
    shown = s.describe()
    assert shown["alert_webhook_url"] == "***" and shown["alert_smtp_password"] == "***"
    assert TOKEN not in json.dumps(shown)


@pytest.mark.parametrize("key", ["", " ", "caf\u00e9", "x" * 201, "\udcff", "a\x00b"])
def test_a_bad_dedup_key_is_refused_and_a_builder_bug_never_raises(key, alert_settings):
    with pytest.raises(ValueError, match="dedup_key"):
        _unique_alert(key)
    assert events._send(alert_settings, lambda s: _unique_alert(key)) is None


def test_titles_are_one_line_and_bounded():
    alert = Alert("rollback", "info", "line one\r\nBcc: evil@x\n" + "y" * 500, "s", "k")
    assert "\n" not in alert.title and "\r" not in alert.subject() and len(alert.title) <= 200
    assert alert.kind is AlertKind.ROLLBACK and alert.severity == alerts.Severity.INFO


def test_the_performance_helper_sends_the_numbers(alert_settings, webhook):
    result = events.alert_performance(alert_settings, metric="average_precision", value=0.41,
                                      baseline=0.62, tolerance=0.05, model_version="4",
                                      cohort="2026-11-02")  # fmt: skip
    assert result is not None and result.status == "sent"
    body = webhook.wait_for(1)[0]["json"]
    assert body["kind"] == "performance_below_tolerance"
    assert body["numbers"] == {"average_precision": 0.41, "baseline": 0.62, "tolerance": 0.05,
                               "cohort": "2026-11-02"}  # fmt: skip
