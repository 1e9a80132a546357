# cython: language_level=3
"""Backward kernels that no composition of forward kernels gives.

Design
------
* cauchy_backward: the gradients of out_k = sum_i w_i / (z_k - p_i)
  (+ conj(w_i) / (z_k - conj(p_i)) with ``pairs``) for rows (rows, L) of
  nodes and cotangents and (rows, N) of poles and weights, all complex128
  C-contiguous, passed as their interleaved real views (re, im, ...). With
  D = 1/(z_k - p_i), each row accumulates
      gw_i = sum_k conj(D) c_k,  sp_i = sum_k conj(D)^2 c_k,
      gz_k = -c_k conj(sum_i w_i D^2)
  and the pair terms (antiholomorphic in w and p) with conj(p), conj(w) in
  place of p, w and their gw and sp conjugated, since D' conj(c) =
  conj(conj(D') c) for D' = 1/(z - conj(p)). The caller forms
  gp_i = conj(w_i) sp_i. Per row, the poles and weights go in blocks of
  PB into planar local arrays, so that the loop over a block's poles (one
  reciprocal conj(d)/|d|^2 per term, in double) has no scalar reduction
  and no possible aliasing, and vectorises; the sum over poles for gz is
  taken after it in LANES partial sums. Rows split over threads by a
  static ``prange`` (each row's outputs and scratch are its own).
* segsum_backward: the gradient of s_ij = sum_{j < t <= i} x_t for
  cotangents c (rows, n, n), C-contiguous: gx_t = sum_{i >= t} sum_{j < t}
  c_ij, the sum of a rectangle below the diagonal. Stepping t to t + 1
  adds column t below the diagonal and drops row t left of it, so one
  streaming pass over the strictly lower triangle gathers
  d_t = sum_{i > t} c_it - sum_{j < t} c_tj into the output, and an
  exclusive prefix sum turns d into gx (rows over threads, static). Each
  row's sum is taken in four partial sums: one chain of dependent
  additions would bound the pass by the adder's latency.
* semiseparable_backward: the gradients of the real y_i = C_i . h_i,
  h_i = a_i h_{i-1} + B_i x_i (h_{-1} = 0, states of width r), for rows
  of a, x, c (rows, n) and B, C (rows, n, r), C-contiguous. The adjoint
  states g_i = c_i C_i + a_{i+1} g_{i+1} come first, in a reverse pass
  that writes them into gB; a forward pass then rebuilds h_i in an r-wide
  scratch row and reads g_i once for all four gradients:
      gx_i = B_i . g_i,  ga_i = h_{i-1} . g_i,  gB_i = x_i g_i,
      gC_i = c_i h_i.
  Five streams of n r values against the forward's two (B and C); rows
  over threads (static), each row's outputs and scratch its own.
* diag_discretize_backward: the gradients of the diagonal ZOH and bilinear
  discretisations, elementwise on flat complex128 arrays broadcast by the
  caller and passed as interleaved real views (delta real). All complex
  products are written out in real arithmetic (C99 complex products and
  quotients go through checked library calls that do not vectorise). With z = delta lambda,
    ZOH:  e = exp(z), phi1 = expm1(z)/z, psi = (z e - e + 1)/z^2,
          gA = conj(delta e) cA + conj(delta^2 B psi) cB,
          gB = conj(delta phi1) cB,  gd = Re(conj(lambda e) cA + conj(e B) cB)
    bilinear (alpha):  w = 1/(1 - alpha z),
          gA = delta conj(w^2) (cA + alpha delta conj(B) cB),
          gB = delta conj(w) cB,  gd = Re(conj(w^2) (conj(lambda) cA + conj(B) cB)).
  Inside |z| < 1, phi2 = (e^z - 1 - z)/z^2 is summed as its Taylor series
  (as many terms as |z| needs for 1e-17), phi1 = 1 + z phi2 and
  psi = phi1 - phi2 (no cancellation); beyond, the closed forms; expm1
  of a complex z as expm1(x) cos(y) - 2 sin^2(y/2) + i e^x sin(y).
  delta may repeat along runs of consecutive elements (broadcast along the
  last axis): each run is one task and sums its delta gradient itself.
  Runs over threads (static).
* silu_backward: g = c (s + x s (1 - s)), s = sigmoid(x), elementwise:
  blocks of SBLOCK through one vectorised loop of _vexp.h (on the SiLU
  derivative element of _vmath.h). Where s (1 - s) is 0 (|x| large or
  infinite) the term x s (1 - s) is taken as 0, its limit, so x = +-inf
  gives c or 0, not NaN. Blocks over threads (static).
* scan_backward: the pullback of the real forward scan
  h_t = a_t h_{t-1} + b_t on arrays (P, n, Q), time in the middle (Q = 1:
  time last), all C-contiguous: in one reverse pass per p,
      g_t = c_t + a_{t+1} g_{t+1}  (g_{n-1} = c_{n-1} + c_final),
      gb_t = g_t,  ga_t = g_t h_{t-1}  (h_{-1} = h0, or ga_0 = 0),
      gh0 = a_0 g_0.
  The inner loop runs over q (contiguous, vectorises), so the caller uses
  it when time is not the last axis (Q > 1); p over threads (static).
* scan_backward_rows, cscan_backward_rows: the same pullback for rows
  (P, n) with time last, forward or in reverse (_scanback.h). Real rows:
  the adjoint scan is _scanrow.h's vector scan on the decays as they are,
  one step behind (no shifted, conjugated copy), in blocks of ZM_SBLK
  steps, and ga of each block is formed while its states are in L1.
  Complex rows (interleaved re, im): per block of steps, the adjoint
  states of four rows in lockstep into a local array, then gb and ga row
  by row from it; with ``stream`` (large outputs) gb and ga are written by
  streaming stores. Rows (real) or groups of four (complex) over
  threads (static); the caller keeps the parallel scan for fewer rows than
  threads.
* log_softmax_backward: g = c - exp(y) sum(c) per row (rows, n), y the
  log-softmax (<= 0, so exp(y) <= 1): the row sum in double, then blocks
  through the vectorised exp of _vexp.h into g and one pass of
  arithmetic. Rows over threads (static); the caller takes rows of -inf
  or NaN elsewhere.
* vandermonde_backward: for poles p_i (rows, N) and a vector v (rows, L),
  interleaved complex (or v real), both sums of the Vandermonde pullback
      S0_i = sum_l p_i^l v_l,   S1_i = sum_l l p_i^(l-1) v_l
           = sum_m p_i^m (m + 1) v_(m+1)
  from one table of powers: poles in groups of VG, powers in blocks of VB.
  Per group, T[j, i] = p_i^j (j < VB) is built in double by doubling
  (p^(2^k) = exp(2^k log p), each step multiplying the powers so far), so
  no power is more than log2(VB) products from an exponential; each block
  of VB powers starting at l0 is summed against the table and its sum
  multiplied by the anchor p^l0 = exp(l0 log p). log|p| by log1p near the
  unit circle. (row, group) tasks over threads (static).
* causal_conv1d_backward: the pullback of the causal convolution
  y_t = b + sum_k w_k x~_{t+k} (x~ the inputs after width-1 initial
  states) for g the cotangent of the pre-activation, (batch, dim, L):
      gw_k = sum_{b,t} g_t x~_{t+k},  gb = sum_{b,t} g_t,
      gx~_s = sum_k w_k g_{s-k} (+ the final-state cotangent on the last
      width-1 entries of x~),
  gx~ split into gx and the initial states' gradient. Channels over
  threads (static): each channel sums its own gw and gb over batch and
  time in a fixed order (ZM_CONV_LANES partial sums, _conv.h), in the input
  precision.
  With SiLU, g = dy silu'(pre) is formed row by row in scratch
  (silu_back_block); gx~ accumulates in the scratch row of x~, k in order.
* causal_conv1d_backward_time_major: the same pullback (without initial
  or final states) for time-major data, (batch, L, dim) with contiguous
  channels, rows possibly strided (slices of a wider activation). Tasks
  of TBLOCK steps of one sequence over threads (static); a task
  (_conv.h) forms g silu'(pre) for its steps and the width-1 after
  them in scratch, writes its rows of
  gx_t = sum_k w_k g_{t+W-1-k}, and sums its gw and gb into its own row
  of partials; the partials are added in task order, in double (the
  result does not depend on the thread count).
* rms_norm_backward: the pullback of the grouped, optionally gated RMS
  norm for rows (rows, C), all C-contiguous; per group of G channels, with
  v = x (or x silu(z) when the gate comes first), r = 1/sqrt(mean(v^2) +
  eps) (sum in double), n = v r, q = dy (times silu(z) when the gate comes
  after the norm) and dn = q w:
      dv = r (dn - n mean(dn n)),  gw += q n,
  then gx, gz by the chain rule through the gate. Rows in fixed blocks
  over threads (static); gw is summed in double per block into a row of
  partials, which the caller reduces in order.
"""
from cython.parallel cimport parallel, prange, threadid

