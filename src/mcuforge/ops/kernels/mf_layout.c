/* mcuforge data movement: transpose and concatenation (with requantization). */
#include <string.h>
#include "mf_kernels.h"

void mf_transpose_s8(const mf_transpose_params *p, const int8_t *in, int8_t *out) {
    int32_t stride[4], out_shape[4], o[4], d;
    stride[3] = 1;
    for (d = 2; d >= 0; --d) stride[d] = stride[d + 1] * p->in_shape[d + 1];
    for (d = 0; d < 4; ++d) out_shape[d] = p->in_shape[p->perm[d]];
    for (o[0] = 0; o[0] < out_shape[0]; ++o[0])
        for (o[1] = 0; o[1] < out_shape[1]; ++o[1])
            for (o[2] = 0; o[2] < out_shape[2]; ++o[2])
                for (o[3] = 0; o[3] < out_shape[3]; ++o[3]) {
                    int32_t src = 0;
                    for (d = 0; d < 4; ++d) src += o[d] * stride[p->perm[d]];
                    *out++ = in[src];
                }
}

void mf_concat_part_s8(const int8_t *in, int8_t *out, int32_t outer, int32_t inner,
                       int32_t out_inner, int32_t offset, int32_t requantize,
                       int32_t in_offset, int32_t out_offset, int32_t mult, int32_t shift) {
    int32_t i, j;
    for (i = 0; i < outer; ++i) {
        const int8_t *src = in + i * inner;
        int8_t *dst = out + i * out_inner + offset;
        if (!requantize) {
            memcpy(dst, src, (size_t)inner);
            continue;
        }
        for (j = 0; j < inner; ++j) {
            const int32_t v = mf_requant((int32_t)src[j] + in_offset, mult, shift) + out_offset;
            dst[j] = mf_sat8(v);
        }
    }
}
