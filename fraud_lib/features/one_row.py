"""The online computer's path for a batch of one transaction: each entity's features in one
compiled call.

A single transaction is what most scoring requests carry. The batch path
(:func:`fraud_lib.features.online.compute_columns`) spends ~40 numpy calls on one-row arrays per
transaction (sorts, searches, window moments, stats: ~0.5 ms of a worker's CPU, more than the
rest of the request); here one compiled call per entity reads the entity's stored records (the
Redis blob viewed as rows of float64 / uint64: time, id hash, aggregated columns) and computes
its aggregates and time since previous, and one call per label-risk entity counts its labels.
The rules and the float operations are the batch path's: the events before the transaction's
time, sorted by (time, id hash), a retried transaction's stored copy dropped; windows summed by
the compiled window moments of :mod:`fraud_lib.features._kernels`, the current value added as
``Moments.with_current`` adds it. ``tests/lib/test_features_one_row.py`` checks
the two paths bit for bit (sorted, unsorted, duplicated, empty histories, labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fraud_lib.features.kernels import EntityKernel, LabelKernel
from fraud_lib.features.spec import LABEL_STATS, SEP, STATS, BehaviorSpec


@dataclass(frozen=True)
class EntityPlan:
    """One entity's output names and the :class:`~fraud_lib.features.kernels.EntityKernel`
    that computes them."""

    entity: str
    names: tuple[str, ...]
    kernel: EntityKernel

    @classmethod
    def build(cls, spec: BehaviorSpec, entity: str, columns: tuple[str, ...]) -> EntityPlan:
        """The plan of ``entity``'s aggregates over the record ``columns``."""
        aggs = [a for a in spec.aggregates if a.entity == entity]
        windows = list(dict.fromkeys(a.window.seconds for a in aggs))
        since = any(s.entity == entity for s in spec.time_since)
        names = [a.name for a in aggs] + ([f"{entity}{SEP}time_since_prev"] if since else [])
        kernel = EntityKernel(
            np.array(windows, dtype=np.float64),
            np.array([columns.index(a.column) for a in aggs], dtype=np.int64),
            np.array([windows.index(a.window.seconds) for a in aggs], dtype=np.int64),
            np.array([a.include_current for a in aggs], dtype=np.uint8),
            np.array([STATS.index(a.stat) for a in aggs], dtype=np.int64), since,
        )  # fmt: skip
        return cls(entity, tuple(names), kernel)

    def compute(self, records: bytes | None, width: int, t0: float, x0: np.ndarray,
                cutoff: float) -> tuple[np.ndarray, bool]:  # fmt: skip
        """(outputs in :attr:`names` order, whether the key needs a trim) from the entity's
        stored blob (``width`` 8-byte fields per record)."""
        f = np.frombuffer(records or b"", dtype="<f8").reshape(-1, width)
        out = np.empty(len(self.names))
        return out, self.kernel.compute(f, t0, x0, cutoff, out)


@dataclass(frozen=True)
class RiskPlan:
    """One entity's label-risk output names and the
    :class:`~fraud_lib.features.kernels.LabelKernel` that computes them."""

    entity: str
    names: tuple[str, ...]
    kernel: LabelKernel

    @classmethod
    def build(cls, spec: BehaviorSpec, entity: str) -> RiskPlan:
        """The plan of ``entity``'s label risk."""
        risks = [r for r in spec.label_risk if r.entity == entity]
        pairs = list(dict.fromkeys((r.delay.seconds if r.delay else 0.0, r.window.seconds)
                                   for r in risks))  # fmt: skip
        kernel = LabelKernel(
            np.array([d for d, _ in pairs], dtype=np.float64),
            np.array([w for _, w in pairs], dtype=np.float64),
            np.array([pairs.index((r.delay.seconds if r.delay else 0.0, r.window.seconds))
                      for r in risks], dtype=np.int64),
            np.array([LABEL_STATS.index(r.stat) for r in risks], dtype=np.int64),
        )  # fmt: skip
        return cls(entity, tuple(r.name for r in risks), kernel)

    def compute(self, rows: np.ndarray, t0: float) -> np.ndarray:
        """Outputs in :attr:`names` order from the key's labeled events (time, labeled_at,
        label)."""
        out = np.empty(len(self.names))
        self.kernel.compute(np.ascontiguousarray(rows, dtype=np.float64), t0, out)
        return out
