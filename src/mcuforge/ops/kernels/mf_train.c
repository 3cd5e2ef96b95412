/* mcuforge on-device training kernels: see mf_train.h and docs/training.md.
 * Right shifts of negative values are arithmetic (as the rest of mcuforge's
 * kernels assume: GCC, Clang and Arm compilers define them so); left shifts are
 * only applied to non-negative values or done as multiplications. */
#include <string.h>

#include "mf_train.h"

#define MF_T_W_MAX 127
#define MF_T_E_MAX 127

static int32_t mf_t_sat32(int64_t v) {
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

/* round_half_up(v m 2^(s - 31)), saturated to int32 */
int32_t mf_t_mulshift(int32_t v, int32_t m, int32_t s) {
    int64_t p = (int64_t)v * (int64_t)m;
    const int32_t r = 31 - s;
    if (r > 0) {
        if (r >= 63) return 0;
        p = (p + ((int64_t)1 << (r - 1))) >> r;
    } else if (r < 0) {
        const int32_t l = -r;
        int64_t limit;
        if (p == 0) return 0;
        if (l >= 32) return p > 0 ? INT32_MAX : INT32_MIN;
        limit = (int64_t)INT32_MAX >> l;
        if (p > limit) return INT32_MAX;
        if (p < -limit) return INT32_MIN;
        p = p * ((int64_t)1 << l);
    }
    return mf_t_sat32(p);
}

static int32_t mf_t_bitlen(uint32_t v) {
#if defined(__GNUC__)
    return v ? 32 - __builtin_clz(v) : 0;
#else
    int32_t n = 0;
    while (v) { ++n; v >>= 1; }
    return n;
#endif
}

/* log2(v) in Q8 for v > 0: bit length and the next 8 bits */
int32_t mf_t_ilog2_q8(int32_t v) {
    int32_t b, frac;
    if (v <= 0) return MF_T_NEG;
    b = mf_t_bitlen((uint32_t)v) - 1;
    frac = b >= 8 ? (v >> (b - 8)) & 255 : (v << (8 - b)) & 255;
    return b * 256 + frac;
}

/* lowbias32 (Chris Wellons): xorshift-multiply integer hash */
uint32_t mf_t_hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

int32_t mf_t_argmax(const int8_t *y, int32_t n) {
    int32_t i, best = 0;
    for (i = 1; i < n; ++i) {
        if (y[i] > y[best]) best = i;
    }
    return best;
}

/* int32 accumulator -> int8 error; returns k (the error's real value is the accumulator's x 2^k) */
int32_t mf_t_normalize(const int32_t *acc, int8_t *e, int32_t n) {
    uint32_t m = 0;
    int32_t i, k;
    for (i = 0; i < n; ++i) {
        const int32_t a = acc[i];
        const uint32_t ua = a < 0 ? 0u - (uint32_t)a : (uint32_t)a;
        if (ua > m) m = ua;
    }
    k = mf_t_bitlen(m) - 7;
    if (k < 0) k = 0;
    if (k == 0 ? m > MF_T_E_MAX : ((m >> k) + (((m >> (k - 1)) & 1u) ? 1u : 0u)) > MF_T_E_MAX) ++k;
    for (i = 0; i < n; ++i) e[i] = (int8_t)mf_rdbpot(acc[i], k);
    return k;
}

/* errors pass where lo < y < hi; per-channel sums of |e| and e (optional) */
void mf_t_mask(int8_t *e, const int8_t *y, int32_t positions, int32_t channels, int32_t lo, int32_t hi,
               int32_t pass_lo, int32_t pass_hi, int32_t *abs_sum, int32_t *sum) {
    int32_t p, c;
    if (abs_sum) {
        memset(abs_sum, 0, (size_t)channels * sizeof(int32_t));
        memset(sum, 0, (size_t)channels * sizeof(int32_t));
    }
    for (p = 0; p < positions; ++p) {
        int8_t *ep = e + p * channels;
        const int8_t *yp = y + p * channels;
        for (c = 0; c < channels; ++c) {
            int32_t v = ep[c];
            if ((yp[c] <= lo && !(pass_lo && v < 0)) || (yp[c] >= hi && !(pass_hi && v > 0))) {
                v = 0;
                ep[c] = 0;
            }
            if (abs_sum) {
                abs_sum[c] += v < 0 ? -v : v;
                sum[c] += v;
            }
        }
    }
}

/* multi-consumer tensors: acc = 256 e (first), then acc += mulshift(e, m, s), saturating */
void mf_t_merge(int32_t *acc, const int8_t *e, int32_t n, int32_t m, int32_t s, int32_t first) {
    int32_t i;
    for (i = 0; i < n; ++i) {
        if (first) acc[i] = (int32_t)e[i] * 256;
        else acc[i] = mf_t_sat32((int64_t)acc[i] + mf_t_mulshift(e[i], m, s));
    }
}

/* softmax cross-entropy: (p - onehot) in 1/256 units; prob is the int8 softmax (zero point -128) */
void mf_t_ce_grad(const int8_t *prob, int32_t n, int32_t label, int32_t *acc) {
    int32_t i;
    for (i = 0; i < n; ++i) acc[i] = (int32_t)prob[i] + 128 - (i == label ? 256 : 0);
}

void mf_t_mse_grad(const int8_t *y, const int8_t *target, int32_t n, int32_t *acc) {
    int32_t i;
    for (i = 0; i < n; ++i) acc[i] = (int32_t)y[i] - (int32_t)target[i];
}

/* Q15 ratios of the channels' current weight scales to the largest: r0[o] / 2^(amax - adapt[o]) */
int32_t mf_t_reff(const int32_t *r0, const int32_t *adapt, int32_t O, int32_t *reff) {
    int32_t o, amax = 0;
    for (o = 0; o < O; ++o) {
        if (adapt[o] > amax) amax = adapt[o];
    }
    for (o = 0; o < O; ++o) reff[o] = mf_rdbpot(r0[o], amax - adapt[o]);
    return amax;
}

/* The error of the layer's input: acc[i] = sum over (p, o, tap) reading input i of e'[p][o] w[o][tap][c],
 * e' = floor((e reff[o] + 2^14) / 2^15). Outputs with a zero error are skipped. */
void mf_t_input_grad(const mf_t_geom *g, const int8_t *e, const int8_t *w, const int32_t *reff, int32_t *acc) {
    const int32_t cg = g->in_c / g->groups, og = g->out_c / g->groups;
    const int32_t K = g->k_h * g->k_w * cg;
    int32_t oy, ox, o, ky, kx, c;
    memset(acc, 0, (size_t)(g->in_h * g->in_w * g->in_c) * sizeof(int32_t));
    for (oy = 0; oy < g->out_h; ++oy) {
        for (ox = 0; ox < g->out_w; ++ox) {
            const int8_t *ep = e + (oy * g->out_w + ox) * g->out_c;
            for (o = 0; o < g->out_c; ++o) {
                const int32_t ev = ((int32_t)ep[o] * reff[o] + (1 << 14)) >> 15;
                const int8_t *wo;
                const int32_t cbase = (o / og) * cg;
                if (ev == 0) continue;
                wo = w + o * K;
                for (ky = 0; ky < g->k_h; ++ky) {
                    const int32_t iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
                    if (iy < 0 || iy >= g->in_h) continue;
                    for (kx = 0; kx < g->k_w; ++kx) {
                        const int32_t ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                        const int8_t *wk;
                        int32_t *a;
                        if (ix < 0 || ix >= g->in_w) continue;
                        wk = wo + (ky * g->k_w + kx) * cg;
                        a = acc + (iy * g->in_w + ix) * g->in_c + cbase;
                        for (c = 0; c < cg; ++c) a[c] += ev * (int32_t)wk[c];
                    }
                }
            }
        }
    }
}

/* The weight gradient of channel o into row[K]: sum_p e[p][o] (x[p at tap] - zp_x). */
static void mf_t_weight_grad(const mf_t_geom *g, const int8_t *e, const int8_t *x, int32_t o, int32_t *row) {
    const int32_t cg = g->in_c / g->groups, og = g->out_c / g->groups;
    const int32_t K = g->k_h * g->k_w * cg;
    const int32_t cbase = (o / og) * cg;
    int32_t oy, ox, ky, kx, c;
    memset(row, 0, (size_t)K * sizeof(int32_t));
    for (oy = 0; oy < g->out_h; ++oy) {
        for (ox = 0; ox < g->out_w; ++ox) {
            const int32_t ev = e[(oy * g->out_w + ox) * g->out_c + o];
            if (ev == 0) continue;
            for (ky = 0; ky < g->k_h; ++ky) {
                const int32_t iy = oy * g->stride_h - g->pad_top + ky * g->dil_h;
                if (iy < 0 || iy >= g->in_h) continue;
                if (g->dil_w == 1 && g->groups == 1) { /* the row's valid taps are one contiguous run */
                    const int32_t ix0 = ox * g->stride_w - g->pad_left;
                    const int32_t k0 = ix0 < 0 ? -ix0 : 0;
                    const int32_t k1 = ix0 + g->k_w > g->in_w ? g->in_w - ix0 : g->k_w;
                    const int32_t n = (k1 - k0) * cg;
                    const int8_t *xs = x + (iy * g->in_w + ix0 + k0) * g->in_c;
                    int32_t *r = row + (ky * g->k_w + k0) * cg;
                    const int32_t off = g->in_offset;
                    for (c = 0; c < n; ++c) r[c] += ev * ((int32_t)xs[c] + off);
                    continue;
                }
                for (kx = 0; kx < g->k_w; ++kx) {
                    const int32_t ix = ox * g->stride_w - g->pad_left + kx * g->dil_w;
                    const int8_t *xs;
                    int32_t *r;
                    if (ix < 0 || ix >= g->in_w) continue;
                    xs = x + (iy * g->in_w + ix) * g->in_c + cbase;
                    r = row + (ky * g->k_w + kx) * cg;
                    for (c = 0; c < cg; ++c) r[c] += ev * ((int32_t)xs[c] + g->in_offset);
                }
            }
        }
    }
}

static int32_t mf_t_momentum(int32_t *v, int32_t d, int32_t beta_q15) {
    const int64_t decayed = ((int64_t)(*v) * beta_q15 + (1 << 14)) >> 15;
    *v = mf_t_sat32(decayed + d);
    return *v;
}

/* SGD step of the selected channels (sel bits MF_T_SEL_W, MF_T_SEL_B), from the masked output error e;
 * xexp is the error's run-time exponent plus the schedule's; row is K int32 of scratch. Weights are
 * clipped to [-127, 127]; once adapt_after updates of a channel were clipped, its weight scale doubles
 * (weights, bias, momentum halved; shift + 1). */
void mf_t_update(const mf_t_geom *g, const mf_t_layer *L, const mf_t_opts *opt, const int8_t *e, const int8_t *x,
                 const uint8_t *sel, const int32_t *abs_sum, const int32_t *sum, int32_t xexp, uint32_t step,
                 int32_t *row) {
    const int32_t K = L->K;
    const uint32_t base = opt->seed + step * 0x9E3779B9u;
    int32_t o, k;
    for (o = 0; o < L->O; ++o) {
        const int32_t sh = xexp - L->adapt[o];
        int32_t n = 0;
        if ((sel[o] & MF_T_SEL_W) && (abs_sum[o] != 0 || L->vw)) {
            int8_t *w = L->w + o * K;
            int32_t *vw = L->vw ? L->vw + o * K : 0;
            int32_t cap, clipped = 0;
            uint32_t m = 0;
            mf_t_weight_grad(g, e, x, o, row);
            for (k = 0; k < K; ++k) {
                int32_t d, q, w32;
                uint32_t r;
                if (row[k] == 0 && !vw) { /* no step: the weight stays (q = floor(r / 2^F) = 0) */
                    row[k] = w[k];
                    continue;
                }
                d = mf_t_mulshift(row[k], L->um[o], L->us[o] + sh + MF_T_FRAC);
                if (vw) d = mf_t_momentum(&vw[k], d, opt->beta_q15);
                if (d == 0) {
                    row[k] = w[k];
                    continue;
                }
                if (opt->stochastic) {
                    const uint32_t idx = L->wbase + (uint32_t)(o * K + k);
                    r = mf_t_hash32(base + idx * 0x85EBCA6Bu) >> (32 - MF_T_FRAC);
                } else {
                    r = 1u << (MF_T_FRAC - 1);
                }
                q = (int32_t)(((int64_t)d + (int64_t)r) >> MF_T_FRAC);
                w32 = (int32_t)w[k] - q;
                row[k] = w32;
                if (w32 > MF_T_W_MAX || w32 < -MF_T_W_MAX) ++clipped;
                if ((uint32_t)(w32 < 0 ? -w32 : w32) > m) m = (uint32_t)(w32 < 0 ? -w32 : w32);
            }
            /* hysteresis: the scale doubles once adapt_after updates of the channel were clipped */
            clipped = L->sat[o] + clipped < (1 << 30) ? L->sat[o] + clipped : (1 << 30);
            cap = clipped >= L->adapt_after ? L->max_adapt - L->adapt[o] : 0;
            while (n < cap && mf_rdbpot((int32_t)m, n) > MF_T_W_MAX) ++n;
            L->sat[o] = n > 0 ? 0 : clipped;
            for (k = 0; k < K; ++k) {
                const int32_t v = mf_rdbpot(row[k], n);
                w[k] = (int8_t)MF_CLAMP(v, -MF_T_W_MAX, MF_T_W_MAX);
                if (vw) vw[k] = mf_rdbpot(vw[k], n);
            }
        }
        if (L->bias && (sel[o] & MF_T_SEL_B)) {
            int32_t db = mf_t_mulshift(sum[o], L->vm[o], L->vs[o] + sh);
            int64_t b;
            if (L->vb) db = mf_t_momentum(&L->vb[o], db, opt->beta_q15);
            b = (int64_t)L->bias[o] - db;
            L->bias[o] = (int32_t)(b > L->blim ? L->blim : (b < -L->blim ? -L->blim : b));
        }
        if (n) {
            if (L->bias) L->bias[o] = mf_rdbpot(L->bias[o], n);
            if (L->vb) L->vb[o] = mf_rdbpot(L->vb[o], n);
            L->adapt[o] += n;
            L->shift[o] += n;
        }
    }
}

/* index into x of the first maximum of output (oy, ox)'s window in channel c (scan order ky, kx) */
static int32_t mf_t_window_argmax(const mf_pool_params *p, const int8_t *x, int32_t oy, int32_t ox, int32_t c) {
    int32_t best = -1000, at = 0, ky, kx;
    for (ky = 0; ky < p->k_h; ++ky) {
        const int32_t iy = oy * p->stride_h - p->pad_top + ky;
        if (iy < 0 || iy >= p->in_h) continue;
        for (kx = 0; kx < p->k_w; ++kx) {
            const int32_t ix = ox * p->stride_w - p->pad_left + kx;
            int32_t i;
            if (ix < 0 || ix >= p->in_w) continue;
            i = (iy * p->in_w + ix) * p->channels + c;
            if (x[i] > best) {
                best = x[i];
                at = i;
            }
        }
    }
    return at;
}

/* each output's error goes to the first maximum of its window (scan order ky, kx) */
void mf_t_maxpool_backward(const mf_pool_params *p, const int8_t *x, const int8_t *e, int32_t *acc) {
    int32_t oy, ox, c;
    memset(acc, 0, (size_t)(p->in_h * p->in_w * p->channels) * sizeof(int32_t));
    for (oy = 0; oy < p->out_h; ++oy)
        for (ox = 0; ox < p->out_w; ++ox)
            for (c = 0; c < p->channels; ++c)
                acc[mf_t_window_argmax(p, x, oy, ox, c)] += e[(oy * p->out_w + ox) * p->channels + c];
}

/* every input receives the errors of the windows that contain it (1/count is in the static scale) */
void mf_t_avgpool_backward(const mf_pool_params *p, const int8_t *e, int32_t *acc) {
    int32_t oy, ox, c, ky, kx;
    memset(acc, 0, (size_t)(p->in_h * p->in_w * p->channels) * sizeof(int32_t));
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            const int8_t *ep = e + (oy * p->out_w + ox) * p->channels;
            for (ky = 0; ky < p->k_h; ++ky) {
                const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                if (iy < 0 || iy >= p->in_h) continue;
                for (kx = 0; kx < p->k_w; ++kx) {
                    const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                    int32_t *a;
                    if (ix < 0 || ix >= p->in_w) continue;
                    a = acc + (iy * p->in_w + ix) * p->channels;
                    for (c = 0; c < p->channels; ++c) a[c] += ep[c];
                }
            }
        }
    }
}

