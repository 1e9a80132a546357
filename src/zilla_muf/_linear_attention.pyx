# Kernels of zilla_muf.linear_attention.
#
# Design: the intra-chunk scores of gated linear attention with one gate per
# key channel, A[m, i, j] = sum_k q[m, i, k] k[m, j, k] exp(G[m, i, k] -
# G[m, j, k]) for j <= i (0 above the diagonal), G the cumulative log-gates
# inside the chunk. The exponent is a difference of cumulative gates that is
# never positive for j <= i, so nothing overflows and nothing is divided by a
# decay (the factored form q e^G times k e^-G would overflow for very
# negative gates). Layout: q, k, G of shape (M, C, K) C-contiguous, one row
# m per (head, chunk); the output (M, C, C) is allocated by the caller.
# `prange` over m, static schedule: every row costs the same.

import numpy as np

from cython.parallel cimport prange, threadid
from libc.math cimport exp, expf

from zilla_muf._types cimport real_t


cdef inline real_t _row_score(const real_t *qi, const real_t *gi, const real_t *kj,
                              const real_t *gj, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t c
    cdef real_t acc = 0
    for c in range(K):
        if real_t is float:
            acc = acc + qi[c] * kj[c] * expf(gi[c] - gj[c])
        else:
            acc = acc + qi[c] * kj[c] * exp(gi[c] - gj[c])
    return acc


cdef void _scores_rows(const real_t[:, :, ::1] q, const real_t[:, :, ::1] k,
                       const real_t[:, :, ::1] gc, real_t[:, :, ::1] out,
                       Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t C = q.shape[1], K = q.shape[2], i, j
    for i in range(C):
        for j in range(i + 1):
            out[m, i, j] = _row_score(&q[m, i, 0], &gc[m, i, 0], &k[m, j, 0],
                                      &gc[m, j, 0], K)
        for j in range(i + 1, C):
            out[m, i, j] = 0


def channel_gate_scores(const real_t[:, :, ::1] q, const real_t[:, :, ::1] k,
                        const real_t[:, :, ::1] gc, real_t[:, :, ::1] out,
                        int num_threads):
    """Fill `out` (M, C, C) with the per-channel-gated causal scores.

    Returns the number of threads that ran (1 without OpenMP).
    """
    cdef Py_ssize_t M = q.shape[0], C = q.shape[1], K = q.shape[2], m
    cdef int[::1] ran
    if (k.shape[0] != M or k.shape[1] != C or k.shape[2] != K
            or gc.shape[0] != M or gc.shape[1] != C or gc.shape[2] != K):
        raise ValueError("q, k and gc must have one shape (M, C, K)")
    if out.shape[0] != M or out.shape[1] != C or out.shape[2] != C:
        raise ValueError("out must have shape (M, C, C)")
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    if M == 0 or C == 0:
        return 1
    ran = np.zeros(num_threads, dtype=np.intc)
    with nogil:
        for m in prange(M, num_threads=num_threads, schedule='static'):
            _scores_rows(q, k, gc, out, m)
            ran[threadid()] = 1
    return int(np.count_nonzero(ran))


# The UT transform of the gated delta rule: in place, X <- (I + M)^{-1} X for
# every row m, M strictly lower triangular (its diagonal and upper triangle
# are not read). Forward substitution, one row of X at a time: the inner
# loop runs along the contiguous columns of X and vectorises.

cdef void _unit_lower_solve_row(const real_t[:, :, ::1] M, real_t[:, :, ::1] X,
                                Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t C = X.shape[1], W = X.shape[2], i, j, c
    cdef real_t a
    cdef real_t *xi
    cdef const real_t *xj
    for i in range(1, C):
        xi = &X[m, i, 0]
        for j in range(i):
            a = M[m, i, j]
            if a == 0:
                continue
            xj = &X[m, j, 0]
            for c in range(W):
                xi[c] = xi[c] - a * xj[c]


def unit_lower_solve(const real_t[:, :, ::1] M, real_t[:, :, ::1] X, int num_threads):
    """Overwrite X (batch, C, W) with (I + tril(M, -1))^{-1} X, M (batch, C, C)."""
    cdef Py_ssize_t B = X.shape[0], C = X.shape[1], m
    if M.shape[0] != B or M.shape[1] != C or M.shape[2] != C:
        raise ValueError("M must have shape (batch, C, C) matching X (batch, C, W)")
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    with nogil:
        for m in prange(B, num_threads=num_threads, schedule='static'):
            _unit_lower_solve_row(M, X, m)
