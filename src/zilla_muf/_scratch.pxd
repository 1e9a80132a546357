# Per-thread scratch memory of the kernels: the one idiom every kernel with
# per-thread work space uses (the definitions live in _scratch.pyx).
#
# Before the parallel region, with the GIL:
#
#     scr = Scratch(num_threads, per_thread, sizeof(real_t), "what it is for")
#     ws = &scr.s
#
# allocates `num_threads` blocks of `per_thread` elements in one piece
# (MemoryError naming "what it is for" when it cannot). The region runs on
# as many threads as there are blocks, and a thread takes its own block by
# its id:
#
#     with nogil, parallel(num_threads=ws.nthreads):
#         work = <real_t *> scratch_block(ws, threadid())
#         for task in prange(ntask, schedule=...):
#             if work == NULL:
#                 continue
#             ...
#
# (the region reads the plain C struct `ws`, never the Python object: a
# Python name inside a prange draws an unbound-variable check that cannot
# leave an OpenMP block). A nogil helper takes `scratch_t *` and does the
# same.
# and after it, `scr.finish()` returns how many threads took a block (the
# record of which threads ran), raising RuntimeError if a thread id fell
# outside the allocated count (such a thread got NULL and did no work).
# A block never shares a cache line with another; large blocks start on a
# 2 MB boundary so that huge pages can back them (see Scratch).
# `Scratch(1, n, itemsize, what)` is also the kernels' single work array.

ctypedef struct scratch_t:
    char *base          # block 0; block k starts k * stride bytes later
    Py_ssize_t stride   # bytes per block, a multiple of 64
    int nthreads        # blocks allocated
    int *ran            # ran[k] = 1 once thread k has taken its block
    int *stray          # set when a thread id outside [0, nthreads) asked


cdef inline void *scratch_block(scratch_t *s, int tid) noexcept nogil:
    """The block of thread `tid`, or NULL (and the stray flag set) when
    `tid` is not one of the allocated blocks."""
    if tid < 0 or tid >= s.nthreads:
        s.stray[0] = 1
        return NULL
    s.ran[tid] = 1
    return s.base + tid * s.stride


cdef class Scratch:
    cdef object mem     # the NumPy array that owns the memory
    cdef scratch_t s
    cdef Py_ssize_t per_thread
    cpdef int finish(self) except -1
