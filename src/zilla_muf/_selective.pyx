# cython: language_level=3
"""Kernels of Mamba-1: the selective scan and the depthwise causal convolution.

Design
------
Selective scan. One *channel* is a (batch b, channel d) pair; its state is
the dstate-vector h, kept in a per-thread scratch row of N values (in L1)
across the whole time loop. A first pass over the channel's row forms the
steps dt[t] = softplus(delta[t] + bias) (or without softplus) and the gates
silu(z[t]) in two more scratch rows (vectorised over t); then every step t
does, with n innermost and contiguous (vectorised):

    h[n] = exp(dt A[n]) h[n] + (dt u[t]) B[t, n]
    y[t] = sum_n C[t, n] h[n]  (+ D u[t]),  then y[t] * silu(z[t])

There is no (batch, dim, dstate, seqlen) temporary: per step the kernel reads
u, delta (and z) of the channel, one row of B and of C, and writes one y.
u, delta, z and y are (batch, dim, seqlen), C-contiguous, so a channel walks
contiguous memory. B and C arrive flattened, time-major with n last: the row
of (b, d) at step t starts at  b * sb + (d // gs) * sg + t * st,  which covers
the three public layouts (constant (dim, N): sb = 0, gs = 1, sg = N, st = 0;
(batch, N, L) and (batch, G, N, L) transposed to (batch, [G,] L, N)).
Channels are independent: a dynamically scheduled `prange` hands threads
groups of 16 consecutive channels as they become free, so a thread
descheduled by another process on a loaded machine does not hold the others
up. A group walks the sequence in blocks of 1024 steps, each channel of the
group through a block before the next block (the channel's state waits in
its row of the last-state output), so that the block's B and C rows, read
by every channel of a group, come from cache rather than memory (real A;
complex A walks each channel through the whole sequence). The real channel
and its steps are the C loops of _selscan.h
(compiled for x86-64-v3 too): the decays exp(dt A) of a block of steps
are formed in one vectorised pass, then the recurrence is multiply-adds in
vector lanes. The exponential and softplus are `zm_expf` / `zm_exp` and
`zm_softplusf` (_vmath.h), branch-free so that they vectorise. Complex A
keeps the real and imaginary parts of h, A, B and C in separate real rows;
the output is 2 Re(sum_n C h), the state one member of each conjugate
pair.

Causal convolution. Per channel, out[t] = bias + sum_k w[k] xpad[t + k] with
xpad = (initial states, x), evaluated tap by tap with t innermost
(vectorised), the first width-1 outputs reading the initial states.
"""
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport cos, cosf, fabs, sin, sinf
from libc.stdlib cimport malloc, free

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block
from zilla_muf._types cimport real_t
from zilla_muf._vmath cimport vexp, vsilu, vsincos, vsincos_max



cdef enum:
    PART = 8    # partial sums of a dot product (one SIMD register or two)


# ---------------------------------------------------------------------------
# Element functions
# ---------------------------------------------------------------------------

cdef inline real_t cos_t(real_t x) noexcept nogil:
    if real_t is float:
        return cosf(x)
    else:
        return cos(x)


cdef inline real_t sin_t(real_t x) noexcept nogil:
    if real_t is float:
        return sinf(x)
    else:
        return sin(x)


