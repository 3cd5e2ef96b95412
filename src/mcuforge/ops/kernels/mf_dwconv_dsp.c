/* mcuforge int8 depthwise convolution for DSP-extension cores.
 *
 * One input channel at a time, the part of the padded input the outputs read (the plane)
 * is widened to int16 in the scratch buffer, padding written as the input zero point (the
 * bias has it folded in). Two adjacent taps of a row are then one word, and one SMLAD
 * multiplies them with a (w[kx], w[kx+1]) weight pair. For 3-wide kernels at stride 1
 * along the row, two outputs share their loads: with P01 = (x0, x1), P23 = (x2, x3),
 *   out0 += SMLAD(P01, (w0, w1)) + SMLABT(P23, (w1, w2))      x0 w0 + x1 w1 + x2 w2
 *   out1 += SMLATB(P01, (w0, w1)) + SMLAD(P23, (w1, w2))      x1 w0 + x2 w1 + x3 w2
 * In the fast variants weights and bias are stored doubled, so the accumulator is the
 * 2 acc that the SMMLAR requantization takes. The generator may present the layer
 * transposed (rows = the input's columns) so that rows are long and the 3-wide form
 * applies; the kernel only sees element strides. */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

static void dw_plane(const mf_dwconv_dsp_params *p, const int8_t *in, int32_t c, int16_t *plane) {
    const int16_t pv = (int16_t)p->pad_value;
    const int32_t pw = p->plane_w, sx = p->in_sx;
    const int32_t x0 = MF_MIN(p->pad_left, pw), x1 = MF_MIN(p->pad_left + p->in_w, pw);
    int32_t py, px;
    for (py = 0; py < p->plane_h; ++py) {
        const int32_t iy = py - p->pad_top;
        int16_t *d = plane + py * pw;
        if (iy < 0 || iy >= p->in_h) {
            for (px = 0; px < pw; ++px) d[px] = pv;
            continue;
        }
        for (px = 0; px < x0; ++px) d[px] = pv;
        if (x0 < x1) {
            const int8_t *s = in + iy * p->in_sy + (x0 - p->pad_left) * sx + c;
            int16_t *e = d + x1;
            for (d += x0; d + 1 < e; d += 2, s += 2 * sx) {
                d[0] = s[0];
                d[1] = s[sx];
            }
            if (d < e) *d = *s;
        }
        for (px = MF_MAX(x0, x1); px < pw; ++px) plane[py * pw + px] = pv;
    }
    /* the pair loads of an odd-width kernel read one element past the last row */
    plane[p->plane_h * pw] = pv;
    plane[p->plane_h * pw + 1] = pv;
}

