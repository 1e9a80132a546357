# cython: language_level=3
"""Backward kernels of Mamba-2's chunked SSD.

Design
------
Layouts as in _ssd.pyx: x, y, z and their cotangents (batch, seqlen,
nheads, headdim); B, C (batch, seqlen, ngroups, dstate); the processed
steps dt and the decay sums cs (batch, nheads, nchunks * chunk_size),
restarted at every chunk and at every sequence start (process_dt with the
same seq). Per chunk of one head, with E[i, j] = exp(cs_i - cs_j)
(j <= i), din_i = exp(cs_i), dout_j = exp(cs_last - cs_j), Xd = diag(dt) x,
the entering state S and the output's cotangent dY (after the gate):

    Y      = (E o C B^T) Xd + diag(din) C S^T
    S_next = carry S + Xd^T diag(dout) B,      carry = exp(cs_last)

Three passes, each a parallel loop over independent tasks:

1. forward (tasks (batch, head)): the fused scan of _ssd.pyx, chunk after
   chunk (the same calls of _ssdchunk.h: the same output bits; on one
   thread the rows in blocks of about 1024 positions, every task through a
   block before the next, as there), that also keeps the state entering
   every chunk, transposed as the walk holds it, (batch, nheads, nchunks,
   dstate, headdim) -- the only memory of this size the pullback keeps.
   The vjp of ssd_chunk_scan_combined runs it as its forward; for the
   other layers it runs without output, for the states alone.
2. adjoint (tasks (batch, head)): the chunks in reverse with the adjoint of
   the state leaving the chunk, dS <- carry dS + C^T diag(din) dY. The gate
   is applied here, dY = gy silu(z) into gx's memory (read back, then
   overwritten, by pass 3), and z's gradient formed (over y0 when the
   caller passes y0 itself as gz).
3. gradients (tasks (batch, group, chunk)): for every head of the group,
   dXd = diag(dout) B dS^T + (E o C B^T)^T dY, dCB += (dY Xd^T) o E,
   gC += diag(din) dY S, gB += diag(dout) Xd dS, the gradient of the decay
   sums (reverse-summed into that of dt'A) and, given the steps as the
   layer got them, the chain rule through their bias, softplus and clamp
   where the step's gradient is formed (with dt_bias's per-task sums);
   then gC += dCB B and
   gB += dCB^T C once for the group. A task owns the rows of B's and C's
   gradients of its chunk and group, and x's of its heads: no two tasks
   write the same memory, and A's and D's gradients are per-task sums that
   the caller adds up (the same result for every thread count).

Passes 2 and 3 alternate over blocks of chunks, the last block first: pass
2 over the block (each task resuming its adjoint), then pass 3 over the
block's chunks. Only one block of adjoints is held (the caller's
block_bytes: about 16 MB on several threads, 1 MB on one, where the
gradient pass then reads the block's adjoints and gated cotangent back
from cache), in one buffer reused by every block. The products are the register tiles of
_ssdchunk.h, on operands copied into padded (and, where a product needs
it, transposed) scratch rows; the rows of x, dY, z and y0 that the next
unit of work reads (strided by nheads * headdim, out of the hardware
prefetchers' reach) are prefetched between the tiles of the current one.

A chunk that holds a sequence boundary is cut there into segments, each a
chunk of its own (the forward's rule): the first reads the entering
state, the last makes the leaving one, and no arithmetic is shared across
the boundary. Exponents are differences of decay sums inside one segment,
clamped to <= 0 when the sums never grow; decays below the square root of
the smallest normal number are set to 0.

Per-thread scratch (a _scratch.Scratch block: large ones on huge pages):
O(chunk_size^2 + chunk_size (headdim + dstate) + headdim dstate). Indices
are Py_ssize_t (ptrdiff_t in C) throughout.
"""
from cython.parallel cimport parallel, prange, threadid
from libc.string cimport memset

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block
from zilla_muf._types cimport real_t


