/*
 * la.c - the linear-attention family's mixer of the model layer: Gated DeltaNet shaped as
 * Qwen3.5's linear-attention layer ('G'), and on the same skeleton DeltaNet ('D', no gate) and
 * linear attention ('L', no gate, no delta rule), so that models differ only in the op. Forward
 * and backward on the public ops (dn_matmul, dn_conv_*, dn_la_*).
 *
 *   [q k v | z | b | a] = a_in W_proj^T                      one product for every projection
 *   q, k, v = SiLU(causal depthwise conv(q k v))            dn_conv_forward, width W, no bias
 *   beta = sigmoid(b)                                        'G', 'D', per value head
 *   g = -exp(A_log) softplus(a + dt_bias)                    'G', per value head, in fp32
 *   o = op(q, k, v, g, beta), q and k L2-normalised in the op, scale 1/sqrt(K), value head j
 *       reads key head j / (HV/H)                            dn_la_forward_train
 *   on = RMSNorm(o per head; plain weight) * SiLU(z)            the gated output norm
 *   out = on W_out^T
 */
#include "model.h"

#include <string.h>

void dn_la_layer_dims_init(dn_la_layer_dims *g, const dn_model_config *c, char kind) {
    g->op = kind == 'G' ? DN_OP_GDN : kind == 'D' ? DN_OP_DELTANET : DN_OP_LINEAR_ATTN;
    g->beta = kind != 'L', g->gate = kind == 'G';
    g->H = c->linear_num_key_heads, g->HV = c->linear_num_value_heads;
    g->K = c->linear_key_head_dim, g->V = c->linear_value_head_dim;
    g->W = c->linear_conv_kernel_dim;
    g->C = 2 * g->H * g->K + g->HV * g->V;
    g->z0 = g->C, g->b0 = g->z0 + g->HV * g->V;
    g->a0 = g->b0 + (g->beta ? g->HV : 0);
    g->P = g->a0 + (g->gate ? g->HV : 0);
}

static dn_la_params la_params(const dn_la_layer_dims *g, const dn_la_layer_acts *s, int64_t B,
                              int64_t T) {
    dn_la_params p = dn_la_params_default(g->op, B, T, g->H, g->HV, g->K, g->V);
    const int64_t C = g->C, HK = g->H * g->K, HV = g->HV, HVV = g->HV * g->V;
    p.q = s->xc, p.q_s = (dn_strides){T * C, C, g->K};
    p.k = s->xc + HK, p.k_s = p.q_s;
    p.v = s->xc + 2 * HK, p.v_s = (dn_strides){T * C, C, g->V};
    p.g_s = p.beta_s = (dn_strides){T * HV, HV, 1};
    p.g = g->gate ? s->g : NULL;
    p.beta = g->beta ? s->beta : NULL;
    p.o = s->o, p.o_s = (dn_strides){T * HVV, HVV, g->V};
    p.qk_l2norm = 1;
    return p;
}

static dn_conv_params conv_params(const dn_model *m, const dn_layer *l, const dn_la_layer_acts *s,
                                  int64_t B, int64_t T) {
    const dn_la_layer_dims *g = &l->ld;
    dn_conv_params p = dn_conv_params_default(B, T, g->C, g->W);
    p.x = s->proj, p.x_s = (dn_strides){T * g->P, g->P, 0};
    p.weight = m->params + l->lin.conv;
    p.silu = 1;
    p.y = s->xc, p.y_s = (dn_strides){T * g->C, g->C, 0};
    return p;
}

/* The model's shared scratch for the op, when it is large enough at this call's threads. */
static void *op_workspace(const dn_model *m, const dn_la_params *lp, size_t *bytes) {
    dn_la_bwd_params bp = dn_la_bwd_params_default(lp);
    size_t need = 0;
    if (dn_la_backward_workspace_size(&bp, &need) != DN_OK || need > m->la_ws_bytes) {
        *bytes = 0;
        return NULL;
    }
    *bytes = m->la_ws_bytes;
    return m->la_ws;
}

