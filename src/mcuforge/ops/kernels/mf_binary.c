/* mcuforge portable int8 elementwise add and mul with rank-4 broadcasting. */
#include "mf_kernels.h"

#define MF_BINARY_LOOP(BODY)                                                          \
    int32_t i0, i1, i2, i3;                                                           \
    int8_t *y = out;                                                                  \
    for (i0 = 0; i0 < p->shape[0]; ++i0)                                              \
        for (i1 = 0; i1 < p->shape[1]; ++i1)                                          \
            for (i2 = 0; i2 < p->shape[2]; ++i2)                                      \
                for (i3 = 0; i3 < p->shape[3]; ++i3) {                                \
                    const int32_t a = a_in[i0 * p->a_stride[0] + i1 * p->a_stride[1] +  \
                                           i2 * p->a_stride[2] + i3 * p->a_stride[3]] + \
                                      p->a_offset;                                    \
                    const int32_t b = b_in[i0 * p->b_stride[0] + i1 * p->b_stride[1] +  \
                                           i2 * p->b_stride[2] + i3 * p->b_stride[3]] + \
                                      p->b_offset;                                    \
                    int32_t r;                                                        \
                    BODY                                                              \
                    *y++ = (int8_t)MF_CLAMP(r, p->act_min, p->act_max);               \
                }

void mf_add_s8(const mf_binary_params *p, const int8_t *a_in, const int8_t *b_in, int8_t *out) {
    MF_BINARY_LOOP(
        const int32_t sa = mf_requant(a * (1 << p->left_shift), p->a_mult, p->a_shift);
        const int32_t sb = mf_requant(b * (1 << p->left_shift), p->b_mult, p->b_shift);
        r = mf_requant(sa + sb, p->out_mult, p->out_shift) + p->out_offset;
    )
}

void mf_mul_s8(const mf_binary_params *p, const int8_t *a_in, const int8_t *b_in, int8_t *out) {
    MF_BINARY_LOOP(
        r = mf_requant(a * b, p->out_mult, p->out_shift) + p->out_offset;
    )
}