MF_INLINE uint32_t load16(const int8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* The planes of channels c and c + 1 at once (two bytes per load, SXTB16 splits them), the
 * second plane `size` elements after the first. */
static void dw_plane2(const mf_dwconv_dsp_params *p, const int8_t *in, int32_t c, int16_t *plane, int32_t size) {
    const int16_t pv = (int16_t)p->pad_value;
    const int32_t pw = p->plane_w, sx = p->in_sx;
    const int32_t x0 = MF_MIN(p->pad_left, pw), x1 = MF_MIN(p->pad_left + p->in_w, pw);
    int16_t *const plane1 = plane + size;
    int32_t py, px;
    for (py = 0; py < p->plane_h; ++py) {
        const int32_t iy = py - p->pad_top;
        int16_t *d0 = plane + py * pw, *d1 = plane1 + py * pw;
        if (iy < 0 || iy >= p->in_h) {
            for (px = 0; px < pw; ++px) d0[px] = d1[px] = pv;
            continue;
        }
        for (px = 0; px < x0; ++px) d0[px] = d1[px] = pv;
        if (x0 < x1) {
            const int8_t *s = in + iy * p->in_sy + (x0 - p->pad_left) * sx + c;
            for (px = x0; px + 1 < x1; px += 2, s += 2 * sx) {
                const uint32_t v = load16(s) | (load16(s + sx) << 16); /* (c, c+1) at px, px + 1 */
                mf_store32(d0 + px, mf_sxtb16(v));
                mf_store32(d1 + px, mf_sxtb16_ror8(v));
            }
            if (px < x1) {
                d0[px] = s[0];
                d1[px] = s[1];
            }
        }
        for (px = MF_MAX(x0, x1); px < pw; ++px) d0[px] = d1[px] = pv;
    }
    plane[p->plane_h * pw] = plane[p->plane_h * pw + 1] = pv;
    plane1[p->plane_h * pw] = plane1[p->plane_h * pw + 1] = pv;
}

MF_INLINE int8_t dw_out(int32_t acc, const int32_t *q, const int fast, const int clamp, int32_t lo, int32_t hi) {
    return mf_dsp_act(fast ? mf_dsp_requant2(acc, q, 1) : mf_dsp_requant(acc, q, 0), clamp, lo, hi);
}

#if MF_DSP_NATIVE && defined(__thumb2__)
/* The 3x3 two-output loop over `pairs` output pairs of one row (fast requantization, no
 * clamp). r0..r2: the three plane rows (word aligned); blob: the channel's weights
 * (a0 b0 a1 b1 a2 b2) and record (bias M C e); os: the output stride along the row. */
static void dw_three3_row_asm(const int16_t *r0, const int16_t *r1, const int16_t *r2, const uint32_t *blob,
                              int8_t *o, int32_t os, int32_t pairs) {
    uint32_t a, b, v01, v23;
    int32_t acc0, acc1;
    __asm__ volatile(
        "1:\n\t"
        "ldr    %[acc0], [%[blob], #24]\n\t"
        "ldrd   %[v01], %[v23], [%[r0]], #4\n\t"
        "ldrd   %[a], %[b], [%[blob]]\n\t"
        "smlatb %[acc1], %[v01], %[a], %[acc0]\n\t"
        "smlad  %[acc0], %[v01], %[a], %[acc0]\n\t"
        "smlabt %[acc0], %[v23], %[b], %[acc0]\n\t"
        "smlad  %[acc1], %[v23], %[b], %[acc1]\n\t"
        "ldrd   %[v01], %[v23], [%[r1]], #4\n\t"
        "ldrd   %[a], %[b], [%[blob], #8]\n\t"
        "smlad  %[acc0], %[v01], %[a], %[acc0]\n\t"
        "smlatb %[acc1], %[v01], %[a], %[acc1]\n\t"
        "smlabt %[acc0], %[v23], %[b], %[acc0]\n\t"
        "smlad  %[acc1], %[v23], %[b], %[acc1]\n\t"
        "ldrd   %[v01], %[v23], [%[r2]], #4\n\t"
        "ldrd   %[a], %[b], [%[blob], #16]\n\t"
        "smlad  %[acc0], %[v01], %[a], %[acc0]\n\t"
        "smlatb %[acc1], %[v01], %[a], %[acc1]\n\t"
        "smlabt %[acc0], %[v23], %[b], %[acc0]\n\t"
        "smlad  %[acc1], %[v23], %[b], %[acc1]\n\t"
        "ldrd   %[a], %[b], [%[blob], #28]\n\t"
        "ldr    %[v01], [%[blob], #36]\n\t"
        "smmlar %[v23], %[acc0], %[a], %[b]\n\t"
        "add    %[v23], %[v23], %[acc0], asr #31\n\t"
        "asr    %[v23], %[v23], %[v01]\n\t"
        "ssat   %[v23], #8, %[v23]\n\t"
        "strb   %[v23], [%[o]]\n\t"
        "smmlar %[v23], %[acc1], %[a], %[b]\n\t"
        "add    %[v23], %[v23], %[acc1], asr #31\n\t"
        "asr    %[v23], %[v23], %[v01]\n\t"
        "ssat   %[v23], #8, %[v23]\n\t"
        "strb   %[v23], [%[o], %[os]]\n\t"
        "add    %[o], %[o], %[os], lsl #1\n\t"
        "subs   %[pairs], %[pairs], #1\n\t"
        "bne    1b\n\t"
        : [r0] "+r"(r0), [r1] "+r"(r1), [r2] "+r"(r2), [o] "+r"(o), [pairs] "+r"(pairs), [a] "=&r"(a),
          [b] "=&r"(b), [v01] "=&r"(v01), [v23] "=&r"(v23), [acc0] "=&r"(acc0), [acc1] "=&r"(acc1)
        : [blob] "r"(blob), [os] "r"(os)
        : "cc", "memory");
}

/* The 3x3 (or 3x4) stride-2 two-output loop over `pairs` output pairs of one row (fast, no
 * clamp); blob: (a0 b0 a1 b1 a2 b2) = the rows' (w0, w1), (w2, w3) pairs, then (bias M C e). */
static void dw_s2_row_asm(const int16_t *r0, const int16_t *r1, const int16_t *r2, const uint32_t *blob,
                          int8_t *o, int32_t os, int32_t pairs) {
    uint32_t a, b, v0, v1;
    int32_t acc0, acc1;
#define MF_DW_S2_ROW(R, OFF)                          \
        "ldrd   %[v0], %[v1], [%[" R "]], #8\n\t"    \
        "ldrd   %[a], %[b], [%[blob], #" OFF "]\n\t" \
        "smlad  %[acc0], %[v0], %[a], %[acc0]\n\t"   \
        "smlad  %[acc0], %[v1], %[b], %[acc0]\n\t"   \
        "smlad  %[acc1], %[v1], %[a], %[acc1]\n\t"   \
        "ldr    %[v0], [%[" R "]]\n\t"               \
        "smlad  %[acc1], %[v0], %[b], %[acc1]\n\t"
    __asm__ volatile(
        "1:\n\t"
        "ldr    %[acc0], [%[blob], #24]\n\t"
        "mov    %[acc1], %[acc0]\n\t"
        MF_DW_S2_ROW("r0", "0") MF_DW_S2_ROW("r1", "8") MF_DW_S2_ROW("r2", "16")
        "ldrd   %[a], %[b], [%[blob], #28]\n\t"
        "ldr    %[v0], [%[blob], #36]\n\t"
        "smmlar %[v1], %[acc0], %[a], %[b]\n\t"
        "add    %[v1], %[v1], %[acc0], asr #31\n\t"
        "asr    %[v1], %[v1], %[v0]\n\t"
        "ssat   %[v1], #8, %[v1]\n\t"
        "strb   %[v1], [%[o]]\n\t"
        "smmlar %[v1], %[acc1], %[a], %[b]\n\t"
        "add    %[v1], %[v1], %[acc1], asr #31\n\t"
        "asr    %[v1], %[v1], %[v0]\n\t"
        "ssat   %[v1], #8, %[v1]\n\t"
        "strb   %[v1], [%[o], %[os]]\n\t"
        "add    %[o], %[o], %[os], lsl #1\n\t"
        "subs   %[pairs], %[pairs], #1\n\t"
        "bne    1b\n\t"
        : [r0] "+r"(r0), [r1] "+r"(r1), [r2] "+r"(r2), [o] "+r"(o), [pairs] "+r"(pairs), [a] "=&r"(a),
          [b] "=&r"(b), [v0] "=&r"(v0), [v1] "=&r"(v1), [acc0] "=&r"(acc0), [acc1] "=&r"(acc1)
        : [blob] "r"(blob), [os] "r"(os)
        : "cc", "memory");
#undef MF_DW_S2_ROW
}
#define MF_DW_ROW_ASM 1
#else
#define MF_DW_ROW_ASM 0
#endif

/* 3-wide kernel, stride 1 along the row, 3 rows: two outputs per pass. */
MF_INLINE void dw_three3(const mf_dwconv_dsp_params *p, const int16_t *plane, const uint32_t *blob,
                         int8_t *out, const int fast, const int clamp) {
    const int32_t pw = p->plane_w, rs = p->dil_h * pw, os = p->out_sx;
    const int32_t *q = (const int32_t *)(blob + 6);
    const int32_t bias = q[MF_Q_BIAS], lo = p->act_min, hi = p->act_max;
    const int32_t pairs = p->out_w >> 1;
    int32_t oy, i;
    for (oy = 0; oy < p->out_h; ++oy) {
        const int16_t *r = plane + oy * p->stride_h * pw;
        int8_t *o = out + oy * p->out_sy;
#if MF_DW_ROW_ASM
        if (fast && !clamp && pairs > 0) {
            dw_three3_row_asm(r, r + rs, r + 2 * rs, blob, o, os, pairs);
            r += 2 * pairs;
            o += 2 * pairs * os;
        } else
#endif
        {
            const uint32_t a0 = blob[0], b0 = blob[1], a1 = blob[2], b1 = blob[3], a2 = blob[4], b2 = blob[5];
            for (i = pairs; i > 0; --i) {
                int32_t acc0 = bias, acc1 = bias;
                uint32_t v01 = mf_load32(r), v23 = mf_load32(r + 2);
                acc0 = mf_smlad(v01, a0, acc0);
                acc1 = mf_smlatb(v01, a0, acc1);
                acc0 = mf_smlabt(v23, b0, acc0);
                acc1 = mf_smlad(v23, b0, acc1);
                v01 = mf_load32(r + rs);
                v23 = mf_load32(r + rs + 2);
                acc0 = mf_smlad(v01, a1, acc0);
                acc1 = mf_smlatb(v01, a1, acc1);
                acc0 = mf_smlabt(v23, b1, acc0);
                acc1 = mf_smlad(v23, b1, acc1);
                v01 = mf_load32(r + 2 * rs);
                v23 = mf_load32(r + 2 * rs + 2);
                acc0 = mf_smlad(v01, a2, acc0);
                acc1 = mf_smlatb(v01, a2, acc1);
                acc0 = mf_smlabt(v23, b2, acc0);
                acc1 = mf_smlad(v23, b2, acc1);
                o[0] = dw_out(acc0, q, fast, clamp, lo, hi);
                o[os] = dw_out(acc1, q, fast, clamp, lo, hi);
                o += 2 * os;
                r += 2;
            }
        }
        if (p->out_w & 1) {
            int32_t acc0 = bias;
            acc0 = mf_smlad(mf_load32(r), blob[0], acc0);
            acc0 = mf_smlabt(mf_load32(r + 2), blob[1], acc0);
            acc0 = mf_smlad(mf_load32(r + rs), blob[2], acc0);
            acc0 = mf_smlabt(mf_load32(r + rs + 2), blob[3], acc0);
            acc0 = mf_smlad(mf_load32(r + 2 * rs), blob[4], acc0);
            acc0 = mf_smlabt(mf_load32(r + 2 * rs + 2), blob[5], acc0);
            o[0] = dw_out(acc0, q, fast, clamp, lo, hi);
        }
    }
}

/* 3-wide kernel, stride 1 along the row, any number of rows. */
MF_INLINE void dw_three(const mf_dwconv_dsp_params *p, const int16_t *plane, const uint32_t *blob,
                        int8_t *out, const int fast, const int clamp) {
    const int32_t pw = p->plane_w, rs = p->dil_h * pw, os = p->out_sx;
    const int32_t *q = (const int32_t *)(blob + 2 * p->k_h);
    const int32_t bias = q[MF_Q_BIAS], lo = p->act_min, hi = p->act_max;
    int32_t oy, ox, ky;
    for (oy = 0; oy < p->out_h; ++oy) {
        const int16_t *r0 = plane + oy * p->stride_h * pw;
        int8_t *o = out + oy * p->out_sy;
        for (ox = 0; ox < p->out_w; ox += 2) {
            const int16_t *r = r0 + ox;
            const uint32_t *w = blob;
            int32_t acc0 = bias, acc1 = bias;
            for (ky = 0; ky < p->k_h; ++ky, r += rs, w += 2) {
                const uint32_t v01 = mf_load32(r), v23 = mf_load32(r + 2);
                acc0 = mf_smlad(v01, w[0], acc0);
                acc1 = mf_smlatb(v01, w[0], acc1);
                acc0 = mf_smlabt(v23, w[1], acc0);
                acc1 = mf_smlad(v23, w[1], acc1);
            }
            o[0] = dw_out(acc0, q, fast, clamp, lo, hi);
            if (ox + 1 < p->out_w) o[os] = dw_out(acc1, q, fast, clamp, lo, hi);
            o += 2 * os;
        }
    }
}

/* Stride 2 along the row, undilated: two outputs per pass share all but one of their tap pairs
 * (output ox + 1 starts where the second pair of output ox is). */
MF_INLINE void dw_stride2(const mf_dwconv_dsp_params *p, const int16_t *plane, const uint32_t *blob,
                          int8_t *out, const int fast, const int clamp) {
    const int32_t pw = p->plane_w, kp = (p->k_w + 1) >> 1, rs = p->dil_h * pw, os = p->out_sx;
    const int32_t *q = (const int32_t *)(blob + p->k_h * kp);
    const int32_t bias = q[MF_Q_BIAS], lo = p->act_min, hi = p->act_max;
    int32_t oy, ox, ky, i;
    for (oy = 0; oy < p->out_h; ++oy) {
        const int16_t *r0 = plane + oy * p->stride_h * pw;
        int8_t *o = out + oy * p->out_sy;
        ox = 0;
#if MF_DW_ROW_ASM
        if (fast && !clamp && p->k_h == 3 && kp == 2 && p->out_w > 1) {
            const int32_t pairs = p->out_w >> 1;
            dw_s2_row_asm(r0, r0 + rs, r0 + 2 * rs, blob, o, os, pairs);
            ox = 2 * pairs;
            r0 += 4 * pairs;
            o += 2 * pairs * os;
        }
#endif
        if (p->k_h == 3 && kp == 2) { /* 3x3 and 3x4: unrolled, weights in registers */
            const uint32_t a0 = blob[0], b0 = blob[1], a1 = blob[2], b1 = blob[3], a2 = blob[4], b2 = blob[5];
            for (; ox + 1 < p->out_w; ox += 2, r0 += 4, o += 2 * os) {
                uint32_t v0 = mf_load32(r0), v1 = mf_load32(r0 + 2), v2 = mf_load32(r0 + 4);
                int32_t acc0 = mf_smlad(v1, b0, mf_smlad(v0, a0, bias));
                int32_t acc1 = mf_smlad(v2, b0, mf_smlad(v1, a0, bias));
                v0 = mf_load32(r0 + rs);
                v1 = mf_load32(r0 + rs + 2);
                v2 = mf_load32(r0 + rs + 4);
                acc0 = mf_smlad(v1, b1, mf_smlad(v0, a1, acc0));
                acc1 = mf_smlad(v2, b1, mf_smlad(v1, a1, acc1));
                v0 = mf_load32(r0 + 2 * rs);
                v1 = mf_load32(r0 + 2 * rs + 2);
                v2 = mf_load32(r0 + 2 * rs + 4);
                acc0 = mf_smlad(v1, b2, mf_smlad(v0, a2, acc0));
                acc1 = mf_smlad(v2, b2, mf_smlad(v1, a2, acc1));
                o[0] = dw_out(acc0, q, fast, clamp, lo, hi);
                o[os] = dw_out(acc1, q, fast, clamp, lo, hi);
            }
        }
        for (; ox + 1 < p->out_w; ox += 2, r0 += 4, o += 2 * os) {
            const int16_t *r = r0;
            const uint32_t *w = blob;
            int32_t acc0 = bias, acc1 = bias;
            for (ky = 0; ky < p->k_h; ++ky, r += rs) {
                uint32_t v = mf_load32(r);
                for (i = 0; i < kp; ++i, ++w) {
                    const uint32_t next = mf_load32(r + 2 * i + 2);
                    acc0 = mf_smlad(v, *w, acc0);
                    acc1 = mf_smlad(next, *w, acc1);
                    v = next;
                }
            }
            o[0] = dw_out(acc0, q, fast, clamp, lo, hi);
            o[os] = dw_out(acc1, q, fast, clamp, lo, hi);
        }
        if (ox < p->out_w) {
            const int16_t *r = r0;
            const uint32_t *w = blob;
            int32_t acc0 = bias;
            for (ky = 0; ky < p->k_h; ++ky, r += rs) {
                for (i = 0; i < kp; ++i) acc0 = mf_smlad(mf_load32(r + 2 * i), *w++, acc0);
            }
            o[0] = dw_out(acc0, q, fast, clamp, lo, hi);
        }
    }
}

/* Any kernel, stride and dilation: tap pairs along the row. */
MF_INLINE void dw_generic(const mf_dwconv_dsp_params *p, const int16_t *plane, const uint32_t *blob,
                          int8_t *out, const int fast, const int clamp) {
    const int32_t pw = p->plane_w, kp = (p->k_w + 1) >> 1, dw = p->dil_w;
    const int32_t *q = (const int32_t *)(blob + p->k_h * kp);
    const int32_t bias = q[MF_Q_BIAS], lo = p->act_min, hi = p->act_max;
    int32_t oy, ox, ky, i;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            const int16_t *r = plane + oy * p->stride_h * pw + ox * p->stride_w;
            const uint32_t *wk = blob;
            int32_t acc = bias;
            for (ky = 0; ky < p->k_h; ++ky, r += p->dil_h * pw) {
                if (dw == 1) {
                    for (i = 0; i < kp; ++i) acc = mf_smlad(mf_load32(r + 2 * i), *wk++, acc);
                } else {
                    for (i = 0; i < kp; ++i) {
                        const int32_t hi_tap = 2 * i + 1 < p->k_w ? r[(2 * i + 1) * dw] : 0;
                        acc = mf_smlad(mf_pack16(r[2 * i * dw], hi_tap), *wk++, acc);
                    }
                }
            }
            out[oy * p->out_sy + ox * p->out_sx] = dw_out(acc, q, fast, clamp, lo, hi);
        }
    }
}

