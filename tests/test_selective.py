"""zilla_muf.selective: selective scan and causal convolution against plain loops."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import REAL_DTYPES, assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from zilla_muf import causal_conv1d, causal_conv1d_update, selective_scan

# ---------------------------------------------------------------------------
# Oracles: float64 / complex128 loops, one (batch, channel, step) at a time
# ---------------------------------------------------------------------------


def _row(X, b, d, t, dim):
    """The dstate-vector of B or C used by channel d of batch b at step t."""
    if X.ndim == 2:
        return X[d]
    if X.ndim == 3:
        return X[b, :, t]
    per_group = dim // X.shape[1]
    return X[b, d // per_group, :, t]


def scan_oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                delta_softplus=False, initial_state=None):
    u = np.asarray(u, np.float64)
    delta = np.asarray(delta, np.float64)
    cplx = np.iscomplexobj(A)
    ct = np.complex128 if cplx else np.float64
    A = np.asarray(A, ct)
    B = np.asarray(B, ct)
    C = np.asarray(C, ct)
    batch, dim, L = u.shape
    N = A.shape[1]
    h = np.zeros((batch, dim, N), ct) if initial_state is None \
        else np.array(initial_state, ct)
    y = np.zeros((batch, dim, L))
    for b in range(batch):
        for d in range(dim):
            for t in range(L):
                dt = delta[b, d, t]
                if delta_bias is not None:
                    dt = dt + float(delta_bias[d])
                if delta_softplus and dt <= 20:
                    dt = np.log1p(np.exp(dt))
                h[b, d] = (np.exp(dt * A[d]) * h[b, d]
                           + dt * u[b, d, t] * _row(B, b, d, t, dim))
                s = np.sum(_row(C, b, d, t, dim) * h[b, d])
                v = 2 * s.real if cplx else s
                if D is not None:
                    v += float(D[d]) * u[b, d, t]
                if z is not None:
                    zz = float(z[b, d, t])
                    v *= zz / (1 + np.exp(-zz))
                y[b, d, t] = v
    return y, h


def conv_oracle(x, weight, bias=None, initial_states=None, silu=False):
    x = np.asarray(x, np.float64)
    batch, dim, L = x.shape
    W = weight.shape[1]
    init = np.zeros((batch, dim, W - 1)) if initial_states is None else initial_states
    out = np.empty((batch, dim, L))
    for b in range(batch):
        for d in range(dim):
            full = np.concatenate([init[b, d], x[b, d]])
            # np.convolve flips its second argument: weight[-1] meets x[t]
            c = np.convolve(full, weight[d, ::-1], mode="full")[W - 1:W - 1 + L]
            if bias is not None:
                c = c + bias[d]
            out[b, d] = c / (1 + np.exp(-c)) if silu else c
    return out


def make(rng, dtype, batch=2, dim=4, N=3, L=9, b_kind=4, c_kind=3,
         ngroups=2, cplx=False, cplx_bc=False):
    u = rng.standard_normal((batch, dim, L)).astype(dtype)
    delta = rng.uniform(0.05, 1.0, (batch, dim, L)).astype(dtype)
    A = -rng.uniform(0.2, 2.0, (dim, N)).astype(dtype)
    if cplx:
        A = A + 1j * rng.uniform(-3, 3, (dim, N))

    def proj(kind):
        shape = {2: (dim, N), 3: (batch, N, L), 4: (batch, ngroups, N, L)}[kind]
        X = rng.standard_normal(shape)
        if cplx_bc:
            X = X + 1j * rng.standard_normal(shape)
        return X.astype(np.result_type(dtype, np.complex64) if cplx_bc else dtype)

    return u, delta, A, proj(b_kind), proj(c_kind)


# ---------------------------------------------------------------------------
# selective_scan
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("b_kind", [2, 3, 4])
@pytest.mark.parametrize("c_kind", [2, 3, 4])
def test_scan_layouts(rng, dtype, b_kind, c_kind):
    u, delta, A, B, C = make(rng, dtype, b_kind=b_kind, c_kind=c_kind)
    y, last = selective_scan(u, delta, A, B, C, return_last_state=True)
    y0, h0 = scan_oracle(u, delta, A, B, C)
    assert y.dtype == dtype and last.dtype == dtype
    assert y.shape == u.shape and last.shape == (2, 4, 3)
    assert_close(y, y0, dtype, scale=10)
    assert_close(last, h0, dtype, scale=10)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_scan_all_options(rng, dtype):
    batch, dim, N, L = 2, 6, 5, 11
    u, delta, A, B, C = make(rng, dtype, batch, dim, N, L, b_kind=4, c_kind=4,
                             ngroups=3)
    delta = rng.standard_normal(delta.shape).astype(dtype)   # softplus input
    D = rng.standard_normal(dim).astype(dtype)
    z = rng.standard_normal(u.shape).astype(dtype)
    bias = rng.uniform(-1, 1, dim).astype(dtype)
    h0 = rng.standard_normal((batch, dim, N)).astype(dtype)
    y, last = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                             delta_softplus=True, return_last_state=True,
                             initial_state=h0)
    y0, last0 = scan_oracle(u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                            delta_softplus=True, initial_state=h0)
    assert_close(y, y0, dtype, scale=10)
    assert_close(last, last0, dtype, scale=10)
    # without return_last_state: just y
    y2 = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                        delta_softplus=True, initial_state=h0)
    np.testing.assert_array_equal(y2, y)


def test_softplus_threshold_and_large_steps(rng):
    # delta above the softplus threshold is used as is; huge steps decay to 0
    u, delta, A, B, C = make(rng, np.float64)
    delta = np.full(delta.shape, 25.0)
    y = selective_scan(u, delta, A, B, C, delta_softplus=True)
    y0, _ = scan_oracle(u, delta, A, B, C, delta_softplus=True)
    assert_close(y, y0, np.float64)
    y32 = selective_scan(u.astype(np.float32), (delta * 10).astype(np.float32),
                         A.astype(np.float32), B.astype(np.float32),
                         C.astype(np.float32))
    y0, _ = scan_oracle(u, delta * 10, A, B, C)
    assert_close(y32, y0, np.float32, scale=10)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("cplx_bc", [False, True])
@pytest.mark.parametrize("kinds", [(2, 2), (3, 4), (4, 3)])
def test_scan_complex(rng, dtype, cplx_bc, kinds):
    rdt = np.float32 if dtype == np.complex64 else np.float64
    u, delta, A, B, C = make(rng, rdt, b_kind=kinds[0], c_kind=kinds[1],
                             cplx=True, cplx_bc=cplx_bc)
    A = A.astype(dtype)
    D = rng.standard_normal(4)
    z = rng.standard_normal(u.shape)
    h0 = (rng.standard_normal((2, 4, 3)) + 1j * rng.standard_normal((2, 4, 3)))
    h0 = h0.astype(dtype)
    y, last = selective_scan(u, delta, A, B, C, D=D.astype(rdt), z=z.astype(rdt),
                             initial_state=h0, return_last_state=True)
    y0, last0 = scan_oracle(u, delta, A, B, C, D=D, z=z, initial_state=h0)
    assert y.dtype == rdt and last.dtype == dtype
    assert_close(y, y0, rdt, scale=10)
    assert_close(last, last0, dtype, scale=10)


@pytest.mark.parametrize("dtype, fast_max", [(np.complex64, 4096.0),
                                              (np.complex128, 1e6)])
def test_complex_decay_angles(dtype, fast_max):
    """exp(dt A) for purely imaginary A: the last state of one step from
    h0 = 1 is exp(i dt Im A), against NumPy's complex128 exp. Angles span
    the range the vectorised sin/cos reduce exactly, and beyond it (where
    libm takes over), both signs, multiples of pi/2 and the ends."""
    rdt = np.float32 if dtype == np.complex64 else np.float64
    eps = np.finfo(rdt).eps
    x = np.concatenate([
        np.linspace(-fast_max, fast_max, 20001),
        np.arange(-40, 41) * (np.pi / 4),
        [fast_max, -fast_max, 1e-30, -0.0, 0.0],
        [1.5 * fast_max, -3 * fast_max, 1e7, 3e8],
    ]).astype(rdt)
    dim = x.size
    u = np.zeros((1, dim, 1), rdt)
    delta = np.ones((1, dim, 1), rdt)
    A = (1j * x.astype(np.float64)).reshape(dim, 1).astype(dtype)
    B = np.ones((dim, 1), rdt)
    C = np.ones((dim, 1), rdt)
    h0 = np.ones((1, dim, 1), dtype)
    y, last = selective_scan(u, delta, A, B, C, initial_state=h0,
                             return_last_state=True)
    want = np.exp(1j * x.astype(np.float64))
    got = last.reshape(-1)
    # a few units in the last place of numbers of size 1 (libm's own beyond
    # the fast range); y is 2 Re(C h)
    np.testing.assert_allclose(got.real, want.real, rtol=0, atol=4 * eps)
    np.testing.assert_allclose(got.imag, want.imag, rtol=0, atol=4 * eps)
    np.testing.assert_allclose(y.reshape(-1), 2 * want.real, rtol=0, atol=8 * eps)
    # a step of NaN gives NaN, not a wrong number
    delta[0, 0, 0] = np.nan
    _, last = selective_scan(u, delta, A, B, C, initial_state=h0,
                             return_last_state=True)
    assert np.isnan(last[0, 0, 0])
    assert np.all(np.isfinite(last[0, 1:, 0]))


def test_complex_conjugate_pair_is_real_system(rng):
    # a conjugate pair (a, conj a) with conjugate B, C is a real system whose
    # output is 2 Re of one member: the real 2-state scan of the same pair
    u, delta, _, _, _ = make(rng, np.float64, dim=1, N=1, L=12)
    a = -0.3 + 1.1j
    b = 0.7 - 0.2j
    c = 1.3 + 0.4j
    y = selective_scan(u, delta, [[a]], [[b]], [[c]])
    yfull = np.zeros_like(y)
    for bb in range(2):
        h = np.zeros(2, complex)
        for t in range(12):
            dt = delta[bb, 0, t]
            h = np.exp(dt * np.array([a, np.conj(a)])) * h \
                + dt * u[bb, 0, t] * np.array([b, np.conj(b)])
            yfull[bb, 0, t] = np.sum(np.array([c, np.conj(c)]) * h).real
    assert_close(y, yfull, np.float64)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_scan_in_pieces(rng, dtype):
    # carrying the last state into the next piece gives the whole scan
    u, delta, A, B, C = make(rng, dtype, L=20, b_kind=3, c_kind=4)
    y, last = selective_scan(u, delta, A, B, C, return_last_state=True)
    y1, s = selective_scan(u[..., :7], delta[..., :7], A, B[..., :7],
                           C[..., :7], return_last_state=True)
    y2, s2 = selective_scan(u[..., 7:], delta[..., 7:], A, B[..., 7:],
                            C[..., 7:], return_last_state=True, initial_state=s)
    assert_close(np.concatenate([y1, y2], -1), y, dtype, scale=10)
    assert_close(s2, last, dtype, scale=10)


def test_empty_and_degenerate(rng):
    u, delta, A, B, C = make(rng, np.float64, L=0, b_kind=3, c_kind=2)
    h0 = rng.standard_normal((2, 4, 3))
    y, last = selective_scan(u, delta, A, B, C, initial_state=h0,
                             return_last_state=True)
    assert y.shape == (2, 4, 0)
    np.testing.assert_array_equal(last, h0)
    y, last = selective_scan(np.zeros((0, 4, 5)), np.zeros((0, 4, 5)), A,
                             np.zeros((0, 3, 5)), C, return_last_state=True)
    assert y.shape == (0, 4, 5) and last.shape == (0, 4, 3)
    # dstate 0: only the skip connection is left
    u, delta, _, _, _ = make(rng, np.float64)
    y = selective_scan(u, delta, np.zeros((4, 0)), np.zeros((4, 0)),
                       np.zeros((2, 0, 9)), D=np.full(4, 2.0))
    np.testing.assert_array_equal(y, 2 * u)


def test_integer_inputs_promote_to_float64(rng):
    u = np.ones((1, 2, 3), dtype=np.int64)
    y = selective_scan(u, u, -np.ones((2, 2), np.int32), np.ones((2, 2), bool),
                       np.ones((2, 2), np.int8))
    y0, _ = scan_oracle(u, u, -np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))
    assert y.dtype == np.float64
    assert_close(y, y0, np.float64)


def test_mixed_precision_result_type(rng):
    u, delta, A, B, C = make(rng, np.float32)
    y = selective_scan(u, delta, A.astype(np.float64), B, C)
    assert y.dtype == np.float64
    y0, _ = scan_oracle(u, delta, A, B, C)
    assert_close(y, y0, np.float64)


def test_nan_propagates_only_to_its_channel(rng):
    u, delta, A, B, C = make(rng, np.float32, b_kind=2, c_kind=2)
    u[0, 1, 4] = np.nan
    y = selective_scan(u, delta, A, B, C)
    assert np.isnan(y[0, 1, 4:]).all()
    assert np.isfinite(y[0, 1, :4]).all()
    mask = np.ones(y.shape, bool)
    mask[0, 1] = False
    assert np.isfinite(y[mask]).all()


# --- the Cython contract -----------------------------------------------------

def test_workers_agree_and_inputs_untouched(rng):
    u, delta, A, B, C = make(rng, np.float32, batch=3, dim=8, N=16, L=50)
    D = rng.standard_normal(8).astype(np.float32)
    args = [u, delta, A, B, C]
    copies = [a.copy() for a in args]
    y1, s1 = selective_scan(*args, D=D, return_last_state=True, workers=1)
    y2, s2 = selective_scan(*args, D=D, return_last_state=True, workers=2)
    y3 = selective_scan(*args, D=D, workers=-1)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(y1, y3)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


def test_readonly_noncontiguous_memmap(rng, tmp_path):
    u, delta, A, B, C = make(rng, np.float64, L=10)
    y0 = selective_scan(u, delta, A, B, C, z=u)
    mm = np.lib.format.open_memmap(tmp_path / "u.npy", mode="w+",
                                   dtype=u.dtype, shape=u.shape)
    mm[...] = u
    mm.flush()
    mm = np.load(tmp_path / "u.npy", mmap_mode="r")
    # Fortran order and a strided view of a bigger array
    big = np.zeros((2, 4, 20))
    big[..., ::2] = delta
    d_view = big[..., ::2]
    A_f = np.asfortranarray(A)
    B_ro = B.copy()
    B_ro.flags.writeable = False
    y = selective_scan(mm, d_view, A_f, B_ro, C, z=mm)
    np.testing.assert_array_equal(y, y0)


def test_concurrent_calls_from_threads(rng):
    problems = [make(rng, np.float32, dim=8, N=8, L=64) for _ in range(8)]
    serial = [selective_scan(*p) for p in problems]
    barrier = threading.Barrier(4)

    def run(i):
        if i < 4:
            barrier.wait()
        return selective_scan(*problems[i], workers=1 + i % 2)

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(run, range(8)))
    for r, s in zip(results, serial):
        np.testing.assert_array_equal(r, s)


# --- bad input ------------------------------------------------------------

def test_bad_shapes_name_the_argument(rng):
    u, delta, A, B, C = make(rng, np.float64, b_kind=4, c_kind=3)
    cases = [
        (dict(u=u[0]), "`u`"),
        (dict(delta=delta[..., :5]), "`delta`"),
        (dict(A=A[:3]), "`A`"),
        (dict(A=A[0]), "`A`"),
        (dict(B=B[..., :2, :]), "`B`"),
        (dict(B=B[:, :, :, :4]), "`B`"),
        (dict(B=B[None]), "`B`"),
        (dict(C=C[:1]), "`C`"),
        (dict(C=np.zeros((4, 2))), "`C`"),
        (dict(D=np.ones(3)), "`D`"),
        (dict(z=u[:, :3]), "`z`"),
        (dict(delta_bias=np.ones((4, 1))), "`delta_bias`"),
        (dict(initial_state=np.zeros((2, 4, 2))), "`initial_state`"),
        (dict(workers=0), "`workers`"),
    ]
    base = dict(u=u, delta=delta, A=A, B=B, C=C)
    for change, match in cases:
        kw = {**base, **change}
        with pytest.raises(ValueError, match=match):
            selective_scan(**kw)


def test_ngroups_must_divide_dim(rng):
    u, delta, A, B, C = make(rng, np.float64, dim=4, b_kind=4, ngroups=3)
    with pytest.raises(ValueError, match="`B`.*ngroups = 3.*dim = 4"):
        selective_scan(u, delta, A, B, C)
    with pytest.raises(ValueError, match="`C`.*ngroups = 3"):
        selective_scan(u, delta, A, C, B)


def test_bad_dtypes_name_the_argument(rng):
    u, delta, A, B, C = make(rng, np.float64)
    with pytest.raises(TypeError, match="`u`"):
        selective_scan(u.astype(object), delta, A, B, C)
    with pytest.raises(TypeError, match="`delta`"):
        selective_scan(u, delta + 0j, A, B, C)
    with pytest.raises(TypeError, match="`B` may be complex only when `A`"):
        selective_scan(u, delta, A, B + 0j, C)
    with pytest.raises(TypeError, match="`initial_state`"):
        selective_scan(u, delta, A, B, C, initial_state=np.zeros((2, 4, 3), complex))
    with pytest.raises(TypeError, match="`z`"):
        selective_scan(u, delta, A, B, C, z=np.full(u.shape, "a"))


# ---------------------------------------------------------------------------
# causal_conv1d
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("width,seqlen", [(4, 17), (4, 2), (1, 5), (7, 3), (3, 0), (2, 1)])
@pytest.mark.parametrize("silu", [False, True])
def test_conv_against_convolve(rng, dtype, width, seqlen, silu):
    x = rng.standard_normal((2, 3, seqlen)).astype(dtype)
    w = rng.standard_normal((3, width)).astype(dtype)
    bias = rng.standard_normal(3).astype(dtype)
    init = rng.standard_normal((2, 3, width - 1)).astype(dtype)
    act = "silu" if silu else None
    out = causal_conv1d(x, w, bias, activation=act)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, conv_oracle(x, w, bias, silu=silu), dtype, scale=5)
    out, final = causal_conv1d(x, w, bias, activation=act, initial_states=init,
                               return_final_states=True)
    assert_close(out, conv_oracle(x, w, bias, init, silu=silu), dtype, scale=5)
    full = np.concatenate([init, x], axis=-1)
    np.testing.assert_array_equal(final, full[..., full.shape[-1] - (width - 1):])
    # without bias
    assert_close(causal_conv1d(x, w), conv_oracle(x, w), dtype, scale=5)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("width,seqlen", [(4, 150), (4, 2), (1, 5), (7, 3), (3, 0)])
@pytest.mark.parametrize("workers", [1, 2])
def test_conv_time_major_layout(rng, dtype, width, seqlen, workers):
    """Time-major data (channels contiguous, rows strided) is convolved in
    its layout, and the output keeps that layout."""
    dim = 37
    act = rng.standard_normal((2, seqlen, dim + 5)).astype(dtype)
    x = np.swapaxes(act[:, :, 2:2 + dim], 1, 2)       # (batch, dim, seqlen) view
    w = rng.standard_normal((dim, width)).astype(dtype)
    bias = rng.standard_normal(dim).astype(dtype)
    init = rng.standard_normal((2, dim, width - 1)).astype(dtype)
    xc = np.ascontiguousarray(x)
    out, final = causal_conv1d(x, w, bias, activation="silu", initial_states=init,
                               return_final_states=True, workers=workers)
    assert out.shape == x.shape and out.dtype == dtype
    if seqlen > 1:
        assert np.swapaxes(out, 1, 2).flags.c_contiguous
    assert final.flags.c_contiguous and final.shape == (2, dim, width - 1)
    assert_close(out, conv_oracle(xc, w, bias, init, silu=True), dtype, scale=5)
    full = np.concatenate([init, xc], axis=-1)
    np.testing.assert_array_equal(final, full[..., full.shape[-1] - (width - 1):])
    np.testing.assert_array_equal(x, np.swapaxes(act[:, :, 2:2 + dim], 1, 2))


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 6), seqlen=st.integers(0, 30),
       cuts=st.lists(st.integers(0, 30), max_size=4))
def test_conv_pieces_equal_whole(width, seqlen, cuts):
    rng = np.random.default_rng(width * 1000 + seqlen)
    x = rng.standard_normal((2, 3, seqlen))
    w = rng.standard_normal((3, width))
    bias = rng.standard_normal(3)
    whole, final = causal_conv1d(x, w, bias, activation="silu",
                                 return_final_states=True)
    bounds = [0] + sorted(min(c, seqlen) for c in cuts) + [seqlen]
    state = None
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        o, state = causal_conv1d(x[..., a:b], w, bias, activation="silu",
                                 initial_states=state, return_final_states=True)
        outs.append(o)
    np.testing.assert_allclose(np.concatenate(outs, -1), whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(state, final)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("width", [1, 2, 4])
def test_update_token_by_token_equals_conv(rng, dtype, width):
    L = 12
    x = rng.standard_normal((2, 5, L)).astype(dtype)
    w = rng.standard_normal((5, width)).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    whole = causal_conv1d(x, w, bias, activation="silu")
    # prefill 4 tokens, then decode the rest one at a time
    out0, state = causal_conv1d(x[..., :4], w, bias, activation="silu",
                                return_final_states=True)
    state_id = id(state)
    outs = [out0]
    for t in range(4, L):
        x_t = x[:, :, t]
        o = causal_conv1d_update(x_t, state, w, bias, activation="silu")
        assert o.shape == (2, 5) and o.dtype == dtype
        outs.append(o[..., None])
    assert id(state) == state_id
    assert_close(np.concatenate(outs, -1), whole, dtype, scale=5)
    np.testing.assert_array_equal(state, x[..., L - (width - 1):])
    # the (batch, dim, 1) form returns (batch, dim, 1)
    s2 = np.zeros((2, 5, width - 1), dtype)
    o3 = causal_conv1d_update(x[:, :, :1], s2, w, bias)
    assert o3.shape == (2, 5, 1)
    assert_close(o3, causal_conv1d(x[..., :1], w, bias), dtype)


def test_conv_contract(rng):
    x = rng.standard_normal((2, 3, 10))
    w = rng.standard_normal((3, 4))
    out = causal_conv1d(x, w)
    x_ro = x.copy()
    x_ro.flags.writeable = False
    xc = x.copy()
    np.testing.assert_array_equal(causal_conv1d(x_ro, np.asfortranarray(w)), out)
    big = np.zeros((2, 6, 10))
    big[:, ::2] = x
    np.testing.assert_array_equal(causal_conv1d(big[:, ::2], w), out)
    np.testing.assert_array_equal(x, xc)
    # update: x, weight and bias untouched, only conv_state moves
    state = rng.standard_normal((2, 3, 3))
    wc = w.copy()
    causal_conv1d_update(x[:, :, 0], state, w)
    np.testing.assert_array_equal(w, wc)
    np.testing.assert_array_equal(x, xc)


def test_conv_bad_input(rng):
    x = rng.standard_normal((2, 3, 10))
    w = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match="`activation`"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match="`activation`"):
        causal_conv1d_update(x[..., 0], np.zeros((2, 3, 3)), w, activation="gelu")
    with pytest.raises(ValueError, match="`weight`"):
        causal_conv1d(x, w[:2])
    with pytest.raises(ValueError, match="`weight`"):
        causal_conv1d(x, np.zeros((3, 0)))
    with pytest.raises(ValueError, match="`x`"):
        causal_conv1d(x[0], w)
    with pytest.raises(ValueError, match="`bias`"):
        causal_conv1d(x, w, np.zeros(4))
    with pytest.raises(ValueError, match="`initial_states`"):
        causal_conv1d(x, w, initial_states=np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="`x`"):
        causal_conv1d(x + 1j, w)
    # conv_state: wrong width, shape, dtype, kind, read-only, non-contiguous
    xt = x[..., 0]
    with pytest.raises(ValueError, match="`conv_state`"):
        causal_conv1d_update(xt, np.zeros((2, 3, 2)), w)
    with pytest.raises(ValueError, match="`conv_state`"):
        causal_conv1d_update(xt, np.zeros((1, 3, 3)), w)
    with pytest.raises(TypeError, match="`conv_state`"):
        causal_conv1d_update(xt, np.zeros((2, 3, 3), np.float32), w)
    with pytest.raises(TypeError, match="`conv_state`"):
        causal_conv1d_update(xt, [[[0.0] * 3] * 3] * 2, w)
    ro = np.zeros((2, 3, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="`conv_state`.*writeable"):
        causal_conv1d_update(xt, ro, w)
    with pytest.raises(ValueError, match="`conv_state`.*C-contiguous"):
        causal_conv1d_update(xt, np.zeros((2, 3, 6))[..., ::2], w)
    with pytest.raises(ValueError, match="`x`"):
        causal_conv1d_update(x[..., None], np.zeros((2, 3, 3)), w)


# ------------------------------------------------- Mamba-1's fused decoding step

def _mamba_step_loop(xz, conv, state, w, cb, xw, dtw, dtb, A, D):
    """One Mamba-1 decoding token, float64, written out here: the
    convolution's window (the cache's last width - 1 columns and the new
    input; conv and state advanced in place), SiLU, x_proj, dt_proj,
    softplus, the state update, D and the gate."""
    dim, N = A.shape
    R = dtw.shape[1]
    K = w.shape[1]
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    x, z = xz[:, :dim], xz[:, dim:]
    window = np.concatenate([conv[:, :, conv.shape[2] - (K - 1):], x[:, :, None]],
                            axis=2)
    xc = silu((window * w[None]).sum(-1) + cb)
    if conv.shape[2]:
        conv[:] = np.concatenate([conv[:, :, 1:], x[:, :, None]], axis=2)
    dbc = xc @ xw.T
    dt = np.log1p(np.exp(dbc[:, :R] @ dtw.T + dtb))
    B, C = dbc[:, R:R + N], dbc[:, R + N:]
    state[:] = (np.exp(dt[:, :, None] * A[None]) * state
                + dt[:, :, None] * B[:, None, :] * xc[:, :, None])
    y = (state * C[:, None, :]).sum(-1) + (0 if D is None else D * xc)
    return y * silu(z)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("K,Wc,with_D", [(4, 4, True), (4, 3, False), (3, 5, True),
                                         (1, 0, True)])
def test_mamba_mixer_step_against_a_loop(rng, dtype, K, Wc, with_D):
    from zilla_muf.selective import _mamba_mixer_step, _mamba_step_params

    nb, dim, N, R = 2, 6, 4, 3
    w = rng.standard_normal((dim, K)) * 0.5
    cb = rng.standard_normal(dim)
    xw = rng.standard_normal((R + 2 * N, dim)) * 0.5
    dtw = rng.standard_normal((dim, R)) * 0.5
    dtb = rng.uniform(-2, 0, dim)
    A = -rng.uniform(0.5, 2, (dim, N))
    D = rng.standard_normal(dim) if with_D else None
    conv = rng.standard_normal((nb, dim, Wc))
    state = rng.standard_normal((nb, dim, N))
    cs, st = conv.astype(dtype), state.astype(dtype)
    params = _mamba_step_params(w, cb, xw, dtw, dtb, A, D, dtype=dtype)
    for _ in range(3):  # three tokens, the states carried by both sides
        xz = rng.standard_normal((nb, 2 * dim))
        out = _mamba_mixer_step(xz.astype(dtype), cs, st, params)
        ref = _mamba_step_loop(xz, conv, state, w, cb, xw, dtw, dtb, A, D)
        assert out.dtype == dtype
        assert_close(out, ref, dtype, 50)
        assert_close(st, state, dtype, 50)
        assert_close(cs, conv, dtype, 50)


def test_mamba_mixer_step_refusals():
    from zilla_muf.selective import _mamba_mixer_step, _mamba_step_params

    dim, N, R = 4, 3, 2
    params = _mamba_step_params(np.ones((dim, 4)), None, np.ones((R + 2 * N, dim)),
                                np.ones((dim, R)), None, -np.ones((dim, N)), None,
                                dtype=np.float32)
    xz = np.zeros((1, 2 * dim), np.float32)
    conv = np.zeros((1, dim, 3), np.float32)
    state = np.zeros((1, dim, N), np.float32)
    with pytest.raises(TypeError, match="`state`"):
        _mamba_mixer_step(xz, conv, state.astype(np.float64), params)
    with pytest.raises(TypeError, match="`conv_state`"):
        _mamba_mixer_step(xz, conv[:, :, ::2], state, params)
    with pytest.raises(TypeError, match="`params`"):
        _mamba_mixer_step(xz.astype(np.float64), conv.astype(np.float64),
                          state.astype(np.float64), params)
    with pytest.raises(ValueError, match="do not agree"):
        _mamba_mixer_step(xz[:, :-1], conv, state, params)
    with pytest.raises(ValueError, match="inconsistent"):
        _mamba_mixer_step(xz, conv, state[:, :, :-1].copy(), params)
    out = _mamba_mixer_step(xz, conv, state, params)
    assert out.shape == (1, dim) and np.all(out == 0)


@pytest.mark.parametrize("dtype, A_small, A_kept", [(np.float32, -50.0, -40.0),
                                                    (np.float64, -360.0, -350.0)])
def test_decays_below_the_flush_threshold_are_zero(dtype, A_small, A_kept):
    # A step's decay exp(dt A) below the square root of the smallest normal
    # number is taken as zero (its products would be subnormal, and slow):
    # with no input, an initial state decayed by it reaches no output, while
    # one decayed by a decay just above the threshold reaches them exactly.
    thr = np.sqrt(np.finfo(dtype).tiny)
    assert np.exp(A_small) < thr <= np.exp(A_kept)
    rng = np.random.default_rng(7)
    b, d, n, L = 1, 2, 3, 3
    u = np.zeros((b, d, L), dtype)
    delta = np.ones((b, d, L), dtype)
    B = rng.standard_normal((b, n, L)).astype(dtype)
    C = rng.standard_normal((b, n, L)).astype(dtype)
    h0 = rng.uniform(1.0, 2.0, (b, d, n)).astype(dtype)
    A = np.array([[A_small] * n, [A_kept] * n], dtype)
    y = selective_scan(u, delta, A, B, C, initial_state=h0)
    assert (y[0, 0] == 0).all()
    want = np.exp(A_kept) * np.einsum("n,nt->t", h0[0, 1].astype(np.float64),
                                      C[0].astype(np.float64))
    np.testing.assert_allclose(y[0, 1, 0], want[0], rtol=100 * np.finfo(dtype).eps)
