"""Slow-client benchmark: single-transaction scoring by 8 normal clients with 0 and with 64
slow connections open, per gunicorn worker class, and a table.

    .venv/bin/python bench/bench_slow_clients.py                 # ~1.5 min on 2 cores
    .venv/bin/python bench/bench_slow_clients.py --classes buffered --duration 10

Everything runs on 127.0.0.1 and is started here (an embedded Postgres, a temp MLflow store, a
small model, gunicorn with 2 workers) and stopped by pid at the end. Per worker class: one
client (latency), 8 clients, then 8 clients while 64 connections trickle their requests (half
the head, half the body after a complete head) one byte every 0.3 s, each reopened at once
when the server answers or closes it, so 64 stay open; then a batch of 10,000 transactions
(median of 5 requests, the body read included). Results: the table on stdout and
``bench/results/slow_clients.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import json
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from harness import WORKER_CLASSES, Gunicorn, champion_world, gunicorn_argv, summarize  # noqa: E402
from loadgen import build_request, run_load, single  # noqa: E402


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


class SlowClients:
    """``n`` connections that each send a request one byte every ``pause`` s (odd ones send
    the head at once first), reopened as soon as the server answers or closes them."""

    def __init__(self, port: int, request: bytes, n: int, pause: float = 0.3) -> None:
        self.port, self.request, self.pause = port, request, pause
        self.head = request[: request.index(b"\r\n\r\n") + 4]
        self.stop = threading.Event()
        self.answers: dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(n)
        ]

    def _count(self, what: str) -> None:
        with self.lock:
            self.answers[what] = self.answers.get(what, 0) + 1

    def _run(self, k: int) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.setblocking(False)
                    fast = self.head if k % 2 else b""
                    sock.sendall(fast)
                    for byte in self.request[len(fast) :]:
                        if self.stop.wait(self.pause):
                            self._count("still open at the end")
                            return
                        sock.send(bytes([byte]))
                        with contextlib.suppress(BlockingIOError):
                            raw = sock.recv(4096)
                            self._count(raw[9:12].decode() if raw else "closed")
                            break
            except OSError as exc:
                self._count(type(exc).__name__)
                self.stop.wait(0.05)

    def __enter__(self) -> SlowClients:
        for t in self.threads:
            t.start()
        time.sleep(1.0)  # all open and trickling
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def setup(tmp: Path) -> tuple[Any, dict[str, str], list[dict]]:
    """Postgres, a promoted model and the gunicorn environment."""
    pg, settings, later = champion_world(tmp, days=4, rows_per_day=5000, run_name="bench-slow")
    records = later.to_dict("records")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "PROMETHEUS_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), FRAUD_STATE_DIR=str(tmp / "state"),
               FRAUD_DATABASE_URL=pg.url, MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
               FRAUD_MLFLOW_ARTIFACTS=str(settings.mlflow_artifact_dir),
               FRAUD_SPOOL_DIR=str(settings.spool_dir))  # fmt: skip
    return pg, env, records


def measure(port: int, records: list[dict], clients: int, slow: int, dur: float) -> dict[str, Any]:
    """The three phases against one running service."""
    reqs = [build_request(port, "/v1/score", json.dumps(r).encode()) for r in records[:500]]
    run_load(port, reqs, clients=clients, duration=1.5)  # warm-up
    out = {"one_client": summarize(run_load(port, reqs, clients=1, duration=dur, processes=1), dur)}
    out["clients"] = summarize(run_load(port, reqs, clients=clients, duration=dur), dur)
    with SlowClients(port, reqs[0], slow) as trickle:

        def stop_at_the_end(t_start: float) -> None:  # a stalled server is not waited for
            time.sleep(max(0.0, t_start + dur - time.time()))
            trickle.stop.set()

        rows, _ = run_load(port, reqs, clients=clients, duration=dur, during=stop_at_the_end)
        out["clients_with_slow"] = summarize(rows, dur)
    out["slow_connection_outcomes"] = trickle.answers
    batch = build_request(
        port, "/v1/score", json.dumps({"transactions": records[:10_000]}).encode()
    )
    times = [single(port, batch)[1] for _ in range(6)][1:]  # the first one warms up
    out["batch_10k_median_ms"] = float(np.median(times) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="buffered,gthread", help="worker classes, in order")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slow", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--out", default=str(BENCH / "results" / "slow_clients.json"))
    args = parser.parse_args()
    from fraud_lib import pgserver

    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-slow-"))
    tmp.chmod(0o755)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
                               "clients": args.clients, "slow": args.slow, "runs": {}}  # fmt: skip
    pg = None
    try:
        say(f"setting up in {tmp}")
        pg, env, records = setup(tmp)
        for cls in args.classes.split(","):
            port = pgserver.free_port()
            service = Gunicorn(cls, gunicorn_argv(port, "serving.wsgi:app"),
                               {**env, **WORKER_CLASSES[cls]}, tmp / f"{cls}.log")  # fmt: skip
            try:
                probe = build_request(port, "/v1/score", json.dumps(records[0]).encode())
                service.wait_ready(port, probe, 2)
                results["runs"][cls] = measure(
                    port, records, args.clients, args.slow, args.duration
                )
                say(f"{cls}: {results['runs'][cls]}")
            finally:
                service.stop()
    finally:
        if pg is not None:
            pid = pg.pid
            with contextlib.suppress(Exception):
                pg.stop()
            if pid and pgserver.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    print_table(results)
    print(f"(written to {args.out}; load average {results['machine']['load_avg_start']} at start)")


def print_table(r: dict[str, Any]) -> None:
    n, slow = r["clients"], r["slow"]
    print(f"{'worker class':<14}{'phase':<34}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'failed':>8}")
    for cls, run in r["runs"].items():
        for key, label in (("one_client", "1 client"), ("clients", f"{n} clients"),
                           ("clients_with_slow", f"{n} clients + {slow} slow conns")):  # fmt: skip
            x = run[key]
            print(f"{cls:<14}{label:<34}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}"
                  f"{x['req_per_s']:>8.0f}{x['failed']:>8}")  # fmt: skip
        print(
            f"{cls:<14}batch of 10,000 (8.4 MB), median of 5: {run['batch_10k_median_ms']:.0f} ms"
        )
        print(f"{cls:<14}slow connections' outcomes: {run['slow_connection_outcomes']}")


if __name__ == "__main__":
    main()
