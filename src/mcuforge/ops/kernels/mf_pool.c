/* mcuforge portable int8 average and max pooling (NHWC). */
#include "mf_kernels.h"

void mf_avg_pool_s8(const mf_pool_params *p, const int8_t *in, int8_t *out) {
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            for (c = 0; c < p->channels; ++c) {
                int32_t sum = 0, count = 0;
                for (ky = 0; ky < p->k_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                    for (kx = 0; kx < p->k_w; ++kx) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                            if (p->count_include_pad) { sum += p->zero_point; ++count; }
                            continue;
                        }
                        sum += in[(iy * p->in_w + ix) * p->channels + c];
                        ++count;
                    }
                }
                sum = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                out[(oy * p->out_w + ox) * p->channels + c] = (int8_t)MF_CLAMP(sum, p->act_min, p->act_max);
            }
        }
    }
}

void mf_max_pool_s8(const mf_pool_params *p, const int8_t *in, int8_t *out) {
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            for (c = 0; c < p->channels; ++c) {
                int32_t best = -128;
                for (ky = 0; ky < p->k_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                    if (iy < 0 || iy >= p->in_h) continue;
                    for (kx = 0; kx < p->k_w; ++kx) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                        int32_t v;
                        if (ix < 0 || ix >= p->in_w) continue;
                        v = in[(iy * p->in_w + ix) * p->channels + c];
                        best = MF_MAX(best, v);
                    }
                }
                out[(oy * p->out_w + ox) * p->channels + c] = (int8_t)MF_CLAMP(best, p->act_min, p->act_max);
            }
        }
    }
}
