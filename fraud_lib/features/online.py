"""The online computer: the features of incoming raw transactions from the shared state.

It implements the rules of :mod:`fraud_lib.features.offline` (the definition) with the same
kernels: a transaction's entity history (the stored events plus the earlier rows of the same
batch) is sorted by (time, id hash) and its windows are summed by
:func:`~fraud_lib.features.kernels.window_moments`, block by block from the window's first event,
so when the online window holds the same events as the offline one the sums are the same
float64 operations. The differences that remain are stated, not hidden:

* events acknowledged after a transaction was scored (out of order, or on another worker within
  the visibility lag) are seen offline, not online;
* equal-time events of one entity are summed in id-hash order instead of id order (the result
  differs by a few ulps at most);
* label risk uses the labels known when the label cache was last refreshed
  (:class:`~fraud_lib.features.online_labels.LabelCache`), at most its refresh interval stale.

:func:`compute` is pure (histories in, features out) and is what the unit tests check against
hand-computed values; :class:`OnlineFeatures` adds the Redis state and the label cache.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraud_lib.features.kernels import (
    group_slices,
    grouped_searchsorted,
    label_counts,
    window_moments,
)
from fraud_lib.features.offline import calendar_features, calendar_row, window_stat
from fraud_lib.features.one_row import EntityPlan, RiskPlan
from fraud_lib.features.online_store import RecordLayout, RedisEventStore, id_hash
from fraud_lib.features.spec import NO_PREVIOUS, SEP, BehaviorSpec

logger = logging.getLogger(__name__)

SMALL_BATCH = 64  # up to this many rows, keys are coded with a dict instead of pd.factorize


@dataclass
class Batch:
    """Raw transactions to compute features for, already validated."""

    times: np.ndarray  # float64 epoch seconds
    ids: np.ndarray  # uint64 id hashes
    keys: dict[str, np.ndarray]  # entity name -> key text per row
    values: dict[str, np.ndarray]  # aggregated column -> float64 per row

    @classmethod
    def from_frame(cls, spec: BehaviorSpec, frame: pd.DataFrame, times: np.ndarray) -> Batch:
        """From raw rows (entity keys compared as text, like offline) and their epoch times."""
        return cls.from_columns(spec, {c: frame[c].tolist() for c in frame.columns}, times)

    @classmethod
    def from_records(cls, spec: BehaviorSpec, rows: list[dict], times: np.ndarray) -> Batch:
        """From validated raw transactions (JSON objects) and their epoch times."""
        wanted = [*(c for _, c in spec.entities), *RecordLayout.for_spec(spec).columns]
        if spec.id:
            wanted.append(spec.id)
        return cls.from_columns(spec, {c: [r[c] for r in rows] for c in wanted}, times)

    @classmethod
    def from_columns(cls, spec: BehaviorSpec, columns: dict[str, list], times: np.ndarray,
                     layout: RecordLayout | None = None) -> Batch:  # fmt: skip
        """From lists per column; without an id column every row gets a random id hash.
        ``layout``: the spec's record layout when the caller holds it (else built)."""
        aggregated = (layout or RecordLayout.for_spec(spec)).columns
        n = len(times)
        if spec.id and spec.id in columns:
            ids = np.fromiter((id_hash(str(i)) for i in columns[spec.id]), np.uint64, count=n)
        else:
            ids = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
        return cls(
            times=np.asarray(times, dtype=np.float64),
            ids=ids,
            keys={name: np.array([str(v) for v in columns[c]], dtype=object)
                  for name, c in spec.entities},
            values={c: np.asarray(columns[c], dtype=np.float64) for c in aggregated},
        )  # fmt: skip


@dataclass
class History:
    """One entity's stored events for a batch: ``codes[i]`` is the batch key record ``i`` is of
    (an index into the batch's distinct keys, :func:`key_codes`)."""

    codes: np.ndarray
    records: np.ndarray  # structured, RecordLayout.dtype


