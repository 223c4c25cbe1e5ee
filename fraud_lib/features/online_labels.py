"""What the online computer reads from Postgres: the label cache and the rebuild of the state.

* **Label cache.** Label risk changes only when labels arrive, so each process keeps the labeled
  events of the entities with label risk (event time, ``labeled_at``, label; from the labels
  joined to the logged predictions) and refreshes them every ``refresh_seconds`` with the rows
  written since the previous refresh. A label (and its prediction row) committed at ``c``
  counts from the end of the first refresh that begins after ``c``: at most one refresh
  interval plus two refresh queries stale, and a query reads only the new rows, so it does
  not grow with the history. During a Postgres outage the last cache keeps serving and the
  refresh retries on the next tick.
* **Rebuild.** :func:`rebuild_state` adds to the Redis histories from the prediction log (the
  raw fields each predictions row logs in ``features``), the last horizon's worth (longest
  window plus longest label delay) before the newest logged event, so a lost Redis loses no
  history that a feature can still see.

Both read the raw entity keys and aggregated columns from ``predictions.features``, which the
scoring service writes for behavioral champions (raw fields plus computed features).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from fraud_lib.features.online import LabelHistory
from fraud_lib.features.online_store import RecordLayout, RedisEventStore, horizon_seconds, id_hash
from fraud_lib.features.spec import BehaviorSpec

logger = logging.getLogger(__name__)

LABEL_FRAME_COLUMNS = ("entity", "key", "t", "labeled_at", "label")
# A delta refresh re-reads the rows stamped (transaction start, Postgres clock) up to this long
# before the previous snapshot: a label or prediction transaction that began before a snapshot
# but committed after it is still read, as long as it lasted less than this. A full reload every
# FULL_RELOAD_SECONDS (wall clock) catches any longer one.
REFRESH_OVERLAP_SECONDS = 60.0
FULL_RELOAD_SECONDS = 600.0


PRUNE_STEP_SECONDS = 86_400.0  # every key is pruned once the horizon moved this far (event time)
_NO_TX = np.empty(0, dtype=object)
_NO_ROWS = np.empty((0, 3))
_Keyed = dict[str, tuple[np.ndarray, np.ndarray]]  # key -> (transaction ids, rows t/known/label)


def _by_key(frame: pd.DataFrame) -> dict[str, _Keyed]:
    """Per entity, per key: the rows' transaction ids and (t, labeled_at, label) rows."""
    out: dict[str, _Keyed] = {}
    for entity, part in frame.groupby("entity", sort=False):
        keys = part["key"].astype(str).to_numpy()
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        if "transaction_id" in part:
            txs = part["transaction_id"].astype(str).to_numpy()[order]
        else:
            txs = np.full(len(part), "", dtype=object)
        arr = part[["t", "labeled_at", "label"]].to_numpy(np.float64)[order]
        bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
        out[str(entity)] = {
            keys[lo]: (txs[lo:hi], arr[lo:hi]) for lo, hi in itertools.pairwise(bounds)
        }
    return out


class LabelCache:
    """Labeled events per (entity, key): loaded whole by :meth:`replace`, then kept current by
    :meth:`merge` with the rows changed since (thread-safe; a merge costs the keys it touches)."""

    def __init__(self) -> None:
        self._keys: dict[str, _Keyed] = {}
        self._lock = threading.Lock()
        self._newest = -np.inf
        self._pruned_at = -np.inf  # the cutoff of the last prune of every key
        self.refreshed_at: float | None = None  # worker wall clock when the snapshot began
        self.db_time: float | None = None  # Postgres clock at the snapshot (delta watermark)
        self.loaded_at = -np.inf  # wall clock of the last full load
        self.seen: dict[str, tuple[float, float]] = {}  # transaction -> (labeled_at, label) held

    def replace(self, frame: pd.DataFrame, when: float | None = None) -> None:
        """New content: columns :data:`LABEL_FRAME_COLUMNS` (times in epoch seconds), plus
        ``transaction_id`` when later :meth:`merge` calls must replace changed labels."""
        built = _by_key(frame)
        self.seen = _seen(frame)
        with self._lock:
            self._keys = built
            self._newest = float(frame["t"].max()) if len(frame) else -np.inf
            self.refreshed_at = when

    def merge(self, delta: pd.DataFrame, horizon: float, when: float | None = None) -> None:
        """Add the rows of ``delta`` (a changed label replaces its transaction's row) and drop
        the events older than ``horizon`` before the newest one: from the keys ``delta``
        touches, and from every key once that cutoff moved :data:`PRUNE_STEP_SECONDS`."""
        self.seen.update(_seen(delta))
        newest = max(self._newest, float(delta["t"].max()) if len(delta) else -np.inf)
        cutoff = newest - horizon
        merged = dict(self._keys)
        for entity, fresh in _by_key(delta).items():
            current = dict(merged.get(entity, {}))
            for key, (txs, rows) in fresh.items():
                old_tx, old_rows = current.get(key, (_NO_TX, _NO_ROWS))
                new = set(txs)
                keep = np.fromiter((x not in new for x in old_tx), bool, len(old_tx))
                current[key] = _recent((np.concatenate([old_tx[keep], txs]),
                                        np.concatenate([old_rows[keep], rows])), cutoff)  # fmt: skip
            merged[entity] = current
        if cutoff > self._pruned_at + PRUNE_STEP_SECONDS:
            merged = {e: {k: kept for k, v in keyed.items() if len((kept := _recent(v, cutoff))[0])}
                      for e, keyed in merged.items()}  # fmt: skip
            self._pruned_at = cutoff
        with self._lock:
            self._keys = merged
            self._newest = newest
            self.refreshed_at = when

    def rows(self, entity: str, key: str) -> np.ndarray:
        """Labeled events of one key: rows (event time, labeled_at, label)."""
        with self._lock:
            keyed = self._keys.get(entity, {})
        return keyed.get(key, (_NO_TX, _NO_ROWS))[1]

    def history(self, entity: str, uniques: np.ndarray) -> LabelHistory:
        """Labeled events of the given keys, coded by their position in ``uniques``."""
        with self._lock:
            keyed = self._keys.get(entity, {})
        parts, codes = [], []
        for code, key in enumerate(uniques):
            rows = keyed.get(str(key), (_NO_TX, _NO_ROWS))[1]
            if len(rows):
                parts.append(rows)
                codes.append(np.full(len(rows), code, dtype=np.int64))
        if not parts:
            empty = np.empty(0)
            return LabelHistory(np.empty(0, np.int64), empty, empty, empty)
        rows = np.concatenate(parts)
        return LabelHistory(np.concatenate(codes), rows[:, 0], rows[:, 1], rows[:, 2])


