# cython: language_level=3
"""Kernels of the linear recurrence h_t = a_t * h_{t-1} + b_t, rows layout.

Design
------
Every array reaches the kernels as a C-contiguous 3-D view
``(outer, n, 1)``: the scan runs along the contiguous middle axis, one row
per element of ``outer``. Real dtypes run one contiguous row at a time
through the vector kernels of ``_scanrow.h`` (the prefix of a block of
steps formed in registers). Complex dtypes use *lanes*: each (row, time
range) is a dependent chain, and up to ``LANES`` lanes advance in lockstep
so that their multiply-adds overlap. A scan in reverse walks the same
memory with a negative step.

Algorithms:

* sequential: one pass per row.
* chunked: a row shared by T threads (T from the plan) is cut into spans;
  spans are scanned or reduced to their affine maps in parallel, a carry
  pass gives each span its entering state, and the later spans are scanned
  (real) or corrected (complex) from it.
* associative: leaves reduced to their maps (A, B) = (prod a, scan from 0),
  a work-efficient Blelloch tree over each row's leaf maps (the exclusive
  prefix: the state entering every leaf), every leaf scanned from it. The
  monoid is (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2).

The plan (zilla_muf._scan_plan) decides every size and count; the kernels
execute it. All indices are Py_ssize_t; scratch is O(chunks or leaves).
"""
from cython.parallel cimport prange
from libc.stdlib cimport calloc, malloc, free

from zilla_muf._types cimport real_t, scalar_t
from zilla_muf._vmath cimport vflush
from zilla_muf._scan_common cimport (FLUSH_STEPS, LANES, SKEW, imin, next_pow2,
                                     pos, tree_exclusive)

from zilla_muf._scan_plan import check_plan

cdef extern from "_scanrow.h" nogil:
    float zm_seqrow_f(const float *a, const float *b, float *h,
                      Py_ssize_t m, float x, int rev)
    double zm_seqrow_d(const double *a, const double *b, double *h,
                       Py_ssize_t m, double x, int rev)
    float zm_scanrow_f(const float *a, const float *b, float *h,
                       Py_ssize_t m, float x, int rev)
    double zm_scanrow_d(const double *a, const double *b, double *h,
                        Py_ssize_t m, double x, int rev)
    float zm_reducerow_f(const float *a, const float *b, Py_ssize_t m,
                         float x, int rev, float *prod)
    double zm_reducerow_d(const double *a, const double *b, Py_ssize_t m,
                          double x, int rev, double *prod)



# ---------------------------------------------------------------------------
# Rows layout: K <= LANES independent chains in lockstep.
# pa/pb/po[k] point at the first element of lane k in scan order; `step` is
# +1 or -1. All lanes advance `m` steps.
# ---------------------------------------------------------------------------

cdef inline void lanes_scan(const scalar_t **pa, const scalar_t **pb, scalar_t **po,
                            scalar_t *s, int K, Py_ssize_t m,
                            Py_ssize_t step) noexcept nogil:
    """s[k] <- scan of lane k from s[k]; every state is stored to po[k]."""
    cdef Py_ssize_t i, off = 0
    cdef int k
    cdef scalar_t x[LANES]
    cdef scalar_t x0
    cdef const scalar_t *a0
    cdef const scalar_t *b0
    cdef scalar_t *o0
    if K == 1:
        x0 = s[0]
        a0 = pa[0]
        b0 = pb[0]
        o0 = po[0]
        for i in range(m):
            x0 = a0[off] * x0 + b0[off]
            o0[off] = x0
            off = off + step
        s[0] = x0
        return
    for k in range(LANES):
        x[k] = s[k] if k < K else s[0]
    if K == LANES:
        for i in range(m):
            for k in range(LANES):
                x[k] = pa[k][off] * x[k] + pb[k][off]
            for k in range(LANES):
                po[k][off] = x[k]
            off = off + step
    else:
        for i in range(m):
            for k in range(K):
                x[k] = pa[k][off] * x[k] + pb[k][off]
                po[k][off] = x[k]
            off = off + step
    for k in range(K):
        s[k] = x[k]


cdef inline void lanes_scan_prod(const scalar_t **pa, const scalar_t **pb, scalar_t **po,
                                 scalar_t *s, scalar_t *p, int K, Py_ssize_t m,
                                 Py_ssize_t step) noexcept nogil:
    """As lanes_scan, also p[k] <- p[k] * product of lane k's decays."""
    cdef Py_ssize_t i, off = 0
    cdef int k
    cdef scalar_t x[LANES]
    cdef scalar_t q[LANES]
    cdef scalar_t av
    for k in range(K):
        x[k] = s[k]
        q[k] = p[k]
    if K == LANES:
        for i in range(m):
            for k in range(LANES):
                av = pa[k][off]
                x[k] = av * x[k] + pb[k][off]
                q[k] = q[k] * av
            for k in range(LANES):
                po[k][off] = x[k]
            off = off + step
    else:
        for i in range(m):
            for k in range(K):
                av = pa[k][off]
                x[k] = av * x[k] + pb[k][off]
                q[k] = q[k] * av
                po[k][off] = x[k]
            off = off + step
    for k in range(K):
        s[k] = x[k]
        p[k] = q[k]


