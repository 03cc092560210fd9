/*
 * test_la_bwd.c - gradients of the linear-attention family: the double-precision reference backward
 * against central finite differences of the double forward, for every op and option.
 */
#include "../src/ref/la.h"
#include "test.h"

static double *drand(rng *r, int64_t n, double lo, double hi) {
    double *x = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_uniform(r, (float)lo, (float)hi);
    return x;
}

/* L = sum o * wo + sum hT * wh */
static double loss(const dn_la_core *c, const double *wo, const double *wh) {
    double *o = malloc(sizeof(double) * (size_t)(c->T * c->V + 1)),
           *h = malloc(sizeof(double) * (size_t)(c->K * c->V)),
           *w = malloc(sizeof(double) * dn_la_core_forward_doubles(c->T, c->K, c->V));
    dn_la_core_forward(c, o, h, w);
    free(w);
    double L = 0;
    for (int64_t i = 0; i < c->T * c->V; i++)
        L += o[i] * wo[i];
    for (int64_t i = 0; i < c->K * c->V; i++)
        L += h[i] * wh[i];
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
    double *q = drand(&r, T * K, -1, 1), *k = drand(&r, T * K, -kamp, kamp),
           *v = drand(&r, T * V, -1, 1);
    double *g = drand(&r, T, glo, ghi), *beta = drand(&r, T, blo, bhi),
           *h0 = drand(&r, K * V, -0.5, 0.5);
    double *wo = drand(&r, T * V, -1, 1), *wh = drand(&r, K * V, -1, 1);
    c.q = q, c.k = k, c.v = v, c.g = g, c.beta = beta, c.h0 = h0;
    double *dq = malloc(sizeof(double) * T * K), *dk = malloc(sizeof(double) * T * K);
    double *dv = malloc(sizeof(double) * T * V), *dg = malloc(sizeof(double) * T);
    double *db = malloc(sizeof(double) * T), *dh0 = malloc(sizeof(double) * K * V);
    double *work = malloc(sizeof(double) * dn_la_core_backward_doubles(T, K, V));
    dn_la_core_backward(&c, wo, wh, dq, dk, dv, dg, db, dh0, work);
    free(work);
    char what[160];
#define FD(name, x, n, gr)                                                                         \
    snprintf(what, sizeof what, "%s T=%lld l2=%d g in [%g,%g] beta in [%g,%g]: d%s",               \
             dn_op_name(op), (long long)T, l2, glo, ghi, blo, bhi, name);                          \
    fails += fd_check(&c, x, n, gr, wo, wh, what)
    FD("q", q, T * K, dq);
    FD("k", k, T * K, dk);
    FD("v", v, T * V, dv);
    FD("h0", h0, K * V, dh0);
    if (op == DN_OP_GLA || op == DN_OP_GDN) {
        FD("g", g, T, dg);
    }
    if (op == DN_OP_DELTANET || op == DN_OP_GDN) {
        FD("beta", beta, T, db);
    }
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

/* The float entry point: grouped value heads sum into dq and dk exactly as the expanded problem
 * (one key head per value head, q and k repeated) does; a varlen batch equals its sequences one
 * by one; a sequence split in two calls (dfinal_state of the first = dinitial_state of the
 * second) equals one call. */
typedef struct {
    float *q, *k, *v, *g, *beta, *h0, *dout, *dq, *dk, *dv, *dg, *db, *dh0;
} gbufs;

static void gb_alloc(gbufs *x, rng *r, int64_t T, int64_t H, int64_t HV, int64_t K, int64_t V,
                     int64_t NS) {
    x->q = falloc(T * H * K), x->k = falloc(T * H * K), x->v = falloc(T * HV * V);
    x->g = falloc(T * HV), x->beta = falloc(T * HV), x->h0 = falloc(NS * HV * K * V);
    x->dout = falloc(T * HV * V), x->dq = falloc(T * H * K), x->dk = falloc(T * H * K);
    x->dv = falloc(T * HV * V), x->dg = falloc(T * HV), x->db = falloc(T * HV);
    x->dh0 = falloc(NS * HV * K * V);
    fill_uniform(r, x->q, T * H * K, -1, 1), fill_uniform(r, x->k, T * H * K, -1, 1);
    fill_uniform(r, x->v, T * HV * V, -1, 1), fill_uniform(r, x->g, T * HV, -0.5f, 0);
    fill_uniform(r, x->beta, T * HV, 0, 1), fill_uniform(r, x->h0, NS * HV * K * V, -0.5f, 0.5f);
    fill_uniform(r, x->dout, T * HV * V, -1, 1);
}
static void gb_free(gbufs *x) {
    free(x->q), free(x->k), free(x->v), free(x->g), free(x->beta), free(x->h0), free(x->dout);
    free(x->dq), free(x->dk), free(x->dv), free(x->dg), free(x->db), free(x->dh0);
}
static dn_status gb_run(gbufs *x, dn_op op, int64_t T, int64_t H, int64_t HV, int64_t K, int64_t V,
                        const int64_t *cu, int64_t ns, const float *dhT) {
    dn_la_params f = dn_la_params_default(op, 1, T, H, HV, K, V);
    f.q = x->q, f.k = x->k, f.v = x->v, f.o = x->dv, f.qk_l2norm = 1, f.impl = DN_IMPL_REF;
    f.g = op == DN_OP_GLA || op == DN_OP_GDN ? x->g : NULL;
    f.beta = op == DN_OP_DELTANET || op == DN_OP_GDN ? x->beta : NULL;
    f.initial_state = x->h0, f.cu_seqlens = cu, f.n_seqs = ns;
    dn_la_bwd_params b = dn_la_bwd_params_default(&f);
    b.dout = x->dout, b.dfinal_state = dhT, b.dq = x->dq, b.dk = x->dk, b.dv = x->dv;
    b.dg = f.g ? x->dg : NULL, b.dbeta = f.beta ? x->db : NULL, b.dinitial_state = x->dh0;
    return dn_la_backward(&b);
}

static int test_grad_api(void) {
    int fails = 0;
    const int64_t T = 50, H = 2, HV = 4, K = 8, V = 6, G = HV / H;
    for (int op = 0; op <= DN_OP_GDN; op++) {
        rng r = {900 + (uint64_t)op};
        gbufs a, e;
        gb_alloc(&a, &r, T, H, HV, K, V, 1);
        gb_alloc(&e, &r, T, HV, HV, K, V, 1);
        /* the expanded problem: value head j gets its own copy of key head j / G */
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < HV; j++)
                for (int64_t i = 0; i < K; i++) {
                    e.q[(t * HV + j) * K + i] = a.q[(t * H + j / G) * K + i];
                    e.k[(t * HV + j) * K + i] = a.k[(t * H + j / G) * K + i];
                }
        memcpy(e.v, a.v, sizeof(float) * T * HV * V), memcpy(e.g, a.g, sizeof(float) * T * HV);
        memcpy(e.beta, a.beta, sizeof(float) * T * HV),
            memcpy(e.h0, a.h0, sizeof(float) * HV * K * V);
        memcpy(e.dout, a.dout, sizeof(float) * T * HV * V);
        CHECK(gb_run(&a, (dn_op)op, T, H, HV, K, V, NULL, 0, NULL) == DN_OK, "%s", dn_last_error());
        CHECK(gb_run(&e, (dn_op)op, T, HV, HV, K, V, NULL, 0, NULL) == DN_OK, "%s",
              dn_last_error());
        float *sum = falloc(T * H * K);
        for (int which = 0; which < 2; which++) {
            const float *src = which ? e.dk : e.dq;
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t i = 0; i < K; i++) {
                        double acc = 0;
                        for (int64_t j = h * G; j < (h + 1) * G; j++)
                            acc += src[(t * HV + j) * K + i];
                        sum[(t * H + h) * K + i] = (float)acc;
                    }
            fails += check_close(which ? "grouped heads: dk" : "grouped heads: dq",
                                 which ? a.dk : a.dq, sum, T * H * K, 1e-6);
        }
        fails += check_close("grouped heads: dv", a.dv, e.dv, T * HV * V, 1e-6);
        free(sum);

        /* split in two calls carrying the state, against one call */
        const int64_t t1 = 19, n2 = T - t1;
        gbufs s1 = a, s2 = a;
        float *mid = falloc(HV * K * V), *dmid = falloc(HV * K * V);
        float *dq2 = falloc(T * H * K), *dk2 = falloc(T * H * K), *dv2 = falloc(T * HV * V);
        float *dg2 = falloc(T * HV), *db2 = falloc(T * HV), *dh02 = falloc(HV * K * V);
        {
            dn_la_params f = dn_la_params_default((dn_op)op, 1, t1, H, HV, K, V);
            f.q = a.q, f.k = a.k, f.v = a.v, f.o = dv2, f.qk_l2norm = 1, f.initial_state = a.h0;
            f.g = op == DN_OP_GLA || op == DN_OP_GDN ? a.g : NULL;
            f.beta = op == DN_OP_DELTANET || op == DN_OP_GDN ? a.beta : NULL;
            f.final_state = mid, f.impl = DN_IMPL_REF;
            CHECK(dn_la_forward(&f) == DN_OK, "%s", dn_last_error());
        }
        s2.q = a.q + t1 * H * K, s2.k = a.k + t1 * H * K, s2.v = a.v + t1 * HV * V;
        s2.g = a.g + t1 * HV, s2.beta = a.beta + t1 * HV, s2.h0 = mid,
        s2.dout = a.dout + t1 * HV * V;
        s2.dq = dq2 + t1 * H * K, s2.dk = dk2 + t1 * H * K, s2.dv = dv2 + t1 * HV * V;
        s2.dg = dg2 + t1 * HV, s2.db = db2 + t1 * HV, s2.dh0 = dmid;
        CHECK(gb_run(&s2, (dn_op)op, n2, H, HV, K, V, NULL, 0, NULL) == DN_OK, "%s",
              dn_last_error());
        s1.dq = dq2, s1.dk = dk2, s1.dv = dv2, s1.dg = dg2, s1.db = db2, s1.dh0 = dh02;
        CHECK(gb_run(&s1, (dn_op)op, t1, H, HV, K, V, NULL, 0, dmid) == DN_OK, "%s",
              dn_last_error());
        fails += check_close("split: dq", dq2, a.dq, T * H * K, 1e-6);
        fails += check_close("split: dk", dk2, a.dk, T * H * K, 1e-6);
        fails += check_close("split: dv", dv2, a.dv, T * HV * V, 1e-6);
        fails += check_close("split: dh0", dh02, a.dh0, HV * K * V, 1e-6);
        if (op == DN_OP_GLA || op == DN_OP_GDN)
            fails += check_close("split: dg", dg2, a.dg, T * HV, 1e-6);
        if (op == DN_OP_DELTANET || op == DN_OP_GDN)
            fails += check_close("split: dbeta", db2, a.db, T * HV, 1e-6);
        free(mid), free(dmid), free(dq2), free(dk2), free(dv2), free(dg2), free(db2), free(dh02);
        gb_free(&a), gb_free(&e);
    }
    /* rejected inputs */
    dn_la_params f = dn_la_params_default(DN_OP_GDN, 1, 4, 1, 1, 4, 4);
    float buf[64] = {0}, grads[5][16];
    f.q = f.k = f.v = f.g = f.beta = buf, f.o = buf;
    dn_la_bwd_params b = dn_la_bwd_params_default(&f);
    b.dout = buf, b.dq = grads[0], b.dk = grads[1], b.dv = grads[2], b.dg = grads[3],
    b.dbeta = grads[4];
    b.fwd.impl = DN_IMPL_RECURRENT;
    CHECK(dn_la_backward(&b) == DN_ERR_UNSUPPORTED, "recurrent backward accepted");
    b.fwd.impl = DN_IMPL_REF, b.dg = NULL;
    CHECK(dn_la_backward(&b) == DN_ERR_ARG, "missing dg accepted");
    CHECK(dn_la_backward(NULL) == DN_ERR_NULL, "NULL accepted");
    return fails;
}

