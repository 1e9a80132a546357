# cython: language_level=3
"""Kernels of the numerically stable reductions and activations.

Design
------
Row functions take a C-contiguous 2-D view ``(rows, n)``: the reduction axis
was moved last by the caller, so every row is contiguous. Rows are split
between threads by a static ``prange``; each row is handled by one small
``noexcept nogil`` function.

* softmax: three sweeps of one row held in cache: the maximum (32
  independent running maxima), then ``e = exp(x - max)`` stored to the output
  and summed (in double, 32 partial sums), then a scale by ``1 / sum``. The
  loops are the C loops of ``_vexp.h``: a branch-free exp that vectorises
  (libm's is a call per element) and lane-wise max and sum, each dispatched
  at load time between an SSE2, an AVX2 + FMA and an AVX-512 build (the
  arithmetic, not memory, bounds a 4096-wide row; the build is chosen once
  per process, so every thread computes alike). log_softmax and log_sum_exp
  use the same maximum and sum. A row whose maximum is infinite gives NaN
  (softmax, log_softmax: ``inf - inf``) or that infinity (log_sum_exp).
* logcumsumexp: ``acc = logaddexp(acc, x_t)`` written with one exponential of a
  non-positive number per step.
* segsum: row ``i`` of the ``(n, n)`` output is row ``i - 1`` plus ``x[i]``
  below the diagonal (a running sum per column, never a difference of prefix
  sums), 0 on the diagonal and ``-inf`` above it.
* elementwise functions (sigmoid, silu, softplus) run over a flat contiguous
  array in blocks of ``BLOCK`` elements; every formula evaluates ``exp`` of a
  non-positive argument only, so no finite input overflows. sigmoid and silu
  are the vectorised loops of ``_vexp.h`` (on the gate elements of
  ``_vmath.h``).
* rms_norm: rows ``(rows, channels)``, each row split into groups of
  ``group`` contiguous channels; the sum of squares accumulates in double.
"""
from cython.parallel cimport prange
from libc.math cimport log, log1p, log1pf, sqrt, fabs, fabsf, INFINITY, NAN

from zilla_muf._types cimport real_t
from zilla_muf._vmath cimport vexp

cdef enum:
    BLOCK = 4096

cdef double LOG2 = 0.6931471805599453


cdef extern from "_vexp.h" nogil:
    float zm_max_f(const float *x, Py_ssize_t n)
    double zm_max_d(const double *x, Py_ssize_t n)
    double zm_exp_sum_store_f(const float *x, float *e, Py_ssize_t n, float m)
    double zm_exp_sum_store_d(const double *x, double *e, Py_ssize_t n,
                              double m)
    double zm_exp_sum_f(const float *x, Py_ssize_t n, float m)
    double zm_exp_sum_d(const double *x, Py_ssize_t n, double m)
    void zm_scale_f(float *e, Py_ssize_t n, float c)
    void zm_scale_d(double *e, Py_ssize_t n, double c)
    void zm_sigmoid_f(const float *x, float *out, Py_ssize_t n)
    void zm_sigmoid_d(const double *x, double *out, Py_ssize_t n)
    void zm_silu_f(const float *x, float *out, Py_ssize_t n)
    void zm_silu_d(const double *x, double *out, Py_ssize_t n)
    double zm_sumsq_f(const float *x, Py_ssize_t n)
    double zm_sumsq_d(const double *x, Py_ssize_t n)
    void zm_mulsilu_f(const float *x, const float *z, float *out, Py_ssize_t n)
    void zm_mulsilu_d(const double *x, const double *z, double *out,
                      Py_ssize_t n)


cdef inline real_t r_log1p(real_t x) noexcept nogil:
    if real_t is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline real_t r_fabs(real_t x) noexcept nogil:
    if real_t is float:
        return fabsf(x)
    else:
        return fabs(x)


# ---------------------------------------------------------------------------
# Row functions
# ---------------------------------------------------------------------------

cdef inline real_t row_max(const real_t *x, Py_ssize_t n) noexcept nogil:
    """Largest element, ignoring NaN (-inf for an empty row)."""
    if real_t is float:
        return zm_max_f(x, n)
    else:
        return zm_max_d(x, n)


