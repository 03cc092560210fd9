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

/* ---------------------------------------------------------------------------------------------
 * Backward: each (sequence, value head) through the double core of ref/la_core.c.
 * ------------------------------------------------------------------------------------------- */
#include "la_core.h"

dn_status dn_ref_la_backward(const dn_la_bwd_params *bp) {
    const dn_la_params *p = &bp->fwd;
    const int64_t K = p->K, V = p->V, HV = p->HV, group = p->HV / p->H;
    int64_t Tmax = 0;
    for (int64_t n = 0; n < dn_la_nseq(p); n++) {
        int64_t b, t0, t1;
        dn_la_seq(p, n, &b, &t0, &t1);
        if (t1 - t0 > Tmax) Tmax = t1 - t0;
    }
    const size_t per_t = (size_t)(4 * K + 4 * V + 4);
    double *mem = malloc(sizeof(double) * ((size_t)(Tmax + 1) * per_t + (size_t)(4 * K * V)));
    if (!mem) return dn_fail(DN_ERR_ALLOC, "reference backward: out of memory");
    double *q = mem, *k = q + Tmax * K, *v = k + Tmax * K, *g = v + Tmax * V, *beta = g + Tmax;
    double *dout = beta + Tmax, *dq = dout + Tmax * V, *dk = dq + Tmax * K, *dv = dk + Tmax * K;
    double *dg = dv + Tmax * V, *db = dg + Tmax, *h0 = db + Tmax, *dhT = h0 + K * V;
    double *dh0 = dhT + K * V;

    for (int64_t n = 0; n < dn_la_nseq(p); n++) {
        int64_t b, t0, t1;
        dn_la_seq(p, n, &b, &t0, &t1);
        const int64_t T = t1 - t0;
        for (int64_t hv = 0; hv < HV; hv++) {
            const int64_t h = hv / group, soff = (n * HV + hv) * K * V;
            for (int64_t t = 0; t < T; t++) {
                const int64_t tt = t0 + t;
                for (int64_t i = 0; i < K; i++) {
                    q[t * K + i] = p->q[b * p->q_s.b + tt * p->q_s.t + h * p->q_s.h + i];
                    k[t * K + i] = p->k[b * p->k_s.b + tt * p->k_s.t + h * p->k_s.h + i];
                }
                for (int64_t j = 0; j < V; j++) {
                    v[t * V + j] = p->v[b * p->v_s.b + tt * p->v_s.t + hv * p->v_s.h + j];
                    dout[t * V + j] = bp->dout[b * bp->dout_s.b + tt * bp->dout_s.t + hv * bp->dout_s.h + j];
                }
                g[t] = p->g ? p->g[b * p->g_s.b + tt * p->g_s.t + hv * p->g_s.h] : 0;
                beta[t] = p->beta ? p->beta[b * p->beta_s.b + tt * p->beta_s.t + hv * p->beta_s.h] : 1;
            }
            for (int64_t i = 0; i < K * V; i++) {
                h0[i] = p->initial_state ? p->initial_state[soff + i] : 0;
                dhT[i] = bp->dfinal_state ? bp->dfinal_state[soff + i] : 0;
            }
            dn_la_core c = {p->op, T, K, V, p->scale, p->qk_l2norm, q, k, v, g, beta, h0};
            if (dn_la_core_backward(&c, dout, dhT, dq, dk, dv, dg, db, dh0) != 0) {
                free(mem);
                return dn_fail(DN_ERR_ALLOC, "reference backward: out of memory");
            }
            /* q and k gradients: the first value head of a group writes, the others add */
            const int first = hv % group == 0;
            for (int64_t t = 0; t < T; t++) {
                const int64_t tt = t0 + t;
                float *dqr = bp->dq + b * bp->dq_s.b + tt * bp->dq_s.t + h * bp->dq_s.h;
                float *dkr = bp->dk + b * bp->dk_s.b + tt * bp->dk_s.t + h * bp->dk_s.h;
                for (int64_t i = 0; i < K; i++) {
                    dqr[i] = (float)((first ? 0.0 : dqr[i]) + dq[t * K + i]);
                    dkr[i] = (float)((first ? 0.0 : dkr[i]) + dk[t * K + i]);
                }
                float *dvr = bp->dv + b * bp->dv_s.b + tt * bp->dv_s.t + hv * bp->dv_s.h;
                for (int64_t j = 0; j < V; j++) dvr[j] = (float)dv[t * V + j];
                if (bp->dg) bp->dg[b * bp->dg_s.b + tt * bp->dg_s.t + hv * bp->dg_s.h] = (float)dg[t];
                if (bp->dbeta)
                    bp->dbeta[b * bp->dbeta_s.b + tt * bp->dbeta_s.t + hv * bp->dbeta_s.h] = (float)db[t];
            }
            if (bp->dinitial_state)
                for (int64_t i = 0; i < K * V; i++) bp->dinitial_state[soff + i] = (float)dh0[i];
        }
    }
    free(mem);
    return DN_OK;
}
