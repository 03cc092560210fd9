/*
 * ref/la.c - the plain-C reference of the linear-attention family (linear attention, GLA,
 * DeltaNet, Gated DeltaNet): the token recurrence of docs/OPS.md on one (sequence, value head) in
 * double, forward and backward, and the public-params entry points that gather each (sequence,
 * value head) into it. One recurrence serves the forward, the backward and the finite-difference
 * tests, so there is a single statement of the math to trust.
 *
 * Gated DeltaNet is the general case; the other three ops switch off the gate (g = 0) and/or the
 * delta correction (u = v). Slow on purpose: it is what every fast path is tested against. The
 * backward is plain reverse-mode differentiation of the forward's steps, written in the same order,
 * with every state kept (a reference: memory is no concern).
 *
 * Step t, with q~ = scale q^, k^ = k (or their L2-normalised forms), e = exp(g) (gated ops):
 *   S' = e S_{t-1};  p = S'^T k^;  u = beta (v - p) (delta ops) or v;  S_t = S' + k^ u^T;
 *   o_t = S_t^T q~
 */
#include "la.h"
#include "../internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* x^ = x / sqrt(|x|^2 + 1e-6) (or x), times s. */
static void prep(double *dst, const double *x, int64_t n, int l2, double s) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    double r = l2 ? 1.0 / sqrt(ss + 1e-6) : 1.0;
    for (int64_t i = 0; i < n; i++)
        dst[i] = x[i] * r * s;
}

/* Gradient through x^ = s x r(x), r = (|x|^2 + eps)^(-1/2): dx = s (r dy - r^3 (x.dy) x). */
static void prep_back(double *dx, const double *x, const double *dy, int64_t n, int l2, double s) {
    if (!l2) {
        for (int64_t i = 0; i < n; i++)
            dx[i] = s * dy[i];
        return;
    }
    double ss = 0, xd = 0;
    for (int64_t i = 0; i < n; i++)
        ss += x[i] * x[i], xd += x[i] * dy[i];
    double r = 1.0 / sqrt(ss + 1e-6);
    for (int64_t i = 0; i < n; i++)
        dx[i] = s * (r * dy[i] - r * r * r * xd * x[i]);
}

/* Runs the recurrence; states[t] (t = 0..T) receives S_t (S_0 = h0) when states is not NULL,
 * and pre[t] the decayed S' of step t. */
static void run(const dn_la_core *c, double *o, double *S, double *states, double *u_all,
                double *p_all, double *qh, double *kh) {
    const int64_t K = c->K, V = c->V;
    for (int64_t i = 0; i < K * V; i++)
        S[i] = c->h0 ? c->h0[i] : 0.0;
    if (states) memcpy(states, S, sizeof(double) * (size_t)(K * V));
    for (int64_t t = 0; t < c->T; t++) {
        prep(qh, c->q + t * K, K, c->l2norm, c->scale);
        prep(kh, c->k + t * K, K, c->l2norm, 1.0);
        const double e = dn_op_has_gate(c->op) ? exp(c->g[t]) : 1.0;
        const double beta = dn_op_has_delta(c->op) ? c->beta[t] : 1.0;
        for (int64_t i = 0; i < K * V; i++)
            S[i] *= e;
        double *u = u_all + t * V, *p = p_all + t * V;
        for (int64_t j = 0; j < V; j++) {
            double acc = 0;
            if (dn_op_has_delta(c->op))
                for (int64_t i = 0; i < K; i++)
                    acc += S[i * V + j] * kh[i];
            p[j] = acc;
            u[j] = beta * (c->v[t * V + j] - acc);
        }
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < V; j++)
                S[i * V + j] += kh[i] * u[j];
        if (o)
            for (int64_t j = 0; j < V; j++) {
                double acc = 0;
                for (int64_t i = 0; i < K; i++)
                    acc += S[i * V + j] * qh[i];
                o[t * V + j] = acc;
            }
        if (states) memcpy(states + (t + 1) * K * V, S, sizeof(double) * (size_t)(K * V));
    }
}

