/* mcuforge DSP-extension helpers (Cortex-M4/M7/M33/M55): the SIMD instructions the
 * fast kernels use, as ACLE intrinsics or inline assembly where the compiler
 * defines __ARM_FEATURE_DSP, and as exact portable C emulations elsewhere (so the
 * same kernel logic runs, and is tested bit for bit, on any host).
 *
 * Lanes: a 32-bit word holds two int16 lanes, lane 0 in bits 0-15. Byte data is
 * little-endian (the Cortex-M default; the code generator packs weights so).
 *
 * The fast requantization (mf_dsp_requant with fast = 1) is TFLite's
 * MultiplyByQuantizedMultiplier with a right shift e >= 1 and no left shift,
 * rewritten for the single-instruction SMMLAR; it is exact whenever the
 * accumulator lies in the range the code generator proved for the layer
 * (mcuforge/ops/dsp.py: fast_requant_ok):
 *   SRDHM(acc, M)      = (acc * M + 2^30) >> 31           (M >= 0: no saturation)
 *                      = (2 acc * M + 2^31) >> 32  = SMMULR(2 acc, M)
 *   RDBPOT(r, e) + zp  = (r + 2^(e-1) - (r < 0) + zp 2^e) >> e
 *                      = (SMMLAR(C, 2 acc, M) + (acc >> 31)) >> e,  C = 2^(e-1) + zp 2^e
 * (r < 0 exactly when acc < 0, except r == 0, where the -1 does not change the result). */
#ifndef MF_DSP_H
#define MF_DSP_H

#include <stdint.h>
#include <string.h>
#include "mf_fixedpoint.h"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mcuforge's DSP kernels expect a little-endian target"
#endif

#if defined(__GNUC__)
#define MF_INLINE static inline __attribute__((always_inline))
#else
#define MF_INLINE static inline
#endif

/* The instructions themselves with GNU-compatible compilers (gcc, clang, armclang: ACLE and inline
 * assembly); any other compiler gets the portable emulations below. */
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && defined(__GNUC__)
#define MF_DSP_NATIVE 1
#include <arm_acle.h>
#else
#define MF_DSP_NATIVE 0
#endif

/* Unaligned little-endian loads and stores of activation bytes (memcpy: no aliasing or
 * alignment assumptions; a single LDR/STR on cores with unaligned access). */
MF_INLINE uint32_t mf_load32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

MF_INLINE void mf_store32(void *p, uint32_t v) { memcpy(p, &v, 4); }

/* Sign extend a byte held in the low 8 bits (portable, no implementation-defined casts). */
MF_INLINE int32_t mf_sext8(uint32_t b) { return (int32_t)((b & 0xFFu) ^ 0x80u) - 0x80; }

MF_INLINE uint32_t mf_pack16(int32_t lo, int32_t hi) {
    return ((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16);
}

MF_INLINE int32_t mf_lane_lo(uint32_t x) { return (int32_t)((x & 0xFFFFu) ^ 0x8000u) - 0x8000; }
MF_INLINE int32_t mf_lane_hi(uint32_t x) { return (int32_t)((x >> 16) ^ 0x8000u) - 0x8000; }

#if MF_DSP_NATIVE

/* bytes 0 and 2, sign-extended to the two int16 lanes */
MF_INLINE uint32_t mf_sxtb16(uint32_t x) { return __sxtb16(x); }

/* bytes 1 and 3 (one SXTB16 with a rotation) */
MF_INLINE uint32_t mf_sxtb16_ror8(uint32_t x) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/* acc + lo(a) lo(b) + hi(a) hi(b) (wraps modulo 2^32) */
MF_INLINE int32_t mf_smlad(uint32_t a, uint32_t b, int32_t acc) { return __smlad(a, b, acc); }

/* acc + lo(a) hi(b) */
MF_INLINE int32_t mf_smlabt(uint32_t a, uint32_t b, int32_t acc) { return __smlabt(a, b, acc); }

/* acc + hi(a) lo(b) */
MF_INLINE int32_t mf_smlatb(uint32_t a, uint32_t b, int32_t acc) { return __smlatb(a, b, acc); }

/* acc + lo(a) lo(b) */
MF_INLINE int32_t mf_smlabb(uint32_t a, uint32_t b, int32_t acc) { return __smlabb(a, b, acc); }

/* (a * b + 2^31) >> 32 + acc: SMMLAR */
MF_INLINE int32_t mf_smmlar(int32_t a, int32_t b, int32_t acc) {
    int32_t r;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}

MF_INLINE int32_t mf_ssat8(int32_t x) { return __ssat(x, 8); }

/* acc + SXTB16(x), acc + SXTB16(x ROR 8): lane-wise (modulo 2^16) */
MF_INLINE uint32_t mf_sxtab16(uint32_t acc, uint32_t x) { return __sxtab16(acc, x); }

MF_INLINE uint32_t mf_sxtab16_ror8(uint32_t acc, uint32_t x) {
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(acc), "r"(x));
    return r;
}

/* byte-wise signed maximum (SSUB8 sets the GE flags, SEL picks) */
MF_INLINE uint32_t mf_max8(uint32_t a, uint32_t b) {
    uint32_t t, r;
    __asm__("ssub8 %0, %2, %3\n\tsel %1, %2, %3" : "=&r"(t), "=r"(r) : "r"(a), "r"(b) : "cc");
    (void)t;
    return r;
}