/* The fast chunkwise backward against the reference backward, every SIMD level, on the shape
 * grid of the forward tests (odd lengths, T below and not a multiple of the chunk, grouped heads,
 * strided inputs, varlen). fp32 against double: relative RMS at most 1e-5 for every gradient
 * (the largest seen is 1.3e-6, for dg). */
static float bwd_beta_hi = 1.0f, bwd_g_lo = -0.4f; /* ranges of beta and g in bwd_case */
static int bwd_reset = -1; /* >= 0: the reset_gate pattern (test.h) laid over g in bwd_case */

static int bwd_case(dn_op op, int64_t B, int64_t T, int64_t H, int64_t HV, int64_t K, int64_t V,
                    int chunk, int l2, const int64_t *cu, int64_t ns, uint64_t seed,
                    const char *label) {
    int fails = 0;
    rng r = {seed};
    dn_la_params f = dn_la_params_default(op, B, T, H, HV, K, V);
    /* strided q: padded heads */
    f.q_s = (dn_strides){T * H * (K + 3), H * (K + 3), K + 3};
    const int64_t nq = B * T * H * (K + 3), nk = B * T * H * K, nv = B * T * HV * V,
                  ng = B * T * HV;
    const int64_t NS = cu ? ns : B, nst = NS * HV * K * V;
    float *q = falloc(nq), *k = falloc(nk), *v = falloc(nv), *g = falloc(ng), *beta = falloc(ng);
    float *h0 = falloc(nst), *dout = falloc(nv), *dhT = falloc(nst);
    const float ks = l2 ? 1.0f : (float)sqrt(3.0 / (double)K);
    fill_uniform(&r, q, nq, -1, 1), fill_uniform(&r, k, nk, -ks, ks),
        fill_uniform(&r, v, nv, -1, 1);
    fill_uniform(&r, g, ng, bwd_g_lo, 0), fill_uniform(&r, beta, ng, 0, bwd_beta_hi);
    fill_uniform(&r, h0, nst, -0.5f, 0.5f), fill_uniform(&r, dout, nv, -1, 1);
    fill_uniform(&r, dhT, nst, -1, 1);
    if (bwd_reset >= 0)
        for (int64_t n = 0; n < NS; n++) {
            const int64_t b = cu ? 0 : n, t0 = cu ? cu[n] : 0, t1 = cu ? cu[n + 1] : T;
            for (int64_t t = t0; t < t1; t++)
                for (int64_t h = 0; h < HV; h++)
                    g[(b * T + t) * HV + h] =
                        reset_gate(bwd_reset, t - t0, t1 - t0, h, g[(b * T + t) * HV + h]);
        }
    f.q = q, f.k = k, f.v = v, f.o = dout, f.qk_l2norm = l2, f.initial_state = h0;
    f.g = op == DN_OP_GLA || op == DN_OP_GDN ? g : NULL;
    f.beta = op == DN_OP_DELTANET || op == DN_OP_GDN ? beta : NULL;
    f.cu_seqlens = cu, f.n_seqs = ns, f.chunk_size = chunk;
    float *out[2][6];
    const int64_t sz[6] = {nk, nk, nv, ng, ng, nst};
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 6; i++)
            out[w][i] = falloc(sz[i]), poison(out[w][i], sz[i]);
    dn_isa best = dn_isa_best();
    for (int isa = 0; isa <= (int)best; isa++) {
        if (!test_use_isa((dn_isa)isa)) continue;
        for (int w = 0; w < 2; w++) {
            if (w == 0 && isa > 0) continue; /* the reference once */
            dn_la_bwd_params b = dn_la_bwd_params_default(&f);
            b.fwd.impl = w == 0 ? DN_IMPL_REF : DN_IMPL_CHUNK;
            b.dout = dout, b.dfinal_state = dhT;
            b.dq = out[w][0], b.dk = out[w][1], b.dv = out[w][2];
            b.dg = f.g ? out[w][3] : NULL, b.dbeta = f.beta ? out[w][4] : NULL;
            b.dinitial_state = out[w][5];
            if (w == 1)
                for (int i = 0; i < 6; i++)
                    poison(out[1][i], sz[i]);
            dn_status st = dn_la_backward(&b);
            CHECK(st == DN_OK, "%s: %s", label, dn_last_error());
        }
        static const char *const names[6] = {"dq", "dk", "dv", "dg", "dbeta", "dh0"};
        for (int i = 0; i < 6; i++) {
            if ((i == 3 && !f.g) || (i == 4 && !f.beta)) continue;
            char what[200];
            snprintf(what, sizeof what, "%s %s %s", label, dn_isa_name((dn_isa)isa), names[i]);
            fails += check_close(what, out[1][i], out[0][i], sz[i], 1e-5);
        }
    }
    dn_set_isa(best);
    /* the training forward: its outputs equal the forward's; the backward reading its saved
     * buffer equals the reference */
    {
        const int64_t no = B * T * HV * V;
        float *o_ref = falloc(no), *s_ref = falloc(nst), *o_tr = falloc(no), *s_tr = falloc(nst);
        dn_la_params fr = f;
        fr.o = o_ref, fr.final_state = s_ref, fr.impl = DN_IMPL_REF;
        fr.o_s = (dn_strides){T * HV * V, HV * V, V};
        CHECK(dn_la_forward(&fr) == DN_OK, "%s", dn_last_error());
        dn_la_params ft = fr;
        ft.o = o_tr, ft.final_state = s_tr, ft.impl = DN_IMPL_CHUNK;
        size_t sb = 0;
        CHECK(dn_la_saved_size(&ft, &sb) == DN_OK, "%s", dn_last_error());
        void *saved = aligned_alloc(64, (sb + 63) & ~(size_t)63);
        poison(o_tr, no), poison(s_tr, nst);
        CHECK(dn_la_forward_train(&ft, saved, sb) == DN_OK, "%s", dn_last_error());
        char what[200];
        snprintf(what, sizeof what, "%s training forward o", label);
        fails += check_close(what, o_tr, o_ref, no, 1e-5);
        snprintf(what, sizeof what, "%s training forward state", label);
        fails += check_close(what, s_tr, s_ref, nst, 1e-5);
        dn_la_bwd_params b = dn_la_bwd_params_default(&ft);
        b.dout = dout, b.dfinal_state = dhT, b.saved = saved, b.saved_bytes = sb;
        b.dq = out[1][0], b.dk = out[1][1], b.dv = out[1][2];
        b.dg = f.g ? out[1][3] : NULL, b.dbeta = f.beta ? out[1][4] : NULL,
        b.dinitial_state = out[1][5];
        for (int i = 0; i < 6; i++)
            poison(out[1][i], sz[i]);
        CHECK(dn_la_backward(&b) == DN_OK, "%s", dn_last_error());
        static const char *const names[6] = {"dq", "dk", "dv", "dg", "dbeta", "dh0"};
        for (int i = 0; i < 6; i++) {
            if ((i == 3 && !f.g) || (i == 4 && !f.beta)) continue;
            snprintf(what, sizeof what, "%s with saved %s", label, names[i]);
            fails += check_close(what, out[1][i], out[0][i], sz[i], 1e-5);
        }
        b.saved_bytes = sb - 4;
        CHECK(dn_la_backward(&b) == DN_ERR_ARG, "a short saved buffer accepted");
        /* impl auto: the training forward and the backward resolve the same chunk size */
        dn_la_params fa = ft;
        fa.impl = DN_IMPL_AUTO;
        size_t sa = 0;
        CHECK(dn_la_saved_size(&fa, &sa) == DN_OK, "%s", dn_last_error());
        void *saved_a = aligned_alloc(64, (sa + 63) & ~(size_t)63);
        poison(o_tr, no), poison(s_tr, nst); /* the run above left its results here */
        CHECK(dn_la_forward_train(&fa, saved_a, sa) == DN_OK, "%s", dn_last_error());
        snprintf(what, sizeof what, "%s auto training forward o", label);
        fails += check_close(what, o_tr, o_ref, no, 1e-5);
        snprintf(what, sizeof what, "%s auto training forward state", label);
        fails += check_close(what, s_tr, s_ref, nst, 1e-5);
        dn_la_bwd_params ba = b;
        ba.fwd = fa, ba.saved = saved_a, ba.saved_bytes = sa;
        for (int i = 0; i < 6; i++)
            poison(out[1][i], sz[i]);
        CHECK(dn_la_backward(&ba) == DN_OK, "%s", dn_last_error());
        for (int i = 0; i < 6; i++) {
            if ((i == 3 && !f.g) || (i == 4 && !f.beta)) continue;
            snprintf(what, sizeof what, "%s auto with saved %s", label, names[i]);
            fails += check_close(what, out[1][i], out[0][i], sz[i], 1e-5);
        }
        free(saved_a);
        free(saved), free(o_ref), free(s_ref), free(o_tr), free(s_tr);
    }
    free(q), free(k), free(v), free(g), free(beta), free(h0), free(dout), free(dhT);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 6; i++)
            free(out[w][i]);
    return fails;
}

