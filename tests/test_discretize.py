"""zilla_muf.discretize against scipy.signal.cont2discrete, scipy.linalg.expm,
series expansions and numerical integration of the continuous system."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from zilla_muf import bilinear_discretize, zoh_discretize

from conftest import ALL_DTYPES, REAL_DTYPES, assert_close, random_array


def c2d(A, B, dt, method, alpha=None):
    n, m = B.shape
    sys = (A, B, np.eye(n), np.zeros((n, m)))
    Ad, Bd, *_ = scipy.signal.cont2discrete(sys, dt, method=method, alpha=alpha)
    return Ad, Bd


def expm_oracle(a, b, d):
    """ZOH of one scalar (possibly complex) system by the augmented expm."""
    M = np.array([[a * d, b * d], [0.0, 0.0]], dtype=np.complex128)
    E = scipy.linalg.expm(M)
    return E[0, 0], E[0, 1]


def rk4_oracle(a, b, d, steps=400):
    """x(d) for x' = a x + b, x(0) = 1, by RK4: equals A_bar + B_bar."""
    x = np.ones_like(a * b * d)
    h = d / steps
    for _ in range(steps):
        k1 = a * x + b
        k2 = a * (x + h / 2 * k1) + b
        k3 = a * (x + h / 2 * k2) + b
        k4 = a * (x + h * k3) + b
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


# -- diagonal ZOH -------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_zoh_diagonal_matches_expm(rng, dtype):
    A = -random_array(rng, 16, dtype, 0.0, 3.0)
    B = random_array(rng, 16, dtype)
    delta = rng.uniform(0.01, 1.0, 16).astype(np.dtype(dtype).char.lower())
    Ab, Bb = zoh_discretize(A, B, delta)
    assert Ab.dtype == dtype and Bb.dtype == dtype
    expect = np.array([expm_oracle(a, b, d) for a, b, d in
                       zip(A.astype(complex), B.astype(complex), delta.astype(float))])
    ea, eb = expect[:, 0], expect[:, 1]
    if np.dtype(dtype).kind == "f":
        ea, eb = ea.real, eb.real
    assert_close(Ab, ea, dtype, scale=10)
    assert_close(Bb, eb, dtype, scale=10)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_zoh_matches_integration(rng, dtype):
    A = -random_array(rng, 8, dtype, 0.1, 2.0)
    B = random_array(rng, 8, dtype)
    d = 0.7
    Ab, Bb = zoh_discretize(A, B, d)
    np.testing.assert_allclose(Ab + Bb, rk4_oracle(A, B, d), rtol=1e-10)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_zoh_tiny_and_zero_rate(dtype):
    rdt = np.dtype(dtype).char.lower()
    A = np.array([1e-12, -1e-12, 0.0, 1e-30], dtype=dtype)
    if np.dtype(dtype).kind == "c":
        A = A + 1j * np.array([1e-12, 0.0, 0.0, -1e-30])
        A = A.astype(dtype)
    B = np.array([2.0, 3.0, 4.0, 5.0], dtype=dtype)
    delta = np.array([1.0, 0.5, 0.25, 2.0], dtype=rdt)
    Ab, Bb = zoh_discretize(A, B, delta)
    # series: B_bar = delta B (1 + z/2 + z^2/6), z = delta A
    z = delta.astype(np.clongdouble) * A.astype(np.clongdouble)
    series = delta * B.astype(np.clongdouble) * (1 + z / 2 + z * z / 6)
    expect = series if np.dtype(dtype).kind == "c" else series.real
    np.testing.assert_allclose(Bb, expect.astype(np.complex128 if np.dtype(dtype).kind == "c"
                                                 else np.float64),
                               rtol=np.finfo(rdt).eps * 4)
    # the A == 0 limit is exact
    assert Bb[2] == delta[2] * B[2]
    assert Ab[2] == 1.0


