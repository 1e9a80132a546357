"""zilla_muf.convolution.fft_conv: causal convolution by FFT, against np.convolve, a dense Toeplitz
matrix and the direct Toeplitz kernel."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.linalg
from conftest import ALL_DTYPES, REAL_DTYPES, assert_close, random_array

import zilla_muf
from zilla_muf import fft_conv, toeplitz_matvec


def _convolve_rows(x, k):
    """np.convolve per row, truncated, in complex128/float64."""
    x2 = np.asarray(x).reshape(-1, np.shape(x)[-1])
    k2 = np.broadcast_to(k, x2.shape[:-1] + (np.shape(k)[-1],))
    n = x2.shape[-1]
    out = [np.convolve(xr.astype(np.complex128), kr.astype(np.complex128))[:n]
           for xr, kr in zip(x2, k2)]
    return np.array(out).reshape(np.shape(x))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n, K", [(1, 1), (7, 3), (64, 64), (100, 250), (1000, 37)])
def test_matches_np_convolve(rng, dtype, n, K):
    x = random_array(rng, (3, n), dtype)
    k = random_array(rng, (3, K), dtype)
    y = fft_conv(x, k)
    assert y.dtype == dtype
    assert y.shape == (3, n)
    expected = _convolve_rows(x, k)
    if np.dtype(dtype).kind == "f":
        expected = expected.real
    assert_close(y, expected, dtype, scale=10)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_matches_dense_toeplitz_and_direct(rng, dtype):
    n, K = 300, 40
    x = random_array(rng, n, dtype)
    k = random_array(rng, K, dtype)
    col = np.concatenate([k.astype(np.complex128), np.zeros(n - K)])
    T = scipy.linalg.toeplitz(col, np.zeros(n))
    expected = T @ x.astype(np.complex128)
    if np.dtype(dtype).kind == "f":
        expected = expected.real
    y = fft_conv(x, k)
    assert_close(y, expected, dtype, scale=10)
    assert_close(y, toeplitz_matvec(k, x, method="direct"), dtype, scale=10)


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ((np.int64, np.int32), np.float64),
        ((np.bool_, np.float32), np.float64),
        ((np.float16, np.float16), np.float32),
        ((np.float32, np.float64), np.float64),
        ((np.float32, np.complex64), np.complex64),
        ((np.float64, np.complex64), np.complex128),
    ],
)
def test_dtype_promotion(dtypes, expected):
    x = np.ones(10, dtype=dtypes[0])
    k = np.ones(3, dtype=dtypes[1])
    y = fft_conv(x, k)
    assert y.dtype == expected
    assert_close(y, np.convolve(np.ones(10), np.ones(3))[:10], expected)


def test_kernel_broadcasting_and_axis(rng):
    x = rng.standard_normal((2, 50, 3))
    k = rng.standard_normal((3, 8))          # per channel, taps along axis 1
    k_ax = np.moveaxis(k, -1, 0)            # (8, 3): taps along axis -2
    y = fft_conv(x, k_ax, axis=1)
    assert y.shape == x.shape
    for b in range(2):
        for c in range(3):
            assert_close(y[b, :, c], np.convolve(x[b, :, c], k[c])[:50], np.float64)
    # a 1-D kernel applies to every channel, whatever the axis
    y1 = fft_conv(x, k[0], axis=1)
    assert_close(y1[1, :, 2], np.convolve(x[1, :, 2], k[0])[:50], np.float64)
    # kernel with more dimensions than the signal broadcasts the output
    y2 = fft_conv(x[0, :, 0], k)
    assert y2.shape == (3, 50)
    assert_close(y2[2], np.convolve(x[0, :, 0], k[2])[:50], np.float64)


def test_kernel_longer_than_signal_is_truncated(rng):
    x = rng.standard_normal(10)
    k = rng.standard_normal(25)
    assert_close(fft_conv(x, k), np.convolve(x, k)[:10], np.float64)
    assert_close(fft_conv(x, k), fft_conv(x, k[:10]), np.float64)


def test_empty():
    assert fft_conv(np.zeros((3, 0)), [1.0]).shape == (3, 0)
    y = fft_conv(np.ones((2, 4)), np.zeros((2, 0)))
    assert y.shape == (2, 4)
    assert not y.any()
    assert fft_conv(np.zeros((0, 5), np.float32), [1.0]).dtype == np.float64


def test_the_package_attribute_is_the_function_of_a_plain_module():
    import types

    import zilla_muf.convolution

    assert zilla_muf.fft_conv is zilla_muf.convolution.fft_conv
    assert type(zilla_muf.convolution) is types.ModuleType
    assert not callable(zilla_muf.convolution)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_contract_readonly_noncontiguous_memmap(rng, dtype, tmp_path):
    x = random_array(rng, (4, 200), dtype)
    k = random_array(rng, (4, 30), dtype)
    ref = fft_conv(x, k)
    xc, kc = x.copy(), k.copy()
    x.flags.writeable = False
    k.flags.writeable = False
    assert np.array_equal(fft_conv(x, k), ref)
    wide = np.zeros((4, 400), dtype)
    wide[:, ::2] = xc
    assert_close(fft_conv(wide[:, ::2], k), ref, dtype)
    mm = np.memmap(tmp_path / "x.dat", dtype=dtype, mode="w+", shape=x.shape)
    mm[:] = xc
    assert_close(fft_conv(mm, k), ref, dtype)
    assert np.array_equal(x, xc) and np.array_equal(k, kc)


def test_workers_and_threads_agree(rng):
    x = rng.standard_normal((16, 4096))
    k = rng.standard_normal((16, 512))
    ref = fft_conv(x, k, workers=1)
    assert_close(fft_conv(x, k, workers=2), ref, np.float64)
    assert_close(fft_conv(x, k, workers=-1), ref, np.float64)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fft_conv(x, k), range(8)))
    for r in results:
        assert np.array_equal(r, ref)


def test_bad_input():
    with pytest.raises(ValueError, match="`workers`"):
        fft_conv(np.ones(4), np.ones(2), workers=0)
    with pytest.raises(ValueError, match="`axis`"):
        fft_conv(np.ones(4), np.ones(2), axis=1)
    with pytest.raises(ValueError, match="`signal`"):
        fft_conv(1.0, np.ones(2))
    with pytest.raises(ValueError, match="`kernel`"):
        fft_conv(np.ones(4), 1.0)
    with pytest.raises(ValueError, match="`kernel`.*`signal`"):
        fft_conv(np.ones((3, 4)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="`signal`"):
        fft_conv(np.array(["a", "b"]), np.ones(2))
    with pytest.raises(TypeError, match="`kernel`"):
        fft_conv(np.ones(2), np.array([1, 2], dtype=object))