static int test_bwd_fast(void) {
    static const int64_t Ts[] = {1, 7, 63, 64, 65, 200};
    static const int64_t dims[][2] = {{16, 16}, {64, 100}, {100, 64}, {128, 128}};
    static const int64_t heads[][2] = {{1, 1}, {2, 4}};
    int fails = 0, idx = 0;
    for (int op = 0; op <= DN_OP_GDN; op++)
        for (int ti = 0; ti < 6; ti++)
            for (int hi = 0; hi < 2; hi++, idx++) {
                const int64_t K = dims[idx % 4][0], V = dims[idx % 4][1], B = 1 + idx % 2;
                const int chunk = idx % 3 == 0 ? 16 : 64;
                char label[160];
                snprintf(
                    label, sizeof label, "bwd %s B=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld C=%d",
                    dn_op_name((dn_op)op), (long long)B, (long long)Ts[ti], (long long)heads[hi][0],
                    (long long)heads[hi][1], (long long)K, (long long)V, chunk);
                fails += bwd_case((dn_op)op, B, Ts[ti], heads[hi][0], heads[hi][1], K, V, chunk,
                                  idx % 2, NULL, 0, 40 + idx, label);
            }
    static const int64_t cu[] = {0, 5, 5, 90, 160};
    for (int op = 0; op <= DN_OP_GDN; op++)
        fails += bwd_case((dn_op)op, 1, 160, 2, 4, 32, 48, 32, 1, cu, 4, 7 + op, "bwd varlen");
    /* beta up to 2 (negative eigenvalues, normalised keys), and strong decay */
    bwd_beta_hi = 2.0f;
    fails += bwd_case(DN_OP_GDN, 2, 130, 2, 4, 64, 64, 32, 1, NULL, 0, 99, "bwd gdn beta<=2");
    fails +=
        bwd_case(DN_OP_DELTANET, 1, 100, 1, 1, 64, 64, 64, 1, NULL, 0, 98, "bwd deltanet beta<=2");
    bwd_beta_hi = 1.0f, bwd_g_lo = -5.0f;
    fails += bwd_case(DN_OP_GDN, 1, 100, 1, 2, 64, 64, 32, 1, NULL, 0, 97, "bwd gdn g down to -5");
    bwd_g_lo = -0.4f;
    return fails;
}

