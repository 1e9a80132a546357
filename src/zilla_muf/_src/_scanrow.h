/*
 * Kernels of h_t = a_t h_{t-1} + b_t along one contiguous row (float and
 * double): the sequential scan, and the scans and reductions of the rows
 * layout of the chunked and associative scans.
 *
 * A row is walked forward (rev == 0; element t at p[t]) or in reverse
 * (rev != 0; element t at p[-t]), from a pointer at its first element in
 * scan order.
 *
 * zm_seqrow_*(a, b, h, m, x, rev): the sequential scan, scalar; the maps
 *   of steps t..t+1, t..t+2 and t..t+3 are formed off the chain, so that
 *   the chain of dependent multiply-adds advances four steps per link.
 * zm_scanrow_*(a, b, h, m, x, rev): scan m steps from state x into h and
 *   return the last state. W lanes (8 floats or 4 doubles) hold W
 *   consecutive steps; lane t advances by the window map of the last W
 *   steps, h_t = A_t h_{t-W} + B_t, so that one multiply-add per lane
 *   advances W steps and the lanes never exchange states. The window maps
 *   are built in log2(W) doublings, each from the current block's maps and
 *   the previous block's (kept in registers), shifted across the block
 *   boundary.
 * zm_reducerow_*(a, b, m, x, rev, prod): the state after m steps from x,
 *   stored nowhere, and the product of the decays: a tree over the lanes
 *   (see below), about half the work of a scan.
 *
 * The vector kernels use gcc/clang vector extensions; other compilers, and
 * builds with ZM_SCALAR, get the scalar loops. Their rounding depends on
 * the values alone, never on the addresses of the arrays.
 */
#ifndef ZM_SCANROW_H
#define ZM_SCANROW_H

#include "_vlanes.h"

#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 5) \
    && !defined(ZM_SCALAR)
#define ZM_ROW_VECTOR 1
#else
#define ZM_ROW_VECTOR 0
#endif

/* ------------------------------------------------------------------------
 * Sequential: scalar, four steps per dependent multiply-add.
 * ------------------------------------------------------------------------ */
#define ZM_DEFINE_SEQROW(name, T)                                           \
ZM_CLONES                                                                   \
static T name(const T *a, const T *b, T *h, ptrdiff_t m, T x, int rev)      \
{                                                                           \
    ptrdiff_t s = rev ? -1 : 1, i = 0;                                      \
    for (; i + 4 <= m; i += 4) {                                            \
        T a0 = a[i * s], b0 = b[i * s];                                     \
        T a1 = a[(i + 1) * s], b1 = b[(i + 1) * s];                         \
        T a2 = a[(i + 2) * s], b2 = b[(i + 2) * s];                         \
        T a3 = a[(i + 3) * s], b3 = b[(i + 3) * s];                         \
        /* the maps of steps i..i+1, i..i+2, i..i+3, off the chain */       \
        T p1 = a1 * a0, q1 = a1 * b0 + b1;                                  \
        T p2 = a2 * p1, q2 = a2 * q1 + b2;                                  \
        T p3 = a3 * p2, q3 = a3 * q2 + b3;                                  \
        h[i * s] = a0 * x + b0;                                             \
        h[(i + 1) * s] = p1 * x + q1;                                       \
        h[(i + 2) * s] = p2 * x + q2;                                       \
        x = p3 * x + q3;                                                    \
        h[(i + 3) * s] = x;                                                 \
    }                                                                       \
    for (; i < m; i++) {                                                    \
        x = a[i * s] * x + b[i * s];                                        \
        h[i * s] = x;                                                       \
    }                                                                       \
    return x;                                                               \
}

ZM_DEFINE_SEQROW(zm_seqrow_f, float)
ZM_DEFINE_SEQROW(zm_seqrow_d, double)

/* ------------------------------------------------------------------------
 * Steps i .. m-1 one at a time from state x and decay product p, storing
 * the states in h unless it is NULL, the product in *prod unless it is
 * NULL: the tails of the vector kernels, and the scalar fallback.
 * ------------------------------------------------------------------------ */
