/* mcuforge int8 -> int8 table lookup: every elementwise unary op. */
#include "mf_kernels.h"

void mf_lut_s8(const int8_t *in, int8_t *out, int32_t size, const int8_t *table) {
    int32_t i;
    for (i = 0; i < size; ++i) {
        out[i] = table[(uint8_t)((int32_t)in[i] + 128)];
    }
}
