"""The compiled backward kernels of zilla_muf._vjp_kernels, against plain
Python loops, with 1 and 2 threads, both precisions and empty shapes."""

import numpy as np
import pytest

import zilla_muf
from zilla_muf import _vjp_kernels


def _segsum_grad_loop(c):
    """gx_t = sum_{i >= t} sum_{j < t} c[i, j], summed term by term."""
    n = c.shape[-1]
    g = np.zeros(c.shape[:-1])
    for idx in np.ndindex(c.shape[:-2]):
        for t in range(n):
            g[idx + (t,)] = sum(float(c[idx + (i, j)])
                                for i in range(t, n) for j in range(t))
    return g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 33])
def test_segsum_backward_kernel(dtype, n):
    rng = np.random.default_rng(n)
    c = rng.standard_normal((3, n, n)).astype(dtype)
    want = _segsum_grad_loop(c)
    for threads in (1, 2):
        g = np.full((3, n), np.nan, dtype)
        _vjp_kernels.segsum_backward(c, g, threads)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(g, want, rtol=tol, atol=tol * max(n, 1) ** 2)
    g1 = np.empty((3, n), dtype)
    g2 = np.empty((3, n), dtype)
    _vjp_kernels.segsum_backward(c, g1, 1)
    _vjp_kernels.segsum_backward(c, g2, 2)
    np.testing.assert_array_equal(g1, g2)


def test_segsum_backward_kernel_shapes_checked():
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.segsum_backward(np.zeros((2, 3, 3)), np.zeros((2, 4)), 1)
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.segsum_backward(np.zeros((2, 3, 4)), np.zeros((2, 3)), 1)


def test_segsum_pullback_ignores_upper_triangle_and_axis():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2))
    c = rng.standard_normal((2, 6, 6))
    _, pullback = zilla_muf.vjp(zilla_muf.segsum, x, axis=0)
    g = pullback(c)["x"]
    np.testing.assert_allclose(g, _segsum_grad_loop(c).T, rtol=1e-12, atol=1e-12)
    c2 = c + np.triu(np.full((6, 6), 1e3))      # the diagonal and above
    np.testing.assert_allclose(pullback(c2)["x"], g, rtol=1e-12, atol=1e-9)


def _semiseparable_grads_dense(a, B, C, x, c):
    """Gradients of y = M x, M_ij = C_i . B_j prod_{j<t<=i} a_t, from the
    dense matrix and its derivatives, one row, float64."""
    n = a.shape[0]
    L = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):
            L[i, j] = np.prod(a[j + 1:i + 1])
    M = (C @ B.T) * L
    gx = M.T @ c
    G = np.outer(c, x) * L                    # dL/d(C_i . B_j)
    gC = G @ B
    gB = G.T @ C
    W = np.outer(c, x) * (C @ B.T)            # dL/dL_ij
    ga = np.zeros(n)
    for t in range(n):
        for i in range(t, n):
            for j in range(t):
                ga[t] += W[i, j] * L[i, j] / a[t]
    return ga, gB, gC, gx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_semiseparable_backward_kernel(dtype):
    rng = np.random.default_rng(3)
    rows, n, r = 3, 7, 2
    a = rng.uniform(0.4, 0.95, (rows, n))
    B, C = rng.standard_normal((2, rows, n, r))
    x, c = rng.standard_normal((2, rows, n))
    outs = {}
    for threads in (1, 2):
        ga, gx = np.empty((2, rows, n), dtype)
        gB, gC = np.empty((2, rows, n * r), dtype)
        args = [np.ascontiguousarray(v, dtype=dtype).reshape(rows, -1)
                for v in (a, B, C, x, c)]
        _vjp_kernels.semiseparable_backward(*args, ga, gB, gC, gx,
                                            np.empty((rows, r), dtype), threads)
        outs[threads] = (ga, gB, gC, gx)
    for u, v in zip(outs[1], outs[2]):
        np.testing.assert_array_equal(u, v)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for row in range(rows):
        want = _semiseparable_grads_dense(a[row], B[row], C[row], x[row], c[row])
        got = [g[row] for g in outs[1]]
        for w, g in zip(want, got):
            np.testing.assert_allclose(g.reshape(w.shape), w, rtol=tol, atol=tol)


