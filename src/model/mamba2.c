/*
 * mamba2.c - the Mamba-2 mixer of the model layer ('M'), Mamba-2's block on the public ops
 * (dn_matmul, dn_conv_*, dn_mamba2_*, which runs SSD through the scalar-gated linear attention
 * op). Its sizes reuse the linear family's config fields, so that a Mamba-2 layer and a Gated
 * DeltaNet layer of one config hold states of the same size: H = linear_num_value_heads heads of
 * P = linear_value_head_dim channels, state size N = linear_key_head_dim, G =
 * linear_num_key_heads groups of B and C.
 *
 *   [x B C | z | dt] = a_in W_in^T                       one product
 *   x, B, C = SiLU(causal depthwise conv(x B C) + bias)  dn_conv_forward, width W
 *   y = SSD(x, dt, A = -exp(A_log), B, C) + D x          dt' = softplus(dt + dt_bias), per head
 *   on = RMSNorm_group(y * SiLU(z)) * w                  gate first, then the norm over each of
 *                                                        the G groups of H P / G channels
 *   out = on W_out^T
 */
#include "model.h"

#include <string.h>

void dn_mamba2_layer_dims_init(dn_mamba2_layer_dims *g, const dn_model_config *c) {
    g->H = c->linear_num_value_heads, g->P = c->linear_value_head_dim;
    g->N = c->linear_key_head_dim, g->G = c->linear_num_key_heads;
    g->W = c->linear_conv_kernel_dim;
    g->C = g->H * g->P + 2 * g->G * g->N;
    g->z0 = g->C, g->dt0 = g->z0 + g->H * g->P, g->Pw = g->dt0 + g->H;
}

static dn_mamba2_params op_params(const dn_model *m, const dn_layer *l,
                                  const dn_mamba2_layer_acts *s, int64_t B, int64_t T) {
    const dn_mamba2_layer_dims *g = &l->md;
    const int64_t C = g->C, HP = g->H * g->P, GN = g->G * g->N;
    dn_mamba2_params p = dn_mamba2_params_default(B, T, g->H, g->P, g->N, g->G);
    p.x = s->xc, p.x_s = (dn_strides){T * C, C, g->P};
    p.Bm = s->xc + HP, p.Bm_s = (dn_strides){T * C, C, g->N};
    p.Cm = s->xc + HP + GN, p.Cm_s = p.Bm_s;
    p.dt = s->proj + g->dt0, p.dt_s = (dn_strides){T * g->Pw, g->Pw, 1};
    p.A = s->A;
    p.Dskip = m->params + l->mamba.D;
    p.dt_bias = m->params + l->mamba.dt_bias;
    p.dt_softplus = 1;
    p.y = s->y, p.y_s = (dn_strides){T * HP, HP, g->P};
    return p;
}

static dn_conv_params conv_params(const dn_model *m, const dn_layer *l,
                                  const dn_mamba2_layer_acts *s, int64_t B, int64_t T) {
    const dn_mamba2_layer_dims *g = &l->md;
    dn_conv_params p = dn_conv_params_default(B, T, g->C, g->W);
    p.x = s->proj, p.x_s = (dn_strides){T * g->Pw, g->Pw, 0};
    p.weight = m->params + l->mamba.conv;
    p.bias = m->params + l->mamba.conv_bias;
    p.silu = 1;
    p.y = s->xc, p.y_s = (dn_strides){T * g->C, g->C, 0};
    return p;
}

dn_status dn_mamba2_layer_forward(const dn_model *m, const dn_layer *l,
                                  const dn_mamba2_layer_acts *s, float *out, const float *a,
                                  int64_t B, int64_t T, dn_layer_cache *cache) {
    const dn_mamba2_layer_dims *g = &l->md;
    const float *W = m->params;
    const int64_t N = B * T, d = m->d, Pw = g->Pw, HP = g->H * g->P;
    dn_status st = dn_model_linear(m, s->proj, Pw, a, d, l->mamba.in_proj, N, d, Pw, 0.0f);
    if (st != DN_OK) return st;
    dn_conv_params cp = conv_params(m, l, s, B, T);
    if (cache) cp.initial_state = cp.final_state = cache->conv;
    if ((st = dn_conv_forward(&cp)) != DN_OK) return st;
    for (int64_t h = 0; h < g->H; h++)
        s->A[h] = -expf(W[l->mamba.A_log + h]);
    dn_mamba2_params p = op_params(m, l, s, B, T);
    if (cache) p.initial_state = p.final_state = cache->S;
    if ((st = dn_mamba2_forward(&p)) != DN_OK) return st;

    /* u = y * silu(z), then the grouped norm */
    DN_PARALLEL_FOR(N * HP)
    for (int64_t n = 0; n < N; n++) {
        const float *z = s->proj + n * Pw + g->z0, *y = s->y + n * HP;
        float *u = s->u + n * HP;
        for (int64_t i = 0; i < HP; i++)
            u[i] = y[i] * dn_siluf(z[i]);
    }
    dn_rmsnorm_groups_fwd(s->on, s->rstd, s->u, W + l->mamba.norm, 0.0f, N * g->G, HP / g->G, g->G,
                          m->cfg.rms_norm_eps);
    return dn_model_linear(m, out, d, s->on, HP, l->mamba.out, N, HP, d, 0.0f);
}

