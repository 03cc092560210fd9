/*
 * test_bwd_ssm.c - gradients of the Mamba-1 scan and the short convolution: references against
 * central finite differences of forwards written here in double from the definitions, fast
 * against reference at every SIMD level, the accumulation rule, and split sequences.
 */
#include "test.h"

/* ---- double forwards, from the definitions ---------------------------------------------------- */
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
            for (int64_t n = 0; n < m->N; n++) h[n] = m->h0[(b * m->D + d) * m->N + n];
            for (int64_t t = 0; t < m->T; t++) {
                const int64_t r = (b * m->T + t) * m->D + d, rb = ((b * m->T + t) * m->G + g) * m->N;
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
            for (int64_t n = 0; n < m->N; n++) L += h[n] * wh[(b * m->D + d) * m->N + n];
        }
    free(h);
    return L;
}

static double *dvec(rng *r, int64_t n, double lo, double hi) {
    double *x = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(r, (float)lo, (float)hi);
    return x;
}
static float *tof(const double *x, int64_t n) {
    float *y = falloc(n);
    for (int64_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}

/* d loss / d x[i] by central differences against an analytic gradient g (float) */
#define FD_CHECK(name, arr, n, grad, lossexpr)                                                     \
    do {                                                                                           \
        double num_ = 0, den_ = 0;                                                                 \
        for (int64_t i_ = 0; i_ < (n); i_++) {                                                     \
            const double x0_ = (arr)[i_], h_ = 1e-5 * (1 + fabs(x0_));                            \
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
            const int64_t B = shapes[si][0], T = shapes[si][1], D = shapes[si][2], N = shapes[si][3],
                          G = shapes[si][4];
            rng r = {10 + (uint64_t)si * 2 + sp};
            mdd m = {B, T, D, N, G, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, sp};
            const int64_t nx = B * T * D, nb = B * T * G * N, nh = B * D * N;
            m.x = dvec(&r, nx, -1, 1), m.dt = dvec(&r, nx, sp ? -2 : 0.01, sp ? 1 : 0.5);
            m.A = dvec(&r, D * N, -2, -0.1), m.Bm = dvec(&r, nb, -1, 1), m.Cm = dvec(&r, nb, -1, 1);
            m.Ds = dvec(&r, D, -1, 1), m.bias = dvec(&r, D, -0.5, 0.5), m.z = dvec(&r, nx, -2, 2);
            m.h0 = dvec(&r, nh, -0.5, 0.5);
            double *wy = dvec(&r, nx, -1, 1), *wh = dvec(&r, nh, -1, 1);
            float *fx = tof(m.x, nx), *fdt = tof(m.dt, nx), *fA = tof(m.A, D * N), *fB = tof(m.Bm, nb);
            float *fC = tof(m.Cm, nb), *fD = tof(m.Ds, D), *fbias = tof(m.bias, D), *fz = tof(m.z, nx);
            float *fh0 = tof(m.h0, nh), *fwy = tof(wy, nx), *fwh = tof(wh, nh), *y = falloc(nx);
            dn_mamba_params p = dn_mamba_params_default(B, T, D, N, G);
            p.x = fx, p.dt = fdt, p.A = fA, p.Bm = fB, p.Cm = fC, p.Dskip = fD, p.dt_bias = fbias;
            p.z = fz, p.initial_state = fh0, p.dt_softplus = sp, p.y = y, p.impl = DN_IMPL_REF;
            dn_mamba_bwd_params b = dn_mamba_bwd_params_default(&p);
            float *dx = falloc(nx), *ddt = falloc(nx), *dB = falloc(nb), *dC = falloc(nb), *dz = falloc(nx);
            float *dA = calloc((size_t)(D * N), 4), *dD = calloc((size_t)D, 4), *dbias = calloc((size_t)D, 4);
            float *dh0 = falloc(nh);
            b.dy = fwy, b.dfinal_state = fwh, b.dx = dx, b.ddt = ddt, b.dBm = dB, b.dCm = dC, b.dz = dz;
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
            free(m.z), free(m.h0), free(wy), free(wh), free(fx), free(fdt), free(fA), free(fB), free(fC);
            free(fD), free(fbias), free(fz), free(fh0), free(fwy), free(fwh), free(y), free(dx), free(ddt);
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
#define XI(s) ((s) >= 0 ? c->x[(b * c->T + (s)) * c->D + d] : c->s0[(b * c->D + d) * (c->W - 1) + c->W - 1 + (s)])
            for (int64_t t = 0; t < c->T; t++) {
                double a = c->bias[d];
                for (int64_t j = 0; j < c->W; j++) a += c->w[d * c->W + j] * XI(t - c->W + 1 + j);
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
            const int64_t B = 2, T = W == 3 ? 2 : 9, D = 3; /* T < W - 1 too: the state passes through */
            rng r = {70 + (uint64_t)(W * 2 + silu)};
            cdd c = {B, T, D, W, NULL, NULL, NULL, NULL, silu};
            const int64_t nx = B * T * D, ns = B * D * (W - 1);
            c.x = dvec(&r, nx, -2, 2), c.w = dvec(&r, D * W, -1, 1), c.bias = dvec(&r, D, -1, 1);
            c.s0 = dvec(&r, ns, -2, 2);
            double *wy = dvec(&r, nx, -1, 1), *ws = dvec(&r, ns, -1, 1);
            float *fx = tof(c.x, nx), *fw = tof(c.w, D * W), *fb = tof(c.bias, D), *fs0 = tof(c.s0, ns);
            float *fwy = tof(wy, nx), *fws = tof(ws, ns), *y = falloc(nx);
            dn_conv_params p = dn_conv_params_default(B, T, D, W);
            p.x = fx, p.weight = fw, p.bias = fb, p.initial_state = fs0, p.silu = silu, p.y = y;
            p.impl = DN_IMPL_REF;
            dn_conv_bwd_params b = dn_conv_bwd_params_default(&p);
            float *dx = falloc(nx), *dw = calloc((size_t)(D * W), 4), *db = calloc((size_t)D, 4), *ds0 = falloc(ns);
            b.dy = fwy, b.dfinal_state = fws, b.dx = dx, b.dweight = dw, b.dbias = db, b.dinitial_state = ds0;
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
            free(c.x), free(c.w), free(c.bias), free(c.s0), free(wy), free(ws), free(fx), free(fw), free(fb);
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
            const int64_t B = 2, T = Ts[ti], D = di == 2 ? 40 : 32, N = dims[di], G = idx % 2 ? 2 : 1;
            rng r = {300 + (uint64_t)idx};
            const int64_t nx = B * T * D, nb = B * T * G * N, nh = B * D * N;
            float *x = falloc(nx), *dt = falloc(nx), *A = falloc(D * N), *Bm = falloc(nb), *Cm = falloc(nb);
            float *Ds = falloc(D), *bias = falloc(D), *z = falloc(nx), *h0 = falloc(nh), *dy = falloc(nx);
            float *dhT = falloc(nh), *y = falloc(nx);
            fill_uniform(&r, x, nx, -1, 1), fill_uniform(&r, dt, nx, -3, 1), fill_uniform(&r, A, D * N, -4, -0.1f);
            fill_uniform(&r, Bm, nb, -1, 1), fill_uniform(&r, Cm, nb, -1, 1), fill_uniform(&r, Ds, D, -1, 1);
            fill_uniform(&r, bias, D, -1, 1), fill_uniform(&r, z, nx, -2, 2), fill_uniform(&r, h0, nh, -1, 1);
            fill_uniform(&r, dy, nx, -1, 1), fill_uniform(&r, dhT, nh, -1, 1);
            dn_mamba_params p = dn_mamba_params_default(B, T, D, N, G);
            p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.dt_bias = bias, p.z = z;
            p.initial_state = h0, p.dt_softplus = 1, p.y = y;
            const int64_t sz[9] = {nx, nx, nb, nb, nx, D * N, D, D, nh};
            float *g[2][9];
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 9; i++) g[w][i] = falloc(sz[i]);
            float *init = falloc(D * N);
            fill_uniform(&r, init, D * N, -1, 1); /* parameter gradients accumulate onto this */
            dn_isa best = dn_isa_best();
            for (int isa = 0; isa <= (int)best; isa++) {
                if (dn_set_isa((dn_isa)isa) != DN_OK) continue;
                for (int w = 0; w < 2; w++) {
                    if (w == 0 && isa > 0) continue;
                    for (int i = 0; i < 9; i++) {
                        if (i >= 5 && i <= 7) memcpy(g[w][i], init, sizeof(float) * sz[i]);
                        else poison(g[w][i], sz[i]);
                    }
                    dn_mamba_bwd_params b = dn_mamba_bwd_params_default(&p);
                    b.fwd.impl = w == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
                    b.dy = dy, b.dfinal_state = dhT, b.dx = g[w][0], b.ddt = g[w][1], b.dBm = g[w][2];
                    b.dCm = g[w][3], b.dz = g[w][4], b.dA = g[w][5], b.dDskip = g[w][6];
                    b.ddt_bias = g[w][7], b.dinitial_state = g[w][8];
                    CHECK(dn_mamba_backward(&b) == DN_OK, "%s", dn_last_error());
                }
                static const char *const nm[9] = {"dx", "ddt", "dBm", "dCm", "dz", "dA", "dDskip", "ddt_bias", "dh0"};
                for (int i = 0; i < 9; i++) {
                    char what[120];
                    snprintf(what, sizeof what, "mamba1 bwd T=%lld N=%lld G=%lld %s %s", (long long)T,
                             (long long)N, (long long)G, dn_isa_name((dn_isa)isa), nm[i]);
                    fails += check_close(what, g[1][i], g[0][i], sz[i], 1e-5);
                }
            }
            dn_set_isa(best);
            free(x), free(dt), free(A), free(Bm), free(Cm), free(Ds), free(bias), free(z), free(h0);
            free(dy), free(dhT), free(y), free(init);
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 9; i++) free(g[w][i]);
        }
    return fails;
}

