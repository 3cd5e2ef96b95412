/* mcuforge int8 convolution for DSP-extension cores: im2col + 3x2-blocked SMLAD product.
 *
 * Three output pixels at a time are unrolled (im2col) into int16 columns: chunk c of a
 * pixel's column holds its elements 4c..4c+3 as the words (x0, x2), (x1, x3) -- the lanes
 * SXTB16 produces from a word of 4 bytes, so a weight word needs no reordering: SXTB16
 * gives (w0, w2), SXTB16 ROR 8 gives (w1, w3). One chunk of the column block holds the
 * three pixels' two words each (24 bytes). Padding reads as the input zero point, which
 * the bias has folded in, so activations are used raw. The inner loop computes 3 pixels x
 * 2 output channels: per chunk one 8-byte weight load, 4 SXTB16, three 8-byte column loads
 * and 12 SMLAD (24 MACs), in assembly that uses all 14 registers. */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

#define MF_CONV_PIX 3               /* output pixels per pass */
#define MF_CONV_CW (2 * MF_CONV_PIX) /* words per column chunk */

/* Widen n (>= 1) chunks of 4 bytes at src (any alignment) into column chunks at dst (the slot
 * of one pixel, MF_CONV_CW words apart); returns the next chunk. */
MF_INLINE uint32_t *widen_chunks(uint32_t *dst, const int8_t *src, int32_t n) {
#if MF_DSP_NATIVE && defined(__thumb2__)
    uint32_t v, a, b;
    __asm__(
        "tst    %[n], #1\n\t"
        "beq    1f\n\t"
        "ldr    %[v], [%[src]], #4\n\t"
        "sxtb16 %[a], %[v]\n\t"
        "sxtb16 %[b], %[v], ror #8\n\t"
        "strd   %[a], %[b], [%[dst]], #24\n\t"
        "subs   %[n], %[n], #1\n\t"
        "beq    2f\n\t"
        "1:\n\t"
        "ldr    %[v], [%[src]], #4\n\t"
        "sxtb16 %[a], %[v]\n\t"
        "sxtb16 %[b], %[v], ror #8\n\t"
        "strd   %[a], %[b], [%[dst]], #24\n\t"
        "ldr    %[v], [%[src]], #4\n\t"
        "sxtb16 %[a], %[v]\n\t"
        "sxtb16 %[b], %[v], ror #8\n\t"
        "strd   %[a], %[b], [%[dst]], #24\n\t"
        "subs   %[n], %[n], #2\n\t"
        "bne    1b\n\t"
        "2:\n\t"
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
        dst += MF_CONV_CW;
    } while (--n);
#endif
    return dst;
}

MF_INLINE uint32_t *fill_chunks(uint32_t *dst, uint32_t padw, int32_t n) {
    for (; n > 0; --n, dst += MF_CONV_CW) {
        dst[0] = padw;
        dst[1] = padw;
    }
    return dst;
}

MF_INLINE int8_t *copy_bytes(int8_t *d, const int8_t *s, int32_t n) {
    for (; n >= 4; n -= 4, d += 4, s += 4) mf_store32(d, mf_load32(s));
    for (; n > 0; --n) *d++ = *s++;
    return d;
}

MF_INLINE int8_t *set_bytes(int8_t *d, int8_t v, int32_t n) {
    for (; n > 0; --n) *d++ = v;
    return d;
}

/* im2col of output pixel (oy, ox) of group g into slot (0..2) of the column block. (GCC would
 * turn its short byte loops into memset/memcpy calls, which cost more than the loops.) */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
