/*
 * test_la.c - tests of the linear-attention family (linear attention, GLA, DeltaNet, Gated
 * DeltaNet): every fast path and every SIMD level against the double-precision reference on a
 * grid of shapes with strided views, chunk sizes against each other, state carried across calls,
 * variable-length batches, decode steps, stress values and rejected inputs.
 */
#include "test.h"

#define TOL 1e-5        /* fp32 kernels against the double reference, relative RMS */
#define TOL_STRESS 1e-4 /* extreme gates and 100k-token sequences */

/* ---------------------------------------------------------------------------------------------
 * One problem: random inputs in (possibly strided) buffers, and a params template.
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    dn_la_params p; /* pointers into the buffers below; o and final_state set per run */
    float *q, *k, *v, *g, *beta, *h0, *obuf;
    int64_t nq, nk, nv, ng, nbeta, nobuf, nstate;
    unsigned char *omask; /* 1 where obuf is inside the o view */
} problem;

typedef struct {
    float gmin, gmax; /* log decay range */
    float bmin, bmax; /* beta range */
    int l2norm, strided, init_state;
} input_opts;

static const input_opts default_opts = {-0.6f, 0.0f, 0.0f, 1.0f, 0, 0, 1};

static int64_t view_size(dn_strides s, int64_t B, int64_t T, int64_t H, int64_t D) {
    if (B == 0 || T == 0) return 1;
    return (B - 1) * s.b + (T - 1) * s.t + (H - 1) * s.h + D;
}

/* Strides with padding between heads, tokens and batches (pad distinguishes tensors). */
static dn_strides padded(int64_t T, int64_t H, int64_t D, int64_t pad) {
    dn_strides s;
    s.h = D + pad;
    s.t = H * s.h + 2 * pad + 1;
    s.b = T * s.t + pad;
    return s;
}

static void problem_init(problem *pr, dn_op op, int64_t B, int64_t T, int64_t H, int64_t HV,
                         int64_t K, int64_t V, const int64_t *cu, int64_t nseq, input_opts io,
                         uint64_t seed) {
    memset(pr, 0, sizeof *pr);
    rng r = {seed};
    dn_la_params p = dn_la_params_default(op, B, T, H, HV, K, V);
    if (io.strided) {
        p.q_s = padded(T, H, K, 3);
        p.k_s = padded(T, H, K, 5);
        p.v_s = padded(T, HV, V, 2);
        p.o_s = padded(T, HV, V, 1);
        p.g_s = (dn_strides){T * (HV * 2 + 1) + 3, HV * 2 + 1, 2};
        p.beta_s = (dn_strides){T * (HV * 3 + 2) + 1, HV * 3 + 2, 3};
    }
    p.qk_l2norm = io.l2norm;
    pr->nq = view_size(p.q_s, B, T, H, K);
    pr->nk = view_size(p.k_s, B, T, H, K);
    pr->nv = view_size(p.v_s, B, T, HV, V);
    pr->ng = view_size(p.g_s, B, T, HV, 1);
    pr->nbeta = view_size(p.beta_s, B, T, HV, 1);
    pr->nobuf = view_size(p.o_s, B, T, HV, V);
    int64_t ns = cu ? nseq : B;
    pr->nstate = ns * HV * K * V;
    pr->q = falloc(pr->nq);
    pr->k = falloc(pr->nk);
    pr->v = falloc(pr->nv);
    pr->g = falloc(pr->ng);
    pr->beta = falloc(pr->nbeta);
    pr->h0 = falloc(pr->nstate);
    pr->obuf = falloc(pr->nobuf);
    pr->omask = calloc((size_t)pr->nobuf, 1);
    /* Keys of norm about 1 without the in-op normalisation, so the delta rule stays contractive. */
    float ks = io.l2norm ? 1.0f : (float)sqrt(3.0 / (double)K);
    fill_uniform(&r, pr->q, pr->nq, -1, 1);
    fill_uniform(&r, pr->k, pr->nk, -ks, ks);
    fill_uniform(&r, pr->v, pr->nv, -1, 1);
    fill_uniform(&r, pr->g, pr->ng, io.gmin, io.gmax);
    fill_uniform(&r, pr->beta, pr->nbeta, io.bmin, io.bmax);
    fill_uniform(&r, pr->h0, pr->nstate, -0.5f, 0.5f);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < HV; h++)
                memset(pr->omask + b * p.o_s.b + t * p.o_s.t + h * p.o_s.h, 1, (size_t)V);
    p.q = pr->q;
    p.k = pr->k;
    p.v = pr->v;
    p.g = (op == DN_OP_GLA || op == DN_OP_GDN) ? pr->g : NULL;
    p.beta = (op == DN_OP_DELTANET || op == DN_OP_GDN) ? pr->beta : NULL;
    p.initial_state = io.init_state ? pr->h0 : NULL;
    p.cu_seqlens = cu;
    p.n_seqs = nseq;
    pr->p = p;
}

static void problem_free(problem *pr) {
    free(pr->q);
    free(pr->k);
    free(pr->v);
    free(pr->g);
    free(pr->beta);
    free(pr->h0);
    free(pr->obuf);
    free(pr->omask);
}

/* Runs one implementation with poisoned outputs; o gathered into o_out [B,T,HV,V], final state
 * into st_out. Returns the number of failed checks (status, unwritten or stray writes). */
