"""The compiled kernel of zilla_muf.linear_attention (_linear_attention.pyx).

Oracle: the per-channel-gated scores written as a float64 NumPy product over
a (C, C, K) block of decays.
"""

import numpy as np
import pytest

import zilla_muf
from zilla_muf import _linear_attention as kernels

from conftest import REAL_DTYPES, assert_close


def scores_oracle(q, k, gc):
    q, k, gc = (np.asarray(x, np.float64) for x in (q, k, gc))
    C = q.shape[1]
    d = gc[:, :, None, :] - gc[:, None, :, :]              # (M, C, C, K)
    mask = np.tri(C, dtype=bool)[None, :, :, None]
    w = np.exp(np.where(mask, d, -np.inf))
    return np.einsum("mik,mjk,mijk->mij", q, k, w)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_channel_gate_scores(rng, dtype):
    M, C, K = 7, 9, 5
    q = rng.standard_normal((M, C, K)).astype(dtype)
    k = rng.standard_normal((M, C, K)).astype(dtype)
    gc = np.cumsum(-rng.uniform(0, 1, (M, C, K)), axis=1).astype(dtype)
    out = np.full((M, C, C), np.nan, dtype=dtype)
    kernels.channel_gate_scores(q, k, gc, out, 1)
    assert_close(out, scores_oracle(q, k, gc), dtype, scale=10)
    assert np.all(np.triu(out, 1) == 0)


def test_channel_gate_scores_threads(rng):
    M, C, K = 40, 8, 6
    q, k = rng.standard_normal((2, M, C, K))
    gc = np.cumsum(-rng.uniform(0, 3, (M, C, K)), axis=1)
    gc[:, 3:] -= 1e4                                       # very negative gates
    one = np.empty((M, C, C))
    two = np.empty((M, C, C))
    assert kernels.channel_gate_scores(q, k, gc, one, 1) == 1
    used = kernels.channel_gate_scores(q, k, gc, two, 2)
    assert used == (2 if zilla_muf.have_openmp() else 1)
    np.testing.assert_array_equal(one, two)
    assert np.all(np.isfinite(one))
    assert_close(one, scores_oracle(q, k, gc))


def test_channel_gate_scores_bad_shapes():
    a = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="shape"):
        kernels.channel_gate_scores(a, np.zeros((2, 3, 5)), a, np.zeros((2, 3, 3)), 1)
    with pytest.raises(ValueError, match="out"):
        kernels.channel_gate_scores(a, a, a, np.zeros((2, 3, 4)), 1)
    with pytest.raises(ValueError, match="num_threads"):
        kernels.channel_gate_scores(a, a, a, np.zeros((2, 3, 3)), 0)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_unit_lower_solve(rng, dtype):
    from scipy.linalg import solve_triangular

    Bn, C, W = 6, 11, 7
    M = (0.3 * rng.standard_normal((Bn, C, C))).astype(dtype)
    X = rng.standard_normal((Bn, C, W)).astype(dtype)
    L = np.tril(M.astype(np.float64), -1) + np.eye(C)
    ref = np.stack([solve_triangular(L[i], X[i].astype(np.float64), lower=True)
                    for i in range(Bn)])
    got = X.copy()
    kernels.unit_lower_solve(M, got, 1)   # the diagonal and upper part of M unread
    assert_close(got, ref, dtype, scale=10)
    two = X.copy()
    kernels.unit_lower_solve(M, two, 2)
    np.testing.assert_array_equal(two, got)
    with pytest.raises(ValueError, match="M"):
        kernels.unit_lower_solve(np.ascontiguousarray(M[:, :3]), X.copy(), 1)
