/*
 * Body of _ssdbwd.h, included (by _ssdinst.h) once per element type and
 * build with T, V, VW, S(name), ST(name), SV(name), ZM_SSD_ATTR, ZM_EXP
 * and ZM_DECAY_EXP defined (as for _ssdchunk_impl.h). No include guard:
 * that is the point.
 *
 * Layouts: a chunk of one head is m <= cm rows; scratch rows are padded to
 * Pp = P, Np = N or mp = cm rounded up to VW elements, with zeros in the
 * padding, so that every operand a tile reads by rows is read in whole
 * vectors. The state entering a chunk and the adjoint of the state
 * leaving it are kept transposed, (N, Pp), as the forward walk keeps its
 * running state.
 */

/* sum_k a[k] b[k] over n elements: VW running sums, then the tail. */
ZM_INLINE T S(zm_ssdb_dot)(const T *a, const T *b, ptrdiff_t n)
{
    V acc = {0};
    T tail = 0;
    ptrdiff_t k;
    for (k = 0; k + VW <= n; k += VW)
        acc += SV(zm_vld)(a + k) * SV(zm_vld)(b + k);
    for (; k < n; k++)
        tail += a[k] * b[k];
    return SV(zm_hsum)(acc) + tail;
}

/* Prefetching of up to three arrays' rows of the next unit of work (rows
 * of ncols elements, ld apart, the same rows of each array), a few cache
 * lines at a time between the tiles of the current one: rows strided by
 * nheads * headdim escape the hardware prefetchers. */
typedef struct {
    const T *base[3];
    int ns, s, per;
    ptrdiff_t ld, nrows, ncols, row, col;
} S(zm_ssdb_pf);

/* `steps`: the calls of zm_ssdb_pf_step expected to take it all. */
ZM_INLINE void S(zm_ssdb_pf_init)(S(zm_ssdb_pf) *pf, const T *a,
                                  const T *b, const T *c, ptrdiff_t ld,
                                  ptrdiff_t nrows, ptrdiff_t ncols,
                                  ptrdiff_t steps)
{
    const ptrdiff_t lines = (ncols * (ptrdiff_t) sizeof(T) + 63) / 64;
    pf->base[0] = a;
    pf->base[1] = b;
    pf->base[2] = c;
    pf->ns = c != NULL ? 3 : b != NULL ? 2 : a != NULL ? 1 : 0;
    pf->s = 0;
    pf->ld = ld;
    pf->nrows = pf->ns > 0 ? nrows : 0;
    pf->ncols = ncols;
    pf->row = 0;
    pf->col = 0;
    pf->per = (int) ((pf->ns * pf->nrows * lines + steps - 1)
                     / (steps > 0 ? steps : 1)) + 1;
}

ZM_INLINE void S(zm_ssdb_pf_step)(S(zm_ssdb_pf) *pf)
{
    const ptrdiff_t step = 64 / (ptrdiff_t) sizeof(T);
    int lines = pf->per;
    for (; lines > 0 && pf->row < pf->nrows; lines--) {
#if defined(__GNUC__)
        __builtin_prefetch(pf->base[pf->s] + pf->row * pf->ld + pf->col, 0, 3);
#endif
        if (++pf->s < pf->ns)
            continue;
        pf->s = 0;
        pf->col += step;
        if (pf->col >= pf->ncols) {
            pf->col = 0;
            pf->row++;
        }
    }
}

/* ------------------------------------------------------------------------
 * Scratch of one thread.
 * ------------------------------------------------------------------------ */
typedef struct {
    T *Bp, *Cp, *Q;               /* (cm, Np) */
    T *Bt, *Ct, *Qt, *gCt, *gBt;  /* (N, mp) */
    T *CB, *dCB, *E, *Wt, *dM;    /* (cm, mp) */
    T *Xd, *dYp, *dXd;            /* (cm, Pp) */
    T *XdT, *dYT;                 /* (P, mp) */
    T *dSt;                       /* (N, Pp) */
    T *din, *dout, *dc, *col, *acc;  /* (mp,) */
    ptrdiff_t Pp, Np, mp;
} S(zm_ssdb_ws);

/* Carve `work` (zm_ssdb_scratch(cm, P, N, VW, sizeof(T)) elements); the
 * blocks whose padding must stay zero are zeroed. */
static S(zm_ssdb_ws) S(zm_ssdb_layout)(T *work, ptrdiff_t cm, ptrdiff_t P,
                                       ptrdiff_t N)
{
    S(zm_ssdb_ws) w;
    T *p = (T *) (((uintptr_t) work + 63) & ~(uintptr_t) 63);
    w.Pp = zm_ssd_round(P, VW);
    w.Np = zm_ssd_round(N, VW);
    w.mp = zm_ssd_round(cm, VW);
    w.Bp = S(zm_carve)(&p, cm * w.Np);
    w.Cp = S(zm_carve)(&p, cm * w.Np);
    w.Q = S(zm_carve)(&p, cm * w.Np);
    w.Bt = S(zm_carve)(&p, N * w.mp);
    w.Ct = S(zm_carve)(&p, N * w.mp);
    w.Qt = S(zm_carve)(&p, N * w.mp);
    w.gCt = S(zm_carve)(&p, N * w.mp);
    w.gBt = S(zm_carve)(&p, N * w.mp);
    w.CB = S(zm_carve)(&p, cm * w.mp);
    w.dCB = S(zm_carve)(&p, cm * w.mp);
    w.E = S(zm_carve)(&p, cm * w.mp);
    w.Wt = S(zm_carve)(&p, cm * w.mp);
    w.dM = S(zm_carve)(&p, cm * w.mp);
    w.Xd = S(zm_carve)(&p, cm * w.Pp);
    w.dYp = S(zm_carve)(&p, cm * w.Pp);
    w.dXd = S(zm_carve)(&p, cm * w.Pp);
    w.XdT = S(zm_carve)(&p, P * w.mp);
    w.dYT = S(zm_carve)(&p, P * w.mp);
    w.dSt = S(zm_carve)(&p, N * w.Pp);
    w.din = S(zm_carve)(&p, w.mp);
    w.dout = S(zm_carve)(&p, w.mp);
    w.dc = S(zm_carve)(&p, w.mp);
    w.col = S(zm_carve)(&p, w.mp);
    w.acc = S(zm_carve)(&p, w.mp);
    memset(w.Bp, 0, cm * w.Np * sizeof(T));
    memset(w.Cp, 0, cm * w.Np * sizeof(T));
    memset(w.Xd, 0, cm * w.Pp * sizeof(T));
    memset(w.dYp, 0, cm * w.Pp * sizeof(T));
    memset(w.dSt, 0, N * w.Pp * sizeof(T));
    return w;
}

