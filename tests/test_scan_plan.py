"""Tests of the scan's plan (zilla_muf._scan_plan) and of the kernel boundary.

The plan fixes the work decomposition from the problem and `workers`; the
threads that run it may be fewer (cores kept busy by other processes). The
oracle of a result run on fewer threads is the same decomposition run on
all of them: equal bit for bit. Values are also checked against a float64
loop over time.
"""

import numpy as np
import pytest

from zilla_muf import _scan_cols, _scan_plan, _scan_rows, chunked_scan, linear_scan

from conftest import assert_close

# (shape, axis): whole rows, a row split into spans, channel blocks, the
# time split of a few channels; long enough that workers=2 uses 2 threads
CASES = [((64, 2048), -1), ((2, 40000), -1), ((300, 512), 0), ((20000, 4), 0)]


def loop(a, b, axis):
    a = np.moveaxis(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64), axis, 0)
    b = np.moveaxis(b.astype(a.dtype), axis, 0)
    out = np.empty_like(a)
    state = np.zeros(a.shape[1:], dtype=a.dtype)
    for t in range(a.shape[0]):
        state = a[t] * state + b[t]
        out[t] = state
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
@pytest.mark.parametrize("shape, axis", CASES)
def test_fewer_free_cores_same_result(shape, axis, dtype, monkeypatch):
    rng = np.random.default_rng(3)
    a = rng.uniform(0.8, 1.0, size=shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    monkeypatch.setattr(_scan_plan, "free_cores", lambda: 2)
    both = chunked_scan(a, b, axis=axis, workers=2)
    assoc_both = linear_scan(a, b, axis=axis, workers=2, method="associative")
    monkeypatch.setattr(_scan_plan, "free_cores", lambda: 1)
    one = chunked_scan(a, b, axis=axis, workers=2)
    assoc_one = linear_scan(a, b, axis=axis, workers=2, method="associative")
    np.testing.assert_array_equal(one, both)
    np.testing.assert_array_equal(assoc_one, assoc_both)
    assert_close(one, loop(a, b, axis), dtype, scale=4)


@pytest.mark.parametrize("shape, axis", CASES)
def test_plan_runs_on_free_cores_only(shape, axis, monkeypatch):
    outer, n, inner = ((shape[0], shape[1], 1) if axis == -1 else (1, shape[0], shape[1]))
    dt = np.dtype(np.float64)
    monkeypatch.setattr(_scan_plan, "free_cores", lambda: 2)
    full = _scan_plan.make_plan("chunked", outer, n, inner, dt, workers_threads=2)
    monkeypatch.setattr(_scan_plan, "free_cores", lambda: 1)
    busy = _scan_plan.make_plan("chunked", outer, n, inner, dt, workers_threads=2)
    assert full.threads == 2 and busy.threads == 1
    assert busy.decomposition_threads == full.decomposition_threads == 2
    # the decomposition does not change (the block width of independent
    # channels may: one thread takes them all)
    for field in ("layout", "chunk", "splits", "lead", "in_place"):
        assert getattr(busy, field) == getattr(full, field)
    if busy.layout == "cols" and busy.splits == 1:
        assert busy.block_width == inner
    # no load cap: the threads asked for
    free = _scan_plan.make_plan("chunked", outer, n, inner, dt, workers_threads=2,
                                cap_by_load=False)
    assert free.threads == 2


def test_plan_decisions():
    f8 = np.dtype(np.float64)
    # one long real row on 2 threads: cut into 2 spans after the first
    p = _scan_plan.make_plan("chunked", 1, 1 << 20, 1, f8, workers_threads=2,
                             cap_by_load=False)
    assert p.layout == "rows" and p.splits == 2 and p.lead == 0.7
    # many rows: whole rows per thread
    p = _scan_plan.make_plan("chunked", 64, 4096, 1, f8, workers_threads=2)
    assert p.splits == 1 and p.chunk == 4096
    # columns: no chunks; a wide step is split into channel blocks ...
    # (an output that fits the caches: see test_stream_decision)
    p = _scan_plan.make_plan("chunked", 1, 2048, 1024, f8, workers_threads=2,
                             cap_by_load=False)
    assert p.layout == "cols" and p.chunk == 2048 and p.splits == 1
    assert p.block_width == 512 and p.threads == 2 and not p.stream
    # ... a narrow one in time
    p = _scan_plan.make_plan("chunked", 1, 1 << 16, 4, f8, workers_threads=2,
                             cap_by_load=False)
    assert p.splits == 2 and p.block_width == 4
    # too small to share: one thread
    p = _scan_plan.make_plan("chunked", 1, 1000, 1, f8, workers_threads=2)
    assert p.threads == p.decomposition_threads == 1 and p.splits == 1
    # only the rows layout's chunked and tree scans cannot run in place
    assert _scan_plan.make_plan("sequential", 4, 10, 1, f8, workers_threads=1).in_place
    assert _scan_plan.make_plan("chunked", 1, 10, 4, f8, workers_threads=1).in_place
    assert not _scan_plan.make_plan("chunked", 4, 10, 1, f8, workers_threads=1).in_place
    with pytest.raises(ValueError, match="method"):
        _scan_plan.make_plan("tree", 1, 10, 1, f8, workers_threads=1)


def test_free_cores_is_a_count_of_cores():
    k = _scan_plan.free_cores()
    assert isinstance(k, int) and k >= 1


def _plan(**kw):
    base = dict(method="chunked", layout="rows", chunk=4, block_width=1, splits=1,
                lead=1.0, threads=1, decomposition_threads=1, in_place=False)
    base.update(kw)
    return _scan_plan.ScanPlan(**base)


def test_kernel_boundary_checks():
    a = np.full((2, 10, 1), 0.5)
    b = np.ones((2, 10, 1))
    out = np.empty((2, 10, 1))
    _scan_rows.scan(_plan(), a, b, out)
    assert_close(out[:, :, 0], loop(a[:, :, 0], b[:, :, 0], -1), np.float64)
    with pytest.raises(ValueError, match="`a`"):
        _scan_rows.scan(_plan(), a[:, :9].copy(), b, out)
    with pytest.raises(ValueError, match="`b`"):
        _scan_rows.scan(_plan(), a, b[:1], out)
    with pytest.raises(ValueError, match="`h0`"):
        _scan_rows.scan(_plan(), a, b, out, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="layout"):
        _scan_rows.scan(_plan(layout="cols"), a, b, out)
    assert _scan_plan.kernel(_plan()) is _scan_rows.scan
    with pytest.raises(ValueError, match="splits"):
        _scan_rows.scan(_plan(splits=4), a, b, out)          # 3 chunks of 4 steps
    with pytest.raises(ValueError, match="splits"):
        _scan_rows.scan(_plan(method="associative", splits=2), a, b, out)
    with pytest.raises(ValueError, match=">= 1"):
        _scan_rows.scan(_plan(threads=0), a, b, out)
    with pytest.raises(ValueError, match="lead"):
        _scan_rows.scan(_plan(lead=0.0), a, b, out)
    with pytest.raises(ValueError, match="in place"):
        _scan_rows.scan(_plan(), a, b, b)
    bb = b.copy()
    _scan_rows.scan(_plan(method="sequential", chunk=10, in_place=True), a, bb, bb)
    np.testing.assert_array_equal(bb, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads, width", [(1, 37), (2, 16), (2, 21)])
@pytest.mark.parametrize("outer", [1, 2])
def test_streaming_stores_same_values(dtype, reverse, threads, width, outer):
    # the streaming-store kernel against the plain one (equal bit for bit)
    # and a float64 loop; odd channel counts and an output shifted off its
    # alignment exercise the elements before and after the vector stores,
    # and in place (out is b) the reads of b before the stores
    rng = np.random.default_rng(5)
    # (one row split into channel blocks: the threads share out the
    # faulting-in of the output's pages)
    n, inner = 300, 37
    a = rng.uniform(0.8, 1.0, size=(outer, n, inner)).astype(dtype)
    b = rng.standard_normal((outer, n, inner)).astype(dtype)
    h0 = rng.standard_normal((outer, inner)).astype(dtype)
    wide = np.complex128 if a.dtype.kind == "c" else np.float64
    want = np.empty((outer, n, inner), dtype=wide)
    state = h0.astype(wide)
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
        state = a[:, t].astype(wide) * state + b[:, t]
        want[:, t] = state
    for method in ("sequential", "chunked"):
        results = []
        for stream in (False, True):
            plan = _plan(method=method, layout="cols", chunk=n, block_width=width,
                         threads=threads, decomposition_threads=threads,
                         in_place=True, stream=stream)
            buf = np.empty(outer * n * inner + 1, dtype=dtype)
            out = buf[1:].reshape(outer, n, inner)            # off its alignment
            _scan_cols.scan(plan, a, b, out, h0, reverse)
            bb = b.copy()
            _scan_cols.scan(plan, a, bb, bb, h0, reverse)     # in place
            np.testing.assert_array_equal(bb, out)
            results.append(out)
        np.testing.assert_array_equal(results[1], results[0])
        assert_close(results[1], want, dtype, scale=4)


def test_stream_decision():
    f4, c8 = np.dtype(np.float32), np.dtype(np.complex64)
    big = dict(outer=1, n=4096, inner=4096, workers_threads=2, cap_by_load=False)
    p = _scan_plan.make_plan("chunked", dtype=f4, **big)
    # 2048 float32 channels per thread stream worse than 4096 on one thread
    assert p.stream and p.threads == 1 and p.block_width == 4096
    assert p.decomposition_threads == 2 and p.splits == 1
    p = _scan_plan.make_plan("chunked", dtype=np.dtype(np.float64), **big)
    assert p.stream and p.threads == 2 and p.block_width == 2048
    # a block width asked for is kept
    p = _scan_plan.make_plan("chunked", dtype=f4, block_width=2048, **big)
    assert p.stream and p.threads == 2 and p.block_width == 2048
    assert _scan_plan.make_plan("sequential", dtype=f4, **big).stream
    assert not _scan_plan.make_plan("associative", dtype=f4, **big).stream
    assert not _scan_plan.make_plan("chunked", dtype=c8, **big).stream
    # an output that stays in the caches, the rows layout, a time split
    assert not _scan_plan.make_plan("chunked", 1, 512, 4096, f4, workers_threads=2).stream
    assert not _scan_plan.make_plan("chunked", 4096, 4096, 1, f4, workers_threads=2).stream
    p = _scan_plan.make_plan("chunked", 1, 1 << 24, 4, f4, workers_threads=2,
                             cap_by_load=False)
    assert p.splits == 2 and not p.stream
