# cython: language_level=3
"""Kernels of the linear recurrence h_t = a_t * h_{t-1} + b_t, columns layout.

Design
------
Every array reaches the kernels as a C-contiguous 3-D view
``(outer, n, inner)`` with ``inner > 1``: the scan runs along the middle
axis, and the ``inner`` channels of a step are contiguous. A *lane* is a
block of contiguous channels of one row; each step is an elementwise vector
operation over the block, with all loads of a step before its stores
(vectorisable). A scan in reverse walks the same memory with a negative
step.

Algorithms:

* sequential: one pass per row over all its channels.
* chunked: with at least as many lanes as threads, one pass per lane;
  otherwise (T > 1 from the plan) each lane's time axis is cut into T + 1
  spans (scan span 0 while reducing the others, carry, scan the rest).
* associative: leaves reduced to their maps, a Blelloch tree per lane
  vectorised over its channels, every leaf scanned from its entering state.

The plan (zilla_muf._scan_plan) decides every size and count; the kernels
execute it. All indices are Py_ssize_t; scratch is O(lanes x leaves), and
with streaming stores a state row per thread (a _scratch.Scratch block).
"""
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport calloc, malloc, free

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block

from zilla_muf._types cimport real_t, scalar_t
from zilla_muf._vmath cimport vflush
from zilla_muf._scan_common cimport (FLUSH_STEPS, LANES, SKEW, imin, next_pow2,
                                     pos, tree_exclusive)

from zilla_muf._scan_plan import check_plan

cdef extern from "_scancols.h":
    void zm_cols_stream_f(const float *a, const float *b, float *o,
                          const float *init, float *state, Py_ssize_t w,
                          Py_ssize_t m, Py_ssize_t step, Py_ssize_t blk,
                          Py_ssize_t nblk) noexcept nogil
    void zm_cols_stream_d(const double *a, const double *b, double *o,
                          const double *init, double *state, Py_ssize_t w,
                          Py_ssize_t m, Py_ssize_t step, Py_ssize_t blk,
                          Py_ssize_t nblk) noexcept nogil

# ---------------------------------------------------------------------------
# Columns layout: w contiguous channels, m steps `step` elements apart.
# ---------------------------------------------------------------------------

cdef inline void cols_scan(const scalar_t *a, const scalar_t *b, scalar_t *o,
                           const scalar_t *init, Py_ssize_t w, Py_ssize_t m,
                           Py_ssize_t step) noexcept nogil:
    """o[i] = a[i] * o[i-1] + b[i] with o[-1] = init, elementwise over w."""
    cdef Py_ssize_t i, c
    cdef const scalar_t *ai
    cdef const scalar_t *bi
    cdef const scalar_t *prev = init
    cdef scalar_t *oi
    for i in range(m):
        ai = a + i * step
        bi = b + i * step
        oi = o + i * step
        for c in range(w):
            oi[c] = ai[c] * prev[c] + bi[c]
        prev = oi


cdef inline void cols_scan_stream(const scalar_t *a, const scalar_t *b,
                                  scalar_t *o, const scalar_t *init,
                                  scalar_t *state, Py_ssize_t w, Py_ssize_t m,
                                  Py_ssize_t step, Py_ssize_t blk,
                                  Py_ssize_t nblk) noexcept nogil:
    """cols_scan with the output written by streaming stores (real types;
    complex ones take cols_scan), the state kept in the scratch row `state`
    (w elements); the fresh pages shared out as cols_scan_shared does when
    nblk > 1. Same values bit for bit."""
    if scalar_t is float:
        zm_cols_stream_f(a, b, o, init, state, w, m, step, blk, nblk)
    elif scalar_t is double:
        zm_cols_stream_d(a, b, o, init, state, w, m, step, blk, nblk)
    else:
        cols_scan(a, b, o, init, w, m, step)