/* ------------------------------------------------------------------------
 * Pass 1 (forward): one (batch, head) task walks its chunks in order as the
 * fused scan does (zm_ssd_walk, the same arithmetic: the same output
 * bits), and keeps the state entering every chunk, as the chunk's first
 * segment sees it (zero when a sequence starts at the chunk's first
 * position), in `states` (nch, N, Pp): transposed, as the walk keeps it. With y0 == NULL only the states are
 * formed. y0 gets the output before the gate (with D x), y (z != NULL)
 * the gated output. The chunks c0 <= c < c1 (a block of the row, resumed
 * from `last`, as zm_ssd_walk does).
 * ------------------------------------------------------------------------ */
typedef struct {
    const T *x;            /* (L, P), row stride ldx */
    T *y0, *y;             /* likewise; y0 NULL: states only */
    const T *B, *C;        /* (L, N) of the head's group, row stride ldb */
    const T *dt, *cs;      /* (L,) steps and restarted cumulative decays */
    const long long *seq;  /* (L,) sequence ids or NULL */
    const T *CB;           /* chunk c's C B^T at CB + c * cbstride, or NULL */
    ptrdiff_t cbstride;
    const T *init;         /* (P, N): the first sequence's state, or NULL */
    T *last;               /* (P, N): the state after position L - 1 */
    T *states;             /* (nch, N, Pp) */
    const T *Dv, *z;       /* (P,) skip weights, (L, P) gates; or NULL */
    ptrdiff_t ldx, ldb, L, P, N, csz;
    ptrdiff_t c0, c1;      /* the chunks of this call: a row is walked in */
} S(zm_ssdb_fwd_args);     /* blocks, the state kept in `last` between */

/* The forward's finishing terms on the rows of a segment, in one sweep
 * while they are in cache: y0 += D x (Dv optional), and with y != NULL,
 * y = y0 silu(z) -- the same operations, in the same order, as
 * zm_ssd_finish on one output, so the same bits. */
ZM_INLINE void S(zm_ssdb_finish2)(T *Y0, T *Y, const T *X, const T *Z,
                                  ptrdiff_t ld, const T *Dv, ptrdiff_t m,
                                  ptrdiff_t P)
{
    const ptrdiff_t step = 64 / (ptrdiff_t) sizeof(T);
    ptrdiff_t l, p;
    for (l = 0; l < m; l++) {
        T *restrict y0r = Y0 + l * ld;
        const T *restrict xr = X + l * ld;
#if defined(__GNUC__)
        /* the gates' rows (strided by nheads * headdim, out of the
         * hardware prefetchers' reach) a few rows ahead */
        if (Y != NULL && l + ZM_SSDB_AHEAD < m)
            for (p = 0; p < P; p += step)
                __builtin_prefetch(Z + (l + ZM_SSDB_AHEAD) * ld + p, 0, 3);
#endif
        if (Dv != NULL)
            for (p = 0; p < P; p++)
                y0r[p] += Dv[p] * xr[p];
        if (Y != NULL) {
            T *restrict yr = Y + l * ld;
            const T *restrict zr = Z + l * ld;
            for (p = 0; p < P; p++)
                yr[p] = y0r[p] * ST(zm_silu1)(zr[p]);
        }
    }
}

ZM_SSD_ATTR
static void S(zm_ssdb_forward)(const S(zm_ssdb_fwd_args) *a, T *work)
{
    const ptrdiff_t L = a->L, P = a->P, N = a->N, csz = a->csz;
    const ptrdiff_t ldx = a->ldx, ldb = a->ldb;
    const ptrdiff_t nch = (L + csz - 1) / csz;
    const S(zm_ssd_ws) ws = S(zm_ssd_workspace)(work, zm_ssd_min(csz, L),
                                                P, N);
    const long long *seq = a->seq;
    ptrdiff_t c;
    int has_state;

    if (a->c0 > 0) {             /* a later block: resume the row */
        has_state = 1;
        S(zm_ssd_state_in)(&ws, a->last, P, N);
    } else {
        has_state = a->init != NULL;
        if (has_state)
            S(zm_ssd_state_in)(&ws, a->init, P, N);
    }
    for (c = a->c0; c < a->c1 && c < nch; c++) {
        const ptrdiff_t t0 = c * csz, m = zm_ssd_min(csz, L - t0);
        const int more = c + 1 < nch;
        S(zm_pf) pf = {more ? a->x + (t0 + csz) * ldx : a->x, ldx, 0,
                       more ? zm_ssd_min(csz, L - t0 - csz) : 0, 0, P};
        T *st = a->states + c * N * ws.Pp;
        ptrdiff_t s0 = 0, s1;
        while (s0 < m) {
            const ptrdiff_t t = t0 + s0;
            s1 = m;
            if (seq != NULL)
                for (s1 = s0 + 1; s1 < m && seq[t0 + s1] == seq[t]; s1++)
                    ;
            if (seq != NULL && t > 0 && seq[t] != seq[t - 1])
                has_state = 0;         /* a sequence starts at t */
            if (s0 == 0) {
                if (has_state)
                    memcpy(st, ws.St, N * ws.Pp * sizeof(T));
                else
                    memset(st, 0, N * ws.Pp * sizeof(T));
            }
            if (a->y0 != NULL || s1 == m)
                S(zm_ssd_chunk)(&ws, a->x + t * ldx,
                                a->y0 != NULL ? a->y0 + t * ldx : NULL, ldx,
                                a->B + t * ldb, a->C + t * ldb, ldb, a->dt + t,
                                a->cs + t, NULL,
                                a->CB != NULL && s0 == 0 && s1 == m
                                    ? a->CB + c * a->cbstride : NULL,
                                has_state, 1, s1 - s0, P, N, &pf);
            if (a->y0 != NULL && (a->Dv != NULL || a->z != NULL))
                S(zm_ssdb_finish2)(a->y0 + t * ldx, a->y != NULL ? a->y + t * ldx
                                                                 : NULL,
                                   a->x + t * ldx,
                                   a->z != NULL ? a->z + t * ldx : NULL, ldx,
                                   a->Dv,
                                   s1 - s0, P);
            has_state = 1;
            s0 = s1;
        }
    }
    S(zm_ssd_state_out)(&ws, a->last, P, N);
}

