"""gunicorn settings of the scoring service (``-c python:serving.gunicorn_conf``).

Environment (command-line flags such as ``-b``/``-w`` win over these):

- ``FRAUD_BIND`` (127.0.0.1:8000): address to listen on
- ``FRAUD_WORKERS`` (2): worker processes, one per core
- ``FRAUD_WORKER_CLASS`` (buffered): ``buffered``, ``gthread`` or ``sync`` (measured: see below)
- ``FRAUD_THREADS`` (4): threads per worker with ``buffered`` and ``gthread``
- ``FRAUD_READ_TIMEOUT_SECONDS`` (10), ``FRAUD_BUFFER_BYTES`` (256 MiB): ``buffered`` only,
  see :mod:`serving.buffered_worker`
- ``FRAUD_GRACEFUL_SECONDS`` (30): on SIGTERM, time for requests and the log drain
- ``FRAUD_ACCESS_LOG`` (off): access log file, ``-`` for stderr
- ``FRAUD_LOG_LEVEL`` (info): log level of gunicorn and the service
- ``PROMETHEUS_MULTIPROC_DIR`` (``state_dir/prometheus/<host>-<master pid>``): metrics files

Worker class. ``buffered`` (:class:`serving.buffered_worker.BufferedWorker`, the default) is
gunicorn's ``gthread`` whose event loop receives each request whole, with read deadlines,
before a thread handles it. It was chosen by ``bench/bench_slow_clients.py`` (2 workers x 4
threads, 8 clients, 2 shared cores, 2026-12-01, two runs): with 64 connections trickling a
byte every 0.3 s, ``gthread`` answered 2 requests/s at p50 5.0 s (every thread held by a slow
body), ``buffered`` 1,545 and 1,488 requests/s at p50 3.3 ms, as many as without them. With no
slow clients the two are level within this machine's noise (1 client p50 1.05 / 0.50 ms vs
0.76 / 0.78 ms for gthread; 8 clients 1,347 / 2,525 vs 1,397 / 1,440 requests/s), and so is the
read of an 8.4 MB body (median of 15: 3.9 ms from the loop into a growing buffer vs 3.8 ms
with ``recv_into`` in one buffer, the copy to ``bytes`` included). The alternatives: read
timeouts alone (gthread with a socket timeout) bound only the wait for each ``recv``, so a
client sending a byte a second holds a thread for as long as it likes, and 8 of them still
stall a worker pair; gevent would monkey-patch the threads of the prediction-log shipper and
the model poller into greenlets that the compiled scoring and the msgspec decoding never yield
from, plus a new dependency. ``sync`` closes the connection after every response; in earlier
runs of ``bench/bench_serving.py`` it was level with ``gthread`` (1,000-1,800 requests/s).
The threads share one GIL: they overlap network I/O, not scoring.

Everything that must be true before a worker imports numpy, scikit-learn or prometheus_client
is done at import time here, in the master: ``OMP_NUM_THREADS=1`` (two workers on two cores
each running an OpenMP pool fell to ~16 requests/s with multi-second tails), glibc malloc
settings that keep freed memory for the next request (:mod:`serving.malloc`) and the
prometheus_client multiprocess directory. Hooks: ``post_worker_init`` applies a threadpoolctl
limit of 1 once the libraries are loaded; ``pre_request`` reads a body of known length in
bulk (:mod:`serving.request_body`); ``worker_exit`` drains
that worker's prediction log; ``child_exit`` (master) removes a dead worker's live gauges.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from fraud_lib.redact import log_handler
from serving.malloc import keep_freed_memory
from serving.request_body import use_bulk_body

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _metrics_dir() -> str:
    """``PROMETHEUS_MULTIPROC_DIR`` if set (created if missing), else a fresh
    ``state_dir/prometheus/<host>-<pid>`` (directories of this host's masters that are gone
    are removed)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        return os.environ["PROMETHEUS_MULTIPROC_DIR"]
    from fraud_lib.config import Settings  # light: no numpy, no flask

    host = socket.gethostname()
    base = Path(Settings.from_env().state_dir) / "prometheus"
    for stale in base.glob(f"{host}-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    path = base / f"{host}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def _whole(name: str, default: int, minimum: int) -> int:
    """The whole number in environment variable ``name`` (``default`` if unset); exits with a
    one-line error naming it when it is not a whole number of at least ``minimum``."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise SystemExit(f"error: {name}={raw!r} must be a whole number of at least {minimum}")
    return value


bind = os.environ.get("FRAUD_BIND", "127.0.0.1:8000")
workers = _whole("FRAUD_WORKERS", 2, 1)
WORKER_CLASSES = {"buffered": "serving.buffered_worker.BufferedWorker", "gthread": "gthread",
                  "sync": "sync"}  # fmt: skip
_worker_name = os.environ.get("FRAUD_WORKER_CLASS", "buffered")
if _worker_name not in WORKER_CLASSES:
    raise SystemExit(
        f"error: FRAUD_WORKER_CLASS={_worker_name!r} is unknown; use one of "
        + ", ".join(WORKER_CLASSES)
    )
worker_class = WORKER_CLASSES[_worker_name]
threads = _whole("FRAUD_THREADS", 4, 1)
preload_app = False  # each worker loads its own model and starts its own threads
timeout = 60
graceful_timeout = _whole("FRAUD_GRACEFUL_SECONDS", 30, 0)
keepalive = 5
backlog = 2048
accesslog = os.environ.get("FRAUD_ACCESS_LOG") or None  # "-" for stderr; off by default
loglevel = os.environ.get("FRAUD_LOG_LEVEL", "info")
control_socket_disable = True  # unused; avoids one shared ~/.gunicorn/gunicorn.ctl per user


# The service's own loggers (serving.*, fraud_lib.*): configured here, in the master, and
# inherited by the forked workers. (A gunicorn logconfig_dict would switch the access log on
# for every request, ~30 us each, whatever accesslog says.)
logging.basicConfig(
    level=loglevel.upper(),
    handlers=[log_handler("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")],
)
for _noisy in ("mlflow", "alembic", "urllib3", "git"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
METRICS_DIR = _metrics_dir()
if keep_freed_memory():
    logging.getLogger("serving").info("malloc: freed memory is kept for the next request")


def on_starting(server: Any) -> None:
    for path in glob.glob(os.path.join(METRICS_DIR, "*.db")):
        os.remove(path)  # values of a previous run in a user-given directory


def post_worker_init(worker: Any) -> None:
    from threadpoolctl import threadpool_limits

    from serving.gc_tuning import freeze_loaded

    threadpool_limits(limits=int(os.environ.get("OMP_NUM_THREADS", "1")))
    state = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("fraudloop")
    if state is not None:
        state.warm_raw_path()
    freeze_loaded()  # the app and the champion are loaded: out of every later collection


def pre_request(worker: Any, req: Any) -> None:
    worker.log.debug("%s %s", req.method, req.path)  # gunicorn's default hook
    use_bulk_body(req)


def worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("fraudloop") if app is not None else None
    if state is not None:
        drained = state.close(timeout=max(1.0, graceful_timeout - 5))
        logging.getLogger("serving").info("worker %s exiting; log drained: %s", worker.pid, drained)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, METRICS_DIR)