#define ZM_DEFINE_TAIL(sfx, T)                                              \
ZM_INLINE T zm_scantail_##sfx(const T *a, const T *b, T *h, ptrdiff_t i,    \
                              ptrdiff_t m, ptrdiff_t s, T x, T p, T *prod)  \
{                                                                           \
    for (; i < m; i++) {                                                    \
        T av = a[i * s];                                                    \
        x = av * x + b[i * s];                                              \
        p = p * av;                                                         \
        if (h != NULL)                                                      \
            h[i * s] = x;                                                   \
    }                                                                       \
    if (prod != NULL)                                                       \
        *prod = p;                                                          \
    return x;                                                               \
}

ZM_DEFINE_TAIL(f, float)
ZM_DEFINE_TAIL(d, double)

#if ZM_ROW_VECTOR

typedef int zm_v8i __attribute__((vector_size(32)));
typedef long long zm_v4l __attribute__((vector_size(32)));

#if defined(__clang__)
#define ZM_SHUF8(x, y, i0, i1, i2, i3, i4, i5, i6, i7)                      \
    __builtin_shufflevector(x, y, i0, i1, i2, i3, i4, i5, i6, i7)
#define ZM_SHUF4(x, y, i0, i1, i2, i3)                                      \
    __builtin_shufflevector(x, y, i0, i1, i2, i3)
#else
#define ZM_SHUF8(x, y, i0, i1, i2, i3, i4, i5, i6, i7)                      \
    __builtin_shuffle(x, y, (zm_v8i) {i0, i1, i2, i3, i4, i5, i6, i7})
#define ZM_SHUF4(x, y, i0, i1, i2, i3)                                      \
    __builtin_shuffle(x, y, (zm_v4l) {i0, i1, i2, i3})
#endif

/* Address of the block of W steps starting at step i of a row walked in
 * direction rev (the block's lowest address). */
#define ZM_BLK(p, i, W, rev) ((rev) ? (p) - (i) - ((W) - 1) : (p) + (i))

/* ------------------------------------------------------------------------
 * Scan by window maps.
 *
 * Lane L of a block holds step t; the window map of k steps takes the
 * state before step t-k+1 to the state after step t. E is the address of
 * step t-1 relative to step t (-1 forward, +1 in reverse), so that both
 * directions load blocks in memory order.
 * ------------------------------------------------------------------------ */

/* zm_win2_*: the 2-step maps of the block at qa/qb, from its lanes and the
 * step before each (an unaligned load); zm_win4_*: the 4-step maps, all
 * from loads (for the block before a loop's first, whose predecessor is
 * not in registers). */
#define ZM_DEFINE_WIN(sfx, T, V)                                            \
ZM_INLINE void zm_win2_##sfx(const T *qa, const T *qb, ptrdiff_t E,         \
                             V *A, V *B)                                    \
{                                                                           \
    V a0 = zm_vld_##sfx(qa);                                                \
    *A = a0 * zm_vld_##sfx(qa + E);                                         \
    *B = a0 * zm_vld_##sfx(qb + E) + zm_vld_##sfx(qb);                      \
}                                                                           \
ZM_INLINE void zm_win4_##sfx(const T *qa, const T *qb, ptrdiff_t E,         \
                             V *A, V *B)                                    \
{                                                                           \
    V A2, B2, A2s, B2s;                                                     \
    zm_win2_##sfx(qa, qb, E, &A2, &B2);                                     \
    zm_win2_##sfx(qa + 2 * E, qb + 2 * E, E, &A2s, &B2s);                   \
    *A = A2 * A2s;                                                          \
    *B = A2 * B2s + B2;                                                     \
}

ZM_DEFINE_WIN(f, float, zm_vf)
ZM_DEFINE_WIN(d, double, zm_vd)

/* The maps k steps back of the lanes of cur, a block of W, prev being the
 * block walked just before it (below it forward, above it in reverse):
 * lanes W-k .. 2W-k-1 of prev then cur, or k .. k+W-1 of cur then prev. */
