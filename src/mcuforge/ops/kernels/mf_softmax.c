/* mcuforge int8 softmax: TFLite/TFLM reference semantics in gemmlowp fixed point. */
#include "mf_kernels.h"

#define MF_F0_ONE INT32_MAX

static int32_t mf_exp_on_interval_neg_quarter_0(int32_t a) {
    const int32_t constant_term = 1895147668;
    const int32_t constant_1_over_3 = 715827883;
    const int32_t x = a + (1 << 28);
    const int32_t x2 = mf_srdhm(x, x);
    const int32_t x3 = mf_srdhm(x2, x);
    const int32_t x4 = mf_srdhm(x2, x2);
    const int32_t x4_over_4 = mf_rdbpot(x4, 2);
    const int32_t poly = mf_rdbpot(mf_srdhm(x4_over_4 + x3, constant_1_over_3) + x2, 1);
    return constant_term + mf_srdhm(constant_term, x + poly);
}

/* exp(a) for a <= 0 given in Q5.26; result in Q0.31. */
static int32_t mf_exp_on_negative_values(int32_t a) {
    const int32_t one_quarter = 1 << 24;
    const int32_t mask = one_quarter - 1;
    const int32_t a_mod_quarter_minus_one_quarter = (a & mask) - one_quarter;
    int32_t result = mf_exp_on_interval_neg_quarter_0(mf_sat_shl(a_mod_quarter_minus_one_quarter, 5));
    const int32_t remainder = a_mod_quarter_minus_one_quarter - a;
    if (remainder & (1 << 24)) result = mf_srdhm(result, 1672461947);
    if (remainder & (1 << 25)) result = mf_srdhm(result, 1302514674);
    if (remainder & (1 << 26)) result = mf_srdhm(result, 790015084);
    if (remainder & (1 << 27)) result = mf_srdhm(result, 290630308);
    if (remainder & (1 << 28)) result = mf_srdhm(result, 39332535);
    if (remainder & (1 << 29)) result = mf_srdhm(result, 720401);
    if (remainder & (1 << 30)) result = mf_srdhm(result, 242);
    return a == 0 ? MF_F0_ONE : result;
}

/* 1 / (1 + x) for x in [0, 1) in Q0.31, Newton-Raphson as gemmlowp. */
static int32_t mf_one_over_one_plus_x(int32_t a) {
    const int64_t sum = (int64_t)a + MF_F0_ONE;
    const int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = 1515870810 + mf_srdhm(half_denominator, -1010580540);
    int i;
    for (i = 0; i < 3; ++i) {
        const int32_t one_minus = (1 << 29) - mf_srdhm(half_denominator, x);
        x = x + mf_sat_shl(mf_srdhm(x, one_minus), 2);
    }
    return mf_sat_shl(x, 1);
}

static int mf_clz32(uint32_t x) {
    int n = 0;
    if (x == 0) return 32;
    while (!(x & 0x80000000u)) { x <<= 1; ++n; }
    return n;
}

void mf_softmax_s8(const int8_t *in, int8_t *out, int32_t rows, int32_t depth,
                   int32_t mult, int32_t left_shift, int32_t diff_min) {
    int32_t r, c;
    for (r = 0; r < rows; ++r) {
        const int8_t *x = in + r * depth;
        int8_t *y = out + r * depth;
        int32_t max_in_row = -128, sum_of_exps = 0, shifted_scale;
        int headroom_plus_one, num_bits_over_unit;
        for (c = 0; c < depth; ++c) max_in_row = MF_MAX(max_in_row, (int32_t)x[c]);
        /* diff >= diff_min keeps diff * 2^left_shift within int32; the shift is done on
         * unsigned bits because left_shift may be 31, where (1 << 31) is undefined. */
        for (c = 0; c < depth; ++c) {
            const int32_t diff = (int32_t)x[c] - max_in_row;
            if (diff >= diff_min) {
                const int32_t scaled = mf_srdhm(mf_shl_wrap(diff, left_shift), mult);
                sum_of_exps += mf_rdbpot(mf_exp_on_negative_values(scaled), 12);
            }
        }
        headroom_plus_one = mf_clz32((uint32_t)sum_of_exps);
        num_bits_over_unit = 12 - headroom_plus_one;
        shifted_scale = mf_one_over_one_plus_x(
            (int32_t)(((uint32_t)sum_of_exps << headroom_plus_one) - ((uint32_t)1 << 31)));
        for (c = 0; c < depth; ++c) {
            const int32_t diff = (int32_t)x[c] - max_in_row;
            if (diff >= diff_min) {
                const int32_t scaled = mf_srdhm(mf_shl_wrap(diff, left_shift), mult);
                const int32_t e = mf_exp_on_negative_values(scaled);
                const int32_t unsat = mf_rdbpot(mf_srdhm(shifted_scale, e), num_bits_over_unit + 31 - 8);
                y[c] = (int8_t)MF_CLAMP(unsat - 128, -128, 127);
            } else {
                y[c] = -128;
            }
        }
    }
}