int32_t mf_t_abs_sum(const int8_t *x, int32_t n, int32_t offset) {
    int32_t i, s = 0;
    for (i = 0; i < n; ++i) {
        const int32_t v = (int32_t)x[i] + offset;
        s += v < 0 ? -v : v;
    }
    return s;
}

/* Q8 log2 of each channel's first-order loss decrease per MAC of its update,
 * 2 (log2 sum_p |e| + log2 sum |x - zp| + x_y) + imp_c; returns the largest, clamped */
int32_t mf_t_importance(const int32_t *abs_sum, int32_t O, int32_t sx, const int32_t *imp_c, int32_t xexp,
                        int32_t *imp) {
    int32_t o, best = MF_T_NEG;
    const int32_t lsx = mf_t_ilog2_q8(sx);
    for (o = 0; o < O; ++o) {
        imp[o] = (abs_sum[o] > 0 && sx > 0) ? 2 * (mf_t_ilog2_q8(abs_sum[o]) + lsx + 256 * xexp) + imp_c[o] : MF_T_NEG;
        if (imp[o] > best) best = imp[o];
    }
    return MF_CLAMP(best, -MF_T_EST_CLAMP, MF_T_EST_CLAMP);
}

/* sel[o] = MF_T_SEL_W for the n most important channels (ties: lower index), | MF_T_SEL_B for
 * those (or for all channels when bias_all) */
