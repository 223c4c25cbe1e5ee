"""The HTTP phase of bench_features.py: raw transactions through real gunicorn (2 workers), real
Postgres and a real redis-server, beside the same service on the ULB schema.

* ``throughput_rps_plain``: 8 closed-loop clients, one ULB transaction a request, ULB champion;
* ``throughput_rps`` / ``single_p99_ms_8``: the same load with one raw transaction a request and
  a behavioral champion (features from the shared Redis state);
* ``batch_rows_per_s``: end to end, 10,000 raw transactions in one JSON request (the world's
  last ones, so their entities have history), median of ``BATCHES`` requests sent one at a
  time, each once the previous ones are logged (``batch_ms``: each request's time);
  ``batch_rows_per_s_back_to_back``: the next ``BATCHES`` sent back to back;
* ``visibility_lag_p50_ms`` / ``_p99_ms``: a new customer's transaction is sent on a keep-alive
  connection served by one worker; as soon as it is acknowledged, a second transaction of that
  customer goes on a connection served by the other worker (found with ``ss``); the lag is from
  the first acknowledgement to the second one, counted only when the second one's logged
  features show the first event (``visibility_seen_share`` says how many did);
* ``parity_*``: a shorter parity replay (:mod:`fraud_lib.features.replay`) checked with
  :func:`fraud_lib.features.parity.check_parity`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import sqlalchemy as sa
from harness import (
    REPO,
    Gunicorn,
    champion_world,
    gunicorn_argv,
    pct,
    summarize,
    temp_settings,
    wait_backlog_below,
)
from loadgen import _read_response, build_request, run_load

CLIENTS = 8
LABEL_REFRESH_SECONDS = 0.5
VISIBILITY_PROBES = 200
BATCHES, BATCH_ROWS = 5, 10_000
RAW_FIELDS = ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount")


def _env(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "PROMETHEUS_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), FRAUD_STATE_DIR=str(settings.state_dir),
               FRAUD_DATABASE_URL=settings.database_url,
               MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
               FRAUD_MLFLOW_ARTIFACTS=str(settings.mlflow_artifact_dir),
               FRAUD_SPOOL_DIR=str(settings.spool_dir), **extra)  # fmt: skip
    return env


def _raw_settings(tmp: Path, pg_url: str):
    """Settings of a second MLflow store whose champion is a behavioral model."""
    from fraud_lib import registry, store
    from fraud_lib.features.raw_data import generate_raw
    from fraud_lib.features.raw_table import RAW_SCHEMA_PATH, enrich
    from fraud_lib.schema import FeatureSchema
    from fraud_lib.train import train_model

    tmp.mkdir(parents=True, exist_ok=True)
    settings = temp_settings(tmp, pg_url)
    store.connect_store(settings)
    schema = FeatureSchema.load(RAW_SCHEMA_PATH)
    train = generate_raw(10, total_rows=6_000, fraud_rate=0.02, seed=5)
    ref = registry.log_model(train_model(enrich(schema, train), schema, test_fraction=0.2),
                             settings, run_name="raw")  # fmt: skip
    registry.client(settings).set_registered_model_alias(
        settings.model_name, "champion", ref.version
    )
    return settings, schema


def _load(port: int, records: list[dict], duration: float) -> dict:
    reqs = [build_request(port, "/v1/score", json.dumps(r).encode()) for r in records]
    run_load(port, reqs[:200], clients=CLIENTS, duration=2)  # warm-up
    return summarize(run_load(port, reqs[200:], clients=CLIENTS, duration=duration), duration)


def _worker_of(port: int, sock: socket.socket) -> int | None:
    """The gunicorn worker pid holding the server side of ``sock`` (from ``ss``)."""
    local = sock.getsockname()[1]
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    for line in out.splitlines():
        if line.split()[3].endswith(f":{local}") and "pid=" in line:
            return int(line.split("pid=", 1)[1].split(",", 1)[0])
    return None


def _two_workers(port: int, probe: bytes) -> tuple[socket.socket, socket.socket]:
    """Two keep-alive connections served by different workers."""
    by_worker: dict[int, socket.socket] = {}
    for _ in range(64):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(probe)
        _read_response(sock)
        pid = _worker_of(port, sock)
        if pid is not None and pid not in by_worker:
            by_worker[pid] = sock
        else:
            sock.close()
        if len(by_worker) == 2:
            return tuple(by_worker.values())
    raise RuntimeError("could not open connections on two different workers")


def _visibility(port: int, engine, spec, base: dict, t0: float) -> dict:
    """The cross-worker visibility lag (see the module docstring)."""
    probe = build_request(port, "/v1/score", json.dumps(base).encode())
    a, b = _two_workers(port, probe)
    lags, probes = [], []
    for i in range(VISIBILITY_PROBES):
        first = {**base, "transaction_id": f"vis-{i}-a", "customer_id": f"vis-{i}",
                 "timestamp": t0 + i}  # fmt: skip
        second = {**first, "transaction_id": f"vis-{i}-b", "timestamp": t0 + i + 0.5}
        a.sendall(build_request(port, "/v1/score", json.dumps(first).encode()))
        _read_response(a)
        acked = time.perf_counter()
        b.sendall(build_request(port, "/v1/score", json.dumps(second).encode()))
        _read_response(b)
        lags.append(time.perf_counter() - acked)
        probes.append(second["transaction_id"])
    a.close()
    b.close()
    seen = _seen(engine, spec, probes)
    ok = [lag for lag, s in zip(lags, seen, strict=True) if s]
    return {
        "visibility_lag_p50_ms": round(pct(ok, 50) * 1000, 2),
        "visibility_lag_p99_ms": round(pct(ok, 99) * 1000, 2),
        "visibility_seen_share": round(len(ok) / len(lags), 4),
    }


def _seen(engine, spec, ids: list[str], timeout: float = 60) -> list[bool]:
    """Whether each probe's logged time since previous shows the first event."""
    column = next(f"{n}__time_since_prev" for n, _ in spec.entities if n == "customer")
    query = sa.text("SELECT transaction_id, (features ->> :c)::float8 FROM predictions "
                    "WHERE transaction_id = ANY(:ids)")  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            got = dict(conn.execute(query, {"c": column, "ids": ids}).fetchall())
        if len(got) == len(ids) or time.monotonic() > deadline:
            return [got.get(i, -1.0) == 0.5 for i in ids]
        time.sleep(0.2)


