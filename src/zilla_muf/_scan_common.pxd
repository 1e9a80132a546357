# cython: language_level=3
"""What the scan kernels of both layouts share (_scan_rows.pyx, _scan_cols.pyx):
constants, addressing helpers, and the Blelloch tree over leaf maps."""
from cython.parallel cimport prange

from zilla_muf._types cimport scalar_t


cdef enum:
    FLUSH_STEPS = 64
    LANES = 4
    # steps by which lockstep lanes are staggered when their spacing aliases
    SKEW = 16



# ---------------------------------------------------------------------------
# Addressing helpers
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t pos(Py_ssize_t t, Py_ssize_t n, bint reverse) noexcept nogil:
    """Memory index along the scan axis of the t-th step in scan order."""
    return n - 1 - t if reverse else t


cdef inline Py_ssize_t imin(Py_ssize_t x, Py_ssize_t y) noexcept nogil:
    return x if x < y else y



# ---------------------------------------------------------------------------
# Associative (Blelloch tree over leaf blocks)
# ---------------------------------------------------------------------------

cdef inline void tree_up(scalar_t *TA, scalar_t *TB, Py_ssize_t i,
                         Py_ssize_t d, Py_ssize_t w) noexcept nogil:
    """Up-sweep node: X[i] <- X[i - d] o X[i], for the w maps of node i."""
    cdef Py_ssize_t j, l = i - d
    cdef scalar_t ra
    for j in range(w):
        # (la, lb) o (ra, rb) = (la ra, ra lb + rb)
        ra = TA[i * w + j]
        TB[i * w + j] = ra * TB[l * w + j] + TB[i * w + j]
        TA[i * w + j] = TA[l * w + j] * ra


cdef inline void tree_down(scalar_t *TA, scalar_t *TB, Py_ssize_t i,
                           Py_ssize_t d, Py_ssize_t w) noexcept nogil:
    """Down-sweep node: X[i - d] <- X[i]; X[i] <- X[i] o old X[i - d]."""
    cdef Py_ssize_t j, l = i - d
    cdef scalar_t la, lb, ra, rb
    for j in range(w):
        la = TA[l * w + j]
        lb = TB[l * w + j]
        ra = TA[i * w + j]
        rb = TB[i * w + j]
        TA[l * w + j] = ra
        TB[l * w + j] = rb
        TA[i * w + j] = ra * la
        TB[i * w + j] = la * rb + lb


cdef inline void tree_exclusive(scalar_t *TA, scalar_t *TB, Py_ssize_t p2,
                         Py_ssize_t w, int nthreads) noexcept nogil:
    """Exclusive prefix of the affine maps (TA[i], TB[i]), i < p2, in place.

    Each node holds `w` independent maps (channels), stored contiguously at
    [i * w, (i + 1) * w). p2 is a power of two; unused leaves hold (1, 0).
    Up-sweep then down-sweep (Blelloch): O(p2) combines in 2 log2(p2)
    levels. With nthreads > 1 the nodes of a level with enough work are
    combined in parallel; with 1 no parallel region is entered (the tree of
    one row inside an already parallel loop).
    """
    cdef Py_ssize_t d, nnode, idx, j
    cdef int nt
    d = 1
    while d < p2:
        nnode = p2 // (2 * d)
        nt = nthreads if nnode * w >= 8192 else 1
        if nt > 1:
            for idx in prange(nnode, num_threads=nt, schedule='static'):
                tree_up(TA, TB, (2 * idx + 2) * d - 1, d, w)
        else:
            for idx in range(nnode):
                tree_up(TA, TB, (2 * idx + 2) * d - 1, d, w)
        d = 2 * d
    for j in range(w):
        TA[(p2 - 1) * w + j] = 1
        TB[(p2 - 1) * w + j] = 0
    d = p2 // 2
    while d >= 1:
        nnode = p2 // (2 * d)
        nt = nthreads if nnode * w >= 8192 else 1
        if nt > 1:
            for idx in prange(nnode, num_threads=nt, schedule='static'):
                tree_down(TA, TB, (2 * idx + 2) * d - 1, d, w)
        else:
            for idx in range(nnode):
                tree_down(TA, TB, (2 * idx + 2) * d - 1, d, w)
        d = d // 2


cdef inline Py_ssize_t next_pow2(Py_ssize_t x) noexcept nogil:
    cdef Py_ssize_t p = 1
    while p < x:
        p = 2 * p
    return p

