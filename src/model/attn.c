/*
 * attn.c - the softmax attention mixer of the model layer, shaped as Qwen3.5's gated attention,
 * forward and backward, on the public ops (dn_matmul, dn_attn_*).
 *
 *   [q (per head: q_h | gate_h when gated) | k | v] = a_in W_proj^T   one product for q, k, v
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
}

static dn_attn_params op_params(const dn_model *m, const dn_attn_layer_acts *s, int64_t B,
                                int64_t T) {
    const dn_attn_layer_dims *ad = &m->ad;
    dn_attn_params p = dn_attn_params_default(B, T, ad->H, ad->HKV, ad->D);
    p.q = s->qn, p.k = s->kn;
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
    if (ad->qk_norm) {
        dn_rmsnorm_fwd(s->qn, s->rq, s->qraw, W + l->attn.q_norm, 1.0f, N * H, D,
                       m->cfg.rms_norm_eps);
        dn_rmsnorm_fwd(s->kn, s->rk, s->kraw, W + l->attn.k_norm, 1.0f, N * HKV, D,
                       m->cfg.rms_norm_eps);
    } else {
        memcpy(s->qn, s->qraw, (size_t)(N * H * D) * sizeof(float));
        memcpy(s->kn, s->kraw, (size_t)(N * HKV * D) * sizeof(float));
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
    bp.dv = dproj + ad->Pq + HKV * D, bp.dv_s = p.v_s;
    if ((st = dn_attn_backward(&bp)) != DN_OK) return st;

    /* RoPE is a rotation: its backward rotates back; then the norms (or the copies) */
    dn_rope_apply(dq, H * D, &m->rope, N, H, D, 1);
    dn_rope_apply(dk, HKV * D, &m->rope, N, HKV, D, 1);
    float *dqr = dq, *dkr = dk;
    if (ad->qk_norm) {
        dqr = m->dx, dkr = m->dx + N * H * D; /* dx is free until the block's end */
        if ((st = dn_rmsnorm_bwd(dqr, G + l->attn.q_norm, dq, s->qraw, s->rq, W + l->attn.q_norm,
                                 1.0f, N * H, D)) != DN_OK ||
            (st = dn_rmsnorm_bwd(dkr, G + l->attn.k_norm, dk, s->kraw, s->rk, W + l->attn.k_norm,
                                 1.0f, N * HKV, D)) != DN_OK)
            return st;
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
