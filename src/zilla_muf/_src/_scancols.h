/*
 * The columns layout's scan of one channel block with streaming stores:
 * o[i] = a[i] * s + b[i], s <- o[i], elementwise over w contiguous channels,
 * m steps `step` elements apart, from s = init. For outputs larger than the
 * caches: the output is written with non-temporal stores (no read of the
 * destination's lines before they are written, a quarter of the memory
 * traffic of a scan), and the running state is kept in `state` (w
 * elements, in cache) rather than read back from the output.
 *
 * The arithmetic is a multiply then an add, rounded separately, as the
 * plain loop of _scan_cols.pyx compiled for the baseline: the results are
 * the same bit for bit. Without SSE2 (or with ZM_SCALAR) the stores are
 * plain ones.
 */
#ifndef ZM_SCANCOLS_H
#define ZM_SCANCOLS_H

#include <stddef.h>
#include <stdint.h>

#if defined(__SSE2__) && !defined(ZM_SCALAR)
#include <emmintrin.h>
#define ZM_SCANCOLS_NT 1
#else
#define ZM_SCANCOLS_NT 0
#endif

/* With nblk > 1 blocks sharing every step's memory, each on its own
 * thread, the fresh pages of the output are faulted in ahead of the scan,
 * each 2 MiB region by one block's thread (see cols_scan_shared in
 * _scan_cols.pyx); with nblk == 1 nothing is touched. */
static inline void zm_cols_touch_f(float *p, ptrdiff_t blk, ptrdiff_t nblk)
{
    if ((ptrdiff_t) (((uintptr_t) p >> 21) % (uintptr_t) nblk) == blk)
        *(volatile float *) p = 0;
}

static inline void zm_cols_touch_d(double *p, ptrdiff_t blk, ptrdiff_t nblk)
{
    if ((ptrdiff_t) (((uintptr_t) p >> 21) % (uintptr_t) nblk) == blk)
        *(volatile double *) p = 0;
}

static void zm_cols_stream_f(const float *a, const float *b, float *o,
                             const float *init, float *state, ptrdiff_t w,
                             ptrdiff_t m, ptrdiff_t step, ptrdiff_t blk,
                             ptrdiff_t nblk)
{
    ptrdiff_t i, c, t;
    ptrdiff_t rowb = (step > 0 ? step : -step) * (ptrdiff_t) sizeof(float);
    ptrdiff_t per = rowb < (2 << 20) ? (2 << 20) / rowb : 1;
    for (c = 0; c < w; c++)
        state[c] = init[c];
    if (per < 1)
        per = 1;
    if (nblk > 1)
        for (t = 0; t < 2 * per && t < m; t++)
            zm_cols_touch_f(o + t * step, blk, nblk);
    for (i = 0; i < m; i++) {
        if (nblk > 1 && i % per == 0 && i + 2 * per < m)
            zm_cols_touch_f(o + (i + 2 * per) * step, blk, nblk);
        const float *ai = a + i * step;
        const float *bi = b + i * step;
        float *oi = o + i * step;
        c = 0;
#if ZM_SCANCOLS_NT
        for (; c < w && ((uintptr_t) (oi + c) & 15) != 0; c++) {
            float v = ai[c] * state[c];
            v = v + bi[c];
            state[c] = v;
            oi[c] = v;
        }
        for (; c + 4 <= w; c += 4) {
            __m128 v = _mm_mul_ps(_mm_loadu_ps(ai + c), _mm_loadu_ps(state + c));
            v = _mm_add_ps(v, _mm_loadu_ps(bi + c));
            _mm_storeu_ps(state + c, v);
            _mm_stream_ps(oi + c, v);
        }
#endif
        for (; c < w; c++) {
            float v = ai[c] * state[c];
            v = v + bi[c];
            state[c] = v;
            oi[c] = v;
        }
    }
#if ZM_SCANCOLS_NT
    _mm_sfence();
#endif
}

static void zm_cols_stream_d(const double *a, const double *b, double *o,
                             const double *init, double *state, ptrdiff_t w,
                             ptrdiff_t m, ptrdiff_t step, ptrdiff_t blk,
                             ptrdiff_t nblk)
{
    ptrdiff_t i, c, t;
    ptrdiff_t rowb = (step > 0 ? step : -step) * (ptrdiff_t) sizeof(double);
    ptrdiff_t per = rowb < (2 << 20) ? (2 << 20) / rowb : 1;
    for (c = 0; c < w; c++)
        state[c] = init[c];
    if (per < 1)
        per = 1;
    if (nblk > 1)
        for (t = 0; t < 2 * per && t < m; t++)
            zm_cols_touch_d(o + t * step, blk, nblk);
    for (i = 0; i < m; i++) {
        if (nblk > 1 && i % per == 0 && i + 2 * per < m)
            zm_cols_touch_d(o + (i + 2 * per) * step, blk, nblk);
        const double *ai = a + i * step;
        const double *bi = b + i * step;
        double *oi = o + i * step;
        c = 0;
#if ZM_SCANCOLS_NT
        for (; c < w && ((uintptr_t) (oi + c) & 15) != 0; c++) {
            double v = ai[c] * state[c];
            v = v + bi[c];
            state[c] = v;
            oi[c] = v;
        }
        for (; c + 2 <= w; c += 2) {
            __m128d v = _mm_mul_pd(_mm_loadu_pd(ai + c), _mm_loadu_pd(state + c));
            v = _mm_add_pd(v, _mm_loadu_pd(bi + c));
            _mm_storeu_pd(state + c, v);
            _mm_stream_pd(oi + c, v);
        }
#endif
        for (; c < w; c++) {
            double v = ai[c] * state[c];
            v = v + bi[c];
            state[c] = v;
            oi[c] = v;
        }
    }
#if ZM_SCANCOLS_NT
    _mm_sfence();
#endif
}

#endif
