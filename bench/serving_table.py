"""The table and the JSON file of bench/bench_serving.py."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from harness import DEFAULT_CLASS, WORKER_CLASSES


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
