/* mcuforge compressed weight storage (mcuforge/ops/weight_storage.py): packed int4/int2
 * weights, codebooks with packed indices, and sparse (gap, value) entries, for conv2d
 * (depthwise included) and fully connected layers. The weights are the same int8 values as
 * in the integer reference; only their storage differs, so the results are bit-exact.
 *
 * Packed values and indices follow the IR order of the weights ([O][KH][KW][C/groups] or
 * [O][K]), 8 / bits per byte, the first in the lowest bits. Sparse: per output channel
 * counts[o] entries (gap, value): the position advances by gap + 1, the weight there is value. */
#ifndef MF_WSTORE_H
#define MF_WSTORE_H

#include <stdint.h>
#include "mf_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MF_WS_PACKED4 = 1, MF_WS_PACKED2 = 2, MF_WS_CODEBOOK4 = 3, MF_WS_CODEBOOK2 = 4, MF_WS_SPARSE = 5 };

typedef struct {
    int32_t format;         /* MF_WS_* */
    const uint8_t *data;    /* packed values or indices; sparse: the gaps */
    const int8_t *table;    /* codebook; sparse: the values; NULL for packed */
    const uint16_t *counts; /* sparse: entries per output channel; else NULL */
} mf_wstore;

/* The portable kernels of mf_conv.c / mf_dense.c with compressed weights: each weight is
 * decoded where it is used; the sparse forms visit the stored entries only (zeros skipped). */
void mf_conv2d_ws_s8(const mf_conv_params *p, const int8_t *in, const mf_wstore *w,
                     const int32_t *bias, int8_t *out);
void mf_fc_ws_s8(const mf_fc_params *p, const int8_t *in, const mf_wstore *w,
                 const int32_t *bias, int8_t *out);

/* Decode out_c x k weights into the DSP kernels' arrangement (mf_dsp_kernels.h): per group of
 * og output channels, blocks of `lanes` channels (zero channels pad the last block), per chunk of
 * 4 weights the lanes' 4 bytes; chunks per channel. dst (nbytes) is zeroed first. */
void mf_wdecode_arranged(const mf_wstore *w, int8_t *dst, int32_t nbytes, int32_t out_c, int32_t k,
                         int32_t og, int32_t lanes, int32_t chunks);

/* Depthwise conv on DSP cores: build the mf_dwconv_dsp_params.w blocks (mf_dsp_kernels.h) from the
 * compressed weights (decoded in IR order into tmp, out_c k_h k_w bytes) and the per-channel records
 * (4 words each): per output channel, the int16 pairs of each virtual row (the input's columns when
 * transposed; (w0, w1), (w1, w2) when three, else (w[2i], w[2i+1]) zero-padded), times scale. */
void mf_wdecode_dwconv(const mf_wstore *w, const int32_t *records, uint32_t *dst, int8_t *tmp, int32_t out_c,
                       int32_t k_h, int32_t k_w, int32_t transposed, int32_t three, int32_t scale);

#ifdef __cplusplus
}
#endif

#endif /* MF_WSTORE_H */
