# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The tree walk of :mod:`serving.trees`, compiled ahead of time (a C extension built when the
project is installed: no JIT compiler and no LLVM in a worker).

Rows go ``BLOCK`` at a time through each tree, one level per step for all rows of the block,
with no branch on the data, so the CPU overlaps the rows' memory loads instead of mispredicting
one branch per level. Leaf values are added in tree order to the baseline, as scikit-learn adds
them, and ``1 / (1 + exp(-x))`` with the C library's ``exp`` is scipy's ``expit`` bit for bit
(scikit-learn's, checked on the canary batch at every load).
"""

from libc.math cimport exp

cdef enum:
    BLOCK = 32  # rows walked together


cdef class TreeKernel:
    """The flat arrays of one model (see :class:`serving.trees.CompiledTrees`), held as typed
    views so that a call parses two arrays, not eight."""

    cdef const int[::1] roots, depths, feature, children
    cdef const double[::1] threshold, value
    cdef double baseline

    def __init__(self, roots, depths, feature, threshold, children, value, double baseline):
        self.roots = roots
        self.depths = depths
        self.feature = feature
        self.threshold = threshold
        self.children = children
        self.value = value
        self.baseline = baseline

    def predict(self, const double[:, ::1] X, double[::1] out, bint release_gil):
        """``out[i]`` = the fraud probability of finite row ``X[i]``. With ``release_gil``
        another thread runs Python meanwhile (for a batch; a few rows keep it: a thread that
        released it for microseconds waited to take it back behind the worker's others)."""
        if out.shape[0] != X.shape[0]:
            raise ValueError(f"out has {out.shape[0]} rows for {X.shape[0]}")
        if release_gil:
            with nogil:
                self._walk(X, out)
        else:
            self._walk(X, out)

    cdef void _walk(self, const double[:, ::1] X, double[::1] out) noexcept nogil:
        cdef int nodes[BLOCK]
        cdef double acc[BLOCK]
        cdef Py_ssize_t n = X.shape[0], start = 0, m, j, t, d, node
        while start < n:
            m = min(<Py_ssize_t>BLOCK, n - start)
            for j in range(m):
                acc[j] = self.baseline
            for t in range(self.roots.shape[0]):
                for j in range(m):
                    nodes[j] = self.roots[t]
                for d in range(self.depths[t]):
                    for j in range(m):
                        node = nodes[j]
                        nodes[j] = self.children[
                            2 * node + (X[start + j, self.feature[node]] > self.threshold[node])
                        ]
                for j in range(m):
                    acc[j] += self.value[nodes[j]]
            for j in range(m):
                out[start + j] = 1.0 / (1.0 + exp(-acc[j]))
            start += BLOCK
