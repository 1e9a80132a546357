# cython: language_level=3, boundscheck=False, wraparound=False
"""Output arrays whose large blocks are reused after they are freed.

See _bufcache.h: a NumPy memory handler keeps the blocks of at least
MIN_BYTES that arrays allocated through it free, up to a limit, for the next
allocation they fit. Arrays made by `empty` free through that handler
wherever they go; the handler applies to nothing else.
"""

import os

import numpy as np
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New

cnp.import_array()

cdef extern from "_bufcache.h":
    ctypedef struct PyDataMem_Handler:
        pass
    PyDataMem_Handler zm_handler
    long zm_want
    int zm_hugepage
    long zm_pick(const size_t *near, int k)
    size_t zm_limit
    size_t zm_min
    size_t zm_cached
    unsigned long long zm_hits
    unsigned long long zm_misses
    int zm_reset_lock()
    int zm_blocks()
    void zm_set_limit(size_t limit)
    int ZM_SLOTS

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

if zm_reset_lock() != 0:
    raise MemoryError("could not allocate the buffer cache's lock")

cdef object _handler = PyCapsule_New(&zm_handler, "mem_handler", NULL)

# NumPy's switch for huge pages (on by default, off on old Linux kernels);
# the handler follows it
_core = np._core if hasattr(np, "_core") else np.core
_get_hugepage = getattr(_core.multiarray, "_get_madvise_hugepage", None)

#: Blocks smaller than this (bytes) are never cached.
MIN_BYTES = zm_min
#: Blocks the cache holds at most.
SLOTS = ZM_SLOTS


def _after_fork_in_child():
    if zm_reset_lock() != 0:
        raise MemoryError("could not allocate the buffer cache's lock")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def empty(shape, dtype, cnp.ndarray a=None, cnp.ndarray b=None):
    """np.empty(shape, dtype), its memory from the reusing handler.

    Given the arrays `a` and `b` that a kernel reads while it writes the
    result, the result is placed in its page so that its stores do not
    alias their loads (see zm_pick)."""
    cdef size_t near[2]
    cdef int k = 0
    if a is not None:
        near[k] = <size_t> cnp.PyArray_DATA(a)
        k += 1
    if b is not None:
        near[k] = <size_t> cnp.PyArray_DATA(b)
        k += 1
    global zm_want, zm_hugepage
    zm_hugepage = 1 if _get_hugepage is None else int(bool(_get_hugepage()))
    old = PyDataMem_SetHandler(_handler)
    zm_want = zm_pick(near, k) if k else -1
    try:
        return np.empty(shape, dtype=dtype)
    finally:
        zm_want = -1
        PyDataMem_SetHandler(old)


def set_limit(Py_ssize_t limit):
    """Hold at most `limit` bytes of freed blocks (0: none); evict the rest."""
    if limit < 0:
        raise ValueError(f"`max_bytes` must be >= 0, got {limit}")
    zm_set_limit(<size_t> limit)


def stats():
    """The limit, the bytes and blocks held, and the hits and misses of
    allocations of at least MIN_BYTES."""
    return {
        "max_bytes": zm_limit,
        "cached_bytes": zm_cached,
        "cached_blocks": zm_blocks(),
        "hits": zm_hits,
        "misses": zm_misses,
    }


def hugepage_advice():
    """Whether the last allocation asked for huge pages (NumPy's switch)."""
    return bool(zm_hugepage)
