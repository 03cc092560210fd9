/*
 * mamba.c - the Mamba-1 mixer of the model layer ('S', the selective scan), Mamba's block on the
 * public ops (dn_matmul, dn_conv_*, dn_mamba_*). E = mamba_expand * d channels, state size
 * N = mamba_state_size per channel, dt of rank R = mamba_dt_rank.
 *
 *   [x | z] = a_in W_in^T
 *   x = SiLU(causal depthwise conv(x) + bias)                 width linear_conv_kernel_dim
 *   [dt_r | B | C] = x W_x^T;   dt = dt_r W_dt^T               (dt_proj's bias is the scan's
 * dt_bias) y = scan(x, softplus(dt + dt_bias), A = -exp(A_log) [E,N], B, C) + D x, times SiLU(z)
 *   out = y W_out^T
 */
#include "model.h"

#include <string.h>

void dn_mamba_layer_dims_init(dn_mamba_layer_dims *g, const dn_model_config *c) {
    g->E = c->mamba_expand * c->hidden_size, g->N = c->mamba_state_size;
    g->R = c->mamba_dt_rank > 0 ? c->mamba_dt_rank : (c->hidden_size + 15) / 16;
    g->W = c->linear_conv_kernel_dim;
}

static dn_mamba_params op_params(const dn_model *m, const dn_layer *l, const dn_mamba_layer_acts *s,
                                 int64_t B, int64_t T) {
    const dn_mamba_layer_dims *g = &l->sd;
    const int64_t E = g->E, X = g->R + 2 * g->N;
    dn_mamba_params p = dn_mamba_params_default(B, T, E, g->N, 1);
    p.x = s->xc;
    p.dt = s->dt;
    p.A = s->A;
    p.Bm = s->xdbl + g->R, p.Bm_s = (dn_strides){T * X, X, g->N};
    p.Cm = s->xdbl + g->R + g->N, p.Cm_s = p.Bm_s;
    p.Dskip = m->params + l->mamba1.D;
    p.dt_bias = m->params + l->mamba1.dt_bias;
    p.dt_softplus = 1;
    p.z = s->proj + E, p.z_s = (dn_strides){T * 2 * E, 2 * E, 0};
    p.y = s->y;
    return p;
}

static dn_conv_params conv_params(const dn_model *m, const dn_layer *l,
                                  const dn_mamba_layer_acts *s, int64_t B, int64_t T) {
    const dn_mamba_layer_dims *g = &l->sd;
    dn_conv_params p = dn_conv_params_default(B, T, g->E, g->W);
    p.x = s->proj, p.x_s = (dn_strides){T * 2 * g->E, 2 * g->E, 0};
    p.weight = m->params + l->mamba1.conv;
    p.bias = m->params + l->mamba1.conv_bias;
    p.silu = 1;
    p.y = s->xc;
    return p;
}

dn_status dn_mamba_layer_forward(const dn_model *m, const dn_layer *l, const dn_mamba_layer_acts *s,
                                 float *out, const float *a, int64_t B, int64_t T,
                                 dn_layer_cache *cache) {
    const dn_mamba_layer_dims *g = &l->sd;
    const float *W = m->params;
    const int64_t N = B * T, d = m->d, E = g->E, X = g->R + 2 * g->N;
    dn_status st = dn_model_linear(m, s->proj, 2 * E, a, d, l->mamba1.in_proj, N, d, 2 * E, 0.0f);
    if (st != DN_OK) return st;
    dn_conv_params cp = conv_params(m, l, s, B, T);
    if (cache) cp.initial_state = cp.final_state = cache->conv;
    if ((st = dn_conv_forward(&cp)) != DN_OK ||
        (st = dn_model_linear(m, s->xdbl, X, s->xc, E, l->mamba1.x_proj, N, E, X, 0.0f)) != DN_OK ||
        (st = dn_model_linear(m, s->dt, E, s->xdbl, X, l->mamba1.dt_proj, N, g->R, E, 0.0f)) !=
            DN_OK)
        return st;
    for (int64_t i = 0; i < E * g->N; i++)
        s->A[i] = -expf(W[l->mamba1.A_log + i]);
    dn_mamba_params p = op_params(m, l, s, B, T);
    if (cache) p.initial_state = p.final_state = cache->S;
    if ((st = dn_mamba_forward(&p)) != DN_OK) return st;
    return dn_model_linear(m, out, d, s->y, E, l->mamba1.out, N, E, d, 0.0f);
}

