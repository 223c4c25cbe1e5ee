"""A small closed-loop HTTP load generator for the serving benchmark (no wrk on this machine).

``run_load`` starts ``processes`` OS processes (spawned, so they share nothing with the
benchmark), each with ``clients // processes`` threads; every thread keeps one HTTP/1.1
connection (reopened when the server says ``Connection: close``, as gunicorn's sync worker
does) and sends pre-encoded requests back to back for ``duration`` seconds. Requests are
written as raw bytes and responses parsed by hand (status, Content-Length, Connection): ~20 us
of client CPU per request, so the generator is not what limits the service.
Each result row is ``(start wall time, latency s, status, model version, prediction ids)``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import socket
import threading
import time
from typing import Any

_VERSION = re.compile(rb'"model":\{"name":"[^"]*","version":"([^"]*)"')
_PID = re.compile(rb'"prediction_id":"([0-9a-f]{32})"')


def build_request(
    port: int, path: str, body: bytes, content_type: str = "application/json"
) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _read_response(sock: socket.socket) -> tuple[int, bool, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection":
            close = value.strip().lower() == b"close"
    if len(body) >= length:
        return status, close, body[:length]
    buf = bytearray(length)  # received in place: a 1.7 MB answer is not copied chunk by chunk
    buf[: len(body)] = body
    view, got = memoryview(buf), len(body)
    while got < length:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("connection closed in the body")
        got += n
    return status, close, bytes(buf)


def _client(
    port: int, requests: list[bytes], end: float, offset: int, collect_ids: bool, out: list,
    interval: float | None,
) -> None:  # fmt: skip
    sock = None
    i = offset
    next_at = time.time()
    while time.time() < end:
        if interval:  # paced: one request every ``interval`` s (at once when behind)
            time.sleep(max(0.0, next_at - time.time()))
            next_at += interval
        payload = requests[i % len(requests)]
        i += 1
        t_wall, t0 = time.time(), time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(payload)
            status, close, body = _read_response(sock)
        except OSError as exc:
            out.append((t_wall, time.perf_counter() - t0, 0, type(exc).__name__, []))
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.01)
            continue
        latency = time.perf_counter() - t0
        m = _VERSION.search(body)
        ids = [x.decode() for x in _PID.findall(body)] if collect_ids and status == 200 else []
        out.append((t_wall, latency, status, m.group(1).decode() if m else "", ids))
        if close:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()


def _process(port: int, requests: list[bytes], threads: int, duration: float, first: int,
             collect_ids: bool, interval: float | None, ready: Any, go: Any,
             queue: Any) -> None:  # fmt: skip
    outs: list[list] = [[] for _ in range(threads)]
    ready.put(os.getpid())
    go.wait()
    end = time.time() + duration
    workers = [
        threading.Thread(
            target=_client,
            args=(port, requests, end, first + k * 7919, collect_ids, outs[k], interval),
        )
        for k in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put([row for out in outs for row in out])


def run_load(
    port: int,
    requests: list[bytes],
    *,
    clients: int,
    duration: float,
    processes: int = 2,
    collect_ids: bool = False,
    during: Any = None,
    rate: float | None = None,
) -> Any:
    """Run the load for ``duration`` s once every process is up; returns the rows, or
    ``(rows, during(t_start))`` when ``during`` is given (it runs here meanwhile). Clients are
    closed-loop, or with ``rate`` paced to that many requests/s in all."""
    ctx = mp.get_context("spawn")
    queue, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    processes = max(1, min(processes, clients))
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    interval = clients / rate if rate is not None else None
    procs = []
    for p in range(processes):
        threads = clients // processes + (1 if p < clients % processes else 0)
        proc = ctx.Process(
            target=_process,
            args=(
                port,
                requests,
                threads,
                duration,
                p * 104729,
                collect_ids,
                interval,
                ready,
                go,
                queue,
            ),
        )
        proc.start()
        procs.append(proc)
    for _ in procs:
        ready.get(timeout=120)
    go.set()
    start = time.time()
    extra = during(start) if during is not None else None
    rows: list[tuple] = []
    for _ in procs:
        rows += queue.get(timeout=duration + 300)
    for proc in procs:
        proc.join(30)
    rows.sort()
    return (rows, extra) if during is not None else rows


def single(port: int, payload: bytes, timeout: float = 120) -> tuple[int, float, bytes]:
    """One request on a fresh connection: (status, latency s, body)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(payload)
        status, _, body = _read_response(sock)
    return status, time.perf_counter() - t0, body
