/*
 * The pullback of h_t = a_t h_{t-1} + b_t along contiguous rows, time last:
 * the adjoint (reverse) scan of the cotangent and the decays' gradient in
 * one pass, with no shifted copy of the decays and no second pass over the
 * adjoint states.
 *
 * For a scan forward (step t at memory t) with cotangents c of the states
 * and cf of the final state,
 *     g_{n-1} = c_{n-1} + cf,   g_t = c_t + conj(a_{t+1}) g_{t+1},
 *     gb_t = g_t,   ga_t = g_t conj(h_{t-1})   (h_{-1} = h0, or ga_0 = 0),
 *     gh0 = conj(a_0) g_0;
 * a scan in reverse (step t at memory n-1-t) is the same with memory
 * mirrored. In memory, the adjoint walks the row the other way from the
 * forward, and its decay at a position is the forward's decay at the
 * position it came from: a pointer one element behind in the adjoint's
 * order. So the adjoint scan is zm_scanrow_* (_scanrow.h) on the decays as
 * they are, offset by one step.
 *
 * zm_scanback_{f,d}(a, h, c, ga, gb, n, cf, h0, has_h0, rev, gh0): real
 *   rows. The adjoint scan runs in blocks of ZM_SBLK steps, and ga of each
 *   block is formed right after it while its states are in L1.
 * zm_cscanback_{f,d}(K, a, h, c, ga, gb, rs, n, cf, h0, rev, gh0): K <= 4
 *   complex rows (interleaved re, im; row k at offset k rs) in lockstep:
 *   one step of every row per iteration, so that the K dependent chains
 *   of complex multiply-adds overlap; ga in the same iteration. cf, h0:
 *   K interleaved values each, or NULL.
 */
#ifndef ZM_SCANBACK_H
#define ZM_SCANBACK_H

#include "_scanrow.h"

#define ZM_SBLK 8192

#define ZM_DEFINE_SCANBACK(sfx, T)                                          \
/* out[i] = x[i] * y[i], i < m */                                           \
ZM_CLONES                                                                   \
static void zm_mul_##sfx(const T *x, const T *y, T *out, ptrdiff_t m)      \
{                                                                           \
    for (ptrdiff_t i = 0; i < m; i++)                                       \
        out[i] = x[i] * y[i];                                               \
}                                                                           \
static void zm_scanback_##sfx(const T *a, const T *h, const T *c, T *ga,    \
                              T *gb, ptrdiff_t n, T cf, T h0, int has_h0,   \
                              int rev, T *gh0)                              \
{                                                                           \
    /* d: the adjoint's direction in memory; last: the forward's last       \
       step, where the adjoint starts; first: the forward's first step,     \
       whose previous state is h0 */                                        \
    ptrdiff_t d = rev ? 1 : -1;                                             \
    ptrdiff_t last = rev ? 0 : n - 1, first = n - 1 - last;                 \
    ptrdiff_t k0, m, q0, lo, hi, jlo, jhi;                                  \
    T x;                                                                    \
    if (n <= 0)                                                             \
        return;                                                             \
    x = c[last] + cf;                                                       \
    gb[last] = x;                                                           \
    for (k0 = 0; k0 < n - 1; k0 += ZM_SBLK) {                               \
        m = n - 1 - k0 < ZM_SBLK ? n - 1 - k0 : ZM_SBLK;                    \
        q0 = last + (k0 + 1) * d;                                           \
        x = zm_scanrow_##sfx(a + last + k0 * d, c + q0, gb + q0, m, x,      \
                             d < 0);                                        \
        /* ga of the adjoint steps k0 + 1 .. k0 + m (and 0 with the first   \
           block), whose states before are their neighbours in direction   \
           d; the forward's first step (h0) excepted */                     \
        jlo = k0 == 0 ? 0 : k0 + 1;                                         \
        jhi = k0 + m;                                                       \
        lo = d > 0 ? last + jlo : last - jhi;                               \
        hi = d > 0 ? last + jhi + 1 : last - jlo + 1;                       \
        if (jhi == n - 1) {                                                 \
            if (d > 0)                                                      \
                hi--;                                                       \
            else                                                            \
                lo++;                                                       \
        }                                                                   \
        if (hi > lo)                                                        \
            zm_mul_##sfx(gb + lo, h + lo + d, ga + lo, hi - lo);            \
    }                                                                       \
    ga[first] = has_h0 ? gb[first] * h0 : 0;                                \
    *gh0 = a[first] * gb[first];                                            \
}