def _recent(entry: tuple[np.ndarray, np.ndarray], cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one key with event time after ``cutoff``."""
    txs, rows = entry
    keep = rows[:, 0] > cutoff
    return (txs, rows) if keep.all() else (txs[keep], rows[keep])


def _seen(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
    if "transaction_id" not in frame or frame.empty:
        return {}
    values = zip(frame["labeled_at"].astype(float), frame["label"].astype(float), strict=True)
    return dict(zip(frame["transaction_id"].astype(str), values, strict=True))


def _changed_ids(engine: Any, cache: LabelCache, since: float) -> list[str]:
    """Logged, labeled transactions whose label or prediction row was written after ``since``
    (Postgres clock) and that the cache does not hold with that label: one query without the
    JSON, each table filtered alone and the other joined by its index."""
    query = sa.text(
        "SELECT c.transaction_id, extract(epoch FROM l.labeled_at), l.label FROM "
        "(SELECT transaction_id FROM labels WHERE updated_at > to_timestamp(:since) UNION "
        "SELECT transaction_id FROM predictions WHERE written_at > to_timestamp(:since)) c "
        "JOIN labels l ON l.transaction_id = c.transaction_id WHERE EXISTS "
        "(SELECT 1 FROM predictions p WHERE p.transaction_id = c.transaction_id)"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"since": since}).fetchall()
    return [tx for tx, k, y in rows if cache.seen.get(tx) != (float(k), float(y))]


def refresh_label_cache(engine: Any, spec: BehaviorSpec, cache: LabelCache) -> int:
    """Bring ``cache`` up to the labels in Postgres now; returns the rows read.

    The first call (and one every :data:`FULL_RELOAD_SECONDS`) loads the horizon; the others
    read only the labels and prediction rows written since the previous snapshot (minus
    :data:`REFRESH_OVERLAP_SECONDS`) and fetch the events of those the cache does not hold yet,
    so a refresh costs the labels that arrived, not the whole horizon (a full reload took ~3 s at 80,000
    labels under load, which made label risk staler than the stated lag). ``refreshed_at`` is
    the wall clock when the refresh began: everything committed before is in the cache."""
    began = time.time()
    with engine.connect() as conn:
        db_now = float(conn.execute(sa.text("SELECT extract(epoch FROM now())")).scalar_one())
    if cache.db_time is None or began - cache.loaded_at > FULL_RELOAD_SECONDS:
        frame = fetch_labels(engine, spec)
        cache.replace(frame, when=began)
        cache.loaded_at = began
    else:
        ids = _changed_ids(engine, cache, cache.db_time - REFRESH_OVERLAP_SECONDS)
        frame = fetch_labels(engine, spec, since=-np.inf, ids=ids)
        cache.merge(frame, horizon_seconds(spec), when=began)
    cache.db_time = db_now
    logger.debug("label cache refreshed: %d rows read in %.3f s", len(frame), time.time() - began)
    return len(frame)


def _since_clause(spec: BehaviorSpec, since: float | None) -> tuple[str, dict[str, float]]:
    """``event_time`` after ``since``, or (None) after the horizon before the newest logged
    event; the SQL condition and its parameters."""
    if since is not None:
        return "p.event_time > :since", {"since": since}
    newest = "(SELECT max(event_time) FROM predictions)"
    return f"p.event_time > {newest} - :horizon", {"horizon": horizon_seconds(spec)}


def fetch_labels(engine: Any, spec: BehaviorSpec, since: float | None = None,
                 ids: list[str] | None = None) -> pd.DataFrame:  # fmt: skip
    """Labeled logged events with event time after ``since`` (None: the horizon before the
    newest logged event), one row per entity with label risk; with ``ids`` only those
    transactions.
    Columns: ``transaction_id`` and :data:`LABEL_FRAME_COLUMNS`."""
    entities = {r.entity for r in spec.label_risk}
    where, params = _since_clause(spec, since)
    pairs = "labels l JOIN predictions p ON p.transaction_id = l.transaction_id"
    if ids is not None:
        if not ids:
            return pd.DataFrame(columns=["transaction_id", *LABEL_FRAME_COLUMNS])
        where += " AND l.transaction_id = ANY(:ids)"
        params["ids"] = ids
    frames = []
    # one snapshot for every entity: a label changed between two queries would otherwise reach
    # one entity's rows and not the other's, and ``LabelCache.seen`` would keep the difference
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        for name, column in spec.entities:
            if name in entities:
                frames.append(_entity_labels(conn, name, column, pairs, where, params))
    if not frames:
        return pd.DataFrame(columns=["transaction_id", *LABEL_FRAME_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    out[["t", "labeled_at", "label"]] = out[["t", "labeled_at", "label"]].astype(np.float64)
    return out


def _entity_labels(conn: Any, name: str, column: str, pairs: str, where: str,
                   params: dict[str, Any]) -> pd.DataFrame:  # fmt: skip
    """The labeled events of one entity (its key read from ``column`` of the logged JSON)."""
    col = column.replace("'", "''")
    # the rows are chosen first: the JSON of only those is parsed
    query = sa.text(
        "WITH chosen AS MATERIALIZED (SELECT DISTINCT ON (p.transaction_id) p.transaction_id, "
        "p.features, p.event_time AS t, extract(epoch FROM l.labeled_at) AS labeled_at, "
        f"l.label FROM {pairs} WHERE {where} ORDER BY p.transaction_id, p.scored_at) "
        f"SELECT transaction_id, features ->> '{col}' AS key, t, labeled_at, label "
        f"FROM chosen WHERE features ->> '{col}' IS NOT NULL"
    )
    part = pd.DataFrame(conn.execute(query, params).fetchall(),
                        columns=["transaction_id", "key", "t", "labeled_at", "label"])  # fmt: skip
    part.insert(1, "entity", name)
    return part


def logged_events(engine: Any, spec: BehaviorSpec, since: float | None = None) -> pd.DataFrame:
    """The logged raw events (id, event time, entity keys, aggregated columns) after ``since``
    (default: the horizon before the newest logged event)."""
    layout = RecordLayout.for_spec(spec)
    cols = [c for _, c in spec.entities] + list(layout.columns)
    select = ", ".join(f"p.features ->> '{c.replace(chr(39), chr(39) * 2)}'" for c in cols)
    where, params = _since_clause(spec, since)
    query = sa.text(
        f"SELECT DISTINCT ON (p.transaction_id) p.transaction_id, p.event_time, {select} "
        f"FROM predictions p WHERE {where} AND p.event_time IS NOT NULL "
        "ORDER BY p.transaction_id, p.scored_at"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, params).fetchall()
    return pd.DataFrame(rows, columns=["transaction_id", "event_time", *cols])


def rebuild_state(engine: Any, spec: BehaviorSpec, store: RedisEventStore) -> int:
    """Add the logged events of the last horizon to the Redis histories, each key's in time
    order; returns events.

    Nothing is cleared first: events acknowledged meanwhile (by a worker that did not wait, or
    not yet shipped to Postgres) stay, and an event both logged and stored is read once (reads
    drop a repeated id)."""
    frame = logged_events(engine, spec)
    layout = store.layout
    # in time order, so each key's history is stored sorted and its reads skip the re-sort
    # (the query returns them by transaction id)
    frame = frame.dropna().sort_values("event_time", kind="stable")
    ids = np.fromiter((id_hash(str(i)) for i in frame["transaction_id"]), np.uint64, len(frame))
    times = frame["event_time"].to_numpy(np.float64)
    values = {c: frame[c].astype(np.float64).to_numpy() for c in layout.columns}
    records = layout.pack(times, ids, values)
    for name, column in spec.entities:
        if any(a.entity == name for a in spec.aggregates) or any(
            s.entity == name for s in spec.time_since
        ):
            store.load(name, frame[column].astype(str).to_numpy(), records)
    logger.info("rebuilt the online state from %d logged events", len(frame))
    return len(frame)
