"""Serving benchmark (issue 5): one run measures the scoring service under gunicorn against a
naive baseline, with logging to a real Postgres, and prints a table.

    .venv/bin/python bench/bench_serving.py            # ~7 min on 2 cores
    .venv/bin/python bench/bench_serving.py --quick    # shorter runs, smaller model data
    .venv/bin/python bench/bench_serving.py --single-only   # phase 1 only, ~2 min

Everything runs on 127.0.0.1 and is started here: an embedded Postgres (temp dir, free port),
a temp MLflow store, a model trained on generated data and promoted, gunicorn with 2 workers
(this service, then the baseline of ``bench/baseline_app.py``), and a load generator of
spawned processes (``bench/loadgen.py``; wrk is not installed). Everything started is stopped
by pid at the end. Results: the table on stdout and ``bench/results/serving.json``.

Phases: (1) single-transaction latency and throughput at 1 and 8 clients, service vs baseline,
each under every gunicorn worker class (buffered, sync, gthread), next to in-process
``predict_proba`` of one row (the floor) and, under the default worker class, a Flask
hello-world (``bench/hello_app.py``, the ceiling) with the service's share of it; then, with the default worker class: (2) batches of
10,000, one at a time (each once the last one is in Postgres) and back to back; (3)
prediction-log throughput into Postgres at full load, how fast the backlog drains after it,
and a paced load below that rate with a flat backlog;
(4) hot reload under load; (5) a 10 s Postgres outage under load; (6) SIGKILL of a worker
under load.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/scikit-learn load (floor timings)

import argparse
import contextlib
import json
import pickle
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402
    DEFAULT_CLASS,
    WORKER_CLASSES,
    Gunicorn,
    ceiling_share,
    gunicorn_argv,
    metric_by_pid,
    metric_sum,
    pct,
    stop_postgres,
    summarize,
    temp_settings,
    truncate,
    wait_backlog_below,
    wait_drain,
    wait_rows,
)
from loadgen import build_request, run_load, single  # noqa: E402

ARROW_STREAM = "application/vnd.apache.arrow.stream"
MAX_ROWS = 1_000_000  # the batch limit of the in-process Arrow timings

# fraud_lib (scikit-learn, MLflow) is imported inside the functions: the load generator's
# spawned processes re-import this module and should stay small and quick to start.


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


def floor_timings(loaded: Any, X: np.ndarray, frame: Any) -> dict[str, float]:
    """Median in-process time of one-row predictions (ms)."""
    from serving.scoring import prepare

    served = prepare(loaded)
    clf = loaded.model.steps[-1][1]

    def median_ms(fn: Any, n: int) -> float:
        fn()
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)

    row_frames = [frame.iloc[[i]] for i in range(100)]
    return {
        "pipeline_dataframe_ms": median_ms(
            lambda i=0: loaded.model.predict_proba(row_frames[i % 100]), 500
        ),
        "estimator_numpy_ms": median_ms(
            lambda i=0: clf.predict_proba(X[i % 100 : i % 100 + 1]), 1000
        ),
        "service_predictor_ms": median_ms(
            lambda i=0: served.score_matrix(X[i % 100 : i % 100 + 1]), 3000
        ),
        "service_predictor": served.predictor,
        "n_trees": int(getattr(clf, "n_iter_", 0)),
    }


def arrow_stream(frame: Any, schema: Any) -> bytes:
    """The frame's transaction ids, times and features as an Arrow IPC stream body."""
    import pyarrow as pa

    columns = ["transaction_id", schema.time, *schema.features]
    table = pa.Table.from_pandas(frame[columns], preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def arrow_timings(body: bytes, schema: Any) -> dict[str, float]:
    """Median in-process time (ms) of validating the Arrow body into the matrix, and of
    encoding an answer of as many predictions."""
    from serving.arrow import decode_arrow, encode_predictions

    def median_ms(fn: Any, n: int = 30) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)

    txs = decode_arrow(body, schema, MAX_ROWS)
    ids = [str(t) for t in txs.ids]
    scores = np.linspace(0, 1, len(ids))
    risk = ["low"] * len(ids)
    return {
        "decode_ms": median_ms(lambda: decode_arrow(body, schema, MAX_ROWS)),
        "encode_answer_ms": median_ms(
            lambda: encode_predictions(ids, ids, scores, scores > 0.5, risk, 0.5, ("m", "1"))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases, less training data")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--single-only",
        action="store_true",
        help="only phase 1 (single transactions), default worker class only",
    )
    parser.add_argument("--out", default=None,
                        help="results JSON (default bench/results/serving.json, "
                             "serving_single.json with --single-only)")  # fmt: skip
    args = parser.parse_args()
    args.out = args.out or str(BENCH / "results" / ("serving_single.json" if args.single_only
                                                    else "serving.json"))  # fmt: skip
    from fraud_lib import pgserver, registry, store
    from fraud_lib.data import generate
    from fraud_lib.schema import FeatureSchema
    from fraud_lib.train import train_model

    schema = FeatureSchema()
    dur = 5.0 if args.quick else 10.0
    days, per_day = (5, 6000) if args.quick else (10, 10_000)

    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-bench-"))
    tmp.chmod(0o755)
    pg = pgserver.EmbeddedPostgres(tmp / "pg", pgserver.free_port())
    services: list[Gunicorn] = []
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    }
    try:
        say(f"starting Postgres in {tmp}")
        pg.ensure_running()
        settings = temp_settings(tmp, pg.url)
        engine = store.connect_store(settings)
        say(f"training on {days} days x {per_day} generated rows")
        history = schema.validate_frame(
            generate(days, rows_per_day=per_day, seed=7, fraud_rate=0.004)
        )
        result = train_model(history, schema)
        v1 = registry.log_model(result, settings, run_name="bench-v1")
        v2 = registry.log_model(result, settings, run_name="bench-v2")
        assert v1 is not None and v2 is not None
        registry.client(settings).set_registered_model_alias(
            settings.model_name, "champion", v1.version
        )
        loaded = registry.load_version(settings, v1.version)

        later = generate(1, rows_per_day=12_000, seed=8, start_day=days)
        later = later.drop(columns=["Class", "label_delay_seconds"])
        records = later.to_dict("records")
        frame = later[schema.model_columns]
        X = frame.to_numpy()
        results["model"] = {"rows": len(history), **floor_timings(loaded, X, frame)}
        say(f"floor: {results['model']}")

        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "PROMETHEUS_"))}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), FRAUD_STATE_DIR=str(tmp / "state"),
                   FRAUD_DATABASE_URL=pg.url, MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
                   FRAUD_MLFLOW_ARTIFACTS=str(settings.mlflow_artifact_dir),
                   FRAUD_SPOOL_DIR=str(settings.spool_dir))  # fmt: skip

        def single_phase(port: int, label: str) -> dict[str, Any]:
            reqs = [build_request(port, "/v1/score", json.dumps(r).encode()) for r in records[:500]]
            run_load(port, reqs, clients=args.clients, duration=2)  # warm-up
            one = summarize(run_load(port, reqs, clients=1, duration=dur / 2, processes=1), dur / 2)
            many = summarize(run_load(port, reqs, clients=args.clients, duration=dur), dur)
            say(f"{label}: 1 client {one}; {args.clients} clients {many}")
            return {"one_client": one, "clients": many}

        # ---------------------------------------------------------------- (1) single transactions
        bundle = tmp / "baseline.pkl"
        bundle.write_bytes(pickle.dumps({"model": loaded.model, "columns": schema.model_columns,
                                         "threshold": loaded.threshold}))  # fmt: skip
        base_env = {
            **env,
            "BASELINE_MODEL": str(bundle),
            "BASELINE_DB": pg.url.replace("+psycopg", ""),
        }

        def start(
            name: str, app: str, extra_env: dict[str, str], *extra: str
        ) -> tuple[Gunicorn, int]:
            port = pgserver.free_port()
            service = Gunicorn(name, gunicorn_argv(port, app, *extra), {**env, **extra_env},
                               tmp / f"{name}.log")  # fmt: skip
            services.append(service)
            service.wait_ready(
                port, build_request(port, "/v1/score", json.dumps(records[0]).encode()), 2
            )
            return service, port

        results["single"] = {}
        kinds = (
            ("hello", "hello_app:app", {}, ("--pythonpath", str(BENCH))),
            ("baseline", "baseline_app:app", base_env, ("--pythonpath", str(BENCH))),
            ("service", "serving.wsgi:app", {}, ()),
        )
        classes = {DEFAULT_CLASS: {}} if args.single_only else WORKER_CLASSES
        for cls, cls_env in classes.items():
            for kind, app, extra_env, extra in kinds:
                if kind == "hello" and cls != DEFAULT_CLASS:
                    continue  # the ceiling: the project's own gunicorn settings only
                name = f"{kind}_{cls}"
                service, port = start(name, app, {**extra_env, **cls_env}, *extra)
                results["single"][name] = single_phase(port, name)
                service.stop()
                truncate(engine)
        results["ceiling_share"] = ceiling_share(results["single"], DEFAULT_CLASS)
        if args.single_only:
            return finish(results, args)

        # the service with the configuration's default worker class, for phases 2-6
        svc, port = start("service", "serving.wsgi:app", {})
        url = f"http://127.0.0.1:{port}"
        results["default_worker_class"] = svc.worker_class()

        # ---------------------------------------------------------------- (2) batch of 10,000
        # Each request alone (sent 0.5 s after the previous one's predictions are in Postgres,
        # so the background COPY of the last batch does not share the 2 cores), then back to
        # back (the COPY of one batch runs during the next).
        body = json.dumps({"transactions": records[:10_000]}).encode()
        arrow_body = arrow_stream(later.iloc[:10_000], schema)
        batch_reqs = {
            "": build_request(port, "/v1/score", body),
            "arrow_": build_request(port, "/v1/score", arrow_body, ARROW_STREAM),
        }
        reps = 6 if args.quick else 16
        results["batch_10k"] = {"body_mb": len(body) / 1e6, "arrow_body_mb": len(arrow_body) / 1e6,
                                "arrow_in_process": arrow_timings(arrow_body, schema)}  # fmt: skip
        for mode in ("alone", "back_to_back", "arrow_alone", "arrow_back_to_back"):
            lat, drains = [], []
            batch_req = batch_reqs["arrow_" if mode.startswith("arrow_") else ""]
            for _ in range(reps):
                stored = store.prediction_count(engine)
                status, seconds, _ = single(port, batch_req)
                assert status == 200, status
                lat.append(seconds)
                if mode.endswith("alone"):
                    drains.append(wait_rows(engine, stored + 10_000))
                    time.sleep(0.5)  # Postgres's own background work after the COPY
            lat = lat[1:]  # the first request warms the worker up
            results["batch_10k"][mode] = {
                "median_s": float(np.median(lat)), "min_s": min(lat), "max_s": max(lat),
                "rows_per_s": 10_000 / float(np.median(lat)), "requests": len(lat),
            }  # fmt: skip
            if drains:
                results["batch_10k"][mode]["logged_after_s"] = float(np.median(drains))
        say(f"batch: {results['batch_10k']}")
        wait_backlog_below(url, 1, 120)

        # ---------------------------------------------------------------- (3) logging throughput
        time.sleep(3)
        truncate(engine)
        batch100 = [build_request(port, "/v1/score", json.dumps({"transactions": records[i : i + 100]}).encode())
                    for i in range(0, 5000, 100)]  # fmt: skip

        def sample_backlog(t_start: float) -> list[tuple[float, int, float]]:
            samples = []
            while time.time() < t_start + 2 * dur + 0.5:
                with contextlib.suppress(Exception):
                    samples.append((time.time(), store.prediction_count(engine),
                                    metric_sum(url, "fraud_prediction_log_backlog_records")))  # fmt: skip
                time.sleep(0.5)
            return samples

        def logging_phase(clients: int, rate: float | None = None) -> dict[str, Any]:
            """Batches of 100 from ``clients`` clients, closed-loop or paced to ``rate``
            requests/s in all: accepted vs written."""
            rows, samples = run_load(port, batch100, clients=clients, duration=2 * dur,
                                     during=sample_backlog, rate=rate)  # fmt: skip
            window = [s for s in samples if rows[0][0] + 2 <= s[0] <= rows[-1][0]]
            accepted = sum(100 for r in rows if r[2] == 200)
            written_rate = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
            return {
                "clients": clients, "paced_requests_per_s": rate,
                "predictions_accepted_per_s": accepted / (2 * dur),
                "rows_written_per_s": written_rate,
                "backlog_start": window[0][2], "backlog_end": window[-1][2],
                "backlog_max": max(s[2] for s in window),
            }  # fmt: skip

        # Full load (4 clients): what the log writes while scoring takes the cores, and how fast
        # the backlog drains once the load stops. Then one client paced at 90 % of that write
        # rate: a rate the log sustains with a flat backlog.
        full = results["logging"] = logging_phase(4)
        say(f"logging: {full}")
        load_ended = time.time()
        full["backlog_drained_s"] = wait_backlog_below(url, 1000, 180) - load_ended
        full["drain_rows_per_s"] = full["backlog_end"] / max(full["backlog_drained_s"], 0.5)
        truncate(engine)
        if not full["rows_written_per_s"] > 0:
            raise RuntimeError(f"nothing reached Postgres at full load: {full}")
        paced = results["logging_paced"] = logging_phase(1, 0.9 * full["rows_written_per_s"] / 100)
        say(f"logging, paced: {paced}")

        # ---------------------------------------------------------------- (4) hot reload
        reqs = [build_request(port, "/v1/score", json.dumps(r).encode()) for r in records[:500]]

        def promote(t_start: float) -> dict[str, float]:
            time.sleep(max(0.0, t_start + 3 - time.time()))
            t_promote = time.time()
            registry.client(settings).set_registered_model_alias(
                settings.model_name, "champion", v2.version
            )
            while time.time() < t_promote + 30:
                versions = metric_by_pid(url, "fraud_model_version")
                if len(versions) == 2 and set(versions.values()) == {float(v2.version)}:
                    return {"t_promote": t_promote, "t_all_workers": time.time()}
                time.sleep(0.05)
            return {"t_promote": t_promote, "t_all_workers": float("nan")}

        rows, marks = run_load(port, reqs, clients=args.clients, duration=dur + 2, during=promote)
        old_after = [r[0] for r in rows if r[3] == v1.version and r[0] >= marks["t_promote"]]
        results["hot_reload"] = {
            "seconds_until_all_workers_new": marks["t_all_workers"] - marks["t_promote"],
            "seconds_until_last_old_answer": (max(old_after) - marks["t_promote"]) if old_after else 0.0,
            "failed_requests": sum(1 for r in rows if r[2] != 200),
            "requests": len(rows),
            "poll_seconds": settings.poll_seconds,
        }  # fmt: skip
        say(f"hot reload: {results['hot_reload']}")

        # ---------------------------------------------------------------- (5) Postgres outage
        time.sleep(2)
        truncate(engine)

        def outage(t_start: float) -> dict[str, float]:
            time.sleep(max(0.0, t_start + 4 - time.time()))
            t0 = time.time()
            pg.stop()
            t_down = time.time()
            time.sleep(10)
            t_up_begin = time.time()
            peak = metric_sum(url, "fraud_prediction_log_backlog_records")
            pg.ensure_running()
            t_up = time.time()
            # backlog back to its steady level (< 1 s of load)
            t_drained = wait_backlog_below(url, 1000, timeout=60)
            return {"t_stop": t0, "t_down": t_down, "t_up_begin": t_up_begin, "t_up": t_up,
                    "t_drained": t_drained, "backlog_peak": peak}  # fmt: skip

        rows, marks = run_load(
            port, reqs, clients=args.clients, duration=22, collect_ids=True, during=outage
        )
        acked = [i for r in rows if r[2] == 200 for i in r[4]]
        in_outage = [
            r[1] for r in rows if r[2] == 200 and marks["t_down"] <= r[0] <= marks["t_up_begin"]
        ]
        before = [r[1] for r in rows if r[2] == 200 and r[0] < marks["t_stop"]]
        wait_drain(engine, acked)
        results["pg_outage"] = {
            "outage_seconds": marks["t_up_begin"] - marks["t_down"],
            "failed_requests": sum(1 for r in rows if r[2] != 200),
            "requests": len(rows),
            "p50_ms_before": pct(before, 50) * 1000, "p99_ms_before": pct(before, 99) * 1000,
            "p50_ms_outage": pct(in_outage, 50) * 1000, "p99_ms_outage": pct(in_outage, 99) * 1000,
            "predictions_acknowledged": len(acked),
            "rows_after_drain": store.prediction_count(engine),
            "acknowledged_ids_in_postgres": store.count_predictions_by_ids(engine, acked),
            "backlog_peak_records": marks["backlog_peak"],
            "seconds_to_drain_after_restart": marks["t_drained"] - marks["t_up"],
        }  # fmt: skip
        say(f"outage: {results['pg_outage']}")

        # ---------------------------------------------------------------- (6) SIGKILL a worker
        time.sleep(2)
        truncate(engine)

        def kill(t_start: float) -> dict[str, Any]:
            time.sleep(max(0.0, t_start + 4 - time.time()))
            victim = svc.workers()[0]
            os.kill(victim, signal.SIGKILL)
            return {"victim": victim, "t_kill": time.time()}

        rows, marks = run_load(
            port, reqs, clients=args.clients, duration=dur, collect_ids=True, during=kill
        )
        acked = [i for r in rows if r[2] == 200 for i in r[4]]
        drain = wait_drain(engine, acked)
        results["sigkill"] = {
            "failed_requests": sum(1 for r in rows if r[2] != 200),
            "predictions_acknowledged": len(acked),
            "acknowledged_ids_in_postgres": store.count_predictions_by_ids(engine, acked),
            "rows_in_postgres": store.prediction_count(engine),
            "seconds_to_drain": drain,
        }  # fmt: skip
        say(f"sigkill: {results['sigkill']}")
        svc.stop()
        leftovers = [p.name for p in settings.spool_dir.glob("*") if p.is_file()]
        results["sigkill"]["spool_files_after_graceful_stop"] = len(leftovers)

    finally:
        for service in services:
            service.stop()
        stop_postgres(pg)
        shutil.rmtree(tmp, ignore_errors=True)
    finish(results, args)