cdef inline void cols_scan_shared(const scalar_t *a, const scalar_t *b,
                                  scalar_t *o, const scalar_t *init,
                                  Py_ssize_t w, Py_ssize_t m, Py_ssize_t step,
                                  Py_ssize_t blk, Py_ssize_t nblk) noexcept nogil:
    """cols_scan of channel block `blk` of `nblk` that share every step's
    memory with the others, each on its own thread. A 2 MiB page of the
    output then holds the steps of every block, and the thread that first
    writes it zeroes it while the others wait; instead, each thread faults
    in (by writing its own first channel of a step ahead) every nblk-th
    2 MiB region of the output, two regions ahead of the scan, so that the
    zeroing of fresh pages is shared out and done before it is needed."""
    cdef Py_ssize_t i, c, t, ahead
    cdef Py_ssize_t rowb = (step if step > 0 else -step) * sizeof(scalar_t)
    cdef Py_ssize_t per = (2 << 20) // rowb if rowb < (2 << 20) else 1
    cdef const scalar_t *ai
    cdef const scalar_t *bi
    cdef const scalar_t *prev = init
    cdef scalar_t *oi
    cdef volatile scalar_t *touch
    if per < 1:
        per = 1
    ahead = 2 * per
    for t in range(imin(ahead, m)):
        touch = o + t * step
        if ((<size_t> touch) >> 21) % nblk == blk:
            touch[0] = 0
    for i in range(m):
        if i % per == 0:
            t = i + ahead
            if t < m:
                touch = o + t * step
                if ((<size_t> touch) >> 21) % nblk == blk:
                    touch[0] = 0
        ai = a + i * step
        bi = b + i * step
        oi = o + i * step
        for c in range(w):
            oi[c] = ai[c] * prev[c] + bi[c]
        prev = oi


cdef inline void cols_reduce(const scalar_t *a, const scalar_t *b,
                             scalar_t *s, scalar_t *p, Py_ssize_t w,
                             Py_ssize_t m, Py_ssize_t step) noexcept nogil:
    """s[c] <- scan of channel c from s[c]; p[c] *= product of decays.

    Real products below the smallest normal number are set to zero every
    FLUSH_STEPS steps (see zm_flush_* in _vmath.h: they would otherwise
    rest on the smallest subnormal, every later step on the slow path)."""
    cdef Py_ssize_t i, c
    cdef scalar_t av
    for i in range(m):
        for c in range(w):
            av = a[i * step + c]
            s[c] = av * s[c] + b[i * step + c]
            p[c] = p[c] * av
        if scalar_t is float or scalar_t is double:
            if i % FLUSH_STEPS == FLUSH_STEPS - 1:
                for c in range(w):
                    p[c] = vflush(p[c])



