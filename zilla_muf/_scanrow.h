/*
 * Kernels of h_t = a_t h_{t-1} + b_t along one contiguous row (float and
 * double): the rows layout of the chunked and associative scans, and the
 * sequential scan.
 *
 * A row is walked forward (rev == 0; element t at p[t]) or in reverse
 * (rev != 0; element t at p[-t]), from a pointer at its first element in
 * scan order.
 *
 * Vector kernels (gcc/clang vector extensions; a scalar loop elsewhere). A
 * block of W consecutive steps is loaded into a vector and turned into its
 * inclusive prefix of affine maps x -> A x + B in log2(W) shift-and-combine
 * steps, (A, B) o (A', B') = (A A', A B' + B) with the earlier map shifted
 * in. Two blocks are joined per iteration, so that the only dependence
 * between iterations is h = A * h_prev + B and one broadcast per 2W steps.
 *
 * The sequential kernel is scalar and keeps the order of the recurrence,
 * two steps at a time: h_{t+1} = (a_{t+1} a_t) h_{t-1} + (a_{t+1} b_t +
 * b_{t+1}) and h_t = a_t h_{t-1} + b_t, which halves the chain of dependent
 * multiply-adds; each state still depends on every earlier input only
 * through h_{t-1}.
 */
#ifndef ZM_SCANROW_H
#define ZM_SCANROW_H

#include "_vmath.h"

#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 5) \
    && !defined(ZM_SCALAR)
#define ZM_ROW_VECTOR 1
#else
#define ZM_ROW_VECTOR 0
#endif

/* ------------------------------------------------------------------------
 * Sequential: scalar, two steps per dependent multiply-add.
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
 * Vector kernels.
 *
 * zm_scanrow_*(a, b, h, m, x, rev, prod): scan m steps from state x and
 *   return the last state; h == NULL stores nothing (a reduction); prod !=
 *   NULL receives the product of the m decays.
 * zm_correctrow_*(a, h, m, c, rev): h_t += c_t with c_t = a_t c_{t-1},
 *   c_{-1} = c (adds the state carried into a block that was scanned from
 *   zero).
 * ------------------------------------------------------------------------ */
/* ------------------------------------------------------------------------
 * Steps i .. m-1 one at a time, from state x and decay product p (scan), or
 * from carry c (correction): the tails of the vector kernels, and the whole
 * of the scalar fallback.
 * ------------------------------------------------------------------------ */
#define ZM_DEFINE_TAILS(sfx, T)                                             \
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
}                                                                           \
ZM_INLINE void zm_correcttail_##sfx(const T *a, T *h, ptrdiff_t i,          \
                                    ptrdiff_t m, ptrdiff_t s, T c)          \
{                                                                           \
    for (; i < m; i++) {                                                    \
        c = a[i * s] * c;                                                   \
        h[i * s] = h[i * s] + c;                                            \
    }                                                                       \
}

ZM_DEFINE_TAILS(f, float)
ZM_DEFINE_TAILS(d, double)

#if ZM_ROW_VECTOR

typedef float zm_v8f __attribute__((vector_size(32)));
typedef int zm_v8i __attribute__((vector_size(32)));
typedef double zm_v4d __attribute__((vector_size(32)));
typedef long long zm_v4l __attribute__((vector_size(32)));

#define ZM_W_f 8
#define ZM_W_d 4

ZM_INLINE zm_v8f zm_ld_f(const float *p, int rev)
{
    zm_v8f v;
    memcpy(&v, p, sizeof v);
    if (rev)
        v = __builtin_shuffle(v, (zm_v8i) {7, 6, 5, 4, 3, 2, 1, 0});
    return v;
}

ZM_INLINE void zm_st_f(float *p, zm_v8f v, int rev)
{
    if (rev)
        v = __builtin_shuffle(v, (zm_v8i) {7, 6, 5, 4, 3, 2, 1, 0});
    memcpy(p, &v, sizeof v);
}

ZM_INLINE zm_v8f zm_last_f(zm_v8f v)
{
    return __builtin_shuffle(v, (zm_v8i) {7, 7, 7, 7, 7, 7, 7, 7});
}

ZM_INLINE zm_v8f zm_splat_f(float x)
{
    return (zm_v8f) {x, x, x, x, x, x, x, x};
}

/* Inclusive prefix of the W maps (A[k], B[k]) in place: two steps within
 * each 128-bit half (cheap in-lane shuffles), then the upper half composed
 * with the lower half's last map (the only lane-crossing step). */
