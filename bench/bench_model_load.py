"""How long a worker takes to load a new model version (the part of a hot reload that is not
the poll interval), by loader, A/B interleaved in one run (issue 17):

    .venv/bin/python bench/bench_model_load.py --repeat 5

- ``artifacts``: the files logged with the version (``model_files/`` in its MLflow run), copied
  from the local artifact store, then the canary with the worker's kernel (the default);
- ``child``: the same version as if it had been logged without them: the export child imports
  MLflow, scikit-learn and pandas, unpickles the pipeline and writes the files;
- ``in-process``: ``FRAUD_MODEL_FILES=off``: MLflow loads the pipeline in a fresh interpreter
  (the imports a worker with that setting holds are counted, as for a worker's first load).

Each load starts from an empty state directory (nothing cached). A temp MLflow store on SQLite
with one model trained on generated data; no Postgres. Prints a table and writes
``bench/results/model_load.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from harness import temp_settings  # noqa: E402

UNUSED_DB = "postgresql://unused@127.0.0.1:1/unused"  # loading a model never connects
IN_PROCESS = """
import sys, time
t = time.perf_counter()
from fraud_lib.config import Settings
from fraud_lib import registry
from serving.scoring import prepare
prepare(registry.load_version(Settings.from_env(), sys.argv[1]))
print(time.perf_counter() - t)
"""


def _log_model(tmp: Path) -> tuple[Any, str]:
    from fraud_lib import registry
    from fraud_lib.data import generate
    from fraud_lib.schema import FeatureSchema
    from fraud_lib.train import train_model

    settings = temp_settings(tmp, UNUSED_DB)
    schema = FeatureSchema()
    history = schema.validate_frame(generate(4, rows_per_day=3000, seed=7, fraud_rate=0.004))
    ref = registry.log_model(train_model(history, schema), settings, run_name="bench-load")
    assert ref is not None
    return settings, ref.version


def _time_files(settings: Any, version: str, state: Path, *, child: bool) -> float:
    from serving.model_files import load_version, prepare_any, reader
    from serving.model_files.artifacts import fetch_logged_files

    reader.fetch_logged_files = (lambda *a: False) if child else fetch_logged_files
    start = time.perf_counter()
    served = prepare_any(load_version(replace(settings, state_dir=state), version))
    assert served.predictor == "compiled-trees"
    return time.perf_counter() - start


def _time_in_process(settings: Any, version: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "FRAUD_MLFLOW_ARTIFACTS": str(settings.mlflow_artifact_dir)}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", IN_PROCESS, version], env=env, check=True,
                          capture_output=True, text=True)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(BENCH / "results" / "model_load.json"))
    args = parser.parse_args()
    times: dict[str, list[float]] = {"artifacts": [], "child": [], "in-process": []}
    loads = []
    with tempfile.TemporaryDirectory(prefix="fraudloop-bench-load-") as tmp:
        settings, version = _log_model(Path(tmp))
        for i in range(args.repeat):
            for name in times:
                if name == "in-process":
                    seconds = _time_in_process(settings, version)
                else:
                    state = Path(tmp) / f"state-{name}-{i}"
                    seconds = _time_files(settings, version, state, child=name == "child")
                times[name].append(seconds)
            loads.append(Path("/proc/loadavg").read_text().split()[0])
    print(
        f"load a version from an empty state directory, {args.repeat} rounds A/B/C "
        f"interleaved, load average {', '.join(loads)}"
    )
    print(f"{'loader':<12} {'median s':>9} {'min s':>7} {'max s':>7}")
    rows = {}
    for name, values in times.items():
        rows[name] = {"median_s": statistics.median(values), "min_s": min(values),
                      "max_s": max(values), "runs_s": values}  # fmt: skip
        print(f"{name:<12} {rows[name]['median_s']:>9.2f} {min(values):>7.2f} {max(values):>7.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"loaders": rows, "load_average": loads}, indent=2))


if __name__ == "__main__":
    main()