/* ------------------------------------------------------------------------
 * Pass 2 (reverse): one (batch, head) task walks the chunks c1 > c >= c0
 * backward with the adjoint dS of the state leaving the chunk, (N, Pp)
 * transposed, kept in `run` between blocks of chunks (formed from gfinal
 * by the last block):
 *
 *   dstates[c - c0] = dS;   dS <- carry_c dS + C1^T diag(din) dY1
 *
 * (C1, dY1: the chunk's first segment, the one that reads the entering
 * state; carry_c = 0 when a sequence starts inside the chunk), and dS <- 0
 * where a sequence starts at the chunk's first position. With z, the gate
 * first: dY = gy silu(z) into `dy`, gz = gy y0 silu'(z).
 * ------------------------------------------------------------------------ */
typedef struct {
    const T *gy;           /* (L, P) rows stride ldx */
    const T *z, *y0;       /* likewise, or NULL */
    T *dy, *gz;            /* likewise, written when z != NULL */
    const T *C;            /* (L, N) stride ldb */
    const T *cs;           /* (L,) restarted cumulative decays */
    const long long *seq;
    const T *gfinal;       /* (P, N) or NULL */
    T *dstates;            /* (c1 - c0, N, Pp): chunks c0 <= c < c1 */
    T *run;                /* (N, Pp): dS between calls (blocks of chunks) */
    T *ginit;              /* (P, N) or NULL */
    ptrdiff_t ldx, ldb, L, P, N, csz, c0, c1;
} S(zm_ssdb_adj_args);

/* silu(v) and silu'(v) from s = sigmoid(v), the gate elements of _vmath.h
 * (so v = -inf gives -0 and 0, v = +inf gives +inf and 1, as the forward's
 * limits). gz may be y0 itself (each element read before it is written). */
ZM_INLINE void S(zm_ssdb_gate_rows)(T *restrict dy, T *gz,
                                    const T *restrict gy,
                                    const T *restrict z,
                                    const T *y0, ptrdiff_t ld,
                                    ptrdiff_t m, ptrdiff_t P)
{
    ptrdiff_t l, p;
    for (l = 0; l < m; l++) {
        const T *restrict g = gy + l * ld, *restrict zr = z + l * ld;
        const T *yr = y0 + l * ld;
        T *restrict d = dy + l * ld, *gzr = gz + l * ld;
        for (p = 0; p < P; p++) {
            T v = zr[p];
            T sg = ST(zm_sig)(v);
            T gv = g[p];
            gzr[p] = gv * yr[p] * ST(zm_dsilu_sig)(v, sg);
            d[p] = gv * ST(zm_silu_sig)(v, sg);
        }
    }
}

ZM_SSD_ATTR
static void S(zm_ssdb_adjoint)(const S(zm_ssdb_adj_args) *a, T *work)
{
    const ptrdiff_t L = a->L, P = a->P, N = a->N, csz = a->csz;
    const ptrdiff_t ldx = a->ldx, ldb = a->ldb, cm = zm_ssd_min(csz, L);
    const ptrdiff_t nch = (L + csz - 1) / csz;
    const S(zm_ssdb_ws) w = S(zm_ssdb_layout)(work, cm, P, N);
    const ptrdiff_t Pp = w.Pp;
    const long long *seq = a->seq;
    T *dS = a->run, *dYin = w.dYp;
    ptrdiff_t c, i, j, n;

    if (a->c1 >= nch) {
        memset(dS, 0, N * Pp * sizeof(T));
        if (a->gfinal != NULL)
            for (n = 0; n < N; n++)
                for (j = 0; j < P; j++)
                    dS[n * Pp + j] = a->gfinal[j * N + n];
    }
    for (c = zm_ssd_min(a->c1, nch) - 1; c >= a->c0; c--) {
        const ptrdiff_t t0 = c * csz, m = zm_ssd_min(csz, L - t0);
        const T *dy, *cs = a->cs + t0;
        ptrdiff_t m1 = m;
        int clamp;
        T carry;
        memcpy(a->dstates + (c - a->c0) * N * Pp, dS, N * Pp * sizeof(T));
        if (a->z != NULL) {
            S(zm_ssdb_gate_rows)(a->dy + t0 * ldx, a->gz + t0 * ldx,
                                 a->gy + t0 * ldx, a->z + t0 * ldx,
                                 a->y0 + t0 * ldx, ldx, m, P);
            dy = a->dy + t0 * ldx;
        } else {
            dy = a->gy + t0 * ldx;
        }
        if (seq != NULL)
            for (m1 = 1; m1 < m && seq[t0 + m1] == seq[t0]; m1++)
                ;
        clamp = S(zm_ssd_nonincreasing)(cs, m1);
        for (i = 0; i < m1; i++) {
            const T e = S(zm_ssd_decay)(cs[i], clamp);
            const T *restrict src = dy + i * ldx;
            T *restrict dst = dYin + i * Pp;
            for (j = 0; j < P; j++)
                dst[j] = e * src[j];
        }
        carry = m1 == m ? S(zm_ssd_decay)(cs[m - 1], clamp) : 0;
        {
            /* dS = carry dS + C1^T dYin, the previous chunk's rows of the
             * cotangent (and gate, output) fetched meanwhile */
            const ptrdiff_t tp = t0 - csz;
            S(zm_ssdb_pf) pf;
            S(zm_tile_args) t;
            ptrdiff_t n0, j0;
            S(zm_ssdb_pf_init)(&pf, c > a->c0 ? a->gy + tp * ldx : NULL,
                               c > a->c0 && a->z != NULL ? a->z + tp * ldx
                                                         : NULL,
                               c > a->c0 && a->z != NULL ? a->y0 + tp * ldx
                                                         : NULL,
                               ldx, csz, P, (Pp + 2 * VW - 1) / (2 * VW)
                                      * ((N + ZM_SSD_MR - 1) / ZM_SSD_MR));
            memset(&t, 0, sizeof t);
            t.k1 = m1;
            t.ra1 = 1;
            t.ka1 = ldb;
            t.ldb1 = Pp;
            t.ldc = Pp;
            t.beta = carry;
            t.use_c = carry != 0;
            for (j0 = 0; j0 < Pp; j0 += 2 * VW) {
                const int nv = Pp - j0 >= 2 * VW ? 2 : 1;
                t.ncols = nv * VW;
                t.B1 = dYin + j0;
                for (n0 = 0; n0 < N; n0 += ZM_SSD_MR) {
                    const int mr = (int) zm_ssd_min(ZM_SSD_MR, N - n0);
                    t.A1 = a->C + t0 * ldb + n0;
                    t.C = dS + n0 * Pp + j0;
                    S(zm_ssdb_pf_step)(&pf);
                    S(zm_tile)(mr, nv, &t);
                }
            }
        }
        if (seq != NULL && t0 > 0 && seq[t0] != seq[t0 - 1])
            memset(dS, 0, N * Pp * sizeof(T));
    }
    if (a->c0 == 0 && a->ginit != NULL)
        for (j = 0; j < P; j++)
            for (n = 0; n < N; n++)
                a->ginit[j * N + n] = dS[n * Pp + j];
}

