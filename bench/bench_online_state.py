"""Which store holds the online feature state: Postgres or Redis, measured (issue 14, step 1).

    .venv/bin/python bench/bench_online_state.py            # ~1 min on 2 cores
    .venv/bin/python bench/bench_online_state.py --days 5   # shorter

Both candidates hold the same per-entity event history, loaded from ``fraud generate --kind
raw`` traffic (``--days`` x 10,000 a day, customer and terminal entities), and serve the online
computer's access pattern: for each raw transaction, read the events of its two entities inside
the longest window (30 days) and append the transaction.

* **Postgres**: table ``(entity_key, event_time, id, amount)``, primary key on the first three;
  one round trip per request (a CTE that inserts the event and selects both histories), commit
  with ``synchronous_commit`` on (acknowledged events must survive).
* **Redis**: a sorted set per entity key, score = event time, member = ``id|amount``; one
  pipelined round trip of ZRANGEBYSCORE x2 + ZADD x2 + ZREMRANGEBYSCORE x2 (window expiry).

Reported per store: p50/p99 of one transaction (one client), rows/s of a batch of 10,000 (read
and append in one round trip), and memory per stored event (Postgres: table + index size;
Redis: ``used_memory`` delta). Table on stdout, JSON in ``bench/results/online_state.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
WINDOW = 30 * 86_400.0
SINGLE_REQUESTS = 2000
BATCH = 10_000


def say(msg: str) -> None:
    print(f">> {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 3)


def events(days: int) -> tuple[list[tuple], list[tuple]]:
    """(history, probes): rows (time, id, customer, terminal, amount); probes come after."""
    from fraud_lib.features.raw_data import generate_raw

    raw = generate_raw(days + 1, total_rows=(days + 1) * 10_000, fraud_rate=0.002, seed=3)
    raw = raw.sort_values("timestamp")
    rows = list(
        zip(raw["timestamp"].astype(float), raw["transaction_id"].astype(str),
            "customer:" + raw["customer_id"].astype(str),
            "terminal:" + raw["terminal_id"].astype(str), raw["amount"].astype(float),
            strict=True)
    )  # fmt: skip
    split = days * 10_000
    return rows[:split], rows[split:]


class PostgresState:
    """The Postgres candidate, on a fresh embedded server."""

    def __init__(self, tmp: Path) -> None:
        import psycopg

        from fraud_lib import pgserver

        self.pg = pgserver.EmbeddedPostgres(tmp / "pg", pgserver.free_port())
        self.pg.ensure_running()
        url = self.pg.url.replace("postgresql+psycopg://", "postgresql://")
        self.conn = psycopg.connect(url)
        self.conn.execute(
            "CREATE TABLE online_events (entity_key text, event_time float8, id text, "
            "amount float8, PRIMARY KEY (entity_key, event_time, id))"
        )
        self.conn.commit()

    def load(self, rows: list[tuple]) -> None:
        with self.conn.cursor() as cur, cur.copy("COPY online_events FROM STDIN") as copy:
            for t, i, c, term, a in rows:
                copy.write_row((c, t, i, a))
                copy.write_row((term, t, i, a))
        self.conn.commit()
        self.conn.execute("ANALYZE online_events")
        self.conn.commit()

    def one(self, row: tuple) -> int:
        t, i, c, term, a = row
        got = self.conn.execute(
            "WITH ins AS (INSERT INTO online_events VALUES (%s, %s, %s, %s), (%s, %s, %s, %s)) "
            "SELECT entity_key, event_time, id, amount FROM online_events "
            "WHERE entity_key = ANY(%s) AND event_time > %s AND event_time < %s",
            (c, t, i, a, term, t, i, a, [c, term], t - WINDOW, t),
        ).fetchall()
        self.conn.commit()
        return len(got)

    def batch(self, rows: list[tuple]) -> int:
        keys = [r[2] for r in rows] + [r[3] for r in rows]
        times = [r[0] for r in rows] * 2
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT q.k, e.event_time, e.id, e.amount FROM unnest(%s::text[], %s::float8[]) "
                "AS q(k, t) JOIN online_events e ON e.entity_key = q.k "
                "AND e.event_time > q.t - %s AND e.event_time < q.t",
                (keys, times, WINDOW),
            )
            got = cur.fetchall()
            with cur.copy("COPY online_events FROM STDIN") as copy:
                for t, i, c, term, a in rows:
                    copy.write_row((c, t, i, a))
                    copy.write_row((term, t, i, a))
        self.conn.commit()
        return len(got)

    def bytes_used(self) -> int:
        return int(
            self.conn.execute("SELECT pg_total_relation_size('online_events')").fetchone()[0]
        )

    def close(self) -> None:
        self.conn.close()
        self.pg.stop(mode="immediate")


class RedisState:
    """The Redis candidate: Debian's redis-server started here, stopped by its pid."""

    def __init__(self, tmp: Path) -> None:
        import redis

        from fraud_lib.pgproc import free_port

        port, password = free_port(), secrets.token_urlsafe(24)
        conf = tmp / "redis.conf"
        conf.write_text(
            f'bind 127.0.0.1\nport {port}\ndir {tmp}\nsave ""\nappendonly no\n'
            f"requirepass {password}\n"
        )
        conf.chmod(0o600)
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL)
        self.r = redis.Redis(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.base = int(self.r.info("memory")["used_memory"])

    def load(self, rows: list[tuple]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for n, (t, i, c, term, a) in enumerate(rows):
            member = f"{i}|{a!r}"
            pipe.zadd(c, {member: t})
            pipe.zadd(term, {member: t})
            if n % 5000 == 4999:
                pipe.execute()
        pipe.execute()

    def _queue(self, pipe, row: tuple) -> None:
        t, i, c, term, a = row
        member = f"{i}|{a!r}"
        for key in (c, term):
            pipe.zrangebyscore(key, f"({t - WINDOW!r}", f"({t!r}", withscores=True)
        for key in (c, term):
            pipe.zadd(key, {member: t})
            pipe.zremrangebyscore(key, "-inf", f"({t - WINDOW!r}")

    def one(self, row: tuple) -> int:
        pipe = self.r.pipeline(transaction=False)
        self._queue(pipe, row)
        out = pipe.execute()
        return len(out[0]) + len(out[1])

    def batch(self, rows: list[tuple]) -> int:
        pipe = self.r.pipeline(transaction=False)
        for row in rows:
            self._queue(pipe, row)
        out = pipe.execute()
        return sum(len(out[k]) + len(out[k + 1]) for k in range(0, len(out), 6))

    def bytes_used(self) -> int:
        return int(self.r.info("memory")["used_memory"]) - self.base

    def close(self) -> None:
        self.r.close()
        self.proc.terminate()
        self.proc.wait(10)


def measure(store, history: list[tuple], probes: list[tuple]) -> dict[str, float]:
    """Load the history, then time single transactions and one batch of 10,000."""
    started = time.perf_counter()
    store.load(history)
    load_s = time.perf_counter() - started
    stored = 2 * len(history)
    per_event = store.bytes_used() / stored
    lat, read = [], 0
    for row in probes[:SINGLE_REQUESTS]:
        t0 = time.perf_counter()
        read += store.one(row)
        lat.append(time.perf_counter() - t0)
    chunk = probes[SINGLE_REQUESTS : SINGLE_REQUESTS + BATCH]
    t0 = time.perf_counter()
    batch_read = store.batch(chunk)
    batch_s = time.perf_counter() - t0
    return {
        "stored_events": stored,
        "load_seconds": round(load_s, 2),
        "bytes_per_event": round(per_event, 1),
        "single_p50_ms": pct(lat, 50),
        "single_p99_ms": pct(lat, 99),
        "events_read_per_request": round(read / len(lat), 1),
        "batch_rows_per_s": round(len(chunk) / batch_s),
        "batch_events_read": batch_read,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10, help="history at 10,000 a day")
    parser.add_argument("--out", default=str(BENCH / "results" / "online_state.json"))
    args = parser.parse_args()
    history, probes = events(args.days)
    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-state-bench-"))
    tmp.chmod(0o755)
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}}
    for name, cls in (("redis", RedisState), ("postgres", PostgresState)):
        say(f"{name}: loading {len(history):,} transactions (x2 entities)")
        store = cls(tmp)
        try:
            results[name] = measure(store, history, probes)
        finally:
            store.close()
    results["machine"]["load_avg_end"] = os.getloadavg()
    keys = [k for k in results["redis"] if k != "batch_events_read"]
    print(f"{'':26}{'redis':>12}{'postgres':>12}")
    for k in keys:
        print(f"{k:26}{results['redis'][k]:>12}{results['postgres'][k]:>12}")
    print(f"load average: {results['machine']['load_avg_end']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