/* The less common forms, compiled once with the variant as run-time flags (code size). */
static void dw_three_any(const mf_dwconv_dsp_params *p, const int16_t *plane, const uint32_t *blob, int8_t *out,
                         int fast, int clamp) {
    dw_three(p, plane, blob, out, fast, clamp);
}

static void dw_stride2_any(const mf_dwconv_dsp_params *p, const int16_t *plane, const uint32_t *blob, int8_t *out,
                           int fast, int clamp) {
    dw_stride2(p, plane, blob, out, fast, clamp);
}

static void dw_generic_any(const mf_dwconv_dsp_params *p, const int16_t *plane, const uint32_t *blob, int8_t *out,
                           int fast, int clamp) {
    dw_generic(p, plane, blob, out, fast, clamp);
}

MF_INLINE void dw_channel(const mf_dwconv_dsp_params *p, const int16_t *plane, int32_t c, int8_t *out,
                          const int fast, const int clamp) {
    const int32_t words = (p->three ? 2 * p->k_h : p->k_h * ((p->k_w + 1) >> 1)) + MF_Q_WORDS;
    int32_t j;
    for (j = 0; j < p->mult; ++j) {
        const int32_t o = c * p->mult + j;
        const uint32_t *blob = p->w + o * words;
        if (p->three && p->k_h == 3) {
            dw_three3(p, plane, blob, out + o, fast, clamp); /* the common case, specialized per variant */
        } else if (p->three) {
            dw_three_any(p, plane, blob, out + o, fast, clamp);
        } else if (p->stride_w == 2 && p->dil_w == 1) {
            dw_stride2_any(p, plane, blob, out + o, fast, clamp);
        } else {
            dw_generic_any(p, plane, blob, out + o, fast, clamp);
        }
    }
}

MF_INLINE void dw_body(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch,
                       const int fast, const int clamp) {
    int16_t *plane = (int16_t *)scratch;
    const int32_t size = p->plane_h * p->plane_w + 2; /* elements per plane (even) */
    int32_t c = 0;
    for (; c + 1 < p->in_c; c += 2) {
        dw_plane2(p, in, c, plane, size);
        dw_channel(p, plane, c, out, fast, clamp);
        dw_channel(p, plane + size, c + 1, out, fast, clamp);
    }
    if (c < p->in_c) {
        dw_plane(p, in, c, plane);
        dw_channel(p, plane, c, out, fast, clamp);
    }
}

void mf_dwconv_dsp_s8_fast(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    dw_body(p, in, out, scratch, 1, 0);
}

void mf_dwconv_dsp_s8_fast_clamp(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out,
                                 uint32_t *scratch) {
    dw_body(p, in, out, scratch, 1, 1);
}

void mf_dwconv_dsp_s8_exact(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    dw_body(p, in, out, scratch, 0, 0);
}

void mf_dwconv_dsp_s8_exact_clamp(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out,
                                  uint32_t *scratch) {
    dw_body(p, in, out, scratch, 0, 1);
}
