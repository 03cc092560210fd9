/*
 * test_bwd_ssm.c - gradients of the Mamba-1 scan and the short convolution: references against
 * central finite differences of forwards written here in double from the definitions, fast
 * against reference at every SIMD level, the accumulation rule, and split sequences.
 */
#include "test.h"

/* ---- double forwards, from the definitions ----------------------------------------------------
 */
typedef struct {
    int64_t B, T, D, N, G;
    double *x, *dt, *A, *Bm, *Cm, *Ds, *bias, *z, *h0;
    int softplus;
} mdd;

static double m_loss(const mdd *m, const double *wy, const double *wh) {
    double L = 0, *h = malloc(sizeof(double) * (size_t)m->N);
    for (int64_t b = 0; b < m->B; b++)
        for (int64_t d = 0; d < m->D; d++) {
            const int64_t g = d / (m->D / m->G);
            for (int64_t n = 0; n < m->N; n++)
                h[n] = m->h0[(b * m->D + d) * m->N + n];
            for (int64_t t = 0; t < m->T; t++) {
                const int64_t r = (b * m->T + t) * m->D + d,
                              rb = ((b * m->T + t) * m->G + g) * m->N;
                double dt = m->dt[r] + m->bias[d];
                if (m->softplus) dt = dt > 20 ? dt : log1p(exp(dt));
                double y = 0;
                for (int64_t n = 0; n < m->N; n++) {
                    h[n] = exp(dt * m->A[d * m->N + n]) * h[n] + dt * m->Bm[rb + n] * m->x[r];
                    y += m->Cm[rb + n] * h[n];
                }
                y += m->Ds[d] * m->x[r];
                y *= m->z[r] / (1 + exp(-m->z[r]));
                L += y * wy[r];
            }
            for (int64_t n = 0; n < m->N; n++)
                L += h[n] * wh[(b * m->D + d) * m->N + n];
        }
    free(h);
    return L;
}

static double *dvec(rng *r, int64_t n, double lo, double hi) {
    double *x = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_uniform(r, (float)lo, (float)hi);
    return x;
}
static float *tof(const double *x, int64_t n) {
    float *y = falloc(n);
    for (int64_t i = 0; i < n; i++)
        y[i] = (float)x[i];
    return y;
}

/* d loss / d x[i] by central differences against an analytic gradient g (float) */
#define FD_CHECK(name, arr, n, grad, lossexpr)                                                     \
    do {                                                                                           \
        double num_ = 0, den_ = 0;                                                                 \
        for (int64_t i_ = 0; i_ < (n); i_++) {                                                     \
            const double x0_ = (arr)[i_], h_ = 1e-5 * (1 + fabs(x0_));                             \
            (arr)[i_] = x0_ + h_;                                                                  \
            const double lp_ = (lossexpr);                                                         \
            (arr)[i_] = x0_ - h_;                                                                  \
            const double lm_ = (lossexpr);                                                         \
            (arr)[i_] = x0_;                                                                       \
            const double fd_ = (lp_ - lm_) / (2 * h_), d_ = fd_ - (grad)[i_];                      \
            num_ += d_ * d_, den_ += fd_ * fd_;                                                    \
        }                                                                                          \
        const double rel_ = sqrt(num_ / (den_ > 0 ? den_ : 1));                                    \
        CHECK(rel_ < 1e-6, "%s: gradient rel error %.3g against finite differences", name, rel_);  \
    } while (0)

static int test_mamba_grad_fd(void) {
    int fails = 0;
    static const int64_t shapes[][5] = {{1, 6, 4, 3, 1}, {2, 9, 4, 5, 2}, {1, 30, 2, 4, 1}};
    for (int si = 0; si < 3; si++)
        for (int sp = 0; sp < 2; sp++) {
            const int64_t B = shapes[si][0], T = shapes[si][1], D = shapes[si][2],
                          N = shapes[si][3], G = shapes[si][4];
            rng r = {10 + (uint64_t)si * 2 + sp};
            mdd m = {B, T, D, N, G, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, sp};
            const int64_t nx = B * T * D, nb = B * T * G * N, nh = B * D * N;
            m.x = dvec(&r, nx, -1, 1), m.dt = dvec(&r, nx, sp ? -2 : 0.01, sp ? 1 : 0.5);
            m.A = dvec(&r, D * N, -2, -0.1), m.Bm = dvec(&r, nb, -1, 1), m.Cm = dvec(&r, nb, -1, 1);
            m.Ds = dvec(&r, D, -1, 1), m.bias = dvec(&r, D, -0.5, 0.5), m.z = dvec(&r, nx, -2, 2);
            m.h0 = dvec(&r, nh, -0.5, 0.5);
            double *wy = dvec(&r, nx, -1, 1), *wh = dvec(&r, nh, -1, 1);
            float *fx = tof(m.x, nx), *fdt = tof(m.dt, nx), *fA = tof(m.A, D * N),
                  *fB = tof(m.Bm, nb);
            float *fC = tof(m.Cm, nb), *fD = tof(m.Ds, D), *fbias = tof(m.bias, D),
                  *fz = tof(m.z, nx);
            float *fh0 = tof(m.h0, nh), *fwy = tof(wy, nx), *fwh = tof(wh, nh), *y = falloc(nx);
            dn_mamba_params p = dn_mamba_params_default(B, T, D, N, G);
            p.x = fx, p.dt = fdt, p.A = fA, p.Bm = fB, p.Cm = fC, p.Dskip = fD, p.dt_bias = fbias;
            p.z = fz, p.initial_state = fh0, p.dt_softplus = sp, p.y = y, p.impl = DN_IMPL_REF;
            dn_mamba_bwd_params b = dn_mamba_bwd_params_default(&p);
            float *dx = falloc(nx), *ddt = falloc(nx), *dB = falloc(nb), *dC = falloc(nb),
                  *dz = falloc(nx);
            float *dA = calloc((size_t)(D * N), 4), *dD = calloc((size_t)D, 4),
                  *dbias = calloc((size_t)D, 4);
            float *dh0 = falloc(nh);
            b.dy = fwy, b.dfinal_state = fwh, b.dx = dx, b.ddt = ddt, b.dBm = dB, b.dCm = dC,
            b.dz = dz;
            b.dA = dA, b.dDskip = dD, b.ddt_bias = dbias, b.dinitial_state = dh0;
            CHECK(dn_mamba_backward(&b) == DN_OK, "%s", dn_last_error());
            char nm[64];
#define MFD(arr, n, g)                                                                             \
    snprintf(nm, sizeof nm, "mamba1 shape %d softplus %d: d" #arr, si, sp);                        \
    FD_CHECK(nm, m.arr, n, g, m_loss(&m, wy, wh))
            MFD(x, nx, dx);
            MFD(dt, nx, ddt);
            MFD(A, D * N, dA);
            MFD(Bm, nb, dB);
            MFD(Cm, nb, dC);
            MFD(Ds, D, dD);
            MFD(bias, D, dbias);
            MFD(z, nx, dz);
            MFD(h0, nh, dh0);
#undef MFD
            free(m.x), free(m.dt), free(m.A), free(m.Bm), free(m.Cm), free(m.Ds), free(m.bias);
            free(m.z), free(m.h0), free(wy), free(wh), free(fx), free(fdt), free(fA), free(fB),
                free(fC);
            free(fD), free(fbias), free(fz), free(fh0), free(fwy), free(fwh), free(y), free(dx),
                free(ddt);
            free(dB), free(dC), free(dz), free(dA), free(dD), free(dbias), free(dh0);
        }
    return fails;
}

/* conv: y[t][d] = silu(bias + sum_j w[d][j] x[t-W+1+j][d]) */
typedef struct {
    int64_t B, T, D, W;
    double *x, *w, *bias, *s0;
    int silu;
} cdd;

static double c_loss(const cdd *c, const double *wy, const double *ws) {
    double L = 0;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t d = 0; d < c->D; d++) {
#define XI(s)                                                                                      \
    ((s) >= 0 ? c->x[(b * c->T + (s)) * c->D + d]                                                  \
              : c->s0[(b * c->D + d) * (c->W - 1) + c->W - 1 + (s)])
            for (int64_t t = 0; t < c->T; t++) {
                double a = c->bias[d];
                for (int64_t j = 0; j < c->W; j++)
                    a += c->w[d * c->W + j] * XI(t - c->W + 1 + j);
                if (c->silu) a = a / (1 + exp(-a));
                L += a * wy[(b * c->T + t) * c->D + d];
            }
            for (int64_t j = 0; j < c->W - 1; j++)
                L += XI(c->T - (c->W - 1) + j) * ws[(b * c->D + d) * (c->W - 1) + j];
#undef XI
        }
    return L;
}

