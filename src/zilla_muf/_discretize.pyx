# cython: language_level=3
"""Kernels of the diagonal (elementwise) discretisation of x' = A x + B u.

Design
------
The caller broadcasts A, B and the step delta to one shape and passes flat
C-contiguous arrays: real ones as they are, complex ones as their interleaved
real view (re, im, re, im, ...), so each element is two consecutive reals.
B may be complex while A is real: the real kernels then take B with width
``bw = 2`` (the real factor scales both parts). Elements are independent; a
static ``prange`` splits them in blocks of ``BLOCK``.

ZOH: with z = delta * A,

    A_bar = exp(z),  B_bar = phi1(z) * delta * B,  phi1(z) = expm1(z) / z,

phi1(0) = 1 exactly (the A -> 0 limit delta * B). expm1 keeps full relative
precision for tiny |z|; for complex z = x + iy it is

    expm1(z) = expm1(x) cos(y) - 2 sin^2(y / 2) + i exp(x) sin(y),

which has no cancellation as z -> 0. Complex division uses Smith's method.

Bilinear (generalised, parameter alpha):

    A_bar = (1 + (1 - alpha) z) / (1 - alpha z),  B_bar = delta B / (1 - alpha z).
"""
from cython.parallel cimport prange
from libc.math cimport exp, expm1, sin, cos, fabs

from zilla_muf._types cimport real_t

cdef enum:
    BLOCK = 2048


cdef inline void cdiv(double a, double b, double c, double d,
                      double *re, double *im) noexcept nogil:
    """(a + ib) / (c + id) by Smith's method (no spurious overflow)."""
    cdef double r, den
    if fabs(c) >= fabs(d):
        r = d / c
        den = c + d * r
        re[0] = (a + b * r) / den
        im[0] = (b - a * r) / den
    else:
        r = c / d
        den = c * r + d
        re[0] = (a * r + b) / den
        im[0] = (b * r - a) / den


cdef inline double phi1_real(double z) noexcept nogil:
    """expm1(z) / z, 1 at z = 0."""
    if z == 0:
        return 1.0
    return expm1(z) / z


cdef inline void zoh_complex_elem(double x, double y, double *ar, double *ai,
                                  double *pr, double *pi) noexcept nogil:
    """A_bar = exp(x + iy) and phi1(x + iy)."""
    cdef double ex = exp(x), s = sin(y), h
    ar[0] = ex * cos(y)
    ai[0] = ex * s if y != 0 else y
    if x == 0 and y == 0:
        pr[0] = 1.0
        pi[0] = 0.0
        return
    h = sin(0.5 * y)
    cdiv(expm1(x) * cos(y) - 2.0 * h * h, ex * s if y != 0 else y, x, y, pr, pi)


def zoh_real(const real_t[::1] a, const real_t[::1] delta,
             const real_t[::1] b, real_t[::1] abar, real_t[::1] bbar,
             int bw, int num_threads):
    """Real A; B real (bw 1) or complex interleaved (bw 2)."""
    cdef Py_ssize_t n = a.shape[0], nblk, blk, i, i1
    cdef double z, f
    cdef int k
    _check(n, delta.shape[0], abar.shape[0], b.shape[0], bbar.shape[0], bw,
           num_threads)
    if n == 0:
        return
    nblk = (n + BLOCK - 1) // BLOCK
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule='static'):
            i1 = (blk + 1) * BLOCK if (blk + 1) * BLOCK < n else n
            for i in range(blk * BLOCK, i1):
                z = <double> delta[i] * <double> a[i]
                abar[i] = <real_t> exp(z)
                f = phi1_real(z) * <double> delta[i]
                for k in range(bw):
                    bbar[i * bw + k] = <real_t> (f * <double> b[i * bw + k])