static void conv_im2col(const mf_conv_dsp_params *p, const int8_t *in, int32_t oy, int32_t ox, int32_t g,
                        uint32_t *col, int32_t slot) {
    const int32_t cg = p->in_c / p->groups;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    const int32_t kw = p->k_w, dw = p->dil_w, row_bytes = p->in_w * p->in_c;
    const int contiguous = dw == 1 && p->groups == 1;
    const int8_t *base = in + g * cg + ix0 * p->in_c;
    uint32_t *dst = col + 2 * slot;
    int32_t ky, kx;
    /* the taps kx_lo <= kx < kx_hi of a row are inside the input */
    int32_t kx_lo = 0, kx_hi = kw;
    if (ix0 < 0 || ix0 + (kw - 1) * dw >= p->in_w) {
        while (kx_lo < kw && ix0 + kx_lo * dw < 0) ++kx_lo;
        while (kx_hi > kx_lo && ix0 + (kx_hi - 1) * dw >= p->in_w) --kx_hi;
    }
    if ((cg & 3) == 0) {
        const uint32_t padw = mf_pack16(p->pad_value, p->pad_value);
        const int32_t c4 = cg >> 2, inner = kx_lo == 0 && kx_hi == kw;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dil_h;
            if (iy < 0 || iy >= p->in_h) {
                dst = fill_chunks(dst, padw, kw * c4);
            } else if (contiguous && inner) {
                dst = widen_chunks(dst, base + iy * row_bytes, kw * c4);
            } else {
                dst = fill_chunks(dst, padw, kx_lo * c4);
                if (contiguous) {
                    if (kx_hi > kx_lo) {
                        dst = widen_chunks(dst, base + iy * row_bytes + kx_lo * p->in_c, (kx_hi - kx_lo) * c4);
                    }
                } else {
                    for (kx = kx_lo; kx < kx_hi; ++kx) {
                        dst = widen_chunks(dst, base + iy * row_bytes + kx * dw * p->in_c, c4);
                    }
                }
                dst = fill_chunks(dst, padw, (kw - kx_hi) * c4);
            }
        }
    } else {
        /* channel counts that are not a multiple of 4: gather the bytes, then widen */
        int8_t *stage = (int8_t *)(col + MF_CONV_CW * p->chunks);
        int8_t *s = stage;
        const int8_t pv = (int8_t)p->pad_value;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = iy0 + ky * p->dil_h;
            if (iy < 0 || iy >= p->in_h) {
                s = set_bytes(s, pv, kw * cg);
                continue;
            }
            s = set_bytes(s, pv, kx_lo * cg);
            if (contiguous) {
                s = copy_bytes(s, base + iy * row_bytes + kx_lo * p->in_c, (kx_hi - kx_lo) * cg);
            } else {
                for (kx = kx_lo; kx < kx_hi; ++kx) s = copy_bytes(s, base + iy * row_bytes + kx * dw * p->in_c, cg);
            }
            s = set_bytes(s, pv, (kw - kx_hi) * cg);
        }
        set_bytes(s, 0, (int32_t)(stage + 4 * p->chunks - s)); /* beyond the column: zero weights */
        widen_chunks(dst, stage, p->chunks);
    }
}

#if MF_DSP_NATIVE && defined(__thumb2__) && defined(__GNUC__)
#define MF_UNUSED __attribute__((unused))
/* acc[2 i + j] += column of pixel i . weights of channel j, over an even number of chunks;
 * xend carries bit 1 when the chunk count is 2 mod 4. Registers: r0-r5 accumulators,
 * r6-r9 the two channels' unpacked weights, r10-r11 a pixel's column words, r12 and lr the
 * weight and column pointers; the accumulator pointer and xend on the stack. */
