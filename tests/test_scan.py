"""Tests of zilla_muf.scan against independent oracles.

Oracles: a plain Python loop in long double (or complex128/clongdouble), the
dense lower-triangular matrix of the recurrence, and scipy.signal.lfilter for
constant decays.
"""

import mmap
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

import zilla_muf
from zilla_muf import associative_scan, chunked_scan, linear_scan, sequential_scan

from conftest import ALL_DTYPES, REAL_DTYPES, assert_close, random_array

METHODS = {
    "sequential": lambda a, b, h0=None, **kw: sequential_scan(
        a, b, h0, **{k: v for k, v in kw.items() if k not in ("workers", "chunk_size")}
    ),
    "chunked": lambda a, b, h0=None, **kw: chunked_scan(a, b, h0, **kw),
    "associative": lambda a, b, h0=None, **kw: associative_scan(
        a, b, h0, **{k: v for k, v in kw.items() if k != "chunk_size"}
    ),
    "linear_auto": lambda a, b, h0=None, **kw: linear_scan(a, b, h0, **kw),
}


def loop_oracle(a, b, h0=None, axis=-1, reverse=False):
    """h_t = a_t h_{t-1} + b_t by a Python loop in extended precision."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    cplx = np.iscomplexobj(a) or np.iscomplexobj(b) or np.iscomplexobj(h0)
    wide = np.clongdouble if cplx else np.longdouble
    a = np.moveaxis(a.astype(wide), axis, -1)
    b = np.moveaxis(b.astype(wide), axis, -1)
    state = np.zeros(a.shape[:-1], dtype=wide)
    if h0 is not None:
        state = state + np.asarray(h0).astype(wide)
    out = np.empty_like(a)
    n = a.shape[-1]
    order = range(n - 1, -1, -1) if reverse else range(n)
    for t in order:
        state = a[..., t] * state + b[..., t]
        out[..., t] = state
    return np.moveaxis(out, -1, axis), state


def run_kernel(method, a, b, h0, out, reverse, size, block_width, threads):
    """The kernel of `method` on (outer, n, inner) arrays, planned for
    `threads` threads (not capped by size or load) with the given chunk
    (or leaf) length and block width."""
    from zilla_muf import _scan_plan

    outer, n, inner = out.shape
    plan = _scan_plan.make_plan(
        method, outer, n, inner, out.dtype, workers_threads=threads,
        chunk_size=size if method == "chunked" else None,
        leaf_size=size if method == "associative" else None,
        block_width=block_width, cap_by_size=False, cap_by_load=False)
    _scan_plan.kernel(plan)(plan, a, b, out, h0, reverse)


def dense_oracle(a, b, h0):
    """The recurrence as a dense lower-triangular matrix product (1-D)."""
    n = len(a)
    M = np.zeros((n, n), dtype=np.result_type(a, b, h0, np.float64))
    for i in range(n):
        for j in range(i + 1):
            M[i, j] = np.prod(a[j + 1:i + 1])
    carry = np.array([np.prod(a[:i + 1]) for i in range(n)])
    return M @ b + carry * h0


# ---------------------------------------------------------------------------
# Correctness against the oracles
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_matches_dense_matrix(method, dtype, rng):
    n = 37
    a = random_array(rng, n, dtype, 0.5, 1.0)
    b = random_array(rng, n, dtype)
    h0 = random_array(rng, (), dtype)
    want = dense_oracle(a.astype(np.complex128), b.astype(np.complex128),
                        complex(h0))
    if np.dtype(dtype).kind == "f":
        want = want.real
    got = METHODS[method](a, b, h0, chunk_size=5, workers=2) if method != "sequential" \
        else sequential_scan(a, b, h0)
    assert got.dtype == dtype
    assert_close(got, want, dtype)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_loop_oracle(method, dtype, axis, reverse, rng):
    shape = (6, 300, 5)
    a = random_array(rng, shape, dtype, 0.8, 1.0)
    b = random_array(rng, shape, dtype)
    h0_shape = shape[:axis % 3] + shape[axis % 3 + 1:]
    h0 = random_array(rng, h0_shape, dtype)
    want, want_last = loop_oracle(a, b, h0, axis=axis, reverse=reverse)
    got, last = METHODS[method](a, b, h0, axis=axis, reverse=reverse,
                                return_final=True, workers=2, chunk_size=64)
    assert got.dtype == dtype and last.dtype == dtype
    assert got.shape == shape and last.shape == h0_shape
    assert_close(got, want, dtype, scale=10)
    assert_close(last, want_last, dtype, scale=10)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_constant_decay_matches_lfilter(dtype, rng):
    b = rng.standard_normal((3, 5000)).astype(dtype)
    decay = 0.99
    want = scipy.signal.lfilter([1.0], [1.0, -decay], b.astype(np.float64), axis=-1)
    for fn in (sequential_scan, chunked_scan, associative_scan):
        got = fn(np.array(decay, dtype=dtype), b) if fn is sequential_scan \
            else fn(np.array(decay, dtype=dtype), b, workers=2)
        assert got.dtype == dtype
        assert_close(got, want, dtype, scale=20)


def test_reverse_is_flipped_forward(rng):
    a = rng.uniform(0.5, 1.0, size=(4, 1000))
    b = rng.standard_normal((4, 1000))
    want = sequential_scan(a[:, ::-1], b[:, ::-1])[:, ::-1]
    for fn in METHODS.values():
        assert_close(fn(a, b, reverse=True, workers=2, chunk_size=100), want,
                     np.float64)


@pytest.mark.parametrize("n", [1, 2, 7, 255, 256, 257, 4099])
def test_chunk_boundaries(n, rng):
    """Chunk sizes 1, n-1, n and > n; lengths around the lane and leaf sizes."""
    a = rng.uniform(0.5, 1.0, size=(3, n))
    b = rng.standard_normal((3, n))
    want, _ = loop_oracle(a, b)
    for cs in sorted({1, max(n - 1, 1), n, n + 5}):
        for w in (1, 2):
            assert_close(chunked_scan(a, b, chunk_size=cs, workers=w), want, np.float64)
            assert_close(chunked_scan(a.T, b.T, axis=0, chunk_size=cs, workers=w),
                         want.T, np.float64)
    assert_close(associative_scan(a, b, workers=2), want, np.float64)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("outer,n,inner", [(1, 1000, 1), (3, 517, 1), (1, 300, 5),
                                           (2, 129, 33), (1, 40, 70), (1, 2, 9),
                                           (1, 3, 1), (1, 5, 1)])
def test_kernels_split_between_threads(dtype, reverse, outer, n, inner, rng):
    """The parallel kernels with 2 to 4 threads on inputs small enough that
    the public functions would use one thread: every way of splitting a
    sequence (spans of chunks, channel blocks, leaves) against the oracle."""
    a = random_array(rng, (outer, n, inner), dtype, 0.5, 1.0)
    b = random_array(rng, (outer, n, inner), dtype)
    h0 = random_array(rng, (outer, inner), dtype)
    want, _ = loop_oracle(a, b, h0, axis=1, reverse=reverse)
    for threads in (2, 3, 4):
        for cs in sorted({1, 2, 7, 16, 33, n // 3 + 1, n}):
            for cw in sorted({1, 4, inner}):
                out = np.empty_like(a)
                run_kernel("chunked", a, b, h0, out, reverse, cs, cw, threads)
                assert_close(out, want, dtype, scale=n)
        for leaf in (1, 5, 64):
            out = np.empty_like(a)
            run_kernel("associative", a, b, h0, out, reverse, leaf, max(1, inner // 2),
                              threads)
            assert_close(out, want, dtype, scale=n)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_long_rows_split_between_threads(dtype, reverse, rng):
    """One long row shared by 2-4 threads: span 0 scanned while the others
    are reduced by the lane tree (long enough for both of its rounds, and a
    ragged tail), then every span scanned from its entering state."""
    n = 20_011
    a = random_array(rng, (1, n, 1), dtype, 0.9, 1.0)
    b = random_array(rng, (1, n, 1), dtype)
    h0 = random_array(rng, (1, 1), dtype)
    want, _ = loop_oracle(a, b, h0, axis=1, reverse=reverse)
    for threads in (2, 3, 4):
        for cs in (1, 64, 999, 4096):
            out = np.empty_like(a)
            run_kernel("chunked", a, b, h0, out, reverse, cs, 1, threads)
            assert_close(out, want, dtype, scale=100)
        for leaf in (600, 5000):
            out = np.empty_like(a)
            run_kernel("associative", a, b, h0, out, reverse, leaf, 1, threads)
            assert_close(out, want, dtype, scale=100)


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("inner", [1, 3])
def test_decay_products_that_underflow(dtype, inner, rng):
    """Decays whose running products leave the normal range (where they are
    flushed to zero): the states stay those of the recurrence, whatever the
    size of the state carried across a split, in both layouts."""
    n = 30_000
    a = random_array(rng, (1, n, inner), dtype, 0.55, 0.95)
    b = random_array(rng, (1, n, inner), dtype)
    b[0, 5000:25000] = 0     # the states decay through the subnormal range
    for h0v in (1.0, 1e30):
        h0 = np.full((1, inner), h0v, dtype)
        want, _ = loop_oracle(a, b, h0, axis=1)
        for threads in (1, 2, 3):
            out = np.empty_like(a)
            run_kernel("chunked", a, b, h0, out, False, 500, inner, threads)
            assert_close(out, want, dtype, scale=10)
            # judged by their own size, the states after the quiet stretch
            assert_close(out[0, 25000:], want[0, 25000:], dtype, scale=10)
            out = np.empty_like(a)
            run_kernel("associative", a, b, h0, out, False, 700, inner, threads)
            assert_close(out, want, dtype, scale=10)
            assert_close(out[0, 25000:], want[0, 25000:], dtype, scale=10)


def test_single_long_sequence(rng):
    n = 1 << 17
    a = rng.uniform(0.999, 1.0, size=n)
    b = rng.standard_normal(n)
    want, _ = loop_oracle(a, b)
    for fn in METHODS.values():
        assert_close(fn(a, b, workers=2), want, np.float64, scale=100)


def available_memory():
    """Bytes of memory available (Linux), or 0 where that is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.skipif(sys.maxsize < 2**40 or available_memory() < 12 * 2**30,
                    reason="needs a 64-bit build and 12 GiB of free memory")
