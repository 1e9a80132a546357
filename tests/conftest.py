"""Shared test configuration: tolerances by dtype, random generators."""

import numpy as np
import pytest

REAL_DTYPES = [np.float32, np.float64]
COMPLEX_DTYPES = [np.complex64, np.complex128]
ALL_DTYPES = REAL_DTYPES + COMPLEX_DTYPES

# Relative tolerances against a float64 / long double oracle, by dtype.
_RTOL = {
    np.dtype(np.float32): 2e-5,
    np.dtype(np.complex64): 2e-5,
    np.dtype(np.float64): 1e-12,
    np.dtype(np.complex128): 1e-12,
}


def rtol_for(dtype, scale=1.0):
    """Relative tolerance of a result of `dtype` (times `scale`)."""
    return _RTOL[np.dtype(dtype)] * scale


def assert_close(actual, desired, dtype=None, scale=1.0, atol_rel=None):
    """Compare to an oracle with the tolerance of `dtype`.

    The absolute tolerance is relative to ``max |desired|`` so that values
    near zero in a large result are judged by the result's size.
    """
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    dtype = actual.dtype if dtype is None else np.dtype(dtype)
    rtol = rtol_for(dtype, scale)
    mag = float(np.max(np.abs(desired))) if desired.size else 0.0
    atol = (rtol if atol_rel is None else atol_rel) * max(mag, np.finfo(np.float64).tiny)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol)


def random_array(rng, shape, dtype, low=-1.0, high=1.0):
    """Uniform random values of `dtype`; complex values get both parts."""
    dtype = np.dtype(dtype)
    x = rng.uniform(low, high, size=shape)
    if dtype.kind == "c":
        x = x + 1j * rng.uniform(low, high, size=shape)
    return x.astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)
