"""The online computer on a real redis-server and a real Postgres: online == offline on generated
raw transactions (batches and single rows), expiry, retries, rebuild and the label cache from the
prediction log (code + system tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import redis
import sqlalchemy as sa

from fraud_lib import store
from fraud_lib.features.offline import build_features, epoch_seconds, labels_from_events
from fraud_lib.features.online import Batch, OnlineFeatures
from fraud_lib.features.online_labels import (
    LABEL_FRAME_COLUMNS,
    LabelCache,
    fetch_labels,
    rebuild_state,
)
from fraud_lib.features.online_store import FEW_KEYS, RedisEventStore, horizon_seconds
from fraud_lib.features.spec import BehaviorSpec
from tests.lib.test_features_online import assert_close


@pytest.fixture(scope="module")
def redis_client(redis_server) -> Iterator[redis.Redis]:
    """A client of the session's embedded redis-server (tests use their own key prefixes)."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def raw() -> tuple[BehaviorSpec, pd.DataFrame]:
    from fraud_lib.features.raw_data import generate_raw
    from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
    from fraud_lib.schema import FeatureSchema

    spec = FeatureSchema.load(RAW_SCHEMA_PATH).behavior
    table = generate_raw(40, total_rows=8000, fraud_rate=0.02, seed=5)
    return spec, table.sort_values("timestamp", kind="stable").reset_index(drop=True)


def label_frame(spec: BehaviorSpec, table: pd.DataFrame) -> pd.DataFrame:
    """Every label of ``table`` in the label cache's shape."""
    t = epoch_seconds(table[spec.time], spec.time)
    lab = labels_from_events(spec, table, t)
    frames = [
        pd.DataFrame({"entity": name, "key": table[column].astype(str), "t": t,
                      "labeled_at": lab["labeled_at"], "label": lab["label"]})
        for name, column in spec.entities
    ]  # fmt: skip
    return pd.concat(frames, ignore_index=True)[list(LABEL_FRAME_COLUMNS)]