/* ------------------------------------------------------------------------
 * Pass 3: the gradients inside one chunk of one (batch, group), every head
 * of the group in turn (they share C B^T, whose gradient they sum, and the
 * rows of B and C, whose gradients this task owns). Per segment of one
 * sequence (the whole chunk without seq) and head, with Xd = diag(dt) x,
 * E[i, j] = exp(cs_i - cs_j) (j <= i), W = E o C B^T, the entering state
 * S (first segment only), din_i = exp(cs_i), the leaving state's adjoint
 * dS (last segment only), dout_j = exp(cs_last - cs_j):
 *
 *   dXd  = diag(dout) B dS^T + W^T dY
 *   dM   = (dY Xd^T) o E,   dCB += dM,   dc += rowsum(dM o CB) - colsum
 *   Q    = dY S:   gC += diag(din) Q,   dc_i += din_i Q_i . C_i
 *   Q    = Xd dS:  gB += diag(dout) Q,  w_j = dout_j Q_j . B_j,
 *                  dc_j -= w_j,  dc_last += sum w (+ carry <dS, S>)
 *   da_k = sum_{i >= k} dc_i,   ddt_k = dXd_k . x_k + A da_k,
 *   gA += sum_k da_k dt_k,      gx = dt dXd + D dY,   gD += sum dY x
 *
 * and for the group: gC += dCB B, gB += dCB^T C.
 * ------------------------------------------------------------------------ */
typedef struct {
    const T *x;            /* (m, H * P) from the chunk's first row; the */
    const T *dy;           /* head of index r in the group at + r * P; dy */
    T *gx;                 /* may be gx itself (read before written) */
    const T *B, *C;        /* (m, N) rows stride ldb */
    T *gB, *gC;            /* likewise */
    const T *dt, *cs;      /* head r's (m,) at + r * hs */
    ptrdiff_t hs;
    const long long *seq;  /* the chunk's ids, or NULL */
    const T *states;       /* head r's entering state (N, Pp) at + r * sst */
    const T *dstates;      /* head r's leaving adjoint (N, Pp) at + r * dsst */
    ptrdiff_t sst, dsst;
    const T *A;            /* (rep,) */
    const T *Dv;           /* (rep, P) or NULL */
    T *ddt;                /* position l, head r at ddt[l * ldd + r] */
    ptrdiff_t ldd;
    const T *dtr;          /* the steps as given, like ddt, or NULL */
    const T *dtb;          /* (rep,) their bias, or NULL */
    T *gdtb;               /* (rep,) this task's sums of ddt (+=), or NULL */
    T lo, hi;              /* the clamp of the processed steps */
    int softplus;
    T *gA, *gD;            /* (rep,), (rep, P): this task's sums (+=) */
    int has_in, has_out;   /* the entering state / leaving adjoint nonzero */
    ptrdiff_t ldx, ldb, m, cm, rep, P, N;
} S(zm_ssdb_grad_args);

/* d dt' / d dt at the step v = dt + bias: dt' = clamp(softplus(v), lo, hi)
 * (softplus as the forward's process_dt forms it, at every v; without
 * `softplus`, v itself), so the derivative is the logistic of v where
 * lo <= softplus(v) <= hi, else 0 (a step clamped strictly). g is
 * multiplied by the indicator, then the logistic, as a NaN must stay NaN. */
ZM_INLINE T S(zm_ssdb_dstep)(T g, T v, int softplus, T lo, T hi)
{
    T sp = v, ds = 1;
    if (softplus) {
        const T e = ZM_EXP(v < 0 ? v : -v);
        const T r = (T) 1 / ((T) 1 + e);
        sp = ST(zm_ssdb_softplus)(v);
        ds = v >= 0 ? r : e * r;
    }
    g *= (T) (sp >= lo && sp <= hi);
    return softplus ? g * ds : g;
}

/* E and Wt = E o CB on j <= i, zero elsewhere (ms rows, mp columns). */
ZM_INLINE void S(zm_ssdb_decays)(T *restrict E, T *restrict Wt,
                                 const T *restrict CB, const T *restrict cs,
                                 ptrdiff_t ms, ptrdiff_t mp, int clamp)
{
    ptrdiff_t i, j;
    for (i = 0; i < ms; i++) {
        T *restrict Ei = E + i * mp, *restrict Wi = Wt + i * mp;
        const T *restrict cbi = CB + i * mp;
        const T csi = cs[i];
        if (clamp) {
            for (j = 0; j <= i; j++) {
                T d = csi - cs[j];
                T e = ZM_DECAY_EXP(d > 0 ? 0 : d);
                Ei[j] = e;
                Wi[j] = e * cbi[j];
            }
        } else {
            for (j = 0; j <= i; j++) {
                T e = ZM_DECAY_EXP(csi - cs[j]);
                Ei[j] = e;
                Wi[j] = e * cbi[j];
            }
        }
        for (j = i + 1; j < mp; j++) {
            Ei[j] = 0;
            Wi[j] = 0;
        }
    }
}

