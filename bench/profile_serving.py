"""Sampling profile of ``fraud serve``'s single-transaction path under load (issue 17).

    .venv/bin/python bench/profile_serving.py               # 8 clients, 10 s of samples
    .venv/bin/python bench/profile_serving.py --seconds 20 --clients 1

Starts an embedded Postgres and a champion (as ``bench/bench_memory.py``), then gunicorn
(the project's settings, 2 workers) under ``py-spy record --subprocesses`` (attaching to a
running pid is refused on this machine; a child is not), loads it with single transactions
(``bench/loadgen.py``) and stops everything by pid. py-spy samples the workers
at ``--rate`` Hz, keeping only the thread that holds the GIL (``--gil``: the CPU the Python
side spends; without it, threads waiting for the GIL after a ``send`` look busy); the samples of the load window that fall in a request are sorted into the
parts of the path by the first matching frame (innermost first), and each part's CPU time per
request is its samples / rate / requests. Prints the table and writes
``bench/results/profile_serving.json`` (the raw stacks, ~15 MB, stay in the temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from harness import Gunicorn, champion_world, gunicorn_argv, service_env, summarize  # noqa: E402
from loadgen import build_request, run_load, single  # noqa: E402

from fraud_lib.procs import child_pids  # noqa: E402

# (part, frame substrings): a request sample goes to the first part one of whose substrings
# occurs in its stack, frames searched from the innermost out.
PARTS = (
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("redis client (round trip, parse)", ("redis/",)),
    ("behavioral features (fraud_lib/features)", ("fraud_lib/features/",)),
    ("logging", ("logging/__init__.py",)),
    ("spool encode + append", ("serving/spool.py", "prediction_log.py")),
    ("validation + JSON decode", ("serving/typed_batch.py", "serving/validation.py",
                                  "serving/raw_scoring.py")),
    ("scoring (compiled trees)", ("serving/scoring.py", "serving/trees.py", "_tree_kernel")),
    ("score view (ids, risk, answer encode)", ("serving/api.py",)),
    ("request hooks (ids, timers)", ("serving/app.py",)),
    ("Flask / werkzeug", ("flask/", "werkzeug/")),
    ("gunicorn (parse, write, loop)", ("gunicorn/", "buffered_worker.py", "framing.py",
                                       "request_body.py")),
)  # fmt: skip
IN_REQUEST = ("handle_request", "handle (")
# The samples outside requests, by thread (the first part whose substring is in the stack).
START_UP = "start-up (imports, model load, compile; seconds in all)"
OUTSIDE = (
    (START_UP, ("load_wsgi", "post_worker_init")),
    ("prediction-log shipper (spool read, decode, COPY)", ("_run (serving/prediction_log.py",)),
    ("model poller", ("_poll (serving/model_holder.py",)),
    ("label cache refresh", ("_refresher (serving/raw_scoring.py",)),
    ("event loop (buffered worker: accept, read, framing)", ("gunicorn/workers/",)),
)


def part_of(stack: str) -> str | None:
    """The part of the path a collapsed stack belongs to; None if not in a request."""
    if not any(marker in stack for marker in IN_REQUEST):
        return None
    frames = stack.split(";")[::-1]
    for frame in frames:
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return "other"


def outside_part(stack: str) -> str:
    """The thread or activity of a sample outside requests."""
    for part, needles in OUTSIDE:
        if any(n in stack for n in needles):
            return part
    return "other"


def parse_raw(path: Path) -> tuple[Counter, Counter, Counter]:
    """(samples per part, samples per innermost request frame, samples outside requests per
    thread or activity)."""
    parts: Counter = Counter()
    leaves: Counter = Counter()
    outside: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        part = part_of(stack)
        if part is None:
            outside[outside_part(stack)] += int(count)
            continue
        parts[part] += int(count)
        leaves[stack.split(";")[-1]] += int(count)
    return parts, leaves, outside


def _plain_world(tmp: Path) -> tuple[Any, dict[str, str], list[dict], list[Any]]:
    """(Postgres, service env, ULB transactions, nothing else to stop)."""
    pg, settings, later = champion_world(tmp, 3, 5000, "profile")
    return pg, service_env(tmp, pg.url, settings), later.to_dict("records"), []


def _raw_world(tmp: Path) -> tuple[Any, dict[str, str], list[dict], list[Any]]:
    """(Postgres, service env, raw transactions, the redis-server): a behavioral champion with
    its state in a real redis-server, as bench_features.py's HTTP phase."""
    from http_phase import LABEL_REFRESH_SECONDS, RAW_FIELDS, _raw_settings

    from fraud_lib import pgserver, redisserver
    from fraud_lib.features.parity import parity_world

    pg = pgserver.EmbeddedPostgres(tmp / "pg", pgserver.free_port())
    pg.ensure_running()
    rs = redisserver.EmbeddedRedis(tmp, pgserver.free_port())
    rs.start()
    settings, _ = _raw_settings(tmp / "raw", pg.url)
    env = service_env(tmp / "raw", pg.url, settings)
    env.update(FRAUD_REDIS_URL=rs.url, FRAUD_LABEL_REFRESH_SECONDS=str(LABEL_REFRESH_SECONDS))
    world = parity_world(60_000, 1, 14, seed=11, now=time.time())
    return pg, env, world[list(RAW_FIELDS)].to_dict("records"), [rs]