def test_sequences_longer_than_2_31():
    """Scans whose offsets pass 2^31 elements, along a contiguous and a
    strided axis. The inputs are zero but for a few steps; their untouched
    pages are never given memory, so only the 8 GiB result is. Every
    nonzero result is known exactly, and no other is nonzero."""
    big = 2**31

    def zeros(shape):
        """Zeros whose untouched pages read from the system's zero page
        (in 2 MiB pages where the system allows it: fewer faults)."""
        size = 4 * int(np.prod(shape))
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        if hasattr(buf, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE)
        return np.frombuffer(buf, np.float32).reshape(shape)

    def check(h, want):
        flat = h.reshape(-1)
        for i, v in want.items():
            assert flat[i] == v, (i, flat[i], v)
        assert np.count_nonzero(flat) == len(want)

    # one sequence of 2^31 + 64 steps
    n = big + 64
    a = zeros(n)
    b = zeros(n)
    k = big + 5
    b[0] = 1.0
    b[k] = 3.0
    a[k + 1:k + 4] = 0.5
    b[n - 1] = 2.0
    forward = {0: 1.0, k: 3.0, k + 1: 1.5, k + 2: 0.75, k + 3: 0.375, n - 1: 2.0}
    for run in (lambda: sequential_scan(a, b),
                lambda: chunked_scan(a, b, workers=2),
                lambda: associative_scan(a, b, workers=2)):
        h = run()
        check(h, forward)
        del h
    # reversed, h_t = a_t h_{t+1} + b_t: the decays now carry b[k + 3]
    b[k + 3] = 8.0
    h = chunked_scan(a, b, workers=2, reverse=True)
    check(h, {0: 1.0, k: 3.0, k + 1: 2.0, k + 2: 4.0, k + 3: 8.0,
              n - 1: 2.0})
    del h, a, b

    # time-major: 2^21 + 8 steps of 1024 channels
    m, c = 2**21 + 8, 1024
    a = zeros((m, c))
    b = zeros((m, c))
    b[0, 0] = 1.0
    b[m - 3, 7] = 4.0
    a[m - 2:, 7] = 0.5
    b[m - 1, c - 1] = 5.0
    h = chunked_scan(a, b, axis=0, workers=2)
    check(h, {0: 1.0, (m - 3) * c + 7: 4.0, (m - 2) * c + 7: 2.0,
              (m - 1) * c + 7: 1.0, (m - 1) * c + c - 1: 5.0})


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_broadcasting(dtype, rng):
    a = random_array(rng, (1, 50, 1), dtype, 0.5, 1.0)   # one decay per step
    b = random_array(rng, (4, 50, 3), dtype)
    h0 = random_array(rng, (3,), dtype)                  # broadcast over rows
    want, _ = loop_oracle(a, b, np.broadcast_to(h0, (4, 3)), axis=1)
    for fn in METHODS.values():
        got = fn(a, b, h0, axis=1, workers=2)
        assert got.shape == (4, 50, 3)
        assert_close(got, want, dtype, scale=10)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_dtype_resolution(dtype):
    a = np.full(4, 0.5, dtype=dtype)
    assert sequential_scan(a, a).dtype == dtype
    # integers promote to float64, which then wins over single precision
    want = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    assert sequential_scan(a, np.ones(4, dtype=np.int32)).dtype == want
    assert sequential_scan([1, 2], [3, 4]).dtype == np.float64
    assert sequential_scan(np.ones(3, np.float16), np.ones(3, np.float16)).dtype == np.float32
    assert sequential_scan(np.ones(3, np.float32), np.ones(3, np.complex64)).dtype == np.complex64
    assert sequential_scan(np.ones(3, np.float32), np.ones(3, np.float64)).dtype == np.float64
    assert sequential_scan(np.ones(3, np.float32), np.ones(3, np.float32),
                           h0=np.complex128(1)).dtype == np.complex128
    assert sequential_scan([True, False], [1, 1]).dtype == np.float64
    # Python numbers are weak: they do not widen single precision
    a32 = np.full(3, 0.5, np.float32)
    assert sequential_scan(a32, a32, h0=0.5).dtype == np.float32
    assert chunked_scan(0.5, a32, workers=2).dtype == np.float32
    assert sequential_scan(a32, a32, h0=1j).dtype == np.complex64