/* dM <- dM o E on j <= i; dCB += it; dc_i = rowsum_i - colsum_i of
 * dM o E o CB. */
ZM_INLINE void S(zm_ssdb_dm)(T *restrict dM, T *restrict dCB,
                             const T *restrict E, const T *restrict CB,
                             T *restrict dc, T *restrict col, ptrdiff_t ms,
                             ptrdiff_t mp)
{
    ptrdiff_t i, j;
    for (j = 0; j < ms; j++)
        col[j] = 0;
    for (i = 0; i < ms; i++) {
        T *restrict dMi = dM + i * mp, *restrict dCBi = dCB + i * mp;
        const T *restrict Ei = E + i * mp, *restrict cbi = CB + i * mp;
        V acc = {0};
        T tail = 0;
        for (j = 0; j + VW <= i + 1; j += VW) {
            V v = SV(zm_vld)(dMi + j) * SV(zm_vld)(Ei + j);
            V wv = v * SV(zm_vld)(cbi + j);
            SV(zm_vst)(dCBi + j, SV(zm_vld)(dCBi + j) + v);
            SV(zm_vst)(col + j, SV(zm_vld)(col + j) + wv);
            acc += wv;
        }
        for (; j <= i; j++) {
            T v = dMi[j] * Ei[j];
            T wv = v * cbi[j];
            dCBi[j] += v;
            col[j] += wv;
            tail += wv;
        }
        dc[i] = SV(zm_hsum)(acc) + tail;
    }
    for (i = 0; i < ms; i++)
        dc[i] -= col[i];
}

/* dst (P, mp) = src (m, Pp rows)^T, zero in the columns m..mp-1. Eight
 * columns of src at a time, each row's eight read together (a column read
 * element by element costs a load per element from rows Pp apart). */
ZM_INLINE void S(zm_ssdb_transpose)(T *restrict dst, const T *restrict src,
                                    ptrdiff_t m, ptrdiff_t P, ptrdiff_t Pp,
                                    ptrdiff_t mp)
{
    ptrdiff_t i, p = 0;
    for (; p + 8 <= P; p += 8) {
        T *restrict d = dst + p * mp;
        for (i = 0; i < m; i++) {
            const T *restrict r = src + i * Pp + p;
            const T r0 = r[0], r1 = r[1], r2 = r[2], r3 = r[3];
            const T r4 = r[4], r5 = r[5], r6 = r[6], r7 = r[7];
            d[i] = r0;
            d[mp + i] = r1;
            d[2 * mp + i] = r2;
            d[3 * mp + i] = r3;
            d[4 * mp + i] = r4;
            d[5 * mp + i] = r5;
            d[6 * mp + i] = r6;
            d[7 * mp + i] = r7;
        }
    }
    for (; p < P; p++) {
        T *restrict row = dst + p * mp;
        for (i = 0; i < m; i++)
            row[i] = src[i * Pp + p];
    }
    for (p = 0; p < P; p++)
        for (i = m; i < mp; i++)
            dst[p * mp + i] = 0;
}

/* Qt (N, mp) = A (N, Pp rows) Bm (P, mp rows): the columns of the first
 * ms positions (whole vectors). */
ZM_INLINE void S(zm_ssdb_prod_t)(T *Qt, const T *A, const T *Bm,
                                 ptrdiff_t ms, ptrdiff_t N, ptrdiff_t P,
                                 ptrdiff_t Pp, ptrdiff_t mp,
                                 S(zm_ssdb_pf) *pf)
{
    S(zm_tile_args) t;
    ptrdiff_t c0, n0;
    memset(&t, 0, sizeof t);
    t.k1 = P;
    t.ra1 = Pp;
    t.ka1 = 1;
    t.ldb1 = mp;
    t.ldc = mp;
    for (c0 = 0; c0 < ms; c0 += 2 * VW) {
        const int nv = mp - c0 >= 2 * VW ? 2 : 1;
        t.ncols = nv * VW;
        t.B1 = Bm + c0;
        for (n0 = 0; n0 < N; n0 += ZM_SSD_MR) {
            const int mr = (int) zm_ssd_min(ZM_SSD_MR, N - n0);
            t.A1 = A + n0 * Pp;
            t.C = Qt + n0 * mp + c0;
            S(zm_ssdb_pf_step)(pf);
            S(zm_tile)(mr, nv, &t);
        }
    }
}

/* G (N, mp) += diag-scaled Qt: v = e_i Qt[n, i], G[n, i] += v, and
 * acc_i = sum_n v Ot[n, i] (Ot: C^T or B^T). */
ZM_INLINE void S(zm_ssdb_scatter_t)(T *restrict G, T *restrict acc,
                                    const T *restrict Qt,
                                    const T *restrict Ot,
                                    const T *restrict e, ptrdiff_t ms,
                                    ptrdiff_t N, ptrdiff_t mp)
{
    ptrdiff_t i, n;
    for (i = 0; i < ms; i++)
        acc[i] = 0;
    for (n = 0; n < N; n++) {
        const T *restrict q = Qt + n * mp, *restrict o = Ot + n * mp;
        T *restrict g = G + n * mp;
        for (i = 0; i < ms; i++) {
            const T v = e[i] * q[i];
            g[i] += v;
            acc[i] += v * o[i];
        }
    }
}