/* Reset gates (g = -inf, -1e30, -FLT_MAX, long runs of -80 and -200): the chunkwise backward and
 * the training forward at every chunk size and SIMD level, finite and equal to the reference
 * (whose dg = exp(g) dL/d(exp g) is 0 at a reset); varlen too. */
static int test_bwd_reset_gates(void) {
    static const int chunks[] = {16, 32, 64, 128};
    static const int64_t cu[] = {0, 30, 170, 171, 300};
    int fails = 0, idx = 0;
    for (int op = DN_OP_GLA; op <= DN_OP_GDN; op += DN_OP_GDN - DN_OP_GLA)
        for (int pat = 0; pat < N_RESET_PATTERNS; pat++, idx++) {
            bwd_reset = pat;
            char label[160];
            for (int c = 0; c < 4; c++) {
                snprintf(label, sizeof label, "bwd %s g %s C=%d", dn_op_name((dn_op)op),
                         reset_names[pat], chunks[c]);
                fails += bwd_case((dn_op)op, 2, 150, 1, 2, 32, 48, chunks[c], 1, NULL, 0, 300 + idx,
                                  label);
            }
            snprintf(label, sizeof label, "bwd %s g %s varlen", dn_op_name((dn_op)op),
                     reset_names[pat]);
            fails += bwd_case((dn_op)op, 1, 300, 2, 4, 16, 32, 32, (pat + 1) % 2, cu, 4, 400 + idx,
                              label);
        }
    bwd_reset = -1;
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * Softmax attention
 * ------------------------------------------------------------------------------------------- */

/* The attention forward in double, written here from the definition (bottom-right causal,
 * window, grouped heads), for the finite differences: L = sum o * w. */
static double attn_loss(const double *q, const double *k, const double *v, const double *w,
                        int64_t TQ, int64_t TK, int64_t H, int64_t HKV, int64_t D, int64_t W,
                        double scale) {
    double L = 0, *s = malloc(sizeof(double) * (size_t)TK);
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < TQ; i++) {
            const int64_t kh = h / (H / HKV), pos = TK - TQ + i;
            int64_t lo = W > 0 && pos - W + 1 > 0 ? pos - W + 1 : 0,
                    hi = pos < TK - 1 ? pos : TK - 1;
            if (hi < lo) continue;
            double m = -INFINITY, sum = 0;
            for (int64_t j = lo; j <= hi; j++) {
                double d = 0;
                for (int64_t x = 0; x < D; x++)
                    d += q[(i * H + h) * D + x] * k[(j * HKV + kh) * D + x];
                s[j] = d * scale, m = fmax(m, s[j]);
            }
            for (int64_t j = lo; j <= hi; j++)
                sum += exp(s[j] - m);
            for (int64_t j = lo; j <= hi; j++)
                for (int64_t x = 0; x < D; x++)
                    L += exp(s[j] - m) / sum * v[(j * HKV + kh) * D + x] * w[(i * H + h) * D + x];
        }
    free(s);
    return L;
}

