# The element functions of _vmath.h, and their fused-type forms.
from zilla_muf._types cimport real_t

cdef extern from "_vmath.h" nogil:
    float zm_expf(float x)
    double zm_exp(double x)
    float zm_softplusf(float x)
    float zm_inv_scalef(float x)
    double zm_inv_scale(double x)
    float zm_flush_f(float p)
    double zm_flush_d(double p)
    void zm_sincosf(float x, float *s, float *c)
    void zm_sincos(double x, double *s, double *c)
    float ZM_SINCOS_MAXF
    double ZM_SINCOS_MAX
    float zm_silu1_f(float v)
    double zm_silu1_d(double v)
    float zm_decay_expf(float d)
    double zm_decay_exp(double d)


cdef inline real_t vexp(real_t x) noexcept nogil:
    """exp, branch-free and inlined so that loops over it vectorise."""
    if real_t is float:
        return zm_expf(x)
    else:
        return zm_exp(x)


cdef inline real_t vdecay(real_t d) noexcept nogil:
    """exp(d) for a log-decay d, 0 below the square root of the smallest
    normal number (the decay element of _vmath.h)."""
    if real_t is float:
        return zm_decay_expf(d)
    else:
        return zm_decay_exp(d)


cdef inline real_t vsilu(real_t x) noexcept nogil:
    """x sigmoid(x), the gate element of _vmath.h that every SiLU of the
    package uses (the limit -0 at x = -inf)."""
    if real_t is float:
        return zm_silu1_f(x)
    else:
        return zm_silu1_d(x)


cdef inline real_t vflush(real_t p) noexcept nogil:
    """p, or 0 when its magnitude is below the smallest normal number."""
    if real_t is float:
        return zm_flush_f(p)
    else:
        return zm_flush_d(p)


cdef inline void vsincos(real_t x, real_t *s, real_t *c) noexcept nogil:
    """sin and cos of x, branch-free (exact reduction for |x| <= vsincos_max)."""
    if real_t is float:
        zm_sincosf(x, s, c)
    else:
        zm_sincos(x, s, c)


cdef inline real_t vsincos_max(real_t x) noexcept nogil:
    """The largest |x| that vsincos reduces exactly (x: the type only)."""
    if real_t is float:
        return ZM_SINCOS_MAXF
    else:
        return ZM_SINCOS_MAX


cdef inline real_t vinv_scale(real_t x) noexcept nogil:
    """A power of two t with x t in [1, 2) for a magnitude x >= 0 (exact
    scaling, no division)."""
    if real_t is float:
        return zm_inv_scalef(x)
    else:
        return zm_inv_scale(x)
