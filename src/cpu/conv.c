/*
 * cpu/conv.c - fast CPU short causal depthwise convolution, vectorised over channels (contiguous
 * in x). The state holds the W-1 previous inputs of each channel; a task transposes its block's
 * weights and state once so that every access in the token loop is a vector along channels.
 * Compiled once per SIMD level (see simd.h).
 */
#include "../internal.h"
#include "simd.h"

#include <math.h>

#define CC (4 * DN_VW) /* channels per task */

static void conv_block(const dn_conv_params *p, int64_t b, int64_t d0, int64_t nd) {
    const int64_t W = p->W, D = p->D;
    float wt[4][CC], hist[3][CC], bias[CC];
    for (int64_t i = 0; i < nd; i++) {
        const int64_t d = d0 + i;
        for (int64_t j = 0; j < W; j++)
            wt[j][i] = p->weight[d * W + j];
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
            for (int64_t j = 0; j < W; j++)
                acc += vload(wt[j] + i) * vload(src[j] + i);
            if (p->silu) acc = acc / (vset1(1.0f) + vexp(-acc));
            vstore(y + i, acc);
        }
        for (; i < nd; i++) {
            float acc = bias[i];
            for (int64_t j = 0; j < W; j++)
                acc += wt[j][i] * src[j][i];
            if (p->silu) acc = acc / (1.0f + expf(-acc));
            y[i] = acc;
        }
    }
    if (p->final_state)
        for (int64_t j = 0; j < W - 1; j++) {
            const int64_t s = p->T - (W - 1) + j;
            const float *row = s >= 0 ? p->x + b * p->x_s.b + s * p->x_s.t + d0 : hist[W - 1 + s];
            for (int64_t i = 0; i < nd; i++)
                p->final_state[(b * D + d0 + i) * (W - 1) + j] = row[i];
        }
}

static void conv_run(void *ctx, int64_t task, int thread, void *scratch) {
    const dn_conv_params *p = ctx;
    const int64_t nblk = (p->D + CC - 1) / CC, b = task / nblk, d0 = task % nblk * CC;
    (void)thread, (void)scratch;
    conv_block(p, b, d0, p->D - d0 < CC ? p->D - d0 : CC);
}

void DN_ISA_FN(dn_cpu_conv_forward)(const dn_conv_params *p, int nthreads) {
    const int64_t nblk = (p->D + CC - 1) / CC;
    dn_parallel_tasks(nthreads, p->B * nblk, DN_SCHED_STATIC, conv_run, (void *)p, NULL, 0);
}

/* Backward, one block of channels per task: a forward pass recomputes the pre-activation and
 * keeps the gradient through the SiLU for every token (T x CC floats), with the weight and bias
 * sums; a second pass gathers each input's gradient from the W outputs it feeds. */
