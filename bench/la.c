/*
 * bench/la.c - benchmark of the linear-attention family forward on CPU (`deltanet bench`).
 *
 * Default: Gated DeltaNet, B=1, H=HV=32, K=V=128, fp32, all threads: one decode step with a
 * 32x128x128 state, and prefill at T = 512 and 4096 with each implementation. The machine's fp32
 * FMA peak is measured in the same run, so every rate comes with its fraction of the ceiling.
 *
 * FLOP counting: the work of the recurrence, per token and value head: 4KV for linear attention
 * (update + readout), +KV for the decay (GLA), +2KV for the delta rule's prediction S^T k
 * (DeltaNet 6KV, Gated DeltaNet 7KV). The chunkwise form does somewhat more arithmetic than that;
 * counting the same useful work for both makes their rates comparable.
 */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double flops_per_token_head(dn_op op, int64_t K, int64_t V) {
    double kv = (double)K * (double)V;
    switch (op) {
    case DN_OP_LINEAR_ATTN: return 4 * kv;
    case DN_OP_GLA: return 5 * kv;
    case DN_OP_DELTANET: return 6 * kv;
    default: return 7 * kv;
    }
}

static void fill(float *x, int64_t n, float lo, float hi, unsigned seed) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
}

typedef struct {
    dn_op op;
    int64_t H, HV, K, V;
    int threads;
    int json;
    int reps;
    int chunk;
    int64_t Ts[8];
    int nT;
    double peak;
} bench_cfg;

static int json_first = 1;

static void emit(const bench_cfg *c, const char *phase, const char *impl, int64_t T, double sec,
                 double tokens, double flops, double bytes) {
    double gf = flops / sec * 1e-9;
    if (c->json) {
        printf("%s  {\"op\": \"%s\", \"phase\": \"%s\", \"impl\": \"%s\", \"B\": 1, \"T\": %lld, "
               "\"H\": %lld, \"HV\": %lld, \"K\": %lld, \"V\": %lld, \"threads\": %d, "
               "\"isa\": \"%s\", \"seconds\": %.9g, \"tokens_per_s\": %.6g, \"gflops\": %.6g, "
               "\"peak_gflops\": %.6g, \"fraction_of_peak\": %.4f, \"state_bytes_computed\": %.0f, "
               "\"state_gb_per_s_computed\": %.6g}",
               json_first ? "" : ",\n", dn_op_name(c->op), phase, impl, (long long)T,
               (long long)c->H, (long long)c->HV, (long long)c->K, (long long)c->V, c->threads,
               dn_isa_name(dn_isa_active()), sec, tokens / sec, gf, c->peak, gf / c->peak, bytes,
               bytes / sec * 1e-9);
        json_first = 0;
    } else {
        char tbuf[32];
        if (sec < 1e-3)
            snprintf(tbuf, sizeof tbuf, "%8.1f us", sec * 1e6);
        else
            snprintf(tbuf, sizeof tbuf, "%8.2f ms", sec * 1e3);
        printf("  %-8s %-10s T=%-6lld %s  %12.0f tok/s  %7.1f GFLOP/s  %5.1f%% of peak", phase,
               impl, (long long)T, tbuf, tokens / sec, gf, 100 * gf / c->peak);
        if (bytes > 0) printf("  %6.1f GB/s state (computed bytes)", bytes / sec * 1e-9);
        printf("\n");
    }
}

/* one decode step, in the shape bench_time calls */
typedef struct {
    dn_op op;
    float *o, *state;
    const float *q, *k, *v, *g, *beta;
    int64_t H, HV, K, V;
} step_ctx;
static dn_status run_step(void *arg) {
    const step_ctx *s = arg;
    return dn_la_step(s->op, s->o, s->state, s->q, s->k, s->v, s->g, s->beta, 1, s->H, s->HV, s->K,
                      s->V, 0, 1);
}
static dn_status run_forward(void *p) { return dn_la_forward(p); }