#define ZM_BACK8(REV, prev, cur, k) ((REV)                                  \
    ? ZM_SHUF8(cur, prev, k, k + 1, k + 2, k + 3, k + 4, k + 5, k + 6, k + 7) \
    : ZM_SHUF8(prev, cur, 8 - k, 9 - k, 10 - k, 11 - k, 12 - k, 13 - k,    \
               14 - k, 15 - k))
#define ZM_BACK4(REV, prev, cur, k) ((REV)                                  \
    ? ZM_SHUF4(cur, prev, k, k + 1, k + 2, k + 3)                           \
    : ZM_SHUF4(prev, cur, 4 - k, 5 - k, 6 - k, 7 - k))

/* The first 2W steps one at a time (the window maps of the first blocks
 * would reach before the row); returns the states of steps W .. 2W-1 as
 * the lanes of a block. */
#define ZM_DEFINE_HEAD(sfx, T, V, W)                                        \
ZM_INLINE V zm_scanhead_##sfx(const T *a, const T *b, T *h, ptrdiff_t s,    \
                              T x, int rev)                                 \
{                                                                           \
    T st[2 * W], t[W];                                                      \
    V r;                                                                    \
    int k;                                                                  \
    for (k = 0; k < 2 * W; k++) {                                           \
        x = a[k * s] * x + b[k * s];                                        \
        h[k * s] = x;                                                       \
        st[k] = x;                                                          \
    }                                                                       \
    /* the states of steps W .. 2W-1 as lanes, in memory order */          \
    for (k = 0; k < W; k++)                                                 \
        t[k] = st[rev ? 2 * W - 1 - k : W + k];                             \
    memcpy(&r, t, sizeof r);                                                \
    return r;                                                               \
}

ZM_DEFINE_HEAD(f, float, zm_vf, 8)
ZM_DEFINE_HEAD(d, double, zm_vd, 4)

/* float: 8-step windows, the 2-step maps of a block joined with those two
 * steps back, then the 4-step maps with those four steps back. The loops
 * are written once per direction (REV a constant) so that every offset
 * and shuffle is a constant. */
#define ZM_SCAN_LOOP_f(REV)                                                 \
    {                                                                       \
        const ptrdiff_t E = (REV) ? 1 : -1;                                 \
        zm_vf A2p, B2p, A4p, B4p;                                           \
        zm_win2_f(ZM_BLK(a, i - 8, 8, REV), ZM_BLK(b, i - 8, 8, REV), E,    \
                  &A2p, &B2p);                                              \
        zm_win4_f(ZM_BLK(a, i - 8, 8, REV), ZM_BLK(b, i - 8, 8, REV), E,    \
                  &A4p, &B4p);                                              \
        for (; i + 8 <= m; i += 8) {                                        \
            zm_vf A2, B2, A4, B4, A8, B8;                                   \
            zm_win2_f(ZM_BLK(a, i, 8, REV), ZM_BLK(b, i, 8, REV), E,        \
                      &A2, &B2);                                            \
            A4 = A2 * ZM_BACK8(REV, A2p, A2, 2);                            \
            B4 = A2 * ZM_BACK8(REV, B2p, B2, 2) + B2;                       \
            A8 = A4 * ZM_BACK8(REV, A4p, A4, 4);                            \
            B8 = A4 * ZM_BACK8(REV, B4p, B4, 4) + B4;                       \
            hv = A8 * hv + B8;                                              \
            zm_vst_f(ZM_BLK(h, i, 8, REV), hv);                             \
            A2p = A2;                                                       \
            B2p = B2;                                                       \
            A4p = A4;                                                       \
            B4p = B4;                                                       \
        }                                                                   \
    }

/* double: 4-step windows (the 2-step maps joined with those two steps
 * back). */