dn_status dn_la_layer_forward(const dn_model *m, const dn_layer *l, const dn_la_layer_acts *s,
                              float *out, const float *a, int64_t B, int64_t T,
                              dn_layer_cache *cache) {
    const dn_la_layer_dims *g = &l->ld;
    const float *W = m->params;
    const int64_t N = B * T, d = m->d, P = g->P, HV = g->HV, V = g->V;
    dn_status st = dn_model_linear(m, s->proj, P, a, d, l->lin.proj, N, d, P, 0.0f);
    if (st != DN_OK) return st;
    dn_conv_params cp = conv_params(m, l, s, B, T);
    if (cache) cp.initial_state = cp.final_state = cache->conv; /* updated in place */
    if ((st = dn_conv_forward(&cp)) != DN_OK) return st;

    const float *A_log = W + l->lin.A_log, *dt_bias = W + l->lin.dt_bias; /* 'G' only */
    const int64_t Ng = g->beta || g->gate ? N : 0; /* rows with a beta or a gate to compute */
    DN_PARALLEL_FOR(Ng * HV * 8)
    for (int64_t n = 0; n < Ng; n++)
        for (int64_t j = 0; j < HV; j++) {
            const float *row = s->proj + n * P;
            if (g->beta) s->beta[n * HV + j] = dn_sigmoidf(row[g->b0 + j]);
            if (g->gate)
                s->g[n * HV + j] = -expf(A_log[j]) * dn_softplusf(row[g->a0 + j] + dt_bias[j]);
        }

    dn_la_params lp = la_params(g, s, B, T);
    if (cache || !m->arena_train) { /* inference: nothing saved for a backward */
        if (cache) lp.initial_state = lp.final_state = cache->S;
        st = dn_la_forward(&lp);
    } else {
        lp.workspace = op_workspace(m, &lp, &lp.workspace_bytes);
        st = dn_la_forward_train(&lp, s->saved, s->saved_bytes);
    }
    if (st != DN_OK) return st;

    /* gated norm: on = RMSNorm(o) * silu(z), per (token, value head) over V */
    dn_rmsnorm_fwd(s->on, s->rstd, s->o, W + l->lin.norm, 0.0f, N * HV, V, m->cfg.rms_norm_eps);
    DN_PARALLEL_FOR(N * HV * V)
    for (int64_t n = 0; n < N; n++) {
        const float *z = s->proj + n * P + g->z0;
        float *on = s->on + n * HV * V;
        for (int64_t i = 0; i < HV * V; i++)
            on[i] *= dn_siluf(z[i]);
    }
    return dn_model_linear(m, out, d, s->on, HV * V, l->lin.out, N, HV * V, d, 0.0f);
}