ZM_DEFINE_SCANBACK(f, float)
ZM_DEFINE_SCANBACK(d, double)

/* Complex rows in lockstep (see the top): K <= ZM_CLANES rows, row k
 * at p + k * rs (rs the row stride in elements of T); element i of a row
 * at 2 i. The adjoint visits memory index i = last + j * d, j = 0 .. n-1.
 * One body for K == ZM_CLANES (a constant trip count, unrolled) and one
 * for fewer rows. */
#define ZM_CLANES 4
#define ZM_CSTEP(T, K)                                                      \
    for (j = 1; j < n; j++) {                                               \
        i = last + j * d;                                                   \
        for (k = 0; k < (K); k++) {                                         \
            /* g = c_i + conj(a_{i-d}) g; ga_{i-d} = g_{i-d} conj(h_i) */   \
            const ptrdiff_t o = k * rs;                                     \
            T ar = a[o + 2 * (i - d)], ai = a[o + 2 * (i - d) + 1];         \
            T hr = h[o + 2 * i], hi = h[o + 2 * i + 1];                     \
            T pr = gr[k], pi = gi[k];                                       \
            ga[o + 2 * (i - d)] = pr * hr + pi * hi;                        \
            ga[o + 2 * (i - d) + 1] = pi * hr - pr * hi;                    \
            gr[k] = c[o + 2 * i] + (ar * pr + ai * pi);                     \
            gi[k] = c[o + 2 * i + 1] + (ar * pi - ai * pr);                 \
            gb[o + 2 * i] = gr[k];                                          \
            gb[o + 2 * i + 1] = gi[k];                                      \
        }                                                                   \
    }
#define ZM_DEFINE_CSCANBACK(sfx, T)                                         \
ZM_CLONES                                                                   \
static void zm_cscanback_##sfx(int K, const T *a, const T *h, const T *c,   \
                               T *ga, T *gb, ptrdiff_t rs, ptrdiff_t n,     \
                               const T *cf, const T *h0, int rev, T *gh0)   \
{                                                                           \
    ptrdiff_t d = rev ? 1 : -1;                                             \
    ptrdiff_t last = rev ? 0 : n - 1, first = n - 1 - last;                 \
    ptrdiff_t j, i;                                                         \
    T gr[ZM_CLANES], gi[ZM_CLANES];                                         \
    int k;                                                                  \
    if (n <= 0 || K <= 0 || K > ZM_CLANES)                                  \
        return;                                                             \
    for (k = 0; k < K; k++) {                                               \
        gr[k] = c[k * rs + 2 * last] + (cf != NULL ? cf[2 * k] : 0);        \
        gi[k] = c[k * rs + 2 * last + 1] + (cf != NULL ? cf[2 * k + 1] : 0);\
        gb[k * rs + 2 * last] = gr[k];                                      \
        gb[k * rs + 2 * last + 1] = gi[k];                                  \
    }                                                                       \
    if (K == ZM_CLANES) {                                                   \
        ZM_CSTEP(T, ZM_CLANES)                                              \
    } else {                                                                \
        ZM_CSTEP(T, K)                                                      \
    }                                                                       \
    for (k = 0; k < K; k++) {                                               \
        const ptrdiff_t o = k * rs;                                         \
        T ar = a[o + 2 * first], ai = a[o + 2 * first + 1];                 \
        T pr = gr[k], pi = gi[k];                                           \
        if (h0 != NULL) {                                                   \
            T hr = h0[2 * k], hi = h0[2 * k + 1];                           \
            ga[o + 2 * first] = pr * hr + pi * hi;                          \
            ga[o + 2 * first + 1] = pi * hr - pr * hi;                      \
        } else {                                                            \
            ga[o + 2 * first] = 0;                                          \
            ga[o + 2 * first + 1] = 0;                                      \
        }                                                                   \
        gh0[2 * k] = ar * pr + ai * pi;                                     \
        gh0[2 * k + 1] = ar * pi - ai * pr;                                 \
    }                                                                       \
}

ZM_DEFINE_CSCANBACK(f, float)
ZM_DEFINE_CSCANBACK(d, double)

#endif