cdef extern from "_ssdbwd.h" nogil:
    int zm_ssd_wide
    Py_ssize_t zm_ssd_vw(Py_ssize_t itemsize)
    Py_ssize_t zm_ssd_scratch(Py_ssize_t cm, Py_ssize_t P, Py_ssize_t N,
                              Py_ssize_t vw, Py_ssize_t itemsize)
    Py_ssize_t zm_ssdb_scratch(Py_ssize_t cm, Py_ssize_t P, Py_ssize_t N,
                               Py_ssize_t vw, Py_ssize_t itemsize)
    ctypedef struct zm_ssdb_problem:
        const void *x
        const void *dt
        const void *cs
        const void *A
        const void *B
        const void *C
        const void *D
        const void *z
        const void *gy
        const void *y0c
        const void *init
        const void *gfinal
        const void *dtr
        const void *dtb
        void *y0
        void *y
        void *last
        void *states
        void *dstates
        void *cb
        void *gx
        void *gz
        void *gB
        void *gC
        void *ddt
        void *gA
        void *gD
        void *ginit
        void *run
        void *gdtb
        const long long *seq
        Py_ssize_t L, H, P, G, N, Lp, csz, nch, cm, mp, Pp, Np, blk, c0, c1
        double lo, hi
        int has_init, softplus
    void zm_ssdb_cb_task_f(const zm_ssdb_problem *pr, Py_ssize_t task, float *work)
    void zm_ssdb_cb_task_d(const zm_ssdb_problem *pr, Py_ssize_t task, double *work)
    void zm_ssdb_fwd_task_f(const zm_ssdb_problem *pr, Py_ssize_t task, float *work)
    void zm_ssdb_fwd_task_d(const zm_ssdb_problem *pr, Py_ssize_t task, double *work)
    void zm_ssdb_adj_task_f(const zm_ssdb_problem *pr, Py_ssize_t task, float *work)
    void zm_ssdb_adj_task_d(const zm_ssdb_problem *pr, Py_ssize_t task, double *work)
    void zm_ssdb_grad_task_f(const zm_ssdb_problem *pr, Py_ssize_t task, float *work)
    void zm_ssdb_grad_task_d(const zm_ssdb_problem *pr, Py_ssize_t task, double *work)


# Positions of a block of the forward walk on one thread (see forward).
cdef Py_ssize_t _BLOCK_TOKENS = 1024


def _require(bint ok, str what):
    """Raise the boundary check's ValueError unless `ok`."""
    if not ok:
        raise ValueError(f"SSD backward kernel: {what}")


cdef inline Py_ssize_t rnd(Py_ssize_t n, Py_ssize_t w) noexcept nogil:
    return (n + w - 1) // w * w


cdef inline bint shape4(const real_t[:, :, :, ::1] a, Py_ssize_t n0,
                        Py_ssize_t n1, Py_ssize_t n2, Py_ssize_t n3) noexcept:
    return (a.shape[0] == n0 and a.shape[1] == n1 and a.shape[2] == n2
            and a.shape[3] == n3)


cdef inline bint shape5(const real_t[:, :, :, :, ::1] a, Py_ssize_t n0,
                        Py_ssize_t n1, Py_ssize_t n2, Py_ssize_t n3,
                        Py_ssize_t n4) noexcept:
    return (a.shape[0] == n0 and a.shape[1] == n1 and a.shape[2] == n2
            and a.shape[3] == n3 and a.shape[4] == n4)


cdef inline Py_ssize_t vector_width(real_t *dummy) noexcept nogil:
    return zm_ssd_vw(sizeof(real_t))


def _set_wide(int flag):
    """The build switch of this module's kernels (_ssd.set_kernel_build
    sets it with the forward's)."""
    global zm_ssd_wide
    zm_ssd_wide = flag


def padded(Py_ssize_t n, bint single):
    """n rounded up to the kernels' vector width (float32 when `single`):
    the last axis (headdim) of the kept states and adjoints."""
    return rnd(n, zm_ssd_vw(4 if single else 8))


