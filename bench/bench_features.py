"""Behavioral features benchmark (issue 14): the offline builder, then the online computer.

    .venv/bin/python bench/bench_features.py                            # both, ~3 min
    .venv/bin/python bench/bench_features.py --offline-only             # 1M rows, ~1 min
    .venv/bin/python bench/bench_features.py --online-only              # online + HTTP phases
    .venv/bin/python bench/bench_features.py --http-only                # see http_phase.py, ~3 min

Generates ``--rows`` raw transactions (``fraud generate --kind raw`` world: 100 days at 10,000 a
day by default), then times one :func:`fraud_lib.features.offline.build_features` call with the
shipped ``raw_schema.yaml`` (every feature kind: calendar, customer and terminal windows, time
since previous, label risk with and without delay) and reports the process's peak RSS. Results:
a table on stdout and ``bench/results/features.json``. The in-process online phase is described
in ``bench/online_phase.py``, the gunicorn phase (8 clients, the ULB baseline, the cross-worker
visibility lag, a parity replay) in ``bench/http_phase.py``. A phase that is skipped keeps the
keys already in the JSON file.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ONLINE_KEYS = (
    "single_p50_ms", "single_floor_ms", "single_p99_ms_8", "throughput_rps",
    "throughput_rps_plain", "batch_rows_per_s", "state_bytes_per_event", "rebuild_seconds",
    "visibility_lag_p50_ms", "visibility_lag_p99_ms", "parity_rows", "parity_max_rel_diff",
)  # fmt: skip


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


def rss_mb(peak: bool) -> float:
    """Peak RSS of this process (ru_maxrss, KiB on Linux) or the current RSS, in MB."""
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def offline(rows: int, days: int, seed: int) -> dict[str, float]:
    """Time one build over ``rows`` generated raw transactions."""
    from fraud_lib.features.offline import build_features
    from fraud_lib.features.raw_data import generate_raw
    from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
    from fraud_lib.schema import FeatureSchema

    spec = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
    say(f"generating {rows:,} raw transactions over {days} days")
    started = time.perf_counter()
    raw = generate_raw(days, total_rows=rows, fraud_rate=0.002, seed=seed)
    generate_s = time.perf_counter() - started
    before = rss_mb(peak=False)
    say(f"building {len(spec.output_columns)} features")
    started = time.perf_counter()
    features = build_features(spec, raw)
    build_s = time.perf_counter() - started
    return {
        "offline_rows": len(raw),
        "offline_features": features.shape[1],
        "offline_seconds": round(build_s, 2),
        "offline_rows_per_s": round(len(raw) / build_s),
        "offline_peak_rss_mb": round(rss_mb(peak=True), 1),
        "offline_rss_before_build_mb": round(before, 1),
        "generate_seconds": round(generate_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline-only", action="store_true", help="only the offline builder")
    parser.add_argument("--online-only", action="store_true", help="only the online phases")
    parser.add_argument("--http-only", action="store_true", help="only the gunicorn phase")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of each 8-client load"
    )
    parser.add_argument("--parity-rows", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "features.json")
    args = parser.parse_args()
    results: dict[str, object] = dict.fromkeys(ONLINE_KEYS)
    if args.out.exists():
        results.update(json.loads(args.out.read_text()))
    if not (args.online_only or args.http_only):
        results.update(offline(args.rows, args.days, args.seed))
    if not (args.offline_only or args.http_only):
        from online_phase import online

        results.update(online(args.seed, say))
    if not args.offline_only:
        from http_phase import http

        results.update(http(args.seed, say, args.duration, args.parity_rows))
    results.pop("note", None)
    results["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    width = max(len(k) for k in results)
    for key, value in results.items():
        if value is not None:
            print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
