# cython: language_level=3
"""Kernels of the structured matrix-vector products.

Design
------
Every kernel works on real element types (``real_t``). Complex data reaches
them as the interleaved real view (``z.view(real)``: re, im, re, im, ...), and
the complex arithmetic is written out in real operations on split re/im
scratch arrays, so that the inner loops are plain elementwise float loops the
compiler vectorises (C99 complex multiplication and division are not: they
carry NaN-recovery calls).

Arrays are C-contiguous 2-D ``(rows, length)``. An argument that is shared by
many output rows under broadcasting is passed once per distinct row together
with a row map (``int64[rows]``: output row -> argument row), so that a shared
kernel, node vector or signal is never copied per output row.

* toeplitz: causal correlation ``y[i] = sum_{j<=i} k[j] x[i-j]``. Output rows
  are cut into tiles of ``tile`` samples; a task is (row, tile). Within a task
  the loop runs over taps outside and samples inside, so that the inner loop
  is ``y[i] += k[j] x[i - j]`` over a contiguous tile that stays in L1.
* cauchy: ``out[k] = sum_i w_i / (z_k - lambda_i)``. A task is (row, block of
  ``NODE_BLOCK`` nodes); the block's nodes and accumulators live in split
  re/im stack arrays, the loop over poles is outside and the loop over nodes
  inside (no N x L temporary). The division is w conj(d) / |d|^2; a block
  where some |d|^2 under- or overflows is redone with d scaled by a power
  of two first (as np.divide scales).
* vandermonde: powers ``lambda^l`` for ``l = l0 + j``, ``j < POW_BLOCK`` are
  ``lambda^l0 * lambda^j``. The table ``lambda^j`` (per row, per group of
  ``POLE_GROUP`` poles) is built in double precision by doubling,
  ``lambda^(p + j) = lambda^j * lambda^p`` for ``p = 1, 2, 4, ...``, with
  ``lambda^p = exp(p log lambda)``: at most log2(POW_BLOCK) + 1 roundings. The
  anchor ``lambda^l0 = exp(l0 log lambda)`` is evaluated afresh (double
  precision) for every block, so that no error accumulates along l. A task is
  (row, range of ``split`` powers); the transpose product writes one partial
  sum per task, reduced by the caller in a fixed order (the split does not
  depend on the thread count, so results do not either).

All indices are Py_ssize_t; scratch is per task on the stack, or per
thread (the power tables: a _scratch.Scratch block).
"""
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport atan2, cos, exp, fabs, fabsf, hypot, log, log1p, sin
from libc.stdlib cimport free, malloc

from zilla_muf._scratch cimport Scratch, scratch_t, scratch_block
from zilla_muf._types cimport real_t
from zilla_muf._vmath cimport vinv_scale


cdef inline real_t r_fabs(real_t x) noexcept nogil:
    if real_t is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline real_t r_fmax(real_t x, real_t y) noexcept nogil:
    return x if x > y else y

cdef enum:
    NODE_BLOCK = 256   # nodes per cauchy task block
    POW_BLOCK = 256    # powers per vandermonde block (table length)
    POLE_GROUP = 32    # poles per vandermonde table


cdef inline Py_ssize_t imin(Py_ssize_t x, Py_ssize_t y) noexcept nogil:
    return x if x < y else y


cdef inline Py_ssize_t imax(Py_ssize_t x, Py_ssize_t y) noexcept nogil:
    return x if x > y else y


# ---------------------------------------------------------------------------
# Toeplitz (causal convolution), direct
# ---------------------------------------------------------------------------

cdef inline void toeplitz_tile(const real_t *k, Py_ssize_t K, const real_t *x,
                               real_t *y, Py_ssize_t i0,
                               Py_ssize_t i1) noexcept nogil:
    """y[i] = sum_{j <= i, j < K} k[j] x[i - j] for i0 <= i < i1."""
    cdef Py_ssize_t i, j, start, m
    cdef real_t kj
    cdef real_t *yo
    cdef const real_t *xo
    for i in range(i0, i1):
        y[i] = 0
    for j in range(imin(K, i1)):
        kj = k[j]
        start = imax(i0, j)
        m = i1 - start
        yo = y + start
        xo = x + start - j
        for i in range(m):
            yo[i] = yo[i] + kj * xo[i]


