/*
 * attn.c - the softmax attention mixer of the model layer, shaped as Qwen3.5's gated attention,
 * forward and backward, on the public ops (dn_matmul, dn_attn_*).
 *
 *   [q (per head: q_h | gate_h when gated) | k | v] = a_in W_proj^T   one product for q, k, v
 *   q, k, v = causal depthwise conv(q, k, v)       when attn_conv_kernel_dim = W > 0: width W,
 *          no bias, no activation, channels q (head-major), k, v   dn_conv_forward
 *   q, k = RoPE(RMSNorm_head(q), RMSNorm_head(k))   zero-centred weights (1 + w), when qk_norm;
 *          RoPE on the first rd dims of each head, pairs (i, i + rd/2), positions 0..T-1
 *   o = causal softmax attention (q, k, v), H query heads over HKV key/value heads, 1/sqrt(D)
 *   og = o * sigmoid(gate) when gated
 *   out = og W_o^T
 */
#include "model.h"

#include <string.h>

void dn_attn_layer_dims_init(dn_attn_layer_dims *d, const dn_model_config *c) {
    d->H = c->num_attention_heads, d->HKV = c->num_key_value_heads, d->D = c->head_dim;
    d->rd = (int64_t)((double)d->D * c->partial_rotary_factor) / 2 * 2;
    d->gate = c->attn_output_gate != 0, d->qk_norm = c->attn_qk_norm != 0;
    d->Pq = d->H * d->D * (d->gate ? 2 : 1);
    d->P = d->Pq + 2 * d->HKV * d->D;
    d->W = c->attn_conv_kernel_dim, d->C = (d->H + 2 * d->HKV) * d->D;
}

/* The convolution of part i (0: q, 1: k, 2: v) of the channels: its input, output, weights and
 * decode state (state: the layer's [B,C,W-1] cache split the same way, or NULL). */
static dn_conv_params conv_part(const dn_model *m, const dn_layer *l, const dn_attn_layer_acts *s,
                                int i, int64_t B, int64_t T, float *state) {
    const dn_attn_layer_dims *ad = &m->ad;
    const int64_t HD = ad->H * ad->D, KD = ad->HKV * ad->D;
    const int64_t c0 = i == 0 ? 0 : i == 1 ? HD : HD + KD, D = i == 0 ? HD : KD;
    dn_conv_params p = dn_conv_params_default(B, T, D, ad->W);
    if (i == 2) /* v straight from the projection */
        p.x = s->proj + ad->Pq + KD, p.x_s = (dn_strides){T * ad->P, ad->P, 0};
    else
        p.x = i == 0 ? s->qraw : s->kraw, p.x_s = (dn_strides){T * D, D, 0};
    p.y = i == 0 ? s->qc : i == 1 ? s->kc : s->vc, p.y_s = (dn_strides){T * D, D, 0};
    p.weight = m->params + l->attn.conv + c0 * ad->W;
    if (state) p.initial_state = p.final_state = state + B * c0 * (ad->W - 1);
    return p;
}

static dn_attn_params op_params(const dn_model *m, const dn_attn_layer_acts *s, int64_t B,
                                int64_t T) {
    const dn_attn_layer_dims *ad = &m->ad;
    dn_attn_params p = dn_attn_params_default(B, T, ad->H, ad->HKV, ad->D);
    p.q = s->qn, p.k = s->kn;
    if (ad->W)
        p.v = s->vc, p.v_s = (dn_strides){T * ad->HKV * ad->D, ad->HKV * ad->D, ad->D};
    else
        p.v = s->proj + ad->Pq + ad->HKV * ad->D, p.v_s = (dn_strides){T * ad->P, ad->P, ad->D};
    p.o = s->o, p.lse = s->lse;
    return p;
}

/* Column of head h's query (or gate, +D) in a projection row. */
static int64_t q_col(const dn_attn_layer_dims *ad, int64_t h) {
    return h * ad->D * (ad->gate ? 2 : 1);
}