cdef inline void lanes_reduce(const scalar_t **pa, const scalar_t **pb, scalar_t *s,
                              scalar_t *p, int K, Py_ssize_t m,
                              Py_ssize_t step) noexcept nogil:
    """The affine map of each lane: s[k] <- scan from s[k], p[k] *= prod a."""
    cdef Py_ssize_t i, off = 0
    cdef int k
    cdef scalar_t x[LANES]
    cdef scalar_t q[LANES]
    cdef scalar_t av
    for k in range(K):
        x[k] = s[k]
        q[k] = p[k]
    if K == LANES:
        for i in range(m):
            for k in range(LANES):
                av = pa[k][off]
                x[k] = av * x[k] + pb[k][off]
                q[k] = q[k] * av
            off = off + step
    else:
        for i in range(m):
            for k in range(K):
                av = pa[k][off]
                x[k] = av * x[k] + pb[k][off]
                q[k] = q[k] * av
            off = off + step
    for k in range(K):
        s[k] = x[k]
        p[k] = q[k]


cdef inline void lanes_correct(const scalar_t **pa, scalar_t **po, scalar_t *c,
                               int K, Py_ssize_t m,
                               Py_ssize_t step) noexcept nogil:
    """Add a carried state: c_k <- a * c_k, po[k] += c_k, along each lane."""
    cdef Py_ssize_t i, off = 0
    cdef int k
    cdef scalar_t x[LANES]
    for k in range(K):
        x[k] = c[k]
    if K == LANES:
        for i in range(m):
            for k in range(LANES):
                x[k] = pa[k][off] * x[k]
            for k in range(LANES):
                po[k][off] = po[k][off] + x[k]
            off = off + step
    else:
        for i in range(m):
            for k in range(K):
                x[k] = pa[k][off] * x[k]
                po[k][off] = po[k][off] + x[k]
            off = off + step
    for k in range(K):
        c[k] = x[k]



# ---------------------------------------------------------------------------
# Rows layout drivers. A row is split into `nseg` segments of `seglen` steps
# (the last may be shorter); task = row * nseg + segment. One call of
# rows_group handles the LANES consecutive tasks of group g, in lockstep.
# Scratch S1/S2 are indexed by row * sstride + segment.
# ---------------------------------------------------------------------------

cdef enum:
    MODE_SCAN = 0       # scan from h0 / S1 (entering state), write O
    MODE_SCAN_PROD = 1  # scan from h0 / 0, write O, S1 <- decay product
    MODE_REDUCE = 2     # from h0 / 0: S1 <- decay product, S2 <- end state
    MODE_CORRECT = 3    # segments >= cskip: O += S1 carried by the decays


cdef inline void lanes_run(int mode, const scalar_t **pa, const scalar_t **pb,
                           scalar_t **po, scalar_t *s, scalar_t *q, int K,
                           Py_ssize_t m, Py_ssize_t step) noexcept nogil:
    if mode == MODE_SCAN:
        lanes_scan(pa, pb, po, s, K, m, step)
    elif mode == MODE_SCAN_PROD:
        lanes_scan_prod(pa, pb, po, s, q, K, m, step)
    elif mode == MODE_REDUCE:
        lanes_reduce(pa, pb, s, q, K, m, step)
    else:
        lanes_correct(pa, po, s, K, m, step)


cdef inline void lanes_run_skewed(int mode, const scalar_t **pa, const scalar_t **pb,
                                  scalar_t **po, scalar_t *s, scalar_t *q,
                                  int K, Py_ssize_t m, Py_ssize_t step,
                                  Py_ssize_t skew) noexcept nogil:
    """lanes_run with lane k running `(K-1-k) * skew` steps ahead.

    Lanes whose spacing is a multiple of 4 KiB keep their addresses `skew`
    elements apart this way. Lane k runs its first (K-1-k) * skew steps
    alone, all lanes then advance in lockstep, and lane k runs its last
    k * skew steps alone; every lane sees its steps in order.
    """
    cdef const scalar_t *qa[LANES]
    cdef const scalar_t *qb[LANES]
    cdef scalar_t *qo[LANES]
    cdef Py_ssize_t pre, M
    cdef int k
    if K == 1 or m <= (K - 1) * skew:
        for k in range(K):
            lanes_run(mode, pa + k, pb + k, po + k, s + k, q + k, 1, m, step)
        return
    for k in range(K):
        pre = (K - 1 - k) * skew
        lanes_run(mode, pa + k, pb + k, po + k, s + k, q + k, 1, pre, step)
        qa[k] = pa[k] + pre * step
        qb[k] = pb[k] + pre * step
        qo[k] = po[k] + pre * step
    M = m - (K - 1) * skew
    lanes_run(mode, qa, qb, qo, s, q, K, M, step)
    for k in range(K):
        qa[k] = qa[k] + M * step
        qb[k] = qb[k] + M * step
        qo[k] = qo[k] + M * step
        lanes_run(mode, qa + k, qb + k, qo + k, s + k, q + k, 1, k * skew, step)