cdef inline void toeplitz_tile_cplx(const real_t *k, Py_ssize_t K,
                                    const real_t *x, real_t *y, Py_ssize_t i0,
                                    Py_ssize_t i1) noexcept nogil:
    """toeplitz_tile of complex data stored as (re, im) pairs: element i of
    x is x[2 i] + 1j x[2 i + 1], and likewise k and y."""
    cdef Py_ssize_t i, j, start, m
    cdef real_t kr, ki
    cdef real_t *yo
    cdef const real_t *xo
    for i in range(2 * i0, 2 * i1):
        y[i] = 0
    for j in range(imin(K, i1)):
        kr = k[2 * j]
        ki = k[2 * j + 1]
        start = imax(i0, j)
        m = i1 - start
        yo = y + 2 * start
        xo = x + 2 * (start - j)
        for i in range(m):
            yo[2 * i] = yo[2 * i] + kr * xo[2 * i] - ki * xo[2 * i + 1]
            yo[2 * i + 1] = yo[2 * i + 1] + kr * xo[2 * i + 1] + ki * xo[2 * i]


def toeplitz_direct(const real_t[:, ::1] kernel, const Py_ssize_t[::1] kmap,
                    const real_t[:, ::1] x, const Py_ssize_t[::1] xmap,
                    real_t[:, ::1] out, Py_ssize_t tile, int num_threads,
                    bint cplx=False):
    """out[r] = causal convolution of kernel[kmap[r]] and x[xmap[r]].

    With cplx, every row holds complex values as (re, im) pairs (the real
    views of complex arrays), so a row of length 2 m has m elements."""
    cdef Py_ssize_t width = 2 if cplx else 1
    cdef Py_ssize_t rows = out.shape[0], n = out.shape[1] // width
    cdef Py_ssize_t K = kernel.shape[1] // width
    cdef Py_ssize_t ntile, ntask, task, r, t, i0
    cdef const real_t *KP
    cdef const real_t *XP
    cdef real_t *OP
    if tile < 1 or num_threads < 1:
        raise ValueError("tile and num_threads must be >= 1")
    if (kmap.shape[0] != rows or xmap.shape[0] != rows
            or x.shape[1] != out.shape[1] or out.shape[1] % width
            or kernel.shape[1] % width):
        raise ValueError("toeplitz_direct: inconsistent shapes")
    if rows == 0 or n == 0:
        return
    if K == 0:
        out[:, :] = 0
        return
    for r in range(rows):
        if not (0 <= kmap[r] < kernel.shape[0] and 0 <= xmap[r] < x.shape[0]):
            raise ValueError("toeplitz_direct: row map out of range")
    KP = &kernel[0, 0]
    XP = &x[0, 0]
    OP = &out[0, 0]
    ntile = (n + tile - 1) // tile
    ntask = rows * ntile
    with nogil:
        for task in prange(ntask, num_threads=num_threads, schedule='static'):
            r = task // ntile
            t = task - r * ntile
            i0 = t * tile
            if cplx:
                toeplitz_tile_cplx(KP + kmap[r] * 2 * K, K, XP + xmap[r] * 2 * n,
                                   OP + r * 2 * n, i0, imin(n, i0 + tile))
            else:
                toeplitz_tile(KP + kmap[r] * K, K, XP + xmap[r] * n,
                              OP + r * n, i0, imin(n, i0 + tile))


# ---------------------------------------------------------------------------
# Cauchy
# ---------------------------------------------------------------------------

