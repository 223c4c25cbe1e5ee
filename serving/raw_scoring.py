"""/v1/score for a behavioral champion: raw transactions in, features computed from the shared
online state, scores out, raw fields and computed features logged together.

Raw transactions are validated by :mod:`serving.raw_input`.

:class:`OnlineService` owns, per worker, the Redis client, the event store of the champion's
spec (keys prefixed with a fingerprint of the spec, so two definitions never mix records), the
label cache and its refresh thread, and the one-time rebuild of an empty state from Postgres.
A refresh reads only the labels and prediction rows written since the previous one
(:func:`fraud_lib.features.online_labels.refresh_label_cache`): re-reading (and re-indexing in
Python) every label of the horizon at each tick took ~40 % of a worker's CPU at a 0.5 s
refresh interval under load, and made label risk staler than the stated lag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import redis

from fraud_lib import redisserver
from fraud_lib.features.online import Batch, OnlineFeatures
from fraud_lib.features.online_labels import LabelCache, rebuild_state, refresh_label_cache
from fraud_lib.features.online_store import KEY_PREFIX, RedisEventStore
from fraud_lib.features.spec import BehaviorSpec
from fraud_lib.input_rules import TimestampBounds
from fraud_lib.schema import FeatureSchema
from serving.raw_input import validate_raw
from serving.validation import ApiError, Transactions

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 2.0
REBUILD_LOCK_SECONDS = 300


def spec_prefix(spec: BehaviorSpec) -> str:
    """Redis key prefix of one feature definition: a fingerprint of its behavior block."""
    text = json.dumps({"time": spec.time, "id": spec.id, **spec.to_dict()}, sort_keys=True)
    return f"{KEY_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:12]}:"


class OnlineService:
    """The online computer of one worker (see the module docstring); created on first use."""

    def __init__(self, settings: Any, engine_fn: Any, metrics: Any = None) -> None:
        self.settings = settings
        self.engine_fn = engine_fn
        self.metrics = metrics  # serving.metrics.Metrics: each refresh's duration
        self._client: redis.Redis | None = None
        self._computers: dict[BehaviorSpec, OnlineFeatures] = {}
        self._last: tuple[BehaviorSpec, OnlineFeatures] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def client(self) -> redis.Redis:
        """The Redis client (FRAUD_REDIS_URL, else the embedded server's URL)."""
        if self._client is None:
            url = redisserver.redis_url(self.settings, start=False)
            self._client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS)
        return self._client

    def computer(self, spec: BehaviorSpec) -> OnlineFeatures:
        """The computer of ``spec``: state rebuilt from Postgres if empty, labels refreshing."""
        last = self._last
        if last is not None and last[0] is spec:  # every request of one champion: no hashing
            return last[1]  # of the spec (a deep dataclass hash cost ~10 us a request)
        with self._lock:
            if spec not in self._computers:
                store = RedisEventStore(self.client(), spec, prefix=spec_prefix(spec))
                self._ensure_built(spec, store)
                cache = LabelCache()
                self._computers[spec] = OnlineFeatures(spec, store, cache)
                if spec.label_risk:
                    self._refresh(spec, cache)
                    threading.Thread(target=self._refresher, args=(spec, cache),
                                     name="label-refresh", daemon=True).start()  # fmt: skip
            self._last = (spec, self._computers[spec])
            return self._last[1]

    def _ensure_built(self, spec: BehaviorSpec, store: RedisEventStore) -> None:
        """Rebuild an empty state (no ``built`` marker) from the prediction log, once for all
        workers; a Postgres outage leaves the state as it is (features from what arrives)."""
        marker, lock = f"{store.prefix}built", f"{store.prefix}rebuilding"
        r = self.client()
        if r.exists(marker):
            return
        if not r.set(lock, "1", nx=True, ex=REBUILD_LOCK_SECONDS):
            # another worker rebuilds (and first clears the state): serving now would lose
            # the events appended meanwhile, so wait for its marker or its lock to go
            deadline = time.monotonic() + REBUILD_LOCK_SECONDS
            while time.monotonic() < deadline and r.exists(lock) and not r.exists(marker):
                time.sleep(0.05)
            return
        try:
            n = rebuild_state(self.engine_fn(), spec, store)
            r.set(marker, str(n))
        except Exception as exc:  # Postgres down: serve from an empty state, retry next start
            log.error("online state not rebuilt from Postgres (%s); starting empty", exc)
        finally:
            r.delete(lock)

    def _refresh(self, spec: BehaviorSpec, cache: LabelCache) -> None:
        """Bring ``cache`` up to the labels in Postgres (only what changed since the last)."""
        started = time.perf_counter()
        try:
            refresh_label_cache(self.engine_fn(), spec, cache)
        except Exception as exc:  # Postgres down: keep the last labels, retry next tick
            log.warning("label risk cache not refreshed (%s); keeping the last one", exc)
            return
        if self.metrics is not None:  # the staleness bound: interval + two refreshes
            self.metrics.label_refresh_seconds.observe(time.perf_counter() - started)

    def _refresher(self, spec: BehaviorSpec, cache: LabelCache) -> None:
        while not self._stop.wait(self.settings.label_refresh_seconds):
            self._refresh(spec, cache)

    def close(self) -> None:
        """Stop the refresh threads and close the client."""
        self._stop.set()
        if self._client is not None:
            self._client.close()


