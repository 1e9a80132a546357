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
  and the pair terms with conj(p), conj(w) and conj(c) in place of p, w, c
  for gw and sp (they are antiholomorphic in w and p). The caller forms
  gp_i = conj(w_i) sp_i. One pass over the L x N terms, each reciprocal
  as conj(d)/|d|^2, in double; rows split over threads by a static
  ``prange`` (each row's outputs are its own).
"""
from cython.parallel cimport prange



cdef void cauchy_row(const double *z, const double *p, const double *w,
                     const double *c, Py_ssize_t L, Py_ssize_t N, int pairs,
                     double *gz, double *gw, double *sp) noexcept nogil:
    cdef Py_ssize_t k, i
    cdef double zr, zi, cr, ci, dr, di, m, Dr, Di, D2r, D2i, wr, wi
    cdef double tzr, tzi, sgn
    for i in range(2 * N):
        gw[i] = 0.0
        sp[i] = 0.0
    for k in range(L):
        zr = z[2 * k]
        zi = z[2 * k + 1]
        cr = c[2 * k]
        ci = c[2 * k + 1]
        tzr = 0.0
        tzi = 0.0
        for i in range(N):
            # D = 1/(z - p)
            dr = zr - p[2 * i]
            di = zi - p[2 * i + 1]
            m = 1.0 / (dr * dr + di * di)
            Dr = dr * m
            Di = -di * m
            D2r = Dr * Dr - Di * Di
            D2i = 2.0 * Dr * Di
            wr = w[2 * i]
            wi = w[2 * i + 1]
            # gw += conj(D) c ; sp += conj(D2) c
            gw[2 * i] += Dr * cr + Di * ci
            gw[2 * i + 1] += Dr * ci - Di * cr
            sp[2 * i] += D2r * cr + D2i * ci
            sp[2 * i + 1] += D2r * ci - D2i * cr
            # t += w D2
            tzr += wr * D2r - wi * D2i
            tzi += wr * D2i + wi * D2r
        if pairs:
            for i in range(N):
                # D' = 1/(z - conj(p))
                dr = zr - p[2 * i]
                di = zi + p[2 * i + 1]
                m = 1.0 / (dr * dr + di * di)
                Dr = dr * m
                Di = -di * m
                D2r = Dr * Dr - Di * Di
                D2i = 2.0 * Dr * Di
                wr = w[2 * i]
                wi = -w[2 * i + 1]
                # gw += D' conj(c) ; sp += D'^2 conj(c), i.e. conj(conj(D') c)
                gw[2 * i] += Dr * cr + Di * ci
                gw[2 * i + 1] += Di * cr - Dr * ci
                sp[2 * i] += D2r * cr + D2i * ci
                sp[2 * i + 1] += D2i * cr - D2r * ci
                tzr += wr * D2r - wi * D2i
                tzi += wr * D2i + wi * D2r
        # gz = -c conj(t)
        gz[2 * k] = -(cr * tzr + ci * tzi)
        gz[2 * k + 1] = -(ci * tzr - cr * tzi)


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