void mf_t_select(const int32_t *imp, int32_t O, int32_t n, uint8_t *sel, int32_t bias_all) {
    int32_t o, i;
    for (o = 0; o < O; ++o) sel[o] = (uint8_t)(n >= O ? MF_T_SEL_W : 0);
    for (i = 0; i < n && n < O; ++i) {
        int32_t best = -1;
        for (o = 0; o < O; ++o) {
            if (!sel[o] && (best < 0 || imp[o] > imp[best])) best = o;
        }
        sel[best] = MF_T_SEL_W;
    }
    for (o = 0; o < O; ++o) {
        if (bias_all || sel[o]) sel[o] |= MF_T_SEL_B;
    }
}

/* Loss-gated steps: whether this sample gets a backward pass (returns 1) or skips it. The L1 norm of
 * its loss gradient g (log2, Q16) reaches the threshold state[0] or not; the threshold then rises by up or
 * falls by down (not below 0), settling where about budget / step_budget of the samples reach it.
 * state[1] saves budget MACs per step (at most cap); a sample that reached the threshold gets a step
 * when the saved budget covers step_budget. */
int32_t mf_t_gate(const int32_t *g, int32_t n, int32_t *state, int32_t budget, int32_t step_budget, int32_t cap,
                  int32_t up, int32_t down) {
    int64_t s = 0;
    int32_t i, want;
    for (i = 0; i < n; ++i) s += g[i] < 0 ? -(int64_t)g[i] : (int64_t)g[i];
    if (s > INT32_MAX) s = INT32_MAX;
    want = s > 0 && mf_t_ilog2_q8((int32_t)s) * 256 >= state[0];
    state[0] = want ? state[0] + up : MF_MAX(state[0] - down, 0);
    state[1] = MF_MIN(state[1] + budget, cap);
    if (!want || state[1] < step_budget) return 0;
    state[1] -= step_budget;
    return 1;
}