cdef inline bint row_has_nan(const real_t *x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if x[i] != x[i]:
            return True
    return False


cdef inline double lane_sumsq(const real_t *x, Py_ssize_t n) noexcept nogil:
    """sum(x**2) in double, in eight partial sums."""
    if real_t is float:
        return zm_sumsq_f(x, n)
    else:
        return zm_sumsq_d(x, n)


cdef inline void mul_silu(const real_t *x, const real_t *z, real_t *out,
                          Py_ssize_t n) noexcept nogil:
    """out = x * silu(z), by the vectorised C loops."""
    if real_t is float:
        zm_mulsilu_f(x, z, out, n)
    else:
        zm_mulsilu_d(x, z, out, n)


cdef inline double row_exp_sum(const real_t *x, real_t *out, Py_ssize_t n,
                               real_t m) noexcept nogil:
    """sum(exp(x - m)) in double; the terms are stored to `out` unless it is
    NULL (`out` may be `x`)."""
    if real_t is float:
        if out != NULL:
            return zm_exp_sum_store_f(x, out, n, m)
        return zm_exp_sum_f(x, n, m)
    else:
        if out != NULL:
            return zm_exp_sum_store_d(x, out, n, m)
        return zm_exp_sum_d(x, n, m)


cdef inline void row_scale(real_t *e, Py_ssize_t n, real_t c) noexcept nogil:
    if real_t is float:
        zm_scale_f(e, n, c)
    else:
        zm_scale_d(e, n, c)


cdef inline void softmax_row(const real_t *x, real_t *out, Py_ssize_t n) noexcept nogil:
    cdef real_t m = row_max(x, n)
    row_scale(out, n, <real_t> (1.0 / row_exp_sum(x, out, n, m)))


cdef inline void log_softmax_row(const real_t *x, real_t *out, Py_ssize_t n) noexcept nogil:
    cdef real_t m = row_max(x, n)
    cdef real_t shift
    cdef Py_ssize_t i
    cdef double s
    s = row_exp_sum(x, NULL, n, m)
    shift = <real_t> log(s)
    # (x - m) - log(s): exact small results even when |m| >> log(s)
    for i in range(n):
        out[i] = (x[i] - m) - shift


cdef inline real_t log_sum_exp_row(const real_t *x, Py_ssize_t n) noexcept nogil:
    cdef real_t m = row_max(x, n)
    if m == INFINITY or m == -INFINITY:
        # a NaN would be ignored by the maximum; otherwise it propagates
        # through the sum below
        return NAN if row_has_nan(x, n) else m
    return m + <real_t> log(row_exp_sum(x, NULL, n, m))


cdef inline real_t log_add_exp(real_t a, real_t b) noexcept nogil:
    """log(exp(a) + exp(b)) with one exp of a non-positive number."""
    if a == b:
        return a + <real_t> LOG2       # also both +inf or both -inf
    if a > b:
        return a + r_log1p(vexp(b - a))
    if b > a:
        return b + r_log1p(vexp(a - b))
    return a + b                       # a NaN


cdef inline void logcumsumexp_row(const real_t *x, real_t *out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef real_t acc
    if n == 0:
        return
    acc = x[0]
    out[0] = acc
    for i in range(1, n):
        acc = log_add_exp(acc, x[i])
        out[i] = acc


cdef inline void segsum_row(const real_t *x, real_t *out, Py_ssize_t n) noexcept nogil:
    """out (n, n): out[i, j] = out[i-1, j] + x[i] for j < i."""
    cdef Py_ssize_t i, j
    cdef real_t xi
    cdef real_t *row
    cdef real_t *prev
    for i in range(n):
        row = out + i * n
        xi = x[i]
        if i > 0:
            prev = row - n
            for j in range(i):
                row[j] = prev[j] + xi
        row[i] = 0
        for j in range(i + 1, n):
            row[j] = -INFINITY


cdef inline void rms_norm_row(const real_t *x, const real_t *z, const real_t *w,
                              real_t *out, Py_ssize_t c, Py_ssize_t group,
                              double eps, bint gated,
                              bint norm_before_gate) noexcept nogil:
    """One row, group by group; every pass is a vectorised loop."""
    cdef Py_ssize_t g0, i
    cdef double ss
    cdef real_t r
    g0 = 0
    while g0 < c:
        if gated and not norm_before_gate:
            mul_silu(x + g0, z + g0, out + g0, group)
            ss = lane_sumsq(out + g0, group)
        else:
            ss = lane_sumsq(x + g0, group)
        r = <real_t> (1.0 / sqrt(ss / group + eps))
        if not gated:
            for i in range(g0, g0 + group):
                out[i] = x[i] * r * w[i]
        elif norm_before_gate:
            mul_silu(x + g0, z + g0, out + g0, group)
            for i in range(g0, g0 + group):
                out[i] = out[i] * r * w[i]
        else:
            for i in range(g0, g0 + group):
                out[i] = out[i] * r * w[i]
        g0 = g0 + group


# ---------------------------------------------------------------------------
# Element functions: exp only ever sees -|x|.
# ---------------------------------------------------------------------------

cdef inline real_t softplus_elem(real_t x, real_t beta, real_t threshold) noexcept nogil:
    cdef real_t z = beta * x
    if z > threshold:
        return x
    return ((z if z > 0 else 0) + r_log1p(vexp(-r_fabs(z)))) / beta


# ---------------------------------------------------------------------------
# Loops and entry points
# ---------------------------------------------------------------------------

cdef enum:
    OP_SOFTMAX = 0
    OP_LOG_SOFTMAX = 1
    OP_LOGCUMSUMEXP = 2


cdef void rows_loop(int op, const real_t *X, real_t *O, Py_ssize_t rows,
                    Py_ssize_t n, int nthreads) noexcept nogil:
    cdef Py_ssize_t r
    for r in prange(rows, num_threads=nthreads, schedule='static'):
        if op == OP_SOFTMAX:
            softmax_row(X + r * n, O + r * n, n)
        elif op == OP_LOG_SOFTMAX:
            log_softmax_row(X + r * n, O + r * n, n)
        else:
            logcumsumexp_row(X + r * n, O + r * n, n)


def _check_threads(int num_threads):
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")


def _check_rows(Py_ssize_t xr, Py_ssize_t xn, Py_ssize_t orows, Py_ssize_t on):
    if xr != orows or xn != on:
        raise ValueError(
            f"output shape ({orows}, {on}) does not match input ({xr}, {xn})")


def rows(int op, const real_t[:, ::1] x, real_t[:, ::1] out, int num_threads):
    """Row-wise softmax (op 0), log_softmax (1) or logcumsumexp (2)."""
    _check_threads(num_threads)
    _check_rows(x.shape[0], x.shape[1], out.shape[0], out.shape[1])
    if op < 0 or op > 2:
        raise ValueError(f"unknown row operation {op}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        rows_loop(op, &x[0, 0], &out[0, 0], x.shape[0], x.shape[1],
                  num_threads)


def log_sum_exp(const real_t[:, ::1] x, real_t[::1] out, int num_threads):
    """out[r] = log(sum(exp(x[r, :])))."""
    cdef Py_ssize_t r, rows = x.shape[0], n = x.shape[1]
    _check_threads(num_threads)
    if out.shape[0] != rows:
        raise ValueError(f"output length {out.shape[0]} does not match {rows} rows")
    if rows == 0:
        return
    if n == 0:
        out[:] = -INFINITY
        return
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule='static'):
            out[r] = log_sum_exp_row(&x[r, 0], n)


def segsum(const real_t[:, ::1] x, real_t[:, :, ::1] out, int num_threads):
    """out[r] = the (n, n) segment sums of x[r]."""
    cdef Py_ssize_t r, rows = x.shape[0], n = x.shape[1]
    _check_threads(num_threads)
    if out.shape[0] != rows or out.shape[1] != n or out.shape[2] != n:
        raise ValueError("output shape does not match (rows, n, n)")
    if rows == 0 or n == 0:
        return
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule='static'):
            segsum_row(&x[r, 0], &out[r, 0, 0], n)