from libc.math cimport atan2, cos, exp, expm1, hypot, log, log1p, sin, sqrt

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block
from zilla_muf._types cimport real_t

cdef enum:
    LANES = 4
    PB = 64


cdef inline double lane_sum(const double *q, Py_ssize_t n) noexcept nogil:
    """sum(q[:n]) in LANES independent partial sums."""
    cdef double acc[LANES]
    cdef Py_ssize_t i = 0
    cdef int j
    cdef double total = 0.0
    for j in range(LANES):
        acc[j] = 0.0
    while i + LANES <= n:
        for j in range(LANES):
            acc[j] += q[i + j]
        i += LANES
    while i < n:
        acc[0] += q[i]
        i += 1
    for j in range(LANES):
        total += acc[j]
    return total


cdef void cauchy_row(const double *z, const double *p, const double *w,
                     const double *c, Py_ssize_t L, Py_ssize_t N, int pairs,
                     double *gz, double *gw, double *sp) noexcept nogil:
    """One row, poles in blocks of PB held in local arrays (no aliasing, so
    the loop over a block's poles vectorises)."""
    cdef double pr[PB]
    cdef double pim[PB]
    cdef double wr[PB]
    cdef double wim[PB]
    cdef double gwr[PB]
    cdef double gwi[PB]
    cdef double spr[PB]
    cdef double spi[PB]
    cdef double qr[PB]
    cdef double qi[PB]
    cdef Py_ssize_t k, i, i0, nb
    cdef int half, npass = 2 if pairs else 1
    cdef double zr, zi, cr, ci, tzr, tzi, sgn
    cdef double dr, di, m, Dr, Di, D2r, D2i
    for k in range(2 * L):
        gz[k] = 0.0
    for i in range(2 * N):
        gw[i] = 0.0
        sp[i] = 0.0
    for half in range(npass):
        # the pair's pass: conj(p) and conj(w), then conj(gw), conj(sp):
        # conj(conj(D') c) = D' conj(c)
        sgn = -1.0 if half else 1.0
        i0 = 0
        while i0 < N:
            nb = N - i0 if N - i0 < PB else PB
            for i in range(nb):
                pr[i] = p[2 * (i0 + i)]
                pim[i] = sgn * p[2 * (i0 + i) + 1]
                wr[i] = w[2 * (i0 + i)]
                wim[i] = sgn * w[2 * (i0 + i) + 1]
                gwr[i] = 0.0
                gwi[i] = 0.0
                spr[i] = 0.0
                spi[i] = 0.0
            for k in range(L):
                zr = z[2 * k]
                zi = z[2 * k + 1]
                cr = c[2 * k]
                ci = c[2 * k + 1]
                for i in range(nb):
                    dr = zr - pr[i]
                    di = zi - pim[i]
                    m = 1.0 / (dr * dr + di * di)
                    Dr = dr * m
                    Di = -di * m
                    D2r = Dr * Dr - Di * Di
                    D2i = 2.0 * Dr * Di
                    gwr[i] += Dr * cr + Di * ci
                    gwi[i] += Dr * ci - Di * cr
                    spr[i] += D2r * cr + D2i * ci
                    spi[i] += D2r * ci - D2i * cr
                    qr[i] = wr[i] * D2r - wim[i] * D2i
                    qi[i] = wr[i] * D2i + wim[i] * D2r
                tzr = lane_sum(qr, nb)
                tzi = lane_sum(qi, nb)
                # gz = -c conj(t)
                gz[2 * k] -= cr * tzr + ci * tzi
                gz[2 * k + 1] -= ci * tzr - cr * tzi
            for i in range(nb):
                gw[2 * (i0 + i)] += gwr[i]
                gw[2 * (i0 + i) + 1] += sgn * gwi[i]
                sp[2 * (i0 + i)] += spr[i]
                sp[2 * (i0 + i) + 1] += sgn * spi[i]
            i0 += nb


def cauchy_backward(const double[:, ::1] z, const double[:, ::1] p,
                    const double[:, ::1] w, const double[:, ::1] c, bint pairs,
                    double[:, ::1] gz, double[:, ::1] gw, double[:, ::1] sp,
                    int num_threads):
    """Fill gz (rows, 2L), gw and sp (rows, 2N); see the module's Design."""
    cdef Py_ssize_t rows = z.shape[0]
    cdef Py_ssize_t L = z.shape[1] // 2
    cdef Py_ssize_t N = p.shape[1] // 2
    cdef Py_ssize_t r
    cdef int ip = 1 if pairs else 0
    if (p.shape[0] != rows or w.shape[0] != rows or c.shape[0] != rows
            or gz.shape[0] != rows or gw.shape[0] != rows or sp.shape[0] != rows
            or w.shape[1] != 2 * N or c.shape[1] != 2 * L or gz.shape[1] != 2 * L
            or gw.shape[1] != 2 * N or sp.shape[1] != 2 * N):
        raise ValueError("cauchy_backward: inconsistent shapes")
    if rows == 0 or L == 0 or N == 0:
        gz[:, :] = 0.0
        gw[:, :] = 0.0
        sp[:, :] = 0.0
        return
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule="static"):
            cauchy_row(&z[r, 0], &p[r, 0], &w[r, 0], &c[r, 0], L, N, ip,
                       &gz[r, 0], &gw[r, 0], &sp[r, 0])


cdef void segsum_back_row(const real_t *c, Py_ssize_t n,
                          real_t *g) noexcept nogil:
    """g = the segsum gradient of one (n, n) cotangent (see Design)."""
    cdef Py_ssize_t i, j
    cdef real_t s, run, d, s0, s1, s2, s3, v0, v1, v2, v3
    cdef const real_t *row
    for j in range(n):
        g[j] = 0
    for i in range(1, n):
        # one pass over row i left of the diagonal: its sum in four
        # partial sums (four independent chains of additions) and its
        # entries into the column sums
        row = c + i * n
        s0 = 0
        s1 = 0
        s2 = 0
        s3 = 0
        j = 0
        while j + 4 <= i:
            v0 = row[j]
            v1 = row[j + 1]
            v2 = row[j + 2]
            v3 = row[j + 3]
            s0 = s0 + v0
            s1 = s1 + v1
            s2 = s2 + v2
            s3 = s3 + v3
            g[j] += v0
            g[j + 1] += v1
            g[j + 2] += v2
            g[j + 3] += v3
            j += 4
        while j < i:
            s0 = s0 + row[j]
            g[j] += row[j]
            j += 1
        s = (s0 + s1) + (s2 + s3)
        g[i] -= s
    run = 0
    for j in range(n):
        d = g[j]
        g[j] = run
        run = run + d


