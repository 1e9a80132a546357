/*
 * Chunk kernels of Mamba-2's SSD (float and double): the products of one
 * chunk of one head, as register-tiled loops with no packing of the large
 * operands and no separate scaling passes.
 *
 * The body (_ssdchunk_impl.h) is written once and included twice, with
 * T = float and T = double, on the vectors of _vlanes.h. With gcc/clang
 * vector extensions a tile is MR rows by two 32-byte vectors (6 x 16
 * floats, 6 x 8 doubles: 12 accumulators, which fit the 16 AVX registers);
 * other compilers get the same loops on scalars (vectors of width 1).
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

#define T float
#define V zm_vf
#define VW ZM_VWF
#define S(name) name##_f
#define ZM_EXP zm_expf
#define ZM_DECAY_EXP zm_decay_expf
#include "_ssdchunk_impl.h"
#undef T
#undef V
#undef VW
#undef S
#undef ZM_EXP
#undef ZM_DECAY_EXP

#define T double
#define V zm_vd
#define VW ZM_VWD
#define S(name) name##_d
#define ZM_EXP zm_exp
#define ZM_DECAY_EXP zm_decay_exp
#include "_ssdchunk_impl.h"
#undef T
#undef V
#undef VW
#undef S
#undef ZM_EXP
#undef ZM_DECAY_EXP

#endif
