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
 *   block is formed right after it while its states are in cache.
 * zm_cscanback_{f,d}(K, a, h, c, ga, gb, rs, n, cf, h0, rev, gh0, nt):
 *   K <= 4 complex rows (interleaved re, im; row k at offset k rs), in
 *   blocks of ZM_CBLK steps: the adjoint states of the block for every row
 *   in lockstep (one step of every row per iteration, so that the K
 *   dependent chains of complex multiply-adds overlap) into a local array,
 *   then row by row gb and ga from it in memory order, in one loop. The
 *   lockstep pass reads two streams per row (a, c) and the second pass one
 *   (h), rather than five streams per row at once. cf, h0: K interleaved
 *   values each, or NULL. With nt != 0 (outputs larger than the caches),
 *   gb and ga are written with streaming (non-temporal) stores: they are
 *   never read, so their lines are not fetched from memory before they are
 *   written. Both ways compute the same values: the results are the same
 *   bit for bit. Without SSE2 (or with ZM_SCALAR) the stores are plain
 *   ones.
 *
 * Streaming the real rows' outputs as well (from a local copy of each
 * block's states) gained nothing in measurements at 8 to 128 MiB of
 * outputs: their pass runs at the speed of the forward's memory traffic
 * already.
 */
#ifndef ZM_SCANBACK_H
#define ZM_SCANBACK_H

#include <stdint.h>
#include <stdlib.h>

#include "_scanrow.h"

#if defined(__SSE2__) && !defined(ZM_SCALAR)
#include <emmintrin.h>
#define ZM_SCANBACK_NT 1
#else
#define ZM_SCANBACK_NT 0
#endif

#define ZM_SBLK 8192
/* Steps per block of the complex rows (their states in a local array,
   allocated; ZM_CBLK_MIN on the stack if that fails) */
#define ZM_CBLK 1024
#define ZM_CBLK_MIN 64

/* ------------------------------------------------------------------------
 * Stores: out[i] = x[i] (y == NULL) or x[i] * y[i], i < m; with nt, by
 * streaming stores from the first 16-byte aligned element of out on.
 * ------------------------------------------------------------------------ */
#if ZM_SCANBACK_NT
#define ZM_NT_BODY_f(out, x, y, i, m)                                       \
    for (; i + 4 <= m; i += 4) {                                            \
        __m128 v = _mm_loadu_ps(x + i);                                     \
        if (y != NULL)                                                      \
            v = _mm_mul_ps(v, _mm_loadu_ps(y + i));                         \
        _mm_stream_ps(out + i, v);                                          \
    }
#define ZM_NT_BODY_d(out, x, y, i, m)                                       \
    for (; i + 2 <= m; i += 2) {                                            \
        __m128d v = _mm_loadu_pd(x + i);                                    \
        if (y != NULL)                                                      \
            v = _mm_mul_pd(v, _mm_loadu_pd(y + i));                         \
        _mm_stream_pd(out + i, v);                                          \
    }
#endif

#define ZM_DEFINE_STORE(sfx, T)                                             \
ZM_CLONES                                                                   \
static void zm_bstore_##sfx(T *out, const T *x, const T *y, ptrdiff_t m,    \
                            int nt)                                         \
{                                                                           \
    ptrdiff_t i = 0;                                                        \
    if (nt && ZM_SCANBACK_NT) {                                             \
        for (; i < m && ((uintptr_t) (out + i) & 15) != 0; i++)             \
            out[i] = y != NULL ? x[i] * y[i] : x[i];                        \
        ZM_NT_BODY_##sfx(out, x, y, i, m)                                   \
    }                                                                       \
    if (y != NULL)                                                          \
        for (; i < m; i++)                                                  \
            out[i] = x[i] * y[i];                                           \
    else                                                                    \
        for (; i < m; i++)                                                  \
            out[i] = x[i];                                                  \
}

#if !ZM_SCANBACK_NT
#define ZM_NT_BODY_f(out, x, y, i, m)
#define ZM_NT_BODY_d(out, x, y, i, m)
#endif

