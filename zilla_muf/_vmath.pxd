# The element functions of _vmath.h, and the fused-type exp every kernel uses.
from zilla_muf._types cimport real_t

cdef extern from "_vmath.h" nogil:
    float zm_expf(float x)
    double zm_exp(double x)
    float zm_softplusf(float x)


cdef inline real_t vexp(real_t x) noexcept nogil:
    """exp, branch-free and inlined so that loops over it vectorise."""
    if real_t is float:
        return zm_expf(x)
    else:
        return zm_exp(x)
