"""IEEE special values in the structured products and complex_ops.

Oracles: NumPy's complex division and np.exp (C99 Annex G special values),
float64/longdouble loops, and the definition of the semiseparable matrix.
"""

import itertools

import numpy as np
import pytest

import zilla_muf
from zilla_muf import complex_exp, diag_complex_matrix_exp

from conftest import COMPLEX_DTYPES, REAL_DTYPES


# -- semiseparable_matrix: exact zeros above the diagonal ---------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES + COMPLEX_DTYPES)
def test_semiseparable_matrix_upper_triangle_is_exactly_zero(dtype, rng):
    n, r = 5, 2
    a = np.full(n, 0.5, dtype=dtype)
    B = np.ones((n, r), dtype=dtype)
    C = np.ones((n, r), dtype=dtype)
    B[3, 0] = np.inf
    C[1, 1] = -np.inf
    C[2, 0] = np.nan
    M = zilla_muf.semiseparable_matrix(a, B, C)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    assert (M[upper] == 0).all()
    # the lower triangle keeps IEEE arithmetic: a row with C = nan is nan
    assert np.isnan(M[2, :3]).all()
    # batched and broadcast
    Mb = zilla_muf.semiseparable_matrix(np.stack([a, a]), B, C)
    assert (Mb[:, upper] == 0).all()


# -- cauchy_matvec: scaled complex division -----------------------------------

@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
@pytest.mark.parametrize("conj_pairs", [False, True])
@pytest.mark.parametrize("gap", [1e-30, 1e-25, 1e-20, 1e-19, 1e-10, 1.0,
                                 1e10, 1e19, 1e20, 1e25, 1e30])
def test_cauchy_tiny_and_huge_distances(dtype, conj_pairs, gap):
    if np.dtype(dtype) == np.complex128:
        gap = gap ** 10          # 1e-300 ... 1e300: the double range
    w = np.array([1.0 + 0.5j, -0.25 + 2.0j], dtype=dtype)
    # a pole at 0, so that the node's distance to it is exact
    lam = np.array([0.0, -0.7 + 0.1j], dtype=dtype)
    z = np.array([gap * (0.6 + 0.8j), gap * (-1.0 + 0.0j), gap * 1j],
                 dtype=np.complex128).astype(dtype)
    got = zilla_muf.cauchy_matvec(z, lam, w, conj_pairs=conj_pairs)
    zl = z.astype(np.clongdouble)[:, None]
    laml = lam.astype(np.clongdouble)[None, :]
    wl = w.astype(np.clongdouble)[None, :]
    ref = (wl / (zl - laml)).sum(-1)
    if conj_pairs:
        ref = ref + (np.conj(wl) / (zl - np.conj(laml))).sum(-1)
    assert np.isfinite(got).all()
    tol = 1e-5 if np.dtype(dtype) == np.complex64 else 1e-12
    np.testing.assert_allclose(got.astype(np.clongdouble), ref, rtol=tol)


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
def test_cauchy_matches_numpy_divide_at_extremes(dtype, rng):
    # per-term quotients straight from np.divide (which scales), one pole
    big = np.finfo(np.dtype(dtype).char.lower()).max / 4
    d = np.array([1e-20, 3e-21 + 1e-21j, 1e20j, big, -big * 1j, 1e-35], dtype=dtype)
    lam = np.array([0.0], dtype=dtype)
    w = np.array([1.0 - 1.0j], dtype=dtype)
    got = zilla_muf.cauchy_matvec(d, lam, w)
    ref = np.divide(w[0], d)
    tol = 1e-5 if np.dtype(dtype) == np.complex64 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol)


def test_cauchy_node_equal_to_pole_gives_non_finite():
    lam = np.array([0.5 + 0.5j, 1.0 + 0.0j], dtype=np.complex64)
    got = zilla_muf.cauchy_matvec(lam[:1], lam, np.ones(2, dtype=np.complex64))
    assert not np.isfinite(got).all()


# -- complex_exp: NumPy's special values --------------------------------------

_PARTS = [-np.inf, np.inf, np.nan, 0.0, -0.0, 1.0, -2.0, 3.0, 88.0, 100.0,
          709.5, 710.0, 1400.0, 1e30, -1e30, 1e300]


def _grid(dtype):
    real = np.dtype(dtype).char.lower()
    with np.errstate(over="ignore"):
        vals = np.array(_PARTS, dtype=np.float64).astype(real)
    pairs = np.array(list(itertools.product(vals, vals)))
    z = np.empty(len(pairs), dtype=dtype)
    z.real, z.imag = pairs[:, 0], pairs[:, 1]
    return z


def _same_special(got, ref, rtol):
    # equal NaN pattern per part, equal infinities, equal zeros (with sign),
    # finite values to rounding
    for g, r in ((got.real, ref.real), (got.imag, ref.imag)):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(r))
        fin = np.isfinite(r)
        np.testing.assert_array_equal(g[~fin & ~np.isnan(r)], r[~fin & ~np.isnan(r)])
        zero = fin & (r == 0)
        np.testing.assert_array_equal(g[zero], 0)
        np.testing.assert_array_equal(np.signbit(g[zero]), np.signbit(r[zero]))
        np.testing.assert_allclose(g[fin], r[fin], rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
def test_complex_exp_special_values_equal_numpy(dtype):
    z = _grid(dtype)
    with np.errstate(all="ignore"):
        ref = np.exp(z)
    got = complex_exp(z)
    assert got.dtype == dtype
    _same_special(got, ref, 1e-6 if np.dtype(dtype) == np.complex64 else 1e-13)


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
def test_diag_complex_matrix_exp_special_values(dtype):
    z = _grid(dtype)
    delta = np.ones(z.shape, dtype=np.dtype(dtype).char.lower())
    with np.errstate(all="ignore"):
        ref = np.exp(z)
    _same_special(diag_complex_matrix_exp(z, delta), ref,
                  1e-6 if np.dtype(dtype) == np.complex64 else 1e-13)


# -- toeplitz auto: non-finite inputs take the direct method ------------------

@pytest.mark.parametrize("dtype", REAL_DTYPES + COMPLEX_DTYPES)
@pytest.mark.parametrize("where", ["signal_end", "kernel", "signal_inf"])
def test_toeplitz_auto_is_exact_with_non_finite_inputs(dtype, where, rng):
    n, K = 4096, 512          # long kernel: "auto" would pick the FFT
    x = rng.standard_normal((2, n)).astype(dtype)
    k = (rng.standard_normal(K) / K).astype(dtype)
    if where == "signal_end":
        x[0, -1] = np.nan
    elif where == "kernel":
        k[-1] = np.nan
    else:
        x[1, n // 2] = np.inf
    y = zilla_muf.toeplitz_matvec(k, x)
    direct = zilla_muf.toeplitz_matvec(k, x, method="direct")
    np.testing.assert_array_equal(y, direct)
    if where == "signal_end":
        # only the last output of that row depends on the NaN
        assert np.isnan(y[0, -1]) and np.isfinite(y[0, :-1]).all()
        assert np.isfinite(y[1]).all()
    elif where == "kernel":
        assert np.isfinite(y[:, :K - 1]).all() and np.isnan(y[:, K - 1:]).all()
    else:
        assert np.isfinite(y[1, :n // 2]).all() and np.isfinite(y[0]).all()
    # the FFT, asked for, spreads the NaN (the documented behaviour)
    if where == "signal_end":
        assert np.isnan(zilla_muf.toeplitz_matvec(k, x, method="fft")[0]).all()