static int test_conv_grad_fd(void) {
    int fails = 0;
    for (int64_t W = 2; W <= 4; W++)
        for (int silu = 0; silu < 2; silu++) {
            const int64_t B = 2, T = W == 3 ? 2 : 9,
                          D = 3; /* T < W - 1 too: the state passes through */
            rng r = {70 + (uint64_t)(W * 2 + silu)};
            cdd c = {B, T, D, W, NULL, NULL, NULL, NULL, silu};
            const int64_t nx = B * T * D, ns = B * D * (W - 1);
            c.x = dvec(&r, nx, -2, 2), c.w = dvec(&r, D * W, -1, 1), c.bias = dvec(&r, D, -1, 1);
            c.s0 = dvec(&r, ns, -2, 2);
            double *wy = dvec(&r, nx, -1, 1), *ws = dvec(&r, ns, -1, 1);
            float *fx = tof(c.x, nx), *fw = tof(c.w, D * W), *fb = tof(c.bias, D),
                  *fs0 = tof(c.s0, ns);
            float *fwy = tof(wy, nx), *fws = tof(ws, ns), *y = falloc(nx);
            dn_conv_params p = dn_conv_params_default(B, T, D, W);
            p.x = fx, p.weight = fw, p.bias = fb, p.initial_state = fs0, p.silu = silu, p.y = y;
            p.impl = DN_IMPL_REF;
            dn_conv_bwd_params b = dn_conv_bwd_params_default(&p);
            float *dx = falloc(nx), *dw = calloc((size_t)(D * W), 4), *db = calloc((size_t)D, 4),
                  *ds0 = falloc(ns);
            b.dy = fwy, b.dfinal_state = fws, b.dx = dx, b.dweight = dw, b.dbias = db,
            b.dinitial_state = ds0;
            CHECK(dn_conv_backward(&b) == DN_OK, "%s", dn_last_error());
            char nm[64];
            snprintf(nm, sizeof nm, "conv W=%lld silu=%d dx", (long long)W, silu);
            FD_CHECK(nm, c.x, nx, dx, c_loss(&c, wy, ws));
            snprintf(nm, sizeof nm, "conv W=%lld silu=%d dweight", (long long)W, silu);
            FD_CHECK(nm, c.w, D * W, dw, c_loss(&c, wy, ws));
            snprintf(nm, sizeof nm, "conv W=%lld silu=%d dbias", (long long)W, silu);
            FD_CHECK(nm, c.bias, D, db, c_loss(&c, wy, ws));
            snprintf(nm, sizeof nm, "conv W=%lld silu=%d dstate", (long long)W, silu);
            FD_CHECK(nm, c.s0, ns, ds0, c_loss(&c, wy, ws));
            free(c.x), free(c.w), free(c.bias), free(c.s0), free(wy), free(ws), free(fx), free(fw),
                free(fb);
            free(fs0), free(fwy), free(fws), free(y), free(dx), free(dw), free(db), free(ds0);
        }
    return fails;
}

/* ---- fast against reference ------------------------------------------------------------------ */
static int test_mamba_grad_fast(void) {
    int fails = 0, idx = 0;
    static const int64_t Ts[] = {1, 17, 64, 300}, dims[] = {16, 64, 19};
    for (int ti = 0; ti < 4; ti++)
        for (int di = 0; di < 3; di++, idx++) {
            const int64_t B = 2, T = Ts[ti], D = di == 2 ? 40 : 32, N = dims[di],
                          G = idx % 2 ? 2 : 1;
            rng r = {300 + (uint64_t)idx};
            const int64_t nx = B * T * D, nb = B * T * G * N, nh = B * D * N;
            float *x = falloc(nx), *dt = falloc(nx), *A = falloc(D * N), *Bm = falloc(nb),
                  *Cm = falloc(nb);
            float *Ds = falloc(D), *bias = falloc(D), *z = falloc(nx), *h0 = falloc(nh),
                  *dy = falloc(nx);
            float *dhT = falloc(nh), *y = falloc(nx);
            fill_uniform(&r, x, nx, -1, 1), fill_uniform(&r, dt, nx, -3, 1),
                fill_uniform(&r, A, D * N, -4, -0.1f);
            fill_uniform(&r, Bm, nb, -1, 1), fill_uniform(&r, Cm, nb, -1, 1),
                fill_uniform(&r, Ds, D, -1, 1);
            fill_uniform(&r, bias, D, -1, 1), fill_uniform(&r, z, nx, -2, 2),
                fill_uniform(&r, h0, nh, -1, 1);
            fill_uniform(&r, dy, nx, -1, 1), fill_uniform(&r, dhT, nh, -1, 1);
            dn_mamba_params p = dn_mamba_params_default(B, T, D, N, G);
            p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.dt_bias = bias,
            p.z = z;
            p.initial_state = h0, p.dt_softplus = 1, p.y = y;
            const int64_t sz[9] = {nx, nx, nb, nb, nx, D * N, D, D, nh};
            float *g[2][9];
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 9; i++)
                    g[w][i] = falloc(sz[i]);
            float *init = falloc(D * N);
            fill_uniform(&r, init, D * N, -1, 1); /* parameter gradients accumulate onto this */
            dn_isa best = dn_isa_best();
            for (int isa = 0; isa <= (int)best; isa++) {
                if (!test_use_isa((dn_isa)isa)) continue;
                for (int w = 0; w < 2; w++) {
                    if (w == 0 && isa > 0) continue;
                    for (int i = 0; i < 9; i++) {
                        if (i >= 5 && i <= 7)
                            memcpy(g[w][i], init, sizeof(float) * sz[i]);
                        else
                            poison(g[w][i], sz[i]);
                    }
                    dn_mamba_bwd_params b = dn_mamba_bwd_params_default(&p);
                    b.fwd.impl = w == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
                    b.dy = dy, b.dfinal_state = dhT, b.dx = g[w][0], b.ddt = g[w][1],
                    b.dBm = g[w][2];
                    b.dCm = g[w][3], b.dz = g[w][4], b.dA = g[w][5], b.dDskip = g[w][6];
                    b.ddt_bias = g[w][7], b.dinitial_state = g[w][8];
                    CHECK(dn_mamba_backward(&b) == DN_OK, "%s", dn_last_error());
                }
                static const char *const nm[9] = {"dx", "ddt",    "dBm",      "dCm", "dz",
                                                  "dA", "dDskip", "ddt_bias", "dh0"};
                for (int i = 0; i < 9; i++) {
                    char what[120];
                    snprintf(what, sizeof what, "mamba1 bwd T=%lld N=%lld G=%lld %s %s",
                             (long long)T, (long long)N, (long long)G, dn_isa_name((dn_isa)isa),
                             nm[i]);
                    fails += check_close(what, g[1][i], g[0][i], sz[i], 1e-5);
                }
            }
            dn_set_isa(best);
            free(x), free(dt), free(A), free(Bm), free(Cm), free(Ds), free(bias), free(z), free(h0);
            free(dy), free(dhT), free(y), free(init);
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 9; i++)
                    free(g[w][i]);
        }
    return fails;
}

