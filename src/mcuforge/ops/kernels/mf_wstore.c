/* mcuforge kernels for compressed weights (mf_wstore.h). */
#include <string.h>
#include "mf_wstore.h"

/* The i-th nibble / crumb of d, and the weight it encodes per format. */
#define MF_NIB(d, i) ((int32_t)((d)[(i) >> 1] >> (((i) & 1) << 2)) & 0xF)
#define MF_CRUMB(d, i) ((int32_t)((d)[(i) >> 2] >> (((i) & 3) << 1)) & 0x3)
#define MF_GET_PACKED4(ws, i) ((MF_NIB((ws)->data, i) ^ 8) - 8)
#define MF_GET_PACKED2(ws, i) ((MF_CRUMB((ws)->data, i) ^ 2) - 2)
#define MF_GET_CODEBOOK4(ws, i) ((int32_t)(ws)->table[MF_NIB((ws)->data, i)])
#define MF_GET_CODEBOOK2(ws, i) ((int32_t)(ws)->table[MF_CRUMB((ws)->data, i)])

/* mf_conv2d_s8 with weight i (IR order) read as GET(ws, i). */
#define MF_CONV_WS(NAME, GET)                                                                         \
    static void NAME(const mf_conv_params *p, const int8_t *in, const mf_wstore *ws,                  \
                     const int32_t *bias, int8_t *out) {                                              \
        const int32_t cg = p->in_c / p->groups, og = p->out_c / p->groups;                            \
        const int32_t wsize = p->k_h * p->k_w * cg;                                                   \
        int32_t oy, ox, g, oc, ky, kx, ic;                                                            \
        for (oy = 0; oy < p->out_h; ++oy) {                                                           \
            for (ox = 0; ox < p->out_w; ++ox) {                                                       \
                int8_t *dst = out + ((int32_t)oy * p->out_w + ox) * p->out_c;                         \
                for (g = 0; g < p->groups; ++g) {                                                     \
                    for (oc = 0; oc < og; ++oc) {                                                     \
                        const int32_t o = g * og + oc;                                                \
                        int32_t acc = bias ? bias[o] : 0;                                             \
                        for (ky = 0; ky < p->k_h; ++ky) {                                             \
                            const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dil_h;         \
                            if (iy < 0 || iy >= p->in_h) continue;                                    \
                            for (kx = 0; kx < p->k_w; ++kx) {                                         \
                                const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;    \
                                const int8_t *src;                                                    \
                                int32_t i;                                                            \
                                if (ix < 0 || ix >= p->in_w) continue;                                \
                                src = in + (iy * p->in_w + ix) * p->in_c + g * cg;                    \
                                i = o * wsize + (ky * p->k_w + kx) * cg;                              \
                                for (ic = 0; ic < cg; ++ic, ++i) {                                    \
                                    acc += ((int32_t)src[ic] + p->in_offset) * GET(ws, i);            \
                                }                                                                     \
                            }                                                                         \
                        }                                                                             \
                        acc = mf_requant(acc, p->mult[o], p->shift[o]) + p->out_offset;               \
                        dst[o] = (int8_t)MF_CLAMP(acc, p->act_min, p->act_max);                       \
                    }                                                                                 \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }

MF_CONV_WS(conv_packed4, MF_GET_PACKED4)
MF_CONV_WS(conv_packed2, MF_GET_PACKED2)
MF_CONV_WS(conv_codebook4, MF_GET_CODEBOOK4)
MF_CONV_WS(conv_codebook2, MF_GET_CODEBOOK2)

/* Sparse: per output channel only its entries; the tap (ky, kx, ic) follows the positions. */
static void conv_sparse(const mf_conv_params *p, const int8_t *in, const mf_wstore *ws,
                        const int32_t *bias, int8_t *out) {
    const int32_t cg = p->in_c / p->groups, og = p->out_c / p->groups;
    int32_t oy, ox, g, oc, e;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            int8_t *dst = out + ((int32_t)oy * p->out_w + ox) * p->out_c;
            const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
            const uint8_t *gap = ws->data;
            const int8_t *val = ws->table;
            for (g = 0; g < p->groups; ++g) {
                const int8_t *src = in + g * cg;
                for (oc = 0; oc < og; ++oc) {
                    const int32_t o = g * og + oc, n = ws->counts[o];
                    int32_t acc = bias ? bias[o] : 0;
                    int32_t ky = 0, kx = 0, ic = -1;
                    for (e = 0; e < n; ++e) {
                        int32_t iy, ix;
                        ic += (int32_t)gap[e] + 1;
                        while (ic >= cg) {
                            ic -= cg;
                            if (++kx == p->k_w) kx = 0, ++ky;
                        }
                        iy = iy0 + ky * p->dil_h;
                        ix = ix0 + kx * p->dil_w;
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) continue;
                        acc += ((int32_t)src[(iy * p->in_w + ix) * p->in_c + ic] + p->in_offset) * (int32_t)val[e];
                    }
                    gap += n;
                    val += n;
                    acc = mf_requant(acc, p->mult[o], p->shift[o]) + p->out_offset;
                    dst[o] = (int8_t)MF_CLAMP(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}

void mf_conv2d_ws_s8(const mf_conv_params *p, const int8_t *in, const mf_wstore *w,
                     const int32_t *bias, int8_t *out) {
    switch (w->format) {
    case MF_WS_PACKED4: conv_packed4(p, in, w, bias, out); break;
    case MF_WS_PACKED2: conv_packed2(p, in, w, bias, out); break;
    case MF_WS_CODEBOOK4: conv_codebook4(p, in, w, bias, out); break;
    case MF_WS_CODEBOOK2: conv_codebook2(p, in, w, bias, out); break;
    default: conv_sparse(p, in, w, bias, out); break;
    }
}

/* mf_fc_s8 with weight i (IR order) read as GET(ws, i). */
#define MF_FC_WS(NAME, GET)                                                                           \
    static void NAME(const mf_fc_params *p, const int8_t *in, const mf_wstore *ws,                    \
                     const int32_t *bias, int8_t *out) {                                              \
        int32_t r, o, k;                                                                              \
        for (r = 0; r < p->rows; ++r) {                                                               \
            const int8_t *x = in + r * p->in_features;                                                \
            int8_t *y = out + r * p->out_features;                                                    \
            for (o = 0; o < p->out_features; ++o) {                                                   \
                int32_t acc = bias ? bias[o] : 0, i = o * p->in_features;                             \
                for (k = 0; k < p->in_features; ++k, ++i) {                                           \
                    acc += ((int32_t)x[k] + p->in_offset) * GET(ws, i);                               \
                }                                                                                     \
                acc = mf_requant(acc, p->mult[o], p->shift[o]) + p->out_offset;                       \
                y[o] = (int8_t)MF_CLAMP(acc, p->act_min, p->act_max);                                 \
            }                                                                                         \
        }                                                                                             \
    }

MF_FC_WS(fc_packed4, MF_GET_PACKED4)
MF_FC_WS(fc_packed2, MF_GET_PACKED2)
MF_FC_WS(fc_codebook4, MF_GET_CODEBOOK4)
MF_FC_WS(fc_codebook2, MF_GET_CODEBOOK2)

static void fc_sparse(const mf_fc_params *p, const int8_t *in, const mf_wstore *ws, const int32_t *bias,
                      int8_t *out) {
    int32_t r, o, e;
    for (r = 0; r < p->rows; ++r) {
        const int8_t *x = in + r * p->in_features;
        int8_t *y = out + r * p->out_features;
        const uint8_t *gap = ws->data;
        const int8_t *val = ws->table;
        for (o = 0; o < p->out_features; ++o) {
            const int32_t n = ws->counts[o];
            int32_t acc = bias ? bias[o] : 0, pos = -1;
            for (e = 0; e < n; ++e) {
                pos += (int32_t)gap[e] + 1;
                acc += ((int32_t)x[pos] + p->in_offset) * (int32_t)val[e];
            }
            gap += n;
            val += n;
            acc = mf_requant(acc, p->mult[o], p->shift[o]) + p->out_offset;
            y[o] = (int8_t)MF_CLAMP(acc, p->act_min, p->act_max);
        }
    }
}

void mf_fc_ws_s8(const mf_fc_params *p, const int8_t *in, const mf_wstore *w, const int32_t *bias,
                 int8_t *out) {
    switch (w->format) {
    case MF_WS_PACKED4: fc_packed4(p, in, w, bias, out); break;
    case MF_WS_PACKED2: fc_packed2(p, in, w, bias, out); break;
    case MF_WS_CODEBOOK4: fc_codebook4(p, in, w, bias, out); break;
    case MF_WS_CODEBOOK2: fc_codebook2(p, in, w, bias, out); break;
    default: fc_sparse(p, in, w, bias, out); break;
    }
}

/* The byte of channel o, weight kk in the DSP arrangement, relative to the channel's first. */
#define MF_ARR_AT(kk) (((kk) >> 2) * step + ((kk) & 3))

#define MF_DECODE_DENSE(GET)                                                 \
    for (o = 0, i = 0; o < out_c; ++o) {                                     \
        int8_t *d = dst + channel_base(o, og, lanes, block);                 \
        for (kk = 0; kk < k; ++kk, ++i) d[MF_ARR_AT(kk)] = (int8_t)GET(w, i); \
    }

/* Whole chunks (k a multiple of 4): 4 weights -> one word. */
#define MF_DECODE_CHUNKS(WORD)                                               \
    for (o = 0, i = 0; o < out_c; ++o) {                                     \
        int8_t *d = dst + channel_base(o, og, lanes, block);                 \
        for (kk = 0; kk < k; kk += 4, i += 4, d += step) {                   \
            const uint32_t v = WORD;                                         \
            memcpy(d, &v, 4);                                                \
        }                                                                    \
    }

static int32_t channel_base(int32_t o, int32_t og, int32_t lanes, int32_t block) {
    const int32_t g = o / og, oc = o - g * og, blocks = (og + lanes - 1) / lanes;
    return (g * blocks + oc / lanes) * block + (oc % lanes) * 4;
}

/* 4 nibbles (bits 0-15 of v) -> 4 sign-extended bytes: spread, then per byte (n ^ 8) - 8, computed
 * as ((n ^ 8) + 0x78) ^ 0x80 so that no byte borrows from its neighbour. */
static uint32_t nibbles_to_bytes(uint32_t v) {
    const uint32_t x = (v & 0xFu) | ((v & 0xF0u) << 4) | ((v & 0xF00u) << 8) | ((v & 0xF000u) << 12);
    return ((x ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
}

/* 4 crumbs (bits 0-7 of v) -> 4 sign-extended bytes, as above with (c ^ 2) - 2. */
static uint32_t crumbs_to_bytes(uint32_t v) {
    const uint32_t x = (v & 0x3u) | ((v & 0xCu) << 6) | ((v & 0x30u) << 12) | ((v & 0xC0u) << 18);
    return ((x ^ 0x02020202u) + 0x7E7E7E7Eu) ^ 0x80808080u;
}

static uint32_t lookup4(const int8_t *table, uint32_t idx) {
    return (uint32_t)(uint8_t)table[idx & 0xFu] | (uint32_t)(uint8_t)table[(idx >> 4) & 0xFu] << 8 |
           (uint32_t)(uint8_t)table[(idx >> 8) & 0xFu] << 16 | (uint32_t)(uint8_t)table[(idx >> 12) & 0xFu] << 24;
}

static uint32_t lookup2(const int8_t *table, uint32_t idx) {
    return (uint32_t)(uint8_t)table[idx & 0x3u] | (uint32_t)(uint8_t)table[(idx >> 2) & 0x3u] << 8 |
           (uint32_t)(uint8_t)table[(idx >> 4) & 0x3u] << 16 | (uint32_t)(uint8_t)table[(idx >> 6) & 0x3u] << 24;
}

#define MF_U16(d, i) ((uint32_t)(d)[(i) >> 1] | (uint32_t)(d)[((i) >> 1) + 1] << 8)

/* Decode into blocks of `block` bytes per `lanes` output channels of a group of og (see mf_wstore.h). */
static void decode(const mf_wstore *w, int8_t *dst, int32_t nbytes, int32_t out_c, int32_t k, int32_t og,
                   int32_t lanes, int32_t block) {
    const int32_t step = 4 * lanes;
    const int whole = (k & 3) == 0;
    int32_t o, kk, i;
    memset(dst, 0, (size_t)nbytes);
    switch (w->format) {
    case MF_WS_PACKED4:
        if (whole) {
            MF_DECODE_CHUNKS(nibbles_to_bytes(MF_U16(w->data, i)))
        } else {
            MF_DECODE_DENSE(MF_GET_PACKED4)
        }
        break;
    case MF_WS_PACKED2:
        if (whole) {
            MF_DECODE_CHUNKS(crumbs_to_bytes(w->data[i >> 2]))
        } else {
            MF_DECODE_DENSE(MF_GET_PACKED2)
        }
        break;
    case MF_WS_CODEBOOK4:
        if (whole) {
            MF_DECODE_CHUNKS(lookup4(w->table, MF_U16(w->data, i)))
        } else {
            MF_DECODE_DENSE(MF_GET_CODEBOOK4)
        }
        break;
    case MF_WS_CODEBOOK2:
        if (whole) {
            MF_DECODE_CHUNKS(lookup2(w->table, w->data[i >> 2]))
        } else {
            MF_DECODE_DENSE(MF_GET_CODEBOOK2)
        }
        break;
    default: {
        const uint8_t *gap = w->data;
        const int8_t *val = w->table;
        for (o = 0; o < out_c; ++o) {
            int8_t *d = dst + channel_base(o, og, lanes, block);
            const int32_t n = w->counts[o];
            for (i = 0, kk = -1; i < n; ++i) {
                kk += (int32_t)gap[i] + 1;
                d[MF_ARR_AT(kk)] = val[i];
            }
            gap += n;
            val += n;
        }
    }
    }
}

void mf_wdecode_arranged(const mf_wstore *w, int8_t *dst, int32_t nbytes, int32_t out_c, int32_t k,
                         int32_t og, int32_t lanes, int32_t chunks) {
    decode(w, dst, nbytes, out_c, k, og, lanes, chunks * 4 * lanes);
}

/* Depthwise: decode out_c x (k_h k_w) weights in IR order into tmp, then build the DSP kernel's
 * per-channel blocks (mf_dwconv_dsp_params.w): int16 weight pairs of each (virtual) row, times
 * scale, then the channel's MF_Q_WORDS (4) record words. */
void mf_wdecode_dwconv(const mf_wstore *w, const int32_t *records, uint32_t *dst, int8_t *tmp, int32_t out_c,
                       int32_t k_h, int32_t k_w, int32_t transposed, int32_t three, int32_t scale) {
    const int32_t k = k_h * k_w, vkh = transposed ? k_w : k_h, vkw = transposed ? k_h : k_w;
    int32_t o, r, c, j;
    decode(w, tmp, out_c * k, out_c, k, 1, 1, k); /* IR order: one channel per block of k bytes */
    for (o = 0; o < out_c; ++o) {
        const int8_t *t = tmp + o * k;
#define MF_DW_W(c) ((int32_t)(transposed ? t[(c) * k_w + r] : t[r * k_w + (c)]) * scale)
#define MF_DW_PAIR(a, b) (((uint32_t)(a) & 0xFFFFu) | (((uint32_t)(b) & 0xFFFFu) << 16))
        for (r = 0; r < vkh; ++r) {
            if (three) {
                *dst++ = MF_DW_PAIR(MF_DW_W(0), MF_DW_W(1));
                *dst++ = MF_DW_PAIR(MF_DW_W(1), MF_DW_W(2));
            } else {
                for (c = 0; c < vkw; c += 2) *dst++ = MF_DW_PAIR(MF_DW_W(c), c + 1 < vkw ? MF_DW_W(c + 1) : 0);
            }
        }
#undef MF_DW_W
#undef MF_DW_PAIR
        for (j = 0; j < 4; ++j) *dst++ = (uint32_t)records[4 * o + j];
    }
}
