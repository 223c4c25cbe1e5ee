"""Vectorised kernels of the offline builder: a binary search inside groups and window moments.

Rows are sorted by (entity, time, tie-break); a group is one entity's contiguous block. Window
moments are plain numpy over whole columns; the binary search inside groups is one compiled
(numba) loop per query, compiled when this module is imported.

Window moments use a sparse table of power-of-two blocks: block sums are pairwise sums and block
second moments are combined with Chan's parallel formula (the vectorised equivalent of Welford),
so a window's sum is accurate to ~log2(n) ulps of the window's own magnitude and its standard
deviation does not suffer the cancellation of ``sum(x^2) - sum(x)^2 / n``, whatever the history
before the window. That is what lets the online computer, which sums only the events inside the
window, agree to 1e-9 relative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@numba.njit("void(float64[:], int64[:], int64[:], float64[:], boolean, int64[:])", nogil=True,
            cache=False)  # fmt: skip
def _grouped_search(keys, start, end, values, right, out):  # pragma: no cover - compiled
    """One binary search per query inside its ``[start, end)`` slice."""
    for i in range(start.shape[0]):
        lo, hi, v = start[i], end[i], values[i]
        while lo < hi:
            mid = (lo + hi) >> 1
            if (keys[mid] <= v) if right else (keys[mid] < v):
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo


def grouped_searchsorted(
    keys: np.ndarray, start: np.ndarray, end: np.ndarray, values: np.ndarray, side: str
) -> np.ndarray:
    """For each query ``i``, ``np.searchsorted(keys[start[i]:end[i]], values[i], side) + start[i]``.

    ``keys`` must be sorted within each ``[start, end)`` slice. Exact (float comparisons only).
    """
    out = np.empty(len(start), dtype=np.int64)
    _grouped_search(np.asarray(keys, dtype=np.float64), np.asarray(start, dtype=np.int64),
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
        """A copy with each row's own value added (windows that include the current event)."""
        out = Moments(self.n.copy(), self.s.copy(), self.m2.copy(), self.mx.copy())
        out.add(slice(None), 1.0, x, np.zeros_like(x), x)
        return out


def window_moments(x: np.ndarray, ranges: list[tuple[np.ndarray, np.ndarray]]) -> list[Moments]:
    """Moments of ``x[lo[i]:hi[i]]`` for every row ``i`` of every ``(lo, hi)`` in ``ranges``.

    Level ``k`` of the sparse table holds, for every start ``j``, the block ``x[j : j + 2**k]``;
    a window of length ``L`` is the union of the blocks given by the set bits of ``L``, taken
    from ``lo`` upward. Only one level is kept in memory at a time.
    """
    x = np.asarray(x, dtype=np.float64)
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