ZM_DEFINE_STORE(f, float)
ZM_DEFINE_STORE(d, double)

/* Whether loads at x run clear of streaming stores at y: their addresses
 * apart by 1 to 3 KiB modulo the page. A load that shares its low 12
 * address bits with a streaming store still pending waits for that store
 * to leave for memory (4K aliasing, measured 20 times slower); the kernels
 * stream only where every load stream is clear of every store stream. */
static inline int zm_far(const void *x, const void *y)
{
    size_t d = ((uintptr_t) x - (uintptr_t) y) & 4095;
    return d >= 1024 && d <= 3072;
}

static inline void zm_bfence(int nt)
{
#if ZM_SCANBACK_NT
    if (nt)
        _mm_sfence();
#else
    (void) nt;
#endif
}

/* ------------------------------------------------------------------------
 * Real rows.
 * ------------------------------------------------------------------------ */
#define ZM_DEFINE_SCANBACK(sfx, T)                                          \
static void zm_scanback_##sfx(const T *a, const T *h, const T *c, T *ga,    \
                              T *gb, ptrdiff_t n, T cf, T h0, int has_h0,   \
                              int rev, T *gh0)                              \
{                                                                           \
    /* d: the adjoint's direction in memory; last: the forward's last       \
       step, where the adjoint starts; first: the forward's first step,     \
       whose previous state is h0 */                                        \
    ptrdiff_t d = rev ? 1 : -1;                                             \
    ptrdiff_t last = rev ? 0 : n - 1, first = n - 1 - last;                 \
    ptrdiff_t k0, m, q0, lo, hi;                                            \
    T x;                                                                    \
    if (n <= 0)                                                             \
        return;                                                             \
    x = c[last] + cf;                                                       \
    gb[last] = x;                                                           \
    /* ga of the adjoint's first step, whose state before is its           \
       neighbour in direction d (unless it is the forward's first step) */  \
    if (n > 1)                                                              \
        ga[last] = x * h[last + d];                                         \
    for (k0 = 0; k0 < n - 1; k0 += ZM_SBLK) {                               \
        m = n - 1 - k0 < ZM_SBLK ? n - 1 - k0 : ZM_SBLK;                    \
        q0 = last + (k0 + 1) * d;                                           \
        x = zm_scanrow_##sfx(a + last + k0 * d, c + q0, gb + q0, m, x,      \
                             d < 0);                                        \
        /* ga of the adjoint steps k0 + 1 .. k0 + m, memory lo .. hi - 1,  \
           the forward's first step (h0) excepted */                        \
        lo = d > 0 ? q0 : q0 - (m - 1);                                     \
        hi = lo + m;                                                        \
        if (k0 + m == n - 1) {                                              \
            if (d > 0)                                                      \
                hi--;                                                       \
            else                                                            \
                lo++;                                                       \
        }                                                                   \
        if (hi > lo)                                                        \
            zm_bstore_##sfx(ga + lo, gb + lo, h + lo + d, hi - lo, 0);      \
    }                                                                       \
    /* x: the adjoint state at the forward's first step */                  \
    ga[first] = has_h0 ? x * h0 : 0;                                        \
    *gh0 = a[first] * x;                                                    \
}

ZM_DEFINE_SCANBACK(f, float)
ZM_DEFINE_SCANBACK(d, double)

/* ------------------------------------------------------------------------
 * Complex rows.
 *
 * zm_cstore_*(o, ob, g, h, m, nt): o_i = g_i conj(h_i) and ob_i = g_i for
 * m interleaved complex values, in one loop (both outputs streamed side by
 * side). Every value goes through the same vector arithmetic (one complex
 * per lane pair, lanes independent), whatever the kind of store and the
 * alignment: the products depend on the values alone.
 * ------------------------------------------------------------------------ */
