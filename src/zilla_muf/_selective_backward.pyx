# cython: language_level=3
"""Forward with checkpoints and fused backward of Mamba-1's selective scan
(real A).

Design
------
One *channel* is a (batch b, channel d) pair, as in the forward
(_selective.pyx): its state h is N values, and B, C are read through the
same row layout (the row of (b, d) at step t starts at
b * sb + (d // gs) * sg + t * st).

Forward (`selective_scan_real_forward`): the forward's own channel loop
(_selscan.h) run segment by segment, K steps each, from the state the
previous segment left: the output is the forward's to the last bit, and
the state entering every segment is kept (checkpoints, (nseg + 1) N values
per channel, the last one the final state). With a gate z, the output
before the gate y0 is kept too and y = y0 silu(z).

Backward (`selective_scan_real_backward`), per channel, in one pass over
the segments in reverse: a segment's steps dt = softplus(delta + bias) and
their derivative, the gated cotangent g0 = gy silu(z) (and the gate's
gradient gy y0 silu'(z)), its decays e_t = exp(dt_t A) (one vectorised
pass), then the forward replayed from its checkpoint keeping
P_t = e_t h_{t-1}, then the adjoint backward through it:

    lam_t = e_{t+1} lam_{t+1} + g0_t C_t        (lam_{L-1}: + glast)
    gC_t += g0_t h_t,   gB_t += dt_t u_t lam_t,   lb_t = sum_n lam_t B_t
    q_t = lam_t P_t,    gA += dt_t q_t
    gdelta_t = (u_t lb_t + sum_n q_t A) softplus'(delta_t + bias)
    gu_t = dt_t lb_t + D g0_t,   gh0 = e_0 lam_0,

with gD = sum_t g0_t u_t and gbias = sum_t gdelta_t per channel. No
exponential of a positive argument beyond the decays themselves. Memory:
per-thread scratch of 2 K N + O(N + K) values (in L1 for Mamba's sizes),
the checkpoints O(batch dim N L / K), never the (batch, dim, N, L)
states. B and C may be shared by many channels (and by the batch for the
constant layout): the channels are cut into *lanes* of consecutive
channels (a few per thread), each lane accumulating their gradients in its
own buffer of B's (C's) size, summed by the caller in a fixed order.
Lanes go to threads as they become free (a thread descheduled by another
process does not hold the others up), and the gradients do not depend on
which thread ran a lane; indices are Py_ssize_t throughout. float32 accumulates in
float32, as the forward does.
"""
from cython.parallel cimport prange, parallel, threadid

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block
from zilla_muf._types cimport real_t