/* Fractional knapsack over the layers (0 = nearest the loss) in order of importance estimate minus the
 * static penalty of the propagation to reach them: each gets as many channels as the MAC budget has left
 * after the error propagation down to the deepest layer chosen so far. Returns the deepest visited layer;
 * taken[j] = channels of layer j to update. */
int32_t mf_t_plan(int32_t J, const int32_t *est, const int32_t *pen, const int32_t *prop, const int32_t *cwc,
                  const int32_t *O, int32_t budget, int32_t *taken, int32_t *order) {
    int32_t i, j, deep = 0, wsum = 0;
    for (i = 0; i < J; ++i) {
        int32_t at = i;
        while (at > 0 && est[order[at - 1]] - pen[order[at - 1]] < est[i] - pen[i]) {
            order[at] = order[at - 1];
            --at;
        }
        order[at] = i;
        taken[i] = 0;
    }
    for (i = 0; i < J; ++i) {
        int32_t nd, rem, n;
        j = order[i];
        nd = deep > j ? deep : j;
        rem = budget - prop[nd] - wsum;
        if (rem <= 0) continue;
        n = rem / cwc[j];
        if (n > O[j]) n = O[j];
        if (n >= 1) {
            taken[j] = n;
            deep = nd;
            wsum += n * cwc[j];
        }
    }
    return deep;
}

