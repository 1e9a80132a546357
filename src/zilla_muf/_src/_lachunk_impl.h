/*
 * Body of _lachunk.h, included once per element type and build with T,
 * ZM_LA_VW, ZM_LA_MR, ZM_LA_NAME(x), ZM_LA_ATTR and ZM_LA_ARGS defined. No
 * include guard: that is the point.
 */

#define N_(x) ZM_LA_NAME(x)
#if defined(__GNUC__)
#define ZM_LA_PREFETCH(p) __builtin_prefetch((p), 0, 2)
#else
#define ZM_LA_PREFETCH(p) ((void) (p))
#endif
#define NVT 2                       /* vectors per tile row */
#define TW (NVT * ZM_LA_VW)         /* columns of a tile */

#if ZM_LA_VW == 1
typedef T N_(zm_lav);
#else
typedef T N_(zm_lav) __attribute__((vector_size(ZM_LA_VW * sizeof(T))));
#endif
#define VT N_(zm_lav)

#if defined(__GNUC__)
#define ZM_LA_FORCE static inline __attribute__((always_inline)) ZM_LA_ATTR
#else
#define ZM_LA_FORCE static inline
#endif

/* The decays' flush threshold of _vmath.h for T; v, or 0 when |v| is below
 * it; a decay exp(d), flushed (_vmath.h's decay element for T). */
#define ZM_LA_TINY (sizeof(T) == sizeof(float) ? (T) ZM_DECAY_TINY_F \
                                               : (T) ZM_DECAY_TINY_D)
ZM_LA_FORCE T N_(zm_la_flush)(T v)
{
    return (v < ZM_LA_TINY && v > -ZM_LA_TINY) ? 0 : v;
}

#define ZM_LA_DECAY(d) N_(zm_la_decay)(d)
ZM_LA_FORCE T N_(zm_la_decay)(T d)
{
    return sizeof(T) == sizeof(float) ? (T) zm_decay_expf((float) d)
                                      : (T) zm_decay_exp((double) d);
}

ZM_LA_FORCE VT N_(zm_la_ld)(const T *p)
{
    VT v;
    memcpy(&v, p, sizeof v);
    return v;
}

ZM_LA_FORCE void N_(zm_la_st)(T *p, VT v)
{
    memcpy(p, &v, sizeof v);
}

/* The operands of one product pass (see zm_la_gemm). */
typedef struct {
    T *C;                   /* the result, rows of stride ldc */
    ptrdiff_t ldc;
    const T *A1, *B1;       /* A1 (rows, k1) stride ra1, or with at1 */
    ptrdiff_t ra1, ldb1, k1;/* stored as (k1, rows) stride ra1; B1 (k1, */
    int at1;                /* cols) */
    const T *rs;            /* row factors applied after A1 B1, or NULL */
    const T *A2, *B2;       /* A2 (rows, rows) lower triangular (zero */
    ptrdiff_t ra2, ldb2;    /* right of the diagonal), or NULL */
    const T *Co;            /* added last times beta, or NULL (C may be */
    ptrdiff_t ldco;         /* Co: a tile reads only its own entries) */
    T beta;
} N_(zm_la_op);

/* Rows [0, mr) by columns [0, nc) of
 *   C = ((A1 B1) .* rs + A2[:, :k2] B2[:k2]) + beta Co.
 * mr is a constant after inlining; the B rows hold TW readable columns. */
