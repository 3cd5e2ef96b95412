/* mcuforge int8 convolution for DSP-extension cores: im2col + 2x2-blocked SMLAD product.
 *
 * Two output pixels at a time are unrolled (im2col) into int16 columns: chunk c of the
 * column holds elements 4c..4c+3 as the words (x0, x2), (x1, x3) -- the lanes SXTB16
 * produces from a word of 4 bytes, so a weight word needs no reordering: SXTB16 gives
 * (w0, w2), SXTB16 ROR 8 gives (w1, w3). Layout of one chunk: pixel 0's two words, then
 * pixel 1's. Padding reads as the input zero point, which the bias has folded in, so
 * activations are used raw. The inner loop computes 2 pixels x 2 output channels:
 * per chunk one 8-byte weight load, 4 SXTB16, two 8-byte column loads and 8 SMLAD
 * (16 MACs). */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

/* im2col of output pixel `pix` of group g into slot (0 or 1) of the column pair. */
static void conv_im2col(const mf_conv_dsp_params *p, const int8_t *in, int32_t pix, int32_t g,
                        uint32_t *col, int32_t slot) {
    const int32_t cg = p->in_c / p->groups;
    const int32_t oy = pix / p->out_w, ox = pix - (pix / p->out_w) * p->out_w;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    const int8_t *base = in + g * cg;
    uint32_t *dst = col + 2 * slot;
    int32_t ky, kx, i;
    if ((cg & 3) == 0) {
        const uint32_t padw = mf_pack16(p->pad_value, p->pad_value);
        const int32_t c4 = cg >> 2;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dil_h;
            const int row_in = iy >= 0 && iy < p->in_h;
            if (row_in && p->dil_w == 1 && ix0 >= 0 && ix0 + p->k_w <= p->in_w) {
                /* the whole kernel row is contiguous in the input */
                const int8_t *src = base + (iy * p->in_w + ix0) * p->in_c;
                if (p->groups == 1) {
                    for (i = c4 * p->k_w; i > 0; --i) {
                        const uint32_t v = mf_load32(src);
                        dst[0] = mf_sxtb16(v);
                        dst[1] = mf_sxtb16_ror8(v);
                        src += 4;
                        dst += 4;
                    }
                    continue;
                }
            }
            for (kx = 0; kx < p->k_w; ++kx) {
                const int32_t ix = ix0 + kx * p->dil_w;
                if (row_in && ix >= 0 && ix < p->in_w) {
                    const int8_t *src = base + (iy * p->in_w + ix) * p->in_c;
                    for (i = c4; i > 0; --i) {
                        const uint32_t v = mf_load32(src);
                        dst[0] = mf_sxtb16(v);
                        dst[1] = mf_sxtb16_ror8(v);
                        src += 4;
                        dst += 4;
                    }
                } else {
                    for (i = c4; i > 0; --i) {
                        dst[0] = padw;
                        dst[1] = padw;
                        dst += 4;
                    }
                }
            }
        }
    } else {
        /* channel counts that are not a multiple of 4: gather the bytes, then widen */
        int8_t *stage = (int8_t *)(col + 4 * p->chunks);
        int8_t *s = stage;
        const int8_t pv = (int8_t)p->pad_value;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dil_h;
            const int row_in = iy >= 0 && iy < p->in_h;
            for (kx = 0; kx < p->k_w; ++kx) {
                const int32_t ix = ix0 + kx * p->dil_w;
                if (row_in && ix >= 0 && ix < p->in_w) {
                    const int8_t *src = base + (iy * p->in_w + ix) * p->in_c;
                    for (i = 0; i < cg; ++i) *s++ = src[i];
                } else {
                    for (i = 0; i < cg; ++i) *s++ = pv;
                }
            }
        }
        while (s < stage + 4 * p->chunks) *s++ = 0; /* beyond the column: zero weights */
        for (i = 0; i < p->chunks; ++i) {
            const uint32_t v = mf_load32(stage + 4 * i);
            dst[0] = mf_sxtb16(v);
            dst[1] = mf_sxtb16_ror8(v);
            dst += 4;
        }
    }
}

/* The 2x2 micro-kernel: acc[2 i + j] += column of pixel i . weights of channel j, over an
 * even number of chunks (the generator pads the column to a multiple of 8 elements). */