cdef void common(zm_ssdb_problem *pr, const real_t[:, :, :, ::1] x,
                 const real_t[:, :, ::1] dt, const real_t[:, :, ::1] dA,
                 const real_t[:, :, :, ::1] B, const real_t[:, :, :, ::1] C,
                 Py_ssize_t chunk_size):
    """The fields every pass fills, from checked arrays."""
    cdef Py_ssize_t vw = vector_width(<real_t *> NULL)
    memset(pr, 0, sizeof(zm_ssdb_problem))
    pr.x = &x[0, 0, 0, 0]
    pr.dt = &dt[0, 0, 0]
    pr.cs = &dA[0, 0, 0]
    pr.B = &B[0, 0, 0, 0]
    pr.C = &C[0, 0, 0, 0]
    pr.L = x.shape[1]
    pr.H = x.shape[2]
    pr.P = x.shape[3]
    pr.G = B.shape[2]
    pr.N = B.shape[3]
    pr.Lp = dt.shape[2]
    pr.csz = chunk_size
    pr.nch = (pr.L + chunk_size - 1) // chunk_size
    pr.cm = chunk_size if chunk_size < pr.L else pr.L
    pr.mp = rnd(pr.cm, vw)
    pr.Pp = rnd(pr.P, vw)
    pr.Np = rnd(pr.N, vw)


cdef object check_common(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
                         const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
                         const real_t[:, :, :, ::1] C, const long long[:, ::1] seq,
                         const real_t[:, :, :, :, ::1] states,
                         Py_ssize_t chunk_size, int num_threads):
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3], nch
    _require(chunk_size >= 1 and num_threads >= 1,
             "chunk_size and num_threads must be >= 1")
    _require(G >= 1 and H % G == 0 and B.shape[0] == nb and B.shape[1] == L,
             "B must be (batch, seqlen, ngroups | nheads, dstate)")
    _require(shape4(C, nb, L, G, N), "C must have the shape of B")
    nch = (L + chunk_size - 1) // chunk_size
    _require(dt.shape[0] == nb and dt.shape[1] == H
             and dt.shape[2] == nch * chunk_size,
             "dt must be (batch, nheads, nchunks * chunk_size)")
    _require(dA.shape[0] == nb and dA.shape[1] == H
             and dA.shape[2] == dt.shape[2], "dA must have the shape of dt")
    _require(seq is None or (seq.shape[0] == nb and seq.shape[1] == L),
             "seq must be (batch, seqlen)")
    _require(shape5(states, nb, H, nch, N, rnd(P, vector_width(<real_t *> NULL))),
             "states must be (batch, nheads, nchunks, dstate, padded headdim)")