def segsum_backward(const real_t[:, :, ::1] c, real_t[:, ::1] g, int num_threads):
    """Fill g (rows, n) with the segsum gradient of c (rows, n, n)."""
    cdef Py_ssize_t rows = c.shape[0]
    cdef Py_ssize_t n = c.shape[1]
    cdef Py_ssize_t r
    if c.shape[2] != n or g.shape[0] != rows or g.shape[1] != n:
        raise ValueError("segsum_backward: inconsistent shapes")
    if rows == 0 or n == 0:
        return
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule="static"):
            segsum_back_row(&c[r, 0, 0], n, &g[r, 0])


cdef void semiseparable_back_row(
        const real_t *a, const real_t *B, const real_t *C, const real_t *x,
        const real_t *c, Py_ssize_t n, Py_ssize_t r, real_t *ga, real_t *gB,
        real_t *gC, real_t *gx, real_t *h) noexcept nogil:
    """One row of semiseparable_backward (see Design); h: r scratch values."""
    cdef Py_ssize_t i, k
    cdef real_t ci, an, xi, dx, da
    cdef real_t *g
    cdef real_t *gn
    # adjoint states, last step first
    for i in range(n - 1, -1, -1):
        ci = c[i]
        g = gB + i * r
        if i == n - 1:
            for k in range(r):
                g[k] = ci * C[i * r + k]
        else:
            an = a[i + 1]
            gn = gB + (i + 1) * r
            for k in range(r):
                g[k] = ci * C[i * r + k] + an * gn[k]
    # forward states, and every gradient from g_i and h_{i-1}
    for k in range(r):
        h[k] = 0
    for i in range(n):
        g = gB + i * r
        xi = x[i]
        dx = 0
        da = 0
        for k in range(r):
            dx = dx + B[i * r + k] * g[k]
            da = da + h[k] * g[k]
        gx[i] = dx
        ga[i] = da
        ci = c[i]
        an = a[i]
        for k in range(r):
            h[k] = an * h[k] + B[i * r + k] * xi
            gC[i * r + k] = ci * h[k]
            g[k] = xi * g[k]


def semiseparable_backward(const real_t[:, ::1] a, const real_t[:, ::1] B,
                           const real_t[:, ::1] C, const real_t[:, ::1] x,
                           const real_t[:, ::1] c, real_t[:, ::1] ga,
                           real_t[:, ::1] gB, real_t[:, ::1] gC, real_t[:, ::1] gx,
                           real_t[:, ::1] work, int num_threads):
    """Fill ga, gx (rows, n), gB, gC (rows, n*r); work is (rows, r) scratch."""
    cdef Py_ssize_t rows = a.shape[0]
    cdef Py_ssize_t n = a.shape[1]
    cdef Py_ssize_t r = work.shape[1]
    cdef Py_ssize_t row
    cdef Py_ssize_t nr = n * r
    if (x.shape[0] != rows or c.shape[0] != rows or B.shape[0] != rows
            or C.shape[0] != rows or ga.shape[0] != rows or gB.shape[0] != rows
            or gC.shape[0] != rows or gx.shape[0] != rows or work.shape[0] != rows
            or x.shape[1] != n or c.shape[1] != n or ga.shape[1] != n
            or gx.shape[1] != n or B.shape[1] != nr or C.shape[1] != nr
            or gB.shape[1] != nr or gC.shape[1] != nr):
        raise ValueError("semiseparable_backward: inconsistent shapes")
    if rows == 0 or n == 0 or r == 0:
        ga[:, :] = 0
        gx[:, :] = 0
        return
    with nogil:
        for row in prange(rows, num_threads=num_threads, schedule="static"):
            semiseparable_back_row(&a[row, 0], &B[row, 0], &C[row, 0], &x[row, 0],
                                   &c[row, 0], n, r, &ga[row, 0], &gB[row, 0],
                                   &gC[row, 0], &gx[row, 0], &work[row, 0])


cdef enum:
    DBLOCK = 4096
    NSERIES = 20


cdef double _INV_FACT[NSERIES + 3]


cdef void _init_factorials():
    cdef int k
    _INV_FACT[0] = 1.0
    for k in range(1, NSERIES + 3):
        _INV_FACT[k] = _INV_FACT[k - 1] / k


_init_factorials()


cdef inline void phi_psi(double zr, double zi, double er, double ei,
                         double *p1r, double *p1i, double *psr,
                         double *psi) noexcept nogil:
    """phi1 = expm1(z)/z and psi = (z e^z - e^z + 1)/z^2 (e = e^z), in real
    arithmetic (see the Design)."""
    cdef double r2 = zr * zr + zi * zi
    cdef double qr, qi, t, h, nr, ni, m
    cdef int k
    if r2 < 1.0:
        k = 11 if r2 < 0.0625 else (14 if r2 < 0.25 else NSERIES)
        qr = 0.0
        qi = 0.0
        while k >= 0:
            t = qr * zr - qi * zi + _INV_FACT[k + 2]
            qi = qr * zi + qi * zr
            qr = t
            k -= 1
        # phi1 = 1 + z phi2, psi = phi1 - phi2
        p1r[0] = 1.0 + (zr * qr - zi * qi)
        p1i[0] = zr * qi + zi * qr
        psr[0] = p1r[0] - qr
        psi[0] = p1i[0] - qi
    else:
        m = 1.0 / r2
        h = sin(0.5 * zi)
        nr = expm1(zr) * cos(zi) - 2.0 * h * h
        ni = exp(zr) * sin(zi)
        # phi1 = n / z, psi = (e - phi1) / z, |z| >= 1
        p1r[0] = (nr * zr + ni * zi) * m
        p1i[0] = (ni * zr - nr * zi) * m
        nr = er - p1r[0]
        ni = ei - p1i[0]
        psr[0] = (nr * zr + ni * zi) * m
        psi[0] = (ni * zr - nr * zi) * m


