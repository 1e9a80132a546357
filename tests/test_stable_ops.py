"""zilla_muf.stable_ops against SciPy, float64 and long-double oracles."""

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.special as sc
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import zilla_muf
from zilla_muf import (
    log_softmax,
    log_sum_exp,
    logcumsumexp,
    rms_norm,
    segsum,
    sigmoid,
    silu,
    softmax,
    softplus,
)

from conftest import REAL_DTYPES, assert_close

ROW_FUNCS = [softmax, log_softmax, log_sum_exp, logcumsumexp, segsum]
ELEM_FUNCS = [sigmoid, silu, softplus]
ALL_FUNCS = ROW_FUNCS + ELEM_FUNCS + [rms_norm]

# (input dtype, expected output dtype) per the package convention
DTYPE_CASES = [
    (np.float32, np.float32),
    (np.float64, np.float64),
    (np.float16, np.float32),
    (np.int32, np.float64),
    (np.int64, np.float64),
    (np.bool_, np.float64),
]


def ld(x):
    return np.asarray(x, dtype=np.longdouble)


# -- long-double oracles written as plain loops ------------------------------

def lse_oracle(row):
    row = [float(v) for v in row]
    m = max(row)
    if math.isinf(m):
        return m
    s = sum(np.exp(ld(v - m)) for v in row)
    return float(ld(m) + np.log(s))


def segsum_oracle(x):
    n = len(x)
    out = np.full((n, n), -np.inf)
    for i in range(n):
        for j in range(i + 1):
            out[i, j] = math.fsum(float(v) for v in x[j + 1:i + 1])
    return out


def rms_oracle(x, w, eps, z=None, group=None, before=True):
    x = ld(x)
    c = x.shape[-1]
    g = c if group is None else group
    w = np.ones(c, dtype=np.longdouble) if w is None else ld(w)
    gate = None if z is None else ld(z) / (1 + np.exp(-ld(z)))
    v = x if (gate is None or before) else x * gate
    out = np.empty_like(v)
    for g0 in range(0, c, g):
        blk = v[..., g0:g0 + g]
        r = 1 / np.sqrt((blk * blk).mean(axis=-1, keepdims=True) + eps)
        out[..., g0:g0 + g] = blk * r * w[g0:g0 + g]
    if gate is not None and before:
        out = out * gate
    return out.astype(np.float64)


# -- values against oracles --------------------------------------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family_matches_scipy(rng, dtype, axis):
    x = (rng.standard_normal((6, 9, 5)) * 4).astype(dtype)
    x64 = x.astype(np.float64)
    s = softmax(x, axis=axis)
    assert s.dtype == dtype and s.shape == x.shape
    assert_close(s, sc.softmax(x64, axis=axis), dtype)
    ls = log_softmax(x, axis=axis)
    assert ls.dtype == dtype
    assert_close(ls, sc.log_softmax(x64, axis=axis), dtype)
    lse = log_sum_exp(x, axis=axis)
    assert lse.dtype == dtype
    assert lse.shape == tuple(np.delete(np.array(x.shape), axis))
    assert_close(lse, sc.logsumexp(x64, axis=axis), dtype)
    lk = log_sum_exp(x, axis=axis, keepdims=True)
    assert_close(lk, sc.logsumexp(x64, axis=axis, keepdims=True), dtype)
    assert lk.shape == sc.logsumexp(x64, axis=axis, keepdims=True).shape