__attribute__((naked, noinline)) static void conv_mm3x2_asm(MF_UNUSED int32_t *acc, MF_UNUSED const uint32_t *w,
                                                            MF_UNUSED const uint32_t *x,
                                                            MF_UNUSED const uint32_t *xend) {
/* one chunk of the 3-pixel x 2-channel product (also used by conv_pairs3_fast_asm below) */
#define MF_MM3X2_CHUNK                                \
    "ldrd   r6, r8, [r12], #8\n\t"                    \
    "sxtb16 r7, r6, ror #8\n\t"                       \
    "sxtb16 r6, r6\n\t"                               \
    "sxtb16 r9, r8, ror #8\n\t"                       \
    "sxtb16 r8, r8\n\t"                               \
    "ldrd   r10, r11, [lr], #8\n\t"                   \
    "smlad  r0, r6, r10, r0\n\t"                      \
    "smlad  r0, r7, r11, r0\n\t"                      \
    "smlad  r1, r8, r10, r1\n\t"                      \
    "smlad  r1, r9, r11, r1\n\t"                      \
    "ldrd   r10, r11, [lr], #8\n\t"                   \
    "smlad  r2, r6, r10, r2\n\t"                      \
    "smlad  r2, r7, r11, r2\n\t"                      \
    "smlad  r3, r8, r10, r3\n\t"                      \
    "smlad  r3, r9, r11, r3\n\t"                      \
    "ldrd   r10, r11, [lr], #8\n\t"                   \
    "smlad  r4, r6, r10, r4\n\t"                      \
    "smlad  r4, r7, r11, r4\n\t"                      \
    "smlad  r5, r8, r10, r5\n\t"                      \
    "smlad  r5, r9, r11, r5\n\t"
    __asm__(
        "push   {r0, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, lr}\n\t"
        "mov    r12, r1\n\t"
        "mov    lr, r2\n\t"
        "tst    r3, #2\n\t"
        "bic    r3, r3, #3\n\t"
        "str    r3, [sp, #4]\n\t"
        "ldmia  r0, {r0, r1, r2, r3, r4, r5}\n\t"
        "beq    1f\n\t" MF_MM3X2_CHUNK MF_MM3X2_CHUNK
        "ldr    r10, [sp, #4]\n\t"
        "cmp    lr, r10\n\t"
        "bhs    2f\n\t"
        "1:\n\t" MF_MM3X2_CHUNK MF_MM3X2_CHUNK MF_MM3X2_CHUNK MF_MM3X2_CHUNK
        "ldr    r10, [sp, #4]\n\t"
        "cmp    lr, r10\n\t"
        "blo    1b\n\t"
        "2:\n\t"
        "ldr    r10, [sp]\n\t"
        "stmia  r10, {r0, r1, r2, r3, r4, r5}\n\t"
        "pop    {r0, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, pc}\n\t");
}

/* The whole channel loop for three pixels, fast requantization, no clamp: per pair of output
 * channels, the 3x2 product (as conv_mm3x2_asm) and the six requantized outputs. The job
 * block holds what does not fit the registers: w, q, col, xend (untagged), o, ps, pairs,
 * and the 2-mod-4 flag of the chunk count; w, q and o are advanced. */
typedef struct {
    const uint32_t *w;
    const int32_t *q;
    const uint32_t *col, *xend;
    int8_t *o;
    int32_t ps, pairs, two;
} conv_job;