static int bench_decode(bench_cfg *c) {
    const int64_t K = c->K, V = c->V, H = c->H, HV = c->HV;
    float *q = malloc(sizeof(float) * H * K), *k = malloc(sizeof(float) * H * K);
    float *v = malloc(sizeof(float) * HV * V), *g = malloc(sizeof(float) * HV);
    float *beta = malloc(sizeof(float) * HV), *o = malloc(sizeof(float) * HV * V);
    float *state = aligned_alloc(64, sizeof(float) * HV * K * V); /* as a model's arena would */
    if (!q || !k || !v || !g || !beta || !o || !state) return fprintf(stderr, "out of memory\n"), 1;
    fill(q, H * K, -1, 1, 1);
    fill(k, H * K, -1, 1, 2);
    fill(v, HV * V, -1, 1, 3);
    fill(g, HV, -0.1f, 0, 4);
    fill(beta, HV, 0, 1, 5);
    fill(state, HV * K * V, -0.1f, 0.1f, 6);
    const int gate = c->op == DN_OP_GLA || c->op == DN_OP_GDN;
    const int delta = c->op == DN_OP_DELTANET || c->op == DN_OP_GDN;
    step_ctx sc = {c->op, o, state, q, k, v, gate ? g : NULL, delta ? beta : NULL, H, HV, K, V};
    double sec = bench_time(run_step, &sc, BENCH_WARMUP_STEP, c->reps * 40);
    if (sec < 0) return fprintf(stderr, "decode: %s\n", dn_last_error()), 1;
    /* the state is read and written once per step: bytes counted from the shape */
    emit(c, "decode", "recurrent", 1, sec, 1, flops_per_token_head(c->op, K, V) * HV,
         2.0 * sizeof(float) * HV * K * V);
    free(q), free(k), free(v), free(g), free(beta), free(o), free(state);
    return 0;
}

static int bench_prefill(bench_cfg *c, int64_t T) {
    const int64_t K = c->K, V = c->V, H = c->H, HV = c->HV;
    dn_la_params p = dn_la_params_default(c->op, 1, T, H, HV, K, V);
    float *q = malloc(sizeof(float) * T * H * K), *k = malloc(sizeof(float) * T * H * K);
    float *v = malloc(sizeof(float) * T * HV * V), *g = malloc(sizeof(float) * T * HV);
    float *beta = malloc(sizeof(float) * T * HV),
          *o = aligned_alloc(64, sizeof(float) * T * HV * V);
    float *state = aligned_alloc(64, sizeof(float) * HV * K * V);
    if (!q || !k || !v || !g || !beta || !o || !state) return fprintf(stderr, "out of memory\n"), 1;
    fill(q, T * H * K, -1, 1, 1);
    fill(k, T * H * K, -1, 1, 2);
    fill(v, T * HV * V, -1, 1, 3);
    fill(g, T * HV, -0.1f, 0, 4);
    fill(beta, T * HV, 0, 1, 5);
    p.q = q, p.k = k, p.v = v, p.o = o, p.final_state = state;
    p.g = (c->op == DN_OP_GLA || c->op == DN_OP_GDN) ? g : NULL;
    p.beta = (c->op == DN_OP_DELTANET || c->op == DN_OP_GDN) ? beta : NULL;
    p.qk_l2norm = 1;
    p.n_threads = c->threads;
    p.chunk_size = c->chunk;
    const dn_impl impls[] = {DN_IMPL_RECURRENT, DN_IMPL_CHUNK, DN_IMPL_AUTO};
    for (int ii = 0; ii < 3; ii++) {
        p.impl = impls[ii];
        size_t bytes = 0;
        dn_la_workspace_size(&p, &bytes);
        p.workspace = bytes ? aligned_alloc(64, (bytes + 63) & ~(size_t)63) : NULL;
        p.workspace_bytes = bytes;
        double sec = bench_time(run_forward, &p, BENCH_WARMUP, c->reps);
        if (sec < 0) return fprintf(stderr, "prefill: %s\n", dn_last_error()), 1;
        char label[32];
        if (impls[ii] == DN_IMPL_CHUNK)
            snprintf(label, sizeof label, "chunk%d", c->chunk);
        else
            snprintf(label, sizeof label, "%s", dn_impl_name(impls[ii]));
        emit(c, "prefill", label, T, sec, (double)T,
             flops_per_token_head(c->op, K, V) * HV * (double)T, 0);
        free(p.workspace);
    }
    free(q), free(k), free(v), free(g), free(beta), free(o), free(state);
    return 0;
}