cdef inline real_t dot(const real_t *c, const real_t *h,
                       Py_ssize_t N) noexcept nogil:
    """sum_n c[n] h[n] with PART interleaved partial sums (vectorised)."""
    cdef real_t part[PART]
    cdef real_t s
    cdef Py_ssize_t n, j, i, n8 = N - N % PART
    for j in range(PART):
        part[j] = 0
    for i in range(N // PART):
        n = i * PART
        for j in range(PART):
            part[j] = part[j] + c[n + j] * h[n + j]
    s = ((part[0] + part[4]) + (part[1] + part[5])) + \
        ((part[2] + part[6]) + (part[3] + part[7]))
    for n in range(n8, N):
        s = s + c[n] * h[n]
    return s


# ---------------------------------------------------------------------------
# Row functions: one channel over the whole sequence
# ---------------------------------------------------------------------------

cdef extern from "_vexp.h" nogil:
    void zm_silu_f(const float *x, float *out, Py_ssize_t n)
    void zm_silu_d(const double *x, double *out, Py_ssize_t n)


cdef inline void gate_row(const real_t *z, real_t *g,
                          Py_ssize_t L) noexcept nogil:
    """g[t] = silu(z[t]) for t < L (the vectorised loop of _vexp.h; z may
    be g)."""
    if real_t is float:
        zm_silu_f(z, g, L)
    else:
        zm_silu_d(z, g, L)


cdef extern from "_selscan.h" nogil:
    Py_ssize_t zm_sel_scratch(Py_ssize_t N)
    void zm_sel_steps_f(const float *dl, float bias, int softplus, float *dt,
                        Py_ssize_t L)
    void zm_sel_steps_d(const double *dl, double bias, int softplus,
                        double *dt, Py_ssize_t L)
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


cdef extern from "_selscan.h" nogil:
    Py_ssize_t zm_sel_step_scratch(Py_ssize_t N)
    void zm_sel_step_f(const float *u, const float *dts, const float *g,
                       const float *A, const float *B, const float *C,
                       const float *D, float *h, float *y, float *work,
                       Py_ssize_t dim, Py_ssize_t N)
    void zm_sel_step_d(const double *u, const double *dts, const double *g,
                       const double *A, const double *B, const double *C,
                       const double *D, double *h, double *y, double *work,
                       Py_ssize_t dim, Py_ssize_t N)


cdef inline void delta_row(const real_t *dl, real_t bias, bint softplus,
                           real_t *dt, Py_ssize_t L) noexcept nogil:
    """dt[t] = softplus(dl[t] + bias) (or without softplus)."""
    if real_t is float:
        zm_sel_steps_f(dl, bias, softplus, dt, L)
    else:
        zm_sel_steps_d(dl, bias, softplus, dt, L)


cdef inline void channel_real(const real_t *u, const real_t *dts,
                              const real_t *g, const real_t *A,
                              const real_t *Bp, Py_ssize_t bst,
                              const real_t *Cp, Py_ssize_t cst, real_t Dd,
                              const real_t *h0, real_t *y, real_t *hlast,
                              real_t *work, Py_ssize_t N, Py_ssize_t L,
                              const long long *seq) noexcept nogil:
    """One channel of the real selective scan (_selscan.h), from its steps
    dts and gates g (silu(z), or NULL); work: zm_sel_scratch(N) values;
    seq: the row's sequence ids or NULL."""
    if real_t is float:
        zm_sel_channel_f(u, dts, g, A, Bp, bst, Cp, cst, Dd, h0, y, hlast,
                         work, N, L, seq)
    else:
        zm_sel_channel_d(u, dts, g, A, Bp, bst, Cp, cst, Dd, h0, y, hlast,
                         work, N, L, seq)


cdef void channel_complex(const real_t *u, const real_t *dts, const real_t *g,
                          const real_t *Ar, const real_t *Ai,
                          const real_t *Bpr, const real_t *Bpi, Py_ssize_t bst,
                          const real_t *Cpr, const real_t *Cpi, Py_ssize_t cst,
                          real_t Dd, const real_t *h0r, const real_t *h0i,
                          real_t *y, real_t *hlr, real_t *hli,
                          real_t *hr, real_t *hi, real_t *ar, real_t *ai,
                          Py_ssize_t N, Py_ssize_t L,
                          const long long *seq) noexcept nogil:
    """One channel with complex A (and B, C): y = 2 Re(sum_n C h)."""
    cdef Py_ssize_t t, n
    cdef real_t dt, du, ut, acc, mag, xr, xi, sn, cs
    cdef real_t amax = 0
    cdef const real_t *Btr
    cdef const real_t *Bti
    cdef const real_t *Ctr
    cdef const real_t *Cti
    for n in range(N):
        hr[n] = h0r[n]
        hi[n] = h0i[n]
        if fabs(Ai[n]) > amax:
            amax = fabs(Ai[n])
    for t in range(L):
        if seq != NULL and t > 0 and seq[t] != seq[t - 1]:
            for n in range(N):      # a new sequence: the state is reset
                hr[n] = 0
                hi[n] = 0
        ut = u[t]
        dt = dts[t]
        du = dt * ut
        Btr = Bpr + t * bst
        Bti = Bpi + t * bst
        Ctr = Cpr + t * cst
        Cti = Cpi + t * cst
        # exp(dt A) = exp(dt Re A) (cos(dt Im A) + i sin(dt Im A)): by the
        # vectorised sincos when every angle is in its exact range, else
        # (a huge step or Im A, inf, NaN) by libm
        if fabs(dt) * amax <= vsincos_max(dt):
            for n in range(N):
                mag = vexp(dt * Ar[n])
                vsincos(dt * Ai[n], &sn, &cs)
                ar[n] = mag * cs
                ai[n] = mag * sn
        else:
            for n in range(N):
                mag = vexp(dt * Ar[n])
                ar[n] = mag * cos_t(dt * Ai[n])
                ai[n] = mag * sin_t(dt * Ai[n])
        for n in range(N):
            xr = ar[n] * hr[n] - ai[n] * hi[n] + du * Btr[n]
            xi = ar[n] * hi[n] + ai[n] * hr[n] + du * Bti[n]
            hr[n] = xr
            hi[n] = xi
        acc = 2 * (dot(Ctr, hr, N) - dot(Cti, hi, N)) + Dd * ut
        if g != NULL:
            acc = acc * g[t]
        y[t] = acc
    for n in range(N):
        hlr[n] = hr[n]
        hli[n] = hi[n]


# ---------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t row_offset(Py_ssize_t b, Py_ssize_t d, Py_ssize_t sb,
                                  Py_ssize_t gs, Py_ssize_t sg) noexcept nogil:
    return b * sb + (d // gs) * sg


# Time blocking of the real scan: a thread takes a group of SEL_GROUP
# consecutive channels and walks them through the sequence in blocks of
# SEL_BLOCK steps, every channel of the group through one block before the
# next block. The group's B and C rows of a block (SEL_BLOCK * dstate values
# each) are then read from memory once and from cache by the other channels
# of the group, instead of every channel streaming the whole of B and C (a
# row of 64K steps and dstate 16 is 4 MB: more than the cache). A channel's
# state waits in its row of the last-state output between blocks.
cdef enum:
    SEL_GROUP = 16
    SEL_BLOCK = 1024


cdef inline Py_ssize_t time_block(Py_ssize_t L) noexcept nogil:
    """Steps of a time block of the real scan (see SEL_BLOCK)."""
    return SEL_BLOCK if L > SEL_BLOCK else (L if L > 0 else 1)


cdef inline Py_ssize_t real_scratch(Py_ssize_t N, Py_ssize_t L) noexcept nogil:
    """Elements of scan_real's per-thread scratch: the state and a block
    of decays (zm_sel_scratch), the channel's steps and gates over a time
    block, and a zero state."""
    return zm_sel_scratch(N) + 2 * time_block(L) + N + 1


cdef void scan_real(const real_t *U, const real_t *DL, const real_t *Z,
                    const real_t *A, const real_t *B, Py_ssize_t *bl,
                    const real_t *C, Py_ssize_t *cl, const real_t *Dv,
                    const real_t *bias, bint softplus, const real_t *H0,
                    real_t *Y, real_t *HL, const long long *SEQ,
                    Py_ssize_t batch, Py_ssize_t dim,
                    Py_ssize_t N, Py_ssize_t L, scratch_t *ws) noexcept nogil:
    """All channels, one thread per block of `ws` (real_scratch(N, L)
    elements each). Dynamically scheduled groups of channels (see
    SEL_GROUP).
    """
    cdef Py_ssize_t grp, ch, ch0, ch1, b, d, t0, tb, n, ngroups, TB
    cdef real_t *h
    cdef real_t *dts
    cdef real_t *g
    cdef real_t *zero
    cdef const real_t *hin
    cdef const long long *sq
    TB = time_block(L)
    ngroups = (batch * dim + SEL_GROUP - 1) // SEL_GROUP
    with parallel(num_threads=ws.nthreads):
        h = <real_t *> scratch_block(ws, threadid())
        if h != NULL:
            dts = h + zm_sel_scratch(N)
            g = dts + TB
            zero = g + TB
            for n in range(N):
                zero[n] = 0
            for grp in prange(ngroups, schedule='dynamic'):
                ch0 = grp * SEL_GROUP
                ch1 = ch0 + SEL_GROUP if ch0 + SEL_GROUP < batch * dim \
                    else batch * dim
                # (seqlen 0: one empty block, which copies h0 to the last state)
                t0 = 0
                while t0 == 0 or t0 < L:
                    tb = TB if L - t0 > TB else L - t0
                    for ch in range(ch0, ch1):
                        b = ch // dim
                        d = ch - b * dim
                        sq = NULL if SEQ == NULL else SEQ + b * L
                        # the state entering the block: the initial one, the
                        # previous block's end, or zero at a sequence start
                        if t0 == 0:
                            hin = H0 + ch * N
                        elif sq != NULL and sq[t0] != sq[t0 - 1]:
                            hin = zero
                        else:
                            hin = HL + ch * N
                        delta_row(DL + ch * L + t0,
                                  bias[d] if bias != NULL else 0,
                                  softplus, dts, tb)
                        if Z != NULL:
                            gate_row(Z + ch * L + t0, g, tb)
                        channel_real(U + ch * L + t0, dts,
                                     NULL if Z == NULL else g, A + d * N,
                                     B + row_offset(b, d, bl[0], bl[1], bl[2])
                                     + t0 * bl[3], bl[3],
                                     C + row_offset(b, d, cl[0], cl[1], cl[2])
                                     + t0 * cl[3], cl[3],
                                     Dv[d] if Dv != NULL else 0, hin,
                                     Y + ch * L + t0, HL + ch * N, h,
                                     N, tb, NULL if sq == NULL else sq + t0)
                    t0 = t0 + TB


cdef void scan_complex(const real_t *U, const real_t *DL, const real_t *Z,
                       const real_t *Ar, const real_t *Ai,
                       const real_t *Br, const real_t *Bi, Py_ssize_t *bl,
                       const real_t *Cr, const real_t *Ci, Py_ssize_t *cl,
                       const real_t *Dv, const real_t *bias, bint softplus,
                       const real_t *H0r, const real_t *H0i, real_t *Y,
                       real_t *HLr, real_t *HLi, const long long *SEQ,
                       Py_ssize_t batch,
                       Py_ssize_t dim, Py_ssize_t N, Py_ssize_t L,
                       scratch_t *ws) noexcept nogil:
    """As scan_real; a block of `ws` (4 (N + 1) + 2 L elements) holds the
    four real rows of the complex state, the steps and the gates."""
    cdef Py_ssize_t ch, b, d, ob, oc
    cdef real_t *s
    cdef real_t *dts
    cdef real_t *g
    with parallel(num_threads=ws.nthreads):
        s = <real_t *> scratch_block(ws, threadid())
        if s != NULL:
            dts = s + 4 * (N + 1)
            g = dts + L
            for ch in prange(batch * dim, schedule='dynamic', chunksize=8):
                b = ch // dim
                d = ch - b * dim
                ob = row_offset(b, d, bl[0], bl[1], bl[2])
                oc = row_offset(b, d, cl[0], cl[1], cl[2])
                delta_row(DL + ch * L, bias[d] if bias != NULL else 0,
                          softplus, dts, L)
                if Z != NULL:
                    gate_row(Z + ch * L, g, L)
                channel_complex(U + ch * L, dts, NULL if Z == NULL else g,
                                Ar + d * N, Ai + d * N,
                                Br + ob, Bi + ob, bl[3],
                                Cr + oc, Ci + oc, cl[3],
                                Dv[d] if Dv != NULL else 0,
                                H0r + ch * N, H0i + ch * N,
                                Y + ch * L, HLr + ch * N, HLi + ch * N,
                                s, s + (N + 1), s + 2 * (N + 1),
                                s + 3 * (N + 1), N, L,
                                NULL if SEQ == NULL else SEQ + b * L)


cdef inline bint same3(const real_t[:, :, ::1] a, Py_ssize_t n0, Py_ssize_t n1,
                       Py_ssize_t n2) noexcept:
    return a.shape[0] == n0 and a.shape[1] == n1 and a.shape[2] == n2


cdef object check_layout(Py_ssize_t[::1] lay, Py_ssize_t size,
                         Py_ssize_t batch, Py_ssize_t dim, Py_ssize_t N,
                         Py_ssize_t L, str name):
    """The furthest row a layout addresses must lie inside the buffer."""
    cdef Py_ssize_t last
    if lay.shape[0] != 4 or lay[1] < 1 or lay[0] < 0 or lay[2] < 0 or lay[3] < 0:
        raise ValueError(f"invalid layout for {name}")
    if batch == 0 or dim == 0 or N == 0 or L == 0:
        return
    last = row_offset(batch - 1, dim - 1, lay[0], lay[1], lay[2]) \
        + (L - 1) * lay[3] + N
    if last > size:
        raise ValueError(f"layout of {name} addresses {last} elements, "
                         f"the buffer has {size}")


def selective_scan_real(const real_t[:, :, ::1] u,
                        const real_t[:, :, ::1] delta,
                        const real_t[:, ::1] A,
                        const real_t[::1] B, Py_ssize_t[::1] b_layout,
                        const real_t[::1] C, Py_ssize_t[::1] c_layout,
                        const real_t[:, :, ::1] h0,
                        real_t[:, :, ::1] y, real_t[:, :, ::1] last_state,
                        int num_threads, *, const real_t[::1] D=None,
                        const real_t[::1] delta_bias=None,
                        bint delta_softplus=False,
                        const real_t[:, :, ::1] z=None,
                        const long long[:, ::1] seq=None):
    """Selective scan with real A; D, delta_bias (dim,), z (like u) and
    seq (batch, seqlen) optional.

    `b_layout` / `c_layout` are (sb, gs, sg, st): the row of B for channel
    (b, d) at step t starts at b * sb + (d // gs) * sg + t * st.
    """
    cdef Py_ssize_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2]
    cdef Py_ssize_t N = A.shape[1]
    cdef const real_t *Z = NULL
    cdef const real_t *Dp = NULL
    cdef const real_t *biasp = NULL
    cdef const long long *SEQ = NULL
    cdef Scratch scr
    cdef scratch_t *ws
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    if seq is not None and (seq.shape[0] != batch or seq.shape[1] != L):
        raise ValueError("seq must be (batch, seqlen)")
    if seq is not None and batch > 0 and L > 0:
        SEQ = &seq[0, 0]
    if not (same3(delta, batch, dim, L) and same3(y, batch, dim, L)):
        raise ValueError("u, delta and y must have the same shape")
    if not (same3(h0, batch, dim, N) and same3(last_state, batch, dim, N)):
        raise ValueError("h0 and last_state must be (batch, dim, dstate)")
    if A.shape[0] != dim or (D is not None and D.shape[0] != dim) or (
            delta_bias is not None and delta_bias.shape[0] != dim):
        raise ValueError("A, D and delta_bias must have dim rows")
    check_layout(b_layout, B.shape[0], batch, dim, N, L, "B")
    check_layout(c_layout, C.shape[0], batch, dim, N, L, "C")
    if z is not None and not same3(z, batch, dim, L):
        raise ValueError("z must have the shape of u")
    if batch == 0 or dim == 0:
        return
    if z is not None and L > 0:
        Z = &z[0, 0, 0]
    if D is not None:
        Dp = &D[0]
    if delta_bias is not None:
        biasp = &delta_bias[0]
    scr = Scratch(num_threads, real_scratch(N, L), sizeof(real_t),
                  "the selective scan's per-thread scratch")
    ws = &scr.s
    with nogil:
        scan_real(
            &u[0, 0, 0] if L > 0 else NULL, &delta[0, 0, 0] if L > 0 else NULL,
            Z, &A[0, 0] if N > 0 else NULL,
            &B[0] if B.shape[0] > 0 else NULL, &b_layout[0],
            &C[0] if C.shape[0] > 0 else NULL, &c_layout[0],
            Dp, biasp, delta_softplus,
            &h0[0, 0, 0] if N > 0 else NULL,
            &y[0, 0, 0] if L > 0 else NULL,
            &last_state[0, 0, 0] if N > 0 else NULL, SEQ,
            batch, dim, N, L, ws)
    scr.finish()


