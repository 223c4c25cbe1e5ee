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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraud_lib.features.kernels import (
    count_in_group,
    group_slices,
    grouped_searchsorted,
    window_moments,
)
from fraud_lib.features.offline import calendar_features, window_stat
from fraud_lib.features.online_store import RecordLayout, RedisEventStore, id_hash
from fraud_lib.features.spec import NO_PREVIOUS, SEP, BehaviorSpec

logger = logging.getLogger(__name__)


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
        ids = frame[spec.id].astype(str) if spec.id else pd.Series(range(len(frame))).astype(str)
        layout = RecordLayout.for_spec(spec)
        return cls(
            times=np.asarray(times, dtype=np.float64),
            ids=np.fromiter((id_hash(i) for i in ids), dtype=np.uint64, count=len(frame)),
            keys={n: frame[c].astype(str).to_numpy() for n, c in spec.entities},
            values={c: pd.to_numeric(frame[c]).to_numpy(np.float64) for c in layout.columns},
        )


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
    """(distinct keys, code of each row)."""
    codes, uniques = pd.factorize(keys)
    return np.asarray(uniques, dtype=object), codes.astype(np.int64)


def _needs_history(spec: BehaviorSpec, entity: str) -> bool:
    return any(a.entity == entity for a in spec.aggregates) or any(
        s.entity == entity for s in spec.time_since
    )


def _entity_features(spec: BehaviorSpec, entity: str, batch: Batch, codes: np.ndarray,
                     hist: History) -> dict[str, np.ndarray]:  # fmt: skip
    """Aggregates and time since previous of one entity, for every batch row."""
    retried = np.isin(hist.records["id"], batch.ids)
    rec = hist.records[~retried]
    h_codes = hist.codes[~retried]
    all_codes = np.concatenate([h_codes, codes])
    all_t = np.concatenate([rec["t"], batch.times])
    order = np.lexsort((np.concatenate([rec["id"], batch.ids]), all_t, all_codes))
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
        for a in group:
            m = moments[a.window].with_current(x_rows) if a.include_current else moments[a.window]
            out[a.name] = window_stat(a, m, x_rows)
    if any(s.entity == entity for s in spec.time_since):
        has = earlier > start
        prev = s_t[np.maximum(earlier - 1, 0)] if len(s_t) else np.zeros(len(codes))
        out[f"{entity}{SEP}time_since_prev"] = np.where(has, batch.times - prev, NO_PREVIOUS)
    return out


def _label_features(spec: BehaviorSpec, entity: str, batch: Batch, codes: np.ndarray,
                    labels: LabelHistory) -> dict[str, np.ndarray]:  # fmt: skip
    """Label risk of one entity for every batch row (rules: the offline module docstring)."""
    out: dict[str, np.ndarray] = {}
    risks = [r for r in spec.label_risk if r.entity == entity]
    for window, delay in dict.fromkeys((r.window, r.delay) for r in risks):
        shifted = labels.t + (delay.seconds if delay else 0.0)
        begin = np.maximum(np.nextafter(shifted, np.inf), labels.known)
        end = shifted + window.seconds
        counts = []
        for wanted in (labels.y == 1.0, np.isfinite(labels.known)):
            keep = wanted & np.isfinite(labels.known) & (begin < end)
            c = labels.codes[keep]
            tallies = []
            for edge in (begin[keep], end[keep]):
                o = np.lexsort((edge, c))
                tallies.append(count_in_group(c[o], edge[o], codes, batch.times))
            counts.append((tallies[0] - tallies[1]).astype(np.float64))
        frauds, labeled = counts
        rate = np.divide(frauds, labeled, out=np.zeros_like(frauds), where=labeled > 0)
        values = {"frauds": frauds, "labeled": labeled, "rate": rate}
        for r in risks:
            if (r.window, r.delay) == (window, delay):
                out[r.name] = values[r.stat]
    return out


def compute(
    spec: BehaviorSpec,
    batch: Batch,
    histories: dict[str, History],
    labels: dict[str, LabelHistory],
) -> pd.DataFrame:
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
    return pd.DataFrame(out)[spec.output_columns]


class OnlineFeatures:
    """The online computer on the shared Redis state and a label cache (see module docstring)."""

    def __init__(self, spec: BehaviorSpec, store: RedisEventStore, label_cache) -> None:
        self.spec = spec
        self.store = store
        self.labels = label_cache

    def _records(self, batch: Batch, rows: np.ndarray) -> np.ndarray:
        return self.store.layout.pack(
            batch.times[rows], batch.ids[rows], {c: v[rows] for c, v in batch.values.items()}
        )

    def compute(self, batch: Batch) -> pd.DataFrame:
        """Features of ``batch`` from the state; appends the batch's events to it (one round
        trip), then trims keys that hold expired events."""
        entities = [n for n, _ in self.spec.entities if _needs_history(self.spec, n)]
        keys: list[str] = []
        appends: list[np.ndarray] = []
        spans: dict[str, tuple[int, int]] = {}
        for name in entities:
            uniques, codes = key_codes(batch.keys[name])
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
            spans[name] = (len(keys), len(keys) + len(uniques))
            keys.extend(self.store.key(name, str(u)) for u in uniques)
            appends.extend(
                self._records(batch, order[lo:hi]) for lo, hi in itertools.pairwise(bounds)
            )
        stored = self.store.read_append(keys, appends)
        histories = {}
        for name, (lo, hi) in spans.items():
            part = stored[lo:hi]
            codes = np.repeat(np.arange(hi - lo), [len(p) for p in part])
            records = np.concatenate(part) if part else np.empty(0, self.store.layout.dtype)
            histories[name] = History(codes, records)
        labels = {
            name: self.labels.history(name, key_codes(batch.keys[name])[0])
            for name, _ in self.spec.entities
            if any(r.entity == name for r in self.spec.label_risk)
        }
        out = compute(self.spec, batch, histories, labels)
        self.store.expire(keys, stored, float(batch.times.max()))
        return out