dn_status dn_attn_layer_forward(const dn_model *m, const dn_layer *l, const dn_attn_layer_acts *s,
                                float *out, const float *a, int64_t B, int64_t T,
                                dn_layer_cache *cache, const dn_rope_table *rope) {
    const dn_attn_layer_dims *ad = &m->ad;
    const float *W = m->params;
    const int64_t N = B * T, d = m->d, P = ad->P, H = ad->H, HKV = ad->HKV, D = ad->D;
    dn_status st = dn_model_linear(m, s->proj, P, a, d, l->attn.proj, N, d, P, 0.0f);
    if (st != DN_OK) return st;

    DN_PARALLEL_FOR(N * P)
    for (int64_t n = 0; n < N; n++) {
        const float *row = s->proj + n * P;
        for (int64_t h = 0; h < H; h++)
            memcpy(s->qraw + (n * H + h) * D, row + q_col(ad, h), (size_t)D * sizeof(float));
        memcpy(s->kraw + n * HKV * D, row + ad->Pq, (size_t)(HKV * D) * sizeof(float));
    }
    for (int i = 0; i < 3 && ad->W; i++) {
        const dn_conv_params cp = conv_part(m, l, s, i, B, T, cache ? cache->conv : NULL);
        if ((st = dn_conv_forward(&cp)) != DN_OK) return st;
    }
    if (ad->qk_norm) {
        dn_rmsnorm_fwd(s->qn, s->rq, s->qc, W + l->attn.q_norm, 1.0f, N * H, D,
                       m->cfg.rms_norm_eps);
        dn_rmsnorm_fwd(s->kn, s->rk, s->kc, W + l->attn.k_norm, 1.0f, N * HKV, D,
                       m->cfg.rms_norm_eps);
    } else {
        memcpy(s->qn, s->qc, (size_t)(N * H * D) * sizeof(float));
        memcpy(s->kn, s->kc, (size_t)(N * HKV * D) * sizeof(float));
    }
    dn_rope_apply(s->qn, H * D, rope, N, H, D, 0);
    dn_rope_apply(s->kn, HKV * D, rope, N, HKV, D, 0);

    dn_attn_params p = op_params(m, s, B, T);
    if (cache) {
        if ((st = dn_kv_cache_append(cache->kv, p.k, p.k_s, p.v, p.v_s, T)) != DN_OK ||
            (st = dn_kv_cache_attend(cache->kv, p.o, p.o_s, NULL, p.q, p.q_s, T, H, p.scale, 0,
                                     0)) != DN_OK)
            return st;
    } else if ((st = dn_attn_forward(&p)) != DN_OK)
        return st;

    if (ad->gate) {
        DN_PARALLEL_FOR(N * H * D)
        for (int64_t n = 0; n < N; n++)
            for (int64_t h = 0; h < H; h++) {
                const float *gt = s->proj + n * P + q_col(ad, h) + D;
                const float *o = s->o + (n * H + h) * D;
                float *og = s->og + (n * H + h) * D;
                for (int64_t i = 0; i < D; i++)
                    og[i] = o[i] * dn_sigmoidf(gt[i]);
            }
    }
    return dn_model_linear(m, out, d, s->og, H * D, l->attn.out, N, H * D, d, 0.0f);
}

