/*
 * Body of _ssdchunk.h, included (by _ssdinst.h) once per element type and
 * build with T (element), V (vector of VW elements), S(name) (name with
 * the type's and the build's suffix), ST(name) (with the type's: the
 * element functions of _vmath.h), SV(name) (the vector helpers of V:
 * _vlanes.h), ZM_SSD_TYPES (1 in the first build of T, which defines the
 * task arguments, named with the type's suffix only), ZM_SSD_ATTR (the
 * build's attribute on the loops), ZM_EXP (exp of T) and ZM_DECAY_EXP (the
 * decays' exp of T, flushed: _vmath.h) defined. No include guard: that is
 * the point.
 */

/* ------------------------------------------------------------------------
 * One tile: rows r < MR, columns c < NV * VW of
 *
 *   acc  = beta * C            (use_c; else 0)
 *   acc += A1 B1               (k1 terms; A1(r, l) = A1[r * ra1 + l * ka1],
 *                               B1 row l at B1 + l * ldb1)
 *   acc *= rs[r]               (rs != NULL)
 *   acc += A2 B2               (k2 terms, as A1 B1)
 *   C[r * ldc + c] = acc       (c < ncols)
 * ------------------------------------------------------------------------ */
typedef struct {
    ptrdiff_t k1, ra1, ka1, ldb1;
    const T *A1, *B1, *rs;
    ptrdiff_t k2, ra2, ka2, ldb2;
    const T *A2, *B2;
    T *C;
    ptrdiff_t ldc, ncols;
    T beta;
    int use_c;
} S(zm_tile_args);

/* acc[r][:] += sum_{l < k} A[r * ra + l * ka] * B[l * ldb + :], r < MR. */
ZM_INLINE void S(zm_tile_seg)(const int MR, const int NV,
                              V acc[ZM_SSD_MR][2], ptrdiff_t k, const T *A,
                              ptrdiff_t ra, ptrdiff_t ka, const T *B,
                              ptrdiff_t ldb)
{
    const V zero = {0};
    ptrdiff_t l;
    int r;
    for (l = 0; l < k; l++) {
        V b0 = SV(zm_vld)(B + l * ldb);
        V b1 = NV > 1 ? SV(zm_vld)(B + l * ldb + VW) : zero;
        ZM_UNROLL
        for (r = 0; r < MR; r++) {
            T a = A[r * ra + l * ka];
            acc[r][0] += a * b0;
            if (NV > 1)
                acc[r][1] += a * b1;
        }
    }
}

ZM_INLINE void S(zm_tile_run)(const int MR, const int NV,
                              const S(zm_tile_args) *t)
{
    const V zero = {0};
    V acc[ZM_SSD_MR][2];
    T part[2 * VW];
    ptrdiff_t c;
    int r, v, full = t->ncols == NV * VW;

    ZM_UNROLL
    for (r = 0; r < MR; r++) {
        ZM_UNROLL
        for (v = 0; v < NV; v++) {
            if (!t->use_c) {
                acc[r][v] = zero;
            } else if (full) {
                acc[r][v] = t->beta * SV(zm_vld)(t->C + r * t->ldc + v * VW);
            } else {
                for (c = 0; c < NV * VW; c++)
                    part[c] = c < t->ncols ? t->C[r * t->ldc + c] : 0;
                acc[r][v] = t->beta * SV(zm_vld)(part + v * VW);
            }
        }
    }
    S(zm_tile_seg)(MR, NV, acc, t->k1, t->A1, t->ra1, t->ka1, t->B1, t->ldb1);
    if (t->rs != NULL) {
        ZM_UNROLL
        for (r = 0; r < MR; r++) {
            ZM_UNROLL
            for (v = 0; v < NV; v++)
                acc[r][v] *= t->rs[r];
        }
    }
    S(zm_tile_seg)(MR, NV, acc, t->k2, t->A2, t->ra2, t->ka2, t->B2, t->ldb2);
    ZM_UNROLL
    for (r = 0; r < MR; r++) {
        if (full) {
            ZM_UNROLL
            for (v = 0; v < NV; v++)
                SV(zm_vst)(t->C + r * t->ldc + v * VW, acc[r][v]);
        } else {
            for (v = 0; v < NV; v++)
                SV(zm_vst)(part + v * VW, acc[r][v]);
            for (c = 0; c < t->ncols; c++)
                t->C[r * t->ldc + c] = part[c];
        }
    }
}