static int test_conv_grad_fast(void) {
    int fails = 0, idx = 0;
    for (int64_t W = 2; W <= 4; W++)
        for (int64_t T = 1; T <= 200; T = T * 5 + 2, idx++) {
            const int64_t B = 2, D = idx % 2 ? 100 : 128, nx = B * T * D, ns = B * D * (W - 1);
            rng r = {800 + (uint64_t)idx};
            float *x = falloc(nx), *w = falloc(D * W), *bias = falloc(D), *s0 = falloc(ns),
                  *dy = falloc(nx);
            float *dsT = falloc(ns), *y = falloc(nx), *init = falloc(D * W);
            fill_uniform(&r, x, nx, -2, 2), fill_uniform(&r, w, D * W, -1, 1),
                fill_uniform(&r, bias, D, -1, 1);
            fill_uniform(&r, s0, ns, -2, 2), fill_uniform(&r, dy, nx, -1, 1),
                fill_uniform(&r, dsT, ns, -1, 1);
            fill_uniform(&r, init, D * W, -1, 1);
            dn_conv_params p = dn_conv_params_default(B, T, D, W);
            p.x = x, p.weight = w, p.bias = bias, p.initial_state = s0, p.silu = 1, p.y = y;
            const int64_t sz[4] = {nx, D * W, D, ns};
            float *g[2][4];
            for (int v = 0; v < 2; v++)
                for (int i = 0; i < 4; i++)
                    g[v][i] = falloc(sz[i]);
            dn_isa best = dn_isa_best();
            for (int isa = 0; isa <= (int)best; isa++) {
                if (!test_use_isa((dn_isa)isa)) continue;
                for (int v = 0; v < 2; v++) {
                    if (v == 0 && isa > 0) continue;
                    poison(g[v][0], nx), poison(g[v][3], ns);
                    memcpy(g[v][1], init, sizeof(float) * D * W),
                        memcpy(g[v][2], init, sizeof(float) * D);
                    dn_conv_bwd_params b = dn_conv_bwd_params_default(&p);
                    b.fwd.impl = v == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
                    b.dy = dy, b.dfinal_state = dsT, b.dx = g[v][0], b.dweight = g[v][1],
                    b.dbias = g[v][2];
                    b.dinitial_state = g[v][3];
                    CHECK(dn_conv_backward(&b) == DN_OK, "%s", dn_last_error());
                }
                static const char *const nm[4] = {"dx", "dweight", "dbias", "dstate"};
                for (int i = 0; i < 4; i++) {
                    char what[100];
                    snprintf(what, sizeof what, "conv bwd W=%lld T=%lld D=%lld %s %s", (long long)W,
                             (long long)T, (long long)D, dn_isa_name((dn_isa)isa), nm[i]);
                    fails += check_close(what, g[1][i], g[0][i], sz[i], 1e-5);
                }
            }
            dn_set_isa(best);
            free(x), free(w), free(bias), free(s0), free(dy), free(dsT), free(y), free(init);
            for (int v = 0; v < 2; v++)
                for (int i = 0; i < 4; i++)
                    free(g[v][i]);
        }
    return fails;
}

/* ---- RWKV-4 -----------------------------------------------------------------------------------
 */
typedef struct {
    int64_t B, T, C;
    double *k, *v, *td, *tf, *s0;
} rdd;

/* the running-maximum forward in double, as OPS.md states it; L = sum y wy + sum state ws */
static double r_loss(const rdd *r, const double *wy, const double *ws) {
    double L = 0;
    for (int64_t b = 0; b < r->B; b++)
        for (int64_t c = 0; c < r->C; c++) {
            const double w = -exp(r->td[c]), u = r->tf[c];
            double a = r->s0[b * 3 * r->C + c], bb = r->s0[b * 3 * r->C + r->C + c];
            double pp = r->s0[b * 3 * r->C + 2 * r->C + c];
            for (int64_t t = 0; t < r->T; t++) {
                const double k = r->k[(b * r->T + t) * r->C + c],
                             v = r->v[(b * r->T + t) * r->C + c];
                double q = fmax(pp, u + k), e1 = exp(pp - q), e2 = exp(u + k - q);
                L += (e1 * a + e2 * v) / (e1 * bb + e2) * wy[(b * r->T + t) * r->C + c];
                q = fmax(w + pp, k), e1 = exp(w + pp - q), e2 = exp(k - q);
                a = e1 * a + e2 * v, bb = e1 * bb + e2, pp = q;
            }
            L += a * ws[b * 3 * r->C + c] + bb * ws[b * 3 * r->C + r->C + c] +
                 pp * ws[b * 3 * r->C + 2 * r->C + c];
        }
    return L;
}

