"""`out=` on the softmax family and the activations.

Oracles: scipy.special (softmax, log_softmax, expit, logsumexp) and float64
NumPy formulas computed independently of the kernels (np.logaddexp.accumulate
for logcumsumexp, x * expit(x) for silu, np.logaddexp(0, beta x) / beta for
softplus), each rounded to the tested dtype.
"""

import numpy as np
import pytest
import scipy.special as sc

from zilla_muf import log_softmax, logcumsumexp, sigmoid, silu, softmax, softplus

from conftest import REAL_DTYPES, assert_close


def _softplus64(x, beta=1.0, threshold=20.0):
    x = np.asarray(x, dtype=np.float64)
    z = beta * x
    return np.where(z > threshold, x, np.logaddexp(0.0, z) / beta)


def _silu64(x):
    x = np.asarray(x, dtype=np.float64)
    return x * sc.expit(x)


# (function, float64 oracle, takes axis)
CASES = [
    (softmax, lambda x, ax: sc.softmax(np.float64(x), axis=ax), True),
    (log_softmax, lambda x, ax: sc.log_softmax(np.float64(x), axis=ax), True),
    (logcumsumexp, lambda x, ax: np.logaddexp.accumulate(np.float64(x), axis=ax), True),
    (sigmoid, lambda x, ax: sc.expit(np.float64(x)), False),
    (silu, lambda x, ax: _silu64(x), False),
    (softplus, lambda x, ax: _softplus64(x), False),
]
IDS = [c[0].__name__ for c in CASES]


def _call(fn, takes_axis, x, axis, **kw):
    return fn(x, axis=axis, **kw) if takes_axis else fn(x, **kw)


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_out_matches_oracle_and_is_returned(rng, fn, oracle, takes_axis, dtype,
                                            axis, layout):
    x = (rng.standard_normal((6, 9)) * 5).astype(dtype)
    if layout == "C":
        out = np.full(x.shape, np.nan, dtype=dtype)
    elif layout == "F":
        out = np.asfortranarray(np.full(x.shape, np.nan, dtype=dtype))
    else:
        out = np.full((12, 27), np.nan, dtype=dtype)[::2, ::3]
    before = x.copy()
    res = _call(fn, takes_axis, x, axis, out=out)
    assert res is out
    assert out.dtype == dtype
    assert_close(out, oracle(x, axis).astype(dtype), dtype, scale=8)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_out_is_x_in_place_is_exact(rng, fn, oracle, takes_axis, dtype, axis,
                                    layout):
    base = (rng.standard_normal((10, 34)) * 5).astype(dtype)
    if layout == "C":
        x = base.copy()
    elif layout == "F":
        x = np.asfortranarray(base)
    else:
        x = np.empty((20, 68), dtype=dtype)[::2, ::2]
        x[...] = base
    expected = _call(fn, takes_axis, base.copy(), axis)
    res = _call(fn, takes_axis, x, axis, out=x)
    assert res is x
    np.testing.assert_array_equal(x, expected)
    assert_close(x, oracle(base, axis).astype(dtype), dtype, scale=8)


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
def test_out_in_place_two_threads_large(rng, fn, oracle, takes_axis):
    # enough rows and elements for the kernels to use two threads
    base = (rng.standard_normal((64, 4099)) * 3).astype(np.float64)
    expected = _call(fn, takes_axis, base, -1, workers=1)
    x = base.copy()
    assert _call(fn, takes_axis, x, -1, out=x, workers=2) is x
    np.testing.assert_array_equal(x, expected)
    assert_close(x, oracle(base, -1), np.float64, scale=8)


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
def test_out_of_promoted_result(fn, oracle, takes_axis):
    # int input: the result (and so `out`) is float64
    x = np.arange(12).reshape(3, 4)
    out = np.empty((3, 4))
    assert _call(fn, takes_axis, x, -1, out=out) is out
    assert_close(out, oracle(x, -1), np.float64, scale=8)
    with pytest.raises(ValueError, match="`out`"):
        _call(fn, takes_axis, x, -1, out=np.empty((3, 4), dtype=np.int64))


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
def test_bad_out_raises_naming_out(fn, oracle, takes_axis):
    x = np.linspace(-3, 3, 12).reshape(3, 4)
    with pytest.raises(ValueError, match="`out`.*shape"):
        _call(fn, takes_axis, x, -1, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match="`out`.*shape"):
        _call(fn, takes_axis, x, -1, out=np.empty(12))
    with pytest.raises(ValueError, match="`out`.*dtype"):
        _call(fn, takes_axis, x, -1, out=np.empty((3, 4), dtype=np.float32))
    ro = np.empty((3, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="`out`.*writeable"):
        _call(fn, takes_axis, x, -1, out=ro)
    with pytest.raises(TypeError, match="`out`"):
        _call(fn, takes_axis, x, -1, out=[[0.0] * 4] * 3)


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
def test_out_overlapping_x_other_than_itself_raises(fn, oracle, takes_axis):
    buf = np.linspace(-2, 2, 40)
    x = buf[:30].reshape(3, 10)
    out = buf[10:].reshape(3, 10)      # shifted view of the same memory
    with pytest.raises(ValueError, match="`out`"):
        _call(fn, takes_axis, x, -1, out=out)
    np.testing.assert_array_equal(buf, np.linspace(-2, 2, 40))
    # a view of x with other strides, same shape (the transpose of a square)
    sq = np.linspace(-2, 2, 16).reshape(4, 4)
    with pytest.raises(ValueError, match="`out`"):
        _call(fn, takes_axis, sq, -1, out=sq.T)


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
def test_out_disjoint_views_of_one_buffer_are_fine(fn, oracle, takes_axis):
    buf = np.linspace(-2, 2, 40).reshape(4, 10)
    x, out = buf[:, ::2], buf[:, 1::2]        # interleaved, no shared element
    ref = oracle(x.copy(), -1)
    assert _call(fn, takes_axis, x, -1, out=out) is out
    assert_close(out, ref, np.float64, scale=8)


def test_softplus_out_keeps_beta_and_threshold(rng):
    x = rng.standard_normal(50) * 10
    out = np.empty_like(x)
    softplus(x, beta=2.0, threshold=5.0, out=out)
    assert_close(out, _softplus64(x, 2.0, 5.0), np.float64)


@pytest.mark.parametrize("fn,oracle,takes_axis", CASES, ids=IDS)
def test_out_zero_d_and_empty(fn, oracle, takes_axis):
    e = np.empty((0, 3))
    out = np.empty((0, 3))
    assert _call(fn, takes_axis, e, -1, out=out) is out
    if not takes_axis:
        o = np.empty(())
        assert fn(np.float64(1.5), out=o) is o
        assert_close(o, oracle(np.array(1.5), None), np.float64)