cdef int cauchy_block(const real_t *z, const real_t *lam, const real_t *w,
                      real_t *o, Py_ssize_t m, Py_ssize_t N, bint conj_pairs,
                      bint scaled) noexcept nogil:
    """o[k] = sum_i w_i / (z_k - lam_i) (+ conjugates), m <= NODE_BLOCK nodes.

    All of z, lam, w and o are interleaved complex. Unscaled, each term is
    w conj(d) / |d|^2 with d = z - lam, and the return value is nonzero when
    some |d|^2 left the range where that is accurate (|d|^2 underflows or
    overflows); the caller then runs the block again scaled: d' = d t with
    t a power of two that brings max(|Re d|, |Im d|) to [1, 2), and the term
    w conj(d') t / |d'|^2 (exact scaling, as np.divide scales), slower.
    """
    cdef real_t zr[NODE_BLOCK]
    cdef real_t zi[NODE_BLOCK]
    cdef real_t ar[NODE_BLOCK]
    cdef real_t ai[NODE_BLOCK]
    cdef Py_ssize_t i, k
    cdef real_t lr, li, wr, wi, dr, di, q, s, t, qlo, qhi
    cdef int bad = 0
    if real_t is float:
        qlo = 1.1754943508222875e-38 * 16777216.0   # FLT_MIN 2^24
        qhi = 1.329227995784916e+36                 # 2^120
    else:
        qlo = 2.2250738585072014e-308 * 9007199254740992.0   # DBL_MIN 2^53
        qhi = 1.0715086071862673e+301               # 2^1000
    for k in range(m):
        zr[k] = z[2 * k]
        zi[k] = z[2 * k + 1]
        ar[k] = 0
        ai[k] = 0
    for i in range(N):
        lr = lam[2 * i]
        li = lam[2 * i + 1]
        wr = w[2 * i]
        wi = w[2 * i + 1]
        if not scaled:
            # w / d = w conj(d) / |d|^2
            for k in range(m):
                dr = zr[k] - lr
                di = zi[k] - li
                q = dr * dr + di * di
                bad = bad | (q < qlo) | (q > qhi)
                s = 1 / q
                ar[k] = ar[k] + (wr * dr + wi * di) * s
                ai[k] = ai[k] + (wi * dr - wr * di) * s
            if conj_pairs:
                # conj(w) / (z - conj(lam))
                for k in range(m):
                    dr = zr[k] - lr
                    di = zi[k] + li
                    q = dr * dr + di * di
                    bad = bad | (q < qlo) | (q > qhi)
                    s = 1 / q
                    ar[k] = ar[k] + (wr * dr - wi * di) * s
                    ai[k] = ai[k] - (wi * dr + wr * di) * s
        else:
            for k in range(m):
                dr = zr[k] - lr
                di = zi[k] - li
                t = vinv_scale(r_fmax(r_fabs(dr), r_fabs(di)))
                dr = dr * t
                di = di * t
                s = t / (dr * dr + di * di)
                ar[k] = ar[k] + (wr * dr + wi * di) * s
                ai[k] = ai[k] + (wi * dr - wr * di) * s
            if conj_pairs:
                for k in range(m):
                    dr = zr[k] - lr
                    di = zi[k] + li
                    t = vinv_scale(r_fmax(r_fabs(dr), r_fabs(di)))
                    dr = dr * t
                    di = di * t
                    s = t / (dr * dr + di * di)
                    ar[k] = ar[k] + (wr * dr - wi * di) * s
                    ai[k] = ai[k] - (wi * dr + wr * di) * s
    for k in range(m):
        o[2 * k] = ar[k]
        o[2 * k + 1] = ai[k]
    return bad