def test_log_sum_exp_shapes_and_scalar():
    x = np.arange(24.0).reshape(2, 3, 4)
    assert log_sum_exp(x, axis=1).shape == (2, 4)
    assert log_sum_exp(x, axis=1, keepdims=True).shape == (2, 1, 4)
    r = log_sum_exp([0.0, 0.0])
    assert np.ndim(r) == 0
    assert r == pytest.approx(math.log(2.0), rel=1e-15)
    assert log_sum_exp(np.empty((3, 0))).tolist() == [-np.inf] * 3


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_softmax_extremes(dtype):
    big = np.finfo(dtype).max
    x = np.array([[1e30, 1e30, -1e30, 0.0],
                  [-1e30, -1e30, -1e30, -1e30],
                  [big, big, -big, 0.0]], dtype=dtype)
    s = softmax(x)
    np.testing.assert_array_equal(s[0], np.array([0.5, 0.5, 0.0, 0.0], dtype))
    np.testing.assert_array_equal(s[1], np.full(4, 0.25, dtype))
    np.testing.assert_array_equal(s[2], np.array([0.5, 0.5, 0.0, 0.0], dtype))
    assert np.all(np.isfinite(s))
    lse = log_sum_exp(x)
    expect = [lse_oracle(r) for r in x.astype(np.float64)]
    assert_close(lse, np.array(expect), dtype)
    assert np.all(np.isfinite(lse))
    ls = log_softmax(x)
    assert ls[0, 0] == pytest.approx(-math.log(2), rel=1e-6)
    assert ls[0, 2] == pytest.approx(-2e30, rel=1e-6)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_infinities_and_nan(dtype):
    inf = np.inf
    x = np.array([[-inf, -inf, -inf], [inf, 1.0, -inf], [np.nan, 1.0, 2.0],
                  [-inf, 0.0, -inf]], dtype=dtype)
    lse = log_sum_exp(x)
    assert lse[0] == -inf and lse[1] == inf and np.isnan(lse[2])
    assert lse[3] == 0.0
    s = softmax(x)
    # undefined rows are NaN, as scipy.special.softmax gives
    assert np.all(np.isnan(s[0])) and np.all(np.isnan(s[2]))
    np.testing.assert_array_equal(s[3], [0.0, 1.0, 0.0])
    ls = log_softmax(x)
    np.testing.assert_array_equal(ls[3], [-inf, 0.0, -inf])
    assert np.all(np.isnan(ls[0]))


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_logcumsumexp_matches_long_double(rng, dtype):
    x = (rng.standard_normal((4, 50)) * 3).astype(dtype)
    expect = np.log(np.cumsum(np.exp(ld(x)), axis=-1)).astype(np.float64)
    y = logcumsumexp(x)
    assert y.dtype == dtype
    assert_close(y, expect, dtype, scale=4)
    y0 = logcumsumexp(x.T, axis=0)
    assert_close(y0, expect.T, dtype, scale=4)


def test_logcumsumexp_extremes():
    inf = np.inf
    x = np.array([-inf, -inf, 0.0, -inf, 1e30, 1e30])
    y = logcumsumexp(x)
    np.testing.assert_array_equal(y[:4], [-inf, -inf, 0.0, 0.0])
    assert y[4] == 1e30 and y[5] == 1e30 + math.log(2)
    np.testing.assert_array_equal(logcumsumexp([inf, 1.0, inf]), [inf, inf, inf])
    assert np.isnan(logcumsumexp([1.0, np.nan, 2.0])[1:]).all()
    # a long row at the top of the range: running sums never overflow
    big = np.full(1000, 1e300)
    assert np.all(np.isfinite(logcumsumexp(big)))
    assert logcumsumexp(big)[-1] == pytest.approx(1e300, rel=1e-15)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_segsum_matches_loop(rng, dtype):
    x = rng.standard_normal((3, 7)).astype(dtype)
    s = segsum(x)
    assert s.dtype == dtype and s.shape == (3, 7, 7)
    for r in range(3):
        expect = segsum_oracle(x[r].astype(np.float64))
        tri = np.tril_indices(7)
        assert_close(s[r][tri], expect[tri], dtype, scale=4)
        assert np.all(s[r][np.triu_indices(7, 1)] == -np.inf)
        assert np.all(np.diag(s[r]) == 0)


def test_segsum_axis_moves_last(rng):
    x = rng.standard_normal((5, 2, 3))
    s = segsum(x, axis=0)
    assert s.shape == (2, 3, 5, 5)
    expect = segsum_oracle(x[:, 1, 2])
    np.testing.assert_allclose(s[1, 2], expect, rtol=1e-12, atol=1e-14)