def score_raw(online: OnlineService, served: Any, payload: Any, max_batch: int,
              bounds: TimestampBounds) -> tuple[Transactions, np.ndarray, dict[str, Any]]:  # fmt: skip
    """Validate, compute the features, score; returns (transactions, scores, what to log)."""
    txs, times = validate_raw(payload, served.schema, max_batch, bounds)
    scores, logged = score_valid_raw(online, served, txs, times)
    return txs, scores, logged


def score_valid_raw(online: OnlineService, served: Any, txs: Transactions,
                    times: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """Features of validated raw transactions from the online state (their events appended to
    it: from here on, running the request again would count them twice), scores, what to log."""
    schema: FeatureSchema = served.schema
    spec = schema.behavior
    records = txs.records or []
    for i, tx in enumerate(txs.ids):  # ids are needed now: they identify events in the state
        if tx is None:
            txs.ids[i] = uuid.uuid4().hex
    columns: dict[str, list] = {c: [r[c] for r in records] for c in records[0]}
    if spec.id:
        columns[spec.id] = list(txs.ids)
    try:
        computer = online.computer(spec)
        batch = Batch.from_columns(spec, columns, times, computer.store.layout)
        computed = computer.rows(batch)
    except redis.RedisError as exc:
        log.error("online feature state unavailable: %s", exc)
        raise ApiError(503, "feature_state_unavailable", "the online feature state (Redis) "
                       "cannot be reached; retry later") from None  # fmt: skip
    names = computer.output_columns
    # logged as each raw record plus the computed matrix; the shipper writes one document
    # {**raw, **computed} per prediction (10,000 rows: ~40 ms fewer on the request path)
    logged = {"features": records, "columns": names,
              "x": np.ascontiguousarray(computed, dtype="<f8").tobytes()}  # fmt: skip
    if schema.categorical:
        rows = [{**r, **dict(zip(names, vals, strict=True))}
                for r, vals in zip(records, computed.tolist(), strict=True)]  # fmt: skip
        scores = served.score_records(rows)
    else:
        # schema.features is the raw numeric inputs, then spec.output_columns (FeatureSchema)
        numeric = np.array([columns[c] for c in spec.numeric], dtype=np.float64)
        numeric = numeric.reshape(len(spec.numeric), len(times)).T
        scores = np.asarray(served.score_matrix(np.concatenate([numeric, computed], axis=1)), float)
    return scores, logged
