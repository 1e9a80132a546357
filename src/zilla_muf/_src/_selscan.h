/*
 * One channel of Mamba-1's real selective scan (float and double), on the
 * vectors of _vlanes.h: its state h (N values) is advanced through every
 * step t,
 *
 *     h[n] = exp(dt[t] A[n]) h[n] + (dt[t] u[t]) B[t, n]
 *     y[t] = (sum_n C[t, n] h[n] + D u[t]) * g[t]      (g: silu(z), or 1)
 *
 * With sequence ids `seq` (L,), h is set to zero (not multiplied by a zero
 * decay) where the id changes, so packed sequences share no arithmetic.
 *
 * The decays exp(dt A) of a block of ZM_SEL_TB steps are formed first, in
 * one vectorised pass, so that the recurrence itself is multiply-adds only;
 * they are the decay element of _vmath.h (0 below the square root of the
 * smallest normal number, as in the chunked kernels: their products would
 * be subnormal, and slow).
 * The dot product over n runs in vector lanes, summed in a fixed order
 * (the result does not depend on the thread count).
 */
#ifndef ZM_SELSCAN_H
#define ZM_SELSCAN_H

#include "_vlanes.h"

/* Steps whose decays are formed in one pass. */
#define ZM_SEL_TB 16

/* Elements of scratch of one channel: the state and a block of decays. */
static ptrdiff_t zm_sel_scratch(ptrdiff_t N)
{
    return N * (ZM_SEL_TB + 1);
}

/* The first position t >= from (t >= 1) where the sequence id changes, or L. */
static ptrdiff_t zm_sel_next_start(const long long *seq, ptrdiff_t from,
                                   ptrdiff_t L)
{
    ptrdiff_t t;
    for (t = from < 1 ? 1 : from; t < L; t++)
        if (seq[t] != seq[t - 1])
            return t;
    return L;
}

/* One step of a channel's state: h[n] = e[n] h[n] + du B[n] in place for
 * n < N (e: the decays); returns sum_n C[n] h[n], the vector lanes summed
 * in a fixed order, then the tail. */
#define ZM_DEFINE_SEL_UPDATE(sfx, T, V, VW)                                 \
ZM_INLINE T zm_sel_update_##sfx(const T *e, T *restrict h, const T *Bt,     \
                                const T *Ct, T du, ptrdiff_t N)             \
{                                                                           \
    const V zero = {0};                                                     \
    V acc = zero;                                                           \
    T tail = 0;                                                             \
    ptrdiff_t n;                                                            \
    for (n = 0; n + VW <= N; n += VW) {                                     \
        V hv = zm_vld_##sfx(e + n) * zm_vld_##sfx(h + n)                    \
               + du * zm_vld_##sfx(Bt + n);                                 \
        zm_vst_##sfx(h + n, hv);                                            \
        acc += zm_vld_##sfx(Ct + n) * hv;                                   \
    }                                                                       \
    for (; n < N; n++) {                                                    \
        T hv = e[n] * h[n] + du * Bt[n];                                    \
        h[n] = hv;                                                          \
        tail += Ct[n] * hv;                                                 \
    }                                                                       \
    return zm_hsum_##sfx(acc) + tail;                                       \
}

ZM_DEFINE_SEL_UPDATE(f, float, zm_vf, ZM_VWF)
ZM_DEFINE_SEL_UPDATE(d, double, zm_vd, ZM_VWD)

#define ZM_DEFINE_SEL_CHANNEL(sfx, T, V, VW, EXP_IN, EXP_LO, EXP_HI, TINY)  \
ZM_CLONES                                                                   \
static void zm_sel_channel_##sfx(const T *u, const T *dts, const T *g,      \
                                 const T *A, const T *Bp, ptrdiff_t bst,    \
                                 const T *Cp, ptrdiff_t cst, T Dd,          \
                                 const T *h0, T *y, T *hlast, T *work,      \
                                 ptrdiff_t N, ptrdiff_t L,                  \
                                 const long long *seq)                      \
{                                                                           \
    T *restrict h = work;                                                   \
    T *restrict dA = work + N;                                              \
    T lo = EXP_LO, hi = EXP_HI;     /* hidden: min and max (see _vmath.h) */\
    ptrdiff_t t0, t, n;                                                     \
    ZM_OPAQUE(lo);                                                          \
    ZM_OPAQUE(hi);                                                          \
    ptrdiff_t next = seq != NULL ? zm_sel_next_start(seq, 1, L) : L;       \
    for (n = 0; n < N; n++)                                                 \
        h[n] = h0[n];                                                       \
    for (t0 = 0; t0 < L; t0 += ZM_SEL_TB) {                                 \
        const ptrdiff_t tb = L - t0 < ZM_SEL_TB ? L - t0 : ZM_SEL_TB;       \
        for (t = 0; t < tb; t++) {                                          \
            const T d = dts[t0 + t];                                        \
            T *restrict row = dA + t * N;                                   \
            for (n = 0; n < N; n++) {                                       \
                const T e = EXP_IN(d * A[n], lo, hi);                       \
                row[n] = e < (T) TINY ? 0 : e;                              \
            }                                                               \
        }                                                                   \
        for (t = 0; t < tb; t++) {                                          \
            const T *Bt = Bp + (t0 + t) * bst, *Ct = Cp + (t0 + t) * cst;   \
            const T *e = dA + t * N;                                        \
            const T ut = u[t0 + t], du = dts[t0 + t] * ut;                  \
            T s;                                                            \
            if (t0 + t == next) {     /* a new sequence: state reset */   \
                for (n = 0; n < N; n++)                                     \
                    h[n] = 0;                                               \
                next = zm_sel_next_start(seq, next + 1, L);                 \
            }                                                               \
            s = zm_sel_update_##sfx(e, h, Bt, Ct, du, N) + Dd * ut;         \
            y[t0 + t] = g != NULL ? s * g[t0 + t] : s;                      \
        }                                                                   \
    }                                                                       \
    for (n = 0; n < N; n++)                                                 \
        hlast[n] = h[n];                                                    \
}

