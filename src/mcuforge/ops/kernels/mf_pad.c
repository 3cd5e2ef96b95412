/* mcuforge constant padding (rank <= 4, shapes padded to rank 4). */
#include <string.h>
#include "mf_kernels.h"

void mf_pad_s8(const mf_pad_params *p, const int8_t *in, int8_t *out) {
    const int32_t *is = p->in_shape, *os = p->out_shape, *b = p->before;
    int32_t o0, o1, o2;
    for (o0 = 0; o0 < os[0]; ++o0) {
        for (o1 = 0; o1 < os[1]; ++o1) {
            for (o2 = 0; o2 < os[2]; ++o2) {
                int8_t *dst = out + ((o0 * os[1] + o1) * os[2] + o2) * os[3];
                const int32_t i0 = o0 - b[0], i1 = o1 - b[1], i2 = o2 - b[2];
                if (i0 < 0 || i0 >= is[0] || i1 < 0 || i1 >= is[1] || i2 < 0 || i2 >= is[2]) {
                    memset(dst, p->value, (size_t)os[3]);
                    continue;
                }
                memset(dst, p->value, (size_t)b[3]);
                memcpy(dst + b[3], in + ((i0 * is[1] + i1) * is[2] + i2) * is[3], (size_t)is[3]);
                memset(dst + b[3] + is[3], p->value, (size_t)(os[3] - b[3] - is[3]));
            }
        }
    }
}