static int run_impl(problem *pr, dn_impl impl, int chunk, int threads, float *o_out, float *st_out,
                    const char *what) {
    int fails = 0;
    dn_la_params p = pr->p;
    poison(pr->obuf, pr->nobuf);
    poison(st_out, pr->nstate);
    p.o = pr->obuf;
    p.final_state = st_out;
    p.impl = impl;
    p.chunk_size = chunk;
    p.n_threads = threads;
    dn_status st = dn_la_forward(&p);
    CHECK(st == DN_OK, "%s: status %s: %s", what, dn_status_str(st), dn_last_error());
    int64_t unwritten = 0, stray = 0;
    for (int64_t i = 0; i < pr->nobuf; i++) {
        if (pr->omask[i] && !isfinite(pr->obuf[i])) unwritten++;
        if (!pr->omask[i] && !isnan(pr->obuf[i])) stray++;
    }
    for (int64_t i = 0; i < pr->nstate; i++)
        unwritten += !isfinite(st_out[i]);
    CHECK(unwritten == 0, "%s: %lld output elements not written or not finite", what,
          (long long)unwritten);
    CHECK(stray == 0, "%s: %lld writes outside the o view", what, (long long)stray);
    const int64_t B = p.B, T = p.T, HV = p.HV, V = p.V;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < HV; h++)
                memcpy(o_out + ((b * T + t) * HV + h) * V,
                       pr->obuf + b * p.o_s.b + t * p.o_s.t + h * p.o_s.h, sizeof(float) * V);
    return fails;
}

static const int chunk_sizes[] = {16, 32, 64, 128};