def zoh_complex(const real_t[::1] a, const real_t[::1] delta,
                const real_t[::1] b, real_t[::1] abar, real_t[::1] bbar,
                int num_threads):
    """Complex A and B, interleaved (length 2n); delta real (length n)."""
    cdef Py_ssize_t n = delta.shape[0], nblk, blk, i, i1
    cdef double d, ar, ai, pr, pi, br, bi
    _check(n, n, abar.shape[0] // 2, b.shape[0], bbar.shape[0], 2,
           num_threads)
    if a.shape[0] != 2 * n:
        raise ValueError("A and delta lengths do not match")
    if n == 0:
        return
    nblk = (n + BLOCK - 1) // BLOCK
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule='static'):
            i1 = (blk + 1) * BLOCK if (blk + 1) * BLOCK < n else n
            for i in range(blk * BLOCK, i1):
                d = delta[i]
                # assigned here so that prange makes them thread-private
                # (variables only written through a pointer would be shared)
                ar = 0
                ai = 0
                pr = 0
                pi = 0
                zoh_complex_elem(d * a[2 * i], d * a[2 * i + 1], &ar, &ai,
                                 &pr, &pi)
                abar[2 * i] = <real_t> ar
                abar[2 * i + 1] = <real_t> ai
                pr = pr * d
                pi = pi * d
                br = b[2 * i]
                bi = b[2 * i + 1]
                bbar[2 * i] = <real_t> (pr * br - pi * bi)
                bbar[2 * i + 1] = <real_t> (pr * bi + pi * br)


def bilinear_real(const real_t[::1] a, const real_t[::1] delta,
                  const real_t[::1] b, double alpha, real_t[::1] abar,
                  real_t[::1] bbar, int bw, int num_threads):
    """Real A; B real (bw 1) or complex interleaved (bw 2)."""
    cdef Py_ssize_t n = a.shape[0], nblk, blk, i, i1
    cdef double z, den, f
    cdef int k
    _check(n, delta.shape[0], abar.shape[0], b.shape[0], bbar.shape[0], bw,
           num_threads)
    if n == 0:
        return
    nblk = (n + BLOCK - 1) // BLOCK
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule='static'):
            i1 = (blk + 1) * BLOCK if (blk + 1) * BLOCK < n else n
            for i in range(blk * BLOCK, i1):
                z = <double> delta[i] * <double> a[i]
                den = 1.0 - alpha * z
                abar[i] = <real_t> ((1.0 + (1.0 - alpha) * z) / den)
                f = <double> delta[i] / den
                for k in range(bw):
                    bbar[i * bw + k] = <real_t> (f * <double> b[i * bw + k])


def bilinear_complex(const real_t[::1] a, const real_t[::1] delta,
                     const real_t[::1] b, double alpha, real_t[::1] abar,
                     real_t[::1] bbar, int num_threads):
    """Complex A and B, interleaved (length 2n); delta real (length n)."""
    cdef Py_ssize_t n = delta.shape[0], nblk, blk, i, i1
    cdef double d, x, y, dr, di, ar, ai, qr, qi
    _check(n, n, abar.shape[0] // 2, b.shape[0], bbar.shape[0], 2,
           num_threads)
    if a.shape[0] != 2 * n:
        raise ValueError("A and delta lengths do not match")
    if n == 0:
        return
    nblk = (n + BLOCK - 1) // BLOCK
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule='static'):
            i1 = (blk + 1) * BLOCK if (blk + 1) * BLOCK < n else n
            for i in range(blk * BLOCK, i1):
                d = delta[i]
                x = d * a[2 * i]
                y = d * a[2 * i + 1]
                dr = 1.0 - alpha * x
                di = -alpha * y
                ar = 0      # thread-private: see zoh_complex
                ai = 0
                qr = 0
                qi = 0
                cdiv(1.0 + (1.0 - alpha) * x, (1.0 - alpha) * y, dr, di,
                     &ar, &ai)
                abar[2 * i] = <real_t> ar
                abar[2 * i + 1] = <real_t> ai
                cdiv(d * b[2 * i], d * b[2 * i + 1], dr, di, &qr, &qi)
                bbar[2 * i] = <real_t> qr
                bbar[2 * i + 1] = <real_t> qi


def _check(Py_ssize_t n, Py_ssize_t nd, Py_ssize_t na, Py_ssize_t nb,
           Py_ssize_t nbb, int bw, int num_threads):
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    if bw != 1 and bw != 2:
        raise ValueError(f"B width must be 1 or 2, got {bw}")
    if nd != n or na != n or nb != n * bw or nbb != n * bw:
        raise ValueError("A, delta, B and output lengths do not match")
