"""softmax, log_softmax and log_sum_exp on rows long enough to run the
vector loops of the kernels: every row length around the lane and block
boundaries, the maximum in every lane, NaN and inf in the vector body and in
the tail, results in the subnormal range, in place, and 1 vs 2 threads.

Oracles: scipy.special on the float64 copy of the input.
"""

import numpy as np
import pytest
import scipy.special as sc

from zilla_muf import log_softmax, log_sum_exp, softmax

from conftest import REAL_DTYPES, assert_close, rtol_for

# around 16 and 32 lanes, the 1024-element blocks of the sum without a stored
# output, and a 4096-wide row
LENGTHS = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1023, 1024, 1025,
           2049, 4096, 4099]


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_row_lengths_match_scipy(rng, dtype, n):
    x = (rng.standard_normal((3, n)) * 6).astype(dtype)
    x64 = x.astype(np.float64)
    rtol = rtol_for(dtype)
    # elementwise relative error: |x - max| <= ~60 here, so float32's
    # rounding of x - max costs at most ~4e-6 of relative error
    s = softmax(x)
    assert s.dtype == dtype
    np.testing.assert_allclose(s, sc.softmax(x64, axis=-1), rtol=rtol, atol=0)
    assert_close(log_softmax(x), sc.log_softmax(x64, axis=-1), dtype)
    assert_close(log_sum_exp(x), sc.logsumexp(x64, axis=-1), dtype)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("n", [40, 100, 1030])
def test_maximum_found_in_every_position(rng, dtype, n):
    # row i holds its maximum at position i: a shift by a smaller number
    # would overflow exp (exp(800) is inf in both dtypes)
    x = rng.uniform(-1, 1, size=(n, n)).astype(dtype)
    np.fill_diagonal(x, 800)
    x64 = x.astype(np.float64)
    s = softmax(x)
    np.testing.assert_array_equal(np.diag(s), np.ones(n, dtype))
    np.testing.assert_allclose(s, sc.softmax(x64, axis=-1), rtol=rtol_for(dtype),
                               atol=0)
    assert_close(log_sum_exp(x), sc.logsumexp(x64, axis=-1), dtype)
    ls = log_softmax(x)
    np.testing.assert_array_equal(np.diag(ls), np.zeros(n, dtype))
    assert_close(ls, sc.log_softmax(x64, axis=-1), dtype)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("n", [100, 1100])
def test_nan_and_inf_anywhere_in_long_rows(rng, dtype, n):
    where = [0, 15, 31, 32, 64, n - 1]
    x = rng.standard_normal((2 * len(where) + 1, n)).astype(dtype)
    for k, j in enumerate(where):
        x[2 * k, j] = np.nan
        x[2 * k + 1, j] = np.inf
    x[-1, :] = -np.inf
    s, ls, lse = softmax(x), log_softmax(x), log_sum_exp(x)
    ref = sc.logsumexp(x.astype(np.float64), axis=-1)
    for k in range(len(where)):
        assert np.all(np.isnan(s[2 * k])) and np.all(np.isnan(ls[2 * k]))
        assert np.isnan(lse[2 * k]) and np.isnan(ref[2 * k])
        # a row whose maximum is inf: softmax is undefined (inf - inf), its
        # log-sum-exp is inf
        assert np.all(np.isnan(s[2 * k + 1]))
        assert lse[2 * k + 1] == np.inf == ref[2 * k + 1]
    assert np.all(np.isnan(s[-1])) and lse[-1] == -np.inf == ref[-1]


def test_subnormal_results_float32():
    # exp(x - max) below the smallest normal float32 (exp(-87.3)): results
    # round into the subnormal range instead of flushing to zero
    vals = np.array([0.0, -80.0, -88.0, -90.0, -95.0, -100.0, -102.5, -103.2,
                     -103.9, -104.5, -110.0, -np.inf], dtype=np.float32)
    x = np.resize(vals, (3, 2 * 4096 + 5))
    x[1] = np.roll(x[1], 7)
    x[2, :] = vals[1:].repeat(1000)[: x.shape[1]]
    x[2, 77] = 0.0
    ref = sc.softmax(x.astype(np.float64), axis=-1)
    s = softmax(x)
    tiny = np.finfo(np.float32).smallest_subnormal
    err = np.abs(s.astype(np.float64) - ref)
    bound = np.maximum(rtol_for(np.float32) * ref, tiny)
    assert np.all(err <= bound)
    assert np.any((s > 0) & (s < np.finfo(np.float32).tiny))


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("fn", [softmax, log_softmax], ids=lambda f: f.__name__)
def test_in_place_long_rows_is_exact(rng, dtype, fn):
    x = (rng.standard_normal((5, 4099)) * 5).astype(dtype)
    expect = fn(x.copy())
    got = fn(x, out=x)
    assert got is x
    np.testing.assert_array_equal(x, expect)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("fn", [softmax, log_softmax, log_sum_exp],
                         ids=lambda f: f.__name__)
def test_workers_agree_long_rows(rng, dtype, fn):
    x = (rng.standard_normal((33, 4099)) * 5).astype(dtype)
    np.testing.assert_array_equal(fn(x, workers=2), fn(x, workers=1))
