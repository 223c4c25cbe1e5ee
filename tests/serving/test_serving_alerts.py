"""A version the scoring service refuses to load pages once: off the request path, deduplicated
per version and reason in each worker and, across gunicorn workers, in Postgres."""

# ruff: noqa: F811 - pytest fixtures imported from tests.alert_receivers are parameters here
from __future__ import annotations

import time

import pytest
from conftest import ADMIN_TOKEN, set_champion

from tests.alert_receivers import webhook  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.slow


@pytest.fixture()
def empty_alert_log(pg_engine):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE alert_log")


def test_a_refused_version_alerts_once_without_slowing_the_reload(
    make_app, serving_settings, model_store, webhook, empty_alert_log
):
    webhook.delay = 1.0  # a slow receiver
    app = make_app(alert_webhook_url=webhook.url, alert_retry_seconds=0.01)
    client = app.test_client()
    bad = model_store["versions"]["exploding"]
    set_champion(serving_settings, bad)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for _ in range(3):  # a flapping reload
        started = time.perf_counter()
        assert client.post("/admin/reload", headers=auth).get_json()["status"] == "refused"
        assert time.perf_counter() - started < 1.0, "the reload waited for the alert"
    (post,) = webhook.wait_for(1)
    assert app.extensions["fraudloop"].holder.alerts.join(10)
    assert len(webhook.posts) == 1
    body = post["json"]
    assert body["kind"] == "model_refused" and body["severity"] == "warning"
    assert body["numbers"] == {"refused_version": bad, "reason": "canary_failed",
                               "serving_version": model_store["versions"]["hgb"]}  # fmt: skip
    assert f"refused model v{bad} (canary_failed); still serving v" in body["text"]


def test_two_gunicorn_workers_refusing_the_same_version_page_once(
    start_service, serving_settings, model_store, webhook, empty_alert_log
):
    service = start_service(workers=2, FRAUD_ALERT_WEBHOOK_URL=webhook.url)
    bad = model_store["versions"]["other_schema"]
    started = time.time()
    set_champion(serving_settings, bad)  # both pollers (0.5 s) find and refuse it
    (post,) = webhook.wait_for(1)
    time.sleep(3.0)  # time for the second worker's refusal to be suppressed
    assert len(webhook.posts) == 1, [p["json"]["dedup_key"] for p in webhook.posts]
    assert post["json"]["dedup_key"] == f"model_refused:fraud-detector:v{bad}:schema_mismatch"
    assert service.log().count(f"refused fraud-detector version {bad}") == 2
    print(f"\nalias moved -> webhook receipt: {post['at'] - started:.2f} s (poll 0.5 s)")