/* the decays: the decay element of _vmath.h (the exponent floored, then 0
 * below the threshold), with the bounds hidden from the optimiser */
ZM_DEFINE_SEL_CHANNEL(f, float, zm_vf, ZM_VWF, zm_expf_in, ZM_DECAY_LOG_FLOOR_F,
                      ZM_EXPF_HI, ZM_DECAY_TINY_F)
ZM_DEFINE_SEL_CHANNEL(d, double, zm_vd, ZM_VWD, zm_exp_in, ZM_DECAY_LOG_FLOOR_D,
                      ZM_EXP_HI, ZM_DECAY_TINY_D)

/* Channels whose decays one pass of the one-token step forms. */
#define ZM_SEL_STEP_BLOCK 64

/* Elements of the one-token step's scratch. */
static ptrdiff_t zm_sel_step_scratch(ptrdiff_t N)
{
    return ZM_SEL_STEP_BLOCK * N;
}

/*
 * One token of `dim` channels of one batch row, each as one step of the
 * channel above (the same products in the same order):
 *
 *     h[d, n] = exp(dt[d] A[d, n]) h[d, n] + (dt[d] u[d]) B[n]
 *     y[d]    = (sum_n C[n] h[d, n] + D[d] u[d]) * g[d]
 *
 * h (dim, N) in place; g (silu of the gate) and D may be NULL. The decays
 * of a block of channels are formed in one flat vectorised pass (a
 * channel's N values alone are too few to fill the vectors well).
 */
#define ZM_DEFINE_SEL_STEP(sfx, T, V, VW, EXP)                              \
ZM_CLONES                                                                   \
static void zm_sel_step_##sfx(const T *u, const T *dts, const T *g,         \
                              const T *A, const T *B, const T *C,           \
                              const T *D, T *h, T *y, T *work,              \
                              ptrdiff_t dim, ptrdiff_t N)                   \
{                                                                           \
    T *restrict e = work;                                                   \
    ptrdiff_t d0, d, n, i;                                                  \
    for (d0 = 0; d0 < dim; d0 += ZM_SEL_STEP_BLOCK) {                       \
        const ptrdiff_t nd = dim - d0 < ZM_SEL_STEP_BLOCK                   \
                                 ? dim - d0 : ZM_SEL_STEP_BLOCK;            \
        for (d = 0; d < nd; d++) {                                          \
            const T s = dts[d0 + d];                                        \
            const T *a = A + (d0 + d) * N;                                  \
            for (n = 0; n < N; n++)                                         \
                e[d * N + n] = s * a[n];                                    \
        }                                                                   \
        for (i = 0; i < nd * N; i++)                                        \
            e[i] = EXP(e[i]);                                               \
        for (d = 0; d < nd; d++) {                                          \
            const T ut = u[d0 + d], du = dts[d0 + d] * ut;                  \
            const T s = zm_sel_update_##sfx(e + d * N, h + (d0 + d) * N, B, C, \
                                            du, N)                          \
                        + (D != NULL ? D[d0 + d] : 0) * ut;                 \
            y[d0 + d] = g != NULL ? s * g[d0 + d] : s;                      \
        }                                                                   \
    }                                                                       \
}

ZM_DEFINE_SEL_STEP(f, float, zm_vf, ZM_VWF, zm_decay_expf)
ZM_DEFINE_SEL_STEP(d, double, zm_vd, ZM_VWD, zm_decay_exp)

/* A channel's steps: dt[t] = softplus(dl[t] + bias), or dl[t] + bias.
 * float: the branch-free zm_softplusf (vectorised); double: x itself
 * above 20 (torch's threshold), else log1p(exp(x)). */
ZM_CLONES
static void zm_sel_steps_f(const float *dl, float bias, int softplus,
                           float *dt, ptrdiff_t L)
{
    ptrdiff_t t;
    if (softplus)
        for (t = 0; t < L; t++)
            dt[t] = zm_softplusf(dl[t] + bias);
    else
        for (t = 0; t < L; t++)
            dt[t] = dl[t] + bias;
}

static void zm_sel_steps_d(const double *dl, double bias, int softplus,
                           double *dt, ptrdiff_t L)
{
    ptrdiff_t t;
    for (t = 0; t < L; t++) {
        double x = dl[t] + bias;
        dt[t] = !softplus || x > 20 ? x : log1p(zm_exp(x));
    }
}

#endif
