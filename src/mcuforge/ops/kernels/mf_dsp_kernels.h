/* mcuforge fast int8 kernels for cores with the DSP extension (Cortex-M4/M7/M33/M55):
 * parameter structs and entry points. Bit-exact with the integer reference of each op,
 * like the portable kernels (mf_kernels.h); they run, emulated, on any C99 host too.
 *
 * The code generator (mcuforge/ops/dsp.py) folds the input zero point into the bias
 * (bias' = bias - zp_x sum(w)), packs the weights in the order the kernels read them
 * and chooses each layer's variant: _fast (SMMLAR requantization, proved exact for the
 * layer's accumulator range) or _exact (TFLite's MultiplyByQuantizedMultiplier), and
 * _clamp where the fused activation narrows [-128, 127]. */
#ifndef MF_DSP_KERNELS_H
#define MF_DSP_KERNELS_H

#include <stdint.h>
#include "mf_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Convolution with groups (not depthwise): im2col of three output pixels into int16 columns,
 * 3x2-blocked SMLAD matrix product. Weights: per group, per pair of output channels, per
 * chunk of 4 column elements: the 4 int8 weights of each channel (a zero channel pads an odd
 * count). Scratch: 24 * chunks bytes, plus 4 * chunks when in_c / groups is not a multiple of 4. */
typedef struct {
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, groups;
    int32_t pad_value;    /* the input zero point: what padded positions read */
    int32_t chunks;       /* ceil(k_h k_w in_c / groups / 8) * 2: always even */
    int32_t act_min, act_max;
    const int32_t *q;     /* per group, per pair of output channels: bias0, bias1, (mult, a, b) x 2 */
    const uint32_t *w;    /* packed weights */
} mf_conv_dsp_params;

void mf_conv_dsp_s8_fast(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_conv_dsp_s8_fast_clamp(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_conv_dsp_s8_exact(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_conv_dsp_s8_exact_clamp(const mf_conv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);

/* Depthwise convolution (groups = in_c, depth multiplier m). Per input channel, the plane
 * (the part of the padded input the outputs read) is widened to int16 in the scratch
 * buffer; pairs of adjacent taps are then one word, multiplied with SMLAD against
 * (w[kx], w[kx+1]) pairs. 3-wide kernels at stride 1 along the row compute two outputs per
 * pass. The kernel sees a possibly transposed geometry ("virtual" rows and columns, chosen
 * by the generator so that rows are long and 3-wide): in_sy, in_sx and out_sy, out_sx are
 * the element strides of a virtual row and column step in the NHWC input and output.
 * Weights, per output channel, followed by its MF_Q_WORDS record: k_h rows of
 * ceil(k_w / 2) words (w[2i], w[2i+1]), or for the 3-wide form k_h rows of (w0, w1),
 * (w1, w2); doubled (2 w) in the fast variants, whose bias is doubled too.
 * Scratch: two planes, 4 * plane_h * plane_w + 8 bytes (channels are widened in pairs). */
typedef struct {
    int32_t in_h, in_w, in_sy, in_sx, in_c, mult;
    int32_t out_h, out_w, out_sy, out_sx;
    int32_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int32_t pad_value;          /* the input zero point */
    int32_t plane_h, plane_w;   /* plane_w even */
    int32_t three;              /* 1: the 3-wide, stride-1 form */
    int32_t act_min, act_max;
    const uint32_t *w;          /* per output channel: packed weights, then its record */
} mf_dwconv_dsp_params;

void mf_dwconv_dsp_s8_fast(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_dwconv_dsp_s8_fast_clamp(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out,
                                 uint32_t *scratch);
void mf_dwconv_dsp_s8_exact(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_dwconv_dsp_s8_exact_clamp(const mf_dwconv_dsp_params *p, const int8_t *in, int8_t *out,
                                  uint32_t *scratch);

/* Fully connected: each input row is widened once to int16 chunks (as the conv columns);
 * 4 output features per pass share the input loads. Weights: per group of 4 output
 * features (zero features pad the last group), per chunk of 4 inputs, the 4 features'
 * int8 words. Scratch: 8 * chunks bytes. */
typedef struct {
    int32_t rows, in_features, out_features;
    int32_t chunks;             /* ceil(in_features / 8) * 2: always even */
    int32_t act_min, act_max;
    const int32_t *q;           /* per group of 4 output features: 4 biases, (mult, a, b) x 4 */
    const uint32_t *w;          /* packed weights */
} mf_fc_dsp_params;

void mf_fc_dsp_s8_fast(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_fc_dsp_s8_fast_clamp(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_fc_dsp_s8_exact(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);
void mf_fc_dsp_s8_exact_clamp(const mf_fc_dsp_params *p, const int8_t *in, int8_t *out, uint32_t *scratch);

/* Elementwise add of two int8 tensors of the same shape (TFLite ADD). Each input's rescaling
 * MBQM((x - zp) << 20, M, shift) takes only 256 values: the generator tabulates twice it
 * (exactly, with the integer reference's own arithmetic), so an element costs two table
 * loads, an add and the output requantization. The output may be one of the inputs. */
typedef struct {
    int32_t size;
    const int32_t *table_a, *table_b; /* the entries for 0 of 256-entry tables (-128..127) */
    int32_t mult, a, b;               /* output requantization: C, e (fast) or shift, zp (exact) */
    int32_t act_min, act_max;
} mf_add_dsp_params;

void mf_add_dsp_s8_fast(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out);
void mf_add_dsp_s8_fast_clamp(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out);
void mf_add_dsp_s8_exact(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out);
void mf_add_dsp_s8_exact_clamp(const mf_add_dsp_params *p, const int8_t *x, const int8_t *y, int8_t *out);

/* Average and max pooling (mf_pool_params of mf_kernels.h): four channels per word, window
 * sums in int16 lanes (SXTAB16, flushed to int32 every 256 elements), maxima with SSUB8/SEL. */
void mf_avg_pool_dsp_s8(const mf_pool_params *p, const int8_t *in, int8_t *out);
void mf_max_pool_dsp_s8(const mf_pool_params *p, const int8_t *in, int8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* MF_DSP_KERNELS_H */