/* non-overlapping windows: the int8 error goes to the first maximum of its window, zeros elsewhere */
void mf_t_maxpool_backward8(const mf_pool_params *p, const int8_t *x, const int8_t *e, int8_t *ex) {
    int32_t oy, ox, c;
    memset(ex, 0, (size_t)(p->in_h * p->in_w * p->channels));
    for (oy = 0; oy < p->out_h; ++oy)
        for (ox = 0; ox < p->out_w; ++ox)
            for (c = 0; c < p->channels; ++c)
                ex[mf_t_window_argmax(p, x, oy, ox, c)] = e[(oy * p->out_w + ox) * p->channels + c];
}

/* non-overlapping windows: every input receives its window's error (zeros outside every window) */
void mf_t_avgpool_backward8(const mf_pool_params *p, const int8_t *e, int8_t *ex) {
    int32_t oy, ox, ky, kx;
    memset(ex, 0, (size_t)(p->in_h * p->in_w * p->channels));
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            const int8_t *ep = e + (oy * p->out_w + ox) * p->channels;
            for (ky = 0; ky < p->k_h; ++ky) {
                const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                if (iy < 0 || iy >= p->in_h) continue;
                for (kx = 0; kx < p->k_w; ++kx) {
                    const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                    if (ix < 0 || ix >= p->in_w) continue;
                    memcpy(ex + (iy * p->in_w + ix) * p->channels, ep, (size_t)p->channels);
                }
            }
        }
    }
}
