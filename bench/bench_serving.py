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
This file sets up and runs phase 1; ``serving_phases.py`` has phases 2-6,
``serving_inprocess.py`` the in-process timings, ``serving_table.py`` the table.

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
import json
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from harness import (  # noqa: E402
    DEFAULT_CLASS,
    WORKER_CLASSES,
    Gunicorn,
    ceiling_share,
    gunicorn_argv,
    stop_postgres,
    summarize,
    temp_settings,
    truncate,
)
from loadgen import build_request, run_load  # noqa: E402
from serving_inprocess import floor_timings  # noqa: E402
from serving_phases import (  # noqa: E402
    Rig,
    batch_phase,
    hot_reload_phase,
    logging_phases,
    outage_phase,
    say,
    sigkill_phase,
)
from serving_table import finish  # noqa: E402

# fraud_lib (scikit-learn, MLflow) is imported inside the functions: the load generator's
# spawned processes re-import this module and should stay small and quick to start.


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
        results["default_worker_class"] = svc.worker_class()
        rig = Rig(port=port, svc=svc, engine=engine, pg=pg, settings=settings, schema=schema,
                  records=records, later=later, v1=v1, v2=v2, clients=args.clients, dur=dur,
                  quick=args.quick)  # fmt: skip
        results["batch_10k"] = batch_phase(rig)
        time.sleep(3)
        truncate(engine)
        results["logging"], results["logging_paced"] = logging_phases(rig)
        results["hot_reload"] = hot_reload_phase(rig)
        time.sleep(2)
        truncate(engine)
        results["pg_outage"] = outage_phase(rig)
        time.sleep(2)
        truncate(engine)
        results["sigkill"] = sigkill_phase(rig)
    finally:
        for service in services:
            service.stop()
        stop_postgres(pg)
        shutil.rmtree(tmp, ignore_errors=True)
    finish(results, args)


if __name__ == "__main__":
    main()