#define ZM_TILE_FN(MR, NV)                                                  \
ZM_SSD_ATTR static void S(zm_tile_##MR##_##NV)(const S(zm_tile_args) *t)     \
{                                                                           \
    S(zm_tile_run)(MR, NV, t);                                              \
}
ZM_TILE_FN(1, 1) ZM_TILE_FN(2, 1) ZM_TILE_FN(3, 1)
ZM_TILE_FN(4, 1) ZM_TILE_FN(5, 1) ZM_TILE_FN(6, 1)
ZM_TILE_FN(1, 2) ZM_TILE_FN(2, 2) ZM_TILE_FN(3, 2)
ZM_TILE_FN(4, 2) ZM_TILE_FN(5, 2) ZM_TILE_FN(6, 2)
#undef ZM_TILE_FN

/* t->C and t->ncols set by the caller; mr rows, nv vectors. */
static void S(zm_tile)(int mr, int nv, const S(zm_tile_args) *t)
{
    static void (*const fn[2][ZM_SSD_MR])(const S(zm_tile_args) *) = {
        {S(zm_tile_1_1), S(zm_tile_2_1), S(zm_tile_3_1),
         S(zm_tile_4_1), S(zm_tile_5_1), S(zm_tile_6_1)},
        {S(zm_tile_1_2), S(zm_tile_2_2), S(zm_tile_3_2),
         S(zm_tile_4_2), S(zm_tile_5_2), S(zm_tile_6_2)},
    };
    fn[nv - 1][mr - 1](t);
}

/* ------------------------------------------------------------------------
 * Prefetching: the rows of the next chunk's x are requested a few cache
 * lines per tile while this chunk is computed, so that they arrive from
 * memory without a burst of misses that would stall the products.
 * ------------------------------------------------------------------------ */
typedef struct {
    const T *base;
    ptrdiff_t ld, row, nrows, col, ncols;
} S(zm_pf);

ZM_INLINE void S(zm_pf_step)(S(zm_pf) *pf, int lines)
{
    const ptrdiff_t step = 64 / (ptrdiff_t) sizeof(T);
    if (pf == NULL)
        return;
    for (; lines > 0 && pf->row < pf->nrows; lines--) {
#if defined(__GNUC__)
        __builtin_prefetch(pf->base + pf->row * pf->ld + pf->col, 0, 3);
#endif
        pf->col += step;
        if (pf->col >= pf->ncols) {
            pf->col = 0;
            pf->row++;
        }
    }
}

/* ------------------------------------------------------------------------
 * The products of one chunk of m positions. Scratch operands have rows of
 * Pp (or mp) elements, Pp a multiple of VW.
 * ------------------------------------------------------------------------ */

/* Y (m, P), row stride ldy:
 *   Y[i] = e_i (Cc St)[i] + (W Xp)[i]
 * Cc (m, N) stride ldc; St (N, Pp) the transposed state, or NULL for a zero
 * state; W (m, m) lower triangular (entries right of the diagonal inside
 * a tile's rows are zero), stride ldw; Xp (m, Pp). */
static void S(zm_chunk_y)(T *Y, ptrdiff_t ldy, const T *Cc, ptrdiff_t ldc,
                          const T *St, const T *e, ptrdiff_t N, const T *W,
                          ptrdiff_t ldw, const T *Xp, ptrdiff_t m,
                          ptrdiff_t P, ptrdiff_t Pp, S(zm_pf) *pf)
{
    S(zm_tile_args) t;
    ptrdiff_t i0, j0;
    memset(&t, 0, sizeof t);
    t.k1 = St != NULL ? N : 0;
    t.ra1 = ldc;
    t.ka1 = 1;
    t.ldb1 = Pp;
    t.ka2 = 1;
    t.ra2 = ldw;
    t.ldb2 = Pp;
    t.ldc = ldy;
    for (j0 = 0; j0 < P; j0 += 2 * VW) {
        int nv = Pp - j0 >= 2 * VW ? 2 : 1;
        t.ncols = zm_ssd_min(nv * VW, P - j0);
        t.B1 = St != NULL ? St + j0 : NULL;
        t.B2 = Xp + j0;
        for (i0 = 0; i0 < m; i0 += ZM_SSD_MR) {
            int mr = (int) zm_ssd_min(ZM_SSD_MR, m - i0);
            t.A1 = Cc + i0 * ldc;
            t.rs = St != NULL ? e + i0 : NULL;
            t.k2 = i0 + mr;
            t.A2 = W + i0 * ldw;
            t.C = Y + i0 * ldy + j0;
            S(zm_pf_step)(pf, 4);
            S(zm_tile)(mr, nv, &t);
        }
    }
}

/* St (N, Pp) = carry St + Bc^T Xw; Bc (m, N) stride ldb, Xw (m, Pp).
 * carry == 0 does not read St. */
static void S(zm_chunk_state)(T *St, T carry, const T *Bc, ptrdiff_t ldb,
                              const T *Xw, ptrdiff_t m, ptrdiff_t N,
                              ptrdiff_t Pp, S(zm_pf) *pf)
{
    S(zm_tile_args) t;
    ptrdiff_t n0, j0;
    memset(&t, 0, sizeof t);
    t.k1 = m;
    t.ra1 = 1;
    t.ka1 = ldb;
    t.ldb1 = Pp;
    t.ldc = Pp;
    t.beta = carry;
    t.use_c = carry != 0;
    for (j0 = 0; j0 < Pp; j0 += 2 * VW) {
        int nv = Pp - j0 >= 2 * VW ? 2 : 1;
        t.ncols = nv * VW;
        t.B1 = Xw + j0;
        for (n0 = 0; n0 < N; n0 += ZM_SSD_MR) {
            int mr = (int) zm_ssd_min(ZM_SSD_MR, N - n0);
            t.A1 = Bc + n0;
            t.C = St + n0 * Pp + j0;
            S(zm_pf_step)(pf, 4);
            S(zm_tile)(mr, nv, &t);
        }
    }
}

/* CB (m, mp), stride ldcb >= mp: (Cc Bc^T)[i, j] for j <= i; the entries
 * right of the diagonal are written too (zero in the padding columns), and
 * never used. Bt: scratch (N, mp), mp >= m a multiple of VW. */
static void S(zm_chunk_cb)(T *CB, ptrdiff_t ldcb, const T *Cc,
                           const T *Bc, ptrdiff_t ldb, ptrdiff_t m,
                           ptrdiff_t N, T *Bt, ptrdiff_t mp)
{
    S(zm_tile_args) t;
    ptrdiff_t i0, j0, j, n;
    for (n = 0; n < N; n++) {
        T *row = Bt + n * mp;
        for (j = 0; j < m; j++)
            row[j] = Bc[j * ldb + n];
        for (; j < mp; j++)
            row[j] = 0;
    }
    memset(&t, 0, sizeof t);
    t.k1 = N;
    t.ra1 = ldb;
    t.ka1 = 1;
    t.ldb1 = mp;
    t.ldc = ldcb;
    for (j0 = 0; j0 < m; j0 += 2 * VW) {
        int nv = mp - j0 >= 2 * VW ? 2 : 1;
        t.ncols = nv * VW;
        t.B1 = Bt + j0;
        for (i0 = j0 / ZM_SSD_MR * ZM_SSD_MR; i0 < m; i0 += ZM_SSD_MR) {
            int mr = (int) zm_ssd_min(ZM_SSD_MR, m - i0);
            t.A1 = Cc + i0 * ldb;
            t.C = CB + i0 * ldcb + j0;
            S(zm_tile)(mr, nv, &t);
        }
    }
}

/* exp(d) flushed to 0 below the decays' threshold (ZM_DECAY_EXP, of
 * _vmath.h), d clamped to <= 0 when the chunk's decays never grow: every
 * decay of the forward and the backward. */
ZM_INLINE T S(zm_ssd_decay)(T d, int clamp)
{
    if (clamp && d > 0)
        d = 0;
    return ZM_DECAY_EXP(d);
}

/* Whether a chunk's cumulative decay never grows (all dt'A <= 0). */
static int S(zm_ssd_nonincreasing)(const T *cs, ptrdiff_t m)
{
    ptrdiff_t i;
    if (m > 0 && cs[0] > 0)
        return 0;
    for (i = 1; i < m; i++)
        if (cs[i] > cs[i - 1])
            return 0;
    return 1;
}

/* The masked decay matrix of one chunk, W (m, mp) with row stride mp:
 *   W[i, j] = CB[i, j] exp(cs_i - cs_j) dt_j  for j <= i,
 * 0 for i < j < (the end of i's tile of ZM_SSD_MR rows), and 0 where j and
 * i belong to different sequences. The exponent is clamped to <= 0 when
 * `clamp`. csp, dtp: scratch of mp elements. Each row is computed to a
 * multiple of VW columns (CB has mp columns), so that the loops have no
 * scalar tails; the entries right of the diagonal are then zeroed. */
ZM_INLINE void S(zm_decay_matrix)(T *restrict W, const T *restrict CB,
                                  ptrdiff_t ldcb, const T *restrict cs,
                                  const T *restrict dt, const long long *sq,
                                  ptrdiff_t m, ptrdiff_t mp, int clamp,
                                  T *restrict csp, T *restrict dtp)
{
    ptrdiff_t i, j;
    for (j = 0; j < m; j++) {
        csp[j] = cs[j];
        dtp[j] = dt[j];
    }
    for (; j < mp; j++) {
        csp[j] = cs[m - 1];
        dtp[j] = 0;
    }
    for (i = 0; i < m; i++) {
        T *restrict Wi = W + i * mp;
        const T *restrict cbi = CB + i * ldcb;
        const T csi = cs[i];
        const ptrdiff_t n = zm_ssd_round(i + 1, VW);
        const ptrdiff_t tile_end = zm_ssd_min(m, i - i % ZM_SSD_MR + ZM_SSD_MR);
        if (clamp) {
            for (j = 0; j < n; j++) {
                T d = csi - csp[j];
                d = d > 0 ? 0 : d;
                Wi[j] = cbi[j] * ZM_DECAY_EXP(d) * dtp[j];
            }
        } else {
            for (j = 0; j < n; j++)
                Wi[j] = cbi[j] * ZM_DECAY_EXP(csi - csp[j]) * dtp[j];
        }
        for (j = i + 1; j < n || j < tile_end; j++)
            Wi[j] = 0;
        if (sq != NULL && sq[0] != sq[m - 1])
            for (j = 0; j <= i; j++)
                if (sq[j] != sq[i])
                    Wi[j] = 0;
    }
}

/* e_i = exp(cs_i) (the entering state's decay to position i) and
 * w_l = exp(cs_last - cs_l) dt_l (position l's weight in the chunk's end
 * state), exponents clamped to <= 0 when `clamp`; 0 across a sequence
 * boundary. */
ZM_INLINE void S(zm_chunk_weights)(T *restrict e, T *restrict w,
                                   const T *restrict cs,
                                   const T *restrict dt,
                                   const long long *sq, ptrdiff_t m,
                                   int clamp)
{
    const T last = cs[m - 1];
    ptrdiff_t i;
    if (clamp) {
        for (i = 0; i < m; i++) {
            T a = cs[i], b = last - cs[i];
            e[i] = ZM_DECAY_EXP(a > 0 ? 0 : a);
            w[i] = ZM_DECAY_EXP(b > 0 ? 0 : b) * dt[i];
        }
    } else {
        for (i = 0; i < m; i++) {
            e[i] = ZM_DECAY_EXP(cs[i]);
            w[i] = ZM_DECAY_EXP(last - cs[i]) * dt[i];
        }
    }
    if (sq != NULL && sq[0] != sq[m - 1])
        for (i = 0; i < m; i++) {
            if (sq[i] != sq[0])
                e[i] = 0;
            if (sq[i] != sq[m - 1])
                w[i] = 0;
        }
}

/* ------------------------------------------------------------------------
 * One chunk of one head, and the walks built on it.
 *
 * Scratch of one thread (zm_ssd_scratch(cm, P, N, VW, sizeof(T)) elements,
 * cm the longest chunk): the transposed state St (N, Pp) and the chunk's
 * operands.
 * ------------------------------------------------------------------------ */
typedef struct {
    T *St, *Xp, *Xw, *W, *e, *wv, *csp, *dtp, *CBw, *Bt;
    ptrdiff_t Pp, mp;
} S(zm_ssd_ws);

ZM_INLINE T *S(zm_carve)(T **p, ptrdiff_t n)
{
    T *r = *p;
    *p += zm_ssd_round(n, 64 / (ptrdiff_t) sizeof(T));
    return r;
}

/* Carve the scratch; the padding columns of St, Xp and Xw are zeroed (and
 * stay zero). */
static S(zm_ssd_ws) S(zm_ssd_workspace)(T *work, ptrdiff_t cm, ptrdiff_t P,
                                        ptrdiff_t N)
{
    S(zm_ssd_ws) ws;
    T *p = (T *) (((uintptr_t) work + 63) & ~(uintptr_t) 63);
    ws.Pp = zm_ssd_round(P, VW);
    ws.mp = zm_ssd_round(cm, VW);
    ws.St = S(zm_carve)(&p, N * ws.Pp);
    ws.Xp = S(zm_carve)(&p, cm * ws.Pp);
    ws.Xw = S(zm_carve)(&p, cm * ws.Pp);
    ws.W = S(zm_carve)(&p, cm * ws.mp);
    ws.e = S(zm_carve)(&p, cm);
    ws.wv = S(zm_carve)(&p, cm);
    ws.csp = S(zm_carve)(&p, ws.mp);
    ws.dtp = S(zm_carve)(&p, ws.mp);
    ws.CBw = S(zm_carve)(&p, cm * ws.mp);
    ws.Bt = S(zm_carve)(&p, N * ws.mp);
    memset(ws.St, 0, N * ws.Pp * sizeof(T));
    memset(ws.Xp, 0, cm * ws.Pp * sizeof(T));
    memset(ws.Xw, 0, cm * ws.Pp * sizeof(T));
    return ws;
}

/* St (N, Pp) <- state (P, N), or the reverse. */
static void S(zm_ssd_state_in)(const S(zm_ssd_ws) *ws, const T *state,
                               ptrdiff_t P, ptrdiff_t N)
{
    ptrdiff_t j, n;
    for (n = 0; n < N; n++)
        for (j = 0; j < P; j++)
            ws->St[n * ws->Pp + j] = state[j * N + n];
}

static void S(zm_ssd_state_out)(const S(zm_ssd_ws) *ws, T *state,
                                ptrdiff_t P, ptrdiff_t N)
{
    ptrdiff_t j, n;
    for (j = 0; j < P; j++)
        for (n = 0; n < N; n++)
            state[j * N + n] = ws->St[n * ws->Pp + j];
}

/* One chunk of m positions of one head:
 *   Y != NULL: Y = (E o C B^T) diag(dt) X + diag(exp(cs)) C St^T
 *              (the state term only when has_state);
 *   advance:   St = exp(cs_last) St + B^T diag(w) X   (St read only when
 *              has_state).
 * X, Y: (m, P) row stride ldx; Bc, Cc: (m, N) row stride ldb; dt, cs, sq:
 * (m,) (sq NULL: one sequence); CB: C B^T (m, mp) with row stride mp, or
 * NULL to form it here. */
ZM_INLINE void S(zm_ssd_chunk)(const S(zm_ssd_ws) *ws, const T *X, T *Y,
                               ptrdiff_t ldx, const T *Bc, const T *Cc,
                               ptrdiff_t ldb, const T *dt, const T *cs,
                               const long long *sq, const T *CB,
                               int has_state, int advance, ptrdiff_t m,
                               ptrdiff_t P, ptrdiff_t N, S(zm_pf) *pf)
{
    const ptrdiff_t Pp = ws->Pp, mp = ws->mp;
    const int mixed = sq != NULL && sq[0] != sq[m - 1];
    const int clamp = S(zm_ssd_nonincreasing)(cs, m);
    ptrdiff_t j, l;

    S(zm_chunk_weights)(ws->e, ws->wv, cs, dt, sq, m, clamp);
    for (l = 0; l < m; l++) {
        const T *src = X + l * ldx;
        T *xp = ws->Xp + l * Pp, *xw = ws->Xw + l * Pp;
        const T w = ws->wv[l];
        for (j = 0; j < P; j++) {
            xp[j] = src[j];
            xw[j] = w * src[j];
        }
    }
    if (Y != NULL) {
        if (CB == NULL) {
            S(zm_chunk_cb)(ws->CBw, mp, Cc, Bc, ldb, m, N, ws->Bt, mp);
            CB = ws->CBw;
        }
        S(zm_decay_matrix)(ws->W, CB, mp, cs, dt, sq, m, mp, clamp, ws->csp,
                           ws->dtp);
        S(zm_chunk_y)(Y, ldx, Cc, ldb, has_state ? ws->St : NULL, ws->e, N,
                      ws->W, mp, ws->Xp, m, P, Pp, pf);
    }
    if (advance) {
        T carry = has_state && !mixed ? S(zm_ssd_decay)(cs[m - 1], clamp) : 0;
        S(zm_chunk_state)(ws->St, carry, Bc, ldb, ws->Xw, m, N, Pp, pf);
    }
}

/* The output's finishing terms on the rows of a chunk, while they are in
 * cache: y = (y + D x) silu(z), D (P,) and z (rows of stride ld) optional. */
ZM_INLINE void S(zm_ssd_finish)(T *Y, const T *X, const T *Z, ptrdiff_t ld,
                                const T *Dv, ptrdiff_t m, ptrdiff_t P)
{
    ptrdiff_t l, p;
    for (l = 0; l < m; l++) {
        T *restrict yr = Y + l * ld;
        const T *restrict xr = X + l * ld;
        if (Dv != NULL)
            for (p = 0; p < P; p++)
                yr[p] += Dv[p] * xr[p];
        if (Z != NULL) {
            const T *restrict zr = Z + l * ld;
            for (p = 0; p < P; p++)
                yr[p] *= ST(zm_silu1)(zr[p]);
        }
    }
}

/* One (batch, head) task of the fused chunked scan: its chunks in order,
 * each one's output from the running state, then the state advanced
 * through the chunk.
 *
 * Packed sequences never share arithmetic: a chunk that holds a sequence
 * boundary is cut there into segments, each computed on its own as a
 * shorter chunk (the running state is not read by a segment that starts a
 * sequence, it is replaced), so a NaN or inf in one sequence cannot reach
 * another through a zero weight. The cumulative decays `cs` must restart
 * at every chunk and at every sequence start (see process_dt).
 *
 * Scratch `work`: zm_ssd_scratch(min(csz, L), P, N, VW, sizeof(T)). */
#if ZM_SSD_TYPES
typedef struct {
    const T *x;            /* (L, P) of this head, row stride ldx */
    T *y;                  /* (L, P), row stride ldx */
    const T *B, *C;        /* (L, N) of the head's group, row stride ldb */
    const T *dt, *cs;      /* (L,) steps and restarted cumulative decays */
    const long long *seq;  /* (L,) sequence ids, or NULL: one sequence */
    const T *CB;           /* chunk c's C B^T at CB + c * cbstride, or NULL */
    ptrdiff_t cbstride;
    const T *init;         /* sequence k starts from the (P, N) state at */
    ptrdiff_t init_stride; /* init + k * init_stride when k < n_init, */
    ptrdiff_t n_init;      /* from zero otherwise */
    T *last;               /* (P, N): the state after position L - 1 */
    T *ends;               /* sequence k's end state at ends + k * */
    ptrdiff_t ends_stride; /* ends_stride when k < n_ends (ends != NULL) */
    ptrdiff_t n_ends;
    const T *Dv;           /* (P,) skip weights, or NULL */
    const T *z;            /* (L, P) gates, row stride ldx, or NULL */
    ptrdiff_t ldx, ldb, L, P, N, csz;
    ptrdiff_t c0, c1;      /* the chunks of this call, c0 <= c < c1: a row */
    ptrdiff_t k;           /* is walked in blocks of chunks, the state kept */
} ZM_SSD_WALK_ARGS;        /* in `last` and the sequence count in k between */
#endif

ZM_SSD_ATTR
static void S(zm_ssd_walk)(ZM_SSD_WALK_ARGS *a, T *work)
{
    const ptrdiff_t L = a->L, P = a->P, N = a->N, csz = a->csz;
    const ptrdiff_t ldx = a->ldx, ldb = a->ldb;
    const ptrdiff_t nch = (L + csz - 1) / csz;
    const S(zm_ssd_ws) ws = S(zm_ssd_workspace)(work, zm_ssd_min(csz, L),
                                                P, N);
    const long long *seq = a->seq;
    ptrdiff_t c, k = a->c0 > 0 ? a->k : 0;
    int has_state;

    if (a->c0 > 0) {             /* a later block: resume the row */
        has_state = 1;
        S(zm_ssd_state_in)(&ws, a->last, P, N);
    } else {
        has_state = a->n_init > 0;
        if (has_state)
            S(zm_ssd_state_in)(&ws, a->init, P, N);
    }
    for (c = a->c0; c < a->c1 && c < nch; c++) {
        const ptrdiff_t t0 = c * csz, m = zm_ssd_min(csz, L - t0);
        const int more = c + 1 < nch;
        S(zm_pf) pf = {more ? a->x + (t0 + csz) * ldx : a->x, ldx, 0,
                       more ? zm_ssd_min(csz, L - t0 - csz) : 0, 0, P};
        ptrdiff_t s0 = 0, s1;
        while (s0 < m) {
            const ptrdiff_t t = t0 + s0;
            s1 = m;
            if (seq != NULL)
                for (s1 = s0 + 1; s1 < m && seq[t0 + s1] == seq[t]; s1++)
                    ;
            if (seq != NULL && t > 0 && seq[t] != seq[t - 1]) {
                /* sequence k ends at t - 1, sequence k + 1 starts at t */
                if (a->ends != NULL && k < a->n_ends)
                    S(zm_ssd_state_out)(&ws, a->ends + k * a->ends_stride,
                                        P, N);
                k++;
                has_state = k < a->n_init;
                if (has_state)
                    S(zm_ssd_state_in)(&ws, a->init + k * a->init_stride,
                                       P, N);
            }
            S(zm_ssd_chunk)(&ws, a->x + t * ldx, a->y + t * ldx, ldx,
                            a->B + t * ldb, a->C + t * ldb, ldb, a->dt + t,
                            a->cs + t, NULL,
                            a->CB != NULL && s0 == 0 && s1 == m
                                ? a->CB + c * a->cbstride : NULL,
                            has_state, 1, s1 - s0, P, N, &pf);
            if (a->Dv != NULL || a->z != NULL)
                S(zm_ssd_finish)(a->y + t * ldx, a->x + t * ldx,
                                 a->z != NULL ? a->z + t * ldx : NULL, ldx,
                                 a->Dv, s1 - s0, P);
            has_state = 1;
            s0 = s1;
        }
    }
    S(zm_ssd_state_out)(&ws, a->last, P, N);
    a->k = k;
    if (a->c1 >= nch && a->ends != NULL && k < a->n_ends)
        S(zm_ssd_state_out)(&ws, a->ends + k * a->ends_stride, P, N);
}

/* One chunk of the staged algorithm, cut at sequence boundaries (sq: the
 * chunk's ids, or NULL) so that sequences share no arithmetic. With
 * y != NULL: the chunk's output, the first sequence's from the state
 * entering the chunk, `state_in` (P, N), the others' from zero (chunk
 * scan); otherwise the end state of the chunk's last sequence from zero
 * into `state_out` (chunk state). */
ZM_SSD_ATTR
static void S(zm_ssd_stage)(const T *x, T *y, const T *B, const T *C,
                            const T *dt, const T *cs, const long long *sq,
                            const T *state_in, T *state_out,
                            ptrdiff_t ldx, ptrdiff_t ldb,
                            ptrdiff_t m, ptrdiff_t cm, ptrdiff_t P,
                            ptrdiff_t N, T *work)
{
    const S(zm_ssd_ws) ws = S(zm_ssd_workspace)(work, cm, P, N);
    ptrdiff_t s0 = 0, s1;
    if (y != NULL)
        S(zm_ssd_state_in)(&ws, state_in, P, N);
    while (s0 < m) {
        s1 = m;
        if (sq != NULL)
            for (s1 = s0 + 1; s1 < m && sq[s1] == sq[s0]; s1++)
                ;
        if (y != NULL)
            S(zm_ssd_chunk)(&ws, x + s0 * ldx, y + s0 * ldx, ldx,
                            B + s0 * ldb, C + s0 * ldb, ldb, dt + s0,
                            cs + s0, NULL, NULL, s0 == 0, 0, s1 - s0, P, N,
                            NULL);
        else if (s1 == m)
            S(zm_ssd_chunk)(&ws, x + s0 * ldx, NULL, ldx, B + s0 * ldb,
                            NULL, ldb, dt + s0, cs + s0, NULL, NULL, 0, 1,
                            s1 - s0, P, N, NULL);
        s0 = s1;
    }
    if (y == NULL)
        S(zm_ssd_state_out)(&ws, state_out, P, N);
}

/* C B^T of one chunk into CB (m rows, row stride ldcb), for a first pass
 * shared by the heads of a group. work: N * zm_ssd_round(m, VW) + 64 bytes. */
static void S(zm_ssd_cb)(T *CB, ptrdiff_t ldcb, const T *Cc, const T *Bc,
                         ptrdiff_t ldb, ptrdiff_t m, ptrdiff_t N, T *work)
{
    T *Bt = (T *) (((uintptr_t) work + 63) & ~(uintptr_t) 63);
    S(zm_chunk_cb)(CB, ldcb, Cc, Bc, ldb, m, N, Bt, zm_ssd_round(m, VW));
}

/* ------------------------------------------------------------------------
 * One step of the recurrence for one head (the sequential path and
 * decoding): S (P, N) row-major,
 *   S[p] <- a S[p] + (d x[p]) B,   y[p] = S[p] . C.
 * Four rows at a time share the loads of B and C; each row's dot product
 * is VW running sums over the vector columns, added in a fixed order, then
 * its scalar tail (the result does not depend on the thread count).
 * ------------------------------------------------------------------------ */
ZM_SSD_ATTR
static void S(zm_seq_step)(T *restrict St, const T *restrict x,
                           const T *restrict Bt, const T *restrict Ct, T a,
                           T d, ptrdiff_t P, ptrdiff_t N, T *restrict y)
{
    const V zero = {0};
    const ptrdiff_t nv = N / VW * VW;
    ptrdiff_t p = 0, n;
    int k;
    for (; p + 4 <= P; p += 4) {
        T *restrict r[4];
        T u[4], tail[4];
        V acc[4];
        for (k = 0; k < 4; k++) {
            r[k] = St + (p + k) * N;
            u[k] = d * x[p + k];
            acc[k] = zero;
            tail[k] = 0;
        }
        for (n = 0; n < nv; n += VW) {
            const V b = SV(zm_vld)(Bt + n), c = SV(zm_vld)(Ct + n);
            ZM_UNROLL
            for (k = 0; k < 4; k++) {
                V s = a * SV(zm_vld)(r[k] + n) + u[k] * b;
                SV(zm_vst)(r[k] + n, s);
                acc[k] += s * c;
            }
        }
        for (; n < N; n++)
            for (k = 0; k < 4; k++) {
                T s = a * r[k][n] + u[k] * Bt[n];
                r[k][n] = s;
                tail[k] += s * Ct[n];
            }
        for (k = 0; k < 4; k++)
            y[p + k] = SV(zm_hsum)(acc[k]) + tail[k];
    }
    for (; p < P; p++) {
        T *restrict row = St + p * N;
        const T u = d * x[p];
        V acc = zero;
        T tail = 0;
        for (n = 0; n < nv; n += VW) {
            V s = a * SV(zm_vld)(row + n) + u * SV(zm_vld)(Bt + n);
            SV(zm_vst)(row + n, s);
            acc += s * SV(zm_vld)(Ct + n);
        }
        for (; n < N; n++) {
            T s = a * row[n] + u * Bt[n];
            row[n] = s;
            tail += s * Ct[n];
        }
        y[p] = SV(zm_hsum)(acc) + tail;
    }
}

/* Decoding: one head's state advanced through ntok tokens in place. S (P, N)
 * row-major; token t reads x[t * ldx + p], B and C at t * ldbc, the decay
 * a[t] and the step d[t], writes y[t * ldx + p] (z laid out like x), and
 * with `inter` a copy of the state after it at inter + t * ldi. Rows are
 * taken in blocks of at most 16 KiB (a multiple of 4 rows, those a step
 * takes together) that stay in L1 through all the tokens; each token's
 * arithmetic is zm_seq_step's, so a token's result does not depend on how
 * many tokens the call takes. D x and the gate follow in one vector pass
 * over the tokens' outputs. */
ZM_SSD_ATTR
static void S(zm_decode_head)(T *restrict St, ptrdiff_t P, ptrdiff_t N,
                              ptrdiff_t ntok, const T *x, ptrdiff_t ldx,
                              const T *Bt, const T *Ct, ptrdiff_t ldbc,
                              const T *a, const T *d, T *y, T *inter,
                              ptrdiff_t ldi, const T *Dv, const T *z)
{
    ptrdiff_t rb = (ptrdiff_t) (16384 / (N * sizeof(T))) / 4 * 4;
    ptrdiff_t p0, m, t, i;
    rb = rb < 4 ? 4 : (rb > P ? P : rb);
    for (p0 = 0; p0 < P; p0 += rb) {
        T *blk = St + p0 * N;
        m = zm_ssd_min(rb, P - p0);
        for (t = 0; t < ntok; t++) {
            S(zm_seq_step)(blk, x + t * ldx + p0, Bt + t * ldbc, Ct + t * ldbc,
                           a[t], d[t], m, N, y + t * ldx + p0);
            if (inter != NULL) {
                T *I = inter + t * ldi + p0 * N;
                for (i = 0; i < m * N; i++)
                    I[i] = blk[i];
            }
        }
    }
    if (Dv != NULL || z != NULL)
        S(zm_ssd_finish)(y, x, z, ldx, Dv, ntok, P);
}
