/* mcuforge on-device training: the forward pass of a trainable conv2d (groups = 1) or fully connected
 * layer on cores with the DSP extension, reading the int8 weights in their natural [O][K] layout in RAM
 * (the layout the backward pass and the update use, so training needs no repacking).
 *
 * Two output pixels at a time, their patches (x - zp_x, zero padding) are unrolled into int16 columns in
 * SXTB16 lane order and interleaved per group of 4 patch entries as the words
 *     A(p0, p2), B(p0, p2), A(p1, p3), B(p1, p3)
 * which SMLAD multiplies with SXTB16(w) = (w0, w2) and SXTB16(w ROR 8) = (w1, w3): per group and pair of
 * channels two weight loads, two LDRD and eight SMLAD (16 MACs). TFLite's exact requantization.
 * Bit-exact with the conv2d / fully_connected integer reference (the sums cannot overflow: the code
 * generator bounds the bias). The weight array has 4 bytes of padding: the last group of a row may read
 * past K (into the next row or the padding), against zero patch entries. */
#include <string.h>

#include "mf_dsp.h"
#include "mf_train.h"

/* the patch of output pixel `pix` into the words of slot `slot` (0: A, 1: B) of col */
static void mf_t_unroll(const mf_t_fwd_params *p, const int8_t *in, int32_t pix, uint32_t *col, int32_t slot,
                        int32_t kq) {
    const int32_t oy = pix / p->out_w, ox = pix % p->out_w;
    const int32_t cin = p->in_c;
    uint32_t *dst = col + slot;
    int32_t ky, kx, c;
    if ((cin & 3) == 0) {
        const uint32_t nzp = mf_pack16(-p->in_zp, -p->in_zp);
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dil_h;
            for (kx = 0; kx < p->k_w; ++kx) {
                const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                    for (c = 0; c < cin; c += 4, dst += 4) {
                        dst[0] = 0;
                        dst[2] = 0;
                    }
                } else {
                    const int8_t *src = in + (iy * p->in_w + ix) * cin;
                    for (c = 0; c < cin; c += 4, dst += 4) {
                        const uint32_t u = mf_load32(src + c);
                        dst[0] = mf_sxtab16(nzp, u);
                        dst[2] = mf_sxtab16_ror8(nzp, u);
                    }
                }
            }
        }
    } else {
        int32_t v[4], k = 0;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dil_h;
            for (kx = 0; kx < p->k_w; ++kx) {
                const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
                const int inside = iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
                const int8_t *src = inside ? in + (iy * p->in_w + ix) * cin : in;
                for (c = 0; c < cin; ++c) {
                    v[k & 3] = inside ? (int32_t)src[c] - p->in_zp : 0;
                    if ((++k & 3) == 0) {
                        dst[0] = mf_pack16(v[0], v[2]);
                        dst[2] = mf_pack16(v[1], v[3]);
                        dst += 4;
                    }
                }
            }
        }
        if (k & 3) {
            for (; k & 3; ++k) v[k & 3] = 0;
            dst[0] = mf_pack16(v[0], v[2]);
            dst[2] = mf_pack16(v[1], v[3]);
        }
    }
    (void)kq;
}

/* TFLite's MultiplyByQuantizedMultiplier (mf_requant) for a multiplier in [0, 2^31): SRDHM(x, M) =
 * trunc((x M + nudge) / 2^31) equals floor((x M + 2^30) / 2^31) for either sign of x M (the negative
 * nudge 1 - 2^30 and the truncation toward zero cancel), and x M != INT32_MIN^2. One SMLAL-style
 * multiply-add and a shift instead of a 64-bit division; bit-exact. */
MF_INLINE int8_t mf_t_out(const mf_t_fwd_params *p, int32_t acc, int32_t o) {
    const int32_t shift = p->shift[o];
    const int32_t x = shift > 0 ? (int32_t)((uint32_t)acc << shift) : acc;
    const int32_t hi = (int32_t)(((int64_t)x * p->mult[o] + ((int64_t)1 << 30)) >> 31);
    const int32_t y = (shift < 0 ? mf_rdbpot(hi, -shift) : hi) + p->out_zp;
    return (int8_t)MF_CLAMP(y, p->act_min, p->act_max);
}

void mf_t_conv_fwd_dsp(const mf_t_fwd_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                       int8_t *out, uint32_t *col) {
    const int32_t K = p->k_h * p->k_w * p->in_c;
    const int32_t kq = (K + 3) / 4;
    const int32_t npix = p->out_h * p->out_w, O = p->out_c;
    const uint32_t *cend = col + 4 * kq;
    int32_t pix, o;
    for (pix = 0; pix < npix; pix += 2) {
        const int two = pix + 1 < npix;
        int8_t *ya = out + pix * O, *yb = ya + O;
        mf_t_unroll(p, in, pix, col, 0, kq);
        if (two) mf_t_unroll(p, in, pix + 1, col, 1, kq);
        for (o = 0; o < O; o += 2) {
            const int pair = o + 1 < O;
            const int8_t *pw = w + o * K;
            const int32_t k1 = pair ? K : 0;
            const uint32_t *pc = col;
            int32_t a0 = bias ? bias[o] : 0, a1 = (bias && pair) ? bias[o + 1] : 0, b0 = a0, b1 = a1;
            if (two) {
                while (pc < cend) {
                    const uint32_t u0 = mf_load32(pw), u1 = mf_load32(pw + k1);
                    uint32_t e0 = mf_sxtb16(u0), e1 = mf_sxtb16(u1);
                    a0 = mf_smlad(pc[0], e0, a0);
                    a1 = mf_smlad(pc[0], e1, a1);
                    b0 = mf_smlad(pc[1], e0, b0);
                    b1 = mf_smlad(pc[1], e1, b1);
                    e0 = mf_sxtb16_ror8(u0);
                    e1 = mf_sxtb16_ror8(u1);
                    a0 = mf_smlad(pc[2], e0, a0);
                    a1 = mf_smlad(pc[2], e1, a1);
                    b0 = mf_smlad(pc[3], e0, b0);
                    b1 = mf_smlad(pc[3], e1, b1);
                    pw += 4;
                    pc += 4;
                }
                yb[o] = mf_t_out(p, b0, o);
                if (pair) yb[o + 1] = mf_t_out(p, b1, o + 1);
            } else {
                while (pc < cend) {
                    const uint32_t u0 = mf_load32(pw), u1 = mf_load32(pw + k1);
                    a0 = mf_smlad(pc[0], mf_sxtb16(u0), a0);
                    a1 = mf_smlad(pc[0], mf_sxtb16(u1), a1);
                    a0 = mf_smlad(pc[2], mf_sxtb16_ror8(u0), a0);
                    a1 = mf_smlad(pc[2], mf_sxtb16_ror8(u1), a1);
                    pw += 4;
                    pc += 4;
                }
            }
            ya[o] = mf_t_out(p, a0, o);
            if (pair) ya[o + 1] = mf_t_out(p, a1, o + 1);
        }
    }
}