dn_status dn_la_layer_backward(dn_model *m, const dn_layer *l, const dn_la_layer_acts *s, float *da,
                               const float *dout, const float *a, int64_t B, int64_t T) {
    const dn_la_layer_dims *g = &l->ld;
    const float *W = m->params;
    float *G = m->grads;
    const int64_t N = B * T, d = m->d, P = g->P, HV = g->HV, V = g->V, HVV = HV * V;
    float *don = m->don, *do_ = m->do_, *dproj = m->dproj, *dxc = m->dconv;

    /* out = on W_out^T */
    dn_status st = dn_linear_bwd(don, HVV, G + l->lin.out, dout, d, s->on, HVV, W + l->lin.out, N,
                                 HVV, d, 0.0f);
    if (st != DN_OK) return st;

    /* on = y * silu(z), y = RMSNorm(o) w: dz into dproj's z columns, dy in place of don */
    const float *wn = W + l->lin.norm;
    DN_PARALLEL_FOR(N * HVV)
    for (int64_t n = 0; n < N; n++) {
        const float *z = s->proj + n * P + g->z0, *o = s->o + n * HVV;
        float *dz = dproj + n * P + g->z0, *dy = don + n * HVV;
        for (int64_t j = 0; j < HV; j++) {
            const float r = s->rstd[n * HV + j];
            for (int64_t i = 0; i < V; i++) {
                const int64_t e = j * V + i;
                const float sg = dn_sigmoidf(z[e]), y = o[e] * r * wn[i];
                dz[e] = dy[e] * y * sg * (1.0f + z[e] * (1.0f - sg));
                dy[e] *= z[e] * sg;
            }
        }
    }
    if ((st = dn_rmsnorm_bwd(do_, G + l->lin.norm, don, s->o, s->rstd, wn, 0.0f, N * HV, V)) !=
        DN_OK)
        return st;

    /* the delta rule: dq, dk, dv (each contiguous: the op's outputs may not interleave in one
     * buffer), dg, dbeta */
    const int64_t HK = g->H * g->K;
    float *dq = dxc, *dk = dxc + N * HK, *dv = dxc + 2 * N * HK;
    dn_la_params lp = la_params(g, s, B, T);
    dn_la_bwd_params bp = dn_la_bwd_params_default(&lp);
    bp.dout = do_, bp.dout_s = lp.o_s;
    bp.dq = dq, bp.dq_s = (dn_strides){T * HK, HK, g->K};
    bp.dk = dk, bp.dk_s = bp.dq_s;
    bp.dv = dv, bp.dv_s = (dn_strides){T * HVV, HVV, V};
    bp.dg = g->gate ? m->dg : NULL, bp.dg_s = lp.g_s;
    bp.dbeta = g->beta ? m->dbeta : NULL, bp.dbeta_s = lp.beta_s;
    bp.saved = s->saved, bp.saved_bytes = s->saved_bytes;
    bp.workspace = op_workspace(m, &lp, &bp.workspace_bytes);
    if ((st = dn_la_backward(&bp)) != DN_OK) return st;

    /* beta = sigmoid(b); g = -A softplus(u), A = exp(A_log), u = a + dt_bias:
     *   db = dbeta beta (1 - beta);  du = -A sigmoid(u) dg;  dA_log += dg g;  ddt_bias += du */
    const float *A_log = W + l->lin.A_log, *dt_bias = W + l->lin.dt_bias; /* 'G' only */
    DN_PARALLEL_FOR(N * HV * 8)
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < HV; j++) {
            float *row = dproj + n * P;
            const float *prow = s->proj + n * P;
            if (g->beta) {
                const float bt = s->beta[n * HV + j];
                row[g->b0 + j] = m->dbeta[n * HV + j] * bt * (1.0f - bt);
            }
            if (g->gate)
                row[g->a0 + j] =
                    -expf(A_log[j]) * dn_sigmoidf(prow[g->a0 + j] + dt_bias[j]) * m->dg[n * HV + j];
        }
    for (int64_t j = 0; g->gate && j < HV; j++) { /* rows summed in order: same at any threads */
        double sa = 0, sd = 0;
        for (int64_t n = 0; n < N; n++) {
            sa += (double)m->dg[n * HV + j] * s->g[n * HV + j];
            sd += dproj[n * P + g->a0 + j];
        }
        G[l->lin.A_log + j] += (float)sa;
        G[l->lin.dt_bias + j] += (float)sd;
    }

    /* the convolution with its SiLU, depthwise, so q, k and v channels go separately: dx into
     * dproj's first C columns, dweight accumulated */
    const int64_t c0[3] = {0, HK, 2 * HK}, cn[3] = {HK, HK, HVV};
    const float *dy[3] = {dq, dk, dv};
    const dn_conv_params cp = conv_params(m, l, s, B, T);
    if ((st = dn_conv_bwd_ranges(&cp, 3, c0, cn, dy, dproj, G + l->lin.conv, NULL)) != DN_OK)
        return st;

    /* the projection */
    return dn_linear_bwd(da, d, G + l->lin.proj, dproj, P, a, d, W + l->lin.proj, N, d, P, 0.0f);
}