def test_empty_axis():
    for fn in METHODS.values():
        h, last = fn(np.ones((3, 0)), np.ones((3, 0)), h0=[1.0, 2.0, 3.0],
                     return_final=True, workers=2)
        assert h.shape == (3, 0) and h.dtype == np.float64
        np.testing.assert_array_equal(last, [1.0, 2.0, 3.0])
        assert fn(np.ones((0, 5), np.float32), np.ones((0, 5), np.float32)).shape == (0, 5)
        # no channels, time-major
        h, last = fn(np.ones((7, 0)), np.ones((7, 0)), axis=0, return_final=True,
                     workers=2)
        assert h.shape == (7, 0) and last.shape == (0,)


def test_nan_and_inf_propagate():
    a = np.array([1.0, 1.0, 1.0, 0.0, 1.0])
    b = np.array([1.0, np.nan, 1.0, 1.0, 1.0])
    for fn in METHODS.values():
        h = fn(a, b, workers=2, chunk_size=2)
        assert np.isnan(h[1]) and np.isnan(h[2])
        # a zero decay forgets the NaN in exact arithmetic, but 0 * NaN is NaN
        assert np.isnan(h[3])
    h = sequential_scan([1.0, 1.0], [np.inf, 1.0])
    assert h[1] == np.inf


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    n=st.integers(0, 600),
    axis_pick=st.integers(0, 3),
    chunk=st.integers(1, 700),
    workers=st.sampled_from([1, 2]),
    reverse=st.booleans(),
    use_h0=st.booleans(),
    cplx=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_all_methods_agree(shape, n, axis_pick, chunk, workers, reverse, use_h0,
                           cplx, seed):
    rng = np.random.default_rng(seed)
    axis = axis_pick % (len(shape) + 1)
    full = list(shape)
    full.insert(axis, n)
    dtype = np.complex128 if cplx else np.float64
    a = random_array(rng, full, dtype, 0.7, 1.0)
    b = random_array(rng, full, dtype)
    h0 = random_array(rng, shape, dtype) if use_h0 else None
    want, want_last = loop_oracle(a, b, h0, axis=axis, reverse=reverse)
    kw = dict(axis=axis, reverse=reverse, return_final=True)
    for h, last in (
        sequential_scan(a, b, h0, **kw),
        chunked_scan(a, b, h0, chunk_size=chunk, workers=workers, **kw),
        associative_scan(a, b, h0, workers=workers, **kw),
        linear_scan(a, b, h0, workers=workers, **kw),
    ):
        assert h.shape == tuple(full)
        assert_close(h, want, dtype, scale=10)
        if n:
            assert_close(last, want_last, dtype, scale=10)


