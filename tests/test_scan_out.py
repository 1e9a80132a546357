"""Tests of the `out=` argument of the four scans.

Oracle: the recurrence by a plain Python loop over time (vectorised over
channels) in float64 / complex128 on the same input values. Every in-place
result (``out=b``) must also equal, bit for bit, the same call returning a
new array, and the `out` given must be the array returned.

The shapes reach every parallel path of the kernels with two threads:
whole rows per thread, rows cut into spans, channel blocks sharing every
step, and the time split of a few channels.
"""

import functools

import numpy as np
import pytest

from zilla_muf import associative_scan, chunked_scan, linear_scan, sequential_scan

from conftest import ALL_DTYPES, assert_close

SCANS = {
    "sequential": lambda a, b, h0=None, workers=None, **kw: sequential_scan(a, b, h0, **kw),
    "chunked": lambda a, b, h0=None, **kw: chunked_scan(a, b, h0, **kw),
    "chunked_cs100": lambda a, b, h0=None, **kw: chunked_scan(a, b, h0, chunk_size=100, **kw),
    "associative": lambda a, b, h0=None, **kw: associative_scan(a, b, h0, **kw),
    "linear_auto": lambda a, b, h0=None, **kw: linear_scan(a, b, h0, **kw),
}

# name -> (shape, axis)
LAYOUTS = {
    "rows": ((64, 2048), -1),          # whole rows per thread
    "rows-spans": ((2, 40000), -1),    # a row split between threads
    "cols-blocks": ((300, 512), 0),    # channel blocks of every step
    "cols-time": ((20000, 4), 0),      # the time axis split
}


@functools.lru_cache(maxsize=None)
def _data(layout, complex_values, with_h0):
    """Inputs exactly representable in float32 / complex64, and the loop
    oracle of the forward and reverse scans over them (float64 or
    complex128)."""
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(abs(hash((layout, complex_values, with_h0))) % 2**32)
    a = rng.uniform(0.8, 1.0, size=shape)
    b = rng.standard_normal(shape)
    if complex_values:
        a = a * np.exp(1j * rng.uniform(-0.3, 0.3, size=shape))
        b = b + 1j * rng.standard_normal(shape)
    wide = np.complex64 if complex_values else np.float32
    a = a.astype(wide)
    b = b.astype(wide)
    state_shape = shape[:axis % 2] + shape[axis % 2 + 1:]
    h0 = rng.standard_normal(state_shape).astype(wide) if with_h0 else None
    oracles = {rev: loop(a, b, h0, axis, rev) for rev in (False, True)}
    return a, b, h0, oracles


def loop(a, b, h0, axis, reverse):
    """h_t = a_t h_{t-1} + b_t, one vectorised step per time index."""
    wide = np.complex128 if np.iscomplexobj(a) else np.float64
    a = np.moveaxis(a.astype(wide), axis, 0)
    b = np.moveaxis(b.astype(wide), axis, 0)
    state = np.zeros(a.shape[1:], dtype=wide)
    if h0 is not None:
        state = state + h0.astype(wide)
    out = np.empty_like(a)
    order = range(a.shape[0] - 1, -1, -1) if reverse else range(a.shape[0])
    for t in order:
        state = a[t] * state + b[t]
        out[t] = state
    return np.moveaxis(out, 0, axis), state


def _case(layout, dtype, with_h0):
    dtype = np.dtype(dtype)
    a, b, h0, oracles = _data(layout, dtype.kind == "c", with_h0)
    h0 = None if h0 is None else h0.astype(dtype)
    return a.astype(dtype), b.astype(dtype), h0, LAYOUTS[layout][1], oracles


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", list(SCANS))
def test_out_is_b_in_place(method, layout, reverse, with_h0, dtype):
    a, b, h0, axis, oracles = _case(layout, dtype, with_h0)
    scan = SCANS[method]
    kw = dict(axis=axis, reverse=reverse, workers=2)
    expected = scan(a, b, h0, **kw)
    want, want_final = oracles[reverse]
    assert_close(expected, want, dtype, scale=4)

    b_inplace = b.copy()
    h, final = scan(a, b_inplace, h0, out=b_inplace, return_final=True, **kw)
    assert h is b_inplace
    assert h.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(h, expected)
    assert_close(h, want, dtype, scale=4)
    assert_close(final, want_final, dtype, scale=4)


