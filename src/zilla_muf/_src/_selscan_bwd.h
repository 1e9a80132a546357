/*
 * The backward of one channel of Mamba-1's real selective scan (float and
 * double); the math and the memory plan are in _selective_backward.pyx's
 * Design. Written in C for `restrict` and the x86-64-v3 clones of _vmath.h:
 * the per-step loops over the N state entries then vectorise.
 *
 * work: (nseg + 2K + 3) N values. gB, gC: the thread's accumulators, with
 * the layout of B and C (rows bst, cst apart per step).
 */
#ifndef ZM_SELSCAN_BWD_H
#define ZM_SELSCAN_BWD_H

#include "_vmath.h"

#define ZM_DEFINE_SEL_BWD(sfx, T, EXP)                                        \
/* E[k, n] = exp(dl[k] A[n]) for k < m: the exponentials in one flat loop */ \
ZM_INLINE void zm_sel_bwd_decays_##sfx(T *restrict E, const T *restrict dl,   \
                                       const T *restrict A, ptrdiff_t N,      \
                                       ptrdiff_t m)                           \
{                                                                             \
    ptrdiff_t k, n;                                                           \
    for (k = 0; k < m; k++)                                                   \
        for (n = 0; n < N; n++)                                               \
            E[k * N + n] = dl[k] * A[n];                                      \
    for (k = 0; k < m * N; k++)                                               \
        E[k] = EXP(E[k]);                                                     \
}                                                                             \
ZM_INLINE void zm_sel_bwd_body_##sfx(const T *u, const T *dl, const T *A,     \
                             const T *Bp, ptrdiff_t bst,                      \
                             const T *Cp, ptrdiff_t cst, const T *gy,         \
                             const T *h0, const T *glast, T *gu, T *gdl,      \
                             T *gA, T *gB, T *gC, T *gh0, T *work,            \
                             ptrdiff_t N, ptrdiff_t L, ptrdiff_t K)           \
{                                                                             \
    const ptrdiff_t nseg = (L + K - 1) / K;                                   \
    T *restrict ck = work;                                                    \
    T *restrict H = ck + nseg * N;                                            \
    T *restrict E = H + K * N;                                                \
    T *restrict lam = E + K * N;                                              \
    T *restrict s1 = lam + N;                                                 \
    T *restrict s2 = s1 + N;                                                  \
    T *restrict gAr = gA;                                                     \
    ptrdiff_t s, t, n;                                                        \
    for (n = 0; n < N; n++)                                                   \
        lam[n] = h0[n];                                                       \
    /* forward: the state entering every segment */                           \
    for (s = 0; s < nseg; s++) {                                              \
        const ptrdiff_t t0 = s * K, t1 = t0 + K < L ? t0 + K : L;             \
        for (n = 0; n < N; n++)                                               \
            ck[s * N + n] = lam[n];                                           \
        zm_sel_bwd_decays_##sfx(E, dl + t0, A, N, t1 - t0);                   \
        for (t = t0; t < t1; t++) {                                           \
            const T du = dl[t] * u[t];                                        \
            const T *restrict Bt = Bp + t * bst;                              \
            const T *restrict e = E + (t - t0) * N;                           \
            for (n = 0; n < N; n++)                                           \
                lam[n] = e[n] * lam[n] + du * Bt[n];                          \
        }                                                                     \
    }                                                                         \
    for (n = 0; n < N; n++) {                                                 \
        lam[n] = glast[n];                                                    \
        gAr[n] = 0;                                                           \
    }                                                                         \
    for (s = nseg - 1; s >= 0; s--) {                                         \
        const ptrdiff_t t0 = s * K, t1 = t0 + K < L ? t0 + K : L;             \
        /* the segment's decays and states, from its checkpoint */            \
        zm_sel_bwd_decays_##sfx(E, dl + t0, A, N, t1 - t0);                   \
        for (t = t0; t < t1; t++) {                                           \
            const T du = dl[t] * u[t];                                        \
            const T *restrict Bt = Bp + t * bst;                              \
            const T *restrict src = t == t0 ? ck + s * N : H + (t - t0 - 1) * N; \
            const T *restrict e = E + (t - t0) * N;                           \
            T *restrict h = H + (t - t0) * N;                                 \
            for (n = 0; n < N; n++)                                           \
                h[n] = e[n] * src[n] + du * Bt[n];                            \
        }                                                                     \
        /* the adjoint, backward through the segment */                       \
        for (t = t1 - 1; t >= t0; t--) {                                      \
            const ptrdiff_t k = t - t0;                                       \
            const T *restrict Hp = k == 0 ? ck + s * N : H + (k - 1) * N;     \
            const T *restrict Ht = H + k * N;                                 \
            const T *restrict e = E + k * N;                                  \
            const T *restrict Bt = Bp + t * bst;                              \
            const T *restrict Ct = Cp + t * cst;                              \
            T *restrict gBt = gB + t * bst;                                   \
            T *restrict gCt = gC + t * cst;                                   \
            const T g = gy[t], d = dl[t], ut = u[t], du = d * ut;             \
            T p1[8] = {0}, p2[8] = {0}, lb, qa;                               \
            ptrdiff_t j;                                                      \
            for (n = 0; n < N; n++) {                                         \
                const T l = lam[n] + g * Ct[n];                               \
                const T q = l * e[n] * Hp[n];                                 \
                gCt[n] += g * Ht[n];                                          \
                gBt[n] += du * l;                                             \
                s1[n] = l * Bt[n];                                            \
                s2[n] = q * A[n];                                             \
                gAr[n] += d * q;                                              \
                lam[n] = e[n] * l;                                            \
            }                                                                 \
            /* the two sums over n in 8 partial sums (vectorised) */          \
            for (n = 0; n + 8 <= N; n += 8)                                   \
                for (j = 0; j < 8; j++) {                                     \
                    p1[j] += s1[n + j];                                       \
                    p2[j] += s2[n + j];                                       \
                }                                                             \
            for (; n < N; n++) {                                              \
                p1[0] += s1[n];                                               \
                p2[0] += s2[n];                                               \
            }                                                                 \
            lb = ((p1[0] + p1[4]) + (p1[1] + p1[5]))                          \
                 + ((p1[2] + p1[6]) + (p1[3] + p1[7]));                       \
            qa = ((p2[0] + p2[4]) + (p2[1] + p2[5]))                          \
                 + ((p2[2] + p2[6]) + (p2[3] + p2[7]));                       \
            gdl[t] = ut * lb + qa;                                            \
            gu[t] = d * lb;                                                   \
        }                                                                     \
    }                                                                         \
    for (n = 0; n < N; n++)                                                   \
        gh0[n] = lam[n];                                                      \
}                                                                             \
/* The channel's backward; dstate 16 (Mamba-1's) with the loops' trip count  \
 * known to the compiler (unrolled, no remainder loops). */                  \
ZM_CLONES                                                                     \
static void zm_sel_bwd_##sfx(const T *u, const T *dl, const T *A,             \
                             const T *Bp, ptrdiff_t bst,                      \
                             const T *Cp, ptrdiff_t cst, const T *gy,         \
                             const T *h0, const T *glast, T *gu, T *gdl,      \
                             T *gA, T *gB, T *gC, T *gh0, T *work,            \
                             ptrdiff_t N, ptrdiff_t L, ptrdiff_t K)           \
{                                                                             \
    if (N == 16)                                                              \
        zm_sel_bwd_body_##sfx(u, dl, A, Bp, bst, Cp, cst, gy, h0, glast, gu,  \
                              gdl, gA, gB, gC, gh0, work, 16, L, K);          \
    else                                                                      \
        zm_sel_bwd_body_##sfx(u, dl, A, Bp, bst, Cp, cst, gy, h0, glast, gu,  \
                              gdl, gA, gB, gC, gh0, work, N, L, K);           \
}

ZM_DEFINE_SEL_BWD(f, float, zm_expf)
ZM_DEFINE_SEL_BWD(d, double, zm_exp)

#endif