/* Every fast path at every SIMD level against the reference; chunk sizes against the recurrence. */
static int check_all_impls(problem *pr, int threads, double tol, const char *label) {
    int fails = 0;
    const int64_t no = pr->p.B * pr->p.T * pr->p.HV * pr->p.V;
    float *o_ref = falloc(no), *s_ref = falloc(pr->nstate);
    float *o_rec = falloc(no), *s_rec = falloc(pr->nstate);
    float *o = falloc(no), *s = falloc(pr->nstate);
    char what[200];
    snprintf(what, sizeof what, "%s ref", label);
    fails += run_impl(pr, DN_IMPL_REF, 64, threads, o_ref, s_ref, what);
    dn_isa best = dn_isa_best();
    for (int isa = 0; isa <= (int)best; isa++) {
        if (!test_use_isa((dn_isa)isa)) continue;
        snprintf(what, sizeof what, "%s %s recurrent", label, dn_isa_name((dn_isa)isa));
        fails += run_impl(pr, DN_IMPL_RECURRENT, 64, threads, o_rec, s_rec, what);
        fails += check_close(what, o_rec, o_ref, no, tol);
        fails += check_close(what, s_rec, s_ref, pr->nstate, tol);
        /* impl auto: the recurrence when the longest sequence is under 16 tokens, else chunks
         * of 16 (whatever chunk_size says): bit-identical to the path it picks */
        float *o_auto = falloc(no), *s_auto = falloc(pr->nstate);
        snprintf(what, sizeof what, "%s %s auto", label, dn_isa_name((dn_isa)isa));
        fails += run_impl(pr, DN_IMPL_AUTO, 128, threads, o_auto, s_auto, what);
        int64_t longest = pr->p.T;
        if (pr->p.cu_seqlens) {
            longest = 0;
            for (int64_t n = 0; n < pr->p.n_seqs; n++)
                if (pr->p.cu_seqlens[n + 1] - pr->p.cu_seqlens[n] > longest)
                    longest = pr->p.cu_seqlens[n + 1] - pr->p.cu_seqlens[n];
        }
        if (longest < 16) {
            CHECK(memcmp(o_auto, o_rec, sizeof(float) * no) == 0 &&
                      memcmp(s_auto, s_rec, sizeof(float) * pr->nstate) == 0,
                  "%s: not the recurrence", what);
        } else {
            fails += run_impl(pr, DN_IMPL_CHUNK, 16, threads, o, s, what);
            CHECK(memcmp(o_auto, o, sizeof(float) * no) == 0 &&
                      memcmp(s_auto, s, sizeof(float) * pr->nstate) == 0,
                  "%s: not the chunkwise form in chunks of 16", what);
        }
        free(o_auto);
        free(s_auto);
        for (size_t c = 0; c < sizeof chunk_sizes / sizeof chunk_sizes[0]; c++) {
            snprintf(what, sizeof what, "%s %s chunk%d", label, dn_isa_name((dn_isa)isa),
                     chunk_sizes[c]);
            fails += run_impl(pr, DN_IMPL_CHUNK, chunk_sizes[c], threads, o, s, what);
            fails += check_close(what, o, o_ref, no, tol);
            fails += check_close(what, s, s_ref, pr->nstate, tol);
            char w2[240];
            snprintf(w2, sizeof w2, "%s vs recurrent", what);
            fails += check_close(w2, o, o_rec, no, tol);
            fails += check_close(w2, s, s_rec, pr->nstate, tol);
        }
    }
    dn_set_isa(best);
    free(o_ref);
    free(s_ref);
    free(o_rec);
    free(s_rec);
    free(o);
    free(s);
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * The shape grid of the issue: T x (H,HV) x B x op, with (K,V) rotating through all 16 pairs of
 * {16, 64, 100, 128}, strided views, in-op normalisation and thread counts alternating.
 * ------------------------------------------------------------------------------------------- */
static int test_grid(void) {
    static const int64_t Ts[] = {1, 7, 63, 64, 65, 200, 1000};
    static const int64_t dims[] = {16, 64, 100, 128};
    static const int64_t heads[][2] = {{1, 1}, {2, 4}, {4, 4}};
    static const int64_t Bs[] = {1, 3};
    int fails = 0, idx = 0;
    for (size_t ti = 0; ti < 7; ti++)
        for (size_t hi = 0; hi < 3; hi++)
            for (size_t bi = 0; bi < 2; bi++)
                for (int op = 0; op <= DN_OP_GDN; op++, idx++) {
                    int64_t T = Ts[ti], H = heads[hi][0], HV = heads[hi][1], B = Bs[bi];
                    int64_t K = dims[idx % 4], V = dims[(idx / 4 + idx) % 4];
                    /* keep the largest products of the grid affordable for the reference */
                    if (T == 1000 && B == 3 && K * V > 64 * 128) K = 64;
                    input_opts io = default_opts;
                    io.strided = idx % 2;
                    io.l2norm = (idx / 2) % 2;
                    io.init_state = idx % 3 != 0;
                    int threads = 1 + idx % 3;
                    problem pr;
                    problem_init(&pr, (dn_op)op, B, T, H, HV, K, V, NULL, 0, io, 1000 + idx);
                    char label[160];
                    snprintf(label, sizeof label,
                             "%s B=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld strided=%d l2=%d th=%d",
                             dn_op_name((dn_op)op), (long long)B, (long long)T, (long long)H,
                             (long long)HV, (long long)K, (long long)V, io.strided, io.l2norm,
                             threads);
                    int f = check_all_impls(&pr, threads, TOL, label);
                    if (f) printf("  case: %s\n", label);
                    fails += f;
                    problem_free(&pr);
                }
    return fails;
}

/* Two calls carrying the state equal one call over the whole sequence. */
static int test_state_carry(void) {
    int fails = 0;
    const int64_t B = 2, T = 200, H = 2, HV = 4, K = 64, V = 100;
    static const int64_t splits[] = {1, 64, 77, 199};
    for (int op = 0; op <= DN_OP_GDN; op++)
        for (int impl = DN_IMPL_RECURRENT; impl <= DN_IMPL_CHUNK; impl++)
            for (size_t si = 0; si < 4; si++) {
                input_opts io = default_opts;
                io.strided = 1;
                io.l2norm = 1;
                problem pr;
                problem_init(&pr, (dn_op)op, B, T, H, HV, K, V, NULL, 0, io, 77 + op);
                const int64_t no = B * T * HV * V;
                float *o_one = falloc(no), *s_one = falloc(pr.nstate), *s_mid = falloc(pr.nstate);
                float *s_two = falloc(pr.nstate);
                float *o_two = falloc(pr.nobuf);
                fails += run_impl(&pr, (dn_impl)impl, 64, 0, o_one, s_one, "carry: one call");
                int64_t t1 = splits[si];
                dn_la_params a = pr.p, b2 = pr.p;
                a.T = t1;
                a.o = o_two;
                a.final_state = s_mid;
                a.impl = (dn_impl)impl;
                b2.T = T - t1;
                b2.q += t1 * pr.p.q_s.t;
                b2.k += t1 * pr.p.k_s.t;
                b2.v += t1 * pr.p.v_s.t;
                b2.g = b2.g ? b2.g + t1 * pr.p.g_s.t : NULL;
                b2.beta = b2.beta ? b2.beta + t1 * pr.p.beta_s.t : NULL;
                b2.o = o_two + t1 * pr.p.o_s.t;
                b2.initial_state = s_mid;
                b2.final_state = s_two;
                b2.impl = (dn_impl)impl;
                CHECK(dn_la_forward(&a) == DN_OK, "first half: %s", dn_last_error());
                CHECK(dn_la_forward(&b2) == DN_OK, "second half: %s", dn_last_error());
                float *o_cat = falloc(no);
                for (int64_t bb = 0; bb < B; bb++)
                    for (int64_t t = 0; t < T; t++)
                        for (int64_t h = 0; h < HV; h++)
                            memcpy(o_cat + ((bb * T + t) * HV + h) * V,
                                   o_two + bb * pr.p.o_s.b + t * pr.p.o_s.t + h * pr.p.o_s.h,
                                   sizeof(float) * V);
                char what[120];
                snprintf(what, sizeof what, "%s %s split at %lld: o", dn_op_name((dn_op)op),
                         dn_impl_name((dn_impl)impl), (long long)t1);
                fails += check_close(what, o_cat, o_one, no, TOL);
                snprintf(what, sizeof what, "%s %s split at %lld: state", dn_op_name((dn_op)op),
                         dn_impl_name((dn_impl)impl), (long long)t1);
                fails += check_close(what, s_two, s_one, pr.nstate, TOL);
                free(o_one);
                free(s_one);
                free(s_mid);
                free(s_two);
                free(o_two);
                free(o_cat);
                problem_free(&pr);
            }
    return fails;
}

/* A varlen batch equals its sequences run one by one; a sequence ignores its neighbours. */
static int test_varlen(void) {
    int fails = 0;
    static const int64_t cu[] = {0, 1, 71, 71, 200, 207}; /* lengths 1, 70, 0, 129, 7 */
    const int64_t N = 5, T = 207, H = 2, HV = 4, K = 64, V = 64;
    static const dn_impl impls[] = {DN_IMPL_AUTO, DN_IMPL_RECURRENT, DN_IMPL_CHUNK};
    for (int op = 0; op <= DN_OP_GDN; op++) {
        /* the rule of impl auto on ragged batches: every sequence under 16 tokens, and not */
        static const int64_t cu_short[] = {0, 3, 3, 18, 33}, cu_long[] = {0, 15, 16, 32, 33};
        for (int w = 0; w < 2; w++) {
            input_opts io = default_opts;
            io.strided = w;
            problem pr;
            const int64_t *c = w ? cu_long : cu_short;
            int64_t cs[5];
            memcpy(cs, c, sizeof cs);
            if (!w) cs[3] = 15, cs[4] = 30; /* longest 12 */
            problem_init(&pr, (dn_op)op, 1, cs[4], 2, 4, 16, 32, cs, 4, io, 700 + op + 10 * w);
            char label[120];
            snprintf(label, sizeof label, "%s varlen longest %s 16", dn_op_name((dn_op)op),
                     w ? ">=" : "<");
            fails += check_all_impls(&pr, 2, TOL, label);
            problem_free(&pr);
        }
        for (size_t ii = 0; ii < sizeof impls / sizeof impls[0]; ii++) {
            const dn_impl impl = impls[ii];
            input_opts io = default_opts;
            io.l2norm = 1;
            io.strided = 1;
            problem pr;
            problem_init(&pr, (dn_op)op, 1, T, H, HV, K, V, cu, N, io, 500 + op);
            const int64_t no = T * HV * V, ss = HV * K * V;
            float *o_var = falloc(no), *s_var = falloc(pr.nstate);
            float *o_ref = falloc(no), *s_ref = falloc(pr.nstate);
            fails += run_impl(&pr, (dn_impl)impl, 32, 0, o_var, s_var, "varlen");
            fails += run_impl(&pr, DN_IMPL_REF, 32, 0, o_ref, s_ref, "varlen ref");
            char what[120];
            snprintf(what, sizeof what, "%s %s varlen vs ref", dn_op_name((dn_op)op),
                     dn_impl_name((dn_impl)impl));
            fails += check_close(what, o_var, o_ref, no, TOL);
            fails += check_close(what, s_var, s_ref, pr.nstate, TOL);

            /* each sequence alone, from its own initial state */
            for (int64_t n = 0; n < N; n++) {
                int64_t t0 = cu[n], len = cu[n + 1] - cu[n];
                dn_la_params p = pr.p;
                p.cu_seqlens = NULL;
                p.n_seqs = 0;
                p.T = len;
                p.q += t0 * p.q_s.t;
                p.k += t0 * p.k_s.t;
                p.v += t0 * p.v_s.t;
                if (p.g) p.g += t0 * p.g_s.t;
                if (p.beta) p.beta += t0 * p.beta_s.t;
                p.initial_state = pr.h0 + n * ss;
                float *o1 = falloc(len * HV * V), *s1 = falloc(ss);
                p.o = o1;
                p.o_s = (dn_strides){len * HV * V, HV * V, V};
                p.final_state = s1;
                p.impl = (dn_impl)impl;
                p.chunk_size = 32;
                CHECK(dn_la_forward(&p) == DN_OK, "sequence %lld alone: %s", (long long)n,
                      dn_last_error());
                snprintf(what, sizeof what, "%s %s seq %lld alone", dn_op_name((dn_op)op),
                         dn_impl_name((dn_impl)impl), (long long)n);
                if (len > 0) fails += check_close(what, o1, o_var + t0 * HV * V, len * HV * V, TOL);
                fails += check_close(what, s1, s_var + n * ss, ss, TOL);
                free(o1);
                free(s1);
            }

            /* perturb sequence 3; every other sequence must be bit-identical */
            float *o_b = falloc(no), *s_b = falloc(pr.nstate);
            for (int64_t t = cu[3]; t < cu[4]; t++)
                pr.v[t * pr.p.v_s.t] += 1.0f;
            fails += run_impl(&pr, (dn_impl)impl, 32, 0, o_b, s_b, "varlen perturbed");
            for (int64_t n = 0; n < N; n++) {
                if (n == 3) continue;
                CHECK(memcmp(o_b + cu[n] * HV * V, o_var + cu[n] * HV * V,
                             sizeof(float) * (cu[n + 1] - cu[n]) * HV * V) == 0 &&
                          memcmp(s_b + n * ss, s_var + n * ss, sizeof(float) * ss) == 0,
                      "%s: sequence %lld changed when sequence 3 did", what, (long long)n);
            }
            free(o_b);
            free(s_b);
            free(o_var);
            free(s_var);
            free(o_ref);
            free(s_ref);
            problem_free(&pr);
        }
    }
    return fails;
}

/* Token-by-token decode with dn_la_step equals the reference over the whole sequence. */
static int test_step(void) {
    int fails = 0;
    const int64_t B = 3, T = 20, H = 2, HV = 4, K = 100, V = 64;
    for (int op = 0; op <= DN_OP_GDN; op++) {
        problem pr;
        problem_init(&pr, (dn_op)op, B, T, H, HV, K, V, NULL, 0, default_opts, 900 + op);
        const int64_t no = B * T * HV * V;
        float *o_ref = falloc(no), *s_ref = falloc(pr.nstate);
        fails += run_impl(&pr, DN_IMPL_REF, 64, 0, o_ref, s_ref, "step ref");
        float *state = falloc(pr.nstate), *o_dec = falloc(no);
        memcpy(state, pr.h0, sizeof(float) * pr.nstate);
        float *q = falloc(B * H * K), *k = falloc(B * H * K), *v = falloc(B * HV * V);
        float *g = falloc(B * HV), *beta = falloc(B * HV), *o = falloc(B * HV * V);
        for (int64_t t = 0; t < T; t++) {
            for (int64_t b = 0; b < B; b++) {
                memcpy(q + b * H * K, pr.q + b * pr.p.q_s.b + t * pr.p.q_s.t,
                       sizeof(float) * H * K);
                memcpy(k + b * H * K, pr.k + b * pr.p.k_s.b + t * pr.p.k_s.t,
                       sizeof(float) * H * K);
                memcpy(v + b * HV * V, pr.v + b * pr.p.v_s.b + t * pr.p.v_s.t,
                       sizeof(float) * HV * V);
                memcpy(g + b * HV, pr.g + b * pr.p.g_s.b + t * pr.p.g_s.t, sizeof(float) * HV);
                memcpy(beta + b * HV, pr.beta + b * pr.p.beta_s.b + t * pr.p.beta_s.t,
                       sizeof(float) * HV);
            }
            dn_status st = dn_la_step((dn_op)op, o, state, q, k, v, pr.p.g ? g : NULL,
                                      pr.p.beta ? beta : NULL, B, H, HV, K, V, 0.0f, 0);
            CHECK(st == DN_OK, "step %lld: %s", (long long)t, dn_last_error());
            for (int64_t b = 0; b < B; b++)
                memcpy(o_dec + (b * T + t) * HV * V, o + b * HV * V, sizeof(float) * HV * V);
        }
        char what[80];
        snprintf(what, sizeof what, "%s decode steps", dn_op_name((dn_op)op));
        fails += check_close(what, o_dec, o_ref, no, TOL);
        fails += check_close(what, state, s_ref, pr.nstate, TOL);
        free(o_ref);
        free(s_ref);
        free(state);
        free(o_dec);
        free(q);
        free(k);
        free(v);
        free(g);
        free(beta);
        free(o);
        problem_free(&pr);
    }
    return fails;
}

/* Extreme gates and betas: g = 0, g = -30; beta 0, 1 and 2 with normalised keys. */
static int test_stress_gates(void) {
    int fails = 0;
    static const float gs[] = {0.0f, -30.0f};
    static const float betas[] = {0.0f, 1.0f, 2.0f};
    for (int op = 0; op <= DN_OP_GDN; op++)
        for (int gi = 0; gi < 2; gi++)
            for (int bi = 0; bi < 3; bi++) {
                if (!(op == DN_OP_GLA || op == DN_OP_GDN) && gi > 0) continue;
                if (!(op == DN_OP_DELTANET || op == DN_OP_GDN) && bi > 0) continue;
                input_opts io = default_opts;
                io.gmin = io.gmax = gs[gi];
                io.bmin = io.bmax = betas[bi];
                io.l2norm = 1;
                problem pr;
                problem_init(&pr, (dn_op)op, 2, 300, 2, 4, 64, 64, NULL, 0, io, 31 + op);
                char label[120];
                snprintf(label, sizeof label, "%s g=%g beta=%g", dn_op_name((dn_op)op), gs[gi],
                         betas[bi]);
                int f = check_all_impls(&pr, 0, TOL_STRESS, label);
                if (f) printf("  case: %s\n", label);
                fails += f;
                problem_free(&pr);
            }
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * Reset gates: g = -inf (exp(g) = 0, the state forgotten) and finite gates so negative that
 * exp(g) underflows or their cumulative sum swallows its small terms. Every implementation must
 * stay finite and agree with the reference (which takes exp(g) = 0 token by token).
 * ------------------------------------------------------------------------------------------- */
static void set_reset_gates(problem *pr, int pattern) {
    const dn_la_params *p = &pr->p;
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = 0; t < p->T; t++)
            for (int64_t h = 0; h < p->HV; h++) {
                /* varlen: the token's position within its own sequence */
                int64_t tt = t, len = p->T;
                for (int64_t n = 0; p->cu_seqlens && n < p->n_seqs; n++)
                    if (t >= p->cu_seqlens[n] && t < p->cu_seqlens[n + 1])
                        tt = t - p->cu_seqlens[n], len = p->cu_seqlens[n + 1] - p->cu_seqlens[n];
                float *g = pr->g + b * p->g_s.b + t * p->g_s.t + h * p->g_s.h;
                *g = reset_gate(pattern, tt, len, h, *g);
            }
}

static int test_reset_gates(void) {
    int fails = 0;
    static const int64_t cu[] = {0, 30, 170, 171, 300}; /* lengths 30, 140, 1, 129 */
    for (int op = DN_OP_GLA; op <= DN_OP_GDN; op += DN_OP_GDN - DN_OP_GLA)
        for (int pat = 0; pat < N_RESET_PATTERNS; pat++)
            for (int varlen = 0; varlen < 2; varlen++) {
                input_opts io = default_opts;
                io.strided = pat % 2;
                io.l2norm = 1;
                problem pr;
                const int64_t B = varlen ? 1 : 2, T = varlen ? 300 : 150, H = 1, HV = 2, K = 32,
                              V = 48;
                problem_init(&pr, (dn_op)op, B, T, H, HV, K, V, varlen ? cu : NULL, varlen ? 4 : 0,
                             io, 60 + pat);
                set_reset_gates(&pr, pat);
                char label[160];
                snprintf(label, sizeof label, "%s g %s%s", dn_op_name((dn_op)op), reset_names[pat],
                         varlen ? " varlen" : "");
                int f = check_all_impls(&pr, 2, TOL_STRESS, label);
                /* impl auto at every SIMD level */
                const int64_t no = B * T * HV * V;
                float *o_ref = falloc(no), *s_ref = falloc(pr.nstate), *o = falloc(no),
                      *s = falloc(pr.nstate);
                f += run_impl(&pr, DN_IMPL_REF, 64, 0, o_ref, s_ref, label);
                dn_isa best = dn_isa_best();
                for (int isa = 0; isa <= (int)best; isa++) {
                    if (!test_use_isa((dn_isa)isa)) continue;
                    char what[200];
                    snprintf(what, sizeof what, "%s %s auto", label, dn_isa_name((dn_isa)isa));
                    f += run_impl(&pr, DN_IMPL_AUTO, 64, 0, o, s, what);
                    f += check_close(what, o, o_ref, no, TOL_STRESS);
                    f += check_close(what, s, s_ref, pr.nstate, TOL_STRESS);
                }
                dn_set_isa(best);
                if (f) printf("  case: %s\n", label);
                fails += f;
                free(o_ref), free(s_ref), free(o), free(s);
                problem_free(&pr);
            }
    return fails;
}

/* Decode steps through resets: dn_la_step with g = -inf, -1e30 and -FLT_MAX equals the reference.
 */
static int test_step_reset(void) {
    int fails = 0;
    const int64_t B = 2, T = 40, H = 1, HV = 2, K = 32, V = 32;
    static const float resets[] = {-INFINITY, -1e30f, -FLT_MAX, -200.0f};
    for (int op = DN_OP_GLA; op <= DN_OP_GDN; op += DN_OP_GDN - DN_OP_GLA) {
        problem pr;
        problem_init(&pr, (dn_op)op, B, T, H, HV, K, V, NULL, 0, default_opts, 950 + op);
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < HV; h++)
                    if ((t + h) % 7 == 3) pr.g[(b * T + t) * HV + h] = resets[(t + b) % 4];
        const int64_t no = B * T * HV * V;
        float *o_ref = falloc(no), *s_ref = falloc(pr.nstate);
        fails += run_impl(&pr, DN_IMPL_REF, 64, 0, o_ref, s_ref, "step reset ref");
        float *state = falloc(pr.nstate), *o_dec = falloc(no), *o = falloc(B * HV * V);
        float *q = falloc(B * H * K), *k = falloc(B * H * K), *v = falloc(B * HV * V);
        float *g = falloc(B * HV), *beta = falloc(B * HV);
        dn_isa best = dn_isa_best();
        for (int isa = 0; isa <= (int)best; isa++) {
            if (!test_use_isa((dn_isa)isa)) continue;
            memcpy(state, pr.h0, sizeof(float) * pr.nstate);
            for (int64_t t = 0; t < T; t++) {
                for (int64_t b = 0; b < B; b++) {
                    const int64_t r = b * T + t;
                    memcpy(q + b * H * K, pr.q + r * H * K, sizeof(float) * H * K);
                    memcpy(k + b * H * K, pr.k + r * H * K, sizeof(float) * H * K);
                    memcpy(v + b * HV * V, pr.v + r * HV * V, sizeof(float) * HV * V);
                    memcpy(g + b * HV, pr.g + r * HV, sizeof(float) * HV);
                    memcpy(beta + b * HV, pr.beta + r * HV, sizeof(float) * HV);
                }
                CHECK(dn_la_step((dn_op)op, o, state, q, k, v, g, op == DN_OP_GDN ? beta : NULL, B,
                                 H, HV, K, V, 0.0f, 0) == DN_OK,
                      "step: %s", dn_last_error());
                for (int64_t b = 0; b < B; b++)
                    memcpy(o_dec + (b * T + t) * HV * V, o + b * HV * V, sizeof(float) * HV * V);
            }
            char what[80];
            snprintf(what, sizeof what, "%s %s decode steps through resets", dn_op_name((dn_op)op),
                     dn_isa_name((dn_isa)isa));
            fails += check_close(what, o_dec, o_ref, no, TOL_STRESS);
            fails += check_close(what, state, s_ref, pr.nstate, TOL_STRESS);
        }
        dn_set_isa(best);
        free(o_ref), free(s_ref), free(state), free(o_dec), free(o);
        free(q), free(k), free(v), free(g), free(beta);
        problem_free(&pr);
    }
    return fails;
}