#define ZM_SCAN_LOOP_d(REV)                                                 \
    {                                                                       \
        const ptrdiff_t E = (REV) ? 1 : -1;                                 \
        zm_vd A2p, B2p;                                                     \
        zm_win2_d(ZM_BLK(a, i - 4, 4, REV), ZM_BLK(b, i - 4, 4, REV), E,    \
                  &A2p, &B2p);                                              \
        for (; i + 4 <= m; i += 4) {                                        \
            zm_vd A2, B2;                                                   \
            zm_win2_d(ZM_BLK(a, i, 4, REV), ZM_BLK(b, i, 4, REV), E,        \
                      &A2, &B2);                                            \
            hv = A2 * ZM_BACK4(REV, A2p, A2, 2) * hv                        \
                + (A2 * ZM_BACK4(REV, B2p, B2, 2) + B2);                    \
            zm_vst_d(ZM_BLK(h, i, 4, REV), hv);                             \
            A2p = A2;                                                       \
            B2p = B2;                                                       \
        }                                                                   \
    }

/* A row of fewer than 4W steps is scanned one step at a time. The blocks
 * are placed by step, not by address. */
#define ZM_DEFINE_SCAN(sfx, T, V, W)                                        \
ZM_CLONES                                                                   \
static T zm_scanrow_##sfx(const T *a, const T *b, T *h, ptrdiff_t m, T x,   \
                          int rev)                                          \
{                                                                           \
    ptrdiff_t i = 2 * W, s = rev ? -1 : 1;                                  \
    V hv;                                                                   \
    if (m < 4 * W)                                                          \
        return zm_scantail_##sfx(a, b, h, 0, m, s, x, 1, NULL);             \
    hv = zm_scanhead_##sfx(a, b, h, s, x, rev);                             \
    if (rev) {                                                              \
        ZM_SCAN_LOOP_##sfx(1)                                               \
    } else {                                                                \
        ZM_SCAN_LOOP_##sfx(0)                                               \
    }                                                                       \
    return zm_scantail_##sfx(a, b, h, i, m, s, hv[rev ? 0 : W - 1], 1,      \
                             NULL);                                         \
}

ZM_DEFINE_SCAN(f, float, zm_vf, 8)
ZM_DEFINE_SCAN(d, double, zm_vd, 4)

/* ------------------------------------------------------------------------
 * Reduction: the map x -> A x + B of m steps, by a tree over the lanes.
 * zm_reducerow_*(a, b, m, x, rev, prod) returns A x + B and, when prod is
 * not NULL, stores A (flushed to zero below the smallest normal number).
 *
 * A network takes NW vectors of consecutive maps (in memory order) to one
 * vector of the maps of their NW blocks of W steps: neighbouring lanes
 * are joined pairwise (even with odd lanes of two vectors, which keeps the
 * blocks' maps in order), then the halves of two vectors; in reverse the
 * later lane in memory is the earlier step. Two rounds of networks reduce
 * NW * NW * W steps to one vector, whose lanes are folded into the state
 * one at a time.
 * ------------------------------------------------------------------------ */
#define ZM_EVEN_f(x, y) ZM_SHUF8(x, y, 0, 2, 8, 10, 4, 6, 12, 14)
#define ZM_ODD_f(x, y) ZM_SHUF8(x, y, 1, 3, 9, 11, 5, 7, 13, 15)
#define ZM_LO_f(x, y) ZM_SHUF8(x, y, 0, 1, 2, 3, 8, 9, 10, 11)
#define ZM_HI_f(x, y) ZM_SHUF8(x, y, 4, 5, 6, 7, 12, 13, 14, 15)
#define ZM_EVEN_d(x, y) ZM_SHUF4(x, y, 0, 4, 2, 6)
#define ZM_ODD_d(x, y) ZM_SHUF4(x, y, 1, 5, 3, 7)
#define ZM_LO_d(x, y) ZM_SHUF4(x, y, 0, 1, 4, 5)
#define ZM_HI_d(x, y) ZM_SHUF4(x, y, 2, 3, 6, 7)

#define ZM_DEFINE_NETPARTS(sfx, T, V, W)                                    \
/* the maps (la, lb), whose steps lie lower in memory, joined with (ha,     \
 * hb): lower first forward, upper first in reverse */                      \