def selective_scan_complex(const real_t[:, :, ::1] u,
                           const real_t[:, :, ::1] delta,
                           const real_t[:, ::1] A_re, const real_t[:, ::1] A_im,
                           const real_t[::1] B_re, const real_t[::1] B_im,
                           Py_ssize_t[::1] b_layout,
                           const real_t[::1] C_re, const real_t[::1] C_im,
                           Py_ssize_t[::1] c_layout,
                           const real_t[:, :, ::1] h0_re,
                           const real_t[:, :, ::1] h0_im,
                           real_t[:, :, ::1] y,
                           real_t[:, :, ::1] last_re, real_t[:, :, ::1] last_im,
                           int num_threads, *, const real_t[::1] D=None,
                           const real_t[::1] delta_bias=None,
                           bint delta_softplus=False,
                           const real_t[:, :, ::1] z=None,
                           const long long[:, ::1] seq=None):
    """Selective scan with complex A, parts in separate real arrays."""
    cdef Py_ssize_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2]
    cdef Py_ssize_t N = A_re.shape[1]
    cdef const real_t *Z = NULL
    cdef const real_t *Dp = NULL
    cdef const real_t *biasp = NULL
    cdef const long long *SEQ = NULL
    cdef Scratch scr
    cdef scratch_t *ws
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    if seq is not None and (seq.shape[0] != batch or seq.shape[1] != L):
        raise ValueError("seq must be (batch, seqlen)")
    if seq is not None and batch > 0 and L > 0:
        SEQ = &seq[0, 0]
    if not (same3(delta, batch, dim, L) and same3(y, batch, dim, L)):
        raise ValueError("u, delta and y must have the same shape")
    if not (same3(h0_re, batch, dim, N) and same3(h0_im, batch, dim, N)
            and same3(last_re, batch, dim, N) and same3(last_im, batch, dim, N)):
        raise ValueError("states must be (batch, dim, dstate)")
    if A_im.shape[0] != dim or A_im.shape[1] != N or A_re.shape[0] != dim \
            or (D is not None and D.shape[0] != dim) or (
                delta_bias is not None and delta_bias.shape[0] != dim):
        raise ValueError("A, D and delta_bias must have dim rows")
    if B_re.shape[0] != B_im.shape[0] or C_re.shape[0] != C_im.shape[0]:
        raise ValueError("real and imaginary parts must have equal sizes")
    check_layout(b_layout, B_re.shape[0], batch, dim, N, L, "B")
    check_layout(c_layout, C_re.shape[0], batch, dim, N, L, "C")
    if z is not None and not same3(z, batch, dim, L):
        raise ValueError("z must have the shape of u")
    if batch == 0 or dim == 0:
        return
    if z is not None and L > 0:
        Z = &z[0, 0, 0]
    if D is not None:
        Dp = &D[0]
    if delta_bias is not None:
        biasp = &delta_bias[0]
    scr = Scratch(num_threads, 4 * (N + 1) + 2 * L, sizeof(real_t),
                  "the selective scan's per-thread scratch")
    ws = &scr.s
    with nogil:
        scan_complex(
            &u[0, 0, 0] if L > 0 else NULL, &delta[0, 0, 0] if L > 0 else NULL,
            Z, &A_re[0, 0] if N > 0 else NULL, &A_im[0, 0] if N > 0 else NULL,
            &B_re[0] if B_re.shape[0] > 0 else NULL,
            &B_im[0] if B_im.shape[0] > 0 else NULL, &b_layout[0],
            &C_re[0] if C_re.shape[0] > 0 else NULL,
            &C_im[0] if C_im.shape[0] > 0 else NULL, &c_layout[0],
            Dp, biasp, delta_softplus,
            &h0_re[0, 0, 0] if N > 0 else NULL,
            &h0_im[0, 0, 0] if N > 0 else NULL,
            &y[0, 0, 0] if L > 0 else NULL,
            &last_re[0, 0, 0] if N > 0 else NULL,
            &last_im[0, 0, 0] if N > 0 else NULL, SEQ,
            batch, dim, N, L, ws)
    scr.finish()