cdef extern from "_selscan_bwd.h" nogil:
    Py_ssize_t zm_sel_scratch(Py_ssize_t N)
    Py_ssize_t zm_selb_scratch(Py_ssize_t N, Py_ssize_t K)
    void zm_sel_steps_f(const float *dl, float bias, int softplus, float *dt,
                        Py_ssize_t L)
    void zm_sel_steps_d(const double *dl, double bias, int softplus,
                        double *dt, Py_ssize_t L)
    void zm_silu_f(const float *x, float *out, Py_ssize_t n)
    void zm_silu_d(const double *x, double *out, Py_ssize_t n)
    void zm_sel_channel_f(const float *u, const float *dts, const float *g,
                          const float *A, const float *Bp, Py_ssize_t bst,
                          const float *Cp, Py_ssize_t cst, float Dd,
                          const float *h0, float *y, float *hlast,
                          float *work, Py_ssize_t N, Py_ssize_t L,
                          const long long *seq)
    void zm_sel_channel_d(const double *u, const double *dts, const double *g,
                          const double *A, const double *Bp, Py_ssize_t bst,
                          const double *Cp, Py_ssize_t cst, double Dd,
                          const double *h0, double *y, double *hlast,
                          double *work, Py_ssize_t N, Py_ssize_t L,
                          const long long *seq)
    void zm_selb_channel_f(const float *u, const float *dl, float bias,
                           int softplus, const float *z, const float *y0,
                           const float *gy, float Dd, const float *A,
                           const float *Bp, Py_ssize_t bst, const float *Cp,
                           Py_ssize_t cst, const float *ck,
                           const float *glast, float *gu, float *gdl,
                           float *gz, float *gA, float *gB, float *gC,
                           float *gh0, float *sums, float *work,
                           Py_ssize_t N, Py_ssize_t L, Py_ssize_t K)
    void zm_selb_channel_d(const double *u, const double *dl, double bias,
                           int softplus, const double *z, const double *y0,
                           const double *gy, double Dd, const double *A,
                           const double *Bp, Py_ssize_t bst, const double *Cp,
                           Py_ssize_t cst, const double *ck,
                           const double *glast, double *gu, double *gdl,
                           double *gz, double *gA, double *gB, double *gC,
                           double *gh0, double *sums, double *work,
                           Py_ssize_t N, Py_ssize_t L, Py_ssize_t K)

    Py_ssize_t zm_selbc_scratch(Py_ssize_t N, Py_ssize_t K, Py_ssize_t L)
    void zm_selbc_channel_f(
        const float *u, const float *dl, float bias, int softplus,
        const float *z, const float *y0, const float *gy, float Dd,
        const float *Ar, const float *Ai, const float *Br, const float *Bi,
        Py_ssize_t bst, const float *Cr, const float *Ci, Py_ssize_t cst,
        const float *h0r, const float *h0i, const float *glr,
        const float *gli, float *gu, float *gdl, float *gz, float *gAr,
        float *gAi, float *gBr, float *gBi, float *gCr, float *gCi,
        float *gh0r, float *gh0i, float *sums, float *work, Py_ssize_t N,
        Py_ssize_t L, Py_ssize_t K)
    void zm_selbc_channel_d(
        const double *u, const double *dl, double bias, int softplus,
        const double *z, const double *y0, const double *gy, double Dd,
        const double *Ar, const double *Ai, const double *Br,
        const double *Bi, Py_ssize_t bst, const double *Cr,
        const double *Ci, Py_ssize_t cst, const double *h0r,
        const double *h0i, const double *glr, const double *gli, double *gu,
        double *gdl, double *gz, double *gAr, double *gAi, double *gBr,
        double *gBi, double *gCr, double *gCi, double *gh0r, double *gh0i,
        double *sums, double *work, Py_ssize_t N, Py_ssize_t L, Py_ssize_t K)

