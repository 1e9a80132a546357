/*
 * The backward of one channel of Mamba-1's real selective scan (float and
 * double), fused: the steps' softplus and its derivative, the gate, the
 * skip connection, the replay of the forward from the checkpointed states
 * and the reverse scan of the adjoint, in one pass per segment; the math
 * and the memory plan are in _selective_backward.pyx's Design. On the
 * vectors of _vlanes.h, as the forward (_selscan.h): every loop over the N
 * state entries runs in vector lanes, the sums over n in a fixed order.
 *
 * work: zm_selb_scratch(N, K) values. gB, gC: the thread's accumulators,
 * with the layout of B and C (rows bst, cst apart per step; a step of 0,
 * the constant layout, accumulates in scratch and adds once at the end).
 */
#ifndef ZM_SELSCAN_BWD_H
#define ZM_SELSCAN_BWD_H

#include "_selscan.h"
#include "_vexp.h"

/* Elements of one thread's scratch for dstate N and segments of K steps:
 * the segment's decays and decayed states (K N each), the adjoint, the
 * replayed state, the gradient of A and two accumulators for constant B
 * and C (N each), the steps, their derivatives, the gated cotangent and
 * the two sums over n of every step (K each). */
static ptrdiff_t zm_selb_scratch(ptrdiff_t N, ptrdiff_t K)
{
    return 2 * K * N + 6 * N + 5 * K + 8;
}

/* Most vectors of the state kept in registers (dstate 16 in double). */
#define ZM_SELB_NVMAX 4

/* The threshold above which softplus is the identity (torch's). */
#define ZM_SELB_SP_MAX 20

/* Steps dt = softplus(x) and their derivatives sp = sigmoid(x) (1 above
 * the threshold), x = dl + bias, from one exponential of -|x|: the
 * forward's zm_softplusf, and the sigmoid of _vexp.h. */
ZM_INLINE void zm_selb_softplus_f(const float *dl, float bias, float *dt,
                                  float *sp, ptrdiff_t m)
{
    ptrdiff_t k;
    for (k = 0; k < m; k++) {
        const float x = dl[k] + bias;
        uint32_t xbits, abits, pbits;
        float ax, pos, e, r;
        memcpy(&xbits, &x, sizeof xbits);
        abits = xbits & 0x7FFFFFFFu;
        pbits = xbits & ~(0u - (xbits >> 31));
        memcpy(&ax, &abits, sizeof ax);
        memcpy(&pos, &pbits, sizeof pos);
        e = zm_expf(-ax);
        dt[k] = pos + zm_log1pf_unit(e);
        r = 1.0f / (1.0f + e);
        r = x >= 0 ? r : e * r;
        sp[k] = x > ZM_SELB_SP_MAX ? 1.0f : r;
    }
}

/* double: the forward's steps (log1p of libm), then the sigmoid. */
ZM_INLINE void zm_selb_softplus_d(const double *dl, double bias, double *dt,
                                  double *sp, ptrdiff_t m)
{
    ptrdiff_t k;
    zm_sel_steps_d(dl, bias, 1, dt, m);
    for (k = 0; k < m; k++)
        sp[k] = dl[k] + bias;
    zm_sigmoid_d(sp, sp, m);
    for (k = 0; k < m; k++)
        sp[k] = dl[k] + bias > ZM_SELB_SP_MAX ? 1.0 : sp[k];
}

#define ZM_DEFINE_SEL_BWD(sfx, T, V, VW, EXP_IN, EXP_LO, EXP_HI, TINY,       \
                          STEPS, SIGMOID)                                     \
/* A segment's per-step factors: its steps dt (the forward's own function),   \
 * sp = d dt / d delta (sigmoid, 1 above the threshold; 1 without softplus),  \
 * g0 = gy silu(z) and gz = gy y0 silu'(z) by the gate elements of _vmath.h  \
 * (g0 = gy without the gate). The sigmoid exponentiates only -|x|. */        \
