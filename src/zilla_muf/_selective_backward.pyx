# cython: language_level=3
"""Backward kernel of Mamba-1's selective scan (real A).

Design
------
One *channel* is a (batch b, channel d) pair, as in the forward
(_selective.pyx): its state h is N values, and B, C are read through the
same row layout (the row of (b, d) at step t starts at
b * sb + (d // gs) * sg + t * st). Given the processed steps dt, the
cotangent gy of the scan's output (before D and the gate), the channel's
backward is

    lam_t = exp(dt_{t+1} A) lam_{t+1} + gy_t C_t      (lam_{L-1}: + glast)
    gC_t += gy_t h_t,   gB_t += dt_t u_t lam_t,   lb_t = sum_n lam_t B_t
    q_t = lam_t exp(dt_t A) h_{t-1},   gA += dt_t q_t
    gdt_t = u_t lb_t + sum_n q_t A,    gu_t = dt_t lb_t,
    gh0 = exp(dt_0 A) lam_0.

The states are not stored: a first pass runs the recurrence forward and
keeps the state entering every segment of K steps (checkpoints); then the
segments are walked in reverse, each one's states and decays recomputed
from its checkpoint into a K x N scratch block, and the adjoint runs back
through them. Per-thread scratch: (nseg + 2K + 2) N values; memory
O(batch dim N L / K), never the (batch, dim, N, L) states. B and C may be
shared by many channels (and by the batch for the constant layout): each
thread accumulates their gradients in its own buffer of B's (C's) size,
summed by the caller. Channels are split over threads by a static prange
over batch * dim; indices are Py_ssize_t throughout. The channel's loops
are C (_selscan_bwd.h), for `restrict` and the x86-64-v3 clones.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, free

from zilla_muf._types cimport real_t


cdef extern from "_selscan_bwd.h" nogil:
    void zm_sel_bwd_f(const float *u, const float *dl, const float *A,
                      const float *Bp, Py_ssize_t bst, const float *Cp,
                      Py_ssize_t cst, const float *gy, const float *h0,
                      const float *glast, float *gu, float *gdl, float *gA,
                      float *gB, float *gC, float *gh0, float *work,
                      Py_ssize_t N, Py_ssize_t L, Py_ssize_t K)
    void zm_sel_bwd_d(const double *u, const double *dl, const double *A,
                      const double *Bp, Py_ssize_t bst, const double *Cp,
                      Py_ssize_t cst, const double *gy, const double *h0,
                      const double *glast, double *gu, double *gdl,
                      double *gA, double *gB, double *gC, double *gh0,
                      double *work, Py_ssize_t N, Py_ssize_t L, Py_ssize_t K)


cdef inline Py_ssize_t row_offset(Py_ssize_t b, Py_ssize_t d, Py_ssize_t sb,
                                  Py_ssize_t gs, Py_ssize_t sg) noexcept nogil:
    return b * sb + (d // gs) * sg


cdef inline void channel_backward(const real_t *u, const real_t *dl,
                                  const real_t *A, const real_t *Bp,
                                  Py_ssize_t bst, const real_t *Cp,
                                  Py_ssize_t cst, const real_t *gy,
                                  const real_t *h0, const real_t *glast,
                                  real_t *gu, real_t *gdl, real_t *gA,
                                  real_t *gBp, real_t *gCp, real_t *gh0,
                                  real_t *work, Py_ssize_t N, Py_ssize_t L,
                                  Py_ssize_t K) noexcept nogil:
    """One channel (the C loops of _selscan_bwd.h)."""
    if real_t is float:
        zm_sel_bwd_f(u, dl, A, Bp, bst, Cp, cst, gy, h0, glast, gu, gdl, gA,
                     gBp, gCp, gh0, work, N, L, K)
    else:
        zm_sel_bwd_d(u, dl, A, Bp, bst, Cp, cst, gy, h0, glast, gu, gdl, gA,
                     gBp, gCp, gh0, work, N, L, K)


cdef bint layout_fits(Py_ssize_t[::1] lay, Py_ssize_t size, Py_ssize_t batch,
                      Py_ssize_t dim, Py_ssize_t N, Py_ssize_t L):
    """Whether every row the layout (sb, gs, sg, st) addresses lies in `size`."""
    if lay[1] < 1 or lay[0] < 0 or lay[2] < 0 or lay[3] < 0:
        return False
    if batch == 0 or dim == 0 or N == 0 or L == 0:
        return True
    return ((batch - 1) * lay[0] + ((dim - 1) // lay[1]) * lay[2]
            + (L - 1) * lay[3] + N) <= size


def selective_scan_real_backward(const real_t[:, :, ::1] u,
                                 const real_t[:, :, ::1] dl,
                                 const real_t[:, ::1] A,
                                 const real_t[::1] B, Py_ssize_t[::1] b_layout,
                                 const real_t[::1] C, Py_ssize_t[::1] c_layout,
                                 const real_t[:, :, ::1] gy,
                                 const real_t[:, :, ::1] h0,
                                 const real_t[:, :, ::1] glast,
                                 real_t[:, :, ::1] gu, real_t[:, :, ::1] gdl,
                                 real_t[:, :, ::1] gA, real_t[:, :, ::1] gh0,
                                 real_t[:, ::1] gB, real_t[:, ::1] gC,
                                 Py_ssize_t segment, int num_threads):
    """Backward of the real selective scan (see the module's Design).

    u, dl (processed steps), gy, gu, gdl: (batch, dim, L); h0, glast, gA
    (per channel, summed over the batch by the caller), gh0:
    (batch, dim, N); gB, gC: (num_threads, size of B / C), zeroed by the
    caller, one row per thread.
    """
    cdef Py_ssize_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2]
    cdef Py_ssize_t N = A.shape[1]
    cdef Py_ssize_t ch, b, d, nseg, scratch
    cdef Py_ssize_t *bl
    cdef Py_ssize_t *cl
    cdef real_t *work
    cdef int tid
    cdef int status = 0
    cdef int *failed = &status
    if num_threads < 1 or segment < 1:
        raise ValueError("num_threads and segment must be >= 1")
    if not (dl.shape[0] == gy.shape[0] == gu.shape[0] == gdl.shape[0] == batch
            and dl.shape[1] == gy.shape[1] == gu.shape[1] == gdl.shape[1] == dim
            and dl.shape[2] == gy.shape[2] == gu.shape[2] == gdl.shape[2] == L):
        raise ValueError("dl, gy, gu and gdl must have the shape of u")
    if not (h0.shape[0] == glast.shape[0] == gA.shape[0] == gh0.shape[0] == batch
            and h0.shape[1] == glast.shape[1] == gA.shape[1] == gh0.shape[1] == dim
            and h0.shape[2] == glast.shape[2] == gA.shape[2] == gh0.shape[2] == N):
        raise ValueError("h0, glast, gA and gh0 must be (batch, dim, N)")
    if A.shape[0] != dim:
        raise ValueError("A must have dim rows")
    if gB.shape[0] < num_threads or gC.shape[0] < num_threads \
            or gB.shape[1] != B.shape[0] or gC.shape[1] != C.shape[0]:
        raise ValueError("gB and gC must have a row of B's / C's size per thread")
    if b_layout.shape[0] != 4 or c_layout.shape[0] != 4:
        raise ValueError("layouts must be (sb, gs, sg, st)")
    if not (layout_fits(b_layout, B.shape[0], batch, dim, N, L)
            and layout_fits(c_layout, C.shape[0], batch, dim, N, L)):
        raise ValueError("a B or C layout reaches past the array")
    bl = &b_layout[0]
    cl = &c_layout[0]
    if batch == 0 or dim == 0 or N == 0:
        return
    if L == 0:
        gh0[...] = glast
        return
    nseg = (L + segment - 1) // segment
    scratch = (nseg + 2 * segment + 3) * N
    with nogil, parallel(num_threads=num_threads):
        work = <real_t *> malloc(scratch * sizeof(real_t))
        tid = threadid()
        if work == NULL:
            failed[0] = -1
        else:
            for ch in prange(batch * dim, schedule='static'):
                b = ch // dim
                d = ch - b * dim
                channel_backward(
                    &u[b, d, 0], &dl[b, d, 0], &A[d, 0],
                    &B[0] + row_offset(b, d, bl[0], bl[1], bl[2]), bl[3],
                    &C[0] + row_offset(b, d, cl[0], cl[1], cl[2]), cl[3],
                    &gy[b, d, 0], &h0[b, d, 0], &glast[b, d, 0],
                    &gu[b, d, 0], &gdl[b, d, 0], &gA[b, d, 0],
                    &gB[tid, 0] + row_offset(b, d, bl[0], bl[1], bl[2]),
                    &gC[tid, 0] + row_offset(b, d, cl[0], cl[1], cl[2]),
                    &gh0[b, d, 0], work, N, L, segment)
            free(work)
    if status != 0:
        raise MemoryError("could not allocate the backward's scratch memory")
