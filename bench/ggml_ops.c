/*
 * bench/ggml_ops.c - the ggml side of bench/ggml_side_by_side.sh: times ggml's CPU ops at the
 * shapes docs/PERF.md quotes, through ggml's public API only (nothing of ggml is copied here; the
 * script compiles this file against a ggml checkout the user supplies). The timing policy is
 * bench.h's own bench_time, so ggml gets exactly the warm-up, repeats and median that
 * deltanet's benchmarks give deltanet; the graph's work buffer is planned and allocated once and
 * kept, with a persistent thread pool, as deltanet keeps its workspace.
 *
 *   ggml_ops gdn  --threads N --reps R [--T LIST]   GATED_DELTA_NET, B=1, H=32, S_k=S_v=128:
 *                                                   one decode token, then prefill at each T
 *   ggml_ops attn --threads N --T T --heads H --d D --kv f32|f16
 *                                                   FLASH_ATTN_EXT causal prefill, F32 precision
 * One JSON object per line on stdout: {"op", "phase", "T", "seconds", ...}.
 */
#include "bench.h"

#include "ggml-cpu.h"
#include "ggml.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(float lo, float hi) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * (1.0 / 16777216.0));
}
static void fill(struct ggml_tensor *t, float lo, float hi) {
    const int64_t n = ggml_nelements(t);
    if (t->type == GGML_TYPE_F16) {
        ggml_fp16_t *x = t->data;
        for (int64_t i = 0; i < n; i++)
            x[i] = ggml_fp32_to_fp16(frand(lo, hi));
    } else {
        float *x = t->data;
        for (int64_t i = 0; i < n; i++)
            x[i] = frand(lo, hi);
    }
}
/* rows of ne[0] floats scaled to unit length: deltanet normalises q and k inside its op
 * (qk_l2norm); ggml's op takes them normalised, as llama.cpp feeds them */
static void l2norm_rows(struct ggml_tensor *t) {
    float *x = t->data;
    const int64_t d = t->ne[0], rows = ggml_nelements(t) / d;
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t i = 0; i < d; i++)
            ss += (double)x[r * d + i] * x[r * d + i];
        const float s = (float)(1.0 / sqrt(ss + 1e-6));
        for (int64_t i = 0; i < d; i++)
            x[r * d + i] *= s;
    }
}

/* one graph, its plan and work buffer made once; bench_time calls compute() */
typedef struct {
    struct ggml_cgraph *gf;
    struct ggml_cplan plan;
} graph_run;
static dn_status compute(void *arg) {
    graph_run *g = arg;
    return ggml_graph_compute(g->gf, &g->plan) == GGML_STATUS_SUCCESS ? DN_OK : DN_ERR_ARG;
}

static double time_graph(struct ggml_context *ctx, struct ggml_tensor *out, int threads,
                         struct ggml_threadpool *tp, int warmup, int reps) {
    graph_run g;
    g.gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(g.gf, out);
    g.plan = ggml_graph_plan(g.gf, threads, tp);
    g.plan.work_data = g.plan.work_size ? malloc(g.plan.work_size) : NULL;
    if (g.plan.work_size && !g.plan.work_data) return -1;
    double sec = bench_time(compute, &g, warmup, reps);
    free(g.plan.work_data);
    return sec;
}

static struct ggml_context *context(size_t bytes) {
    struct ggml_init_params ip = {bytes + ((size_t)64 << 20), NULL, false};
    return ggml_init(ip);
}

static void record(const char *op, const char *phase, int64_t T, int threads, double sec,
                   const char *extra) {
    printf("{\"impl\": \"ggml\", \"op\": \"%s\", \"phase\": \"%s\", \"T\": %lld, \"threads\": %d, "
           "\"seconds\": %.9g%s}\n",
           op, phase, (long long)T, threads, sec, extra ? extra : "");
    fflush(stdout);
}

/* GATED_DELTA_NET at deltanet's `bench` default shape; decode then prefill */
static int gdn(int threads, int reps, const int64_t *Ts, int nT, struct ggml_threadpool *tp) {
    const int64_t H = 32, S = 128;
    for (int i = -1; i < nT; i++) {
        const int64_t T = i < 0 ? 1 : Ts[i];
        const size_t bytes = sizeof(float) * (size_t)(4 * T * H * S + 2 * T * H + 2 * H * S * S);
        struct ggml_context *ctx = context(bytes);
        if (!ctx) return fprintf(stderr, "ggml_ops: ggml_init failed\n"), 1;
        struct ggml_tensor *q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, T, 1);
        struct ggml_tensor *k = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, T, 1);
        struct ggml_tensor *v = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, T, 1);
        struct ggml_tensor *g = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, H, T, 1);
        struct ggml_tensor *beta = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, H, T, 1);
        struct ggml_tensor *s0 = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, S, H, 1);
        /* the ops' contract, as deltanet's bench draws it: g in [-0.1, 0], beta in [0, 1] */
        fill(q, -1, 1), fill(k, -1, 1), fill(v, -1, 1), fill(g, -0.1f, 0), fill(beta, 0, 1);
        fill(s0, i < 0 ? -0.1f : 0, i < 0 ? 0.1f : 0);
        l2norm_rows(q), l2norm_rows(k);
        struct ggml_tensor *out = ggml_gated_delta_net(ctx, q, k, v, g, beta, s0, 1);
        /* deltanet's bench: decode BENCH_WARMUP_STEP warm-ups and 40 x reps steps, prefill
         * BENCH_WARMUP and reps */
        const double sec = i < 0 ? time_graph(ctx, out, threads, tp, BENCH_WARMUP_STEP, 40 * reps)
                                 : time_graph(ctx, out, threads, tp, BENCH_WARMUP, reps);
        ggml_free(ctx);
        if (sec < 0) return fprintf(stderr, "ggml_ops: gated_delta_net failed\n"), 1;
        record("gdn", i < 0 ? "decode" : "prefill", T, threads, sec, NULL);
    }
    return 0;
}