ZM_INLINE void zm_selb_steps_##sfx(const T *dl, T bias, int softplus,         \
                                   const T *z, const T *y0, const T *gy,      \
                                   T *dt, T *sp, T *g0, T *gz, ptrdiff_t m)   \
{                                                                             \
    ptrdiff_t k;                                                              \
    if (softplus) {                                                           \
        STEPS(dl, bias, dt, sp, m);                                           \
    } else {                                                                  \
        for (k = 0; k < m; k++) {                                             \
            dt[k] = dl[k] + bias;                                             \
            sp[k] = 1;                                                        \
        }                                                                     \
    }                                                                         \
    if (z != NULL) {                                                          \
        SIGMOID(z, g0, m);                                                    \
        for (k = 0; k < m; k++) {                                             \
            const T s = g0[k], zz = z[k], g = gy[k];                          \
            g0[k] = g * zm_silu_sig_##sfx(zz, s);                             \
            gz[k] = g * y0[k] * zm_dsilu_sig_##sfx(zz, s);                    \
        }                                                                     \
    } else {                                                                  \
        for (k = 0; k < m; k++)                                               \
            g0[k] = gy[k];                                                    \
    }                                                                         \
}                                                                             \
ZM_INLINE void zm_selb_body_##sfx(                                            \
    const T *u, const T *dl, T bias, int softplus, const T *z, const T *y0,   \
    const T *gy, T Dd, const T *A, const T *Bp, ptrdiff_t bst, const T *Cp,   \
    ptrdiff_t cst, const T *ck, const T *glast, T *gu, T *gdl, T *gz, T *gA,  \
    T *gB, T *gC, T *gh0, T *sums, T *work, ptrdiff_t N, ptrdiff_t L,         \
    ptrdiff_t K, const ptrdiff_t NV)                                          \
{                                                                             \
    const V zero = {0};                                                       \
    const ptrdiff_t nseg = (L + K - 1) / K;                                   \
    T *restrict E = work;                                                     \
    T *restrict P = E + K * N;                                                \
    T *restrict lam = P + K * N;                                              \
    T *restrict hs = lam + N;                                                 \
    T *restrict ga = hs + N;                                                  \
    T *restrict gBc = ga + N;                                                 \
    T *restrict gCc = gBc + N;                                                \
    T *restrict dt = gCc + N;                                                 \
    T *restrict sp = dt + K;                                                  \
    T *restrict g0 = sp + K;                                                  \
    T *restrict LB = g0 + K;                                                  \
    T *restrict QA = LB + K;                                                  \
    T gD = 0, gbias = 0;                                                      \
    T lo = EXP_LO, hi = EXP_HI;       /* hidden: min and max (see _vmath.h) */\
    ptrdiff_t s, k, n, i;                                                     \
    ZM_OPAQUE(lo);                                                            \
    ZM_OPAQUE(hi);                                                            \
    for (n = 0; n < N; n++) {                                                 \
        lam[n] = glast[n];                                                    \
        ga[n] = 0;                                                            \
        gBc[n] = 0;                                                           \
        gCc[n] = 0;                                                           \
    }                                                                         \
    for (s = nseg - 1; s >= 0; s--) {                                         \
        const ptrdiff_t t0 = s * K, m = (t0 + K < L ? t0 + K : L) - t0;       \
        const T *restrict hc = ck + s * N;                                    \
        zm_selb_steps_##sfx(dl + t0, bias, softplus,                          \
                            z != NULL ? z + t0 : NULL,                        \
                            y0 != NULL ? y0 + t0 : NULL, gy + t0, dt, sp, g0, \
                            gz != NULL ? gz + t0 : NULL, m);                  \
        /* the segment's decays, in one flat pass (as the forward) */         \
        for (k = 0; k < m; k++)                                               \
            for (n = 0; n < N; n++)                                           \
                E[k * N + n] = dt[k] * A[n];                                  \
        /* the forward's decay element (_vmath.h): exp with the exponent   \
         * floored at EXP_LO, then 0 below TINY */                            \
        for (i = 0; i < m * N; i++) {                                         \
            const T e = EXP_IN(E[i], lo, hi);                                 \
            E[i] = e < (T) TINY ? 0 : e;                                      \
        }                                                                     \
        if (NV > 0) {                                                         \
            /* the states, the adjoint and dA in registers (NV vectors) */    \
            V hr[ZM_SELB_NVMAX], lr[ZM_SELB_NVMAX], gr[ZM_SELB_NVMAX];        \
            V ar[ZM_SELB_NVMAX];                                              \
            ptrdiff_t j;                                                      \
            for (j = 0; j < NV; j++) {                                        \
                hr[j] = zm_vld_##sfx(hc + j * VW);                            \
                lr[j] = zm_vld_##sfx(lam + j * VW);                           \
                gr[j] = zm_vld_##sfx(ga + j * VW);                            \
                ar[j] = zm_vld_##sfx(A + j * VW);                             \
            }                                                                 \
            for (k = 0; k < m; k++) {                                         \
                const ptrdiff_t t = t0 + k;                                   \
                const T du = dt[k] * u[t], g = g0[k];                         \
                const T *restrict Bt = Bp + t * bst;                          \
                T *restrict gCt = cst != 0 ? gC + t * cst : gCc;              \
                const T *restrict e = E + k * N;                              \
                T *restrict p = P + k * N;                                    \
                for (j = 0; j < NV; j++) {                                    \
                    V pv = zm_vld_##sfx(e + j * VW) * hr[j];                  \
                    hr[j] = pv + du * zm_vld_##sfx(Bt + j * VW);              \
                    zm_vst_##sfx(p + j * VW, pv);                             \
                    zm_vst_##sfx(gCt + j * VW,                                \
                                 zm_vld_##sfx(gCt + j * VW) + g * hr[j]);     \
                }                                                             \
            }                                                                 \
            for (k = m - 1; k >= 0; k--) {                                    \
                const ptrdiff_t t = t0 + k;                                   \
                const T d = dt[k], du = d * u[t], g = g0[k];                  \
                const T *restrict Bt = Bp + t * bst;                          \
                const T *restrict Ct = Cp + t * cst;                          \
                T *restrict gBt = bst != 0 ? gB + t * bst : gBc;              \
                const T *restrict e = E + k * N;                              \
                const T *restrict p = P + k * N;                              \
                V lbv = zero, qav = zero;                                     \
                for (j = 0; j < NV; j++) {                                    \
                    V l = lr[j] + g * zm_vld_##sfx(Ct + j * VW);              \
                    V q = l * zm_vld_##sfx(p + j * VW);                       \
                    zm_vst_##sfx(gBt + j * VW,                                \
                                 zm_vld_##sfx(gBt + j * VW) + du * l);        \
                    lbv += l * zm_vld_##sfx(Bt + j * VW);                     \
                    qav += q * ar[j];                                         \
                    gr[j] += d * q;                                           \
                    lr[j] = zm_vld_##sfx(e + j * VW) * l;                     \
                }                                                             \
                LB[k] = zm_hsum_##sfx(lbv);                                   \
                QA[k] = zm_hsum_##sfx(qav);                                   \
            }                                                                 \
            for (j = 0; j < NV; j++) {                                        \
                zm_vst_##sfx(lam + j * VW, lr[j]);                            \
                zm_vst_##sfx(ga + j * VW, gr[j]);                             \
            }                                                                 \
        } else {                                                              \
            /* replay from the checkpoint: P_k = e_k h_{k-1}, and dC */       \
            for (n = 0; n < N; n++)                                           \
                hs[n] = hc[n];                                                \
            for (k = 0; k < m; k++) {                                         \
                const ptrdiff_t t = t0 + k;                                   \
                const T du = dt[k] * u[t], g = g0[k];                         \
                const T *restrict Bt = Bp + t * bst;                          \
                T *restrict gCt = cst != 0 ? gC + t * cst : gCc;              \
                const T *restrict e = E + k * N;                              \
                T *restrict p = P + k * N;                                    \
                for (n = 0; n + VW <= N; n += VW) {                           \
                    V pv = zm_vld_##sfx(e + n) * zm_vld_##sfx(hs + n);        \
                    V hv = pv + du * zm_vld_##sfx(Bt + n);                    \
                    zm_vst_##sfx(p + n, pv);                                  \
                    zm_vst_##sfx(hs + n, hv);                                 \
                    zm_vst_##sfx(gCt + n, zm_vld_##sfx(gCt + n) + g * hv);    \
                }                                                             \
                for (; n < N; n++) {                                          \
                    T pv = e[n] * hs[n];                                      \
                    T hv = pv + du * Bt[n];                                   \
                    p[n] = pv;                                                \
                    hs[n] = hv;                                               \
                    gCt[n] += g * hv;                                         \
                }                                                             \
            }                                                                 \
            /* the adjoint lam_t = e_{t+1} lam_{t+1} + g0_t C_t, backward */  \
            for (k = m - 1; k >= 0; k--) {                                    \
                const ptrdiff_t t = t0 + k;                                   \
                const T d = dt[k], du = d * u[t], g = g0[k];                  \
                const T *restrict Bt = Bp + t * bst;                          \
                const T *restrict Ct = Cp + t * cst;                          \
                T *restrict gBt = bst != 0 ? gB + t * bst : gBc;              \
                const T *restrict e = E + k * N;                              \
                const T *restrict p = P + k * N;                              \
                V lbv = zero, qav = zero;                                     \
                T lbs = 0, qas = 0;                                           \
                for (n = 0; n + VW <= N; n += VW) {                           \
                    V l = zm_vld_##sfx(lam + n) + g * zm_vld_##sfx(Ct + n);   \
                    V q = l * zm_vld_##sfx(p + n);                            \
                    zm_vst_##sfx(gBt + n, zm_vld_##sfx(gBt + n) + du * l);    \
                    lbv += l * zm_vld_##sfx(Bt + n);                          \
                    qav += q * zm_vld_##sfx(A + n);                           \
                    zm_vst_##sfx(ga + n, zm_vld_##sfx(ga + n) + d * q);       \
                    zm_vst_##sfx(lam + n, zm_vld_##sfx(e + n) * l);           \
                }                                                             \
                for (; n < N; n++) {                                          \
                    T l = lam[n] + g * Ct[n];                                 \
                    T q = l * p[n];                                           \
                    gBt[n] += du * l;                                         \
                    lbs += l * Bt[n];                                         \
                    qas += q * A[n];                                          \
                    ga[n] += d * q;                                           \
                    lam[n] = e[n] * l;                                        \
                }                                                             \
                LB[k] = zm_hsum_##sfx(lbv) + lbs;                             \
                QA[k] = zm_hsum_##sfx(qav) + qas;                             \
            }                                                                 \
        }                                                                     \
        /* the per-step gradients, from the sums over n */                    \
        for (k = 0; k < m; k++) {                                             \
            const ptrdiff_t t = t0 + k;                                       \
            const T g = g0[k], ut = u[t];                                     \
            const T gd = (ut * LB[k] + QA[k]) * sp[k];                        \
            gu[t] = g * Dd + dt[k] * LB[k];                                   \
            gdl[t] = gd;                                                      \
            gbias += gd;                                                      \
            gD += g * ut;                                                     \
        }                                                                     \
    }                                                                         \
    for (n = 0; n < N; n++) {                                                 \
        gh0[n] = lam[n];                                                      \
        gA[n] = ga[n];                                                        \
    }                                                                         \
    if (bst == 0)                                                             \
        for (n = 0; n < N; n++)                                               \
            gB[n] += gBc[n];                                                  \
    if (cst == 0)                                                             \
        for (n = 0; n < N; n++)                                               \
            gC[n] += gCc[n];                                                  \
    sums[0] = gD;                                                             \
    sums[1] = gbias;                                                          \
}                                                                             \
/* The channel's backward; dstate 16 (Mamba-1's) with the loops' trip count   \
 * known to the compiler (unrolled, the state in registers), a few vectors'   \
 * worth with the state in registers, else the state in scratch. */           \
