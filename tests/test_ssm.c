/*
 * test_ssm.c - tests of Mamba-1, Mamba-2 (through GLA), RWKV-4 and the short convolution: fast
 * paths at every SIMD level against the double references, token-by-token and split calls
 * against whole sequences, stress values, and rejected inputs.
 */
#include "test.h"

#define TOL 1e-5

/* Runs fn at every SIMD level; fn returns failures. */
#define FOR_EACH_ISA(...)                                                                          \
    do {                                                                                           \
        dn_isa best_ = dn_isa_best();                                                              \
        for (int isa_ = 0; isa_ <= (int)best_; isa_++) {                                           \
            if (!test_use_isa((dn_isa)isa_)) continue;                                             \
            __VA_ARGS__;                                                                           \
        }                                                                                          \
        dn_set_isa(best_);                                                                         \
    } while (0)

/* [B,T,D] buffer with padded rows when strided: returns the strides. */
static dn_strides btd(int64_t T, int64_t D, int strided) {
    dn_strides s = {T * D, D, 0};
    if (strided) s = (dn_strides){T * (D + 3) + 5, D + 3, 0};
    return s;
}
static int64_t btd_size(dn_strides s, int64_t B, int64_t T, int64_t D) {
    return (B - 1) * s.b + (T > 0 ? T - 1 : 0) * s.t + D;
}
static void gather_btd(float *dst, const float *src, dn_strides s, int64_t B, int64_t T,
                       int64_t D) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            memcpy(dst + (b * T + t) * D, src + b * s.b + t * s.t, sizeof(float) * D);
}