def finish(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Write the JSON results and print the table."""
    results["machine"]["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    print_table(results, args.clients)
    print(f"(written to {args.out}; load average {results['machine']['load_avg_start']} at start, "
          f"{results['machine']['load_avg_end']} at end)")  # fmt: skip


def print_table(r: dict[str, Any], clients: int) -> None:
    m, single_runs = r["model"], r["single"]
    rows = [
        ("floor: pipeline.predict_proba, 1-row DataFrame", f"{m['pipeline_dataframe_ms']:.2f} ms"),
        ("floor: estimator.predict_proba, 1-row numpy", f"{m['estimator_numpy_ms']:.2f} ms"),
        (f"service predictor ({m['service_predictor']}, {m['n_trees']} trees), 1 row",
         f"{m['service_predictor_ms']:.3f} ms"),
    ]  # fmt: skip
    for name, x in single_runs.items():
        one, many = x["one_client"], x["clients"]
        rows.append(
            (
                f"{name}: 1 client p50 / p99",
                f"{one['p50_ms']:.2f} / {one['p99_ms']:.2f} ms ({one['req_per_s']:.0f} req/s)",
            )
        )
        rows.append(
            (
                f"{name}: {clients} clients p50 / p99",
                f"{many['p50_ms']:.2f} / {many['p99_ms']:.2f} ms",
            )
        )
        rows.append(
            (
                f"{name}: {clients} clients throughput",
                f"{many['req_per_s']:.0f} req/s ({many['failed']} failed)",
            )
        )
    c = r["ceiling_share"]
    rows.append((f"service / hello-world ({DEFAULT_CLASS}, {clients} clients): req/s, p99",
                 f"{c['req_per_s_ratio']:.0%}, {c['p99_ratio']:.2f}x"))  # fmt: skip
    rows.append((f"service - hello-world ({DEFAULT_CLASS}, 1 client): p50",
                 f"{c['p50_one_client_diff_ms']:+.2f} ms"))  # fmt: skip
    for cls in (k for k in WORKER_CLASSES if f"baseline_{k}" in single_runs):
        s, b = single_runs[f"service_{cls}"]["clients"], single_runs[f"baseline_{cls}"]["clients"]
        rows.append(
            (
                f"service / baseline ({cls}): throughput, p99",
                f"{s['req_per_s'] / b['req_per_s']:.1f}x, {s['p99_ms'] / b['p99_ms']:.2f}",
            )
        )
    if "sigkill" in r:
        rows += later_phase_rows(r)
    width = max(len(a) for a, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for a, v in rows:
        print(f"{a.ljust(width)}  {v}")


def later_phase_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The table rows of phases 2-6."""
    p, h, k = r["pg_outage"], r["hot_reload"], r["sigkill"]
    rows = [
        ("phases 2-6 run with worker class", r["default_worker_class"]),
    ]  # fmt: skip
    for mode, label in (("alone", "JSON, one at a time"), ("back_to_back", "JSON, back to back"),
                        ("arrow_alone", "Arrow, one at a time"),
                        ("arrow_back_to_back", "Arrow, back to back")):  # fmt: skip
        b = r["batch_10k"][mode]
        logged = f", in Postgres {b['logged_after_s']:.2f} s later" if "logged_after_s" in b else ""
        rows.append((f"batch of 10,000, {label}: median (min-max), rows/s",
                     f"{b['median_s'] * 1000:.0f} ms ({b['min_s'] * 1000:.0f}-{b['max_s'] * 1000:.0f}), "
                     f"{b['rows_per_s']:,.0f} rows/s{logged}"))  # fmt: skip
    a, batch = r["batch_10k"]["arrow_in_process"], r["batch_10k"]
    rows.append(("Arrow batch of 10,000 in process: validated into the matrix / answer encoded",
                 f"{a['decode_ms']:.2f} / {a['encode_answer_ms']:.2f} ms (body "
                 f"{batch['arrow_body_mb']:.1f} MB, JSON {batch['body_mb']:.1f} MB)"))  # fmt: skip
    rows += [
        ("logging at full load: accepted / written to PG", f"{r['logging']['predictions_accepted_per_s']:,.0f} / {r['logging']['rows_written_per_s']:,.0f} predictions/s"),
        ("logging: backlog start / max / end", f"{r['logging']['backlog_start']:.0f} / {r['logging']['backlog_max']:.0f} / {r['logging']['backlog_end']:.0f} records, below 1,000 {r['logging']['backlog_drained_s']:.1f} s after the load ({r['logging']['drain_rows_per_s']:,.0f} rows/s)"),
        ("logging paced at 90 % of that write rate: accepted / written", f"{r['logging_paced']['predictions_accepted_per_s']:,.0f} / {r['logging_paced']['rows_written_per_s']:,.0f} predictions/s"),
        ("logging paced: backlog start / max / end", f"{r['logging_paced']['backlog_start']:.0f} / {r['logging_paced']['backlog_max']:.0f} / {r['logging_paced']['backlog_end']:.0f} records"),
        ("hot reload: all workers on new version", f"{h['seconds_until_all_workers_new']:.2f} s (poll {h['poll_seconds']} s), {h['failed_requests']} failed of {h['requests']}"),
        ("PG outage: failed requests", f"{p['failed_requests']} of {p['requests']} ({p['outage_seconds']:.1f} s down)"),
        ("PG outage: p50 / p99 before vs during", f"{p['p50_ms_before']:.2f} / {p['p99_ms_before']:.2f} vs {p['p50_ms_outage']:.2f} / {p['p99_ms_outage']:.2f} ms"),
        ("PG outage: acknowledged vs rows after drain", f"{p['predictions_acknowledged']} vs {p['rows_after_drain']} (backlog peak {p['backlog_peak_records']:.0f}, drained {p['seconds_to_drain_after_restart']:.1f} s after restart)"),
        ("SIGKILL: acknowledged vs rows (acked ids found)", f"{k['predictions_acknowledged']} vs {k['rows_in_postgres']} ({k['acknowledged_ids_in_postgres']}), {k['failed_requests']} failed"),
    ]  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