# ---------------------------------------------------------------------------
# Causal depthwise convolution
# ---------------------------------------------------------------------------

cdef void conv_channel(const real_t *x, const real_t *w, real_t bias,
                       const real_t *init, real_t *out, Py_ssize_t W,
                       Py_ssize_t L, bint silu) noexcept nogil:
    """out[t] = bias + sum_k w[k] xpad[t + k], xpad = (init[0:W-1], x)."""
    cdef Py_ssize_t t, k, s, head
    cdef real_t wk
    for t in range(L):
        out[t] = bias
    for k in range(W):
        wk = w[k]
        s = W - 1 - k           # this tap reads x[t - s]
        head = s if s < L else L
        for t in range(head):
            out[t] = out[t] + wk * init[t + k]
        for t in range(head, L):
            out[t] = out[t] + wk * x[t - s]
    if silu:
        gate_row(out, out, L)


def causal_conv1d(const real_t[:, :, ::1] x, const real_t[:, ::1] weight,
                  const real_t[::1] bias, const real_t[:, :, ::1] init,
                  real_t[:, :, ::1] out, bint silu, int num_threads):
    """Depthwise causal convolution of every (batch, channel) row."""
    cdef Py_ssize_t batch = x.shape[0], dim = x.shape[1], L = x.shape[2]
    cdef Py_ssize_t W = weight.shape[1], ch, d
    if weight.shape[0] != dim or bias.shape[0] != dim or W < 1:
        raise ValueError("weight must be (dim, width >= 1), bias (dim,)")
    if not (same3(init, batch, dim, W - 1) and same3(out, batch, dim, L)):
        raise ValueError("init must be (batch, dim, width - 1), out like x")
    if batch == 0 or dim == 0 or L == 0:
        return
    cdef const real_t *X = &x[0, 0, 0]
    cdef const real_t *I = &init[0, 0, 0] if W > 1 else NULL
    cdef real_t *O = &out[0, 0, 0]
    with nogil:
        for ch in prange(batch * dim, num_threads=num_threads, schedule='static'):
            d = ch % dim
            conv_channel(X + ch * L, &weight[d, 0], bias[d],
                         NULL if I == NULL else I + ch * (W - 1),
                         O + ch * L, W, L, silu)


