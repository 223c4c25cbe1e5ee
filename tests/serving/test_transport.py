"""Raw sockets against the real gunicorn service (serving.buffered_worker): malformed framing,
hostile heads and bodies, chunked bodies, slow clients. Every case gets a clean 4xx with the
JSON error body (or a closed connection), never a 5xx; the service answers normally after
them, and the predictions table holds exactly the predictions it acknowledged."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
import requests
from conftest import rows_of, wait_logged

from fraud_lib import store

pytestmark = pytest.mark.slow

MAX_BODY = 200_000


def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection; everything read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def statuses(raw: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) [A-Z]", raw)]


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    return (head + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body


def chunked(body: bytes, size: int = 100) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]  # fmt: skip
    return b"".join(parts) + b"0\r\n\r\n"


def error_of(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]


@pytest.fixture()
def one_worker(start_service):
    return start_service(
        workers=1, FRAUD_MAX_BODY_BYTES=str(MAX_BODY), FRAUD_BUFFER_BYTES="300000",
        FRAUD_READ_TIMEOUT_SECONDS="2",
    )  # fmt: skip


def test_malformed_requests_get_a_clean_4xx_and_the_log_stays_exact(one_worker, frames, pg_engine):
    port, acked = one_worker.port, []
    row = json.dumps(rows_of(frames, 1)[0]).encode()
    close = "Connection: close"
    bad_utf8 = row.replace(b'"Time"', b'"transaction_id": "\xff", "Time"')
    bad_label = b'{"labels": [{"transaction_id": "\xff", "label": 1}]}'
    cases = {
        "negative length": (post("/v1/score", b"{}", "Content-Length: -1"), {400}),
        "non-numeric length": (post("/v1/score", b"{}", "Content-Length: 2x"), {400}),
        "two lengths": (post("/v1/score", b"{}", "Content-Length: 2", "Content-Length: 3"), {400}),
        "length and chunked": (
            post("/v1/score", chunked(b"{}"), "Content-Length: 2", "Transfer-Encoding: chunked"),
            {400},
        ),
        "HTTP/0.9": (b"GET /healthz\r\n\r\n", {400}),
        "request line too long": (b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", {400}),
        "huge header": (b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 20_000 + b"\r\n\r\n", {431}),
        "many headers": (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(200))
            + b"\r\n",
            {431},
        ),
        "bad header name": (b"GET /healthz HTTP/1.1\r\nX\xff: 1\r\n\r\n", {400}),
        "bad chunk size": (
            post("/v1/score", b"zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
            {400},
        ),
        "chunk without CRLF": (
            post("/v1/score", b"2\r\n{}XX0\r\n\r\n", "Transfer-Encoding: chunked"),
            {400},
        ),
        "chunked over the limit": (
            post("/v1/score", chunked(b" " * (MAX_BODY + 1), 50_000), "Transfer-Encoding: chunked"),
            {413},
        ),
        "chunk size of 2**64": (
            post("/v1/score", b"10000000000000000\r\n", "Transfer-Encoding: chunked"),
            {413},
        ),
        "length over the limit": (
            post("/v1/score", b"{}", f"Content-Length: {MAX_BODY + 1}"),
            {413},
        ),
        "invalid UTF-8 score": (
            post("/v1/score", bad_utf8, f"Content-Length: {len(bad_utf8)}", close),
            {400},
        ),
        "invalid UTF-8 labels": (
            post("/v1/labels", bad_label, f"Content-Length: {len(bad_label)}", close),
            {400},
        ),
        "invalid UTF-8 path and query": (
            b"GET /v1/\xff?a=\xff%ff HTTP/1.1\r\nConnection: close\r\n\r\n",
            {404},
        ),
    }
    for name, (data, expected) in cases.items():
        raw = exchange(port, data)
        got = statuses(raw)
        assert got[:1] and got[0] in expected, f"{name}: {raw[:300]!r}"
        error = error_of(raw)
        assert error["code"] and error["message"], f"{name}: {error}"

    # a Content-Length over the limit is refused before its body arrives, and the connection
    # closes after: the answer says so, or a client would send its next request on it
    raw = exchange(port, post("/v1/score", b"{}", f"Content-Length: {MAX_BODY + 1}"))
    assert b"\r\nConnection: close\r\n" in raw.split(b"\r\n\r\n", 1)[0], raw[:300]

    # a body shorter than its Content-Length, then the client stops sending: 400
    raw = exchange(port, post("/v1/score", b"{}", "Content-Length: 100"), half_close=True)
    assert statuses(raw) == [400] and "closed before" in error_of(raw)["message"]
    # an unknown transfer coding: 400 (gunicorn's 501, RFC 9112's SHOULD, is no server fault)
    for coding in ("foo", "chunked;q=1", "xchunked", "\xffchunked"):
        raw = exchange(port, post("/v1/score", b"{}", f"Transfer-Encoding: {coding}", close))
        assert statuses(raw) == [400], coding
        assert "Transfer-Encoding: chunked" in error_of(raw)["message"]

    # valid chunked, Expect: 100-continue, and three pipelined requests on one connection
    raw = exchange(port, post("/v1/score", chunked(row), "Transfer-Encoding: chunked", close))
    assert statuses(raw) == [200], raw[:300]
    acked.append(json.loads(raw.split(b"\r\n\r\n", 1)[1])["prediction_id"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        expect = ("Expect: 100-continue", close)
        sock.sendall(post("/v1/score", b"", f"Content-Length: {len(row)}", *expect))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(row)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert statuses(raw) == [200], raw[:300]
    acked.append(json.loads(raw.split(b"\r\n\r\n", 1)[1])["prediction_id"])
    acked += [p["prediction_id"] for p in _pipelined(port, row)]

    resp = requests.post(one_worker.url + "/v1/score", json=rows_of(frames, 1)[0], timeout=10)
    assert resp.status_code == 200
    acked.append(resp.json()["prediction_id"])
    wait_logged(pg_engine, acked)
    assert store.prediction_count(pg_engine) == len(acked) == 6
    assert "Traceback" not in one_worker.log()


def test_a_chunked_body_with_malformed_trailers_gets_400(one_worker, frames, pg_engine):
    """gunicorn parses a chunked body's trailer fields while the app reads the body; a trailer
    it refuses (too long, too many, a forbidden or malformed field) is the client's error."""
    row = json.dumps(rows_of(frames, 1)[0]).encode()
    label = b'{"labels": [{"transaction_id": "t-1", "label": 1}]}'
    trailers = {
        "too long": b"X-T: " + b"t" * 9000 + b"\r\n",
        "too many": b"".join(b"X-%d: a\r\n" % i for i in range(150)),
        "Content-Length": b"Content-Length: 5\r\n",
        "no colon": b"nocolon\r\n",
        "NUL in value": b"X-A: a\x00b\r\n",
        "obsolete folding": b"X-A: a\r\n b\r\n",
    }
    for path, body in (("/v1/score", row), ("/v1/labels", label)):
        for name, fields in trailers.items():
            data = chunked(body)[: -len(b"\r\n")] + fields + b"\r\n"
            raw = exchange(port := one_worker.port, post(path, data, "Transfer-Encoding: chunked",
                                                         "Connection: close"))  # fmt: skip
            assert statuses(raw) == [400], f"{path} {name}: {raw[:300]!r}"
            assert error_of(raw)["code"] == "bad_request", f"{path} {name}"
    resp = requests.post(f"http://127.0.0.1:{port}/v1/score", data=row, timeout=10,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert resp.status_code == 200
    wait_logged(pg_engine, [resp.json()["prediction_id"]])
    assert store.prediction_count(pg_engine) == 1
    assert "Traceback" not in one_worker.log()


def _pipelined(port: int, row: bytes) -> list[dict]:
    one = post("/v1/score", row, f"Content-Length: {len(row)}")
    raw = exchange(port, one + one + post("/v1/score", row, f"Content-Length: {len(row)}",
                                          "Connection: close"))  # fmt: skip
    assert statuses(raw) == [200, 200, 200], raw[:300]
    return [json.loads(m) for m in re.findall(rb'\{"transaction_id".*?\}\}', raw)]


def test_buffered_bytes_are_capped_and_late_requests_get_408(one_worker):
    port = one_worker.port
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    second = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        for sock in (first, second):  # 190 KB announced, 180 KB sent, the rest never
            sock.sendall(post("/v1/score", b" " * 180_000, "Content-Length: 190000"))
            time.sleep(0.3)
        raw = second.recv(65536)
        assert statuses(raw) == [503] and "FRAUD_BUFFER_BYTES" in error_of(raw)["message"]
        raw = first.recv(65536)  # after FRAUD_READ_TIMEOUT_SECONDS (2 s) + 180 KB / 64 KB/s
        assert statuses(raw) == [408] and error_of(raw)["code"] == "request_timeout"
    finally:
        first.close()
        second.close()
    assert requests.get(one_worker.url + "/healthz", timeout=5).status_code == 200


def _slow_sender(port: int, fast: bytes, slow: bytes, until: float, outcome: list) -> None:
    """Send ``fast`` at once, then ``slow`` 3 bytes a second; record what the server answered
    (its status, or 'closed')."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(fast)
            sock.settimeout(1.0)
            for i in range(0, len(slow), 3):
                if time.monotonic() > until:
                    outcome.append("not answered")
                    return
                sock.sendall(slow[i : i + 3])
                try:
                    raw = sock.recv(65536)
                except TimeoutError:
                    continue
                outcome.append(statuses(raw)[0] if statuses(raw) else "closed")
                return
            outcome.append("not answered")
    except OSError:
        outcome.append("closed")


def test_64_slow_clients_do_not_stall_scoring(start_service, frames, pg_engine):
    service = start_service(workers=2, FRAUD_READ_TIMEOUT_SECONDS="3")
    row = rows_of(frames, 1)[0]
    body = json.dumps(row).encode()
    request = post("/v1/score", body, f"Content-Length: {len(body)}")
    head = request[: request.index(b"\r\n\r\n") + 4]
    outcomes: list = []
    until = time.monotonic() + 30
    threads = [  # 32 send their head slowly, 32 their body
        threading.Thread(
            target=_slow_sender,
            args=(service.port, *((head, body) if k % 2 else (b"", request)), until, outcomes),
            daemon=True,
        )
        for k in range(64)
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)  # all 64 open and trickling
    session, latencies, acked = requests.Session(), [], []
    for _ in range(20):
        t0 = time.perf_counter()
        resp = session.post(service.url + "/v1/score", json=row, timeout=30)
        latencies.append(time.perf_counter() - t0)
        assert resp.status_code == 200
        acked.append(resp.json()["prediction_id"])
        time.sleep(0.05)
    assert max(latencies) < 1.0, latencies
    for t in threads:
        t.join(40)
    assert len(outcomes) == 64 and set(outcomes) <= {408, "closed"}, outcomes
    assert outcomes.count(408) >= 60, outcomes
    wait_logged(pg_engine, acked)
    assert store.prediction_count(pg_engine) == len(acked)
