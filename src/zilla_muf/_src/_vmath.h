/*
 * Branch-free exp (float, double) and softplus (float) that compilers
 * vectorise: the element functions of every kernel that exponentiates.
 *
 * exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 (|r| <= ln2/2,
 * ln 2 split in two parts so that r is exact). exp(r) by the Cephes
 * polynomial (float) or Pade form (double), both within ~1 ulp. 2^n is
 * built from the exponent bits in two factors, so that results in the
 * subnormal range round correctly. x is clamped to a range just wider than
 * exp's finite, nonzero one, so that large inputs overflow to inf and small
 * ones round to 0 by themselves, and NaN propagates through the arithmetic:
 * the only selects are the clamps.
 *
 * Rounding to an integer uses the 1.5 * 2^p "magic number" addition, which
 * requires no -ffast-math (no reassociation); the build never uses it. gcc
 * if-converts the clamps (and so vectorises loops of these calls) only with
 * -fno-trapping-math, which the build sets for every kernel: it concerns
 * floating-point exception flags, never values, and no kernel reads them.
 */
#ifndef ZM_VMATH_H
#define ZM_VMATH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <float.h>

#if defined(__GNUC__)
#define ZM_INLINE static inline __attribute__((always_inline))
#else
#define ZM_INLINE static inline
#endif

/* ZM_ISA_BUILDS is 1 where a kernel may carry its own builds for several
 * instruction sets, picked at run time by zm_cpu_isa (x86-64 Linux with
 * gcc >= 12, vector extensions on: not with ZM_SCALAR). */
#if !defined(ZM_SCALAR) && defined(__GNUC__) && !defined(__clang__) \
    && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
#define ZM_ISA_BUILDS 1
#else
#define ZM_ISA_BUILDS 0
#endif

/* The widest build this CPU runs: 2 x86-64-v4 (AVX-512), 1 x86-64-v3
 * (AVX2 + FMA), 0 the baseline (always 0 without ZM_ISA_BUILDS). */
static inline int zm_cpu_isa(void)
{
#if ZM_ISA_BUILDS
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4") ? 2
           : __builtin_cpu_supports("x86-64-v3") ? 1 : 0;
#else
    return 0;
#endif
}

/* Loops marked ZM_CLONES are compiled three times on x86-64 Linux with gcc
 * >= 12 (and glibc): for the baseline (SSE2), for x86-64-v3 (AVX2 + FMA)
 * and for x86-64-v4 (AVX-512), picked at load time by the CPU's features
 * (an ifunc, as NumPy dispatches its own loops). With older gcc, the
 * baseline and AVX2; elsewhere, the baseline only. ("arch=haswell" would
 * not do: its resolver asks for that CPU model, so an AMD CPU got the
 * baseline.) The builds may differ in the last bit (fused multiply-adds
 * or not), but the one to run is picked once per process, so every thread
 * and every call runs the same one. ZM_CLONES_AVX2 leaves out the AVX-512
 * build, for code that has an AVX-512 build of its own (wider vectors:
 * the SSD's chunk kernels). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \
    && defined(__linux__) && defined(__GLIBC__) && __GNUC__ >= 12
#define ZM_CLONES __attribute__((target_clones("arch=x86-64-v4", \
                                               "arch=x86-64-v3", "default")))
#define ZM_CLONES_AVX2 __attribute__((target_clones("arch=x86-64-v3", \
                                                    "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) \
    && defined(__linux__) && defined(__GLIBC__)
#define ZM_CLONES __attribute__((target_clones("avx2", "default")))
#define ZM_CLONES_AVX2 ZM_CLONES
#else
#define ZM_CLONES
#define ZM_CLONES_AVX2
#endif

ZM_INLINE float zm_pow2f(int32_t n)
{
    float f;
    uint32_t bits = ((uint32_t) (n + 127)) << 23;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* A decay product below the smallest normal number, set to zero. A running
 * product of decays between 1/2 and 1 in magnitude would otherwise come to
 * rest on the smallest subnormal number (its product with such a decay
 * rounds back to it) instead of reaching zero, and every later
 * multiplication would take the slow subnormal path. What is dropped is
 * below the smallest normal number times the state it scales. */