ZM_LA_FORCE void N_(zm_la_tile)(const int mr, const int at,
                                const N_(zm_la_op) *op, ptrdiff_t i0,
                                ptrdiff_t j0, ptrdiff_t nc, ptrdiff_t k2)
{
    VT acc[ZM_LA_MR][NVT];
    T part[TW];
    ptrdiff_t l;
    int r, u;
    ZM_LA_UNROLL
    for (r = 0; r < mr; r++) {
        ZM_LA_UNROLL
        for (u = 0; u < NVT; u++)
            acc[r][u] = (VT){0};
    }
    if (op->A1 != NULL) {
        /* at: A1's rows are the columns of the stored matrix, read along
         * its contiguous rows (no transposed copy) */
        const T *A = op->A1 + (at ? i0 : i0 * op->ra1);
        const T *B = op->B1 + j0;
        const ptrdiff_t ra = op->ra1, ldb = op->ldb1, k1 = op->k1;
        for (l = 0; l < k1; l++) {
            VT b[NVT];
            ZM_LA_UNROLL
            for (u = 0; u < NVT; u++)
                b[u] = N_(zm_la_ld)(B + l * ldb + u * ZM_LA_VW);
            ZM_LA_UNROLL
            for (r = 0; r < mr; r++) {
                const T a = at ? A[l * ra + r] : A[r * ra + l];
                ZM_LA_UNROLL
                for (u = 0; u < NVT; u++)
                    acc[r][u] += a * b[u];
            }
        }
        if (op->rs != NULL) {
            ZM_LA_UNROLL
            for (r = 0; r < mr; r++) {
                const T s = op->rs[i0 + r];
                ZM_LA_UNROLL
                for (u = 0; u < NVT; u++)
                    acc[r][u] *= s;
            }
        }
    }
    if (op->A2 != NULL) {
        const T *A = op->A2 + i0 * op->ra2;
        const T *B = op->B2 + j0;
        const ptrdiff_t ra = op->ra2, ldb = op->ldb2;
        for (l = 0; l < k2; l++) {
            VT b[NVT];
            ZM_LA_UNROLL
            for (u = 0; u < NVT; u++)
                b[u] = N_(zm_la_ld)(B + l * ldb + u * ZM_LA_VW);
            ZM_LA_UNROLL
            for (r = 0; r < mr; r++) {
                const T a = A[r * ra + l];
                ZM_LA_UNROLL
                for (u = 0; u < NVT; u++)
                    acc[r][u] += a * b[u];
            }
        }
    }
    if (op->Co != NULL) {
        const T *Co = op->Co + i0 * op->ldco + j0;
        const T beta = op->beta;
        ZM_LA_UNROLL
        for (r = 0; r < mr; r++) {
            ZM_LA_UNROLL
            for (u = 0; u < NVT; u++)
                acc[r][u] += beta * N_(zm_la_ld)(Co + r * op->ldco
                                                 + u * ZM_LA_VW);
        }
    }
    {
        T *C = op->C + i0 * op->ldc + j0;
        if (nc == TW) {
            ZM_LA_UNROLL
            for (r = 0; r < mr; r++) {
                ZM_LA_UNROLL
                for (u = 0; u < NVT; u++)
                    N_(zm_la_st)(C + r * op->ldc + u * ZM_LA_VW, acc[r][u]);
            }
        } else {
            for (r = 0; r < mr; r++) {
                for (u = 0; u < NVT; u++)
                    N_(zm_la_st)(part + u * ZM_LA_VW, acc[r][u]);
                for (l = 0; l < nc; l++)
                    C[r * op->ldc + l] = part[l];
            }
        }
    }
}

/* The rows of the row tile that starts at i0 of M rows: MR, except that a
 * remainder of fewer than MR / 2 rows is shared with the full tile before
 * it (32 rows by 6: 6, 6, 6, 6, 4, 4). A tile of few rows has too few
 * independent accumulators to keep the multiply-add units busy. */
ZM_LA_FORCE int N_(zm_la_rows)(ptrdiff_t i0, ptrdiff_t M)
{
    const ptrdiff_t left = M - i0, rem = M % ZM_LA_MR;
    if (left >= 2 * ZM_LA_MR || rem == 0 || 2 * rem >= ZM_LA_MR
        || M < ZM_LA_MR)
        return (int) zm_la_min(ZM_LA_MR, left);
    if (left > ZM_LA_MR)                    /* the full tile before it */
        return (int) (left / 2);
    return (int) left;
}

/* C (M rows, columns [0, ncols)) = the op, tile by tile: column blocks of
 * TW outside (the B block stays in cache), row tiles of about MR inside.
 * With `tri`, tiles right of the diagonal are skipped (left unwritten);
 * A2 B2 is causal: a tile's rows i < i0 + mr use A2's columns < i0 + mr. */