#define ZM_SH1_f ((zm_v8i) {8, 0, 1, 2, 12, 4, 5, 6})
#define ZM_SH2_f ((zm_v8i) {8, 9, 0, 1, 12, 13, 4, 5})
#define ZM_SH4_f ((zm_v8i) {8, 9, 10, 11, 3, 3, 3, 3})
ZM_INLINE void zm_prefix_f(zm_v8f *A, zm_v8f *B)
{
    const zm_v8f one = zm_splat_f(1.0f), zero = zm_splat_f(0.0f);
    zm_v8f a = *A, b = *B;
    b = a * __builtin_shuffle(b, zero, ZM_SH1_f) + b;
    a = a * __builtin_shuffle(a, one, ZM_SH1_f);
    b = a * __builtin_shuffle(b, zero, ZM_SH2_f) + b;
    a = a * __builtin_shuffle(a, one, ZM_SH2_f);
    *B = a * __builtin_shuffle(b, zero, ZM_SH4_f) + b;
    *A = a * __builtin_shuffle(a, one, ZM_SH4_f);
}

/* Inclusive prefix product of the W decays. */
ZM_INLINE zm_v8f zm_prodfix_f(zm_v8f a)
{
    const zm_v8f one = zm_splat_f(1.0f);
    a = a * __builtin_shuffle(a, one, ZM_SH1_f);
    a = a * __builtin_shuffle(a, one, ZM_SH2_f);
    return a * __builtin_shuffle(a, one, ZM_SH4_f);
}

ZM_INLINE zm_v4d zm_ld_d(const double *p, int rev)
{
    zm_v4d v;
    memcpy(&v, p, sizeof v);
    if (rev)
        v = __builtin_shuffle(v, (zm_v4l) {3, 2, 1, 0});
    return v;
}

ZM_INLINE void zm_st_d(double *p, zm_v4d v, int rev)
{
    if (rev)
        v = __builtin_shuffle(v, (zm_v4l) {3, 2, 1, 0});
    memcpy(p, &v, sizeof v);
}

ZM_INLINE zm_v4d zm_last_d(zm_v4d v)
{
    return __builtin_shuffle(v, (zm_v4l) {3, 3, 3, 3});
}

ZM_INLINE zm_v4d zm_splat_d(double x)
{
    return (zm_v4d) {x, x, x, x};
}

#define ZM_SH1_d ((zm_v4l) {4, 0, 6, 2})
#define ZM_SH2_d ((zm_v4l) {4, 5, 1, 1})
ZM_INLINE void zm_prefix_d(zm_v4d *A, zm_v4d *B)
{
    const zm_v4d one = zm_splat_d(1.0), zero = zm_splat_d(0.0);
    zm_v4d a = *A, b = *B;
    b = a * __builtin_shuffle(b, zero, ZM_SH1_d) + b;
    a = a * __builtin_shuffle(a, one, ZM_SH1_d);
    *B = a * __builtin_shuffle(b, zero, ZM_SH2_d) + b;
    *A = a * __builtin_shuffle(a, one, ZM_SH2_d);
}

ZM_INLINE zm_v4d zm_prodfix_d(zm_v4d a)
{
    const zm_v4d one = zm_splat_d(1.0);
    a = a * __builtin_shuffle(a, one, ZM_SH1_d);
    return a * __builtin_shuffle(a, one, ZM_SH2_d);
}

/* Address of the block of W steps starting at step i of a row walked in
 * direction rev (the block's lowest address). */
#define ZM_BLK(p, i, W, rev) ((rev) ? (p) - (i) - ((W) - 1) : (p) + (i))

/* The loops are written once for each direction (REV a constant), so that
 * the lane reversals of a reverse scan compile away from forward ones. */
