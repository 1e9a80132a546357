# cython: language_level=3
"""Kernels of the complex exponential and the conjugate-pair readout.

Design
------
Complex arrays reach the kernels as the interleaved real view of a
C-contiguous complex array (re, im, re, im, ...), so one kernel per real
type serves complex64 and complex128 and no C complex type is needed.

* exp_scaled: out = exp(d * z) elementwise, d real (or 1 when no scale is
  given), computed from the parts as exp(d x) (cos(d y) + i sin(d y)); the
  imaginary part of a real argument stays an exact 0 (no inf * 0); infinite
  and NaN parts give the C99 Annex G values NumPy's ``np.exp`` gives, and
  exp(x) beyond the double range is applied in two halves so that a finite
  exp(x) cos(y) is not lost to overflow.
  Flat, split in blocks of ``BLOCK`` by a static ``prange``.
* conj_pair_rows: rows (rows, N) of C and h, contiguous; out[r] =
  2 Re(sum_k C_k h_k) = 2 sum_k (Re C Re h - Im C Im h), accumulated in
  double in ``LANES`` independent partial sums; rows split by ``prange``.
"""
from cython.parallel cimport prange
from libc.math cimport exp, sin, cos, copysign, isfinite, INFINITY, NAN

from zilla_muf._types cimport real_t

cdef enum:
    BLOCK = 2048
    LANES = 4


cdef inline void cexp_parts(double x, double y, double *re, double *im) noexcept nogil:
    """exp(x + iy) with the special values of C99 Annex G (as np.exp)."""
    cdef double h
    if y == 0:
        # a real argument: exp(x) and the exact (signed) zero
        re[0] = exp(x)
        im[0] = y
    elif isfinite(y):
        if x > 709.0 and x < INFINITY:
            # exp(x) overflows but exp(x) cos(y) may not: two halves
            h = exp(0.5 * x)
            re[0] = (h * cos(y)) * h
            im[0] = (h * sin(y)) * h
        else:
            h = exp(x)
            re[0] = h * cos(y)
            im[0] = h * sin(y)
    elif x == -INFINITY:
        # |exp| = 0 whatever the (undefined) angle
        re[0] = 0.0
        im[0] = copysign(0.0, y)
    elif x == INFINITY:
        # |exp| = inf, angle undefined
        re[0] = INFINITY
        im[0] = NAN
    else:
        re[0] = NAN
        im[0] = NAN


cdef inline double conj_pair_row(const real_t *c, const real_t *h,
                                  Py_ssize_t n) noexcept nogil:
    cdef double s[LANES]
    cdef Py_ssize_t i = 0
    cdef int k
    cdef double total = 0.0
    for k in range(LANES):
        s[k] = 0.0
    while i + LANES <= n:
        for k in range(LANES):
            s[k] = s[k] + (<double> c[2 * (i + k)] * h[2 * (i + k)]
                           - <double> c[2 * (i + k) + 1] * h[2 * (i + k) + 1])
        i = i + LANES
    while i < n:
        s[0] = s[0] + (<double> c[2 * i] * h[2 * i]
                       - <double> c[2 * i + 1] * h[2 * i + 1])
        i = i + 1
    for k in range(LANES):
        total = total + s[k]
    return 2.0 * total


def exp_scaled(const real_t[::1] z, const real_t[::1] delta, real_t[::1] out,
               int num_threads):
    """out = exp(delta * z), z and out interleaved complex (length 2n).

    `delta` has length n, or 0 for a scale of 1.
    """
    cdef Py_ssize_t n = z.shape[0] // 2, nblk, blk, i, i1
    cdef bint scaled = delta.shape[0] != 0
    cdef double d, re, im
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    if z.shape[0] != 2 * n or out.shape[0] != 2 * n:
        raise ValueError("z and out must be interleaved complex of one length")
    if scaled and delta.shape[0] != n:
        raise ValueError(f"delta length {delta.shape[0]} does not match {n}")
    if n == 0:
        return
    nblk = (n + BLOCK - 1) // BLOCK
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule='static'):
            i1 = (blk + 1) * BLOCK if (blk + 1) * BLOCK < n else n
            for i in range(blk * BLOCK, i1):
                # assigned here so that prange makes them thread-private
                # (variables only written through a pointer would be shared)
                re = 0
                im = 0
                if scaled:
                    d = delta[i]
                    cexp_parts(d * z[2 * i], d * z[2 * i + 1], &re, &im)
                else:
                    cexp_parts(z[2 * i], z[2 * i + 1], &re, &im)
                out[2 * i] = <real_t> re
                out[2 * i + 1] = <real_t> im


def conj_pair_rows(const real_t[:, ::1] c, const real_t[:, ::1] h,
                   real_t[::1] out, int num_threads):
    """out[r] = 2 Re(sum_k c[r, k] h[r, k]); c, h interleaved (rows, 2N)."""
    cdef Py_ssize_t r, rows = c.shape[0], n = c.shape[1] // 2
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    if (h.shape[0] != rows or h.shape[1] != c.shape[1]
            or out.shape[0] != rows or c.shape[1] != 2 * n):
        raise ValueError("c, h and out shapes do not match")
    if rows == 0:
        return
    if n == 0:
        out[:] = 0
        return
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule='static'):
            out[r] = <real_t> conj_pair_row(&c[r, 0], &h[r, 0], n)