def test_zoh_delta_A_1e_minus_12_no_cancellation():
    # naive (exp(z) - 1) / A loses ~4 digits here; expm1 keeps them all
    A = np.array([-1.0, 1.0])
    Ab, Bb = zoh_discretize(A, 1.0, 1e-12)
    np.testing.assert_allclose(Bb, 1e-12 * (1 + A * 1e-12 / 2), rtol=1e-15)
    naive = (np.exp(A * 1e-12) - 1) / A
    assert np.max(np.abs(naive / (1e-12 * (1 + A * 1e-12 / 2)) - 1)) > 1e-6


def test_zoh_broadcast_per_channel_step(rng):
    A = -rng.uniform(0.1, 2, 5) + 1j * rng.uniform(-3, 3, 5)
    delta = rng.uniform(0.01, 0.5, (3, 1))
    Ab, Bb = zoh_discretize(A, 1.0, delta)
    assert Ab.shape == (3, 5) and Bb.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            ea, eb = expm_oracle(A[j], 1.0, delta[i, 0])
            assert Ab[i, j] == pytest.approx(ea, rel=1e-12)
            assert Bb[i, j] == pytest.approx(eb, rel=1e-12)


def test_zoh_real_A_complex_B(rng):
    A = -rng.uniform(0.1, 2, 6)
    B = rng.standard_normal(6) + 1j * rng.standard_normal(6)
    Ab, Bb = zoh_discretize(A, B, 0.3)
    assert Ab.dtype == np.float64 and Bb.dtype == np.complex128
    for j in range(6):
        ea, eb = expm_oracle(A[j], B[j], 0.3)
        assert Ab[j] == pytest.approx(ea.real, rel=1e-13)
        assert Bb[j] == pytest.approx(eb, rel=1e-13)


# -- diagonal bilinear --------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_bilinear_diagonal_matches_cont2discrete(rng, dtype, alpha):
    A = -random_array(rng, 6, dtype, 0.0, 3.0)
    B = random_array(rng, 6, dtype)
    d = 0.2
    Ab, Bb = bilinear_discretize(A, B, d, alpha=alpha)
    assert Ab.dtype == dtype and Bb.dtype == dtype
    if np.dtype(dtype).kind == "f":
        expect = [c2d(np.array([[a]]), np.array([[b]]), d, "gbt", alpha)
                  for a, b in zip(A.astype(float), B.astype(float))]
    else:
        # the complex scalar system as the real 2x2 rotation-scaling block
        expect = []
        for a, b in zip(A.astype(complex), B.astype(complex)):
            Ar = np.array([[a.real, -a.imag], [a.imag, a.real]])
            Br = np.array([[b.real], [b.imag]])
            Ad, Bd = c2d(Ar, Br, d, "gbt", alpha)
            expect.append((np.array([[Ad[0, 0] + 1j * Ad[1, 0]]]),
                           np.array([[Bd[0, 0] + 1j * Bd[1, 0]]])))
    ea = np.array([e[0][0, 0] for e in expect])
    eb = np.array([e[1][0, 0] for e in expect])
    assert_close(Ab, ea, dtype, scale=10)
    assert_close(Bb, eb, dtype, scale=10)


def test_bilinear_named_cases():
    A = np.array([-2.0, 0.5])
    Ab, Bb = bilinear_discretize(A, 1.0, 0.1, alpha=0.0)    # forward Euler
    np.testing.assert_array_equal(Ab, 1 + 0.1 * A)
    np.testing.assert_array_equal(Bb, [0.1, 0.1])
    Ab, Bb = bilinear_discretize(A, 1.0, 0.1, alpha=1.0)    # backward Euler
    np.testing.assert_allclose(Ab, 1 / (1 - 0.1 * A), rtol=1e-15)


# -- dense --------------------------------------------------------------------

@pytest.mark.parametrize("method,alpha", [("zoh", None), ("bilinear", 0.5),
                                          ("gbt", 0.0), ("gbt", 0.3), ("gbt", 1.0)])