#if ZM_SCANBACK_NT
ZM_INLINE __m128d zm_cmulconj_pd(__m128d gv, __m128d hv)
{
    const __m128d neg = _mm_set_pd(-0.0, 0.0);
    __m128d hr = _mm_unpacklo_pd(hv, hv), hi = _mm_unpackhi_pd(hv, hv);
    /* (gr hr + gi hi, gi hr - gr hi) */
    return _mm_add_pd(_mm_mul_pd(gv, hr),
                      _mm_xor_pd(_mm_mul_pd(_mm_shuffle_pd(gv, gv, 1), hi),
                                 neg));
}

ZM_INLINE __m128 zm_cmulconj_ps(__m128 gv, __m128 hv)
{
    const __m128 neg = _mm_set_ps(-0.0f, 0.0f, -0.0f, 0.0f);
    __m128 hr = _mm_shuffle_ps(hv, hv, _MM_SHUFFLE(2, 2, 0, 0));
    __m128 hi = _mm_shuffle_ps(hv, hv, _MM_SHUFFLE(3, 3, 1, 1));
    __m128 gs = _mm_shuffle_ps(gv, gv, _MM_SHUFFLE(2, 3, 0, 1));
    return _mm_add_ps(_mm_mul_ps(gv, hr), _mm_xor_ps(_mm_mul_ps(gs, hi), neg));
}

ZM_CLONES
static void zm_cstore_d(double *o, double *ob, const double *g,
                        const double *h, ptrdiff_t m, int nt)
{
    ptrdiff_t i;
    int nto = nt && ((uintptr_t) o & 15) == 0;
    int ntb = nt && ((uintptr_t) ob & 15) == 0;
    for (i = 0; i < m; i++) {
        __m128d gv = _mm_loadu_pd(g + 2 * i);
        __m128d v = zm_cmulconj_pd(gv, _mm_loadu_pd(h + 2 * i));
        if (nto)
            _mm_stream_pd(o + 2 * i, v);
        else
            _mm_storeu_pd(o + 2 * i, v);
        if (ntb)
            _mm_stream_pd(ob + 2 * i, gv);
        else
            _mm_storeu_pd(ob + 2 * i, gv);
    }
}

/* one complex float in the low half of a vector */
ZM_INLINE void zm_cstore1_f(float *o, float *ob, const float *g,
                            const float *h)
{
    __m128 gv = _mm_loadl_pi(_mm_setzero_ps(), (const __m64 *) g);
    __m128 v = zm_cmulconj_ps(gv, _mm_loadl_pi(_mm_setzero_ps(),
                                                (const __m64 *) h));
    _mm_storel_pi((__m64 *) o, v);
    _mm_storel_pi((__m64 *) ob, gv);
}

ZM_CLONES
static void zm_cstore_f(float *o, float *ob, const float *g, const float *h,
                        ptrdiff_t m, int nt)
{
    ptrdiff_t i = 0;
    int nto, ntb;
    if (nt && m > 0 && ((uintptr_t) o & 15) != 0) {
        zm_cstore1_f(o, ob, g, h);
        i = 1;
    }
    nto = nt && ((uintptr_t) (o + 2 * i) & 15) == 0;
    ntb = nt && ((uintptr_t) (ob + 2 * i) & 15) == 0;
    for (; i + 2 <= m; i += 2) {
        __m128 gv = _mm_loadu_ps(g + 2 * i);
        __m128 v = zm_cmulconj_ps(gv, _mm_loadu_ps(h + 2 * i));
        if (nto)
            _mm_stream_ps(o + 2 * i, v);
        else
            _mm_storeu_ps(o + 2 * i, v);
        if (ntb)
            _mm_stream_ps(ob + 2 * i, gv);
        else
            _mm_storeu_ps(ob + 2 * i, gv);
    }
    if (i < m)
        zm_cstore1_f(o + 2 * i, ob + 2 * i, g + 2 * i, h + 2 * i);
}
#else
#define ZM_DEFINE_CSTORE(sfx, T)                                            \
static void zm_cstore_##sfx(T *o, T *ob, const T *g, const T *h,            \
                            ptrdiff_t m, int nt)                            \
{                                                                           \
    ptrdiff_t i;                                                            \
    (void) nt;                                                              \
    for (i = 0; i < m; i++) {                                               \
        T gr = g[2 * i], gi = g[2 * i + 1];                                 \
        T hr = h[2 * i], hi = h[2 * i + 1];                                 \
        o[2 * i] = gr * hr + gi * hi;                                       \
        o[2 * i + 1] = gi * hr - gr * hi;                                   \
        ob[2 * i] = gr;                                                     \
        ob[2 * i + 1] = gi;                                                 \
    }                                                                       \
}
ZM_DEFINE_CSTORE(f, float)
ZM_DEFINE_CSTORE(d, double)
#endif

