"""The SciPy operator views of the structured matrices.

Oracles: the dense matrices (scipy.linalg.toeplitz, the Cauchy and
Vandermonde definitions by NumPy broadcasting, semiseparable_matrix, which
test_structured.py checks against a Python loop); a least-squares solve by
numpy.linalg.lstsq on the dense matrix.
"""

import doctest

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg as spla

import zilla_muf
from zilla_muf.structured import (
    cauchy_operator,
    semiseparable_operator,
    toeplitz_operator,
    vandermonde_operator,
)


def _c(rng, shape, complex_=True):
    x = rng.uniform(-1, 1, shape)
    if complex_:
        x = x + 1j * rng.uniform(-1, 1, shape)
    return x


def _cases(rng, complex_):
    n, r = 7, 2
    a = rng.uniform(0.3, 0.9, n) if not complex_ else 0.8 * _c(rng, n)
    B, C = _c(rng, (n, r), complex_), _c(rng, (n, r), complex_)
    yield semiseparable_operator(a, B, C), zilla_muf.semiseparable_matrix(a, B, C)
    for K in (3, 7, 10):
        k = _c(rng, K, complex_)
        col = np.concatenate([k, np.zeros(max(0, n - K))])[:n]
        yield toeplitz_operator(k, n), scipy.linalg.toeplitz(col, np.zeros(n))
    z, p = _c(rng, 5, complex_) + 3, _c(rng, 4, complex_)
    yield cauchy_operator(z, p), 1.0 / (z[:, None] - p[None, :])
    p = 0.9 * _c(rng, 4, complex_)
    yield vandermonde_operator(p, 6), p[None, :] ** np.arange(6)[:, None]


@pytest.mark.parametrize("complex_", [False, True])
def test_operators_against_dense(complex_, rng):
    for op, M in _cases(rng, complex_):
        m, n = M.shape
        assert op.shape == M.shape
        x = _c(rng, n)
        v = _c(rng, m)
        X = _c(rng, (n, 3))
        V = _c(rng, (m, 3))
        tol = dict(rtol=1e-11, atol=1e-11 * np.abs(M).max())
        np.testing.assert_allclose(op.matvec(x), M @ x, **tol)
        np.testing.assert_allclose(op.matvec(x[:, None]).ravel(), M @ x, **tol)
        np.testing.assert_allclose(op.rmatvec(v), M.conj().T @ v, **tol)
        np.testing.assert_allclose(op.matmat(X), M @ X, **tol)
        np.testing.assert_allclose(op.rmatmat(V), M.conj().T @ V, **tol)
        np.testing.assert_allclose(op.H @ v, M.conj().T @ v, **tol)
        np.testing.assert_allclose(op.H.H @ x, M @ x, **tol)
        np.testing.assert_allclose(op.T @ v, M.T @ v, **tol)
        # real input vectors too
        np.testing.assert_allclose(op @ x.real, M @ x.real, **tol)


def test_operator_in_lsqr_and_gmres(rng):
    # six columns of a 30-point DFT matrix, shrunk a little: well conditioned
    p = 0.98 * np.exp(2j * np.pi * np.array([0, 3, 7, 11, 19, 25]) / 30)
    op = vandermonde_operator(p, 30)
    M = p[None, :] ** np.arange(30)[:, None]
    y = _c(rng, 30)
    sol = spla.lsqr(op, y, atol=1e-14, btol=1e-14, iter_lim=500)[0]
    want = np.linalg.lstsq(M, y, rcond=None)[0]
    np.testing.assert_allclose(sol, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    # a well-conditioned semiseparable system: C_i . B_i large on the diagonal
    n = 40
    a = rng.uniform(0.1, 0.5, n)
    B = np.ones((n, 1))
    C = np.full((n, 1), 4.0)
    op = semiseparable_operator(a, B, C)
    b = rng.standard_normal(n)
    x, info = spla.gmres(op, b, rtol=1e-12, atol=0.0)
    assert info == 0
    np.testing.assert_allclose(zilla_muf.semiseparable_matrix(a, B, C) @ x, b,
                               rtol=1e-9, atol=1e-9)


def test_operators_bad_input():
    with pytest.raises(ValueError, match="`a`"):
        semiseparable_operator(np.ones((2, 3)), np.ones((3, 1)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="`B`"):
        semiseparable_operator(np.ones(3), np.ones((4, 1)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="`C`"):
        semiseparable_operator(np.ones(3), np.ones((3, 1)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="`n`"):
        toeplitz_operator([1.0], 0)
    with pytest.raises(ValueError, match="`kernel`"):
        toeplitz_operator(np.ones((2, 2)), 3)
    with pytest.raises(ValueError, match="`poles`"):
        cauchy_operator([1.0], np.ones((2, 2)))
    with pytest.raises(ValueError, match="`length`"):
        vandermonde_operator([0.5], -1)
    with pytest.raises(TypeError, match="`nodes`"):
        cauchy_operator(["a"], [1.0])
    op = toeplitz_operator([1.0, 2.0], 3)
    with pytest.raises(ValueError):
        op.matvec(np.ones(4))


def test_operators_exported():
    for name in ("semiseparable_operator", "toeplitz_operator", "cauchy_operator",
                 "vandermonde_operator"):
        assert getattr(zilla_muf, name) is getattr(zilla_muf.structured, name)
        assert name in zilla_muf.__all__ and name in zilla_muf.structured.__all__


def test_operator_docstring_examples():
    import zilla_muf._operators as mod
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(
        mod, "zilla_muf._operators", globs={"np": np}) if t.examples]
    assert len(tests) == 4
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                   | doctest.NORMALIZE_WHITESPACE)
    with np.printoptions(legacy=False):
        for t in tests:
            runner.run(t)
    assert runner.summarize(verbose=False).failed == 0