cdef inline Py_ssize_t row_offset(Py_ssize_t b, Py_ssize_t d, Py_ssize_t sb,
                                  Py_ssize_t gs, Py_ssize_t sg) noexcept nogil:
    return b * sb + (d // gs) * sg


cdef inline void steps_row(const real_t *dl, real_t bias, bint softplus,
                           real_t *dt, Py_ssize_t L) noexcept nogil:
    if real_t is float:
        zm_sel_steps_f(dl, bias, softplus, dt, L)
    else:
        zm_sel_steps_d(dl, bias, softplus, dt, L)


cdef inline void silu_row(const real_t *z, real_t *g,
                          Py_ssize_t L) noexcept nogil:
    if real_t is float:
        zm_silu_f(z, g, L)
    else:
        zm_silu_d(z, g, L)


cdef inline void channel_forward(const real_t *u, const real_t *dts,
                                 const real_t *A, const real_t *Bp,
                                 Py_ssize_t bst, const real_t *Cp,
                                 Py_ssize_t cst, real_t Dd, const real_t *h0,
                                 real_t *y, real_t *hlast, real_t *work,
                                 Py_ssize_t N, Py_ssize_t L) noexcept nogil:
    """The forward's channel loop (_selscan.h), ungated."""
    if real_t is float:
        zm_sel_channel_f(u, dts, NULL, A, Bp, bst, Cp, cst, Dd, h0, y, hlast,
                         work, N, L, NULL)
    else:
        zm_sel_channel_d(u, dts, NULL, A, Bp, bst, Cp, cst, Dd, h0, y, hlast,
                         work, N, L, NULL)


cdef inline void channel_backward(
        const real_t *u, const real_t *dl, real_t bias, bint softplus,
        const real_t *z, const real_t *y0, const real_t *gy, real_t Dd,
        const real_t *A, const real_t *Bp, Py_ssize_t bst, const real_t *Cp,
        Py_ssize_t cst, const real_t *ck, const real_t *glast, real_t *gu,
        real_t *gdl, real_t *gz, real_t *gA, real_t *gB, real_t *gC,
        real_t *gh0, real_t *sums, real_t *work, Py_ssize_t N, Py_ssize_t L,
        Py_ssize_t K) noexcept nogil:
    """One channel's fused backward (_selscan_bwd.h)."""
    if real_t is float:
        zm_selb_channel_f(u, dl, bias, softplus, z, y0, gy, Dd, A, Bp, bst,
                          Cp, cst, ck, glast, gu, gdl, gz, gA, gB, gC, gh0,
                          sums, work, N, L, K)
    else:
        zm_selb_channel_d(u, dl, bias, softplus, z, y0, gy, Dd, A, Bp, bst,
                          Cp, cst, ck, glast, gu, gdl, gz, gA, gB, gC, gh0,
                          sums, work, N, L, K)


cdef inline void channel_backward_complex(
        const real_t *u, const real_t *dl, real_t bias, bint softplus,
        const real_t *z, const real_t *y0, const real_t *gy, real_t Dd,
        const real_t *Ar, const real_t *Ai, const real_t *Br, const real_t *Bi,
        Py_ssize_t bst, const real_t *Cr, const real_t *Ci, Py_ssize_t cst,
        const real_t *h0r, const real_t *h0i, const real_t *glr,
        const real_t *gli, real_t *gu, real_t *gdl, real_t *gz, real_t *gAr,
        real_t *gAi, real_t *gBr, real_t *gBi, real_t *gCr, real_t *gCi,
        real_t *gh0r, real_t *gh0i, real_t *sums, real_t *work, Py_ssize_t N,
        Py_ssize_t L, Py_ssize_t K) noexcept nogil:
    """One channel's backward with complex A (_selscan_bwd.h)."""
    if real_t is float:
        zm_selbc_channel_f(u, dl, bias, softplus, z, y0, gy, Dd, Ar, Ai, Br,
                           Bi, bst, Cr, Ci, cst, h0r, h0i, glr, gli, gu, gdl,
                           gz, gAr, gAi, gBr, gBi, gCr, gCi, gh0r, gh0i, sums,
                           work, N, L, K)
    else:
        zm_selbc_channel_d(u, dl, bias, softplus, z, y0, gy, Dd, Ar, Ai, Br,
                           Bi, bst, Cr, Ci, cst, h0r, h0i, glr, gli, gu, gdl,
                           gz, gAr, gAi, gBr, gBi, gCr, gCi, gh0r, gh0i, sums,
                           work, N, L, K)

cdef bint layout_fits(Py_ssize_t[::1] lay, Py_ssize_t size, Py_ssize_t batch,
                      Py_ssize_t dim, Py_ssize_t N, Py_ssize_t L):
    """Whether every row the layout (sb, gs, sg, st) addresses lies in `size`."""
    if lay.shape[0] != 4 or lay[1] < 1 or lay[0] < 0 or lay[2] < 0 or lay[3] < 0:
        return False
    if batch == 0 or dim == 0 or N == 0 or L == 0:
        return True
    return ((batch - 1) * lay[0] + ((dim - 1) // lay[1]) * lay[2]
            + (L - 1) * lay[3] + N) <= size


cdef inline bint same3(const real_t[:, :, ::1] a, Py_ssize_t n0, Py_ssize_t n1,
                       Py_ssize_t n2) noexcept:
    return a.shape[0] == n0 and a.shape[1] == n1 and a.shape[2] == n2


def selective_scan_real_forward(const real_t[:, :, ::1] u,
                                const real_t[:, :, ::1] delta,
                                const real_t[:, ::1] A,
                                const real_t[::1] B, Py_ssize_t[::1] b_layout,
                                const real_t[::1] C, Py_ssize_t[::1] c_layout,
                                const real_t[:, :, ::1] h0,
                                real_t[:, :, ::1] y, real_t[:, :, :, ::1] ck,
                                Py_ssize_t segment, int num_threads, *,
                                const real_t[::1] D=None,
                                const real_t[::1] delta_bias=None,
                                bint delta_softplus=False,
                                const real_t[:, :, ::1] z=None,
                                real_t[:, :, ::1] y0=None):
    """The real selective scan keeping its checkpoints (see the Design).

    u, delta, y (and z, y0: both or neither): (batch, dim, L); h0:
    (batch, dim, N); ck: (batch, dim, nseg + 1, N) with nseg =
    ceil(L / segment), filled with the state entering every segment and
    the final state. y0 receives the output before the gate.
    """
    cdef Py_ssize_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2]
    cdef Py_ssize_t N = A.shape[1]
    cdef Py_ssize_t nseg, ch, b, d, s, t0, m, t, ob, oc
    cdef const real_t *Z = NULL
    cdef real_t *Y0 = NULL
    cdef real_t *buf
    cdef real_t *dts
    cdef real_t *g
    cdef real_t *yy
    cdef Scratch scr
    cdef scratch_t *ws
    if num_threads < 1 or segment < 1:
        raise ValueError("num_threads and segment must be >= 1")
    nseg = (L + segment - 1) // segment
    if not (same3(delta, batch, dim, L) and same3(y, batch, dim, L)):
        raise ValueError("delta and y must have the shape of u")
    if not same3(h0, batch, dim, N):
        raise ValueError("h0 must be (batch, dim, dstate)")
    if not (ck.shape[0] == batch and ck.shape[1] == dim
            and ck.shape[2] == nseg + 1 and ck.shape[3] == N):
        raise ValueError("ck must be (batch, dim, nseg + 1, dstate)")
    if A.shape[0] != dim or (D is not None and D.shape[0] != dim) or (
            delta_bias is not None and delta_bias.shape[0] != dim):
        raise ValueError("A, D and delta_bias must have dim rows")
    if (z is None) != (y0 is None):
        raise ValueError("z and y0 go together")
    if z is not None and not (same3(z, batch, dim, L) and same3(y0, batch, dim, L)):
        raise ValueError("z and y0 must have the shape of u")
    if not (layout_fits(b_layout, B.shape[0], batch, dim, N, L)
            and layout_fits(c_layout, C.shape[0], batch, dim, N, L)):
        raise ValueError("a B or C layout reaches past the array")
    if batch == 0 or dim == 0:
        return
    if L == 0:
        ck[:, :, 0, :] = h0
        ck[:, :, nseg, :] = h0
        return
    if z is not None:
        Z = &z[0, 0, 0]
        Y0 = &y0[0, 0, 0]
    cdef const real_t *U = &u[0, 0, 0]
    cdef const real_t *DL = &delta[0, 0, 0]
    cdef const real_t *AP = &A[0, 0] if N > 0 else NULL
    cdef const real_t *BP = &B[0] if B.shape[0] > 0 else NULL
    cdef const real_t *CP = &C[0] if C.shape[0] > 0 else NULL
    cdef const real_t *H0 = &h0[0, 0, 0] if N > 0 else NULL
    cdef const real_t *Dp = &D[0] if D is not None else NULL
    cdef const real_t *bias = &delta_bias[0] if delta_bias is not None else NULL
    cdef real_t *Y = &y[0, 0, 0]
    cdef real_t *CK = &ck[0, 0, 0, 0] if N > 0 else NULL
    cdef Py_ssize_t *bl = &b_layout[0]
    cdef Py_ssize_t *cl = &c_layout[0]
    scr = Scratch(num_threads, zm_sel_scratch(N) + 2 * L + 1, sizeof(real_t),
                  "the selective scan's per-thread scratch")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        buf = <real_t *> scratch_block(ws, threadid())
        if buf != NULL:
            dts = buf + zm_sel_scratch(N)
            g = dts + L
            for ch in prange(batch * dim, schedule='dynamic', chunksize=8):
                b = ch // dim
                d = ch - b * dim
                ob = row_offset(b, d, bl[0], bl[1], bl[2])
                oc = row_offset(b, d, cl[0], cl[1], cl[2])
                steps_row(DL + ch * L, bias[d] if bias != NULL else 0,
                          delta_softplus, dts, L)
                yy = (Y0 if Z != NULL else Y) + ch * L
                for s in range(N):
                    CK[ch * (nseg + 1) * N + s] = H0[ch * N + s]
                for s in range(nseg):
                    t0 = s * segment
                    m = L - t0 if L - t0 < segment else segment
                    channel_forward(U + ch * L + t0, dts + t0, AP + d * N,
                                    BP + ob + t0 * bl[3], bl[3],
                                    CP + oc + t0 * cl[3], cl[3],
                                    Dp[d] if Dp != NULL else 0,
                                    CK + (ch * (nseg + 1) + s) * N, yy + t0,
                                    CK + (ch * (nseg + 1) + s + 1) * N, buf,
                                    N, m)
                if Z != NULL:
                    silu_row(Z + ch * L, g, L)
                    for t in range(L):
                        Y[ch * L + t] = yy[t] * g[t]
    scr.finish()


def selective_scan_real_backward(const real_t[:, :, ::1] u,
                                 const real_t[:, :, ::1] delta,
                                 const real_t[:, ::1] A,
                                 const real_t[::1] B, Py_ssize_t[::1] b_layout,
                                 const real_t[::1] C, Py_ssize_t[::1] c_layout,
                                 const real_t[:, :, :, ::1] ck,
                                 const real_t[:, :, ::1] gy,
                                 const real_t[:, :, ::1] glast,
                                 real_t[:, :, ::1] gu, real_t[:, :, ::1] gdelta,
                                 real_t[:, :, ::1] gA, real_t[:, :, ::1] gh0,
                                 real_t[:, :, ::1] sums,
                                 real_t[:, ::1] gB, real_t[:, ::1] gC,
                                 Py_ssize_t segment, int num_threads, *,
                                 const real_t[::1] D=None,
                                 const real_t[::1] delta_bias=None,
                                 bint delta_softplus=False,
                                 const real_t[:, :, ::1] z=None,
                                 const real_t[:, :, ::1] y0=None,
                                 real_t[:, :, ::1] gz=None):
    """Fused backward of the real selective scan (see the Design).

    u, delta, gy, gu, gdelta (and z, y0, gz: all or none): (batch, dim, L);
    ck: the forward's checkpoints (batch, dim, nseg + 1, N) for the same
    `segment`; glast, gA (per channel, summed over the batch by the caller),
    gh0: (batch, dim, N); sums: (batch, dim, 2) receives the channel's
    gradients of D and delta_bias; gB, gC: (lanes, size of B / C), zeroed
    by the caller: the channels are cut into that many lanes of
    consecutive channels, each accumulating in its own row.
    """
    cdef Py_ssize_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2]
    cdef Py_ssize_t N = A.shape[1]
    cdef Py_ssize_t ch, b, d, nseg, scratch, ob, oc, lane, c1, per
    cdef Py_ssize_t nlanes = gB.shape[0]
    cdef real_t *work
    cdef Scratch scr
    cdef scratch_t *ws
    if num_threads < 1 or segment < 1:
        raise ValueError("num_threads and segment must be >= 1")
    nseg = (L + segment - 1) // segment
    if not (same3(delta, batch, dim, L) and same3(gy, batch, dim, L)
            and same3(gu, batch, dim, L) and same3(gdelta, batch, dim, L)):
        raise ValueError("delta, gy, gu and gdelta must have the shape of u")
    if not (same3(glast, batch, dim, N) and same3(gA, batch, dim, N)
            and same3(gh0, batch, dim, N)):
        raise ValueError("glast, gA and gh0 must be (batch, dim, N)")
    if not same3(sums, batch, dim, 2):
        raise ValueError("sums must be (batch, dim, 2)")
    if not (ck.shape[0] == batch and ck.shape[1] == dim
            and ck.shape[2] == nseg + 1 and ck.shape[3] == N):
        raise ValueError("ck must be (batch, dim, nseg + 1, dstate)")
    if A.shape[0] != dim or (D is not None and D.shape[0] != dim) or (
            delta_bias is not None and delta_bias.shape[0] != dim):
        raise ValueError("A, D and delta_bias must have dim rows")
    if not ((z is None) == (y0 is None) == (gz is None)):
        raise ValueError("z, y0 and gz go together")
    if z is not None and not (same3(z, batch, dim, L) and same3(y0, batch, dim, L)
                              and same3(gz, batch, dim, L)):
        raise ValueError("z, y0 and gz must have the shape of u")
    if gB.shape[0] < 1 or gC.shape[0] != gB.shape[0] \
            or gB.shape[1] != B.shape[0] or gC.shape[1] != C.shape[0]:
        raise ValueError("gB and gC must have as many rows (lanes), of B's / "
                         "C's size")
    if not (layout_fits(b_layout, B.shape[0], batch, dim, N, L)
            and layout_fits(c_layout, C.shape[0], batch, dim, N, L)):
        raise ValueError("a B or C layout reaches past the array")
    if batch == 0 or dim == 0:
        return
    if L == 0:
        gh0[...] = glast
        gA[...] = 0
        sums[...] = 0
        return
    cdef const real_t *Z = &z[0, 0, 0] if z is not None else NULL
    cdef const real_t *Y0 = &y0[0, 0, 0] if z is not None else NULL
    cdef real_t *GZ = &gz[0, 0, 0] if z is not None else NULL
    cdef const real_t *U = &u[0, 0, 0]
    cdef const real_t *DL = &delta[0, 0, 0]
    cdef const real_t *AP = &A[0, 0] if N > 0 else NULL
    cdef const real_t *BP = &B[0] if B.shape[0] > 0 else NULL
    cdef const real_t *CP = &C[0] if C.shape[0] > 0 else NULL
    cdef const real_t *CK = &ck[0, 0, 0, 0] if N > 0 else NULL
    cdef const real_t *GY = &gy[0, 0, 0]
    cdef const real_t *GL = &glast[0, 0, 0] if N > 0 else NULL
    cdef const real_t *Dp = &D[0] if D is not None else NULL
    cdef const real_t *bias = &delta_bias[0] if delta_bias is not None else NULL
    cdef real_t *GU = &gu[0, 0, 0]
    cdef real_t *GD = &gdelta[0, 0, 0]
    cdef real_t *GA = &gA[0, 0, 0] if N > 0 else NULL
    cdef real_t *GH = &gh0[0, 0, 0] if N > 0 else NULL
    cdef real_t *SU = &sums[0, 0, 0]
    cdef real_t *GB = &gB[0, 0] if gB.shape[1] > 0 else NULL
    cdef real_t *GC = &gC[0, 0] if gC.shape[1] > 0 else NULL
    cdef Py_ssize_t szb = gB.shape[1], szc = gC.shape[1]
    cdef Py_ssize_t *bl = &b_layout[0]
    cdef Py_ssize_t *cl = &c_layout[0]
    scratch = zm_selb_scratch(N, segment)
    per = (batch * dim + nlanes - 1) // nlanes
    scr = Scratch(num_threads, scratch, sizeof(real_t),
                  "the selective scan backward's per-thread scratch")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        work = <real_t *> scratch_block(ws, threadid())
        if work != NULL:
            for lane in prange(nlanes, schedule='dynamic', chunksize=1):
                c1 = (lane + 1) * per if (lane + 1) * per < batch * dim \
                    else batch * dim
                for ch in range(lane * per, c1):
                    b = ch // dim
                    d = ch - b * dim
                    ob = row_offset(b, d, bl[0], bl[1], bl[2])
                    oc = row_offset(b, d, cl[0], cl[1], cl[2])
                    channel_backward(
                        U + ch * L, DL + ch * L, bias[d] if bias != NULL else 0,
                        delta_softplus, Z + ch * L if Z != NULL else NULL,
                        Y0 + ch * L if Z != NULL else NULL, GY + ch * L,
                        Dp[d] if Dp != NULL else 0, AP + d * N,
                        BP + ob, bl[3], CP + oc, cl[3],
                        CK + ch * (nseg + 1) * N, GL + ch * N,
                        GU + ch * L, GD + ch * L,
                        GZ + ch * L if Z != NULL else NULL, GA + ch * N,
                        GB + lane * szb + ob, GC + lane * szc + oc, GH + ch * N,
                        SU + ch * 2, work, N, L, segment)
    scr.finish()

