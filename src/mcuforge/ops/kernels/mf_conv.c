/* mcuforge portable int8 convolution (NHWC, groups, stride, dilation, padding). */
#include "mf_kernels.h"

void mf_conv2d_s8(const mf_conv_params *p, const int8_t *in, const int8_t *w,
                  const int32_t *bias, int8_t *out) {
    const int32_t cg = p->in_c / p->groups;
    const int32_t og = p->out_c / p->groups;
    const int32_t wsize = p->k_h * p->k_w * cg;
    int32_t oy, ox, g, oc, ky, kx, ic;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            int8_t *dst = out + ((int32_t)oy * p->out_w + ox) * p->out_c;
            for (g = 0; g < p->groups; ++g) {
                for (oc = 0; oc < og; ++oc) {
                    const int32_t o = g * og + oc;
                    const int8_t *wo = w + o * wsize;
                    int32_t acc = bias ? bias[o] : 0;
                    for (ky = 0; ky < p->k_h; ++ky) {
                        const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dil_h;
                        if (iy < 0 || iy >= p->in_h) continue;
                        for (kx = 0; kx < p->k_w; ++kx) {
                            const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
                            const int8_t *src, *wk;
                            if (ix < 0 || ix >= p->in_w) continue;
                            src = in + (iy * p->in_w + ix) * p->in_c + g * cg;
                            wk = wo + (ky * p->k_w + kx) * cg;
                            for (ic = 0; ic < cg; ++ic) {
                                acc += ((int32_t)src[ic] + p->in_offset) * (int32_t)wk[ic];
                            }
                        }
                    }
                    acc = mf_requant(acc, p->mult[o], p->shift[o]) + p->out_offset;
                    dst[o] = (int8_t)MF_CLAMP(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}
