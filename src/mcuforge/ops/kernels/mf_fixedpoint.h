/* mcuforge fixed-point helpers: TFLite/gemmlowp integer semantics in portable C99.
 * Bit-exact with mcuforge.quant.fixedpoint (the numpy specification). */
#ifndef MF_FIXEDPOINT_H
#define MF_FIXEDPOINT_H

#include <stdint.h>

#define MF_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MF_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MF_CLAMP(x, lo, hi) MF_MIN(MF_MAX((x), (lo)), (hi))

/* gemmlowp SaturatingRoundingDoublingHighMul. */
static inline int32_t mf_srdhm(int32_t a, int32_t b) {
    int64_t ab, nudge;
    if (a == b && a == INT32_MIN) return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* gemmlowp RoundingDivideByPOT: divide by 2^exponent, rounding half away from zero. */
static inline int32_t mf_rdbpot(int32_t x, int exponent) {
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* Two's-complement left shift without signed-overflow undefined behaviour. */
static inline int32_t mf_shl_wrap(int32_t x, int shift) {
    return (int32_t)((uint32_t)x << shift);
}

/* TFLite MultiplyByQuantizedMultiplier (double rounding, as TFLM's reference kernels). */
static inline int32_t mf_requant(int32_t x, int32_t multiplier, int32_t shift) {
    const int left = shift > 0 ? shift : 0;
    const int right = shift > 0 ? 0 : -shift;
    return mf_rdbpot(mf_srdhm(mf_shl_wrap(x, left), multiplier), right);
}

/* gemmlowp SaturatingRoundingMultiplyByPOT for a positive exponent. */
static inline int32_t mf_sat_shl(int32_t x, int exponent) {
    const int32_t threshold = (int32_t)(((int64_t)1 << (31 - exponent)) - 1);
    if (x > threshold) return INT32_MAX;
    if (x < -threshold) return INT32_MIN;
    return mf_shl_wrap(x, exponent);
}

static inline int8_t mf_sat8(int32_t x) {
    return (int8_t)MF_CLAMP(x, -128, 127);
}

#endif /* MF_FIXEDPOINT_H */
