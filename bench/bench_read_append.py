"""One transaction's read-and-append on a real redis-server: the event store's MULTI/EXEC
transaction against the Lua script it uses for many keys, client and server CPU per call.

Two keys (a customer's and a terminal's history, ~5,000 and ~3,500 bytes, as a raw transaction
reads), ``N`` calls of each variant, alternated ``ROUNDS`` times; the keys are reset every 500
calls so the histories do not grow. Client CPU is this process's, server CPU redis-server's
``INFO cpu``. Prints a table and writes ``bench/results/read_append.json``.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_read_append.py
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

N, ROUNDS = 5000, 2


def _server_cpu(client) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def measure() -> dict[str, dict[str, float]]:
    """Per variant: medians over the rounds of client / server CPU and wall time per call (us)."""
    import numpy as np

    from fraud_lib import pgserver, redisserver
    from fraud_lib.features.online_store import RedisEventStore
    from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
    from fraud_lib.schema import FeatureSchema

    spec = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-read-append-"))
    server = redisserver.EmbeddedRedis(tmp, pgserver.free_port())
    server.start()
    try:
        client = server.client()
        store = RedisEventStore(client, spec, prefix="bench:")
        keys = [store.key("customer", "c"), store.key("terminal", "t")]
        record = store.layout.pack(np.array([1.0]), np.array([1], np.uint64),
                                   {"amount": np.array([1.0])}).tobytes()  # fmt: skip
        variants = {
            "MULTI/EXEC on the thread's connection": lambda: store.read_append_raw(
                keys, [record, record]
            ),
            "Lua script through redis-py": lambda: store._read_append(
                keys=keys, args=[store.ttl_ms or 0, store.renew_below_ms, record, record]
            ),
        }
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, call in variants.items():
                runs[name].append(_time(client, keys, call))
        client.close()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        name: dict(zip(("client_cpu_us", "server_cpu_us", "wall_us"),
                       (round(float(np.median(col)), 1) for col in zip(*rows, strict=True)),
                       strict=True))
        for name, rows in runs.items()
    }  # fmt: skip


def _time(client, keys: list[str], call) -> tuple[float, float, float]:
    def reset() -> None:
        client.set(keys[0], b"x" * 5000)
        client.set(keys[1], b"y" * 3504)

    reset()
    server0, cpu0, wall0 = _server_cpu(client), time.process_time(), time.perf_counter()
    for i in range(N):
        call()
        if i % 500 == 499:
            reset()
    wall = time.perf_counter() - wall0
    cpu, server = time.process_time() - cpu0, _server_cpu(client) - server0
    return cpu / N * 1e6, server / N * 1e6, wall / N * 1e6


def main() -> None:
    figures = measure()
    print(f"{'variant (two keys, one call)':40}  client CPU  server CPU    wall  (us)")
    for name, f in figures.items():
        print(f"{name:40}  {f['client_cpu_us']:10.1f}  {f['server_cpu_us']:10.1f}  "
              f"{f['wall_us']:6.1f}")  # fmt: skip
    out = Path(__file__).parent / "results" / "read_append.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load": os.getloadavg()[0], **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