#else /* portable emulations, bit-exact with the instructions */

MF_INLINE uint32_t mf_sxtb16(uint32_t x) {
    return mf_pack16(mf_sext8(x), mf_sext8(x >> 16));
}

MF_INLINE uint32_t mf_sxtb16_ror8(uint32_t x) {
    return mf_pack16(mf_sext8(x >> 8), mf_sext8(x >> 24));
}

MF_INLINE int32_t mf_wrap32(int64_t v) {
    const uint32_t u = (uint32_t)((uint64_t)v & 0xFFFFFFFFu);
    return u < 0x80000000u ? (int32_t)u : (int32_t)(u - 0x80000000u) - 0x7FFFFFFF - 1;
}

MF_INLINE int32_t mf_smlad(uint32_t a, uint32_t b, int32_t acc) {
    return mf_wrap32((int64_t)acc + (int64_t)mf_lane_lo(a) * mf_lane_lo(b) +
                     (int64_t)mf_lane_hi(a) * mf_lane_hi(b));
}

MF_INLINE int32_t mf_smlabt(uint32_t a, uint32_t b, int32_t acc) {
    return mf_wrap32((int64_t)acc + (int64_t)mf_lane_lo(a) * mf_lane_hi(b));
}

MF_INLINE int32_t mf_smlatb(uint32_t a, uint32_t b, int32_t acc) {
    return mf_wrap32((int64_t)acc + (int64_t)mf_lane_hi(a) * mf_lane_lo(b));
}

MF_INLINE int32_t mf_smlabb(uint32_t a, uint32_t b, int32_t acc) {
    return mf_wrap32((int64_t)acc + (int64_t)mf_lane_lo(a) * mf_lane_lo(b));
}

MF_INLINE int32_t mf_smmlar(int32_t a, int32_t b, int32_t acc) {
    /* acc + floor((a b + 2^31) / 2^32), modulo 2^32 */
    const int64_t v = (int64_t)a * b + 2147483648LL;
    const int64_t q = v >= 0 ? v / 4294967296LL : -((-v + 4294967295LL) / 4294967296LL);
    return mf_wrap32((int64_t)acc + q);
}

MF_INLINE int32_t mf_ssat8(int32_t x) { return MF_CLAMP(x, -128, 127); }

MF_INLINE uint32_t mf_sxtab16(uint32_t acc, uint32_t x) {
    return mf_pack16(mf_lane_lo(acc) + mf_sext8(x), mf_lane_hi(acc) + mf_sext8(x >> 16));
}

MF_INLINE uint32_t mf_sxtab16_ror8(uint32_t acc, uint32_t x) {
    return mf_pack16(mf_lane_lo(acc) + mf_sext8(x >> 8), mf_lane_hi(acc) + mf_sext8(x >> 24));
}

MF_INLINE uint32_t mf_max8(uint32_t a, uint32_t b) {
    uint32_t r = 0;
    int i;
    for (i = 0; i < 32; i += 8) {
        const int32_t x = mf_sext8(a >> i), y = mf_sext8(b >> i);
        r |= ((uint32_t)(x > y ? x : y) & 0xFFu) << i;
    }
    return r;
}

#endif /* MF_DSP_NATIVE */

/* Per-output-channel requantization record: { bias, multiplier, a, b } where, in the fast
 * form, a = C = 2^(e-1) + zp_out 2^e and b = e (the right shift, >= 1); in the exact form
 * a = TFLite's shift and b = zp_out. The bias has the input zero point folded in. */
enum { MF_Q_BIAS = 0, MF_Q_MULT = 1, MF_Q_A = 2, MF_Q_B = 3, MF_Q_WORDS = 4 };

/* Requantize an accumulator of output channel record q to int8 (before the activation clamp).
 * fast: the SMMLAR form above (valid where the generator proved it); else TFLite's exact
 * MultiplyByQuantizedMultiplier. acc2 is 2 * acc where the caller has it (fast form only). */
MF_INLINE int32_t mf_dsp_requant(int32_t acc, const int32_t *q, const int fast) {
    if (fast) {
        const int32_t r = mf_smmlar(acc * 2, q[MF_Q_MULT], q[MF_Q_A]);
        return mf_ssat8((r + (acc >> 31)) >> q[MF_Q_B]);
    }
    return mf_ssat8(mf_requant(acc, q[MF_Q_MULT], q[MF_Q_A]) + q[MF_Q_B]);
}

/* The same with the doubled accumulator (kernels whose weights and bias are stored doubled). */
MF_INLINE int32_t mf_dsp_requant2(int32_t acc2, const int32_t *q, const int fast) {
    if (fast) {
        const int32_t r = mf_smmlar(acc2, q[MF_Q_MULT], q[MF_Q_A]);
        return mf_ssat8((r + (acc2 >> 31)) >> q[MF_Q_B]);
    }
    return mf_ssat8(mf_requant(acc2 / 2, q[MF_Q_MULT], q[MF_Q_A]) + q[MF_Q_B]);
}

MF_INLINE int8_t mf_dsp_act(int32_t y, const int clamp, int32_t lo, int32_t hi) {
    if (clamp) y = MF_CLAMP(y, lo, hi);
    return (int8_t)y;
}

#endif /* MF_DSP_H */
