/* mcuforge int8 mean over axes with TFLite Micro's integer algorithm (see ops/reduce.py). */
#include "mf_kernels.h"

void mf_mean_s8(const mf_mean_params *p, const int8_t *in, int8_t *out) {
    int32_t ext[4], os[4], st[4], o[4], r[4], d;
    st[3] = 1;
    for (d = 2; d >= 0; --d) st[d] = st[d + 1] * p->in_shape[d + 1];
    for (d = 0; d < 4; ++d) {
        ext[d] = p->reduce[d] ? p->in_shape[d] : 1; /* extent summed over */
        os[d] = p->reduce[d] ? 1 : p->in_shape[d];  /* extent of the output */
    }
    for (o[0] = 0; o[0] < os[0]; ++o[0])
        for (o[1] = 0; o[1] < os[1]; ++o[1])
            for (o[2] = 0; o[2] < os[2]; ++o[2])
                for (o[3] = 0; o[3] < os[3]; ++o[3]) {
                    int32_t sum = 0, acc;
                    for (r[0] = 0; r[0] < ext[0]; ++r[0])
                        for (r[1] = 0; r[1] < ext[1]; ++r[1])
                            for (r[2] = 0; r[2] < ext[2]; ++r[2])
                                for (r[3] = 0; r[3] < ext[3]; ++r[3]) {
                                    int32_t off = 0;
                                    for (d = 0; d < 4; ++d) off += (o[d] + r[d]) * st[d];
                                    sum += in[off];
                                }
                    acc = mf_requant(sum - p->in_zp * p->count, p->mult, p->shift) + p->out_zp;
                    *out++ = mf_sat8(acc);
                }
}
