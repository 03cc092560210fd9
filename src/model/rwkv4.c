/*
 * rwkv4.c - the RWKV-4 time-mixing mixer of the model layer ('R'), on the public ops
 * (dn_matmul, dn_rwkv4_*). Channels C = hidden_size.
 *
 *   xx = the previous token's input (0 before the sequence; the state's last input in decode)
 *   xk = xx + mix_k (a - xx),  xv = xx + mix_v (a - xx),  xr = xx + mix_r (a - xx)
 *   k = xk W_k^T,  v = xv W_v^T,  r = xr W_r^T
 *   wkv = WKV(k, v; time_decay, time_first)                   dn_rwkv4_forward, per channel
 *   out = (sigmoid(r) * wkv) W_o^T
 */
#include "model.h"

#include <string.h>

/* xx for row n of a [N,d]: the row before in the same sequence, else the cached last input. */
static const float *prev_row(const float *a, const float *last, int64_t n, int64_t T, int64_t d,
                             const float *zeros) {
    if (n % T) return a + (n - 1) * d;
    return last ? last + (n / T) * d : zeros;
}

dn_status dn_rwkv4_layer_forward(const dn_model *m, const dn_layer *l, const dn_rwkv4_layer_acts *s,
                                 float *out, const float *a, int64_t B, int64_t T,
                                 dn_layer_cache *cache) {
    const float *W = m->params;
    const int64_t N = B * T, d = m->d;
    const float *mk = W + l->rwkv.mix_k, *mv = W + l->rwkv.mix_v, *mr = W + l->rwkv.mix_r;
    const float *last = cache ? cache->conv : NULL; /* [B,d] the last input of each sequence */
    DN_PARALLEL_FOR(N * d * 3)
    for (int64_t n = 0; n < N; n++) {
        const float *x = a + n * d, *xx = prev_row(a, last, n, T, d, s->zeros);
        for (int64_t j = 0; j < d; j++) {
            const float df = x[j] - xx[j];
            s->xk[n * d + j] = xx[j] + mk[j] * df;
            s->xv[n * d + j] = xx[j] + mv[j] * df;
            s->xr[n * d + j] = xx[j] + mr[j] * df;
        }
    }
    dn_status st;
    if ((st = dn_model_linear(m, s->k, d, s->xk, d, l->rwkv.key, N, d, d, 0.0f)) != DN_OK ||
        (st = dn_model_linear(m, s->v, d, s->xv, d, l->rwkv.value, N, d, d, 0.0f)) != DN_OK ||
        (st = dn_model_linear(m, s->r, d, s->xr, d, l->rwkv.receptance, N, d, d, 0.0f)) != DN_OK)
        return st;
    dn_rwkv4_params p = dn_rwkv4_params_default(B, T, d);
    p.k = s->k, p.v = s->v, p.y = s->wkv;
    p.time_decay = W + l->rwkv.time_decay, p.time_first = W + l->rwkv.time_first;
    if (cache) p.initial_state = p.final_state = cache->S;
    if ((st = dn_rwkv4_forward(&p)) != DN_OK) return st;
    DN_PARALLEL_FOR(N * d)
    for (int64_t i = 0; i < N * d; i++)
        s->rw[i] = dn_sigmoidf(s->r[i]) * s->wkv[i];
    if ((st = dn_model_linear(m, out, d, s->rw, d, l->rwkv.output, N, d, d, 0.0f)) != DN_OK)
        return st;
    if (cache) /* the token shift's state: each sequence's last input */
        for (int64_t b = 0; b < B; b++)
            memcpy(cache->conv + b * d, a + (b * T + T - 1) * d, (size_t)d * sizeof(float));
    return DN_OK;
}