def diag_discretize_backward(int zoh, double alpha, const double[::1] lam,
                             const double[::1] B, const double[::1] d,
                             const double[::1] cA, const double[::1] cB,
                             double[::1] gA, double[::1] gB, double[::1] gd,
                             int num_threads):
    """Fill gA, gB (n complex, interleaved: 2n reals) and gd; zoh=1 for ZOH,
    0 for bilinear(alpha).

    d and gd have length n // rep: runs of rep consecutive elements share
    one step (a delta broadcast along the last axis), and gd sums over each
    run, so a run is one task.
    """
    cdef Py_ssize_t n = lam.shape[0] // 2, nd = d.shape[0], rep, row, i, i0
    cdef double di, acc, lr, li, br, bi, car, cai, cbr, cbi, zr, zi
    cdef double er, ei, ex, p1r, p1i, psr, psi, xr, xi, tr, ti, ur, ui
    cdef double denr, deni, m, wr, wi, w2r, w2i
    if lam.shape[0] % 2 or (nd == 0 and n != 0) or (nd != 0 and n % nd != 0):
        raise ValueError("diag_discretize_backward: inconsistent shapes")
    if n == 0:
        return
    rep = n // nd
    if (B.shape[0] != 2 * n or cA.shape[0] != 2 * n or cB.shape[0] != 2 * n
            or gA.shape[0] != 2 * n or gB.shape[0] != 2 * n or gd.shape[0] != nd):
        raise ValueError("diag_discretize_backward: inconsistent shapes")
    with nogil:
        for row in prange(nd, num_threads=num_threads, schedule="static"):
            di = d[row]
            acc = 0
            i0 = row * rep
            for i in range(i0, i0 + rep):
                lr = lam[2 * i]
                li = lam[2 * i + 1]
                br = B[2 * i]
                bi = B[2 * i + 1]
                car = cA[2 * i]
                cai = cA[2 * i + 1]
                cbr = cB[2 * i]
                cbi = cB[2 * i + 1]
                zr = di * lr
                zi = di * li
                if zoh:
                    ex = exp(zr)
                    er = ex * cos(zi)
                    ei = ex * sin(zi)
                    p1r = 0
                    p1i = 0
                    psr = 0
                    psi = 0
                    phi_psi(zr, zi, er, ei, &p1r, &p1i, &psr, &psi)
                    # b psi, then gA = d conj(e) cA + d^2 conj(b psi) cB
                    xr = br * psr - bi * psi
                    xi = br * psi + bi * psr
                    gA[2 * i] = di * (er * car + ei * cai) + di * di * (xr * cbr + xi * cbi)
                    gA[2 * i + 1] = di * (er * cai - ei * car) + di * di * (xr * cbi - xi * cbr)
                    gB[2 * i] = di * (p1r * cbr + p1i * cbi)
                    gB[2 * i + 1] = di * (p1r * cbi - p1i * cbr)
                    # Re(conj(lambda e) cA + conj(e b) cB)
                    xr = lr * er - li * ei
                    xi = lr * ei + li * er
                    tr = er * br - ei * bi
                    ti = er * bi + ei * br
                    acc = acc + (xr * car + xi * cai) + (tr * cbr + ti * cbi)
                else:
                    denr = 1.0 - alpha * zr
                    deni = -alpha * zi
                    m = 1.0 / (denr * denr + deni * deni)
                    wr = denr * m
                    wi = -deni * m
                    w2r = wr * wr - wi * wi
                    w2i = 2.0 * wr * wi
                    # t = conj(b) cB, u = cA + alpha d t; gA = d conj(w^2) u
                    tr = br * cbr + bi * cbi
                    ti = br * cbi - bi * cbr
                    ur = car + alpha * di * tr
                    ui = cai + alpha * di * ti
                    gA[2 * i] = di * (w2r * ur + w2i * ui)
                    gA[2 * i + 1] = di * (w2r * ui - w2i * ur)
                    gB[2 * i] = di * (wr * cbr + wi * cbi)
                    gB[2 * i + 1] = di * (wr * cbi - wi * cbr)
                    # Re(conj(w^2) (conj(lambda) cA + t))
                    xr = lr * car + li * cai + tr
                    xi = lr * cai - li * car + ti
                    acc = acc + (w2r * xr + w2i * xi)
            gd[row] = acc


cdef extern from "_vexp.h" nogil:
    void zm_sigmoid_f(const float *x, float *out, Py_ssize_t n)
    void zm_sigmoid_d(const double *x, double *out, Py_ssize_t n)
    void zm_silu_back_f(const float *x, const float *c, float *g, Py_ssize_t n)
    void zm_silu_back_d(const double *x, const double *c, double *g,
                        Py_ssize_t n)

cdef enum:
    SBLOCK = 512


cdef inline void silu_back_block(const real_t *x, const real_t *c, real_t *g,
                                 Py_ssize_t n) noexcept nogil:
    """g = c silu'(x) for n elements (the vectorised loop of _vexp.h)."""
    if real_t is float:
        zm_silu_back_f(x, c, g, n)
    else:
        zm_silu_back_d(x, c, g, n)


def silu_backward(const real_t[::1] x, const real_t[::1] c, real_t[::1] g,
                  int num_threads):
    """Fill g with c * silu'(x) (flat arrays of one length)."""
    cdef Py_ssize_t n = x.shape[0], nblk, blk, i0
    if c.shape[0] != n or g.shape[0] != n:
        raise ValueError("silu_backward: inconsistent shapes")
    if n == 0:
        return
    nblk = (n + SBLOCK - 1) // SBLOCK
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule="static"):
            i0 = blk * SBLOCK
            silu_back_block(&x[i0], &c[i0], &g[i0],
                            SBLOCK if n - i0 > SBLOCK else n - i0)


cdef void scan_back_cols(const real_t *a, const real_t *h, const real_t *c,
                         const real_t *cf, const real_t *h0, Py_ssize_t n,
                         Py_ssize_t Q, real_t *ga, real_t *gb,
                         real_t *gh0) noexcept nogil:
    """One p of scan_backward: rows of Q values, time t at offset t Q."""
    cdef Py_ssize_t t, q, o
    cdef real_t g
    o = (n - 1) * Q
    for q in range(Q):
        gb[o + q] = c[o + q] + (cf[q] if cf != NULL else 0)
    for t in range(n - 1, -1, -1):
        o = t * Q
        if t < n - 1:
            for q in range(Q):
                gb[o + q] = c[o + q] + a[o + Q + q] * gb[o + Q + q]
        if t > 0:
            for q in range(Q):
                ga[o + q] = gb[o + q] * h[o - Q + q]
    for q in range(Q):
        ga[q] = gb[q] * h0[q] if h0 != NULL else 0
        gh0[q] = a[q] * gb[q]


def scan_backward(const real_t[:, :, ::1] a, const real_t[:, :, ::1] h,
                  const real_t[:, :, ::1] c, const real_t[:, ::1] cf,
                  const real_t[:, ::1] h0, bint has_cf, bint has_h0,
                  real_t[:, :, ::1] ga, real_t[:, :, ::1] gb,
                  real_t[:, ::1] gh0, int num_threads):
    """Fill ga, gb (P, n, Q) and gh0 (P, Q); cf, h0 (P, Q) are read only
    when has_cf, has_h0 (see the module's Design)."""
    cdef Py_ssize_t P = a.shape[0], n = a.shape[1], Q = a.shape[2]
    cdef Py_ssize_t p
    if (h.shape[0] != P or h.shape[1] != n or h.shape[2] != Q
            or c.shape[0] != P or c.shape[1] != n or c.shape[2] != Q
            or ga.shape[0] != P or ga.shape[1] != n or ga.shape[2] != Q
            or gb.shape[0] != P or gb.shape[1] != n or gb.shape[2] != Q
            or gh0.shape[0] != P or gh0.shape[1] != Q
            or (has_cf and (cf.shape[0] != P or cf.shape[1] != Q))
            or (has_h0 and (h0.shape[0] != P or h0.shape[1] != Q))):
        raise ValueError("scan_backward: inconsistent shapes")
    if P == 0 or Q == 0:
        return
    if n == 0:
        # no steps: the final state is h0, its cotangent passes through
        if has_cf:
            gh0[:, :] = cf
        else:
            gh0[:, :] = 0
        return
    with nogil:
        for p in prange(P, num_threads=num_threads, schedule="static"):
            scan_back_cols(&a[p, 0, 0], &h[p, 0, 0], &c[p, 0, 0],
                           &cf[p, 0] if has_cf else NULL,
                           &h0[p, 0] if has_h0 else NULL, n, Q,
                           &ga[p, 0, 0], &gb[p, 0, 0], &gh0[p, 0])