ZM_INLINE void zm_join_##sfx(V la, V lb, V ha, V hb, int rev, V *A, V *B)   \
{                                                                           \
    if (rev) {                                                              \
        *A = la * ha;                                                       \
        *B = la * hb + lb;                                                  \
    } else {                                                                \
        *A = ha * la;                                                       \
        *B = ha * lb + hb;                                                  \
    }                                                                       \
}                                                                           \
/* lanes 2i and 2i+1 of x, then of y, joined (per 128-bit half) */         \
ZM_INLINE void zm_pairs_##sfx(V xa, V xb, V ya, V yb, int rev, V *A, V *B)  \
{                                                                           \
    zm_join_##sfx(ZM_EVEN_##sfx(xa, ya), ZM_EVEN_##sfx(xb, yb),             \
                  ZM_ODD_##sfx(xa, ya), ZM_ODD_##sfx(xb, yb), rev, A, B);   \
}                                                                           \
/* the lower halves of x and y joined with their upper halves */           \
ZM_INLINE void zm_halves_##sfx(V xa, V xb, V ya, V yb, int rev, V *A,      \
                               V *B)                                        \
{                                                                           \
    zm_join_##sfx(ZM_LO_##sfx(xa, ya), ZM_LO_##sfx(xb, yb),                 \
                  ZM_HI_##sfx(xa, ya), ZM_HI_##sfx(xb, yb), rev, A, B);     \
}                                                                           \
/* the state x and decay product p carried through the W maps of (A, B) */ \
ZM_INLINE void zm_fold_##sfx(V A, V B, int rev, T *x, T *p)                 \
{                                                                           \
    T ta[W], tb[W];                                                         \
    int L;                                                                  \
    memcpy(ta, &A, sizeof ta);                                              \
    memcpy(tb, &B, sizeof tb);                                              \
    for (L = 0; L < W; L++) {                                               \
        int l = rev ? W - 1 - L : L;                                        \
        *x = ta[l] * *x + tb[l];                                            \
        *p = ta[l] * *p;                                                    \
    }                                                                       \
    *p = zm_flush_##sfx(*p);                                                \
}

ZM_DEFINE_NETPARTS(f, float, zm_vf, 8)
ZM_DEFINE_NETPARTS(d, double, zm_vd, 4)

/* A network over NW vectors: LA(j), LB(j) give vector j (in memory order)
 * of the decays and inputs of the maps; *A, *B receive the maps of the NW
 * blocks. Each vector is read once, as the network consumes it. */
#define ZM_NET_f(LA, LB, REV, A, B)                                         \
    do {                                                                    \
        zm_vf pa0, pb0, pa1, pb1, ra0, rb0, ra1, rb1;                       \
        zm_pairs_f(LA(0), LB(0), LA(1), LB(1), REV, &pa0, &pb0);            \
        zm_pairs_f(LA(2), LB(2), LA(3), LB(3), REV, &pa1, &pb1);            \
        zm_pairs_f(pa0, pb0, pa1, pb1, REV, &ra0, &rb0);                    \
        zm_pairs_f(LA(4), LB(4), LA(5), LB(5), REV, &pa0, &pb0);            \
        zm_pairs_f(LA(6), LB(6), LA(7), LB(7), REV, &pa1, &pb1);            \
        zm_pairs_f(pa0, pb0, pa1, pb1, REV, &ra1, &rb1);                    \
        zm_halves_f(ra0, rb0, ra1, rb1, REV, A, B);                         \
    } while (0)

#define ZM_NET_d(LA, LB, REV, A, B)                                         \
    do {                                                                    \
        zm_vd pa0, pb0, pa1, pb1;                                           \
        zm_pairs_d(LA(0), LB(0), LA(1), LB(1), REV, &pa0, &pb0);            \
        zm_pairs_d(LA(2), LB(2), LA(3), LB(3), REV, &pa1, &pb1);            \
        zm_halves_d(pa0, pb0, pa1, pb1, REV, A, B);                         \
    } while (0)