static int test_conv_grad_fast(void) {
    int fails = 0, idx = 0;
    for (int64_t W = 2; W <= 4; W++)
        for (int64_t T = 1; T <= 200; T = T * 5 + 2, idx++) {
            const int64_t B = 2, D = idx % 2 ? 100 : 128, nx = B * T * D, ns = B * D * (W - 1);
            rng r = {800 + (uint64_t)idx};
            float *x = falloc(nx), *w = falloc(D * W), *bias = falloc(D), *s0 = falloc(ns), *dy = falloc(nx);
            float *dsT = falloc(ns), *y = falloc(nx), *init = falloc(D * W);
            fill_uniform(&r, x, nx, -2, 2), fill_uniform(&r, w, D * W, -1, 1), fill_uniform(&r, bias, D, -1, 1);
            fill_uniform(&r, s0, ns, -2, 2), fill_uniform(&r, dy, nx, -1, 1), fill_uniform(&r, dsT, ns, -1, 1);
            fill_uniform(&r, init, D * W, -1, 1);
            dn_conv_params p = dn_conv_params_default(B, T, D, W);
            p.x = x, p.weight = w, p.bias = bias, p.initial_state = s0, p.silu = 1, p.y = y;
            const int64_t sz[4] = {nx, D * W, D, ns};
            float *g[2][4];
            for (int v = 0; v < 2; v++)
                for (int i = 0; i < 4; i++) g[v][i] = falloc(sz[i]);
            dn_isa best = dn_isa_best();
            for (int isa = 0; isa <= (int)best; isa++) {
                if (dn_set_isa((dn_isa)isa) != DN_OK) continue;
                for (int v = 0; v < 2; v++) {
                    if (v == 0 && isa > 0) continue;
                    poison(g[v][0], nx), poison(g[v][3], ns);
                    memcpy(g[v][1], init, sizeof(float) * D * W), memcpy(g[v][2], init, sizeof(float) * D);
                    dn_conv_bwd_params b = dn_conv_bwd_params_default(&p);
                    b.fwd.impl = v == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
                    b.dy = dy, b.dfinal_state = dsT, b.dx = g[v][0], b.dweight = g[v][1], b.dbias = g[v][2];
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
                for (int i = 0; i < 4; i++) free(g[v][i]);
        }
    return fails;
}

const test_case dn_tests_bwd_ssm[] = {
    {"bwd_mamba1_reference_vs_finite_differences", test_mamba_grad_fd},
    {"bwd_conv_reference_vs_finite_differences", test_conv_grad_fd},
    {"bwd_mamba1_fast", test_mamba_grad_fast},
    {"bwd_conv_fast", test_conv_grad_fast},
    {NULL, NULL},
};
