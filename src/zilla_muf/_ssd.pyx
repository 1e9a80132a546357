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
* seq     (batch, seqlen) int64              -- sequence ids (or None);
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
<= 0 as well, so rounding can never turn a decay into a growth. A decay
below the square root of the smallest normal number is set to zero
(the decay element of _vmath.h), so that no product of it is subnormal.

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
scratch (a _scratch.Scratch block) is O(chunk_size^2 + (chunk_size +
dstate) * headdim); no
per-position state and no (L, L) matrix per head
and chunk is ever stored beyond the one a thread works on.
"""
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport exp, expf, fabs, log1p, sqrt
from libc.stdlib cimport malloc, free

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block
from zilla_muf._types cimport real_t
from zilla_muf._vmath cimport vdecay, vexp, vsilu, zm_softplusf


# ---------------------------------------------------------------------------
# Element helpers
# ---------------------------------------------------------------------------

cdef extern from "_ssdchunk.h" nogil:
    int zm_cpu_isa()
    int zm_ssd_wide
    Py_ssize_t zm_ssd_vw(Py_ssize_t itemsize)
    Py_ssize_t zm_ssd_scratch(Py_ssize_t cm, Py_ssize_t P, Py_ssize_t N,
                              Py_ssize_t vw, Py_ssize_t itemsize)
    ctypedef struct zm_ssd_walk_args_f:
        const float *x
        float *y
        const float *B
        const float *C
        const float *dt
        const float *cs
        const long long *seq
        const float *CB
        Py_ssize_t cbstride
        const float *init
        Py_ssize_t init_stride
        Py_ssize_t n_init
        float *last
        float *ends
        Py_ssize_t ends_stride
        Py_ssize_t n_ends
        const float *Dv
        const float *z
        Py_ssize_t ldx, ldb, L, P, N, csz
        Py_ssize_t c0, c1, k
    ctypedef struct zm_ssd_walk_args_d:
        const double *x
        double *y
        const double *B
        const double *C
        const double *dt
        const double *cs
        const long long *seq
        const double *CB
        Py_ssize_t cbstride
        const double *init
        Py_ssize_t init_stride
        Py_ssize_t n_init
        double *last
        double *ends
        Py_ssize_t ends_stride
        Py_ssize_t n_ends
        const double *Dv
        const double *z
        Py_ssize_t ldx, ldb, L, P, N, csz
        Py_ssize_t c0, c1, k
    void zm_ssd_walk_f(zm_ssd_walk_args_f *a, float *work)
    void zm_ssd_walk_d(zm_ssd_walk_args_d *a, double *work)
    void zm_seq_step_f(float *S, const float *x, const float *Bt,
                       const float *Ct, float a, float d, Py_ssize_t P,
                       Py_ssize_t N, float *y)
    void zm_seq_step_d(double *S, const double *x, const double *Bt,
                       const double *Ct, double a, double d, Py_ssize_t P,
                       Py_ssize_t N, double *y)
    void zm_decode_head_f(float *S, Py_ssize_t P, Py_ssize_t N,
                          Py_ssize_t ntok, const float *x, Py_ssize_t ldx,
                          const float *Bt, const float *Ct, Py_ssize_t ldbc,
                          const float *a, const float *d, float *y,
                          float *inter, Py_ssize_t ldi, const float *Dv,
                          const float *z)
    void zm_decode_head_d(double *S, Py_ssize_t P, Py_ssize_t N,
                          Py_ssize_t ntok, const double *x, Py_ssize_t ldx,
                          const double *Bt, const double *Ct, Py_ssize_t ldbc,
                          const double *a, const double *d, double *y,
                          double *inter, Py_ssize_t ldi, const double *Dv,
                          const double *z)
    void zm_ssd_stage_f(const float *x, float *y, const float *B,
                        const float *C, const float *dt, const float *cs,
                        const long long *seq, const float *state_in,
                        float *state_out, Py_ssize_t ldx,
                        Py_ssize_t ldb, Py_ssize_t m, Py_ssize_t cm,
                        Py_ssize_t P, Py_ssize_t N, float *work)
    void zm_ssd_stage_d(const double *x, double *y, const double *B,
                        const double *C, const double *dt, const double *cs,
                        const long long *seq, const double *state_in,
                        double *state_out, Py_ssize_t ldx,
                        Py_ssize_t ldb, Py_ssize_t m, Py_ssize_t cm,
                        Py_ssize_t P, Py_ssize_t N, double *work)
    void zm_ssd_cb_f(float *CB, Py_ssize_t ldcb, const float *Cc,
                     const float *Bc, Py_ssize_t ldb, Py_ssize_t m,
                     Py_ssize_t N, float *work)
    void zm_ssd_cb_d(double *CB, Py_ssize_t ldcb, const double *Cc,
                     const double *Bc, Py_ssize_t ldb, Py_ssize_t m,
                     Py_ssize_t N, double *work)


cdef inline real_t decay(real_t d, bint clamp) noexcept nogil:
    """exp(d), with d clamped to <= 0 when the math says it is, and 0 below
    the decays' flush threshold (vdecay), as in the chunk kernels."""
    if clamp:
        d = 0 if d > 0 else d
    return vdecay(d)


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