/* The loop of zm_reducerow_* for one direction (REV a constant): groups of
 * NW * NW * W steps through two rounds of networks (the first round's
 * results kept in ga, gb), then groups of NW * W steps through one. */
#define ZM_REDUCE_LOOP(sfx, T, V, W, NW, REV)                               \
    {                                                                       \
        V ga[NW], gb[NW], A, B;                                             \
        const T *qa, *qb;                                                   \
        int k;                                                              \
        for (; i + NW * NW * W <= m; i += NW * NW * W) {                    \
            for (k = 0; k < NW; k++) {                                      \
                qa = ZM_BLK(a, i, NW * NW * W, REV) + k * NW * W;           \
                qb = ZM_BLK(b, i, NW * NW * W, REV) + k * NW * W;           \
                ZM_NET_##sfx(ZM_LDA_##sfx, ZM_LDB_##sfx, REV, &ga[k], &gb[k]); \
            }                                                               \
            ZM_NET_##sfx(ZM_GA, ZM_GB, REV, &A, &B);                        \
            zm_fold_##sfx(A, B, REV, &x, &p);                               \
        }                                                                   \
        for (; i + NW * W <= m; i += NW * W) {                              \
            qa = ZM_BLK(a, i, NW * W, REV);                                 \
            qb = ZM_BLK(b, i, NW * W, REV);                                 \
            ZM_NET_##sfx(ZM_LDA_##sfx, ZM_LDB_##sfx, REV, &A, &B);          \
            zm_fold_##sfx(A, B, REV, &x, &p);                               \
        }                                                                   \
    }
#define ZM_LDA_f(j) zm_vld_f(qa + (j) * 8)
#define ZM_LDB_f(j) zm_vld_f(qb + (j) * 8)
#define ZM_LDA_d(j) zm_vld_d(qa + (j) * 4)
#define ZM_LDB_d(j) zm_vld_d(qb + (j) * 4)
#define ZM_GA(j) ga[j]
#define ZM_GB(j) gb[j]

#define ZM_DEFINE_REDUCE(sfx, T, V, W, NW)                                  \
ZM_CLONES                                                                   \
static T zm_reducerow_##sfx(const T *a, const T *b, ptrdiff_t m, T x,       \
                            int rev, T *prod)                               \
{                                                                           \
    ptrdiff_t i = 0;                                                        \
    T p = 1;                                                                \
    if (rev) {                                                              \
        ZM_REDUCE_LOOP(sfx, T, V, W, NW, 1)                                 \
    } else {                                                                \
        ZM_REDUCE_LOOP(sfx, T, V, W, NW, 0)                                 \
    }                                                                       \
    x = zm_scantail_##sfx(a, b, NULL, i, m, rev ? -1 : 1, x, p, &p);        \
    if (prod != NULL)                                                       \
        *prod = zm_flush_##sfx(p);                                          \
    return x;                                                               \
}

ZM_DEFINE_REDUCE(f, float, zm_vf, 8, 8)
ZM_DEFINE_REDUCE(d, double, zm_vd, 4, 4)

#else /* scalar fallback */

#define ZM_DEFINE_FALLBACK(sfx, T)                                          \
static T zm_scanrow_##sfx(const T *a, const T *b, T *h, ptrdiff_t m, T x,   \
                          int rev)                                          \
{                                                                           \
    return zm_scantail_##sfx(a, b, h, 0, m, rev ? -1 : 1, x, 1, NULL);      \
}                                                                           \
static T zm_reducerow_##sfx(const T *a, const T *b, ptrdiff_t m, T x,       \
                            int rev, T *prod)                               \
{                                                                           \
    T p;                                                                    \
    x = zm_scantail_##sfx(a, b, NULL, 0, m, rev ? -1 : 1, x, 1, &p);        \
    if (prod != NULL)                                                       \
        *prod = zm_flush_##sfx(p);                                          \
    return x;                                                               \
}

ZM_DEFINE_FALLBACK(f, float)
ZM_DEFINE_FALLBACK(d, double)

#endif /* ZM_ROW_VECTOR */

#endif /* ZM_SCANROW_H */
