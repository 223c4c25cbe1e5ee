"""Phases 2-6 of bench/bench_serving.py, each against the running service of a :class:`Rig`:
batches of 10,000 (JSON and Arrow), prediction-log throughput, hot reload, a Postgres outage
and the SIGKILL of a worker, all under load from ``bench/loadgen.py``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from harness import (
    Gunicorn,
    metric_by_pid,
    metric_sum,
    pct,
    truncate,
    wait_backlog_below,
    wait_drain,
    wait_rows,
)
from loadgen import build_request, run_load, single
from serving_inprocess import ARROW_STREAM, arrow_stream, arrow_timings


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


@dataclass
class Rig:
    """The running service and what the phases need of the benchmark's world."""

    port: int
    svc: Gunicorn
    engine: Any
    pg: Any
    settings: Any
    schema: Any
    records: list[dict[str, Any]]
    later: Any  # the frame of ``records``
    v1: Any
    v2: Any
    clients: int
    dur: float
    quick: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def single_requests(rig: Rig) -> list[bytes]:
    """Single-transaction requests of the first 500 records (the load of phases 4-6)."""
    return [build_request(rig.port, "/v1/score", json.dumps(r).encode()) for r in rig.records[:500]]


def batch_phase(rig: Rig) -> dict[str, Any]:
    """(2) batches of 10,000, JSON and Arrow, one at a time and back to back."""
    from fraud_lib import store

    port, engine, records = rig.port, rig.engine, rig.records
    # Each request alone (sent 0.5 s after the previous one's predictions are in Postgres,
    # so the background COPY of the last batch does not share the 2 cores), then back to
    # back (the COPY of one batch runs during the next).
    body = json.dumps({"transactions": records[:10_000]}).encode()
    arrow_body = arrow_stream(rig.later.iloc[:10_000], rig.schema)
    batch_reqs = {
        "": build_request(port, "/v1/score", body),
        "arrow_": build_request(port, "/v1/score", arrow_body, ARROW_STREAM),
    }
    reps = 6 if rig.quick else 16
    out: dict[str, Any] = {"body_mb": len(body) / 1e6, "arrow_body_mb": len(arrow_body) / 1e6,
                            "arrow_in_process": arrow_timings(arrow_body, rig.schema)}  # fmt: skip
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
        out[mode] = {
            "median_s": float(np.median(lat)), "min_s": min(lat), "max_s": max(lat),
            "rows_per_s": 10_000 / float(np.median(lat)), "requests": len(lat),
        }  # fmt: skip
        if drains:
            out[mode]["logged_after_s"] = float(np.median(drains))
    say(f"batch: {out}")
    wait_backlog_below(rig.url, 1, 120)
    return out


def logging_phases(rig: Rig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(3) prediction-log throughput at full load, and paced at 90 % of its write rate."""
    from fraud_lib import store

    port, url, engine, records = rig.port, rig.url, rig.engine, rig.records
    dur = rig.dur
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
    full = logging_phase(4)
    say(f"logging: {full}")
    load_ended = time.time()
    full["backlog_drained_s"] = wait_backlog_below(url, 1000, 180) - load_ended
    full["drain_rows_per_s"] = full["backlog_end"] / max(full["backlog_drained_s"], 0.5)
    truncate(engine)
    if not full["rows_written_per_s"] > 0:
        raise RuntimeError(f"nothing reached Postgres at full load: {full}")
    paced = logging_phase(1, 0.9 * full["rows_written_per_s"] / 100)
    say(f"logging, paced: {paced}")
    return full, paced


def hot_reload_phase(rig: Rig) -> dict[str, Any]:
    """(4) the champion alias moved to v2 under load."""
    from fraud_lib import registry

    port, url = rig.port, rig.url
    settings, v1, v2 = rig.settings, rig.v1, rig.v2
    reqs = single_requests(rig)

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

    rows, marks = run_load(port, reqs, clients=rig.clients, duration=rig.dur + 2, during=promote)
    old_after = [r[0] for r in rows if r[3] == v1.version and r[0] >= marks["t_promote"]]
    out = {
        "seconds_until_all_workers_new": marks["t_all_workers"] - marks["t_promote"],
        "seconds_until_last_old_answer": (max(old_after) - marks["t_promote"]) if old_after else 0.0,
        "failed_requests": sum(1 for r in rows if r[2] != 200),
        "requests": len(rows),
        "poll_seconds": settings.poll_seconds,
    }  # fmt: skip
    say(f"hot reload: {out}")
    return out


def outage_phase(rig: Rig) -> dict[str, Any]:
    """(5) Postgres stopped for 10 s under load."""
    from fraud_lib import store

    port, url, engine, reqs = rig.port, rig.url, rig.engine, single_requests(rig)
    pg = rig.pg
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
        port, reqs, clients=rig.clients, duration=22, collect_ids=True, during=outage
    )
    acked = [i for r in rows if r[2] == 200 for i in r[4]]
    in_outage = [
        r[1] for r in rows if r[2] == 200 and marks["t_down"] <= r[0] <= marks["t_up_begin"]
    ]
    before = [r[1] for r in rows if r[2] == 200 and r[0] < marks["t_stop"]]
    wait_drain(engine, acked)
    out = {
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
    say(f"outage: {out}")
    return out


def sigkill_phase(rig: Rig) -> dict[str, Any]:
    """(6) a worker SIGKILLed under load, then a graceful stop."""
    from fraud_lib import store

    port, engine, reqs = rig.port, rig.engine, single_requests(rig)
    svc, settings = rig.svc, rig.settings
    time.sleep(2)
    truncate(engine)

    def kill(t_start: float) -> dict[str, Any]:
        time.sleep(max(0.0, t_start + 4 - time.time()))
        victim = svc.workers()[0]
        os.kill(victim, signal.SIGKILL)
        return {"victim": victim, "t_kill": time.time()}

    rows, _ = run_load(
        port, reqs, clients=rig.clients, duration=rig.dur, collect_ids=True, during=kill
    )
    acked = [i for r in rows if r[2] == 200 for i in r[4]]
    drain = wait_drain(engine, acked)
    out: dict[str, Any] = {
        "failed_requests": sum(1 for r in rows if r[2] != 200),
        "predictions_acknowledged": len(acked),
        "acknowledged_ids_in_postgres": store.count_predictions_by_ids(engine, acked),
        "rows_in_postgres": store.prediction_count(engine),
        "seconds_to_drain": drain,
    }  # fmt: skip
    say(f"sigkill: {out}")
    svc.stop()
    leftovers = [p.name for p in settings.spool_dir.glob("*") if p.is_file()]
    out["spool_files_after_graceful_stop"] = len(leftovers)
    return out
