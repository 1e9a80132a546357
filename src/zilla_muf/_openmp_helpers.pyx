# cython: language_level=3
"""Report how the compiled kernels were built and how many threads they use.

Design: `threads_used(n)` runs a trivial `prange` with `num_threads=n` and
returns the number of distinct OpenMP threads that executed an iteration, the
same way every kernel in the package runs its parallel loops.
"""
from cython.parallel cimport prange
from libc.stdlib cimport calloc, free

from zilla_muf._parallel cimport ZM_HAVE_OPENMP, omp_get_thread_num, omp_get_max_threads


def have_openmp():
    """Whether the compiled kernels were built with OpenMP.

    Without OpenMP every kernel still runs, on one thread whatever `workers`
    asks for. :func:`zilla_muf.openmp_info` also reports the threads used.

    Returns
    -------
    bool

    Examples
    --------
    >>> import zilla_muf
    >>> isinstance(zilla_muf.have_openmp(), bool)
    True
    """
    return bool(ZM_HAVE_OPENMP)


def max_threads():
    """The OpenMP runtime's default thread count (1 without OpenMP)."""
    return omp_get_max_threads()


def threads_used(int num_threads):
    """Run a parallel loop on `num_threads` threads; return how many ran."""
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    cdef Py_ssize_t i, niter = 64 * num_threads
    cdef int *seen = <int *> calloc(num_threads + 1, sizeof(int))
    cdef int t, count = 0
    cdef double sink = 0.0
    if seen == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i in prange(niter, num_threads=num_threads, schedule='static', chunksize=1):
                t = omp_get_thread_num()
                if t <= num_threads:
                    seen[t] = 1
                # a little work so that every thread gets scheduled
                sink += <double> i
        for t in range(num_threads + 1):
            count += seen[t]
    finally:
        free(seen)
    return count