dn_status dn_attn_layer_backward(dn_model *m, const dn_layer *l, const dn_attn_layer_acts *s,
                                 float *da, const float *dout, const float *a, int64_t B,
                                 int64_t T) {
    const dn_attn_layer_dims *ad = &m->ad;
    const float *W = m->params;
    float *G = m->grads;
    const int64_t N = B * T, d = m->d, P = ad->P, H = ad->H, HKV = ad->HKV, D = ad->D;
    float *dog = m->do_, *dproj = m->dproj, *dq = m->dq, *dk = m->dk;

    dn_status st = dn_linear_bwd(dog, H * D, G + l->attn.out, dout, d, s->og, H * D,
                                 W + l->attn.out, N, H * D, d, 0.0f);
    if (st != DN_OK) return st;
    if (ad->gate) { /* og = o sigmoid(gate): dgate into dproj, do in place of dog */
        DN_PARALLEL_FOR(N * H * D)
        for (int64_t n = 0; n < N; n++)
            for (int64_t h = 0; h < H; h++) {
                const float *gt = s->proj + n * P + q_col(ad, h) + D;
                const float *o = s->o + (n * H + h) * D;
                float *dgt = dproj + n * P + q_col(ad, h) + D, *g = dog + (n * H + h) * D;
                for (int64_t i = 0; i < D; i++) {
                    const float sg = dn_sigmoidf(gt[i]);
                    dgt[i] = g[i] * o[i] * sg * (1.0f - sg);
                    g[i] *= sg;
                }
            }
    }

    dn_attn_params p = op_params(m, s, B, T);
    dn_attn_bwd_params bp = dn_attn_bwd_params_default(&p);
    bp.dout = dog;
    bp.dq = dq, bp.dk = dk;
    if (ad->W) /* dv of the convolution's output, then through it below */
        bp.dv = m->don, bp.dv_s = p.v_s;
    else
        bp.dv = dproj + ad->Pq + HKV * D, bp.dv_s = p.v_s;
    if ((st = dn_attn_backward(&bp)) != DN_OK) return st;

    /* RoPE is a rotation: its backward rotates back; then the norms (or the copies) */
    dn_rope_apply(dq, H * D, &m->rope, N, H, D, 1);
    dn_rope_apply(dk, HKV * D, &m->rope, N, HKV, D, 1);
    float *dqr = dq, *dkr = dk;
    if (ad->qk_norm) {
        dqr = m->dx, dkr = m->dx + N * H * D; /* dx is free until the block's end */
        if ((st = dn_rmsnorm_bwd(dqr, G + l->attn.q_norm, dq, s->qc, s->rq, W + l->attn.q_norm,
                                 1.0f, N * H, D)) != DN_OK ||
            (st = dn_rmsnorm_bwd(dkr, G + l->attn.k_norm, dk, s->kc, s->rk, W + l->attn.k_norm,
                                 1.0f, N * HKV, D)) != DN_OK)
            return st;
    }
    if (ad->W) { /* back through the convolution: q and k into the buffers dqr, dkr are not */
        float *const dy[3] = {dqr, dkr, m->don};
        float *const dxq = dqr == dq ? m->dx : dq, *const dxk = dqr == dq ? m->dx + N * H * D : dk;
        float *const dxs[3] = {dxq, dxk, dproj + ad->Pq + HKV * D};
        for (int i = 0; i < 3; i++) {
            dn_conv_params cp = conv_part(m, l, s, i, B, T, NULL);
            cp.y = NULL; /* not read by the backward */
            dn_conv_bwd_params cb = dn_conv_bwd_params_default(&cp);
            cb.dy = dy[i], cb.dy_s = cp.y_s;
            cb.dx = dxs[i], cb.dx_s = cp.x_s;
            cb.dweight = G + (cp.weight - W);
            if ((st = dn_conv_backward(&cb)) != DN_OK) return st;
        }
        dqr = dxq, dkr = dxk;
    }
    DN_PARALLEL_FOR(N * P)
    for (int64_t n = 0; n < N; n++) {
        float *row = dproj + n * P;
        for (int64_t h = 0; h < H; h++)
            memcpy(row + q_col(ad, h), dqr + (n * H + h) * D, (size_t)D * sizeof(float));
        memcpy(row + ad->Pq, dkr + n * HKV * D, (size_t)(HKV * D) * sizeof(float));
    }
    return dn_linear_bwd(da, d, G + l->attn.proj, dproj, P, a, d, W + l->attn.proj, N, d, P, 0.0f);
}
