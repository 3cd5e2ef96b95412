/* mcuforge portable int8 kernels: parameter structs and entry points.
 * Every kernel is bit-exact with the integer reference of its op in
 * mcuforge.ops (the specification). Tensors are channel-last, one sample. */
#ifndef MF_KERNELS_H
#define MF_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "mf_fixedpoint.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, groups;
    int32_t in_offset;  /* minus the input zero point */
    int32_t out_offset; /* the output zero point */
    int32_t act_min, act_max;
    const int32_t *mult, *shift; /* per output channel */
} mf_conv_params;

typedef struct {
    int32_t rows, in_features, out_features;
    int32_t in_offset, out_offset, act_min, act_max;
    const int32_t *mult, *shift; /* per output feature */
} mf_fc_params;

typedef struct {
    int32_t in_h, in_w, channels, out_h, out_w;
    int32_t k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    int32_t count_include_pad, zero_point, act_min, act_max;
} mf_pool_params;

typedef struct {
    int32_t shape[4];                 /* output shape, padded to rank 4 */
    int32_t a_stride[4], b_stride[4]; /* element strides; 0 where broadcast */
    int32_t a_offset, b_offset, out_offset;
    int32_t a_mult, a_shift, b_mult, b_shift, out_mult, out_shift, left_shift;
    int32_t act_min, act_max;
} mf_binary_params;

typedef struct {
    int32_t in_shape[4];
    int32_t perm[4];
} mf_transpose_params;

typedef struct {
    int32_t in_shape[4], out_shape[4]; /* padded to rank 4 */
    int32_t before[4];                 /* elements added before each dimension */
    int32_t value;                     /* the int8 padding value */
} mf_pad_params;

typedef struct {
    int32_t in_shape[4];
    int32_t reduce[4]; /* 1 where the axis is averaged */
    int32_t count, in_zp, out_zp, mult, shift; /* 1/count folded into mult, shift (ops/reduce.py) */
} mf_mean_params;

void mf_conv2d_s8(const mf_conv_params *p, const int8_t *in, const int8_t *w,
                  const int32_t *bias, int8_t *out);
void mf_fc_s8(const mf_fc_params *p, const int8_t *in, const int8_t *w,
              const int32_t *bias, int8_t *out);
void mf_avg_pool_s8(const mf_pool_params *p, const int8_t *in, int8_t *out);
void mf_max_pool_s8(const mf_pool_params *p, const int8_t *in, int8_t *out);
void mf_add_s8(const mf_binary_params *p, const int8_t *a, const int8_t *b, int8_t *out);
void mf_mul_s8(const mf_binary_params *p, const int8_t *a, const int8_t *b, int8_t *out);
void mf_lut_s8(const int8_t *in, int8_t *out, int32_t size, const int8_t *table);
void mf_softmax_s8(const int8_t *in, int8_t *out, int32_t rows, int32_t depth,
                   int32_t mult, int32_t left_shift, int32_t diff_min);
void mf_transpose_s8(const mf_transpose_params *p, const int8_t *in, int8_t *out);
void mf_concat_part_s8(const int8_t *in, int8_t *out, int32_t outer, int32_t inner,
                       int32_t out_inner, int32_t offset, int32_t requantize,
                       int32_t in_offset, int32_t out_offset, int32_t mult, int32_t shift);
void mf_pad_s8(const mf_pad_params *p, const int8_t *in, int8_t *out);
void mf_mean_s8(const mf_mean_params *p, const int8_t *in, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* MF_KERNELS_H */