cdef enum:
    VG = 32      # poles per table
    VB = 256     # powers per block


cdef inline void log_pole(double re, double im, double *lr,
                          double *li) noexcept nogil:
    """log(re + i im); log|z| from |z|^2 - 1 by log1p when |z| is near 1."""
    cdef double r2 = re * re + im * im
    li[0] = atan2(im, re)
    if 0.5 < r2 < 2.0:
        lr[0] = 0.5 * log1p((re - 1.0) * (re + 1.0) + im * im)
    else:
        lr[0] = log(hypot(re, im))


cdef inline void pow_from_log(double lr, double li, double t, double *er,
                              double *ei) noexcept nogil:
    """exp(t (lr + i li)); t = 0 gives 1 (0^0 = 1)."""
    cdef double mag
    if t == 0:
        er[0] = 1.0
        ei[0] = 0.0
    else:
        mag = exp(t * lr)
        er[0] = mag * cos(t * li)
        ei[0] = mag * sin(t * li)


cdef void vdm_back_task(const double *p, Py_ssize_t ng, const double *v,
                        Py_ssize_t L, bint real_v, double *s0, double *s1,
                        double *Tr) noexcept nogil:
    """S0 and S1 (interleaved) of ng <= VG poles; see the Design. Tr: the
    power table, 2 VG VB values."""
    cdef double *Ti
    cdef double lr[VG]
    cdef double li[VG]
    cdef double ar[VG]
    cdef double ai[VG]
    cdef double br[VG]
    cdef double bi[VG]
    cdef double S0r[VG]
    cdef double S0i[VG]
    cdef double S1r[VG]
    cdef double S1i[VG]
    cdef double qr, qi, xr, xi, v0r, v0i, v1r, v1i, er, ei, f, tr, ti
    cdef Py_ssize_t i, j, k, l0, m
    Ti = Tr + VG * VB
    # the table T[j * VG + i] = p_i^j by doubling
    for i in range(ng):
        log_pole(p[2 * i], p[2 * i + 1], &lr[i], &li[i])
        Tr[i] = 1.0
        Ti[i] = 0.0
        k = 1
        while k < VB:
            pow_from_log(lr[i], li[i], <double> k, &qr, &qi)
            for j in range(k if k < VB - k else VB - k):
                xr = Tr[j * VG + i]
                xi = Ti[j * VG + i]
                Tr[(k + j) * VG + i] = xr * qr - xi * qi
                Ti[(k + j) * VG + i] = xr * qi + xi * qr
            k = 2 * k
        S0r[i] = 0
        S0i[i] = 0
        S1r[i] = 0
        S1i[i] = 0
    for i in range(ng, VG):
        for j in range(VB):
            Tr[j * VG + i] = 0
            Ti[j * VG + i] = 0
    l0 = 0
    while l0 < L:
        m = L - l0 if L - l0 < VB else VB
        for i in range(VG):
            ar[i] = 0
            ai[i] = 0
            br[i] = 0
            bi[i] = 0
        for j in range(m):
            # v_l and (l + 1) v_(l+1) at l = l0 + j
            f = <double> (l0 + j + 1)
            if real_v:
                v0r = v[l0 + j]
                v1r = f * v[l0 + j + 1] if l0 + j + 1 < L else 0.0
                for i in range(VG):
                    tr = Tr[j * VG + i]
                    ti = Ti[j * VG + i]
                    ar[i] += tr * v0r
                    ai[i] += ti * v0r
                    br[i] += tr * v1r
                    bi[i] += ti * v1r
            else:
                v0r = v[2 * (l0 + j)]
                v0i = v[2 * (l0 + j) + 1]
                if l0 + j + 1 < L:
                    v1r = f * v[2 * (l0 + j + 1)]
                    v1i = f * v[2 * (l0 + j + 1) + 1]
                else:
                    v1r = 0.0
                    v1i = 0.0
                for i in range(VG):
                    tr = Tr[j * VG + i]
                    ti = Ti[j * VG + i]
                    ar[i] += tr * v0r - ti * v0i
                    ai[i] += tr * v0i + ti * v0r
                    br[i] += tr * v1r - ti * v1i
                    bi[i] += tr * v1i + ti * v1r
        for i in range(ng):
            er = 0
            ei = 0
            pow_from_log(lr[i], li[i], <double> l0, &er, &ei)
            S0r[i] += er * ar[i] - ei * ai[i]
            S0i[i] += er * ai[i] + ei * ar[i]
            S1r[i] += er * br[i] - ei * bi[i]
            S1i[i] += er * bi[i] + ei * br[i]
        l0 += m
    for i in range(ng):
        s0[2 * i] = S0r[i]
        s0[2 * i + 1] = S0i[i]
        s1[2 * i] = S1r[i]
        s1[2 * i + 1] = S1i[i]


def vandermonde_backward(const double[:, ::1] poles, const double[:, ::1] v,
                         bint real_v, double[:, ::1] s0, double[:, ::1] s1,
                         int num_threads):
    """S0 and S1 (rows, 2N interleaved) of poles (rows, 2N) and v (rows, L)
    real or (rows, 2L) interleaved complex; see the module's Design."""
    cdef Py_ssize_t rows = poles.shape[0], N = poles.shape[1] // 2
    cdef Py_ssize_t L = v.shape[1] if real_v else v.shape[1] // 2
    cdef Py_ssize_t ngroups = (N + VG - 1) // VG
    cdef Py_ssize_t task, r, g, ng
    cdef Scratch scr
    cdef scratch_t *ws
    cdef double *tab
    if (v.shape[0] != rows or s0.shape[0] != rows or s1.shape[0] != rows
            or s0.shape[1] != 2 * N or s1.shape[1] != 2 * N
            or poles.shape[1] != 2 * N or (not real_v and v.shape[1] % 2)):
        raise ValueError("vandermonde_backward: inconsistent shapes")
    if rows == 0 or N == 0:
        return
    if L == 0:
        s0[:, :] = 0
        s1[:, :] = 0
        return
    scr = Scratch(num_threads, 2 * VG * VB, sizeof(double),
                  "vandermonde_backward's power tables")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        tab = <double *> scratch_block(ws, threadid())
        for task in prange(rows * ngroups, schedule="static"):
            if tab == NULL:
                continue
            r = task // ngroups
            g = task - r * ngroups
            ng = N - g * VG if N - g * VG < VG else VG
            vdm_back_task(&poles[r, 2 * g * VG], ng, &v[r, 0], L, real_v,
                          &s0[r, 2 * g * VG], &s1[r, 2 * g * VG], tab)
    scr.finish()


cdef extern from "_scanback.h" nogil:
    void zm_scanback_f(const float *a, const float *h, const float *c,
                       float *ga, float *gb, Py_ssize_t n, float cf, float h0,
                       int has_h0, int rev, float *gh0)
    void zm_scanback_d(const double *a, const double *h, const double *c,
                       double *ga, double *gb, Py_ssize_t n, double cf,
                       double h0, int has_h0, int rev, double *gh0)
    void zm_cscanback_f(int K, const float *a, const float *h, const float *c,
                        float *ga, float *gb, Py_ssize_t rs, Py_ssize_t n,
                        const float *cf, const float *h0, int rev, float *gh0,
                        int nt)
    void zm_cscanback_d(int K, const double *a, const double *h,
                        const double *c, double *ga, double *gb, Py_ssize_t rs,
                        Py_ssize_t n, const double *cf, const double *h0,
                        int rev, double *gh0, int nt)
    int ZM_CLANES