def test_dense_matches_cont2discrete(rng, method, alpha):
    A = rng.standard_normal((3, 4, 4))
    B = rng.standard_normal((3, 4, 2))
    delta = np.array([0.05, 0.1, 0.5])
    if method == "zoh":
        Ab, Bb = zoh_discretize(A, B, delta, dense=True)
    else:
        Ab, Bb = bilinear_discretize(A, B, delta, 0.5 if alpha is None else alpha,
                                     dense=True)
    assert Ab.shape == (3, 4, 4) and Bb.shape == (3, 4, 2)
    for k in range(3):
        ea, eb = c2d(A[k], B[k], delta[k], method, alpha)
        np.testing.assert_allclose(Ab[k], ea, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(Bb[k], eb, rtol=1e-12, atol=1e-14)


def test_dense_zoh_diagonal_agrees_with_diagonal_path(rng):
    a = -rng.uniform(0.1, 2, 4)
    Ab, Bb = zoh_discretize(np.diag(a), np.eye(4), 0.3, dense=True)
    da, db = zoh_discretize(a, 1.0, 0.3)
    np.testing.assert_allclose(np.diag(Ab), da, rtol=1e-13)
    np.testing.assert_allclose(np.diag(Bb), db, rtol=1e-13)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_dense_dtype(dtype):
    A = -np.eye(2, dtype=dtype)
    B = np.ones((2, 1), dtype=dtype)
    for fn in (zoh_discretize, bilinear_discretize):
        Ab, Bb = fn(A, B, np.asarray(0.1, dtype), dense=True)
        assert Ab.dtype == dtype and Bb.dtype == dtype


# -- dtypes -------------------------------------------------------------------

@pytest.mark.parametrize("fn", [zoh_discretize, bilinear_discretize])
def test_dtype_rules(fn):
    i = np.array([-1, -2])
    Ab, Bb = fn(i, i, 1)
    assert Ab.dtype == np.float64 and Bb.dtype == np.float64
    h = np.array([-1.0, -2.0], np.float16)
    Ab, Bb = fn(h, h, np.float16(0.5))
    assert Ab.dtype == np.float32 and Bb.dtype == np.float32
    f = np.array([-1.0], np.float32)
    Ab, Bb = fn(f, np.array([1.0], np.complex64), np.float32(0.1))
    assert Ab.dtype == np.float32 and Bb.dtype == np.complex64
    Ab, Bb = fn(f.astype(np.complex64), f, np.float64(0.1))
    assert Ab.dtype == np.complex128 and Bb.dtype == np.complex128
    Ab, Bb = fn(f, f, np.array(0.1))
    assert Ab.dtype == np.float64 and Bb.dtype == np.float64
    # Python numbers are weak, as in np.result_type: float32 data stays float32
    Ab, Bb = fn(f, 1.0, 0.1)
    assert Ab.dtype == np.float32 and Bb.dtype == np.float32
    Ab, Bb = fn(f, 1j, 0.1)
    assert Ab.dtype == np.float32 and Bb.dtype == np.complex64


# -- errors -------------------------------------------------------------------

def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`A`.*square"):
        zoh_discretize(np.ones((3, 2)), np.ones((3, 1)), 0.1, dense=True)
    with pytest.raises(ValueError, match="`A`.*square"):
        bilinear_discretize(np.ones(3), np.ones((3, 1)), 0.1, dense=True)
    with pytest.raises(ValueError, match="`B`"):
        zoh_discretize(np.eye(3), np.ones((2, 1)), 0.1, dense=True)
    with pytest.raises(ValueError, match="`delta`"):
        zoh_discretize(np.ones((2, 3, 3)), np.ones((2, 3, 1)), [0.1, 0.2, 0.3], dense=True)
    for bad in (-0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match="`alpha`"):
            bilinear_discretize([-1.0], [1.0], 0.1, alpha=bad)
    with pytest.raises(TypeError, match="`alpha`"):
        bilinear_discretize([-1.0], [1.0], 0.1, alpha=0.5j)
    with pytest.raises(TypeError, match="`delta`"):
        zoh_discretize([-1.0], [1.0], 0.1j)
    with pytest.raises(TypeError, match="`A`"):
        zoh_discretize(np.array(["a"]), [1.0], 0.1)
    with pytest.raises(TypeError, match="`B`"):
        bilinear_discretize([1.0], np.array([None]), 0.1)
    with pytest.raises(ValueError, match="`A`.*`B`"):
        zoh_discretize(np.ones(3), np.ones(4), 0.1)
    with pytest.raises(ValueError, match="`workers`"):
        zoh_discretize(np.ones(3), np.ones(3), 0.1, workers=0)


# -- contract -----------------------------------------------------------------

@pytest.mark.parametrize("fn", [zoh_discretize, bilinear_discretize])
def test_readonly_noncontiguous_memmap_unmodified(fn, rng, tmp_path):
    A = -rng.uniform(0.1, 2, (4, 12)) + 1j * rng.standard_normal((4, 12))
    B = rng.standard_normal((4, 12))
    d = rng.uniform(0.01, 0.1, (4, 1))
    expect = fn(np.ascontiguousarray(A[:, ::3]), np.ascontiguousarray(B[:, ::3]), d)
    mm = np.memmap(tmp_path / "A.dat", dtype=A.dtype, mode="w+", shape=A.shape)
    mm[:] = A
    mm.flush()
    ro = np.memmap(tmp_path / "A.dat", dtype=A.dtype, mode="r", shape=A.shape)
    Bro = B.copy()
    Bro.setflags(write=False)
    got = fn(ro[:, ::3], Bro[:, ::3], d)
    for g, e in zip(got, expect):
        np.testing.assert_array_equal(g, e)
    A0, B0 = A.copy(), B.copy()
    fn(A, B, d)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(B, B0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_workers_and_threads_agree(rng, dtype):
    A = -random_array(rng, (50, 300), dtype, 0.0, 2.0)
    B = random_array(rng, (50, 300), dtype)
    d = np.asarray(0.05, dtype=np.dtype(dtype).char.lower())
    for fn in (zoh_discretize, bilinear_discretize):
        ref = fn(A, B, d, workers=1)
        for w in (2, -1):
            for g, e in zip(fn(A, B, d, workers=w), ref):
                np.testing.assert_array_equal(g, e)
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda _: fn(A, B, d, workers=2), range(8)))
        for o in outs:
            for g, e in zip(o, ref):
                np.testing.assert_array_equal(g, e)