@dataclass
class LabelHistory:
    """One entity's labeled events for a batch: key code, event time, labeled_at, label."""

    codes: np.ndarray
    t: np.ndarray
    known: np.ndarray
    y: np.ndarray


def key_codes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys in order of first appearance, code of each row)."""
    if len(keys) <= SMALL_BATCH:  # pd.factorize costs ~50 us whatever the size
        first: dict[str, int] = {}
        codes = [first.setdefault(k, len(first)) for k in keys.tolist()]
        return np.array(list(first), dtype=object), np.array(codes, dtype=np.int64)
    codes, uniques = pd.factorize(keys)
    return np.asarray(uniques, dtype=object), codes.astype(np.int64)


def _needs_history(spec: BehaviorSpec, entity: str) -> bool:
    return any(a.entity == entity for a in spec.aggregates) or any(
        s.entity == entity for s in spec.time_since
    )


def _by_key(codes: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """An order sorting ``codes`` (batch key codes, >= 0), stable, then ``values`` within each
    key (ties in any order; NaN last). Codes below 2**16 take numpy's radix sort: ~5x faster
    than ``np.lexsort`` on 300,000 labels."""
    order = np.arange(len(codes)) if values is None else np.argsort(values)
    keys = codes[order]
    if len(keys) and keys.max() < 2**16:
        keys = keys.astype(np.uint16)
    return order[np.argsort(keys, kind="stable")]


def _event_order(codes: np.ndarray, t: np.ndarray, ids: np.ndarray,
                 one_key: bool = False) -> np.ndarray:  # fmt: skip
    """The events sorted by (key, time, id hash), a retried transaction's stored copy (same
    key, time and id as another event) dropped.

    Stored histories come grouped by key and mostly in time order, so a stable sort by key
    alone (fast on such runs) is usually already that order; only the keys whose times are not
    strictly increasing are sorted again by (time, id) in place, and only they can hold such a
    copy. The result is the full three-key sort's (a batch of 10,000 over ~200,000 stored
    events: the full sort took ~60 ms per entity). ``one_key``: every code is 0 (one
    transaction), nothing to group."""
    order = np.arange(len(codes)) if one_key else _by_key(codes)
    s_codes, s_t = codes[order], t[order]
    unsorted = (np.diff(s_codes) == 0) & (np.diff(s_t) <= 0)
    if not unsorted.any():
        return order
    redo = np.zeros(int(s_codes.max()) + 1, dtype=bool)
    redo[s_codes[1:][unsorted]] = True
    slots = np.flatnonzero(redo[s_codes])  # those keys' rows, contiguous per key, by key
    rows = order[slots]
    rows = rows[np.lexsort((ids[rows], t[rows], codes[rows]))]
    order[slots] = rows
    dup = np.zeros(len(rows), dtype=bool)
    same = (np.diff(codes[rows]) == 0) & (np.diff(t[rows]) == 0)
    dup[1:] = same & (np.diff(ids[rows].view(np.int64)) == 0)
    if not dup.any():
        return order
    drop = np.zeros(len(order), dtype=bool)
    drop[slots[dup]] = True
    return order[~drop]


def _entity_features(spec: BehaviorSpec, entity: str, batch: Batch, codes: np.ndarray,
                     hist: History) -> dict[str, np.ndarray]:  # fmt: skip
    """Aggregates and time since previous of one entity, for every batch row."""
    rec = hist.records
    all_codes = np.concatenate([hist.codes, codes])
    all_t = np.concatenate([rec["t"], batch.times])
    all_ids = np.concatenate([rec["id"], batch.ids])
    order = _event_order(all_codes, all_t, all_ids, one_key=not codes.any())
    s_codes, s_t = all_codes[order], all_t[order]
    start, end = group_slices(s_codes, codes)
    earlier = grouped_searchsorted(s_t, start, end, batch.times, "left")
    out: dict[str, np.ndarray] = {}
    aggs = [a for a in spec.aggregates if a.entity == entity]
    for column in dict.fromkeys(a.column for a in aggs):
        x_rows = batch.values[column]
        x = np.concatenate([rec[column], x_rows])[order]
        group = [a for a in aggs if a.column == column]
        windows = list(dict.fromkeys(a.window for a in group))
        ranges = [
            (grouped_searchsorted(s_t + w.seconds, start, end, batch.times, "right"), earlier)
            for w in windows
        ]
        moments = dict(zip(windows, window_moments(x, ranges), strict=True))
        current = {a.window: moments[a.window].with_current(x_rows)
                   for a in group if a.include_current}  # fmt: skip
        for a in group:
            m = current[a.window] if a.include_current else moments[a.window]
            out[a.name] = window_stat(a, m, x_rows)
    if any(s.entity == entity for s in spec.time_since):
        has = earlier > start
        prev = s_t[np.maximum(earlier - 1, 0)]
        out[f"{entity}{SEP}time_since_prev"] = np.where(has, batch.times - prev, NO_PREVIOUS)
    return out


def _label_features(spec: BehaviorSpec, entity: str, batch: Batch, codes: np.ndarray,
                    labels: LabelHistory) -> dict[str, np.ndarray]:  # fmt: skip
    """Label risk of one entity for every batch row (rules: the offline module docstring).

    A count is, per key, the kept labels whose window has begun by the row's time minus those
    whose window has ended. Window ends (time + delay + window) follow the event times, so one
    sort by (key, time) serves every window; window starts (labeled_at or later) need one sort
    per delay. Each edge is searched once in its sorted order, and the kept labels before the
    found position are counted with a running sum (labels not kept stay in the order)."""
    out: dict[str, np.ndarray] = {}
    risks = [r for r in spec.label_risk if r.entity == entity]
    if len(codes) <= SMALL_BATCH:
        return _few_label_features(risks, batch, codes, labels)
    by_time = _by_key(labels.codes, labels.t)
    lo, hi = group_slices(labels.codes[by_time], codes)
    known = np.isfinite(labels.known)
    wanted = {"frauds": labels.y == 1.0, "labeled": known}
    for delay in dict.fromkeys(r.delay for r in risks):
        shifted = labels.t + (delay.seconds if delay else 0.0)
        begin = np.maximum(np.nextafter(shifted, np.inf), labels.known)  # NaN: sorted last
        by_begin = _by_key(labels.codes, begin)
        begun = grouped_searchsorted(begin[by_begin], lo, hi, batch.times, "right")
        for window in dict.fromkeys(r.window for r in risks if r.delay == delay):
            end = shifted + window.seconds
            ended = grouped_searchsorted(end[by_time], lo, hi, batch.times, "right")
            valid = known & (begin < end)
            values = {
                stat: (_kept_before(keep & valid, by_begin, lo, begun)
                       - _kept_before(keep & valid, by_time, lo, ended)).astype(np.float64)
                for stat, keep in wanted.items()
            }  # fmt: skip
            frauds, labeled = values["frauds"], values["labeled"]
            values["rate"] = np.divide(frauds, labeled, out=np.zeros_like(frauds),
                                       where=labeled > 0)  # fmt: skip
            for r in risks:
                if (r.window, r.delay) == (window, delay):
                    out[r.name] = values[r.stat]
    return out


def _few_label_features(risks: list, batch: Batch, codes: np.ndarray,
                        labels: LabelHistory) -> dict[str, np.ndarray]:  # fmt: skip
    """:func:`_label_features` of a small batch: the same window edges, and per row its key's
    labels inside them counted by one compiled scan (:func:`kernels.label_counts`)."""
    out: dict[str, np.ndarray] = {}
    for delay in dict.fromkeys(r.delay for r in risks):
        shifted = labels.t + (delay.seconds if delay else 0.0)
        begin = np.maximum(np.nextafter(shifted, np.inf), labels.known)
        for window in dict.fromkeys(r.window for r in risks if r.delay == delay):
            frauds, labeled = label_counts(labels.codes, labels.known, begin,
                                           shifted + window.seconds, labels.y, codes,
                                           batch.times)  # fmt: skip
            rate = np.divide(frauds, labeled, out=np.zeros_like(frauds), where=labeled > 0)
            values = {"frauds": frauds, "labeled": labeled, "rate": rate}
            for r in risks:
                if (r.window, r.delay) == (window, delay):
                    out[r.name] = values[r.stat]
    return out


def _kept_before(
    keep: np.ndarray, order: np.ndarray, lo: np.ndarray, pos: np.ndarray
) -> np.ndarray:
    """Per query, how many of ``order[lo:pos]`` are kept."""
    running = np.concatenate(([0], np.cumsum(keep[order], dtype=np.int64)))
    return running[pos] - running[lo]


def compute_columns(
    spec: BehaviorSpec,
    batch: Batch,
    histories: dict[str, History],
    labels: dict[str, LabelHistory],
) -> dict[str, np.ndarray]:
    """Every feature of ``spec`` for every batch row, in ``spec.output_columns`` order.

    ``histories`` and ``labels`` are keyed by entity and coded by :func:`key_codes` of
    ``batch.keys[entity]``; rows of the batch see the stored events and each other (earlier
    times only), never themselves.
    """
    out: dict[str, np.ndarray] = calendar_features(spec, batch.times)
    for name, _ in spec.entities:
        _, codes = key_codes(batch.keys[name])
        if _needs_history(spec, name):
            out.update(_entity_features(spec, name, batch, codes, histories[name]))
        if any(r.entity == name for r in spec.label_risk):
            out.update(_label_features(spec, name, batch, codes, labels[name]))
    return {c: out[c] for c in spec.output_columns}


def compute(spec: BehaviorSpec, batch: Batch, histories: dict[str, History],
            labels: dict[str, LabelHistory]) -> pd.DataFrame:  # fmt: skip
    """:func:`compute_columns` as a DataFrame."""
    return pd.DataFrame(compute_columns(spec, batch, histories, labels))


class OnlineFeatures:
    """The online computer on the shared Redis state and a label cache (see module docstring)."""

    def __init__(self, spec: BehaviorSpec, store: RedisEventStore, label_cache) -> None:
        self.spec = spec
        self.store = store
        self.labels = label_cache
        self.entities = [n for n, _ in spec.entities if _needs_history(spec, n)]
        self.risk_entities = [n for n, _ in spec.entities
                              if any(r.entity == n for r in spec.label_risk)]  # fmt: skip
        self.output_columns = spec.output_columns
        columns = store.layout.columns
        self.one_row = [EntityPlan.build(spec, n, columns) for n in self.entities]
        self.one_row_risk = [RiskPlan.build(spec, n) for n in self.risk_entities]

    def _appends(self, batch: Batch, codes: np.ndarray, n_keys: int) -> list[bytes]:
        """Each key's new records (batch order), as slices of one packed buffer."""
        order = np.argsort(codes, kind="stable")
        packed = self.store.layout.pack(
            batch.times[order], batch.ids[order], {c: v[order] for c, v in batch.values.items()}
        )
        size = packed.dtype.itemsize
        bounds = np.searchsorted(codes[order], np.arange(n_keys + 1)) * size
        buf = packed.tobytes()
        return [buf[lo:hi] for lo, hi in itertools.pairwise(bounds.tolist())]

    def columns(self, batch: Batch) -> dict[str, np.ndarray]:
        """Features of ``batch`` from the state; appends the batch's events to it (in the same
        round trip), then trims keys that hold expired events."""
        if len(batch.times) == 1:
            row = self._one(batch)
            return {c: row[i : i + 1] for i, c in enumerate(self.output_columns)}
        keys: list[str] = []
        appends: list[bytes] = []
        coded = {name: key_codes(batch.keys[name]) for name, _ in self.spec.entities}
        for name in self.entities:
            uniques, codes = coded[name]
            keys.extend(self.store.key(name, u) for u in uniques)
            appends.extend(self._appends(batch, codes, len(uniques)))
        blobs = self.store.read_append_raw(keys, appends)
        histories, lo = {}, 0
        for name in self.entities:
            n = len(coded[name][0])
            histories[name] = self._history(blobs[lo : lo + n])
            lo += n
        labels = {name: self.labels.history(name, coded[name][0]) for name in self.risk_entities}
        out = compute_columns(self.spec, batch, histories, labels)
        sized = [(histories[n], len(coded[n][0])) for n in self.entities]
        self._expire(keys, sized, float(batch.times.max()))
        return out

    def rows(self, batch: Batch) -> np.ndarray:
        """:meth:`columns` as a float64 matrix (C order), a row per transaction, columns in
        ``spec.output_columns`` order."""
        if len(batch.times) == 1:
            return self._one(batch)[None, :]
        columns = list(self.columns(batch).values())
        return np.ascontiguousarray(np.concatenate(columns).reshape(len(columns), -1).T)

    def _one(self, batch: Batch) -> np.ndarray:
        """The features of a one-transaction batch (``spec.output_columns`` order) by the
        compiled kernels of :mod:`~fraud_lib.features.one_row` (the batch path's, bit for
        bit)."""
        keys = [self.store.key(name, str(batch.keys[name][0])) for name in self.entities]
        columns = self.store.layout.columns
        record = self.store.layout.pack(batch.times, batch.ids, batch.values).tobytes()
        blobs = self.store.read_append_raw(keys, [record] * len(keys))
        t0 = float(batch.times[0])
        x0 = np.array([batch.values[c][0] for c in columns], dtype=np.float64)
        cutoff = t0 - self.store.horizon if self.store.horizon else -np.inf
        out: dict[str, float] = calendar_row(self.spec, t0)
        stale = []
        for plan, key, blob in zip(self.one_row, keys, blobs, strict=True):
            values, trim = plan.compute(blob, self.store.layout.width, t0, x0, cutoff)
            out.update(zip(plan.names, values.tolist(), strict=True))
            if trim:
                stale.append(key)
        for risk in self.one_row_risk:
            rows = self.labels.rows(risk.entity, str(batch.keys[risk.entity][0]))
            out.update(zip(risk.names, risk.compute(rows, t0).tolist(), strict=True))
        if stale:
            self.store.trim(stale, t0)
        return np.array([out[c] for c in self.output_columns])

    def frame(self, batch: Batch) -> pd.DataFrame:
        """:meth:`columns` as a DataFrame."""
        return pd.DataFrame(self.columns(batch))

    def _history(self, blobs: list[bytes | None]) -> History:
        size = self.store.layout.dtype.itemsize
        lengths = np.fromiter((len(b) // size if b else 0 for b in blobs), np.int64, len(blobs))
        records = np.frombuffer(b"".join(b for b in blobs if b), dtype=self.store.layout.dtype)
        return History(np.repeat(np.arange(len(blobs)), lengths), records)

    def _expire(self, keys: list[str], histories: list[tuple[History, int]], now: float) -> None:
        """Trim the keys that hold more than one record past the horizon (the newest of them
        stays, see :mod:`~fraud_lib.features.online_store`);
        ``keys`` are the entities' keys in order, ``histories`` (history, key count) per entity."""
        if not self.store.horizon:
            return
        stale: list[str] = []
        lo = 0
        for h, n_keys in histories:
            old = h.records["t"] < now - self.store.horizon
            olds = np.bincount(h.codes[old], minlength=n_keys)
            stale.extend(keys[lo + i] for i in np.flatnonzero(olds > 1))
            lo += n_keys
        if stale:
            self.store.trim(stale, now)