def scan_backward_rows(const real_t[:, ::1] a, const real_t[:, ::1] h,
                       const real_t[:, ::1] c, const real_t[::1] cf,
                       const real_t[::1] h0, bint has_cf, bint has_h0,
                       bint rev, real_t[:, ::1] ga, real_t[:, ::1] gb,
                       real_t[::1] gh0, int num_threads):
    """The pullback of the real scan along rows (P, n), time last (forward,
    or in reverse when rev), in one pass per row (_scanback.h): fill ga, gb
    (P, n) and gh0 (P,); cf, h0 (P,) are read only when has_cf, has_h0."""
    cdef Py_ssize_t P = a.shape[0], n = a.shape[1]
    cdef Py_ssize_t p
    cdef real_t cfv, h0v
    if (h.shape[0] != P or h.shape[1] != n or c.shape[0] != P
            or c.shape[1] != n or ga.shape[0] != P or ga.shape[1] != n
            or gb.shape[0] != P or gb.shape[1] != n or gh0.shape[0] != P
            or (has_cf and cf.shape[0] != P) or (has_h0 and h0.shape[0] != P)):
        raise ValueError("scan_backward_rows: inconsistent shapes")
    if P == 0 or n == 0:
        return
    with nogil:
        for p in prange(P, num_threads=num_threads, schedule="static"):
            cfv = cf[p] if has_cf else 0
            h0v = h0[p] if has_h0 else 0
            if real_t is float:
                zm_scanback_f(&a[p, 0], &h[p, 0], &c[p, 0], &ga[p, 0],
                              &gb[p, 0], n, cfv, h0v, has_h0, rev, &gh0[p])
            else:
                zm_scanback_d(&a[p, 0], &h[p, 0], &c[p, 0], &ga[p, 0],
                              &gb[p, 0], n, cfv, h0v, has_h0, rev, &gh0[p])


def cscan_backward_rows(const real_t[:, ::1] a, const real_t[:, ::1] h,
                        const real_t[:, ::1] c, const real_t[:, ::1] cf,
                        const real_t[:, ::1] h0, bint has_cf, bint has_h0,
                        bint rev, real_t[:, ::1] ga, real_t[:, ::1] gb,
                        real_t[:, ::1] gh0, int num_threads, bint stream=False):
    """The pullback of the complex scan along rows, time last, on the
    interleaved real views (P, 2n) of a, h, c, ga, gb and (P, 2) of cf, h0,
    gh0: rows in groups of ZM_CLANES in lockstep (_scanback.h), groups over
    threads. With stream, ga and gb are written by streaming stores."""
    cdef Py_ssize_t P = a.shape[0], n2 = a.shape[1], n = a.shape[1] // 2
    cdef Py_ssize_t g, ngroups = (P + ZM_CLANES - 1) // ZM_CLANES, p0
    cdef int K
    if ZM_CLANES != 4:
        raise RuntimeError("cscan_backward_rows: lane count mismatch")
    if (n2 % 2 or h.shape[0] != P or h.shape[1] != n2 or c.shape[0] != P
            or c.shape[1] != n2 or ga.shape[0] != P or ga.shape[1] != n2
            or gb.shape[0] != P or gb.shape[1] != n2 or gh0.shape[0] != P
            or gh0.shape[1] != 2
            or (has_cf and (cf.shape[0] != P or cf.shape[1] != 2))
            or (has_h0 and (h0.shape[0] != P or h0.shape[1] != 2))):
        raise ValueError("cscan_backward_rows: inconsistent shapes")
    if P == 0 or n == 0:
        return
    with nogil:
        for g in prange(ngroups, num_threads=num_threads, schedule="static"):
            p0 = g * ZM_CLANES
            K = <int> (P - p0 if P - p0 < ZM_CLANES else ZM_CLANES)
            if real_t is float:
                zm_cscanback_f(K, &a[p0, 0], &h[p0, 0], &c[p0, 0], &ga[p0, 0],
                               &gb[p0, 0], n2, n, &cf[p0, 0] if has_cf else NULL,
                               &h0[p0, 0] if has_h0 else NULL, rev, &gh0[p0, 0],
                               stream)
            else:
                zm_cscanback_d(K, &a[p0, 0], &h[p0, 0], &c[p0, 0], &ga[p0, 0],
                               &gb[p0, 0], n2, n, &cf[p0, 0] if has_cf else NULL,
                               &h0[p0, 0] if has_h0 else NULL, rev, &gh0[p0, 0],
                               stream)


cdef extern from "_vexp.h" nogil:
    double zm_exp_sum_store_f(const float *x, float *e, Py_ssize_t n, float m)
    double zm_exp_sum_store_d(const double *x, double *e, Py_ssize_t n, double m)

cdef enum:
    LBLOCK = 1024
    SLANES = 8


cdef void log_softmax_back_row(const real_t *y, const real_t *c, real_t *g,
                               Py_ssize_t n) noexcept nogil:
    """g = c - exp(y) sum(c) for one row: the sum in double (SLANES
    partial sums), then blocks of LBLOCK through the vectorised exp of
    _vexp.h into g and one pass of arithmetic while they are in L1."""
    cdef double acc[SLANES]
    cdef Py_ssize_t i = 0, i0, m
    cdef int k
    cdef double total = 0.0
    cdef real_t s
    for k in range(SLANES):
        acc[k] = 0.0
    while i + SLANES <= n:
        for k in range(SLANES):
            acc[k] += c[i + k]
        i += SLANES
    while i < n:
        acc[0] += c[i]
        i += 1
    for k in range(SLANES):
        total += acc[k]
    s = <real_t> total
    i0 = 0
    while i0 < n:
        m = n - i0 if n - i0 < LBLOCK else LBLOCK
        if real_t is float:
            zm_exp_sum_store_f(y + i0, g + i0, m, 0)
        else:
            zm_exp_sum_store_d(y + i0, g + i0, m, 0)
        for i in range(i0, i0 + m):
            g[i] = c[i] - g[i] * s
        i0 += m


def log_softmax_backward(const real_t[:, ::1] y, const real_t[:, ::1] c,
                         real_t[:, ::1] g, int num_threads):
    """Fill g (rows, n) with c - exp(y) * sum(c) per row: the pullback of
    log_softmax for y = log_softmax(x) (finite rows)."""
    cdef Py_ssize_t rows = y.shape[0], n = y.shape[1], r
    if (c.shape[0] != rows or c.shape[1] != n or g.shape[0] != rows
            or g.shape[1] != n):
        raise ValueError("log_softmax_backward: inconsistent shapes")
    if rows == 0 or n == 0:
        return
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule="static"):
            log_softmax_back_row(&y[r, 0], &c[r, 0], &g[r, 0], n)


# ------------------------------------------------------- causal_conv1d_backward

cdef extern from "_conv.h" nogil:
    void zm_conv_row_back_f(const float *g, const float *x, const float *h0,
                            const float *w, const float *gf, Py_ssize_t L,
                            Py_ssize_t W, float *xt, float *gx, float *gh0,
                            float *gw, float *gb)
    void zm_conv_row_back_d(const double *g, const double *x, const double *h0,
                            const double *w, const double *gf, Py_ssize_t L,
                            Py_ssize_t W, double *xt, double *gx, double *gh0,
                            double *gw, double *gb)


