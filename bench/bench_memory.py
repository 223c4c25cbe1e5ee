"""Memory of a scoring worker (issue 17, item 3): what its resident set is made of, and whether
it grows over many batches of 10,000.

    .venv/bin/python bench/bench_memory.py                 # 200 batches, ~2 min on 2 cores
    .venv/bin/python bench/bench_memory.py --batches 100 --format arrow   # Arrow bodies only
    .venv/bin/python bench/bench_memory.py --malloc-defaults             # glibc's malloc defaults
    .venv/bin/python bench/bench_memory.py --in-process    # FRAUD_MODEL_FILES=off (the old loader)

Starts everything on 127.0.0.1 (an embedded Postgres in a temp dir, a temp MLflow store, a model
trained on generated data and promoted, gunicorn with 1 worker and FRAUD_MODEL_FILES=on, the
default) and stops it by pid at the end.
Measures the worker's resident set from /proc (``smaps``: by kind of mapping) when ready, after
warm-up and every 10 batches of 10,000 (JSON and Arrow in turn), and the resident set of a fresh
interpreter after importing what a worker imports (the imports alone). Results: a table on
stdout and ``bench/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from harness import Gunicorn, champion_world, stop_postgres  # noqa: E402
from loadgen import build_request, single  # noqa: E402
from serving_inprocess import ARROW_STREAM, arrow_stream  # noqa: E402

MB = 1024 * 1024
_KINDS = (  # (kind, pattern of the mapping's path), first match wins; no path: anonymous
    ("fraudloop's compiled kernels", re.compile(r"_tree_kernel|features/_kernels")),
    ("pyarrow", re.compile(r"pyarrow")),
    ("numpy / scipy / scikit-learn", re.compile(r"numpy|scipy|sklearn|scikit_learn")),
    ("other shared libraries", re.compile(r"\.so")),
)
IMPORTS = "import serving.app, serving.api, serving.ops, serving.docs, serving.model_files"
IN_PROCESS_IMPORTS = IMPORTS + ", fraud_lib.registry, mlflow.sklearn, sklearn.ensemble"


def smaps(pid: int) -> dict[str, float]:
    """The resident MB of ``pid`` by kind of mapping, and in all (``total``)."""
    out: dict[str, float] = defaultdict(float)
    kind = "anonymous (heap, Python objects, arrays)"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            path = fields[5] if len(fields) > 5 else ""
            kind = next((k for k, rx in _KINDS if path.startswith("/") and rx.search(path)),
                        "other files" if path.startswith("/") else
                        "anonymous (heap, Python objects, arrays)")  # fmt: skip
        elif fields[0] == "Rss:":
            out[kind] += int(fields[1]) / 1024
            out["total"] += int(fields[1]) / 1024
    return dict(out)


def imports_rss(env: dict[str, str], imports: str) -> float:
    """Resident MB of a fresh interpreter after the worker's ``imports``."""
    code = f"{imports}\nprint(open('/proc/self/statm').read().split()[1])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    return int(out.stdout.split()[-1]) * os.sysconf("SC_PAGE_SIZE") / MB


def setup(tmp: Path) -> tuple[Any, Any, Any]:
    """(Postgres, settings, the frame to score) with a promoted champion."""
    return champion_world(tmp, days=10, rows_per_day=10_000, run_name="memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument(
        "--format",
        choices=("both", "json", "arrow"),
        default="both",
        help="the batches' body: JSON and Arrow in turn (default), or one of them",
    )
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="glibc's malloc defaults instead of serving.malloc's settings",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="load the model in the worker (FRAUD_MODEL_FILES=off) instead of through files",
    )
    parser.add_argument("--out", default=str(BENCH / "results" / "memory.json"))
    args = parser.parse_args()
    from fraud_lib import pgserver
    from fraud_lib.schema import FeatureSchema

    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-memory-"))
    tmp.chmod(0o755)
    pg, service = None, None
    results: dict[str, Any] = {"load_avg_start": os.getloadavg(), "samples": []}
    try:
        pg, settings, frame = setup(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "PROMETHEUS_"))}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), FRAUD_STATE_DIR=str(tmp / "state"),
                   FRAUD_DATABASE_URL=pg.url, MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
                   FRAUD_MLFLOW_ARTIFACTS=str(settings.mlflow_artifact_dir),
                   FRAUD_SPOOL_DIR=str(settings.spool_dir),
                   FRAUD_MODEL_FILES="off" if args.in_process else "on")  # fmt: skip
        if args.malloc_defaults:  # any malloc tuning in the environment: serving.malloc keeps off
            env["GLIBC_TUNABLES"] = "glibc.malloc.check=0"  # glibc's default value
        results["imports_only_mb"] = imports_rss(
            env, IN_PROCESS_IMPORTS if args.in_process else IMPORTS
        )
        results["options"] = {"format": args.format, "malloc_defaults": args.malloc_defaults,
                              "in_process": args.in_process}  # fmt: skip
        port = pgserver.free_port()
        argv = [sys.executable, "-m", "gunicorn", "-c", "python:serving.gunicorn_conf",
                "-b", f"127.0.0.1:{port}", "-w", "1", "serving.wsgi:app"]  # fmt: skip
        service = Gunicorn("memory", argv, env, tmp / "gunicorn.log")
        frame = frame.iloc[:10_000]
        records = frame.to_dict("records")
        probe = build_request(port, "/v1/score", json.dumps(records[0]).encode())
        service.wait_ready(port, probe, 1)
        worker = service.workers()[0]
        results["master_mb"] = smaps(service.proc.pid)["total"]
        results["ready"] = smaps(worker)
        reqs = [
            build_request(port, "/v1/score", json.dumps({"transactions": records}).encode()),
            build_request(port, "/v1/score", arrow_stream(frame, FeatureSchema()), ARROW_STREAM),
        ]
        for i in range(1, args.batches + 1):
            body = i % 2 if args.format == "both" else int(args.format == "arrow")
            status, seconds, _ = single(port, reqs[body])
            assert status == 200, status
            if i % 10 == 0:
                results["samples"].append({"batches": i, "seconds": seconds, **smaps(worker)})
                print(f">> {i} batches: {results['samples'][-1]['total']:.0f} MB", file=sys.stderr)
        results["after"] = smaps(worker)
    finally:
        if service is not None:
            service.stop()
        if pg is not None:
            stop_postgres(pg)
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    ready, after, samples = r["ready"], r["after"], r["samples"]
    print(f"{'resident MB of the worker':46}  {'ready':>8}  {'after':>8}")
    for kind in sorted(set(ready) | set(after), key=lambda k: (k == "total", k)):
        print(f"{kind:46}  {ready.get(kind, 0):8.0f}  {after.get(kind, 0):8.0f}")
    print(f"imports alone (fresh interpreter): {r['imports_only_mb']:.0f} MB; "
          f"master: {r['master_mb']:.0f} MB")  # fmt: skip
    totals = [s["total"] for s in samples]
    print(f"over {samples[-1]['batches']} batches: {totals[0]:.0f} MB after 10, min {min(totals):.0f}, "
          f"max {max(totals):.0f}, last {totals[-1]:.0f}")  # fmt: skip
    print(f"options {r['options']}; load average {r['load_avg_start']} at start, "
          f"{r['load_avg_end']} at the end")  # fmt: skip


if __name__ == "__main__":
    main()
