"""The event store's read-and-append transaction on a real redis-server: atomic under
concurrent writers, a failed reply leaves the thread's connection usable, a restarted server is
reconnected to (code + system tests)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from fraud_lib import pgserver, redisserver
from fraud_lib.features.online_store import FEW_KEYS, RedisEventStore
from fraud_lib.features.raw_table import RAW_SCHEMA_PATH
from fraud_lib.schema import FeatureSchema

SPEC = FeatureSchema.load(RAW_SCHEMA_PATH).behavior


def _store(client: redis.Redis) -> RedisEventStore:
    return RedisEventStore(client, SPEC, prefix=f"test-{uuid.uuid4().hex}:")


def _record(store: RedisEventStore, t: float, tx: int) -> bytes:
    return store.layout.pack(np.array([t]), np.array([tx], np.uint64),
                             {"amount": np.array([1.0])}).tobytes()  # fmt: skip


@pytest.mark.parametrize("n_keys", [2, FEW_KEYS + 1], ids=["transaction", "script"])
def test_concurrent_appends_are_each_stored_once_and_seen_in_one_order(redis_server, n_keys):
    client = redis_server.client()
    store = _store(client)
    keys = [store.key("customer", str(i)) for i in range(n_keys)]
    seen: dict[int, tuple[int, ...]] = {}

    def writer(first: int) -> None:
        for tx in range(first, first + 200):
            blobs = store.read_append_raw(keys, [_record(store, float(tx), tx)] * n_keys)
            seen[tx] = tuple(len(b or b"") for b in blobs)

    threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    size = store.layout.dtype.itemsize
    assert all(len(client.get(k)) == 800 * size for k in keys)
    # one snapshot for all keys: a transaction saw as many events of one as of the others,
    # and the 800 transactions saw 0, 1, ..., 799 earlier events (a total order)
    assert all(len(set(lengths)) == 1 for lengths in seen.values())
    assert sorted(lengths[0] // size for lengths in seen.values()) == list(range(800))
    client.close()


def test_an_error_reply_raises_and_the_next_transaction_works(redis_server):
    client = redis_server.client()
    store = _store(client)
    bad, good = store.key("customer", "list"), store.key("customer", "ok")
    client.lpush(bad, "not a history")  # APPEND to a list: WRONGTYPE inside EXEC
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.read_append_raw([bad], [_record(store, 1.0, 1)])
    assert store.read_append_raw([good], [_record(store, 2.0, 2)]) == [None]
    assert store.read_append_raw([good], [None]) == [_record(store, 2.0, 2)]
    client.close()


def test_a_restarted_server_is_reconnected_to(tmp_path: Path):
    server = redisserver.EmbeddedRedis(tmp_path / "redis", pgserver.free_port())
    server.start()
    try:
        client = server.client()
        store = _store(client)
        key = store.key("customer", "c")
        store.read_append_raw([key], [_record(store, 1.0, 1)])
        server.stop()
        server.start()  # the thread's connection is stale: sent once more on a new one
        assert store.read_append_raw([key], [None]) == [_record(store, 1.0, 1)]
        server.stop()
        with pytest.raises(redis.ConnectionError):
            store.read_append_raw([key], [None])
        server.start()
        assert store.read_append_raw([key], [None]) == [_record(store, 1.0, 1)]
        client.close()
    finally:
        server.stop()
