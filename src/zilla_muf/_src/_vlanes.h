/*
 * 32-byte vectors of float and double for the kernels written with
 * gcc/clang vector extensions (on other compilers, vectors of width 1:
 * the same code on scalars), and their load, store and horizontal sum.
 *
 * zm_vf / zm_vd hold ZM_VWF / ZM_VWD elements. The helpers are named with
 * the element type's suffix: zm_vld_f, zm_vst_f, zm_hsum_f, and _d.
 */
#ifndef ZM_VLANES_H
#define ZM_VLANES_H

#include "_vmath.h"

/* ZM_SCALAR (a build or test define) selects the scalar path anywhere. */
#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 5) \
    && !defined(ZM_SCALAR)
typedef float zm_vf __attribute__((vector_size(32)));
typedef double zm_vd __attribute__((vector_size(32)));
#define ZM_VWF 8
#define ZM_VWD 4
#else
typedef float zm_vf;
typedef double zm_vd;
#define ZM_VWF 1
#define ZM_VWD 1
#endif

#if defined(__GNUC__)
#define ZM_UNROLL _Pragma("GCC unroll 8")
#else
#define ZM_UNROLL
#endif

/* Unaligned load and store; the sum of a vector's elements in a fixed
 * order (halves added pairwise). */
#define ZM_DEFINE_VHELPERS(sfx, T, V, VW)                                   \
ZM_INLINE V zm_vld_##sfx(const T *p)                                        \
{                                                                           \
    V v;                                                                    \
    memcpy(&v, p, sizeof v);                                                \
    return v;                                                               \
}                                                                           \
ZM_INLINE void zm_vst_##sfx(T *p, V v)                                      \
{                                                                           \
    memcpy(p, &v, sizeof v);                                                \
}                                                                           \
ZM_INLINE T zm_hsum_##sfx(V v)                                              \
{                                                                           \
    T t[VW];                                                                \
    int k, w;                                                               \
    memcpy(t, &v, sizeof t);                                                \
    for (w = VW / 2; w >= 1; w /= 2)                                        \
        for (k = 0; k < w; k++)                                             \
            t[k] += t[k + w];                                               \
    return t[0];                                                            \
}

ZM_DEFINE_VHELPERS(f, float, zm_vf, ZM_VWF)
ZM_DEFINE_VHELPERS(d, double, zm_vd, ZM_VWD)

/* With ZM_ISA_BUILDS, 64-byte vectors for the AVX-512 builds: zm_wf /
 * zm_wd of ZM_WWF / ZM_WWD elements, helpers suffixed wf and wd, compiled
 * for x86-64-v4 (they are only called from code built for it). */
#if ZM_ISA_BUILDS
#define ZM_WWF 16
#define ZM_WWD 8
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
typedef float zm_wf __attribute__((vector_size(64)));
typedef double zm_wd __attribute__((vector_size(64)));
ZM_DEFINE_VHELPERS(wf, float, zm_wf, ZM_WWF)
ZM_DEFINE_VHELPERS(wd, double, zm_wd, ZM_WWD)
#pragma GCC pop_options
#endif

#endif
