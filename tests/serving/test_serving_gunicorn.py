"""The service under a real gunicorn (2 workers) on 127.0.0.1: hot reload across workers,
a broken version refused by every worker, a Postgres outage and a SIGKILLed worker, with
exact row counts in Postgres."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import requests
from conftest import REPO, rows_of, set_champion, wait_logged

from fraud_lib import store

pytestmark = pytest.mark.slow


@dataclass
class Load:
    """Client threads posting single transactions until stopped."""

    url: str
    rows: list[dict]
    threads: int = 4
    acked: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, k: int) -> None:
        session = requests.Session()
        i = k
        while not self._stop.is_set():
            row = self.rows[i % len(self.rows)]
            i += self.threads
            try:
                resp = session.post(self.url + "/v1/score", json=row, timeout=30)
            except requests.RequestException as exc:
                with self._lock:
                    self.failures.append(type(exc).__name__)
                session = requests.Session()
                continue
            with self._lock:
                if resp.status_code == 200:
                    body = resp.json()
                    self.acked.append(body["prediction_id"])
                    self.versions.append(body["model"]["version"])
                else:
                    self.failures.append(f"{resp.status_code}: {resp.text[:200]}")

    def __enter__(self) -> Load:
        for k in range(self.threads):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(60)

    def wait_for(self, predicate, timeout: float, what: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with self._lock:
                if predicate(self):
                    return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metric_values(url: str, name: str) -> list[tuple[str, float]]:
    text = requests.get(url + "/metrics", timeout=10).text
    return [
        (m.group(1) or "", float(m.group(2)))
        for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    ]


def test_hot_reload_reaches_every_worker_without_a_failed_request(
    start_service, serving_settings, model_store, frames, pg_engine
):
    v = model_store["versions"]
    service = start_service(workers=2)
    with Load(service.url, rows_of(frames, 200)) as load:
        load.wait_for(lambda s: len(s.acked) >= 50, 30, "requests on the first version")
        set_champion(serving_settings, v["hgb2"])
        load.wait_for(
            lambda s: s.versions[-40:] == [v["hgb2"]] * 40 and len(s.versions) > 40,
            30,
            "40 consecutive answers from the new version",
        )
        # every worker reports the new version on /metrics (liveall gauges: one per pid); a
        # worker still booting on a loaded machine reports 0 until its first load, so wait
        deadline = time.monotonic() + 30
        while True:
            per_worker = metric_values(service.url, "fraud_model_version")
            if len(per_worker) == 2 and {x for _, x in per_worker} == {float(v["hgb2"])}:
                break
            assert time.monotonic() < deadline, f"workers report versions {per_worker}"
            time.sleep(0.2)

        set_champion(serving_settings, v["other_schema"])  # refused by both workers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            failures = metric_values(service.url, "fraud_model_reloads_total")
            refused = sum(x for labels, x in failures if 'reason="schema_mismatch"' in labels)
            if refused >= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the workers did not report refusing the broken version")
        n_before = len(load.versions)
        load.wait_for(lambda s: len(s.versions) > n_before + 40, 30, "more answers")
    assert load.failures == []
    assert set(load.versions[n_before:]) == {v["hgb2"]}  # the broken version never served
    assert v["hgb"] in load.versions[:50]
    ready = requests.get(service.url + "/readyz", timeout=10).json()
    assert ready["model"]["last_error"]["reason"] == "schema_mismatch"
    set_champion(serving_settings, v["hgb"])
    wait_logged(pg_engine, load.acked, timeout=60)


def test_postgres_outage_fails_no_request_and_loses_no_prediction(
    start_service, frames, pg_engine, pg_server
):
    service = start_service(workers=2)
    rows = rows_of(frames, 100)
    acked: list[str] = []
    session = requests.Session()
    pg_server.stop()
    try:
        for i in range(120):
            if i % 4 == 0:
                batch = [dict(r, transaction_id=f"outage-{i}-{j}") for j, r in enumerate(rows[:5])]
                resp = session.post(service.url + "/v1/score", json={"transactions": batch})
                assert resp.status_code == 200, resp.text
                acked += [p["prediction_id"] for p in resp.json()["predictions"]]
            else:
                resp = session.post(service.url + "/v1/score", json=rows[i % len(rows)])
                assert resp.status_code == 200, resp.text
                acked.append(resp.json()["prediction_id"])
        time.sleep(1.0)  # let the shippers try, and fail
        ready = session.get(service.url + "/readyz")
        assert ready.status_code == 200  # scoring goes on: an outage is not "unready"
        assert ready.json()["log"]["db_up"] is False and ready.json()["log"]["backlog_records"] > 0
        labels = session.post(service.url + "/v1/labels",
                              json={"labels": [{"transaction_id": "x", "label": 1}]})  # fmt: skip
        assert labels.status_code == 503
        assert labels.json()["error"]["code"] == "database_unavailable"
        errors = metric_values(service.url, "fraud_prediction_log_write_errors_total")
        assert sum(x for labels_, x in errors if "database" in labels_) > 0
    finally:
        pg_server.ensure_running()
    assert len(acked) == 90 + 30 * 5
    wait_logged(pg_engine, acked, timeout=60)
    assert store.prediction_count(pg_engine) == len(acked)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        backlog = metric_values(service.url, "fraud_prediction_log_backlog_records")
        if sum(x for _, x in backlog) == 0:
            break
        time.sleep(0.2)
    assert sum(x for _, x in backlog) == 0


def test_a_sigkilled_worker_loses_no_acknowledged_prediction(
    start_service, frames, pg_engine, serving_settings
):
    # Ship only every 3 s, so that the victim surely dies with unshipped predictions.
    service = start_service(workers=2, FRAUD_LOG_FLUSH_SECONDS="3", FRAUD_LOG_BATCH_SIZE="100000")
    with Load(service.url, rows_of(frames, 200), threads=4) as load:
        load.wait_for(lambda s: len(s.acked) >= 200, 60, "load before the kill")
        victim = service.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        n_at_kill = len(load.acked)
        load.wait_for(lambda s: len(s.acked) >= n_at_kill + 300, 60, "load after the kill")
        assert victim not in service.worker_pids()
    assert len(load.failures) <= load.threads  # at most the requests in flight in the victim
    wait_logged(pg_engine, load.acked, timeout=60)
    assert re.search(rf"adopted {victim}-\w+ of a dead worker \((\d+) records", service.log())
    extra = store.prediction_count(pg_engine) - len(load.acked)
    # rows beyond the acknowledged ones: spooled by the victim just before it died, answer lost
    assert 0 <= extra <= len(load.failures)
    service.stop()  # graceful: each worker drains its log and removes its files
    assert service.proc.returncode == 0, service.log()[-3000:]
    leftovers = sorted(p.name for p in serving_settings.spool_dir.glob("*") if p.is_file())
    assert leftovers == [], leftovers
    assert store.prediction_count(pg_engine) == len(load.acked) + extra


def test_a_large_batch_is_logged_exactly_and_an_oversized_body_is_413(
    start_service, frames, pg_engine
):
    rows = frames[1].iloc[:3000].to_dict("records")
    for i, row in enumerate(rows):
        row["transaction_id"] = f"bulk-{i}"
    body = json.dumps({"transactions": rows}).encode()
    service = start_service(workers=1, FRAUD_MAX_BODY_BYTES=str(len(body) + 10))
    resp = requests.post(
        service.url + "/v1/score", data=body, headers={"Content-Type": "application/json"},
        timeout=60,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text[:500]
    predictions = resp.json()["predictions"]
    assert [p["transaction_id"] for p in predictions] == [r["transaction_id"] for r in rows]
    pids = [p["prediction_id"] for p in predictions]
    wait_logged(pg_engine, pids, timeout=60)
    with pg_engine.connect() as conn:
        stored = dict(
            conn.exec_driver_sql(
                "SELECT transaction_id, features::text FROM predictions WHERE transaction_id "
                "LIKE 'bulk-%%'"
            ).all()
        )
    assert len(stored) == len(rows)
    for row in rows[:: len(rows) // 50]:  # the logged features are the values sent, exactly
        features = json.loads(stored[row["transaction_id"]])
        assert features == {c: row[c] for c in features} and "Amount" in features

    too_big = body + b" " * 20
    resp = requests.post(
        service.url + "/v1/score", data=too_big, headers={"Content-Type": "application/json"},
        timeout=60,
    )  # fmt: skip
    assert resp.status_code == 413 and "FRAUD_MAX_BODY_BYTES" in resp.json()["error"]["message"]


def test_a_metrics_dir_that_does_not_exist_yet_is_created(start_service, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR naming a directory that is not there made every worker fail
    to boot with a traceback (red-team finding); it is created like the default one."""
    metrics_dir = tmp_path / "not-yet" / "metrics"
    service = start_service(workers=1, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    assert requests.get(service.url + "/metrics", timeout=10).status_code == 200
    assert metrics_dir.is_dir()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FRAUD_THREADS", "0"),
        ("FRAUD_THREADS", "abc"),
        ("FRAUD_WORKERS", "-2"),
        ("FRAUD_GRACEFUL_SECONDS", "-1"),
    ],
)
def test_a_bad_worker_setting_is_a_one_line_error_naming_it(tmp_path, name, value):
    """FRAUD_THREADS=0 booted gunicorn, whose workers then died with a ValueError traceback
    (red-team finding); each count is refused before a worker starts."""
    env = dict(os.environ, PYTHONPATH=str(REPO), FRAUD_STATE_DIR=str(tmp_path), **{name: value})
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
            "-b", "127.0.0.1:0", "serving.wsgi:app"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"error: {name}={value!r} must be a whole number" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
