/*
 * bench/bwd.c - training cost against sequence length (`deltanet bench bwd`): forward plus
 * backward of Gated DeltaNet and of causal softmax attention, side by side, H = 16 heads of 128,
 * at T = 512, 2048, 8192 (by default); the length from which Gated DeltaNet's training step is
 * cheaper, and Gated DeltaNet's backward over its forward at T = 4096. Also the scratch the GDN
 * backward allocates at T = 65536, against its bound.
 */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static float *buf(int64_t n, float lo, float hi) {
    float *x = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) & ~(size_t)63);
    if (!x) {
        fprintf(stderr, "bench bwd: out of memory\n");
        exit(1);
    }
    uint64_t s = 0x9e3779b97f4a7c15ull ^ (uint64_t)n;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
    return x;
}

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) v = atol(line + strlen(key));
    fclose(f);
    return v;
}

/* resets the resident high-water mark (Linux); returns the current resident size in KiB */
static long hwm_reset(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    if (fclose(f) != 0 || !ok) return -1;
    return status_kb("VmRSS:");
}

static void check(dn_status st) {
    if (st != DN_OK) {
        fprintf(stderr, "bench bwd: %s\n", dn_last_error());
        exit(1);
    }
}

/* the calls timed, in the shape bench_time takes (timing policy in bench.h) */
static dn_status run_fwd(void *p) { return dn_la_forward(p); }
static dn_status run_bwd(void *p) { return dn_la_backward(p); }
typedef struct {
    const dn_la_params *p;
    void *saved;
    size_t bytes;
} train_ctx;
static dn_status run_train(void *c) {
    const train_ctx *t = c;
    return dn_la_forward_train(t->p, t->saved, t->bytes);
}
static dn_status run_attn_fwd(void *p) { return dn_attn_forward(p); }
static dn_status run_attn_bwd(void *p) { return dn_attn_backward(p); }

static double timed(bench_fn fn, void *ctx, int reps) {
    double sec = bench_time(fn, ctx, BENCH_WARMUP, reps);
    if (sec < 0) check(DN_ERR_ARG); /* dn_last_error() names the failure */
    return sec;
}

/* Gated DeltaNet: the inference forward (auto), the training forward (keeps what the backward
 * needs), the backward reading that, and the backward recomputing it on its own. */
typedef struct {
    double fwd, train_fwd, bwd_saved, bwd_recompute;
    size_t ws, saved;
} gdn_times;

static gdn_times gdn(int64_t T, int64_t H, int64_t D, int reps) {
    gdn_times r;
    dn_la_params f = dn_la_params_default(DN_OP_GDN, 1, T, H, H, D, D);
    const int64_t n = T * H * D;
    float *q = buf(n, -1, 1), *k = buf(n, -1, 1), *v = buf(n, -1, 1), *g = buf(T * H, -0.1f, 0);
    float *beta = buf(T * H, 0, 1), *o = buf(n, 0, 0), *dO = buf(n, -1, 1);
    float *dq = buf(n, 0, 0), *dk = buf(n, 0, 0), *dv = buf(n, 0, 0), *dg = buf(T * H, 0, 0);
    float *db = buf(T * H, 0, 0);
    f.q = q, f.k = k, f.v = v, f.g = g, f.beta = beta, f.o = o, f.qk_l2norm = 1;
    dn_la_params ft = f; /* impl auto: the training forward and the backward pick 32-token chunks */
    /* a model keeps its scratch across calls: so does the benchmark (policy in bench.h) */
    size_t fws = 0;
    check(dn_la_workspace_size(&f, &fws));
    f.workspace = fws ? aligned_alloc(64, (fws + 63) & ~(size_t)63) : NULL;
    f.workspace_bytes = fws;
    if (fws && !f.workspace) exit(1);
    r.fwd = timed(run_fwd, &f, reps);
    check(dn_la_saved_size(&ft, &r.saved));
    void *saved = aligned_alloc(64, (r.saved + 63) & ~(size_t)63);
    if (!saved) exit(1);
    train_ctx tc = {&ft, saved, r.saved};
    r.train_fwd = timed(run_train, &tc, reps);
    dn_la_bwd_params b = dn_la_bwd_params_default(&ft);
    b.dout = dO, b.dq = dq, b.dk = dk, b.dv = dv, b.dg = dg, b.dbeta = db;
    check(dn_la_backward_workspace_size(&b, &r.ws));
    b.workspace = aligned_alloc(64, (r.ws + 63) & ~(size_t)63);
    b.workspace_bytes = r.ws;
    if (!b.workspace) exit(1);
    r.bwd_recompute = timed(run_bwd, &b, reps);
    b.saved = saved, b.saved_bytes = r.saved;
    r.bwd_saved = timed(run_bwd, &b, reps);
    free(f.workspace), free(b.workspace), free(saved);
    free(q), free(k), free(v), free(g), free(beta), free(o), free(dO), free(dq), free(dk), free(dv);
    free(dg), free(db);
    return r;
}

