"""One raw transaction's features in process, on a real redis-server: wall p50 and CPU per
request of the worker and of redis-server, and the bytes Redis returns per request.

The world of ``bench/online_phase.py`` (31 days x 10,000 generated raw transactions, the first
300,000 appended to the state in batches of 10,000, label cache empty), then ``N`` single
transactions one at a time through :meth:`OnlineFeatures.columns`. Run it from two checkouts
one after the other (A/B) on the same machine; the load average is printed with the figures.

    PYTHONPATH=$PWD .venv/bin/python bench/online_single.py [--out bench/results/online_single.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

N = 2000
HISTORY = 300_000


def measure(seed: int = 0) -> dict[str, float]:
    """The figures (see the module docstring)."""
    from fraud_lib import pgserver, redisserver
    from fraud_lib.features.offline import epoch_seconds
    from fraud_lib.features.online import Batch, OnlineFeatures
    from fraud_lib.features.online_labels import LabelCache
    from fraud_lib.features.online_store import RedisEventStore
    from fraud_lib.features.raw_data import generate_raw
    from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
    from fraud_lib.schema import FeatureSchema

    spec = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-online-single-"))
    rs = redisserver.EmbeddedRedis(tmp, pgserver.free_port())
    rs.start()
    try:
        r = rs.client(timeout=30)
        raw = generate_raw(31, total_rows=310_000, fraud_rate=0.002, seed=seed)
        raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
        t = epoch_seconds(raw["timestamp"], "timestamp")
        cols = {c: raw[c].tolist() for c in raw.columns}

        def batch(lo: int, hi: int) -> Batch:
            return Batch.from_columns(spec, {c: v[lo:hi] for c, v in cols.items()}, t[lo:hi])

        store = RedisEventStore(r, spec, prefix="single:")
        computer = OnlineFeatures(spec, store, LabelCache())
        for i in range(0, HISTORY, 10_000):
            computer.columns(batch(i, i + 10_000))
        returned: list[int] = []
        read_append = store.read_append_raw

        def counted(keys: list[str], appends: list[bytes]) -> list[bytes | None]:
            blobs = read_append(keys, appends)
            returned.append(sum(len(b or b"") for b in blobs))
            return blobs

        store.read_append_raw = counted  # type: ignore[method-assign]
        wall = []
        cpu0, redis0 = time.process_time(), r.info("cpu")
        for i in range(HISTORY, HISTORY + N):
            t0 = time.perf_counter()
            computer.columns(batch(i, i + 1))
            wall.append(time.perf_counter() - t0)
        cpu1, redis1 = time.process_time(), r.info("cpu")
        redis_cpu = sum(redis1[k] - redis0[k] for k in ("used_cpu_user", "used_cpu_sys"))
        r.close()
    finally:
        rs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "single_p50_ms": round(float(np.median(wall)) * 1000, 3),
        "worker_cpu_ms_per_request": round((cpu1 - cpu0) / N * 1000, 3),
        "redis_cpu_ms_per_request": round(redis_cpu / N * 1000, 3),
        "redis_bytes_per_request_p50": float(np.median(returned)),
        "load": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                        "online_single.json")  # fmt: skip
    args = parser.parse_args()
    figures = measure()
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