/* ---------------------------------------------------------------------------------------------
 * Mamba-1
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    dn_mamba_params p;
    float *x, *dt, *A, *Bm, *Cm, *Dskip, *dt_bias, *z, *y, *h0;
    int64_t ny, nstate;
} mproblem;

static void mproblem_init(mproblem *m, int64_t B, int64_t T, int64_t D, int64_t N, int64_t G,
                          int strided, int full, float dtmax, float amin, uint64_t seed) {
    rng r = {seed};
    dn_mamba_params p = dn_mamba_params_default(B, T, D, N, G);
    p.x_s = p.dt_s = p.z_s = btd(T, D, strided);
    p.y_s = btd(T, D, strided);
    if (strided) p.Bm_s = p.Cm_s = (dn_strides){T * (G * N + 7), G * N + 7, N + 1};
    int64_t nx = btd_size(p.x_s, B, T, D),
            nbc = (B - 1) * p.Bm_s.b + (T > 0 ? T - 1 : 0) * p.Bm_s.t + (G - 1) * p.Bm_s.h + N;
    m->x = falloc(nx), m->dt = falloc(nx), m->z = falloc(nx), m->y = falloc(nx);
    m->Bm = falloc(nbc), m->Cm = falloc(nbc), m->A = falloc(D * N);
    m->Dskip = falloc(D), m->dt_bias = falloc(D), m->nstate = B * D * N, m->h0 = falloc(m->nstate);
    m->ny = nx;
    fill_uniform(&r, m->x, nx, -1, 1);
    fill_uniform(&r, m->dt, nx, full ? -3 : 0.001f, full ? 1 : dtmax);
    fill_uniform(&r, m->z, nx, -2, 2);
    fill_uniform(&r, m->Bm, nbc, -1, 1);
    fill_uniform(&r, m->Cm, nbc, -1, 1);
    fill_uniform(&r, m->A, D * N, amin, -0.05f);
    fill_uniform(&r, m->Dskip, D, -1, 1);
    fill_uniform(&r, m->dt_bias, D, -1, 0.5f);
    fill_uniform(&r, m->h0, m->nstate, -0.5f, 0.5f);
    p.x = m->x, p.dt = m->dt, p.A = m->A, p.Bm = m->Bm, p.Cm = m->Cm, p.y = m->y;
    if (full) {
        p.Dskip = m->Dskip, p.dt_bias = m->dt_bias, p.dt_softplus = 1, p.z = m->z;
        p.initial_state = m->h0;
    }
    m->p = p;
}

static void mproblem_free(mproblem *m) {
    free(m->x), free(m->dt), free(m->A), free(m->Bm), free(m->Cm), free(m->Dskip);
    free(m->dt_bias), free(m->z), free(m->y), free(m->h0);
}

static int mrun(mproblem *m, dn_impl impl, float *y, float *st, const char *what) {
    int fails = 0;
    dn_mamba_params p = m->p;
    p.impl = impl;
    p.final_state = st;
    poison(m->y, m->ny);
    poison(st, m->nstate);
    dn_status s = dn_mamba_forward(&p);
    CHECK(s == DN_OK, "%s: %s", what, dn_last_error());
    gather_btd(y, m->y, p.y_s, p.B, p.T, p.D);
    int64_t bad = 0;
    for (int64_t i = 0; i < p.B * p.T * p.D; i++)
        bad += !isfinite(y[i]);
    for (int64_t i = 0; i < m->nstate; i++)
        bad += !isfinite(st[i]);
    CHECK(bad == 0, "%s: %lld outputs not written or not finite", what, (long long)bad);
    return fails;
}

static int mamba_compare(mproblem *m, const char *label, double tol) {
    int fails = 0;
    const int64_t ny = m->p.B * m->p.T * m->p.D;
    float *yr = falloc(ny), *sr = falloc(m->nstate), *y = falloc(ny), *s = falloc(m->nstate);
    fails += mrun(m, DN_IMPL_REF, yr, sr, label);
    FOR_EACH_ISA({
        char what[200];
        snprintf(what, sizeof what, "%s %s", label, dn_isa_name((dn_isa)isa_));
        fails += mrun(m, DN_IMPL_AUTO, y, s, what);
        fails += check_close(what, y, yr, ny, tol);
        fails += check_close(what, s, sr, m->nstate, tol);
    });
    free(yr), free(sr), free(y), free(s);
    return fails;
}

static int test_mamba1(void) {
    static const int64_t Ts[] = {1, 17, 64, 300}, dims[] = {16, 64, 128};
    int fails = 0, idx = 0;
    for (int ti = 0; ti < 4; ti++)
        for (int di = 0; di < 3; di++)
            for (int ni = 0; ni < 3; ni++, idx++) {
                const int64_t D = dims[di], N = dims[ni] + (idx % 3 == 2 ? 3 : 0); /* odd N too */
                const int64_t G = idx % 3 == 0 ? 1 : idx % 3 == 1 ? 2 : 4;
                mproblem m;
                mproblem_init(&m, idx % 2 ? 2 : 1, Ts[ti], D, N, G, idx % 2, idx % 4 != 3, 0.5f,
                              -2.0f, 40 + idx);
                char label[120];
                snprintf(label, sizeof label, "mamba1 T=%lld D=%lld N=%lld G=%lld",
                         (long long)Ts[ti], (long long)D, (long long)N, (long long)G);
                fails += mamba_compare(&m, label, TOL);
                mproblem_free(&m);
            }
    return fails;
}

/* Large dt and strongly negative A: every decay underflows to zero, outputs stay finite. */
static int test_mamba1_stress(void) {
    int fails = 0;
    mproblem m;
    mproblem_init(&m, 1, 100, 32, 16, 1, 0, 0, 60.0f, -100.0f, 9);
    fails += mamba_compare(&m, "mamba1 dt up to 60, A down to -100", TOL);
    mproblem_free(&m);
    return fails;
}

