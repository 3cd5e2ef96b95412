/* mcuforge int8 average and max pooling for DSP-extension cores: four channels per word.
 * Average: the window's values are summed in int16 lanes with SXTAB16 (at most 255 values
 * before the lanes are flushed into int32 sums, so they cannot overflow), then divided
 * like the portable kernel. Max: SSUB8 + SEL, a byte-wise signed maximum. */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

/* The window of output (oy, ox) clipped to the input: rows [*y0, *y1), columns [*x0, *x1). */
static void pool_window(const mf_pool_params *p, int32_t oy, int32_t ox, int32_t *y0, int32_t *y1, int32_t *x0,
                        int32_t *x1) {
    const int32_t ys = oy * p->stride_h - p->pad_top, xs = ox * p->stride_w - p->pad_left;
    *y0 = MF_MAX(ys, 0);
    *y1 = MF_MIN(ys + p->k_h, p->in_h);
    *x0 = MF_MAX(xs, 0);
    *x1 = MF_MIN(xs + p->k_w, p->in_w);
}

static int8_t avg_out(const mf_pool_params *p, int32_t sum, int32_t count) {
    sum = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
    return (int8_t)MF_CLAMP(sum, p->act_min, p->act_max);
}

void mf_avg_pool_dsp_s8(const mf_pool_params *p, const int8_t *in, int8_t *out) {
    const int32_t ch = p->channels, row = p->in_w * ch;
    int32_t oy, ox, c, y, x;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox, out += ch) {
            int32_t y0, y1, x0, x1, n, count, extra;
            pool_window(p, oy, ox, &y0, &y1, &x0, &x1);
            n = (y1 - y0) * (x1 - x0);
            count = p->count_include_pad ? p->k_h * p->k_w : n;
            extra = p->count_include_pad ? p->zero_point * (count - n) : 0;
            for (c = 0; c + 4 <= ch; c += 4) {
                int32_t s0 = extra, s1 = extra, s2 = extra, s3 = extra, k = 0;
                uint32_t even = 0, odd = 0; /* lanes: channels (c, c+2) and (c+1, c+3) */
                for (y = y0; y < y1; ++y) {
                    const int8_t *s = in + y * row + x0 * ch + c;
                    for (x = x0; x < x1; ++x, s += ch) {
                        const uint32_t v = mf_load32(s);
                        even = mf_sxtab16(even, v);
                        odd = mf_sxtab16_ror8(odd, v);
                        if (++k == 255) {
                            s0 += mf_lane_lo(even);
                            s2 += mf_lane_hi(even);
                            s1 += mf_lane_lo(odd);
                            s3 += mf_lane_hi(odd);
                            even = odd = 0;
                            k = 0;
                        }
                    }
                }
                s0 += mf_lane_lo(even);
                s2 += mf_lane_hi(even);
                s1 += mf_lane_lo(odd);
                s3 += mf_lane_hi(odd);
                out[c] = avg_out(p, s0, count);
                out[c + 1] = avg_out(p, s1, count);
                out[c + 2] = avg_out(p, s2, count);
                out[c + 3] = avg_out(p, s3, count);
            }
            for (; c < ch; ++c) {
                int32_t sum = extra;
                for (y = y0; y < y1; ++y) {
                    for (x = x0; x < x1; ++x) sum += in[y * row + x * ch + c];
                }
                out[c] = avg_out(p, sum, count);
            }
        }
    }
}

void mf_max_pool_dsp_s8(const mf_pool_params *p, const int8_t *in, int8_t *out) {
    const int32_t ch = p->channels, row = p->in_w * ch;
    int32_t oy, ox, c, y, x;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox, out += ch) {
            int32_t y0, y1, x0, x1;
            pool_window(p, oy, ox, &y0, &y1, &x0, &x1);
            for (c = 0; c + 4 <= ch; c += 4) {
                uint32_t best = 0x80808080u;
                int32_t i;
                for (y = y0; y < y1; ++y) {
                    const int8_t *s = in + y * row + x0 * ch + c;
                    for (x = x0; x < x1; ++x, s += ch) best = mf_max8(best, mf_load32(s));
                }
                for (i = 0; i < 4; ++i, best >>= 8) {
                    const int32_t v = mf_sext8(best);
                    out[c + i] = (int8_t)MF_CLAMP(v, p->act_min, p->act_max);
                }
            }
            for (; c < ch; ++c) {
                int32_t best = -128;
                for (y = y0; y < y1; ++y) {
                    for (x = x0; x < x1; ++x) best = MF_MAX(best, in[y * row + x * ch + c]);
                }
                out[c] = (int8_t)MF_CLAMP(best, p->act_min, p->act_max);
            }
        }
    }
}