static int test_rwkv_grad_fd(void) {
    int fails = 0;
    static const double kamps[] = {1.0, 8.0, 60.0};
    for (int ki = 0; ki < 3; ki++) {
        const int64_t B = 2, T = 25, C = 3;
        rng r = {40 + (uint64_t)ki};
        rdd m = {B, T, C, NULL, NULL, NULL, NULL, NULL};
        m.k = dvec(&r, B * T * C, -kamps[ki], kamps[ki]), m.v = dvec(&r, B * T * C, -1, 1);
        m.td = dvec(&r, C, -2, 1), m.tf = dvec(&r, C, -1, 1), m.s0 = dvec(&r, B * 3 * C, 0.2, 1.5);
        double *wy = dvec(&r, B * T * C, -1, 1), *ws = dvec(&r, B * 3 * C, -1, 1);
        float *fk = tof(m.k, B * T * C), *fv = tof(m.v, B * T * C), *ftd = tof(m.td, C);
        float *ftf = tof(m.tf, C), *fs0 = tof(m.s0, B * 3 * C), *fwy = tof(wy, B * T * C),
              *fws = tof(ws, B * 3 * C);
        float *y = falloc(B * T * C), *dk = falloc(B * T * C), *dv = falloc(B * T * C),
              *ds0 = falloc(B * 3 * C);
        float *dtd = calloc((size_t)C, 4), *dtf = calloc((size_t)C, 4);
        dn_rwkv4_params p = dn_rwkv4_params_default(B, T, C);
        p.k = fk, p.v = fv, p.time_decay = ftd, p.time_first = ftf, p.initial_state = fs0, p.y = y;
        p.impl = DN_IMPL_REF;
        dn_rwkv4_bwd_params b = dn_rwkv4_bwd_params_default(&p);
        b.dy = fwy, b.dfinal_state = fws, b.dk = dk, b.dv = dv, b.dtime_decay = dtd,
        b.dtime_first = dtf;
        b.dinitial_state = ds0;
        CHECK(dn_rwkv4_backward(&b) == DN_OK, "%s", dn_last_error());
        char nm[64];
        /* the state in double from the float inputs, for the finite differences */
        for (int64_t i = 0; i < B * T * C; i++)
            m.k[i] = fk[i], m.v[i] = fv[i];
#define RFD(arr, n, g)                                                                             \
    snprintf(nm, sizeof nm, "rwkv4 |k| <= %g: d" #arr, kamps[ki]);                                 \
    FD_CHECK(nm, m.arr, n, g, r_loss(&m, wy, ws))
        RFD(k, B * T * C, dk);
        RFD(v, B * T * C, dv);
        RFD(td, C, dtd);
        RFD(tf, C, dtf);
        RFD(s0, B * 3 * C, ds0);
#undef RFD
        free(m.k), free(m.v), free(m.td), free(m.tf), free(m.s0), free(wy), free(ws), free(fk),
            free(fv);
        free(ftd), free(ftf), free(fs0), free(fwy), free(fws), free(y), free(dk), free(dv),
            free(ds0);
        free(dtd), free(dtf);
    }
    return fails;
}

/* keys up to +-100 over a long sequence: finite, and the fast backward matches the reference (seen:
 * 2e-5 to 3e-5);
 * exponent differences of size ~200 carry an fp32 rounding of ~1.5e-5 absolute (see the forward
 * stress test), hence 1e-4 here */
static int test_rwkv_grad_stress(void) {
    int fails = 0;
    const int64_t B = 1, T = 3000, C = 48, n = B * T * C;
    rng r = {1234};
    float *k = falloc(n), *v = falloc(n), *td = falloc(C), *tf = falloc(C), *dy = falloc(n),
          *y = falloc(n);
    fill_uniform(&r, k, n, -100, 100), fill_uniform(&r, v, n, -1, 1),
        fill_uniform(&r, td, C, -3, 1);
    fill_uniform(&r, tf, C, -1, 1), fill_uniform(&r, dy, n, -1, 1);
    dn_rwkv4_params p = dn_rwkv4_params_default(B, T, C);
    p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.y = y;
    float *g[2][4];
    for (int w = 0; w < 2; w++) {
        g[w][0] = falloc(n), g[w][1] = falloc(n), g[w][2] = calloc((size_t)C, 4),
        g[w][3] = calloc((size_t)C, 4);
        dn_rwkv4_bwd_params b = dn_rwkv4_bwd_params_default(&p);
        b.fwd.impl = w ? DN_IMPL_AUTO : DN_IMPL_REF;
        b.dy = dy, b.dk = g[w][0], b.dv = g[w][1], b.dtime_decay = g[w][2], b.dtime_first = g[w][3];
        CHECK(dn_rwkv4_backward(&b) == DN_OK, "%s", dn_last_error());
    }
    static const char *const nm[4] = {"rwkv4 |k|<=100 bwd dk", "dv", "dtime_decay", "dtime_first"};
    for (int i = 0; i < 4; i++)
        fails += check_close(nm[i], g[1][i], g[0][i], i < 2 ? n : C, 1e-4);
    free(k), free(v), free(td), free(tf), free(dy), free(y);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 4; i++)
            free(g[w][i]);
    return fails;
}

static int test_rwkv_grad_fast(void) {
    int fails = 0, idx = 0;
    static const int64_t Ts[] = {1, 17, 64, 300}, Cs[] = {16, 100, 128};
    for (int ti = 0; ti < 4; ti++)
        for (int ci = 0; ci < 3; ci++, idx++) {
            const int64_t B = 2, T = Ts[ti], C = Cs[ci], n = B * T * C, ns = B * 3 * C;
            rng r = {900 + (uint64_t)idx};
            float *k = falloc(n), *v = falloc(n), *td = falloc(C), *tf = falloc(C),
                  *s0 = falloc(ns);
            float *dy = falloc(n), *dsT = falloc(ns), *y = falloc(n), *init = falloc(C);
            fill_uniform(&r, k, n, -8, 8), fill_uniform(&r, v, n, -1, 1),
                fill_uniform(&r, td, C, -3, 1);
            fill_uniform(&r, tf, C, -1, 1), fill_uniform(&r, dy, n, -1, 1),
                fill_uniform(&r, init, C, -1, 1);
            for (int64_t b = 0; b < B; b++)
                for (int64_t c = 0; c < C; c++) {
                    s0[b * 3 * C + c] = rng_uniform(&r, -1, 1),
                                   s0[b * 3 * C + C + c] = rng_uniform(&r, 0.5f, 2);
                    s0[b * 3 * C + 2 * C + c] = rng_uniform(&r, -3, 3);
                    for (int j = 0; j < 3; j++)
                        dsT[b * 3 * C + j * C + c] = rng_uniform(&r, -1, 1);
                }
            dn_rwkv4_params p = dn_rwkv4_params_default(B, T, C);
            p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.initial_state = s0, p.y = y;
            const int64_t sz[5] = {n, n, C, C, ns};
            float *g[2][5];
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 5; i++)
                    g[w][i] = falloc(sz[i]);
            dn_isa best = dn_isa_best();
            for (int isa = 0; isa <= (int)best; isa++) {
                if (!test_use_isa((dn_isa)isa)) continue;
                for (int w = 0; w < 2; w++) {
                    if (w == 0 && isa > 0) continue;
                    poison(g[w][0], n), poison(g[w][1], n), poison(g[w][4], ns);
                    memcpy(g[w][2], init, sizeof(float) * C),
                        memcpy(g[w][3], init, sizeof(float) * C);
                    dn_rwkv4_bwd_params b = dn_rwkv4_bwd_params_default(&p);
                    b.fwd.impl = w == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
                    b.dy = dy, b.dfinal_state = dsT, b.dk = g[w][0], b.dv = g[w][1];
                    b.dtime_decay = g[w][2], b.dtime_first = g[w][3], b.dinitial_state = g[w][4];
                    CHECK(dn_rwkv4_backward(&b) == DN_OK, "%s", dn_last_error());
                }
                static const char *const nm[5] = {"dk", "dv", "dtime_decay", "dtime_first", "dh0"};
                for (int i = 0; i < 5; i++) {
                    char what[100];
                    snprintf(what, sizeof what, "rwkv4 bwd T=%lld C=%lld %s %s", (long long)T,
                             (long long)C, dn_isa_name((dn_isa)isa), nm[i]);
                    fails += check_close(what, g[1][i], g[0][i], sz[i], 1e-5);
                }
            }
            dn_set_isa(best);
            free(k), free(v), free(td), free(tf), free(s0), free(dy), free(dsT), free(y),
                free(init);
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 5; i++)
                    free(g[w][i]);
        }
    return fails;
}