size_t dn_la_core_forward_doubles(int64_t T, int64_t K, int64_t V) {
    return (size_t)(K * V + 2 * K + 2 * (T + 1) * V);
}

size_t dn_la_core_backward_doubles(int64_t T, int64_t K, int64_t V) {
    return (size_t)((T + 1) * K * V + 3 * K * V + 6 * K + 4 * V + 2 * (T + 1) * V);
}

void dn_la_core_forward(const dn_la_core *c, double *o, double *hT, double *work) {
    const int64_t K = c->K, V = c->V, T = c->T;
    double *S = work;
    double *qh = S + K * V, *kh = qh + K, *u = kh + K, *p = u + (T + 1) * V;
    run(c, o, S, NULL, u, p, qh, kh);
    if (hT) memcpy(hT, S, sizeof(double) * (size_t)(K * V));
}

void dn_la_core_backward(const dn_la_core *c, const double *dout, const double *dhT, double *dq,
                         double *dk, double *dv, double *dg, double *dbeta, double *dh0,
                         double *work) {
    const int64_t K = c->K, V = c->V, T = c->T, KV = K * V;
    const int gate = dn_op_has_gate(c->op), delta = dn_op_has_delta(c->op);
    double *states = work, *S = states + (T + 1) * KV, *dS = S + KV, *Sp = dS + KV;
    double *qh = Sp + KV, *kh = qh + K, *dqh = kh + K, *dkh = dqh + K, *tmpk = dkh + K,
           *tmpq = tmpk + K;
    double *du = tmpq + K, *dp = du + V, *u_all = dp + V, *p_all = u_all + (T + 1) * V;
    (void)p_all;
    run(c, NULL, S, states, u_all, p_all, qh, kh);
    for (int64_t i = 0; i < KV; i++)
        dS[i] = dhT ? dhT[i] : 0.0;

    for (int64_t t = T - 1; t >= 0; t--) {
        const double *St = states + (t + 1) * KV, *Sprev = states + t * KV;
        prep(qh, c->q + t * K, K, c->l2norm, c->scale);
        prep(kh, c->k + t * K, K, c->l2norm, 1.0);
        const double e = gate ? exp(c->g[t]) : 1.0;
        const double beta = delta ? c->beta[t] : 1.0;
        const double *dot = dout + t * V, *u = u_all + t * V;
        /* o_t = S_t^T q~ */
        for (int64_t i = 0; i < K; i++) {
            double acc = 0;
            for (int64_t j = 0; j < V; j++)
                acc += St[i * V + j] * dot[j];
            dqh[i] = acc;
        }
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < V; j++)
                dS[i * V + j] += qh[i] * dot[j];
        /* S_t = S' + k^ u^T */
        for (int64_t i = 0; i < K; i++) {
            double acc = 0;
            for (int64_t j = 0; j < V; j++)
                acc += dS[i * V + j] * u[j];
            dkh[i] = acc;
        }
        for (int64_t j = 0; j < V; j++) {
            double acc = 0;
            for (int64_t i = 0; i < K; i++)
                acc += dS[i * V + j] * kh[i];
            du[j] = acc;
        }
        for (int64_t i = 0; i < KV; i++)
            Sp[i] = e * Sprev[i];
        if (delta) {
            /* u = beta (v - p), p = S'^T k^ */
            double db = 0;
            for (int64_t j = 0; j < V; j++) {
                double pj = 0;
                for (int64_t i = 0; i < K; i++)
                    pj += Sp[i * V + j] * kh[i];
                db += du[j] * (c->v[t * V + j] - pj);
                if (dv) dv[t * V + j] = beta * du[j];
                dp[j] = -beta * du[j];
            }
            if (dbeta) dbeta[t] = db;
            for (int64_t i = 0; i < K; i++) {
                double acc = 0;
                for (int64_t j = 0; j < V; j++) {
                    dS[i * V + j] += kh[i] * dp[j];
                    acc += Sp[i * V + j] * dp[j];
                }
                dkh[i] += acc;
            }
        } else {
            if (dv)
                for (int64_t j = 0; j < V; j++)
                    dv[t * V + j] = du[j];
            if (dbeta) dbeta[t] = 0;
        }
        /* S' = e S_{t-1} */
        if (gate) {
            double acc = 0;
            for (int64_t i = 0; i < KV; i++)
                acc += dS[i] * Sprev[i];
            if (dg) dg[t] = e * acc;
            for (int64_t i = 0; i < KV; i++)
                dS[i] *= e;
        } else if (dg) {
            dg[t] = 0;
        }
        prep_back(tmpq, c->q + t * K, dqh, K, c->l2norm, c->scale);
        prep_back(tmpk, c->k + t * K, dkh, K, c->l2norm, 1.0);
        if (dq) memcpy(dq + t * K, tmpq, sizeof(double) * (size_t)K);
        if (dk) memcpy(dk + t * K, tmpk, sizeof(double) * (size_t)K);
    }
    if (dh0) memcpy(dh0, dS, sizeof(double) * (size_t)KV);
}