def test_float32_accuracy_long_sequence():
    """At L = 1e6 the parallel algorithms are as accurate as the sequential one."""
    rng = np.random.default_rng(7)
    n = 1_000_000
    a64 = rng.uniform(0.999, 1.0, size=n)
    b64 = rng.standard_normal(n)
    a32, b32 = a64.astype(np.float32), b64.astype(np.float32)
    # float64 oracle on the float32 inputs (exactly representable)
    ref = sequential_scan(a32.astype(np.float64), b32.astype(np.float64))
    scale = np.max(np.abs(ref))

    def err(h):
        return np.max(np.abs(h.astype(np.float64) - ref)) / scale

    e_seq = err(sequential_scan(a32, b32))
    for h in (chunked_scan(a32, b32, workers=2),
              chunked_scan(a32, b32, chunk_size=1000, workers=2),
              associative_scan(a32, b32, workers=2)):
        assert h.dtype == np.float32
        assert err(h) <= 2 * e_seq + 1e-7


# ---------------------------------------------------------------------------
# The Cython contract
# ---------------------------------------------------------------------------

def test_inputs_not_modified_and_readonly(rng):
    a = rng.uniform(0.5, 1.0, size=(5, 400))
    b = rng.standard_normal((5, 400))
    h0 = rng.standard_normal(5)
    copies = [x.copy() for x in (a, b, h0)]
    for x in (a, b, h0):
        x.flags.writeable = False
    want, _ = loop_oracle(a, b, h0)
    for fn in METHODS.values():
        assert_close(fn(a, b, h0, workers=2, chunk_size=50), want, np.float64)
    for x, c in zip((a, b, h0), copies):
        np.testing.assert_array_equal(x, c)