/* ---- split sequences: two calls chained through the state gradient equal one call ----------- */
static int test_split_grads(void) {
    int fails = 0;
    const int64_t B = 1, T = 60, t1 = 23;
    rng r = {5};
    { /* RWKV-4 */
        const int64_t C = 40;
        float *k = falloc(T * C), *v = falloc(T * C), *td = falloc(C), *tf = falloc(C),
              *dy = falloc(T * C);
        float *y = falloc(T * C), *mid = falloc(3 * C), *dmid = falloc(3 * C);
        fill_uniform(&r, k, T * C, -10, 10), fill_uniform(&r, v, T * C, -1, 1),
            fill_uniform(&r, td, C, -2, 1);
        fill_uniform(&r, tf, C, -1, 1), fill_uniform(&r, dy, T * C, -1, 1);
        float *g1[4], *g2[4];
        for (int i = 0; i < 4; i++)
            g1[i] = calloc((size_t)(T * C), 4), g2[i] = calloc((size_t)(T * C), 4);
        dn_rwkv4_params p = dn_rwkv4_params_default(B, T, C);
        p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.y = y;
        dn_rwkv4_bwd_params b = dn_rwkv4_bwd_params_default(&p);
        b.dy = dy, b.dk = g1[0], b.dv = g1[1], b.dtime_decay = g1[2], b.dtime_first = g1[3];
        CHECK(dn_rwkv4_backward(&b) == DN_OK, "%s", dn_last_error());
        dn_rwkv4_params pa = p, pb = p;
        pa.T = t1, pa.final_state = mid;
        CHECK(dn_rwkv4_forward(&pa) == DN_OK, "%s", dn_last_error());
        pb.T = T - t1, pb.k = k + t1 * C, pb.v = v + t1 * C, pb.y = y + t1 * C,
        pb.initial_state = mid;
        dn_rwkv4_bwd_params bb = dn_rwkv4_bwd_params_default(&pb);
        bb.dy = dy + t1 * C, bb.dk = g2[0] + t1 * C, bb.dv = g2[1] + t1 * C;
        bb.dtime_decay = g2[2], bb.dtime_first = g2[3], bb.dinitial_state = dmid;
        CHECK(dn_rwkv4_backward(&bb) == DN_OK, "%s", dn_last_error());
        dn_rwkv4_bwd_params ba = dn_rwkv4_bwd_params_default(&pa);
        ba.dy = dy, ba.dfinal_state = dmid, ba.dk = g2[0], ba.dv = g2[1];
        ba.dtime_decay = g2[2], ba.dtime_first = g2[3];
        CHECK(dn_rwkv4_backward(&ba) == DN_OK, "%s", dn_last_error());
        static const char *const nm[4] = {"rwkv4 split dk", "rwkv4 split dv",
                                          "rwkv4 split dtime_decay", "rwkv4 split dtime_first"};
        for (int i = 0; i < 4; i++)
            fails += check_close(nm[i], g2[i], g1[i], i < 2 ? T * C : C, 1e-5);
        free(k), free(v), free(td), free(tf), free(dy), free(y), free(mid), free(dmid);
        for (int i = 0; i < 4; i++)
            free(g1[i]), free(g2[i]);
    }
    { /* Mamba-1 */
        const int64_t D = 24, N = 16;
        float *x = falloc(T * D), *dt = falloc(T * D), *A = falloc(D * N), *Bm = falloc(T * N),
              *Cm = falloc(T * N);
        float *dy = falloc(T * D), *y = falloc(T * D), *mid = falloc(D * N), *dmid = falloc(D * N);
        fill_uniform(&r, x, T * D, -1, 1), fill_uniform(&r, dt, T * D, 0.01f, 0.3f);
        fill_uniform(&r, A, D * N, -3, -0.1f), fill_uniform(&r, Bm, T * N, -1, 1),
            fill_uniform(&r, Cm, T * N, -1, 1);
        fill_uniform(&r, dy, T * D, -1, 1);
        float *g1[5], *g2[5];
        for (int i = 0; i < 5; i++)
            g1[i] = calloc((size_t)(T * D * 2), 4), g2[i] = calloc((size_t)(T * D * 2), 4);
        dn_mamba_params p = dn_mamba_params_default(B, T, D, N, 1);
        p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.y = y;
        dn_mamba_bwd_params b = dn_mamba_bwd_params_default(&p);
        b.dy = dy, b.dx = g1[0], b.ddt = g1[1], b.dBm = g1[2], b.dCm = g1[3], b.dA = g1[4];
        CHECK(dn_mamba_backward(&b) == DN_OK, "%s", dn_last_error());
        dn_mamba_params pa = p, pb = p;
        pa.T = t1, pa.final_state = mid;
        pa.x_s = pa.dt_s = pa.y_s = pb.x_s = pb.dt_s = pb.y_s = p.x_s;
        CHECK(dn_mamba_forward(&pa) == DN_OK, "%s", dn_last_error());
        pb.T = T - t1, pb.x = x + t1 * D, pb.dt = dt + t1 * D, pb.Bm = Bm + t1 * N,
        pb.Cm = Cm + t1 * N;
        pb.y = y + t1 * D, pb.initial_state = mid;
        dn_mamba_bwd_params bb = dn_mamba_bwd_params_default(&pb);
        bb.dy_s = bb.dx_s = bb.ddt_s = p.x_s, bb.dBm_s = bb.dCm_s = p.Bm_s;
        bb.dy = dy + t1 * D, bb.dx = g2[0] + t1 * D, bb.ddt = g2[1] + t1 * D,
        bb.dBm = g2[2] + t1 * N;
        bb.dCm = g2[3] + t1 * N, bb.dA = g2[4], bb.dinitial_state = dmid;
        CHECK(dn_mamba_backward(&bb) == DN_OK, "%s", dn_last_error());
        dn_mamba_bwd_params ba = dn_mamba_bwd_params_default(&pa);
        ba.dy_s = ba.dx_s = ba.ddt_s = p.x_s, ba.dBm_s = ba.dCm_s = p.Bm_s;
        ba.dy = dy, ba.dfinal_state = dmid, ba.dx = g2[0], ba.ddt = g2[1], ba.dBm = g2[2];
        ba.dCm = g2[3], ba.dA = g2[4];
        CHECK(dn_mamba_backward(&ba) == DN_OK, "%s", dn_last_error());
        static const char *const nm[5] = {"mamba1 split dx", "mamba1 split ddt", "mamba1 split dBm",
                                          "mamba1 split dCm", "mamba1 split dA"};
        const int64_t sz[5] = {T * D, T * D, T * N, T * N, D * N};
        for (int i = 0; i < 5; i++)
            fails += check_close(nm[i], g2[i], g1[i], sz[i], 1e-5);
        free(x), free(dt), free(A), free(Bm), free(Cm), free(dy), free(y), free(mid), free(dmid);
        for (int i = 0; i < 5; i++)
            free(g1[i]), free(g2[i]);
    }
    { /* short convolution */
        const int64_t D = 70, W = 4;
        float *x = falloc(T * D), *w = falloc(D * W), *bias = falloc(D), *dy = falloc(T * D),
              *y = falloc(T * D);
        float *mid = falloc(D * (W - 1)), *dmid = falloc(D * (W - 1));
        fill_uniform(&r, x, T * D, -1, 1), fill_uniform(&r, w, D * W, -1, 1),
            fill_uniform(&r, bias, D, -1, 1);
        fill_uniform(&r, dy, T * D, -1, 1);
        float *g1[3], *g2[3];
        for (int i = 0; i < 3; i++)
            g1[i] = calloc((size_t)(T * D), 4), g2[i] = calloc((size_t)(T * D), 4);
        dn_conv_params p = dn_conv_params_default(B, T, D, W);
        p.x = x, p.weight = w, p.bias = bias, p.silu = 1, p.y = y;
        dn_conv_bwd_params b = dn_conv_bwd_params_default(&p);
        b.dy = dy, b.dx = g1[0], b.dweight = g1[1], b.dbias = g1[2];
        CHECK(dn_conv_backward(&b) == DN_OK, "%s", dn_last_error());
        dn_conv_params pa = p, pb = p;
        pa.T = t1, pa.final_state = mid;
        CHECK(dn_conv_forward(&pa) == DN_OK, "%s", dn_last_error());
        pb.T = T - t1, pb.x = x + t1 * D, pb.y = y + t1 * D, pb.initial_state = mid;
        dn_conv_bwd_params bb = dn_conv_bwd_params_default(&pb);
        bb.dy_s = bb.dx_s = p.x_s;
        bb.dy = dy + t1 * D, bb.dx = g2[0] + t1 * D, bb.dweight = g2[1], bb.dbias = g2[2],
        bb.dinitial_state = dmid;
        CHECK(dn_conv_backward(&bb) == DN_OK, "%s", dn_last_error());
        dn_conv_bwd_params ba = dn_conv_bwd_params_default(&pa);
        ba.dy_s = ba.dx_s = p.x_s;
        ba.dy = dy, ba.dfinal_state = dmid, ba.dx = g2[0], ba.dweight = g2[1], ba.dbias = g2[2];
        CHECK(dn_conv_backward(&ba) == DN_OK, "%s", dn_last_error());
        fails += check_close("conv split dx", g2[0], g1[0], T * D, 1e-5);
        fails += check_close("conv split dweight", g2[1], g1[1], D * W, 1e-5);
        fails += check_close("conv split dbias", g2[2], g1[2], D, 1e-5);
        free(x), free(w), free(bias), free(dy), free(y), free(mid), free(dmid);
        for (int i = 0; i < 3; i++)
            free(g1[i]), free(g2[i]);
    }
    return fails;
}

