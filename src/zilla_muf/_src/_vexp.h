/*
 * Vectorised row loops of the stable operations (exp of a shifted row, max,
 * sum, sigmoid, SiLU) over the element functions of _vmath.h.
 */
#ifndef ZM_VEXP_H
#define ZM_VEXP_H

#include "_vmath.h"


/* The passes of a softmax row: the maximum, e = exp(x - m) and its sum,
 * a scale. Each reduction keeps ZM_RLANES independent running values (lane
 * k takes the elements i = k mod ZM_RLANES in order, and the lanes are
 * combined in a fixed order at the end), so that its loop vectorises
 * without reassociation and its result is the same on every build. With 32
 * lanes gcc vectorises the loop over the lanes; with 8 it unrolled that
 * loop first and left the maximum scalar. */
#define ZM_RLANES 32

/* Largest element, ignoring NaN (-inf for n == 0): a select that keeps m
 * on NaN is maxps. */
#define ZM_DEFINE_MAX(name, T)                                              \
ZM_CLONES                                                                   \
static T name(const T *x, ptrdiff_t n)                                      \
{                                                                           \
    T m[ZM_RLANES];                                                         \
    ptrdiff_t i = 0;                                                        \
    for (int k = 0; k < ZM_RLANES; k++)                                     \
        m[k] = -INFINITY;                                                   \
    for (; i + ZM_RLANES <= n; i += ZM_RLANES)                              \
        for (int k = 0; k < ZM_RLANES; k++)                                 \
            m[k] = x[i + k] > m[k] ? x[i + k] : m[k];                       \
    for (; i < n; i++)                                                      \
        m[0] = x[i] > m[0] ? x[i] : m[0];                                   \
    T best = m[0];                                                          \
    for (int k = 1; k < ZM_RLANES; k++)                                     \
        best = m[k] > best ? m[k] : best;                                   \
    return best;                                                            \
}

/* e[i] = exp(x[i] - m), i < n (e may be x: in place), and the sum of the
 * e[i] in double, ZM_RLANES partial sums. Two loops, the second over what
 * the first stored, still in L1: one fused loop vectorised well only where
 * its lanes fill AVX-512 registers. The clamp bounds are hidden from the
 * optimiser (see zm_expf_in). */
#define ZM_DEFINE_EXPSUM(name, T, EXP_IN, LO, HI)                           \
ZM_CLONES                                                                   \
static double name(const T *x, T *e, ptrdiff_t n, T m)                      \
{                                                                           \
    double s[ZM_RLANES];                                                    \
    T lo = LO, hi = HI;                                                     \
    ptrdiff_t i = 0;                                                        \
    ZM_OPAQUE(lo);                                                          \
    ZM_OPAQUE(hi);                                                          \
    for (ptrdiff_t j = 0; j < n; j++)                                       \
        e[j] = EXP_IN(x[j] - m, lo, hi);                                    \
    for (int k = 0; k < ZM_RLANES; k++)                                     \
        s[k] = 0.0;                                                         \
    for (; i + ZM_RLANES <= n; i += ZM_RLANES)                              \
        for (int k = 0; k < ZM_RLANES; k++)                                 \
            s[k] += (double) e[i + k];                                      \
    for (; i < n; i++)                                                      \
        s[0] += (double) e[i];                                              \
    for (int w = ZM_RLANES / 2; w >= 1; w /= 2)                             \
        for (int k = 0; k < w; k++)                                         \
            s[k] += s[k + w];                                               \
    return s[0];                                                            \
}

/* The same sum without storing the terms: blocks of ZM_EBUF through a
 * buffer on the stack. */
#define ZM_EBUF 1024
#define ZM_DEFINE_EXPSUM_NOSTORE(name, T, EXPSUM)                           \
static double name(const T *x, ptrdiff_t n, T m)                            \
{                                                                           \
    T buf[ZM_EBUF];                                                         \
    double total = 0.0;                                                     \
    for (ptrdiff_t i0 = 0; i0 < n; i0 += ZM_EBUF)                           \
        total += EXPSUM(x + i0, buf, n - i0 < ZM_EBUF ? n - i0 : ZM_EBUF, m);\
    return total;                                                           \
}