def test_non_contiguous_inputs(rng):
    a = rng.uniform(0.5, 1.0, size=(400, 10))[::2, ::3]   # strided
    b = np.asfortranarray(rng.standard_normal((200, 4)))
    want, _ = loop_oracle(a, b, axis=0)
    for fn in METHODS.values():
        assert_close(fn(a, b, axis=0, workers=2), want, np.float64)


def test_memmap_inputs(tmp_path, rng):
    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32,
                                  shape=(3, 2000))
    a[:] = rng.uniform(0.9, 1.0, size=a.shape)
    a.flush()
    a_ro = np.load(tmp_path / "a.npy", mmap_mode="r")
    b = rng.standard_normal((3, 2000)).astype(np.float32)
    want, _ = loop_oracle(a_ro, b)
    for fn in METHODS.values():
        assert_close(fn(a_ro, b, workers=2), want, np.float32, scale=10)


def test_workers_give_identical_results(rng):
    # with at least as many sequences as threads, every sequence is scanned
    # whole by one thread: the thread count cannot change a bit
    a = rng.uniform(0.9, 1.0, size=(3, 50_000)).astype(np.float32)
    b = rng.standard_normal((3, 50_000)).astype(np.float32)
    for cs in (777, 50_000):
        h1 = chunked_scan(a, b, chunk_size=cs, workers=1)
        h2 = chunked_scan(a, b, chunk_size=cs, workers=2)
        np.testing.assert_array_equal(h1, h2)
    # deterministic for a fixed worker count, also where one sequence is
    # split between threads (rows and time-major)
    for x, y, axis in ((a[:1], b[:1], -1), (a.T, b.T, 0)):
        for fn in (chunked_scan, associative_scan):
            np.testing.assert_array_equal(fn(x, y, axis=axis, workers=2),
                                          fn(x, y, axis=axis, workers=2))


