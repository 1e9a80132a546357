/*
 * The depthwise causal convolution's loops (float and double).
 *
 * Channel-major data (a row of L steps per batch and channel): the pullback
 * of one row.
 *
 * Time-major data: forward and pullback for a span of steps t0 <= t < t1 of
 * one sequence.
 * Row t of an array (its `dim` channels, contiguous) starts at p + t * row,
 * so the rows may be slices of a wider activation. wt is the weight
 * transposed, (W, dim): tap k of step t reads the input of step
 * t + k - (W - 1).
 *
 * Every step is a loop over its contiguous channels, which the compiler
 * vectorises (with the x86-64-v3 build taken on CPUs that have it). Width 4
 * (Mamba's) has its own loops that read the four taps and write the step
 * once; other widths add one tap at a time into the output row. Every sum
 * is formed in the same order: tap 0 first, steps in order.
 */
#ifndef ZM_CONV_H
#define ZM_CONV_H

#include "_vmath.h"

/* Channels of a block whose weight and bias gradients' sums stay in
 * registers (width 4). */
#define ZM_CONV_PB 16

/* The loops below read and write distinct rows (the callers' arrays do not
 * overlap); gcc does not trust `restrict` on block-scope pointers, and
 * without this gives up on the loops with many pointers. */
#if defined(__GNUC__) && !defined(__clang__)
#define ZM_IVDEP _Pragma("GCC ivdep")
#else
#define ZM_IVDEP
#endif

/* Sum of a[i] b[i] (b NULL: of a[i]), i < n, in ZM_CONV_LANES partial
 * sums (element i in sum i % ZM_CONV_LANES, the tail in sum 0) added in
 * order. */
#define ZM_CONV_LANES 8
#define ZM_DEFINE_CONV_LANE_DOT(sfx, T)                                     \
ZM_INLINE T zm_conv_lane_dot_##sfx(const T *a, const T *b, ptrdiff_t n)     \
{                                                                           \
    T acc[ZM_CONV_LANES];                                                   \
    T total = 0;                                                            \
    ptrdiff_t i = 0, tail = n - n % ZM_CONV_LANES;                          \
    for (int j = 0; j < ZM_CONV_LANES; j++)                                 \
        acc[j] = 0;                                                         \
    if (b == NULL) {                                                        \
        for (; i < tail; i += ZM_CONV_LANES)                                \
            for (int j = 0; j < ZM_CONV_LANES; j++)                         \
                acc[j] += a[i + j];                                         \
        for (; i < n; i++)                                                  \
            acc[0] += a[i];                                                 \
    } else {                                                                \
        for (; i < tail; i += ZM_CONV_LANES)                                \
            for (int j = 0; j < ZM_CONV_LANES; j++)                         \
                acc[j] += a[i + j] * b[i + j];                              \
        for (; i < n; i++)                                                  \
            acc[0] += a[i] * b[i];                                          \
    }                                                                       \
    for (int j = 0; j < ZM_CONV_LANES; j++)                                 \
        total += acc[j];                                                    \
    return total;                                                           \
}

/* The pullback of one channel-major row: g (L) the output's cotangent, x
 * (L) the input, h0 (W - 1, or NULL: zeros) the initial states, w (W) the
 * weights, gf (W - 1, or NULL) the final states' cotangent. Adds
 * sum_i g[i] x~[i + k] to gw[k] and sum_i g[i] to gb[0] (x~ = (h0, x));
 * writes gx (L) and gh0 (W - 1; not when W is 1) from
 * gx~[i + k] += w[k] g[i], k in order, then gf added to its last W - 1.
 * xt: scratch of L + W - 1. */