dn_status dn_mamba2_layer_backward(dn_model *m, const dn_layer *l, const dn_mamba2_layer_acts *s,
                                   float *da, const float *dout, const float *a, int64_t B,
                                   int64_t T) {
    const dn_mamba2_layer_dims *g = &l->md;
    const float *W = m->params;
    float *G = m->grads;
    const int64_t N = B * T, d = m->d, Pw = g->Pw, HP = g->H * g->P, GN = g->G * g->N;
    float *don = m->don, *du = m->do_, *dproj = m->dproj;

    dn_status st = dn_linear_bwd(don, HP, G + l->mamba.out, dout, d, s->on, HP, W + l->mamba.out, N,
                                 HP, d, 0.0f);
    if (st != DN_OK) return st;
    if ((st = dn_rmsnorm_groups_bwd(du, G + l->mamba.norm, don, s->u, s->rstd, W + l->mamba.norm,
                                    0.0f, N * g->G, HP / g->G, g->G)) != DN_OK)
        return st;
    /* u = y silu(z): dz into dproj, dy in place of du */
    DN_PARALLEL_FOR(N * HP)
    for (int64_t n = 0; n < N; n++) {
        const float *z = s->proj + n * Pw + g->z0, *y = s->y + n * HP;
        float *dz = dproj + n * Pw + g->z0, *dy = du + n * HP;
        for (int64_t i = 0; i < HP; i++) {
            const float sg = dn_sigmoidf(z[i]);
            dz[i] = dy[i] * y[i] * sg * (1.0f + z[i] * (1.0f - sg));
            dy[i] *= z[i] * sg;
        }
    }

    /* SSD: dx, dB, dC (each contiguous), ddt into dproj's dt columns; dA, dD, ddt_bias */
    float *dx = m->dconv, *dB = dx + N * HP, *dC = dB + N * GN, *dA = m->dg;
    memset(dA, 0, (size_t)g->H * sizeof(float));
    dn_mamba2_params p = op_params(m, l, s, B, T);
    dn_mamba2_bwd_params bp = dn_mamba2_bwd_params_default(&p);
    bp.dy = du, bp.dy_s = p.y_s;
    bp.dx = dx, bp.dx_s = (dn_strides){T * HP, HP, g->P};
    bp.dBm = dB, bp.dBm_s = (dn_strides){T * GN, GN, g->N};
    bp.dCm = dC, bp.dCm_s = bp.dBm_s;
    bp.ddt = dproj + g->dt0, bp.ddt_s = p.dt_s;
    bp.dA = dA, bp.dDskip = G + l->mamba.D, bp.ddt_bias = G + l->mamba.dt_bias;
    if ((st = dn_mamba2_backward(&bp)) != DN_OK) return st;
    for (int64_t h = 0; h < g->H; h++) /* A = -exp(A_log): dA_log = dA A */
        G[l->mamba.A_log + h] += dA[h] * s->A[h];

    /* the convolution, channels x, B, C separately (depthwise) */
    const int64_t c0[3] = {0, HP, HP + GN}, cn[3] = {HP, GN, GN};
    const float *dy3[3] = {dx, dB, dC};
    const dn_conv_params cp = conv_params(m, l, s, B, T);
    if ((st = dn_conv_bwd_ranges(&cp, 3, c0, cn, dy3, dproj, G + l->mamba.conv,
                                 G + l->mamba.conv_bias)) != DN_OK)
        return st;
    return dn_linear_bwd(da, d, G + l->mamba.in_proj, dproj, Pw, a, d, W + l->mamba.in_proj, N, d,
                         Pw, 0.0f);
}
