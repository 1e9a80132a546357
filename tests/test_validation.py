"""The shared argument helpers, and the limits every public function gets
from them: thread counts capped by the machine and the work, integer options
too large for a C integer rejected by name, Python scalars promoted weakly.
"""

import os

import numpy as np
import pytest

import zilla_muf
from zilla_muf import _validation as v


def test_huge_workers_behave_as_all_cores():
    ncpu = os.cpu_count() or 1
    assert v.resolve_workers(-1) == ncpu
    for w in (ncpu, ncpu + 1, 1000, 32_000, 100_000, 2**62):
        assert v.resolve_workers(w) == ncpu
    assert v.resolve_workers(1) == 1
    assert v.resolve_workers(None) == 1


@pytest.mark.parametrize("workers", [1000, 32_000, 100_000, 2**62])
def test_huge_workers_on_tiny_input_run(workers):
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    ref = zilla_muf.softmax(x, workers=1)
    np.testing.assert_array_equal(zilla_muf.softmax(x, workers=workers), ref)
    np.testing.assert_array_equal(zilla_muf.silu(x, workers=workers),
                                  zilla_muf.silu(x, workers=1))
    np.testing.assert_array_equal(
        zilla_muf.toeplitz_matvec(x, x, workers=workers),
        zilla_muf.toeplitz_matvec(x, x, workers=1))


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63), -(2**70)])
def test_workers_beyond_int64_raise_named_value_error(value):
    with pytest.raises(ValueError, match="`workers`"):
        v.resolve_workers(value)
    with pytest.raises(ValueError, match="`workers`"):
        zilla_muf.softmax(np.ones((2, 3)), workers=value)
    with pytest.raises(ValueError, match="`workers`"):
        zilla_muf.cauchy_matvec(np.ones(3), np.zeros(2) + 2j, np.ones(2),
                                workers=value)


@pytest.mark.parametrize("value", [2**63, 2**64])
def test_chunk_size_beyond_int64_raises_named_value_error(value):
    with pytest.raises(ValueError, match="`chunk_size`"):
        v.positive_int(value, "chunk_size")
    with pytest.raises(ValueError, match="`chunk_size`"):
        zilla_muf.chunked_scan(np.ones(8), np.ones(8), chunk_size=value)
    with pytest.raises(ValueError, match="`chunk_size`"):
        zilla_muf.semiseparable_matvec(np.ones(4), np.ones((4, 2)),
                                       np.ones((4, 2)), np.ones(4),
                                       chunk_size=value)


def test_large_but_representable_chunk_size_is_fine():
    a = np.full(8, 0.5)
    b = np.arange(8.0)
    np.testing.assert_allclose(
        zilla_muf.chunked_scan(a, b, chunk_size=2**62),
        zilla_muf.sequential_scan(a, b), rtol=1e-15)


def test_dtype_counterparts():
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    c64, c128 = np.dtype(np.complex64), np.dtype(np.complex128)
    for dt, r, c in [(f32, f32, c64), (c64, f32, c64), (f64, f64, c128),
                     (c128, f64, c128)]:
        assert v.real_dtype(dt) == r
        assert v.complex_dtype(dt) == c


def test_require_real_and_real_scalar_name_the_argument():
    v.require_real(a=np.ones(2), b=None)
    with pytest.raises(TypeError, match="`b`"):
        v.require_real(a=np.ones(2), b=np.ones(2, dtype=complex))
    assert v.real_scalar(np.float32(0.5), "eps") == 0.5
    for bad in (True, 1j, np.ones(2), "x"):
        with pytest.raises(TypeError, match="`eps`"):
            v.real_scalar(bad, "eps")


@pytest.mark.parametrize("call", [
    lambda x: zilla_muf.rms_norm(x, z=1.0),
    lambda x: zilla_muf.chunked_scan(x, 1.0),
    lambda x: zilla_muf.complex_exp(x).real,
    lambda x: zilla_muf.diag_complex_matrix_exp(x, 0.5).real,
    lambda x: zilla_muf.zoh_discretize(x, 1.0, 0.5)[1],
    lambda x: zilla_muf.conjugate_pair_output(x, 1.0),
], ids=["rms_norm z", "chunked_scan", "complex_exp",
        "diag_complex_matrix_exp", "zoh", "conjugate_pair_output"])
def test_python_scalars_are_weak(call):
    # NEP 50: a Python number never raises the precision of a float32 array
    x = np.linspace(-1, 1, 4).astype(np.float32)
    assert call(x).dtype == np.float32
    x64 = x.astype(np.float64)
    assert call(x64).dtype == np.float64