cdef inline void conv_back_row(const real_t *g, const real_t *x,
                               const real_t *h0, const real_t *w,
                               const real_t *gf, Py_ssize_t L, Py_ssize_t W,
                               real_t *xt, real_t *gx, real_t *gh0,
                               real_t *gw, real_t *gb) noexcept nogil:
    """One (batch, channel) row (the loop of _conv.h): adds to gw[:W] and
    gb[0], writes gx[:L] and gh0[:W-1] (h0, gf NULL when absent). xt:
    scratch of L + W - 1."""
    if real_t is float:
        zm_conv_row_back_f(g, x, h0, w, gf, L, W, xt, gx, gh0, gw, gb)
    else:
        zm_conv_row_back_d(g, x, h0, w, gf, L, W, xt, gx, gh0, gw, gb)


def causal_conv1d_backward(const real_t[:, :, ::1] g, const real_t[:, :, ::1] pre,
                           bint silu, const real_t[:, :, ::1] x,
                           const real_t[:, :, ::1] h0, const real_t[:, ::1] w,
                           const real_t[:, :, ::1] gf, bint has_h0, bint has_gf,
                           real_t[:, :, ::1] gx, real_t[:, ::1] gw,
                           real_t[::1] gb, real_t[:, :, ::1] gh0,
                           int num_threads):
    """Pullback of the causal convolution for g (batch, dim, L) the
    cotangent of the output (with silu, of silu(pre), pre read only then),
    weights (dim, W); h0, gf, gh0 (batch, dim, W-1) (h0, gf read only when
    has_h0, has_gf); gw, gb filled here."""
    cdef Py_ssize_t B = g.shape[0], D = g.shape[1], L = g.shape[2]
    cdef Py_ssize_t W = w.shape[1], b, d, k
    cdef real_t *xt
    cdef Scratch scr
    cdef scratch_t *ws
    cdef const real_t *ph0
    cdef const real_t *pgf
    cdef const real_t *pg
    if (x.shape[0] != B or x.shape[1] != D or x.shape[2] != L
            or gx.shape[0] != B or gx.shape[1] != D or gx.shape[2] != L
            or w.shape[0] != D or W < 1 or gw.shape[0] != D
            or gw.shape[1] != W or gb.shape[0] != D
            or gh0.shape[0] != B or gh0.shape[1] != D
            or gh0.shape[2] != W - 1):
        raise ValueError("causal_conv1d_backward: inconsistent shapes")
    if has_h0 and (h0.shape[0] != B or h0.shape[1] != D
                   or h0.shape[2] != W - 1):
        raise ValueError("causal_conv1d_backward: inconsistent shapes")
    if has_gf and (gf.shape[0] != B or gf.shape[1] != D
                   or gf.shape[2] != W - 1):
        raise ValueError("causal_conv1d_backward: inconsistent shapes")
    if silu and (pre.shape[0] != B or pre.shape[1] != D or pre.shape[2] != L):
        raise ValueError("causal_conv1d_backward: inconsistent shapes")
    if B == 0 or D == 0 or L == 0:
        raise ValueError("causal_conv1d_backward: empty input")
    scr = Scratch(num_threads, 2 * L + W, sizeof(real_t),
                  "the convolution backward's per-thread scratch")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        xt = <real_t *> scratch_block(ws, threadid())
        for d in prange(D, schedule="static"):
            if xt == NULL:
                continue
            for k in range(W):
                gw[d, k] = 0
            gb[d] = 0
            for b in range(B):
                pg = &g[b, d, 0]
                if silu:
                    # g silu'(pre) into the scratch row
                    pg = xt + L + W
                    silu_back_block(&pre[b, d, 0], &g[b, d, 0], xt + L + W, L)
                ph0 = &h0[b, d, 0] if (has_h0 and W > 1) else NULL
                pgf = &gf[b, d, 0] if (has_gf and W > 1) else NULL
                conv_back_row(pg, &x[b, d, 0], ph0, &w[d, 0], pgf,
                              L, W, xt, &gx[b, d, 0],
                              &gh0[b, d, 0] if W > 1 else NULL,
                              &gw[d, 0], &gb[d])
    scr.finish()


cdef enum:
    TBLOCK = 64


cdef extern from "_conv.h" nogil:
    void zm_conv_tm_back_f(const float *g, Py_ssize_t grow, const float *pre,
                           Py_ssize_t prow, int silu, const float *x,
                           Py_ssize_t xrow, const float *wt, float *gx,
                           Py_ssize_t gxrow, Py_ssize_t t0, Py_ssize_t t1,
                           Py_ssize_t L, Py_ssize_t dim, Py_ssize_t W,
                           float *gg, float *part)
    void zm_conv_tm_back_d(const double *g, Py_ssize_t grow, const double *pre,
                           Py_ssize_t prow, int silu, const double *x,
                           Py_ssize_t xrow, const double *wt, double *gx,
                           Py_ssize_t gxrow, Py_ssize_t t0, Py_ssize_t t1,
                           Py_ssize_t L, Py_ssize_t dim, Py_ssize_t W,
                           double *gg, double *part)


cdef inline void conv_back_steps(const real_t *g, Py_ssize_t grow,
                                 const real_t *pre, Py_ssize_t prow, bint silu,
                                 const real_t *x, Py_ssize_t xrow,
                                 const real_t *wt, real_t *gx,
                                 Py_ssize_t gxrow, Py_ssize_t t0,
                                 Py_ssize_t t1, Py_ssize_t L, Py_ssize_t D,
                                 Py_ssize_t W, real_t *gg,
                                 real_t *part) noexcept nogil:
    """Steps t0 <= t < t1 of one time-major sequence (row t of g at
    g + t grow, and so on; the loop of _conv.h): gx rows written, the
    steps' weight gradients (W rows of D) and bias gradient (one row) into
    part. gg: scratch of (t1 - t0 + W - 1) rows of D."""
    if real_t is float:
        zm_conv_tm_back_f(g, grow, pre, prow, silu, x, xrow, wt, gx, gxrow,
                          t0, t1, L, D, W, gg, part)
    else:
        zm_conv_tm_back_d(g, grow, pre, prow, silu, x, xrow, wt, gx, gxrow,
                          t0, t1, L, D, W, gg, part)


cdef bint time_major(const real_t[:, :, :] a, Py_ssize_t B, Py_ssize_t L,
                     Py_ssize_t D):
    return (a.shape[0] == B and a.shape[1] == L and a.shape[2] == D
            and a.strides[2] == <Py_ssize_t> sizeof(real_t))