/* FLASH_ATTN_EXT, causal prefill of T tokens, H heads of D, K/V in kv_type, F32 precision */
static int attn(int threads, int64_t T, int64_t H, int64_t D, enum ggml_type kv_type, int reps,
                struct ggml_threadpool *tp) {
    const size_t bytes = sizeof(float) * (size_t)(4 * T * H * D) + 2 * (size_t)(T * T);
    struct ggml_context *ctx = context(bytes);
    if (!ctx) return fprintf(stderr, "ggml_ops: ggml_init failed\n"), 1;
    struct ggml_tensor *q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, D, T, H, 1);
    struct ggml_tensor *k = ggml_new_tensor_4d(ctx, kv_type, D, T, H, 1);
    struct ggml_tensor *v = ggml_new_tensor_4d(ctx, kv_type, D, T, H, 1);
    struct ggml_tensor *mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, T, T, 1, 1);
    fill(q, -1, 1), fill(k, -1, 1), fill(v, -1, 1);
    ggml_fp16_t *m = mask->data; /* causal: query i sees keys j <= i */
    const ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < T; j++)
            m[i * T + j] = j <= i ? zero : ninf;
    struct ggml_tensor *out = ggml_flash_attn_ext(ctx, q, k, v, mask, 1.0f / sqrtf((float)D), 0, 0);
    ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
    /* deltanet's `bench attn` prefill: BENCH_WARMUP and bench_attn_prefill_reps() */
    const double sec =
        time_graph(ctx, out, threads, tp, BENCH_WARMUP, bench_attn_prefill_reps(T, reps));
    ggml_free(ctx);
    if (sec < 0) return fprintf(stderr, "ggml_ops: flash_attn_ext failed\n"), 1;
    char extra[96];
    snprintf(extra, sizeof extra, ", \"H\": %lld, \"D\": %lld, \"kv\": \"%s\"", (long long)H,
             (long long)D, ggml_type_name(kv_type));
    record("softmax_attn", "prefill", T, threads, sec, extra);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[1], "gdn") && strcmp(argv[1], "attn"))) {
        fprintf(stderr, "usage: ggml_ops gdn|attn [--threads N] [--reps R] [--T LIST] [--heads H] "
                        "[--d D] [--kv f32|f16]\n");
        return 2;
    }
    int threads = 1, reps = 7, nT = 0;
    int64_t Ts[8], H = 16, D = 72;
    enum ggml_type kv = GGML_TYPE_F32;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *a = argv[i], *val = argv[i + 1];
        if (!strcmp(a, "--threads"))
            threads = atoi(val);
        else if (!strcmp(a, "--reps"))
            reps = atoi(val);
        else if (!strcmp(a, "--heads"))
            H = atoll(val);
        else if (!strcmp(a, "--d"))
            D = atoll(val);
        else if (!strcmp(a, "--kv"))
            kv = !strcmp(val, "f16") ? GGML_TYPE_F16 : GGML_TYPE_F32;
        else if (!strcmp(a, "--T")) {
            for (const char *s = val; *s && nT < 8;) {
                char *e;
                Ts[nT++] = strtoll(s, &e, 10);
                if (e == s) return fprintf(stderr, "ggml_ops: bad --T\n"), 2;
                s = *e == ',' ? e + 1 : e;
            }
        } else
            return fprintf(stderr, "ggml_ops: unknown option %s\n", a), 2;
    }
    if (threads < 1 || reps < 1 || H < 1 || D < 1)
        return fprintf(stderr, "ggml_ops: bad values\n"), 2;
    ggml_cpu_init();
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
    if (!tp) return fprintf(stderr, "ggml_ops: no thread pool\n"), 1;
    int rc;
    if (!strcmp(argv[1], "gdn")) {
        if (nT == 0) Ts[0] = 512, Ts[1] = 4096, nT = 2;
        rc = gdn(threads, reps, Ts, nT, tp);
    } else
        rc = attn(threads, nT ? Ts[0] : 5776, H, D, kv, reps, tp);
    ggml_threadpool_free(tp);
    return rc;
}