cdef inline void lanes_auto(int mode, const scalar_t **pa, const scalar_t **pb,
                            scalar_t **po, scalar_t *s, scalar_t *q, int K,
                            Py_ssize_t m, Py_ssize_t step, bint interleave,
                            scalar_t *scratch) noexcept nogil:
    """Run K lanes in lockstep, staggered when their spacing aliases.

    With a `scratch` row of at least m elements, fewer than LANES lanes are
    padded with dummy lanes (reading lane 0's inputs, writing the scratch
    row), so that the fixed-width loop, whose states stay in registers, runs.
    """
    cdef const scalar_t *xa[LANES]
    cdef const scalar_t *xb[LANES]
    cdef scalar_t *xo[LANES]
    cdef scalar_t xs[LANES]
    cdef scalar_t xq[LANES]
    cdef int k
    if 1 < K < LANES and scratch != NULL and interleave:
        for k in range(LANES):
            if k < K:
                xa[k] = pa[k]
                xb[k] = pb[k]
                xo[k] = po[k]
                xs[k] = s[k]
                xq[k] = q[k]
            else:
                xa[k] = pa[0]
                xb[k] = pb[0]
                # a reverse lane walks down from its first element
                xo[k] = scratch + (m - 1 if step < 0 else 0)
                xs[k] = 0
                xq[k] = 1
        lanes_run(mode, xa, xb, xo, xs, xq, LANES, m, step)
        for k in range(K):
            s[k] = xs[k]
            q[k] = xq[k]
        return
    if interleave:
        lanes_run(mode, pa, pb, po, s, q, K, m, step)
    else:
        lanes_run_skewed(mode, pa, pb, po, s, q, K, m, step, SKEW)


cdef inline bint spacing_interleaves(Py_ssize_t elems, size_t itemsize) noexcept nogil:
    """Whether lanes `elems` apart can run in lockstep.

    Two lanes whose addresses differ by (nearly) a multiple of 4 KiB make
    loads falsely wait on the other lane's stores (4K aliasing), which makes
    lockstep slower than one lane at a time. Every pair of the LANES lanes is
    checked.
    """
    cdef Py_ssize_t j, d
    for j in range(1, LANES):
        d = (j * elems * <Py_ssize_t> itemsize) % 4096
        if d < 32 or d > 4096 - 32:
            return False
    return True


cdef void rows_group(int mode, const scalar_t *A, const scalar_t *B, scalar_t *O,
                     const scalar_t *H0, scalar_t *S1, scalar_t *S2,
                     Py_ssize_t g, Py_ssize_t outer, Py_ssize_t n,
                     Py_ssize_t nseg, Py_ssize_t seglen, Py_ssize_t sstride,
                     bint reverse, bint interleave,
                     Py_ssize_t cskip, Py_ssize_t gw) noexcept nogil:
    """Group g of gw (<= LANES) consecutive (row, segment) tasks, in
    lockstep."""
    cdef const scalar_t *pa[LANES]
    cdef const scalar_t *pb[LANES]
    cdef scalar_t *po[LANES]
    cdef scalar_t s[LANES]
    cdef scalar_t q[LANES]
    cdef Py_ssize_t mlen[LANES]
    cdef Py_ssize_t sidx[LANES]
    cdef Py_ssize_t task, r, c, t0, m, mmin = seglen, base, i
    cdef Py_ssize_t step = -1 if reverse else 1
    cdef int k, K = 0
    cdef scalar_t x, av
    # MODE_CORRECT visits only the segments c >= cskip of every row
    cdef Py_ssize_t c0 = cskip if mode == MODE_CORRECT else 0
    cdef Py_ssize_t nvis = nseg - c0
    for k in range(gw):
        task = g * gw + k
        if task >= outer * nvis:
            break
        r = task // nvis
        c = c0 + (task - r * nvis)
        t0 = c * seglen
        m = imin(seglen, n - t0)
        base = r * n + pos(t0, n, reverse)
        pa[K] = A + base
        pb[K] = B + base
        po[K] = O + base
        sidx[K] = r * sstride + c
        if mode == MODE_CORRECT or (mode == MODE_SCAN and c > 0):
            s[K] = S1[sidx[K]]
        elif c == 0:
            s[K] = H0[r]
        else:
            s[K] = 0
        q[K] = 1
        mlen[K] = m
        if m < mmin:
            mmin = m
        K = K + 1
    if K == 0:
        return
    lanes_auto(mode, pa, pb, po, s, q, K, mmin, step, interleave, NULL)
    # lanes longer than the shortest one (a row's last segment is shorter)
    for k in range(K):
        x = s[k]
        for i in range(mmin, mlen[k]):
            av = pa[k][i * step]
            if mode == MODE_CORRECT:
                x = av * x
                po[k][i * step] = po[k][i * step] + x
            else:
                x = av * x + pb[k][i * step]
                q[k] = q[k] * av
                if mode != MODE_REDUCE:
                    po[k][i * step] = x
        if mode == MODE_SCAN_PROD:
            S1[sidx[k]] = q[k]
        elif mode == MODE_REDUCE:
            S1[sidx[k]] = q[k]
            S2[sidx[k]] = x