#define ZM_SCAN_LOOP(sfx, T, V, REV)                                        \
    for (; i + 2 * W <= m; i += 2 * W) {                                    \
        V a1 = zm_ld_##sfx(ZM_BLK(a, i, W, REV), REV);                      \
        V b1 = zm_ld_##sfx(ZM_BLK(b, i, W, REV), REV);                      \
        V a2 = zm_ld_##sfx(ZM_BLK(a, i + W, W, REV), REV);                  \
        V b2 = zm_ld_##sfx(ZM_BLK(b, i + W, W, REV), REV);                  \
        zm_prefix_##sfx(&a1, &b1);                                          \
        zm_prefix_##sfx(&a2, &b2);                                          \
        V la = zm_last_##sfx(a1);                                           \
        b2 = a2 * zm_last_##sfx(b1) + b2;                                   \
        a2 = a2 * la;                                                       \
        if (h != NULL) {                                                    \
            zm_st_##sfx(ZM_BLK(h, i, W, REV), a1 * hv + b1, REV);           \
        }                                                                   \
        hv = a2 * hv + b2;                                                  \
        if (h != NULL)                                                      \
            zm_st_##sfx(ZM_BLK(h, i + W, W, REV), hv, REV);                 \
        hv = zm_last_##sfx(hv);                                             \
        if (prod != NULL)                                                   \
            pv = pv * zm_last_##sfx(a2);                                    \
    }

#define ZM_CORRECT_LOOP(sfx, T, V, REV)                                     \
    for (; i + 2 * W <= m; i += 2 * W) {                                    \
        V a1 = zm_prodfix_##sfx(zm_ld_##sfx(ZM_BLK(a, i, W, REV), REV));    \
        V a2 = zm_prodfix_##sfx(zm_ld_##sfx(ZM_BLK(a, i + W, W, REV), REV)); \
        V h1 = zm_ld_##sfx(ZM_BLK(h, i, W, REV), REV);                      \
        V h2 = zm_ld_##sfx(ZM_BLK(h, i + W, W, REV), REV);                  \
        a2 = a2 * zm_last_##sfx(a1);                                        \
        zm_st_##sfx(ZM_BLK(h, i, W, REV), h1 + a1 * cv, REV);               \
        cv = a2 * cv;                                                       \
        zm_st_##sfx(ZM_BLK(h, i + W, W, REV), h2 + cv, REV);                \
        cv = zm_last_##sfx(cv);                                             \
    }

#define ZM_DEFINE_ROWS(sfx, T, V)                                           \
ZM_CLONES                                                                   \
static T zm_scanrow_##sfx(const T *a, const T *b, T *h, ptrdiff_t m, T x,   \
                          int rev, T *prod)                                 \
{                                                                           \
    enum { W = ZM_W_##sfx };                                                \
    ptrdiff_t i = 0, s = rev ? -1 : 1;                                      \
    V hv = zm_splat_##sfx(x), pv = zm_splat_##sfx(1);                       \
    if (rev) {                                                              \
        ZM_SCAN_LOOP(sfx, T, V, 1)                                          \
    } else {                                                                \
        ZM_SCAN_LOOP(sfx, T, V, 0)                                          \
    }                                                                       \
    return zm_scantail_##sfx(a, b, h, i, m, s, hv[0], pv[0], prod);      \
}                                                                           \
                                                                            \
ZM_CLONES                                                                   \
static void zm_correctrow_##sfx(const T *a, T *h, ptrdiff_t m, T c,         \
                                int rev)                                    \
{                                                                           \
    enum { W = ZM_W_##sfx };                                                \
    ptrdiff_t i = 0, s = rev ? -1 : 1;                                      \
    V cv = zm_splat_##sfx(c);                                               \
    if (rev) {                                                              \
        ZM_CORRECT_LOOP(sfx, T, V, 1)                                       \
    } else {                                                                \
        ZM_CORRECT_LOOP(sfx, T, V, 0)                                       \
    }                                                                       \
    zm_correcttail_##sfx(a, h, i, m, s, cv[0]);                             \
}

ZM_DEFINE_ROWS(f, float, zm_v8f)
ZM_DEFINE_ROWS(d, double, zm_v4d)

#else /* scalar fallback */

#define ZM_DEFINE_ROWS(sfx, T)                                              \
static T zm_scanrow_##sfx(const T *a, const T *b, T *h, ptrdiff_t m, T x,   \
                          int rev, T *prod)                                 \
{                                                                           \
    return zm_scantail_##sfx(a, b, h, 0, m, rev ? -1 : 1, x, 1, prod);      \
}                                                                           \
static void zm_correctrow_##sfx(const T *a, T *h, ptrdiff_t m, T c,         \
                                int rev)                                    \
{                                                                           \
    zm_correcttail_##sfx(a, h, 0, m, rev ? -1 : 1, c);                      \
}

ZM_DEFINE_ROWS(f, float)
ZM_DEFINE_ROWS(d, double)

#endif /* ZM_ROW_VECTOR */

#endif /* ZM_SCANROW_H */