cdef extern from "_conv.h" nogil:
    void zm_conv_tm_f(const float *x, Py_ssize_t xrow, const float *wt,
                      const float *bias, const float *init, float *out,
                      Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t dim,
                      Py_ssize_t W, int silu)
    void zm_conv_tm_d(const double *x, Py_ssize_t xrow, const double *wt,
                      const double *bias, const double *init, double *out,
                      Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t dim,
                      Py_ssize_t W, int silu)


cdef inline void conv_rows(const real_t *x, Py_ssize_t xrow, const real_t *wt,
                           const real_t *bias, const real_t *init, real_t *out,
                           Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t dim,
                           Py_ssize_t W, bint silu) noexcept nogil:
    """Time-major rows t0 <= t < t1 of one sequence (the loop of
    _conv.h): x[t * xrow + c] is input (t, c); wt is the weight
    transposed, (W, dim); init is (W - 1, dim), oldest first; out is
    (L, dim) C-contiguous."""
    if real_t is float:
        zm_conv_tm_f(x, xrow, wt, bias, init, out, t0, t1, dim, W, silu)
    else:
        zm_conv_tm_d(x, xrow, wt, bias, init, out, t0, t1, dim, W, silu)


def causal_conv1d_time_major(const real_t[:, :, :] x, const real_t[:, ::1] wt,
                             const real_t[::1] bias, const real_t[:, :, ::1] init,
                             real_t[:, :, ::1] out, bint silu, int num_threads):
    """The convolution of time-major data: x, out (batch, seqlen, dim) with
    contiguous channels (x's rows may be strided), wt (width, dim), init
    (batch, width - 1, dim)."""
    cdef Py_ssize_t batch = x.shape[0], L = x.shape[1], dim = x.shape[2]
    cdef Py_ssize_t W = wt.shape[0], task, b, blk, nblk, t0, t1
    cdef Py_ssize_t xrow, xbat
    if wt.shape[1] != dim or bias.shape[0] != dim or W < 1:
        raise ValueError("wt must be (width >= 1, dim), bias (dim,)")
    if not (same3(init, batch, W - 1, dim) and same3(out, batch, L, dim)):
        raise ValueError("init must be (batch, width - 1, dim), out like x")
    if batch == 0 or dim == 0 or L == 0:
        return
    if x.strides[2] != <Py_ssize_t> sizeof(real_t):
        raise ValueError("x must have contiguous channels")
    xrow = x.strides[1] // <Py_ssize_t> sizeof(real_t)
    xbat = x.strides[0] // <Py_ssize_t> sizeof(real_t)
    # blocks of 64 time steps per task
    nblk = (L + 63) // 64
    cdef const real_t *X = &x[0, 0, 0]
    cdef const real_t *I = &init[0, 0, 0] if W > 1 else NULL
    cdef real_t *O = &out[0, 0, 0]
    with nogil:
        for task in prange(batch * nblk, num_threads=num_threads, schedule='static'):
            b = task // nblk
            blk = task - b * nblk
            t0 = blk * 64
            t1 = t0 + 64 if t0 + 64 < L else L
            conv_rows(X + b * xbat, xrow, &wt[0, 0], &bias[0],
                      NULL if I == NULL else I + b * (W - 1) * dim,
                      O + b * L * dim, t0, t1, dim, W, silu)


