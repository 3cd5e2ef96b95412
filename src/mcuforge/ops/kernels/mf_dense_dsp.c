/* mcuforge int8 fully connected layer for DSP-extension cores.
 *
 * The input row is widened once into int16 chunks: chunk c holds inputs 4c..4c+3 as the
 * words (x0, x2), (x1, x3), the lanes SXTB16 gives a weight word, so weights need no
 * reordering. Four output features per pass: per chunk one 8-byte input load, two 8-byte
 * weight loads (the 4 features' words), 8 SXTB16 and 8 SMLAD (16 MACs). The input zero
 * point is folded into the bias. */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

/* acc[j] += x . w[feature j] over an even number of chunks. */
MF_INLINE void fc_mm4(const uint32_t *w, const uint32_t *x, int32_t chunks, int32_t *acc) {
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    const uint32_t *const xend = x + 2 * chunks;
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
    __asm__ volatile(
        "1:\n\t" MF_FC_CHUNK MF_FC_CHUNK
        "cmp %[x], %[xend]\n\t"
        "blo 1b\n\t"
        : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [w] "+r"(w), [x] "+r"(x),
          [x0] "=&r"(x0), [x1] "=&r"(x1), [wa] "=&r"(wa), [wb] "=&r"(wb), [t] "=&r"(t)
        : [xend] "r"(xend)
        : "cc", "memory");
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
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
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
    int32_t r, o, j;
    for (r = 0; r < p->rows; ++r, in += k, out += n) {
        const uint32_t *w = p->w;
        const int32_t *q = p->q;
        fc_widen(in, k, chunks, col);
        for (o = 0; o < n; o += 4, w += 4 * chunks, q += 4 * MF_Q_WORDS) {
            int32_t acc[4];
            acc[0] = q[MF_Q_BIAS];
            acc[1] = q[MF_Q_WORDS + MF_Q_BIAS];
            acc[2] = q[2 * MF_Q_WORDS + MF_Q_BIAS];
            acc[3] = q[3 * MF_Q_WORDS + MF_Q_BIAS];
            fc_mm4(w, col, chunks, acc);
            if (o + 4 <= n) {
                out[o] = mf_dsp_act(mf_dsp_requant(acc[0], q, fast), clamp, lo, hi);
                out[o + 1] = mf_dsp_act(mf_dsp_requant(acc[1], q + MF_Q_WORDS, fast), clamp, lo, hi);
                out[o + 2] = mf_dsp_act(mf_dsp_requant(acc[2], q + 2 * MF_Q_WORDS, fast), clamp, lo, hi);
                out[o + 3] = mf_dsp_act(mf_dsp_requant(acc[3], q + 3 * MF_Q_WORDS, fast), clamp, lo, hi);
            } else {
                for (j = 0; o + j < n; ++j) {
                    out[o + j] = mf_dsp_act(mf_dsp_requant(acc[j], q + j * MF_Q_WORDS, fast), clamp, lo, hi);
                }
            }
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