def _parity(url: str, engine, spec, rows: int, seed: int, say) -> dict:
    from fraud_lib.features.parity import check_parity, parity_world, stated_label_lag
    from fraud_lib.features.replay import Replay

    world = parity_world(rows, 4, 14, seed=seed, now=time.time())
    say(f"parity replay of {len(world):,} raw transactions")
    t0 = time.perf_counter()
    log = Replay(url, world, 1_000, seed=seed).run()
    replay_s = time.perf_counter() - t0
    ids = log.rows["transaction_id"].tolist()
    query = sa.text("SELECT count(DISTINCT transaction_id) FROM predictions "
                    "WHERE transaction_id = ANY(:ids)")  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query, {"ids": ids}).scalar_one() == len(ids):
                break
        time.sleep(0.5)
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    report = check_parity(engine, spec, log, stated_label_lag(LABEL_REFRESH_SECONDS, metrics))
    return {**report, "parity_replay_rows_per_s": round(len(world) / replay_s)}


def _batches(port: int, records: list[dict]) -> dict:
    """End to end (HTTP, validation, features, predict, log, answer): the last transactions of
    the world, ``BATCH_ROWS`` per request in time order, so every entity has its history. The
    first ``BATCHES`` requests are sent one at a time, each once the previous ones are all in
    Postgres (as bench_serving.py's batches: the previous COPY does not share the two cores);
    the next ``BATCHES`` back to back (each COPY runs during the next request)."""
    base = f"http://127.0.0.1:{port}"
    url, out = f"{base}/v1/score", {}
    with requests.Session() as session:
        for mode, start in (("alone", 0), ("back_to_back", BATCHES * BATCH_ROWS)):
            seconds = []
            for lo in range(start, start + BATCHES * BATCH_ROWS, BATCH_ROWS):
                if mode == "alone":  # every prediction so far in Postgres, then its own work
                    wait_backlog_below(base, 1, 120)
                    time.sleep(0.5)
                body = json.dumps({"transactions": records[lo : lo + BATCH_ROWS]}).encode()
                started = time.perf_counter()
                answer = session.post(url, data=body, headers={"Content-Type": "application/json"})
                seconds.append(time.perf_counter() - started)
                answer.raise_for_status()
                assert answer.json()["count"] == BATCH_ROWS, answer.text[:200]
            key = "batch_rows_per_s" if mode == "alone" else "batch_rows_per_s_back_to_back"
            out[key] = round(BATCH_ROWS / float(np.median(seconds)))
            out[key.replace("rows_per_s", "ms")] = [round(1000 * s, 1) for s in seconds]
    return out