cdef void conv_channel_seq(const real_t *x, const long long *seq,
                           const real_t *w, real_t bias, const real_t *init,
                           real_t *out, Py_ssize_t W, Py_ssize_t L,
                           bint silu) noexcept nogil:
    """conv_channel for packed sequences: tap k of output t reads x[t - s]
    only when it is in t's sequence, the initial states only for the first
    sequence; other taps are skipped (never multiplied by zero)."""
    cdef Py_ssize_t t, k, s
    cdef real_t acc
    for t in range(L):
        acc = bias
        for k in range(W):
            s = t - (W - 1 - k)
            if s >= 0:
                if seq[s] == seq[t]:
                    acc = acc + w[k] * x[s]
            elif init != NULL and seq[t] == seq[0]:
                acc = acc + w[k] * init[t + k]
        out[t] = acc
    if silu:
        gate_row(out, out, L)


def causal_conv1d_seq(const real_t[:, :, ::1] x, const long long[:, ::1] seq,
                      const real_t[:, ::1] weight, const real_t[::1] bias,
                      const real_t[:, :, ::1] init, real_t[:, :, ::1] out,
                      bint silu, int num_threads):
    """Depthwise causal convolution of packed sequences, (batch, dim, seqlen)
    with sequence ids seq (batch, seqlen)."""
    cdef Py_ssize_t batch = x.shape[0], dim = x.shape[1], L = x.shape[2]
    cdef Py_ssize_t W = weight.shape[1], ch, d, b
    if weight.shape[0] != dim or bias.shape[0] != dim or W < 1:
        raise ValueError("weight must be (dim, width >= 1), bias (dim,)")
    if not (same3(init, batch, dim, W - 1) and same3(out, batch, dim, L)):
        raise ValueError("init must be (batch, dim, width - 1), out like x")
    if seq.shape[0] != batch or seq.shape[1] != L:
        raise ValueError("seq must be (batch, seqlen)")
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    if batch == 0 or dim == 0 or L == 0:
        return
    cdef const real_t *X = &x[0, 0, 0]
    cdef const long long *S = &seq[0, 0]
    cdef const real_t *I = &init[0, 0, 0] if W > 1 else NULL
    cdef real_t *O = &out[0, 0, 0]
    with nogil:
        for ch in prange(batch * dim, num_threads=num_threads,
                         schedule='static'):
            b = ch // dim
            d = ch - b * dim
            conv_channel_seq(X + ch * L, S + b * L, &weight[d, 0], bias[d],
                             NULL if I == NULL else I + ch * (W - 1),
                             O + ch * L, W, L, silu)