/* The adjoint states of K rows in lockstep, adjoint steps j0 .. j1-1 (the
 * block's first step continues from the states gr, gi), into s: row k's
 * state of the step at memory index i at s[k ss + 2 (i - base)]. The
 * states h of the block are prefetched on the way (one request per four
 * steps), so that the pass over them after this one, gb and ga, finds them
 * in cache: about 10% faster at 4 MiB of outputs and more. One body for
 * K == ZM_CLANES (a constant trip count, unrolled) and one for fewer. */
#define ZM_CLANES 4
#if defined(__GNUC__) || defined(__clang__)
#define ZM_SB_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define ZM_SB_PREFETCH(p) ((void) (p))
#endif
#define ZM_CSTEP(T, K)                                                      \
    for (j = j0; j < j1; j++) {                                             \
        const ptrdiff_t i = last + j * d, q = 2 * (i - base);               \
        for (k = 0; k < (K); k++) {                                         \
            /* g = c_i + conj(a_{i-d}) g */                                 \
            const ptrdiff_t o = k * rs;                                     \
            T ar = a[o + 2 * (i - d)], ai = a[o + 2 * (i - d) + 1];         \
            T pr = xr[k], pi = xi[k];                                       \
            xr[k] = c[o + 2 * i] + (ar * pr + ai * pi);                     \
            xi[k] = c[o + 2 * i + 1] + (ar * pi - ai * pr);                 \
            s[k * ss + q] = xr[k];                                          \
            s[k * ss + q + 1] = xi[k];                                      \
            /* h of the block, for the pass after this one */               \
            if ((j & 3) == 0)                                               \
                ZM_SB_PREFETCH(h + o + 2 * i);                              \
        }                                                                   \
    }