def http(seed: int, say, duration: float = 10.0, parity_rows: int = 20_000) -> dict:
    """Run the phase (see the module docstring); returns the figures."""
    from fraud_lib import pgserver, redisserver, store
    from fraud_lib.features.parity import parity_world
    from serving.raw_scoring import spec_prefix

    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-http-bench-"))
    tmp.chmod(0o755)
    say("training the ULB and the behavioral champions")
    pg, plain, later = champion_world(tmp / "plain", 3, 10_000, "plain")
    rs = redisserver.EmbeddedRedis(tmp, pgserver.free_port())
    out: dict = {}
    try:
        rs.start()
        raw_settings, schema = _raw_settings(tmp / "raw", pg.url)
        engine = store.make_engine(pg.url)
        port = pgserver.free_port()
        say("8 clients, ULB schema")
        service = Gunicorn("plain", gunicorn_argv(port, "serving.wsgi:app"), _env(plain),
                           tmp / "plain.log")  # fmt: skip
        records = later.to_dict("records")
        try:
            service.wait_ready(port, build_request(port, "/v1/score",
                                                   json.dumps(records[0]).encode()), 2)  # fmt: skip
            out["throughput_rps_plain"] = round(_load(port, records, duration)["req_per_s"], 1)
        finally:
            service.stop()
        r = rs.client()
        r.set(f"{spec_prefix(schema.behavior)}built", "0")  # nothing logged to rebuild from
        r.close()
        env = _env(raw_settings, FRAUD_REDIS_URL=rs.url,
                   FRAUD_LABEL_REFRESH_SECONDS=str(LABEL_REFRESH_SECONDS))  # fmt: skip
        service = Gunicorn("raw", gunicorn_argv(port, "serving.wsgi:app"), env, tmp / "raw.log")
        load = parity_world(
            40_000 + 2 * BATCHES * BATCH_ROWS, 1, 14, seed=seed + 100, now=time.time()
        )
        raw_records = load[list(RAW_FIELDS)].to_dict("records")
        batch_records, raw_records = raw_records[-2 * BATCHES * BATCH_ROWS :], raw_records[:40_000]
        try:
            service.wait_ready(port, build_request(port, "/v1/score",
                                                   json.dumps(raw_records[0]).encode()), 2)  # fmt: skip
            say("parity replay")
            out.update(_parity(f"http://127.0.0.1:{port}", engine, schema.behavior,
                               parity_rows, seed, say))  # fmt: skip
            say("visibility lag across the two workers")
            t_vis = float(load["timestamp"].max()) + 3600
            out.update(_visibility(port, engine, schema.behavior, raw_records[0], t_vis))
            say("8 clients, raw transactions")
            summary = _load(port, raw_records, duration)
            out["throughput_rps"] = round(summary["req_per_s"], 1)
            out["single_p99_ms_8"] = round(summary["p99_ms"], 2)
            out["single_p50_ms_8"] = round(summary["p50_ms"], 2)
            say(f"{BATCHES} batches of {BATCH_ROWS:,} raw transactions, one at a time")
            out.update(_batches(port, batch_records))
        finally:
            service.stop()
        out["throughput_share_of_plain"] = round(
            out["throughput_rps"] / out["throughput_rps_plain"], 3
        )
    finally:
        rs.stop()
        pg.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)
    return out