def causal_conv1d_backward_time_major(const real_t[:, :, :] g,
                                      const real_t[:, :, :] pre, bint silu,
                                      const real_t[:, :, :] x,
                                      const real_t[:, ::1] wt,
                                      real_t[:, :, :] gx, real_t[:, ::1] gwt,
                                      real_t[::1] gb, int num_threads):
    """Pullback of the causal convolution (no initial states) of time-major
    data: g (the cotangent of the output; with silu, of silu(pre)), pre
    (read only with silu), x and gx are (batch, L, dim) with contiguous
    channels (rows may be strided); wt, gwt (W, dim) the weight transposed
    and its gradient, gb (dim,); gwt, gb filled here."""
    cdef Py_ssize_t B = g.shape[0], L = g.shape[1], D = g.shape[2]
    cdef Py_ssize_t W = wt.shape[0], nblk, ntask, task, b, t0, c, k, i
    cdef double acc
    cdef real_t *gg
    cdef real_t *part
    cdef Scratch scr, parts
    cdef scratch_t *ws
    if not (time_major(g, B, L, D) and time_major(x, B, L, D)
            and time_major(gx, B, L, D) and (not silu or time_major(pre, B, L, D))
            and W >= 1 and wt.shape[1] == D and gwt.shape[0] == W
            and gwt.shape[1] == D and gb.shape[0] == D):
        raise ValueError("causal_conv1d_backward_time_major: inconsistent shapes "
                         "or strided channels")
    if B == 0 or L == 0 or D == 0:
        raise ValueError("causal_conv1d_backward_time_major: empty input")
    nblk = (L + TBLOCK - 1) // TBLOCK
    ntask = B * nblk
    parts = Scratch(1, ntask * (W + 1) * D, sizeof(real_t),
                    "the convolution backward's partial sums")
    part = <real_t *> parts.s.base
    scr = Scratch(num_threads, (TBLOCK + W - 1) * D, sizeof(real_t),
                  "the convolution backward's per-thread scratch")
    ws = &scr.s
    cdef Py_ssize_t gb_ = g.strides[0] // <Py_ssize_t> sizeof(real_t)
    cdef Py_ssize_t gr = g.strides[1] // <Py_ssize_t> sizeof(real_t)
    cdef Py_ssize_t pb = pre.strides[0] // <Py_ssize_t> sizeof(real_t)
    cdef Py_ssize_t pr = pre.strides[1] // <Py_ssize_t> sizeof(real_t)
    cdef Py_ssize_t xb = x.strides[0] // <Py_ssize_t> sizeof(real_t)
    cdef Py_ssize_t xr = x.strides[1] // <Py_ssize_t> sizeof(real_t)
    cdef Py_ssize_t ob = gx.strides[0] // <Py_ssize_t> sizeof(real_t)
    cdef Py_ssize_t orow = gx.strides[1] // <Py_ssize_t> sizeof(real_t)
    cdef const real_t *G = &g[0, 0, 0]
    cdef const real_t *P = &pre[0, 0, 0] if silu else NULL
    cdef const real_t *X = &x[0, 0, 0]
    cdef real_t *O = &gx[0, 0, 0]
    with nogil, parallel(num_threads=ws.nthreads):
        gg = <real_t *> scratch_block(ws, threadid())
        for task in prange(ntask, schedule="static"):
            if gg == NULL:
                continue
            b = task // nblk
            t0 = (task - b * nblk) * TBLOCK
            conv_back_steps(G + b * gb_, gr, NULL if P == NULL else P + b * pb, pr,
                            silu, X + b * xb, xr, &wt[0, 0], O + b * ob, orow, t0,
                            t0 + TBLOCK if t0 + TBLOCK < L else L, L, D, W, gg,
                            part + task * (W + 1) * D)
    scr.finish()
    with nogil:
        for c in prange(D, num_threads=num_threads, schedule="static"):
            for k in range(W + 1):
                acc = 0
                for i in range(ntask):
                    acc = acc + part[(i * (W + 1) + k) * D + c]
                if k < W:
                    gwt[k, c] = <real_t> acc
                else:
                    gb[c] = <real_t> acc


# ----------------------------------------------------------- rms_norm_backward

cdef extern from "_vexp.h" nogil:
    void zm_rmsback_f(const float *x, const float *z, const float *sg,
                      const float *w, const float *dy, Py_ssize_t C,
                      Py_ssize_t G, double eps, int mode, float *v, float *q,
                      float *gx, float *gz, double *gw)
    void zm_rmsback_d(const double *x, const double *z, const double *sg,
                      const double *w, const double *dy, Py_ssize_t C,
                      Py_ssize_t G, double eps, int mode, double *v, double *q,
                      double *gx, double *gz, double *gw)


cdef void rms_back_row(const real_t *x, const real_t *z, const real_t *w,
                       const real_t *dy, Py_ssize_t C, Py_ssize_t G,
                       double eps, int mode, real_t *sg, real_t *v,
                       real_t *gx, real_t *gz, double *gwp) noexcept nogil:
    """One row of C channels in groups of G. mode 0: no gate; 1: gate after
    the norm (y = norm(x) w silu(z)); 2: gate first (y = norm(x silu(z)) w).
    sg, v: scratch rows of C, v followed by another (the C loop of _vexp.h,
    zm_rmsback); gwp: the block's weight-gradient partials (or NULL)."""
    if mode != 0:
        if real_t is float:
            zm_sigmoid_f(z, sg, C)
        else:
            zm_sigmoid_d(z, sg, C)
    if real_t is float:
        zm_rmsback_f(x, z, sg, w, dy, C, G, eps, mode, v, v + C, gx, gz, gwp)
    else:
        zm_rmsback_d(x, z, sg, w, dy, C, G, eps, mode, v, v + C, gx, gz, gwp)


def rms_norm_backward(const real_t[:, :] x, const real_t[:, :] z,
                      const real_t[::1] w, const real_t[:, :] dy,
                      Py_ssize_t group, double eps, int mode, bint want_gw,
                      Py_ssize_t block, real_t[:, ::1] gx, real_t[:, :] gz,
                      double[:, ::1] gwp, int num_threads):
    """Pullback of rms_norm for rows (R, C) in groups of `group`; `mode` as
    rms_back_row (z read only for mode 1, 2); with want_gw, gwp (nblocks, C)
    receives per-block partial sums of q n for blocks of `block` rows. The
    rows of x, z, dy and gz may be strided, their channels contiguous."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1], nblk, blk, i, i1, j
    cdef real_t *buf
    cdef double *gp
    cdef Scratch scr
    cdef scratch_t *ws
    if (dy.shape[0] != R or dy.shape[1] != C or gx.shape[0] != R
            or gx.shape[1] != C or w.shape[0] != C or group < 1
            or C % group != 0 or block < 1 or mode < 0 or mode > 2):
        raise ValueError("rms_norm_backward: inconsistent shapes")
    if mode != 0 and (z.shape[0] != R or z.shape[1] != C
                      or gz.shape[0] != R or gz.shape[1] != C):
        raise ValueError("rms_norm_backward: inconsistent shapes")
    nblk = (R + block - 1) // block
    if want_gw and (gwp.shape[0] != nblk or gwp.shape[1] != C):
        raise ValueError("rms_norm_backward: inconsistent shapes")
    if R == 0 or C == 0:
        raise ValueError("rms_norm_backward: empty input")
    if C > 1 and (x.strides[1] != sizeof(real_t) or dy.strides[1] != sizeof(real_t)
                  or (mode != 0 and (z.strides[1] != sizeof(real_t)
                                     or gz.strides[1] != sizeof(real_t)))):
        raise ValueError("rms_norm_backward: the channels must be contiguous")
    scr = Scratch(num_threads, 3 * C, sizeof(real_t),
                  "the norm backward's per-thread scratch")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        buf = <real_t *> scratch_block(ws, threadid())
        for blk in prange(nblk, schedule="static"):
            if buf == NULL:
                continue
            gp = NULL
            if want_gw:
                gp = &gwp[blk, 0]
                for j in range(C):
                    gp[j] = 0
            i1 = (blk + 1) * block if (blk + 1) * block < R else R
            for i in range(blk * block, i1):
                rms_back_row(&x[i, 0], &z[i, 0] if mode != 0 else NULL,
                             &w[0], &dy[i, 0], C, group, eps, mode,
                             buf, buf + C, &gx[i, 0],
                             &gz[i, 0] if mode != 0 else NULL, gp)
    scr.finish()