cdef inline Py_ssize_t vector_width(real_t *dummy) noexcept nogil:
    return zm_ssd_vw(sizeof(real_t))


_BUILDS = ("avx2", "avx512")


def kernel_build():
    """The build the chunk kernels run: 'avx512' (64-byte vectors) or 'avx2'
    (the other one: 32-byte vectors, run as its AVX2 or its baseline clone;
    scalars in a scalar-kernels build)."""
    return _BUILDS[1 if zm_ssd_vw(4) == 16 else 0]


def set_kernel_build(name):
    """Run the SSD's chunk kernels, forward (this module) and backward
    (_ssd_backward), in build `name` from now on (for the tests: both builds
    against the same oracle; the kept states' layout follows the build).
    None restores the CPU's choice. A build the CPU cannot run is refused
    with ValueError. Returns the build set."""
    from zilla_muf import _ssd_backward

    global zm_ssd_wide
    if name is not None and name not in _BUILDS:
        raise ValueError(f"name must be one of {_BUILDS} or None, got {name!r}")
    best = 1 if zm_cpu_isa() == 2 else 0
    if name is not None and _BUILDS.index(name) > best:
        raise ValueError(f"this CPU or build cannot run the {name!r} build")
    zm_ssd_wide = -1 if name is None else _BUILDS.index(name)
    _ssd_backward._set_wide(zm_ssd_wide)
    return kernel_build()


# Positions of a block of the fused walk (see combined).
cdef Py_ssize_t _BLOCK_TOKENS = 1024


def _require(bint ok, str what):
    """Raise the boundary check's ValueError unless `ok`."""
    if not ok:
        raise ValueError(f"SSD kernel: {what}")


cdef inline bint shape4(const real_t[:, :, :, ::1] a, Py_ssize_t n0,
                        Py_ssize_t n1, Py_ssize_t n2, Py_ssize_t n3) noexcept:
    return (a.shape[0] == n0 and a.shape[1] == n1 and a.shape[2] == n2
            and a.shape[3] == n3)


