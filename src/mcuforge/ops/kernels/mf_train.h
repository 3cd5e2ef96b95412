/* mcuforge on-device training kernels (fully quantized training, FQT).
 * Bit-exact with the numpy twin mcuforge.train.fqt / mcuforge.train.fixed (the
 * specification; equations in docs/training.md). Integer arithmetic only: no
 * floating point, no heap; every int32 sum is bounded by the code generator or
 * saturated, so no signed overflow can occur. */
#ifndef MF_TRAIN_H
#define MF_TRAIN_H

#include <stdint.h>
#include "mf_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MF_T_FRAC 16          /* fractional bits of a weight step before rounding */
#define MF_T_NEG (-(1 << 30)) /* log2 importance of a zero signal */
#define MF_T_EST_CLAMP (1 << 20)

/* A conv2d or fully connected layer as a convolution over [H][W][C] (fc: H = rows, W = 1, 1x1). */
typedef struct {
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, groups;
    int32_t in_offset; /* minus the input zero point */
} mf_t_geom;

/* A trainable layer: its parameters in RAM and the static per-channel constants. */
typedef struct {
    int8_t *w;       /* [O][K] weights (the forward kernel reads them) */
    int32_t *bias;   /* [O] or NULL */
    int32_t *shift;  /* [O] requantization shifts (the forward kernel reads them) */
    int32_t *adapt;  /* [O] doublings of each channel's weight scale */
    int32_t *sat;    /* [O] clipped weight updates since the channel's last doubling */
    int32_t *vw;     /* [O][K] weight momentum (weight LSB x 2^MF_T_FRAC), or NULL */
    int32_t *vb;     /* [O] bias momentum, or NULL */
    const int32_t *um, *us; /* weight step multiplier lr c s_x / s_w0[o] = um 2^(us - 31) */
    const int32_t *vm, *vs; /* bias step multiplier lr c / (s_x s_w0[o]) */
    const int32_t *r0;      /* Q15 s_w0[o] / max s_w0 */
    const int32_t *imp_c;   /* static part of the importance, log2 Q8 */
    int32_t K, O, blim, max_adapt, adapt_after;
    uint32_t wbase;         /* index of the first weight in the global numbering (random draws) */
} mf_t_layer;

/* Forward pass of a trainable conv2d (groups = 1) or fully connected layer on DSP-extension cores
 * (mf_train_dsp.c): weights [O][K] in RAM, per-channel shifts in RAM (they change when a channel's
 * weight scale doubles). */
typedef struct {
    int32_t in_h, in_w, in_c, out_h, out_w, out_c;
    int32_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int32_t in_zp, out_zp, act_min, act_max;
    const int32_t *mult, *shift;
} mf_t_fwd_params;

void mf_t_conv_fwd_dsp(const mf_t_fwd_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                       int8_t *out, uint32_t *col);

/* Options of the weight update. */
typedef struct {
    uint32_t seed;
    int32_t stochastic; /* 1: stochastic rounding, 0: nearest */
    int32_t beta_q15;   /* momentum, Q15 */
} mf_t_opts;

/* sel[o] bits for mf_t_update */
#define MF_T_SEL_W 1
#define MF_T_SEL_B 2

int32_t mf_t_mulshift(int32_t v, int32_t m, int32_t s);
int32_t mf_t_ilog2_q8(int32_t v);
uint32_t mf_t_hash32(uint32_t x);
int32_t mf_t_argmax(const int8_t *y, int32_t n);

int32_t mf_t_normalize(const int32_t *acc, int8_t *e, int32_t n);
/* zero the error where the output sat at a clamp bound; pass_lo/pass_hi: the bound is only int8
 * saturation, so an error pointing back into the range (e < 0 at lo, e > 0 at hi) passes */
void mf_t_mask(int8_t *e, const int8_t *y, int32_t positions, int32_t channels, int32_t lo, int32_t hi,
               int32_t pass_lo, int32_t pass_hi, int32_t *abs_sum, int32_t *sum);
void mf_t_merge(int32_t *acc, const int8_t *e, int32_t n, int32_t m, int32_t s, int32_t first);
void mf_t_ce_grad(const int8_t *prob, int32_t n, int32_t label, int32_t *acc);
void mf_t_mse_grad(const int8_t *y, const int8_t *target, int32_t n, int32_t *acc);

int32_t mf_t_reff(const int32_t *r0, const int32_t *adapt, int32_t O, int32_t *reff);
void mf_t_input_grad(const mf_t_geom *g, const int8_t *e, const int8_t *w, const int32_t *reff, int32_t *acc);
void mf_t_update(const mf_t_geom *g, const mf_t_layer *L, const mf_t_opts *opt, const int8_t *e, const int8_t *x,
                 const uint8_t *sel, const int32_t *abs_sum, const int32_t *sum, int32_t xexp, uint32_t step,
                 int32_t *row);
void mf_t_maxpool_backward(const mf_pool_params *p, const int8_t *x, const int8_t *e, int32_t *acc);
void mf_t_avgpool_backward(const mf_pool_params *p, const int8_t *e, int32_t *acc);
void mf_t_maxpool_backward8(const mf_pool_params *p, const int8_t *x, const int8_t *e, int8_t *ex);
void mf_t_avgpool_backward8(const mf_pool_params *p, const int8_t *e, int8_t *ex);

int32_t mf_t_abs_sum(const int8_t *x, int32_t n, int32_t offset);
int32_t mf_t_importance(const int32_t *abs_sum, int32_t O, int32_t sx, const int32_t *imp_c, int32_t xexp,
                        int32_t *imp);
void mf_t_select(const int32_t *imp, int32_t O, int32_t n, uint8_t *sel, int32_t bias_all);
int32_t mf_t_gate(const int32_t *g, int32_t n, int32_t *state, int32_t budget, int32_t step_budget, int32_t cap,
                  int32_t up, int32_t down);
int32_t mf_t_plan(int32_t J, const int32_t *est, const int32_t *pen, const int32_t *prop, const int32_t *cwc,
                  const int32_t *O, int32_t budget, int32_t *taken, int32_t *order);

#ifdef __cplusplus
}
#endif

#endif /* MF_TRAIN_H */