/* ---------------------------------------------------------------------------------------------
 * Public-params entry points: each (sequence, value head) gathered into double, run through the
 * recurrence above, and scattered back. All scratch is allocated before any output is written.
 * ------------------------------------------------------------------------------------------- */

static int64_t longest(const dn_la_params *p) {
    int64_t m = 0;
    for (int64_t n = 0; n < dn_la_nseq(p); n++) {
        int64_t b, t0, t1;
        dn_la_seq(p, n, &b, &t0, &t1);
        if (t1 - t0 > m) m = t1 - t0;
    }
    return m;
}

/* Inputs of value head hv of sequence (b, t0..t0+T) as doubles: q, k [T,K], v [T,V], g, beta [T]
 * (0 and 1 where the op has none), h0 [K,V]. */
static void gather(const dn_la_params *p, int64_t n, int64_t b, int64_t t0, int64_t T, int64_t hv,
                   double *q, double *k, double *v, double *g, double *beta, double *h0) {
    const int64_t K = p->K, V = p->V, h = hv / (p->HV / p->H);
    const int64_t soff = (n * p->HV + hv) * K * V;
    for (int64_t t = 0; t < T; t++) {
        const int64_t tt = t0 + t;
        for (int64_t i = 0; i < K; i++) {
            q[t * K + i] = p->q[b * p->q_s.b + tt * p->q_s.t + h * p->q_s.h + i];
            k[t * K + i] = p->k[b * p->k_s.b + tt * p->k_s.t + h * p->k_s.h + i];
        }
        for (int64_t j = 0; j < V; j++)
            v[t * V + j] = p->v[b * p->v_s.b + tt * p->v_s.t + hv * p->v_s.h + j];
        g[t] = p->g ? p->g[b * p->g_s.b + tt * p->g_s.t + hv * p->g_s.h] : 0;
        beta[t] = p->beta ? p->beta[b * p->beta_s.b + tt * p->beta_s.t + hv * p->beta_s.h] : 1;
    }
    for (int64_t i = 0; i < K * V; i++)
        h0[i] = p->initial_state ? p->initial_state[soff + i] : 0;
}

