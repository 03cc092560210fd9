/*
 * test_bwd.c - gradients of the linear-attention family: the double-precision reference backward
 * against central finite differences of the double forward, for every op and option.
 */
#include "../src/ref/la_core.h"
#include "test.h"

static double *drand(rng *r, int64_t n, double lo, double hi) {
    double *x = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(r, (float)lo, (float)hi);
    return x;
}

/* L = sum o * wo + sum hT * wh */
static double loss(const dn_la_core *c, const double *wo, const double *wh) {
    double *o = malloc(sizeof(double) * (size_t)(c->T * c->V + 1)),
           *h = malloc(sizeof(double) * (size_t)(c->K * c->V));
    dn_la_core_forward(c, o, h);
    double L = 0;
    for (int64_t i = 0; i < c->T * c->V; i++) L += o[i] * wo[i];
    for (int64_t i = 0; i < c->K * c->V; i++) L += h[i] * wh[i];
    free(o), free(h);
    return L;
}

/* Central differences of L over every element of x (n of them) against the analytic gradient. */
static int fd_check(dn_la_core *c, double *x, int64_t n, const double *grad, const double *wo,
                    const double *wh, const char *what) {
    int fails = 0;
    double num = 0, den = 0, worst = 0;
    int64_t wi = 0;
    for (int64_t i = 0; i < n; i++) {
        const double x0 = x[i], h = 1e-5 * (1 + fabs(x0));
        x[i] = x0 + h;
        double lp = loss(c, wo, wh);
        x[i] = x0 - h;
        double lm = loss(c, wo, wh);
        x[i] = x0;
        double fd = (lp - lm) / (2 * h), d = fd - grad[i];
        num += d * d, den += fd * fd;
        if (fabs(d) > worst) worst = fabs(d), wi = i;
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    CHECK(rel < 1e-6, "%s: gradient rel error %.3g against finite differences (worst [%lld] %.3g)",
          what, rel, (long long)wi, worst);
    return fails;
}

static int grad_case(dn_op op, int64_t T, int64_t K, int64_t V, int l2, double glo, double ghi,
                     double blo, double bhi, uint64_t seed) {
    int fails = 0;
    rng r = {seed};
    double kamp = l2 ? 1.0 : 1.5 / sqrt((double)K);
    dn_la_core c = {op, T, K, V, 1.0 / sqrt((double)K), l2, NULL, NULL, NULL, NULL, NULL, NULL};
    double *q = drand(&r, T * K, -1, 1), *k = drand(&r, T * K, -kamp, kamp), *v = drand(&r, T * V, -1, 1);
    double *g = drand(&r, T, glo, ghi), *beta = drand(&r, T, blo, bhi), *h0 = drand(&r, K * V, -0.5, 0.5);
    double *wo = drand(&r, T * V, -1, 1), *wh = drand(&r, K * V, -1, 1);
    c.q = q, c.k = k, c.v = v, c.g = g, c.beta = beta, c.h0 = h0;
    double *dq = malloc(sizeof(double) * T * K), *dk = malloc(sizeof(double) * T * K);
    double *dv = malloc(sizeof(double) * T * V), *dg = malloc(sizeof(double) * T);
    double *db = malloc(sizeof(double) * T), *dh0 = malloc(sizeof(double) * K * V);
    CHECK(dn_la_core_backward(&c, wo, wh, dq, dk, dv, dg, db, dh0) == 0, "backward");
    char what[160];
#define FD(name, x, n, gr)                                                                         \
    snprintf(what, sizeof what, "%s T=%lld l2=%d g in [%g,%g] beta in [%g,%g]: d%s",            \
             dn_op_name(op), (long long)T, l2, glo, ghi, blo, bhi, name);                        \
    fails += fd_check(&c, x, n, gr, wo, wh, what)
    FD("q", q, T * K, dq);
    FD("k", k, T * K, dk);
    FD("v", v, T * V, dv);
    FD("h0", h0, K * V, dh0);
    if (op == DN_OP_GLA || op == DN_OP_GDN) { FD("g", g, T, dg); }
    if (op == DN_OP_DELTANET || op == DN_OP_GDN) { FD("beta", beta, T, db); }
#undef FD
    free(q), free(k), free(v), free(g), free(beta), free(h0), free(wo), free(wh);
    free(dq), free(dk), free(dv), free(dg), free(db), free(dh0);
    return fails;
}

static int test_grad_reference(void) {
    int fails = 0, idx = 0;
    static const int64_t Ts[] = {1, 7, 40};
    for (int op = 0; op <= DN_OP_GDN; op++)
        for (int ti = 0; ti < 3; ti++)
            for (int l2 = 0; l2 < 2; l2++, idx++)
                fails += grad_case((dn_op)op, Ts[ti], 5, 3, l2, -0.5, 0, 0, 1, 70 + idx);
    /* strong decay, no decay; beta near 0 and near 2 (normalised keys) */
    fails += grad_case(DN_OP_GDN, 30, 4, 6, 1, -5.2, -4.8, 0, 1, 1);
    fails += grad_case(DN_OP_GDN, 30, 4, 6, 1, 0, 0, 0, 1, 2);
    fails += grad_case(DN_OP_GDN, 30, 4, 6, 1, -0.3, 0, 0, 0.02, 3);
    fails += grad_case(DN_OP_DELTANET, 30, 4, 6, 1, 0, 0, 1.98, 2.0, 4);
    fails += grad_case(DN_OP_GDN, 30, 4, 6, 1, -0.3, 0, 1.98, 2.0, 5);
    /* long-ish */
    fails += grad_case(DN_OP_GDN, 300, 4, 4, 1, -0.2, 0, 0, 1, 6);
    return fails;
}

const test_case dn_tests_bwd[] = {
    {"bwd_la_reference_vs_finite_differences", test_grad_reference},
    {NULL, NULL},
};
