"""Gradients of stable_ops (all but rms_norm) through zilla_muf.vjp.

Oracles: the dense Jacobian of the float64 forward by central differences,
column by column; directional central differences of the loss (hypothesis
over shapes and axes); closed-form values at -inf entries and rows.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zilla_muf
from gradcheck import check_dense, check_directional

ROW_FUNS = [zilla_muf.softmax, zilla_muf.log_softmax, zilla_muf.log_sum_exp,
            zilla_muf.logcumsumexp, zilla_muf.segsum]
ELEM_FUNS = [zilla_muf.sigmoid, zilla_muf.silu, zilla_muf.softplus]


@pytest.mark.parametrize("fun", ROW_FUNS + ELEM_FUNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("axis", [0, -1])
def test_dense_jacobian(fun, axis, rng):
    x = rng.uniform(-3, 3, (3, 4))
    kw = dict(x=x)
    if fun in ROW_FUNS:
        kw["axis"] = axis
    check_dense(fun, kw, ["x"], rng, rtol=1e-6)


@pytest.mark.parametrize("keepdims", [False, True])
def test_log_sum_exp_keepdims(keepdims, rng):
    x = rng.uniform(-3, 3, (2, 3, 4))
    check_dense(zilla_muf.log_sum_exp, dict(x=x, axis=1, keepdims=keepdims),
                ["x"], rng)


@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (2.5, 20.0), (0.5, 1.0)])
def test_softplus_beta_threshold(beta, threshold, rng):
    # stay away from the kink at beta*x == threshold
    x = rng.uniform(-4, 4, 40)
    x = x[np.abs(beta * x - threshold) > 1e-3]
    out, pullback = zilla_muf.vjp(zilla_muf.softplus, x, beta, threshold)
    g = pullback(np.ones_like(x))["x"]
    bx = beta * x
    want = np.where(bx > threshold, 1.0, 1.0 / (1.0 + np.exp(-bx)))
    np.testing.assert_allclose(g, want, rtol=1e-13)
    check_dense(zilla_muf.softplus, dict(x=x, beta=beta, threshold=threshold),
                ["x"], rng)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data(),
       fun=st.sampled_from(ROW_FUNS + ELEM_FUNS))
def test_gradients_property(shape, data, fun):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-5, 5, tuple(shape))
    kw = dict(x=x)
    if fun in ROW_FUNS:
        kw["axis"] = data.draw(st.integers(-len(shape), len(shape) - 1))
    kw["workers"] = data.draw(st.sampled_from([1, 2]))
    check_directional(fun, kw, ["x"], rng, rtol=1e-6)


def test_float32_gradients_are_float32(rng):
    x = rng.uniform(-2, 2, (3, 5)).astype(np.float32)
    for fun in ROW_FUNS + ELEM_FUNS:
        out, pullback = zilla_muf.vjp(fun, x)
        c = np.where(np.isfinite(out), rng.standard_normal(np.shape(out)), 0)
        g = pullback(c.astype(np.float32))["x"]
        assert g.dtype == np.float32 and g.shape == x.shape, fun.__name__
        g64 = zilla_muf.vjp(fun, x.astype(np.float64))[1](c)["x"]
        np.testing.assert_allclose(g, g64, rtol=1e-4, atol=1e-4 * np.abs(g64).max())


def test_neg_inf_entries_and_rows_give_finite_gradients():
    ninf = -np.inf
    x = np.array([[ninf, ninf, ninf], [0.0, ninf, 1.0], [ninf, 2.0, ninf]])
    c = np.array([[1.0, -2.0, 3.0], [0.5, 1.0, -1.0], [1.0, 1.0, 1.0]])
    with np.errstate(all="raise"):
        for fun in ROW_FUNS + ELEM_FUNS:
            kw = {} if fun in ELEM_FUNS else {"axis": -1}
            out, pullback = zilla_muf.vjp(fun, x, **kw)
            ct = np.ones(np.shape(out))
            g = pullback(ct)["x"]
            assert np.all(np.isfinite(g)), (fun.__name__, g)
    # closed forms on the row [0, -inf, 1]: p = softmax
    p = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    g = zilla_muf.vjp(zilla_muf.log_sum_exp, x)[1](np.ones(3))["x"]
    np.testing.assert_allclose(g[1], [p[0], 0.0, p[1]], rtol=1e-14)
    np.testing.assert_array_equal(g[0], 0.0)
    g = zilla_muf.vjp(zilla_muf.logcumsumexp, x)[1](c)["x"]
    # row 1: y = [0, 0, log(1+e)]; dx_0 = c0 + c1 + c2 * 1/(1+e)
    e = np.e
    np.testing.assert_allclose(g[1], [0.5 + 1.0 - 1.0 / (1 + e), 0.0, -e / (1 + e)],
                               rtol=1e-14)
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_allclose(g[2], [0.0, 2.0, 0.0])   # y = [-inf, 2, 2]
    g = zilla_muf.vjp(zilla_muf.softmax, x)[1](c)["x"]
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_array_equal(g[2], 0.0)


def test_logcumsumexp_large_values_no_overflow(rng):
    x = rng.uniform(-1, 1, 50) + np.linspace(0, 2000, 50)
    with np.errstate(over="raise"):
        check_directional(zilla_muf.logcumsumexp, dict(x=x), ["x"], rng, rtol=1e-5)
    x = rng.uniform(-1, 1, 6) + 1000.0
    check_dense(zilla_muf.logcumsumexp, dict(x=x), ["x"], rng, rtol=1e-5)


def test_segsum_gradient_against_dense_matrix(rng):
    # s = M x (below the diagonal) with M[(i,j), t] = 1 for j < t <= i
    n = 6
    x = rng.standard_normal(n)
    c = rng.standard_normal((n, n))
    M = np.zeros((n, n, n))
    for i in range(n):
        for j in range(i):
            M[i, j, j + 1:i + 1] = 1.0
    _, pullback = zilla_muf.vjp(zilla_muf.segsum, x)
    np.testing.assert_allclose(pullback(c)["x"], np.einsum("ijt,ij->t", M, c),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_log_softmax_long_rows_against_float64_formula(dtype, axis, rng):
    # rows longer than the compiled pullback's blocks, -inf entries (not
    # whole rows), any axis; the oracle: c - softmax(x) sum(c) in float64
    # from scipy's softmax
    from scipy.special import softmax as sp_softmax
    x = rng.uniform(-30, 30, (3, 2500, 2)).astype(dtype)
    x[0, 5, 0] = -np.inf
    x[1, :: 7, 1] = -np.inf
    c = rng.standard_normal(x.shape).astype(dtype)
    out, pullback = zilla_muf.vjp(zilla_muf.log_softmax, x, axis=axis)
    g = pullback(c)["x"]
    x64 = x.astype(np.float64)
    c64 = c.astype(np.float64)
    want = c64 - sp_softmax(x64, axis=axis) * np.sum(c64, axis=axis, keepdims=True)
    assert g.dtype == dtype and g.shape == x.shape
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(g, want, rtol=tol, atol=tol * np.abs(want).max())


def test_log_sum_exp_gradient_of_inf_and_nan_rows():
    # rows whose lse is not finite take exp(x - lse) directly: +inf entries
    # give NaN, finite entries beside them 0; a NaN row is NaN throughout
    x = np.array([[np.inf, 0.0, -1.0], [np.nan, 0.0, 1.0], [0.0, 1.0, 2.0]])
    g = zilla_muf.vjp(zilla_muf.log_sum_exp, x)[1](np.array([2.0, 1.0, 3.0]))["x"]
    assert np.isnan(g[0, 0]) and np.all(g[0, 1:] == 0.0)
    assert np.all(np.isnan(g[1]))
    p = np.exp(x[2] - np.log(np.exp(x[2]).sum()))
    np.testing.assert_allclose(g[2], 3.0 * p, rtol=1e-14)
