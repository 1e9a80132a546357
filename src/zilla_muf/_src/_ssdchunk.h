/*
 * Chunk kernels of Mamba-2's SSD (float and double): the products of one
 * chunk of one head, as register-tiled loops with no packing of the large
 * operands and no separate scaling passes.
 *
 * The body (_ssdchunk_impl.h) is written once and included once per
 * element type (float, double) and build, on the vectors of _vlanes.h. A
 * tile is MR rows by two vectors: 32-byte vectors in the build every
 * machine has (6 x 16 floats, 6 x 8 doubles: 12 accumulators, which fit
 * the 16 AVX registers), 64-byte ones in the AVX-512 build of x86-64 Linux
 * (6 x 32 floats, 6 x 16 doubles, twice the columns per instruction; see
 * "the builds" below); other compilers get the same loops on scalars
 * (vectors of width 1).
 *
 * The output and state products have the head dimension P as their
 * columns, so the operands read along columns (the chunk of x, the state,
 * the weighted x) are first copied into scratch rows of Pp = P rounded up
 * to the vector width, and the state is kept transposed, (N, Pp), while a
 * task walks its chunks. C B^T has the chunk's positions as columns: B is
 * copied transposed for it. The operands read by rows (C, B, the decay
 * matrix) are used where they are.
 */
#ifndef ZM_SSDCHUNK_H
#define ZM_SSDCHUNK_H

#include "_vlanes.h"

/* Rows of a tile. */
#define ZM_SSD_MR 6

ZM_INLINE ptrdiff_t zm_ssd_round(ptrdiff_t n, ptrdiff_t w)
{
    return (n + w - 1) / w * w;
}

ZM_INLINE ptrdiff_t zm_ssd_min(ptrdiff_t a, ptrdiff_t b)
{
    return a < b ? a : b;
}

/* Elements of the per-thread scratch of one walk (see zm_ssd_walk_*), for
 * vector width vw: every block rounded up to 64 bytes. */
static ptrdiff_t zm_ssd_scratch(ptrdiff_t cm, ptrdiff_t P, ptrdiff_t N,
                                ptrdiff_t vw, ptrdiff_t itemsize)
{
    ptrdiff_t a = 64 / itemsize;
    ptrdiff_t Pp = zm_ssd_round(P, vw), mp = zm_ssd_round(cm, vw);
    return zm_ssd_round(N * Pp, a) + 2 * zm_ssd_round(cm * Pp, a)
           + 2 * zm_ssd_round(cm * mp, a) + 2 * zm_ssd_round(cm, a)
           + 2 * zm_ssd_round(mp, a) + zm_ssd_round(N * mp, a) + a;
}

/* ---- the builds --------------------------------------------------------
 * Each element type is built twice where ZM_ISA_BUILDS: with 64-byte
 * vectors for x86-64-v4 (AVX-512; suffix _512, the whole region compiled
 * for it), and with 32-byte vectors (suffix _256) as AVX2 and baseline
 * clones (ZM_CLONES_AVX2); elsewhere the _256 build alone, as ZM_CLONES
 * (the baseline, or scalars with ZM_SCALAR). The build is picked once per
 * process (zm_ssd_pick); the vector width it works in, VW, sets the
 * padding of the layouts the callers allocate (zm_ssd_vw), so the kept
 * states of the backward follow the build too. */
#define ZM_SSD_BODY "_ssdchunk_impl.h"
#if ZM_ISA_BUILDS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define ZM_SSD_WIDE 1
#define ZM_SSD_ATTR
#define ZM_SSD_TYPES 1
#include "_ssdinst.h"
#undef ZM_SSD_WIDE
#undef ZM_SSD_ATTR
#undef ZM_SSD_TYPES
#pragma GCC pop_options
#define ZM_SSD_ATTR_256 ZM_CLONES_AVX2
#else
#define ZM_SSD_ATTR_256 ZM_CLONES
#endif

