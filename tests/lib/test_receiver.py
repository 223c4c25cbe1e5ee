"""The local webhook receiver the demo starts: it records what the real webhook sink posts
and answers hostile requests with a 4xx without recording them."""

from __future__ import annotations

import http.client
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
import requests

from fraud_lib.config import Settings
from fraud_lib.monitoring import events
from fraud_lib.monitoring.receiver import MAX_BODY_BYTES, WebhookReceiver


@pytest.fixture()
def receiver():
    with WebhookReceiver() as r:
        yield r


def test_it_listens_on_loopback_and_records_what_the_sink_posts(receiver, tmp_path):
    assert urlsplit(receiver.url).hostname == "127.0.0.1"
    settings = replace(
        Settings.from_env({}, state_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/x"),
        alert_webhook_url=receiver.url,
        alert_attempts=1,
    )
    result = events.alert_performance(settings, metric="average_precision", value=0.4,
                                      baseline=0.9, tolerance=0.05, model_version="1",
                                      cohort="2025-01-01")  # fmt: skip
    assert result is not None and result.sent
    (post,) = receiver.wait_for(1)
    assert post["path"] == "/hooks/fraudloop"
    assert post["json"]["kind"] == "performance_below_tolerance"
    assert "average_precision of v1" in post["json"]["text"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xfe{not utf-8", 400),
        (b"{truncated", 400),
        (b"[1, 2]", 400),
        (b'"a string"', 400),
        (b'{"kind": "drift", "kind": "performance"}', 400),  # a repeated key: was recorded
    ],
)
def test_bad_bodies_are_a_400_and_not_recorded(receiver, body, status):
    resp = requests.post(receiver.url, data=body, timeout=5)
    assert resp.status_code == status
    assert "JSON" in resp.text or "repeats a key: 'kind'" in resp.text
    assert receiver.posts == []


def test_an_oversize_or_missing_length_is_refused_before_reading(receiver):
    parts = urlsplit(receiver.url)
    for headers, status in (({"Content-Length": str(MAX_BODY_BYTES + 1)}, 413),
                            ({"Content-Length": "-5"}, 413),
                            ({"Content-Length": "many"}, 411), ({}, 411)):  # fmt: skip
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.putrequest("POST", parts.path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        assert conn.getresponse().status == status, headers
        conn.close()
    assert receiver.posts == []
    assert requests.get(receiver.url, timeout=5).status_code == 501  # POST only
