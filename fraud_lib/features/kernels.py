"""Vectorised kernels of the offline builder: a binary search inside groups and window moments.

Rows are sorted by (entity, time, tie-break); a group is one entity's contiguous block. Window
moments are plain numpy over whole columns (a few windows, as one online transaction has: a
compiled loop with the same result); the binary search inside groups is one compiled (numba)
loop per query. Both are compiled when this module is imported.

The last kernels are the online path of a single transaction (:mod:`fraud_lib.features.one_row`):
one call per entity, built from the same :func:`moments_of` and :func:`plus_one`, and
:func:`row_stats`, the one rule of every window stat (offline and batch too). They keep
the GIL (a request thread that released it for a few microseconds then waited to take it back
behind the worker's other threads: 15-23 % fewer transactions a second in a 4-thread test). They
are cached on disk (``cache=True``; numba checks only this file's timestamp, which is why they live
here with the functions they call).

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

from fraud_lib.features.spec import NO_PREVIOUS


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
        """A copy with each row's own value added (windows that include the current event):
        :meth:`add` of one-value blocks, compiled (the same float operations; ~10 numpy calls
        on one-row arrays were a fifth of an online transaction's feature time)."""
        out = Moments.empty(len(self.n))
        _add_current(self.n, self.s, self.m2, self.mx, np.asarray(x, dtype=np.float64),
                     out.n, out.s, out.m2, out.mx)  # fmt: skip
        return out


@numba.njit(nogil=True, cache=False)
def plus_one(na, sa, m2a, mxa, x):  # pragma: no cover - compiled
    """(n, s, m2, max) of a window's moments with the value ``x`` added: :meth:`Moments.add`
    of a one-value block (sum ``x``, moment 0, max ``x``), operation for operation."""
    total = na + 1.0
    mean_a = sa / na if na > 0 else 0.0
    delta = x / 1.0 - mean_a
    return total, sa + x, m2a + 0.0 + delta * delta * (na * 1.0 / total), np.maximum(mxa, x)


@numba.njit("void(float64[:], float64[:], float64[:], float64[:], float64[:], float64[:],"
            " float64[:], float64[:], float64[:])", nogil=True, cache=False)  # fmt: skip
def _add_current(n, s, m2, mx, x, n_out, s_out, m2_out, mx_out):  # pragma: no cover - compiled
    """:func:`plus_one` of every row's ``x``, written to the ``*_out`` arrays."""
    for i in range(n.shape[0]):
        n_out[i], s_out[i], m2_out[i], mx_out[i] = plus_one(n[i], s[i], m2[i], mx[i], x[i])


SMALL_QUERIES = 64  # up to this many windows, each is summed on its own (compiled)


@numba.njit("void(int64[:], float64[:], float64[:], float64[:], float64[:], int64[:], float64[:],"
            " float64[:], float64[:])", nogil=True, cache=False)  # fmt: skip
def _label_counts(
    label_codes, known, begin, end, y, codes, times, frauds, labeled
):  # pragma: no cover - compiled
    """Per query ``i``: the labels of its key (``label_codes == codes[i]``) with a finite
    ``known`` whose window ``[begin, end)`` holds ``times[i]``; the frauds (``y == 1``) and all."""
    for i in range(codes.shape[0]):
        c, t = codes[i], times[i]
        nf, nl = 0, 0
        for j in range(label_codes.shape[0]):
            if label_codes[j] == c and np.isfinite(known[j]) and begin[j] <= t < end[j]:
                nl += 1
                if y[j] == 1.0:
                    nf += 1
        frauds[i], labeled[i] = nf, nl


def label_counts(label_codes: np.ndarray, known: np.ndarray, begin: np.ndarray, end: np.ndarray,
                 y: np.ndarray, codes: np.ndarray, times: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(frauds, labeled) per query by one compiled scan of the labels (few queries: it costs
    queries x labels, against ~20 numpy calls per window for the sorted, vectorised count)."""
    frauds, labeled = np.empty(len(codes)), np.empty(len(codes))
    f8 = np.float64
    _label_counts(np.asarray(label_codes, np.int64), np.asarray(known, f8), np.asarray(begin, f8),
                  np.asarray(end, f8), np.asarray(y, f8), np.asarray(codes, np.int64),
                  np.asarray(times, f8), frauds, labeled)  # fmt: skip
    return frauds, labeled


@numba.njit(nogil=True, cache=False)
def moments_of(x, lo, length, buf_s, buf_m2, buf_mx):  # pragma: no cover - compiled
    """(n, s, m2, max) of ``x[lo:lo + length]`` as :func:`window_moments` sums it: each
    power-of-two block (the set bits of ``length``, from ``lo`` upward) reduced pairwise from
    its values, the same float operations in the same order as the sparse table's levels, so
    the moments are bit-identical (``tests/lib/test_features_online.py`` checks it). The
    buffers hold at least ``length`` values."""
    n, s, m2, mx = 0.0, 0.0, 0.0, -np.inf
    cur, rest, size = lo, length, 1
    while rest > 0:
        if rest & 1:
            for q in range(size):
                buf_s[q], buf_m2[q], buf_mx[q] = x[cur + q], 0.0, x[cur + q]
            half, width = 1, size
            while half < size:
                width //= 2
                for p in range(width):
                    a, b = buf_s[2 * p], buf_s[2 * p + 1]
                    delta = (b - a) / half
                    buf_m2[p] = buf_m2[2 * p] + buf_m2[2 * p + 1] + delta * delta * (half / 2.0)
                    buf_s[p] = a + b
                    buf_mx[p] = max(buf_mx[2 * p], buf_mx[2 * p + 1])
                half *= 2
            nb = float(size)
            total = n + nb
            mean_a = s / n if n > 0 else 0.0
            delta = buf_s[0] / nb - mean_a
            m2 = m2 + buf_m2[0] + delta * delta * (n * nb / total)
            s, n, mx = s + buf_s[0], total, max(mx, buf_mx[0])
            cur += size
        rest >>= 1
        size <<= 1
    return n, s, m2, mx


@numba.njit("void(float64[:], int64[:], int64[:], float64[:], float64[:], float64[:], float64[:])",
            nogil=True, cache=False)  # fmt: skip
def _windows_one_by_one(x, lo, length, n_out, s_out, m2_out, mx_out):  # pragma: no cover - compiled
    """:func:`moments_of` of every window ``x[lo[i]:lo[i] + length[i]]``."""
    buf_s = np.empty(max(1, int(length.max()) if length.size else 1))
    buf_m2 = np.empty_like(buf_s)
    buf_mx = np.empty_like(buf_s)
    for i in range(lo.shape[0]):
        n_out[i], s_out[i], m2_out[i], mx_out[i] = moments_of(x, lo[i], length[i], buf_s,
                                                              buf_m2, buf_mx)  # fmt: skip


def _few_window_moments(
    x: np.ndarray, ranges: list[tuple[np.ndarray, np.ndarray]]
) -> list[Moments]:
    out = []
    for lo, hi in ranges:
        m = Moments.empty(len(lo))
        _windows_one_by_one(
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
    x = np.asarray(x, dtype=np.float64)
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


RECORD_HEAD = 2  # an online record's time and id hash precede its columns (online_store)


@numba.njit(cache=True)
def _earlier(f, u, t0):  # pragma: no cover - compiled
    """Rows of the records ``f`` (times in column 0, id hashes in ``u``'s column 1) before
    ``t0``, sorted by (time, id hash), a repeated (time, id) dropped."""
    idx = np.empty(f.shape[0], dtype=np.int64)
    k, ordered = 0, True
    for i in range(f.shape[0]):
        if f[i, 0] < t0:
            if k and not f[i, 0] > f[idx[k - 1], 0]:
                ordered = False
            idx[k] = i
            k += 1
    idx = idx[:k]
    if ordered:
        return idx
    idx = idx[np.argsort(f[idx, 0], kind="mergesort")]
    for i in range(1, k):  # equal times by id hash (insertion sort: such runs are short)
        j = i
        while j and f[idx[j], 0] == f[idx[j - 1], 0] and u[idx[j], 1] < u[idx[j - 1], 1]:
            idx[j], idx[j - 1] = idx[j - 1], idx[j]
            j -= 1
    keep = np.ones(k, dtype=np.bool_)
    for i in range(1, k):
        keep[i] = not (f[idx[i], 0] == f[idx[i - 1], 0] and u[idx[i], 1] == u[idx[i - 1], 1])
    return idx[keep]


@numba.njit(cache=True)
def _row_stat(code, n, s, m2, mx, x):  # pragma: no cover - compiled
    """One stat of one window from its moments, ``x`` the current value (empty windows give
    0, the offline module docstring says why); ``code``: the stat's index in ``spec.STATS``."""
    mean = s / n if n > 0 else 0.0
    if code == 0:
        return n
    if code == 1:
        return s
    if code == 2:
        return mean
    if code == 3:
        return np.sqrt(max(m2 / n if n > 0 else 0.0, 0.0))
    if code == 4:
        return mx if n > 0 else 0.0
    return x / mean if mean != 0 else 0.0


@numba.njit(cache=True)
def row_stats(code, n, s, m2, mx, x, out):  # pragma: no cover - compiled
    """:func:`_row_stat` of every window ``i`` (moments ``n[i]``, ... and value ``x[i]``)."""
    for i in range(n.shape[0]):
        out[i] = _row_stat(code, n[i], s[i], m2[i], mx[i], x[i])


@numba.njit(cache=True)
def entity_row(
    f, t0, x0, windows, column, window, current, stat, since, cutoff, out
):  # pragma: no cover - compiled
    """One transaction's aggregates of one entity (see :mod:`fraud_lib.features.one_row`).

    ``f``: the entity's stored records (rows: time, id hash bits, aggregated columns); the
    transaction is at ``t0`` with column values ``x0``. Output ``j`` is the stat ``stat[j]``
    (its index in ``spec.STATS``) of column ``column[j]`` over ``windows[window[j]]``, the
    current value added if ``current[j]``; with ``since`` the last output is the time since
    the previous event. Returns whether more than one record is older than ``cutoff`` (the key
    needs a trim)."""
    order = _earlier(f, f.view(np.uint64), t0)
    k = order.shape[0]
    ts = np.empty(k)
    for i in range(k):
        ts[i] = f[order[i], 0]
    starts = np.empty(windows.shape[0], dtype=np.int64)
    for w in range(windows.shape[0]):  # the first event with time + window > t0
        lo, hi = 0, k
        while lo < hi:
            mid = (lo + hi) >> 1
            if ts[mid] + windows[w] <= t0:
                lo = mid + 1
            else:
                hi = mid
        starts[w] = lo
    n_cols = f.shape[1] - RECORD_HEAD
    moments = np.empty((n_cols, windows.shape[0], 4))
    xs, buf_s = np.empty(k), np.empty(max(1, k))
    buf_m2, buf_mx = np.empty_like(buf_s), np.empty_like(buf_s)
    for c in range(n_cols):
        for i in range(k):
            xs[i] = f[order[i], RECORD_HEAD + c]
        for w in range(windows.shape[0]):
            m = moments_of(xs, starts[w], k - starts[w], buf_s, buf_m2, buf_mx)
            moments[c, w, 0], moments[c, w, 1], moments[c, w, 2], moments[c, w, 3] = m
    for j in range(column.shape[0]):
        c = column[j]
        m = moments[c, window[j]]
        n, s, m2, mx = m[0], m[1], m[2], m[3]
        if current[j]:
            n, s, m2, mx = plus_one(n, s, m2, mx, x0[c])
        out[j] = _row_stat(stat[j], n, s, m2, mx, x0[c])
    if since:
        out[column.shape[0]] = t0 - ts[k - 1] if k > 0 else NO_PREVIOUS
    old = 0
    for i in range(f.shape[0]):
        if f[i, 0] < cutoff:
            old += 1
    return old > 1


@numba.njit(cache=True)
def label_row(rows, t0, delays, windows, pair, stat, out):  # pragma: no cover - compiled
    """One key's label risk at ``t0`` from its labeled events ``rows`` (time, labeled_at,
    label): per (``delays[p]``, ``windows[p]``) the known labels whose window holds ``t0``,
    and the frauds among them; output ``j`` is ``LABEL_STATS[stat[j]]`` of pair ``pair[j]``."""
    frauds, labeled = np.zeros(delays.shape[0]), np.zeros(delays.shape[0])
    for i in range(rows.shape[0]):
        known = rows[i, 1]
        if not np.isfinite(known):
            continue
        for p in range(delays.shape[0]):
            shifted = rows[i, 0] + delays[p]
            if max(np.nextafter(shifted, np.inf), known) <= t0 < shifted + windows[p]:
                labeled[p] += 1.0
                if rows[i, 2] == 1.0:
                    frauds[p] += 1.0
    for j in range(pair.shape[0]):
        p = pair[j]
        if stat[j] == 0:
            out[j] = frauds[p]
        elif stat[j] == 1:
            out[j] = labeled[p]
        else:
            out[j] = frauds[p] / labeled[p] if labeled[p] > 0 else 0.0