static void conv_bwd_block(const dn_conv_bwd_params *bp, int64_t b, int64_t d0, int64_t nd,
                           float *da) {
    const dn_conv_params *p = &bp->fwd;
    const int64_t W = p->W, D = p->D, T = p->T;
    float wt[4][CC], hist[3][CC], bias[CC], dw[4][CC], dbias[CC];
    for (int64_t i = 0; i < CC; i++) {
        for (int64_t j = 0; j < 4; j++)
            wt[j][i] = dw[j][i] = 0;
        for (int64_t j = 0; j < 3; j++)
            hist[j][i] = 0;
        bias[i] = dbias[i] = 0;
    }
    for (int64_t i = 0; i < nd; i++) {
        const int64_t d = d0 + i;
        for (int64_t j = 0; j < W; j++)
            wt[j][i] = p->weight[d * W + j];
        for (int64_t j = 0; j < W - 1; j++)
            hist[j][i] = p->initial_state ? p->initial_state[(b * D + d) * (W - 1) + j] : 0.0f;
        bias[i] = p->bias ? p->bias[d] : 0.0f;
    }
    const int64_t ndv = nd / DN_VW * DN_VW;
    for (int64_t t = 0; t < T; t++) {
        const float *src[4];
        for (int64_t j = 0; j < W; j++) {
            const int64_t s = t - W + 1 + j;
            src[j] = s >= 0 ? p->x + b * p->x_s.b + s * p->x_s.t + d0 : hist[W - 1 + s];
        }
        const float *dy = bp->dy + b * bp->dy_s.b + t * bp->dy_s.t + d0;
        float *dar = da + t * CC;
        int64_t i = 0;
        for (; i < ndv; i += DN_VW) {
            vf a = vload(bias + i);
            for (int64_t j = 0; j < W; j++)
                a += vload(wt[j] + i) * vload(src[j] + i);
            vf g = vload(dy + i);
            if (p->silu) {
                vf sg = vset1(1.0f) / (vset1(1.0f) + vexp(-a));
                g *= sg * (vset1(1.0f) + a * (vset1(1.0f) - sg));
            }
            vstore(dar + i, g);
            vstore(dbias + i, vload(dbias + i) + g);
            for (int64_t j = 0; j < W; j++)
                vstore(dw[j] + i, vload(dw[j] + i) + g * vload(src[j] + i));
        }
        for (; i < nd; i++) {
            float a = bias[i];
            for (int64_t j = 0; j < W; j++)
                a += wt[j][i] * src[j][i];
            float g = dy[i];
            if (p->silu) {
                const float sg = 1.0f / (1.0f + expf(-a));
                g *= sg * (1.0f + a * (1.0f - sg));
            }
            dar[i] = g, dbias[i] += g;
            for (int64_t j = 0; j < W; j++)
                dw[j][i] += g * src[j][i];
        }
    }
    for (int64_t i = 0; i < nd; i++) {
        for (int64_t j = 0; j < W; j++)
            bp->dweight[(d0 + i) * W + j] += dw[j][i];
        if (bp->dbias) bp->dbias[d0 + i] += dbias[i];
    }
    for (int64_t s = -(W - 1); s < T; s++) {
        float acc[CC];
        for (int64_t i = 0; i < CC; i++)
            acc[i] = 0;
        for (int64_t j = 0; j < W; j++) {
            const int64_t t = s + W - 1 - j;
            if (t < 0 || t >= T) continue;
            int64_t i = 0;
            for (; i < ndv; i += DN_VW)
                vstore(acc + i, vload(acc + i) + vload(da + t * CC + i) * vload(wt[j] + i));
            for (; i < nd; i++)
                acc[i] += da[t * CC + i] * wt[j][i];
        }
        const int64_t fj = s - (T - (W - 1));
        for (int64_t i = 0; i < nd; i++) {
            float v = acc[i];
            if (bp->dfinal_state && fj >= 0) v += bp->dfinal_state[(b * D + d0 + i) * (W - 1) + fj];
            if (s >= 0)
                bp->dx[b * bp->dx_s.b + s * bp->dx_s.t + d0 + i] = v;
            else if (bp->dinitial_state)
                bp->dinitial_state[(b * D + d0 + i) * (W - 1) + W - 1 + s] = v;
        }
    }
}

/* Per thread: the gradient through the SiLU of every token of a block, (T + 1) x CC floats. */
static size_t conv_bwd_thread_bytes(const dn_conv_params *p) {
    int64_t per;
    return DN_PROD(&per, p->T + 1, CC, (int64_t)sizeof(float)) ? (size_t)per : SIZE_MAX;
}

size_t DN_ISA_FN(dn_cpu_conv_bwd_workspace)(const dn_conv_params *p, int nthreads) {
    return dn_parallel_ws_bytes(nthreads, conv_bwd_thread_bytes(p));
}

static void conv_bwd_run(void *ctx, int64_t task, int thread, void *da) {
    const dn_conv_bwd_params *bp = ctx;
    const dn_conv_params *p = &bp->fwd;
    const int64_t d0 = task * CC;
    (void)thread;
    for (int64_t b = 0; b < p->B; b++)
        conv_bwd_block(bp, b, d0, p->D - d0 < CC ? p->D - d0 : CC, da);
}

void DN_ISA_FN(dn_cpu_conv_backward)(const dn_conv_bwd_params *bp, int nthreads, void *ws) {
    const dn_conv_params *p = &bp->fwd;
    /* a task owns its channels in every batch row: their weight and bias sums have one writer */
    const int64_t nblk = (p->D + CC - 1) / CC;
    dn_parallel_tasks(nthreads, nblk, DN_SCHED_STATIC, conv_bwd_run, (void *)bp, ws,
                      conv_bwd_thread_bytes(p));
}
