# cython: language_level=3
"""Kernels of Mamba-2's structured state space duality (SSD).

Design
------
Layouts (all C-contiguous, element type real_t):

* x, y    (batch, seqlen, nheads, headdim)   -- a chunk of one head is a
  (len, headdim) row-major matrix with leading dimension nheads*headdim;
* B, C    (batch, seqlen, ngroups, dstate)   -- leading dimension
  ngroups*dstate; head h reads group h // (nheads // ngroups);
* dt, dA  (batch, nheads, padded_len)        -- the processed step dt' and,
  for the chunked kernels, the cumulative sum of dt'*A restarted at every
  chunk (padded_len = nchunks * chunk_size, padding has dt' = 0);
* seq     (batch, seqlen) int64              -- sequence ids (has_seq);
* states  (batch, nchunks, nheads, headdim, dstate) and a running state
  (batch, nheads, headdim, dstate): row-major (headdim, dstate) per head.

Per chunk of one head, with cs the chunk's cumulative decays,
E[i, j] = exp(cs_i - cs_j) (j <= i, same sequence, else 0):

* intra-chunk output  Y  = (E o C B^T) diag(dt) X
* inter-chunk output  Y += diag(exp(cs_i)) C S^T
* chunk state         S' = exp(cs_last) S + B^T diag(w) X,
                      w_l = exp(cs_last - cs_l) dt_l

Exponents are always differences of cumulative sums *within one chunk*,
never a product of exp(cs_i) and exp(-cs_j). When a chunk's cumulative sum
is non-increasing (dt' A <= 0, the SSM case), every exponent is clamped to
<= 0 as well, so rounding can never turn a decay into a growth.

The products are the register-tiled loops of _ssdchunk.h (no BLAS): the two
output terms accumulate in the same registers and are stored once, the
masked upper half of (E o C B^T) X is skipped, and the state is kept
transposed, (dstate, headdim), while a task walks its chunks.

The fused scan (`combined`) gives each (batch, head) task its chunks in
order: output of the chunk from the running state, then the running state
advanced through the chunk, so no per-chunk states are stored. When several
heads share a group, C B^T is formed once per (batch, group, chunk) in a
first parallel pass, into a (batch, ngroups, nchunks, cm, mp) array
(cm = min(chunk_size, seqlen), mp = cm rounded up to the vector width), and
read by every head of the group.

Parallel tasks: (batch, head) for the fused scan, the sequential recurrence
and the state passing; (batch, chunk, head) for the chunk-state and
chunk-scan stages; (batch, group, chunk) for the shared C B^T. Per-thread
scratch is O(chunk_size^2 + (chunk_size + dstate) * headdim); no
per-position state and no (L, L) matrix per head
and chunk is ever stored beyond the one a thread works on.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport exp, expf, fabs, log1p
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from zilla_muf._types cimport real_t
from zilla_muf._vmath cimport vexp, zm_softplusf


# ---------------------------------------------------------------------------
# Element helpers
# ---------------------------------------------------------------------------

cdef extern from "_ssdchunk.h" nogil:
    int ZM_VWF
    int ZM_VWD
    Py_ssize_t zm_ssd_scratch(Py_ssize_t cm, Py_ssize_t P, Py_ssize_t N,
                              Py_ssize_t vw, Py_ssize_t itemsize)
    void zm_ssd_walk_f(const float *x, float *y, const float *B,
                       const float *C, const float *dt, const float *cs,
                       const long long *seq, const float *CB,
                       Py_ssize_t cbstride, float *state, int has_init,
                       const float *Dv, const float *z,
                       Py_ssize_t ldx, Py_ssize_t ldb, Py_ssize_t L,
                       Py_ssize_t P, Py_ssize_t N, Py_ssize_t csz,
                       float *work)
    void zm_ssd_walk_d(const double *x, double *y, const double *B,
                       const double *C, const double *dt, const double *cs,
                       const long long *seq, const double *CB,
                       Py_ssize_t cbstride, double *state, int has_init,
                       const double *Dv, const double *z,
                       Py_ssize_t ldx, Py_ssize_t ldb, Py_ssize_t L,
                       Py_ssize_t P, Py_ssize_t N, Py_ssize_t csz,
                       double *work)
    void zm_seq_step_f(float *S, const float *x, const float *Bt,
                       const float *Ct, float a, float d, Py_ssize_t P,
                       Py_ssize_t N, float *y)
    void zm_seq_step_d(double *S, const double *x, const double *Bt,
                       const double *Ct, double a, double d, Py_ssize_t P,
                       Py_ssize_t N, double *y)
    void zm_ssd_stage_f(const float *x, float *y, const float *B,
                        const float *C, const float *dt, const float *cs,
                        const long long *seq, float *state, Py_ssize_t ldx,
                        Py_ssize_t ldb, Py_ssize_t m, Py_ssize_t cm,
                        Py_ssize_t P, Py_ssize_t N, float *work)
    void zm_ssd_stage_d(const double *x, double *y, const double *B,
                        const double *C, const double *dt, const double *cs,
                        const long long *seq, double *state, Py_ssize_t ldx,
                        Py_ssize_t ldb, Py_ssize_t m, Py_ssize_t cm,
                        Py_ssize_t P, Py_ssize_t N, double *work)
    void zm_ssd_cb_f(float *CB, Py_ssize_t ldcb, const float *Cc,
                     const float *Bc, Py_ssize_t ldb, Py_ssize_t m,
                     Py_ssize_t N, float *work)
    void zm_ssd_cb_d(double *CB, Py_ssize_t ldcb, const double *Cc,
                     const double *Bc, Py_ssize_t ldb, Py_ssize_t m,
                     Py_ssize_t N, double *work)


cdef inline real_t decay(real_t d, bint clamp) noexcept nogil:
    """exp(d), with d clamped to <= 0 when the math says it is."""
    if clamp:
        d = 0 if d > 0 else d
    return vexp(d)


cdef inline bint nonincreasing(const real_t *cs, Py_ssize_t m) noexcept nogil:
    """Whether the chunk's cumulative decay never grows (all dt'A <= 0)."""
    cdef Py_ssize_t i
    if m > 0 and cs[0] > 0:
        return False
    for i in range(1, m):
        if cs[i] > cs[i - 1]:
            return False
    return True


cdef inline real_t chunk_carry(const real_t *cs, const long long *seq,
                               Py_ssize_t m) noexcept nogil:
    """Factor carrying the state entering a chunk to its end."""
    if seq != NULL and seq[0] != seq[m - 1]:
        return 0
    return decay(cs[m - 1], nonincreasing(cs, m))


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef class Scratch:
    """Per-thread scratch: `nthreads` blocks of `per_thread` elements, and a
    record of which threads ran (the kernels report their thread count)."""
    cdef void *buf
    cdef int *seen
    cdef Py_ssize_t per_thread
    cdef int nthreads

    def __cinit__(self, int nthreads, Py_ssize_t per_thread, Py_ssize_t itemsize):
        self.nthreads = nthreads
        self.per_thread = per_thread
        self.buf = malloc(nthreads * per_thread * itemsize + 64)
        self.seen = <int *> malloc((nthreads + 1) * sizeof(int))
        if self.buf == NULL or self.seen == NULL:
            raise MemoryError("could not allocate the SSD kernels' scratch memory")
        memset(self.seen, 0, (nthreads + 1) * sizeof(int))

    def __dealloc__(self):
        free(self.buf)
        free(self.seen)

    cdef inline void mark(self, int tid) noexcept nogil:
        if 0 <= tid <= self.nthreads:
            self.seen[tid] = 1

    def count(self):
        cdef int t, n = 0
        for t in range(self.nthreads + 1):
            n += self.seen[t]
        return n


cdef inline Py_ssize_t vector_width(real_t *dummy) noexcept nogil:
    if real_t is float:
        return ZM_VWF
    else:
        return ZM_VWD


def combined(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
             const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
             const real_t[:, :, :, ::1] C, const long long[:, ::1] seq,
             bint has_seq, real_t[:, :, :, ::1] state, bint has_init,
             const real_t[:, ::1] D, bint has_D, const real_t[:, :, :, ::1] z,
             bint has_z, real_t[:, :, :, ::1] y, Py_ssize_t chunk_size,
             int num_threads, bint share_cb=True):
    """Chunked SSD scan; `state` holds the initial state and gets the final
    one. With has_D / has_z, y gets D (nheads, headdim) x added and is then
    gated by silu(z) (z shaped like x), chunk by chunk. Returns the number
    of threads that ran.

    Each (batch, head) task walks its chunks in order (_ssdchunk.h). With
    share_cb and several heads per group, C B^T of every (batch, group,
    chunk) is formed once, in a first parallel pass, into a
    (batch, ngroups, nchunks, cm, mp) array (mp: cm rounded up to the vector
    width), instead of once per head.
    """
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t task, b, h, g, c, t0
    cdef Py_ssize_t nch = (L + chunk_size - 1) // chunk_size
    cdef Py_ssize_t cm = imin(chunk_size, L)
    cdef Py_ssize_t vw = vector_width(<real_t *> NULL)
    cdef Scratch scr = Scratch(num_threads,
                               zm_ssd_scratch(cm, P, N, vw, sizeof(real_t)),
                               sizeof(real_t))
    cdef real_t *buf = <real_t *> scr.buf
    cdef real_t *cb = NULL
    cdef const long long *sq = NULL
    cdef int tid
    cdef Py_ssize_t mp = (cm + vw - 1) // vw * vw
    cdef Py_ssize_t cbsz = cm * mp, ldx = H * P, ldb = G * N
    cdef Scratch cbs
    if nb == 0 or L == 0 or H == 0 or P == 0 or N == 0:
        return 0
    if share_cb and H // G > 1:
        cbs = Scratch(1, nb * G * nch * cbsz, sizeof(real_t))
        cb = <real_t *> cbs.buf
        for task in prange(nb * G * nch, num_threads=num_threads,
                           schedule='static', nogil=True):
            tid = threadid()
            b = task // (G * nch)
            g = (task // nch) % G
            c = task % nch
            t0 = c * chunk_size
            if real_t is float:
                zm_ssd_cb_f(cb + task * cbsz, mp, &C[b, t0, g, 0],
                            &B[b, t0, g, 0], ldb, imin(chunk_size, L - t0), N,
                            buf + tid * scr.per_thread)
            else:
                zm_ssd_cb_d(cb + task * cbsz, mp, &C[b, t0, g, 0],
                            &B[b, t0, g, 0], ldb, imin(chunk_size, L - t0), N,
                            buf + tid * scr.per_thread)
    for task in prange(nb * H, num_threads=num_threads, schedule='static',
                       nogil=True):
        tid = threadid()
        scr.mark(tid)
        b = task // H
        h = task % H
        g = h // (H // G)
        sq = &seq[b, 0] if has_seq else NULL
        if real_t is float:
            zm_ssd_walk_f(&x[b, 0, h, 0], &y[b, 0, h, 0], &B[b, 0, g, 0],
                          &C[b, 0, g, 0], &dt[b, h, 0], &dA[b, h, 0], sq,
                          (cb + (b * G + g) * nch * cbsz) if cb != NULL else NULL,
                          cbsz, &state[b, h, 0, 0], has_init,
                          &D[h, 0] if has_D else NULL,
                          &z[b, 0, h, 0] if has_z else NULL, ldx, ldb, L, P,
                          N, chunk_size, buf + tid * scr.per_thread)
        else:
            zm_ssd_walk_d(&x[b, 0, h, 0], &y[b, 0, h, 0], &B[b, 0, g, 0],
                          &C[b, 0, g, 0], &dt[b, h, 0], &dA[b, h, 0], sq,
                          (cb + (b * G + g) * nch * cbsz) if cb != NULL else NULL,
                          cbsz, &state[b, h, 0, 0], has_init,
                          &D[h, 0] if has_D else NULL,
                          &z[b, 0, h, 0] if has_z else NULL, ldx, ldb, L, P,
                          N, chunk_size, buf + tid * scr.per_thread)
    return scr.count()


# ---------------------------------------------------------------------------
# Step sizes: dt' and the per-chunk cumulative decays, one (batch, head) task
# each.
# ---------------------------------------------------------------------------

cdef inline real_t softplus(real_t v) noexcept nogil:
    """log(1 + e^v), overflow-free (NaN propagates)."""
    if real_t is float:
        return zm_softplusf(v)
    else:
        return (v if v > 0 else 0) + log1p(exp(-fabs(v)))


def process_dt(const real_t[:, :, ::1] dt, const real_t[::1] bias,
               bint has_bias, bint dt_softplus, double lo, double hi,
               const real_t[::1] A, bint has_A, Py_ssize_t chunk_size,
               real_t[:, :, ::1] dt_out, real_t[:, :, ::1] dA,
               int num_threads):
    """dt_out[b, h, t] = clamp(softplus(dt[b, t, h] + bias[h]), lo, hi)
    (softplus and bias optional) for t < seqlen, 0 in the padding; with
    has_A, dA[b, h, t] = the inclusive sum of dt_out * A[h] from the start of
    t's chunk (constant over the padding)."""
    cdef Py_ssize_t nb = dt.shape[0], L = dt.shape[1], H = dt.shape[2]
    cdef Py_ssize_t Lp = dt_out.shape[2], task, b, h, t
    cdef real_t v, acc, a, bh, rlo = <real_t> lo, rhi = <real_t> hi
    cdef real_t *out
    cdef real_t *cs
    for task in prange(nb * H, num_threads=num_threads, schedule='static',
                       nogil=True):
        b = task // H
        h = task % H
        bh = bias[h] if has_bias else 0
        a = A[h] if has_A else 0
        out = &dt_out[b, h, 0]
        for t in range(L):
            v = dt[b, t, h] + bh
            if dt_softplus:
                v = softplus(v)
            if v < rlo:
                v = rlo
            if v > rhi:
                v = rhi
            out[t] = v
        for t in range(L, Lp):
            out[t] = 0
        if has_A:
            cs = &dA[b, h, 0]
            acc = 0
            for t in range(Lp):
                if t % chunk_size == 0:
                    acc = 0
                acc = acc + out[t] * a
                cs[t] = acc


