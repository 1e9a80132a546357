"""One SiLU everywhere: silu(-inf) is the limit -0 (not -inf * 0 = NaN),
silu(+inf) = +inf, silu(NaN) = NaN, in every function that applies it; and
in every pullback through a gate, the derivative's limits silu'(-inf) = 0
and silu'(+inf) = 1.

torch.nn.functional.silu and the NumPy formulas x * expit(x) and
x / (1 + exp(-x)) give NaN at -inf (inf / inf, -inf * 0); the package uses
the limit, as it does for every finite x whose sigmoid underflows. The
oracle below is that rule written in float64 with scipy.special.expit.
"""

import numpy as np
import pytest
import scipy.special as sc

import zilla_muf

from conftest import REAL_DTYPES

INF = np.inf
SPECIAL = np.array([-INF, INF, np.nan, -800.0, -3.0, 0.0, 2.5, 1e4])


def silu_ref(v):
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        s = v * sc.expit(v)
    return np.where(v == -INF, -0.0, s)


def check(actual, expected, dtype):
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    assert not np.isnan(actual[~np.isnan(expected)]).any()
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=tol,
                               atol=tol * 1e-3)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_silu_special_values(dtype):
    x = SPECIAL.astype(dtype)
    y = zilla_muf.silu(x)
    check(y, silu_ref(x), dtype)
    assert np.signbit(y[0]) and y[0] == 0


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_rms_norm_gate_special_values(dtype):
    x = np.linspace(0.5, 2.0, SPECIAL.size).astype(dtype)
    z = SPECIAL.astype(dtype)
    for before in (True, False):
        y = zilla_muf.rms_norm(x, eps=0.0, z=z, norm_before_gate=before)
        x64 = x.astype(np.float64)
        g = silu_ref(z)
        with np.errstate(invalid="ignore"):
            v = x64 if before else x64 * g
            ref = v / np.sqrt(np.mean(v * v))
            ref = ref * g if before else ref
        if before:
            check(y, ref, dtype)
        else:
            # the inf and NaN gates make the whole group's norm inf/NaN
            assert np.isnan(y).all()


def _conv_input(dtype):
    # one channel whose pre-activations hit -inf, +inf, NaN and finite
    # values: positive weights, so each special value dominates its window
    x = np.array([[[1.0, -INF, 2.0, 3.0, INF, 1.0, 1.0, np.nan, 1.0, -2.0,
                    1.0, 0.5]]], dtype=dtype)
    w = np.array([[0.25, 0.5]], dtype=dtype)
    return x, w


def _conv_ref(x, w):
    x = x.astype(np.float64)
    W = w.shape[1]
    xp = np.concatenate([np.zeros(x.shape[:2] + (W - 1,)), x], axis=-1)
    with np.errstate(invalid="ignore"):
        pre = sum(w[0, k] * xp[..., k:k + x.shape[-1]] for k in range(W))
    return silu_ref(pre)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_causal_conv1d_silu_special_values(dtype):
    x, w = _conv_input(dtype)
    check(zilla_muf.causal_conv1d(x, w, activation="silu"), _conv_ref(x, w), dtype)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_causal_conv1d_time_major_silu_special_values(dtype):
    x1, w1 = _conv_input(dtype)
    # two channels, stored time-major (channels contiguous)
    xt = np.ascontiguousarray(np.concatenate([x1, -x1], axis=1).transpose(0, 2, 1))
    x = xt.transpose(0, 2, 1)
    w = np.concatenate([w1, w1], axis=0)
    ref = np.concatenate([_conv_ref(x1, w1), _conv_ref(-x1, w1)], axis=1)
    check(zilla_muf.causal_conv1d(x, w, activation="silu"), ref, dtype)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_causal_conv1d_update_silu_special_values(dtype):
    x, w = _conv_input(dtype)
    ref = _conv_ref(x, w)[0, 0]
    state = np.zeros((1, 1, 1), dtype=dtype)
    got = [zilla_muf.causal_conv1d_update(x[:, :, t], state, w, activation="silu")[0, 0]
           for t in range(x.shape[-1])]
    check(np.array(got), ref, dtype)


def _gates(shape, dtype, rng):
    z = rng.standard_normal(shape)
    flat = z.reshape(-1)
    flat[0], flat[1], flat[2] = -INF, INF, np.nan
    flat[3] = -900.0
    return z.astype(dtype)


def _check_gated(y_gated, y_plain, z, dtype):
    with np.errstate(invalid="ignore"):
        ref = y_plain.astype(np.float64) * silu_ref(z)
    check(y_gated, ref, dtype)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_selective_scan_gate_special_values(dtype, rng):
    b, d, n, L = 1, 3, 4, 6
    u = rng.standard_normal((b, d, L)).astype(dtype)
    delta = rng.uniform(0.1, 1.0, (b, d, L)).astype(dtype)
    A = -rng.uniform(0.5, 1.5, (d, n)).astype(dtype)
    B = rng.standard_normal((d, n)).astype(dtype)
    C = rng.standard_normal((d, n)).astype(dtype)
    z = _gates(u.shape, dtype, rng)
    plain = zilla_muf.selective_scan(u, delta, A, B, C)
    _check_gated(zilla_muf.selective_scan(u, delta, A, B, C, z=z), plain, z, dtype)


def _ssd_args(dtype, rng, L=8):
    b, H, P, G, N = 1, 2, 3, 1, 4
    x = rng.standard_normal((b, L, H, P)).astype(dtype)
    dt = rng.uniform(0.1, 0.5, (b, L, H)).astype(dtype)
    A = -rng.uniform(0.5, 1.5, H).astype(dtype)
    B = rng.standard_normal((b, L, G, N)).astype(dtype)
    C = rng.standard_normal((b, L, G, N)).astype(dtype)
    return x, dt, A, B, C


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("fn", ["ssd_chunk_scan_combined", "ssd_sequential",
                                "ssd_quadratic"])