dn_status dn_ref_la_forward(const dn_la_params *p) {
    const int64_t K = p->K, V = p->V, Tm = longest(p);
    const size_t io = (size_t)(Tm * (2 * K + 2 * V + 2) + 2 * K * V);
    double *mem = dn_alloc(sizeof(double) * (io + dn_la_core_forward_doubles(Tm, K, V)));
    if (!mem) return dn_fail(DN_ERR_ALLOC, "%s reference: out of memory", dn_op_name(p->op));
    double *q = mem, *k = q + Tm * K, *v = k + Tm * K, *g = v + Tm * V, *beta = g + Tm;
    double *o = beta + Tm, *h0 = o + Tm * V, *hT = h0 + K * V, *work = hT + K * V;
    /* The final state may be the initial state (in place): every head of a sequence reads its
     * own slice of h0 before it writes that slice, so the update stays correct. */
    for (int64_t n = 0; n < dn_la_nseq(p); n++) {
        int64_t b, t0, t1;
        dn_la_seq(p, n, &b, &t0, &t1);
        const int64_t T = t1 - t0;
        for (int64_t hv = 0; hv < p->HV; hv++) {
            gather(p, n, b, t0, T, hv, q, k, v, g, beta, h0);
            dn_la_core c = {p->op, T, K, V, p->scale, p->qk_l2norm, q, k, v, g, beta, h0};
            dn_la_core_forward(&c, o, hT, work);
            for (int64_t t = 0; t < T; t++) {
                float *orow = p->o + b * p->o_s.b + (t0 + t) * p->o_s.t + hv * p->o_s.h;
                for (int64_t j = 0; j < V; j++)
                    orow[j] = (float)o[t * V + j];
            }
            if (p->final_state) {
                float *fs = p->final_state + (n * p->HV + hv) * K * V;
                for (int64_t i = 0; i < K * V; i++)
                    fs[i] = (float)hT[i];
            }
        }
    }
    dn_free(mem);
    return DN_OK;
}

dn_status dn_ref_la_backward(const dn_la_bwd_params *bp) {
    const dn_la_params *p = &bp->fwd;
    const int64_t K = p->K, V = p->V, HV = p->HV, group = p->HV / p->H, Tm = longest(p);
    const size_t io = (size_t)(Tm * (4 * K + 4 * V + 4) + 3 * K * V);
    double *mem = dn_alloc(sizeof(double) * (io + dn_la_core_backward_doubles(Tm, K, V)));
    if (!mem)
        return dn_fail(DN_ERR_ALLOC, "%s reference backward: out of memory", dn_op_name(p->op));
    double *q = mem, *k = q + Tm * K, *v = k + Tm * K, *g = v + Tm * V, *beta = g + Tm;
    double *dout = beta + Tm, *dq = dout + Tm * V, *dk = dq + Tm * K, *dv = dk + Tm * K;
    double *dg = dv + Tm * V, *db = dg + Tm, *h0 = db + Tm, *dhT = h0 + K * V;
    double *dh0 = dhT + K * V, *work = dh0 + K * V;

    for (int64_t n = 0; n < dn_la_nseq(p); n++) {
        int64_t b, t0, t1;
        dn_la_seq(p, n, &b, &t0, &t1);
        const int64_t T = t1 - t0;
        for (int64_t hv = 0; hv < HV; hv++) {
            const int64_t h = hv / group, soff = (n * HV + hv) * K * V;
            gather(p, n, b, t0, T, hv, q, k, v, g, beta, h0);
            for (int64_t t = 0; t < T; t++) {
                const float *d =
                    bp->dout + b * bp->dout_s.b + (t0 + t) * bp->dout_s.t + hv * bp->dout_s.h;
                for (int64_t j = 0; j < V; j++)
                    dout[t * V + j] = d[j];
            }
            for (int64_t i = 0; i < K * V; i++)
                dhT[i] = bp->dfinal_state ? bp->dfinal_state[soff + i] : 0;
            dn_la_core c = {p->op, T, K, V, p->scale, p->qk_l2norm, q, k, v, g, beta, h0};
            dn_la_core_backward(&c, dout, dhT, dq, dk, dv, dg, db, dh0, work);
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
                for (int64_t j = 0; j < V; j++)
                    dvr[j] = (float)dv[t * V + j];
                if (bp->dg)
                    bp->dg[b * bp->dg_s.b + tt * bp->dg_s.t + hv * bp->dg_s.h] = (float)dg[t];
                if (bp->dbeta)
                    bp->dbeta[b * bp->dbeta_s.b + tt * bp->dbeta_s.t + hv * bp->dbeta_s.h] =
                        (float)db[t];
            }
            if (bp->dinitial_state)
                for (int64_t i = 0; i < K * V; i++)
                    bp->dinitial_state[soff + i] = (float)dh0[i];
        }
    }
    dn_free(mem);
    return DN_OK;
}