def mamba_step(const real_t[:, ::1] x, const real_t[:, ::1] dt,
               const real_t[:, ::1] A, const real_t[:, ::1] B,
               const real_t[:, ::1] C, const real_t[::1] D,
               const real_t[:, ::1] z, const real_t[::1] dt_bias,
               bint softplus, bint has_D, bint has_z,
               real_t[:, :, ::1] state, real_t[:, ::1] out, int num_threads):
    """One token of Mamba-1's recurrence per (batch, channel): dt' =
    softplus(dt + dt_bias) (or dt + dt_bias), h = exp(dt' A) h + dt' B x
    with the state (batch, dim, N) advanced in place, y = C . h (+ D x),
    times silu(z). x, dt, z, out (batch, dim); A (dim, N); B, C (batch, N);
    D, dt_bias (dim,) (D, z read only with has_D, has_z). Batch rows over
    threads (static), each row's arithmetic the same on any thread."""
    cdef Py_ssize_t batch = x.shape[0], dim = x.shape[1], N = A.shape[1]
    cdef Py_ssize_t b, d
    cdef real_t *work
    cdef real_t *steps
    cdef real_t *gates
    cdef Scratch scr
    cdef scratch_t *ws
    if (dt.shape[0] != batch or dt.shape[1] != dim or A.shape[0] != dim
            or B.shape[0] != batch or B.shape[1] != N or C.shape[0] != batch
            or C.shape[1] != N or dt_bias.shape[0] != dim
            or (has_D and D.shape[0] != dim)
            or (has_z and (z.shape[0] != batch or z.shape[1] != dim))
            or state.shape[0] != batch or state.shape[1] != dim
            or state.shape[2] != N or out.shape[0] != batch
            or out.shape[1] != dim):
        raise ValueError("mamba_step: inconsistent shapes")
    if batch == 0 or dim == 0:
        return
    # per thread: the decays of a block of channels, then the row's steps
    # and gates
    scr = Scratch(num_threads if num_threads < batch else batch,
                  zm_sel_step_scratch(N) + 2 * dim, sizeof(real_t),
                  "the step's per-thread scratch")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        work = <real_t *> scratch_block(ws, threadid())
        for b in prange(batch, schedule='static'):
            if work == NULL:
                continue
            steps = work + zm_sel_step_scratch(N)
            gates = steps + dim
            for d in range(dim):
                steps[d] = dt[b, d] + dt_bias[d]
            if softplus:
                delta_row(steps, 0, True, steps, dim)
            if has_z:
                gate_row(&z[b, 0], gates, dim)
            if real_t is float:
                zm_sel_step_f(&x[b, 0], steps, gates if has_z else NULL, &A[0, 0],
                              &B[b, 0], &C[b, 0], &D[0] if has_D else NULL,
                              &state[b, 0, 0], &out[b, 0], work, dim, N)
            else:
                zm_sel_step_d(&x[b, 0], steps, gates if has_z else NULL, &A[0, 0],
                              &B[b, 0], &C[b, 0], &D[0] if has_D else NULL,
                              &state[b, 0, 0], &out[b, 0], work, dim, N)
    scr.finish()


