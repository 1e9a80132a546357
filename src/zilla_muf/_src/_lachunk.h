/*
 * Chunk kernels of linear attention with a scalar gate (or none) and of the
 * gated delta rule: one task, a sequence and a group of its heads, walks
 * its chunks in order, each chunk through the heads, the states (K, V)
 * kept in per-thread scratch, reading q, k, v and writing o in place in
 * their (batch, T, H, .) layouts (row strides ldq, ldv).
 *
 * Per chunk of m positions, G the cumulative log-gate inside the chunk,
 * e_i = exp(G_i), w_j = exp(G_last - G_j), the masked decay
 * D_ij = exp(G_i - G_j) for j <= i, 0 above (never exp of a positive
 * difference of a non-increasing G, never a division by a decay):
 *
 *   linear attention   P = scale (Q K^T) .* D
 *                      O = scale e .* (Q S) + P Vc
 *                      S <- exp(G_last) S + (w .* K)^T Vc
 *   delta rule         M = beta .* (K K^T) .* D, strictly lower
 *                      Ti = (I + M)^{-1} (forward substitution, C^3/6)
 *                      R = beta .* V - (beta e) .* (K S)
 *                      U = Ti R, then O and S as above with U for Vc.
 *
 * The products run on register tiles of MR rows by NVT vectors (a short
 * remainder of rows shares the tile before it, so that every tile keeps
 * enough accumulators in flight); the B operands (the state, Vc or U, K^T)
 * are scratch rows padded to 128 bytes, K^T formed by 8 x 8 transposes in
 * registers; the A operands are read by scalar broadcast where they are
 * (the scratch copies of q and k, the scores), the (w .* k)^T of the state
 * update down the columns of w .* k rows. The body (_lachunk_impl.h) is
 * included once per element type and instruction set: on x86-64 Linux with
 * gcc >= 12 an AVX-512 (x86-64-v4, 64-byte vectors), an AVX2 (x86-64-v3,
 * 32-byte vectors) and a baseline (16-byte vectors) build, one picked at
 * run time by the CPU's features (zm_la_isa, to be called once before the
 * threads start); elsewhere one portable build, and with ZM_SCALAR one on
 * scalars. The builds may differ in the last bit (fused multiply-adds).
 */
#ifndef ZM_LACHUNK_H
#define ZM_LACHUNK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "_vmath.h"

/* Scratch rows are padded to this many bytes: a multiple of every build's
 * tile width. */
#define ZM_LA_PAD 128

#if defined(__GNUC__)
#define ZM_LA_UNROLL _Pragma("GCC unroll 16")
#else
#define ZM_LA_UNROLL
#endif

ZM_INLINE ptrdiff_t zm_la_round(ptrdiff_t n, ptrdiff_t w)
{
    return (n + w - 1) / w * w;
}

ZM_INLINE ptrdiff_t zm_la_min(ptrdiff_t a, ptrdiff_t b)
{
    return a < b ? a : b;
}

/* One task. */
#define ZM_LA_DEFINE_ARGS(T, sfx)                                           \
typedef struct {                                                            \
    const T *q, *k;     /* (L, K), rows of stride ldq */                    \
    const T *v;         /* (L, V), rows of stride ldv */                    \
    T *o;               /* (L, V), rows of stride ldv */                    \
    const T *g;         /* (L,) log-gates, stride ldg, or NULL: none */     \
    const T *beta;      /* (L,) step sizes, stride ldg; NULL: linear */     \
                        /* attention, else the delta rule */               \
    const T *h0;        /* (K, V) entering state, or NULL: zero */          \
    T *hT;              /* (K, V) leaving state, or NULL */                 \
    ptrdiff_t L, K, V, C, ldq, ldv, ldg;                                    \
    ptrdiff_t nh;       /* heads of the task, the next one's rows at */    \
    ptrdiff_t hsq, hsv; /* +hsq (q, k), +hsv (v, o), +hsg (g, beta) and */ \
    ptrdiff_t hsg, hss; /* its states at +hss (h0, hT) */                  \
    T scale;                                                                \
} zm_la_args_##sfx;

ZM_LA_DEFINE_ARGS(float, f)
ZM_LA_DEFINE_ARGS(double, d)

/* Elements of one thread's scratch (chunk C, dimensions K, V, nh heads
 * per task). */
static ptrdiff_t zm_la_scratch(ptrdiff_t C, ptrdiff_t K, ptrdiff_t V,
                               ptrdiff_t nh, ptrdiff_t itemsize)
{
    const ptrdiff_t w = ZM_LA_PAD / itemsize;
    const ptrdiff_t Vp = zm_la_round(V, w), Cp = zm_la_round(C, w);
    const ptrdiff_t Kp = zm_la_round(K, w);
    return nh * K * Vp + 3 * C * Vp + K * Cp + 3 * C * Cp + 6 * Cp
           + 3 * C * Kp + 2 * w;
}