static int attn_grad_fd(int64_t TQ, int64_t TK, int64_t H, int64_t HKV, int64_t D, int64_t W,
                        uint64_t seed) {
    int fails = 0;
    rng r = {seed};
    const int64_t nq = TQ * H * D, nk = TK * HKV * D;
    float *q = falloc(nq), *k = falloc(nk), *v = falloc(nk), *w = falloc(nq);
    fill_uniform(&r, q, nq, -1, 1), fill_uniform(&r, k, nk, -1, 1), fill_uniform(&r, v, nk, -1, 1);
    fill_uniform(&r, w, nq, -1, 1);
    dn_attn_params p = dn_attn_params_default(1, TK, H, HKV, D);
    p.TQ = TQ, p.q_s = p.o_s = (dn_strides){TQ * H * D, H * D, D}, p.window = W;
    float *o = falloc(nq), *lse = falloc(H * TQ), *dq = falloc(nq), *dk = falloc(nk),
          *dv = falloc(nk);
    p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse, p.impl = DN_IMPL_REF;
    CHECK(dn_attn_forward(&p) == DN_OK, "%s", dn_last_error());
    dn_attn_bwd_params b = dn_attn_bwd_params_default(&p);
    b.dout = w, b.dq = dq, b.dk = dk, b.dv = dv;
    CHECK(dn_attn_backward(&b) == DN_OK, "%s", dn_last_error());
    double *dq_d = malloc(sizeof(double) * nq), *dk_d = malloc(sizeof(double) * nk),
           *dv_d = malloc(sizeof(double) * nk), *wd = malloc(sizeof(double) * nq);
    for (int64_t i = 0; i < nq; i++)
        dq_d[i] = q[i], wd[i] = w[i];
    for (int64_t i = 0; i < nk; i++)
        dk_d[i] = k[i], dv_d[i] = v[i];
    double *xs[3] = {dq_d, dk_d, dv_d};
    const float *an[3] = {dq, dk, dv};
    const int64_t ns[3] = {nq, nk, nk};
    static const char *const names[3] = {"dq", "dk", "dv"};
    for (int a = 0; a < 3; a++) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < ns[a]; i++) {
            const double x0 = xs[a][i], h = 1e-5;
            xs[a][i] = x0 + h;
            double lp = attn_loss(dq_d, dk_d, dv_d, wd, TQ, TK, H, HKV, D, W, p.scale);
            xs[a][i] = x0 - h;
            double lm = attn_loss(dq_d, dk_d, dv_d, wd, TQ, TK, H, HKV, D, W, p.scale);
            xs[a][i] = x0;
            double fd = (lp - lm) / (2 * h), d = fd - an[a][i];
            num += d * d, den += fd * fd;
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        CHECK(rel < 1e-6,
              "attention reference TQ=%lld TK=%lld H=%lld HKV=%lld W=%lld %s: rel error "
              "%.3g against finite differences",
              (long long)TQ, (long long)TK, (long long)H, (long long)HKV, (long long)W, names[a],
              rel);
    }
    free(q), free(k), free(v), free(w), free(o), free(lse), free(dq), free(dk), free(dv);
    free(dq_d), free(dk_d), free(dv_d), free(wd);
    return fails;
}