static ZM_LA_ATTR void N_(zm_la_gemm)(const N_(zm_la_op) *op, ptrdiff_t M,
                                      ptrdiff_t ncols, int tri)
{
    ptrdiff_t i0, j0;
    const int at = op->A1 != NULL && op->at1;
    for (j0 = 0; j0 < ncols; j0 += TW) {
        const ptrdiff_t nc = zm_la_min(TW, ncols - j0);
        int mr;
        for (i0 = 0; i0 < M; i0 += mr) {
            const ptrdiff_t k2 = i0 + (mr = N_(zm_la_rows)(i0, M));
            if (tri && j0 >= i0 + mr)
                continue;
            switch (mr + (at ? 16 : 0)) {
#define ZM_LA_CASE(n)                                                       \
            case n: N_(zm_la_tile)(n, 0, op, i0, j0, nc, k2); break;       \
            case n + 16: N_(zm_la_tile)(n, 1, op, i0, j0, nc, k2); break;
            ZM_LA_CASE(1) ZM_LA_CASE(2) ZM_LA_CASE(3) ZM_LA_CASE(4)
#if ZM_LA_MR > 4
            ZM_LA_CASE(5) ZM_LA_CASE(6)
#endif
#if ZM_LA_MR > 6
            ZM_LA_CASE(7) ZM_LA_CASE(8) ZM_LA_CASE(9) ZM_LA_CASE(10)
            ZM_LA_CASE(11) ZM_LA_CASE(12)
#endif
#undef ZM_LA_CASE
            default: break;
            }
        }
    }
}

/* dst (n, m) stride ldd = the transpose of src (m, n) stride lds: 8 by 8
 * blocks in registers where the vectors hold 8 elements, the edges (and
 * narrower builds) one element at a time. */
#if ZM_LA_VW >= 8
typedef T N_(zm_la_v8) __attribute__((vector_size(8 * sizeof(T))));
typedef ZM_LA_IT N_(zm_la_i8) __attribute__((vector_size(8 * sizeof(T))));
#define V8 N_(zm_la_v8)
#define I8 N_(zm_la_i8)

/* a shuffle of the 16 lanes of x then y by constant indices: gcc's
   __builtin_shuffle takes them as a vector, clang's __builtin_shufflevector
   as arguments */
#if defined(__clang__)
#define ZM_LA_SHUF8(x, y, i0, i1, i2, i3, i4, i5, i6, i7)                   \
    __builtin_shufflevector(x, y, i0, i1, i2, i3, i4, i5, i6, i7)
#else
#define ZM_LA_SHUF8(x, y, i0, i1, i2, i3, i4, i5, i6, i7)                   \
    __builtin_shuffle(x, y, (I8) {i0, i1, i2, i3, i4, i5, i6, i7})
#endif

