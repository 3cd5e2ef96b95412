/* mcuforge int8 fully connected layer for DSP-extension cores.
 *
 * The input row is widened once into int16 chunks: chunk c holds inputs 4c..4c+3 as the
 * words (x0, x2), (x1, x3), the lanes SXTB16 gives a weight word, so weights need no
 * reordering. Four output features per pass: per chunk one 8-byte input load, two 8-byte
 * weight loads (the 4 features' words), 8 SXTB16 and 8 SMLAD (16 MACs). The input zero
 * point is folded into the bias. */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

/* a_j += x . w[feature j] over an even number of chunks; *wp advances past the 4 features. */
MF_INLINE void fc_mm4(const uint32_t **wp, const uint32_t *x, const uint32_t *xend, int32_t *p0, int32_t *p1,
                      int32_t *p2, int32_t *p3) {
    const uint32_t *w = *wp;
    int32_t a0 = *p0, a1 = *p1, a2 = *p2, a3 = *p3;
#if MF_DSP_NATIVE && defined(__thumb2__)
    uint32_t x0, x1, wa, wb, t;
#define MF_FC_CHUNK                                  \
    "ldrd %[x0], %[x1], [%[x]], #8\n\t"              \
    "ldrd %[wa], %[wb], [%[w]], #8\n\t"              \
    "sxtb16 %[t], %[wa]\n\t"                         \
    "sxtb16 %[wa], %[wa], ror #8\n\t"                \
    "smlad %[a0], %[t], %[x0], %[a0]\n\t"            \
    "smlad %[a0], %[wa], %[x1], %[a0]\n\t"           \
    "sxtb16 %[t], %[wb]\n\t"                         \
    "sxtb16 %[wb], %[wb], ror #8\n\t"                \
    "smlad %[a1], %[t], %[x0], %[a1]\n\t"            \
    "smlad %[a1], %[wb], %[x1], %[a1]\n\t"           \
    "ldrd %[wa], %[wb], [%[w]], #8\n\t"              \
    "sxtb16 %[t], %[wa]\n\t"                         \
    "sxtb16 %[wa], %[wa], ror #8\n\t"                \
    "smlad %[a2], %[t], %[x0], %[a2]\n\t"            \
    "smlad %[a2], %[wa], %[x1], %[a2]\n\t"           \
    "sxtb16 %[t], %[wb]\n\t"                         \
    "sxtb16 %[wb], %[wb], ror #8\n\t"                \
    "smlad %[a3], %[t], %[x0], %[a3]\n\t"            \
    "smlad %[a3], %[wb], %[x1], %[a3]\n\t"
    __asm__(
        /* two chunks when their count is 2 mod 4, then four per iteration */
        "sub %[x0], %[xend], %[x]\n\t"
        "tst %[x0], #16\n\t"
        "beq 1f\n\t" MF_FC_CHUNK MF_FC_CHUNK
        "cmp %[x], %[xend]\n\t"
        "bhs 2f\n\t"
        "1:\n\t" MF_FC_CHUNK MF_FC_CHUNK MF_FC_CHUNK MF_FC_CHUNK
        "cmp %[x], %[xend]\n\t"
        "blo 1b\n\t"
        "2:\n\t"
        : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [w] "+r"(w), [x] "+r"(x),
          [x0] "=&r"(x0), [x1] "=&r"(x1), [wa] "=&r"(wa), [wb] "=&r"(wb), [t] "=&r"(t)
        : [xend] "r"(xend), "m"(*(const uint32_t(*)[])w), "m"(*(const uint32_t(*)[])x)
        : "cc");
#undef MF_FC_CHUNK
#else
    do {
        const uint32_t x0 = x[0], x1 = x[1];
        a0 = mf_smlad(mf_sxtb16(w[0]), x0, a0);
        a0 = mf_smlad(mf_sxtb16_ror8(w[0]), x1, a0);
        a1 = mf_smlad(mf_sxtb16(w[1]), x0, a1);
        a1 = mf_smlad(mf_sxtb16_ror8(w[1]), x1, a1);
        a2 = mf_smlad(mf_sxtb16(w[2]), x0, a2);
        a2 = mf_smlad(mf_sxtb16_ror8(w[2]), x1, a2);
        a3 = mf_smlad(mf_sxtb16(w[3]), x0, a3);
        a3 = mf_smlad(mf_sxtb16_ror8(w[3]), x1, a3);
        w += 4;
        x += 2;
    } while (x < xend);
#endif
    *wp = w;
    *p0 = a0;
    *p1 = a1;
    *p2 = a2;
    *p3 = a3;
}