/* A 100,000-token sequence: finite, and within 1e-4 of the reference. */
static int test_long(void) {
    int fails = 0;
    const dn_op ops[] = {DN_OP_GDN, DN_OP_LINEAR_ATTN};
    for (int oi = 0; oi < 2; oi++) {
        input_opts io = default_opts;
        io.l2norm = 1;
        io.gmin = -0.2f;
        io.bmax = 2.0f;
        problem pr;
        problem_init(&pr, ops[oi], 1, 100000, 1, 2, 32, 32, NULL, 0, io, 4242 + oi);
        const int64_t no = pr.p.T * pr.p.HV * pr.p.V;
        float *o_ref = falloc(no), *s_ref = falloc(pr.nstate), *o = falloc(no),
              *s = falloc(pr.nstate);
        fails += run_impl(&pr, DN_IMPL_REF, 64, 0, o_ref, s_ref, "long ref");
        for (int impl = DN_IMPL_RECURRENT; impl <= DN_IMPL_CHUNK; impl++) {
            char what[80];
            snprintf(what, sizeof what, "%s T=100000 %s", dn_op_name(ops[oi]),
                     dn_impl_name((dn_impl)impl));
            fails += run_impl(&pr, (dn_impl)impl, 64, 0, o, s, what);
            fails += check_close(what, o, o_ref, no, TOL_STRESS);
            fails += check_close(what, s, s_ref, pr.nstate, TOL_STRESS);
        }
        free(o_ref);
        free(s_ref);
        free(o);
        free(s);
        problem_free(&pr);
    }
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * Rejected inputs: a clear status, a message, and every output untouched.
 * ------------------------------------------------------------------------------------------- */
typedef void (*mutate_fn)(dn_la_params *p, void *ctx);

static void m_B0(dn_la_params *p, void *c) { (void)c, p->B = 0; }
static void m_K0(dn_la_params *p, void *c) { (void)c, p->K = 0; }
static void m_Vneg(dn_la_params *p, void *c) { (void)c, p->V = -4; }
static void m_HV(dn_la_params *p, void *c) { (void)c, p->HV = 5; }
static void m_qnull(dn_la_params *p, void *c) { (void)c, p->q = NULL; }
static void m_onull(dn_la_params *p, void *c) { (void)c, p->o = NULL; }
static void m_gnull(dn_la_params *p, void *c) { (void)c, p->g = NULL; }
static void m_betanull(dn_la_params *p, void *c) { (void)c, p->beta = NULL; }
static void m_wrongop(dn_la_params *p, void *c) { (void)c, p->op = DN_OP_LINEAR_ATTN; }
static void m_badop(dn_la_params *p, void *c) { (void)c, p->op = (dn_op)42; }
static void m_chunk0(dn_la_params *p, void *c) { (void)c, p->chunk_size = 0; }
static void m_chunk48(dn_la_params *p, void *c) { (void)c, p->chunk_size = 48; }
static void m_impl(dn_la_params *p, void *c) { (void)c, p->impl = (dn_impl)9; }
static void m_threads(dn_la_params *p, void *c) { (void)c, p->n_threads = -2; }
static void m_stride(dn_la_params *p, void *c) { (void)c, p->k_s.t = -1; }
static void m_overlap(dn_la_params *p, void *c) { (void)c, p->o_s.h = p->V / 2; }
static void m_scale(dn_la_params *p, void *c) { (void)c, p->scale = NAN; }
static void m_cu_dec(dn_la_params *p, void *c) {
    static const int64_t cu[] = {0, 20, 10, 40};
    (void)c, p->B = 1, p->cu_seqlens = cu, p->n_seqs = 3;
}
static void m_cu_end(dn_la_params *p, void *c) {
    static const int64_t cu[] = {0, 20, 30};
    (void)c, p->B = 1, p->cu_seqlens = cu, p->n_seqs = 2;
}
static void m_cu_B(dn_la_params *p, void *c) {
    static const int64_t cu[] = {0, 20, 40};
    (void)c, p->cu_seqlens = cu, p->n_seqs = 2; /* B = 2 */
}
static void m_cu_start(dn_la_params *p, void *c) {
    static const int64_t cu[] = {1, 20, 40};
    (void)c, p->B = 1, p->cu_seqlens = cu, p->n_seqs = 2;
}
static void m_ws_small(dn_la_params *p, void *c) {
    p->workspace = c;
    p->workspace_bytes = 16;
}

static int test_bad_input(void) {
    int fails = 0;
    const int64_t B = 2, T = 40, H = 2, HV = 4, K = 32, V = 32;
    problem pr;
    problem_init(&pr, DN_OP_GDN, B, T, H, HV, K, V, NULL, 0, default_opts, 7);
    float *st = falloc(pr.nstate), *h0 = falloc(pr.nstate);
    static struct {
        const char *name;
        mutate_fn fn;
        dn_status want;
    } cases[] = {
        {"B = 0", m_B0, DN_ERR_SHAPE},
        {"K = 0", m_K0, DN_ERR_SHAPE},
        {"V < 0", m_Vneg, DN_ERR_SHAPE},
        {"HV not a multiple of H", m_HV, DN_ERR_SHAPE},
        {"q NULL", m_qnull, DN_ERR_NULL},
        {"o NULL", m_onull, DN_ERR_NULL},
        {"g NULL for gdn", m_gnull, DN_ERR_NULL},
        {"beta NULL for gdn", m_betanull, DN_ERR_NULL},
        {"g and beta given to linear_attn", m_wrongop, DN_ERR_ARG},
        {"unknown op", m_badop, DN_ERR_ARG},
        {"chunk size 0", m_chunk0, DN_ERR_ARG},
        {"chunk size 48", m_chunk48, DN_ERR_ARG},
        {"unknown impl", m_impl, DN_ERR_ARG},
        {"negative threads", m_threads, DN_ERR_ARG},
        {"negative stride", m_stride, DN_ERR_STRIDE},
        {"overlapping o rows", m_overlap, DN_ERR_STRIDE},
        {"scale NaN", m_scale, DN_ERR_ARG},
        {"cu_seqlens decreasing", m_cu_dec, DN_ERR_ARG},
        {"cu_seqlens not ending at T", m_cu_end, DN_ERR_ARG},
        {"cu_seqlens with B > 1", m_cu_B, DN_ERR_SHAPE},
        {"cu_seqlens not starting at 0", m_cu_start, DN_ERR_ARG},
        {"workspace too small", m_ws_small, DN_ERR_ARG},
    };
    float *obuf_copy = falloc(pr.nobuf), *st_copy = falloc(pr.nstate);
    static _Alignas(64) float tiny_ws[16];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int impl = 0; impl < DN_IMPL_COUNT; impl++) {
            if (cases[i].fn == m_ws_small && impl == DN_IMPL_REF) continue; /* needs none */
            dn_la_params p = pr.p;
            fill_uniform(&(rng){i}, pr.obuf, pr.nobuf, -3, 3);
            fill_uniform(&(rng){i + 99}, st, pr.nstate, -3, 3);
            memcpy(obuf_copy, pr.obuf, sizeof(float) * pr.nobuf);
            memcpy(st_copy, st, sizeof(float) * pr.nstate);
            p.o = pr.obuf;
            p.final_state = st;
            p.impl = (dn_impl)impl;
            cases[i].fn(&p, tiny_ws);
            if (cases[i].fn == m_wrongop) p.g = p.beta = pr.g; /* linear_attn takes neither */
            dn_op unused;
            dn_op_from_name("__primed__", &unused); /* a message the call must replace */
            dn_status s = dn_la_forward(&p);
            CHECK(s == cases[i].want, "%s (%s): got status '%s', want '%s' (%s)", cases[i].name,
                  dn_impl_name((dn_impl)impl), dn_status_str(s), dn_status_str(cases[i].want),
                  dn_last_error());
            CHECK(!strstr(dn_last_error(), "__primed__") &&
                      (strstr(dn_last_error(), "gdn") || cases[i].fn == m_badop),
                  "%s: the message does not name the op: '%s'", cases[i].name, dn_last_error());
            CHECK(memcmp(obuf_copy, pr.obuf, sizeof(float) * pr.nobuf) == 0 &&
                      memcmp(st_copy, st, sizeof(float) * pr.nstate) == 0,
                  "%s (%s): outputs changed on a rejected call", cases[i].name,
                  dn_impl_name((dn_impl)impl));
        }
    }
    CHECK(dn_la_forward(NULL) == DN_ERR_NULL, "NULL params accepted");
    size_t bytes = 0;
    CHECK(dn_la_workspace_size(NULL, &bytes) == DN_ERR_NULL, "NULL params to workspace query");
    dn_status s =
        dn_la_step(DN_OP_GDN, pr.obuf, NULL, pr.q, pr.k, pr.v, pr.g, pr.beta, B, H, HV, K, V, 0, 0);
    CHECK(s == DN_ERR_NULL, "step with NULL state: %s", dn_status_str(s));
    dn_op op;
    CHECK(dn_op_from_name("gdn", &op) == DN_OK && op == DN_OP_GDN, "op name lookup");
    CHECK(dn_op_from_name("mamba9", &op) == DN_ERR_ARG, "unknown op name accepted");
    CHECK(dn_set_isa((dn_isa)7) == DN_ERR_ARG, "unknown ISA accepted");
    dn_isa isa = DN_ISA_GENERIC;
    CHECK(dn_isa_from_name("avx2", &isa) == DN_OK && isa == DN_ISA_AVX2, "ISA name lookup");
    CHECK(dn_isa_from_name("sse9", &isa) == DN_ERR_ARG && isa == DN_ISA_AVX2, "unknown ISA name");
    CHECK(strcmp(dn_status_str((dn_status)99), "unknown status") == 0, "status text of junk");
    free(obuf_copy);
    free(st_copy);
    free(st);
    free(h0);
    problem_free(&pr);
    return fails;
}

