"""Vectorised kernels of the offline builder: a binary search inside groups and window moments.

Rows are sorted by (entity, time, tie-break); a group is one entity's contiguous block. Window
moments are plain numpy over whole columns (a few windows, as one online transaction has: a
compiled loop with the same result); the binary search inside groups is one compiled loop per
query. The loops are C, compiled when the project is installed (:mod:`fraud_lib.features._kernels`,
Cython): nothing is compiled when a process starts, and no JIT compiler is imported.

The last kernels are the online path of a single transaction (:mod:`fraud_lib.features.one_row`):
one call per entity, built from the same window moments and the same current-value rule as the
batch path, and :func:`row_stats`, the one rule of every window stat (offline and batch too).
They keep the GIL (a request thread that released it for a few microseconds then waited to take
it back behind the worker's other threads: 15-23 % fewer transactions a second in a 4-thread
test).

Window moments use a sparse table of power-of-two blocks: block sums are pairwise sums and block
second moments are combined with Chan's parallel formula (the vectorised equivalent of Welford),
so a window's sum is accurate to ~log2(n) ulps of the window's own magnitude and its standard
deviation does not suffer the cancellation of ``sum(x^2) - sum(x)^2 / n``, whatever the history
before the window. That is what lets the online computer, which sums only the events inside the
window, agree to 1e-9 relative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fraud_lib.features import _kernels
from fraud_lib.features._kernels import EntityKernel, LabelKernel, row_stats

__all__ = ["EntityKernel", "LabelKernel", "row_stats"]  # the compiled one-row and stat kernels


def grouped_searchsorted(
    keys: np.ndarray, start: np.ndarray, end: np.ndarray, values: np.ndarray, side: str
) -> np.ndarray:
    """For each query ``i``, ``np.searchsorted(keys[start[i]:end[i]], values[i], side) + start[i]``.

    ``keys`` must be sorted within each ``[start, end)`` slice. Exact (float comparisons only).
    """
    out = np.empty(len(start), dtype=np.int64)
    _kernels.grouped_search(np.asarray(keys, dtype=np.float64), np.asarray(start, dtype=np.int64),
                            np.asarray(end, dtype=np.int64), np.asarray(values, dtype=np.float64),
                            side == "right", out)  # fmt: skip
    return out


def group_slices(codes: np.ndarray, query_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[start, end)`` of each query's group in ``codes`` (sorted integer entity codes)."""
    return (
        np.searchsorted(codes, query_codes, side="left"),
        np.searchsorted(codes, query_codes, side="right"),
    )