__attribute__((naked, noinline)) static void conv_pairs3_fast_asm(MF_UNUSED conv_job *job) {
/* requantize accumulator A (fast form; r6 M, r7 C, r8 e) into r9 */
#define MF_REQ(A)                                     \
    "lsl    r9, " A ", #1\n\t"                        \
    "smmlar r9, r9, r6, r7\n\t"                       \
    "add    r9, r9, " A ", asr #31\n\t"               \
    "asr    r9, r9, r8\n\t"                           \
    "ssat   r9, #8, r9\n\t"
    __asm__(
        "push   {r0, r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t"
        "3:\n\t"
        "ldr    r12, [sp]\n\t"                        /* job */
        "ldr    r1, [r12, #4]\n\t"
        "ldrd   r0, r1, [r1]\n\t"                     /* the pair's biases */
        "mov    r2, r0\n\t"
        "mov    r3, r1\n\t"
        "mov    r4, r0\n\t"
        "mov    r5, r1\n\t"
        "ldr    lr, [r12, #8]\n\t"                    /* col */
        "ldr    r10, [r12, #28]\n\t"                  /* chunks 2 mod 4 */
        "ldr    r12, [r12]\n\t"                       /* w */
        "cmp    r10, #0\n\t"
        "beq    1f\n\t" MF_MM3X2_CHUNK MF_MM3X2_CHUNK
        "ldr    r10, [sp]\n\t"
        "ldr    r10, [r10, #12]\n\t"
        "cmp    lr, r10\n\t"
        "bhs    2f\n\t"
        "1:\n\t" MF_MM3X2_CHUNK MF_MM3X2_CHUNK MF_MM3X2_CHUNK MF_MM3X2_CHUNK
        "ldr    r10, [sp]\n\t"
        "ldr    r10, [r10, #12]\n\t"
        "cmp    lr, r10\n\t"
        "blo    1b\n\t"
        "2:\n\t"
        "ldr    r11, [sp]\n\t"
        "str    r12, [r11]\n\t"                       /* w advanced */
        "ldr    r12, [r11, #4]\n\t"                   /* q */
        "ldr    lr, [r11, #16]\n\t"                   /* o */
        "ldr    r11, [r11, #20]\n\t"                  /* ps */
        "ldrd   r6, r7, [r12, #8]\n\t"
        "ldr    r8, [r12, #16]\n\t"
        MF_REQ("r0") "strb   r9, [lr]\n\t"
        MF_REQ("r2") "strb   r9, [lr, r11]\n\t"
        MF_REQ("r4") "strb   r9, [lr, r11, lsl #1]\n\t"
        "ldrd   r6, r7, [r12, #20]\n\t"
        "ldr    r8, [r12, #28]\n\t"
        "add    lr, lr, #1\n\t"
        MF_REQ("r1") "strb   r9, [lr]\n\t"
        MF_REQ("r3") "strb   r9, [lr, r11]\n\t"
        MF_REQ("r5") "strb   r9, [lr, r11, lsl #1]\n\t"
        "add    lr, lr, #1\n\t"
        "add    r12, r12, #32\n\t"
        "ldr    r11, [sp]\n\t"
        "str    r12, [r11, #4]\n\t"
        "str    lr, [r11, #16]\n\t"
        "ldr    r10, [r11, #24]\n\t"
        "subs   r10, r10, #1\n\t"
        "str    r10, [r11, #24]\n\t"
        "bne    3b\n\t"
        "pop    {r0, r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t");
#undef MF_MM3X2_CHUNK
#undef MF_REQ
}
#define MF_CONV_PAIRS_ASM 1
#endif

#ifndef MF_CONV_PAIRS_ASM
#define MF_CONV_PAIRS_ASM 0
#endif

/* The 3x2 micro-kernel over an even number of chunks (the generator pads the column to a
 * multiple of 8 elements). */