ZM_SSD_ATTR
static void S(zm_ssdb_grads)(const S(zm_ssdb_grad_args) *a, T *work)
{
    const ptrdiff_t P = a->P, N = a->N, m = a->m, ldx = a->ldx;
    const ptrdiff_t ldb = a->ldb;
    const S(zm_ssdb_ws) w = S(zm_ssdb_layout)(work, a->cm, P, N);
    const ptrdiff_t Pp = w.Pp, Np = w.Np, mp = w.mp;
    S(zm_tile_args) t;
    ptrdiff_t s0 = 0, s1, i, j, n, p, r, i0, j0, c0, n0;

    while (s0 < m) {
        ptrdiff_t ms;
        s1 = m;
        if (a->seq != NULL)
            for (s1 = s0 + 1; s1 < m && a->seq[s1] == a->seq[s0]; s1++)
                ;
        ms = s1 - s0;
        /* the group's operands of the segment: B and C as rows of Np, C B^T
         * (and B^T), C^T */
        for (i = 0; i < ms; i++) {
            memcpy(w.Bp + i * Np, a->B + (s0 + i) * ldb, N * sizeof(T));
            memcpy(w.Cp + i * Np, a->C + (s0 + i) * ldb, N * sizeof(T));
        }
        S(zm_chunk_cb)(w.CB, mp, a->C + s0 * ldb, a->B + s0 * ldb, ldb, ms,
                       N, w.Bt, mp);
        S(zm_ssdb_transpose)(w.Ct, w.Cp, ms, N, Np, mp);
        memset(w.dCB, 0, ms * mp * sizeof(T));
        memset(w.gCt, 0, N * mp * sizeof(T));
        memset(w.gBt, 0, N * mp * sizeof(T));
        for (r = 0; r < a->rep; r++) {
            const int h_in = a->has_in && s0 == 0;
            const int h_out = a->has_out && s1 == m;
            const T *cs = a->cs + r * a->hs + s0, *dt = a->dt + r * a->hs + s0;
            const T *xs = a->x + s0 * ldx + r * P;
            const T *dys = a->dy + s0 * ldx + r * P;
            const T *Sin = a->states + r * a->sst;
            const T *dSt = a->dstates + r * a->dsst;
            const int clamp = S(zm_ssd_nonincreasing)(cs, ms);
            const T Ah = a->A[r];
            T *gD = a->gD != NULL ? a->gD + r * P : NULL;
            T wsum = 0, acc;
            S(zm_ssdb_pf) pf;
            /* the next head's rows of x and dY, fetched meanwhile */
            S(zm_ssdb_pf_init)(&pf, r + 1 < a->rep ? xs + P : NULL,
                               r + 1 < a->rep ? dys + P : NULL, NULL, ldx,
                               ms, P, (Pp + 2 * VW - 1) / (2 * VW)
                                          * ((ms + ZM_SSD_MR - 1) / ZM_SSD_MR));

            if (h_in)
                for (i = 0; i < ms; i++)
                    w.din[i] = S(zm_ssd_decay)(cs[i], clamp);
            if (h_out)
                for (i = 0; i < ms; i++)
                    w.dout[i] = S(zm_ssd_decay)(cs[ms - 1] - cs[i], clamp);
            S(zm_ssdb_decays)(w.E, w.Wt, w.CB, cs, ms, mp, clamp);
            /* Xd = diag(dt) x, dY, and their transposes */
            for (i = 0; i < ms; i++) {
                const T *restrict xr = xs + i * ldx, *restrict yr = dys + i * ldx;
                T *restrict xd = w.Xd + i * Pp, *restrict dyp = w.dYp + i * Pp;
                const T d = dt[i];
                for (p = 0; p < P; p++) {
                    xd[p] = d * xr[p];
                    dyp[p] = yr[p];
                }
                if (gD != NULL)
                    for (p = 0; p < P; p++)
                        gD[p] += yr[p] * xr[p];
            }
            S(zm_ssdb_transpose)(w.XdT, w.Xd, ms, P, Pp, mp);
            if (h_in)
                S(zm_ssdb_transpose)(w.dYT, w.dYp, ms, P, Pp, mp);
            /* dXd = diag(dout) B dS^T + W^T dY */
            memset(&t, 0, sizeof t);
            t.k1 = h_out ? N : 0;
            t.ra1 = Np;
            t.ka1 = 1;
            t.ldb1 = Pp;
            t.ra2 = 1;
            t.ka2 = mp;
            t.ldb2 = Pp;
            t.ldc = Pp;
            for (c0 = 0; c0 < Pp; c0 += 2 * VW) {
                const int nv = Pp - c0 >= 2 * VW ? 2 : 1;
                t.ncols = nv * VW;
                t.B1 = dSt + c0;
                for (j0 = 0; j0 < ms; j0 += ZM_SSD_MR) {
                    const int mr = (int) zm_ssd_min(ZM_SSD_MR, ms - j0);
                    t.A1 = w.Bp + j0 * Np;
                    t.rs = h_out ? w.dout + j0 : NULL;
                    t.k2 = ms - j0;
                    t.A2 = w.Wt + j0 * mp + j0;
                    t.B2 = w.dYp + j0 * Pp + c0;
                    t.C = w.dXd + j0 * Pp + c0;
                    S(zm_ssdb_pf_step)(&pf);
                    S(zm_tile)(mr, nv, &t);
                }
            }
            /* dM = dY Xd^T on j <= i (whole tiles) */
            memset(&t, 0, sizeof t);
            t.k1 = P;
            t.ra1 = Pp;
            t.ka1 = 1;
            t.ldb1 = mp;
            t.ldc = mp;
            for (j0 = 0; j0 < ms; j0 += 2 * VW) {
                const int nv = mp - j0 >= 2 * VW ? 2 : 1;
                t.ncols = nv * VW;
                t.B1 = w.XdT + j0;
                for (i0 = j0 / ZM_SSD_MR * ZM_SSD_MR; i0 < ms; i0 += ZM_SSD_MR) {
                    const int mr = (int) zm_ssd_min(ZM_SSD_MR, ms - i0);
                    t.A1 = w.dYp + i0 * Pp;
                    t.C = w.dM + i0 * mp + j0;
                    S(zm_ssdb_pf_step)(&pf);
                    S(zm_tile)(mr, nv, &t);
                }
            }
            S(zm_ssdb_dm)(w.dM, w.dCB, w.E, w.CB, w.dc, w.col, ms, mp);
            /* the entering state read out by C: (dY S)^T = S^T dY^T */
            if (h_in) {
                S(zm_ssdb_prod_t)(w.Qt, Sin, w.dYT, ms, N, P, Pp, mp, &pf);
                S(zm_ssdb_scatter_t)(w.gCt, w.acc, w.Qt, w.Ct, w.din, ms, N,
                                     mp);
                for (i = 0; i < ms; i++)
                    w.dc[i] += w.acc[i];
            }
            /* the chunk's part of the state leaving it: (Xd dS)^T */
            if (h_out) {
                S(zm_ssdb_prod_t)(w.Qt, dSt, w.XdT, ms, N, P, Pp, mp, &pf);
                S(zm_ssdb_scatter_t)(w.gBt, w.acc, w.Qt, w.Bt, w.dout, ms, N,
                                     mp);
                for (j = 0; j < ms; j++) {
                    w.dc[j] -= w.acc[j];
                    wsum += w.acc[j];
                }
                w.dc[ms - 1] += wsum;
                if (h_in && s0 == 0 && s1 == m) {
                    /* the carry of the entering state through the chunk */
                    const T carry = S(zm_ssd_decay)(cs[ms - 1], clamp);
                    if (carry != 0)
                        w.dc[ms - 1] += carry * S(zm_ssdb_dot)(dSt, Sin,
                                                              N * Pp);
                }
            }
            /* da = reverse cumulative sum of dc; ddt, gA, gx */
            acc = 0;
            for (i = ms - 1; i >= 0; i--) {
                const T *restrict xr = xs + i * ldx;
                const ptrdiff_t at = (s0 + i) * a->ldd + r;
                T g;
                acc += w.dc[i];
                g = S(zm_ssdb_dot)(w.dXd + i * Pp, xr, P) + Ah * acc;
                if (a->dtr != NULL) {
                    g = S(zm_ssdb_dstep)(g, a->dtb != NULL ? a->dtr[at] + a->dtb[r]
                                                           : a->dtr[at],
                                         a->softplus, a->lo, a->hi);
                    if (a->gdtb != NULL)
                        a->gdtb[r] += g;
                }
                a->ddt[at] = g;
                a->gA[r] += acc * dt[i];
            }
            for (i = 0; i < ms; i++) {
                const T *restrict dx = w.dXd + i * Pp, *restrict dyp = w.dYp + i * Pp;
                T *restrict gxr = a->gx + (s0 + i) * ldx + r * P;
                const T d = dt[i];
                if (a->Dv != NULL) {
                    const T *restrict Dr = a->Dv + r * P;
                    for (p = 0; p < P; p++)
                        gxr[p] = d * dx[p] + dyp[p] * Dr[p];
                } else {
                    for (p = 0; p < P; p++)
                        gxr[p] = d * dx[p];
                }
            }
        }
        /* gC = dCB B + gCt^T */
        memset(&t, 0, sizeof t);
        t.ra1 = mp;
        t.ka1 = 1;
        t.ldb1 = Np;
        t.ldc = Np;
        for (c0 = 0; c0 < Np; c0 += 2 * VW) {
            const int nv = Np - c0 >= 2 * VW ? 2 : 1;
            t.ncols = nv * VW;
            t.B1 = w.Bp + c0;
            for (i0 = 0; i0 < ms; i0 += ZM_SSD_MR) {
                const int mr = (int) zm_ssd_min(ZM_SSD_MR, ms - i0);
                t.k1 = i0 + mr;
                t.A1 = w.dCB + i0 * mp;
                t.C = w.Q + i0 * Np + c0;
                S(zm_tile)(mr, nv, &t);
            }
        }
        for (i = 0; i < ms; i++) {
            T *restrict out = a->gC + (s0 + i) * ldb;
            const T *restrict q = w.Q + i * Np;
            for (n = 0; n < N; n++)
                out[n] = q[n] + w.gCt[n * mp + i];
        }
        /* gB^T = gBt + C^T dCB (the rows i >= j of dCB) */
        memset(&t, 0, sizeof t);
        t.ra1 = 1;
        t.ka1 = Np;
        t.ldb1 = mp;
        t.ldc = mp;
        t.beta = 1;
        t.use_c = 1;
        for (j0 = 0; j0 < ms; j0 += 2 * VW) {
            const int nv = mp - j0 >= 2 * VW ? 2 : 1;
            t.ncols = nv * VW;
            t.k1 = ms - j0;
            t.B1 = w.dCB + j0 * mp + j0;
            for (n0 = 0; n0 < N; n0 += ZM_SSD_MR) {
                const int mr = (int) zm_ssd_min(ZM_SSD_MR, N - n0);
                t.A1 = w.Cp + j0 * Np + n0;
                t.C = w.gBt + n0 * mp + j0;
                S(zm_tile)(mr, nv, &t);
            }
        }
        for (j = 0; j < ms; j++) {
            T *restrict out = a->gB + (s0 + j) * ldb;
            for (n = 0; n < N; n++)
                out[n] = w.gBt[n * mp + j];
        }
        s0 = s1;
    }
}

