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

/* Widen n (>= 1) chunks of 4 bytes at src (any alignment) into column chunks at dst (4 words
 * apart: the slot of one pixel); returns the next chunk. */
MF_INLINE uint32_t *widen_chunks(uint32_t *dst, const int8_t *src, int32_t n) {
#if MF_DSP_NATIVE && defined(__thumb2__)
    uint32_t v, a, b;
    __asm__(
        "1:\n\t"
        "ldr    %[v], [%[src]], #4\n\t"
        "sxtb16 %[a], %[v]\n\t"
        "sxtb16 %[b], %[v], ror #8\n\t"
        "strd   %[a], %[b], [%[dst]], #16\n\t"
        "subs   %[n], %[n], #1\n\t"
        "bne    1b\n\t"
        : [dst] "+r"(dst), [src] "+r"(src), [n] "+r"(n), [v] "=&r"(v), [a] "=&r"(a), [b] "=&r"(b),
          "=m"(*(uint32_t(*)[])dst)
        : "m"(*(const int8_t(*)[])src)
        : "cc");
#else
    do {
        const uint32_t v = mf_load32(src);
        dst[0] = mf_sxtb16(v);
        dst[1] = mf_sxtb16_ror8(v);
        src += 4;
        dst += 4;
    } while (--n);
#endif
    return dst;
}

MF_INLINE uint32_t *fill_chunks(uint32_t *dst, uint32_t padw, int32_t n) {
    for (; n > 0; --n, dst += 4) {
        dst[0] = padw;
        dst[1] = padw;
    }
    return dst;
}

/* im2col of output pixel `pix` of group g into slot (0 or 1) of the column pair. */
static void conv_im2col(const mf_conv_dsp_params *p, const int8_t *in, int32_t pix, int32_t g,
                        uint32_t *col, int32_t slot) {
    const int32_t cg = p->in_c / p->groups;
    const int32_t oy = pix / p->out_w, ox = pix - oy * p->out_w;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    const int32_t kw = p->k_w, dw = p->dil_w, row_bytes = p->in_w * p->in_c;
    const int8_t *base = in + g * cg;
    uint32_t *dst = col + 2 * slot;
    int32_t ky, kx, i;
    /* the taps kx_lo <= kx < kx_hi of a row are inside the input */
    int32_t kx_lo = 0, kx_hi = kw;
    while (kx_lo < kw && ix0 + kx_lo * dw < 0) ++kx_lo;
    while (kx_hi > kx_lo && ix0 + (kx_hi - 1) * dw >= p->in_w) --kx_hi;
    if ((cg & 3) == 0) {
        const uint32_t padw = mf_pack16(p->pad_value, p->pad_value);
        const int32_t c4 = cg >> 2;
        const int contiguous = dw == 1 && p->groups == 1;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dil_h;
            if (iy < 0 || iy >= p->in_h) {
                dst = fill_chunks(dst, padw, kw * c4);
                continue;
            }
            dst = fill_chunks(dst, padw, kx_lo * c4);
            if (contiguous) {
                if (kx_hi > kx_lo) {
                    dst = widen_chunks(dst, base + iy * row_bytes + (ix0 + kx_lo) * p->in_c, (kx_hi - kx_lo) * c4);
                }
            } else {
                for (kx = kx_lo; kx < kx_hi; ++kx) {
                    dst = widen_chunks(dst, base + iy * row_bytes + (ix0 + kx * dw) * p->in_c, c4);
                }
            }
            dst = fill_chunks(dst, padw, (kw - kx_hi) * c4);
        }
    } else {
        /* channel counts that are not a multiple of 4: gather the bytes, then widen */
        int8_t *stage = (int8_t *)(col + 4 * p->chunks);
        int8_t *s = stage;
        const int8_t pv = (int8_t)p->pad_value;
        const int32_t run = (kx_hi - kx_lo) * cg;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dil_h;
            if (iy < 0 || iy >= p->in_h) {
                for (i = kw * cg; i > 0; --i) *s++ = pv;
                continue;
            }
            for (i = kx_lo * cg; i > 0; --i) *s++ = pv;
            if (dw == 1 && p->groups == 1) {
                const int8_t *src = base + iy * row_bytes + (ix0 + kx_lo) * p->in_c;
                for (i = 0; i + 4 <= run; i += 4) mf_store32(s + i, mf_load32(src + i));
                for (; i < run; ++i) s[i] = src[i];
                s += run;
            } else {
                for (kx = kx_lo; kx < kx_hi; ++kx) {
                    const int8_t *src = base + iy * row_bytes + (ix0 + kx * dw) * p->in_c;
                    for (i = 0; i < cg; ++i) *s++ = src[i];
                }
            }
            for (i = (kw - kx_hi) * cg; i > 0; --i) *s++ = pv;
        }
        while (s < stage + 4 * p->chunks) *s++ = 0; /* beyond the column: zero weights */
        widen_chunks(dst, stage, p->chunks);
    }
}

/* The 2x2 micro-kernel: a(i)(j) += column of pixel i . weights of channel j, over an even
 * number of chunks (the generator pads the column to a multiple of 8 elements); *w advances
 * past the pair's weights. */