def conv_update(const real_t[:, :, ::1] x, real_t[:, :, ::1] state,
                const real_t[:, ::1] weight, const real_t[::1] bias,
                real_t[:, :, ::1] out, bint silu, *,
                const Py_ssize_t[::1] rows=None):
    """T tokens of the convolution per (batch, channel): x, out
    (batch, dim, T); state (pool, dim, Wc) with Wc >= width - 1, its last
    width - 1 columns the window, shifted left by T in place (the T new
    inputs enter at the right); batch row b uses state[rows[b]] (state[b]
    without rows; the rows distinct and in range)."""
    cdef Py_ssize_t batch = x.shape[0], dim = x.shape[1], T = x.shape[2]
    cdef Py_ssize_t W = weight.shape[1], Wc = state.shape[2]
    cdef Py_ssize_t pool = state.shape[0], b, d, k, t, r
    cdef real_t acc
    cdef real_t *ext
    cdef real_t *row
    if weight.shape[0] != dim or bias.shape[0] != dim or W < 1:
        raise ValueError("weight must be (dim, width >= 1), bias (dim,)")
    if state.shape[1] != dim or Wc < W - 1 or not same3(out, batch, dim, T):
        raise ValueError("state must be (pool, dim, >= width - 1), out like x")
    if (rows is None and pool != batch) or (rows is not None
                                            and rows.shape[0] != batch):
        raise ValueError("rows must be (batch,), or state (batch, ...) without rows")
    if rows is not None:
        for b in range(batch):
            if not 0 <= rows[b] < pool:
                raise ValueError("rows out of range")
    if batch == 0 or dim == 0 or T == 0:
        return
    ext = <real_t *> malloc((Wc + T) * sizeof(real_t))
    if ext == NULL:
        raise MemoryError("could not allocate the convolution's scratch")
    with nogil:
        for b in range(batch):
            r = rows[b] if rows is not None else b
            for d in range(dim):
                # ext = (state row, new inputs): input j of the extended
                # row is ext[j]; token t sits at Wc + t (a width-1 filter
                # has an empty state row: nothing to read or shift)
                row = &state[r, d, 0] if Wc > 0 else NULL
                for k in range(Wc):
                    ext[k] = row[k]
                for t in range(T):
                    ext[Wc + t] = x[b, d, t]
                for t in range(T):
                    acc = bias[d]
                    for k in range(W):
                        acc = acc + weight[d, k] * ext[Wc + t - (W - 1) + k]
                    if silu:
                        acc = vsilu(acc)
                    out[b, d, t] = acc
                for k in range(Wc):
                    row[k] = ext[T + k]
    free(ext)