MF_INLINE void conv_mm2x2(const uint32_t *w, const uint32_t *x, int32_t chunks, int32_t *acc) {
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    const uint32_t *const xend = x + 4 * chunks;
#if MF_DSP_NATIVE && defined(__thumb2__)
    uint32_t wa, wb, t, u, x0, x1;
#define MF_MM2X2_CHUNK                                   \
    "ldrd %[wa], %[wb], [%[w]], #8\n\t"                  \
    "ldrd %[x0], %[x1], [%[x]], #8\n\t"                  \
    "sxtb16 %[t], %[wa]\n\t"                             \
    "sxtb16 %[wa], %[wa], ror #8\n\t"                    \
    "smlad %[a00], %[t], %[x0], %[a00]\n\t"              \
    "smlad %[a00], %[wa], %[x1], %[a00]\n\t"             \
    "sxtb16 %[u], %[wb]\n\t"                             \
    "sxtb16 %[wb], %[wb], ror #8\n\t"                    \
    "smlad %[a01], %[u], %[x0], %[a01]\n\t"              \
    "smlad %[a01], %[wb], %[x1], %[a01]\n\t"             \
    "ldrd %[x0], %[x1], [%[x]], #8\n\t"                  \
    "smlad %[a10], %[t], %[x0], %[a10]\n\t"              \
    "smlad %[a10], %[wa], %[x1], %[a10]\n\t"             \
    "smlad %[a11], %[u], %[x0], %[a11]\n\t"              \
    "smlad %[a11], %[wb], %[x1], %[a11]\n\t"
    __asm__ volatile(
        "1:\n\t" MF_MM2X2_CHUNK MF_MM2X2_CHUNK
        "cmp %[x], %[xend]\n\t"
        "blo 1b\n\t"
        : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [w] "+r"(w), [x] "+r"(x),
          [wa] "=&r"(wa), [wb] "=&r"(wb), [t] "=&r"(t), [u] "=&r"(u), [x0] "=&r"(x0), [x1] "=&r"(x1)
        : [xend] "r"(xend)
        : "cc", "memory");
#undef MF_MM2X2_CHUNK
#else
    do {
        const uint32_t wa = w[0], wb = w[1];
        const uint32_t wa0 = mf_sxtb16(wa), wa1 = mf_sxtb16_ror8(wa);
        const uint32_t wb0 = mf_sxtb16(wb), wb1 = mf_sxtb16_ror8(wb);
        a00 = mf_smlad(wa0, x[0], a00);
        a00 = mf_smlad(wa1, x[1], a00);
        a01 = mf_smlad(wb0, x[0], a01);
        a01 = mf_smlad(wb1, x[1], a01);
        a10 = mf_smlad(wa0, x[2], a10);
        a10 = mf_smlad(wa1, x[3], a10);
        a11 = mf_smlad(wb0, x[2], a11);
        a11 = mf_smlad(wb1, x[3], a11);
        w += 2;
        x += 4;
    } while (x < xend);
#endif
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

/* out[pix0], out[pix1] (out1 NULL: none) for the output channels of group g. */
MF_INLINE void conv_pair(const mf_conv_dsp_params *p, const uint32_t *col, int8_t *out0, int8_t *out1,
                         int32_t g, const int fast, const int clamp) {
    const int32_t og = p->out_c / p->groups, og_pad = og + (og & 1);
    const int32_t chunks = p->chunks;
    const int32_t *q = p->q + g * og_pad * MF_Q_WORDS;
    const uint32_t *w = p->w + g * og_pad * chunks;
    const int32_t lo = p->act_min, hi = p->act_max;
    int32_t o;
    for (o = 0; o < og_pad; o += 2, q += 2 * MF_Q_WORDS, w += 2 * chunks) {
        int32_t acc[4];
        int32_t a00, a01, a10, a11;
        acc[0] = acc[2] = q[MF_Q_BIAS];
        acc[1] = acc[3] = q[MF_Q_WORDS + MF_Q_BIAS];
        conv_mm2x2(w, col, chunks, acc);
        a00 = acc[0];
        a01 = acc[1];
        a10 = acc[2];
        a11 = acc[3];
        out0[o] = mf_dsp_act(mf_dsp_requant(a00, q, fast), clamp, lo, hi);
        if (o + 1 < og) out0[o + 1] = mf_dsp_act(mf_dsp_requant(a01, q + MF_Q_WORDS, fast), clamp, lo, hi);
        if (out1) {
            out1[o] = mf_dsp_act(mf_dsp_requant(a10, q, fast), clamp, lo, hi);
            if (o + 1 < og) out1[o + 1] = mf_dsp_act(mf_dsp_requant(a11, q + MF_Q_WORDS, fast), clamp, lo, hi);
        }
    }
}

MF_INLINE void conv_body(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *col,
                         const int fast, const int clamp) {
    const int32_t pixels = p->out_h * p->out_w;
    const int32_t og = p->out_c / p->groups;
    int32_t pix, g;
    for (pix = 0; pix < pixels; pix += 2) {
        const int two = pix + 1 < pixels;
        for (g = 0; g < p->groups; ++g) {
            conv_im2col(p, in, pix, g, col, 0);
            if (two) conv_im2col(p, in, pix + 1, g, col, 1);
            conv_pair(p, col, out + pix * p->out_c + g * og, two ? out + (pix + 1) * p->out_c + g * og : 0,
                      g, fast, clamp);
        }
    }
}

void mf_conv_dsp_s8_fast(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    conv_body(p, in, out, scratch, 1, 0);
}

void mf_conv_dsp_s8_fast_clamp(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    conv_body(p, in, out, scratch, 1, 1);
}

void mf_conv_dsp_s8_exact(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    conv_body(p, in, out, scratch, 0, 0);
}

void mf_conv_dsp_s8_exact_clamp(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    conv_body(p, in, out, scratch, 0, 1);
}
