# Kernels of zilla_muf.linear_attention.
#
# Design: the intra-chunk scores of gated linear attention with one gate per
# key channel, A[m, i, j] = sum_k q[m, i, k] k[m, j, k] exp(G[m, i, k] -
# G[m, j, k]) for j <= i (0 above the diagonal), G the cumulative log-gates
# inside the chunk. The exponent is a difference of cumulative gates that is
# never positive for j <= i, so nothing overflows and nothing is divided by a
# decay (the factored form q e^G times k e^-G would overflow for very
# negative gates); the exponentials are the decay element of _vmath.h (0
# below its threshold, as every chunked form's decays). Layout: q, k, G of
# shape (M, C, K) C-contiguous, one row m per (head, chunk); the output
# (M, C, C) is allocated by the caller.
# `prange` over m, static schedule: every row costs the same.

import numpy as np

from cython.parallel cimport parallel, prange, threadid

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block
from zilla_muf._types cimport real_t
from zilla_muf._vmath cimport vdecay


cdef inline real_t _row_score(const real_t *qi, const real_t *gi, const real_t *kj,
                              const real_t *gj, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t c
    cdef real_t acc = 0
    for c in range(K):
        acc = acc + qi[c] * kj[c] * vdecay(gi[c] - gj[c])
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
    cdef Scratch scr
    cdef scratch_t *ws
    if (k.shape[0] != M or k.shape[1] != C or k.shape[2] != K
            or gc.shape[0] != M or gc.shape[1] != C or gc.shape[2] != K):
        raise ValueError("q, k and gc must have one shape (M, C, K)")
    if out.shape[0] != M or out.shape[1] != C or out.shape[2] != C:
        raise ValueError("out must have shape (M, C, C)")
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    if M == 0 or C == 0:
        return 1
    # no work space: only the record of which threads ran
    scr = Scratch(num_threads, 0, 1, "the score kernel's thread record")
    ws = &scr.s
    with nogil:
        for m in prange(M, num_threads=ws.nthreads, schedule='static'):
            if scratch_block(ws, threadid()) != NULL:
                _scores_rows(q, k, gc, out, m)
    return scr.finish()


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


# ---------------------------------------------------------------------------
# The chunked forward of linear attention (scalar gate or none) and of the
# gated delta rule: one task per (sequence, head), each walking its chunks
# with the state in per-thread scratch (_src/_lachunk.h). The inputs keep
# their (batch, T, H, .) layouts; a sequence is a batch row and a range of
# positions, so packed sequences (cu_seqlens) are tasks like any other.
# ---------------------------------------------------------------------------

cdef extern from "_lachunk.h" nogil:
    ctypedef struct zm_la_args_f:
        const float *q
        const float *k
        const float *v
        float *o
        const float *g
        const float *beta
        const float *h0
        float *hT
        Py_ssize_t L, K, V, C, ldq, ldv, ldg
        Py_ssize_t nh, hsq, hsv, hsg, hss
        float scale
    ctypedef struct zm_la_args_d:
        const double *q
        const double *k
        const double *v
        double *o
        const double *g
        const double *beta
        const double *h0
        double *hT
        Py_ssize_t L, K, V, C, ldq, ldv, ldg
        Py_ssize_t nh, hsq, hsv, hsg, hss
        double scale
    Py_ssize_t zm_la_scratch(Py_ssize_t C, Py_ssize_t K, Py_ssize_t V,
                             Py_ssize_t nh, Py_ssize_t itemsize)
    int zm_la_isa()
    int zm_la_isa_cached
    void zm_la_task_f(const zm_la_args_f *a, float *work)
    void zm_la_task_d(const zm_la_args_d *a, double *work)


_BUILDS = ("baseline", "avx2", "avx512")


def kernel_build():
    """The build the chunk kernels run: 'avx512', 'avx2' or 'baseline'."""
    return _BUILDS[zm_la_isa()]


def set_kernel_build(name):
    """Run the chunk kernels' build `name` from now on (for the tests: every
    build against the same oracle). None restores the CPU's choice. A build
    the CPU cannot run is refused with ValueError. Returns the build set."""
    global zm_la_isa_cached
    zm_la_isa_cached = -1
    best = zm_la_isa()
    if name is None:
        return _BUILDS[best]
    if name not in _BUILDS:
        raise ValueError(f"name must be one of {_BUILDS} or None, got {name!r}")
    if _BUILDS.index(name) > best:
        raise ValueError(f"this CPU cannot run the {name!r} build (it runs {_BUILDS[best]!r})")
    zm_la_isa_cached = _BUILDS.index(name)
    return name


cdef void _run_task(const real_t *q, const real_t *k, const real_t *v, real_t *o,
                    const real_t *g, const real_t *beta, const real_t *h0,
                    real_t *hT, Py_ssize_t L, Py_ssize_t K, Py_ssize_t V,
                    Py_ssize_t C, Py_ssize_t ldq, Py_ssize_t ldv, Py_ssize_t ldg,
                    Py_ssize_t nh, real_t scale, real_t *work) noexcept nogil:
    cdef zm_la_args_f af
    cdef zm_la_args_d ad
    if real_t is float:
        af.q = q
        af.k = k
        af.v = v
        af.o = o
        af.g = g
        af.beta = beta
        af.h0 = h0
        af.hT = hT
        af.L = L
        af.K = K
        af.V = V
        af.C = C
        af.ldq = ldq
        af.ldv = ldv
        af.ldg = ldg
        af.nh = nh
        af.hsq = K
        af.hsv = V
        af.hsg = 1
        af.hss = K * V
        af.scale = scale
        zm_la_task_f(&af, work)
    else:
        ad.q = q
        ad.k = k
        ad.v = v
        ad.o = o
        ad.g = g
        ad.beta = beta
        ad.h0 = h0
        ad.hT = hT
        ad.L = L
        ad.K = K
        ad.V = V
        ad.C = C
        ad.ldq = ldq
        ad.ldv = ldv
        ad.ldg = ldg
        ad.nh = nh
        ad.hsq = K
        ad.hsv = V
        ad.hsg = 1
        ad.hss = K * V
        ad.scale = scale
        zm_la_task_d(&ad, work)


def chunk_forward(const real_t[:, :, :, ::1] q, const real_t[:, :, :, ::1] k,
                  const real_t[:, :, :, ::1] v, real_t[:, :, :, ::1] o,
                  const real_t[:, :, ::1] g, const real_t[:, :, ::1] beta,
                  const real_t[:, :, :, ::1] h0, real_t[:, :, :, ::1] hT,
                  const Py_ssize_t[::1] seq_batch, const Py_ssize_t[::1] seq_start,
                  const Py_ssize_t[::1] seq_stop, double scale, Py_ssize_t chunk,
                  int num_threads):
    """The chunked forward, in place into `o` (batch, T, H, V) and `hT`.

    q, k (batch, T, H, K); v (batch, T, H, V); g and beta (batch, T, H) or
    None (no gate; linear attention instead of the delta rule); h0 (nseq,
    H, K, V) or None (zero states); hT (nseq, H, K, V). Sequence s is the
    positions seq_start[s] <= t < seq_stop[s] of batch row seq_batch[s].
    Positions outside every sequence are not written.
    """
    cdef Py_ssize_t B = q.shape[0], T = q.shape[1], H = q.shape[2], K = q.shape[3]
    cdef Py_ssize_t V = v.shape[3], nseq = seq_batch.shape[0], ntask, t, s, h, b, a0, L
    cdef Py_ssize_t scratch, vp, hg_max, ngr, hg
    cdef const real_t *gp
    cdef const real_t *bp
    cdef const real_t *hp
    cdef const real_t *gbase = NULL
    cdef const real_t *bbase = NULL
    cdef const real_t *hbase = NULL
    cdef real_t *work
    cdef Scratch scr
    cdef scratch_t *ws
    cdef real_t sc = <real_t> scale
    if (k.shape[0] != B or k.shape[1] != T or k.shape[2] != H or k.shape[3] != K
            or v.shape[0] != B or v.shape[1] != T or v.shape[2] != H
            or o.shape[0] != B or o.shape[1] != T or o.shape[2] != H or o.shape[3] != V):
        raise ValueError("q, k (batch, T, H, K), v and o (batch, T, H, V) do not match")
    if g is not None and (g.shape[0] != B or g.shape[1] != T or g.shape[2] != H):
        raise ValueError("g must have shape (batch, T, H)")
    if beta is not None and (beta.shape[0] != B or beta.shape[1] != T or beta.shape[2] != H):
        raise ValueError("beta must have shape (batch, T, H)")
    if seq_start.shape[0] != nseq or seq_stop.shape[0] != nseq:
        raise ValueError("seq_batch, seq_start and seq_stop must have one length")
    if hT.shape[0] != nseq or hT.shape[1] != H or hT.shape[2] != K or hT.shape[3] != V:
        raise ValueError("hT must have shape (nseq, H, K, V)")
    if h0 is not None and (h0.shape[0] != nseq or h0.shape[1] != H
                           or h0.shape[2] != K or h0.shape[3] != V):
        raise ValueError("h0 must have shape (nseq, H, K, V)")
    if chunk < 1 or num_threads < 1:
        raise ValueError("chunk and num_threads must be >= 1")
    if K < 1 or V < 1 or H < 1:
        raise ValueError("K, V and H must be >= 1")
    for s in range(nseq):
        if not (0 <= seq_batch[s] < B and 0 <= seq_start[s] <= seq_stop[s] <= T):
            raise ValueError(f"sequence {s} is outside the arrays")
    if nseq == 0:
        return
    if B == 0 or T == 0:
        # every sequence is empty: the leaving states are the entering ones
        if h0 is None:
            np.asarray(hT)[...] = 0
        else:
            np.asarray(hT)[...] = np.asarray(h0)
        return
    chunk = min(chunk, T)
    zm_la_isa()
    # a task is a sequence and a group of `hg` of its heads: the group
    # reads each position's rows in order through its heads; enough groups
    # for the threads to share the work, and states that stay in cache
    vp = (V * sizeof(real_t) + 127) // 128 * 128
    hg_max = max(1, (512 * 1024) // (K * vp))
    ngr = 1 if num_threads == 1 else min(H, -(-2 * num_threads // nseq))
    hg = min(-(-H // ngr), hg_max)
    ngr = -(-H // hg)
    scratch = zm_la_scratch(chunk, K, V, hg, sizeof(real_t)) + 64 // sizeof(real_t)
    ntask = nseq * ngr
    if g is not None:
        gbase = &g[0, 0, 0]
    if beta is not None:
        bbase = &beta[0, 0, 0]
    if h0 is not None:
        hbase = &h0[0, 0, 0, 0]
    scr = Scratch(num_threads, scratch, sizeof(real_t),
                  "the linear-attention per-thread scratch")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        work = <real_t *> scratch_block(ws, threadid())
        for t in prange(ntask, schedule='dynamic'):
            if work != NULL:
                s = t // ngr
                h = (t - s * ngr) * hg
                b = seq_batch[s]
                a0 = seq_start[s]
                L = seq_stop[s] - a0
                gp = NULL
                bp = NULL
                hp = NULL
                if gbase != NULL:
                    gp = gbase + (b * T + a0) * H + h
                if bbase != NULL:
                    bp = bbase + (b * T + a0) * H + h
                if hbase != NULL:
                    hp = hbase + (s * H + h) * K * V
                _run_task(&q[0, 0, 0, 0] + ((b * T + a0) * H + h) * K,
                          &k[0, 0, 0, 0] + ((b * T + a0) * H + h) * K,
                          &v[0, 0, 0, 0] + ((b * T + a0) * H + h) * V,
                          &o[0, 0, 0, 0] + ((b * T + a0) * H + h) * V,
                          gp, bp, hp, &hT[0, 0, 0, 0] + (s * H + h) * K * V,
                          L, K, V, chunk, H * K, H * V, H, min(hg, H - h), sc, work)
    scr.finish()