MF_INLINE int8_t fc_out(int32_t acc, const int32_t *r, const int fast, const int clamp, int32_t lo, int32_t hi) {
    int32_t y;
    if (fast) {
        y = mf_ssat8((mf_smmlar(acc * 2, r[0], r[1]) + (acc >> 31)) >> r[2]);
    } else {
        y = mf_ssat8(mf_requant(acc, r[0], r[1]) + r[2]);
    }
    return mf_dsp_act(y, clamp, lo, hi);
}

/* Widen k int8 values into `chunks` int16 chunks (zeros past k). */
static void fc_widen(const int8_t *in, int32_t k, int32_t chunks, uint32_t *col) {
    int32_t i = 0;
    for (; i + 4 <= k; i += 4) {
        const uint32_t v = mf_load32(in + i);
        *col++ = mf_sxtb16(v);
        *col++ = mf_sxtb16_ror8(v);
    }
    if (i < k) {
        uint32_t v = 0;
        int32_t j;
        for (j = 0; i + j < k; ++j) v |= ((uint32_t)(uint8_t)in[i + j]) << (8 * j);
        *col++ = mf_sxtb16(v);
        *col++ = mf_sxtb16_ror8(v);
        i += 4;
    }
    for (; i < 4 * chunks; i += 4) {
        *col++ = 0;
        *col++ = 0;
    }
}

MF_INLINE void fc_body(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *col,
                       const int fast, const int clamp) {
    const int32_t k = p->in_features, n = p->out_features, chunks = p->chunks;
    const int32_t lo = p->act_min, hi = p->act_max;
    const uint32_t *const xend = col + 2 * chunks;
    int32_t r, j;
    for (r = 0; r < p->rows; ++r, in += k) {
        const uint32_t *w = p->w;
        const int32_t *q = p->q;
        int8_t *const end4 = out + (n & ~3), *const end = out + n;
        fc_widen(in, k, chunks, col);
        /* records per group of 4 features: 4 biases, then (multiplier, a, b) of each */
        for (; out < end4; out += 4, q += 16) {
            int32_t a0 = q[0], a1 = q[1], a2 = q[2], a3 = q[3];
            fc_mm4(&w, col, xend, &a0, &a1, &a2, &a3);
            out[0] = fc_out(a0, q + 4, fast, clamp, lo, hi);
            out[1] = fc_out(a1, q + 7, fast, clamp, lo, hi);
            out[2] = fc_out(a2, q + 10, fast, clamp, lo, hi);
            out[3] = fc_out(a3, q + 13, fast, clamp, lo, hi);
        }
        if (out < end) {
            int32_t acc[4];
            acc[0] = q[0];
            acc[1] = q[1];
            acc[2] = q[2];
            acc[3] = q[3];
            fc_mm4(&w, col, xend, &acc[0], &acc[1], &acc[2], &acc[3]);
            for (j = 0; out < end; ++j) *out++ = fc_out(acc[j], q + 4 + 3 * j, fast, clamp, lo, hi);
        }
    }
}

void mf_fc_dsp_s8_fast(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    fc_body(p, in, out, scratch, 1, 0);
}

void mf_fc_dsp_s8_fast_clamp(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    fc_body(p, in, out, scratch, 1, 1);
}

void mf_fc_dsp_s8_exact(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    fc_body(p, in, out, scratch, 0, 0);
}

void mf_fc_dsp_s8_exact_clamp(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch) {
    fc_body(p, in, out, scratch, 0, 1);
}