def test_empty():
    Ab, Bb = zoh_discretize(np.empty((0, 3)), 1.0, 0.1)
    assert Ab.shape == (0, 3) and Bb.shape == (0, 3)


# -- identities ---------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(re=st.floats(-5, 5), im=st.floats(-5, 5), d=st.floats(1e-6, 2.0),
       cplx=st.booleans())
def test_zoh_composition(re, im, d, cplx):
    # two ZOH steps of d equal one step of 2d (constant input):
    # A2 = A1^2 and B2 = A1 B1 + B1
    a = complex(re, im) if cplx else re
    A1, B1 = zoh_discretize([a], [1.0], d)
    A2, B2 = zoh_discretize([a], [1.0], 2 * d)
    np.testing.assert_allclose(A2, A1 * A1, rtol=1e-12)
    np.testing.assert_allclose(B2, A1 * B1 + B1, rtol=1e-11, atol=1e-14 * abs(B2[0]))


@settings(max_examples=30, deadline=None)
@given(a=st.floats(-50, 50), d=st.floats(1e-3, 1.0), alpha=st.floats(0, 1))
def test_bilinear_is_one_step_of_the_theta_method(a, d, alpha):
    # x1 = x0 + d ((1 - alpha) (a x0 + u) + alpha (a x1 + u)) for u = 1, x0 = 1
    if abs(1 - alpha * d * a) < 1e-3:
        return
    Ab, Bb = bilinear_discretize([a], [1.0], d, alpha=alpha)
    x1 = Ab[0] + Bb[0]
    rhs = 1 + d * ((1 - alpha) * (a + 1) + alpha * (a * x1 + 1))
    assert x1 == pytest.approx(rhs, rel=1e-12, abs=1e-12)