#define MF_MM2X2(w, x, xend, a00, a01, a10, a11) mf_mm2x2(&(w), (x), (xend), &(a00), &(a01), &(a10), &(a11))
MF_INLINE void mf_mm2x2(const uint32_t **wp, const uint32_t *x, const uint32_t *xend, int32_t *p00,
                        int32_t *p01, int32_t *p10, int32_t *p11) {
    const uint32_t *w = *wp;
    int32_t a00 = *p00, a01 = *p01, a10 = *p10, a11 = *p11;
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
    __asm__(
        /* two chunks when their count is 2 mod 4, then four per iteration */
        "sub %[x0], %[xend], %[x]\n\t"
        "tst %[x0], #32\n\t"
        "beq 1f\n\t" MF_MM2X2_CHUNK MF_MM2X2_CHUNK
        "cmp %[x], %[xend]\n\t"
        "bhs 2f\n\t"
        "1:\n\t" MF_MM2X2_CHUNK MF_MM2X2_CHUNK MF_MM2X2_CHUNK MF_MM2X2_CHUNK
        "cmp %[x], %[xend]\n\t"
        "blo 1b\n\t"
        "2:\n\t"
        : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [w] "+r"(w), [x] "+r"(x),
          [wa] "=&r"(wa), [wb] "=&r"(wb), [t] "=&r"(t), [u] "=&r"(u), [x0] "=&r"(x0), [x1] "=&r"(x1)
        : [xend] "r"(xend), "m"(*(const uint32_t(*)[])w), "m"(*(const uint32_t(*)[])x)
        : "cc");
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
    *wp = w;
    *p00 = a00;
    *p01 = a01;
    *p10 = a10;
    *p11 = a11;
}

MF_INLINE int8_t conv_out(int32_t acc, const int32_t *r, const int fast, const int clamp, int32_t lo, int32_t hi) {
    int32_t y;
    if (fast) {
        y = mf_ssat8((mf_smmlar(acc * 2, r[0], r[1]) + (acc >> 31)) >> r[2]);
    } else {
        y = mf_ssat8(mf_requant(acc, r[0], r[1]) + r[2]);
    }
    return mf_dsp_act(y, clamp, lo, hi);
}

/* All output channels of group g for pixel 0 (and pixel 1 when two): pairs of channels,
 * records q per pair: bias0, bias1, then (multiplier, a, b) of each channel. */
MF_INLINE void conv_channels(const uint32_t *w, const int32_t *q, const uint32_t *col, int32_t chunks, int32_t og,
                             int8_t *o0, int8_t *o1, const int two, const int fast, const int clamp, int32_t lo,
                             int32_t hi) {
    const uint32_t *const xend = col + 4 * chunks;
    int8_t *const o0end = o0 + (og & ~1);
    while (o0 < o0end) {
        int32_t a00 = q[0], a01 = q[1], a10 = q[0], a11 = q[1];
        MF_MM2X2(w, col, xend, a00, a01, a10, a11);
        o0[0] = conv_out(a00, q + 2, fast, clamp, lo, hi);
        o0[1] = conv_out(a01, q + 5, fast, clamp, lo, hi);
        if (two) {
            o1[0] = conv_out(a10, q + 2, fast, clamp, lo, hi);
            o1[1] = conv_out(a11, q + 5, fast, clamp, lo, hi);
        }
        o0 += 2;
        o1 += 2;
        q += 8;
    }
    if (og & 1) {
        int32_t a00 = q[0], a01 = 0, a10 = q[0], a11 = 0;
        MF_MM2X2(w, col, xend, a00, a01, a10, a11);
        o0[0] = conv_out(a00, q + 2, fast, clamp, lo, hi);
        if (two) o1[0] = conv_out(a10, q + 2, fast, clamp, lo, hi);
    }
}

MF_INLINE void conv_body(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *col,
                         const int fast, const int clamp) {
    const int32_t pixels = p->out_h * p->out_w;
    const int32_t og = p->out_c / p->groups, og_pad = og + (og & 1);
    int32_t pix, g;
    for (pix = 0; pix + 1 < pixels; pix += 2) {
        int8_t *o = out + pix * p->out_c;
        for (g = 0; g < p->groups; ++g) {
            conv_im2col(p, in, pix, g, col, 0);
            conv_im2col(p, in, pix + 1, g, col, 1);
            conv_channels(p->w + g * og_pad * p->chunks, p->q + g * og_pad * MF_Q_WORDS, col, p->chunks, og,
                          o + g * og, o + p->out_c + g * og, 1, fast, clamp, p->act_min, p->act_max);
        }
    }
    if (pix < pixels) { /* the last, odd pixel */
        int8_t *o = out + pix * p->out_c;
        for (g = 0; g < p->groups; ++g) {
            conv_im2col(p, in, pix, g, col, 0);
            conv_channels(p->w + g * og_pad * p->chunks, p->q + g * og_pad * MF_Q_WORDS, col, p->chunks, og,
                          o + g * og, o + g * og, 0, fast, clamp, p->act_min, p->act_max);
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