/* ---- Mamba-2: its backward (through GLA) against finite differences of its own recurrence ---- */
typedef struct {
    int64_t T, H, P, N, G;
    double *x, *dt, *A, *Bm, *Cm, *Ds, *bias, *h0;
} m2d;

static double m2_loss(const m2d *m, const double *wy, const double *wh) {
    double L = 0, *S = malloc(sizeof(double) * (size_t)(m->N * m->P));
    for (int64_t h = 0; h < m->H; h++) {
        const int64_t g = h / (m->H / m->G);
        for (int64_t i = 0; i < m->N * m->P; i++)
            S[i] = m->h0[h * m->N * m->P + i];
        for (int64_t t = 0; t < m->T; t++) {
            double dt = m->dt[t * m->H + h] + m->bias[h];
            dt = dt > 20 ? dt : log1p(exp(dt));
            const double e = exp(dt * m->A[h]);
            const double *x = m->x + (t * m->H + h) * m->P, *Bm = m->Bm + (t * m->G + g) * m->N;
            const double *Cm = m->Cm + (t * m->G + g) * m->N;
            for (int64_t n = 0; n < m->N; n++)
                for (int64_t c = 0; c < m->P; c++)
                    S[n * m->P + c] = e * S[n * m->P + c] + Bm[n] * dt * x[c];
            for (int64_t c = 0; c < m->P; c++) {
                double y = m->Ds[h] * x[c];
                for (int64_t n = 0; n < m->N; n++)
                    y += S[n * m->P + c] * Cm[n];
                L += y * wy[(t * m->H + h) * m->P + c];
            }
        }
        for (int64_t i = 0; i < m->N * m->P; i++)
            L += S[i] * wh[h * m->N * m->P + i];
    }
    free(S);
    return L;
}

static int test_mamba2_grad(void) {
    int fails = 0;
    const int64_t T = 20, H = 4, P = 3, N = 5, G = 2;
    rng r = {61};
    m2d m = {T, H, P, N, G, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    const int64_t nx = T * H * P, nd = T * H, nb = T * G * N, nh = H * N * P;
    m.x = dvec(&r, nx, -1, 1), m.dt = dvec(&r, nd, -2, 1), m.A = dvec(&r, H, -2, -0.3);
    m.Bm = dvec(&r, nb, -1, 1), m.Cm = dvec(&r, nb, -1, 1), m.Ds = dvec(&r, H, -1, 1);
    m.bias = dvec(&r, H, -0.5, 0.5), m.h0 = dvec(&r, nh, -0.5, 0.5);
    double *wy = dvec(&r, nx, -1, 1), *wh = dvec(&r, nh, -1, 1);
    float *fx = tof(m.x, nx), *fdt = tof(m.dt, nd), *fA = tof(m.A, H), *fB = tof(m.Bm, nb),
          *fC = tof(m.Cm, nb);
    float *fD = tof(m.Ds, H), *fbias = tof(m.bias, H), *fh0 = tof(m.h0, nh), *fwy = tof(wy, nx),
          *fwh = tof(wh, nh);
    dn_mamba2_params p = dn_mamba2_params_default(1, T, H, P, N, G);
    p.x = fx, p.dt = fdt, p.A = fA, p.Bm = fB, p.Cm = fC, p.Dskip = fD, p.dt_bias = fbias;
    p.dt_softplus = 1, p.initial_state = fh0, p.chunk_size = 16;
    const int64_t sz[8] = {nx, nd, nb, nb, H, H, H, nh};
    float *g[2][8];
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 8; i++)
            g[w][i] = calloc((size_t)sz[i], 4);
    for (int w = 0; w < 2; w++) {
        dn_mamba2_bwd_params b = dn_mamba2_bwd_params_default(&p);
        b.fwd.impl = w == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
        b.dy = fwy, b.dfinal_state = fwh, b.dx = g[w][0], b.ddt = g[w][1], b.dBm = g[w][2],
        b.dCm = g[w][3];
        b.dA = g[w][4], b.dDskip = g[w][5], b.ddt_bias = g[w][6], b.dinitial_state = g[w][7];
        CHECK(dn_mamba2_backward(&b) == DN_OK, "%s", dn_last_error());
    }
    char nm[64];
#define M2FD(arr, n, i)                                                                            \
    snprintf(nm, sizeof nm, "mamba2 d" #arr);                                                      \
    FD_CHECK(nm, m.arr, n, g[0][i], m2_loss(&m, wy, wh))
    M2FD(x, nx, 0);
    M2FD(dt, nd, 1);
    M2FD(Bm, nb, 2);
    M2FD(Cm, nb, 3);
    M2FD(A, H, 4);
    M2FD(Ds, H, 5);
    M2FD(bias, H, 6);
    M2FD(h0, nh, 7);
#undef M2FD
    static const char *const names[8] = {"dx", "ddt",    "dBm",      "dCm",
                                         "dA", "dDskip", "ddt_bias", "dh0"};
    for (int i = 0; i < 8; i++) {
        snprintf(nm, sizeof nm, "mamba2 fast %s", names[i]);
        fails += check_close(nm, g[1][i], g[0][i], sz[i], 1e-5);
    }
    free(m.x), free(m.dt), free(m.A), free(m.Bm), free(m.Cm), free(m.Ds), free(m.bias), free(m.h0);
    free(wy), free(wh), free(fx), free(fdt), free(fA), free(fB), free(fC), free(fD), free(fbias);
    free(fh0), free(fwy), free(fwh);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 8; i++)
            free(g[w][i]);
    return fails;
}

