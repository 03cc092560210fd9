/*
 * cpu/conv.c - fast CPU short causal depthwise convolution, vectorised over channels (contiguous
 * in x). The state holds the W-1 previous inputs of each channel; a task transposes its block's
 * weights and state once so that every access in the token loop is a vector along channels.
 * Compiled once per SIMD level (see simd.h).
 */
#include "../internal.h"
#include "simd.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define CC (4 * DN_VW) /* channels per task */

static void conv_block(const dn_conv_params *p, int64_t b, int64_t d0, int64_t nd) {
    const int64_t W = p->W, D = p->D;
    float wt[4][CC], hist[3][CC], bias[CC];
    for (int64_t i = 0; i < nd; i++) {
        const int64_t d = d0 + i;
        for (int64_t j = 0; j < W; j++) wt[j][i] = p->weight[d * W + j];
        for (int64_t j = 0; j < W - 1; j++)
            hist[j][i] = p->initial_state ? p->initial_state[(b * D + d) * (W - 1) + j] : 0.0f;
        bias[i] = p->bias ? p->bias[d] : 0.0f;
    }
    const int64_t ndv = nd / DN_VW * DN_VW;
    for (int64_t t = 0; t < p->T; t++) {
        const float *src[4];
        for (int64_t j = 0; j < W; j++) {
            const int64_t s = t - W + 1 + j;
            src[j] = s >= 0 ? p->x + b * p->x_s.b + s * p->x_s.t + d0 : hist[W - 1 + s];
        }
        float *y = p->y + b * p->y_s.b + t * p->y_s.t + d0;
        int64_t i = 0;
        for (; i < ndv; i += DN_VW) {
            vf acc = vload(bias + i);
            for (int64_t j = 0; j < W; j++) acc += vload(wt[j] + i) * vload(src[j] + i);
            if (p->silu) acc = acc / (vset1(1.0f) + vexp(-acc));
            vstore(y + i, acc);
        }
        for (; i < nd; i++) {
            float acc = bias[i];
            for (int64_t j = 0; j < W; j++) acc += wt[j][i] * src[j][i];
            if (p->silu) acc = acc / (1.0f + expf(-acc));
            y[i] = acc;
        }
    }
    if (p->final_state)
        for (int64_t j = 0; j < W - 1; j++) {
            const int64_t s = p->T - (W - 1) + j;
            const float *row = s >= 0 ? p->x + b * p->x_s.b + s * p->x_s.t + d0 : hist[W - 1 + s];
            for (int64_t i = 0; i < nd; i++) p->final_state[(b * D + d0 + i) * (W - 1) + j] = row[i];
        }
}

void DN_ISA_FN(dn_cpu_conv_forward)(const dn_conv_params *p, int nthreads) {
    const int64_t nblk = (p->D + CC - 1) / CC, ntask = p->B * nblk;
    int nt = ntask < nthreads ? (int)ntask : nthreads;
    if (nt < 1) nt = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
#endif
    for (int64_t task = 0; task < ntask; task++) {
        const int64_t b = task / nblk, d0 = task % nblk * CC;
        conv_block(p, b, d0, p->D - d0 < CC ? p->D - d0 : CC);
    }
}
