/*
 * The backward of Mamba-2's chunked SSD (float and double), on the tiled
 * chunk products of _ssdchunk.h: a forward walk that keeps the state
 * entering every chunk, the reverse walk of the state adjoint, and the
 * gradients inside the chunks. The math and the plan of the passes are in
 * _ssd_backward.pyx's Design.
 *
 * The body (_ssdbwd_impl.h) is written once and included once per element
 * type and build, as _ssdchunk_impl.h is.
 */
#ifndef ZM_SSDBWD_H
#define ZM_SSDBWD_H

#include "_ssdchunk.h"

/* Rows ahead at which the row loops over strided rows prefetch. */
#define ZM_SSDB_AHEAD 6

/* Elements of the per-thread scratch of the backward passes, for the
 * longest chunk cm and vector width vw (see zm_ssdb_layout_*): every block
 * rounded up to 64 bytes, and 64 bytes to align the start. */
static ptrdiff_t zm_ssdb_scratch(ptrdiff_t cm, ptrdiff_t P, ptrdiff_t N,
                                 ptrdiff_t vw, ptrdiff_t itemsize)
{
    const ptrdiff_t a = 64 / itemsize;
    const ptrdiff_t Pp = zm_ssd_round(P, vw), Np = zm_ssd_round(N, vw);
    const ptrdiff_t mp = zm_ssd_round(cm, vw);
    ptrdiff_t n = 0;
    n += 3 * zm_ssd_round(cm * Np, a);     /* Bp, Cp, Q */
    n += 5 * zm_ssd_round(N * mp, a);      /* Bt, Ct, Qt, gCt, gBt */
    n += 5 * zm_ssd_round(cm * mp, a);     /* CB, dCB, E, Wt, dM */
    n += 3 * zm_ssd_round(cm * Pp, a);     /* Xd, dYp, dXd */
    n += 2 * zm_ssd_round(P * mp, a);      /* XdT, dYT */
    n += zm_ssd_round(N * Pp, a);          /* dSt */
    n += 5 * zm_ssd_round(mp, a);          /* din, dout, dc, col, acc */
    return n + a;
}

/* The arrays of one call (element type T of the instantiation; NULL for
 * an absent optional one), all C-contiguous:
 *   x, y0, y, z, gy, gx, gz   (nb, L, H, P)   (y0c: the kept pre-gate y0)
 *   B, C, gB, gC              (nb, L, G, N)
 *   dt, cs                    (nb, H, Lp)     processed steps, decay sums
 *   seq                       (nb, L)         int64 sequence ids
 *   init, last, gfinal, ginit (nb, H, P, N)
 *   states                    (nb, H, nch, N, Pp)  entering states
 *   dstates                   (nb, H, blk, N, Pp)  leaving adjoints of
 *                                                  the chunks c0 <= c < c1
 *   run                       (nb, H, N, Pp)  the adjoint between blocks
 *   cb                        (nb, G, nch, cm, mp) shared C B^T
 *   A (H,), D (H, P), ddt (nb, L, H),
 *   gA (nb, G, nch, H / G), gD (nb, G, nch, H / G, P): per-task sums;
 *   dtr (nb, L, H) the steps as given, dtb (H,) their bias: with dtr,
 *   ddt is the gradient of dtr (through the bias, softplus when
 *   `softplus`, and the clamp to [lo, hi]), otherwise of the processed
 *   steps; gdtb (nb, G, nch, H / G): per-task sums of ddt (with dtr). */
typedef struct {
    const void *x, *dt, *cs, *A, *B, *C, *D, *z, *gy, *y0c, *init, *gfinal;
    const void *dtr, *dtb;
    void *y0, *y, *last, *states, *dstates, *cb;
    void *gx, *gz, *gB, *gC, *ddt, *gA, *gD, *ginit, *run, *gdtb;
    const long long *seq;
    ptrdiff_t L, H, P, G, N, Lp, csz, nch, cm, mp, Pp, Np, blk, c0, c1;
    double lo, hi;
    int has_init, softplus;
} zm_ssdb_problem;

/* softplus(v) = log(1 + e^v), overflow-free (NaN propagates), as the
 * forward's step processing forms it. */
ZM_INLINE float zm_ssdb_softplus_f(float v)
{
    return zm_softplusf(v);
}

ZM_INLINE double zm_ssdb_softplus_d(double v)
{
    return (v > 0 ? v : 0) + log1p(exp(-fabs(v)));
}

/* The builds, as _ssdchunk.h's (_512 and _256). */
#define ZM_SSD_BODY "_ssdbwd_impl.h"
#if ZM_ISA_BUILDS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define ZM_SSD_WIDE 1
#define ZM_SSD_ATTR
#include "_ssdinst.h"
#undef ZM_SSD_WIDE
#undef ZM_SSD_ATTR
#pragma GCC pop_options
#endif

#define ZM_SSD_WIDE 0
#define ZM_SSD_ATTR ZM_SSD_ATTR_256
#include "_ssdinst.h"
#undef ZM_SSD_WIDE
#undef ZM_SSD_ATTR
#undef ZM_SSD_BODY

/* The entry points: the picked build's (zm_ssd_pick). */
#define ZM_SSDB_DEFINE_ENTRY(name, sfx, T)                                  \
static void name##_##sfx(const zm_ssdb_problem *pr, ptrdiff_t task,         \
                         T *work)                                           \
{                                                                           \
    ZM_SSD_RUN(name, sfx, (pr, task, work));                                \
}
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_cb_task, f, float)
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_cb_task, d, double)
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_fwd_task, f, float)
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_fwd_task, d, double)
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_adj_task, f, float)
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_adj_task, d, double)
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_grad_task, f, float)
ZM_SSDB_DEFINE_ENTRY(zm_ssdb_grad_task, d, double)
#undef ZM_SSDB_DEFINE_ENTRY

#endif