def test_semiseparable_backward_kernel_shapes_checked():
    z = np.zeros
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.semiseparable_backward(z((2, 3)), z((2, 6)), z((2, 6)), z((2, 3)),
                                            z((2, 3)), z((2, 3)), z((2, 6)), z((2, 5)),
                                            z((2, 3)), z((2, 2)), 1)


def test_semiseparable_pullback_float32_matches_float64():
    rng = np.random.default_rng(4)
    kw = dict(a=rng.uniform(0.5, 1, (2, 50)), B=rng.standard_normal((2, 50, 4)),
              C=rng.standard_normal((50, 4)), x=rng.standard_normal((3, 1, 50)))
    c = rng.standard_normal((3, 2, 50))
    g64 = zilla_muf.vjp(zilla_muf.semiseparable_matvec, **kw)[1](c)
    kw32 = {k: v.astype(np.float32) for k, v in kw.items()}
    g32 = zilla_muf.vjp(zilla_muf.semiseparable_matvec, **kw32)[1](c.astype(np.float32))
    for k in g64:
        assert g32[k].dtype == np.float32 and g32[k].shape == np.shape(kw[k])
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4,
                                   atol=1e-4 * np.abs(g64[k]).max())


def _fd_zoh_grads(lam, B, d, cA, cB, h=1e-6):
    """Gradients of Re<c, (Abar, Bbar)> by central differences of a float64
    NumPy ZOH (exp and (e^z - 1)/lambda), each complex entry perturbed in
    its real and imaginary parts."""
    def loss(lam, B, d):
        z = lam * d
        Abar = np.exp(z)
        Bbar = (np.exp(z) - 1) / lam * B
        return np.sum((np.conj(cA) * Abar + np.conj(cB) * Bbar).real, axis=())
    g = {}
    for name, v in (("A", lam), ("B", B)):
        gr = np.zeros_like(v)
        for i in range(v.size):
            for unit in (1, 1j):
                e = np.zeros_like(v)
                e.flat[i] = unit * h
                args = dict(lam=lam, B=B, d=d)
                key = "lam" if name == "A" else "B"
                up = loss(**{**args, key: v + e})
                dn = loss(**{**args, key: v - e})
                gr.flat[i] += unit * (up - dn).flat[i] / (2 * h)
        g[name] = gr
    gd = np.zeros_like(d)
    for i in range(d.size):
        e = np.zeros_like(d)
        e.flat[i] = h
        gd.flat[i] = (loss(lam, B, d + e) - loss(lam, B, d - e)).flat[i] / (2 * h)
    g["delta"] = gd
    return g


def test_diag_discretize_backward_across_series_boundary():
    # |z| just below and above 1, where psi and phi1 switch from the series
    # to the closed forms, and small |z| (the removable point)
    rng = np.random.default_rng(8)
    r = np.array([0.999, 1.001, 0.5, 2.0, 1e-3, 0.98, 1.02])
    ang = rng.uniform(0, 2 * np.pi, r.size)
    d = rng.uniform(0.2, 1.0, r.size)
    lam = r * np.exp(1j * ang) / d
    B = rng.standard_normal(r.size) + 1j * rng.standard_normal(r.size)
    cA = rng.standard_normal(r.size) + 1j * rng.standard_normal(r.size)
    cB = rng.standard_normal(r.size) + 1j * rng.standard_normal(r.size)
    want = _fd_zoh_grads(lam, B, d, cA, cB)
    _, pullback = zilla_muf.vjp(zilla_muf.zoh_discretize, lam, B, d)
    got = pullback((cA, cB))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-7, atol=1e-8)
    _, pullback2 = zilla_muf.vjp(zilla_muf.zoh_discretize, lam, B, d, workers=2)
    got2 = pullback2((cA, cB))
    for k in got:
        np.testing.assert_array_equal(got[k], got2[k])