#define ZM_DEFINE_CSCANBACK(sfx, T)                                         \
ZM_CLONES                                                                   \
static void zm_cstates_##sfx(int K, const T *a, const T *c, const T *h,    \
                             ptrdiff_t rs,                                  \
                             ptrdiff_t last, ptrdiff_t d, ptrdiff_t j0,     \
                             ptrdiff_t j1, ptrdiff_t base, T *gr, T *gi,    \
                             T *s, ptrdiff_t ss)                            \
{                                                                           \
    /* the states in local variables (registers), not behind gr, gi,        \
       which the stores into s might alias */                               \
    T xr[ZM_CLANES], xi[ZM_CLANES];                                         \
    ptrdiff_t j;                                                            \
    int k;                                                                  \
    for (k = 0; k < ZM_CLANES; k++) {                                       \
        xr[k] = k < K ? gr[k] : 0;                                          \
        xi[k] = k < K ? gi[k] : 0;                                          \
    }                                                                       \
    if (K == ZM_CLANES) {                                                   \
        ZM_CSTEP(T, ZM_CLANES)                                              \
    } else {                                                                \
        ZM_CSTEP(T, K)                                                      \
    }                                                                       \
    for (k = 0; k < K; k++) {                                               \
        gr[k] = xr[k];                                                      \
        gi[k] = xi[k];                                                      \
    }                                                                       \
}                                                                           \
static void zm_cscanback_##sfx(int K, const T *a, const T *h, const T *c,   \
                               T *ga, T *gb, ptrdiff_t rs, ptrdiff_t n,     \
                               const T *cf, const T *h0, int rev, T *gh0,   \
                               int nt)                                      \
{                                                                           \
    ptrdiff_t d = rev ? 1 : -1;                                             \
    ptrdiff_t last = rev ? 0 : n - 1, first = n - 1 - last;                 \
    ptrdiff_t j0, j1, base, lo, hi, blk, ss;                                \
    T gr[ZM_CLANES], gi[ZM_CLANES];                                         \
    T small[ZM_CLANES * 2 * ZM_CBLK_MIN], *s = NULL;                        \
    char *raw = NULL;                                                       \
    int k, ntk;                                                             \
    if (n <= 0 || K <= 0 || K > ZM_CLANES)                                  \
        return;                                                             \
    nt = nt && ZM_SCANBACK_NT;                                              \
    blk = n < ZM_CBLK ? n : ZM_CBLK;                                        \
    if (blk > ZM_CBLK_MIN)                                                  \
        raw = (char *) malloc((size_t) (ZM_CLANES * 2 * blk) * sizeof(T)    \
                              + 4096);                                      \
    if (raw != NULL)                                                        \
        /* half a page off gb and ga (when their rows are a whole number   \
           of pages apart), clear of their streaming stores */              \
        s = (T *) (raw + (((uintptr_t) gb + 2048 - (uintptr_t) raw) & 4095)); \
    if (s == NULL) {                                                        \
        s = small;                                                          \
        blk = blk < ZM_CBLK_MIN ? blk : ZM_CBLK_MIN;                        \
    }                                                                       \
    ss = 2 * blk;                                                           \
    for (k = 0; k < K; k++) {                                               \
        gr[k] = c[k * rs + 2 * last] + (cf != NULL ? cf[2 * k] : 0);        \
        gi[k] = c[k * rs + 2 * last + 1] + (cf != NULL ? cf[2 * k + 1] : 0);\
    }                                                                       \
    for (j0 = 0; j0 < n; j0 = j1) {                                         \
        j1 = n - j0 < blk ? n : j0 + blk;                                   \
        /* memory base .. base + (j1 - j0) - 1 */                           \
        base = d > 0 ? last + j0 : last - (j1 - 1);                         \
        if (j0 == 0) {                                                      \
            /* the adjoint's first step: g = c + cf */                      \
            const ptrdiff_t q = 2 * (last - base);                          \
            for (k = 0; k < K; k++) {                                       \
                s[k * ss + q] = gr[k];                                      \
                s[k * ss + q + 1] = gi[k];                                  \
            }                                                               \
        }                                                                   \
        zm_cstates_##sfx(K, a, c, h, rs, last, d, j0 == 0 ? 1 : j0, j1, base,  \
                         gr, gi, s, ss);                                    \
        /* ga over the block, the forward's first step (h0) excepted */     \
        lo = base;                                                          \
        hi = base + (j1 - j0);                                              \
        if (j1 == n) {                                                      \
            if (d > 0)                                                      \
                hi--;                                                       \
            else                                                            \
                lo++;                                                       \
        }                                                                   \
        for (k = 0; k < K; k++) {                                           \
            const ptrdiff_t o = k * rs;                                     \
            const T *sk = s + k * ss;                                       \
            ntk = nt && zm_far(sk, gb + o + 2 * base)                       \
                && zm_far(sk, ga + o + 2 * base)                            \
                && zm_far(h + o + 2 * (base + d), gb + o + 2 * base)        \
                && zm_far(h + o + 2 * (base + d), ga + o + 2 * base);       \
            /* gb alone where ga is not formed here */                      \
            if (lo > base)                                                  \
                zm_bstore_##sfx(gb + o + 2 * base, sk, NULL, 2, ntk);       \
            if (hi < base + (j1 - j0))                                      \
                zm_bstore_##sfx(gb + o + 2 * hi, sk + 2 * (hi - base),      \
                                NULL, 2, ntk);                              \
            if (hi > lo)                                                    \
                zm_cstore_##sfx(ga + o + 2 * lo, gb + o + 2 * lo,           \
                                sk + 2 * (lo - base), h + o + 2 * (lo + d), \
                                hi - lo, ntk);                              \
        }                                                                   \
    }                                                                       \
    zm_bfence(nt);                                                          \
    free(raw);                                                              \
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