static int test_attn_grad_reference(void) {
    int fails = 0;
    fails += attn_grad_fd(9, 9, 2, 1, 5, 0, 1);
    fails += attn_grad_fd(12, 12, 4, 2, 3, 4, 2);
    fails += attn_grad_fd(5, 11, 2, 2, 4, 0, 3); /* queries after earlier keys */
    fails += attn_grad_fd(8, 5, 1, 1, 4, 0, 4);  /* rows without keys */
    fails += attn_grad_fd(40, 40, 2, 1, 4, 9, 5);
    return fails;
}

static double rms(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s / (double)(n > 0 ? n : 1));
}

/* The tiled backward against the reference at every SIMD level. */
static int test_attn_grad_fast(void) {
    static const int64_t Ts[] = {1, 5, 64, 65, 300};
    static const int64_t Ds[] = {32, 64, 100};
    static const int64_t heads[][2] = {{1, 1}, {4, 4}, {8, 2}};
    int fails = 0, idx = 0;
    for (int ti = 0; ti < 5; ti++)
        for (int hi = 0; hi < 3; hi++)
            for (int win = 0; win < 2; win++, idx++) {
                const int64_t T = Ts[ti], H = heads[hi][0], HKV = heads[hi][1], D = Ds[idx % 3];
                const int64_t TQ = idx % 4 == 3 && T > 5 ? T / 2 : T, W = win ? T / 3 + 1 : 0,
                              B = 2;
                rng r = {500 + (uint64_t)idx};
                dn_attn_params p = dn_attn_params_default(B, T, H, HKV, D);
                p.TQ = TQ, p.q_s = p.o_s = (dn_strides){TQ * H * D, H * D, D}, p.window = W;
                const int64_t nq = B * TQ * H * D, nk = B * T * HKV * D;
                float *q = falloc(nq), *k = falloc(nk), *v = falloc(nk), *dO = falloc(nq);
                float *o = falloc(nq), *lse = falloc(B * H * TQ);
                fill_uniform(&r, q, nq, -2, 2), fill_uniform(&r, k, nk, -2, 2);
                fill_uniform(&r, v, nk, -1, 1), fill_uniform(&r, dO, nq, -1, 1);
                p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse;
                CHECK(dn_attn_forward(&p) == DN_OK, "%s", dn_last_error());
                float *g[2][3];
                for (int w = 0; w < 2; w++)
                    g[w][0] = falloc(nq), g[w][1] = falloc(nk), g[w][2] = falloc(nk);
                dn_attn_bwd_params b = dn_attn_bwd_params_default(&p);
                b.dout = dO, b.fwd.impl = DN_IMPL_REF, b.dq = g[0][0], b.dk = g[0][1],
                b.dv = g[0][2];
                CHECK(dn_attn_backward(&b) == DN_OK, "%s", dn_last_error());
                dn_isa best = dn_isa_best();
                for (int isa = 0; isa <= (int)best; isa++) {
                    if (!test_use_isa((dn_isa)isa)) continue;
                    poison(g[1][0], nq), poison(g[1][1], nk), poison(g[1][2], nk);
                    b.fwd.impl = DN_IMPL_AUTO, b.dq = g[1][0], b.dk = g[1][1], b.dv = g[1][2];
                    CHECK(dn_attn_backward(&b) == DN_OK, "%s", dn_last_error());
                    char what[160];
                    static const char *const nm[3] = {"dq", "dk", "dv"};
                    for (int a = 0; a < 3; a++) {
                        snprintf(what, sizeof what,
                                 "attn bwd TQ=%lld TK=%lld H=%lld HKV=%lld D=%lld "
                                 "W=%lld %s %s",
                                 (long long)TQ, (long long)T, (long long)H, (long long)HKV,
                                 (long long)D, (long long)W, dn_isa_name((dn_isa)isa), nm[a]);
                        const int64_t n = a ? nk : nq;
                        if (rms(g[0][a], n) > 1e-12 * rms(g[0][2], nk)) {
                            fails += check_close(what, g[1][a], g[0][a], n, 1e-5);
                        } else {
                            /* a row that sees one key only has dS = P (dP - dO.o) = 0 exactly:
                             * the fp32 result is rounding noise, measured against the scale of
                             * the problem's gradients (dv) */
                            CHECK(rms(g[1][a], n) <= 1e-5 * rms(g[0][2], nk),
                                  "%s: %.3g where the gradient is zero (scale %.3g)", what,
                                  rms(g[1][a], n), rms(g[0][2], nk));
                        }
                    }
                }
                dn_set_isa(best);
                free(q), free(k), free(v), free(dO), free(o), free(lse);
                for (int w = 0; w < 2; w++)
                    free(g[w][0]), free(g[w][1]), free(g[w][2]);
            }
    return fails;
}