/* ------------------------------------------------------------------------
 * The tasks of one call, from the arrays of zm_ssdb_problem (see
 * _ssdbwd.h for their layouts).
 * ------------------------------------------------------------------------ */

/* C B^T of chunk c of (batch, group): task (b * G + g) * nch + c. */
static void S(zm_ssdb_cb_task)(const zm_ssdb_problem *pr, ptrdiff_t task,
                               T *work)
{
    const ptrdiff_t G = pr->G, N = pr->N, L = pr->L, nch = pr->nch;
    const ptrdiff_t b = task / (G * nch), g = (task / nch) % G;
    const ptrdiff_t c = task % nch, t0 = c * pr->csz;
    const ptrdiff_t off = ((b * L + t0) * G + g) * N;
    S(zm_ssd_cb)((T *) pr->cb + task * pr->cm * pr->mp, pr->mp,
                 (const T *) pr->C + off, (const T *) pr->B + off, G * N,
                 zm_ssd_min(pr->csz, L - t0), N, work);
}

/* The forward walk of (batch, head): task b * H + h. */
static void S(zm_ssdb_fwd_task)(const zm_ssdb_problem *pr, ptrdiff_t task,
                                T *work)
{
    const ptrdiff_t H = pr->H, L = pr->L, P = pr->P, N = pr->N;
    const ptrdiff_t G = pr->G, b = task / H, h = task % H;
    const ptrdiff_t g = h / (H / G);
    const ptrdiff_t xo = (b * L * H + h) * P, bo = (b * L * G + g) * N;
    S(zm_ssdb_fwd_args) a;
    a.x = (const T *) pr->x + xo;
    a.y0 = pr->y0 != NULL ? (T *) pr->y0 + xo : NULL;
    a.y = pr->y != NULL ? (T *) pr->y + xo : NULL;
    a.B = (const T *) pr->B + bo;
    a.C = (const T *) pr->C + bo;
    a.dt = (const T *) pr->dt + task * pr->Lp;
    a.cs = (const T *) pr->cs + task * pr->Lp;
    a.seq = pr->seq != NULL ? pr->seq + b * L : NULL;
    a.CB = pr->cb != NULL
               ? (const T *) pr->cb + (b * G + g) * pr->nch * pr->cm * pr->mp
               : NULL;
    a.cbstride = pr->cm * pr->mp;
    a.init = pr->init != NULL ? (const T *) pr->init + task * P * N : NULL;
    a.last = (T *) pr->last + task * P * N;
    a.states = (T *) pr->states + task * pr->nch * N * pr->Pp;
    a.Dv = pr->D != NULL ? (const T *) pr->D + h * P : NULL;
    a.z = pr->z != NULL ? (const T *) pr->z + xo : NULL;
    a.ldx = H * P;
    a.ldb = G * N;
    a.L = L;
    a.P = P;
    a.N = N;
    a.csz = pr->csz;
    a.c0 = pr->c0;
    a.c1 = pr->c1;
    S(zm_ssdb_forward)(&a, work);
}