cdef enum:
    OP_SIGMOID = 0
    OP_SILU = 1
    OP_SOFTPLUS = 2


def elementwise(int op, const real_t[::1] x, real_t[::1] out, double beta,
                double threshold, int num_threads):
    """sigmoid (op 0), silu (1) or softplus(beta, threshold) (2), elementwise."""
    cdef Py_ssize_t n = x.shape[0], nblk, b, i, i0, i1
    cdef real_t rb = <real_t> beta, rt = <real_t> threshold
    _check_threads(num_threads)
    if out.shape[0] != n:
        raise ValueError(f"output length {out.shape[0]} does not match {n}")
    if op < 0 or op > 2:
        raise ValueError(f"unknown elementwise operation {op}")
    if n == 0:
        return
    nblk = (n + BLOCK - 1) // BLOCK
    with nogil:
        for b in prange(nblk, num_threads=num_threads, schedule='static'):
            i0 = b * BLOCK
            i1 = i0 + BLOCK if i0 + BLOCK < n else n
            if op == OP_SIGMOID:
                if real_t is float:
                    zm_sigmoid_f(&x[i0], &out[i0], i1 - i0)
                else:
                    zm_sigmoid_d(&x[i0], &out[i0], i1 - i0)
            elif op == OP_SILU:
                if real_t is float:
                    zm_silu_f(&x[i0], &out[i0], i1 - i0)
                else:
                    zm_silu_d(&x[i0], &out[i0], i1 - i0)
            else:
                for i in range(i0, i1):
                    out[i] = softplus_elem(x[i], rb, rt)