ZM_CLONES                                                                     \
static void zm_selb_channel_##sfx(                                            \
    const T *u, const T *dl, T bias, int softplus, const T *z, const T *y0,   \
    const T *gy, T Dd, const T *A, const T *Bp, ptrdiff_t bst, const T *Cp,   \
    ptrdiff_t cst, const T *ck, const T *glast, T *gu, T *gdl, T *gz, T *gA,  \
    T *gB, T *gC, T *gh0, T *sums, T *work, ptrdiff_t N, ptrdiff_t L,         \
    ptrdiff_t K)                                                              \
{                                                                             \
    if (N == 16)                                                              \
        zm_selb_body_##sfx(u, dl, bias, softplus, z, y0, gy, Dd, A, Bp, bst,  \
                           Cp, cst, ck, glast, gu, gdl, gz, gA, gB, gC, gh0,  \
                           sums, work, 16, L, K,                              \
                           16 / VW <= ZM_SELB_NVMAX ? 16 / VW : 0);           \
    else if (N % VW == 0 && N / VW <= ZM_SELB_NVMAX)                          \
        zm_selb_body_##sfx(u, dl, bias, softplus, z, y0, gy, Dd, A, Bp, bst,  \
                           Cp, cst, ck, glast, gu, gdl, gz, gA, gB, gC, gh0,  \
                           sums, work, N, L, K, N / VW);                      \
    else                                                                      \
        zm_selb_body_##sfx(u, dl, bias, softplus, z, y0, gy, Dd, A, Bp, bst,  \
                           Cp, cst, ck, glast, gu, gdl, gz, gA, gB, gC, gh0,  \
                           sums, work, N, L, K, 0);                           \
}