static void attn(int64_t T, int64_t H, int64_t D, int reps, double *tf, double *tb) {
    dn_attn_params p = dn_attn_params_default(1, T, H, H, D);
    const int64_t n = T * H * D;
    float *q = buf(n, -1, 1), *k = buf(n, -1, 1), *v = buf(n, -1, 1), *o = buf(n, 0, 0);
    float *lse = buf(T * H, 0, 0), *dO = buf(n, -1, 1), *dq = buf(n, 0, 0), *dk = buf(n, 0, 0);
    float *dv = buf(n, 0, 0);
    p.q = q, p.k = k, p.v = v, p.o = o, p.lse = lse;
    *tf = timed(run_attn_fwd, &p, reps);
    dn_attn_bwd_params b = dn_attn_bwd_params_default(&p);
    b.dout = dO, b.dq = dq, b.dk = dk, b.dv = dv;
    *tb = timed(run_attn_bwd, &b, reps);
    free(q), free(k), free(v), free(o), free(lse), free(dO), free(dq), free(dk), free(dv);
}

int dn_bench_bwd_main(int argc, char **argv) {
    int64_t Ts[8] = {512, 2048, 8192}, H = 16, D = 128;
    int nT = 3, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--heads") && i + 1 < argc)
            H = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            dn_set_num_threads(atoi(argv[++i]));
        else if (!strcmp(argv[i], "--T") && i + 1 < argc) {
            nT = 0;
            for (char *s = argv[++i]; *s && nT < 8;) {
                char *e;
                Ts[nT++] = strtoll(s, &e, 10);
                s = *e == ',' ? e + 1 : e;
                if (e == s && *s) break;
            }
        } else {
            printf("usage: deltanet bench bwd [--T LIST] [--heads N] [--threads N] [--json]\n");
            return strcmp(argv[i], "--help") && strcmp(argv[i], "-h") ? 2 : 0;
        }
    }
    for (int i = 0; i < nT; i++)
        if (Ts[i] < 1 || Ts[i] > (1 << 20)) return fprintf(stderr, "bench bwd: bad T\n"), 2;
    if (H < 1 || H > 256) return fprintf(stderr, "bench bwd: bad heads\n"), 2;
    if (json)
        printf("{\"build\": \"%s\", \"threads\": %d, \"records\": [\n", dn_build_info(),
               dn_get_num_threads());
    else
        printf("%s\nforward + backward, fp32, H=%lld, head dim %lld, %d threads (medians; both ops "
               "alike: %d warm-up, same repeats);\n"
               "gdn: training forward keeping the backward's checkpoints, then the backward "
               "reading them\n"
               "%8s %12s %12s %12s %12s %12s %12s\n",
               dn_build_info(), (long long)H, (long long)D, dn_get_num_threads(), BENCH_WARMUP, "T",
               "gdn fwd", "gdn bwd", "gdn total", "attn fwd", "attn bwd", "attn total");
    double prev_ratio = 0;
    int64_t prev_T = 0;
    double cross = -1;
    for (int i = 0; i < nT; i++) {
        const int64_t T = Ts[i];
        const int reps = T >= 8192 ? 1 : 3;
        double af, ab;
        gdn_times gt = gdn(T, H, D, reps);
        const double gf = gt.train_fwd, gb = gt.bwd_saved;
        const size_t ws = gt.ws;
        attn(T, H, D, reps, &af, &ab);
        const double ratio = (gf + gb) / (af + ab);
        if (cross < 0 && ratio < 1) /* interpolate on log-log axes */
            cross = i == 0 ? (double)T
                           : exp(log((double)prev_T) + log(prev_ratio) /
                                                           (log(prev_ratio) - log(ratio)) *
                                                           (log((double)T) - log((double)prev_T)));
        prev_ratio = ratio, prev_T = T;
        if (json)
            printf("%s  {\"T\": %lld, \"H\": %lld, \"D\": %lld, \"gdn_fwd_s\": %.6g, "
                   "\"gdn_bwd_s\": %.6g, "
                   "\"attn_fwd_s\": %.6g, \"attn_bwd_s\": %.6g, "
                   "\"gdn_bwd_workspace_bytes_computed\": %zu}",
                   i ? ",\n" : "", (long long)T, (long long)H, (long long)D, gf, gb, af, ab, ws);
        else
            printf("%8lld %9.2f ms %9.2f ms %9.2f ms %9.2f ms %9.2f ms %9.2f ms\n", (long long)T,
                   gf * 1e3, gb * 1e3, (gf + gb) * 1e3, af * 1e3, ab * 1e3, (af + ab) * 1e3);
    }
    /* the ratio the roadmap asks for, at T = 4096 */
    gdn_times g4 = gdn(4096, H, D, 3);
    /* the GDN backward at T = 65536, one head: its scratch, and the resident memory it adds,
     * measured, against O(T (K+V) + (T/C) K V) per thread */
    const int64_t TL = 65536, nl = TL * D;
    dn_la_params f = dn_la_params_default(DN_OP_GDN, 1, TL, 1, 1, D, D);
    float *lq = buf(nl, -1, 1), *lk = buf(nl, -1, 1), *lv = buf(nl, -1, 1), *lg = buf(TL, -0.1f, 0);
    float *lb = buf(TL, 0, 1), *ldo = buf(nl, -1, 1), *ldq = buf(nl, 0, 0), *ldk = buf(nl, 0, 0);
    float *ldv = buf(nl, 0, 0), *ldg = buf(TL, 0, 0), *ldb = buf(TL, 0, 0);
    f.q = lq, f.k = lk, f.v = lv, f.g = lg, f.beta = lb, f.o = ldo, f.qk_l2norm = 1;
    dn_la_bwd_params b = dn_la_bwd_params_default(&f);
    b.dout = ldo, b.dq = ldq, b.dk = ldk, b.dv = ldv, b.dg = ldg, b.dbeta = ldb;
    size_t ws64 = 0;
    dn_la_backward_workspace_size(&b, &ws64);
    long base = hwm_reset();
    check(dn_la_backward(&b));
    long hwm = status_kb("VmHWM:");
    const double peak = base >= 0 && hwm >= 0 ? (double)(hwm - base) * 1024.0 : -1;
    free(lq), free(lk), free(lv), free(lg), free(lb), free(ldo), free(ldq), free(ldk), free(ldv);
    free(ldg), free(ldb);
    const double bound = 4.0 * (65536.0 * 2 * D + 65536.0 / 32 * D * D) * dn_get_num_threads();
    const double tkv = 4.0 * 65536.0 * D * D;
    if (json) {
        printf(",\n  {\"T\": 4096, \"gdn_fwd_s\": %.6g, \"gdn_train_fwd_s\": %.6g, "
               "\"gdn_bwd_saved_s\": %.6g, "
               "\"gdn_bwd_recompute_s\": %.6g, \"crossover_T\": %.1f, "
               "\"gdn_bwd_workspace_T65536_bytes_computed\": %zu, "
               "\"gdn_bwd_peak_rss_T65536_bytes_measured\": %.0f, \"bound_bytes_computed\": %.0f, "
               "\"TKV_bytes_computed\": %.0f}\n]}\n",
               g4.fwd, g4.train_fwd, g4.bwd_saved, g4.bwd_recompute, cross, ws64, peak, bound, tkv);
    } else {
        if (cross > 0)
            printf("Gated DeltaNet's training step is cheaper than attention's from T = %.0f\n",
                   cross);
        else
            printf("Gated DeltaNet's training step is not cheaper at the lengths measured\n");
        printf("T = 4096: Gated DeltaNet training forward %.2f ms, backward from its saved buffer "
               "%.2f ms = %.2fx the training forward; inference forward (auto) %.2f ms, so %.2fx; "
               "backward recomputing its checkpoints %.2f ms = %.2fx the inference forward\n",
               g4.train_fwd * 1e3, g4.bwd_saved * 1e3, g4.bwd_saved / g4.train_fwd, g4.fwd * 1e3,
               g4.bwd_saved / g4.fwd, g4.bwd_recompute * 1e3, g4.bwd_recompute / g4.fwd);
        printf("T = 65536, one head of 128: backward scratch %.1f MiB (computed, all threads), "
               "resident memory added by the call %.1f MiB (measured); T (K+V) + (T/C) K V floats "
               "per thread = %.1f MiB (computed); T K V floats would be %.0f MiB (computed)\n",
               (double)ws64 / 1048576, peak / 1048576, bound / 1048576, tkv / 1048576);
    }
    return 0;
}