#define ZM_DEFINE_FLUSH(sfx, T, TMIN)                                       \
ZM_INLINE T zm_flush_##sfx(T p)                                             \
{                                                                           \
    return (p < (T) (TMIN) && p > -(T) (TMIN)) ? 0 : p;                     \
}

ZM_DEFINE_FLUSH(f, float, FLT_MIN)
ZM_DEFINE_FLUSH(d, double, DBL_MIN)

/* A power of two t with x t in [1, 2) for x >= 0 (a magnitude): x's
 * exponent mirrored, from the bits, so that scaling by t is exact and costs
 * no division (the scaled complex division). x is first clamped to the
 * normal range below 2^125 (2^1021), so that t is a normal number; NaN goes
 * to the lower bound and propagates through the arithmetic that follows.
 * Written as float selects and integer and/subtract only, so that loops over
 * it vectorise even with SSE2. */
ZM_INLINE float zm_inv_scalef(float x)
{
    uint32_t bits;
    x = x > FLT_MIN ? x : FLT_MIN;
    x = x < 0x1p125f ? x : 0x1p125f;
    memcpy(&bits, &x, sizeof bits);
    bits = 0x7F000000u - (bits & 0x7F800000u);
    memcpy(&x, &bits, sizeof x);
    return x;
}

ZM_INLINE double zm_inv_scale(double x)
{
    uint64_t bits;
    x = x > DBL_MIN ? x : DBL_MIN;
    x = x < 0x1p1021 ? x : 0x1p1021;
    memcpy(&bits, &x, sizeof bits);
    bits = 0x7FE0000000000000ull - (bits & 0x7FF0000000000000ull);
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* exp's clamp bounds, and the element functions with the bounds as
 * arguments: zm_expf(x) is zm_expf_in(x, ZM_EXPF_LO, ZM_EXPF_HI). With the
 * bounds as literals, gcc gives the clamped inputs their own (constant)
 * results and merges the cases back with compares and blends: half again
 * as many instructions in a vector loop. A loop that hides the bounds from
 * the optimiser (ZM_OPAQUE, once before the loop) gets one max and one min
 * instruction for the clamps, and the same results. */
#define ZM_EXPF_LO (-104.0f)
#define ZM_EXPF_HI 88.8f
#define ZM_EXP_LO (-746.0)
#define ZM_EXP_HI 710.0
#if defined(__GNUC__)
#define ZM_OPAQUE(v) __asm__("" : "+m"(v))
#else
#define ZM_OPAQUE(v) ((void) 0)
#endif

ZM_INLINE float zm_expf_in(float x, float lo, float hi)
{
    const float magic = 12582912.0f;            /* 1.5 * 2^23 */
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    float n = (xc * 1.44269504088896341f + magic) - magic;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    int32_t ni = (int32_t) (n == n ? n : 0.0f);   /* NaN: y is NaN anyway */
    int32_t n1 = ni >> 1;
    return y * zm_pow2f(n1) * zm_pow2f(ni - n1);
}

ZM_INLINE float zm_expf(float x)
{
    return zm_expf_in(x, ZM_EXPF_LO, ZM_EXPF_HI);
}

ZM_INLINE double zm_pow2(int32_t n)
{
    double f;
    uint64_t bits = ((uint64_t) (uint32_t) (n + 1023)) << 52;
    memcpy(&f, &bits, sizeof f);
    return f;
}

ZM_INLINE double zm_exp_in(double x, double lo, double hi)
{
    const double magic = 6755399441055744.0;    /* 1.5 * 2^52 */
    double xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    double n = (xc * 1.4426950408889634073599 + magic) - magic;
    double r = xc - n * 6.93145751953125e-1;
    r = r - n * 1.42860682030941723212e-6;
    double rr = r * r;
    double px = 1.26177193074810590878e-4;
    px = px * rr + 3.02994407707441961300e-2;
    px = px * rr + 9.99999999999999999910e-1;
    px = px * r;
    double q = 3.00198505138664455042e-6;
    q = q * rr + 2.52448340349684104192e-3;
    q = q * rr + 2.27265548208155028766e-1;
    q = q * rr + 2.00000000000000000009e0;
    double y = 1.0 + 2.0 * (px / (q - px));
    int32_t ni = (int32_t) (n == n ? n : 0.0);
    int32_t n1 = ni >> 1;
    return y * zm_pow2(n1) * zm_pow2(ni - n1);
}

ZM_INLINE double zm_exp(double x)
{
    return zm_exp_in(x, ZM_EXP_LO, ZM_EXP_HI);
}

/* Decays (exps of sums of log-decays) that the kernels multiply into
 * products in blocks (the SSD's chunks, linear attention's, the selective
 * scan's steps) are set to zero below these, the square roots of the
 * smallest normal numbers: their products with the other operands would be
 * subnormal, and subnormal operands slow the arithmetic tenfold or more
 * (strongly decaying heads put a good share of their decays there). What
 * is dropped is below 1e-19 (float) or 1e-154 (double) of the terms it
 * scales. The exponent is first clamped just below the threshold's log, so
 * that exp itself never computes a subnormal result on its way to 0; NaN
 * stays NaN. */
#define ZM_DECAY_TINY_F 1.0842021724855044e-19f
#define ZM_DECAY_TINY_D 1.4916681462400413e-154
#define ZM_DECAY_LOG_FLOOR_F (-44.66827237527655f)
#define ZM_DECAY_LOG_FLOOR_D (-355.19820926613204)

ZM_INLINE float zm_decay_expf(float d)
{
    const float e = zm_expf(d < ZM_DECAY_LOG_FLOOR_F ? ZM_DECAY_LOG_FLOOR_F : d);
    return e < ZM_DECAY_TINY_F ? 0.0f : e;
}

ZM_INLINE double zm_decay_exp(double d)
{
    const double e = zm_exp(d < ZM_DECAY_LOG_FLOOR_D ? ZM_DECAY_LOG_FLOOR_D : d);
    return e < ZM_DECAY_TINY_D ? 0.0 : e;
}

/* Elements of the gates: the logistic sigmoid (exp only of -|v|, so no
 * overflow), SiLU (at v = -inf the limit -0 rather than -inf * 0) and SiLU's
 * derivative s + v s (1 - s) (the product left out where s (1 - s) is 0, so
 * v = +-inf gives s rather than NaN); the _sig forms take s = sigmoid(v)
 * already at hand; float (_f) and double (_d). The gate loops of _vexp.h
 * and _conv.h, the selective scan's pullback and the SSD's kernels go
 * through these, so they give the same bits and the same limits. */
#define ZM_DEFINE_GATE_ELEMENTS(sfx, T, EXP)                                \
ZM_INLINE T zm_sig_##sfx(T v)                                               \
{                                                                           \
    T e = EXP(v < 0 ? v : -v);                                              \
    T r = (T) 1 / ((T) 1 + e);                                              \
    return v >= 0 ? r : e * r;                                              \
}                                                                           \
ZM_INLINE T zm_silu_sig_##sfx(T v, T s)                                     \
{                                                                           \
    return s != 0 ? v * s : (T) -0.0;                                       \
}                                                                           \
ZM_INLINE T zm_silu1_##sfx(T v)                                             \
{                                                                           \
    return zm_silu_sig_##sfx(v, zm_sig_##sfx(v));                           \
}                                                                           \
ZM_INLINE T zm_dsilu_sig_##sfx(T v, T s)                                    \
{                                                                           \
    T q = s * ((T) 1 - s);                                                  \
    return s + (q != 0 ? v * q : (T) 0);                                    \
}                                                                           \
ZM_INLINE T zm_dsilu_##sfx(T v)                                             \
{                                                                           \
    return zm_dsilu_sig_##sfx(v, zm_sig_##sfx(v));                          \
}

ZM_DEFINE_GATE_ELEMENTS(f, float, zm_expf)
ZM_DEFINE_GATE_ELEMENTS(d, double, zm_exp)

/* log1p(y) for y in [0, 1] as 2 atanh(y / (2 + y)): no cancellation for
 * small y, and the odd series in s = y / (2 + y) <= 1/3 converges to float
 * precision by its s^17 term (the next is below 2e-10 relative). */
ZM_INLINE float zm_log1pf_unit(float y)
{
    float s = y / (2.0f + y);
    float s2 = s * s;
    float p = 1.0f / 17.0f;
    p = p * s2 + 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), branch-free: overflow-free
 * for every x, NaN in gives NaN out. Above x = 20 the correction is below
 * half an ulp of x, so the result is x itself, as with torch's threshold. */
ZM_INLINE float zm_softplusf(float x)
{
    uint32_t xbits, abits, pbits;
    float ax, pos;
    memcpy(&xbits, &x, sizeof xbits);
    abits = xbits & 0x7FFFFFFFu;
    pbits = xbits & ~(0u - (xbits >> 31));      /* x, or +0 when negative */
    memcpy(&ax, &abits, sizeof ax);
    memcpy(&pos, &pbits, sizeof pos);
    return pos + zm_log1pf_unit(zm_expf(-ax));
}

/* sin and cos of x together, branch-free so that loops over them vectorise.
 * x = k pi/2 + r with k = round(x 2/pi) and pi/2 in three parts (Cody-Waite,
 * the constants of Cephes' sin, doubled), so that r (|r| <= pi/4) is exact
 * for |x| <= ZM_SINCOS_MAXF (float) or ZM_SINCOS_MAX (double); sin r and
 * cos r by the Cephes polynomials (within ~1 ulp); k mod 4 swaps and
 * negates them. Beyond the bound, and for inf and NaN, callers use libm. */
#define ZM_SINCOS_MAXF 4096.0f
#define ZM_SINCOS_MAX 1.0e6

/* k = round(x 2/pi) by the magic-number addition, and r = x - k pi/2 with
   pi/2 = p1 + p2 + p3 (p1 and p2 short, so that their products are exact). */
#define ZM_REDUCE_HALF_PI(T, x, magic, p1, p2, p3, k, r)                    \
    T k = ((x) * (T) 0.63661977236758134308 + (magic)) - (magic);          \
    T r = (x) - k * (p1);                                                   \
    r = r - k * (p2);                                                       \
    r = r - k * (p3)

/* sin and cos of x = k pi/2 + r from sr = sin r and cr = cos r. */
#define ZM_QUADRANT(T, k, sr, cr, s, c)                                     \
    do {                                                                    \
        int32_t q_ = (int32_t) ((k) == (k) ? (k) : (T) 0) & 3;             \
        T s_ = (q_ & 1) ? (cr) : (sr);                                      \
        T c_ = (q_ & 1) ? (sr) : (cr);                                      \
        *(s) = (q_ & 2) ? -s_ : s_;                                         \
        *(c) = ((q_ + 1) & 2) ? -c_ : c_;                                   \
    } while (0)

ZM_INLINE void zm_sincosf(float x, float *s, float *c)
{
    ZM_REDUCE_HALF_PI(float, x, 12582912.0f /* 1.5 * 2^23 */, 1.5703125f,
                      4.837512969970703125e-4f, 7.54978995489188216e-8f, k, r);
    float z = r * r;
    float sr = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z
                - 1.6666654611e-1f) * z * r + r;
    float cr = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z
                + 4.166664568298827e-2f) * z * z - 0.5f * z + 1.0f;
    ZM_QUADRANT(float, k, sr, cr, s, c);
}

ZM_INLINE void zm_sincos(double x, double *s, double *c)
{
    ZM_REDUCE_HALF_PI(double, x, 6755399441055744.0 /* 1.5 * 2^52 */,
                      1.57079625129699707031, 7.54978941586159635336e-8,
                      5.39030285815811905290e-15, k, r);
    double z = r * r;
    double sp = 1.58962301576546568060e-10;
    sp = sp * z - 2.50507477628578072866e-8;
    sp = sp * z + 2.75573136213857245213e-6;
    sp = sp * z - 1.98412698295895385996e-4;
    sp = sp * z + 8.33333333332211858878e-3;
    sp = sp * z - 1.66666666666666307295e-1;
    double sr = r + r * z * sp;
    double cp = -1.13585365213876817300e-11;
    cp = cp * z + 2.08757008419747316778e-9;
    cp = cp * z - 2.75573141792967388112e-7;
    cp = cp * z + 2.48015872888517045348e-5;
    cp = cp * z - 1.38888888888730564116e-3;
    cp = cp * z + 4.16666666666665929218e-2;
    double cr = 1.0 - 0.5 * z + z * z * cp;
    ZM_QUADRANT(double, k, sr, cr, s, c);
}

#endif
