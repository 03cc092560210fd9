/*
 * ref/la_core.c - the linear-attention family recurrence on one (sequence, value head) in double,
 * forward and backward. The backward is plain reverse-mode differentiation of the forward's
 * steps, written in the same order, with every state kept (a reference: memory is no concern).
 *
 * Step t, with q~ = scale q^, k^ = k (or their L2-normalised forms), e = exp(g) (gated ops):
 *   S' = e S_{t-1};  p = S'^T k^;  u = beta (v - p) (delta ops) or v;  S_t = S' + k^ u^T;
 *   o_t = S_t^T q~
 */
#include "la_core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int has_gate(dn_op op) { return op == DN_OP_GLA || op == DN_OP_GDN; }
static int has_delta(dn_op op) { return op == DN_OP_DELTANET || op == DN_OP_GDN; }

/* x^ = x / sqrt(|x|^2 + 1e-6) (or x), times s. */
static void prep(double *dst, const double *x, int64_t n, int l2, double s) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    double r = l2 ? 1.0 / sqrt(ss + 1e-6) : 1.0;
    for (int64_t i = 0; i < n; i++) dst[i] = x[i] * r * s;
}

/* Gradient through x^ = s x r(x), r = (|x|^2 + eps)^(-1/2): dx = s (r dy - r^3 (x.dy) x). */
static void prep_back(double *dx, const double *x, const double *dy, int64_t n, int l2, double s) {
    if (!l2) {
        for (int64_t i = 0; i < n; i++) dx[i] = s * dy[i];
        return;
    }
    double ss = 0, xd = 0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i], xd += x[i] * dy[i];
    double r = 1.0 / sqrt(ss + 1e-6);
    for (int64_t i = 0; i < n; i++) dx[i] = s * (r * dy[i] - r * r * r * xd * x[i]);
}

/* Runs the recurrence; states[t] (t = 0..T) receives S_t (S_0 = h0) when states is not NULL,
 * and pre[t] the decayed S' of step t. */
static void run(const dn_la_core *c, double *o, double *S, double *states, double *u_all,
                double *p_all, double *qh, double *kh) {
    const int64_t K = c->K, V = c->V;
    for (int64_t i = 0; i < K * V; i++) S[i] = c->h0 ? c->h0[i] : 0.0;
    if (states) memcpy(states, S, sizeof(double) * (size_t)(K * V));
    for (int64_t t = 0; t < c->T; t++) {
        prep(qh, c->q + t * K, K, c->l2norm, c->scale);
        prep(kh, c->k + t * K, K, c->l2norm, 1.0);
        const double e = has_gate(c->op) ? exp(c->g[t]) : 1.0;
        const double beta = has_delta(c->op) ? c->beta[t] : 1.0;
        for (int64_t i = 0; i < K * V; i++) S[i] *= e;
        double *u = u_all + t * V, *p = p_all + t * V;
        for (int64_t j = 0; j < V; j++) {
            double acc = 0;
            if (has_delta(c->op))
                for (int64_t i = 0; i < K; i++) acc += S[i * V + j] * kh[i];
            p[j] = acc;
            u[j] = beta * (c->v[t * V + j] - acc);
        }
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < V; j++) S[i * V + j] += kh[i] * u[j];
        if (o)
            for (int64_t j = 0; j < V; j++) {
                double acc = 0;
                for (int64_t i = 0; i < K; i++) acc += S[i * V + j] * qh[i];
                o[t * V + j] = acc;
            }
        if (states) memcpy(states + (t + 1) * K * V, S, sizeof(double) * (size_t)(K * V));
    }
}

int dn_la_core_forward(const dn_la_core *c, double *o, double *hT) {
    const int64_t K = c->K, V = c->V, T = c->T;
    double *S = malloc(sizeof(double) * (size_t)(K * V + 2 * K + 2 * (T + 1) * V));
    if (!S) return -1;
    double *qh = S + K * V, *kh = qh + K, *u = kh + K, *p = u + (T + 1) * V;
    run(c, o, S, NULL, u, p, qh, kh);
    if (hT) memcpy(hT, S, sizeof(double) * (size_t)(K * V));
    free(S);
    return 0;
}

int dn_la_core_backward(const dn_la_core *c, const double *dout, const double *dhT, double *dq,
                        double *dk, double *dv, double *dg, double *dbeta, double *dh0) {
    const int64_t K = c->K, V = c->V, T = c->T, KV = K * V;
    const int gate = has_gate(c->op), delta = has_delta(c->op);
    double *mem = malloc(sizeof(double) * (size_t)((T + 1) * KV + 3 * KV + 6 * K + 4 * V +
                                                   2 * (T + 1) * V));
    if (!mem) return -1;
    double *states = mem, *S = states + (T + 1) * KV, *dS = S + KV, *Sp = dS + KV;
    double *qh = Sp + KV, *kh = qh + K, *dqh = kh + K, *dkh = dqh + K, *tmpk = dkh + K,
           *tmpq = tmpk + K;
    double *du = tmpq + K, *dp = du + V, *u_all = dp + V, *p_all = u_all + (T + 1) * V;
    (void)p_all;
    run(c, NULL, S, states, u_all, p_all, qh, kh);
    for (int64_t i = 0; i < KV; i++) dS[i] = dhT ? dhT[i] : 0.0;

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
            for (int64_t j = 0; j < V; j++) acc += St[i * V + j] * dot[j];
            dqh[i] = acc;
        }
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < V; j++) dS[i * V + j] += qh[i] * dot[j];
        /* S_t = S' + k^ u^T */
        for (int64_t i = 0; i < K; i++) {
            double acc = 0;
            for (int64_t j = 0; j < V; j++) acc += dS[i * V + j] * u[j];
            dkh[i] = acc;
        }
        for (int64_t j = 0; j < V; j++) {
            double acc = 0;
            for (int64_t i = 0; i < K; i++) acc += dS[i * V + j] * kh[i];
            du[j] = acc;
        }
        for (int64_t i = 0; i < KV; i++) Sp[i] = e * Sprev[i];
        if (delta) {
            /* u = beta (v - p), p = S'^T k^ */
            double db = 0;
            for (int64_t j = 0; j < V; j++) {
                double pj = 0;
                for (int64_t i = 0; i < K; i++) pj += Sp[i * V + j] * kh[i];
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
                for (int64_t j = 0; j < V; j++) dv[t * V + j] = du[j];
            if (dbeta) dbeta[t] = 0;
        }
        /* S' = e S_{t-1} */
        if (gate) {
            double acc = 0;
            for (int64_t i = 0; i < KV; i++) acc += dS[i] * Sprev[i];
            if (dg) dg[t] = e * acc;
            for (int64_t i = 0; i < KV; i++) dS[i] *= e;
        } else if (dg) {
            dg[t] = 0;
        }
        prep_back(tmpq, c->q + t * K, dqh, K, c->l2norm, c->scale);
        prep_back(tmpk, c->k + t * K, dkh, K, c->l2norm, 1.0);
        if (dq) memcpy(dq + t * K, tmpq, sizeof(double) * (size_t)K);
        if (dk) memcpy(dk + t * K, tmpk, sizeof(double) * (size_t)K);
    }
    if (dh0) memcpy(dh0, dS, sizeof(double) * (size_t)KV);
    free(mem);
    return 0;
}
