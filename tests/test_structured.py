"""Structured matrix-vector products against dense matrices built here."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.linalg
from conftest import ALL_DTYPES, COMPLEX_DTYPES, REAL_DTYPES, assert_close, random_array
from hypothesis import given, settings
from hypothesis import strategies as st

import zilla_muf
from zilla_muf import (
    cauchy_matvec,
    semiseparable_matrix,
    semiseparable_matvec,
    toeplitz_matvec,
    vandermonde_matvec,
    vandermonde_rmatvec,
)

CLD = np.clongdouble


def _complex_of(dtype):
    return np.dtype(np.complex64 if np.dtype(dtype) in (np.float32, np.complex64)
                    else np.complex128)


def _real_of(dtype):
    return np.dtype(np.float32 if np.dtype(dtype) in (np.float32, np.complex64)
                    else np.float64)


def _poles(rng, shape, dtype=np.complex128):
    """S4D-like poles: decaying, |lambda| < 1, various frequencies."""
    mag = rng.uniform(0.5, 0.999, shape)
    ang = rng.uniform(-np.pi, np.pi, shape)
    return (mag * np.exp(1j * ang)).astype(dtype)


# ---------------------------------------------------------------------------
# Dense oracles
# ---------------------------------------------------------------------------

def dense_semiseparable(a, B, C):
    """M[i, j] = C_i . B_j prod_{k=j+1..i} a_k, entry by entry (1 batch)."""
    n = len(a)
    M = np.zeros((n, n), dtype=np.complex128)
    for i in range(n):
        for j in range(i + 1):
            M[i, j] = np.dot(C[i].astype(np.complex128), B[j].astype(np.complex128)) \
                * np.prod(a[j + 1:i + 1].astype(np.complex128))
    return M


def dense_cauchy(nodes, poles):
    return 1.0 / (nodes.astype(CLD)[:, None] - poles.astype(CLD)[None, :])


def dense_vandermonde(poles, L):
    return poles.astype(CLD)[None, :] ** np.arange(L)[:, None]


# ---------------------------------------------------------------------------
# Semiseparable
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_semiseparable_against_dense(rng, dtype):
    n, r = 23, 3
    a = random_array(rng, (2, n), dtype, 0.5, 1.0)
    B = random_array(rng, (2, n, r), dtype)
    C = random_array(rng, (2, n, r), dtype)
    x = random_array(rng, (2, n), dtype)
    M = semiseparable_matrix(a, B, C)
    y = semiseparable_matvec(a, B, C, x)
    assert M.dtype == dtype and y.dtype == dtype
    assert M.shape == (2, n, n) and y.shape == (2, n)
    for b in range(2):
        D = dense_semiseparable(a[b], B[b], C[b])
        if np.dtype(dtype).kind == "f":
            D = D.real
        assert_close(M[b], D, dtype, scale=10)
        assert_close(y[b], D @ x[b].astype(D.dtype), dtype, scale=10)


def test_semiseparable_zero_and_huge_decays(rng):
    # a zero decay cuts the matrix exactly; products of huge decays overflow
    # only where the true entry does (no cumulative-product ratios)
    a = np.array([1.0, 0.0, 2.0, 1e200, 1e200, 1e-300])
    B = np.ones((6, 1))
    C = np.ones((6, 1))
    M = semiseparable_matrix(a, B, C)
    assert M[2, 0] == 0.0 and M[3, 0] == 0.0 and M[5, 0] == 0.0
    assert M[2, 1] == 2.0 and M[2, 2] == 1.0
    assert M[4, 3] == 1e200 and M[5, 4] == 1e-300 and M[3, 2] == 1e200
    assert np.isinf(M[4, 2])                     # the true entry, 1e400
    assert np.all(np.triu(M, 1) == 0)


def test_semiseparable_broadcasting(rng):
    n, r = 10, 2
    a = rng.uniform(0.5, 1.0, n)                  # shared
    B = rng.standard_normal((3, 1, n, r))
    C = rng.standard_normal((1, 4, n, r))
    x = rng.standard_normal((4, n))
    y = semiseparable_matvec(a, B, C, x, workers=2)
    assert y.shape == (3, 4, n)
    for i in range(3):
        for j in range(4):
            D = dense_semiseparable(a, B[i, 0], C[0, j]).real
            assert_close(y[i, j], D @ x[j], np.float64, scale=10)
    M = semiseparable_matrix(a, B, C)
    assert M.shape == (3, 4, n, n)


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ((np.int64, np.int32, np.bool_, np.int8), np.float64),
        ((np.float16, np.float32, np.float16, np.float32), np.float32),
        ((np.float32, np.float32, np.float32, np.complex64), np.complex64),
        ((np.float32, np.float64, np.float32, np.float32), np.float64),
    ],
)
def test_semiseparable_dtypes(dtypes, expected):
    n = 5
    a = np.ones(n, dtypes[0])
    B = np.ones((n, 2), dtypes[1])
    C = np.ones((n, 2), dtypes[2])
    x = np.ones(n, dtypes[3])
    y = semiseparable_matvec(a, B, C, x)
    assert y.dtype == expected
    # all ones, r = 2: y_i = 2 (i + 1)
    assert_close(y, 2.0 * np.arange(1, n + 1), expected)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 40),
    r=st.integers(0, 5),
    batch=st.integers(1, 3),
    chunk=st.one_of(st.none(), st.integers(1, 16)),
    workers=st.integers(1, 2),
    complex_=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_semiseparable_matvec_is_matrix_product(n, r, batch, chunk, workers, complex_, seed):
    rng = np.random.default_rng(seed)
    dtype = np.complex128 if complex_ else np.float64
    a = random_array(rng, (batch, n), dtype) * 0.7
    B = random_array(rng, (batch, n, r), dtype)
    C = random_array(rng, (batch, n, r), dtype)
    x = random_array(rng, (batch, n), dtype)
    y = semiseparable_matvec(a, B, C, x, chunk_size=chunk, workers=workers)
    M = semiseparable_matrix(a, B, C)
    assert y.shape == (batch, n) and y.dtype == dtype
    assert_close(y, np.einsum("bij,bj->bi", M, x), dtype, scale=100)


def test_semiseparable_bad_input():
    a, B, C, x = np.ones(4), np.ones((4, 2)), np.ones((4, 2)), np.ones(4)
    with pytest.raises(ValueError, match="`B`"):
        semiseparable_matvec(a, np.ones((5, 2)), C, x)
    with pytest.raises(ValueError, match="`C`"):
        semiseparable_matvec(a, B, np.ones((4, 3)), x)
    with pytest.raises(ValueError, match="`x`"):
        semiseparable_matvec(a, B, C, np.ones(3))
    with pytest.raises(ValueError, match="`B`"):
        semiseparable_matrix(a, np.ones(4), C)
    with pytest.raises(ValueError, match="`a`"):
        semiseparable_matrix(1.0, B, C)
    with pytest.raises(ValueError, match="`a`.*`B`"):
        semiseparable_matvec(np.ones((2, 4)), np.ones((3, 4, 2)), C, x)
    with pytest.raises(ValueError, match="`chunk_size`"):
        semiseparable_matvec(a, B, C, x, chunk_size=0)
    with pytest.raises(ValueError, match="`workers`"):
        semiseparable_matvec(a, B, C, x, workers=0)
    with pytest.raises(TypeError, match="`C`"):
        semiseparable_matrix(a, B, np.ones((4, 2)).astype(object))


# ---------------------------------------------------------------------------
# Toeplitz
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["direct", "fft", "auto"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n, K", [(1, 1), (50, 7), (50, 50), (33, 80), (700, 12)])
def test_toeplitz_against_dense(rng, method, dtype, n, K):
    k = random_array(rng, K, dtype)
    x = random_array(rng, (2, n), dtype)
    col = np.zeros(n, dtype=np.complex128)
    col[:min(n, K)] = k[:n]
    T = scipy.linalg.toeplitz(col, np.zeros(n))
    y = toeplitz_matvec(k, x, method=method)
    assert y.dtype == dtype and y.shape == (2, n)
    expected = x.astype(np.complex128) @ T.T
    if np.dtype(dtype).kind == "f":
        expected = expected.real
    assert_close(y, expected, dtype, scale=10)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_toeplitz_direct_long_rows_over_tiles(rng, dtype):
    """Rows longer than the direct kernel's tile of outputs, split between
    threads, against np.convolve in double precision."""
    n, K = 2500, 40
    k = random_array(rng, (3, K), dtype)
    x = random_array(rng, (3, n), dtype)
    want = np.stack([np.convolve(k[r].astype(np.complex128),
                                 x[r].astype(np.complex128))[:n] for r in range(3)])
    if np.dtype(dtype).kind == "f":
        want = want.real
    for workers in (1, 2):
        y = toeplitz_matvec(k, x, method="direct", workers=workers)
        assert y.dtype == dtype
        assert_close(y, want, dtype, scale=10)


@pytest.mark.parametrize(
    "kdtype, xdtype", [(np.float32, np.complex64), (np.complex128, np.float64),
                       (np.complex64, np.complex128), (np.int32, np.float32)]
)
def test_toeplitz_mixed_dtypes(rng, kdtype, xdtype):
    k = random_array(rng, 6, np.complex128 if np.dtype(kdtype).kind == "c" else np.float64)
    x = random_array(rng, 40, np.complex128 if np.dtype(xdtype).kind == "c" else np.float64)
    if np.dtype(kdtype).kind == "i":
        k = np.arange(1, 7)
    k = k.astype(kdtype)
    x = x.astype(xdtype)
    expected_dtype = zilla_muf._validation.result_dtype(k=k, x=x)
    ref = np.convolve(k.astype(np.complex128), x.astype(np.complex128))[:40]
    if expected_dtype.kind == "f":
        ref = ref.real
    for method in ("direct", "fft"):
        y = toeplitz_matvec(k, x, method=method)
        assert y.dtype == expected_dtype
        assert_close(y, ref, expected_dtype, scale=10)


def test_toeplitz_broadcast_and_axis(rng):
    x = rng.standard_normal((3, 60, 4)).astype(np.float32)
    k = rng.standard_normal((9, 4)).astype(np.float32)   # taps along axis -2
    for method in ("direct", "fft"):
        y = toeplitz_matvec(k, x, axis=1, method=method)
        assert y.shape == x.shape and y.dtype == np.float32
        for b in range(3):
            for c in range(4):
                ref = np.convolve(x[b, :, c].astype(np.float64), k[:, c])[:60]
                assert_close(y[b, :, c], ref, np.float32, scale=10)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 300),
    K=st.integers(0, 400),
    rows=st.integers(0, 4),
    complex_=st.booleans(),
    workers=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_toeplitz_direct_equals_fft(n, K, rows, complex_, workers, seed):
    rng = np.random.default_rng(seed)
    dtype = np.complex128 if complex_ else np.float64
    x = random_array(rng, (rows, n), dtype)
    k = random_array(rng, (K,), dtype)
    yd = toeplitz_matvec(k, x, method="direct", workers=workers)
    yf = toeplitz_matvec(k, x, method="fft", workers=workers)
    assert yd.shape == yf.shape == (rows, n)
    assert_close(yd, yf, dtype, scale=100)


def test_toeplitz_bad_input():
    with pytest.raises(ValueError, match="`method`"):
        toeplitz_matvec([1.0], [1.0, 2.0], method="fast")
    with pytest.raises(ValueError, match="`axis`"):
        toeplitz_matvec([1.0], np.ones((2, 3)), axis=-3)
    with pytest.raises(ValueError, match="`workers`"):
        toeplitz_matvec([1.0], [1.0], workers=0)
    with pytest.raises(ValueError, match="`kernel`.*`x`"):
        toeplitz_matvec(np.ones((3, 2)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="`x`"):
        toeplitz_matvec([1.0], 2.0)
    with pytest.raises(TypeError, match="`kernel`"):
        toeplitz_matvec(np.array(["1"]), [1.0])


# ---------------------------------------------------------------------------
# Cauchy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("conj", [False, True])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cauchy_against_dense(rng, dtype, conj):
    L, N = 300, 9
    nodes = np.exp(2j * np.pi * rng.uniform(size=(2, L)))
    if np.dtype(dtype).kind == "f":
        nodes = 2.0 + nodes.real                  # real nodes away from the poles
    nodes = nodes.astype(dtype)
    poles = (-0.5 + 1j * rng.uniform(-3, 3, (2, N)))
    weights = rng.standard_normal((2, N)) + 1j * rng.standard_normal((2, N))
    if np.dtype(dtype).kind == "f":
        poles = -0.5 - rng.uniform(0, 3, (2, N))
        weights = weights.real
    poles = poles.astype(dtype)
    weights = weights.astype(dtype)
    out = cauchy_matvec(nodes, poles, weights, conj_pairs=conj)
    assert out.dtype == _complex_of(dtype) and out.shape == (2, L)
    for b in range(2):
        ref = dense_cauchy(nodes[b], poles[b]) @ weights[b].astype(CLD)
        if conj:
            ref += dense_cauchy(nodes[b], np.conj(poles[b])) @ np.conj(weights[b]).astype(CLD)
        assert_close(out[b], ref.astype(np.complex128), _complex_of(dtype), scale=10)


def test_cauchy_conj_pairs_is_full_spectrum(rng):
    nodes = np.exp(2j * np.pi * rng.uniform(size=100))
    poles = _poles(rng, 12) * 0.9
    w = rng.standard_normal(12) + 1j * rng.standard_normal(12)
    half = cauchy_matvec(nodes, poles, w, conj_pairs=True)
    full = cauchy_matvec(nodes, np.concatenate([poles, poles.conj()]),
                         np.concatenate([w, w.conj()]))
    assert_close(half, full, np.complex128)


def test_cauchy_broadcasting_and_shared_nodes(rng):
    nodes = np.exp(2j * np.pi * rng.uniform(size=70))          # shared by all rows
    poles = _poles(rng, (3, 1, 5)) * 0.8
    weights = rng.standard_normal((4, 5)).astype(np.float32)
    out = cauchy_matvec(nodes, poles, weights)
    assert out.shape == (3, 4, 70) and out.dtype == np.complex128
    for i in range(3):
        for j in range(4):
            ref = dense_cauchy(nodes, poles[i, 0]) @ weights[j].astype(CLD)
            assert_close(out[i, j], ref.astype(np.complex128), np.complex128)


def test_cauchy_node_on_pole_gives_nonfinite():
    out = cauchy_matvec([1.0, 2.0], [1.0], [1.0])
    assert not np.isfinite(out[0])
    assert out[1] == 1.0


def test_cauchy_dtypes():
    assert cauchy_matvec(np.ones(3, np.int64), [0.5], [1]).dtype == np.complex128
    assert cauchy_matvec(np.ones(3, np.float16), np.float32([0.5]), np.float32([1])).dtype \
        == np.complex64
    assert cauchy_matvec(np.ones(3, np.float32), [0.5], np.float32([1])).dtype == np.complex128
    assert cauchy_matvec(np.ones((2, 0)), [0.5], [1.0]).shape == (2, 0)
    assert not cauchy_matvec(np.ones(4), np.ones((2, 0)), np.ones(0)).any()


def test_cauchy_bad_input():
    with pytest.raises(ValueError, match="`poles`.*`weights`"):
        cauchy_matvec(np.ones(4), np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="`poles`.*`nodes`"):
        cauchy_matvec(np.ones((3, 4)), np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="`nodes`"):
        cauchy_matvec(1.0, np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="`weights`"):
        cauchy_matvec(np.ones(3), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="`workers`"):
        cauchy_matvec(np.ones(3), np.ones(3), np.ones(3), workers=0)
    with pytest.raises(TypeError, match="`nodes`"):
        cauchy_matvec(np.array(["a"]), np.ones(3), np.ones(3))


# ---------------------------------------------------------------------------
# Vandermonde
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_vandermonde_against_dense(rng, dtype):
    L, N = 700, 40                       # several pole groups and power blocks
    if np.dtype(dtype).kind == "c":
        poles = _poles(rng, (2, N), dtype)
        weights = random_array(rng, (2, N), dtype)
    else:
        poles = rng.uniform(-0.999, 0.999, (2, N)).astype(dtype)
        weights = random_array(rng, (2, N), dtype)
    K = vandermonde_matvec(poles, weights, L)
    assert K.dtype == _complex_of(dtype) and K.shape == (2, L)
    Kc = vandermonde_matvec(poles, weights, L, conj_pairs=True)
    assert Kc.dtype == _real_of(dtype) and Kc.shape == (2, L)
    v = random_array(rng, (2, L), dtype)
    R = vandermonde_rmatvec(poles, v)
    assert R.dtype == _complex_of(dtype) and R.shape == (2, N)
    for b in range(2):
        V = dense_vandermonde(poles[b], L)
        ref = V @ weights[b].astype(CLD)
        assert_close(K[b], ref.astype(np.complex128), _complex_of(dtype), scale=10)
        assert_close(Kc[b], 2 * ref.real.astype(np.float64), _real_of(dtype), scale=10)
        assert_close(R[b], (V.T @ v[b].astype(CLD)).astype(np.complex128),
                     _complex_of(dtype), scale=10)


def test_vandermonde_conj_pairs_is_full_spectrum(rng):
    poles = _poles(rng, 16)
    w = rng.standard_normal(16) + 1j * rng.standard_normal(16)
    half = vandermonde_matvec(poles, w, 1000, conj_pairs=True)
    full = vandermonde_matvec(np.concatenate([poles, poles.conj()]),
                              np.concatenate([w, w.conj()]), 1000)
    assert half.dtype == np.float64
    assert_close(half, full.real, np.float64)
    assert np.max(np.abs(full.imag)) <= 1e-12 * np.max(np.abs(full))


@pytest.mark.parametrize("dtype", COMPLEX_DTYPES)
def test_vandermonde_powers_accurate_at_long_length(rng, dtype):
    """lambda^l at l < 1e5 against exp(l log lambda) in long double.

    One-hot weights make the output the powers of one pole. The error may be
    a few roundings of the output plus l times the rounding of log(lambda)
    in the working precision (the size of the effect of rounding lambda
    itself); plain repeated multiplication would add l roundings of its own.
    """
    L = 100_000
    poles = np.concatenate([
        np.exp(-1e-5 + 1j * rng.uniform(-np.pi, np.pi, 3)),   # slow decay
        np.exp(-1e-3 + 1j * rng.uniform(-np.pi, np.pi, 2)),
        [1.0 + 0.0j, -1.0 + 0.0j, 1j],                           # on the circle
    ]).astype(dtype)
    N = len(poles)
    eye = np.eye(N, dtype=dtype)
    K = vandermonde_matvec(np.broadcast_to(poles, (N, N)), eye, L, workers=2)
    assert K.dtype == dtype
    l = np.arange(L, dtype=np.longdouble)
    p = poles.astype(CLD)
    logp = np.log(np.abs(p)) + 1j * np.angle(p).astype(np.longdouble)
    ref = np.exp(l[None, :] * logp[:, None])
    err = np.abs(K.astype(CLD) - ref)
    # the kernels compute the powers in double precision and round the
    # anchor, the table and the product to the output dtype; below the normal
    # range of the output, its own spacing is the limit
    eps64 = np.finfo(np.float64).eps
    bound = 4 * np.finfo(dtype).eps + 16 * eps64 * (64 + l[None, :] * (1 + np.abs(logp[:, None])))
    ratio = err / (bound * np.abs(ref) + np.finfo(dtype).smallest_normal)
    assert np.all(ratio <= 1), float(np.max(ratio))


def test_vandermonde_no_overflow_and_zero_pole():
    K = vandermonde_matvec([0.0, 0.5, 1e-200], [1.0, 1.0, 1.0], 6)
    assert np.all(np.isfinite(K))
    assert_close(K, np.array([3.0, 0.5 + 1e-200, 0.25, 0.125, 0.0625, 0.03125]),
                 np.complex128)
    R = vandermonde_rmatvec([0.0], [2.0, 3.0, 4.0])
    assert R[0] == 2.0


def test_vandermonde_rmatvec_broadcasting(rng):
    poles = _poles(rng, (3, 1, 6))
    v = rng.standard_normal((4, 20000))       # several partial-sum pieces
    R = vandermonde_rmatvec(poles, v, workers=2)
    assert R.shape == (3, 4, 6)
    for i in (0, 2):
        for j in (1, 3):
            ref = dense_vandermonde(poles[i, 0], 20000).T @ v[j].astype(CLD)
            assert_close(R[i, j], ref.astype(np.complex128), np.complex128, scale=10)


def test_vandermonde_empty_and_dtypes():
    assert vandermonde_matvec([0.5], [1.0], 0).shape == (0,)
    assert vandermonde_matvec(np.ones((2, 0)), np.ones(0), 3).tolist() == [[0j] * 3] * 2
    assert vandermonde_matvec(np.int8([1]), [True], 2).dtype == np.complex128
    assert vandermonde_matvec(np.float16([1]), np.float32([1]), 2).dtype == np.complex64
    assert vandermonde_matvec(np.float32([1]), np.float32([1]), 2,
                              conj_pairs=True).dtype == np.float32
    assert vandermonde_rmatvec(np.complex64([1]), np.float64([1])).dtype == np.complex128
    assert vandermonde_rmatvec(np.ones(3), np.ones((2, 0))).tolist() == [[0j] * 3] * 2


def test_vandermonde_bad_input():
    with pytest.raises(ValueError, match="`length`"):
        vandermonde_matvec([0.5], [1.0], -1)
    with pytest.raises(TypeError, match="`length`"):
        vandermonde_matvec([0.5], [1.0], 2.5)
    with pytest.raises(ValueError, match="`poles`.*`weights`"):
        vandermonde_matvec(np.ones(3), np.ones(4), 5)
    with pytest.raises(ValueError, match="`poles`.*`v`"):
        vandermonde_rmatvec(np.ones((2, 3)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="`v`"):
        vandermonde_rmatvec(np.ones(3), 1.0)
    with pytest.raises(ValueError, match="`workers`"):
        vandermonde_rmatvec(np.ones(3), np.ones(3), workers=0)
    with pytest.raises(ValueError, match="`workers`"):
        vandermonde_matvec(np.ones(3), np.ones(3), 4, workers=0)


# ---------------------------------------------------------------------------
# The Cython contract, for every compiled function
# ---------------------------------------------------------------------------

def _cases(rng):
    """(name, function, positional array arguments, keyword arguments)."""
    c = lambda shape: random_array(rng, shape, np.complex128)  # noqa: E731
    f = lambda shape: random_array(rng, shape, np.float32)     # noqa: E731
    return [
        ("toeplitz_direct", toeplitz_matvec, [f(40), f((3, 3000))], dict(method="direct")),
        ("toeplitz_cdirect", toeplitz_matvec, [c(20), c((3, 500))], dict(method="direct")),
        ("cauchy", cauchy_matvec, [c((2, 600)), 0.5 * c((2, 7)) - 2, c((2, 7))],
         dict(conj_pairs=True)),
        ("vandermonde", vandermonde_matvec, [0.9 * _poles(rng, (2, 35)), c(35)],
         dict(length=3000)),
        ("vandermonde_conj", vandermonde_matvec, [0.9 * _poles(rng, 35), f(35)],
         dict(length=3000, conj_pairs=True)),
        ("vandermonde_r", vandermonde_rmatvec, [0.9 * _poles(rng, (2, 35)), c((2, 20000))],
         {}),
        ("semiseparable", semiseparable_matvec,
         [f((2, 300)) * 0.5 + 0.5, f((2, 300, 4)), f((2, 300, 4)), f((2, 300))], {}),
    ]


CASE_NAMES = ["toeplitz_direct", "toeplitz_cdirect", "cauchy", "vandermonde",
              "vandermonde_conj", "vandermonde_r", "semiseparable"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_contract(rng, case, tmp_path):
    name, fn, args, kwargs = {c[0]: c for c in _cases(rng)}[case]
    args = [np.asarray(a) for a in args]
    ref = fn(*args, **kwargs)
    dtype = ref.dtype
    saved = [a.copy() for a in args]
    # read-only
    ro = [a.copy() for a in args]
    for a in ro:
        a.flags.writeable = False
    assert np.array_equal(fn(*ro, **kwargs), ref)
    # non-contiguous (every other element along the last axis)
    nc = []
    for a in args:
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        nc.append(wide[..., ::2])
    assert_close(fn(*nc, **kwargs), ref, dtype)
    # memory-mapped
    mm = []
    for i, a in enumerate(args):
        m = np.memmap(tmp_path / f"{i}.dat", dtype=a.dtype, mode="w+", shape=a.shape)
        m[:] = a
        mm.append(m)
    assert_close(fn(*mm, **kwargs), ref, dtype)
    # inputs untouched
    for a, s in zip(args, saved):
        assert np.array_equal(a, s)
    # workers 1 vs 2 vs all
    assert_close(fn(*args, workers=1, **kwargs), ref, dtype)
    r2 = fn(*args, workers=2, **kwargs)
    assert_close(r2, ref, dtype)
    assert np.array_equal(fn(*args, workers=2, **kwargs), r2)      # deterministic
    assert_close(fn(*args, workers=-1, **kwargs), ref, dtype)
    # concurrent calls agree with the serial result
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fn(*args, workers=2, **kwargs), range(8)))
    for r in results:
        assert np.array_equal(r, r2)


def test_threads_really_run():
    info = zilla_muf.openmp_info(2)
    if not info["openmp"]:
        pytest.skip("built without OpenMP")
    assert info["threads_used"] == 2