MF_INLINE void conv_mm3x2(int32_t *acc, const uint32_t *w, const uint32_t *x, int32_t chunks) {
#if MF_DSP_NATIVE && defined(__thumb2__) && defined(__GNUC__)
    conv_mm3x2_asm(acc, w, x, (const uint32_t *)((uintptr_t)(x + MF_CONV_CW * chunks) | (uintptr_t)(chunks & 2)));
#else
    int32_t c, i;
    for (c = 0; c < chunks; ++c, w += 2, x += MF_CONV_CW) {
        const uint32_t wa0 = mf_sxtb16(w[0]), wa1 = mf_sxtb16_ror8(w[0]);
        const uint32_t wb0 = mf_sxtb16(w[1]), wb1 = mf_sxtb16_ror8(w[1]);
        for (i = 0; i < MF_CONV_PIX; ++i) {
            acc[2 * i] = mf_smlad(wa1, x[2 * i + 1], mf_smlad(wa0, x[2 * i], acc[2 * i]));
            acc[2 * i + 1] = mf_smlad(wb1, x[2 * i + 1], mf_smlad(wb0, x[2 * i], acc[2 * i + 1]));
        }
    }
#endif
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

/* All output channels of group g for npix (1..3) pixels, ps bytes apart in the output: pairs
 * of channels, records q per pair: bias0, bias1, then (multiplier, a, b) of each channel. */
MF_INLINE void conv_channels(const uint32_t *w, const int32_t *q, const uint32_t *col, int32_t chunks, int32_t og,
                             int8_t *o, int32_t ps, const int32_t npix, const int fast, const int clamp, int32_t lo,
                             int32_t hi) {
    int8_t *const oend = o + (og & ~1);
    int32_t acc[2 * MF_CONV_PIX];
#if MF_CONV_PAIRS_ASM
    if (fast && !clamp && npix == 3 && og > 1) {
        conv_job job;
        job.w = w;
        job.q = q;
        job.col = col;
        job.xend = col + MF_CONV_CW * chunks;
        job.o = o;
        job.ps = ps;
        job.pairs = og >> 1;
        job.two = chunks & 2;
        conv_pairs3_fast_asm(&job);
        w = job.w;
        q = job.q;
        o = job.o;
    }
#endif
    for (; o < oend; o += 2, q += 8, w += 2 * chunks) {
        acc[0] = acc[2] = acc[4] = q[0];
        acc[1] = acc[3] = acc[5] = q[1];
        conv_mm3x2(acc, w, col, chunks);
        o[0] = conv_out(acc[0], q + 2, fast, clamp, lo, hi);
        o[1] = conv_out(acc[1], q + 5, fast, clamp, lo, hi);
        if (npix > 1) {
            o[ps] = conv_out(acc[2], q + 2, fast, clamp, lo, hi);
            o[ps + 1] = conv_out(acc[3], q + 5, fast, clamp, lo, hi);
        }
        if (npix > 2) {
            o[2 * ps] = conv_out(acc[4], q + 2, fast, clamp, lo, hi);
            o[2 * ps + 1] = conv_out(acc[5], q + 5, fast, clamp, lo, hi);
        }
    }
    if (og & 1) { /* the last channel, paired with zero weights */
        int32_t i;
        acc[0] = acc[2] = acc[4] = q[0];
        acc[1] = acc[3] = acc[5] = 0;
        conv_mm3x2(acc, w, col, chunks);
        for (i = 0; i < npix; ++i) o[i * ps] = conv_out(acc[2 * i], q + 2, fast, clamp, lo, hi);
    }
}

MF_INLINE void conv_body(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *col,
                         const int fast, const int clamp) {
    const int32_t pixels = p->out_h * p->out_w, oc = p->out_c;
    const int32_t og = oc / p->groups, og_pad = og + (og & 1);
    int32_t pix, g, i;
    int32_t oy = 0, ox = 0; /* of pixel pix */
    for (pix = 0; pix + MF_CONV_PIX <= pixels; pix += MF_CONV_PIX) {
        int8_t *o = out + pix * oc;
        for (g = 0; g < p->groups; ++g) {
            int32_t y = oy, x = ox;
            for (i = 0; i < MF_CONV_PIX; ++i) {
                conv_im2col(p, in, y, x, g, col, i);
                if (++x == p->out_w) x = 0, ++y;
            }
            conv_channels(p->w + g * og_pad * p->chunks, p->q + g * og_pad * MF_Q_WORDS, col, p->chunks, og,
                          o + g * og, oc, MF_CONV_PIX, fast, clamp, p->act_min, p->act_max);
        }
        for (i = 0; i < MF_CONV_PIX; ++i) {
            if (++ox == p->out_w) ox = 0, ++oy;
        }
    }
    if (pix < pixels) { /* the last one or two pixels */
        const int32_t rest = pixels - pix;
        int8_t *o = out + pix * oc;
        for (g = 0; g < p->groups; ++g) {
            int32_t y = oy, x = ox;
            for (i = 0; i < rest; ++i) {
                conv_im2col(p, in, y, x, g, col, i);
                if (++x == p->out_w) x = 0, ++y;
            }
            conv_channels(p->w + g * og_pad * p->chunks, p->q + g * og_pad * MF_Q_WORDS, col, p->chunks, og,
                          o + g * og, oc, rest, fast, clamp, p->act_min, p->act_max);
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