cdef int cols_chunked(const scalar_t *A, const scalar_t *B, scalar_t *O,
                      const scalar_t *H0, Py_ssize_t outer, Py_ssize_t n,
                      Py_ssize_t inner, bint reverse, Py_ssize_t cw,
                      Py_ssize_t T, double lead, scratch_t *ws,
                      int nthreads) noexcept nogil:
    """Columns layout. A lane is (row, channel block of cw).

    With T == 1 (from the plan: at least as many lanes as threads), every
    lane is one task, scanned in one pass. Otherwise each lane's time axis
    is cut into T + 1 spans, T = threads per lane (T <= n), so that every thread reads and writes its own
    range of memory (reduce, then scan):

    (1) thread 0 of a lane scans span 0 from h0 while threads 1 .. T-1
        reduce spans 1 .. T-1 to their affine maps h -> P h + S (reading
        a and b, writing nothing);
    (2) a carry pass per lane gives the state entering spans 1 .. T;
    (3) thread k scans span k + 1 from its entering state.

    Span 0 is `lead` (two thirds) the length of the others, so that its
    scan (two streams read, one written) takes as long as a reduction (two
    read) of a longer span. Every element is written once and a and b of spans
    1 .. T-1 are read twice: 25% more memory traffic than one pass for two
    threads, against 50% for scanning the later spans from zero and
    correcting them.
    """
    cdef Py_ssize_t nblk = (inner + cw - 1) // cw
    cdef Py_ssize_t nlane = outer * nblk
    cdef Py_ssize_t task, lane, r, blk, k, c0, w, t0, t1, j, jp
    cdef Py_ssize_t step = -inner if reverse else inner
    cdef scalar_t *agg
    cdef scalar_t *Pk
    cdef scalar_t *Sk
    cdef scalar_t *carry
    cdef const scalar_t *endv
    cdef scalar_t *state

    if T <= 1:
        with parallel(num_threads=nthreads):
            # with streaming stores (ws not NULL), the thread's state row
            state = NULL
            if ws != NULL:
                state = <scalar_t *> scratch_block(ws, threadid())
            for lane in prange(nlane, schedule='static'):
                r = lane // nblk
                blk = lane - r * nblk
                c0 = blk * cw
                j = (r * n + pos(0, n, reverse)) * inner + c0
                if ws != NULL:
                    # (pages shared out only as cols_scan_shared would)
                    if state != NULL:
                        cols_scan_stream(A + j, B + j, O + j,
                                         H0 + r * inner + c0, state,
                                         imin(cw, inner - c0), n, step, blk,
                                         nblk if (outer < nthreads and nblk > 1
                                                  and O != B) else 1)
                elif outer < nthreads and nblk > 1 and O != B:
                    # (in place, O == B, the pages are mapped and hold b)
                    cols_scan_shared(A + j, B + j, O + j, H0 + r * inner + c0,
                                     imin(cw, inner - c0), n, step, blk, nblk)
                else:
                    cols_scan(A + j, B + j, O + j, H0 + r * inner + c0,
                              imin(cw, inner - c0), n, step)
        return 0
    # per (lane, span k): P (decay product), S (state from zero), carry
    agg = <scalar_t *> malloc(nlane * (T + 1) * 3 * cw * sizeof(scalar_t))
    if agg == NULL:
        return -1

    # (1) span 0 scanned, spans 1 .. T-1 reduced
    for task in prange(nlane * T, num_threads=nthreads, schedule='static'):
        lane = task // T
        k = task - lane * T
        r = lane // nblk
        blk = lane - r * nblk
        c0 = blk * cw
        w = imin(cw, inner - c0)
        t0 = span_start(k, n, T, lead)
        t1 = span_start(k + 1, n, T, lead)
        j = (r * n + pos(t0, n, reverse)) * inner + c0
        if k == 0:
            cols_scan(A + j, B + j, O + j, H0 + r * inner + c0, w, t1 - t0,
                      step)
        else:
            Pk = agg + ((lane * (T + 1) + k) * 3) * cw
            Sk = Pk + cw
            for jp in range(w):
                Pk[jp] = 1
                Sk[jp] = 0
            cols_reduce(A + j, B + j, Sk, Pk, w, t1 - t0, step)

    # (2) the state entering spans 1 .. T of every lane
    for lane in range(nlane):
        r = lane // nblk
        blk = lane - r * nblk
        c0 = blk * cw
        w = imin(cw, inner - c0)
        carry = agg + ((lane * (T + 1) + 1) * 3 + 2) * cw
        t1 = span_start(1, n, T, lead)
        if t1 > 0:
            endv = O + (r * n + pos(t1 - 1, n, reverse)) * inner + c0
        else:
            endv = H0 + r * inner + c0
        for jp in range(w):
            carry[jp] = endv[jp]
        for k in range(1, T):
            Pk = agg + ((lane * (T + 1) + k) * 3) * cw
            Sk = Pk + cw
            endv = Pk + 2 * cw
            carry = agg + ((lane * (T + 1) + k + 1) * 3 + 2) * cw
            for jp in range(w):
                carry[jp] = Pk[jp] * endv[jp] + Sk[jp]

    # (3) spans 1 .. T scanned from their entering states
    for task in prange(nlane * T, num_threads=nthreads, schedule='static'):
        lane = task // T
        k = task - lane * T + 1
        r = lane // nblk
        blk = lane - r * nblk
        c0 = blk * cw
        w = imin(cw, inner - c0)
        t0 = span_start(k, n, T, lead)
        t1 = span_start(k + 1, n, T, lead)
        j = (r * n + pos(t0, n, reverse)) * inner + c0
        cols_scan(A + j, B + j, O + j,
                  agg + ((lane * (T + 1) + k) * 3 + 2) * cw, w, t1 - t0,
                  step)
    free(agg)
    return 0


cdef inline Py_ssize_t span_start(Py_ssize_t k, Py_ssize_t n, Py_ssize_t T,
                                  double lead) noexcept nogil:
    """First step of span k of T + 1: span 0 is `lead` times as long as
    each of the others."""
    if k <= 0:
        return 0
    if k > T:
        return n
    return <Py_ssize_t> (n * ((lead + (k - 1)) / (lead + T)))