/* dn_la_backward (impl auto) at 2 threads, REPEATS times: every gradient bitwise the same. Grouped
 * value heads (dq, dk summed over them) and a varlen batch. */
static int test_la_bwd_reproducible(void) {
    int fails = 0;
    for (int varlen = 0; varlen < 2; varlen++) {
        const int64_t T = 200, H = 2, HV = 4, K = 32, V = 48, NS = varlen ? 3 : 1;
        const int64_t cu[4] = {0, 37, 130, 200};
        rng r = {5100 + (uint64_t)varlen};
        gbufs x;
        gb_alloc(&x, &r, T, H, HV, K, V, NS);
        float *dhT = falloc(NS * HV * K * V);
        fill_uniform(&r, dhT, NS * HV * K * V, -1, 1);
        dn_la_params f = dn_la_params_default(DN_OP_GDN, 1, T, H, HV, K, V);
        f.q = x.q, f.k = x.k, f.v = x.v, f.g = x.g, f.beta = x.beta, f.qk_l2norm = 1;
        f.initial_state = x.h0, f.n_threads = 2;
        if (varlen) f.cu_seqlens = cu, f.n_seqs = NS;
        const int64_t sz[6] = {T * H * K, T * H * K, T * HV * V, T * HV, T * HV, NS * HV * K * V};
        float *first[6], *o = falloc(T * HV * V);
        for (int i = 0; i < 6; i++)
            first[i] = falloc(sz[i]);
        f.o = o;
        for (int rep = 0; rep < REPEATS; rep++) {
            float *out[6] = {x.dq, x.dk, x.dv, x.dg, x.db, x.dh0};
            for (int i = 0; i < 6; i++)
                poison(out[i], sz[i]);
            dn_la_bwd_params b = dn_la_bwd_params_default(&f);
            b.dout = x.dout, b.dfinal_state = dhT, b.dq = x.dq, b.dk = x.dk, b.dv = x.dv;
            b.dg = x.dg, b.dbeta = x.db, b.dinitial_state = x.dh0;
            CHECK(dn_la_backward(&b) == DN_OK, "%s", dn_last_error());
            static const char *const nm[6] = {"dq", "dk", "dv", "dg", "dbeta", "dh0"};
            for (int i = 0; i < 6; i++) {
                if (rep == 0) {
                    memcpy(first[i], out[i], sizeof(float) * (size_t)sz[i]);
                    continue;
                }
                char what[100];
                snprintf(what, sizeof what, "gdn bwd%s run %d %s", varlen ? " varlen" : "", rep,
                         nm[i]);
                fails += check_same_bits(what, out[i], first[i], sz[i]);
            }
        }
        for (int i = 0; i < 6; i++)
            free(first[i]);
        free(o), free(dhT);
        gb_free(&x);
    }
    return fails;
}

const test_case dn_tests_la_bwd[] = {
    {"bwd_attn_reference_vs_finite_differences", test_attn_grad_reference},
    {"bwd_attn_fast", test_attn_grad_fast},
    {"bwd_la_fast", test_bwd_fast},
    {"bwd_la_reset_gates", test_bwd_reset_gates},
    {"bwd_la_api", test_grad_api},
    {"bwd_la_reference_vs_finite_differences", test_grad_reference},
    {"bwd_la_reproducible", test_la_bwd_reproducible},
    {NULL, NULL},
};