#define ZM_SSD_WIDE 0
#define ZM_SSD_ATTR ZM_SSD_ATTR_256
#define ZM_SSD_TYPES (!ZM_ISA_BUILDS)
#include "_ssdinst.h"
#undef ZM_SSD_WIDE
#undef ZM_SSD_ATTR
#undef ZM_SSD_TYPES
#undef ZM_SSD_BODY

/* 1 when the _512 build runs. -1 until the first zm_ssd_pick; a caller
 * may set 0 or 1 (1 only where zm_cpu_isa() == 2) before any kernel runs
 * (the tests run both builds). */
static int zm_ssd_wide = -1;

static inline int zm_ssd_pick(void)
{
    if (zm_ssd_wide < 0)
        zm_ssd_wide = zm_cpu_isa() == 2;
    return zm_ssd_wide;
}

/* Elements of the picked build's vectors (itemsize 4 or 8): the padding
 * unit of Pp, Np and mp. */
static inline ptrdiff_t zm_ssd_vw(ptrdiff_t itemsize)
{
#if ZM_ISA_BUILDS
    if (zm_ssd_pick())
        return 64 / itemsize;
#endif
    return itemsize == 4 ? ZM_VWF : ZM_VWD;
}

#if ZM_ISA_BUILDS
#define ZM_SSD_RUN(name, sfx, args)                                         \
    do {                                                                    \
        if (zm_ssd_pick())                                                  \
            name##_##sfx##_512 args;                                        \
        else                                                                \
            name##_##sfx##_256 args;                                        \
    } while (0)
#else
#define ZM_SSD_RUN(name, sfx, args) name##_##sfx##_256 args
#endif

/* The entry points: the picked build's. */
#define ZM_SSD_DEFINE_ENTRIES(sfx, T)                                       \
static void zm_ssd_walk_##sfx(zm_ssd_walk_args_##sfx *a, T *work)           \
{                                                                           \
    ZM_SSD_RUN(zm_ssd_walk, sfx, (a, work));                                \
}                                                                           \
static void zm_ssd_stage_##sfx(const T *x, T *y, const T *B, const T *C,    \
                               const T *dt, const T *cs,                    \
                               const long long *sq, const T *state_in,      \
                               T *state_out, ptrdiff_t ldx, ptrdiff_t ldb,  \
                               ptrdiff_t m, ptrdiff_t cm, ptrdiff_t P,      \
                               ptrdiff_t N, T *work)                        \
{                                                                           \
    ZM_SSD_RUN(zm_ssd_stage, sfx, (x, y, B, C, dt, cs, sq, state_in,        \
                                   state_out, ldx, ldb, m, cm, P, N, work)); \
}                                                                           \
static void zm_ssd_cb_##sfx(T *CB, ptrdiff_t ldcb, const T *Cc,             \
                            const T *Bc, ptrdiff_t ldb, ptrdiff_t m,        \
                            ptrdiff_t N, T *work)                           \
{                                                                           \
    ZM_SSD_RUN(zm_ssd_cb, sfx, (CB, ldcb, Cc, Bc, ldb, m, N, work));        \
}                                                                           \
static void zm_seq_step_##sfx(T *St, const T *x, const T *Bt, const T *Ct,  \
                              T a, T d, ptrdiff_t P, ptrdiff_t N, T *y)     \
{                                                                           \
    ZM_SSD_RUN(zm_seq_step, sfx, (St, x, Bt, Ct, a, d, P, N, y));           \
}                                                                           \
static void zm_decode_head_##sfx(T *St, ptrdiff_t P, ptrdiff_t N,           \
                                 ptrdiff_t ntok, const T *x, ptrdiff_t ldx, \
                                 const T *Bt, const T *Ct, ptrdiff_t ldbc,  \
                                 const T *a, const T *d, T *y, T *inter,    \
                                 ptrdiff_t ldi, const T *Dv, const T *z)    \
{                                                                           \
    ZM_SSD_RUN(zm_decode_head, sfx, (St, P, N, ntok, x, ldx, Bt, Ct, ldbc,  \
                                     a, d, y, inter, ldi, Dv, z));          \
}

ZM_SSD_DEFINE_ENTRIES(f, float)
ZM_SSD_DEFINE_ENTRIES(d, double)

#endif