def test_segsum_no_cancellation():
    # prefix sums would lose the small segment after the large one entirely
    x = np.array([0.0, 1e17, 1.0, 2.0, 3.0])
    s = segsum(x)
    assert s[4, 1] == 6.0 and s[3, 1] == 3.0 and s[4, 2] == 5.0
    cs = np.cumsum(x)
    assert cs[4] - cs[1] != 5.0  # what the prefix-sum formula would return


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_activations_match_scipy(rng, dtype):
    x = (rng.standard_normal(300) * 10).astype(dtype)
    x64 = x.astype(np.float64)
    for fn, expect in [(sigmoid, sc.expit(x64)), (silu, x64 * sc.expit(x64)),
                       (softplus, np.logaddexp(0.0, x64))]:
        y = fn(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert_close(y, expect, dtype, atol_rel=1e-7 if dtype == np.float64 else None)


def test_activations_tiny_results_keep_relative_precision():
    x = np.array([-30.0, -100.0, -700.0])
    expect = np.exp(ld(x)) / (1 + np.exp(ld(x)))
    np.testing.assert_allclose(sigmoid(x), expect.astype(np.float64), rtol=1e-14)
    np.testing.assert_allclose(softplus(x), np.log1p(np.exp(ld(x))).astype(np.float64),
                               rtol=1e-14)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_activations_extremes(dtype):
    x = np.array([-1e4, 1e4, np.finfo(dtype).max, -np.finfo(dtype).max], dtype=dtype)
    np.testing.assert_array_equal(sigmoid(x), np.array([0, 1, 1, 0], dtype))
    np.testing.assert_array_equal(silu(x), x * np.array([0, 1, 1, 0], dtype))
    np.testing.assert_array_equal(softplus(x), np.array([0, 1e4, x[2], 0], dtype))
    # overflow-free even with the threshold disabled
    np.testing.assert_array_equal(softplus(x[:2], threshold=np.inf),
                                  np.array([0, 1e4], dtype))
    inf = np.array([-np.inf, np.inf], dtype=dtype)
    np.testing.assert_array_equal(sigmoid(inf), [0.0, 1.0])
    np.testing.assert_array_equal(silu(inf), [0.0, np.inf])
    assert np.isnan(sigmoid([np.nan])[0]) and np.isnan(softplus([np.nan])[0])


def test_softplus_beta_and_threshold(rng):
    x = rng.uniform(-5, 5, 100)
    for beta in (0.5, 2.0, -1.5):
        y = softplus(x, beta=beta, threshold=1e9)
        expect = (np.log1p(np.exp(ld(beta) * ld(x))) / ld(beta)).astype(np.float64)
        np.testing.assert_allclose(y, expect, rtol=1e-13, atol=1e-15)
    # above the threshold x itself is returned, below it the formula
    y = softplus(x, beta=2.0, threshold=3.0)
    above = 2.0 * x > 3.0
    np.testing.assert_array_equal(y[above], x[above])
    below = (np.log1p(np.exp(ld(2.0) * ld(x))) / 2).astype(np.float64)
    np.testing.assert_allclose(y[~above], below[~above], rtol=1e-13)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_rms_norm_matches_long_double(rng, dtype):
    x = rng.standard_normal((4, 3, 12)).astype(dtype)
    z = rng.standard_normal((4, 3, 12)).astype(dtype)
    w = rng.uniform(0.5, 1.5, 12).astype(dtype)
    y = rms_norm(x, w, eps=1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, rms_oracle(x, w, 1e-5), dtype, scale=4)
    for before in (True, False):
        for group in (None, 3, 4, 12):
            y = rms_norm(x, w, eps=1e-5, z=z, group_size=group,
                         norm_before_gate=before)
            assert_close(y, rms_oracle(x, w, 1e-5, z, group, before), dtype, scale=4)
    y = rms_norm(x, eps=0.0, group_size=6)
    assert_close(y, rms_oracle(x, None, 0.0, group=6), dtype, scale=4)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_rms_norm_strided_rows(rng, dtype):
    # x and z read in place as column slices of wider arrays (rows strided,
    # reversed, or one row broadcast); channels two apart are copied first
    wide = rng.standard_normal((3, 5, 40)).astype(dtype)
    w = rng.uniform(0.5, 1.5, 12).astype(dtype)
    layouts = [(wide[..., 3:15], wide[..., 20:32]),
               (wide[:, ::-1, 3:15], wide[::-1, :, 20:32]),
               (wide[..., 3:27:2], wide[..., 16:40:2]),
               (wide.reshape(15, 40)[::-1, 3:15], wide.reshape(15, 40)[::-1, 20:32]),
               (np.broadcast_to(wide[0, 0, 3:15], (3, 5, 12)), wide[..., 20:32])]
    for x, z in layouts:
        before = wide.copy()
        for gate_first in (True, False):
            y = rms_norm(x, w, eps=1e-5, z=z, group_size=4,
                         norm_before_gate=gate_first)
            assert y.flags.c_contiguous and y.dtype == dtype
            assert_close(y, rms_oracle(x, w, 1e-5, z, 4, gate_first), dtype, scale=4)
        assert_close(rms_norm(x, w), rms_oracle(x, w, 1e-6), dtype, scale=4)
        np.testing.assert_array_equal(wide, before)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_silu_of_column_slices_into_column_slices(rng, dtype):
    from zilla_muf import _stable_ops

    src = rng.uniform(-30, 30, (9, 40)).astype(dtype)
    dst = np.full((9, 25), 3.0, dtype)
    _stable_ops.silu_rows(src[:, 5:20], dst[:, 2:17], 2)
    x = src[:, 5:20].astype(np.float64)
    assert_close(dst[:, 2:17], x / (1 + np.exp(-x)), dtype, scale=4)
    assert (dst[:, :2] == 3).all() and (dst[:, 17:] == 3).all()
    with pytest.raises(ValueError, match="contiguous channels"):
        _stable_ops.silu_rows(src[:, 0:30:2], dst[:, 2:17], 1)
    with pytest.raises(ValueError, match="does not match"):
        _stable_ops.silu_rows(src[:, 5:20], dst[:, 2:16], 1)


def test_rms_norm_gate_broadcasts(rng):
    x = rng.standard_normal(8)
    z = rng.standard_normal((3, 8))
    y = rms_norm(x, z=z)
    assert y.shape == (3, 8)
    np.testing.assert_allclose(y, rms_oracle(np.broadcast_to(x, (3, 8)), None, 1e-6, z),
                               rtol=1e-12)


def test_rms_norm_zero_row_is_zero_and_eps_zero_gives_nan():
    np.testing.assert_array_equal(rms_norm(np.zeros((2, 4))), np.zeros((2, 4)))
    assert np.isnan(rms_norm(np.zeros(4), eps=0.0)).all()


# -- dtype convention ---------------------------------------------------------

@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("in_dtype,out_dtype", DTYPE_CASES)
def test_output_dtype(fn, in_dtype, out_dtype):
    x = np.array([[0, 1, 1, 0], [1, 0, 1, 1]], dtype=in_dtype)
    y = fn(x)
    assert y.dtype == out_dtype
    expect = fn(x.astype(out_dtype))
    np.testing.assert_array_equal(y, expect)


def test_rms_norm_mixed_dtypes_use_result_type():
    x = np.ones((2, 4), dtype=np.float32)
    assert rms_norm(x).dtype == np.float32
    assert rms_norm(x, np.ones(4, np.float64)).dtype == np.float64
    assert rms_norm(x, z=np.ones(4, np.float64)).dtype == np.float64
    assert rms_norm(x, np.ones(4, np.int64)).dtype == np.float64


# -- errors name the argument -------------------------------------------------

@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
def test_complex_and_non_numeric_rejected(fn):
    with pytest.raises(TypeError, match="`x`.*real"):
        fn(np.ones((2, 3), dtype=complex))
    with pytest.raises(TypeError, match="`x`"):
        fn(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="`workers`"):
        fn(np.ones((2, 3)), workers=0)


@pytest.mark.parametrize("fn", ROW_FUNCS, ids=lambda f: f.__name__)
def test_bad_axis(fn):
    with pytest.raises(ValueError, match="`axis`"):
        fn(np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="`axis`"):
        fn(np.ones((2, 3)), axis=-3)
    with pytest.raises(ValueError, match="`x`.*dimension"):
        fn(np.float64(1.0))


def test_rms_norm_bad_arguments():
    x = np.ones((2, 6))
    with pytest.raises(ValueError, match="`group_size`"):
        rms_norm(x, group_size=4)
    with pytest.raises(ValueError, match="`group_size`"):
        rms_norm(x, group_size=0)
    with pytest.raises(ValueError, match="`group_size`"):
        rms_norm(x, group_size=2.5)
    with pytest.raises(ValueError, match="`eps`"):
        rms_norm(x, eps=-1e-6)
    with pytest.raises(ValueError, match="`eps`"):
        rms_norm(x, eps=np.nan)
    with pytest.raises(TypeError, match="`eps`"):
        rms_norm(x, eps="small")
    with pytest.raises(ValueError, match="`weight`"):
        rms_norm(x, np.ones(5))
    with pytest.raises(ValueError, match="`z`"):
        rms_norm(x, z=np.ones((3, 6)))
    with pytest.raises(TypeError, match="`z`"):
        rms_norm(x, z=np.ones((2, 6), complex))
    with pytest.raises(TypeError, match="`weight`"):
        rms_norm(x, np.ones(6, complex))


def test_softplus_bad_arguments():
    with pytest.raises(ValueError, match="`beta`"):
        softplus([1.0], beta=0.0)
    with pytest.raises(ValueError, match="`beta`"):
        softplus([1.0], beta=np.inf)
    with pytest.raises(TypeError, match="`beta`"):
        softplus([1.0], beta=1j)
    with pytest.raises(ValueError, match="`threshold`"):
        softplus([1.0], threshold=np.nan)
    with pytest.raises(TypeError, match="`threshold`"):
        softplus([1.0], threshold=[1.0, 2.0])


# -- the Cython contract ------------------------------------------------------

@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
def test_readonly_noncontiguous_memmap_and_unmodified(fn, rng, tmp_path):
    base = rng.standard_normal((6, 10))
    expect = fn(np.ascontiguousarray(base[:, ::2]))
    ro = base.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(fn(ro[:, ::2]), expect)
    mm = np.memmap(tmp_path / "x.dat", dtype=np.float64, mode="w+", shape=base.shape)
    mm[:] = base
    mm.flush()
    ro_mm = np.memmap(tmp_path / "x.dat", dtype=np.float64, mode="r", shape=base.shape)
    np.testing.assert_array_equal(fn(ro_mm[:, ::2]), expect)
    before = base.copy()
    fn(base)
    np.testing.assert_array_equal(base, before)


def test_fortran_order_and_axis0(rng):
    x = np.asfortranarray(rng.standard_normal((7, 5)))
    np.testing.assert_allclose(softmax(x, axis=0), sc.softmax(x, axis=0), rtol=1e-13)


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
def test_workers_agree(fn, rng):
    x = rng.standard_normal((64, 40)).astype(np.float32)
    y1 = fn(x, workers=1)
    for w in (2, -1):
        np.testing.assert_array_equal(fn(x, workers=w), y1)


def test_build_has_openmp_and_runs_two_threads():
    if not zilla_muf.have_openmp():
        pytest.skip("built without OpenMP")
    assert zilla_muf.openmp_info(2)["threads_used"] == 2


def test_concurrent_calls_match_serial(rng):
    xs = [rng.standard_normal((200, 64)) for _ in range(8)]
    funcs = [softmax, log_sum_exp, segsum, silu, rms_norm, logcumsumexp]
    serial = [[f(x) for f in funcs] for x in xs]
    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(lambda x: [f(x, workers=2) for f in funcs], xs))
    for a, b in zip(serial, par):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_empty_inputs():
    e = np.empty((0, 5))
    assert softmax(e).shape == (0, 5)
    assert log_sum_exp(e).shape == (0,)
    assert segsum(np.empty((2, 0))).shape == (2, 0, 0)
    assert softmax(np.empty((3, 0))).shape == (3, 0)
    assert sigmoid([]).shape == (0,)
    assert rms_norm(np.empty((0, 4))).shape == (0, 4)