/* The Mamba-1 and RWKV-4 backwards at 2 threads, REPEATS times: every gradient bitwise the same.
 * Several channel blocks, so that both threads work (and, for Mamba-1, add into dBm and dCm). */
static int test_ssm_bwd_reproducible(void) {
    int fails = 0;
    {
        const int64_t B = 2, T = 100, D = 72, N = 16, G = 2, nx = B * T * D, nb = B * T * G * N,
                      nh = B * D * N;
        rng r = {6100};
        float *x = falloc(nx), *dt = falloc(nx), *A = falloc(D * N), *Bm = falloc(nb),
              *Cm = falloc(nb);
        float *Ds = falloc(D), *bias = falloc(D), *z = falloc(nx), *h0 = falloc(nh),
              *dy = falloc(nx);
        float *dhT = falloc(nh), *y = falloc(nx);
        fill_uniform(&r, x, nx, -1, 1), fill_uniform(&r, dt, nx, -3, 1),
            fill_uniform(&r, A, D * N, -4, -0.1f);
        fill_uniform(&r, Bm, nb, -1, 1), fill_uniform(&r, Cm, nb, -1, 1),
            fill_uniform(&r, Ds, D, -1, 1);
        fill_uniform(&r, bias, D, -1, 1), fill_uniform(&r, z, nx, -2, 2),
            fill_uniform(&r, h0, nh, -1, 1);
        fill_uniform(&r, dy, nx, -1, 1), fill_uniform(&r, dhT, nh, -1, 1);
        dn_mamba_params p = dn_mamba_params_default(B, T, D, N, G);
        p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.dt_bias = bias, p.z = z;
        p.initial_state = h0, p.dt_softplus = 1, p.y = y, p.n_threads = 2;
        const int64_t sz[9] = {nx, nx, nb, nb, nx, D * N, D, D, nh};
        float *g[2][9];
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 9; i++)
                g[w][i] = falloc(sz[i]);
        for (int rep = 0; rep < REPEATS; rep++) {
            const int w = rep > 0;
            for (int i = 0; i < 9; i++) {
                if (i >= 5 && i <= 7)
                    memset(g[w][i], 0, sizeof(float) * (size_t)sz[i]);
                else
                    poison(g[w][i], sz[i]);
            }
            dn_mamba_bwd_params b = dn_mamba_bwd_params_default(&p);
            b.dy = dy, b.dfinal_state = dhT, b.dx = g[w][0], b.ddt = g[w][1], b.dBm = g[w][2];
            b.dCm = g[w][3], b.dz = g[w][4], b.dA = g[w][5], b.dDskip = g[w][6];
            b.ddt_bias = g[w][7], b.dinitial_state = g[w][8];
            CHECK(dn_mamba_backward(&b) == DN_OK, "%s", dn_last_error());
            static const char *const nm[9] = {"dx", "ddt",    "dBm",      "dCm", "dz",
                                              "dA", "dDskip", "ddt_bias", "dh0"};
            for (int i = 0; w && i < 9; i++) {
                char what[80];
                snprintf(what, sizeof what, "mamba1 bwd run %d %s", rep, nm[i]);
                fails += check_same_bits(what, g[1][i], g[0][i], sz[i]);
            }
        }
        free(x), free(dt), free(A), free(Bm), free(Cm), free(Ds), free(bias), free(z), free(h0);
        free(dy), free(dhT), free(y);
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 9; i++)
                free(g[w][i]);
    }
    {
        const int64_t B = 2, T = 80, C = 100, n = B * T * C, ns = B * 3 * C;
        rng r = {6200};
        float *k = falloc(n), *v = falloc(n), *td = falloc(C), *tf = falloc(C), *s0 = falloc(ns);
        float *dy = falloc(n), *dsT = falloc(ns), *y = falloc(n);
        fill_uniform(&r, k, n, -8, 8), fill_uniform(&r, v, n, -1, 1),
            fill_uniform(&r, td, C, -3, 1);
        fill_uniform(&r, tf, C, -1, 1), fill_uniform(&r, dy, n, -1, 1);
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++) {
                s0[b * 3 * C + c] = rng_uniform(&r, -1, 1),
                               s0[b * 3 * C + C + c] = rng_uniform(&r, 0.5f, 2);
                s0[b * 3 * C + 2 * C + c] = rng_uniform(&r, -3, 3);
                for (int j = 0; j < 3; j++)
                    dsT[b * 3 * C + j * C + c] = rng_uniform(&r, -1, 1);
            }
        dn_rwkv4_params p = dn_rwkv4_params_default(B, T, C);
        p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.initial_state = s0, p.y = y;
        p.n_threads = 2;
        const int64_t sz[5] = {n, n, C, C, ns};
        float *g[2][5];
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 5; i++)
                g[w][i] = falloc(sz[i]);
        for (int rep = 0; rep < REPEATS; rep++) {
            const int w = rep > 0;
            poison(g[w][0], n), poison(g[w][1], n), poison(g[w][4], ns);
            memset(g[w][2], 0, sizeof(float) * C), memset(g[w][3], 0, sizeof(float) * C);
            dn_rwkv4_bwd_params b = dn_rwkv4_bwd_params_default(&p);
            b.dy = dy, b.dfinal_state = dsT, b.dk = g[w][0], b.dv = g[w][1];
            b.dtime_decay = g[w][2], b.dtime_first = g[w][3], b.dinitial_state = g[w][4];
            CHECK(dn_rwkv4_backward(&b) == DN_OK, "%s", dn_last_error());
            static const char *const nm[5] = {"dk", "dv", "dtime_decay", "dtime_first", "dh0"};
            for (int i = 0; w && i < 5; i++) {
                char what[80];
                snprintf(what, sizeof what, "rwkv4 bwd run %d %s", rep, nm[i]);
                fails += check_same_bits(what, g[1][i], g[0][i], sz[i]);
            }
        }
        free(k), free(v), free(td), free(tf), free(s0), free(dy), free(dsT), free(y);
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 5; i++)
                free(g[w][i]);
    }
    return fails;
}

