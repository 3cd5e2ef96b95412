/* mcuforge int8 elementwise add for DSP-extension cores: TFLite ADD through two 256-entry
 * tables (each input's exact rescaling, doubled) and one SMMLAR requantization. */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

MF_INLINE int8_t add_one(int32_t s2, int32_t mult, int32_t a, int32_t b, const int fast, const int clamp,
                         int32_t lo, int32_t hi) {
    int32_t r;
    if (fast) {
        r = mf_ssat8((mf_smmlar(s2, mult, a) + (s2 >> 31)) >> b);
    } else {
        r = mf_ssat8(mf_requant(s2 / 2, mult, a) + b);
    }
    return mf_dsp_act(r, clamp, lo, hi);
}

MF_INLINE void add_body(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out,
                        const int fast, const int clamp) {
    const int32_t *ta = p->table_a, *tb = p->table_b; /* point at the entries for 0 */
    const int32_t mult = p->mult, a = p->a, b = p->b, lo = p->act_min, hi = p->act_max;
    int8_t *const end = out + p->size;
    int8_t *const end4 = out + (p->size & ~3);
    while (out < end4) { /* four at a time, loads before stores: out may be x or y */
        const int32_t s0 = ta[x[0]] + tb[y[0]], s1 = ta[x[1]] + tb[y[1]]; /* 2 (x' + y') */
        out[0] = add_one(s0, mult, a, b, fast, clamp, lo, hi);
        out[1] = add_one(s1, mult, a, b, fast, clamp, lo, hi);
        {
            const int32_t s2 = ta[x[2]] + tb[y[2]], s3 = ta[x[3]] + tb[y[3]];
            out[2] = add_one(s2, mult, a, b, fast, clamp, lo, hi);
            out[3] = add_one(s3, mult, a, b, fast, clamp, lo, hi);
        }
        x += 4;
        y += 4;
        out += 4;
    }
    while (out < end) *out++ = add_one(ta[*x++] + tb[*y++], mult, a, b, fast, clamp, lo, hi);
}

void mf_add_dsp_s8_fast(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out) {
    add_body(p, x, y, out, 1, 0);
}

void mf_add_dsp_s8_fast_clamp(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out) {
    add_body(p, x, y, out, 1, 1);
}

void mf_add_dsp_s8_exact(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out) {
    add_body(p, x, y, out, 0, 0);
}

void mf_add_dsp_s8_exact_clamp(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out) {
    add_body(p, x, y, out, 0, 1);
}
