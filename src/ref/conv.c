/*
 * ref/conv.c - plain-C reference of the short causal depthwise convolution, in double.
 */
#include "../internal.h"

#include <math.h>

dn_status dn_ref_conv_forward(const dn_conv_params *p) {
    const int64_t D = p->D, W = p->W, T = p->T;
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t d = 0; d < D; d++) {
            const float *s0 = p->initial_state ? p->initial_state + (b * D + d) * (W - 1) : NULL;
            /* input at time t (negative t reaches into the state: t = -1 is its last entry) */
#define XIN(s)                                                                                     \
    ((s) >= 0 ? (double)p->x[b * p->x_s.b + (s)*p->x_s.t + d]                                      \
              : (s0 ? (double)s0[W - 1 + (s)] : 0.0))
            double out_state[4];
            for (int64_t j = 0; j < W - 1; j++)
                out_state[j] = XIN(T - (W - 1) + j);
            for (int64_t t = 0; t < T; t++) {
                double acc = p->bias ? p->bias[d] : 0;
                for (int64_t j = 0; j < W; j++)
                    acc += (double)p->weight[d * W + j] * XIN(t - W + 1 + j);
                if (p->silu) acc = acc / (1 + exp(-acc));
                p->y[b * p->y_s.b + t * p->y_s.t + d] = (float)acc;
            }
#undef XIN
            if (p->final_state)
                for (int64_t j = 0; j < W - 1; j++)
                    p->final_state[(b * D + d) * (W - 1) + j] = (float)out_state[j];
        }
    return DN_OK;
}

/* Backward of the short convolution, in double. */
dn_status dn_ref_conv_backward(const dn_conv_bwd_params *bp) {
    const dn_conv_params *p = &bp->fwd;
    const int64_t D = p->D, W = p->W, T = p->T;
    double *da = dn_alloc(sizeof(double) * (size_t)(T + W));
    if (!da) return dn_fail(DN_ERR_ALLOC, "short_conv reference backward: out of memory");
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t d = 0; d < D; d++) {
            const float *s0 = p->initial_state ? p->initial_state + (b * D + d) * (W - 1) : NULL;
#define XIN(s)                                                                                     \
    ((s) >= 0 ? (double)p->x[b * p->x_s.b + (s)*p->x_s.t + d]                                      \
              : (s0 ? (double)s0[W - 1 + (s)] : 0.0))
            double dbias = 0;
            for (int64_t t = 0; t < T; t++) {
                double a = p->bias ? p->bias[d] : 0;
                for (int64_t j = 0; j < W; j++)
                    a += (double)p->weight[d * W + j] * XIN(t - W + 1 + j);
                double dy = bp->dy[b * bp->dy_s.b + t * bp->dy_s.t + d];
                if (p->silu) {
                    const double sg = 1 / (1 + exp(-a));
                    dy *= sg * (1 + a * (1 - sg));
                }
                da[t] = dy;
                dbias += dy;
                for (int64_t j = 0; j < W; j++)
                    bp->dweight[d * W + j] += (float)(dy * XIN(t - W + 1 + j));
            }
#undef XIN
            if (bp->dbias) bp->dbias[d] += (float)dbias;
            /* input s (negative: state entry W - 1 + s) gets sum_j da[s + W - 1 - j] w[j], plus the
             * final state's gradient where s is one of the last W - 1 inputs */
            for (int64_t s = -(W - 1); s < T; s++) {
                double acc = 0;
                for (int64_t j = 0; j < W; j++) {
                    const int64_t t = s + W - 1 - j;
                    if (t >= 0 && t < T) acc += da[t] * p->weight[d * W + j];
                }
                const int64_t fj = s - (T - (W - 1));
                if (bp->dfinal_state && fj >= 0)
                    acc += bp->dfinal_state[(b * D + d) * (W - 1) + fj];
                if (s >= 0)
                    bp->dx[b * bp->dx_s.b + s * bp->dx_s.t + d] = (float)acc;
                else if (bp->dinitial_state)
                    bp->dinitial_state[(b * D + d) * (W - 1) + W - 1 + s] = (float)acc;
            }
        }
    dn_free(da);
    return DN_OK;
}