def combined(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
             const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
             const real_t[:, :, :, ::1] C, real_t[:, :, :, ::1] y,
             real_t[:, :, :, ::1] last, Py_ssize_t chunk_size,
             int num_threads, *, const long long[:, ::1] seq=None,
             const real_t[:, :, :, ::1] init=None, bint init_per_seq=False,
             real_t[:, :, :, ::1] ends=None, const real_t[:, ::1] D=None,
             const real_t[:, :, :, ::1] z=None, bint share_cb=True):
    """Chunked SSD scan into `y`, the final state of every row into `last`.
    Returns the number of threads that ran.

    `dA` holds the cumulative decays restarted at every chunk and at every
    sequence start of `seq` (process_dt with the same `seq`). Sequence k
    of a row (counted along the row) starts from `init[b]` (k = 0 only) or,
    with init_per_seq (batch 1), from `init[k]`; otherwise from zero. With
    `ends` (batch 1), sequence k's end state goes to `ends[k]`, k <
    len(ends). D (nheads, headdim) adds D x; z (like x) gates by silu(z).

    Each (batch, head) task walks its chunks in order (_ssdchunk.h). With
    share_cb and several heads per group, C B^T of every (batch, group,
    chunk) is formed once, in a first parallel pass, into a
    (batch, ngroups, nchunks, cm, mp) array (mp: cm rounded up to the vector
    width), instead of once per head.
    """
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t task, b, h, g, c, t0, nch, cm, vw, mp, cbsz
    cdef Py_ssize_t PN = P * N
    cdef Py_ssize_t n_init = 0, n_ends = 0, bc, c0
    cdef zm_ssd_walk_args_f *taf = NULL
    cdef zm_ssd_walk_args_d *tad = NULL
    cdef Scratch scr, cbs
    cdef scratch_t *ws
    cdef real_t *work
    cdef real_t *cb = NULL
    cdef const long long *sq0 = NULL
    cdef const real_t *ini0 = NULL
    cdef real_t *end0 = NULL
    cdef const real_t *D0 = NULL
    cdef const real_t *z0 = NULL
    _require(chunk_size >= 1 and num_threads >= 1,
             "chunk_size and num_threads must be >= 1")
    _require(G >= 1 and H % G == 0 and B.shape[0] == nb and B.shape[1] == L,
             "B must be (batch, seqlen, ngroups | nheads, dstate)")
    _require(shape4(C, nb, L, G, N), "C must have the shape of B")
    _require(shape4(y, nb, L, H, P), "y must have the shape of x")
    _require(shape4(last, nb, H, P, N), "last must be (batch, nheads, headdim, dstate)")
    nch = (L + chunk_size - 1) // chunk_size
    _require(dt.shape[0] == nb and dt.shape[1] == H
             and dt.shape[2] == nch * chunk_size,
             "dt must be (batch, nheads, nchunks * chunk_size)")
    _require(dA.shape[0] == nb and dA.shape[1] == H
             and dA.shape[2] == dt.shape[2], "dA must have the shape of dt")
    _require(seq is None or (seq.shape[0] == nb and seq.shape[1] == L),
             "seq must be (batch, seqlen)")
    _require(init is None or (init.shape[1] == H and init.shape[2] == P
                              and init.shape[3] == N and init.shape[0] >= 1
                              and (init_per_seq or init.shape[0] == nb)),
             "init must be (batch or nseq, nheads, headdim, dstate)")
    _require(not init_per_seq or (init is not None and nb == 1),
             "per-sequence initial states need batch 1")
    _require(ends is None or (nb == 1 and ends.shape[1] == H
                              and ends.shape[2] == P and ends.shape[3] == N),
             "ends must be (nseq, nheads, headdim, dstate), batch 1")
    _require(D is None or (D.shape[0] == H and D.shape[1] == P),
             "D must be (nheads, headdim)")
    _require(z is None or shape4(z, nb, L, H, P), "z must have the shape of x")
    if nb == 0 or L == 0 or H == 0 or P == 0 or N == 0:
        return 0
    cm = imin(chunk_size, L)
    vw = vector_width(<real_t *> NULL)
    mp = (cm + vw - 1) // vw * vw
    cbsz = cm * mp
    scr = Scratch(num_threads, zm_ssd_scratch(cm, P, N, vw, sizeof(real_t)),
                  sizeof(real_t), "the SSD scan's per-thread scratch")
    ws = &scr.s
    if share_cb and H // G > 1:
        cbs = Scratch(1, nb * G * nch * cbsz, sizeof(real_t),
                      "the SSD scan's shared C B^T")
        cb = <real_t *> cbs.s.base
        with nogil, parallel(num_threads=ws.nthreads):
            work = <real_t *> scratch_block(ws, threadid())
            for task in prange(nb * G * nch, schedule='static'):
                if work == NULL:
                    continue
                b = task // (G * nch)
                g = (task // nch) % G
                c = task % nch
                t0 = c * chunk_size
                if real_t is float:
                    zm_ssd_cb_f(cb + task * cbsz, mp, &C[b, t0, g, 0],
                                &B[b, t0, g, 0], G * N,
                                imin(chunk_size, L - t0), N, work)
                else:
                    zm_ssd_cb_d(cb + task * cbsz, mp, &C[b, t0, g, 0],
                                &B[b, t0, g, 0], G * N,
                                imin(chunk_size, L - t0), N, work)
    # optional operands as base pointers (NULL when absent), taken with the GIL
    if seq is not None:
        sq0 = &seq[0, 0]
    if init is not None:
        ini0 = &init[0, 0, 0, 0]
        n_init = init.shape[0] if init_per_seq else 1
    if ends is not None and ends.shape[0] > 0:
        end0 = &ends[0, 0, 0, 0]
        n_ends = ends.shape[0]
    if D is not None:
        D0 = &D[0, 0]
    if z is not None:
        z0 = &z[0, 0, 0, 0]
    # one (batch, head) task walks a whole row of one head: its arguments
    # are filled in first, one struct per task, then the tasks run
    # (dynamic scheduling keeps both threads busy when one is descheduled)
    if real_t is float:
        taf = <zm_ssd_walk_args_f *> malloc(nb * H * sizeof(zm_ssd_walk_args_f))
        if taf == NULL:
            raise MemoryError("could not allocate the SSD task list")
    else:
        tad = <zm_ssd_walk_args_d *> malloc(nb * H * sizeof(zm_ssd_walk_args_d))
        if tad == NULL:
            raise MemoryError("could not allocate the SSD task list")
    for task in range(nb * H):
        b = task // H
        h = task % H
        g = h // (H // G)
        if real_t is float:
            taf[task].x = &x[b, 0, h, 0]
            taf[task].y = &y[b, 0, h, 0]
            taf[task].B = &B[b, 0, g, 0]
            taf[task].C = &C[b, 0, g, 0]
            taf[task].dt = &dt[b, h, 0]
            taf[task].cs = &dA[b, h, 0]
            taf[task].seq = (sq0 + b * L) if sq0 != NULL else NULL
            taf[task].CB = (cb + (b * G + g) * nch * cbsz) if cb != NULL else NULL
            taf[task].cbstride = cbsz
            taf[task].init = ((ini0 + (h if init_per_seq else b * H + h) * PN)
                              if ini0 != NULL else NULL)
            taf[task].init_stride = H * PN
            taf[task].n_init = n_init
            taf[task].last = &last[b, h, 0, 0]
            taf[task].ends = (end0 + h * PN) if end0 != NULL else NULL
            taf[task].ends_stride = H * PN
            taf[task].n_ends = n_ends
            taf[task].Dv = (D0 + h * P) if D0 != NULL else NULL
            taf[task].z = (z0 + (b * L * H + h) * P) if z0 != NULL else NULL
            taf[task].ldx = H * P
            taf[task].ldb = G * N
            taf[task].L = L
            taf[task].P = P
            taf[task].N = N
            taf[task].csz = chunk_size
            taf[task].k = 0
        else:
            tad[task].x = &x[b, 0, h, 0]
            tad[task].y = &y[b, 0, h, 0]
            tad[task].B = &B[b, 0, g, 0]
            tad[task].C = &C[b, 0, g, 0]
            tad[task].dt = &dt[b, h, 0]
            tad[task].cs = &dA[b, h, 0]
            tad[task].seq = (sq0 + b * L) if sq0 != NULL else NULL
            tad[task].CB = (cb + (b * G + g) * nch * cbsz) if cb != NULL else NULL
            tad[task].cbstride = cbsz
            tad[task].init = ((ini0 + (h if init_per_seq else b * H + h) * PN)
                              if ini0 != NULL else NULL)
            tad[task].init_stride = H * PN
            tad[task].n_init = n_init
            tad[task].last = &last[b, h, 0, 0]
            tad[task].ends = (end0 + h * PN) if end0 != NULL else NULL
            tad[task].ends_stride = H * PN
            tad[task].n_ends = n_ends
            tad[task].Dv = (D0 + h * P) if D0 != NULL else NULL
            tad[task].z = (z0 + (b * L * H + h) * P) if z0 != NULL else NULL
            tad[task].ldx = H * P
            tad[task].ldb = G * N
            tad[task].L = L
            tad[task].P = P
            tad[task].N = N
            tad[task].csz = chunk_size
            tad[task].k = 0
    # on one thread the rows are walked in blocks of about _BLOCK_TOKENS
    # positions, every (batch, head) task through one block before the next:
    # the heads of a group then read the block's B, C and C B^T from cache,
    # not memory. On several threads each task walks its whole row in one
    # go: a barrier per block would make every thread wait for one that
    # another process has descheduled (measured 1.5-3x slower than one
    # thread on a loaded machine, against 1.3-1.5x without the barriers).
    bc = max(1, _BLOCK_TOKENS // chunk_size) if num_threads == 1 else nch
    for c0 in range(0, nch, bc):
        for task in range(nb * H):
            if real_t is float:
                taf[task].c0 = c0
                taf[task].c1 = c0 + bc
            else:
                tad[task].c0 = c0
                tad[task].c1 = c0 + bc
        with nogil, parallel(num_threads=ws.nthreads):
            # every thread of the team takes its block (and so reports),
            # tasks or not
            work = <real_t *> scratch_block(ws, threadid())
            for task in prange(nb * H, schedule='dynamic'):
                if work == NULL:
                    continue
                if real_t is float:
                    zm_ssd_walk_f(&taf[task], work)
                else:
                    zm_ssd_walk_d(&tad[task], work)
    if real_t is float:
        free(taf)
    else:
        free(tad)
    return scr.finish()


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


def process_dt(const real_t[:, :, ::1] dt, double lo, double hi,
               Py_ssize_t chunk_size, real_t[:, :, ::1] dt_out,
               int num_threads, *, const real_t[::1] bias=None,
               bint dt_softplus=False, const real_t[::1] A=None,
               real_t[:, :, ::1] dA=None, const long long[:, ::1] seq=None):
    """dt_out[b, h, t] = clamp(softplus(dt[b, t, h] + bias[h]), lo, hi)
    (softplus and bias optional) for t < seqlen, 0 in the padding; with A,
    dA[b, h, t] = the inclusive sum of dt_out * A[h] from the start of t's
    chunk, or from the start of t's sequence when `seq` (batch, seqlen)
    changes id later in the chunk (constant over the padding)."""
    cdef Py_ssize_t nb = dt.shape[0], L = dt.shape[1], H = dt.shape[2]
    cdef Py_ssize_t Lp = dt_out.shape[2], task, b, h, t
    cdef real_t v, acc, a, bh, rlo = <real_t> lo, rhi = <real_t> hi
    cdef real_t *out
    cdef real_t *cs
    cdef const real_t *bias0 = NULL
    cdef const real_t *A0 = NULL
    cdef real_t *dA0 = NULL
    cdef const long long *sq0 = NULL
    cdef const long long *sq
    _require(chunk_size >= 1 and num_threads >= 1,
             "chunk_size and num_threads must be >= 1")
    _require(dt_out.shape[0] == nb and dt_out.shape[1] == H and Lp >= L
             and Lp % chunk_size == 0,
             "dt_out must be (batch, nheads, a multiple of chunk_size >= seqlen)")
    _require(bias is None or bias.shape[0] == H, "bias must be (nheads,)")
    _require((A is None) == (dA is None), "A and dA go together")
    _require(A is None or (A.shape[0] == H and dA.shape[0] == nb
                           and dA.shape[1] == H and dA.shape[2] == Lp),
             "A must be (nheads,), dA like dt_out")
    _require(seq is None or (seq.shape[0] == nb and seq.shape[1] == L),
             "seq must be (batch, seqlen)")
    if nb == 0 or H == 0:
        return
    if bias is not None:
        bias0 = &bias[0]
    if A is not None:
        A0 = &A[0]
        dA0 = &dA[0, 0, 0] if Lp > 0 else NULL
    if seq is not None and L > 0:
        sq0 = &seq[0, 0]
    for task in prange(nb * H, num_threads=num_threads, schedule='static',
                       nogil=True):
        b = task // H
        h = task % H
        bh = bias0[h] if bias0 != NULL else 0
        out = &dt_out[b, h, 0] if Lp > 0 else NULL
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
        if A0 != NULL:
            a = A0[h]
            cs = dA0 + (b * H + h) * Lp
            sq = (sq0 + b * L) if sq0 != NULL else NULL
            acc = 0
            for t in range(Lp):
                if t % chunk_size == 0:
                    acc = 0
                elif sq != NULL and t < L and sq[t] != sq[t - 1]:
                    acc = 0
                acc = acc + out[t] * a
                cs[t] = acc


# ---------------------------------------------------------------------------
# The stages: chunk state and chunk scan (tasks (batch, chunk, head)), and
# the state passing (tasks (batch, head)).
# ---------------------------------------------------------------------------

cdef int run_stage(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
                   const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
                   const real_t[:, :, :, ::1] C,
                   const real_t[:, :, :, :, ::1] sin,
                   real_t[:, :, :, :, ::1] sout, const long long[:, ::1] seq,
                   real_t[:, :, :, ::1] y, Py_ssize_t nch,
                   Py_ssize_t chunk_size, int num_threads) except -1:
    """The (batch, chunk, head) tasks of the two chunk stages: chunk scan
    when y is given (states_in, the entering states, only read), chunk
    state otherwise (into states_out). Shapes checked by the callers."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t task, b, c, h, g, t0, m, cm = imin(chunk_size, L)
    cdef Py_ssize_t PN = P * N
    cdef const long long *sq0 = NULL
    cdef const long long *sq
    cdef real_t *y0 = NULL
    cdef real_t *yp
    cdef const real_t *cp
    cdef const real_t *sti
    cdef real_t *sto
    cdef Scratch scr = Scratch(num_threads,
                               zm_ssd_scratch(cm, P, N,
                                              vector_width(<real_t *> NULL),
                                              sizeof(real_t)),
                               sizeof(real_t),
                               "the SSD chunk stage's per-thread scratch")
    cdef scratch_t *ws = &scr.s
    cdef real_t *work
    cdef const real_t *states_in = NULL
    cdef real_t *states_out = NULL
    if seq is not None:
        sq0 = &seq[0, 0]
    if y is not None:
        y0 = &y[0, 0, 0, 0]
        states_in = &sin[0, 0, 0, 0, 0]
    else:
        states_out = &sout[0, 0, 0, 0, 0]
    with nogil, parallel(num_threads=ws.nthreads):
        work = <real_t *> scratch_block(ws, threadid())
        for task in prange(nb * nch * H, schedule='dynamic'):
            if work == NULL:
                continue
            b = task // (nch * H)
            c = (task // H) % nch
            h = task % H
            g = h // (H // G)
            t0 = c * chunk_size
            m = imin(chunk_size, L - t0)
            sq = (sq0 + b * L + t0) if sq0 != NULL else NULL
            if y0 != NULL:
                yp = y0 + ((b * L + t0) * H + h) * P
                cp = &C[b, t0, g, 0]
                sti = states_in + ((b * nch + c) * H + h) * PN
                sto = NULL
            else:
                yp = NULL
                cp = NULL
                sti = NULL
                sto = states_out + ((b * nch + c) * H + h) * PN
            if real_t is float:
                zm_ssd_stage_f(&x[b, t0, h, 0], yp, &B[b, t0, g, 0], cp,
                               &dt[b, h, t0], &dA[b, h, t0], sq, sti, sto, H * P,
                               G * N, m, cm, P, N, work)
            else:
                zm_ssd_stage_d(&x[b, t0, h, 0], yp, &B[b, t0, g, 0], cp,
                               &dt[b, h, t0], &dA[b, h, t0], sq, sti, sto, H * P,
                               G * N, m, cm, P, N, work)
    return scr.finish()


cdef object check_stage(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
                        const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
                        const long long[:, ::1] seq, Py_ssize_t nch,
                        Py_ssize_t chunk_size, int num_threads):
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    _require(chunk_size >= 1 and num_threads >= 1,
             "chunk_size and num_threads must be >= 1")
    _require(nch == (L + chunk_size - 1) // chunk_size,
             "states must have nchunks = ceil(seqlen / chunk_size)")
    _require(B.shape[0] == nb and B.shape[1] == L and B.shape[2] >= 1
             and H % B.shape[2] == 0,
             "B must be (batch, seqlen, ngroups | nheads, dstate)")
    _require(dt.shape[0] == nb and dt.shape[1] == H
             and dt.shape[2] == nch * chunk_size
             and dA.shape[0] == nb and dA.shape[1] == H
             and dA.shape[2] == nch * chunk_size,
             "dt and dA must be (batch, nheads, nchunks * chunk_size)")
    _require(seq is None or (seq.shape[0] == nb and seq.shape[1] == L),
             "seq must be (batch, seqlen)")


def chunk_state(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
                const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
                real_t[:, :, :, :, ::1] states, Py_ssize_t chunk_size,
                int num_threads, *, const long long[:, ::1] seq=None):
    """states[b, c, h] <- the end state of the last sequence of chunk c,
    from a zero start. One task per (batch, chunk, head). Returns the number
    of threads that ran."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], N = B.shape[3], nch = states.shape[1]
    check_stage(x, dt, dA, B, seq, nch, chunk_size, num_threads)
    _require(states.shape[0] == nb and states.shape[2] == H
             and states.shape[3] == P and states.shape[4] == N,
             "states must be (batch, nchunks, nheads, headdim, dstate)")
    if nb == 0 or L == 0 or H == 0 or P == 0 or N == 0:
        return 0
    cdef const real_t[:, :, :, :, ::1] no_in = None
    cdef real_t[:, :, :, ::1] no_y = None
    return run_stage(x, dt, dA, B, B, no_in, states, seq, no_y, nch,
                     chunk_size, num_threads)


def chunk_scan(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
               const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
               const real_t[:, :, :, ::1] C,
               const real_t[:, :, :, :, ::1] states, real_t[:, :, :, ::1] y,
               Py_ssize_t chunk_size, int num_threads, *,
               const long long[:, ::1] seq=None):
    """y <- intra-chunk term + inter-chunk term from the entering states
    `states` (only read). One task per (batch, chunk, head). Returns the
    number of threads that ran."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], N = B.shape[3], nch = states.shape[1]
    check_stage(x, dt, dA, B, seq, nch, chunk_size, num_threads)
    _require(shape4(C, nb, L, B.shape[2], N), "C must have the shape of B")
    _require(states.shape[0] == nb and states.shape[2] == H
             and states.shape[3] == P and states.shape[4] == N,
             "states must be (batch, nchunks, nheads, headdim, dstate)")
    _require(shape4(y, nb, L, H, P), "y must have the shape of x")
    if nb == 0 or L == 0 or H == 0 or P == 0 or N == 0:
        return 0
    cdef real_t[:, :, :, :, ::1] no_out = None
    return run_stage(x, dt, dA, B, C, states, no_out, seq, y, nch,
                     chunk_size, num_threads)


def state_passing(const real_t[:, :, :, :, ::1] states,
                  const real_t[:, :, ::1] dA, Py_ssize_t L,
                  const real_t[:, :, :, ::1] init,
                  real_t[:, :, :, :, ::1] out, real_t[:, :, :, ::1] final,
                  Py_ssize_t chunk_size, int num_threads, *,
                  const long long[:, ::1] seq=None):
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
    cdef const long long *sq0 = NULL
    _require(chunk_size >= 1 and num_threads >= 1,
             "chunk_size and num_threads must be >= 1")
    _require(nch == (L + chunk_size - 1) // chunk_size,
             "states must have nchunks = ceil(seqlen / chunk_size)")
    _require(dA.shape[0] == nb and dA.shape[1] == H
             and Lp == nch * chunk_size,
             "dA must be (batch, nheads, nchunks * chunk_size)")
    _require(init.shape[0] == nb and init.shape[1] == H
             and init.shape[2] * init.shape[3] == PN
             and out.shape[0] == nb and out.shape[1] == nch
             and out.shape[2] == H and out.shape[3] * out.shape[4] == PN
             and final.shape[0] == nb and final.shape[1] == H
             and final.shape[2] * final.shape[3] == PN,
             "init, out and final must match states")
    _require(seq is None or (seq.shape[0] == nb and seq.shape[1] == L),
             "seq must be (batch, seqlen)")
    if nb == 0 or H == 0 or PN == 0:
        return
    if seq is not None and L > 0:
        sq0 = &seq[0, 0]
    for task in prange(nb * H, num_threads=num_threads, schedule='dynamic',
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
            sq = (sq0 + b * L + t0) if sq0 != NULL else NULL
            if sq != NULL and t0 > 0 and sq[0] != sq[-1]:
                for k in range(PN):
                    fin[k] = 0
            dst = &out[b, c, h, 0, 0]
            for k in range(PN):
                dst[k] = fin[k]
            src = &states[b, c, h, 0, 0]
            if m > 0 and sq != NULL and sq[0] != sq[m - 1]:
                # a sequence starts inside the chunk: its end state is the
                # chunk's own (replaced, not multiplied by a zero carry)
                for k in range(PN):
                    fin[k] = src[k]
            else:
                carry = chunk_carry(cs, sq, m) if m > 0 else 1
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
               const real_t[:, :, :, ::1] C, real_t[:, :, :, ::1] state,
               real_t[:, :, :, ::1] y, int num_threads, *,
               const long long[:, ::1] seq=None):
    """The recurrence step by step; `state` is advanced in place."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t Lp = dt.shape[2], task
    cdef const long long *sq = NULL
    _require(num_threads >= 1, "num_threads must be >= 1")
    _require(G >= 1 and H % G == 0 and B.shape[0] == nb and B.shape[1] == L,
             "B must be (batch, seqlen, ngroups | nheads, dstate)")
    _require(shape4(C, nb, L, G, N), "C must have the shape of B")
    _require(shape4(y, nb, L, H, P), "y must have the shape of x")
    _require(shape4(state, nb, H, P, N),
             "state must be (batch, nheads, headdim, dstate)")
    _require(A.shape[0] == H and dt.shape[0] == nb and dt.shape[1] == H
             and Lp >= L, "A must be (nheads,), dt (batch, nheads, >= seqlen)")
    _require(seq is None or (seq.shape[0] == nb and seq.shape[1] == L),
             "seq must be (batch, seqlen)")
    if nb == 0 or H == 0 or L == 0 or P == 0 or N == 0:
        return
    if seq is not None:
        sq = &seq[0, 0]
    for task in prange(nb * H, num_threads=num_threads, schedule='dynamic',
                       nogil=True):
        sequential_task(&x[0, 0, 0, 0], &dt[0, 0, 0], &A[0], &B[0, 0, 0, 0],
                        &C[0, 0, 0, 0], sq, &state[0, 0, 0, 0],
                        &y[0, 0, 0, 0], task // H, task % H, L, Lp, H, G, P, N)


# ---------------------------------------------------------------------------
# Decoding: T tokens of every (batch, head) in one call, on a state pool.
# ---------------------------------------------------------------------------

def decode(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
           const real_t[::1] A, const real_t[:, :, :, ::1] B,
           const real_t[:, :, :, ::1] C, real_t[:, :, :, ::1] state,
           real_t[:, :, :, ::1] y, int num_threads, *,
           const Py_ssize_t[::1] rows=None,
           real_t[:, :, :, :, ::1] inter=None,
           const real_t[:, ::1] D=None,
           const real_t[:, :, :, ::1] z=None):
    """Advance states by T tokens in place: x, y (batch, T, nheads, headdim),
    dt (batch, nheads, T) processed steps, B, C (batch, T, ngroups, dstate),
    state (pool, nheads, headdim, dstate): batch row b advances
    state[rows[b]] (state[b] without `rows`; the rows must be distinct and
    in range, checked by the caller). With `inter` (batch, T, nheads,
    headdim, dstate), the state after every token is copied there. D
    (nheads, headdim) adds D x to y, z (like x) gates it by silu(z), in the
    kernel (no temporaries)."""
    cdef Py_ssize_t nb = x.shape[0], T = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t pool = state.shape[0]
    cdef Py_ssize_t task, b, h, g, t, r
    cdef real_t *S
    cdef real_t *I
    cdef const real_t *Dp
    cdef const real_t *zp
    cdef real_t *decays
    cdef const Py_ssize_t *rw = NULL
    cdef real_t *inter0 = NULL
    cdef const real_t *D0 = NULL
    cdef const real_t *z0 = NULL
    _require(num_threads >= 1, "num_threads must be >= 1")
    _require(G >= 1 and H % G == 0 and B.shape[0] == nb and B.shape[1] == T,
             "B must be (batch, T, ngroups | nheads, dstate)")
    _require(shape4(C, nb, T, G, N), "C must have the shape of B")
    _require(shape4(y, nb, T, H, P), "y must have the shape of x")
    _require(A.shape[0] == H and dt.shape[0] == nb and dt.shape[1] == H
             and dt.shape[2] == T, "A must be (nheads,), dt (batch, nheads, T)")
    _require(state.shape[1] == H and state.shape[2] == P and state.shape[3] == N,
             "state must be (pool, nheads, headdim, dstate)")
    _require((rows is None and pool == nb) or
             (rows is not None and rows.shape[0] == nb),
             "rows must be (batch,), or state (batch, ...) without rows")
    _require(inter is None or (inter.shape[0] == nb and inter.shape[1] == T
                               and inter.shape[2] == H and inter.shape[3] == P
                               and inter.shape[4] == N),
             "inter must be (batch, T, nheads, headdim, dstate)")
    _require(D is None or (D.shape[0] == H and D.shape[1] == P),
             "D must be (nheads, headdim)")
    _require(z is None or shape4(z, nb, T, H, P), "z must have the shape of x")
    if rows is not None:
        for b in range(nb):
            _require(0 <= rows[b] < pool, "rows out of range")
        if nb > 0:
            rw = &rows[0]
    if nb == 0 or T == 0 or H == 0 or P == 0 or N == 0:
        return
    if inter is not None:
        inter0 = &inter[0, 0, 0, 0, 0]
    if D is not None:
        D0 = &D[0, 0]
    if z is not None:
        z0 = &z[0, 0, 0, 0]
    # the decays exp(dt A) of every (batch, head, token), formed once (not
    # once per block of rows)
    decays = <real_t *> malloc(nb * H * T * sizeof(real_t))
    if decays == NULL:
        raise MemoryError("could not allocate the decode scratch")
    for task in range(nb * H):
        h = task % H
        for t in range(T):
            if real_t is float:
                decays[task * T + t] = expf(dt[task // H, h, t] * A[h])
            else:
                decays[task * T + t] = exp(dt[task // H, h, t] * A[h])
    for task in prange(nb * H, num_threads=num_threads, schedule='dynamic',
                       nogil=True):
        b = task // H
        h = task % H
        g = h // (H // G)
        r = rw[b] if rw != NULL else b
        S = &state[r, h, 0, 0]
        I = NULL if inter0 == NULL else inter0 + ((b * T * H + h) * P) * N
        Dp = NULL if D0 == NULL else D0 + h * P
        zp = NULL if z0 == NULL else z0 + (b * T * H + h) * P
        if real_t is float:
            zm_decode_head_f(S, P, N, T, &x[b, 0, h, 0], H * P,
                             &B[b, 0, g, 0], &C[b, 0, g, 0], G * N,
                             &decays[task * T], &dt[b, h, 0], &y[b, 0, h, 0],
                             I, H * P * N, Dp, zp)
        else:
            zm_decode_head_d(S, P, N, T, &x[b, 0, h, 0], H * P,
                             &B[b, 0, g, 0], &C[b, 0, g, 0], G * N,
                             &decays[task * T], &dt[b, h, 0], &y[b, 0, h, 0],
                             I, H * P * N, Dp, zp)
    free(decays)


# ---------------------------------------------------------------------------
# A Mamba-2 mixer's decoding token between its projections, in one call.
# ---------------------------------------------------------------------------

def mixer_step(const real_t[:, ::1] zxbcdt, real_t[:, :, ::1] conv_state,
               const real_t[:, ::1] conv_w, const real_t[::1] conv_b,
               const real_t[::1] dt_bias, const real_t[::1] A,
               const real_t[:, ::1] D, const real_t[::1] norm_w,
               real_t[:, :, :, ::1] state, real_t[:, ::1] out,
               Py_ssize_t ngroups, double eps, double lo, double hi):
    """One token: zxbcdt (batch, d_inner + conv_dim + nheads) read as z, the
    convolution's input and dt; conv_state (batch, conv_dim, Wc >= width -
    1) shifted left by one with the input entering at the right; the
    convolution (weights conv_w (conv_dim, width), bias conv_b) with SiLU
    gives x, B, C; dt' = clamp(softplus(dt + dt_bias), lo, hi); state
    (batch, nheads, headdim, dstate) advanced; y = h C + D x (D (nheads,
    headdim), or None); out (batch, d_inner) = rmsnorm(y * silu(z)) * norm_w
    in `ngroups` groups."""
    cdef Py_ssize_t nb = zxbcdt.shape[0], H = state.shape[1]
    cdef Py_ssize_t P = state.shape[2], N = state.shape[3]
    cdef Py_ssize_t cd = conv_state.shape[1], Wc = conv_state.shape[2]
    cdef Py_ssize_t K = conv_w.shape[1], G = ngroups
    cdef Py_ssize_t di = H * P, gs, b, c, k, h, g, i
    cdef real_t acc, v, d, a, rlo = <real_t> lo, rhi = <real_t> hi
    cdef double ss
    cdef real_t *row
    cdef real_t *xbc
    cdef real_t *y
    cdef const real_t *zrow
    cdef const real_t *D0 = NULL
    _require(G >= 1 and H % G == 0 and cd == di + 2 * G * N,
             "conv_state must be (batch, nheads * headdim + 2 ngroups dstate, Wc)")
    _require(zxbcdt.shape[1] == di + cd + H and conv_state.shape[0] == nb
             and state.shape[0] == nb and out.shape[0] == nb
             and out.shape[1] == di,
             "zxbcdt (batch, d_inner + conv_dim + nheads), states and out "
             "(batch, d_inner) must agree")
    _require(K >= 1 and Wc >= K - 1 and conv_w.shape[0] == cd
             and conv_b.shape[0] == cd,
             "conv_w must be (conv_dim, width <= Wc + 1), conv_b (conv_dim,)")
    _require(dt_bias.shape[0] == H and A.shape[0] == H and norm_w.shape[0] == di,
             "dt_bias and A must be (nheads,), norm_w (d_inner,)")
    _require(D is None or (D.shape[0] == H and D.shape[1] == P),
             "D must be (nheads, headdim)")
    _require(eps >= 0, "eps must be >= 0")
    if nb == 0 or di == 0:
        return
    gs = di // G
    if D is not None:
        D0 = &D[0, 0]
    xbc = <real_t *> malloc((cd + di + 2) * sizeof(real_t))
    if xbc == NULL:
        raise MemoryError("could not allocate the step's scratch")
    y = xbc + cd
    with nogil:
        for b in range(nb):
            # the convolution: taps over the window's last K - 1 inputs and
            # the new one, then the window shifts
            for c in range(cd):
                v = zxbcdt[b, di + c]
                acc = conv_b[c] + conv_w[c, K - 1] * v
                if Wc > 0:
                    row = &conv_state[b, c, 0]
                    for k in range(K - 1):
                        acc = acc + conv_w[c, k] * row[Wc - (K - 1) + k]
                    for k in range(Wc - 1):
                        row[k] = row[k + 1]
                    row[Wc - 1] = v
                xbc[c] = vsilu(acc)
            for h in range(H):
                g = h // (H // G)
                d = softplus(zxbcdt[b, di + cd + h] + dt_bias[h])
                if d < rlo:
                    d = rlo
                if d > rhi:
                    d = rhi
                a = vexp(d * A[h])
                if real_t is float:
                    zm_decode_head_f(&state[b, h, 0, 0], P, N, 1, xbc + h * P,
                                     di, xbc + di + g * N, xbc + di + (G + g) * N,
                                     G * N, &a, &d, y + h * P, NULL, 0,
                                     NULL if D0 == NULL else D0 + h * P, NULL)
                else:
                    zm_decode_head_d(&state[b, h, 0, 0], P, N, 1, xbc + h * P,
                                     di, xbc + di + g * N, xbc + di + (G + g) * N,
                                     G * N, &a, &d, y + h * P, NULL, 0,
                                     NULL if D0 == NULL else D0 + h * P, NULL)
            # the gated norm: y * silu(z), normalised group by group
            zrow = &zxbcdt[b, 0]
            for g in range(G):
                ss = 0
                for i in range(g * gs, (g + 1) * gs):
                    y[i] = y[i] * vsilu(zrow[i])
                    ss = ss + <double> y[i] * y[i]
                v = <real_t> (1.0 / sqrt(ss / gs + eps))
                for i in range(g * gs, (g + 1) * gs):
                    out[b, i] = y[i] * v * norm_w[i]
    free(xbc)