def test_ssd_gate_special_values(dtype, fn, rng):
    x, dt, A, B, C = _ssd_args(dtype, rng)
    z = _gates(x.shape, dtype, rng)
    f = getattr(zilla_muf, fn)
    kw = {} if fn == "ssd_quadratic" else {"chunk_size": 4}
    plain = f(x, dt, A, B, C, **kw)
    _check_gated(f(x, dt, A, B, C, z=z, **kw), plain, z, dtype)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_selective_state_update_gate_special_values(dtype, rng):
    x, dt, A, B, C = _ssd_args(dtype, rng, L=1)
    x, dt, B, C = x[:, 0], dt[:, 0], B[:, 0], C[:, 0]
    z = _gates(x.shape, dtype, rng)
    s1 = np.zeros((1, 2, 3, 4), dtype=dtype)
    s2 = s1.copy()
    plain = zilla_muf.selective_state_update(s1, x, dt, A, B, C)
    gated = zilla_muf.selective_state_update(s2, x, dt, A, B, C, z=z)
    _check_gated(gated, plain, z, dtype)


# The pullbacks. A gate at -inf switches its output element off: the
# gradients equal those at a large finite negative gate (whose sigmoid is
# below 1e-26: the same numbers to the dtype's rounding), and nothing turns
# NaN. A gate at +inf passes y0 through with derivative 1: z's gradient
# equals the one at a large positive gate (the other gradients are infinite
# there, as the output is). A NaN gate gives a NaN gradient in its place.
LIMIT = 60.0


def _gated_problems(dtype, rng):
    """(name, fun, args, kwargs, gate's shape) for every differentiable
    function with a SiLU gate; the gate goes in as kwargs['z']."""
    x, dt, A, B, C = _ssd_args(dtype, rng)
    out = [(fn, getattr(zilla_muf, fn), (x, dt, A, B, C),
            {} if fn == "ssd_quadratic" else {"chunk_size": 4}, x.shape)
           for fn in ("ssd_chunk_scan_combined", "ssd_sequential", "ssd_quadratic")]
    u = rng.standard_normal((1, 3, 6)).astype(dtype)
    delta = rng.uniform(0.1, 1.0, u.shape).astype(dtype)
    A2 = -rng.uniform(0.5, 1.5, (3, 4)).astype(dtype)
    B2 = rng.standard_normal((3, 4)).astype(dtype)
    C2 = rng.standard_normal((3, 4)).astype(dtype)
    out.append(("selective_scan", zilla_muf.selective_scan,
                (u, delta, A2, B2, C2), {"delta_softplus": True}, u.shape))
    xn = rng.standard_normal((3, 8)).astype(dtype)
    wn = rng.uniform(0.5, 1.5, 8).astype(dtype)
    out.append(("rms_norm", zilla_muf.rms_norm, (xn, wn), {}, xn.shape))
    return out


def _pull(fun, args, kw, z, gy):
    out, pullback = zilla_muf.vjp(fun, *args, z=z, **kw)
    return out, pullback(gy)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_gate_pullbacks_at_minus_inf(dtype, rng):
    for name, fun, args, kw, shape in _gated_problems(dtype, rng):
        z = rng.standard_normal(shape).astype(dtype)
        off = np.zeros(shape, dtype=bool)
        off.reshape(-1)[[1, 5, off.size - 2]] = True
        gy = rng.standard_normal(shape).astype(dtype)
        z_inf, z_lim = z.copy(), z.copy()
        z_inf[off], z_lim[off] = -INF, -LIMIT
        y, got = _pull(fun, args, kw, z_inf, gy)
        assert (y[off] == 0).all(), name
        _, ref = _pull(fun, args, kw, z_lim, gy)
        assert set(got) == set(ref)
        for key in ref:
            check(got[key], ref[key], dtype)
        assert (got["z"][off] == 0).all(), name


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_gate_pullbacks_at_plus_inf_and_nan(dtype, rng):
    for name, fun, args, kw, shape in _gated_problems(dtype, rng):
        z = rng.standard_normal(shape).astype(dtype)
        flat = np.arange(z.size)
        pos, nan = np.zeros(shape, bool), np.zeros(shape, bool)
        pos.reshape(-1)[flat == 2] = True
        nan.reshape(-1)[flat == z.size - 3] = True
        gy = rng.standard_normal(shape).astype(dtype)
        z_inf, z_lim = z.copy(), z.copy()
        z_inf[pos], z_lim[pos] = INF, LIMIT
        z_inf[nan] = np.nan
        with np.errstate(invalid="ignore", over="ignore"):
            _, got = _pull(fun, args, kw, z_inf, gy)
            _, ref = _pull(fun, args, kw, z_lim, gy)
        assert np.isnan(got["z"][nan]).all(), name
        # z's gradient gy y0 silu'(z) needs only y0, the output before the
        # gate (finite here): the NaN gate leaves every other element alone
        check(got["z"][~nan], ref["z"][~nan], dtype)
        assert got["z"][pos] != 0, name


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_silu_pullback_special_values(dtype):
    x = SPECIAL.astype(dtype)
    gy = np.linspace(0.5, 2.0, x.size).astype(dtype)
    _, pullback = zilla_muf.vjp(zilla_muf.silu, x)
    gx = pullback(gy)["x"]
    v = SPECIAL.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = sc.expit(v)
        d = s * (1 + v * (1 - s))
    d = np.where(np.isinf(v), (v > 0).astype(float), d)
    check(gx, gy.astype(np.float64) * d, dtype)