ZM_DEFINE_SEL_BWD(f, float, zm_vf, ZM_VWF, zm_expf_in, ZM_DECAY_LOG_FLOOR_F,
                  ZM_EXPF_HI, ZM_DECAY_TINY_F, zm_selb_softplus_f, zm_sigmoid_f)
ZM_DEFINE_SEL_BWD(d, double, zm_vd, ZM_VWD, zm_exp_in, ZM_DECAY_LOG_FLOOR_D,
                  ZM_EXP_HI, ZM_DECAY_TINY_D, zm_selb_softplus_d, zm_sigmoid_d)

/* ------------------------------------------------------------------------
 * Complex A (and B, C, the state): the real and imaginary parts in separate
 * real rows, as the forward keeps them. The forward's output is 2 Re(sum_n
 * C h); the backward first runs the recurrence forward to keep the state
 * entering every segment (in scratch), then walks the segments in reverse
 * as the real one does, with
 *
 *     lam_t = conj(e_{t+1}) lam_{t+1} + 2 g0_t conj(C_t)
 *     gC_t += 2 g0_t conj(h_t),   gB_t += dt_t u_t lam_t
 *     lb_t = Re sum_n conj(lam_t) B_t,   q_t = conj(lam_t) e_t h_{t-1}
 *     gdelta_t = (u_t lb_t + Re sum_n q_t A) softplus',   gA += dt_t conj(q_t)
 *
 * and gh0 = conj(e_0) lam_0 (gradients of complex values as dL/dRe +
 * i dL/dIm). The loops over n are plain C (vectorised by the compiler);
 * the two sums over n in ZM_SELBC_PART partial sums, a fixed order.
 * ---------------------------------------------------------------------- */