/* The reverse walk of (batch, head): task b * H + h. */
static void S(zm_ssdb_adj_task)(const zm_ssdb_problem *pr, ptrdiff_t task,
                                T *work)
{
    const ptrdiff_t H = pr->H, L = pr->L, P = pr->P, N = pr->N;
    const ptrdiff_t G = pr->G, b = task / H, h = task % H;
    const ptrdiff_t g = h / (H / G);
    const ptrdiff_t xo = (b * L * H + h) * P, bo = (b * L * G + g) * N;
    S(zm_ssdb_adj_args) a;
    a.gy = (const T *) pr->gy + xo;
    a.z = pr->z != NULL ? (const T *) pr->z + xo : NULL;
    a.y0 = pr->z != NULL ? (const T *) pr->y0c + xo : NULL;
    a.dy = pr->z != NULL ? (T *) pr->gx + xo : NULL;
    a.gz = pr->z != NULL ? (T *) pr->gz + xo : NULL;
    a.C = (const T *) pr->C + bo;
    a.cs = (const T *) pr->cs + task * pr->Lp;
    a.seq = pr->seq != NULL ? pr->seq + b * L : NULL;
    a.gfinal = pr->gfinal != NULL ? (const T *) pr->gfinal + task * P * N
                                  : NULL;
    a.dstates = (T *) pr->dstates + task * pr->blk * N * pr->Pp;
    a.run = (T *) pr->run + task * N * pr->Pp;
    a.c0 = pr->c0;
    a.c1 = pr->c1;
    a.ginit = pr->ginit != NULL ? (T *) pr->ginit + task * P * N : NULL;
    a.ldx = H * P;
    a.ldb = G * N;
    a.L = L;
    a.P = P;
    a.N = N;
    a.csz = pr->csz;
    S(zm_ssdb_adjoint)(&a, work);
}

/* The gradients inside chunk c = c0 + k of (batch, group), c0 <= c < c1:
 * task (b * G + g) * (c1 - c0) + k. */
static void S(zm_ssdb_grad_task)(const zm_ssdb_problem *pr, ptrdiff_t task,
                                 T *work)
{
    const ptrdiff_t H = pr->H, L = pr->L, P = pr->P, N = pr->N;
    const ptrdiff_t G = pr->G, nch = pr->nch, rep = H / G;
    const ptrdiff_t nk = pr->c1 - pr->c0;
    const ptrdiff_t b = task / (G * nk), g = (task / nk) % G;
    const ptrdiff_t k = task % nk, c = pr->c0 + k, t0 = c * pr->csz;
    const ptrdiff_t m = zm_ssd_min(pr->csz, L - t0), h0 = g * rep;
    const ptrdiff_t gt = (b * G + g) * nch + c;   /* the per-task sums */
    const ptrdiff_t xo = ((b * L + t0) * H + h0) * P;
    const ptrdiff_t bo = ((b * L + t0) * G + g) * N;
    const long long *seq = pr->seq != NULL ? pr->seq + b * L : NULL;
    S(zm_ssdb_grad_args) a;
    a.x = (const T *) pr->x + xo;
    a.dy = pr->z != NULL ? (const T *) pr->gx + xo : (const T *) pr->gy + xo;
    a.gx = (T *) pr->gx + xo;
    a.B = (const T *) pr->B + bo;
    a.C = (const T *) pr->C + bo;
    a.gB = (T *) pr->gB + bo;
    a.gC = (T *) pr->gC + bo;
    a.dt = (const T *) pr->dt + (b * H + h0) * pr->Lp + t0;
    a.cs = (const T *) pr->cs + (b * H + h0) * pr->Lp + t0;
    a.hs = pr->Lp;
    a.seq = seq != NULL ? seq + t0 : NULL;
    a.states = (const T *) pr->states + ((b * H + h0) * nch + c) * N * pr->Pp;
    a.dstates = (const T *) pr->dstates
                + ((b * H + h0) * pr->blk + k) * N * pr->Pp;
    a.sst = nch * N * pr->Pp;
    a.dsst = pr->blk * N * pr->Pp;
    a.A = (const T *) pr->A + h0;
    a.Dv = pr->D != NULL ? (const T *) pr->D + h0 * P : NULL;
    a.ddt = (T *) pr->ddt + (b * L + t0) * H + h0;
    a.ldd = H;
    a.dtr = pr->dtr != NULL ? (const T *) pr->dtr + (b * L + t0) * H + h0
                            : NULL;
    a.dtb = pr->dtb != NULL ? (const T *) pr->dtb + h0 : NULL;
    a.gdtb = pr->gdtb != NULL ? (T *) pr->gdtb + gt * rep : NULL;
    a.lo = (T) pr->lo;
    a.hi = (T) pr->hi;
    a.softplus = pr->softplus;
    a.gA = (T *) pr->gA + gt * rep;
    a.gD = pr->gD != NULL ? (T *) pr->gD + gt * rep * P : NULL;
    a.has_in = c == 0 ? pr->has_init
                      : !(seq != NULL && seq[t0] != seq[t0 - 1]);
    a.has_out = c == nch - 1 ? pr->gfinal != NULL
                             : !(seq != NULL && seq[t0 + m] != seq[t0 + m - 1]);
    a.ldx = H * P;
    a.ldb = G * N;
    a.m = m;
    a.cm = pr->cm;
    a.rep = rep;
    a.P = P;
    a.N = N;
    S(zm_ssdb_grads)(&a, work);
}
