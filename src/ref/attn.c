/*
 * ref/attn.c - plain-C reference of causal softmax attention: for every query row the full row of
 * scores over its visible keys, a max-subtracted softmax and the weighted sum of values, all in
 * double. Slow on purpose; the tiled fast path and the KV-cache decode are tested against it.
 */
#include "../internal.h"

#include <math.h>

dn_status dn_ref_attn_forward(const dn_attn_params *p) {
    const int64_t G = p->H / p->HKV, D = p->D;
    double *s = dn_alloc(sizeof(double) * (size_t)(p->TK > 0 ? p->TK : 1));
    double *acc = dn_alloc(sizeof(double) * (size_t)D);
    if (!s || !acc) {
        dn_free(s);
        dn_free(acc);
        return dn_fail(DN_ERR_ALLOC, "attention reference: cannot allocate a score row");
    }
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->H; h++)
            for (int64_t i = 0; i < p->TQ; i++) {
                const int64_t kh = h / G, pos = p->TK - p->TQ + i;
                int64_t lo, hi;
                dn_attn_visible(pos, p->window, 0, p->TK, &lo, &hi);
                const float *q = p->q + b * p->q_s.b + i * p->q_s.t + h * p->q_s.h;
                float *o = p->o + b * p->o_s.b + i * p->o_s.t + h * p->o_s.h;
                float *lse = p->lse ? p->lse + (b * p->H + h) * p->TQ + i : NULL;
                if (hi < lo) { /* no visible key */
                    for (int64_t d = 0; d < D; d++)
                        o[d] = 0;
                    if (lse) *lse = -INFINITY;
                    continue;
                }
                double m = -INFINITY;
                for (int64_t j = lo; j <= hi; j++) {
                    const float *k = p->k + b * p->k_s.b + j * p->k_s.t + kh * p->k_s.h;
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++)
                        dot += (double)q[d] * k[d];
                    s[j] = dot * p->scale;
                    if (s[j] > m) m = s[j];
                }
                double sum = 0;
                for (int64_t d = 0; d < D; d++)
                    acc[d] = 0;
                for (int64_t j = lo; j <= hi; j++) {
                    const float *v = p->v + b * p->v_s.b + j * p->v_s.t + kh * p->v_s.h;
                    double w = exp(s[j] - m);
                    sum += w;
                    for (int64_t d = 0; d < D; d++)
                        acc[d] += w * v[d];
                }
                for (int64_t d = 0; d < D; d++)
                    o[d] = (float)(acc[d] / sum);
                if (lse) *lse = (float)(m + log(sum));
            }
    dn_free(s);
    dn_free(acc);
    return DN_OK;
}

/* Backward: per query row the scores again, P, dP = dO.v, dS = P (dP - dO.o); dq, and dk, dv
 * summed in double over rows and query heads. */
dn_status dn_ref_attn_backward(const dn_attn_bwd_params *bp) {
    const dn_attn_params *p = &bp->fwd;
    const int64_t G = p->H / p->HKV, D = p->D;
    const size_t nkv = (size_t)(p->B * p->TK * p->HKV * D);
    double *dk = dn_calloc(sizeof(double) * (nkv + 1)), *dv = dn_calloc(sizeof(double) * (nkv + 1));
    double *s = dn_alloc(sizeof(double) * (size_t)(p->TK + 1)),
           *dq = dn_alloc(sizeof(double) * (size_t)D);
    if (!dk || !dv || !s || !dq) {
        dn_free(dk), dn_free(dv), dn_free(s), dn_free(dq);
        return dn_fail(DN_ERR_ALLOC, "attention reference backward: out of memory");
    }
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->H; h++)
            for (int64_t i = 0; i < p->TQ; i++) {
                const int64_t kh = h / G, pos = p->TK - p->TQ + i;
                int64_t lo, hi;
                dn_attn_visible(pos, p->window, 0, p->TK, &lo, &hi);
                const float *q = p->q + b * p->q_s.b + i * p->q_s.t + h * p->q_s.h;
                const float *o = p->o + b * p->o_s.b + i * p->o_s.t + h * p->o_s.h;
                const float *dO = bp->dout + b * bp->dout_s.b + i * bp->dout_s.t + h * bp->dout_s.h;
                float *dqo = bp->dq + b * bp->dq_s.b + i * bp->dq_s.t + h * bp->dq_s.h;
                for (int64_t d = 0; d < D; d++)
                    dq[d] = 0;
                if (hi >= lo) {
                    double m = -INFINITY, Di = 0;
                    for (int64_t d = 0; d < D; d++)
                        Di += (double)dO[d] * o[d];
                    for (int64_t j = lo; j <= hi; j++) {
                        const float *k = p->k + b * p->k_s.b + j * p->k_s.t + kh * p->k_s.h;
                        double dot = 0;
                        for (int64_t d = 0; d < D; d++)
                            dot += (double)q[d] * k[d];
                        s[j] = dot * p->scale;
                        if (s[j] > m) m = s[j];
                    }
                    double sum = 0;
                    for (int64_t j = lo; j <= hi; j++)
                        sum += exp(s[j] - m);
                    for (int64_t j = lo; j <= hi; j++) {
                        const float *k = p->k + b * p->k_s.b + j * p->k_s.t + kh * p->k_s.h;
                        const float *v = p->v + b * p->v_s.b + j * p->v_s.t + kh * p->v_s.h;
                        const double P = exp(s[j] - m) / sum;
                        double dP = 0;
                        for (int64_t d = 0; d < D; d++)
                            dP += (double)dO[d] * v[d];
                        const double dS = P * (dP - Di) * p->scale;
                        double *dkj = dk + ((b * p->TK + j) * p->HKV + kh) * D;
                        double *dvj = dv + ((b * p->TK + j) * p->HKV + kh) * D;
                        for (int64_t d = 0; d < D; d++) {
                            dq[d] += dS * k[d];
                            dkj[d] += dS * q[d];
                            dvj[d] += P * dO[d];
                        }
                    }
                }
                for (int64_t d = 0; d < D; d++)
                    dqo[d] = (float)dq[d];
            }
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t j = 0; j < p->TK; j++)
            for (int64_t kh = 0; kh < p->HKV; kh++) {
                const double *a = dk + ((b * p->TK + j) * p->HKV + kh) * D;
                const double *c = dv + ((b * p->TK + j) * p->HKV + kh) * D;
                float *x = bp->dk + b * bp->dk_s.b + j * bp->dk_s.t + kh * bp->dk_s.h;
                float *y = bp->dv + b * bp->dv_s.b + j * bp->dv_s.t + kh * bp->dv_s.h;
                for (int64_t d = 0; d < D; d++)
                    x[d] = (float)a[d], y[d] = (float)c[d];
            }
    dn_free(dk), dn_free(dv), dn_free(s), dn_free(dq);
    return DN_OK;
}
