"""The WSGI fast path (serving.fast_path) against the Flask view it stands in front of: the same
request gives the same status, body, headers, metrics and spool line either way, and whatever
the fast path does not answer cleanly is answered by Flask with its JSON error body."""

from __future__ import annotations

import io
import itertools
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
import test_raw_scoring
from conftest import rows_of
from werkzeug.test import Client
from werkzeug.wrappers import Response

import serving.api
import serving.fast_path
import serving.metrics
from fraud_lib.features.online_store import RecordLayout
from serving.fast_path import FastScore
from serving.prediction_log import LogUnavailable

RID = {"X-Request-ID": "req-fast-1"}


@pytest.fixture()
def paths(app, monkeypatch) -> SimpleNamespace:
    return _paths(app, monkeypatch)


def _paths(app: Any, monkeypatch: Any) -> SimpleNamespace:
    """The app's two paths (``fast``: the app as served; ``flask``: the Flask app behind the
    fast path) with deterministic prediction ids and clock, the spool lines appended, and the
    requests the Flask view answered."""
    counter = itertools.count()
    monkeypatch.setattr(
        serving.api, "new_ids", lambda n: [f"{next(counter):032x}" for _ in range(n)]
    )
    monkeypatch.setattr(serving.api, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    st = app.extensions["fraudloop"]
    lines: list[bytes] = []
    append = st.log.append

    def recording_append(data: bytes, records: int, **kwargs: Any) -> bool:
        lines.append(data)
        return append(data, records, **kwargs)

    monkeypatch.setattr(st.log, "append", recording_append)
    views = []
    view = app.view_functions["api.score"]

    def counted_view() -> Any:
        views.append(1)
        return view()

    app.view_functions["api.score"] = counted_view
    assert isinstance(app.wsgi_app, FastScore)
    return SimpleNamespace(
        fast=Client(app.wsgi_app, Response),
        flask=Client(app.wsgi_app.flask, Response),
        reset=lambda: monkeypatch.setattr(
            serving.api, "new_ids", lambda n: [f"{i:032x}" for i in range(n)]
        ),
        lines=lines,
        views=views,
        st=st,
    )


# Written by the worker's background threads (the spool's shipper, the label refresher), not
# by the request: a shipping round that falls inside one request's before/after and not the
# other's would make the two paths' deltas differ (it did once in CI).
BACKGROUND = (
    "fraud_prediction_log_backlog_records",
    "fraud_prediction_log_spool_bytes",
    "fraud_prediction_log_rows_written",
    "fraud_prediction_log_write_errors",
    "fraud_prediction_log_copy_seconds",
    "fraud_prediction_log_db_up",
    "fraud_label_refresh_seconds",
)


def _samples(st: Any) -> dict[tuple[str, tuple], float]:
    """Every metric sample of the app's registry the request writes; latency sums and buckets
    left out (they depend on the time taken), their counts kept, and creation times."""
    out = {}
    for metric in st.metrics.registry.collect():
        for s in metric.samples:
            timed = s.name.startswith("fraud_http_request_duration_seconds")
            if (timed and not s.name.endswith("_count")) or s.name.endswith("_created"):
                continue  # _created: when a labelled child was first used
            if s.name.startswith(BACKGROUND):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _send(paths: SimpleNamespace, client: Client, **kwargs: Any) -> tuple[Any, dict, list]:
    """(response, metric deltas, spool lines) of one request, ids counted from 0."""
    paths.reset()
    del paths.lines[:]
    before = _samples(paths.st)
    resp = client.post("/v1/score", **kwargs)
    resp.close()
    return resp, _delta(before, _samples(paths.st)), list(paths.lines)


def _both(paths: SimpleNamespace, **kwargs: Any) -> tuple[tuple, tuple]:
    return _send(paths, paths.fast, **kwargs), _send(paths, paths.flask, **kwargs)


@pytest.mark.parametrize("kind", ["single", "single_no_id", "batch", "batch_some_ids"])
def test_a_clean_request_gets_the_same_answer_metrics_and_spool_line(paths, frames, kind):
    rows = rows_of(frames, 3 if kind.startswith("batch") else 1)
    if kind == "single":
        rows[0]["transaction_id"] = "tx-1"
    if kind == "batch_some_ids":
        rows[1]["transaction_id"] = "tx-b"
    body = {"transactions": rows} if kind.startswith("batch") else rows[0]
    fast, flask = _both(paths, data=json.dumps(body), content_type="application/json", headers=RID)
    assert fast[0].status_code == flask[0].status_code == 200
    assert fast[0].get_data() == flask[0].get_data()
    assert fast[0].headers.to_wsgi_list() == flask[0].headers.to_wsgi_list()
    assert (
        fast[1] == pytest.approx(flask[1])
        and fast[1][
            (
                "fraud_http_requests_total",
                (("endpoint", "/v1/score"), ("method", "POST"), ("status", "200")),
            )
        ]
        == 1
    )
    assert fast[2] == flask[2] and len(fast[2]) == 1
    assert paths.views == [1]  # the Flask client's request only


def test_the_request_id_is_echoed_or_generated_as_in_flask(paths, frames):
    body = json.dumps(rows_of(frames, 1)[0])
    for header, echoed in (("ok-id_1.2:3", True), ("bad id", False), ("x" * 65, False)):
        fast = paths.fast.post(
            "/v1/score",
            data=body,
            content_type="application/json",
            headers={"X-Request-ID": header},
        )
        rid = fast.headers["X-Request-ID"]
        assert rid == header if echoed else re.fullmatch("[0-9a-f]{32}", rid)
    no_header = paths.fast.post("/v1/score", data=body, content_type="application/json")
    assert re.fullmatch("[0-9a-f]{32}", no_header.headers["X-Request-ID"])
    assert paths.views == []


def _bad_requests(frames: Any) -> dict[str, dict[str, Any]]:
    row = rows_of(frames, 1)[0]
    text = json.dumps(row)
    js = {"content_type": "application/json"}
    return {
        "nan": {"data": text.replace(str(row["V1"]), "NaN", 1), **js},
        "missing feature": {"data": json.dumps({k: v for k, v in row.items() if k != "V2"}), **js},
        "string feature": {"data": json.dumps({**row, "V3": "1.5"}), **js},
        "unknown field": {"data": json.dumps({**row, "extra": 1}), **js},
        "duplicate key": {"data": text[:-1] + ', "V1": 0.5}', **js},
        "bad utf-8": {"data": text.encode()[:-1] + b', "transaction_id": "\xff"}', **js},
        "empty body": {"data": b"", **js},
        "not an object": {"data": "[1, 2]", **js},
        "duplicate ids": {
            "data": json.dumps(
                {"transactions": [{**row, "transaction_id": "a"}, {**row, "transaction_id": "a"}]}
            ),
            **js,
        },
        "empty batch": {"data": json.dumps({"transactions": []}), **js},
        "batch too large": {"data": json.dumps({"transactions": [row] * 11}), **js},
        "text/plain": {"data": text, "content_type": "text/plain"},
        "no content type": {"data": text},
        "arrow accept": {
            "data": text,
            "headers": {"Accept": "application/vnd.apache.arrow.stream"},
            **js,
        },
        "json params": {"data": text, "content_type": "Application/JSON; charset=utf-8"},
        "body too large": {"data": json.dumps({**row, "pad": "x" * 25_000}), **js},
        "chunked": {
            "input_stream": io.BytesIO(text.encode()),
            "headers": {"Transfer-Encoding": "chunked"},
            **js,
        },
    }


def test_a_candidate_that_is_not_clean_gets_flasks_answer(make_app, frames, monkeypatch):
    app = make_app(max_batch=10, max_body_bytes=20_000)
    paths_ = _paths(app, monkeypatch)
    for name, kwargs in _bad_requests(frames).items():
        headers = {**RID, **kwargs.pop("headers", {})}
        views_before = len(paths_.views)
        fast = _send(paths_, paths_.fast, headers=headers, **kwargs)
        stream = kwargs.get("input_stream")
        if stream is not None:
            stream.seek(0)
        flask = _send(paths_, paths_.flask, headers=headers, **kwargs)
        assert fast[0].status_code == flask[0].status_code, name
        assert fast[0].get_data() == flask[0].get_data(), name
        assert fast[0].headers.to_wsgi_list() == flask[0].headers.to_wsgi_list(), name
        assert fast[1] == pytest.approx(flask[1]) and fast[2] == flask[2], name
        answered_by_flask = len(paths_.views) - views_before
        if name in ("json params", "arrow accept"):  # JSON with parameters: the fast path's
            assert answered_by_flask == (1 if name == "json params" else 2), name
            assert fast[0].status_code == 200, name
        else:
            assert answered_by_flask == 2 and fast[0].status_code >= 400, name
            assert set(fast[0].get_json()["error"]) == {"code", "message", "fields"}, name
            assert fast[2] == [], name


def test_a_refused_log_append_gets_flasks_503_and_logs_nothing(paths, frames, monkeypatch, caplog):
    def refuse(data: bytes, records: int, **kwargs: Any) -> bool:
        raise LogUnavailable("cannot write the spool in /somewhere: disk full")

    monkeypatch.setattr(paths.st.log, "append", refuse)
    body = json.dumps(rows_of(frames, 1)[0])
    fast, flask = _both(paths, data=body, content_type="application/json", headers=RID)
    assert fast[0].status_code == flask[0].status_code == 503
    assert fast[0].get_data() == flask[0].get_data()
    assert fast[0].get_json()["error"]["code"] == "log_unavailable"
    assert fast[0].headers.to_wsgi_list() == flask[0].headers.to_wsgi_list()
    assert fast[1] == pytest.approx(flask[1])
    refused = [r.getMessage() for r in caplog.records if "refused the records" in r.getMessage()]
    assert refused and all(m.startswith(f"request {RID['X-Request-ID']}:") for m in refused)


def test_a_fast_path_failure_is_run_again_by_flask(paths, frames, monkeypatch, caplog):
    score = serving.api.score_validated
    failures = iter([RuntimeError("boom")])

    def fails_once(served: Any, txs: Any) -> Any:
        if (exc := next(failures, None)) is not None:
            raise exc
        return score(served, txs)

    monkeypatch.setattr(serving.fast_path, "score_validated", fails_once)
    body = json.dumps(rows_of(frames, 1)[0])
    resp, _, lines = _send(paths, paths.fast, data=body, content_type="application/json")
    assert resp.status_code == 200 and len(lines) == 1 and paths.views == [1]
    assert "the fast path failed" in caplog.text


def test_a_failure_that_recurs_gets_flasks_500(paths, frames, monkeypatch):
    def broken(served: Any, txs: Any) -> Any:
        raise RuntimeError("broken")

    monkeypatch.setattr(serving.fast_path, "score_validated", broken)
    monkeypatch.setattr(serving.api, "score_validated", broken)
    body = json.dumps(rows_of(frames, 1)[0])
    fast, flask = _both(paths, data=body, content_type="application/json", headers=RID)
    assert fast[0].status_code == flask[0].status_code == 500
    assert fast[0].get_data() == flask[0].get_data()
    assert fast[0].get_json()["error"]["code"] == "internal_error"
    assert fast[1] == pytest.approx(flask[1]) and fast[2] == flask[2] == []


def test_under_gunicorn_clean_and_refused_requests_are_answered_and_counted(
    start_service, frames, pg_engine
):
    import requests
    from conftest import wait_logged

    service = start_service(workers=1)
    row = rows_of(frames, 1)[0]
    ok = requests.post(service.url + "/v1/score", json=row, timeout=10)
    text = json.dumps(row).replace(str(row["V1"]), "NaN", 1)
    bad = requests.post(service.url + "/v1/score", data=text, timeout=10,
                        headers={"Content-Type": "application/json", **RID})  # fmt: skip
    assert ok.status_code == 200 and ok.headers["Content-Type"] == "application/json"
    assert bad.status_code == 400 and bad.headers["X-Request-ID"] == RID["X-Request-ID"]
    assert bad.json()["error"]["code"] == "invalid_json" and "NaN" in bad.json()["error"]["message"]
    wait_logged(pg_engine, [ok.json()["prediction_id"]])
    metrics = requests.get(service.url + "/metrics", timeout=10).text
    for status in ("200", "400"):
        assert re.search(rf'fraud_http_requests_total\{{endpoint="/v1/score",method="POST",'
                         rf'status="{status}"\}} 1\.0', metrics), status  # fmt: skip


def test_a_metrics_failure_after_the_log_append_still_answers_once(paths, frames, monkeypatch,
                                                                  caplog):  # fmt: skip
    """Once a request's line is in the spool it is answered: neither path answers an error
    (the client would score it again) and the fast path does not hand it to Flask (which would
    log it a second time). Every metric a scored request updates fails here, as prometheus_client
    does when the multiprocess directory's disk is full."""

    class Full:
        def __getattr__(self, name: str) -> Any:
            raise OSError(28, "No space left on device")

    metrics = paths.st.metrics
    for name in ("scores", "batch_size", "log_spooled", "requests"):
        monkeypatch.setattr(metrics, name, Full())
    monkeypatch.setattr(metrics, "_children", {})
    monkeypatch.setattr(serving.metrics, "FAILURE_LOG_SECONDS", 0.0)
    body = json.dumps(rows_of(frames, 1)[0])
    fast, flask = _both(paths, data=body, content_type="application/json", headers=RID)
    assert fast[0].status_code == flask[0].status_code == 200
    assert fast[0].get_data() == flask[0].get_data()
    assert len(fast[2]) == len(flask[2]) == 1 and fast[2] == flask[2]
    assert paths.views == [1]  # the Flask client's request only
    failed = [r.getMessage() for r in caplog.records if "a metrics update failed" in r.getMessage()]
    for update in ("spooled", "observe_scores", "observe_request"):
        assert sum(f"({update})" in m for m in failed) == 2, (update, failed)


# ---------------------------------------------------------------- raw transactions (behavioral)
RAW_SCHEMA = test_raw_scoring.SCHEMA
raw_world = test_raw_scoring.raw_world  # fixtures: a behavioral champion on a real Redis
raw_app = test_raw_scoring.raw_app
records = test_raw_scoring.records
RAW_SCHEMA_RECORD_SIZE = RecordLayout.for_spec(RAW_SCHEMA.behavior).dtype.itemsize


@pytest.fixture()
def raw_paths(raw_app, monkeypatch) -> SimpleNamespace:
    p = _paths(raw_app(), monkeypatch)
    p.events = lambda: _stored_events(p.st)
    return p


def _stored_events(st: Any) -> int:
    """Records in the online state of the served behavioral champion."""
    store_ = st.online.computer(st.holder.current.schema.behavior).store
    return sum(len(b) for b in map(store_.r.get, store_.r.scan_iter(match=f"{store_.prefix}ev:*")))


def _raw_both(paths: SimpleNamespace, body: Any, **kwargs: Any) -> tuple[tuple, tuple]:
    """The request on each path, each from the same (cleared) online state."""
    served = paths.st.holder.current
    store_ = paths.st.online.computer(served.schema.behavior).store
    out = []
    for client in (paths.fast, paths.flask):
        store_.clear()
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        out.append(_send(paths, client, data=data, content_type="application/json",
                         headers=RID, **kwargs))  # fmt: skip
    return out[0], out[1]


def _raw_rows(raw_world: dict[str, Any], n: int) -> list[dict[str, Any]]:
    return records(raw_world["later"].iloc[:n])


@pytest.mark.parametrize("kind", ["single", "batch"])
def test_a_clean_raw_request_gets_the_same_answer_metrics_and_spool_line(raw_paths, raw_world,
                                                                         kind):  # fmt: skip
    rows = _raw_rows(raw_world, 3)
    body = {"transactions": rows} if kind == "batch" else rows[0]
    fast, flask = _raw_both(raw_paths, body)
    assert fast[0].status_code == flask[0].status_code == 200, fast[0].get_json()
    assert fast[0].get_data() == flask[0].get_data()
    assert fast[0].headers.to_wsgi_list() == flask[0].headers.to_wsgi_list()
    assert fast[1] == pytest.approx(flask[1])
    assert fast[2] == flask[2] and len(fast[2]) == 1
    assert raw_paths.views == [1]  # the Flask client's request only
    size = RAW_SCHEMA_RECORD_SIZE
    sent = len(rows) if kind == "batch" else 1
    assert raw_paths.events() == size * sent * len(RAW_SCHEMA.behavior.entities)


def _bad_raw_bodies(raw_world: dict[str, Any]) -> dict[str, Any]:
    row = _raw_rows(raw_world, 2)
    one = row[0]
    return {
        "missing customer": {k: v for k, v in one.items() if k != "customer_id"},
        "missing timestamp": {k: v for k, v in one.items() if k != "timestamp"},
        "null terminal": {**one, "terminal_id": None},
        "future timestamp": {**one, "timestamp": 4e9},
        "text timestamp": {**one, "timestamp": "yesterday"},
        "bool timestamp": {**one, "timestamp": True},
        "string amount": {**one, "amount": "12"},
        "NaN amount": json.dumps(one).replace(str(one["amount"]), "NaN", 1),
        "unknown field": {**one, "V1": 0.5},
        "float entity": {**one, "customer_id": 1.5},
        "not an object": [one],
        "empty body": b"",
        "truncated": json.dumps(one)[:-3],
        "duplicate key": json.dumps(one)[:-1] + ', "amount": 1.0}',
        "duplicate ids": {
            "transactions": [one, {**row[1], "transaction_id": one["transaction_id"]}]
        },
        "bad row in batch": {"transactions": [one, {**row[1], "amount": None}]},
        "empty batch": {"transactions": []},
    }


def test_a_bad_raw_request_gets_flasks_400_and_keeps_nothing(raw_paths, raw_world):
    for name, body in _bad_raw_bodies(raw_world).items():
        views_before = len(raw_paths.views)
        fast, flask = _raw_both(raw_paths, body)
        assert fast[0].status_code == flask[0].status_code == 400, name
        assert fast[0].get_data() == flask[0].get_data(), name
        assert fast[0].headers.to_wsgi_list() == flask[0].headers.to_wsgi_list(), name
        assert fast[1] == pytest.approx(flask[1]) and fast[2] == flask[2] == [], name
        error = fast[0].get_json()["error"]
        assert set(error) == {"code", "message", "fields"}, name
        assert len(raw_paths.views) - views_before == 2, name  # Flask ran it again: a 400
        assert raw_paths.events() == 0, name  # no event reached the online state


def test_a_raw_request_that_fails_after_its_events_are_kept_is_not_run_again(
    raw_paths, raw_world, monkeypatch
):
    def refuse(data: bytes, records: int, **kwargs: Any) -> bool:
        raise LogUnavailable("cannot write the spool: disk full")

    monkeypatch.setattr(raw_paths.st.log, "append", refuse)
    rows = _raw_rows(raw_world, 1)
    rows[0].pop("transaction_id")  # a generated id: a second run would count the event twice
    fast, flask = _raw_both(raw_paths, rows[0])
    assert fast[0].status_code == flask[0].status_code == 503
    assert fast[0].get_data() == flask[0].get_data()
    assert fast[0].get_json()["error"]["code"] == "log_unavailable"
    assert fast[1] == pytest.approx(flask[1])
    assert raw_paths.views == [1]  # Flask answered the fast path's failure without the view
    assert raw_paths.events() == RAW_SCHEMA_RECORD_SIZE * len(RAW_SCHEMA.behavior.entities)
