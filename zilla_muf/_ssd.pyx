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

* intra-chunk output  Y  = (E o C B^T) diag(dt) X           (two GEMMs)
* inter-chunk output  Y += diag(exp(cs_i)) C S^T            (one GEMM)
* chunk state         S' = exp(cs_last) S + B^T diag(w) X,  w_l = exp(cs_last - cs_l) dt_l
                                                             (one GEMM)

Exponents are always differences of cumulative sums *within one chunk*,
never a product of exp(cs_i) and exp(-cs_j). When a chunk's cumulative sum
is non-increasing (dt' A <= 0, the SSM case), every exponent is clamped to
<= 0 as well, so rounding can never turn a decay into a growth.

The GEMMs are scipy.linalg.cython_blas calls, one task per OpenMP thread at a
time; the Python layer limits BLAS to one thread around these kernels. The
row-major products are issued as column-major GEMMs of the transposes.

The fused scan (`combined`) gives each (batch, head) task its chunks in
order: output of the chunk from the running state, then the running state
advanced through the chunk, so no per-chunk states are stored. When several
heads share a group, C B^T is formed once per (batch, group, chunk) in a
first parallel pass, into a (batch, ngroups, nchunks, cm, cm) array
(cm = min(chunk_size, seqlen)), and read by every head of the group.

Parallel tasks: (batch, head) for the fused scan, the sequential recurrence
and the state passing; (batch, chunk, head) for the chunk-state and
chunk-scan stages; (batch, group, chunk) for the shared C B^T. Per-thread scratch is O(chunk_size^2 + chunk_size *
(headdim + dstate)); no per-position state and no (L, L) matrix per head
and chunk is ever stored beyond the one a thread works on.
"""
from cython.parallel cimport prange, threadid
from libc.math cimport exp, expf
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from scipy.linalg.cython_blas cimport sgemm, dgemm

from zilla_muf._types cimport real_t
from zilla_muf._vmath cimport vexp


# ---------------------------------------------------------------------------
# Element helpers
# ---------------------------------------------------------------------------

cdef extern from *:
    """
    #include "_vmath.h"

    /* One row of the masked decay matrix:
       w[j] = cb[j] * exp(csi - cs[j]) * dt[j], the exponent clamped to <= 0
       when `clamp`. Contiguous, restrict-qualified and branch-free so that
       the compiler vectorises it (with -fno-trapping-math). */
    static void zm_decay_row_f(float *restrict w, const float *restrict cb,
                               const float *restrict cs,
                               const float *restrict dt, float csi,
                               Py_ssize_t n, int clamp) {
        Py_ssize_t j;
        if (clamp) {
            for (j = 0; j < n; j++) {
                float d = csi - cs[j];
                d = d > 0.0f ? 0.0f : d;
                w[j] = cb[j] * zm_expf(d) * dt[j];
            }
        } else {
            for (j = 0; j < n; j++)
                w[j] = cb[j] * zm_expf(csi - cs[j]) * dt[j];
        }
    }

    static void zm_decay_row_d(double *restrict w, const double *restrict cb,
                               const double *restrict cs,
                               const double *restrict dt, double csi,
                               Py_ssize_t n, int clamp) {
        Py_ssize_t j;
        if (clamp) {
            for (j = 0; j < n; j++) {
                double d = csi - cs[j];
                d = d > 0.0 ? 0.0 : d;
                w[j] = cb[j] * exp(d) * dt[j];
            }
        } else {
            for (j = 0; j < n; j++)
                w[j] = cb[j] * exp(csi - cs[j]) * dt[j];
        }
    }

    /* One step of the recurrence for one head: S (P, N) row-major,
       S[p] <- a S[p] + (d x[p]) B, y[p] = S[p] . C. Eight running sums per
       row in a fixed order (the compiler vectorises them; the result does
       not depend on the thread count). */
    #define ZM_SEQ_STEP(NAME, T)                                            \
    static void NAME(T *restrict S, const T *restrict x,                    \
                     const T *restrict Bt, const T *restrict Ct, T a, T d,  \
                     Py_ssize_t P, Py_ssize_t N, T *restrict y) {           \
        Py_ssize_t p, n;                                                    \
        int k;                                                              \
        for (p = 0; p < P; p++) {                                           \
            T *restrict row = S + p * N;                                    \
            T u = d * x[p];                                                 \
            T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                            \
            T tail = 0;                                                     \
            for (n = 0; n + 8 <= N; n += 8) {                               \
                for (k = 0; k < 8; k++) {                                   \
                    T r = a * row[n + k] + u * Bt[n + k];                   \
                    row[n + k] = r;                                         \
                    acc[k] += r * Ct[n + k];                                \
                }                                                           \
            }                                                               \
            for (; n < N; n++) {                                            \
                T r = a * row[n] + u * Bt[n];                               \
                row[n] = r;                                                 \
                tail += r * Ct[n];                                          \
            }                                                               \
            y[p] = (((acc[0] + acc[4]) + (acc[1] + acc[5]))                 \
                    + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) + tail;      \
        }                                                                   \
    }
    ZM_SEQ_STEP(zm_seq_step_f, float)
    ZM_SEQ_STEP(zm_seq_step_d, double)
    """
    void zm_seq_step_f(float *S, const float *x, const float *Bt,
                       const float *Ct, float a, float d, Py_ssize_t P,
                       Py_ssize_t N, float *y) noexcept nogil
    void zm_seq_step_d(double *S, const double *x, const double *Bt,
                       const double *Ct, double a, double d, Py_ssize_t P,
                       Py_ssize_t N, double *y) noexcept nogil
    void zm_decay_row_f(float *w, const float *cb, const float *cs,
                        const float *dt, float csi, Py_ssize_t n,
                        int clamp) noexcept nogil
    void zm_decay_row_d(double *w, const double *cb, const double *cs,
                        const double *dt, double csi, Py_ssize_t n,
                        int clamp) noexcept nogil


cdef inline real_t decay(real_t d, bint clamp) noexcept nogil:
    """exp(d), with d clamped to <= 0 when the math says it is."""
    if clamp:
        d = 0 if d > 0 else d
    return vexp(d)


cdef inline void gemm_rm(char ta, char tb, int m, int n, int k, real_t alpha,
                         const real_t *a, int lda, const real_t *b, int ldb,
                         real_t beta, real_t *c, int ldc) noexcept nogil:
    """Row-major C = alpha op(A) op(B) + beta C (as col-major C^T = ...)."""
    if m <= 0 or n <= 0:
        return
    if real_t is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> b, &ldb,
              <float *> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> b, &ldb,
              <double *> a, &lda, &beta, c, &ldc)


cdef inline bint nonincreasing(const real_t *cs, Py_ssize_t m) noexcept nogil:
    """Whether the chunk's cumulative decay never grows (all dt'A <= 0)."""
    cdef Py_ssize_t i
    if m > 0 and cs[0] > 0:
        return False
    for i in range(1, m):
        if cs[i] > cs[i - 1]:
            return False
    return True


# ---------------------------------------------------------------------------
# One chunk of one head. Pointers are at the chunk's first position:
# X (m, P) ld ldx; Bc, Cc (m, N) ld ldb; dt, cs (m,); seq (m,) or NULL;
# Y (m, P) ld ldx. Scratch: W (cs, cs), Cw (m, N), Xw (m, P).
# ---------------------------------------------------------------------------

cdef void chunk_output(const real_t *X, const real_t *Bc, const real_t *Cc,
                       const real_t *CB, Py_ssize_t ldcb,
                       const real_t *dt, const real_t *cs,
                       const long long *seq, const real_t *S, bint has_state,
                       real_t *Y, Py_ssize_t m, Py_ssize_t P, Py_ssize_t N,
                       int ldx, int ldb, real_t *W, real_t *Cw,
                       real_t *CBw) noexcept nogil:
    """Y = (E o C B^T) diag(dt) X + diag(exp(cs)) C S^T for one chunk.

    CB, when not NULL, is C B^T already formed (row stride ldcb). S is the
    (P, N) state entering the chunk (already zero when a new sequence starts
    at the chunk's first position); has_state = False skips the inter-chunk
    term (S == 0).
    """
    cdef Py_ssize_t i, j, n
    cdef int mi = <int> m
    cdef bint clamp = nonincreasing(cs, m)
    cdef real_t e
    cdef real_t *Wi
    if CB == NULL:
        # C B^T (m, m), row-major with ld m, into the scratch CBw
        gemm_rm(c'N', c'T', mi, mi, <int> N, 1, Cc, ldb, Bc, ldb, 0, CBw, mi)
        CB = CBw
        ldcb = m
    for i in range(m):
        Wi = W + i * m
        if real_t is float:
            zm_decay_row_f(Wi, CB + i * ldcb, cs, dt, cs[i], i + 1, clamp)
        else:
            zm_decay_row_d(Wi, CB + i * ldcb, cs, dt, cs[i], i + 1, clamp)
        for j in range(i + 1, m):
            Wi[j] = 0
        if seq != NULL and seq[0] != seq[m - 1]:
            for j in range(i + 1):
                if seq[j] != seq[i]:
                    Wi[j] = 0
    gemm_rm(c'N', c'N', mi, <int> P, mi, 1, W, mi, X, ldx, 0, Y, ldx)
    if not has_state:
        return
    for i in range(m):
        e = decay(cs[i], clamp)
        if seq != NULL and seq[i] != seq[0]:
            e = 0
        for n in range(N):
            Cw[i * N + n] = e * Cc[i * ldb + n]
    gemm_rm(c'N', c'T', mi, <int> P, <int> N, 1, Cw, <int> N, S, <int> N,
            1, Y, ldx)


cdef void chunk_state(const real_t *X, const real_t *Bc, const real_t *dt,
                      const real_t *cs, const long long *seq, real_t *S,
                      real_t carry, Py_ssize_t m, Py_ssize_t P, Py_ssize_t N,
                      int ldx, int ldb, real_t *Xw) noexcept nogil:
    """S = carry * S + B^T diag(w) X as (P, N): the chunk's end state.

    w_l = exp(cs_last - cs_l) dt_l (0 for positions of an earlier sequence).
    carry = 0 gives the end state from a zero start (S is not read).
    """
    cdef Py_ssize_t l, p
    cdef bint clamp = nonincreasing(cs, m)
    cdef real_t w, last = cs[m - 1]
    for l in range(m):
        w = decay(last - cs[l], clamp) * dt[l]
        if seq != NULL and seq[l] != seq[m - 1]:
            w = 0
        for p in range(P):
            Xw[l * P + p] = w * X[l * ldx + p]
    gemm_rm(c'T', c'N', <int> P, <int> N, <int> m, 1, Xw, <int> P, Bc, ldb,
            carry, S, <int> N)


cdef inline real_t chunk_carry(const real_t *cs, const long long *seq,
                               Py_ssize_t m) noexcept nogil:
    """Factor carrying the state entering a chunk to its end."""
    if seq != NULL and seq[0] != seq[m - 1]:
        return 0
    return decay(cs[m - 1], nonincreasing(cs, m))


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


# ---------------------------------------------------------------------------
# Fused chunked scan: one (batch, head) task walks its chunks in order.
# ---------------------------------------------------------------------------

cdef void combined_task(const real_t *x, const real_t *dt, const real_t *dA,
                       const real_t *Bm, const real_t *Cm,
                       const long long *seq, const real_t *CBall,
                       real_t *state, real_t *y,
                       bint has_init, Py_ssize_t b, Py_ssize_t h,
                       Py_ssize_t L, Py_ssize_t Lp, Py_ssize_t H,
                       Py_ssize_t G, Py_ssize_t P, Py_ssize_t N,
                       Py_ssize_t csz, real_t *W) noexcept nogil:
    """Walk the chunks of head h of batch b. W is this thread's scratch of
    cm * (2 cm + N + P) elements, cm = min(csz, L) (the longest chunk)."""
    cdef Py_ssize_t nch = (L + csz - 1) // csz
    cdef Py_ssize_t cm = imin(csz, L)
    cdef Py_ssize_t c, t0, m, g = h // (H // G), k
    cdef real_t *Cw = W + cm * cm
    cdef real_t *Xw = Cw + cm * N
    cdef real_t *CBw = Xw + cm * P
    cdef real_t *S = state + (b * H + h) * P * N
    cdef const real_t *X
    cdef const real_t *Bc
    cdef const real_t *Cc
    cdef const real_t *dtc
    cdef const real_t *csc
    cdef const long long *sq = NULL
    cdef const real_t *CB = NULL
    cdef real_t *Y
    cdef bint has_state = has_init
    cdef int ldx = <int> (H * P), ldb = <int> (G * N)
    for c in range(nch):
        t0 = c * csz
        m = imin(csz, L - t0)
        X = x + ((b * L + t0) * H + h) * P
        Y = y + ((b * L + t0) * H + h) * P
        Bc = Bm + ((b * L + t0) * G + g) * N
        Cc = Cm + ((b * L + t0) * G + g) * N
        dtc = dt + (b * H + h) * Lp + t0
        csc = dA + (b * H + h) * Lp + t0
        if seq != NULL:
            sq = seq + b * L + t0
            if t0 > 0 and sq[0] != sq[-1] and has_state:
                for k in range(P * N):
                    S[k] = 0
                has_state = False
        if CBall != NULL:
            CB = CBall + ((b * G + g) * nch + c) * cm * cm
        chunk_output(X, Bc, Cc, CB, cm, dtc, csc, sq, S, has_state, Y, m,
                     P, N, ldx, ldb, W, Cw, CBw)
        chunk_state(X, Bc, dtc, csc, sq, S,
                    chunk_carry(csc, sq, m) if has_state else 0,
                    m, P, N, ldx, ldb, Xw)
        has_state = True


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


def combined(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
             const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
             const real_t[:, :, :, ::1] C, const long long[:, ::1] seq,
             bint has_seq, real_t[:, :, :, ::1] state, bint has_init,
             real_t[:, :, :, ::1] y, Py_ssize_t chunk_size, int num_threads,
             bint share_cb=True):
    """Chunked SSD scan; `state` holds the initial state and gets the final
    one. Returns the number of threads that ran.

    With share_cb and several heads per group, C B^T of every (batch, group,
    chunk) is formed once, in a first parallel pass, into a
    (batch, ngroups, nchunks, chunk_size, chunk_size) array, instead of once
    per head.
    """
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t Lp = dt.shape[2], task, b, c, g, t0, m
    cdef Py_ssize_t nch = (L + chunk_size - 1) // chunk_size
    cdef const long long *sq = &seq[0, 0] if has_seq else NULL
    cdef Py_ssize_t cm = imin(chunk_size, L)
    cdef Scratch scr = Scratch(num_threads, cm * (2 * cm + N + P),
                               sizeof(real_t))
    cdef real_t *buf = <real_t *> scr.buf
    cdef real_t *cb = NULL
    cdef int tid, ldb = <int> (G * N), mi
    cdef Py_ssize_t cbsz = cm * cm
    cdef Scratch cbs
    if share_cb and H // G > 1:
        cbs = Scratch(1, nb * G * nch * cbsz, sizeof(real_t))
        cb = <real_t *> cbs.buf
        for task in prange(nb * G * nch, num_threads=num_threads,
                           schedule='static', nogil=True):
            b = task // (G * nch)
            g = (task // nch) % G
            c = task % nch
            t0 = c * chunk_size
            mi = <int> imin(chunk_size, L - t0)
            gemm_rm(c'N', c'T', mi, mi, <int> N, 1, &C[b, t0, g, 0], ldb,
                    &B[b, t0, g, 0], ldb, 0, cb + task * cbsz, <int> cm)
    for task in prange(nb * H, num_threads=num_threads, schedule='static',
                       nogil=True):
        tid = threadid()
        scr.mark(tid)
        combined_task(&x[0, 0, 0, 0], &dt[0, 0, 0], &dA[0, 0, 0],
                      &B[0, 0, 0, 0], &C[0, 0, 0, 0], sq, cb,
                      &state[0, 0, 0, 0], &y[0, 0, 0, 0], has_init,
                      task // H, task % H, L, Lp, H, G, P, N, chunk_size,
                      buf + tid * scr.per_thread)
    return scr.count()


# ---------------------------------------------------------------------------
# The four stages. chunk_states / chunk_scan: tasks (batch, chunk, head).
# ---------------------------------------------------------------------------

def chunk_states(const real_t[:, :, :, ::1] x, const real_t[:, :, :, ::1] B,
                 const real_t[:, :, ::1] dt, const real_t[:, :, ::1] dA,
                 const long long[:, ::1] seq, bint has_seq,
                 real_t[:, :, :, :, ::1] states, Py_ssize_t chunk_size,
                 int num_threads):
    """states[b, c, h] = end state of chunk c of head h from a zero start."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t nch = states.shape[1]
    cdef Py_ssize_t task, b, c, h, g, t0, m
    cdef int ldx = <int> (H * P), ldb = <int> (G * N), tid
    cdef const long long *sq
    cdef Scratch scr = Scratch(num_threads, imin(chunk_size, L) * P,
                               sizeof(real_t))
    cdef real_t *buf = <real_t *> scr.buf
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
        chunk_state(&x[b, t0, h, 0], &B[b, t0, g, 0], &dt[b, h, t0],
                    &dA[b, h, t0], sq, &states[b, c, h, 0, 0], 0,
                    m, P, N, ldx, ldb, buf + tid * scr.per_thread)
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


def chunk_scan(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
               const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
               const real_t[:, :, :, ::1] C,
               const real_t[:, :, :, :, ::1] chunk_states,
               const long long[:, ::1] seq, bint has_seq,
               real_t[:, :, :, ::1] y, Py_ssize_t chunk_size, int num_threads):
    """y = intra-chunk term + inter-chunk term from the entering states."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t nch = chunk_states.shape[1]
    cdef Py_ssize_t task, b, c, h, g, t0, m
    cdef int ldx = <int> (H * P), ldb = <int> (G * N), tid
    cdef const long long *sq
    cdef Py_ssize_t cm = imin(chunk_size, L)
    cdef Scratch scr = Scratch(num_threads, cm * (2 * cm + N), sizeof(real_t))
    cdef real_t *buf = <real_t *> scr.buf
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
        chunk_output(&x[b, t0, h, 0], &B[b, t0, g, 0], &C[b, t0, g, 0],
                     NULL, 0, &dt[b, h, t0], &dA[b, h, t0], sq,
                     &chunk_states[b, c, h, 0, 0], True, &y[b, t0, h, 0],
                     m, P, N, ldx, ldb, buf + tid * scr.per_thread,
                     buf + tid * scr.per_thread + cm * cm,
                     buf + tid * scr.per_thread + cm * (cm + N))
    return scr.count()


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