@pytest.mark.parametrize("fun", [zilla_muf.zoh_discretize, zilla_muf.bilinear_discretize])
def test_diag_discretize_backward_complex64(fun):
    rng = np.random.default_rng(9)
    lam = -rng.uniform(0.1, 1, 40) + 1j * rng.uniform(-3, 3, 40)
    B = rng.standard_normal(40) + 1j * rng.standard_normal(40)
    d = rng.uniform(0.01, 0.9, 40)
    ct = tuple(rng.standard_normal(40) + 1j * rng.standard_normal(40) for _ in range(2))
    g64 = zilla_muf.vjp(fun, lam, B, d)[1](ct)
    g32 = zilla_muf.vjp(fun, lam.astype(np.complex64), B.astype(np.complex64),
                        d.astype(np.float32))[1](tuple(c.astype(np.complex64) for c in ct))
    for k in g64:
        assert g32[k].dtype == (np.float32 if k == "delta" else np.complex64)
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4,
                                   atol=1e-5 * np.abs(g64[k]).max())


def test_diag_discretize_backward_shapes_checked():
    z = np.zeros
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.diag_discretize_backward(1, 0.0, z(6), z(6), z(2), z(6), z(6),
                                              z(6), z(6), z(2), 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_silu_backward_kernel(dtype):
    rng = np.random.default_rng(10)
    x = np.concatenate([rng.standard_normal(3000) * 6,
                        [0.0, -0.0, np.inf, -np.inf, 40.0, -40.0, 800.0, -800.0]])
    c = rng.standard_normal(x.size)
    xl = x.astype(np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        s = 1 / (1 + np.exp(-xl))
        want = c * (s * (1 + xl * (1 - s)))
    want[np.isposinf(x)] = c[np.isposinf(x)]
    want[np.isneginf(x)] = 0
    want = want.astype(np.float64)
    outs = []
    for threads in (1, 2):
        g = np.full(x.size, np.nan, dtype)
        _vjp_kernels.silu_backward(x.astype(dtype), c.astype(dtype), g, threads)
        outs.append(g)
    np.testing.assert_array_equal(outs[0], outs[1])
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(outs[0], want, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.silu_backward(np.zeros(3), np.zeros(2), np.zeros(3), 1)


def _scan_grads_loop(a, h, c, cf, h0):
    """Pullback of h_t = a_t h_{t-1} + b_t along axis 1 of (P, n, Q) by a
    plain Python loop, float64."""
    P, n, Q = a.shape
    ga, gb = np.zeros((2, P, n, Q))
    gh0 = np.zeros((P, Q))
    for p in range(P):
        for q in range(Q):
            g = 0.0 if cf is None else float(cf[p, q])
            for t in range(n - 1, -1, -1):
                g = float(c[p, t, q]) + (g if t == n - 1 else float(a[p, t + 1, q]) * g)
                gb[p, t, q] = g
                prev = (0.0 if h0 is None else float(h0[p, q])) if t == 0 else h[p, t - 1, q]
                ga[p, t, q] = g * prev
            if n:
                gh0[p, q] = a[p, 0, q] * gb[p, 0, q]
    return ga, gb, gh0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 5, 3), (3, 1, 4), (1, 6, 1), (0, 3, 2), (2, 0, 2)])
