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
