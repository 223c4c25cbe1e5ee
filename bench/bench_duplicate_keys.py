"""What refusing repeated JSON keys costs on the scoring path (in process, one core).

    .venv/bin/python bench/bench_duplicate_keys.py            # ~30 s
    .venv/bin/python bench/bench_duplicate_keys.py --rows 1000

For a batch of ``--rows`` transactions (the ULB schema: 29 features, a 32-hex-digit id and
Time each) and for one transaction, it times the decode the service does (the typed batch
decode, and the generic decode that one transaction, a batch for a categorical schema and a
batch with a problem take), the part of it that is the quote count (the check every body
pays), and the exact check (``json`` keeping every pair), which a body pays
only when the count finds a surplus; printed as a table and written to
``bench/results/duplicate_keys.json`` with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from fraud_lib.schema import FeatureSchema  # noqa: E402
from fraud_lib.unique_keys import body_quotes, duplicate_keys, implied_quotes  # noqa: E402
from serving import typed_batch  # noqa: E402
from serving.validation import decode_json  # noqa: E402

SCHEMA = FeatureSchema()


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def _records(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, len(SCHEMA.features))).tolist()
    return [
        {
            "transaction_id": uuid.uuid4().hex,
            "Time": float(i),
            **dict(zip(SCHEMA.features, row, strict=True)),
        }
        for i, row in enumerate(values)
    ]


def _batch_check(body: bytes) -> Callable[[], Any]:
    """The added work of the typed path: the field reads of the count, then the count."""
    typed = typed_batch._typed_batch(SCHEMA)
    assert typed is not None
    records = typed.decoder.decode(body).transactions

    def check() -> bool:
        ids = list(map(typed.transaction_id, records))
        events = list(map(typed.event_time, records))
        times = list(map(typed.time, records))
        return typed_batch._accounted(body, typed, records, ids, events, times)

    assert check()
    return check


def measure(rows: int, repeat: int) -> list[dict[str, Any]]:
    """One result row per (body, step)."""
    records = _records(rows)
    batch = json.dumps({"transactions": records}).encode()
    one = json.dumps(records[0]).encode()
    value, generic = decode_json(one), decode_json(batch)
    cases = [
        (f"batch of {rows:,}", "typed decode (service path, check included)",
         lambda: typed_batch.decode_batch(batch, SCHEMA, rows), repeat),
        (f"batch of {rows:,}", "quote count (in the line above)", _batch_check(batch), repeat),
        (f"batch of {rows:,}", "generic decode (categorical schemas; check included)",
         lambda: decode_json(batch), repeat),
        (f"batch of {rows:,}", "quote count (in the line above)",
         lambda: body_quotes(batch) == implied_quotes((generic,)), repeat),
        (f"batch of {rows:,}", "exact check (only on a surplus)",
         lambda: duplicate_keys(batch), max(3, repeat // 5)),
        ("one transaction", "generic decode (service path, check included)",
         lambda: decode_json(one), repeat * 200),
        ("one transaction", "quote count (in the line above)",
         lambda: body_quotes(one) == implied_quotes((value,)), repeat * 200),
        ("one transaction", "exact check (only on a surplus)",
         lambda: duplicate_keys(one), repeat * 200),
    ]  # fmt: skip
    return [
        {"body": body, "step": step, "bytes": len(batch if "batch" in body else one),
         "median_ms": _median_ms(fn, n)}
        for body, step, fn, n in cases
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    results = measure(args.rows, args.repeat)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'body':<18} {'step':<48} {'median':>12}")
    for r in results:
        shown = (
            f"{r['median_ms']:.3f} ms"
            if r["median_ms"] >= 0.1
            else f"{r['median_ms'] * 1e3:.1f} us"
        )
        print(f"{r['body']:<18} {r['step']:<48} {shown:>12}")
    out = BENCH / "results" / "duplicate_keys.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"load_average": load, "rows": args.rows, "results": results}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
