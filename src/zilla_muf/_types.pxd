# Fused types shared by every kernel module.

# Real floating point element types.
ctypedef fused real_t:
    float
    double

# Every element type a kernel may take: real and complex floating point.
ctypedef fused scalar_t:
    float
    double
    float complex
    double complex