@pytest.mark.parametrize("dtype", [np.float64, np.complex64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", list(SCANS))
@pytest.mark.parametrize("workers", [1, 2])
def test_out_separate_contiguous(method, layout, reverse, dtype, workers):
    a, b, h0, axis, oracles = _case(layout, dtype, True)
    scan = SCANS[method]
    a0, b0 = a.copy(), b.copy()
    out = np.full(a.shape, np.nan, dtype=dtype)
    h = scan(a, b, h0, out=out, axis=axis, reverse=reverse, workers=workers)
    assert h is out
    assert_close(out, oracles[reverse][0], dtype, scale=4)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def _strided_like(x, kind):
    """An empty array of x's shape and dtype with other strides."""
    if kind == "every-other":
        big = np.full(x.shape[:-1] + (2 * x.shape[-1],), np.nan, dtype=x.dtype)
        return big[..., ::2]
    if kind == "fortran":
        return np.full(x.shape, np.nan, dtype=x.dtype, order="F")
    if kind == "negative":
        return np.full(x.shape, np.nan, dtype=x.dtype)[::-1, ::-1]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, dtype", [("every-other", np.float32),
                                         ("fortran", np.complex128),
                                         ("negative", np.float64)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", list(SCANS))
def test_out_strided(method, layout, reverse, dtype, kind):
    a, b, h0, axis, oracles = _case(layout, dtype, True)
    scan = SCANS[method]
    kw = dict(axis=axis, reverse=reverse, workers=2)
    expected = scan(a, b, h0, **kw)

    out = _strided_like(a, kind)
    out_base = out.base
    h, final = scan(a, b, h0, out=out, return_final=True, **kw)
    assert h is out and out.base is out_base
    np.testing.assert_array_equal(out, expected)
    assert_close(out, oracles[reverse][0], dtype, scale=4)
    assert_close(final, oracles[reverse][1], dtype, scale=4)

    # a strided b scanned in place
    bs = _strided_like(b, kind)
    bs[...] = b
    h = scan(a, bs, h0, out=bs, **kw)
    assert h is bs
    np.testing.assert_array_equal(bs, expected)


@pytest.mark.parametrize("method", list(SCANS))
@pytest.mark.parametrize("reverse", [False, True])
def test_out_partly_overlapping_b(method, reverse):
    """`out` may overlap `b` without being `b`: here shifted by one step."""
    rng = np.random.default_rng(5)
    n = 5000
    a = rng.uniform(0.5, 1.0, size=(3, n))
    buf = rng.standard_normal((3, n + 1))
    b = buf[:, :-1]
    b_values = b.copy()
    out = buf[:, 1:]
    h = SCANS[method](a, b, 0.5, out=out, reverse=reverse, workers=2)
    assert h is out
    assert_close(h, loop(a, b_values, np.full(3, 0.5), -1, reverse)[0], np.float64)


@pytest.mark.parametrize("method", list(SCANS))
def test_out_broadcast_and_promoted_inputs(method):
    """`out` of the broadcast shape and promoted dtype; a Python h0."""
    rng = np.random.default_rng(6)
    a = rng.uniform(0.5, 1.0, size=(1, 700)).astype(np.float32)
    b = rng.standard_normal((4, 700))
    out = np.empty((4, 700))
    h = SCANS[method](a, b, 2.0, out=out, workers=2)
    assert h is out
    assert_close(h, loop(np.broadcast_to(a, b.shape), b, np.full(4, 2.0), -1, False)[0],
                 np.float64)


@pytest.mark.parametrize("method", list(SCANS))
def test_out_length_zero_and_small(method):
    a = np.ones((3, 0))
    out = np.empty((3, 0))
    h, final = SCANS[method](a, a.copy(), [1.0, 2.0, 3.0], out=out, return_final=True)
    assert h is out
    np.testing.assert_array_equal(final, [1.0, 2.0, 3.0])
    b = np.array([1.0, 2.0, 3.0])
    h = SCANS[method](np.array([2.0, 2.0, 2.0]), b, out=b)
    assert h is b
    np.testing.assert_array_equal(b, [1.0, 4.0, 11.0])


@pytest.mark.parametrize("method", list(SCANS))
def test_out_bad(method):
    scan = SCANS[method]
    a = np.full((2, 50), 0.5)
    b = np.ones((2, 50))
    h0 = np.zeros(2)
    with pytest.raises(ValueError, match="`out`.*shape"):
        scan(a, b, out=np.empty((2, 49)))
    with pytest.raises(ValueError, match="`out`.*shape"):
        scan(a, b, out=np.empty((100,)))
    with pytest.raises(ValueError, match="`out`.*dtype"):
        scan(a, b, out=np.empty((2, 50), dtype=np.float32))
    with pytest.raises(ValueError, match="`out`.*dtype"):
        scan(a, b, out=np.empty((2, 50), dtype=np.complex128))
    ro = np.empty((2, 50))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="`out`.*writable"):
        scan(a, b, out=ro)
    with pytest.raises(ValueError, match="`out`.*`a`"):
        scan(a, b, out=a)
    big = np.ones((2, 51))
    with pytest.raises(ValueError, match="`out`.*`a`"):
        scan(big[:, :-1], b, out=big[:, 1:])
    state = np.zeros((2, 51))
    with pytest.raises(ValueError, match="`out`.*`h0`"):
        scan(a, b, state[:, 1], out=state[:, 1:])
    with pytest.raises(TypeError, match="`out`"):
        scan(a, b, out=[[0.0] * 50] * 2)
    # nothing was written by a refused call
    np.testing.assert_array_equal(a, 0.5)
    np.testing.assert_array_equal(b, 1.0)
    np.testing.assert_array_equal(h0, 0.0)


def test_out_method_auto_dispatch_keeps_out():
    a = np.full((2, 10), 0.5)
    b = np.ones((2, 10))
    for method in ("auto", "sequential", "chunked", "associative"):
        out = np.empty((2, 10))
        assert linear_scan(a, b, method=method, out=out) is out
        assert_close(out, loop(a, b, None, -1, False)[0], np.float64)