/* Token-by-token decode (T = 1, state in place) and a split call equal one whole call. */
static int test_mamba1_steps(void) {
    int fails = 0;
    const int64_t B = 2, T = 40, D = 48, N = 16;
    mproblem m;
    mproblem_init(&m, B, T, D, N, 2, 0, 1, 0.5f, -2.0f, 77);
    const int64_t ny = B * T * D;
    float *yr = falloc(ny), *sr = falloc(m.nstate), *state = falloc(m.nstate), *ys = falloc(ny);
    fails += mrun(&m, DN_IMPL_AUTO, yr, sr, "mamba1 whole");
    memcpy(state, m.h0, sizeof(float) * m.nstate);
    for (int64_t t = 0; t < T; t++) {
        dn_mamba_params p = m.p;
        p.T = 1;
        p.x += t * p.x_s.t, p.dt += t * p.dt_s.t, p.z += t * p.z_s.t;
        p.Bm += t * p.Bm_s.t, p.Cm += t * p.Cm_s.t;
        p.y = ys + t * D;
        p.y_s = (dn_strides){T * D, D, 0};
        p.initial_state = p.final_state = state;
        CHECK(dn_mamba_forward(&p) == DN_OK, "step %lld: %s", (long long)t, dn_last_error());
    }
    fails += check_close("mamba1 steps", ys, yr, ny, TOL);
    fails += check_close("mamba1 steps state", state, sr, m.nstate, TOL);
    free(yr), free(sr), free(state), free(ys);
    mproblem_free(&m);
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * Mamba-2 through GLA, against its own recurrence
 * ------------------------------------------------------------------------------------------- */
static int test_mamba2(void) {
    static const int64_t Ts[] = {1, 17, 64, 300};
    static const int64_t shapes[][3] = {{16, 16, 1}, {64, 64, 2}, {32, 128, 1}}; /* P, N, G */
    int fails = 0, idx = 0;
    for (int ti = 0; ti < 4; ti++)
        for (int si = 0; si < 3; si++, idx++) {
            const int64_t B = 2, T = Ts[ti], H = 4, P = shapes[si][0], N = shapes[si][1],
                          G = shapes[si][2];
            rng r = {300 + (uint64_t)idx};
            dn_mamba2_params p = dn_mamba2_params_default(B, T, H, P, N, G);
            float *x = falloc(B * T * H * P), *dt = falloc(B * T * H), *A = falloc(H);
            float *Bm = falloc(B * T * G * N), *Cm = falloc(B * T * G * N), *Ds = falloc(H);
            float *bias = falloc(H), *h0 = falloc(B * H * N * P);
            fill_uniform(&r, x, B * T * H * P, -1, 1);
            fill_uniform(&r, dt, B * T * H, -3, 1);
            fill_uniform(&r, A, H, -4, -0.5f);
            fill_uniform(&r, Bm, B * T * G * N, -0.3f, 0.3f);
            fill_uniform(&r, Cm, B * T * G * N, -0.3f, 0.3f);
            fill_uniform(&r, Ds, H, -1, 1);
            fill_uniform(&r, bias, H, -1, 1);
            fill_uniform(&r, h0, B * H * N * P, -0.5f, 0.5f);
            p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.Dskip = Ds, p.dt_bias = bias;
            p.dt_softplus = 1, p.initial_state = h0;
            const int64_t ny = B * T * H * P, ns = B * H * N * P;
            float *yr = falloc(ny), *sr = falloc(ns), *y = falloc(ny), *s = falloc(ns);
            p.y = yr, p.final_state = sr, p.impl = DN_IMPL_REF;
            CHECK(dn_mamba2_forward(&p) == DN_OK, "mamba2 ref: %s", dn_last_error());
            for (int impl = DN_IMPL_AUTO; impl < DN_IMPL_COUNT; impl++) {
                if (impl == DN_IMPL_REF) continue;
                FOR_EACH_ISA({
                    poison(y, ny), poison(s, ns);
                    p.y = y, p.final_state = s, p.impl = (dn_impl)impl, p.chunk_size = 32;
                    CHECK(dn_mamba2_forward(&p) == DN_OK, "mamba2: %s", dn_last_error());
                    char what[120];
                    snprintf(what, sizeof what, "mamba2 T=%lld P=%lld N=%lld G=%lld %s %s",
                             (long long)T, (long long)P, (long long)N, (long long)G,
                             dn_impl_name((dn_impl)impl), dn_isa_name((dn_isa)isa_));
                    fails += check_close(what, y, yr, ny, TOL);
                    fails += check_close(what, s, sr, ns, TOL);
                });
            }
            /* decode: one token at a time through the recurrent GLA, state in place */
            if (T == 17) {
                float *state = falloc(ns);
                memcpy(state, h0, sizeof(float) * ns);
                for (int64_t t = 0; t < T; t++) {
                    dn_mamba2_params q = p;
                    q.T = 1;
                    q.x = x + t * p.x_s.t, q.dt = dt + t * p.dt_s.t;
                    q.Bm = Bm + t * p.Bm_s.t, q.Cm = Cm + t * p.Cm_s.t;
                    q.y = y + t * p.y_s.t, q.initial_state = q.final_state = state;
                    q.impl = DN_IMPL_AUTO;
                    CHECK(dn_mamba2_forward(&q) == DN_OK, "mamba2 step: %s", dn_last_error());
                }
                fails += check_close("mamba2 decode steps", y, yr, ny, TOL);
                fails += check_close("mamba2 decode state", state, sr, ns, TOL);
                free(state);
            }
            free(x), free(dt), free(A), free(Bm), free(Cm), free(Ds), free(bias), free(h0);
            free(yr), free(sr), free(y), free(s);
        }
    return fails;
}

/* Mamba-2 resets: g = dt' A is -inf for A = -inf and overflows float to -inf for A = -1e30 or
 * -FLT_MAX (the reference multiplies in double and takes exp = 0). Forward at every impl, chunk
 * size and SIMD level, and the backward (not for A = -inf, where dA A dg is -inf * 0 in any
 * implementation), finite and equal to the reference. */
static int test_mamba2_reset(void) {
    int fails = 0;
    const int64_t B = 1, T = 150, H = 4, P = 16, N = 32, G = 1;
    const int64_t nx = B * T * H * P, nd = B * T * H, nb = B * T * G * N, ns = B * H * N * P;
    static const int chunks[] = {16, 32, 64, 128};
    for (int with_inf = 1; with_inf >= 0; with_inf--) {
        rng r = {77};
        float *x = falloc(nx), *dt = falloc(nd), *Bm = falloc(nb), *Cm = falloc(nb),
              *h0 = falloc(ns);
        float A[4] = {with_inf ? -INFINITY : -2.0f, -1e30f, -1.0f, -FLT_MAX};
        fill_uniform(&r, x, nx, -1, 1), fill_uniform(&r, dt, nd, -3, 1);
        fill_uniform(&r, Bm, nb, -0.3f, 0.3f), fill_uniform(&r, Cm, nb, -0.3f, 0.3f);
        fill_uniform(&r, h0, ns, -0.5f, 0.5f);
        dn_mamba2_params p = dn_mamba2_params_default(B, T, H, P, N, G);
        p.x = x, p.dt = dt, p.A = A, p.Bm = Bm, p.Cm = Cm, p.dt_softplus = 1, p.initial_state = h0;
        float *yr = falloc(nx), *sr = falloc(ns), *y = falloc(nx), *s = falloc(ns);
        p.y = yr, p.final_state = sr, p.impl = DN_IMPL_REF;
        CHECK(dn_mamba2_forward(&p) == DN_OK, "mamba2 ref: %s", dn_last_error());
        for (int impl = DN_IMPL_AUTO; impl < DN_IMPL_COUNT; impl++)
            for (int c = 0; c < 4; c++) {
                if (impl == DN_IMPL_REF || (impl != DN_IMPL_CHUNK && c > 0)) continue;
                FOR_EACH_ISA({
                    poison(y, nx), poison(s, ns);
                    p.y = y, p.final_state = s, p.impl = (dn_impl)impl, p.chunk_size = chunks[c];
                    CHECK(dn_mamba2_forward(&p) == DN_OK, "mamba2: %s", dn_last_error());
                    char what[120];
                    snprintf(what, sizeof what, "mamba2 reset A%s %s C=%d %s",
                             with_inf ? "=-inf" : "", dn_impl_name((dn_impl)impl), chunks[c],
                             dn_isa_name((dn_isa)isa_));
                    fails += check_close(what, y, yr, nx, TOL);
                    fails += check_close(what, s, sr, ns, TOL);
                });
            }
        if (!with_inf) {
            float *dy = falloc(nx), *dhT = falloc(ns), *gr[2][6];
            fill_uniform(&r, dy, nx, -1, 1), fill_uniform(&r, dhT, ns, -1, 1);
            const int64_t sz[6] = {nx, nd, nb, nb, H, ns};
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 6; i++)
                    gr[w][i] = calloc((size_t)sz[i], sizeof(float));
            FOR_EACH_ISA({
                for (int w = 0; w < 2; w++) {
                    dn_mamba2_bwd_params b = dn_mamba2_bwd_params_default(&p);
                    b.fwd.impl = w == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
                    b.dy = dy, b.dfinal_state = dhT, b.dx = gr[w][0], b.ddt = gr[w][1];
                    b.dBm = gr[w][2], b.dCm = gr[w][3], b.dA = gr[w][4],
                    b.dinitial_state = gr[w][5];
                    memset(gr[w][4], 0, sizeof(float) * H);
                    CHECK(dn_mamba2_backward(&b) == DN_OK, "%s", dn_last_error());
                }
                static const char *const nm[6] = {"dx", "ddt", "dBm", "dCm", "dA", "dh0"};
                for (int i = 0; i < 6; i++) {
                    char what[80];
                    snprintf(what, sizeof what, "mamba2 reset backward %s %s",
                             dn_isa_name((dn_isa)isa_), nm[i]);
                    fails += check_close(what, gr[1][i], gr[0][i], sz[i], TOL);
                }
            });
            for (int w = 0; w < 2; w++)
                for (int i = 0; i < 6; i++)
                    free(gr[w][i]);
            free(dy), free(dhT);
        }
        free(x), free(dt), free(Bm), free(Cm), free(h0), free(yr), free(sr), free(y), free(s);
    }
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * RWKV-4
 * ------------------------------------------------------------------------------------------- */
static int rwkv_case(int64_t B, int64_t T, int64_t C, float kamp, int strided, int init, double tol,
                     uint64_t seed, const char *label) {
    int fails = 0;
    rng r = {seed};
    dn_rwkv4_params p = dn_rwkv4_params_default(B, T, C);
    p.k_s = p.v_s = p.y_s = btd(T, C, strided);
    const int64_t n = btd_size(p.k_s, B, T, C), ny = B * T * C, ns = B * 3 * C;
    float *k = falloc(n), *v = falloc(n), *ybuf = falloc(n), *td = falloc(C), *tf = falloc(C);
    float *s0 = falloc(ns), *yr = falloc(ny), *sr = falloc(ns), *y = falloc(ny), *s = falloc(ns);
    fill_uniform(&r, k, n, -kamp, kamp);
    fill_uniform(&r, v, n, -1, 1);
    fill_uniform(&r, td, C, -3, 1);
    fill_uniform(&r, tf, C, -1, 1);
    for (int64_t b = 0; b < B; b++) /* a valid state: num, den >= 0 scaled, m finite */
        for (int64_t c = 0; c < C; c++) {
            s0[b * 3 * C + c] = rng_uniform(&r, -1, 1);
            s0[b * 3 * C + C + c] = rng_uniform(&r, 0.5f, 2);
            s0[b * 3 * C + 2 * C + c] = rng_uniform(&r, -3, 3);
        }
    p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.y = ybuf;
    p.initial_state = init ? s0 : NULL;
    p.final_state = sr, p.impl = DN_IMPL_REF;
    CHECK(dn_rwkv4_forward(&p) == DN_OK, "%s ref: %s", label, dn_last_error());
    gather_btd(yr, ybuf, p.y_s, B, T, C);
    FOR_EACH_ISA({
        poison(ybuf, n), poison(s, ns);
        p.final_state = s, p.impl = DN_IMPL_AUTO;
        CHECK(dn_rwkv4_forward(&p) == DN_OK, "%s: %s", label, dn_last_error());
        gather_btd(y, ybuf, p.y_s, B, T, C);
        char what[160];
        snprintf(what, sizeof what, "%s %s", label, dn_isa_name((dn_isa)isa_));
        fails += check_close(what, y, yr, ny, tol);
        fails += check_close(what, s, sr, ns, tol);
    });
    free(k), free(v), free(ybuf), free(td), free(tf), free(s0), free(yr), free(sr), free(y),
        free(s);
    return fails;
}

static int test_rwkv4(void) {
    static const int64_t Ts[] = {1, 17, 64, 300}, Cs[] = {16, 64, 100, 128};
    int fails = 0, idx = 0;
    for (int ti = 0; ti < 4; ti++)
        for (int ci = 0; ci < 4; ci++, idx++) {
            char label[80];
            snprintf(label, sizeof label, "rwkv4 T=%lld C=%lld", (long long)Ts[ti],
                     (long long)Cs[ci]);
            fails += rwkv_case(idx % 2 + 1, Ts[ti], Cs[ci], 3.0f, idx % 2, idx % 3 != 0, TOL,
                               50 + idx, label);
        }
    return fails;
}

/* Two calls carrying the state (y[0:t1] then y[t1:T]) and token-by-token steps in place equal
 * one call. */
static int test_rwkv4_split(void) {
    int fails = 0;
    const int64_t B = 2, T = 90, C = 100;
    rng r = {31};
    dn_rwkv4_params p = dn_rwkv4_params_default(B, T, C);
    float *k = falloc(B * T * C), *v = falloc(B * T * C), *td = falloc(C), *tf = falloc(C);
    float *y1 = falloc(B * T * C), *y2 = falloc(B * T * C), *s1 = falloc(B * 3 * C),
          *s2 = falloc(B * 3 * C);
    fill_uniform(&r, k, B * T * C, -20, 20), fill_uniform(&r, v, B * T * C, -1, 1);
    fill_uniform(&r, td, C, -3, 1), fill_uniform(&r, tf, C, -1, 1);
    p.k = k, p.v = v, p.time_decay = td, p.time_first = tf, p.y = y1, p.final_state = s1;
    CHECK(dn_rwkv4_forward(&p) == DN_OK, "%s", dn_last_error());
    static const int64_t splits[] = {1, 37, 89};
    for (int si = 0; si < 3; si++) {
        const int64_t t1 = splits[si];
        dn_rwkv4_params a = p, b2 = p;
        a.T = t1, a.y = y2, a.final_state = s2;
        b2.T = T - t1, b2.k = k + t1 * C, b2.v = v + t1 * C, b2.y = y2 + t1 * C;
        b2.initial_state = s2, b2.final_state = s2; /* in place */
        CHECK(dn_rwkv4_forward(&a) == DN_OK && dn_rwkv4_forward(&b2) == DN_OK, "%s",
              dn_last_error());
        fails += check_close("rwkv4 split: y", y2, y1, B * T * C, TOL);
        fails += check_close("rwkv4 split: state", s2, s1, B * 3 * C, TOL);
    }
    /* token by token */
    float *st = falloc(B * 3 * C);
    for (int64_t t = 0; t < T; t++) {
        dn_rwkv4_params q = p;
        q.T = 1, q.k = k + t * C, q.v = v + t * C, q.y = y2 + t * C;
        q.initial_state = t ? st : NULL, q.final_state = st;
        CHECK(dn_rwkv4_forward(&q) == DN_OK, "%s", dn_last_error());
    }
    fails += check_close("rwkv4 steps: y", y2, y1, B * T * C, TOL);
    fails += check_close("rwkv4 steps: state", st, s1, B * 3 * C, TOL);
    free(k), free(v), free(td), free(tf), free(y1), free(y2), free(s1), free(s2), free(st);
    return fails;
}

/* Keys in [-100, 100] over long sequences: finite, and equal to the double reference. Exponent
 * differences of size ~200 carry an fp32 rounding of ~1.5e-5 absolute, which moves each weight by
 * that relative amount: 1e-4 allows a few of them. */
static int test_rwkv4_stress(void) {
    int fails = 0;
    fails += rwkv_case(1, 20000, 64, 100.0f, 0, 1, 1e-4, 8, "rwkv4 |k| <= 100, T = 20000");
    fails += rwkv_case(2, 3000, 100, 100.0f, 1, 0, 1e-4, 9, "rwkv4 |k| <= 100, T = 3000, C = 100");
    return fails;
}

/* The reference itself against the definition, in log space: y_t = sum_i a_i v_i / sum_i a_i with
 * log a_i = w (t-1-i) + k_i for i < t and u + k_t for i = t, summed after subtracting the max. */
static int test_rwkv4_reference(void) {
    int fails = 0;
    const int64_t T = 60, C = 8;
    rng r = {4};
    dn_rwkv4_params p = dn_rwkv4_params_default(1, T, C);
    float *k = falloc(T * C), *v = falloc(T * C), *y = falloc(T * C), *td = falloc(C),
          *tf = falloc(C);
    fill_uniform(&r, k, T * C, -100, 100);
    fill_uniform(&r, v, T * C, -1, 1);
    fill_uniform(&r, td, C, -2, 2);
    fill_uniform(&r, tf, C, -1, 1);
    p.k = k, p.v = v, p.y = y, p.time_decay = td, p.time_first = tf, p.impl = DN_IMPL_REF;
    CHECK(dn_rwkv4_forward(&p) == DN_OK, "%s", dn_last_error());
    float *yd = falloc(T * C);
    for (int64_t c = 0; c < C; c++) {
        const double w = -exp((double)td[c]);
        for (int64_t t = 0; t < T; t++) {
            double mx = -INFINITY;
            for (int64_t i = 0; i <= t; i++) {
                double la =
                    i < t ? w * (double)(t - 1 - i) + k[i * C + c] : (double)tf[c] + k[t * C + c];
                mx = fmax(mx, la);
            }
            double num = 0, den = 0;
            for (int64_t i = 0; i <= t; i++) {
                double la =
                    i < t ? w * (double)(t - 1 - i) + k[i * C + c] : (double)tf[c] + k[t * C + c];
                num += exp(la - mx) * v[i * C + c];
                den += exp(la - mx);
            }
            yd[t * C + c] = (float)(num / den);
        }
    }
    fails += check_close("rwkv4 reference against the definition", y, yd, T * C, 1e-6);
    free(k), free(v), free(y), free(td), free(tf), free(yd);
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * Short convolution
 * ------------------------------------------------------------------------------------------- */
static int test_conv(void) {
    static const int64_t Ts[] = {1, 2, 17, 64}, Ds[] = {16, 100, 128};
    int fails = 0, idx = 0;
    for (int64_t W = 2; W <= 4; W++)
        for (int ti = 0; ti < 4; ti++)
            for (int di = 0; di < 3; di++, idx++) {
                const int64_t B = 2, T = Ts[ti], D = Ds[di];
                rng r = {600 + (uint64_t)idx};
                dn_conv_params p = dn_conv_params_default(B, T, D, W);
                p.x_s = p.y_s = btd(T, D, idx % 2);
                const int64_t n = btd_size(p.x_s, B, T, D), ns = B * D * (W - 1), ny = B * T * D;
                float *x = falloc(n), *ybuf = falloc(n), *w = falloc(D * W), *bias = falloc(D);
                float *s0 = falloc(ns), *yr = falloc(ny), *sr = falloc(ns), *y = falloc(ny),
                      *s = falloc(ns);
                fill_uniform(&r, x, n, -2, 2), fill_uniform(&r, w, D * W, -1, 1);
                fill_uniform(&r, bias, D, -1, 1), fill_uniform(&r, s0, ns, -2, 2);
                p.x = x, p.y = ybuf, p.weight = w, p.bias = idx % 3 ? bias : NULL;
                p.silu = idx % 2, p.initial_state = idx % 4 ? s0 : NULL;
                p.final_state = sr, p.impl = DN_IMPL_REF;
                CHECK(dn_conv_forward(&p) == DN_OK, "conv ref: %s", dn_last_error());
                gather_btd(yr, ybuf, p.y_s, B, T, D);
                FOR_EACH_ISA({
                    poison(ybuf, n), poison(s, ns);
                    p.final_state = s, p.impl = DN_IMPL_AUTO;
                    CHECK(dn_conv_forward(&p) == DN_OK, "conv: %s", dn_last_error());
                    gather_btd(y, ybuf, p.y_s, B, T, D);
                    char what[120];
                    snprintf(what, sizeof what, "conv W=%lld T=%lld D=%lld %s", (long long)W,
                             (long long)T, (long long)D, dn_isa_name((dn_isa)isa_));
                    fails += check_close(what, y, yr, ny, TOL);
                    fails += check_close(what, s, sr, ns, TOL);
                });
                /* token by token with the rolling state in place */
                if (T == 17) {
                    float *state = falloc(ns), *ys = falloc(ny);
                    if (p.initial_state)
                        memcpy(state, s0, sizeof(float) * ns);
                    else
                        memset(state, 0, sizeof(float) * ns);
                    for (int64_t t = 0; t < T; t++) {
                        dn_conv_params q = p;
                        q.T = 1, q.x = x + t * p.x_s.t, q.y = ys + t * D;
                        q.y_s = (dn_strides){T * D, D, 0};
                        q.initial_state = q.final_state = state;
                        CHECK(dn_conv_forward(&q) == DN_OK, "conv step: %s", dn_last_error());
                    }
                    fails += check_close("conv steps", ys, yr, ny, TOL);
                    fails += check_close("conv steps state", state, sr, ns, TOL);
                    free(state), free(ys);
                }
                free(x), free(ybuf), free(w), free(bias), free(s0), free(yr), free(sr), free(y),
                    free(s);
            }
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * Rejected inputs
 * ------------------------------------------------------------------------------------------- */
static int test_ssm_bad_input(void) {
    int fails = 0;
    float buf[4096], copy[4096];
    for (int i = 0; i < 4096; i++)
        buf[i] = (float)i;
    memcpy(copy, buf, sizeof buf);
    dn_mamba_params m = dn_mamba_params_default(1, 4, 8, 4, 2);
    m.x = m.dt = m.A = m.Bm = m.Cm = buf, m.y = buf + 2048;
    dn_mamba_params mb = m;
    mb.G = 3;
    CHECK(dn_mamba_forward(&mb) == DN_ERR_SHAPE, "mamba1: D not a multiple of G");
    mb = m, mb.A = NULL;
    CHECK(dn_mamba_forward(&mb) == DN_ERR_NULL, "mamba1: A NULL");
    mb = m, mb.y_s.t = 1;
    CHECK(dn_mamba_forward(&mb) == DN_ERR_STRIDE, "mamba1: overlapping y");
    mb = m, mb.impl = DN_IMPL_CHUNK;
    CHECK(dn_mamba_forward(&mb) == DN_ERR_UNSUPPORTED, "mamba1: chunk impl");
    dn_mamba2_params m2 = dn_mamba2_params_default(1, 4, 4, 8, 8, 3);
    m2.x = m2.dt = m2.A = m2.Bm = m2.Cm = buf, m2.y = buf + 2048;
    CHECK(dn_mamba2_forward(&m2) == DN_ERR_SHAPE, "mamba2: H not a multiple of G");
    m2.G = 2, m2.chunk_size = 0;
    CHECK(dn_mamba2_forward(&m2) == DN_ERR_ARG, "mamba2: chunk 0");
    dn_rwkv4_params r = dn_rwkv4_params_default(1, 4, 8);
    r.k = r.v = r.time_decay = buf, r.y = buf + 2048;
    CHECK(dn_rwkv4_forward(&r) == DN_ERR_NULL, "rwkv4: time_first NULL");
    r.time_first = buf, r.C = 0;
    CHECK(dn_rwkv4_forward(&r) == DN_ERR_SHAPE, "rwkv4: C = 0");
    dn_conv_params c = dn_conv_params_default(1, 4, 8, 5);
    c.x = c.weight = buf, c.y = buf + 2048;
    CHECK(dn_conv_forward(&c) == DN_ERR_SHAPE, "conv: W = 5");
    c.W = 1;
    CHECK(dn_conv_forward(&c) == DN_ERR_SHAPE, "conv: W = 1");
    c.W = 3, c.weight = NULL;
    CHECK(dn_conv_forward(&c) == DN_ERR_NULL, "conv: weight NULL");
    CHECK(dn_mamba_forward(NULL) == DN_ERR_NULL && dn_mamba2_forward(NULL) == DN_ERR_NULL &&
              dn_rwkv4_forward(NULL) == DN_ERR_NULL && dn_conv_forward(NULL) == DN_ERR_NULL,
          "NULL params");
    CHECK(memcmp(buf, copy, sizeof buf) == 0, "a rejected call wrote its output");
    return fails;
}

const test_case dn_tests_ssm[] = {
    {"ssm_bad_input", test_ssm_bad_input},
    {"mamba1", test_mamba1},
    {"mamba1_stress", test_mamba1_stress},
    {"mamba1_steps", test_mamba1_steps},
    {"mamba2", test_mamba2},
    {"mamba2_reset", test_mamba2_reset},
    {"rwkv4_reference", test_rwkv4_reference},
    {"rwkv4", test_rwkv4},
    {"rwkv4_stress", test_rwkv4_stress},
    {"rwkv4_split", test_rwkv4_split},
    {"conv", test_conv},
    {NULL, NULL},
};