# -- identities on random shapes ----------------------------------------------

@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(REAL_DTYPES))
def test_softmax_identities(data, dtype):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7))
    x = data.draw(hnp.arrays(np.float64, shape,
                             elements=st.floats(-50, 50, allow_nan=False))).astype(dtype)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    workers = data.draw(st.sampled_from([1, 2]))
    s = softmax(x, axis=axis, workers=workers)
    ls = log_softmax(x, axis=axis, workers=workers)
    lse = log_sum_exp(x, axis=axis, keepdims=True, workers=workers)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(s.sum(axis=axis), 1.0, rtol=tol * x.shape[axis])
    np.testing.assert_allclose(np.exp(ls.astype(np.float64)), s, rtol=10 * tol, atol=tol)
    np.testing.assert_allclose(ls, x - lse, rtol=tol, atol=tol * 100)
    lcs = logcumsumexp(x, axis=axis)
    last = np.take(lcs, [x.shape[axis] - 1], axis=axis)
    np.testing.assert_allclose(last, lse, rtol=tol * x.shape[axis], atol=tol * 100)


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(np.float64, st.integers(1, 12),
                    elements=st.floats(-1e3, 1e3, allow_nan=False)))
def test_segsum_exp_is_product_of_decays(x):
    # exp(segsum(log a)) is the decay mask prod_{t=j+1..i} a_t (a in (0, 1])
    a = np.exp(-np.abs(x) / 1e3)
    L = np.exp(segsum(np.log(a)))
    n = len(a)
    for i in range(n):
        for j in range(n):
            expect = float(np.prod(ld(a[j + 1:i + 1]))) if j <= i else 0.0
            assert L[i, j] == pytest.approx(expect, rel=1e-12, abs=1e-300)