def count_in_group(
    codes: np.ndarray, keys: np.ndarray, query_codes: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Number of elements of each query's group whose key is ``<=`` the query value.

    ``codes`` is sorted and ``keys`` sorted within each code.
    """
    start, end = group_slices(codes, query_codes)
    return grouped_searchsorted(keys, start, end, values, "right") - start


@dataclass
class Moments:
    """Count, sum, second central moment (sum of squared deviations) and max of windows."""

    n: np.ndarray
    s: np.ndarray
    m2: np.ndarray
    mx: np.ndarray

    @classmethod
    def empty(cls, size: int) -> Moments:
        """Moments of ``size`` empty windows (max is -inf until something is added)."""
        return cls(np.zeros(size), np.zeros(size), np.zeros(size), np.full(size, -np.inf))

    def add(self, idx: np.ndarray | slice, nb: float, sb: np.ndarray, m2b: np.ndarray,
            mxb: np.ndarray) -> None:  # fmt: skip
        """Merge blocks of ``nb`` values (sum ``sb``, moment ``m2b``, max ``mxb``) into rows idx."""
        na, sa = self.n[idx], self.s[idx]
        n = na + nb
        mean_a = np.divide(sa, na, out=np.zeros_like(sa), where=na > 0)
        delta = sb / nb - mean_a
        self.m2[idx] = self.m2[idx] + m2b + delta * delta * (na * nb / n)
        self.s[idx] = sa + sb
        self.n[idx] = n
        self.mx[idx] = np.maximum(self.mx[idx], mxb)

    def with_current(self, x: np.ndarray) -> Moments:
        """A copy with each row's own value added (windows that include the current event):
        :meth:`add` of one-value blocks, compiled (the same float operations; ~10 numpy calls
        on one-row arrays were a fifth of an online transaction's feature time)."""
        out = Moments.empty(len(self.n))
        _kernels.add_current(self.n, self.s, self.m2, self.mx, np.asarray(x, dtype=np.float64),
                             out.n, out.s, out.m2, out.mx)  # fmt: skip
        return out


SMALL_QUERIES = 64  # up to this many windows, each is summed on its own (compiled)


def label_counts(label_codes: np.ndarray, known: np.ndarray, begin: np.ndarray, end: np.ndarray,
                 y: np.ndarray, codes: np.ndarray, times: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(frauds, labeled) per query by one compiled scan of the labels (few queries: it costs
    queries x labels, against ~20 numpy calls per window for the sorted, vectorised count)."""
    frauds, labeled = np.empty(len(codes)), np.empty(len(codes))
    f8 = np.float64
    _kernels.label_counts(np.asarray(label_codes, np.int64), np.asarray(known, f8),
                          np.asarray(begin, f8), np.asarray(end, f8), np.asarray(y, f8),
                          np.asarray(codes, np.int64), np.asarray(times, f8), frauds,
                          labeled)  # fmt: skip
    return frauds, labeled


def _few_window_moments(
    x: np.ndarray, ranges: list[tuple[np.ndarray, np.ndarray]]
) -> list[Moments]:
    out = []
    for lo, hi in ranges:
        m = Moments.empty(len(lo))
        _kernels.windows_one_by_one(
            x, lo.astype(np.int64), (hi - lo).astype(np.int64), m.n, m.s, m.m2, m.mx
        )
        out.append(m)
    return out


def window_moments(x: np.ndarray, ranges: list[tuple[np.ndarray, np.ndarray]]) -> list[Moments]:
    """Moments of ``x[lo[i]:hi[i]]`` for every row ``i`` of every ``(lo, hi)`` in ``ranges``.

    Level ``k`` of the sparse table holds, for every start ``j``, the block ``x[j : j + 2**k]``;
    a window of length ``L`` is the union of the blocks given by the set bits of ``L``, taken
    from ``lo`` upward. Only one level is kept in memory at a time. Up to
    :data:`SMALL_QUERIES` windows (online single transactions) are summed one by one by a
    compiled loop instead, with the same result: building the table over an entity's whole
    history cost ~0.3 ms of numpy calls per transaction.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)  # the compiled loop reads it as contiguous
    if sum(len(lo) for lo, _ in ranges) <= SMALL_QUERIES:
        return _few_window_moments(x, ranges)
    lengths = [hi - lo for lo, hi in ranges]
    out = [Moments.empty(len(lo)) for lo, _ in ranges]
    cursors = [lo.astype(np.int64, copy=True) for lo, _ in ranges]
    top = max((int(length.max()) for length in lengths if len(length)), default=0)
    s, m2, mx = x.copy(), np.zeros_like(x), x.copy()
    size = 1
    for k in range(top.bit_length()):
        for acc, cur, length in zip(out, cursors, lengths, strict=True):
            idx = np.flatnonzero((length >> k) & 1)
            if idx.size:
                pos = cur[idx]
                acc.add(idx, float(size), s[pos], m2[pos], mx[pos])
                cur[idx] += size
        if (size << 1) <= top:
            delta = (s[size:] - s[:-size]) / size
            m2 = m2[:-size] + m2[size:] + delta * delta * (size / 2.0)
            s = s[:-size] + s[size:]
            mx = np.maximum(mx[:-size], mx[size:])
            size <<= 1
    return out