def forward(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
            const real_t[:, :, ::1] dA, const real_t[:, :, :, ::1] B,
            const real_t[:, :, :, ::1] C, real_t[:, :, :, ::1] y0,
            real_t[:, :, :, ::1] y, real_t[:, :, :, ::1] last,
            real_t[:, :, :, :, ::1] states, Py_ssize_t chunk_size,
            int num_threads, *, const long long[:, ::1] seq=None,
            const real_t[:, :, :, ::1] init=None, const real_t[:, ::1] D=None,
            const real_t[:, :, :, ::1] z=None):
    """The chunked scan (pass 1) into y0 (before the gate, D x added) and,
    with z, y = y0 silu(z); the final states into `last`; the state
    entering every chunk, transposed, into `states` (batch, nheads, nchunks,
    dstate, padded(headdim)). With y0 None, the states (and `last`) alone. `init`
    (batch, nheads, headdim, dstate) is the first sequence's state of each
    row; `dA` restarted at every sequence start of `seq`."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t task, vw, per, ntask, bc, c0
    cdef zm_ssdb_problem pr
    cdef Scratch scr, cbs
    cdef scratch_t *ws
    cdef real_t *work
    check_common(x, dt, dA, B, C, seq, states, chunk_size, num_threads)
    _require(y0 is None or shape4(y0, nb, L, H, P), "y0 must have the shape of x")
    _require((y is None) == (z is None or y0 is None),
             "y goes with z and y0")
    _require(y is None or shape4(y, nb, L, H, P), "y must have the shape of x")
    _require(shape4(last, nb, H, P, N), "last must be (batch, nheads, headdim, dstate)")
    _require(init is None or shape4(init, nb, H, P, N),
             "init must be (batch, nheads, headdim, dstate)")
    _require(D is None or (D.shape[0] == H and D.shape[1] == P),
             "D must be (nheads, headdim)")
    _require(z is None or shape4(z, nb, L, H, P), "z must have the shape of x")
    if nb == 0 or L == 0 or H == 0 or P == 0 or N == 0:
        return
    common(&pr, x, dt, dA, B, C, chunk_size)
    vw = vector_width(<real_t *> NULL)
    pr.last = &last[0, 0, 0, 0]
    pr.states = &states[0, 0, 0, 0, 0]
    if y0 is not None:
        pr.y0 = &y0[0, 0, 0, 0]
        if D is not None:
            pr.D = &D[0, 0]
        if z is not None:
            pr.z = &z[0, 0, 0, 0]
            pr.y = &y[0, 0, 0, 0]
    if init is not None:
        pr.init = &init[0, 0, 0, 0]
    if seq is not None:
        pr.seq = &seq[0, 0]
    per = zm_ssd_scratch(pr.cm, P, N, vw, sizeof(real_t))
    scr = Scratch(num_threads, per, sizeof(real_t),
                  "the SSD forward walk's per-thread scratch")
    ws = &scr.s
    if y0 is not None and H // G > 1:
        # C B^T once per (batch, group, chunk), read by every head
        ntask = nb * G * pr.nch
        cbs = Scratch(1, ntask * pr.cm * pr.mp, sizeof(real_t),
                      "the SSD forward walk's shared C B^T")
        pr.cb = cbs.s.base
        with nogil, parallel(num_threads=ws.nthreads):
            work = <real_t *> scratch_block(ws, threadid())
            for task in prange(ntask, schedule='static'):
                if work == NULL:
                    continue
                if real_t is float:
                    zm_ssdb_cb_task_f(&pr, task, work)
                else:
                    zm_ssdb_cb_task_d(&pr, task, work)
    # on one thread the rows are walked in blocks of about _BLOCK_TOKENS
    # positions, every task through one block before the next (the heads
    # of a group then read the block's B, C and C B^T from cache), as the
    # fused scan of _ssd.pyx does; on several, each task walks its row
    bc = max(1, _BLOCK_TOKENS // chunk_size) if num_threads == 1 else pr.nch
    for c0 in range(0, pr.nch, bc):
        pr.c0 = c0
        pr.c1 = c0 + bc
        with nogil, parallel(num_threads=ws.nthreads):
            work = <real_t *> scratch_block(ws, threadid())
            for task in prange(nb * H, schedule='dynamic'):
                if work == NULL:
                    continue
                if real_t is float:
                    zm_ssdb_fwd_task_f(&pr, task, work)
                else:
                    zm_ssdb_fwd_task_d(&pr, task, work)
    scr.finish()


def backward(const real_t[:, :, :, ::1] x, const real_t[:, :, ::1] dt,
             const real_t[:, :, ::1] dA, const real_t[::1] A,
             const real_t[:, :, :, ::1] B, const real_t[:, :, :, ::1] C,
             const real_t[:, :, :, ::1] gy,
             const real_t[:, :, :, :, ::1] states, real_t[:, :, :, ::1] gx,
             real_t[:, :, :, ::1] gB, real_t[:, :, :, ::1] gC,
             real_t[:, :, ::1] ddt, real_t[:, :, :, ::1] gA,
             Py_ssize_t chunk_size, int num_threads, *,
             const long long[:, ::1] seq=None, bint has_init=False,
             const real_t[:, :, :, ::1] gfinal=None,
             real_t[:, :, :, ::1] ginit=None, const real_t[:, ::1] D=None,
             real_t[:, :, :, :, ::1] gD=None,
             const real_t[:, :, :, ::1] z=None,
             const real_t[:, :, :, ::1] y0=None,
             real_t[:, :, :, ::1] gz=None, Py_ssize_t block_bytes=1 << 24,
             const real_t[:, :, ::1] dt_raw=None,
             const real_t[::1] dt_bias=None, bint dt_softplus=False,
             double lo=0.0, double hi=float("inf"),
             real_t[:, :, :, ::1] gdt_bias=None):
    """Passes 2 and 3: from the output's cotangent `gy` (and the final
    states' `gfinal`), the gradients gx, gB, gC (written whole), ddt
    (batch, seqlen, nheads: of the processed steps), and, added to (zero
    them first), the per-task sums gA (batch, ngroups, nchunks, nheads /
    ngroups) and gD (the same, headdim). `states` from `forward`.
    has_init: the first chunk's entering state is an input (its gradient
    into `ginit`). With z: the gate's gradient into gz (y0 the output
    before the gate).

    With `dt_raw` (batch, seqlen, nheads), the steps as the layer got them,
    ddt is their gradient instead: through the bias `dt_bias`, softplus
    (`dt_softplus`, at every step, as process_dt forms it) and the clamp to
    [lo, hi] (zero where a step is clamped strictly); with `gdt_bias` (the
    shape of gA), the per-task sums of that gradient are added to it (zero
    it first).

    The chunks are taken in blocks, last block first: pass 2 over the
    block (every (batch, head) resuming its adjoint), then pass 3 over the
    block's chunks; the adjoints of one block, about `block_bytes`, are all
    that is kept of them."""
    cdef Py_ssize_t nb = x.shape[0], L = x.shape[1], H = x.shape[2]
    cdef Py_ssize_t P = x.shape[3], G = B.shape[2], N = B.shape[3]
    cdef Py_ssize_t task, vw, per, nch, per_chunk, blk, c0
    cdef zm_ssdb_problem pr
    cdef Scratch scr, dsw, runw
    cdef scratch_t *ws
    cdef real_t *work
    check_common(x, dt, dA, B, C, seq, states, chunk_size, num_threads)
    nch = (L + chunk_size - 1) // chunk_size
    vw = vector_width(<real_t *> NULL)
    _require(A.shape[0] == H, "A must be (nheads,)")
    _require(shape4(gy, nb, L, H, P) and shape4(gx, nb, L, H, P),
             "gy and gx must have the shape of x")
    _require(shape4(gB, nb, L, G, N) and shape4(gC, nb, L, G, N),
             "gB and gC must have the shape of B")
    _require(ddt.shape[0] == nb and ddt.shape[1] == L and ddt.shape[2] == H,
             "ddt must be (batch, seqlen, nheads)")
    _require(G == 0 or shape4(gA, nb, G, nch, H // G),
             "gA must be (batch, ngroups, nchunks, nheads / ngroups)")
    _require(gfinal is None or shape4(gfinal, nb, H, P, N),
             "gfinal must be (batch, nheads, headdim, dstate)")
    _require(ginit is None or shape4(ginit, nb, H, P, N),
             "ginit must be (batch, nheads, headdim, dstate)")
    _require((D is None) == (gD is None), "D and gD go together")
    _require(D is None or (D.shape[0] == H and D.shape[1] == P),
             "D must be (nheads, headdim)")
    _require(gD is None or shape5(gD, nb, G, nch, H // G, P),
             "gD must be (batch, ngroups, nchunks, nheads / ngroups, headdim)")
    _require((z is None) == (y0 is None) == (gz is None),
             "z, y0 and gz go together")
    _require(z is None or (shape4(z, nb, L, H, P) and shape4(y0, nb, L, H, P)
                           and shape4(gz, nb, L, H, P)),
             "z, y0 and gz must have the shape of x")
    _require(dt_raw is None or (dt_raw.shape[0] == nb and dt_raw.shape[1] == L
                                and dt_raw.shape[2] == H),
             "dt_raw must be (batch, seqlen, nheads)")
    _require(dt_bias is None or dt_bias.shape[0] == H, "dt_bias must be (nheads,)")
    _require((dt_bias is None and gdt_bias is None) or dt_raw is not None,
             "dt_bias and gdt_bias go with dt_raw")
    _require(gdt_bias is None or G == 0 or shape4(gdt_bias, nb, G, nch, H // G),
             "gdt_bias must be (batch, ngroups, nchunks, nheads / ngroups)")
    if nb == 0 or L == 0 or H == 0 or P == 0 or N == 0:
        return
    common(&pr, x, dt, dA, B, C, chunk_size)
    pr.A = &A[0]
    pr.gy = &gy[0, 0, 0, 0]
    pr.states = <void *> &states[0, 0, 0, 0, 0]
    pr.gx = &gx[0, 0, 0, 0]
    pr.gB = &gB[0, 0, 0, 0]
    pr.gC = &gC[0, 0, 0, 0]
    pr.ddt = &ddt[0, 0, 0]
    pr.gA = &gA[0, 0, 0, 0]
    pr.has_init = has_init
    if seq is not None:
        pr.seq = &seq[0, 0]
    if gfinal is not None:
        pr.gfinal = &gfinal[0, 0, 0, 0]
    if ginit is not None:
        pr.ginit = &ginit[0, 0, 0, 0]
    if D is not None:
        pr.D = &D[0, 0]
        pr.gD = &gD[0, 0, 0, 0, 0]
    if z is not None:
        pr.z = &z[0, 0, 0, 0]
        pr.y0c = &y0[0, 0, 0, 0]
        pr.gz = &gz[0, 0, 0, 0]
    if dt_raw is not None:
        pr.dtr = &dt_raw[0, 0, 0]
        pr.softplus = dt_softplus
        pr.lo = lo
        pr.hi = hi
        if dt_bias is not None:
            pr.dtb = &dt_bias[0]
        if gdt_bias is not None:
            pr.gdtb = &gdt_bias[0, 0, 0, 0]
    per = zm_ssdb_scratch(pr.cm, P, N, vw, sizeof(real_t))
    scr = Scratch(num_threads, per, sizeof(real_t),
                  "the SSD backward's per-thread scratch")
    ws = &scr.s
    per_chunk = nb * H * N * pr.Pp
    blk = max(1, min(nch, block_bytes // (per_chunk * sizeof(real_t))))
    pr.blk = blk
    dsw = Scratch(1, per_chunk * blk, sizeof(real_t),
                  "the SSD backward's block of state adjoints")
    runw = Scratch(1, per_chunk, sizeof(real_t),
                   "the SSD backward's running state adjoints")
    pr.dstates = dsw.s.base
    pr.run = runw.s.base
    for c0 in range((nch - 1) // blk * blk, -1, -blk):
        pr.c0 = c0
        pr.c1 = min(nch, c0 + blk)
        with nogil, parallel(num_threads=ws.nthreads):
            work = <real_t *> scratch_block(ws, threadid())
            for task in prange(nb * H, schedule='dynamic'):
                if work == NULL:
                    continue
                if real_t is float:
                    zm_ssdb_adj_task_f(&pr, task, work)
                else:
                    zm_ssdb_adj_task_d(&pr, task, work)
            for task in prange(nb * G * (pr.c1 - c0), schedule='dynamic'):
                if work == NULL:
                    continue
                if real_t is float:
                    zm_ssdb_grad_task_f(&pr, task, work)
                else:
                    zm_ssdb_grad_task_d(&pr, task, work)
    scr.finish()