@pytest.mark.parametrize("with_extras", [False, True])
def test_scan_backward_kernel(dtype, shape, with_extras):
    rng = np.random.default_rng(11)
    P, n, Q = shape
    a = rng.uniform(0.3, 1.0, shape)
    h, c = rng.standard_normal((2,) + shape)
    cf = rng.standard_normal((P, Q)) if with_extras else None
    h0 = rng.standard_normal((P, Q)) if with_extras else None
    ga_w, gb_w, gh0_w = _scan_grads_loop(a, h, c, cf, h0)
    outs = []
    empty = np.empty((0, 0), dtype)
    for threads in (1, 2):
        ga, gb = np.full((2,) + shape, np.nan, dtype)
        gh0 = np.full((P, Q), np.nan, dtype)
        _vjp_kernels.scan_backward(
            a.astype(dtype), h.astype(dtype), c.astype(dtype),
            empty if cf is None else cf.astype(dtype),
            empty if h0 is None else h0.astype(dtype),
            cf is not None, h0 is not None, ga, gb, gh0, threads)
        outs.append((ga, gb, gh0))
    for u, v in zip(*outs):
        np.testing.assert_array_equal(u, v)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    if n == 0:
        gh0_w = cf if cf is not None else np.zeros((P, Q))
    for got, want in zip(outs[0], (ga_w, gb_w, gh0_w)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_scan_backward_kernel_shapes_checked():
    z = np.zeros
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.scan_backward(z((2, 3, 4)), z((2, 3, 4)), z((2, 3, 4)), z((2, 5)),
                                   z((0, 0)), True, False, z((2, 3, 4)), z((2, 3, 4)),
                                   z((2, 4)), 1)


@pytest.mark.parametrize("zoh", [1, 0])
def test_diag_discretize_backward_shared_steps(zoh):
    # delta shared by runs of 5 elements: the same as delta repeated, with
    # its gradient summed over each run
    rng = np.random.default_rng(12)
    n, rep = 30, 5
    lam, B, cA, cB = (rng.standard_normal(n) + 1j * rng.standard_normal(n)
                      for _ in range(4))
    d = rng.uniform(0.05, 0.9, n // rep)
    out = []
    for dd in (d, np.repeat(d, rep)):
        gA, gB = np.empty((2, n), complex)
        gd = np.empty(dd.size)
        f = [v.view(np.float64) for v in (lam, B)]
        _vjp_kernels.diag_discretize_backward(zoh, 0.5, *f, dd, cA.view(np.float64),
                                              cB.view(np.float64), gA.view(np.float64),
                                              gB.view(np.float64), gd, 2)
        out.append((gA, gB, gd))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
    np.testing.assert_allclose(out[0][2], out[1][2].reshape(-1, rep).sum(1),
                               rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.diag_discretize_backward(zoh, 0.5, lam.view(np.float64),
                                              B.view(np.float64), d[:4],
                                              cA.view(np.float64), cB.view(np.float64),
                                              gA.view(np.float64), gB.view(np.float64),
                                              np.empty(4), 1)


@pytest.mark.parametrize("real_v", [True, False])
def test_vandermonde_backward_kernel(real_v):
    # several pole groups and power blocks (N = 70, L = 600), a zero pole
    rng = np.random.default_rng(13)
    rows, N, L = 2, 70, 600
    p = np.exp(-rng.uniform(0, 0.02, (rows, N)) + 1j * rng.uniform(-3, 3, (rows, N)))
    p[0, 5] = 0
    v = rng.standard_normal((rows, L))
    if not real_v:
        v = v + 1j * rng.standard_normal((rows, L))
    l = np.arange(L)
    want0 = np.zeros((rows, N), complex)
    want1 = np.zeros((rows, N), complex)
    for r in range(rows):
        for i in range(N):
            pw = np.ones(L, complex)
            pw[1:] = np.cumprod(np.full(L - 1, p[r, i]))    # p^l
            want0[r, i] = np.sum(pw * v[r])
            want1[r, i] = np.sum(l[1:] * pw[:-1] * v[r, 1:])
    outs = []
    for threads in (1, 2):
        s0 = np.empty((rows, N), complex)
        s1 = np.empty((rows, N), complex)
        V = v if real_v else v.view(np.float64)
        _vjp_kernels.vandermonde_backward(p.view(np.float64), np.ascontiguousarray(V),
                                          real_v, s0.view(np.float64),
                                          s1.view(np.float64), threads)
        outs.append((s0, s1))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    np.testing.assert_allclose(outs[0][0], want0, rtol=1e-10,
                               atol=1e-10 * np.abs(want0).max())
    np.testing.assert_allclose(outs[0][1], want1, rtol=1e-10,
                               atol=1e-10 * np.abs(want1).max())
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.vandermonde_backward(p.view(np.float64), np.zeros((3, L)), True,
                                          s0.view(np.float64), s1.view(np.float64), 1)


def test_vandermonde_pullback_long_against_dense():
    # the fused pullback across blocks, against the dense Vandermonde matrix
    rng = np.random.default_rng(14)
    N, L = 40, 700
    p = 0.995 * np.exp(1j * rng.uniform(-2, 2, N))
    w = rng.standard_normal(N) + 1j * rng.standard_normal(N)
    c = rng.standard_normal(L)
    V = p[None, :] ** np.arange(L)[:, None]                 # (L, N)
    dV = np.zeros_like(V)
    dV[1:] = np.arange(1, L)[:, None] * p[None, :] ** np.arange(L - 1)[:, None]
    g = zilla_muf.vjp(zilla_muf.vandermonde_matvec, p, w, L, conj_pairs=True)[1](c)
    # loss = sum c * 2 Re(V w): gw = 2 conj(V^T c), gp = 2 conj(w * dV^T c)
    np.testing.assert_allclose(g["weights"], 2 * np.conj(V.T @ c), rtol=1e-9)
    np.testing.assert_allclose(g["poles"], 2 * np.conj(w * (dV.T @ c)), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64,
                                   np.complex128])
@pytest.mark.parametrize("shape", [(5, 8300), (4, 1), (1, 9), (0, 4), (3, 0)])
@pytest.mark.parametrize("rev", [False, True])
def test_scan_backward_rows_kernels(dtype, shape, rev):
    # the row kernels against the (P, n, Q = 1) kernel's float64 loop (the
    # real case, mirrored for a scan in reverse), conjugates for complex;
    # one and two threads agree bit for bit
    rng = np.random.default_rng(12)
    P, n = shape
    complex_ = np.dtype(dtype).kind == "c"

    def r(*s):
        x = rng.uniform(0.3, 1.0, s)
        return x * np.exp(1j * rng.uniform(-1, 1, s)) if complex_ else x

    a, h, c = (r(P, n).astype(dtype) for _ in range(3))
    cf, h0 = (r(P).astype(dtype) for _ in range(2))
    flip = (lambda x: x[:, ::-1]) if rev else (lambda x: x)
    # the loop oracle takes real inputs: for complex, run it on complex128
    # values through the identity ga = g conj(h_prev), decays conjugated
    A = np.conj(flip(a)).astype(np.complex128)[:, :, None]
    ga_w, gb_w, gh0_w = _scan_grads_loop_c(A, np.conj(flip(h))[:, :, None],
                                           flip(c)[:, :, None], cf[:, None],
                                           np.conj(h0)[:, None])
    rdt = np.empty(0, dtype).real.dtype
    kern = (_vjp_kernels.cscan_backward_rows if complex_
            else _vjp_kernels.scan_backward_rows)

    def view(x):
        x = np.ascontiguousarray(x)
        return x.view(rdt) if complex_ else x

    outs = []
    for threads in (1, 2):
        ga, gb = np.full((2, P, n), np.nan, dtype)
        gh0 = np.full((P, 1) if complex_ else (P,), np.nan, dtype)
        st = (lambda x: view(x.reshape(P, 1))) if complex_ else view
        kern(view(a), view(h), view(c), st(cf), st(h0), True, True, rev,
             view(ga), view(gb), st(gh0), threads)
        outs.append((ga, gb, gh0.reshape(P)))
    for u, v in zip(*outs):
        np.testing.assert_array_equal(u, v)
    if n == 0 or P == 0:
        return
    tol = 1e-4 if dtype in (np.float32, np.complex64) else 1e-12
    want = (flip(ga_w[:, :, 0]), flip(gb_w[:, :, 0]), gh0_w[:, 0])
    for got, w in zip(outs[0], want):
        w = w if complex_ else w.real
        np.testing.assert_allclose(got, w, rtol=tol, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("rev", [False, True])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("extras", [False, True])
def test_cscan_backward_rows_streaming_stores(dtype, rev, offset, extras):
    # the streaming stores write what the plain ones do, bit for bit, also
    # into outputs that start off a 16-byte boundary (offset 1: 8 bytes
    # off), and both match the float64 loop; five rows (a group of four and
    # a partial one), 2500 steps (across the blocks of 1024 steps), with
    # and without the final cotangent and h0. The states h sit half a page
    # from the outputs, where the kernel streams (it keeps plain stores
    # for rows whose loads would alias the stores in the page)
    rng = np.random.default_rng(13)
    P, n = 5, 2500
    rdt = np.empty(0, dtype).real.dtype

    def r(*s):
        return (rng.uniform(0.3, 1.0, s) * np.exp(1j * rng.uniform(-1, 1, s))).astype(dtype)

    def at(page_offset, x=None):
        # a (P, n) array at this byte offset in a page
        nb = P * n * np.dtype(dtype).itemsize
        raw = np.empty(nb + 8192, np.uint8)
        o = (page_offset - raw.ctypes.data) % 4096
        y = raw[o:o + nb].view(dtype).reshape(P, n)
        if x is not None:
            y[...] = x
        return y

    a, c = (r(P, n) for _ in range(2))
    h = at(0, r(P, n))
    cf, h0 = r(P), r(P)
    flip = (lambda x: x[:, ::-1]) if rev else (lambda x: x)
    A = np.conj(flip(a)).astype(np.complex128)[:, :, None]
    ga_w, gb_w, gh0_w = _scan_grads_loop_c(
        A, np.conj(flip(h))[:, :, None], flip(c)[:, :, None],
        (cf if extras else np.zeros(P))[:, None],
        (np.conj(h0) if extras else np.zeros(P))[:, None])
    v = lambda x: x.view(rdt)
    st = lambda x: v(x.reshape(P, 1))
    none = np.empty((0, 2), rdt)
    outs = []
    for stream in (False, True):
        ga, gb = (at(2048 + 8 * offset, np.nan) for _ in range(2))
        gh0 = np.full((P, 1), np.nan, dtype)
        _vjp_kernels.cscan_backward_rows(
            v(a), v(h), v(c), st(cf) if extras else none, st(h0) if extras else none,
            extras, extras, rev, v(ga), v(gb), v(gh0), 1, stream)
        outs.append((ga.copy(), gb.copy(), gh0.reshape(P)))
    for u, w in zip(*outs):
        np.testing.assert_array_equal(u, w)
    tol = 1e-4 if dtype == np.complex64 else 1e-12
    want = (flip(ga_w[:, :, 0]), flip(gb_w[:, :, 0]), gh0_w[:, 0])
    for got, w in zip(outs[1], want):
        np.testing.assert_allclose(got, w, rtol=tol, atol=tol * np.abs(w).max())


def _scan_grads_loop_c(A, hc, c, cf, h0c):
    """The float64/complex128 loop of the scan's pullback with the adjoint's
    decays A (already conjugated) and conjugated states hc, time in the
    middle: g_t = c_t + A_{t+1} g_{t+1}, ga_t = g_t hc_{t-1}."""
    P, n, Q = A.shape
    ga = np.zeros((P, n, Q), np.complex128)
    gb = np.zeros((P, n, Q), np.complex128)
    gh0 = np.zeros((P, Q), np.complex128)
    for p in range(P):
        for q in range(Q):
            g = cf[p, q]
            for t in range(n - 1, -1, -1):
                g = c[p, t, q] + (A[p, t + 1, q] * g if t < n - 1 else g)
                gb[p, t, q] = g
                ga[p, t, q] = g * (h0c[p, q] if t == 0 else hc[p, t - 1, q])
            if n:
                gh0[p, q] = A[p, 0, q] * gb[p, 0, q]
    return ga, gb, gh0


def test_scan_backward_rows_shapes_checked():
    z = np.zeros
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.scan_backward_rows(z((2, 3)), z((2, 3)), z((2, 4)), z(2), z(0),
                                        True, False, False, z((2, 3)), z((2, 3)),
                                        z(2), 1)
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.cscan_backward_rows(z((2, 6)), z((2, 6)), z((2, 6)), z((2, 2)),
                                         z((0, 2)), True, False, False, z((2, 6)),
                                         z((2, 6)), z((2, 1)), 1)
    with pytest.raises(ValueError, match="inconsistent"):
        _vjp_kernels.log_softmax_backward(z((2, 3)), z((2, 4)), z((2, 3)), 1)