#define ZM_DEFINE_CONV_ROW_BACK(sfx, T)                                     \
ZM_CLONES                                                                   \
static void zm_conv_row_back_##sfx(const T *g, const T *x, const T *h0,     \
                                   const T *w, const T *gf, ptrdiff_t L,    \
                                   ptrdiff_t W, T *xt, T *gx, T *gh0, T *gw,\
                                   T *gb)                                   \
{                                                                           \
    for (ptrdiff_t i = 0; i < W - 1; i++)                                   \
        xt[i] = h0 != NULL ? h0[i] : (T) 0;                                 \
    memcpy(xt + W - 1, x, L * sizeof(T));                                   \
    for (ptrdiff_t k = 0; k < W; k++)                                       \
        gw[k] += zm_conv_lane_dot_##sfx(g, xt + k, L);                      \
    gb[0] += zm_conv_lane_dot_##sfx(g, NULL, L);                            \
    for (ptrdiff_t i = 0; i < L + W - 1; i++)                               \
        xt[i] = 0;                                                          \
    for (ptrdiff_t k = 0; k < W; k++) {                                     \
        const T wk = w[k];                                                  \
        T *restrict o = xt + k;                                             \
        ZM_IVDEP                                                            \
        for (ptrdiff_t i = 0; i < L; i++)                                   \
            o[i] += wk * g[i];                                              \
    }                                                                       \
    if (gf != NULL)                                                         \
        for (ptrdiff_t i = 0; i < W - 1; i++)                               \
            xt[L + i] += gf[i];                                             \
    for (ptrdiff_t i = 0; i < W - 1; i++)                                   \
        gh0[i] = xt[i];                                                     \
    memcpy(gx, xt + W - 1, L * sizeof(T));                                  \
}

/* Width 4's step: o[c] = b[c] + w0[c] r0[c] + w1[c] r1[c] + w2[c] r2[c]
 * + w3[c] r3[c] (b NULL: 0), the taps' weights in the rows of wt. */
#define ZM_DEFINE_CONV_TAPS4(sfx, T)                                        \
ZM_INLINE void zm_conv_taps4_##sfx(T *o, const T *b, const T *wt,           \
                                   const T *r0, const T *r1, const T *r2,   \
                                   const T *r3, ptrdiff_t dim)              \
{                                                                           \
    const T *w1 = wt + dim, *w2 = wt + 2 * dim, *w3 = wt + 3 * dim;         \
    if (b != NULL) {                                                        \
        ZM_IVDEP                                                            \
        for (ptrdiff_t c = 0; c < dim; c++)                                 \
            o[c] = b[c] + wt[c] * r0[c] + w1[c] * r1[c] + w2[c] * r2[c]     \
                   + w3[c] * r3[c];                                         \
    } else {                                                                \
        ZM_IVDEP                                                            \
        for (ptrdiff_t c = 0; c < dim; c++)                                 \
            o[c] = (T) 0 + wt[c] * r0[c] + w1[c] * r1[c] + w2[c] * r2[c]    \
                   + w3[c] * r3[c];                                         \
    }                                                                       \
}

/* Forward: out[t] = bias + sum_k wt[k] x[t + k - (W - 1)], then silu when
 * asked. init (W - 1 rows of dim, oldest first) stands for the steps before
 * 0; NULL means zeros. out is (steps, dim), C-contiguous. */
#define ZM_DEFINE_CONV_TM(sfx, T)                                      \
ZM_CLONES                                                                   \
static void zm_conv_tm_##sfx(const T *x, ptrdiff_t xrow, const T *wt,       \
                             const T *bias, const T *init, T *out,          \
                             ptrdiff_t t0, ptrdiff_t t1, ptrdiff_t dim,     \
                             ptrdiff_t W, int silu)                         \
{                                                                           \
    for (ptrdiff_t t = t0; t < t1; t++) {                                   \
        T *restrict o = out + t * dim;                                      \
        if (W == 4 && t >= 3) {                                             \
            const T *x0 = x + (t - 3) * xrow;                               \
            zm_conv_taps4_##sfx(o, bias, wt, x0, x0 + xrow, x0 + 2 * xrow,  \
                                x0 + 3 * xrow, dim);                        \
        } else {                                                            \
            ZM_IVDEP                                                        \
            for (ptrdiff_t c = 0; c < dim; c++)                             \
                o[c] = bias[c];                                             \
            for (ptrdiff_t k = 0; k < W; k++) {                             \
                ptrdiff_t s = t + k - (W - 1);                              \
                const T *restrict xs;                                       \
                if (s >= 0)                                                 \
                    xs = x + s * xrow;                                      \
                else if (init != NULL)                                      \
                    xs = init + (t + k) * dim;                              \
                else                                                        \
                    continue;                                               \
                const T *restrict wk = wt + k * dim;                        \
                ZM_IVDEP                                                    \
                for (ptrdiff_t c = 0; c < dim; c++)                         \
                    o[c] += wk[c] * xs[c];                                  \
            }                                                               \
        }                                                                   \
        if (silu) {                                                         \
            ZM_IVDEP                                                        \
            for (ptrdiff_t c = 0; c < dim; c++)                             \
                o[c] = zm_silu1_##sfx(o[c]);                                \
        }                                                                   \
    }                                                                       \
}

