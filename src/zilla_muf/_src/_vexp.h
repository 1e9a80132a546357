/*
 * Vectorised row loops of the stable operations (exp of a shifted row, max,
 * sum, sigmoid, SiLU) over the element functions of _vmath.h.
 */
#ifndef ZM_VEXP_H
#define ZM_VEXP_H

#include "_vmath.h"


/* e[i] = exp(x[i] - m), i < n: the loops that vectorise. */
ZM_CLONES
static void zm_exp_shift_f(const float *x, float *e, ptrdiff_t n, float m)
{
    for (ptrdiff_t i = 0; i < n; i++)
        e[i] = zm_expf(x[i] - m);
}

ZM_CLONES
static void zm_exp_shift_d(const double *x, double *e, ptrdiff_t n, double m)
{
    for (ptrdiff_t i = 0; i < n; i++)
        e[i] = zm_exp(x[i] - m);
}

/* Largest element, ignoring NaN (-inf for n == 0); eight running maxima so
 * that the loop vectorises (a select that keeps m on NaN is maxps). */
#define ZM_LANES 8
#define ZM_DEFINE_MAX(name, T)                                              \
ZM_CLONES                                                                   \
static T name(const T *x, ptrdiff_t n)                                      \
{                                                                           \
    T m[ZM_LANES];                                                          \
    ptrdiff_t i = 0;                                                        \
    for (int k = 0; k < ZM_LANES; k++)                                      \
        m[k] = -INFINITY;                                                   \
    for (; i + ZM_LANES <= n; i += ZM_LANES)                                \
        for (int k = 0; k < ZM_LANES; k++)                                  \
            m[k] = x[i + k] > m[k] ? x[i + k] : m[k];                       \
    for (; i < n; i++)                                                      \
        m[0] = x[i] > m[0] ? x[i] : m[0];                                   \
    T best = m[0];                                                          \
    for (int k = 1; k < ZM_LANES; k++)                                      \
        best = m[k] > best ? m[k] : best;                                   \
    return best;                                                            \
}

/* Sum in double, in eight partial sums (vectorises without reassociation). */
#define ZM_DEFINE_SUM(name, T)                                              \
ZM_CLONES                                                                   \
static double name(const T *e, ptrdiff_t n)                                 \
{                                                                           \
    double s[ZM_LANES];                                                     \
    ptrdiff_t i = 0;                                                        \
    for (int k = 0; k < ZM_LANES; k++)                                      \
        s[k] = 0.0;                                                         \
    for (; i + ZM_LANES <= n; i += ZM_LANES)                                \
        for (int k = 0; k < ZM_LANES; k++)                                  \
            s[k] += (double) e[i + k];                                      \
    for (; i < n; i++)                                                      \
        s[0] += (double) e[i];                                              \
    double total = 0.0;                                                     \
    for (int k = 0; k < ZM_LANES; k++)                                      \
        total += s[k];                                                      \
    return total;                                                           \
}

/* Logistic sigmoid and SiLU of n elements: exp only of -|x| (no overflow);
 * silu at x = -inf is the limit -0 rather than -inf * 0. */
#define ZM_DEFINE_GATES(sig, silu, T, EXP)                                  \
ZM_CLONES                                                                   \
static void sig(const T *x, T *out, ptrdiff_t n)                            \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                     \
        T v = x[i];                                                         \
        T e = EXP(v < 0 ? v : -v);                                          \
        T r = (T) 1 / ((T) 1 + e);                                          \
        out[i] = v >= 0 ? r : e * r;                                        \
    }                                                                       \
}                                                                           \
ZM_CLONES                                                                   \
static void silu(const T *x, T *out, ptrdiff_t n)                           \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                     \
        T v = x[i];                                                         \
        T e = EXP(v < 0 ? v : -v);                                          \
        T r = (T) 1 / ((T) 1 + e);                                          \
        T s = v >= 0 ? r : e * r;                                           \
        out[i] = s != 0 ? v * s : (T) -0.0;                                 \
    }                                                                       \
}

/* Sum of squares in double, in eight partial sums. */
#define ZM_DEFINE_SUMSQ(name, T)                                            \
ZM_CLONES                                                                   \
static double name(const T *x, ptrdiff_t n)                                 \
{                                                                           \
    double s[ZM_LANES];                                                     \
    ptrdiff_t i = 0;                                                        \
    for (int k = 0; k < ZM_LANES; k++)                                      \
        s[k] = 0.0;                                                         \
    for (; i + ZM_LANES <= n; i += ZM_LANES)                                \
        for (int k = 0; k < ZM_LANES; k++)                                  \
            s[k] += (double) x[i + k] * (double) x[i + k];                  \
    for (; i < n; i++)                                                      \
        s[0] += (double) x[i] * (double) x[i];                              \
    double total = 0.0;                                                     \
    for (int k = 0; k < ZM_LANES; k++)                                      \
        total += s[k];                                                      \
    return total;                                                           \
}

/* out = x * silu(z), elementwise (the gate of a gated normalisation). */
#define ZM_DEFINE_MULSILU(name, T, EXP)                                     \
ZM_CLONES                                                                   \
static void name(const T *x, const T *z, T *out, ptrdiff_t n)               \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                     \
        T v = z[i];                                                         \
        T e = EXP(v < 0 ? v : -v);                                          \
        T r = (T) 1 / ((T) 1 + e);                                          \
        T s = v >= 0 ? r : e * r;                                           \
        out[i] = x[i] * (s != 0 ? v * s : (T) -0.0);                        \
    }                                                                       \
}

ZM_DEFINE_SUMSQ(zm_sumsq_f, float)
ZM_DEFINE_SUMSQ(zm_sumsq_d, double)
ZM_DEFINE_MULSILU(zm_mulsilu_f, float, zm_expf)
ZM_DEFINE_MULSILU(zm_mulsilu_d, double, zm_exp)
ZM_DEFINE_GATES(zm_sigmoid_f, zm_silu_f, float, zm_expf)
ZM_DEFINE_GATES(zm_sigmoid_d, zm_silu_d, double, zm_exp)
ZM_DEFINE_MAX(zm_max_f, float)
ZM_DEFINE_MAX(zm_max_d, double)
ZM_DEFINE_SUM(zm_sum_f, float)
ZM_DEFINE_SUM(zm_sum_d, double)

#endif
