/* mcuforge int8 fully connected layer for DSP-extension cores.
 *
 * The input row is widened once into int16 chunks: chunk c holds inputs 4c..4c+3 as the
 * words (x0, x2), (x1, x3), the lanes SXTB16 gives a weight word, so weights need no
 * reordering. Four output features per pass: per chunk one 8-byte input load, two 8-byte
 * weight loads (the 4 features' words), 8 SXTB16 and 8 SMLAD (16 MACs). The input zero
 * point is folded into the bias. */
#include "mf_dsp.h"
#include "mf_dsp_kernels.h"

#if MF_DSP_NATIVE && defined(__thumb2__) && defined(__GNUC__)
/* acc[j] += x . w[feature j] over an even number of chunks (x to xend), in assembly: all 14
 * registers (4 accumulators, 4 weight words from one LDM, the column pair, a temporary,
 * 3 pointers), 18 instructions per chunk of 16 MACs. */
#define MF_UNUSED __attribute__((unused))
__attribute__((naked, noinline)) static void fc_mm4_asm(MF_UNUSED int32_t *acc, MF_UNUSED const uint32_t *w,
                                                        MF_UNUSED const uint32_t *x, MF_UNUSED const uint32_t *xend) {
#define MF_FC_CHUNK                                   \
    "ldrd   r9, r10, [r12], #8\n\t"                   \
    "ldmia  r11!, {r4, r5, r6, r7}\n\t"               \
    "sxtb16 r8, r4\n\t"                               \
    "sxtb16 r4, r4, ror #8\n\t"                       \
    "smlad  r0, r8, r9, r0\n\t"                       \
    "smlad  r0, r4, r10, r0\n\t"                      \
    "sxtb16 r8, r5\n\t"                               \
    "sxtb16 r5, r5, ror #8\n\t"                       \
    "smlad  r1, r8, r9, r1\n\t"                       \
    "smlad  r1, r5, r10, r1\n\t"                      \
    "sxtb16 r8, r6\n\t"                               \
    "sxtb16 r6, r6, ror #8\n\t"                       \
    "smlad  r2, r8, r9, r2\n\t"                       \
    "smlad  r2, r6, r10, r2\n\t"                      \
    "sxtb16 r8, r7\n\t"                               \
    "sxtb16 r7, r7, ror #8\n\t"                       \
    "smlad  r3, r8, r9, r3\n\t"                       \
    "smlad  r3, r7, r10, r3\n\t"
    __asm__(
        "push   {r0, r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t"
        "mov    r11, r1\n\t"
        "mov    r12, r2\n\t"
        "mov    lr, r3\n\t"
        "ldmia  r0, {r0, r1, r2, r3}\n\t"
        /* two chunks when their count is 2 mod 4, then four per iteration */
        "sub    r9, lr, r12\n\t"
        "tst    r9, #16\n\t"
        "beq    1f\n\t" MF_FC_CHUNK MF_FC_CHUNK
        "cmp    r12, lr\n\t"
        "bhs    2f\n\t"
        "1:\n\t" MF_FC_CHUNK MF_FC_CHUNK MF_FC_CHUNK MF_FC_CHUNK
        "cmp    r12, lr\n\t"
        "blo    1b\n\t"
        "2:\n\t"
        "ldr    r4, [sp]\n\t"
        "stmia  r4, {r0, r1, r2, r3}\n\t"
        "pop    {r0, r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t");
#undef MF_FC_CHUNK
}
#endif

/* a_j += x . w[feature j] over an even number of chunks; *wp advances past the 4 features. */
MF_INLINE void fc_mm4(const uint32_t **wp, const uint32_t *x, const uint32_t *xend, int32_t *acc) {
    const uint32_t *w = *wp;
#if MF_DSP_NATIVE && defined(__thumb2__) && defined(__GNUC__)
    fc_mm4_asm(acc, w, x, xend);
    w += 2 * (xend - x);
#else
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
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
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
#endif
    *wp = w;
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
            int32_t acc[4];
            acc[0] = q[0];
            acc[1] = q[1];
            acc[2] = q[2];
            acc[3] = q[3];
            fc_mm4(&w, col, xend, acc);
            out[0] = fc_out(acc[0], q + 4, fast, clamp, lo, hi);
            out[1] = fc_out(acc[1], q + 7, fast, clamp, lo, hi);
            out[2] = fc_out(acc[2], q + 10, fast, clamp, lo, hi);
            out[3] = fc_out(acc[3], q + 13, fast, clamp, lo, hi);
        }
        if (out < end) {
            int32_t acc[4];
            acc[0] = q[0];
            acc[1] = q[1];
            acc[2] = q[2];
            acc[3] = q[3];
            fc_mm4(&w, col, xend, acc);
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
