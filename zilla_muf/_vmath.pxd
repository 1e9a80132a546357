# The element functions of _vmath.h, and their fused-type forms.
from zilla_muf._types cimport real_t

cdef extern from "_vmath.h" nogil:
    float zm_expf(float x)
    double zm_exp(double x)
    float zm_softplusf(float x)
    float zm_flush_f(float p)
    double zm_flush_d(double p)


cdef inline real_t vexp(real_t x) noexcept nogil:
    """exp, branch-free and inlined so that loops over it vectorise."""
    if real_t is float:
        return zm_expf(x)
    else:
        return zm_exp(x)


cdef inline real_t vflush(real_t p) noexcept nogil:
    """p, or 0 when its magnitude is below the smallest normal number."""
    if real_t is float:
        return zm_flush_f(p)
    else:
        return zm_flush_d(p)