/* e[i] *= c, i < n. */
#define ZM_DEFINE_SCALE(name, T)                                            \
ZM_CLONES                                                                   \
static void name(T *e, ptrdiff_t n, T c)                                    \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++)                                       \
        e[i] *= c;                                                          \
}

/* Eight running sums (sum of squares), for the loops below. */
#define ZM_LANES 8

/* Logistic sigmoid and SiLU of n elements, and c silu'(x) (the elements
 * of _vmath.h). */
#define ZM_DEFINE_GATES(sig, silu, dsilu, sfx, T)                           \
ZM_CLONES                                                                   \
static void sig(const T *x, T *out, ptrdiff_t n)                            \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++)                                       \
        out[i] = zm_sig_##sfx(x[i]);                                        \
}                                                                           \
ZM_CLONES                                                                   \
static void silu(const T *x, T *out, ptrdiff_t n)                           \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++)                                       \
        out[i] = zm_silu1_##sfx(x[i]);                                      \
}                                                                           \
ZM_CLONES                                                                   \
static void dsilu(const T *x, const T *c, T *g, ptrdiff_t n)                \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++)                                       \
        g[i] = c[i] * zm_dsilu_##sfx(x[i]);                                 \
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
#define ZM_DEFINE_MULSILU(name, sfx, T)                                     \
ZM_CLONES                                                                   \
static void name(const T *x, const T *z, T *out, ptrdiff_t n)               \
{                                                                           \
    for (ptrdiff_t i = 0; i < n; i++)                                       \
        out[i] = x[i] * zm_silu1_##sfx(z[i]);                               \
}

/* The pullback of one row of the grouped RMS norm: C channels in groups of
 * G, eps added to each group's mean square. mode 0: no gate; 1: the gate
 * after the norm, y = norm(x) w silu(z); 2: the gate first, y = norm(x
 * silu(z)) w. sg holds sigmoid(z) (modes 1 and 2; z and sg are not read in
 * mode 0); v and q are scratch rows of C. With v the normalised input, r =
 * 1 / rms(v) per group, n = v r and q the cotangent of n w: dv = r (q w -
 * n mean(q w n)); gx receives x's gradient, gz (modes 1, 2) z's, gw (or
 * NULL) accumulates q n in double. The group sums run in double in
 * ZM_LANES partial sums, as the forward's sum of squares does. */