def _check_channels(Py_ssize_t c, Py_ssize_t stride, Py_ssize_t itemsize,
                    str name):
    """Rows may be strided; the channels of a row must be adjacent."""
    if c > 1 and stride != itemsize:
        raise ValueError(f"{name} must have contiguous channels")


def silu_rows(const real_t[:, :] x, real_t[:, :] out, int num_threads):
    """out = silu(x) for (rows, C) views whose rows may be strided (a slice
    of a wider array's columns); the channels contiguous."""
    cdef Py_ssize_t r, rows = x.shape[0], c = x.shape[1]
    _check_threads(num_threads)
    _check_rows(rows, c, out.shape[0], out.shape[1])
    if rows == 0 or c == 0:
        return
    _check_channels(c, x.strides[1], sizeof(real_t), "x")
    _check_channels(c, out.strides[1], sizeof(real_t), "out")
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule='static'):
            if real_t is float:
                zm_silu_f(&x[r, 0], &out[r, 0], c)
            else:
                zm_silu_d(&x[r, 0], &out[r, 0], c)


def rms_norm(const real_t[:, :] x, const real_t[:, :] z,
             const real_t[::1] weight, real_t[:, ::1] out, Py_ssize_t group,
             double eps, bint gated, bint norm_before_gate, int num_threads):
    """Row-wise RMS normalisation in groups of `group` channels (x's and
    z's rows may be strided, their channels contiguous)."""
    cdef Py_ssize_t r, rows = x.shape[0], c = x.shape[1]
    _check_threads(num_threads)
    _check_rows(rows, c, out.shape[0], out.shape[1])
    if weight.shape[0] != c:
        raise ValueError(f"weight length {weight.shape[0]} does not match {c}")
    if gated and (z.shape[0] != rows or z.shape[1] != c):
        raise ValueError("z shape does not match x")
    if rows == 0 or c == 0:
        return
    if group < 1 or c % group != 0:
        raise ValueError(f"group {group} does not divide {c} channels")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _check_channels(c, x.strides[1], sizeof(real_t), "x")
    if gated:
        _check_channels(c, z.strides[1], sizeof(real_t), "z")
    with nogil:
        for r in prange(rows, num_threads=num_threads, schedule='static'):
            rms_norm_row(&x[r, 0], &z[r, 0] if gated else &x[r, 0], &weight[0],
                         &out[r, 0], c, group, eps, gated, norm_before_gate)
