"""Gradients of the structured products through zilla_muf.vjp.

Oracles: the dense Jacobian of the float64/complex128 forward built column
by column by central differences; directional differences of the loss;
the dense matrices (semiseparable_matrix is itself checked against a Python
loop in test_structured.py) for the transpose identities.
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


@pytest.mark.parametrize("complex_", [False, True])
def test_semiseparable_matvec(complex_, rng):
    n, r = 5, 2
    kw = dict(a=rng.uniform(0.3, 0.9, n) if not complex_ else 0.8 * _c(rng, n),
              B=_c(rng, (n, r), complex_), C=_c(rng, (n, r), complex_),
              x=_c(rng, n, complex_))
    check_dense(zilla_muf.semiseparable_matvec, kw, ["a", "B", "C", "x"], rng)


def test_semiseparable_matvec_broadcast(rng):
    n, r = 6, 3
    kw = dict(a=rng.uniform(0.3, 0.9, n), B=_c(rng, (2, n, r), False),
              C=_c(rng, (n, r), False), x=_c(rng, (3, 1, n), False), workers=2)
    check_directional(zilla_muf.semiseparable_matvec, kw, ["a", "B", "C", "x"], rng)


@pytest.mark.parametrize("complex_", [False, True])
def test_semiseparable_matrix(complex_, rng):
    n, r = 4, 2
    kw = dict(a=rng.uniform(0.3, 0.9, n) if not complex_ else 0.8 * _c(rng, n),
              B=_c(rng, (n, r), complex_), C=_c(rng, (n, r), complex_))
    check_dense(zilla_muf.semiseparable_matrix, kw, ["a", "B", "C"], rng)


def test_semiseparable_matrix_zero_decay(rng):
    # a zero decay must not break the decay gradient (no division by a_k)
    n, r = 5, 2
    a = rng.uniform(0.3, 0.9, n)
    a[2] = 0.0
    kw = dict(a=a, B=_c(rng, (n, r), False), C=_c(rng, (n, r), False))
    check_dense(zilla_muf.semiseparable_matrix, kw, ["a", "B", "C"], rng)


@pytest.mark.parametrize("K", [2, 6, 9])
@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("complex_", [False, True])
def test_toeplitz_matvec(K, method, complex_, rng):
    n = 6
    kw = dict(kernel=_c(rng, K, complex_), x=_c(rng, (2, n), complex_),
              method=method)
    check_dense(zilla_muf.toeplitz_matvec, kw, ["kernel", "x"], rng)


def test_toeplitz_matvec_batched_kernel_axis(rng):
    kw = dict(kernel=_c(rng, (3, 4, 1), False), x=_c(rng, (2, 3, 7, 5), False),
              axis=2)
    check_directional(zilla_muf.toeplitz_matvec, kw, ["kernel", "x"], rng)
    kw = dict(kernel=_c(rng, 4, True), x=_c(rng, (3, 7, 2), True), axis=1)
    check_dense(zilla_muf.toeplitz_matvec, kw, ["kernel", "x"], rng)


@pytest.mark.parametrize("conj_pairs", [False, True])
def test_cauchy_matvec(conj_pairs, rng):
    kw = dict(nodes=_c(rng, 5) + 3, poles=_c(rng, 3), weights=_c(rng, 3),
              conj_pairs=conj_pairs)
    check_dense(zilla_muf.cauchy_matvec, kw, ["nodes", "poles", "weights"], rng)


def test_cauchy_matvec_real_nodes_broadcast(rng):
    kw = dict(nodes=rng.uniform(2, 3, (2, 1, 4)), poles=_c(rng, (3, 3)),
              weights=_c(rng, 3), conj_pairs=True)
    check_dense(zilla_muf.cauchy_matvec, kw, ["nodes", "poles", "weights"], rng)


@pytest.mark.parametrize("conj_pairs", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7])
def test_vandermonde_matvec(conj_pairs, length, rng):
    kw = dict(poles=0.9 * _c(rng, 3), weights=_c(rng, 3), length=length,
              conj_pairs=conj_pairs)
    check_dense(zilla_muf.vandermonde_matvec, kw, ["poles", "weights"], rng)


def test_vandermonde_matvec_real_poles_long(rng):
    kw = dict(poles=rng.uniform(-0.99, 0.99, (2, 4)), weights=_c(rng, 4),
              length=600)
    check_directional(zilla_muf.vandermonde_matvec, kw, ["poles", "weights"], rng,
                      rtol=1e-5)


@pytest.mark.parametrize("length", [1, 3, 8])
def test_vandermonde_rmatvec(length, rng):
    kw = dict(poles=0.9 * _c(rng, (2, 3)), v=_c(rng, length))
    check_dense(zilla_muf.vandermonde_rmatvec, kw, ["poles", "v"], rng)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), complex_=st.booleans(),
       which=st.sampled_from(["ss", "toeplitz", "cauchy", "vdm", "rvdm"]))
def test_structured_property(data, complex_, which):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n = data.draw(st.integers(1, 9))
    lead = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    if which == "ss":
        r = data.draw(st.integers(1, 3))
        fun = zilla_muf.semiseparable_matvec
        kw = dict(a=rng.uniform(0.2, 0.95, n), B=_c(rng, lead + (n, r), complex_),
                  C=_c(rng, (n, r), complex_), x=_c(rng, lead + (n,), complex_))
        names = ["a", "B", "C", "x"]
    elif which == "toeplitz":
        fun = zilla_muf.toeplitz_matvec
        kw = dict(kernel=_c(rng, data.draw(st.integers(1, 12)), complex_),
                  x=_c(rng, lead + (n,), complex_),
                  method=data.draw(st.sampled_from(["auto", "direct", "fft"])))
        names = ["kernel", "x"]
    elif which == "cauchy":
        fun = zilla_muf.cauchy_matvec
        kw = dict(nodes=_c(rng, lead + (n,), complex_) + 3, poles=_c(rng, 3),
                  weights=_c(rng, 3), conj_pairs=data.draw(st.booleans()))
        names = ["nodes", "poles", "weights"]
    elif which == "vdm":
        fun = zilla_muf.vandermonde_matvec
        kw = dict(poles=0.9 * _c(rng, lead + (3,), complex_), weights=_c(rng, 3),
                  length=n, conj_pairs=data.draw(st.booleans()))
        names = ["poles", "weights"]
    else:
        fun = zilla_muf.vandermonde_rmatvec
        kw = dict(poles=0.9 * _c(rng, lead + (3,), complex_), v=_c(rng, n, complex_))
        names = ["poles", "v"]
    check_directional(fun, kw, names, rng, rtol=1e-6)


def test_cauchy_backward_kernel_workers_dtypes_and_empty(rng):
    z = _c(rng, (6, 40)) + 3
    p, w = _c(rng, (6, 9)), _c(rng, (6, 9))
    c = _c(rng, (6, 40))
    g1 = zilla_muf.vjp(zilla_muf.cauchy_matvec, z, p, w, conj_pairs=True,
                       workers=1)[1](c)
    g2 = zilla_muf.vjp(zilla_muf.cauchy_matvec, z, p, w, conj_pairs=True,
                       workers=2)[1](c)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
    # single precision in, single precision out, close to the double result
    g32 = zilla_muf.vjp(zilla_muf.cauchy_matvec, z.astype(np.complex64),
                        p.astype(np.complex64), w.astype(np.complex64),
                        conj_pairs=True)[1](c.astype(np.complex64))
    for k in g1:
        assert g32[k].dtype == np.complex64
        np.testing.assert_allclose(g32[k], g1[k], rtol=1e-4,
                                   atol=1e-4 * np.abs(g1[k]).max())
    out, pullback = zilla_muf.vjp(zilla_muf.cauchy_matvec, np.zeros(0), p[0], w[0])
    g = pullback(np.zeros(0, complex))
    np.testing.assert_array_equal(g["poles"], 0)
    assert g["nodes"].shape == (0,)


def test_convolutions_empty_time_axis():
    for fun, kw in ((zilla_muf.toeplitz_matvec, dict(kernel=np.ones(3), x=np.ones((2, 0)))),
                    (zilla_muf.fft_conv, dict(signal=np.ones((2, 0)),
                                                       kernel=np.ones(3)))):
        out, pullback = zilla_muf.vjp(fun, **kw)
        g = pullback(np.ones(out.shape))
        np.testing.assert_array_equal(g["kernel"], np.zeros(3))
        assert out.shape == (2, 0)