def online(spec, client, table: pd.DataFrame, size: int, cache: LabelCache) -> pd.DataFrame:
    """Replay ``table`` in arrival order in batches of ``size`` through a fresh state."""
    state = RedisEventStore(client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    computer = OnlineFeatures(spec, state, cache)
    t = epoch_seconds(table[spec.time], spec.time)
    parts = [
        computer.frame(Batch.from_frame(spec, table.iloc[i : i + size], t[i : i + size]))
        for i in range(0, len(table), size)
    ]
    return pd.concat(parts, ignore_index=True).set_axis(table.index), state


def test_batches_equal_offline(raw, redis_client):
    spec, table = raw
    cache = LabelCache()
    cache.replace(label_frame(spec, table))
    got, _ = online(spec, redis_client, table, 500, cache)
    assert_close(got, build_features(spec, table))


def test_single_rows_equal_offline(raw, redis_client):
    spec, table = raw
    part = table.iloc[:400]
    cache = LabelCache()
    cache.replace(label_frame(spec, part))
    got, _ = online(spec, redis_client, part, 1, cache)
    assert_close(got, build_features(spec, part))


def test_expiry_keeps_the_horizon_and_the_newest_older_event(raw, redis_client):
    spec, _ = raw
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    day = 86_400.0
    busy, idle = state.key("customer", "busy"), state.key("customer", "idle")
    times = np.arange(100) * day
    pack = state.layout.pack
    values = {c: np.ones(100) for c in state.layout.columns}
    ids = np.arange(100, dtype=np.uint64)
    state.read_append(
        [busy, idle],
        [pack(times, ids, values), pack(times[:3], ids[:3], {c: v[:3] for c, v in values.items()})],
    )
    now = 100 * day
    dropped = state.expire([busy, idle], state.read([busy, idle]), now)
    busy_t, idle_t = (h["t"] for h in state.read([busy, idle]))
    assert state.horizon == 37 * day  # 30-day windows plus the 7-day label delay
    # the horizon plus the newest older record: time since previous still needs it
    assert list(busy_t) == list(times[times >= now - state.horizon - day])
    assert list(idle_t) == [2 * day]
    assert dropped == (100 - len(busy_t)) + 2
    assert 0 < redis_client.pttl(busy) <= 2 * state.horizon * 1000


def test_a_batch_append_renews_a_ttl_only_below_the_margin_and_reloads_its_script(
    raw, redis_client
):
    spec, _ = raw
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    keys = [state.key("customer", f"c{i}") for i in range(FEW_KEYS + 3)]  # the script's path
    one = {c: np.ones(1) for c in state.layout.columns}
    rec, rec2 = (state.layout.pack(np.array([1.0]), np.array([i], np.uint64), one).tobytes()
                 for i in (1, 2))  # fmt: skip
    minute = 60_000
    try:
        state.read_append_raw(keys, [rec] * len(keys))
        assert all(redis_client.pttl(k) > state.ttl_ms - minute for k in keys)  # new: full TTL
        redis_client.script_flush()  # as after a restart: the script is loaded again
        redis_client.pexpire(keys[0], state.renew_below_ms + minute)  # inside the margin
        redis_client.pexpire(keys[1], state.renew_below_ms - minute)  # fallen below it
        state.read_append_raw(keys, [rec2] * len(keys))
        assert redis_client.pttl(keys[0]) <= state.renew_below_ms + minute
        assert redis_client.pttl(keys[1]) > state.ttl_ms - minute
        assert all(len(h) == 2 for h in state.read(keys))
        redis_client.pexpire(keys[0], state.renew_below_ms + minute)
        state.read_append_raw(keys[:2], [rec, rec])  # MULTI/EXEC: the full TTL every time
        assert redis_client.pttl(keys[0]) > state.ttl_ms - minute
    finally:
        redis_client.delete(*keys)


def test_a_late_event_after_a_trim_sees_its_previous_event(raw, redis_client):
    """Out-of-order arrival after expiry: the trim used to keep only the newest record, so an
    event arriving late lost its previous event (older than the horizon) and got "no previous
    event" online while offline it sees that event."""
    spec, table = raw
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    computer = OnlineFeatures(spec, state, LabelCache())
    day, base = 86_400.0, float(table["timestamp"].min())
    rows = table.iloc[:4].copy()
    rows["customer_id"], rows["terminal_id"] = "late-customer", "late-terminal"
    rows["transaction_id"] = ["first", "second", "third", "late"]
    rows["timestamp"] = base + np.array([0.0, 39.0, 39.2, 38.5]) * day  # "late" arrives last
    got = [computer.frame(Batch.from_frame(spec, rows.iloc[[i]], rows["timestamp"].to_numpy()[i : i + 1]))
           for i in range(4)]  # fmt: skip
    since = "customer__time_since_prev"
    assert got[3][since].iloc[0] == pytest.approx(38.5 * day)
    assert build_features(spec, rows)[since].iloc[3] == pytest.approx(38.5 * day)


def test_a_retried_transaction_does_not_see_itself(raw, redis_client):
    spec, table = raw
    part = table.iloc[:50]
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    computer = OnlineFeatures(spec, state, LabelCache())
    t = epoch_seconds(part[spec.time], spec.time)
    first = computer.frame(Batch.from_frame(spec, part, t))
    again = computer.frame(Batch.from_frame(spec, part.iloc[[-1]], t[-1:]))
    pd.testing.assert_frame_equal(
        again.reset_index(drop=True), first.iloc[[-1]].reset_index(drop=True)
    )


def log_predictions(engine, spec: BehaviorSpec, table: pd.DataFrame) -> None:
    """Predictions rows as the service logs them for a behavioral champion: raw fields in
    ``features``; labels stored with their labeled_at."""
    t = epoch_seconds(table[spec.time], spec.time)
    raw_cols = [c for c in spec.raw_columns if c != spec.time]
    rows = [
        {"prediction_id": f"p-{tx}", "transaction_id": str(tx), "event_time": float(ti),
         "features": {c: rec[c] for c in raw_cols}, "score": 0.5}
        for tx, ti, rec in zip(table["transaction_id"], t, table[raw_cols].to_dict("records"),
                               strict=True)
    ]  # fmt: skip
    store.insert_predictions(engine, rows)
    known = table.dropna(subset=["labeled_at"])
    store.upsert_labels(
        engine,
        [{"transaction_id": str(tx), "label": int(y), "labeled_at": pd.Timestamp(lab, unit="s", tz="UTC")}
         for tx, y, lab in zip(known["transaction_id"], known["is_fraud"], known["labeled_at"], strict=True)],
        bounds=None,
    )  # fmt: skip


def test_rebuild_from_the_prediction_log_loses_no_history(raw, redis_client, pg_engine):
    spec, table = raw
    history, later = table.iloc[:6000], table.iloc[6000:]
    log_predictions(pg_engine, spec, history)
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    assert rebuild_state(pg_engine, spec, state) > 0
    cache = LabelCache()
    cache.replace(label_frame(spec, table))
    computer = OnlineFeatures(spec, state, cache)
    t = epoch_seconds(later[spec.time], spec.time)
    got = computer.frame(Batch.from_frame(spec, later, t))
    assert_close(got.set_axis(later.index), build_features(spec, table).loc[later.index])


def test_a_rebuild_stores_each_history_in_time_order(raw, redis_client, pg_engine):
    # the log query returns events by transaction id; stored out of time order, every read of
    # such a key re-sorted it (a 10,000-row batch: ~140 ms of ~300)
    spec, table = raw
    shuffled = table.iloc[:3000].sample(frac=1.0, random_state=3)
    log_predictions(pg_engine, spec, shuffled)
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    assert rebuild_state(pg_engine, spec, state) > 0
    keys = list(redis_client.scan_iter(match=f"{state.prefix}ev:*"))
    assert len(keys) > 100
    for key in keys:
        times = state.layout.unpack(redis_client.get(key))["t"]
        assert (np.diff(times) >= 0).all(), key


def test_label_cache_from_postgres_matches_the_labels(raw, pg_engine):
    spec, table = raw
    part = table.iloc[:2000]
    log_predictions(pg_engine, spec, part)
    frame = fetch_labels(pg_engine, spec, since=0.0)
    # what the service's refresh asks: the horizon before the newest logged event (this used
    # to compare event_time with NULL and returned no label at all: label risk was always 0)
    with pg_engine.connect() as conn:
        top = conn.execute(sa.text("SELECT max(event_time) FROM predictions")).scalar_one()
    recent = fetch_labels(pg_engine, spec, since=top - horizon_seconds(spec))
    assert len(fetch_labels(pg_engine, spec)) == len(recent) > 0
    expected = label_frame(spec, part)
    expected = expected[(expected["entity"] == "terminal") & expected["labeled_at"].notna()]
    assert len(frame) == len(expected) > 0
    got = frame.sort_values(["key", "t"]).reset_index(drop=True)
    want = expected.sort_values(["key", "t"]).reset_index(drop=True)
    np.testing.assert_allclose(got["t"], want["t"])
    np.testing.assert_allclose(got["labeled_at"], want["labeled_at"], atol=1e-3)
    assert (got["label"].to_numpy() == want["label"].to_numpy()).all()


def test_a_rebuild_keeps_events_acknowledged_but_not_yet_logged(raw, redis_client, pg_engine):
    """Regression: the rebuild cleared the state first, so a late rebuild (another worker's, or
    one while the spool had not shipped yet) lost events it could not find in Postgres."""
    spec, table = raw
    logged_part, unlogged, later = table.iloc[:4000], table.iloc[4000:6000], table.iloc[6000:]
    log_predictions(pg_engine, spec, logged_part)
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    cache = LabelCache()
    cache.replace(label_frame(spec, table))
    computer = OnlineFeatures(spec, state, cache)
    for part in (logged_part, unlogged):  # scored online: both are in the state
        computer.frame(Batch.from_frame(spec, part, epoch_seconds(part[spec.time], spec.time)))
    assert rebuild_state(pg_engine, spec, state) > 0  # logged events are now there twice
    t = epoch_seconds(later[spec.time], spec.time)
    got = computer.frame(Batch.from_frame(spec, later, t))
    assert_close(got.set_axis(later.index), build_features(spec, table).loc[later.index])


def test_a_rebuild_from_an_empty_prediction_log_is_an_empty_state(raw, redis_client, pg_engine):
    """Regression: a first start (no logged prediction yet) failed the rebuild with numpy's
    'index 0 is out of bounds' and logged an ERROR line on every fresh deployment."""
    spec, table = raw
    state = RedisEventStore(redis_client, spec, prefix=f"test-{uuid.uuid4().hex}:")
    assert rebuild_state(pg_engine, spec, state) == 0
    computer = OnlineFeatures(spec, state, LabelCache())
    first = table.iloc[:50]
    got = computer.frame(Batch.from_frame(spec, first, epoch_seconds(first[spec.time], spec.time)))
    assert len(got) == len(first)