dn_status dn_mamba_layer_backward(dn_model *m, const dn_layer *l, const dn_mamba_layer_acts *s,
                                  float *da, const float *dout, const float *a, int64_t B,
                                  int64_t T) {
    const dn_mamba_layer_dims *g = &l->sd;
    const float *W = m->params;
    float *G = m->grads;
    const int64_t N = B * T, d = m->d, E = g->E, R = g->R, Ns = g->N, X = R + 2 * Ns;
    /* scratch: dy [N,E], dxc [N,E], ddt [N,E], dB and dC [N,Ns] each, dxdbl [N,X], dproj [N,2E],
     * (m->dA) dA [E,N] */
    float *dy = m->don, *dxc = m->do_, *ddt = m->dconv, *dB = m->dconv + N * E, *dC = dB + N * Ns;
    float *dxdbl = m->dx, *dproj = m->dproj, *dA = m->dA;
    dn_status st =
        dn_linear_bwd(dy, E, G + l->mamba1.out, dout, d, s->y, E, W + l->mamba1.out, N, E, d, 0.0f);
    if (st != DN_OK) return st;
    memset(dA, 0, (size_t)(E * Ns) * sizeof(float));
    dn_mamba_params p = op_params(m, l, s, B, T);
    dn_mamba_bwd_params bp = dn_mamba_bwd_params_default(&p);
    bp.dy = dy;
    bp.dx = dxc, bp.ddt = ddt;
    bp.dBm = dB, bp.dBm_s = (dn_strides){T * Ns, Ns, Ns};
    bp.dCm = dC, bp.dCm_s = bp.dBm_s;
    bp.dz = dproj + E, bp.dz_s = p.z_s;
    bp.dA = dA, bp.dDskip = G + l->mamba1.D, bp.ddt_bias = G + l->mamba1.dt_bias;
    if ((st = dn_mamba_backward(&bp)) != DN_OK) return st;
    for (int64_t i = 0; i < E * Ns; i++) /* A = -exp(A_log) */
        G[l->mamba1.A_log + i] += dA[i] * s->A[i];
    /* dt = dt_r W_dt^T: d(dt_r) into dxdbl's first R columns; B and C columns copied */
    if ((st = dn_linear_bwd(dxdbl, X, G + l->mamba1.dt_proj, ddt, E, s->xdbl, X,
                            W + l->mamba1.dt_proj, N, R, E, 0.0f)) != DN_OK)
        return st;
    DN_PARALLEL_FOR(N * 2 * Ns)
    for (int64_t n = 0; n < N; n++) {
        memcpy(dxdbl + n * X + R, dB + n * Ns, (size_t)Ns * sizeof(float));
        memcpy(dxdbl + n * X + R + Ns, dC + n * Ns, (size_t)Ns * sizeof(float));
    }
    /* xdbl = xc W_x^T: dxc += dxdbl W_x */
    if ((st = dn_linear_bwd(dxc, E, G + l->mamba1.x_proj, dxdbl, X, s->xc, E, W + l->mamba1.x_proj,
                            N, E, X, 1.0f)) != DN_OK)
        return st;
    dn_conv_params cp = conv_params(m, l, s, B, T);
    cp.y = NULL;
    dn_conv_bwd_params cb = dn_conv_bwd_params_default(&cp);
    cb.dy = dxc;
    cb.dx = dproj, cb.dx_s = cp.x_s;
    cb.dweight = G + l->mamba1.conv, cb.dbias = G + l->mamba1.conv_bias;
    if ((st = dn_conv_backward(&cb)) != DN_OK) return st;
    return dn_linear_bwd(da, d, G + l->mamba1.in_proj, dproj, 2 * E, a, d, W + l->mamba1.in_proj, N,
                         d, 2 * E, 0.0f);
}