dn_status dn_rwkv4_layer_backward(dn_model *m, const dn_layer *l, const dn_rwkv4_layer_acts *s,
                                  float *da, const float *dout, const float *a, int64_t B,
                                  int64_t T) {
    const float *W = m->params;
    float *G = m->grads;
    const int64_t N = B * T, d = m->d;
    float *drw = m->don, *dk = m->do_, *dv = m->dconv, *dr = m->dconv + N * d, *dx = m->dproj;
    dn_status st = dn_linear_bwd(drw, d, G + l->rwkv.output, dout, d, s->rw, d, W + l->rwkv.output,
                                 N, d, d, 0.0f);
    if (st != DN_OK) return st;
    /* rw = sigmoid(r) wkv: dr, and dwkv in place of drw */
    DN_PARALLEL_FOR(N * d)
    for (int64_t i = 0; i < N * d; i++) {
        const float sg = dn_sigmoidf(s->r[i]);
        dr[i] = drw[i] * s->wkv[i] * sg * (1.0f - sg);
        drw[i] *= sg;
    }
    dn_rwkv4_params p = dn_rwkv4_params_default(B, T, d);
    p.k = s->k, p.v = s->v, p.y = s->wkv;
    p.time_decay = W + l->rwkv.time_decay, p.time_first = W + l->rwkv.time_first;
    dn_rwkv4_bwd_params bp = dn_rwkv4_bwd_params_default(&p);
    bp.dy = drw, bp.dk = dk, bp.dv = dv;
    bp.dtime_decay = G + l->rwkv.time_decay, bp.dtime_first = G + l->rwkv.time_first;
    if ((st = dn_rwkv4_backward(&bp)) != DN_OK) return st;
    /* the three projections: d(xk), d(xv), d(xr) into dx [N,3d] (columns k | v | r) */
    if ((st = dn_linear_bwd(dx, 3 * d, G + l->rwkv.key, dk, d, s->xk, d, W + l->rwkv.key, N, d, d,
                            0.0f)) != DN_OK ||
        (st = dn_linear_bwd(dx + d, 3 * d, G + l->rwkv.value, dv, d, s->xv, d, W + l->rwkv.value, N,
                            d, d, 0.0f)) != DN_OK ||
        (st = dn_linear_bwd(dx + 2 * d, 3 * d, G + l->rwkv.receptance, dr, d, s->xr, d,
                            W + l->rwkv.receptance, N, d, d, 0.0f)) != DN_OK)
        return st;
    /* x* = xx + mix (a - xx): da = sum mix dx*, d(xx) = sum (1 - mix) dx* (to the row before),
     * dmix = sum over rows of dx* (a - xx) */
    const float *mk = W + l->rwkv.mix_k, *mv = W + l->rwkv.mix_v, *mr = W + l->rwkv.mix_r;
    DN_PARALLEL_FOR(N * d * 3)
    for (int64_t n = 0; n < N; n++) {
        const float *g = dx + n * 3 * d, *gn = dx + (n + 1) * 3 * d;
        const int has_next = (n + 1) % T != 0;
        for (int64_t j = 0; j < d; j++) {
            float v = mk[j] * g[j] + mv[j] * g[d + j] + mr[j] * g[2 * d + j];
            if (has_next)
                v += (1 - mk[j]) * gn[j] + (1 - mv[j]) * gn[d + j] + (1 - mr[j]) * gn[2 * d + j];
            da[n * d + j] = v;
        }
    }
    const float *mix[3] = {mk, mv, mr};
    const int64_t off[3] = {l->rwkv.mix_k, l->rwkv.mix_v, l->rwkv.mix_r};
    const int64_t cb = 64, nblk = (d + cb - 1) / cb;
    (void)mix;
    DN_PARALLEL_FOR(N * d * 3)
    for (int64_t blk = 0; blk < 3 * nblk; blk++) { /* columns split, rows summed in order */
        const int w = (int)(blk / nblk);
        const int64_t j0 = (blk % nblk) * cb, j1 = j0 + cb < d ? j0 + cb : d;
        double acc[64] = {0};
        for (int64_t n = 0; n < N; n++) {
            const float *x = a + n * d, *xx = prev_row(a, NULL, n, T, d, s->zeros);
            for (int64_t j = j0; j < j1; j++)
                acc[j - j0] += (double)dx[n * 3 * d + w * d + j] * (x[j] - xx[j]);
        }
        for (int64_t j = j0; j < j1; j++)
            G[off[w] + j] += (float)acc[j - j0];
    }
    return DN_OK;
}
