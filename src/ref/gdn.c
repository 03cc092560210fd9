/*
 * ref/gdn.c - plain-C reference of the linear-attention family (linear attention, GLA, DeltaNet,
 * Gated DeltaNet): the token-by-token recurrence of docs/OPS.md, state and sums in double.
 *
 * Gated DeltaNet is the general case; the other three ops switch off the gate (g = 0) and/or the
 * delta correction (u = v). Slow on purpose: it is what every fast path is tested against.
 */
#include "../internal.h"

#include <math.h>
#include <string.h>

/* x / sqrt(sum x^2 + 1e-6), the normalisation the Python libraries apply to q and k. */
static void load_vec(double *dst, const float *src, int64_t n, int l2norm) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = src[i];
        ss += dst[i] * dst[i];
    }
    if (l2norm) {
        double r = 1.0 / sqrt(ss + 1e-6);
        for (int64_t i = 0; i < n; i++) dst[i] *= r;
    }
}

dn_status dn_ref_la_forward(const dn_la_params *p) {
    const int64_t K = p->K, V = p->V, HV = p->HV, group = p->HV / p->H;
    const int gate = dn_op_has_gate(p->op), delta = dn_op_has_delta(p->op);
    double *S = malloc(sizeof(double) * (size_t)(K * V + 2 * K + V));
    if (!S) return dn_fail(DN_ERR_ALLOC, "reference: cannot allocate the state");
    double *q = S + K * V, *k = q + K, *u = k + K;

    for (int64_t n = 0; n < dn_la_nseq(p); n++) {
        int64_t b, t0, t1;
        dn_la_seq(p, n, &b, &t0, &t1);
        for (int64_t hv = 0; hv < HV; hv++) {
            const int64_t h = hv / group;
            const int64_t soff = (n * HV + hv) * K * V;
            for (int64_t i = 0; i < K * V; i++)
                S[i] = p->initial_state ? (double)p->initial_state[soff + i] : 0.0;

            for (int64_t t = t0; t < t1; t++) {
                load_vec(q, p->q + b * p->q_s.b + t * p->q_s.t + h * p->q_s.h, K, p->qk_l2norm);
                load_vec(k, p->k + b * p->k_s.b + t * p->k_s.t + h * p->k_s.h, K, p->qk_l2norm);
                const float *v = p->v + b * p->v_s.b + t * p->v_s.t + hv * p->v_s.h;
                float *o = p->o + b * p->o_s.b + t * p->o_s.t + hv * p->o_s.h;

                if (gate) {
                    double decay = exp((double)p->g[b * p->g_s.b + t * p->g_s.t + hv * p->g_s.h]);
                    for (int64_t i = 0; i < K * V; i++) S[i] *= decay;
                }
                /* u = beta (v - S^T k), or u = v without the delta rule */
                double beta = delta ? p->beta[b * p->beta_s.b + t * p->beta_s.t + hv * p->beta_s.h]
                                    : 1.0;
                for (int64_t j = 0; j < V; j++) {
                    double pred = 0;
                    if (delta)
                        for (int64_t i = 0; i < K; i++) pred += S[i * V + j] * k[i];
                    u[j] = beta * ((double)v[j] - pred);
                }
                /* S = S + k u^T */
                for (int64_t i = 0; i < K; i++)
                    for (int64_t j = 0; j < V; j++) S[i * V + j] += k[i] * u[j];
                /* o = S^T (scale q) */
                for (int64_t j = 0; j < V; j++) {
                    double acc = 0;
                    for (int64_t i = 0; i < K; i++) acc += S[i * V + j] * q[i];
                    o[j] = (float)(acc * p->scale);
                }
            }
            if (p->final_state)
                for (int64_t i = 0; i < K * V; i++) p->final_state[soff + i] = (float)S[i];
        }
    }
    free(S);
    return DN_OK;
}