/* ---- allocation failures: DN_ERR_ALLOC, and every output left as it was ---------------------- */
static dn_status call_mamba_fwd(void *c) { return dn_mamba_forward(c); }
static dn_status call_mamba_bwd(void *c) { return dn_mamba_backward(c); }
static dn_status call_mamba2_fwd(void *c) { return dn_mamba2_forward(c); }
static dn_status call_mamba2_bwd(void *c) { return dn_mamba2_backward(c); }
static dn_status call_rwkv4_fwd(void *c) { return dn_rwkv4_forward(c); }
static dn_status call_rwkv4_bwd(void *c) { return dn_rwkv4_backward(c); }
static dn_status call_conv_bwd(void *c) { return dn_conv_backward(c); }

static int test_ssm_alloc_failures(void) {
    int fails = 0;
    long reached;
    rng r = {6300};
    const int64_t B = 2, T = 40, D = 40, N = 8, G = 2, nx = B * T * D, nb = B * T * G * N,
                  nh = B * D * N;
    float *x = falloc(nx), *dt = falloc(nx), *A = falloc(D * N), *Bm = falloc(nb), *Cm = falloc(nb);
    float *Ds = falloc(D), *dy = falloc(nx), *y = falloc(nx),
          *hT = falloc(nh > 6 * B * D ? nh : 6 * B * D);
    fill_uniform(&r, x, nx, -1, 1), fill_uniform(&r, dt, nx, -3, 1),
        fill_uniform(&r, A, D * N, -4, -0.1f);
    fill_uniform(&r, Bm, nb, -1, 1), fill_uniform(&r, Cm, nb, -1, 1),
        fill_uniform(&r, Ds, D, -1, 1);
    fill_uniform(&r, dy, nx, -1, 1);
    /* Mamba-1 */
    dn_mamba_params mp = dn_mamba_params_default(B, T, D, N, G);
    mp.x = x, mp.dt = dt, mp.A = A, mp.Bm = Bm, mp.Cm = Cm, mp.Dskip = Ds, mp.y = y,
    mp.final_state = hT;
    mp.dt_softplus = 1, mp.n_threads = 2;
    float *o1[2] = {y, hT};
    const int64_t n1[2] = {nx, nh};
    fails += check_alloc_failures("mamba1 forward", call_mamba_fwd, &mp, o1, n1, 2, &reached);
    CHECK(reached >= 1, "mamba1 forward: no allocation to fail");
    float *g[6] = {falloc(nx), falloc(nx), falloc(nb), falloc(nb), falloc(D * N), falloc(D)};
    const int64_t ng[6] = {nx, nx, nb, nb, D * N, D};
    dn_mamba_bwd_params mb = dn_mamba_bwd_params_default(&mp);
    mb.dy = dy, mb.dx = g[0], mb.ddt = g[1], mb.dBm = g[2], mb.dCm = g[3], mb.dA = g[4],
    mb.dDskip = g[5];
    fails += check_alloc_failures("mamba1 backward", call_mamba_bwd, &mb, g, ng, 6, &reached);
    CHECK(reached >= 1, "mamba1 backward: no allocation to fail");
    /* Mamba-2 on the same buffers: x [B,T,H=D/4,P=4], dt [B,T,H], states [B,H,N,P] */
    const int64_t H = D / 4, P = 4;
    dn_mamba2_params m2 = dn_mamba2_params_default(B, T, H, P, N, G);
    m2.x = x, m2.dt = dt, m2.A = A, m2.Bm = Bm, m2.Cm = Cm, m2.Dskip = Ds, m2.y = y,
    m2.final_state = hT;
    m2.dt_softplus = 1, m2.n_threads = 2;
    fails += check_alloc_failures("mamba2 forward", call_mamba2_fwd, &m2, o1, n1, 2, &reached);
    CHECK(reached >= 2, "mamba2 forward: fewer allocations than expected (%ld)", reached);
    dn_mamba2_bwd_params m2b = dn_mamba2_bwd_params_default(&m2);
    m2b.dy = dy, m2b.dx = g[0], m2b.ddt = g[1], m2b.dBm = g[2], m2b.dCm = g[3], m2b.dA = g[4],
    m2b.dDskip = g[5];
    fails += check_alloc_failures("mamba2 backward", call_mamba2_bwd, &m2b, g, ng, 6, &reached);
    CHECK(reached >= 5, "mamba2 backward: fewer allocations than expected (%ld)", reached);
    /* RWKV-4: k = x, v = dt as [B,T,C=D] */
    dn_rwkv4_params rp = dn_rwkv4_params_default(B, T, D);
    rp.k = x, rp.v = dt, rp.time_decay = Ds, rp.time_first = A, rp.y = y, rp.final_state = hT,
    rp.n_threads = 2;
    const int64_t nr[2] = {nx, 3 * B * D};
    fails += check_alloc_failures("rwkv4 forward", call_rwkv4_fwd, &rp, o1, nr, 2, &reached);
    CHECK(reached >= 1, "rwkv4 forward: no allocation to fail");
    dn_rwkv4_bwd_params rb = dn_rwkv4_bwd_params_default(&rp);
    float *rg[4] = {g[0], g[1], g[5], g[4]};
    const int64_t nrg[4] = {nx, nx, D, D};
    rb.dy = dy, rb.dk = rg[0], rb.dv = rg[1], rb.dtime_decay = rg[2], rb.dtime_first = rg[3];
    fails += check_alloc_failures("rwkv4 backward", call_rwkv4_bwd, &rb, rg, nrg, 4, &reached);
    CHECK(reached >= 1, "rwkv4 backward: no allocation to fail");
    /* short conv backward: x [B,T,D], weight [D,3] */
    dn_conv_params cp = dn_conv_params_default(B, T, D, 3);
    cp.x = x, cp.weight = A, cp.bias = Ds, cp.silu = 1, cp.y = y, cp.n_threads = 2;
    dn_conv_bwd_params cb = dn_conv_bwd_params_default(&cp);
    float *cg[3] = {g[0], g[4], g[5]};
    const int64_t ncg[3] = {nx, D * 3, D};
    cb.dy = dy, cb.dx = cg[0], cb.dweight = cg[1], cb.dbias = cg[2];
    fails += check_alloc_failures("short_conv backward", call_conv_bwd, &cb, cg, ncg, 3, &reached);
    CHECK(reached >= 1, "short_conv backward: no allocation to fail");
    free(x), free(dt), free(A), free(Bm), free(Cm), free(Ds), free(dy), free(y), free(hT);
    for (int i = 0; i < 6; i++)
        free(g[i]);
    return fails;
}

const test_case dn_tests_bwd_ssm[] = {
    {"bwd_mamba2", test_mamba2_grad},
    {"bwd_rwkv4_reference_vs_finite_differences", test_rwkv_grad_fd},
    {"bwd_rwkv4_fast", test_rwkv_grad_fast},
    {"bwd_rwkv4_stress", test_rwkv_grad_stress},
    {"bwd_split_sequences", test_split_grads},
    {"bwd_mamba1_reference_vs_finite_differences", test_mamba_grad_fd},
    {"bwd_conv_reference_vs_finite_differences", test_conv_grad_fd},
    {"bwd_mamba1_fast", test_mamba_grad_fast},
    {"bwd_conv_fast", test_conv_grad_fast},
    {"bwd_ssm_reproducible", test_ssm_bwd_reproducible},
    {"ssm_alloc_failures", test_ssm_alloc_failures},
    {NULL, NULL},
};
