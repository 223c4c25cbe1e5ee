# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The compiled loops of :mod:`fraud_lib.features.kernels`, built ahead of time (a C extension
built when the project is installed: no JIT compiler and no LLVM in a worker, nothing compiled
when a worker starts).

The float operations are those of the vectorised numpy code they stand beside, in the same
order (no fast-math, no FMA contraction: the default x86-64 target has none), so offline and
online features agree bit for bit where the tests say so. The batch loops release the GIL; the
one-transaction ones (:class:`EntityKernel`, :class:`LabelKernel`) keep it (a request thread that
released it for a few microseconds then waited to take it back behind the worker's others).
Those two hold their plan's arrays and check them once, and check each call's arrays against
the plan: the loops themselves check no index.
"""

import numpy as np

from libc.math cimport INFINITY, isfinite, nextafter, sqrt
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

from fraud_lib.features.spec import NO_PREVIOUS

cdef double NO_PREVIOUS_VALUE = NO_PREVIOUS  # time since the previous event when there is none
cdef Py_ssize_t RECORD_HEAD = 2  # a stored record's time and id hash precede its columns


cdef inline double _max(double a, double b) noexcept nogil:
    """numpy's ``maximum`` of two non-NaN floats (the first on a tie)."""
    return a if a >= b else b


cdef inline unsigned long long _bits(double x) noexcept nogil:
    """The 64 bits of ``x`` (an id hash stored in a float64 field) as an unsigned integer."""
    cdef unsigned long long out
    memcpy(&out, &x, 8)
    return out


def grouped_search(const double[:] keys, const long long[:] start, const long long[:] end,
                   const double[:] values, bint right, long long[::1] out):
    """One binary search per query inside its ``[start, end)`` slice of ``keys``."""
    cdef Py_ssize_t i
    cdef long long lo, hi, mid
    cdef double v
    with nogil:
        for i in range(start.shape[0]):
            lo, hi, v = start[i], end[i], values[i]
            while lo < hi:
                mid = (lo + hi) >> 1
                if (keys[mid] <= v) if right else (keys[mid] < v):
                    lo = mid + 1
                else:
                    hi = mid
            out[i] = lo


cdef inline void _plus_one(double na, double sa, double m2a, double mxa, double x,
                           double* out) noexcept nogil:
    """(n, s, m2, max) of a window's moments with the value ``x`` added: ``Moments.add`` of a
    one-value block (sum ``x``, moment 0, max ``x``), operation for operation."""
    cdef double total = na + 1.0
    cdef double mean_a = sa / na if na > 0 else 0.0
    cdef double delta = x / 1.0 - mean_a
    out[0] = total
    out[1] = sa + x
    out[2] = m2a + 0.0 + delta * delta * (na * 1.0 / total)
    out[3] = _max(mxa, x)


def add_current(const double[:] n, const double[:] s, const double[:] m2,
                const double[:] mx, const double[:] x, double[::1] n_out, double[::1] s_out,
                double[::1] m2_out, double[::1] mx_out):
    """The moments of every row with its own value ``x[i]`` added, into the ``*_out`` arrays."""
    cdef Py_ssize_t i
    cdef double m[4]
    with nogil:
        for i in range(n.shape[0]):
            _plus_one(n[i], s[i], m2[i], mx[i], x[i], m)
            n_out[i], s_out[i], m2_out[i], mx_out[i] = m[0], m[1], m[2], m[3]


def label_counts(const long long[:] label_codes, const double[:] known,
                 const double[:] begin, const double[:] end, const double[:] y,
                 const long long[:] codes, const double[:] times, double[::1] frauds,
                 double[::1] labeled):
    """Per query ``i``: the labels of its key (``label_codes == codes[i]``) with a finite
    ``known`` whose window ``[begin, end)`` holds ``times[i]``; the frauds (``y == 1``) and all."""
    cdef Py_ssize_t i, j
    cdef long long c
    cdef double t, nf, nl
    with nogil:
        for i in range(codes.shape[0]):
            c, t = codes[i], times[i]
            nf, nl = 0.0, 0.0
            for j in range(label_codes.shape[0]):
                if label_codes[j] == c and isfinite(known[j]) and begin[j] <= t < end[j]:
                    nl += 1.0
                    if y[j] == 1.0:
                        nf += 1.0
            frauds[i], labeled[i] = nf, nl


cdef void _moments_of(const double* x, Py_ssize_t lo, Py_ssize_t length, double* buf_s,
                      double* buf_m2, double* buf_mx, double* out) noexcept nogil:
    """(n, s, m2, max) of ``x[lo:lo + length]`` as ``window_moments`` sums it: each
    power-of-two block (the set bits of ``length``, from ``lo`` upward) reduced pairwise from
    its values, the same float operations in the same order as the sparse table's levels, so
    the moments are bit-identical (``tests/lib/test_features_online.py`` checks it). The
    buffers hold at least ``length`` values."""
    cdef double n = 0.0, s = 0.0, m2 = 0.0, mx = -INFINITY
    cdef double a, b, delta, nb, total, mean_a
    cdef Py_ssize_t cur = lo, rest = length, size = 1, q, p, half, width
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
                    buf_mx[p] = _max(buf_mx[2 * p], buf_mx[2 * p + 1])
                half *= 2
            nb = <double>size
            total = n + nb
            mean_a = s / n if n > 0 else 0.0
            delta = buf_s[0] / nb - mean_a
            m2 = m2 + buf_m2[0] + delta * delta * (n * nb / total)
            s, n, mx = s + buf_s[0], total, _max(mx, buf_mx[0])
            cur += size
        rest >>= 1
        size <<= 1
    out[0], out[1], out[2], out[3] = n, s, m2, mx


def windows_one_by_one(const double[::1] x, const long long[:] lo,
                       const long long[:] length, double[::1] n_out, double[::1] s_out,
                       double[::1] m2_out, double[::1] mx_out):
    """The moments of every window ``x[lo[i]:lo[i] + length[i]]``."""
    cdef Py_ssize_t i, longest = 1
    for i in range(length.shape[0]):
        if length[i] > longest:
            longest = length[i]
    cdef double[::1] buf = np.empty(3 * longest)
    cdef const double* values = &x[0] if x.shape[0] else NULL
    cdef double m[4]
    with nogil:
        for i in range(lo.shape[0]):
            _moments_of(values, lo[i], length[i], &buf[0], &buf[longest], &buf[2 * longest], m)
            n_out[i], s_out[i], m2_out[i], mx_out[i] = m[0], m[1], m[2], m[3]


cdef inline double _row_stat(long long code, double n, double s, double m2, double mx,
                             double x) noexcept nogil:
    """One stat of one window from its moments, ``x`` the current value (empty windows give 0,
    the offline module docstring says why); ``code``: the stat's index in ``spec.STATS``."""
    cdef double mean = s / n if n > 0 else 0.0
    if code == 0:
        return n
    if code == 1:
        return s
    if code == 2:
        return mean
    if code == 3:
        return sqrt(_max(m2 / n if n > 0 else 0.0, 0.0))
    if code == 4:
        return mx if n > 0 else 0.0
    return x / mean if mean != 0 else 0.0


def row_stats(long long code, const double[:] n, const double[:] s, const double[:] m2,
              const double[:] mx, const double[:] x, double[::1] out):
    """The stat ``code`` of every window ``i`` (moments ``n[i]``, ... and value ``x[i]``)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(n.shape[0]):
            out[i] = _row_stat(code, n[i], s[i], m2[i], mx[i], x[i])


cdef Py_ssize_t _earlier(const double[:, ::1] f, double t0, Py_ssize_t* idx) except -1:
    """Into ``idx``: the rows of the records ``f`` (times in column 0, id hashes in column 1)
    before ``t0``, sorted by (time, id hash), a repeated (time, id) dropped; returns how many."""
    cdef Py_ssize_t i, k = 0, kept
    cdef bint ordered = True
    for i in range(f.shape[0]):
        if f[i, 0] < t0:
            if k and not f[i, 0] > f[idx[k - 1], 0]:
                ordered = False
            idx[k] = i
            k += 1
    if ordered:
        return k
    # one stable sort by (time, id hash): O(k log k) however many events share a time (an
    # insertion sort of equal times took 288 ms for 10,000 events sent with one timestamp)
    rows = np.array([idx[i] for i in range(k)], dtype=np.intp)
    records = np.asarray(f)[rows]
    cdef Py_ssize_t[::1] ordered_rows = rows[np.lexsort((records[:, 1].view(np.uint64), records[:, 0]))]
    for i in range(k):
        idx[i] = ordered_rows[i]
    kept = min(k, 1)
    for i in range(1, k):  # a retried transaction's stored copy: the same time and id hash
        if not (f[idx[i], 0] == f[idx[i - 1], 0] and _bits(f[idx[i], 1]) == _bits(f[idx[i - 1], 1])):
            idx[kept] = idx[i]
            kept += 1
    return kept


cdef class EntityKernel:
    """One transaction's aggregates of one entity (see :mod:`fraud_lib.features.one_row`): the
    plan's arrays are held here, so that a call parses three arrays, not eight.

    Output ``j`` is the stat ``stat[j]`` (its index in ``spec.STATS``) of record column
    ``column[j]`` over ``windows[window[j]]``, the current value added if ``current[j]``; with
    ``since`` one more output, the time since the previous event."""

    cdef const double[::1] windows
    cdef const long long[::1] column, window, stat
    cdef const unsigned char[::1] current
    cdef bint since
    cdef Py_ssize_t columns_needed

    def __init__(self, windows, column, window, current, stat, bint since):
        self.windows, self.column, self.window = windows, column, window
        self.current, self.stat, self.since = current, stat, since
        n = self.column.shape[0]
        if not (self.window.shape[0] == self.current.shape[0] == self.stat.shape[0] == n):
            raise ValueError("an entity plan's arrays have unequal lengths")
        if n and (min(window) < 0 or max(window) >= self.windows.shape[0] or min(column) < 0):
            raise ValueError("an entity plan names a window or column it does not have")
        self.columns_needed = max(column) + 1 if n else 0

    @property
    def outputs(self) -> int:
        """How many values :meth:`compute` writes."""
        return self.column.shape[0] + self.since

    def compute(self, const double[:, ::1] f, double t0, const double[:] x0, double cutoff,
                double[::1] out):
        """The outputs into ``out`` from the entity's stored records ``f`` (rows: time, id
        hash bits, aggregated columns) for a transaction at ``t0`` with column values ``x0``.
        Returns whether more than one record is older than ``cutoff`` (the key needs a trim)."""
        cdef Py_ssize_t n_cols = f.shape[1] - RECORD_HEAD, n_w = self.windows.shape[0]
        if n_cols < 0:
            raise ValueError(f"records of {f.shape[1]} fields: a record starts with its time and id hash")
        if n_cols < self.columns_needed or x0.shape[0] < self.columns_needed:
            raise ValueError(f"records of {n_cols} columns for a plan that needs {self.columns_needed}")
        if out.shape[0] < self.outputs:
            raise ValueError(f"out holds {out.shape[0]} values, not {self.outputs}")
        cdef Py_ssize_t rows = f.shape[0], room = max(1, rows)
        cdef Py_ssize_t* idx = <Py_ssize_t*>PyMem_Malloc((room + n_w) * sizeof(Py_ssize_t))
        cdef double* scratch = <double*>PyMem_Malloc((5 * room + 4 * n_cols * n_w) * sizeof(double))
        if idx == NULL or scratch == NULL:
            PyMem_Free(idx)
            PyMem_Free(scratch)
            raise MemoryError()
        try:
            self._compute(f, t0, x0, out, idx, scratch, room)
        finally:
            PyMem_Free(idx)
            PyMem_Free(scratch)
        cdef Py_ssize_t i, old = 0
        for i in range(rows):
            if f[i, 0] < cutoff:
                old += 1
        return old > 1

    cdef int _compute(self, const double[:, ::1] f, double t0, const double[:] x0,
                      double[::1] out, Py_ssize_t* idx, double* scratch, Py_ssize_t room) except -1:
        cdef Py_ssize_t k = _earlier(f, t0, idx), n_w = self.windows.shape[0]
        cdef Py_ssize_t n_cols = f.shape[1] - RECORD_HEAD, i, w, c, j, lo, hi, mid
        cdef Py_ssize_t* starts = idx + room
        cdef double* ts = scratch
        cdef double* buf = scratch + 2 * room  # 3 x room: sums, moments, maxima
        cdef double* moments = scratch + 5 * room  # [column][window][n, s, m2, max]
        cdef double* xs = scratch + room
        cdef double m[4]
        for i in range(k):
            ts[i] = f[idx[i], 0]
        for w in range(n_w):  # the first event with time + window > t0
            lo, hi = 0, k
            while lo < hi:
                mid = (lo + hi) >> 1
                if ts[mid] + self.windows[w] <= t0:
                    lo = mid + 1
                else:
                    hi = mid
            starts[w] = lo
        for c in range(n_cols):
            for i in range(k):
                xs[i] = f[idx[i], RECORD_HEAD + c]
            for w in range(n_w):
                _moments_of(xs, starts[w], k - starts[w], buf, buf + room, buf + 2 * room,
                            moments + 4 * (c * n_w + w))
        for j in range(self.column.shape[0]):
            c = self.column[j]
            for i in range(4):
                m[i] = moments[4 * (c * n_w + self.window[j]) + i]
            if self.current[j]:
                _plus_one(m[0], m[1], m[2], m[3], x0[c], m)
            out[j] = _row_stat(self.stat[j], m[0], m[1], m[2], m[3], x0[c])
        if self.since:
            out[self.column.shape[0]] = t0 - ts[k - 1] if k > 0 else NO_PREVIOUS_VALUE
        return 0


cdef class LabelKernel:
    """One key's label risk (see :mod:`fraud_lib.features.one_row`): per (``delays[p]``,
    ``windows[p]``) the known labels whose window holds the transaction's time, and the frauds
    among them; output ``j`` is ``LABEL_STATS[stat[j]]`` of pair ``pair[j]``."""

    cdef const double[::1] delays, windows
    cdef const long long[::1] pair, stat

    def __init__(self, delays, windows, pair, stat):
        self.delays, self.windows, self.pair, self.stat = delays, windows, pair, stat
        if self.delays.shape[0] != self.windows.shape[0] or self.pair.shape[0] != self.stat.shape[0]:
            raise ValueError("a label-risk plan's arrays have unequal lengths")
        if self.pair.shape[0] and (min(pair) < 0 or max(pair) >= self.delays.shape[0]):
            raise ValueError("a label-risk plan names a (delay, window) it does not have")

    def compute(self, const double[:, ::1] rows, double t0, double[::1] out):
        """The outputs into ``out`` from the key's labeled events ``rows`` (time, labeled_at,
        label) at ``t0``."""
        if rows.shape[0] and rows.shape[1] < 3:
            raise ValueError("labeled events need 3 columns: time, labeled_at, label")
        if out.shape[0] < self.pair.shape[0]:
            raise ValueError(f"out holds {out.shape[0]} values, not {self.pair.shape[0]}")
        cdef Py_ssize_t n_p = self.delays.shape[0], i, p, j
        cdef double* counts = <double*>PyMem_Malloc(max(1, 2 * n_p) * sizeof(double))
        if counts == NULL:
            raise MemoryError()
        for i in range(2 * n_p):
            counts[i] = 0.0
        cdef double* frauds = counts
        cdef double* labeled = counts + n_p
        cdef double known, shifted
        for i in range(rows.shape[0]):
            known = rows[i, 1]
            if not isfinite(known):
                continue
            for p in range(n_p):
                shifted = rows[i, 0] + self.delays[p]
                if _max(nextafter(shifted, INFINITY), known) <= t0 < shifted + self.windows[p]:
                    labeled[p] += 1.0
                    if rows[i, 2] == 1.0:
                        frauds[p] += 1.0
        for j in range(self.pair.shape[0]):
            p = self.pair[j]
            if self.stat[j] == 0:
                out[j] = frauds[p]
            elif self.stat[j] == 1:
                out[j] = labeled[p]
            else:
                out[j] = frauds[p] / labeled[p] if labeled[p] > 0 else 0.0
        PyMem_Free(counts)