/* A caller-provided workspace gives the same result as the internal one. */
static int test_workspace(void) {
    int fails = 0;
    problem pr;
    problem_init(&pr, DN_OP_GDN, 1, 150, 2, 2, 64, 64, NULL, 0, default_opts, 3);
    const int64_t no = 150 * 2 * 64;
    float *o1 = falloc(no), *s1 = falloc(pr.nstate), *o2 = falloc(no), *s2 = falloc(pr.nstate);
    fails += run_impl(&pr, DN_IMPL_CHUNK, 64, 2, o1, s1, "internal workspace");
    dn_la_params p = pr.p;
    p.impl = DN_IMPL_CHUNK;
    p.n_threads = 2;
    p.o = o2;
    p.o_s = (dn_strides){150 * 2 * 64, 2 * 64, 64};
    p.final_state = s2;
    size_t bytes = 0;
    CHECK(dn_la_workspace_size(&p, &bytes) == DN_OK && bytes > 0, "workspace query: %s",
          dn_last_error());
    void *ws = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    p.workspace = ws;
    p.workspace_bytes = bytes;
    CHECK(dn_la_forward(&p) == DN_OK, "with workspace: %s", dn_last_error());
    CHECK(memcmp(o1, o2, sizeof(float) * no) == 0 && memcmp(s1, s2, sizeof(float) * pr.nstate) == 0,
          "caller workspace changes the result");
    free(ws);
    free(o1);
    free(s1);
    free(o2);
    free(s2);
    problem_free(&pr);
    return fails;
}

const test_case dn_tests_la[] = {
    {"la_bad_input", test_bad_input},
    {"la_workspace", test_workspace},
    {"la_step", test_step},
    {"la_state_carry", test_state_carry},
    {"la_varlen", test_varlen},
    {"la_stress_gates", test_stress_gates},
    {"la_reset_gates", test_reset_gates},
    {"la_step_reset", test_step_reset},
    {"la_grid", test_grid},
    {"la_long_100k", test_long},
    {NULL, NULL},
};
