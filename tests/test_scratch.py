"""The kernels' per-thread scratch (zilla_muf._scratch.Scratch): block
placement and alignment, the record of which threads took a block, the
guard on thread ids outside the allocation, and allocation failures
reported as a MemoryError naming what was being allocated.
"""

import pytest

from zilla_muf._scratch import Scratch

HUGE_PAGE = 1 << 21


@pytest.mark.parametrize("nthreads, per_thread, itemsize",
                         [(1, 0, 8), (1, 1, 4), (3, 10, 8), (4, 17, 4),
                          (2, 16, 8)])
def test_blocks_are_line_aligned_and_disjoint(nthreads, per_thread, itemsize):
    s = Scratch(nthreads, per_thread, itemsize, "a test block")
    assert s.nthreads == nthreads
    assert s.address % 64 == 0
    assert s.stride % 64 == 0
    # each block holds its elements and no more than a cache line of slack
    assert per_thread * itemsize <= s.stride < per_thread * itemsize + 64
    for t in range(nthreads):
        assert s._take(t) == s.address + t * s.stride


@pytest.mark.parametrize("nthreads, nbytes", [(1, 1 << 20), (2, 700_000),
                                              (3, 5 << 20)])
def test_large_scratch_starts_on_a_huge_page(nthreads, nbytes):
    s = Scratch(nthreads, nbytes // 4, 4, "a test block")
    assert s.address % HUGE_PAGE == 0


def test_small_scratch_is_not_padded_to_huge_pages():
    s = Scratch(2, 1000, 8, "a test block")
    assert s.stride == 8000 // 64 * 64 + 64 * (8000 % 64 != 0)


def test_record_of_the_threads_that_took_a_block():
    s = Scratch(4, 8, 8, "a test block")
    assert s.finish() == 0
    s._take(0)
    s._take(2)
    s._take(2)
    assert s.finish() == 2


@pytest.mark.parametrize("tid", [-1, 3, 4, 1000])
def test_thread_id_outside_the_blocks_gets_none_and_is_reported(tid):
    s = Scratch(3, 8, 8, "a test block")
    assert s._take(tid) == 0
    with pytest.raises(RuntimeError, match="3 scratch blocks"):
        s.finish()


@pytest.mark.parametrize("nthreads, per_thread, itemsize",
                         [(1, 2**62, 8), (2, 2**61, 8), (64, 2**57, 1),
                          (1, 2**47, 8), (2, 2**46, 4)])
def test_impossible_request_is_a_memory_error_naming_it(nthreads, per_thread,
                                                        itemsize):
    # the first three overflow the address space, the last two are 1 PiB
    # and 512 TiB: more than any x86-64 or AArch64 process can map
    with pytest.raises(MemoryError, match="the named block"):
        Scratch(nthreads, per_thread, itemsize, "the named block")


@pytest.mark.parametrize("nthreads, per_thread, itemsize",
                         [(0, 1, 8), (-2, 1, 8), (1, -1, 8), (1, 1, 0)])
def test_bad_arguments_are_value_errors(nthreads, per_thread, itemsize):
    with pytest.raises(ValueError, match="the named block"):
        Scratch(nthreads, per_thread, itemsize, "the named block")