def cauchy(const real_t[:, ::1] nodes, const Py_ssize_t[::1] nmap,
           const real_t[:, ::1] poles, const real_t[:, ::1] weights,
           real_t[:, ::1] out, bint conj_pairs, int num_threads):
    """Interleaved complex: nodes (nr, 2L), poles and weights (rows, 2N),
    out (rows, 2L); row r uses nodes[nmap[r]]."""
    cdef Py_ssize_t rows = out.shape[0], L = out.shape[1] // 2
    cdef Py_ssize_t N = poles.shape[1] // 2
    cdef Py_ssize_t nblk, task, r, b, k0
    cdef const real_t *ZP
    cdef const real_t *LP
    cdef const real_t *WP
    cdef real_t *OP
    if num_threads < 1:
        raise ValueError("num_threads must be >= 1")
    if (nmap.shape[0] != rows or nodes.shape[1] != 2 * L
            or poles.shape[0] != rows or weights.shape[0] != rows
            or weights.shape[1] != 2 * N):
        raise ValueError("cauchy: inconsistent shapes")
    if rows == 0 or L == 0:
        return
    if N == 0:
        out[:, :] = 0
        return
    for r in range(rows):
        if not 0 <= nmap[r] < nodes.shape[0]:
            raise ValueError("cauchy: row map out of range")
    ZP = &nodes[0, 0]
    LP = &poles[0, 0]
    WP = &weights[0, 0]
    OP = &out[0, 0]
    nblk = (L + NODE_BLOCK - 1) // NODE_BLOCK
    with nogil:
        for task in prange(rows * nblk, num_threads=num_threads,
                           schedule='static'):
            r = task // nblk
            b = task - r * nblk
            k0 = b * NODE_BLOCK
            if cauchy_block(ZP + nmap[r] * 2 * L + 2 * k0, LP + r * 2 * N,
                            WP + r * 2 * N, OP + r * 2 * L + 2 * k0,
                            imin(NODE_BLOCK, L - k0), N, conj_pairs, False):
                # a node within ~1e-16 (float) of a pole or ~1e18 from it:
                # the block again, with the scaled division
                cauchy_block(ZP + nmap[r] * 2 * L + 2 * k0, LP + r * 2 * N,
                             WP + r * 2 * N, OP + r * 2 * L + 2 * k0,
                             imin(NODE_BLOCK, L - k0), N, conj_pairs, True)


# ---------------------------------------------------------------------------
# Vandermonde: stable powers
# ---------------------------------------------------------------------------

cdef inline void clog_d(double re, double im, double *lr,
                        double *li) noexcept nogil:
    """log(re + i im) in double; log|z| by log1p near the unit circle."""
    cdef double r2 = re * re + im * im
    li[0] = atan2(im, re)
    if 0.5 < r2 < 2.0:
        # (re - 1) is exact here; no cancellation in |z|^2 - 1 from re
        lr[0] = 0.5 * log1p((re - 1.0) * (re + 1.0) + im * im)
    else:
        lr[0] = log(hypot(re, im))


cdef inline void cexp_d(double lr, double li, double p, double *er,
                        double *ei) noexcept nogil:
    """exp(p * (lr + i li)), with exp(0 * anything) = 1 (so 0**0 = 1)."""
    cdef double mag
    if p == 0:
        er[0] = 1.0
        ei[0] = 0.0
        return
    mag = exp(p * lr)
    er[0] = mag * cos(p * li)
    ei[0] = mag * sin(p * li)


cdef void power_table(const real_t *lam, Py_ssize_t ng, double *loglam,
                      real_t *Tr, real_t *Ti, Py_ssize_t si,
                      Py_ssize_t sj) noexcept nogil:
    """T[i * si + j * sj] = lam_i ** j for j < POW_BLOCK, i < ng.

    lam is interleaved complex; loglam[2i], loglam[2i+1] receive log lam_i.
    Built in double by doubling (see Design), then rounded to real_t.
    """
    cdef double dr[POW_BLOCK]
    cdef double di[POW_BLOCK]
    cdef double pr, pi, xr, xi
    cdef Py_ssize_t i, j, p
    for i in range(ng):
        clog_d(<double> lam[2 * i], <double> lam[2 * i + 1],
               &loglam[2 * i], &loglam[2 * i + 1])
        dr[0] = 1.0
        di[0] = 0.0
        p = 1
        while p < POW_BLOCK:
            cexp_d(loglam[2 * i], loglam[2 * i + 1], <double> p, &pr, &pi)
            for j in range(imin(p, POW_BLOCK - p)):
                xr = dr[j]
                xi = di[j]
                dr[p + j] = xr * pr - xi * pi
                di[p + j] = xr * pi + xi * pr
            p = 2 * p
        for j in range(POW_BLOCK):
            Tr[i * si + j * sj] = <real_t> dr[j]
            Ti[i * si + j * sj] = <real_t> di[j]


