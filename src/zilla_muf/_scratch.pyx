# cython: language_level=3
"""Per-thread scratch memory of the kernels (the idiom is described in
_scratch.pxd).

A kernel whose threads each need work space allocates all of it at once,
before its parallel region and with the GIL, as one `Scratch` of
`nthreads` blocks; each thread then takes the block of its thread id
(`scratch_block`). Nothing is allocated inside a parallel region, so an
allocation failure is a MemoryError raised before any work starts, naming
what could not be had, and never a flag threads have to pass around.

The memory comes from NumPy's allocator, which asks the system for huge
pages for blocks of 4 MB or more. When the whole scratch is 1 MB or more
it is placed on a 2 MB boundary and at least 4 MB are asked for (only
whole aligned 2 MB pages can be huge): small pages are mapped 4 KB at a
time on first touch, a page fault each, which for the SSD backward's
scratch costs about as much as the pass that writes it. Smaller scratch
is 64-byte aligned. Every block starts on a 64-byte boundary (the stride
is rounded up), so two threads never write the same cache line.
"""
from libc.stdlib cimport calloc, free
from libc.stdint cimport uintptr_t

import numpy as np

# Huge pages: a 2 MB page; NumPy advises huge pages from 4 MB.
cdef Py_ssize_t _HUGE = 1 << 21
cdef Py_ssize_t _LINE = 64
cdef Py_ssize_t _MAX = <Py_ssize_t> ((<size_t> -1) >> 1)


cdef class Scratch:
    """`nthreads` blocks of `per_thread` elements of `itemsize` bytes, for
    `what` (named by the MemoryError when they cannot be allocated)."""

    def __cinit__(self, int nthreads, Py_ssize_t per_thread,
                  Py_ssize_t itemsize, str what):
        cdef Py_ssize_t stride, total, n, align = _LINE
        cdef unsigned char[::1] mem
        if nthreads < 1:
            raise ValueError(f"{what}: nthreads must be >= 1, got {nthreads}")
        if per_thread < 0 or itemsize < 1:
            raise ValueError(f"{what}: per_thread must be >= 0 and itemsize >= 1")
        # sizes past the address space are a MemoryError, never a wrapped size
        if per_thread > ((_MAX - 4 * _HUGE) // nthreads - _LINE) // itemsize:
            raise MemoryError(f"could not allocate {what}: {nthreads} blocks "
                              f"of {per_thread} elements of {itemsize} bytes "
                              "exceed the address space")
        stride = (per_thread * itemsize + _LINE - 1) // _LINE * _LINE
        total = nthreads * stride
        n = total
        if total >= _HUGE // 2:
            align = _HUGE
            n = max(total, 2 * _HUGE)
        self.s.ran = <int *> calloc(nthreads + 1, sizeof(int))
        if self.s.ran == NULL:
            raise MemoryError(f"could not allocate {what} (thread record)")
        self.s.stray = self.s.ran + nthreads
        try:
            self.mem = np.empty(n + align, dtype=np.uint8)
        except MemoryError:
            raise MemoryError(f"could not allocate {what} ({nthreads} blocks "
                              f"of {stride} bytes)") from None
        mem = self.mem
        self.s.base = <char *> &mem[0]
        self.s.base += (-<uintptr_t> self.s.base) % <uintptr_t> align
        self.s.stride = stride
        self.s.nthreads = nthreads
        self.per_thread = per_thread

    def __dealloc__(self):
        free(self.s.ran)

    cpdef int finish(self) except -1:
        """How many threads took their block; RuntimeError if a thread id
        outside the allocated blocks asked for one."""
        cdef int k, n = 0
        if self.s.stray[0]:
            raise RuntimeError("a parallel region ran a thread beyond the "
                               f"{self.s.nthreads} scratch blocks allocated")
        for k in range(self.s.nthreads):
            n += self.s.ran[k]
        return n

    @property
    def nthreads(self):
        """Blocks allocated."""
        return self.s.nthreads

    @property
    def stride(self):
        """Bytes from one block to the next."""
        return self.s.stride

    @property
    def address(self):
        """Address of block 0."""
        return <uintptr_t> self.s.base

    def _take(self, int tid):
        """Address of thread `tid`'s block as a kernel takes it (0 when
        `tid` is outside the blocks); for the tests."""
        return <uintptr_t> scratch_block(&self.s, tid)
