"""The online phase of bench_features.py: the online computer on a real redis-server and Postgres,
in-process (no HTTP: gunicorn figures are not measured yet).

* ``single_floor_ms``: p50 of the model's predict of one row already computed (the floor), with
  the predictor the service picks for it (:func:`serving.scoring.prepare`: compiled trees for a
  HistGradientBoosting champion; ``single_predictor`` names it);
  ``single_p50_ms``: p50 of one raw transaction end to end in-process: its features from Redis
  (one Lua round trip) plus the same predict;
* ``batch_rows_per_s_inprocess``: a batch of 10,000 raw transactions, features plus predict
  (no HTTP, validation or logging: ``batch_rows_per_s`` of the HTTP phase is end to end);
* ``state_bytes_per_event``: Redis ``used_memory`` growth per stored (entity, event) record;
* ``rebuild_seconds``: :func:`rebuild_state` from 30 days x 10,000 logged predictions.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SINGLE = 1000
BATCH = 10_000


def _pct_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 3)


def _log_history(engine, spec, raw) -> None:
    """The raw rows as the service logs them (raw fields in features), by COPY."""
    from fraud_lib import store

    cols = [c for c in spec.raw_columns if c != spec.time]
    recs = raw[cols].to_dict("records")
    rows = [
        {"prediction_id": f"p{tx}", "transaction_id": str(tx), "event_time": float(t),
         "features": rec, "score": 0.5}
        for tx, t, rec in zip(raw["transaction_id"], raw["timestamp"], recs, strict=True)
    ]  # fmt: skip
    for i in range(0, len(rows), 50_000):
        store.insert_predictions(engine, rows[i : i + 50_000])


def online(seed: int, say) -> dict[str, float]:
    """Run the phase (see the module docstring); returns the figures."""
    from fraud_lib import pgserver, redisserver, store
    from fraud_lib.features.offline import epoch_seconds
    from fraud_lib.features.online import Batch, OnlineFeatures
    from fraud_lib.features.online_labels import LabelCache, fetch_labels, rebuild_state
    from fraud_lib.features.online_store import RedisEventStore
    from fraud_lib.features.raw_data import generate_raw
    from fraud_lib.features.raw_table import RAW_SCHEMA_PATH, enrich
    from fraud_lib.registry import LoadedModel
    from fraud_lib.schema import FeatureSchema
    from fraud_lib.train import train_model
    from serving.scoring import prepare

    schema = FeatureSchema.load(RAW_SCHEMA_PATH)
    spec = schema.behavior
    tmp = Path(tempfile.mkdtemp(prefix="fraudloop-online-bench-"))
    tmp.chmod(0o755)
    pg = pgserver.EmbeddedPostgres(tmp / "pg", pgserver.free_port())
    rs = redisserver.EmbeddedRedis(tmp, pgserver.free_port())
    out: dict[str, float] = {}
    try:
        pg.ensure_running()
        rs.start()
        engine = store.make_engine(pg.url)
        store.migrate(engine)
        r = rs.client(timeout=30)
        say("generating 31 days x 10,000 raw transactions")
        raw = generate_raw(31, total_rows=310_000, fraud_rate=0.002, seed=seed)
        raw = raw.sort_values("timestamp", kind="stable").reset_index(drop=True)
        history, later = raw.iloc[:300_000], raw.iloc[300_000:]
        say("training a model on 5 days (only for the predict floor)")
        model = train_model(enrich(schema, raw.iloc[:50_000]), schema, test_fraction=0.2).model
        served = prepare(LoadedModel("bench", "1", model, schema, 0.5, {}))
        out["single_predictor"] = served.predictor
        say("logging 300,000 predictions, then rebuilding the state")
        _log_history(engine, spec, history)
        base = int(r.info("memory")["used_memory"])
        state = RedisEventStore(r, spec, prefix="bench:")
        started = time.perf_counter()
        events = rebuild_state(engine, spec, state)
        out["rebuild_seconds"] = round(time.perf_counter() - started, 2)
        out["rebuild_events"] = events
        stored = sum(len(state.layout.unpack(r.get(k))) for k in r.scan_iter(match="bench:ev:*"))
        out["state_bytes_per_event"] = round(
            (int(r.info("memory")["used_memory"]) - base) / stored, 1
        )
        cache = LabelCache()
        cache.replace(fetch_labels(engine, spec, since=None))
        computer = OnlineFeatures(spec, state, cache)
        t = epoch_seconds(later["timestamp"], "timestamp")
        cols = {c: later[c].tolist() for c in later.columns}

        def batch(lo: int, hi: int) -> Batch:
            return Batch.from_columns(spec, {c: v[lo:hi] for c, v in cols.items()}, t[lo:hi])

        names = list(schema.features)

        def score(b: Batch) -> np.ndarray:
            values = b.values | computer.columns(b)
            return served.score_matrix(np.column_stack([values[c] for c in names]))

        floor, single = [], []
        x_one = np.zeros((1, len(names)))
        for i in range(SINGLE):
            t0 = time.perf_counter()
            score(batch(i, i + 1))
            single.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            served.score_matrix(x_one)
            floor.append(time.perf_counter() - t0)
        out["single_floor_ms"] = _pct_ms(floor, 50)
        out["single_p50_ms"] = _pct_ms(single, 50)
        out["single_p99_ms_1_client"] = _pct_ms(single, 99)
        t0 = time.perf_counter()
        score(batch(SINGLE, SINGLE + BATCH))
        out["batch_rows_per_s_inprocess"] = round(BATCH / (time.perf_counter() - t0))
        r.close()
    finally:
        rs.stop()
        pg.stop(mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)
    return out
