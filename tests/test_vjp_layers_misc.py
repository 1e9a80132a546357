"""Gradients of fft_conv, discretize and complex_ops through zilla_muf.vjp.

Oracles: the dense Jacobian of the float64/complex128 forward built column
by column by central differences, and directional differences of the loss
(hypothesis over shapes and broadcasting).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zilla_muf
from gradcheck import check_dense, check_directional


def _c(rng, shape, complex_=True, scale=1.0):
    x = rng.uniform(-scale, scale, shape)
    if complex_:
        x = x + 1j * rng.uniform(-scale, scale, shape)
    return x


@pytest.mark.parametrize("K", [1, 4, 9])
@pytest.mark.parametrize("complex_", [False, True])
def test_fft_conv(K, complex_, rng):
    kw = dict(signal=_c(rng, (2, 6), complex_), kernel=_c(rng, K, complex_))
    check_dense(zilla_muf.fft_conv, kw, ["signal", "kernel"], rng)


def test_fft_conv_batched_kernel(rng):
    kw = dict(signal=_c(rng, (3, 7, 2), False), kernel=_c(rng, (3, 4, 1), False),
              axis=1, workers=2)
    check_dense(zilla_muf.fft_conv, kw, ["signal", "kernel"], rng)


@pytest.mark.parametrize("fun", [zilla_muf.zoh_discretize,
                                 zilla_muf.bilinear_discretize],
                         ids=["zoh", "bilinear"])
@pytest.mark.parametrize("complex_", [False, True])
def test_discretize_diagonal(fun, complex_, rng):
    A = -rng.uniform(0.1, 2, 5) + (1j * rng.uniform(-3, 3, 5) if complex_ else 0)
    A[0] = 1e-9   # near the removable point of (e^z - 1)/z
    kw = dict(A=A, B=_c(rng, 5, complex_), delta=rng.uniform(0.01, 0.5, 5))
    if fun is zilla_muf.bilinear_discretize:
        kw["alpha"] = 0.3
    check_dense(fun, kw, ["A", "B", "delta"], rng)


def test_discretize_diagonal_real_A_complex_B_broadcast(rng):
    kw = dict(A=-rng.uniform(0.1, 2, (1, 4)), B=_c(rng, (3, 4)),
              delta=rng.uniform(0.01, 0.5, (3, 1)))
    check_dense(zilla_muf.zoh_discretize, kw, ["A", "B", "delta"], rng)


@pytest.mark.parametrize("fun", [zilla_muf.zoh_discretize,
                                 zilla_muf.bilinear_discretize],
                         ids=["zoh", "bilinear"])
@pytest.mark.parametrize("complex_", [False, True])
def test_discretize_dense(fun, complex_, rng):
    n, m = 3, 2
    A = _c(rng, (2, n, n), complex_) - 2 * np.eye(n)
    kw = dict(A=A, B=_c(rng, (n, m), complex_), delta=rng.uniform(0.05, 0.5, 2),
              dense=True)
    check_dense(fun, kw, ["A", "B", "delta"], rng)


def test_psi_small_and_large_arguments():
    from zilla_muf.discretize import _psi
    import math
    # against the series evaluated in exact rational arithmetic
    from fractions import Fraction
    for z in (1e-12, 1e-5, 0.1, 0.249, 0.251, 0.9, 0.999, 1.001, 3.0, -0.99, -5.0):
        fz = Fraction(z)
        exact = sum(Fraction(k - 1, math.factorial(k)) * fz ** (k - 2)
                    for k in range(2, 60))
        np.testing.assert_allclose(_psi(np.array(z)), float(exact), rtol=5e-15)


def test_complex_exp(rng):
    check_dense(zilla_muf.complex_exp, dict(z=_c(rng, (2, 3))), ["z"], rng)
    check_dense(zilla_muf.complex_exp, dict(z=rng.uniform(-1, 1, 4)), ["z"], rng)


def test_diag_complex_matrix_exp(rng):
    kw = dict(eigs=_c(rng, (2, 3)), delta=rng.uniform(0.1, 1, (2, 1)))
    check_dense(zilla_muf.diag_complex_matrix_exp, kw, ["eigs", "delta"], rng)
    check_dense(zilla_muf.diag_complex_matrix_exp, dict(eigs=_c(rng, 3)), ["eigs"],
                rng)


@pytest.mark.parametrize("axis", [0, -1])
def test_conjugate_pair_output(axis, rng):
    kw = dict(C=_c(rng, (3, 4)), h=_c(rng, (2, 3, 4)), axis=axis)
    check_dense(zilla_muf.conjugate_pair_output, kw, ["C", "h"], rng)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), which=st.sampled_from(["fft", "zoh", "bil", "exp", "cpo"]))
def test_property(data, which):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    n = data.draw(st.integers(1, 6))
    complex_ = data.draw(st.booleans())
    if which == "fft":
        fun = zilla_muf.fft_conv
        kw = dict(signal=_c(rng, lead + (n,), complex_),
                  kernel=_c(rng, data.draw(st.integers(1, 8)), complex_))
        names = ["signal", "kernel"]
    elif which in ("zoh", "bil"):
        fun = zilla_muf.zoh_discretize if which == "zoh" else zilla_muf.bilinear_discretize
        A = -rng.uniform(0.05, 2, (n,)) + (1j * rng.uniform(-2, 2, n) if complex_ else 0)
        kw = dict(A=A, B=_c(rng, lead + (n,), complex_),
                  delta=rng.uniform(0.01, 1, lead + (1,)))
        names = ["A", "B", "delta"]
    elif which == "exp":
        fun = zilla_muf.diag_complex_matrix_exp
        kw = dict(eigs=_c(rng, lead + (n,), complex_), delta=rng.uniform(0.1, 1, n))
        names = ["eigs", "delta"]
    else:
        fun = zilla_muf.conjugate_pair_output
        kw = dict(C=_c(rng, (n,)), h=_c(rng, lead + (n,)))
        names = ["C", "h"]
    check_directional(fun, kw, names, rng, rtol=1e-6)


def test_dense_zoh_against_expm_frechet(rng):
    # the gradient of <G, expm(X)> is the Frechet derivative at X^H in G
    import scipy.linalg
    n = 4
    A = _c(rng, (n, n)) - np.eye(n)
    B = np.zeros((n, 0))
    delta = 0.7
    G = _c(rng, (n, n))
    _, pullback = zilla_muf.vjp(zilla_muf.zoh_discretize, A, B, delta, dense=True)
    g = pullback((G, None))
    X = delta * A
    want = delta * scipy.linalg.expm_frechet(X.conj().T, G, compute_expm=False)
    np.testing.assert_allclose(g["A"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", [1e-3, 0.2, 0.9, 2.0, 5.0, 40.0, 300.0])
@pytest.mark.parametrize("complex_", [False, True])
def test_expm_frechet_batch_against_scipy(norm, complex_, rng):
    # every Pade degree and, beyond the last bound, the squarings; one
    # batch, each matrix against scipy.linalg.expm_frechet
    from scipy.linalg import expm_frechet
    from zilla_muf.discretize import _expm_frechet_batch
    A = _c(rng, (3, 5, 5), complex_)
    A *= norm / np.max(np.sum(np.abs(A), axis=-2))
    A[1] *= 0.5
    E = _c(rng, (3, 5, 5), complex_)
    L = _expm_frechet_batch(A, E)
    for i in range(3):
        want = expm_frechet(A[i], E[i], compute_expm=False)
        np.testing.assert_allclose(L[i], want, rtol=0,
                                   atol=1e-13 * max(1.0, norm) * np.abs(want).max())


@pytest.mark.parametrize("complex_", [False, True])
def test_zoh_dense_large_steps(complex_, rng):
    # delta large enough that the pullback scales and squares
    n, m = 3, 2
    A = _c(rng, (2, n, n), complex_) * 4 - np.eye(n)
    kw = dict(A=A, B=_c(rng, (n, m), complex_), delta=np.array([1.5, 3.0]),
              dense=True)
    check_dense(zilla_muf.zoh_discretize, kw, ["A", "B", "delta"], rng)
