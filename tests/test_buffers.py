"""Tests of the cache of large output buffers (zilla_muf.buffer_cache).

The oracle of a result is np.cumsum (the scan with all decays 1), or, where
the output's place in memory is under test, the float64 scan of the same
float32 data.
"""

import os
import pickle
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import zilla_muf
from zilla_muf import _buffers, linear_scan, sequential_scan

MIB = 1 << 20


@pytest.fixture(autouse=True)
def restore_limit():
    """Every test starts from an empty cache turned on (256 MiB) and leaves
    the limit as it was."""
    limit = zilla_muf.buffer_cache()["max_bytes"]
    zilla_muf.buffer_cache(0)
    zilla_muf.buffer_cache(256 * MIB)
    yield
    zilla_muf.buffer_cache(0)
    zilla_muf.buffer_cache(limit)


def handler_name(x):
    """The name of the allocator of the memory under `x` (a view or not)."""
    while isinstance(x.base, np.ndarray):
        x = x.base
    core = np._core if hasattr(np, "_core") else np.core
    return core.multiarray.get_handler_name(x)


def check(h, want):
    np.testing.assert_allclose(h, want, rtol=1e-12, atol=1e-9)


def scan_ones(n, rng, dtype=np.float64):
    """A scan with every decay 1, and its oracle, the cumulative sum."""
    b = rng.standard_normal(n).astype(dtype)
    return sequential_scan(np.ones_like(b), b), np.cumsum(b)