cdef void vdm_task(const real_t *lam, const real_t *w, Py_ssize_t N,
                   real_t *o, Py_ssize_t la, Py_ssize_t lb,
                   bint conj_pairs, real_t *T) noexcept nogil:
    """o[l] = sum_i w_i lam_i^l for la <= l < lb (o points at l = 0).

    Interleaved complex o, or real 2 Re(...) when conj_pairs. T: the power
    table, 2 POLE_GROUP POW_BLOCK elements.
    """
    cdef double loglam[2 * POLE_GROUP]
    cdef real_t cr[POLE_GROUP]
    cdef real_t ci[POLE_GROUP]
    cdef real_t ar[POW_BLOCK]
    cdef real_t ai[POW_BLOCK]
    cdef real_t *Tr
    cdef real_t *Ti
    cdef const real_t *tr
    cdef const real_t *ti
    cdef Py_ssize_t gi, g, ng, bi, i, j, l0, m
    cdef double er, ei, wr, wi
    cdef real_t c_r, c_i
    Tr = T
    Ti = T + POLE_GROUP * POW_BLOCK
    for gi in range((N + POLE_GROUP - 1) // POLE_GROUP):
        g = gi * POLE_GROUP
        ng = imin(POLE_GROUP, N - g)
        power_table(lam + 2 * g, ng, loglam, Tr, Ti, POW_BLOCK, 1)
        for bi in range((lb - la + POW_BLOCK - 1) // POW_BLOCK):
            l0 = la + bi * POW_BLOCK
            m = imin(POW_BLOCK, lb - l0)
            for i in range(ng):
                cexp_d(loglam[2 * i], loglam[2 * i + 1], <double> l0, &er, &ei)
                wr = w[2 * (g + i)]
                wi = w[2 * (g + i) + 1]
                cr[i] = <real_t> (wr * er - wi * ei)
                ci[i] = <real_t> (wr * ei + wi * er)
            for j in range(m):
                ar[j] = 0
                ai[j] = 0
            for i in range(ng):
                c_r = cr[i]
                c_i = ci[i]
                tr = Tr + i * POW_BLOCK
                ti = Ti + i * POW_BLOCK
                if conj_pairs:
                    for j in range(m):
                        ar[j] = ar[j] + (c_r * tr[j] - c_i * ti[j])
                else:
                    for j in range(m):
                        ar[j] = ar[j] + (c_r * tr[j] - c_i * ti[j])
                        ai[j] = ai[j] + (c_r * ti[j] + c_i * tr[j])
            if conj_pairs:
                if g == 0:
                    for j in range(m):
                        o[l0 + j] = 2 * ar[j]
                else:
                    for j in range(m):
                        o[l0 + j] = o[l0 + j] + 2 * ar[j]
            elif g == 0:
                for j in range(m):
                    o[2 * (l0 + j)] = ar[j]
                    o[2 * (l0 + j) + 1] = ai[j]
            else:
                for j in range(m):
                    o[2 * (l0 + j)] = o[2 * (l0 + j)] + ar[j]
                    o[2 * (l0 + j) + 1] = o[2 * (l0 + j) + 1] + ai[j]


def vandermonde(const real_t[:, ::1] poles, const real_t[:, ::1] weights,
                real_t[:, ::1] out, bint conj_pairs, Py_ssize_t split,
                int num_threads):
    """Interleaved complex poles and weights (rows, 2N); out (rows, 2L)
    complex, or (rows, L) real 2 Re(K) when conj_pairs."""
    cdef Py_ssize_t rows = out.shape[0], N = poles.shape[1] // 2
    cdef Py_ssize_t L = out.shape[1] if conj_pairs else out.shape[1] // 2
    cdef Py_ssize_t nsplit, task, r, s, ostride
    cdef Scratch scr
    cdef scratch_t *ws
    cdef real_t *tab
    cdef const real_t *LP
    cdef const real_t *WP
    cdef real_t *OP
    if split < 1 or num_threads < 1:
        raise ValueError("split and num_threads must be >= 1")
    if (poles.shape[0] != rows or weights.shape[0] != rows
            or weights.shape[1] != 2 * N):
        raise ValueError("vandermonde: inconsistent shapes")
    if rows == 0 or L == 0:
        return
    if N == 0:
        out[:, :] = 0
        return
    LP = &poles[0, 0]
    WP = &weights[0, 0]
    OP = &out[0, 0]
    ostride = out.shape[1]
    nsplit = (L + split - 1) // split
    scr = Scratch(num_threads, 2 * POLE_GROUP * POW_BLOCK, sizeof(real_t),
                  "the power tables")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        tab = <real_t *> scratch_block(ws, threadid())
        for task in prange(rows * nsplit, schedule='static'):
            if tab == NULL:
                continue
            r = task // nsplit
            s = task - r * nsplit
            vdm_task(LP + r * 2 * N, WP + r * 2 * N, N, OP + r * ostride,
                     s * split, imin(L, (s + 1) * split), conj_pairs, tab)
    scr.finish()


cdef void vdm_rtask(const real_t *lam, Py_ssize_t N, const real_t *v,
                    real_t *o, Py_ssize_t la, Py_ssize_t lb,
                    real_t *T) noexcept nogil:
    """o[i] = sum_{la <= l < lb} lam_i^l v[l] (interleaved complex); T
    the power table, as vdm_task's."""
    cdef double loglam[2 * POLE_GROUP]
    cdef double accr[POLE_GROUP]
    cdef double acci[POLE_GROUP]
    cdef real_t sr[POLE_GROUP]
    cdef real_t si[POLE_GROUP]
    cdef real_t *Tr
    cdef real_t *Ti
    cdef const real_t *tr
    cdef const real_t *ti
    cdef Py_ssize_t gi, g, ng, bi, i, j, l0, m
    cdef real_t vr, vi
    cdef double er, ei, xr, xi
    Tr = T
    Ti = T + POLE_GROUP * POW_BLOCK
    for gi in range((N + POLE_GROUP - 1) // POLE_GROUP):
        g = gi * POLE_GROUP
        ng = imin(POLE_GROUP, N - g)
        # transposed table: T[j * ng + i]
        power_table(lam + 2 * g, ng, loglam, Tr, Ti, 1, ng)
        for i in range(ng):
            accr[i] = 0
            acci[i] = 0
        for bi in range((lb - la + POW_BLOCK - 1) // POW_BLOCK):
            l0 = la + bi * POW_BLOCK
            m = imin(POW_BLOCK, lb - l0)
            for i in range(ng):
                sr[i] = 0
                si[i] = 0
            for j in range(m):
                vr = v[2 * (l0 + j)]
                vi = v[2 * (l0 + j) + 1]
                tr = Tr + j * ng
                ti = Ti + j * ng
                for i in range(ng):
                    sr[i] = sr[i] + (tr[i] * vr - ti[i] * vi)
                    si[i] = si[i] + (tr[i] * vi + ti[i] * vr)
            # the block's sum times the anchor lam^l0
            for i in range(ng):
                cexp_d(loglam[2 * i], loglam[2 * i + 1], <double> l0, &er, &ei)
                xr = sr[i]
                xi = si[i]
                accr[i] = accr[i] + (er * xr - ei * xi)
                acci[i] = acci[i] + (er * xi + ei * xr)
        for i in range(ng):
            o[2 * (g + i)] = <real_t> accr[i]
            o[2 * (g + i) + 1] = <real_t> acci[i]


def vandermonde_transpose(const real_t[:, ::1] poles, const real_t[:, ::1] v,
                          const Py_ssize_t[::1] vmap, real_t[:, :, ::1] out,
                          Py_ssize_t split, int num_threads):
    """Partial sums out[r, s, :] over powers [s * split, (s + 1) * split):
    poles (rows, 2N), v (vr, 2L) with row r using v[vmap[r]], out
    (rows, nsplit, 2N), all interleaved complex."""
    cdef Py_ssize_t rows = out.shape[0], nsplit = out.shape[1]
    cdef Py_ssize_t N = poles.shape[1] // 2, L = v.shape[1] // 2
    cdef Py_ssize_t task, r, s
    cdef Scratch scr
    cdef scratch_t *ws
    cdef real_t *tab
    cdef const real_t *LP
    cdef const real_t *VP
    cdef real_t *OP
    if split < 1 or num_threads < 1:
        raise ValueError("split and num_threads must be >= 1")
    if (poles.shape[0] != rows or vmap.shape[0] != rows
            or out.shape[2] != 2 * N or nsplit != (L + split - 1) // split):
        raise ValueError("vandermonde_transpose: inconsistent shapes")
    if rows == 0 or N == 0 or nsplit == 0:
        return
    for r in range(rows):
        if not 0 <= vmap[r] < v.shape[0]:
            raise ValueError("vandermonde_transpose: row map out of range")
    LP = &poles[0, 0]
    VP = &v[0, 0]
    OP = &out[0, 0, 0]
    scr = Scratch(num_threads, 2 * POLE_GROUP * POW_BLOCK, sizeof(real_t),
                  "the power tables")
    ws = &scr.s
    with nogil, parallel(num_threads=ws.nthreads):
        tab = <real_t *> scratch_block(ws, threadid())
        for task in prange(rows * nsplit, schedule='static'):
            if tab == NULL:
                continue
            r = task // nsplit
            s = task - r * nsplit
            vdm_rtask(LP + r * 2 * N, N, VP + vmap[r] * 2 * L,
                      OP + task * 2 * N, s * split, imin(L, (s + 1) * split),
                      tab)
    scr.finish()


# ---------------------------------------------------------------------------
# Semiseparable (real data): the scan over r state channels and the
# contraction with C in one pass, chunked along n.
# ---------------------------------------------------------------------------

cdef inline real_t dot(const real_t *u, const real_t *v,
                       Py_ssize_t r) noexcept nogil:
    """u . v with four partial sums (independent dependency chains)."""
    cdef real_t s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t k = 0
    while k + 4 <= r:
        s0 = s0 + u[k] * v[k]
        s1 = s1 + u[k + 1] * v[k + 1]
        s2 = s2 + u[k + 2] * v[k + 2]
        s3 = s3 + u[k + 3] * v[k + 3]
        k = k + 4
    while k < r:
        s0 = s0 + u[k] * v[k]
        k = k + 1
    return (s0 + s1) + (s2 + s3)


cdef real_t ss_local(const real_t *a, const real_t *B, const real_t *C,
                     const real_t *x, real_t *y, real_t *h, Py_ssize_t m,
                     Py_ssize_t r) noexcept nogil:
    """From h (r values): h <- a_t h + B_t x_t, y_t = C_t . h, m steps.

    Leaves the end state in h; returns the product of the m decays.
    """
    cdef Py_ssize_t t, k
    cdef real_t at, xt, q = 1
    cdef const real_t *bt
    for t in range(m):
        at = a[t]
        xt = x[t]
        bt = B + t * r
        for k in range(r):
            h[k] = at * h[k] + bt[k] * xt
        y[t] = dot(C + t * r, h, r)
        q = q * at
    return q


cdef void ss_correct(const real_t *a, const real_t *C, real_t *y,
                     const real_t *carry, Py_ssize_t m,
                     Py_ssize_t r) noexcept nogil:
    """y_t += (prod_{u <= t} a_u) C_t . carry over a chunk of m steps."""
    cdef Py_ssize_t t
    cdef real_t q = 1
    for t in range(m):
        q = q * a[t]
        y[t] = y[t] + q * dot(C + t * r, carry, r)


def semiseparable(const real_t[:, ::1] a, const Py_ssize_t[::1] amap,
                  const real_t[:, ::1] B, const Py_ssize_t[::1] bmap,
                  const real_t[:, ::1] C, const Py_ssize_t[::1] cmap,
                  const real_t[:, ::1] x, const Py_ssize_t[::1] xmap,
                  real_t[:, ::1] out, Py_ssize_t r, Py_ssize_t chunk_size,
                  int num_threads):
    """out[q] = M x for row q: a, x (.., n), B, C (.., n * r), row maps.

    (1) every chunk from a zero state, in parallel, keeping its end state
    and decay product; (2) per row, the states entering the chunks; (3)
    every chunk but the first adds its entering state carried by the decays.
    """
    cdef Py_ssize_t rows = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t nch, ntask, task, q, c, t0, m, k, j
    cdef real_t *S
    cdef real_t *P
    cdef real_t *prev
    cdef real_t *cur
    cdef const real_t *AP
    cdef const real_t *BP
    cdef const real_t *CP
    cdef const real_t *XP
    cdef real_t *OP
    if chunk_size < 1 or num_threads < 1 or r < 1:
        raise ValueError("chunk_size, num_threads and r must be >= 1")
    if (amap.shape[0] != rows or bmap.shape[0] != rows or cmap.shape[0] != rows
            or xmap.shape[0] != rows or a.shape[1] != n or x.shape[1] != n
            or B.shape[1] != n * r or C.shape[1] != n * r):
        raise ValueError("semiseparable: inconsistent shapes")
    if rows == 0 or n == 0:
        return
    for q in range(rows):
        if not (0 <= amap[q] < a.shape[0] and 0 <= bmap[q] < B.shape[0]
                and 0 <= cmap[q] < C.shape[0] and 0 <= xmap[q] < x.shape[0]):
            raise ValueError("semiseparable: row map out of range")
    chunk_size = imin(chunk_size, n)
    nch = (n + chunk_size - 1) // chunk_size
    ntask = rows * nch
    S = <real_t *> malloc(ntask * r * sizeof(real_t))
    P = <real_t *> malloc(ntask * sizeof(real_t))
    if S == NULL or P == NULL:
        free(S)
        free(P)
        raise MemoryError("could not allocate the semiseparable scratch")
    AP = &a[0, 0]
    BP = &B[0, 0]
    CP = &C[0, 0]
    XP = &x[0, 0]
    OP = &out[0, 0]
    with nogil:
        # (1) local passes
        for task in prange(ntask, num_threads=num_threads, schedule='static'):
            q = task // nch
            c = task - q * nch
            t0 = c * chunk_size
            m = imin(chunk_size, n - t0)
            for k in range(r):
                S[task * r + k] = 0
            P[task] = ss_local(AP + amap[q] * n + t0, BP + (bmap[q] * n + t0) * r,
                               CP + (cmap[q] * n + t0) * r, XP + xmap[q] * n + t0,
                               OP + q * n + t0, S + task * r, m, r)
        if nch > 1:
            # (2) S[q, c - 1] <- the state entering chunk c, in place:
            # E_1 = S_0, E_c = P_{c-1} E_{c-1} + S_{c-1}
            for q in prange(rows, num_threads=num_threads, schedule='static'):
                for c in range(2, nch):
                    prev = S + (q * nch + c - 2) * r
                    cur = S + (q * nch + c - 1) * r
                    for j in range(r):
                        cur[j] = P[q * nch + c - 1] * prev[j] + cur[j]
            # (3) corrections
            for task in prange(ntask, num_threads=num_threads, schedule='static'):
                q = task // nch
                c = task - q * nch
                if c > 0:
                    t0 = c * chunk_size
                    m = imin(chunk_size, n - t0)
                    ss_correct(AP + amap[q] * n + t0, CP + (cmap[q] * n + t0) * r,
                               OP + q * n + t0, S + (task - 1) * r, m, r)
    free(S)
    free(P)