def profile(args: argparse.Namespace, tmp: Path, raw: Path) -> dict[str, Any]:
    """Start the profiled service, load it, stop it; the load's summary."""
    from fraud_lib import pgserver

    pg, env, records, others = (_raw_world if args.raw else _plain_world)(tmp)
    try:
        port = pgserver.free_port()
        spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses",
               "--nonblocking", "--gil", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--"]  # fmt: skip
        svc = Gunicorn("profiled", spy + gunicorn_argv(port, "serving.wsgi:app"), env,
                       tmp / "gunicorn.log")  # fmt: skip
        # raw transactions are not repeated (a repeated id is a retry): one request each
        count = len(records) if args.raw else 500
        reqs = [build_request(port, "/v1/score", json.dumps(r).encode()) for r in records[:count]]
        warm, reqs = (reqs[:5000], reqs[5000:]) if args.raw else (reqs, reqs)
        try:
            svc.proc_master = wait_master(svc)  # type: ignore[attr-defined]
            wait_ready(svc.proc_master, port, warm[0])  # type: ignore[attr-defined]
            run_load(port, warm, clients=args.clients, duration=3)  # warm-up
            processes = {"postgres (every server process)": [pg.pid, *child_pids(pg.pid)],
                         "gunicorn workers (every thread)": child_pids(svc.proc_master)}  # type: ignore[attr-defined]  # fmt: skip
            for other in others:
                processes["redis-server"] = [other.pid]
            before = {name: cpu_seconds(pids) for name, pids in processes.items()}
            commits = pg_commits(pg.url)
            rows = run_load(port, reqs, clients=args.clients, duration=args.seconds)
            used = {name: cpu_seconds(pids) - before[name] for name, pids in processes.items()}
            time.sleep(1.5)  # Postgres publishes a busy backend's statistics within ~1 s
            commits = [b - a for a, b in zip(commits, pg_commits(pg.url), strict=True)]
        finally:
            stop_profiled(svc)
        load = summarize(rows, args.seconds)
        load["process_cpu_ms_per_request"] = {n: s / load["ok"] * 1000 for n, s in used.items()}
        load["commits_per_s"] = commits[0] / args.seconds
        load["rows_per_commit"] = commits[1] / max(1, commits[0])
        return load
    finally:
        for other in others:
            other.stop()
        pg.stop()


def pg_commits(url: str) -> list[int]:
    """(transactions committed, rows inserted) in the database so far (pg_stat_database)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT xact_commit, tup_inserted FROM pg_stat_database "
                                       "WHERE datname = current_database()")).one()  # fmt: skip
    finally:
        engine.dispose()
    return [int(row[0]), int(row[1])]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def wait_master(svc: Gunicorn, timeout: float = 60) -> int:
    """The gunicorn master's pid: py-spy's child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = svc.workers()
        if children:
            return children[0]
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not start:\n{svc.log.read_text()[-3000:]}")


def wait_ready(master: int, port: int, probe: bytes, timeout: float = 120) -> None:
    """Until both workers run and the service answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(child_pids(master)) == 2 and single(port, probe, timeout=10)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the profiled service did not become ready")


def stop_profiled(svc: Gunicorn) -> None:
    """SIGTERM the gunicorn master (py-spy writes its file once its child is gone)."""
    master = getattr(svc, "proc_master", None)
    if master:
        os.kill(master, signal.SIGTERM)
    try:
        svc.proc.wait(90)
    except Exception:
        svc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second per thread")
    parser.add_argument(
        "--raw", action="store_true", help="raw transactions to a behavioral champion (Redis state)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.out = args.out or str(
        BENCH / "results" / ("profile_serving_raw.json" if args.raw else "profile_serving.json")
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-profile-"))
    tmp.chmod(0o755)
    load_start = os.getloadavg()
    try:
        load = profile(args, tmp, tmp / "stacks.txt")
        parts, leaves, outside = parse_raw(tmp / "stacks.txt")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # the samples cover warm-up and load: scale by every request the workers served in both
    served = load["ok"] * (1 + 3 / args.seconds)
    per_request = {p: n / args.rate / served * 1000 for p, n in parts.most_common()}
    outside_ms = {p: n / args.rate / (1 if p == START_UP else served / 1000)
                  for p, n in outside.most_common()}  # fmt: skip
    result = {"load": load, "clients": args.clients, "rate_hz": args.rate,
              "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
              "cpu_ms_per_request": per_request,
              "top_frames": {f: n for f, n in leaves.most_common(30)},
              "outside_requests_ms_per_request": outside_ms}  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def print_table(r: dict[str, Any]) -> None:
    """The profile as a table: CPU ms per request per part, then the top frames."""
    load = r["load"]
    print(f"{r['clients']} clients: {load['req_per_s']:.0f} req/s, p50 {load['p50_ms']:.2f} ms, "
          f"p99 {load['p99_ms']:.2f} ms; load average {r['load_avg_start']}")  # fmt: skip
    total = sum(r["cpu_ms_per_request"].values())
    print(f"{'part of the request (CPU in the worker)':45}  ms/request  share")
    for part, ms in r["cpu_ms_per_request"].items():
        print(f"{part:45}  {ms:10.3f}  {ms / total:5.0%}")
    print(f"{'total':45}  {total:10.3f}")
    print("\noutside requests (GIL held; ms per request of warm-up and load, start-up in s)")
    for part, ms in r["outside_requests_ms_per_request"].items():
        print(f"{part:55}  {ms:7.3f}")
    print("\nprocess CPU during the load window (ms per request, all threads, C code included)")
    for name, ms in load["process_cpu_ms_per_request"].items():
        print(f"{name:55}  {ms:7.3f}")
    print(f"Postgres: {load['commits_per_s']:.1f} commits/s, {load['rows_per_commit']:.0f} rows "
          "inserted per commit")  # fmt: skip
    print("\ntop innermost frames in requests (samples)")
    for frame, n in r["top_frames"].items():
        print(f"{n:7}  {frame}")


if __name__ == "__main__":
    main()