ZM_LA_FORCE void N_(zm_la_t8)(const T *src, ptrdiff_t lds, T *dst,
                              ptrdiff_t ldd)
{
    /* pairs of rows interleaved, then pairs of pairs, then the halves */
    V8 r[8], t[8], u[8];
    int i;
    ZM_LA_UNROLL
    for (i = 0; i < 8; i++)
        memcpy(&r[i], src + i * lds, sizeof r[i]);
    ZM_LA_UNROLL
    for (i = 0; i < 8; i += 2) {
        t[i] = ZM_LA_SHUF8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = ZM_LA_SHUF8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    ZM_LA_UNROLL
    for (i = 0; i < 8; i += 4) {
        u[i] = ZM_LA_SHUF8(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[i + 1] = ZM_LA_SHUF8(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[i + 2] = ZM_LA_SHUF8(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[i + 3] = ZM_LA_SHUF8(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    ZM_LA_UNROLL
    for (i = 0; i < 4; i++) {
        r[i] = ZM_LA_SHUF8(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        r[i + 4] = ZM_LA_SHUF8(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
    ZM_LA_UNROLL
    for (i = 0; i < 8; i++)
        memcpy(dst + i * ldd, &r[i], sizeof r[i]);
}
#undef ZM_LA_SHUF8
#undef V8
#undef I8
#endif

static ZM_LA_ATTR void N_(zm_la_transpose)(const T *src, ptrdiff_t lds,
                                           ptrdiff_t m, ptrdiff_t n, T *dst,
                                           ptrdiff_t ldd)
{
    ptrdiff_t i = 0, j;
#if ZM_LA_VW >= 8
    for (; i + 8 <= m; i += 8) {
        for (j = 0; j + 8 <= n; j += 8)
            N_(zm_la_t8)(src + i * lds + j, lds, dst + j * ldd + i, ldd);
        for (; j < n; j++) {
            int r;
            for (r = 0; r < 8; r++)
                dst[j * ldd + i + r] = src[(i + r) * lds + j];
        }
    }
#endif
    for (; i < m; i++)
        for (j = 0; j < n; j++)
            dst[j * ldd + i] = src[i * lds + j];
}

/* One task: its chunks in order (see _lachunk.h). work: zm_la_scratch
 * elements and 64 bytes. */
static ZM_LA_ATTR void N_(zm_la_walk)(const ZM_LA_ARGS *a, T *work)
{
    const ptrdiff_t K = a->K, V = a->V, C = a->C, L = a->L;
    const ptrdiff_t ldq = a->ldq, ldv = a->ldv, ldg = a->ldg;
    const ptrdiff_t w = ZM_LA_PAD / (ptrdiff_t) sizeof(T);
    const ptrdiff_t Vp = zm_la_round(V, w), Cp = zm_la_round(C, w);
    const ptrdiff_t Kp = zm_la_round(K, w);
    const int delta = a->beta != NULL;
    const ptrdiff_t nh = a->nh;
    const T scale = a->scale;
    T *base = (T *) (((uintptr_t) work + 63) & ~(uintptr_t) 63);
    T *Sts = base;                  /* nh x (K, Vp) the states */
    T *Vc = Sts + nh * K * Vp;      /* (C, Vp) v, or R of the delta rule */
    T *U = Vc + C * Vp;             /* (C, Vp) the delta rule's new values */
    T *Kt = U + C * Vp;             /* (K, Cp) k^T */
    T *Kw = Kt + K * Cp;            /* (C, Kp) w .* k */
    T *P = Kw + C * Kp;             /* (C, Cp) scores q k^T, then masked */
    T *KK = P + C * Cp;             /* (C, Cp) k k^T, then M */
    T *Ti = KK + C * Cp;            /* (C, Cp) (I + M)^{-1} */
    T *G = Ti + C * Cp, *e = G + Cp, *wv = e + Cp, *bt = wv + Cp;
    T *rs = bt + Cp, *rb = rs + Cp;
    T *Qc = rb + Cp;                /* (C, Kp) the chunk's q, k and o rows */
    T *Kc = Qc + C * Kp;            /* (contiguous copies: rows of the */
    T *Oc = Kc + C * Kp;            /* input are a page apart) */
    ptrdiff_t t0, i, j, c, h;
    N_(zm_la_op) op;

    memset(base, 0, (size_t) zm_la_scratch(C, K, V, nh, sizeof(T))
                    * sizeof(T));
    if (a->h0 != NULL)
        for (h = 0; h < nh; h++)
            for (c = 0; c < K; c++)
                memcpy(Sts + (h * K + c) * Vp, a->h0 + h * a->hss + c * V,
                       (size_t) V * sizeof(T));

    /* the heads of the task take each chunk in turn: the rows of one
     * position are read in order through the heads (the next head's part
     * of a row is in the same page, next in memory) */
    for (t0 = 0; t0 < L; t0 += C)
    for (h = 0; h < nh; h++) {
        const ptrdiff_t m = zm_la_min(C, L - t0);
        const T *q = a->q + h * a->hsq + t0 * ldq;
        const T *k = a->k + h * a->hsq + t0 * ldq;
        const T *v = a->v + h * a->hsv + t0 * ldv;
        T *o = a->o + h * a->hsv + t0 * ldv;
        const T *gh = a->g != NULL ? a->g + h * a->hsg : NULL;
        const T *bh = delta ? a->beta + h * a->hsg : NULL;
        T *St = Sts + h * K * Vp;
        const int has_state = t0 > 0 || a->h0 != NULL;
        T *X;
        T gam = 1;

        /* the rows the next head (or the next chunk's first head) reads,
         * requested while this one computes */
        {
            const ptrdiff_t hn = h + 1 < nh ? h + 1 : 0;
            const ptrdiff_t tn = h + 1 < nh ? t0 : t0 + C;
            const ptrdiff_t mn = zm_la_min(C, L - tn);
            const char *pq = (const char *) (a->q + hn * a->hsq + tn * ldq);
            const char *pk = (const char *) (a->k + hn * a->hsq + tn * ldq);
            const char *pv = (const char *) (a->v + hn * a->hsv + tn * ldv);
            const ptrdiff_t bq = ldq * (ptrdiff_t) sizeof(T);
            const ptrdiff_t bv = ldv * (ptrdiff_t) sizeof(T);
            ptrdiff_t r, b;
            for (r = 0; r < mn; r++) {
                for (b = 0; b < K * (ptrdiff_t) sizeof(T); b += 64) {
                    ZM_LA_PREFETCH(pq + r * bq + b);
                    ZM_LA_PREFETCH(pk + r * bq + b);
                }
                for (b = 0; b < V * (ptrdiff_t) sizeof(T); b += 64)
                    ZM_LA_PREFETCH(pv + r * bv + b);
            }
        }

        /* the gates: G cumulative in the chunk, e, w and the carry */
        if (gh != NULL) {
            T acc = 0, last;
            for (i = 0; i < m; i++) {
                acc += gh[(t0 + i) * ldg];
                G[i] = acc;
            }
            last = G[m - 1];
            for (i = 0; i < m; i++) {
                e[i] = ZM_LA_DECAY(G[i]);
                wv[i] = ZM_LA_DECAY(last - G[i]);
            }
            gam = ZM_LA_DECAY(last);
        } else {
            for (i = 0; i < m; i++) {
                G[i] = 0;
                e[i] = 1;
                wv[i] = 1;
            }
        }
        for (i = 0; i < m; i++)
            rs[i] = scale * e[i];
        if (delta)
            for (i = 0; i < m; i++) {
                bt[i] = bh[(t0 + i) * ldg];
                rb[i] = -bt[i] * e[i];
            }

        /* the chunk's operands in scratch: q, k (the delta rule's) and
         * w .* k rows, k^T */
        for (i = 0; i < m; i++) {
            const T *kr = k + i * ldq;
            T *restrict kw = Kw + i * Kp;
            const T wi = wv[i];
            memcpy(Qc + i * Kp, q + i * ldq, (size_t) K * sizeof(T));
            if (delta)
                memcpy(Kc + i * Kp, kr, (size_t) K * sizeof(T));
            for (c = 0; c < K; c++)
                kw[c] = wi * kr[c];
        }
        N_(zm_la_transpose)(k, ldq, m, K, Kt, Cp);
        for (i = 0; i < m; i++) {
            const T *vr = v + i * ldv;
            T *dst = Vc + i * Vp;
            if (delta) {
                const T b = bt[i];
                for (j = 0; j < V; j++)
                    dst[j] = b * vr[j];
            } else {
                memcpy(dst, vr, (size_t) V * sizeof(T));
            }
        }

        /* scores: P = q k^T (and k k^T), lower tiles only */
        memset(&op, 0, sizeof op);
        op.A1 = Qc;
        op.ra1 = Kp;
        op.B1 = Kt;
        op.ldb1 = Cp;
        op.k1 = K;
        op.C = P;
        op.ldc = Cp;
        N_(zm_la_gemm)(&op, m, Cp, 1);
        if (delta) {
            op.A1 = Kc;
            op.C = KK;
            N_(zm_la_gemm)(&op, m, Cp, 1);
        }
        /* the decays: exp of differences that are never positive when g is
         * not, masked before exp (nothing above the diagonal is formed) */
        for (i = 0; i < m; i++) {
            T *restrict Pi = P + i * Cp;
            T *restrict Mi = KK + i * Cp;
            T *restrict di = Ti + i * Cp;   /* Ti is formed after this */
            const T Gi = G[i], bi = delta ? bt[i] : 0;
            const ptrdiff_t n = i + 1;
            if (gh != NULL) {
                for (j = 0; j < n; j++)
                    di[j] = ZM_LA_DECAY(Gi - G[j]);
            } else {
                for (j = 0; j < n; j++)
                    di[j] = 1;
            }
            for (j = 0; j < n; j++)
                Pi[j] *= scale * di[j];
            for (j = n; j < Cp; j++)
                Pi[j] = 0;
            if (delta) {
                for (j = 0; j < i; j++)
                    Mi[j] *= bi * di[j];
                for (j = i; j < Cp; j++)
                    Mi[j] = 0;
            }
        }

        X = Vc;
        if (delta) {
            /* Ti = (I + M)^{-1}: row i = e_i - sum_{j<i} M_ij Ti_j. Its
             * entries are sums of products of entries of M along paths,
             * which shrink geometrically: those below the decays' flush
             * threshold are set to zero, so that neither this loop nor the
             * product with Ti meets subnormal operands. */
            for (i = 0; i < m; i++) {
                T *ti = Ti + i * Cp;
                const T *Mi = KK + i * Cp;
                for (c = 0; c < Cp; c++)
                    ti[c] = 0;
                for (j = 0; j < i; j++) {
                    const T mij = Mi[j];
                    const T *tj = Ti + j * Cp;
                    for (c = 0; c <= j; c++)
                        ti[c] -= mij * tj[c];
                }
                for (c = 0; c < i; c++)
                    ti[c] = N_(zm_la_flush)(ti[c]);
                ti[i] = 1;
            }
            /* R = beta v - (beta e) .* (k S) */
            if (has_state) {
                memset(&op, 0, sizeof op);
                op.A1 = Kc;
                op.ra1 = Kp;
                op.B1 = St;
                op.ldb1 = Vp;
                op.k1 = K;
                op.rs = rb;
                op.Co = Vc;
                op.ldco = Vp;
                op.beta = 1;
                op.C = Vc;
                op.ldc = Vp;
                N_(zm_la_gemm)(&op, m, Vp, 0);
            }
            /* U = Ti R */
            memset(&op, 0, sizeof op);
            op.A2 = Ti;
            op.ra2 = Cp;
            op.B2 = Vc;
            op.ldb2 = Vp;
            op.C = U;
            op.ldc = Vp;
            N_(zm_la_gemm)(&op, m, Vp, 0);
            X = U;
        }

        /* o = scale e .* (q S) + P X */
        memset(&op, 0, sizeof op);
        if (has_state) {
            op.A1 = Qc;
            op.ra1 = Kp;
            op.B1 = St;
            op.ldb1 = Vp;
            op.k1 = K;
            op.rs = rs;
        }
        op.A2 = P;
        op.ra2 = Cp;
        op.B2 = X;
        op.ldb2 = Vp;
        op.C = Oc;
        op.ldc = Vp;
        N_(zm_la_gemm)(&op, m, Vp, 0);
        for (i = 0; i < m; i++)
            memcpy(o + i * ldv, Oc + i * Vp, (size_t) V * sizeof(T));

        /* S <- gam S + (w .* k)^T X */
        memset(&op, 0, sizeof op);
        op.A1 = Kw;
        op.at1 = 1;
        op.ra1 = Kp;
        op.B1 = X;
        op.ldb1 = Vp;
        op.k1 = m;
        if (has_state) {
            op.Co = St;
            op.ldco = Vp;
            op.beta = gam;
        }
        op.C = St;
        op.ldc = Vp;
        N_(zm_la_gemm)(&op, K, Vp, 0);
    }
    if (a->hT != NULL)
        for (h = 0; h < nh; h++)
            for (c = 0; c < K; c++)
                memcpy(a->hT + h * a->hss + c * V, Sts + (h * K + c) * Vp,
                       (size_t) V * sizeof(T));
}

#undef VT
#undef TW
#undef NVT
#undef N_
#undef ZM_LA_DECAY
#undef ZM_LA_TINY
#undef ZM_LA_FORCE
#undef ZM_LA_PREFETCH
