"""zilla_muf.complex_ops against NumPy/long-double exponentials, the dense
matrix exponential and the explicit full conjugate spectrum."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zilla_muf import complex_exp, conjugate_pair_output, diag_complex_matrix_exp

from conftest import ALL_DTYPES, COMPLEX_DTYPES, assert_close, random_array

COMPLEX_OF = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128,
              np.dtype(np.complex64): np.complex64, np.dtype(np.complex128): np.complex128}
REAL_OF = {np.dtype(np.complex64): np.float32, np.dtype(np.complex128): np.float64}


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_complex_exp_matches_long_double(rng, dtype):
    z = random_array(rng, (7, 11), dtype, -20.0, 20.0)
    w = complex_exp(z)
    out_dtype = COMPLEX_OF[np.dtype(dtype)]
    assert w.dtype == out_dtype and w.shape == z.shape
    expect = np.exp(z.astype(np.clongdouble)).astype(np.complex128)
    assert_close(w, expect, out_dtype, scale=4, atol_rel=0.0)


def test_complex_exp_dtypes_and_specials():
    assert complex_exp(np.array([1, 2])).dtype == np.complex128
    assert complex_exp(np.array([1.0], np.float16)).dtype == np.complex64
    assert complex_exp(np.array([True])).dtype == np.complex128
    w = complex_exp(np.array([np.inf, -np.inf, 3.0, 0.0]))
    np.testing.assert_array_equal(w.real, [np.inf, 0.0, np.exp(3.0), 1.0])
    np.testing.assert_array_equal(w.imag, [0.0, 0.0, 0.0, 0.0])
    assert np.isnan(complex_exp(np.nan + 1j)).all()
    s = complex_exp(1j * np.pi)
    assert np.ndim(s) == 0
    assert s == pytest.approx(-1.0 + 0j, abs=1e-15)


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
def test_diag_matrix_exp_matches_expm(rng, dtype):
    eigs = random_array(rng, 6, dtype, -2.0, 2.0)
    delta = rng.uniform(0.01, 1.0, (4, 1)).astype(REAL_OF[np.dtype(dtype)])
    d = diag_complex_matrix_exp(eigs, delta)
    assert d.dtype == dtype and d.shape == (4, 6)
    for k in range(4):
        E = scipy.linalg.expm(np.diag(delta[k, 0].astype(np.float64)
                                      * eigs.astype(np.complex128)))
        assert_close(d[k], np.diag(E), dtype, scale=10)
        assert np.count_nonzero(E - np.diag(np.diag(E))) == 0


def test_diag_matrix_exp_default_delta_and_scalar_delta(rng):
    eigs = random_array(rng, 9, np.complex64)
    np.testing.assert_array_equal(diag_complex_matrix_exp(eigs), complex_exp(eigs))
    # a Python number does not promote float32/complex64 data
    assert diag_complex_matrix_exp(eigs, 0.5).dtype == np.complex64
    assert diag_complex_matrix_exp(eigs, np.float64(0.5)).dtype == np.complex128


def test_diag_matrix_exp_real_step_times_infinite_part():
    # delta * lambda as real products: 0 * (a + i inf) would be nan + nan j
    # as a complex product; here the real part stays exact
    d = diag_complex_matrix_exp(np.array([-np.inf + 0j]), 2.0)
    assert d[0] == 0


def full_spectrum_output(C, h, axis):
    shape = np.broadcast_shapes(C.shape, h.shape)
    C = np.moveaxis(np.broadcast_to(C, shape), axis, -1)
    h = np.moveaxis(np.broadcast_to(h, shape), axis, -1)
    Cf = np.concatenate([C, np.conj(C)], axis=-1).astype(np.clongdouble)
    hf = np.concatenate([h, np.conj(h)], axis=-1).astype(np.clongdouble)
    y = np.sum(Cf * hf, axis=-1)
    assert np.all(np.abs(y.imag) <= 1e-12 * (1 + np.abs(y.real)))
    return y.real.astype(np.float64)


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_conjugate_pair_output_matches_full_spectrum(rng, dtype, axis):
    C = random_array(rng, (3, 5, 8), dtype)
    h = random_array(rng, (3, 5, 8), dtype)
    y = conjugate_pair_output(C, h, axis=axis)
    assert y.dtype == REAL_OF[np.dtype(dtype)]
    assert y.shape == tuple(np.delete(np.array([3, 5, 8]), axis))
    assert_close(y, full_spectrum_output(C, h, axis), y.dtype, scale=10)


def test_conjugate_pair_output_broadcasts(rng):
    C = random_array(rng, 16, np.complex128)
    h = random_array(rng, (2, 7, 16), np.complex128)
    y = conjugate_pair_output(C, h)
    assert y.shape == (2, 7)
    np.testing.assert_allclose(y, full_spectrum_output(C, h, -1), rtol=1e-12)
    # real inputs: 2 * sum(C h)
    r = conjugate_pair_output(np.array([1.0, 2.0]), np.array([3, 4]))
    assert r == 22.0 and r.dtype == np.float64
    assert conjugate_pair_output(np.ones((3, 0), complex), np.ones((3, 0))).tolist() == [0, 0, 0]


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="`delta`"):
        diag_complex_matrix_exp([1j], 1j)
    with pytest.raises(TypeError, match="`eigs`"):
        diag_complex_matrix_exp(np.array(["x"]))
    with pytest.raises(TypeError, match="`z`"):
        complex_exp(np.array([None]))
    with pytest.raises(ValueError, match="`eigs`.*`delta`"):
        diag_complex_matrix_exp(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="`C`.*`h`"):
        conjugate_pair_output(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="`axis`"):
        conjugate_pair_output(np.ones((2, 3)), np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="`C`"):
        conjugate_pair_output(1.0, 2.0)
    with pytest.raises(TypeError, match="`h`"):
        conjugate_pair_output(np.ones(2), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="`workers`"):
        complex_exp([1.0], workers=0)


def test_readonly_noncontiguous_memmap_unmodified(rng, tmp_path):
    z = random_array(rng, (6, 20), np.complex128)
    mm = np.memmap(tmp_path / "z.dat", dtype=z.dtype, mode="w+", shape=z.shape)
    mm[:] = z
    mm.flush()
    ro = np.memmap(tmp_path / "z.dat", dtype=z.dtype, mode="r", shape=z.shape)
    sub = np.ascontiguousarray(z[:, ::3])
    np.testing.assert_array_equal(complex_exp(ro[:, ::3]), complex_exp(sub))
    d = rng.uniform(size=(6, 1))
    d.setflags(write=False)
    np.testing.assert_array_equal(diag_complex_matrix_exp(ro[:, ::3], d),
                                  diag_complex_matrix_exp(sub, d.copy()))
    np.testing.assert_array_equal(conjugate_pair_output(ro[::2], ro[::2, ::-1], axis=0),
                                  conjugate_pair_output(z[::2].copy(), z[::2, ::-1].copy(),
                                                        axis=0))
    z0 = z.copy()
    complex_exp(z)
    conjugate_pair_output(z, z)
    np.testing.assert_array_equal(z, z0)


def test_workers_and_threads_agree(rng):
    z = random_array(rng, (40, 500), np.complex64)
    C = random_array(rng, (40, 500), np.complex64)
    funcs = [lambda w: complex_exp(z, workers=w),
             lambda w: diag_complex_matrix_exp(z, 0.3, workers=w),
             lambda w: conjugate_pair_output(C, z, workers=w)]
    for f in funcs:
        ref = f(1)
        np.testing.assert_array_equal(f(2), ref)
        np.testing.assert_array_equal(f(-1), ref)
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda _: f(2), range(8)))
        for o in outs:
            np.testing.assert_array_equal(o, ref)


@settings(max_examples=40, deadline=None)
@given(eigs=hnp.arrays(np.complex128, st.integers(1, 8),
                       elements=st.complex_numbers(max_magnitude=10, allow_nan=False,
                                                   allow_infinity=False)),
       d1=st.floats(0, 1), d2=st.floats(0, 1))
def test_exp_semigroup(eigs, d1, d2):
    # exp((d1 + d2) lambda) = exp(d1 lambda) exp(d2 lambda)
    a = diag_complex_matrix_exp(eigs, d1)
    b = diag_complex_matrix_exp(eigs, d2)
    c = diag_complex_matrix_exp(eigs, d1 + d2)
    np.testing.assert_allclose(a * b, c, rtol=1e-12, atol=1e-300)
