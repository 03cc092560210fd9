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
#define XIN(s) ((s) >= 0 ? (double)p->x[b * p->x_s.b + (s)*p->x_s.t + d] \
                         : (s0 ? (double)s0[W - 1 + (s)] : 0.0))
            double out_state[4];
            for (int64_t j = 0; j < W - 1; j++) out_state[j] = XIN(T - (W - 1) + j);
            for (int64_t t = 0; t < T; t++) {
                double acc = p->bias ? p->bias[d] : 0;
                for (int64_t j = 0; j < W; j++) acc += (double)p->weight[d * W + j] * XIN(t - W + 1 + j);
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