def test_off_in_a_fresh_process():
    code = ("import numpy as np, zilla_muf\n"
            "info = zilla_muf.buffer_cache()\n"
            "a = np.full((4, 1 << 16), 0.5)\n"
            "h = zilla_muf.linear_scan(a, a)\n"
            "del h\n"
            "after = zilla_muf.buffer_cache()\n"
            "print(info['max_bytes'], after['max_bytes'], after['cached_blocks'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True)
    assert proc.stdout.split() == ["0", "0", "0"]


def test_freed_output_is_reused_and_results_stay_right():
    rng = np.random.default_rng(0)
    n = 2 * MIB // 8
    h, want = scan_ones(n, rng)
    check(h, want)
    assert handler_name(h) == "zilla_muf_buffer_cache"
    address = h.ctypes.data
    assert address % 64 == 0
    before = zilla_muf.buffer_cache()
    del h
    held = zilla_muf.buffer_cache()
    assert held["cached_blocks"] == before["cached_blocks"] + 1
    assert held["cached_bytes"] == before["cached_bytes"] + n * 8
    # new data into the reused block: nothing of the old result shows
    h2, want2 = scan_ones(n, rng)
    check(h2, want2)
    # the same block, its data placed within a page of where it was
    assert abs(h2.ctypes.data - address) < 4096
    assert zilla_muf.buffer_cache()["hits"] == held["hits"] + 1


def at_page_offset(n, offset, rng):
    """n float32 values at `offset` bytes into a page."""
    raw = np.empty(4 * n + 8192, np.uint8)
    start = (-raw.ctypes.data) % 4096 + offset
    x = raw[start:start + 4 * n].view(np.float32)
    x[:] = rng.uniform(0.5, 1.0, n)
    return x


@pytest.mark.parametrize("cached", [True, False])
def test_output_stores_do_not_alias_the_input_loads(cached):
    # the output is never 0-255 bytes ahead of an input modulo 4096, where
    # its stores would hold up the loads that run ahead of them
    rng = np.random.default_rng(6)
    n = MIB // 4
    if not cached:
        zilla_muf.buffer_cache(0)
    for off_a in range(0, 4096, 448):
        for off_b in (off_a, (off_a + 64) % 4096, (off_a + 2048) % 4096, 4032):
            a = at_page_offset(n, off_a, rng)
            b = at_page_offset(n, off_b, rng)
            h = sequential_scan(a, b)
            out = h.base.ctypes.data if h.base is not None else h.ctypes.data
            assert out % 64 == 0
            for x in (a, b):
                assert (out - x.ctypes.data) % 4096 >= 256
            # the values are those of the float64 scan of the same data
            want = sequential_scan(a.astype(np.float64), b.astype(np.float64))
            np.testing.assert_allclose(h, want, rtol=2e-5, atol=1e-5)


def test_small_outputs_do_not_use_the_cache():
    h = linear_scan(np.ones(1000), np.ones(1000))
    np.testing.assert_array_equal(h, np.arange(1, 1001))
    assert handler_name(h) != "zilla_muf_buffer_cache"


def test_limit_is_respected_and_zero_turns_it_off():
    rng = np.random.default_rng(1)
    zilla_muf.buffer_cache(3 * MIB)
    outs = [scan_ones(2 * MIB // 8, rng)[0] for _ in range(3)]
    del outs
    info = zilla_muf.buffer_cache()
    assert info["cached_blocks"] == 1
    assert info["cached_bytes"] == 2 * MIB
    # a block larger than the limit is never kept
    big = scan_ones(4 * MIB // 8, rng)[0]
    del big
    assert zilla_muf.buffer_cache()["cached_bytes"] == 2 * MIB
    info = zilla_muf.buffer_cache(0)
    assert info["cached_bytes"] == 0 and info["cached_blocks"] == 0
    h, want = scan_ones(2 * MIB // 8, rng)
    del h
    assert zilla_muf.buffer_cache()["cached_blocks"] == 0


def test_at_most_slots_blocks_oldest_evicted_first():
    zilla_muf.buffer_cache(1 << 30)
    sizes = [(MIB + k * 4096) // 8 for k in range(_buffers.SLOTS + 3)]
    outs = [sequential_scan(np.ones(m), np.ones(m)) for m in sizes]
    addresses = [o.ctypes.data for o in outs]
    while outs:
        del outs[0]  # freed oldest first
    info = zilla_muf.buffer_cache()
    assert info["cached_blocks"] == _buffers.SLOTS
    assert info["cached_bytes"] == 8 * sum(sizes[3:])
    # the newest block of its size comes back; the three oldest are gone
    h = sequential_scan(np.ones(sizes[-1]), np.ones(sizes[-1]))
    assert abs(h.ctypes.data - addresses[-1]) < 4096


def test_a_block_much_larger_than_the_request_is_not_used():
    rng = np.random.default_rng(2)
    big, _ = scan_ones(4 * MIB // 8, rng)
    del big
    h, want = scan_ones(MIB // 8, rng)
    check(h, want)
    info = zilla_muf.buffer_cache()
    assert info["cached_blocks"] == 1 and info["cached_bytes"] == 4 * MIB


def test_resize_and_pickle_of_a_cached_output():
    rng = np.random.default_rng(3)
    n = MIB // 8
    want = rng.standard_normal(n)
    h = _buffers.empty(n, np.float64)
    h[:] = want
    assert handler_name(h) == "zilla_muf_buffer_cache"
    h.resize(3 * n, refcheck=False)
    check(h[:n], want)
    h[n:] = 7.0
    np.testing.assert_array_equal(h[n:], 7.0)
    h.resize(n // 2, refcheck=False)
    check(h, want[: n // 2])
    back = pickle.loads(pickle.dumps(h))
    check(back, want[: n // 2])
    del h
    assert zilla_muf.buffer_cache()["cached_blocks"] == 0  # now under 1 MiB


def test_outputs_made_and_freed_on_four_threads():
    rng = np.random.default_rng(4)
    bs = [rng.standard_normal(MIB // 8 + 512 * k) for k in range(4)]

    def work(k):
        for _ in range(30):
            h = linear_scan(np.ones_like(bs[k]), bs[k], workers=1)
            check(h, np.cumsum(bs[k]))
        return True

    zilla_muf.buffer_cache(6 * MIB)
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))
    info = zilla_muf.buffer_cache()
    assert info["cached_bytes"] <= 6 * MIB
    assert 1 <= info["cached_blocks"] <= _buffers.SLOTS


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                    reason="needs os.fork")
def test_cache_works_in_a_forked_child():
    rng = np.random.default_rng(5)
    h, want = scan_ones(MIB // 8, rng)
    del h
    hits = zilla_muf.buffer_cache()["hits"]
    with warnings.catch_warnings():
        # Python 3.12+ warns of fork() in a process with threads (OpenMP's)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: reuse the inherited block, then exit
        ok = False
        try:
            h2 = sequential_scan(np.ones_like(want), np.diff(want, prepend=0.0))
            ok = (bool(np.allclose(h2, want))
                  and zilla_muf.buffer_cache()["hits"] == hits + 1)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("bad, exc, match", [
    (-1, ValueError, r"`max_bytes` must be >= 0, got -1"),
    (1.5, TypeError, r"`max_bytes` must be an integer, got float"),
    (True, TypeError, r"`max_bytes` must be an integer, got bool"),
    ("1", TypeError, r"`max_bytes` must be an integer, got str"),
])
def test_bad_limit(bad, exc, match):
    with pytest.raises(exc, match=match):
        zilla_muf.buffer_cache(bad)


def test_huge_pages_follow_numpy_switch():
    core = np._core if hasattr(np, "_core") else np.core
    setter = getattr(core.multiarray, "_set_madvise_hugepage", None)
    if setter is None:
        pytest.skip("this NumPy has no huge page switch")
    rng = np.random.default_rng(7)
    n = 8 * MIB // 8
    was = setter(False)
    try:
        h, want = scan_ones(n, rng)
        check(h, want)
        assert _buffers.hugepage_advice() is False
        setter(True)
        h, want = scan_ones(n, rng)
        check(h, want)
        assert _buffers.hugepage_advice() is True
    finally:
        setter(was)