/* ---- the builds -------------------------------------------------------- */
/* _lachunk_impl.h takes T (element), ZM_LA_VW (elements of a vector),
 * ZM_LA_MR (rows of a tile), ZM_LA_NAME(x) (x with the build's suffix),
 * ZM_LA_ATTR (the target attribute) and ZM_LA_ARGS (the task type of T);
 * its decays are the decay element of _vmath.h. */
#if ZM_ISA_BUILDS
#define ZM_LA_ATTR __attribute__((target("arch=x86-64-v4")))
#define ZM_LA_MR 12
#define T float
#define ZM_LA_IT int32_t
#define ZM_LA_ARGS zm_la_args_f
#define ZM_LA_VW 16
#define ZM_LA_NAME(x) x##_f_v4
#include "_lachunk_impl.h"
#undef T
#undef ZM_LA_IT
#undef ZM_LA_ARGS
#undef ZM_LA_VW
#undef ZM_LA_NAME
#define T double
#define ZM_LA_IT int64_t
#define ZM_LA_ARGS zm_la_args_d
#define ZM_LA_VW 8
#define ZM_LA_NAME(x) x##_d_v4
#include "_lachunk_impl.h"
#undef T
#undef ZM_LA_IT
#undef ZM_LA_ARGS
#undef ZM_LA_VW
#undef ZM_LA_NAME
#undef ZM_LA_ATTR
#undef ZM_LA_MR

#define ZM_LA_ATTR __attribute__((target("arch=x86-64-v3")))
#define ZM_LA_MR 6
#define T float
#define ZM_LA_IT int32_t
#define ZM_LA_ARGS zm_la_args_f
#define ZM_LA_VW 8
#define ZM_LA_NAME(x) x##_f_v3
#include "_lachunk_impl.h"
#undef T
#undef ZM_LA_IT
#undef ZM_LA_ARGS
#undef ZM_LA_VW
#undef ZM_LA_NAME
#define T double
#define ZM_LA_IT int64_t
#define ZM_LA_ARGS zm_la_args_d
#define ZM_LA_VW 4
#define ZM_LA_NAME(x) x##_d_v3
#include "_lachunk_impl.h"
#undef T
#undef ZM_LA_IT
#undef ZM_LA_ARGS
#undef ZM_LA_VW
#undef ZM_LA_NAME
#undef ZM_LA_ATTR
#undef ZM_LA_MR
#endif

/* The baseline: 16-byte vectors beside the wider builds, 32-byte vectors
 * of the vector extensions elsewhere, scalars with ZM_SCALAR. */
#define ZM_LA_ATTR
#define ZM_LA_MR 4
#if defined(ZM_SCALAR) || !defined(__GNUC__)
#define ZM_LA_VW_F 1
#define ZM_LA_VW_D 1
#elif ZM_ISA_BUILDS
#define ZM_LA_VW_F 4
#define ZM_LA_VW_D 2
#else
#define ZM_LA_VW_F 8
#define ZM_LA_VW_D 4
#endif
#define T float
#define ZM_LA_IT int32_t
#define ZM_LA_ARGS zm_la_args_f
#define ZM_LA_VW ZM_LA_VW_F
#define ZM_LA_NAME(x) x##_f_base
#include "_lachunk_impl.h"
#undef T
#undef ZM_LA_IT
#undef ZM_LA_ARGS
#undef ZM_LA_VW
#undef ZM_LA_NAME
#define T double
#define ZM_LA_IT int64_t
#define ZM_LA_ARGS zm_la_args_d
#define ZM_LA_VW ZM_LA_VW_D
#define ZM_LA_NAME(x) x##_d_base
#include "_lachunk_impl.h"
#undef T
#undef ZM_LA_IT
#undef ZM_LA_ARGS
#undef ZM_LA_VW
#undef ZM_LA_NAME
#undef ZM_LA_ATTR
#undef ZM_LA_MR

/* The build to run: 2 AVX-512, 1 AVX2, 0 the baseline. Call it once
 * before any thread runs a task (it caches the answer). */
static int zm_la_isa_cached = -1;

static int zm_la_isa(void)
{
    if (zm_la_isa_cached < 0) {
        zm_la_isa_cached = zm_cpu_isa();
    }
    return zm_la_isa_cached;
}

/* Run one task; work: zm_la_scratch(...) elements plus 64 bytes. */
static void zm_la_task_f(const zm_la_args_f *a, float *work)
{
#if ZM_ISA_BUILDS
    if (zm_la_isa_cached == 2) {
        zm_la_walk_f_v4(a, work);
        return;
    }
    if (zm_la_isa_cached == 1) {
        zm_la_walk_f_v3(a, work);
        return;
    }
#endif
    zm_la_walk_f_base(a, work);
}

static void zm_la_task_d(const zm_la_args_d *a, double *work)
{
#if ZM_ISA_BUILDS
    if (zm_la_isa_cached == 2) {
        zm_la_walk_d_v4(a, work);
        return;
    }
    if (zm_la_isa_cached == 1) {
        zm_la_walk_d_v3(a, work);
        return;
    }
#endif
    zm_la_walk_d_base(a, work);
}

#endif