# ---------------------------------------------------------------------------
# The stages: chunk state and chunk scan (tasks (batch, chunk, head)), and
# the state passing (tasks (batch, head)).
# ---------------------------------------------------------------------------

def chunk_stage(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
                const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
                const real_t[:, :, :, ::1] C,
                const real_t[:, :, :, :, ::1] states,
                const long long[:, ::1] seq, bint has_seq, real_t[:, :, :, ::1] y,
                bint scan, Py_ssize_t chunk_size, int num_threads):
    """One task per (batch, chunk, head). scan = False (chunk state):
    states[b, c, h] <- the end state of chunk c from a zero start (`states`
    must be writable; `C` and `y` are not used). scan = True (chunk scan):
    y <- intra-chunk term + inter-chunk term from the entering states
    `states` (only read)."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t nch = states.shape[1]
    cdef Py_ssize_t task, b, c, h, g, t0, m, cm = imin(chunk_size, L)
    cdef int tid
    cdef const long long *sq
    cdef real_t *yp
    cdef const real_t *cp
    cdef Scratch scr = Scratch(num_threads,
                               zm_ssd_scratch(cm, P, N,
                                              vector_width(<real_t *> NULL),
                                              sizeof(real_t)),
                               sizeof(real_t))
    cdef real_t *buf = <real_t *> scr.buf
    if nb == 0 or L == 0 or H == 0 or P == 0 or N == 0:
        return 0
    for task in prange(nb * nch * H, num_threads=num_threads,
                       schedule='static', nogil=True):
        tid = threadid()
        scr.mark(tid)
        b = task // (nch * H)
        c = (task // H) % nch
        h = task % H
        g = h // (H // G)
        t0 = c * chunk_size
        m = imin(chunk_size, L - t0)
        sq = &seq[b, t0] if has_seq else NULL
        yp = &y[b, t0, h, 0] if scan else NULL
        cp = &C[b, t0, g, 0] if scan else NULL
        if real_t is float:
            zm_ssd_stage_f(&x[b, t0, h, 0], yp, &B[b, t0, g, 0], cp,
                           &dt[b, h, t0], &dA[b, h, t0], sq,
                           <real_t *> &states[b, c, h, 0, 0], H * P, G * N,
                           m, cm, P, N, buf + tid * scr.per_thread)
        else:
            zm_ssd_stage_d(&x[b, t0, h, 0], yp, &B[b, t0, g, 0], cp,
                           &dt[b, h, t0], &dA[b, h, t0], sq,
                           <real_t *> &states[b, c, h, 0, 0], H * P, G * N,
                           m, cm, P, N, buf + tid * scr.per_thread)
    return scr.count()


def state_passing(const real_t[:, :, :, :, ::1] states,
                  const real_t[:, :, ::1] dA, const long long[:, ::1] seq,
                  bint has_seq, Py_ssize_t L, const real_t[:, :, :, ::1] init,
                  real_t[:, :, :, :, ::1] out, real_t[:, :, :, ::1] final,
                  Py_ssize_t chunk_size, int num_threads):
    """out[b, c] = state entering chunk c (reset when a sequence starts at
    its first position); final = state after the last real position."""
    cdef Py_ssize_t nb = states.shape[0], nch = states.shape[1]
    cdef Py_ssize_t H = states.shape[2], PN = states.shape[3] * states.shape[4]
    cdef Py_ssize_t Lp = dA.shape[2]
    cdef Py_ssize_t task, b, h, c, k, t0, m
    cdef real_t carry
    cdef const real_t *cs
    cdef const real_t *src
    cdef real_t *dst
    cdef real_t *fin
    cdef const long long *sq
    if nb == 0 or H == 0 or PN == 0:
        return
    for task in prange(nb * H, num_threads=num_threads, schedule='static',
                       nogil=True):
        b = task // H
        h = task % H
        fin = &final[b, h, 0, 0]
        src = &init[b, h, 0, 0]
        for k in range(PN):
            fin[k] = src[k]
        for c in range(nch):
            t0 = c * chunk_size
            m = imin(chunk_size, L - t0)
            cs = &dA[b, h, t0]
            sq = &seq[b, t0] if has_seq else NULL
            if sq != NULL and t0 > 0 and sq[0] != sq[-1]:
                for k in range(PN):
                    fin[k] = 0
            dst = &out[b, c, h, 0, 0]
            for k in range(PN):
                dst[k] = fin[k]
            carry = chunk_carry(cs, sq, m) if m > 0 else 1
            src = &states[b, c, h, 0, 0]
            for k in range(PN):
                fin[k] = carry * fin[k] + src[k]


# ---------------------------------------------------------------------------
# The plain recurrence: one (batch, head) task steps through time.
# ---------------------------------------------------------------------------

cdef void sequential_task(const real_t *x, const real_t *dt, const real_t *A,
                          const real_t *Bm, const real_t *Cm,
                          const long long *seq, real_t *state, real_t *y,
                          Py_ssize_t b, Py_ssize_t h, Py_ssize_t L,
                          Py_ssize_t Lp, Py_ssize_t H, Py_ssize_t G,
                          Py_ssize_t P, Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t t, p, g = h // (H // G)
    cdef real_t *S = state + (b * H + h) * P * N
    cdef const real_t *Bt
    cdef const real_t *Ct
    cdef const real_t *xt
    cdef real_t a, d
    for t in range(L):
        if seq != NULL and t > 0 and seq[b * L + t] != seq[b * L + t - 1]:
            for p in range(P * N):
                S[p] = 0
        d = dt[(b * H + h) * Lp + t]
        if real_t is float:
            a = expf(d * A[h])
        else:
            a = exp(d * A[h])
        xt = x + ((b * L + t) * H + h) * P
        Bt = Bm + ((b * L + t) * G + g) * N
        Ct = Cm + ((b * L + t) * G + g) * N
        if real_t is float:
            zm_seq_step_f(S, xt, Bt, Ct, a, d, P, N,
                          y + ((b * L + t) * H + h) * P)
        else:
            zm_seq_step_d(S, xt, Bt, Ct, a, d, P, N,
                          y + ((b * L + t) * H + h) * P)


def sequential(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
               const real_t[::1] A, const real_t[:, :, :, ::1] B,
               const real_t[:, :, :, ::1] C, const long long[:, ::1] seq,
               bint has_seq, real_t[:, :, :, ::1] state,
               real_t[:, :, :, ::1] y, int num_threads):
    """The recurrence step by step; `state` is advanced in place."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t Lp = dt.shape[2], task
    cdef const long long *sq = &seq[0, 0] if has_seq else NULL
    if nb == 0 or H == 0 or L == 0 or P == 0:
        return
    for task in prange(nb * H, num_threads=num_threads, schedule='static',
                       nogil=True):
        sequential_task(&x[0, 0, 0, 0], &dt[0, 0, 0], &A[0], &B[0, 0, 0, 0],
                        &C[0, 0, 0, 0], sq, &state[0, 0, 0, 0],
                        &y[0, 0, 0, 0], task // H, task % H, L, Lp, H, G, P, N)
