/* Branch-free single-precision exp and softplus that compilers vectorise.
 *
 * libm's expf is an opaque call, so a loop that calls it runs one element
 * at a time. zm_expf is Cephes' expf (range reduction x = k ln2 + r with
 * |r| <= ln2/2, a degree-7 polynomial for exp(r), then a scaling by 2^k
 * built in the exponent bits), written without branches or float-to-int
 * conversions so that gcc and clang turn a loop of calls into SIMD code.
 *
 * Accuracy: within 2 ulp of exp over the normal range. Results below
 * about 1.7e-38 (x < -86.99) are flushed to +0 instead of being subnormal;
 * x > 88.7228 gives +inf; NaN gives NaN.
 */
#ifndef ZILLA_MUF_FASTEXP_H
#define ZILLA_MUF_FASTEXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float zm_expf(float x)
{
    /* adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to an integer,
       which then sits in the low mantissa bits */
    const float magic = 12582912.0f;
    uint32_t xbits, kbits, ebits, rbits, big, small, notnan;
    float kf, r, p, scale, res;

    /* Out-of-range x is handled by the integer selects at the end: float
       comparisons would be control flow that gcc does not vectorise while
       floating-point exceptions are honoured (-ftrapping-math). */
    memcpy(&xbits, &x, sizeof xbits);
    kf = x * 1.44269504088896341f + magic;
    memcpy(&kbits, &kf, sizeof kbits);
    kf = kf - magic;                 /* k as a float */
    /* r = x - k ln2, with ln2 split in two for an exact first product */
    r = x - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* 2^(k-1) from its exponent field k - 1 + 127; in range, k is in
       [-126, 128], the field in [0, 254] (0 gives +0: the flush); the extra
       factor 2 keeps 2^128 * p finite where exp(x) is */
    ebits = ((kbits - 0x4B400000u) + 126u) << 23;
    memcpy(&scale, &ebits, sizeof scale);
    res = p * scale * 2.0f;
    memcpy(&rbits, &res, sizeof rbits);
    /* all-ones masks: x > 88.7228 (to +inf), x < -87.5 (to +0); NaN keeps
       the NaN the arithmetic above produced */
    notnan = 0u - (uint32_t)((xbits & 0x7FFFFFFFu) <= 0x7F800000u);
    big = notnan & (0u - (uint32_t)(xbits < 0x80000000u && xbits > 0x42B17218u));
    small = notnan & (0u - (uint32_t)(xbits > 0xC2AF0000u));
    rbits = (rbits & ~big) | (0x7F800000u & big);
    rbits = rbits & ~small;
    memcpy(&res, &rbits, sizeof res);
    return res;
}

/* log1p(y) for y in [0, 1] as 2 atanh(y / (2 + y)): no cancellation for
 * small y, and the odd series in s = y / (2 + y) <= 1/3 converges to float
 * precision by its s^17 term (the next is below 2e-10 relative). */
static inline float zm_log1pf_unit(float y)
{
    float s = y / (2.0f + y);
    float s2 = s * s;
    float p = 1.0f / 17.0f;
    p = p * s2 + 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), branch-free: overflow-free
 * for every x, NaN in gives NaN out. Above x = 20 the correction is below
 * half an ulp of x, so the result is x itself, as with torch's threshold. */
static inline float zm_softplusf(float x)
{
    uint32_t xbits, abits, pbits;
    float ax, pos;
    memcpy(&xbits, &x, sizeof xbits);
    abits = xbits & 0x7FFFFFFFu;
    pbits = xbits & ~(0u - (xbits >> 31));      /* x, or +0 when negative */
    memcpy(&ax, &abits, sizeof ax);
    memcpy(&pos, &pbits, sizeof pos);
    return pos + zm_log1pf_unit(zm_expf(-ax));
}

#endif