/* The weight and bias gradients' sums of steps ta <= t < tb, channels
 * ca <= c < cb, added into part (W + 1 rows of dim): part[k] += gg[t]
 * x[t - (W - 1 - k)] (taps before the start left out), part[W] += gg[t].
 * gg holds the rows of steps t0 on. */
#define ZM_DEFINE_CONV_TM_PARTS(sfx, T)                                     \
ZM_INLINE void zm_conv_tm_parts_##sfx(const T *gg, const T *x,               \
                                      ptrdiff_t xrow,                       \
                                      ptrdiff_t t0, ptrdiff_t ta,           \
                                      ptrdiff_t tb, ptrdiff_t ca,           \
                                      ptrdiff_t cb, ptrdiff_t dim,          \
                                      ptrdiff_t W, T *part)                 \
{                                                                           \
    for (ptrdiff_t t = ta; t < tb; t++) {                                   \
        const T *restrict r = gg + (t - t0) * dim;                          \
        for (ptrdiff_t k = 0; k < W; k++) {                                 \
            ptrdiff_t s = t - (W - 1 - k);                                  \
            if (s < 0)                                                      \
                continue;                                                   \
            const T *restrict xs = x + s * xrow;                            \
            T *restrict pk = part + k * dim;                                \
            ZM_IVDEP                                                        \
            for (ptrdiff_t c = ca; c < cb; c++)                             \
                pk[c] += r[c] * xs[c];                                      \
        }                                                                   \
        T *restrict pb = part + W * dim;                                    \
        ZM_IVDEP                                                            \
        for (ptrdiff_t c = ca; c < cb; c++)                                 \
            pb[c] += r[c];                                                  \
    }                                                                       \
}

/* Pullback, no initial states, for the steps t0 <= t < t1 of a sequence of
 * L steps. g is the cotangent of the output (with silu, of silu(pre); pre is
 * read only then). Writes gx rows t0..t1 - 1,
 *     gx[t] = sum_k wt[k] gg[t + W - 1 - k]   (k in order, terms past L
 *                                              left out),
 * with gg = g silu'(pre) (or g), and the span's weight and bias gradients
 * into part, (W + 1) rows of dim:
 *     part[k] = sum_t gg[t] x[t - (W - 1 - k)],  part[W] = sum_t gg[t].
 * gg: scratch of (t1 - t0 + W - 1) rows of dim. */
