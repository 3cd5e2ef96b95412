/* mcuforge portable int8 fully connected layer. */
#include "mf_kernels.h"

void mf_fc_s8(const mf_fc_params *p, const int8_t *in, const int8_t *w,
              const int32_t *bias, int8_t *out) {
    int32_t r, o, k;
    for (r = 0; r < p->rows; ++r) {
        const int8_t *x = in + r * p->in_features;
        int8_t *y = out + r * p->out_features;
        for (o = 0; o < p->out_features; ++o) {
            const int8_t *wo = w + o * p->in_features;
            int32_t acc = bias ? bias[o] : 0;
            for (k = 0; k < p->in_features; ++k) {
                acc += ((int32_t)x[k] + p->in_offset) * (int32_t)wo[k];
            }
            acc = mf_requant(acc, p->mult[o], p->shift[o]) + p->out_offset;
            y[o] = (int8_t)MF_CLAMP(acc, p->act_min, p->act_max);
        }
    }
}