cdef inline void rows_pass(int mode, const scalar_t *A, const scalar_t *B, scalar_t *O,
                           const scalar_t *H0, scalar_t *S1, scalar_t *S2,
                           Py_ssize_t outer, Py_ssize_t n, Py_ssize_t nseg,
                           Py_ssize_t seglen, Py_ssize_t sstride, bint reverse,
                           int nthreads, Py_ssize_t cskip=1) noexcept nogil:
    """One parallel pass of rows_group over every lane group: LANES tasks
    per group, fewer when that leaves a thread without a group.

    In MODE_CORRECT, segments with index < cskip are left alone (and not
    scheduled, so that the threads share the remaining work evenly)."""
    cdef Py_ssize_t nvis = nseg - (cskip if mode == MODE_CORRECT else 0)
    cdef Py_ssize_t gw = LANES
    cdef Py_ssize_t g, ngroup
    if (outer * nvis + LANES - 1) // LANES < nthreads:
        gw = max(1, (outer * nvis + nthreads - 1) // nthreads)
    ngroup = (outer * nvis + gw - 1) // gw
    cdef bint inter = spacing_interleaves(n if nseg == 1 else seglen,
                                          sizeof(scalar_t))
    if nthreads == 1 or ngroup == 1:
        for g in range(ngroup):
            rows_group(mode, A, B, O, H0, S1, S2, g, outer, n, nseg, seglen,
                       sstride, reverse, inter, cskip, gw)
    else:
        for g in prange(ngroup, num_threads=nthreads, schedule='static'):
            rows_group(mode, A, B, O, H0, S1, S2, g, outer, n, nseg, seglen,
                       sstride, reverse, inter, cskip, gw)


cdef int span_scratch(Py_ssize_t outer, Py_ssize_t nch, Py_ssize_t T,
                      size_t itemsize, void **P, void **E) noexcept nogil:
    """P: outer * nch elements (chunk products, then carries), E: outer * T
    (span end states). Returns -1 (nothing allocated) when out of memory."""
    P[0] = malloc(outer * nch * itemsize)
    E[0] = malloc(outer * T * itemsize)
    if P[0] == NULL or E[0] == NULL:
        free(P[0])
        free(E[0])
        return -1
    return 0


cdef void span_carry(scalar_t *P, const scalar_t *E, Py_ssize_t outer,
                     Py_ssize_t nch, Py_ssize_t T,
                     Py_ssize_t span_ch) noexcept nogil:
    """Carry pass over the spans of rows cut into T spans of span_ch chunks.

    On entry P[r * nch + j] is the decay product of chunk j of row r and
    E[r * T + k] the last state of span k (span 0 scanned from h0, the
    others from zero). On exit P holds, for every chunk of spans k >= 1,
    the state carried into it from before its span.
    """
    cdef Py_ssize_t r, k, j, j0, j1
    cdef scalar_t c, run, pj
    for r in range(outer):
        c = E[r * T]
        for k in range(1, T):
            run = c
            j0 = r * nch + k * span_ch
            j1 = r * nch + imin(nch, (k + 1) * span_ch)
            for j in range(j0, j1):
                pj = P[j]
                P[j] = run
                run = run * pj
            c = run + E[r * T + k]



# ---------------------------------------------------------------------------
# Rows layout, real dtypes: one contiguous row at a time with the vector
# kernels of _scanrow.h (the lockstep lanes above serve complex dtypes).
# A row is addressed from its first element in scan order; `rev` walks down.
# ---------------------------------------------------------------------------

cdef inline real_t vseq(const real_t *a, const real_t *b, real_t *h, Py_ssize_t m,
                        real_t x, bint rev) noexcept nogil:
    if real_t is float:
        return zm_seqrow_f(a, b, h, m, x, rev)
    else:
        return zm_seqrow_d(a, b, h, m, x, rev)


cdef inline real_t vscan(const real_t *a, const real_t *b, real_t *h, Py_ssize_t m,
                         real_t x, bint rev) noexcept nogil:
    """Scan m steps from x into h; return the last state."""
    if real_t is float:
        return zm_scanrow_f(a, b, h, m, x, rev)
    else:
        return zm_scanrow_d(a, b, h, m, x, rev)


cdef void vrows_sequential(const real_t *A, const real_t *B, real_t *O, const real_t *H0,
                           Py_ssize_t outer, Py_ssize_t n,
                           bint reverse) noexcept nogil:
    cdef Py_ssize_t r, base
    for r in range(outer):
        base = r * n + pos(0, n, reverse)
        vseq(A + base, B + base, O + base, n, H0[r], reverse)


cdef inline real_t vreduce(const real_t *a, const real_t *b, Py_ssize_t m, real_t x,
                           bint rev, real_t *prod) noexcept nogil:
    """The state after m steps from x, stored nowhere; prod <- the decay
    product (flushed to zero below the smallest normal number)."""
    if real_t is float:
        return zm_reducerow_f(a, b, m, x, rev, prod)
    else:
        return zm_reducerow_d(a, b, m, x, rev, prod)


cdef int vrows_chunked(const real_t *A, const real_t *B, real_t *O, const real_t *H0,
                       Py_ssize_t outer, Py_ssize_t n, bint reverse,
                       Py_ssize_t cs, Py_ssize_t T, double lead,
                       int nthreads) noexcept nogil:
    """Chunked scan of real rows.

    With at least as many rows as threads, every row is one task, scanned in
    one pass. Otherwise T threads share a row, cut at chunk boundaries into
    T + 1 spans: (1) thread 0 scans span 0 from h0 while thread k reduces
    span k (k = 1 .. T-1) to its map x -> P x + E; (2) a carry pass gives
    every span its entering state; (3) thread k scans span k from it, and
    thread 0 span T. A reduction costs a fraction of a scan, so span 0 is
    shorter than the others (`lead` times their length); span T is never
    reduced. T (1 <= T < number of chunks, or 1) comes from the plan.
    """
    cdef Py_ssize_t nch = (n + cs - 1) // cs
    cdef Py_ssize_t task, r, k, j0, j1, t0, base
    cdef Py_ssize_t *start
    cdef real_t *P
    cdef real_t *E
    cdef real_t c, e
    if T <= 1:
        if nthreads == 1 or outer == 1:
            for r in range(outer):
                base = r * n + pos(0, n, reverse)
                vscan(A + base, B + base, O + base, n, H0[r], reverse)
        else:
            for r in prange(outer, num_threads=nthreads, schedule='static'):
                base = r * n + pos(0, n, reverse)
                vscan(A + base, B + base, O + base, n, H0[r], reverse)
        return 0
    # spans in chunks: span k is [start[k], start[k + 1])
    start = <Py_ssize_t *> malloc((T + 2) * sizeof(Py_ssize_t))
    P = <real_t *> malloc(outer * (T + 1) * sizeof(real_t))
    E = <real_t *> malloc(outer * (T + 1) * sizeof(real_t))
    if start == NULL or P == NULL or E == NULL:
        free(start)
        free(P)
        free(E)
        return -1
    start[0] = 0
    start[1] = max(1, <Py_ssize_t> (nch * lead / (T + lead) + 0.5))
    for k in range(2, T + 2):
        start[k] = start[1] + ((nch - start[1]) * (k - 1) + T // 2) // T
    # (1) span 0 scanned from h0, spans 1 .. T-1 reduced from zero
    for task in prange(outer * T, num_threads=nthreads, schedule='static'):
        r = task // T
        k = task - r * T
        t0 = start[k] * cs
        base = r * n + pos(t0, n, reverse)
        if k == 0:
            E[r * (T + 1)] = vscan(A + base, B + base, O + base,
                                   imin(start[1] * cs, n), H0[r], reverse)
        else:
            E[r * (T + 1) + k] = vreduce(A + base, B + base,
                                         imin(start[k + 1] * cs, n) - t0, 0,
                                         reverse, P + r * (T + 1) + k)
    # (2) carry: E[r, k] <- the state entering span k (k = 1 .. T)
    for r in range(outer):
        c = E[r * (T + 1)]
        for k in range(1, T):
            e = E[r * (T + 1) + k]
            E[r * (T + 1) + k] = c
            c = P[r * (T + 1) + k] * c + e
        E[r * (T + 1) + T] = c
    # (3) span k on thread k, span T on thread 0
    for task in prange(outer * T, num_threads=nthreads, schedule='static'):
        r = task // T
        k = task - r * T
        if k == 0:
            k = T
        j0 = start[k] * cs
        j1 = imin(start[k + 1] * cs, n)
        base = r * n + pos(j0, n, reverse)
        vscan(A + base, B + base, O + base, j1 - j0, E[r * (T + 1) + k],
              reverse)
    free(start)
    free(P)
    free(E)
    return 0


cdef void vrow_tree(const real_t *A, const real_t *B, real_t *O, real_t x, Py_ssize_t n,
                    bint reverse, Py_ssize_t leaf, real_t *TA,
                    real_t *TB) noexcept nogil:
    """Associative scan of one row on the calling thread (TA, TB: p2)."""
    cdef Py_ssize_t nleaf = (n + leaf - 1) // leaf
    cdef Py_ssize_t p2 = next_pow2(nleaf)
    cdef Py_ssize_t c, off
    cdef Py_ssize_t step = -1 if reverse else 1
    for c in range(p2):
        if c < nleaf:
            off = c * leaf * step
            TB[c] = vreduce(A + off, B + off, imin(leaf, n - c * leaf),
                            x if c == 0 else 0, reverse, TA + c)
        else:
            TA[c] = 1
            TB[c] = 0
    tree_exclusive(TA, TB, p2, 1, 1)
    for c in range(nleaf):
        off = c * leaf * step
        vscan(A + off, B + off, O + off, imin(leaf, n - c * leaf),
              x if c == 0 else TB[c], reverse)


cdef int vrows_associative(const real_t *A, const real_t *B, real_t *O, const real_t *H0,
                           Py_ssize_t outer, Py_ssize_t n, bint reverse,
                           Py_ssize_t leaf, int nthreads) noexcept nogil:
    """Tree scan of real rows over leaves of `leaf` steps.

    With at least as many rows as threads, each row is one task: its leaves
    reduced to affine maps, the Blelloch tree, the leaves scanned, while the
    row is in cache. Otherwise the three phases run one after the other,
    each parallel over (row, leaf) or over rows.
    """
    cdef Py_ssize_t nleaf = (n + leaf - 1) // leaf
    cdef Py_ssize_t p2 = next_pow2(nleaf)
    cdef Py_ssize_t r, c, task, base, t0
    cdef real_t *TA
    cdef real_t *TB
    TA = <real_t *> malloc(outer * p2 * sizeof(real_t))
    TB = <real_t *> malloc(outer * p2 * sizeof(real_t))
    if TA == NULL or TB == NULL:
        free(TA)
        free(TB)
        return -1
    if outer >= nthreads:
        for r in prange(outer, num_threads=nthreads, schedule='static'):
            base = r * n + pos(0, n, reverse)
            vrow_tree(A + base, B + base, O + base, H0[r], n, reverse, leaf,
                      TA + r * p2, TB + r * p2)
        free(TA)
        free(TB)
        return 0
    # (1) leaf maps; the first leaf of a row starts from h0
    for task in prange(outer * p2, num_threads=nthreads, schedule='static'):
        r = task // p2
        c = task - r * p2
        if c < nleaf:
            t0 = c * leaf
            base = r * n + pos(t0, n, reverse)
            TB[task] = vreduce(A + base, B + base, imin(leaf, n - t0),
                               H0[r] if c == 0 else 0, reverse, TA + task)
        else:
            TA[task] = 1
            TB[task] = 0
    # (2) tree per row: TB[r, c] <- state entering leaf c
    for r in range(outer):
        tree_exclusive(TA + r * p2, TB + r * p2, p2, 1, nthreads)
    # (3) every leaf from its entering state (h0 for the first)
    for task in prange(outer * nleaf, num_threads=nthreads, schedule='static'):
        r = task // nleaf
        c = task - r * nleaf
        t0 = c * leaf
        base = r * n + pos(t0, n, reverse)
        vscan(A + base, B + base, O + base, imin(leaf, n - t0),
              H0[r] if c == 0 else TB[r * p2 + c], reverse)
    free(TA)
    free(TB)
    return 0



# ---------------------------------------------------------------------------
# Chunked
# ---------------------------------------------------------------------------

cdef scalar_t span_scan(const scalar_t *A, const scalar_t *B, scalar_t *O, scalar_t st,
                        Py_ssize_t m, Py_ssize_t step, Py_ssize_t cs,
                        scalar_t *Pch, scalar_t *scratch) noexcept nogil:
    """Scan `m` steps from state `st` on the calling thread; return the last.

    A, B, O point at the first step in scan order, `step` is +1 or -1. The
    chunks of `cs` steps go LANES at a time: local scans in lockstep, the
    carry over those LANES chunks, the corrections, all while the chunks are
    still in cache. Pch[j] receives the product of chunk j's decays.
    `scratch` holds cs elements (the dummy lanes' output).
    """
    cdef const scalar_t *pa[LANES]
    cdef const scalar_t *pb[LANES]
    cdef scalar_t *po[LANES]
    cdef const scalar_t *ta
    cdef const scalar_t *tb
    cdef scalar_t *to
    cdef scalar_t sv[LANES]
    cdef scalar_t q[LANES]
    cdef scalar_t cin[LANES]
    cdef Py_ssize_t nch = (m + cs - 1) // cs
    cdef Py_ssize_t g0, off, mm
    cdef bint inter = spacing_interleaves(cs, sizeof(scalar_t))
    cdef int k, K
    cdef scalar_t c
    g0 = 0
    while g0 < nch:
        K = <int> imin(LANES, nch - g0)
        for k in range(K):
            off = (g0 + k) * cs * step
            pa[k] = A + off
            pb[k] = B + off
            po[k] = O + off
            sv[k] = st if k == 0 else 0
            q[k] = 1
        # the group's last chunk may be shorter than the others
        mm = imin(cs, m - (g0 + K - 1) * cs)
        lanes_auto(MODE_SCAN_PROD, pa, pb, po, sv, q, K, mm, step, inter,
                   scratch)
        if mm < cs:
            for k in range(K - 1):
                ta = pa[k] + mm * step
                tb = pb[k] + mm * step
                to = po[k] + mm * step
                lanes_run(MODE_SCAN_PROD, &ta, &tb, &to, sv + k, q + k, 1,
                          cs - mm, step)
        c = sv[0]
        for k in range(1, K):
            cin[k] = c
            c = q[k] * c + sv[k]
        for k in range(K):
            Pch[g0 + k] = q[k]
        st = c
        if K > 1:
            lanes_auto(MODE_CORRECT, pa + 1, pb + 1, po + 1, cin + 1, q + 1,
                       K - 1, mm, step, inter, scratch)
            if mm < cs:
                for k in range(1, K - 1):
                    ta = pa[k] + mm * step
                    tb = pb[k] + mm * step
                    to = po[k] + mm * step
                    lanes_run(MODE_CORRECT, &ta, &tb, &to, cin + k, q + k, 1,
                              cs - mm, step)
        g0 = g0 + K
    return st


cdef int rows_chunked(const scalar_t *A, const scalar_t *B, scalar_t *O,
                      const scalar_t *H0, Py_ssize_t outer, Py_ssize_t n,
                      bint reverse, Py_ssize_t cs, Py_ssize_t T,
                      int nthreads) noexcept nogil:
    """Chunked scan of rows.

    A row with several chunks is cut into spans, one per thread when there
    are fewer rows than threads. (1) Every span is scanned on one thread by
    span_scan (chunked, cache-blocked; the first from h0, the others from
    zero), recording its chunks' decay products; (2) a carry pass over the
    spans gives each later chunk the state it should have started from;
    (3) the chunks of spans after the first add it, in parallel.
    T (1 <= T <= number of chunks) comes from the plan; the spans are
    equal runs of whole chunks.
    """
    cdef Py_ssize_t nch = (n + cs - 1) // cs
    cdef Py_ssize_t span_ch, task, r, k, j, t0, m, base
    cdef Py_ssize_t step = -1 if reverse else 1
    cdef scalar_t *P
    cdef scalar_t *E
    cdef scalar_t *W
    if nch == 1:
        rows_pass(MODE_SCAN, A, B, O, H0, NULL, NULL, outer, n, 1, n, 1,
                  reverse, nthreads)
        return 0
    span_ch = (nch + T - 1) // T
    if span_scratch(outer, nch, T, sizeof(scalar_t), <void **> &P,
                    <void **> &E) != 0:
        return -1
    W = <scalar_t *> malloc(outer * T * cs * sizeof(scalar_t))
    if W == NULL:
        free(P)
        free(E)
        return -1
    # (1) spans, each on one thread (W: a scratch row per span)
    for task in prange(outer * T, num_threads=nthreads, schedule='static'):
        r = task // T
        k = task - r * T
        t0 = k * span_ch * cs
        m = imin(span_ch * cs, n - t0)
        base = r * n + pos(t0, n, reverse)
        E[task] = span_scan(A + base, B + base, O + base,
                            H0[r] if k == 0 else 0, m, step, cs,
                            P + r * nch + k * span_ch, W + task * cs)
    free(W)
    if T > 1:
        # (2) carry over spans: P[chunk] <- state carried into it from outside
        span_carry(P, E, outer, nch, T, span_ch)
        # (3) chunks of the later spans add it
        rows_pass(MODE_CORRECT, A, B, O, H0, P, NULL, outer, n, nch, cs, nch,
                  reverse, nthreads, span_ch)
    free(P)
    free(E)
    return 0



cdef int rows_associative(const scalar_t *A, const scalar_t *B, scalar_t *O,
                          const scalar_t *H0, Py_ssize_t outer, Py_ssize_t n,
                          bint reverse, Py_ssize_t leaf,
                          int nthreads) noexcept nogil:
    cdef Py_ssize_t nleaf = (n + leaf - 1) // leaf
    cdef Py_ssize_t p2 = next_pow2(nleaf)
    cdef Py_ssize_t r, i
    cdef scalar_t *TA
    cdef scalar_t *TB

    TA = <scalar_t *> malloc(outer * p2 * sizeof(scalar_t))
    TB = <scalar_t *> malloc(outer * p2 * sizeof(scalar_t))
    if TA == NULL or TB == NULL:
        free(TA)
        free(TB)
        return -1
    # (1) leaf maps; the first leaf of a row starts from h0
    rows_pass(MODE_REDUCE, A, B, O, H0, TA, TB, outer, n, nleaf, leaf, p2,
              reverse, nthreads)
    for r in range(outer):
        for i in range(nleaf, p2):
            TA[r * p2 + i] = 1
            TB[r * p2 + i] = 0
    # (2) tree per row over its leaves: TB[r, c] <- state entering leaf c
    if outer >= nthreads:
        for r in prange(outer, num_threads=nthreads, schedule='static'):
            tree_exclusive(TA + r * p2, TB + r * p2, p2, 1, 1)
    else:
        for r in range(outer):
            tree_exclusive(TA + r * p2, TB + r * p2, p2, 1, nthreads)
    # (3) every leaf from its entering state (h0 for the first)
    rows_pass(MODE_SCAN, A, B, O, H0, TB, NULL, outer, n, nleaf, leaf, p2,
              reverse, nthreads)
    free(TA)
    free(TB)
    return 0


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

cdef enum:
    RUN_SEQUENTIAL
    RUN_CHUNKED
    RUN_ASSOCIATIVE


def scan(plan, const scalar_t[:, :, ::1] a, const scalar_t[:, :, ::1] b,
         scalar_t[:, :, ::1] out, const scalar_t[:, ::1] h0=None,
         bint reverse=False):
    """out (outer, n, inner, inner == 1) <- the scan of a, b along axis 1 from h0
    (outer, inner; None: zeros), as `plan` (a _scan_plan.ScanPlan) says.
    `out` may be `b` itself when ``plan.in_place``."""
    cdef Py_ssize_t outer = out.shape[0], n = out.shape[1], inner = out.shape[2]
    cdef Py_ssize_t size, block_width, splits
    cdef double lead
    cdef int status = 0, method, num_threads
    cdef const scalar_t *A
    cdef const scalar_t *B
    cdef scalar_t *O
    cdef const scalar_t *H
    cdef scalar_t *zeros = NULL
    if (a.shape[0], a.shape[1], a.shape[2]) != (outer, n, inner):
        raise ValueError(f"`a` must have the shape of `out`, {(outer, n, inner)}, "
                         f"got {(a.shape[0], a.shape[1], a.shape[2])}")
    if (b.shape[0], b.shape[1], b.shape[2]) != (outer, n, inner):
        raise ValueError(f"`b` must have the shape of `out`, {(outer, n, inner)}, "
                         f"got {(b.shape[0], b.shape[1], b.shape[2])}")
    if h0 is not None and (h0.shape[0], h0.shape[1]) != (outer, inner):
        raise ValueError(f"`h0` must have shape {(outer, inner)}, "
                         f"got {(h0.shape[0], h0.shape[1])}")
    name, size, block_width, splits, lead, num_threads = check_plan(
        plan, outer, n, inner)
    method = (RUN_SEQUENTIAL if name == "sequential" else
              RUN_CHUNKED if name == "chunked" else RUN_ASSOCIATIVE)
    if outer == 0 or n == 0 or inner == 0:
        return
    if &b[0, 0, 0] == &out[0, 0, 0] and not plan.in_place:
        raise ValueError("`out` is `b`, and this plan does not scan in place")
    A = &a[0, 0, 0]
    B = &b[0, 0, 0]
    O = &out[0, 0, 0]
    if h0 is None:
        zeros = <scalar_t *> calloc(outer * inner, sizeof(scalar_t))
        if zeros == NULL:
            raise MemoryError("could not allocate the initial states")
        H = zeros
    else:
        H = &h0[0, 0]
    size = imin(size, n)
    block_width = imin(block_width, inner)
    with nogil:
        if method == RUN_SEQUENTIAL:
            if scalar_t is float or scalar_t is double:
                vrows_sequential(A, B, O, H, outer, n, reverse)
            else:
                rows_pass(MODE_SCAN, A, B, O, H, NULL, NULL, outer, n, 1,
                          n, 1, reverse, 1)
        elif method == RUN_CHUNKED:
            if scalar_t is float or scalar_t is double:
                status = vrows_chunked(A, B, O, H, outer, n, reverse, size,
                                       splits, lead, num_threads)
            else:
                status = rows_chunked(A, B, O, H, outer, n, reverse, size,
                                      splits, num_threads)
        else:
            if scalar_t is float or scalar_t is double:
                status = vrows_associative(A, B, O, H, outer, n, reverse,
                                           size, num_threads)
            else:
                status = rows_associative(A, B, O, H, outer, n, reverse, size,
                                          num_threads)
    free(zeros)
    if status != 0:
        raise MemoryError("could not allocate the scan's scratch memory")