static int parse_list(const char *s, int64_t *out, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        long long x = strtoll(s, &end, 10);
        if (end == s || x < 1) return -1;
        out[n++] = x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

static void usage(void) {
    printf("usage: deltanet bench [options]\n"
           "  --op NAME        linear_attn | gla | deltanet | gdn (default gdn)\n"
           "  --heads N        value and key heads (default 32)\n"
           "  --k N, --v N     key and value head dims (default 128)\n"
           "  --T LIST         prefill lengths, comma-separated (default 512,4096)\n"
           "  --threads N      threads (default: all cores)\n"
           "  --chunk N        chunk size of the chunkwise form: 16, 32, 64 or 128 (default 64)\n"
           "  --reps N         timed repetitions per prefill point, 40x that per decode point (7)\n"
           "  --isa NAME       generic | avx2 | avx512 (default: best available)\n"
           "  --json           machine-readable output (a JSON object with a records array)\n");
}

int dn_bench_gdn_main(int argc, char **argv) {
    bench_cfg c = {DN_OP_GDN, 32, 32, 128, 128, 0, 0, 7, 64, {512, 4096}, 2, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            c.json = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(), 0;
        if (!val) return fprintf(stderr, "bench: %s needs a value\n", a), usage(), 2;
        i++;
        if (!strcmp(a, "--op")) {
            if (dn_op_from_name(val, &c.op) != DN_OK)
                return fprintf(stderr, "bench: %s\n", dn_last_error()), 2;
        } else if (!strcmp(a, "--heads"))
            c.H = c.HV = atoll(val);
        else if (!strcmp(a, "--k"))
            c.K = atoll(val);
        else if (!strcmp(a, "--v"))
            c.V = atoll(val);
        else if (!strcmp(a, "--threads"))
            c.threads = atoi(val);
        else if (!strcmp(a, "--chunk"))
            c.chunk = atoi(val);
        else if (!strcmp(a, "--reps"))
            c.reps = atoi(val);
        else if (!strcmp(a, "--T")) {
            c.nT = parse_list(val, c.Ts, 8);
            if (c.nT < 1) return fprintf(stderr, "bench: bad --T list '%s'\n", val), 2;
        } else if (!strcmp(a, "--isa")) {
            if (dn_bench_set_isa("bench", val)) return 2;
        } else
            return fprintf(stderr, "bench: unknown option %s\n", a), usage(), 2;
    }
    if (c.H < 1 || c.K < 1 || c.V < 1 || c.reps < 1 || c.threads < 0 || c.K > 4096 || c.V > 4096)
        return fprintf(stderr, "bench: heads, k, v and reps must be positive\n"), 2;
    if (c.threads > 0) dn_set_num_threads(c.threads);
    c.threads = dn_get_num_threads();

    c.peak = bench_measure_fma_peak(c.threads, 0.3);
    if (c.json)
        printf("{\"build\": \"%s\", \"fma_peak_gflops\": %.6g, \"records\": [\n", dn_build_info(),
               c.peak);
    else {
        printf("%s\n", dn_build_info());
        printf("%s forward, B=1, H=HV=%lld, K=%lld, V=%lld, fp32, %d threads; measured FMA peak "
               "%.1f GFLOP/s (%.1f per thread)\n",
               dn_op_name(c.op), (long long)c.H, (long long)c.K, (long long)c.V, c.threads, c.peak,
               c.peak / c.threads);
        printf("  (GFLOP/s counts the recurrence's work, %.0fKV per token and head; medians)\n",
               flops_per_token_head(c.op, 1, 1));
    }
    if (bench_decode(&c)) return 1;
    for (int i = 0; i < c.nT; i++)
        if (bench_prefill(&c, c.Ts[i])) return 1;
    if (c.json) printf("\n]}\n");
    return 0;
}