cdef int cols_associative(const scalar_t *A, const scalar_t *B, scalar_t *O,
                          const scalar_t *H0, Py_ssize_t outer, Py_ssize_t n,
                          Py_ssize_t inner, bint reverse, Py_ssize_t leaf,
                          Py_ssize_t cw, int nthreads) noexcept nogil:
    cdef Py_ssize_t nleaf = (n + leaf - 1) // leaf
    cdef Py_ssize_t p2 = next_pow2(nleaf)
    cdef Py_ssize_t nblk = (inner + cw - 1) // cw
    cdef Py_ssize_t nlane = outer * nblk
    cdef Py_ssize_t ntask = nlane * (nleaf - 1)
    cdef Py_ssize_t task, lane, r, blk, c, c0, w, t0, m, i, j, tb
    cdef Py_ssize_t step = -inner if reverse else inner
    cdef scalar_t *TA
    cdef scalar_t *TB
    cdef const scalar_t *end

    TA = <scalar_t *> malloc(nlane * p2 * cw * sizeof(scalar_t))
    TB = <scalar_t *> malloc(nlane * p2 * cw * sizeof(scalar_t))
    if TA == NULL or TB == NULL:
        free(TA)
        free(TB)
        return -1

    # (1) leaf maps; node (lane, c) at TA[(lane * p2 + c) * cw]. The first
    # leaf is scanned from h0 here instead, its map's B the state it ends
    # in (its A enters no state); the last is left the identity, since its
    # map enters no other leaf's state. The inputs of the leaves between
    # are read twice, those of the first and the last once.
    for task in prange(nlane * p2, num_threads=nthreads,
                       schedule='static'):
        lane = task // p2
        c = task - lane * p2
        r = lane // nblk
        blk = lane - r * nblk
        c0 = blk * cw
        w = imin(cw, inner - c0)
        tb = task * cw
        for j in range(cw):
            TA[tb + j] = 1
            TB[tb + j] = 0
        t0 = c * leaf
        m = imin(leaf, n - t0)
        i = (r * n + pos(t0, n, reverse)) * inner + c0
        if c == 0:
            cols_scan(A + i, B + i, O + i, H0 + r * inner + c0, w, m, step)
            end = O + (r * n + pos(m - 1, n, reverse)) * inner + c0
            for j in range(w):
                TB[tb + j] = end[j]
        elif c < nleaf - 1:
            cols_reduce(A + i, B + i, TB + tb, TA + tb, w, m, step)

    # (2) tree per lane, vectorised over the block's channels
    if nlane >= nthreads:
        for lane in prange(nlane, num_threads=nthreads,
                           schedule='static'):
            tree_exclusive(TA + lane * p2 * cw, TB + lane * p2 * cw, p2, cw, 1)
    else:
        for lane in range(nlane):
            tree_exclusive(TA + lane * p2 * cw, TB + lane * p2 * cw, p2, cw,
                           nthreads)

    # (3) every later leaf from its entering state
    for task in prange(ntask, num_threads=nthreads,
                       schedule='static'):
        lane = task // (nleaf - 1)
        c = task - lane * (nleaf - 1) + 1
        r = lane // nblk
        blk = lane - r * nblk
        c0 = blk * cw
        w = imin(cw, inner - c0)
        t0 = c * leaf
        m = imin(leaf, n - t0)
        i = (r * n + pos(t0, n, reverse)) * inner + c0
        cols_scan(A + i, B + i, O + i, TB + (lane * p2 + c) * cw, w, m, step)
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
    """out (outer, n, inner, inner > 1) <- the scan of a, b along axis 1 from h0
    (outer, inner; None: zeros), as `plan` (a _scan_plan.ScanPlan) says.
    `out` may be `b` itself when ``plan.in_place``."""
    cdef Py_ssize_t outer = out.shape[0], n = out.shape[1], inner = out.shape[2]
    cdef Py_ssize_t o, j, step, size, block_width, splits
    cdef double lead
    cdef int status = 0, method, num_threads
    cdef bint stream = bool(plan.stream)
    cdef const scalar_t *A
    cdef const scalar_t *B
    cdef scalar_t *O
    cdef const scalar_t *H
    cdef scalar_t *zeros = NULL
    cdef Scratch scr
    cdef scratch_t *ws = NULL
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
    if stream and method != RUN_ASSOCIATIVE:
        # streaming stores keep the state in a row per thread (one thread
        # for the sequential scan, which walks whole rows)
        try:
            scr = Scratch(1 if method == RUN_SEQUENTIAL else num_threads,
                          inner if method == RUN_SEQUENTIAL else block_width,
                          sizeof(scalar_t), "the column scan's state rows")
        except MemoryError:
            free(zeros)
            raise
        ws = &scr.s
    with nogil:
        if method == RUN_SEQUENTIAL:
            step = -inner if reverse else inner
            for o in range(outer):
                j = (o * n + pos(0, n, reverse)) * inner
                if ws != NULL:
                    cols_scan_stream(A + j, B + j, O + j, H + o * inner,
                                     <scalar_t *> scratch_block(ws, 0), inner,
                                     n, step, 0, 1)
                else:
                    cols_scan(A + j, B + j, O + j, H + o * inner, inner, n,
                              step)
        elif method == RUN_CHUNKED:
            status = cols_chunked(A, B, O, H, outer, n, inner, reverse,
                                  block_width, splits, lead, ws,
                                  num_threads)
        else:
            status = cols_associative(A, B, O, H, outer, n, inner, reverse,
                                      size, block_width, num_threads)
    free(zeros)
    if status != 0:
        raise MemoryError("could not allocate the scan's scratch memory")
    if ws != NULL:
        scr.finish()