#define ZM_DEFINE_RMSBACK(name, sfx, T)                                     \
ZM_CLONES                                                                   \
static void name(const T *x, const T *z, const T *sg, const T *w,           \
                 const T *dy, ptrdiff_t C, ptrdiff_t G, double eps,         \
                 int mode, T *v, T *q, T *gx, T *gz, double *gw)            \
{                                                                           \
    ptrdiff_t i, j0, m;                                                     \
    if (mode == 2)                                                          \
        for (i = 0; i < C; i++)                                             \
            v[i] = x[i] * zm_silu_sig_##sfx(z[i], sg[i]);                   \
    else                                                                    \
        for (i = 0; i < C; i++)                                             \
            v[i] = x[i];                                                    \
    if (mode == 1)                                                          \
        for (i = 0; i < C; i++)                                             \
            q[i] = dy[i] * zm_silu_sig_##sfx(z[i], sg[i]);                  \
    else                                                                    \
        for (i = 0; i < C; i++)                                             \
            q[i] = dy[i];                                                   \
    for (j0 = 0; j0 < C; j0 += G) {                                         \
        const T *vg = v + j0, *qg = q + j0, *wg = w + j0;                   \
        double s[ZM_LANES], p[ZM_LANES], ss = 0.0, pr = 0.0;                \
        for (int k = 0; k < ZM_LANES; k++) {                                \
            s[k] = 0.0;                                                     \
            p[k] = 0.0;                                                     \
        }                                                                   \
        for (m = 0; m + ZM_LANES <= G; m += ZM_LANES)                       \
            for (int k = 0; k < ZM_LANES; k++)                              \
                s[k] += (double) vg[m + k] * (double) vg[m + k];            \
        for (; m < G; m++)                                                  \
            s[0] += (double) vg[m] * (double) vg[m];                        \
        for (int k = 0; k < ZM_LANES; k++)                                  \
            ss += s[k];                                                     \
        T r = (T) (1.0 / sqrt(ss / (double) G + eps));                      \
        for (m = 0; m + ZM_LANES <= G; m += ZM_LANES)                       \
            for (int k = 0; k < ZM_LANES; k++)                              \
                p[k] += (double) (qg[m + k] * wg[m + k])                    \
                        * (double) (vg[m + k] * r);                         \
        for (; m < G; m++)                                                  \
            p[0] += (double) (qg[m] * wg[m]) * (double) (vg[m] * r);        \
        for (int k = 0; k < ZM_LANES; k++)                                  \
            pr += p[k];                                                     \
        T proj = (T) (pr / (double) G);                                     \
        if (gw != NULL)                                                     \
            for (m = 0; m < G; m++)                                         \
                gw[j0 + m] += (double) qg[m] * (double) (vg[m] * r);        \
        for (m = 0; m < G; m++)                                             \
            gx[j0 + m] = r * (qg[m] * wg[m] - (vg[m] * r) * proj);          \
        if (mode == 1)                                                      \
            for (m = 0; m < G; m++) {                                       \
                T sd = zm_dsilu_sig_##sfx(z[j0 + m], sg[j0 + m]);           \
                gz[j0 + m] = dy[j0 + m] * (vg[m] * r) * wg[m] * sd;         \
            }                                                               \
    }                                                                       \
    if (mode == 2)                                                          \
        for (i = 0; i < C; i++) {                                           \
            T sm = sg[i], dv = gx[i];                                       \
            gz[i] = dv * x[i] * zm_dsilu_sig_##sfx(z[i], sm);               \
            gx[i] = dv * zm_silu_sig_##sfx(z[i], sm);                       \
        }                                                                   \
}

ZM_DEFINE_SUMSQ(zm_sumsq_f, float)
ZM_DEFINE_SUMSQ(zm_sumsq_d, double)
ZM_DEFINE_RMSBACK(zm_rmsback_f, f, float)
ZM_DEFINE_RMSBACK(zm_rmsback_d, d, double)
ZM_DEFINE_MULSILU(zm_mulsilu_f, f, float)
ZM_DEFINE_MULSILU(zm_mulsilu_d, d, double)
ZM_DEFINE_GATES(zm_sigmoid_f, zm_silu_f, zm_silu_back_f, f, float)
ZM_DEFINE_GATES(zm_sigmoid_d, zm_silu_d, zm_silu_back_d, d, double)
ZM_DEFINE_MAX(zm_max_f, float)
ZM_DEFINE_MAX(zm_max_d, double)
ZM_DEFINE_EXPSUM(zm_exp_sum_store_f, float, zm_expf_in, ZM_EXPF_LO, ZM_EXPF_HI)
ZM_DEFINE_EXPSUM(zm_exp_sum_store_d, double, zm_exp_in, ZM_EXP_LO, ZM_EXP_HI)
ZM_DEFINE_EXPSUM_NOSTORE(zm_exp_sum_f, float, zm_exp_sum_store_f)
ZM_DEFINE_EXPSUM_NOSTORE(zm_exp_sum_d, double, zm_exp_sum_store_d)
ZM_DEFINE_SCALE(zm_scale_f, float)
ZM_DEFINE_SCALE(zm_scale_d, double)

#endif