def selective_scan_complex_backward(
        const real_t[:, :, ::1] u, const real_t[:, :, ::1] delta,
        const real_t[:, ::1] A_re, const real_t[:, ::1] A_im,
        const real_t[::1] B_re, const real_t[::1] B_im, Py_ssize_t[::1] b_layout,
        const real_t[::1] C_re, const real_t[::1] C_im, Py_ssize_t[::1] c_layout,
        const real_t[:, :, ::1] h0_re, const real_t[:, :, ::1] h0_im,
        const real_t[:, :, ::1] gy,
        const real_t[:, :, ::1] glast_re, const real_t[:, :, ::1] glast_im,
        real_t[:, :, ::1] gu, real_t[:, :, ::1] gdelta,
        real_t[:, :, ::1] gA_re, real_t[:, :, ::1] gA_im,
        real_t[:, :, ::1] gh0_re, real_t[:, :, ::1] gh0_im,
        real_t[:, :, ::1] sums,
        real_t[:, ::1] gB_re, real_t[:, ::1] gB_im,
        real_t[:, ::1] gC_re, real_t[:, ::1] gC_im,
        Py_ssize_t segment, int num_threads, *,
        const real_t[::1] D=None, const real_t[::1] delta_bias=None,
        bint delta_softplus=False, const real_t[:, :, ::1] z=None,
        const real_t[:, :, ::1] y0=None, real_t[:, :, ::1] gz=None):
    """Backward of the selective scan with complex A (real and imaginary
    parts in separate arrays; see _selscan_bwd.h): as
    selective_scan_real_backward, but from the initial state h0 (the
    checkpoints are kept in per-thread scratch) rather than the forward's
    checkpoints."""
    cdef Py_ssize_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2]
    cdef Py_ssize_t N = A_re.shape[1]
    cdef Py_ssize_t ch, b, d, scratch, ob, oc, lane, c1, per
    cdef Py_ssize_t nlanes = gB_re.shape[0]
    cdef real_t *work
    cdef Scratch scr
    cdef scratch_t *ws
    if num_threads < 1 or segment < 1:
        raise ValueError("num_threads and segment must be >= 1")
    if not (same3(delta, batch, dim, L) and same3(gy, batch, dim, L)
            and same3(gu, batch, dim, L) and same3(gdelta, batch, dim, L)):
        raise ValueError("delta, gy, gu and gdelta must have the shape of u")
    if not (same3(h0_re, batch, dim, N) and same3(h0_im, batch, dim, N)
            and same3(glast_re, batch, dim, N) and same3(glast_im, batch, dim, N)
            and same3(gA_re, batch, dim, N) and same3(gA_im, batch, dim, N)
            and same3(gh0_re, batch, dim, N) and same3(gh0_im, batch, dim, N)):
        raise ValueError("states and their gradients must be (batch, dim, N)")
    if not same3(sums, batch, dim, 2):
        raise ValueError("sums must be (batch, dim, 2)")
    if A_re.shape[0] != dim or A_im.shape[0] != dim or A_im.shape[1] != N or (
            D is not None and D.shape[0] != dim) or (
            delta_bias is not None and delta_bias.shape[0] != dim):
        raise ValueError("A, D and delta_bias must have dim rows")
    if not ((z is None) == (y0 is None) == (gz is None)):
        raise ValueError("z, y0 and gz go together")
    if z is not None and not (same3(z, batch, dim, L) and same3(y0, batch, dim, L)
                              and same3(gz, batch, dim, L)):
        raise ValueError("z, y0 and gz must have the shape of u")
    if B_re.shape[0] != B_im.shape[0] or C_re.shape[0] != C_im.shape[0]:
        raise ValueError("real and imaginary parts must have equal sizes")
    if nlanes < 1 or not (
            gB_im.shape[0] == gC_re.shape[0] == gC_im.shape[0] == nlanes
            and gB_re.shape[1] == gB_im.shape[1] == B_re.shape[0]
            and gC_re.shape[1] == gC_im.shape[1] == C_re.shape[0]):
        raise ValueError("gB and gC must have as many rows (lanes), of B's / "
                         "C's size")
    if not (layout_fits(b_layout, B_re.shape[0], batch, dim, N, L)
            and layout_fits(c_layout, C_re.shape[0], batch, dim, N, L)):
        raise ValueError("a B or C layout reaches past the array")
    if batch == 0 or dim == 0:
        return
    if L == 0:
        gh0_re[...] = glast_re
        gh0_im[...] = glast_im
        gA_re[...] = 0
        gA_im[...] = 0
        sums[...] = 0
        return
    cdef const real_t *Z = &z[0, 0, 0] if z is not None else NULL
    cdef const real_t *Y0 = &y0[0, 0, 0] if z is not None else NULL
    cdef real_t *GZ = &gz[0, 0, 0] if z is not None else NULL
    cdef const real_t *U = &u[0, 0, 0]
    cdef const real_t *DL = &delta[0, 0, 0]
    cdef const real_t *AR = &A_re[0, 0] if N > 0 else NULL
    cdef const real_t *AI = &A_im[0, 0] if N > 0 else NULL
    cdef const real_t *BR = &B_re[0] if B_re.shape[0] > 0 else NULL
    cdef const real_t *BI = &B_im[0] if B_im.shape[0] > 0 else NULL
    cdef const real_t *CR = &C_re[0] if C_re.shape[0] > 0 else NULL
    cdef const real_t *CI = &C_im[0] if C_im.shape[0] > 0 else NULL
    cdef const real_t *HR = &h0_re[0, 0, 0] if N > 0 else NULL
    cdef const real_t *HI = &h0_im[0, 0, 0] if N > 0 else NULL
    cdef const real_t *GY = &gy[0, 0, 0]
    cdef const real_t *GLR = &glast_re[0, 0, 0] if N > 0 else NULL
    cdef const real_t *GLI = &glast_im[0, 0, 0] if N > 0 else NULL
    cdef const real_t *Dp = &D[0] if D is not None else NULL
    cdef const real_t *bias = &delta_bias[0] if delta_bias is not None else NULL
    cdef real_t *GU = &gu[0, 0, 0]
    cdef real_t *GD = &gdelta[0, 0, 0]
    cdef real_t *GAR = &gA_re[0, 0, 0] if N > 0 else NULL
    cdef real_t *GAI = &gA_im[0, 0, 0] if N > 0 else NULL
    cdef real_t *GHR = &gh0_re[0, 0, 0] if N > 0 else NULL
    cdef real_t *GHI = &gh0_im[0, 0, 0] if N > 0 else NULL
    cdef real_t *SU = &sums[0, 0, 0]
    cdef real_t *GBR = &gB_re[0, 0] if gB_re.shape[1] > 0 else NULL
    cdef real_t *GBI = &gB_im[0, 0] if gB_im.shape[1] > 0 else NULL
    cdef real_t *GCR = &gC_re[0, 0] if gC_re.shape[1] > 0 else NULL
    cdef real_t *GCI = &gC_im[0, 0] if gC_im.shape[1] > 0 else NULL
    cdef Py_ssize_t szb = gB_re.shape[1], szc = gC_re.shape[1]
    cdef Py_ssize_t *bl = &b_layout[0]
    cdef Py_ssize_t *cl = &c_layout[0]
    scratch = zm_selbc_scratch(N, segment, L)
    per = (batch * dim + nlanes - 1) // nlanes
    scr = Scratch(num_threads, scratch, sizeof(real_t),
                  "the selective scan backward's per-thread scratch")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        work = <real_t *> scratch_block(ws, threadid())
        if work != NULL:
            for lane in prange(nlanes, schedule='dynamic', chunksize=1):
                c1 = (lane + 1) * per if (lane + 1) * per < batch * dim \
                    else batch * dim
                for ch in range(lane * per, c1):
                    b = ch // dim
                    d = ch - b * dim
                    ob = row_offset(b, d, bl[0], bl[1], bl[2])
                    oc = row_offset(b, d, cl[0], cl[1], cl[2])
                    channel_backward_complex(
                        U + ch * L, DL + ch * L, bias[d] if bias != NULL else 0,
                        delta_softplus, Z + ch * L if Z != NULL else NULL,
                        Y0 + ch * L if Z != NULL else NULL, GY + ch * L,
                        Dp[d] if Dp != NULL else 0, AR + d * N, AI + d * N,
                        BR + ob, BI + ob, bl[3], CR + oc, CI + oc, cl[3],
                        HR + ch * N, HI + ch * N, GLR + ch * N, GLI + ch * N,
                        GU + ch * L, GD + ch * L,
                        GZ + ch * L if Z != NULL else NULL,
                        GAR + ch * N, GAI + ch * N,
                        GBR + lane * szb + ob, GBI + lane * szb + ob,
                        GCR + lane * szc + oc, GCI + lane * szc + oc,
                        GHR + ch * N, GHI + ch * N, SU + ch * 2, work, N, L,
                        segment)
    scr.finish()