def test_concurrent_calls_match_serial(rng):
    a = rng.uniform(0.9, 1.0, size=(8, 20_000))
    b = rng.standard_normal((8, 20_000))
    calls = [
        lambda: sequential_scan(a, b),
        lambda: chunked_scan(a, b, workers=2, chunk_size=1000),
        lambda: associative_scan(a, b, workers=2),
        lambda: chunked_scan(a.T, b.T, axis=0, workers=2),
    ] * 3
    serial = [f() for f in calls]
    with ThreadPoolExecutor(max_workers=4) as ex:
        parallel = list(ex.map(lambda f: f(), calls))
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(s, p)


def test_openmp_build_and_thread_count():
    info = zilla_muf.openmp_info(workers=2)
    assert info["requested"] == 2
    if info["openmp"]:
        assert info["threads_used"] == 2
    else:
        assert info["threads_used"] == 1
    assert zilla_muf.openmp_info(workers=1)["threads_used"] == 1


def test_gil_released_during_kernel(rng):
    """A thread that ticks about every millisecond keeps ticking while scans
    run: a fixed number of calls, each of ten milliseconds or more.

    Were the GIL held inside the kernels, the ticker could only run between
    calls: at most one tick per call, and one before the first. Nothing is
    timed; the count of ticks against the count of calls decides, with a
    margin for a ticker that a loaded machine wakes late."""
    a = rng.uniform(0.9, 1.0, size=(2, 4_000_000))
    b = rng.standard_normal((2, 4_000_000))
    calls = 6
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(1)
            done.wait(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        for _ in range(calls):
            sequential_scan(a, b)
    finally:
        done.set()
        t.join()
    assert len(ticks) > calls + 2


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [sequential_scan, chunked_scan, associative_scan,
                                linear_scan])
def test_bad_shapes_and_axes(fn):
    with pytest.raises(ValueError, match=r"`a` \(3,\), `b` \(4,\)"):
        fn(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"`axis` must be in the range \[-2, 2\).*got 2"):
        fn(np.ones((2, 3)), np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match=r"`axis` must be in the range \[-2, 2\).*got -3"):
        fn(np.ones((2, 3)), np.ones((2, 3)), axis=-3)
    with pytest.raises(TypeError, match=r"`axis` must be an integer"):
        fn(np.ones(3), np.ones(3), axis=1.0)
    with pytest.raises(ValueError, match=r"`h0` must broadcast .*\(2,\), got shape \(3,\)"):
        fn(np.ones((2, 3)), np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match=r"at least one dimension"):
        fn(1.0, 2.0)


@pytest.mark.parametrize("fn", [sequential_scan, chunked_scan, associative_scan])
def test_bad_dtypes(fn):
    with pytest.raises(TypeError, match=r"`a` must have a numeric dtype, got dtype object"):
        fn(np.array([1, None]), np.ones(2))
    with pytest.raises(TypeError, match=r"`b` must have a numeric dtype, got dtype <U1"):
        fn(np.ones(2), np.array(["x", "y"]))
    with pytest.raises(TypeError, match=r"`h0` must have a numeric dtype"):
        fn(np.ones(2), np.ones(2), np.datetime64("2020-01-01"))


def test_bad_chunk_size_and_workers():
    a = b = np.ones(10)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=rf"`chunk_size` must be a positive integer, got {bad}"):
            chunked_scan(a, b, chunk_size=bad)
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive integer, got 2.5"):
        chunked_scan(a, b, chunk_size=2.5)
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive integer, got True"):
        linear_scan(a, b, chunk_size=True)
    for fn in (chunked_scan, associative_scan, linear_scan):
        with pytest.raises(ValueError, match=r"`workers` must not be 0"):
            fn(a, b, workers=0)
        with pytest.raises(ValueError, match=r"`workers` = -1000"):
            fn(a, b, workers=-1000)
        with pytest.raises(TypeError, match=r"`workers` must be an integer or None"):
            fn(a, b, workers=1.5)
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        linear_scan(a, b, method="fast")


def test_workers_minus_one_uses_all_cores(rng):
    a = rng.uniform(0.9, 1.0, size=10_000)
    b = rng.standard_normal(10_000)
    assert_close(chunked_scan(a, b, workers=-1), loop_oracle(a, b)[0], np.float64)