#define ZM_SELBC_PART 8
#define ZM_SELBC_ABS(x) ((x) < 0 ? -(x) : (x))

/* Elements of one thread's scratch: the checkpoints (2 N per segment), the
 * segment's decays and decayed states (4 K N), 16 rows of N, 5 of K. */
static ptrdiff_t zm_selbc_scratch(ptrdiff_t N, ptrdiff_t K, ptrdiff_t L)
{
    const ptrdiff_t nseg = (L + K - 1) / K;
    return 2 * nseg * N + 4 * K * N + 16 * N + 5 * K + 8;
}

#define ZM_DEFINE_SELC_BWD(sfx, T, EXP, SINCOS, SINCOS_MAX, COS, SIN)       \
/* Er + i Ei = exp(dt_k A), k < m: by the vectorised sincos when every      \
 * angle is in its exact range, else (a huge step or Im A, inf, NaN) by     \
 * libm, as the forward. */                                                 \
ZM_INLINE void zm_selbc_decays_##sfx(T *restrict Er, T *restrict Ei,        \
                                     const T *restrict dt,                  \
                                     const T *restrict Ar,                  \
                                     const T *restrict Ai, T amax,          \
                                     ptrdiff_t N, ptrdiff_t m)              \
{                                                                           \
    ptrdiff_t k, n;                                                         \
    T dmax = 0;                                                             \
    for (k = 0; k < m; k++)                                                 \
        dmax = ZM_SELBC_ABS(dt[k]) > dmax ? ZM_SELBC_ABS(dt[k]) : dmax;     \
    if (dmax * amax <= SINCOS_MAX) {                                        \
        for (k = 0; k < m; k++)                                             \
            for (n = 0; n < N; n++) {                                       \
                T s, c, mag = EXP(dt[k] * Ar[n]);                           \
                SINCOS(dt[k] * Ai[n], &s, &c);                              \
                Er[k * N + n] = mag * c;                                    \
                Ei[k * N + n] = mag * s;                                    \
            }                                                               \
    } else {                                                                \
        for (k = 0; k < m; k++)                                             \
            for (n = 0; n < N; n++) {                                       \
                T mag = EXP(dt[k] * Ar[n]);                                 \
                Er[k * N + n] = mag * COS(dt[k] * Ai[n]);                   \
                Ei[k * N + n] = mag * SIN(dt[k] * Ai[n]);                   \
            }                                                               \
    }                                                                       \
}                                                                           \
ZM_INLINE T zm_selbc_sum_##sfx(const T *restrict s, ptrdiff_t N)            \
{                                                                           \
    T p[ZM_SELBC_PART] = {0};                                               \
    ptrdiff_t n, j;                                                         \
    for (n = 0; n + ZM_SELBC_PART <= N; n += ZM_SELBC_PART)                 \
        for (j = 0; j < ZM_SELBC_PART; j++)                                 \
            p[j] += s[n + j];                                               \
    for (; n < N; n++)                                                      \
        p[0] += s[n];                                                       \
    return ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7])); \
}                                                                           \
ZM_INLINE void zm_selbc_body_##sfx(                                         \
    const T *u, const T *dl, T bias, int softplus, const T *z, const T *y0, \
    const T *gy, T Dd, const T *Ar, const T *Ai, const T *Br, const T *Bi,  \
    ptrdiff_t bst, const T *Cr, const T *Ci, ptrdiff_t cst, const T *h0r,   \
    const T *h0i, const T *glr, const T *gli, T *gu, T *gdl, T *gz,         \
    T *gAr, T *gAi, T *gBr, T *gBi, T *gCr, T *gCi, T *gh0r, T *gh0i,       \
    T *sums, T *work, ptrdiff_t N, ptrdiff_t L, ptrdiff_t K)                \
{                                                                           \
    const ptrdiff_t nseg = (L + K - 1) / K;                                 \
    T *restrict ck = work;                                                  \
    T *restrict Er = ck + 2 * nseg * N;                                     \
    T *restrict Ei = Er + K * N;                                            \
    T *restrict Pr = Ei + K * N;                                            \
    T *restrict Pi = Pr + K * N;                                            \
    T *restrict lr = Pi + K * N;                                            \
    T *restrict li = lr + N;                                                \
    T *restrict hr = li + N;                                                \
    T *restrict hi = hr + N;                                                \
    T *restrict ar = hi + N;                                                \
    T *restrict ai = ar + N;                                                \
    T *restrict bcr = ai + N;                                               \
    T *restrict bci = bcr + N;                                              \
    T *restrict ccr = bci + N;                                              \
    T *restrict cci = ccr + N;                                              \
    T *restrict s1 = cci + N;                                               \
    T *restrict s2 = s1 + N;                                                \
    T *restrict dt = s2 + N;                                                \
    T *restrict sp = dt + K;                                                \
    T *restrict g0 = sp + K;                                                \
    T *restrict LB = g0 + K;                                                \
    T *restrict QA = LB + K;                                                \
    T gD = 0, gbias = 0, amax = 0;                                          \
    ptrdiff_t s, k, n;                                                      \
    for (n = 0; n < N; n++) {                                               \
        amax = ZM_SELBC_ABS(Ai[n]) > amax ? ZM_SELBC_ABS(Ai[n]) : amax;     \
        hr[n] = h0r[n];                                                     \
        hi[n] = h0i[n];                                                     \
        lr[n] = glr[n];                                                     \
        li[n] = gli[n];                                                     \
        ar[n] = 0;                                                          \
        ai[n] = 0;                                                          \
        bcr[n] = 0;                                                         \
        bci[n] = 0;                                                         \
        ccr[n] = 0;                                                         \
        cci[n] = 0;                                                         \
    }                                                                       \
    /* forward: the state entering every segment */                         \
    for (s = 0; s < nseg; s++) {                                            \
        const ptrdiff_t t0 = s * K, m = (t0 + K < L ? t0 + K : L) - t0;     \
        for (n = 0; n < N; n++) {                                           \
            ck[2 * s * N + n] = hr[n];                                      \
            ck[(2 * s + 1) * N + n] = hi[n];                                \
        }                                                                   \
        zm_selb_steps_##sfx(dl + t0, bias, softplus, NULL, NULL, gy + t0,   \
                            dt, sp, g0, NULL, m);                           \
        zm_selbc_decays_##sfx(Er, Ei, dt, Ar, Ai, amax, N, m);              \
        for (k = 0; k < m; k++) {                                           \
            const ptrdiff_t t = t0 + k;                                     \
            const T du = dt[k] * u[t];                                      \
            const T *restrict btr = Br + t * bst;                           \
            const T *restrict bti = Bi + t * bst;                           \
            const T *restrict er = Er + k * N, *restrict ei = Ei + k * N;   \
            for (n = 0; n < N; n++) {                                       \
                const T xr = er[n] * hr[n] - ei[n] * hi[n] + du * btr[n];   \
                const T xi = er[n] * hi[n] + ei[n] * hr[n] + du * bti[n];   \
                hr[n] = xr;                                                 \
                hi[n] = xi;                                                 \
            }                                                               \
        }                                                                   \
    }                                                                       \
    for (s = nseg - 1; s >= 0; s--) {                                       \
        const ptrdiff_t t0 = s * K, m = (t0 + K < L ? t0 + K : L) - t0;     \
        zm_selb_steps_##sfx(dl + t0, bias, softplus,                        \
                            z != NULL ? z + t0 : NULL,                      \
                            y0 != NULL ? y0 + t0 : NULL, gy + t0, dt, sp,   \
                            g0, gz != NULL ? gz + t0 : NULL, m);            \
        zm_selbc_decays_##sfx(Er, Ei, dt, Ar, Ai, amax, N, m);              \
        /* replay: P_k = e_k h_{k-1}, and dC = 2 g0 conj(h) */              \
        for (n = 0; n < N; n++) {                                           \
            hr[n] = ck[2 * s * N + n];                                      \
            hi[n] = ck[(2 * s + 1) * N + n];                                \
        }                                                                   \
        for (k = 0; k < m; k++) {                                           \
            const ptrdiff_t t = t0 + k;                                     \
            const T du = dt[k] * u[t], g2 = 2 * g0[k];                      \
            const T *restrict btr = Br + t * bst;                           \
            const T *restrict bti = Bi + t * bst;                           \
            T *restrict gcr = cst != 0 ? gCr + t * cst : ccr;               \
            T *restrict gci = cst != 0 ? gCi + t * cst : cci;               \
            const T *restrict er = Er + k * N, *restrict ei = Ei + k * N;   \
            T *restrict pr = Pr + k * N, *restrict pi = Pi + k * N;         \
            for (n = 0; n < N; n++) {                                       \
                const T qr = er[n] * hr[n] - ei[n] * hi[n];                 \
                const T qi = er[n] * hi[n] + ei[n] * hr[n];                 \
                pr[n] = qr;                                                 \
                pi[n] = qi;                                                 \
                hr[n] = qr + du * btr[n];                                   \
                hi[n] = qi + du * bti[n];                                   \
                gcr[n] += g2 * hr[n];                                       \
                gci[n] -= g2 * hi[n];                                       \
            }                                                               \
        }                                                                   \
        /* the adjoint, backward through the segment */                     \
        for (k = m - 1; k >= 0; k--) {                                      \
            const ptrdiff_t t = t0 + k;                                     \
            const T d = dt[k], du = d * u[t], g2 = 2 * g0[k];               \
            const T *restrict btr = Br + t * bst;                           \
            const T *restrict bti = Bi + t * bst;                           \
            const T *restrict ctr = Cr + t * cst;                           \
            const T *restrict cti = Ci + t * cst;                           \
            T *restrict gbr = bst != 0 ? gBr + t * bst : bcr;               \
            T *restrict gbi = bst != 0 ? gBi + t * bst : bci;               \
            const T *restrict er = Er + k * N, *restrict ei = Ei + k * N;   \
            const T *restrict pr = Pr + k * N, *restrict pi = Pi + k * N;   \
            for (n = 0; n < N; n++) {                                       \
                const T xr = lr[n] + g2 * ctr[n];                           \
                const T xi = li[n] - g2 * cti[n];                           \
                const T qr = xr * pr[n] + xi * pi[n];                       \
                const T qi = xr * pi[n] - xi * pr[n];                       \
                gbr[n] += du * xr;                                          \
                gbi[n] += du * xi;                                          \
                s1[n] = xr * btr[n] + xi * bti[n];                          \
                s2[n] = qr * Ar[n] - qi * Ai[n];                            \
                ar[n] += d * qr;                                            \
                ai[n] -= d * qi;                                            \
                lr[n] = er[n] * xr + ei[n] * xi;                            \
                li[n] = er[n] * xi - ei[n] * xr;                            \
            }                                                               \
            LB[k] = zm_selbc_sum_##sfx(s1, N);                              \
            QA[k] = zm_selbc_sum_##sfx(s2, N);                              \
        }                                                                   \
        for (k = 0; k < m; k++) {                                           \
            const ptrdiff_t t = t0 + k;                                     \
            const T g = g0[k], ut = u[t];                                   \
            const T gd = (ut * LB[k] + QA[k]) * sp[k];                      \
            gu[t] = g * Dd + dt[k] * LB[k];                                 \
            gdl[t] = gd;                                                    \
            gbias += gd;                                                    \
            gD += g * ut;                                                   \
        }                                                                   \
    }                                                                       \
    for (n = 0; n < N; n++) {                                               \
        gh0r[n] = lr[n];                                                    \
        gh0i[n] = li[n];                                                    \
        gAr[n] = ar[n];                                                     \
        gAi[n] = ai[n];                                                     \
    }                                                                       \
    if (bst == 0)                                                           \
        for (n = 0; n < N; n++) {                                           \
            gBr[n] += bcr[n];                                               \
            gBi[n] += bci[n];                                               \
        }                                                                   \
    if (cst == 0)                                                           \
        for (n = 0; n < N; n++) {                                           \
            gCr[n] += ccr[n];                                               \
            gCi[n] += cci[n];                                               \
        }                                                                   \
    sums[0] = gD;                                                           \
    sums[1] = gbias;                                                        \
}                                                                           \
ZM_CLONES                                                                   \
static void zm_selbc_channel_##sfx(                                         \
    const T *u, const T *dl, T bias, int softplus, const T *z, const T *y0, \
    const T *gy, T Dd, const T *Ar, const T *Ai, const T *Br, const T *Bi,  \
    ptrdiff_t bst, const T *Cr, const T *Ci, ptrdiff_t cst, const T *h0r,   \
    const T *h0i, const T *glr, const T *gli, T *gu, T *gdl, T *gz,         \
    T *gAr, T *gAi, T *gBr, T *gBi, T *gCr, T *gCi, T *gh0r, T *gh0i,       \
    T *sums, T *work, ptrdiff_t N, ptrdiff_t L, ptrdiff_t K)                \
{                                                                           \
    if (N == 16)                                                            \
        zm_selbc_body_##sfx(u, dl, bias, softplus, z, y0, gy, Dd, Ar, Ai,   \
                            Br, Bi, bst, Cr, Ci, cst, h0r, h0i, glr, gli,   \
                            gu, gdl, gz, gAr, gAi, gBr, gBi, gCr, gCi,      \
                            gh0r, gh0i, sums, work, 16, L, K);              \
    else                                                                    \
        zm_selbc_body_##sfx(u, dl, bias, softplus, z, y0, gy, Dd, Ar, Ai,   \
                            Br, Bi, bst, Cr, Ci, cst, h0r, h0i, glr, gli,   \
                            gu, gdl, gz, gAr, gAi, gBr, gBi, gCr, gCi,      \
                            gh0r, gh0i, sums, work, N, L, K);               \
}

ZM_DEFINE_SELC_BWD(f, float, zm_expf, zm_sincosf, ZM_SINCOS_MAXF, cosf, sinf)
ZM_DEFINE_SELC_BWD(d, double, zm_exp, zm_sincos, ZM_SINCOS_MAX, cos, sin)

#endif