#define ZM_DEFINE_CONV_TM_BACK(sfx, T)                                 \
ZM_CLONES                                                                   \
static void zm_conv_tm_back_##sfx(const T *g, ptrdiff_t grow, const T *pre, \
                                  ptrdiff_t prow, int silu, const T *x,     \
                                  ptrdiff_t xrow, const T *wt, T *gx,       \
                                  ptrdiff_t gxrow, ptrdiff_t t0,            \
                                  ptrdiff_t t1, ptrdiff_t L, ptrdiff_t dim, \
                                  ptrdiff_t W, T *gg, T *part)              \
{                                                                           \
    ptrdiff_t te = t1 + W - 1 < L ? t1 + W - 1 : L;                         \
    for (ptrdiff_t t = t0; t < te; t++) {                                   \
        T *restrict r = gg + (t - t0) * dim;                                \
        const T *restrict gt = g + t * grow;                                \
        if (silu) {                                                         \
            const T *restrict pt = pre + t * prow;                          \
            ZM_IVDEP                                                        \
            for (ptrdiff_t i = 0; i < dim; i++)                             \
                r[i] = gt[i] * zm_dsilu_##sfx(pt[i]);                       \
        } else {                                                            \
            ZM_IVDEP                                                        \
            for (ptrdiff_t i = 0; i < dim; i++)                             \
                r[i] = gt[i];                                               \
        }                                                                   \
    }                                                                       \
    for (ptrdiff_t t = t0; t < t1; t++) {                                   \
        const T *restrict r = gg + (t - t0) * dim;                          \
        T *restrict o = gx + t * gxrow;                                     \
        if (W == 4 && t + 3 < L) {                                          \
            zm_conv_taps4_##sfx(o, NULL, wt, r + 3 * dim, r + 2 * dim,      \
                                r + dim, r, dim);                           \
            continue;                                                       \
        }                                                                   \
        ZM_IVDEP                                                            \
        for (ptrdiff_t c = 0; c < dim; c++)                                 \
            o[c] = 0;                                                       \
        for (ptrdiff_t k = 0; k < W; k++) {                                 \
            ptrdiff_t s = t + W - 1 - k;                                    \
            if (s >= L)                                                     \
                continue;                                                   \
            const T *restrict src = gg + (s - t0) * dim;                    \
            const T *restrict wk = wt + k * dim;                            \
            ZM_IVDEP                                                        \
            for (ptrdiff_t c = 0; c < dim; c++)                             \
                o[c] += wk[c] * src[c];                                     \
        }                                                                   \
    }                                                                       \
    for (ptrdiff_t c = 0; c < (W + 1) * dim; c++)                           \
        part[c] = 0;                                                        \
    if (W != 4) {                                                           \
        zm_conv_tm_parts_##sfx(gg, x, xrow, t0, t0, t1, 0, dim, dim, W, part);\
        return;                                                             \
    }                                                                       \
    /* width 4: the steps with taps before the sequence's start first, then \
     * blocks of ZM_CONV_PB channels with their five sums in registers */   \
    ptrdiff_t ts = t0 < 3 ? (t1 < 3 ? t1 : 3) : t0;                         \
    ptrdiff_t cs = dim - dim % ZM_CONV_PB;                                  \
    zm_conv_tm_parts_##sfx(gg, x, xrow, t0, t0, ts, 0, dim, dim, 4, part);  \
    for (ptrdiff_t c0 = 0; c0 < cs; c0 += ZM_CONV_PB) {                     \
        T a0[ZM_CONV_PB], a1[ZM_CONV_PB], a2[ZM_CONV_PB], a3[ZM_CONV_PB],   \
          a4[ZM_CONV_PB];                                                   \
        for (int i = 0; i < ZM_CONV_PB; i++) {                              \
            a0[i] = part[c0 + i];                                           \
            a1[i] = part[dim + c0 + i];                                     \
            a2[i] = part[2 * dim + c0 + i];                                 \
            a3[i] = part[3 * dim + c0 + i];                                 \
            a4[i] = part[4 * dim + c0 + i];                                 \
        }                                                                   \
        for (ptrdiff_t t = ts; t < t1; t++) {                               \
            const T *restrict r = gg + (t - t0) * dim + c0;                 \
            const T *restrict x0 = x + (t - 3) * xrow + c0;                 \
            const T *restrict x1 = x0 + xrow;                               \
            const T *restrict x2 = x1 + xrow;                               \
            const T *restrict x3 = x2 + xrow;                               \
            for (int i = 0; i < ZM_CONV_PB; i++) {                          \
                T gc = r[i];                                                \
                a0[i] += gc * x0[i];                                        \
                a1[i] += gc * x1[i];                                        \
                a2[i] += gc * x2[i];                                        \
                a3[i] += gc * x3[i];                                        \
                a4[i] += gc;                                                \
            }                                                               \
        }                                                                   \
        for (int i = 0; i < ZM_CONV_PB; i++) {                              \
            part[c0 + i] = a0[i];                                           \
            part[dim + c0 + i] = a1[i];                                     \
            part[2 * dim + c0 + i] = a2[i];                                 \
            part[3 * dim + c0 + i] = a3[i];                                 \
            part[4 * dim + c0 + i] = a4[i];                                 \
        }                                                                   \
    }                                                                       \
    zm_conv_tm_parts_##sfx(gg, x, xrow, t0, ts, t1, cs, dim, dim, 4, part); \
}

ZM_DEFINE_CONV_LANE_DOT(f, float)
ZM_DEFINE_CONV_LANE_DOT(d, double)
ZM_DEFINE_CONV_ROW_BACK(f, float)
ZM_DEFINE_CONV_ROW_BACK(d, double)
ZM_DEFINE_CONV_TAPS4(f, float)
ZM_DEFINE_CONV_TAPS4(d, double)
ZM_DEFINE_CONV_TM_PARTS(f, float)
ZM_DEFINE_CONV_TM_PARTS(d, double)
ZM_DEFINE_CONV_TM(f, float)
ZM_DEFINE_CONV_TM(d, double)
ZM_DEFINE_CONV_TM_BACK(f, float)
ZM_DEFINE_CONV_TM_BACK(d, double)

#endif
